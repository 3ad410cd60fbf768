"""Sequence to sequence with an encoder-decoder Transformer, trained by teacher forcing.

Data (`config.data`):
  source="synthetic", name="reverse", "sort" or "addition": digit-string pairs generated on the
    fly (offline, endless, deterministic in the index), one byte token per character.
  source="tfds", name="wmt14_translate/de-en" (a key of TFDS_TRANSLATION_DATASETS):
    sentence pairs read by index through tfds.data_source and grain, in one SentencePiece
    vocabulary for both languages (data.tokenizer_path, trained on both sides of
    TOKENIZER_PAIRS train pairs when the file is missing). Eval reads the validation split.

Eval decodes with beam search (`config.seq2seq.beam_size`, 1 = greedy) and reports exact_match,
the share of outputs equal to their target, and bleu, corpus BLEU (bigjax.bleu): over tokens
(digits) for the synthetic tasks, over the words of the detokenized text for translation. Targets
longer than seq_len are cut, so BLEU's references are cut too. Eval also reports teacher-forced
loss and token accuracy.
"""


import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from bigjax import bleu
from bigjax.config_checks import ConfigError
from bigjax.data import pipeline, tokenizers
from bigjax.data import seq2seq as pairs_data
from bigjax.data.tokenizers import SpecialTokens
from bigjax.models import seq2seq
from bigjax.models.layers import TransformerConfig
from bigjax.tasks.base import Loss, Report, TransformerTask, dropout_rngs
from bigjax.throughput import decoder_flops_per_token

SYNTHETIC_EXAMPLES = 10**8  # the synthetic sets are endless in practice: pair i is drawn from i
EVAL_SEED_OFFSET = 1  # synthetic eval pairs come from another seed than train pairs
TOKENIZER_PAIRS = 100_000  # evenly spaced train pairs whose two sides train the SentencePiece model


class Seq2SeqTask(TransformerTask):

  metric_names = ("loss", "token_accuracy", "exact_match", "bleu")

  def __init__(self, config: ml_collections.ConfigDict, process_index: int = 0,
               process_count: int = 1):
    if config.data.source not in ("synthetic", "tfds"):
      raise ConfigError(f"data.source={config.data.source!r}: task=seq2seq reads "
                        f"source='synthetic' (name: {', '.join(pairs_data.ALGORITHMIC)}) or "
                        f"'tfds' (name: {', '.join(pairs_data.TFDS_TRANSLATION_DATASETS)})")
    if config.seq2seq.beam_size < 1:
      raise ConfigError(f"seq2seq.beam_size={config.seq2seq.beam_size} must be at least 1")
    d = config.data
    if d.source == "tfds" and (d.tokenizer != "sentencepiece" or not d.tokenizer_path):
      raise ConfigError("translation (data.source='tfds') needs data.tokenizer='sentencepiece' "
                        "and data.tokenizer_path (a model file, trained there if missing)")
    super().__init__(config, process_index, process_count)
    self.throughput_unit = ("tokens", config.seq_len)
    self._pairs_of_split = {}
    self._pairs("train")  # checks data.name (and opens the tfds split) now, not at the first batch
    self.tokenizer = self._make_tokenizer()
    self.special = SpecialTokens(self.tokenizer.vocab_size)
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
                                    train=train, rngs=dropout_rngs(rng))
    logits_BxLxV = logits_BxLxV.astype(jnp.float32)
    loss_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch["targets"])
    return loss_BxL, logits_BxLxV, batch["targets"] != self.special.pad

  def loss(self, params, batch, rng, train: bool):
    loss_BxL, _, real_BxL = self._token_losses(params, batch, rng, train)
    return Loss(total=(loss_BxL * real_BxL).sum(), weight=real_BxL.sum().astype(jnp.float32))

  def eval_sums(self, params, batch) -> dict[str, jax.Array]:
    loss_BxL, logits_BxLxV, real_BxL = self._token_losses(params, batch)
    correct_BxL = (jnp.argmax(logits_BxLxV, -1) == batch["targets"]) & real_BxL
    outputs_BxL = self._decode(params, batch["inputs"])
    exact_B = (outputs_BxL == batch["targets"]).all(-1)
    # BLEU's n-grams are counted on the host (bigjax.bleu says why), once, on the whole batch
    # gathered to one device; asking for it replicated makes that gather explicit (XLA warns of
    # an "involuntary full rematerialization" otherwise). The counts add up over batches.
    whole = lambda x_BxL: nn.with_logical_constraint(x_BxL, (None, None))
    bleu_statistics = jax.pure_callback(
        self._bleu_statistics, jax.ShapeDtypeStruct((2 * bleu.MAX_ORDER + 2,), jnp.int32),
        whole(outputs_BxL), whole(batch["targets"]))
    return {"loss": (loss_BxL * real_BxL).sum(), "correct": correct_BxL.sum(),
            "tokens": real_BxL.sum(), "exact": exact_B.sum(), "examples": exact_B.size,
            "bleu": bleu_statistics}

  def eval_summary(self, sums) -> Report:
    # Smoothed as sacrebleu's corpus BLEU is by default: it changes the score only while some
    # n-gram order has no match in the whole eval set, early in training, where it gives a small
    # rising figure instead of a flat 0.
    return Report({"loss": float(sums["loss"] / sums["tokens"]),
                   "token_accuracy": float(sums["correct"] / sums["tokens"]),
                   "exact_match": float(sums["exact"] / sums["examples"]),
                   "bleu": bleu.score(sums["bleu"], smooth=True)})

  def train_data(self, local_batch: int, seed: int):
    examples = self._examples("train")
    return pipeline.train_batches(pipeline.shuffled(len(examples), seed), examples.example,
                                  local_batch, seed, self.process_index, self.process_count,
                                  self.config.data.workers)

  def eval_data(self, local_batch: int, num_batches: int):
    examples = self._examples("validation")
    return pipeline.eval_batches(len(examples), examples.example, local_batch, num_batches,
                                 self.config.seed, self.process_index, self.process_count)

  def flops_per_example(self, params) -> float:
    """Encoder and decoder tokens, each 6 x its matmul params + attention; an estimate."""
    cfg, L = self.model_cfg, self.config.seq_len
    n = sum(x.size for x in jax.tree.leaves(params))
    return 2 * decoder_flops_per_token(n / 2, cfg.num_layers, L, cfg.d_model, causal=False) * L

  def finish(self, params, rng) -> Report:
    """A few decoded validation examples, as source -> output (target)."""
    del rng
    batch = next(iter(self.eval_data(4, 1)))
    # The outputs may be laid out over other processes' devices too: gather them all here.
    outputs_BxL = multihost_utils.process_allgather(jax.jit(self._decode)(params, batch["inputs"]),
                                                    tiled=True)
    text = lambda ids: self.tokenizer.decode(i for i in ids if i < self.tokenizer.vocab_size)
    lines = [f"{text(x)} -> {text(y)} ({text(t)})"
             for x, y, t in zip(batch["inputs"], outputs_BxL, batch["targets"])]
    return Report(texts={"decoded": "\n".join(lines)})

  # Decoding and scoring.

  def source_inputs(self, text: str) -> np.ndarray:
    """inputs_S: `text` as the encoder reads it, padded to seq_len."""
    ids = self.tokenizer.encode(text)
    if len(ids) > self.config.seq_len:
      raise ConfigError(f"the input has {len(ids)} tokens; this model reads at most "
                        f"seq_len={self.config.seq_len}")
    return np.pad(ids, (0, self.config.seq_len - len(ids)), constant_values=self.special.pad)

  def translate(self, params, source_BxS):
    """outputs_BxT as eval decodes them: beam search as `config.seq2seq` sets it (greedy at 1)."""
    return self._decode(params, source_BxS)

  def output_text(self, ids_T) -> str:
    """An output's text: its tokens before [EOS], special tokens left out."""
    ids = [int(i) for i in ids_T]
    ids = ids[:ids.index(self.tokenizer.eos_id)] if self.tokenizer.eos_id in ids else ids
    return self.tokenizer.decode(i for i in ids if i < self.tokenizer.vocab_size)

  def _decode(self, params, source_BxS):
    s = self.config.seq2seq
    return seq2seq.decode(self.model, params, source_BxS, self.config.seq_len, self.special.bos,
                          self.tokenizer.eos_id, s.beam_size, s.length_penalty)

  def _bleu_statistics(self, outputs_BxL, targets_BxL) -> np.ndarray:
    stats = bleu.corpus_statistics([self._bleu_tokens(y) for y in np.asarray(outputs_BxL)],
                                   [self._bleu_tokens(t) for t in np.asarray(targets_BxL)])
    return stats.astype(np.int32)

  def _bleu_tokens(self, ids_L) -> list:
    """What BLEU counts in one output or target: its tokens before [EOS] for the digit tasks,
    the words of its detokenized text for translation."""
    ids = [int(i) for i in ids_L]
    ids = ids[:ids.index(self.tokenizer.eos_id)] if self.tokenizer.eos_id in ids else ids
    ids = [i for i in ids if i < self.tokenizer.vocab_size]  # [PAD] fills a cut-off output
    if self.config.data.source == "synthetic":
      return ids
    return bleu.words(self.tokenizer.decode(ids))

  # Data.

  def _make_tokenizer(self):
    d = self.config.data
    if d.source == "synthetic":
      return tokenizers.ByteTokenizer()
    pair, size = self._pairs("train")
    sample = np.linspace(0, size - 1, min(size, TOKENIZER_PAIRS)).round().astype(int)
    return tokenizers.sentencepiece(d.tokenizer_path, d.vocab_size,
                                    lambda: (text for i in sample for text in pair(int(i))))

  def _pairs(self, split: str):
    """(pair i of `split` as (source, target) text, number of pairs), opened once per split."""
    if split not in self._pairs_of_split:
      c = self.config
      if c.data.source == "synthetic":
        seed = c.seed + (EVAL_SEED_OFFSET if split == "validation" else 0)
        pairs = pairs_data.algorithmic_pairs(c.data.name, c.seq_len, seed), SYNTHETIC_EXAMPLES
      else:
        pairs = pairs_data.tfds_translation_pairs(c.data.name, split, c.data.tfds_dir)
      self._pairs_of_split[split] = pairs
    return self._pairs_of_split[split]

  def _examples(self, split: str) -> pairs_data.Seq2SeqExamples:
    pair, size = self._pairs(split)
    return pairs_data.Seq2SeqExamples(pair, size, self.tokenizer, self.config.seq_len,
                                      self.special)
