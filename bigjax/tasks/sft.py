"""Chat and instruction fine-tuning (SFT) of a decoder: loss on the assistant's tokens only.

    python -m bigjax.train --config=configs/sft_tiny.py --workdir=runs/sft_tiny

Data (bigjax.data.sft): JSONL conversations or prompt/completion pairs (data.source="jsonl"), or
a local Hugging Face dataset of them (data.source="hf"), rendered with data.chat_template
("plain" for byte-level runs) and packed several to a row with segment ids, so packed
conversations never attend to each other. Usually started from a pretrained decoder with
`init_from`.

Eval reports loss and token accuracy on the assistant's tokens, and exact_match: the share of
held-out conversations whose every assistant turn is predicted exactly. Each prediction is the
argmax given the reference conversation so far, so this is exactly the share of conversations in
which greedy decoding, given each turn's history, writes every answer as the reference does. The
run ends with that share before (the `init_from` model) and after, and a few greedy answers.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bigjax import finetune
from bigjax.config_checks import ConfigError
from bigjax.data import chat, pipeline, sft
from bigjax.models import gpt
from bigjax.models.layers import TransformerConfig
from bigjax.tasks.base import Loss, Report, TransformerTask, dropout_rngs
from bigjax.tasks.lm import decoder_flops_per_example, make_tokenizer

SHOWN_ANSWERS = 3  # held-out conversations the run ends by answering greedily, as text
BATCH_SPEC_INT = ("inputs", "targets", "positions", "segment_ids")


class SftTask(TransformerTask):

  metric_names = ("loss", "token_accuracy", "exact_match")

  def __init__(self, config: ml_collections.ConfigDict, process_index: int = 0,
               process_count: int = 1):
    d = config.data
    if not d.chat_template:
      raise ConfigError("task=sft renders conversations with data.chat_template: set it to "
                        "'plain' (byte-level runs) or a Jinja template")
    if d.tokenizer == "sentencepiece" and not os.path.exists(d.tokenizer_path):
      raise ConfigError(f"task=sft reads the pretrained run's SentencePiece model: "
                        f"data.tokenizer_path={d.tokenizer_path!r} does not exist")
    super().__init__(config, process_index, process_count)
    self.throughput_unit = ("tokens", config.seq_len)
    self.tokenizer = make_tokenizer(config)
    # Every conversation is read, rendered and tokenized once now: bad records fail here.
    self.conversations = {split: sft.Conversations(sft.records(d, split), d.chat_template,
                                                   self.tokenizer, config.seq_len)
                          for split in ("train", "validation")}
    for split, conversations in self.conversations.items():
      if not len(conversations):
        raise ConfigError(f"data.path={d.path!r} holds no {split} conversations")
    self.model_cfg = TransformerConfig.from_config(config, self.tokenizer.vocab_size)
    self.model = gpt.Decoder(self.model_cfg)
    self._replicated_eval_sums = jax.jit(self.eval_sums)  # `finish`'s, compiled once for both

  # The loop's interface.

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    shape = (batch_size, self.config.seq_len)
    spec = {k: jax.ShapeDtypeStruct(shape, jnp.int32) for k in BATCH_SPEC_INT}
    return spec | {"weights": jax.ShapeDtypeStruct(shape, jnp.float32)}

  def init(self, rng, batch):
    return self.model.init({"params": rng}, batch["inputs"])

  def _token_losses(self, params, batch, rng=None, train=False):
    """(loss_BxL, correct_BxL): per position, over every position (weights select later)."""
    logits_BxLxV, _ = self.model.apply(
        {"params": params}, batch["inputs"], positions_BxL=batch["positions"], train=train,
        rngs=dropout_rngs(rng), segment_ids_BxL=batch["segment_ids"])
    logits_BxLxV = logits_BxLxV.astype(jnp.float32)
    loss_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch["targets"])
    return loss_BxL, jnp.argmax(logits_BxLxV, -1) == batch["targets"]

  def loss(self, params, batch, rng, train: bool):
    loss_BxL, correct_BxL = self._token_losses(params, batch, rng, train)
    weights_BxL = batch["weights"]
    return Loss(total=(loss_BxL * weights_BxL).sum(), weight=weights_BxL.sum(),
                metrics={"token_accuracy": (correct_BxL * weights_BxL).sum()})

  def eval_sums(self, params, batch) -> dict[str, jax.Array]:
    loss_BxL, correct_BxL = self._token_losses(params, batch)
    weights_BxL, segment_ids_BxL = batch["weights"], batch["segment_ids"]
    exact, conversations = exact_conversations(correct_BxL, weights_BxL > 0, segment_ids_BxL)
    return {"loss": (loss_BxL * weights_BxL).sum(), "tokens": weights_BxL.sum(),
            "correct": (correct_BxL * weights_BxL).sum(), "exact": exact,
            "conversations": conversations}

  def eval_summary(self, sums) -> Report:
    return Report({"loss": float(sums["loss"] / sums["tokens"]),
                   "token_accuracy": float(sums["correct"] / sums["tokens"]),
                   "exact_match": float(sums["exact"] / sums["conversations"])})

  def train_data(self, local_batch: int, seed: int):
    rows = sft.PackedRows(self.conversations["train"], self.config.seq_len, seed)
    return pipeline.train_batches(pipeline.in_order(), rows.read, local_batch, seed,
                                  self.process_index, self.process_count,
                                  self.config.data.workers)

  def eval_data(self, local_batch: int, num_batches: int):
    """The held-out conversations packed in order: all of them, or the first `num_batches`
    global batches of rows; the last batch is padded with empty rows (weight 0)."""
    rows = self._eval_rows()
    global_batch = local_batch * self.process_count
    num_batches = min(num_batches, -(-len(rows) // global_batch))
    read = lambda i, rng: self._eval_row(rows, i)
    return pipeline.eval_batches(num_batches * global_batch, read, local_batch, num_batches,
                                 self.config.seed, self.process_index, self.process_count)

  def flops_per_example(self, params) -> float:
    return decoder_flops_per_example(params, self.model_cfg, self.config.seq_len)

  def finish(self, params, rng) -> Report:
    """Exact match on the held-out conversations before (init_from) and after, and a few
    greedy answers."""
    del rng
    lines = []
    if self.config.init_from:
      abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                             sharding=x.sharding), params)
      before = finetune.load_pretrained(params, abstract, self.config.init_from)
      lines.append(f"before ({self.config.init_from}): {self._exact_match(before)}")
    lines.append(f"after: {self._exact_match(params)}")
    return Report(texts={"exact_match": "\n".join(lines), "answers": self._answers(params)})

  # Evaluation helpers.

  def _eval_rows(self) -> list[np.ndarray]:
    conversations = self.conversations["validation"]
    return sft.next_fit(conversations.lengths, np.arange(len(conversations)),
                        self.config.seq_len)

  def _eval_row(self, rows: list[np.ndarray], i: int) -> dict:
    conversations = self.conversations["validation"]
    examples = [conversations.example(int(c)) for c in rows[i]] if i < len(rows) else []
    return sft.pack_row(examples, self.config.seq_len)

  def _exact_match(self, params) -> str:
    """"E of N held-out conversations (P%)", every process computing all of it (its inputs are
    the same on every process, so they may be replicated)."""
    rows, batch_rows = self._eval_rows(), 8
    eval_sums = self._replicated_eval_sums
    exact = total = 0
    for first in range(0, len(rows), batch_rows):
      batch = pipeline.stack([self._eval_row(rows, i)
                              for i in range(first, first + batch_rows)])
      sums = jax.device_get(eval_sums(params, batch))
      exact, total = exact + int(sums["exact"]), total + int(sums["conversations"])
    return f"{exact} of {total} held-out conversations exactly right ({exact / total:.1%})"

  def _answers(self, params) -> str:
    """The first held-out conversations' last answers, decoded greedily (as long as the reference
    in tokens), against the reference."""
    conversations, shown = self.conversations["validation"], []
    for i in range(min(SHOWN_ANSWERS, len(conversations))):
      messages = sft.messages(conversations.records[i], conversations.records.where(i))
      last = max(j for j, m in enumerate(messages) if m["role"] == "assistant")
      prompt = chat.render_text(messages[:last], self.config.data.chat_template, True)
      reference = chat.render(messages[:last + 1], self.config.data.chat_template)[-1][0]
      shown.append((messages[last - 1]["content"], self.tokenizer.encode(prompt), reference))
    lengths = [len(self.tokenizer.encode(reference)) for _, _, reference in shown]
    # Imported here, not with the package: `python -m bigjax.generate` would load it twice.
    from bigjax import generate

    answers = generate.generate(self.model, params, [p for _, p, _ in shown], max(lengths),
                                temperature=0.0)
    lines = []
    for (question, _, reference), tokens, n in zip(shown, answers, lengths):
      answer = self.tokenizer.decode(np.asarray(tokens[:n]))
      mark = "right" if answer == reference else "wrong"
      lines.append(f"{question!r} -> {answer!r} ({mark}; reference {reference!r})")
    return "\n".join(lines)


def exact_conversations(correct_BxL, graded_BxL, segment_ids_BxL) -> tuple[jax.Array, jax.Array]:
  """(segments whose every graded position is correct, segments with a graded position), over
  the rows' segments 1.. (segment 0 is padding)."""
  B, L = segment_ids_BxL.shape
  rows_BxL = jnp.broadcast_to(jnp.arange(B)[:, None], (B, L))
  graded_BxS = jnp.zeros((B, L + 1), bool).at[rows_BxL, segment_ids_BxL].max(graded_BxL)
  wrong_BxS = jnp.zeros((B, L + 1), bool).at[rows_BxL, segment_ids_BxL].max(
      graded_BxL & ~correct_BxL)
  exact_BxS = graded_BxS & ~wrong_BxS
  return exact_BxS[:, 1:].sum(), graded_BxS[:, 1:].sum()
