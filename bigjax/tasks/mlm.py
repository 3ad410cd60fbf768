"""Masked-LM pretraining of a BERT-style encoder, optionally with next-sentence prediction.

Data: the configured corpus (by default Python's standard library) packed into one token stream,
cut into chunks, wrapped as [CLS] chunk [SEP] and corrupted by bigjax.data.mlm.mask_tokens.
The loss is the mean cross-entropy over the chosen positions only; eval reports that loss and the
accuracy on the chosen positions (plus NSP accuracy when enabled).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bigjax.config_checks import ConfigError
from bigjax.data import lm as lm_data
from bigjax.data import mlm as mlm_data
from bigjax.data import pipeline, sources
from bigjax.data.tokenizers import SpecialTokens
from bigjax.hf.tokenizer import HuggingFaceTokenizer
from bigjax.models import bert
from bigjax.models.layers import TransformerConfig
from bigjax.tasks.base import Loss, Report, TransformerTask, dropout_rngs
from bigjax.tasks.lm import make_tokenizer
from bigjax.throughput import decoder_flops_per_token


def special_tokens(tokenizer) -> SpecialTokens:
  """[PAD] [CLS] [SEP] [MASK]: a BERT tokenizer's own (Hugging Face WordPiece), otherwise new ids
  above the tokenizer's vocabulary."""
  if isinstance(tokenizer, HuggingFaceTokenizer):
    own = tokenizer.encoder_special_tokens()
    if own is not None:
      return own
  return SpecialTokens(tokenizer.vocab_size)


def encoder_config(config: ml_collections.ConfigDict, special: SpecialTokens):
  return TransformerConfig.from_config(config, special.vocab_size, causal=False)


def encoder_flops_per_example(params, cfg: TransformerConfig, seq_len: int) -> float:
  """6 x matmul params + full (non-causal) attention, per token, times seq_len."""
  n = sum(x.size for x in jax.tree.leaves(params))
  n -= params["encoder"]["pos_embed"]["embedding"].size if cfg.positions == "learned" else 0
  return decoder_flops_per_token(n, cfg.num_layers, seq_len, cfg.d_model, causal=False) * seq_len


def encoder_inputs(ids, seq_len: int, special: SpecialTokens) -> np.ndarray:
  """[CLS] ids [SEP], padded to seq_len: one text as the encoder tasks read it."""
  if len(ids) > seq_len - 2:
    raise ConfigError(f"the input has {len(ids)} tokens; this encoder reads at most "
                      f"seq_len - 2 = {seq_len - 2}")
  inputs_L = np.full(seq_len, special.pad, np.int32)
  inputs_L[:len(ids) + 2] = np.concatenate([[special.cls], ids, [special.sep]])
  return inputs_L


def encoder_embeddings(model: nn.Module, params, inputs_BxL, pad: int):
  """embeddings_BxD: the encoder's last hidden states averaged over the real (non-pad) tokens,
  for any model with an `encoder` (bert.MaskedLM, bert.Classifier)."""
  valid_BxL = inputs_BxL != pad
  h_BxLxD = model.apply({"params": params}, inputs_BxL, valid_BxL,
                        method=lambda m, tokens, valid: m.encoder(tokens, valid))
  weights_BxLx1 = valid_BxL[..., None].astype(jnp.float32)
  return (h_BxLxD.astype(jnp.float32) * weights_BxLx1).sum(1) / weights_BxLx1.sum(1)


class MaskedLanguageModelTask(TransformerTask):

  def __init__(self, config: ml_collections.ConfigDict, process_index: int = 0,
               process_count: int = 1):
    super().__init__(config, process_index, process_count)
    m = config.mlm
    if not 0 < m.mask_rate < 1:
      raise ConfigError(f"mlm.mask_rate={m.mask_rate} must lie strictly between 0 and 1")
    if m.nsp and config.model.token_types < 2:
      raise ConfigError("mlm.nsp=True needs segment embeddings: set model.token_types=2")
    if config.seq_len < (5 if m.nsp else 3):
      raise ConfigError(f"seq_len={config.seq_len} leaves no room for text between [CLS] and "
                        f"[SEP]; use a longer seq_len")
    self.throughput_unit = ("tokens", config.seq_len)
    self.metric_names = ("loss", "masked_accuracy") + (
        ("nsp_loss", "nsp_accuracy") if m.nsp else ())
    self.tokenizer = make_tokenizer(config)
    self.special = special_tokens(self.tokenizer)
    self.model_cfg = encoder_config(config, self.special)
    self.model = bert.MaskedLM(self.model_cfg, config.model.token_types, m.nsp)

  # The loop's interface.

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    shape = (batch_size, self.config.seq_len)
    spec = {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32),
            "targets": jax.ShapeDtypeStruct(shape, jnp.int32),
            "weights": jax.ShapeDtypeStruct(shape, jnp.float32)}
    if self.config.mlm.nsp:
      spec |= {"types": jax.ShapeDtypeStruct(shape, jnp.int32),
               "nsp_labels": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
    return spec

  def init(self, rng, batch):
    return self.model.init({"params": rng}, batch["inputs"], batch["inputs"] != self.special.pad,
                           batch.get("types"))

  def _losses(self, params, batch, rng=None, train=False):
    """(per-position MLM loss_BxL, logits, NSP loss_B and logits, or None)."""
    valid_BxL = batch["inputs"] != self.special.pad  # MLM windows are full; kept for clarity
    logits_BxLxV, nsp_Bx2 = self.model.apply(
        {"params": params}, batch["inputs"], valid_BxL, batch.get("types"), train=train,
        rngs=dropout_rngs(rng))
    logits_BxLxV = logits_BxLxV.astype(jnp.float32)
    loss_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch["targets"])
    nsp = None
    if nsp_Bx2 is not None:
      nsp_Bx2 = nsp_Bx2.astype(jnp.float32)
      nsp = (optax.softmax_cross_entropy_with_integer_labels(nsp_Bx2, batch["nsp_labels"]),
             nsp_Bx2)
    return loss_BxL, logits_BxLxV, nsp

  def loss(self, params, batch, rng, train: bool) -> Loss:
    loss_BxL, _, nsp = self._losses(params, batch, rng, train)
    weights_BxL = batch["weights"]  # only the chosen positions are graded
    if nsp is None:
      return Loss(total=(loss_BxL * weights_BxL).sum(), weight=weights_BxL.sum())
    # Per example: its masked-LM mean plus its NSP loss. Every window has the same number of
    # chosen positions, so the batch mean equals BERT's token mean plus example mean.
    mlm_B = (loss_BxL * weights_BxL).sum(-1) / jnp.maximum(weights_BxL.sum(-1), 1.0)
    nsp_B = nsp[0]
    return Loss(total=(mlm_B + nsp_B).sum(), weight=jnp.float32(mlm_B.size),
                metrics={"mlm_loss": mlm_B.sum(), "nsp_loss": nsp_B.sum()})

  def eval_sums(self, params, batch) -> dict[str, jax.Array]:
    loss_BxL, logits_BxLxV, nsp = self._losses(params, batch)
    weights_BxL = batch["weights"]
    correct_BxL = jnp.argmax(logits_BxLxV, -1) == batch["targets"]
    sums = {"loss": (loss_BxL * weights_BxL).sum(), "correct": (correct_BxL * weights_BxL).sum(),
            "masked": weights_BxL.sum()}
    if nsp is not None:
      sums |= {"nsp_loss": nsp[0].sum(), "nsp_examples": nsp[0].size,
               "nsp_correct": (jnp.argmax(nsp[1], -1) == batch["nsp_labels"]).sum()}
    return sums

  def eval_summary(self, sums) -> Report:
    out = {"loss": float(sums["loss"] / sums["masked"]),
           "masked_accuracy": float(sums["correct"] / sums["masked"])}
    if "nsp_loss" in sums:
      out |= {"nsp_loss": float(sums["nsp_loss"] / sums["nsp_examples"]),
              "nsp_accuracy": float(sums["nsp_correct"] / sums["nsp_examples"])}
    return Report(out)

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
    return encoder_flops_per_example(params, self.model_cfg, self.config.seq_len)

  # Data.

  def _examples(self, split: str) -> mlm_data.MlmExamples:
    docs = sources.documents(self.config.data, split)
    examples = mlm_data.MlmExamples(lm_data.pack(docs, self.tokenizer), self.config.seq_len,
                                    self.special, self.config.mlm.mask_rate, self.config.mlm.nsp)
    if not len(examples):
      raise ConfigError(f"the {split} split has fewer than seq_len={self.config.seq_len} tokens; "
                        f"use more data or a shorter seq_len")
    return examples
