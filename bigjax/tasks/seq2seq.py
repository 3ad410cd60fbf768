"""Sequence to sequence with an encoder-decoder Transformer, trained by teacher forcing.

Data (`config.data`): source="synthetic" with name="reverse", "sort" or "addition" generates
digit-string pairs on the fly (offline, endless, deterministic in the index); eval decodes with
beam search (`config.seq2seq.beam_size`, 1 = greedy) and reports exact match, the share of
outputs equal to the target. Eval also reports teacher-forced loss and token accuracy.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from bigjax.config_checks import ConfigError
from bigjax.data import text_tasks
from bigjax.data.tokenizers import ByteTokenizer
from bigjax.models import seq2seq
from bigjax.models.layers import TransformerConfig
from bigjax.throughput import decoder_flops_per_token

TRAIN_EXAMPLES = 10**8  # the synthetic train set is endless in practice: pair i is drawn from i
EVAL_SEED_OFFSET = 1  # eval pairs come from another seed than train pairs


class Seq2SeqTask:

  def __init__(self, config: ml_collections.ConfigDict, process_index: int = 0,
               process_count: int = 1):
    if config.data.source != "synthetic":
      raise ConfigError(f"data.source={config.data.source!r}: task=seq2seq reads "
                        f"source='synthetic' (name: {', '.join(text_tasks.ALGORITHMIC)})")
    if config.seq2seq.beam_size < 1:
      raise ConfigError(f"seq2seq.beam_size={config.seq2seq.beam_size} must be at least 1")
    text_tasks.algorithmic_pairs(config.data.name, config.seq_len, config.seed)  # checks the name
    self.config = config
    self.process_index, self.process_count = process_index, process_count
    self.tokenizer = ByteTokenizer()
    self.special = text_tasks.SpecialTokens(self.tokenizer.vocab_size)
    self.model_cfg = TransformerConfig.from_config(config, self.special.vocab_size)
    self.model = seq2seq.EncoderDecoder(self.model_cfg, self.special.pad)

  # The loop's interface.

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    shape = (batch_size, self.config.seq_len)
    return {k: jax.ShapeDtypeStruct(shape, jnp.int32)
            for k in ("inputs", "decoder_inputs", "targets")}

  def init(self, rng, batch):
    return self.model.init({"params": rng}, batch["inputs"], batch["decoder_inputs"])

  def _token_losses(self, params, batch, rng=None, train=False):
    logits_BxLxV = self.model.apply({"params": params}, batch["inputs"], batch["decoder_inputs"],
                                    train=train, rngs={"dropout": rng} if rng is not None else {})
    logits_BxLxV = logits_BxLxV.astype(jnp.float32)
    loss_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch["targets"])
    return loss_BxL, logits_BxLxV, batch["targets"] != self.special.pad

  def loss(self, params, batch, rng, train: bool):
    loss_BxL, _, real_BxL = self._token_losses(params, batch, rng, train)
    return (loss_BxL * real_BxL).sum() / jnp.maximum(real_BxL.sum(), 1), {}

  def eval_sums(self, params, batch) -> dict[str, jax.Array]:
    loss_BxL, logits_BxLxV, real_BxL = self._token_losses(params, batch)
    correct_BxL = (jnp.argmax(logits_BxLxV, -1) == batch["targets"]) & real_BxL
    s = self.config.seq2seq
    outputs_BxL = seq2seq.decode(self.model, params, batch["inputs"], self.config.seq_len,
                                 self.special.bos, self.tokenizer.eos_id, s.beam_size,
                                 s.length_penalty)
    exact_B = (outputs_BxL == batch["targets"]).all(-1)
    return {"loss": (loss_BxL * real_BxL).sum(), "correct": correct_BxL.sum(),
            "tokens": real_BxL.sum(), "exact": exact_B.sum(), "examples": exact_B.size}

  def eval_summary(self, sums) -> dict[str, float]:
    return {"loss": float(sums["loss"] / sums["tokens"]),
            "token_accuracy": float(sums["correct"] / sums["tokens"]),
            "exact_match": float(sums["exact"] / sums["examples"])}

  def train_data(self, local_batch: int, seed: int):
    return text_tasks.train_dataset(self._examples(seed, TRAIN_EXAMPLES), local_batch, seed)

  def eval_data(self, local_batch: int, num_batches: int):
    count = local_batch * num_batches * self.process_count
    return text_tasks.eval_batches(self._examples(self.config.seed + EVAL_SEED_OFFSET, count),
                                   local_batch, num_batches, self.config.seed)

  def flops_per_example(self, params) -> float:
    """Encoder and decoder tokens, each 6 x its matmul params + attention; an estimate."""
    cfg, L = self.model_cfg, self.config.seq_len
    n = sum(x.size for x in jax.tree.leaves(params))
    return 2 * decoder_flops_per_token(n / 2, cfg.num_layers, L, cfg.d_model, causal=False) * L

  def finish(self, params, rng) -> dict[str, str]:
    """A few decoded validation examples, as source -> output (target)."""
    del rng
    batch = next(iter(self.eval_data(4, 1)))
    s = self.config.seq2seq
    outputs_BxL = jax.jit(lambda p, x: seq2seq.decode(
        self.model, p, x, self.config.seq_len, self.special.bos, self.tokenizer.eos_id,
        s.beam_size, s.length_penalty))(params, batch["inputs"])
    text = lambda ids: self.tokenizer.decode(i for i in ids if i < self.tokenizer.vocab_size)
    lines = [f"{text(x)} -> {text(y)} ({text(t)})"
             for x, y, t in zip(batch["inputs"], jax.device_get(outputs_BxL), batch["targets"])]
    return {"decoded": "\n".join(lines)}

  # Data.

  def _examples(self, seed: int, size: int) -> text_tasks.Seq2SeqExamples:
    """This process's pairs: every P-th index, so processes never share a pair."""
    pairs = text_tasks.algorithmic_pairs(self.config.data.name, self.config.seq_len, seed)
    share = lambda i: pairs(i * self.process_count + self.process_index)
    return text_tasks.Seq2SeqExamples(share, size // self.process_count, self.tokenizer,
                                      self.config.seq_len, self.special)
