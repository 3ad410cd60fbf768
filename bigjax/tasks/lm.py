"""Next-token prediction with a decoder-only Transformer (GPT-2 and Llama configs)."""


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bigjax.config_checks import ConfigError
from bigjax.data import lm as lm_data
from bigjax.data import mixture, pipeline, shards, sources, tokenizers
from bigjax.hf.tokenizer import HuggingFaceTokenizer
from bigjax.throughput import decoder_flops_per_token
from bigjax.models import gpt
from bigjax.models.layers import TransformerConfig
from bigjax.tasks.base import Loss, Report, TransformerTask, dropout_rngs


def make_tokenizer(config: ml_collections.ConfigDict):
  data = config.data
  if data.tokenizer == "byte":
    return tokenizers.ByteTokenizer()
  if data.tokenizer not in ("sentencepiece", "hf"):
    raise ConfigError(f"data.tokenizer={data.tokenizer!r}; use byte, sentencepiece or hf")
  if not data.tokenizer_path:
    raise ConfigError(f"data.tokenizer={data.tokenizer!r} needs data.tokenizer_path")
  if data.tokenizer == "hf":
    return HuggingFaceTokenizer(data.tokenizer_path)
  return tokenizers.sentencepiece(data.tokenizer_path, data.vocab_size,
                                  lambda: sources.documents(data, "train"))


def decoder_flops_per_example(params, cfg: TransformerConfig, seq_len: int) -> float:
  """Training FLOPs for one sequence of a decoder (6N + attention per token, times seq_len)."""
  n = gpt.count_params(params)
  n -= params["embed"]["embedding"].size + (params["pos_embed"]["embedding"].size
                                            if "pos_embed" in params else 0)
  n += cfg.vocab_size * cfg.d_model if cfg.tie_embeddings else 0  # the tied output matmul
  return decoder_flops_per_token(n, cfg.num_layers, seq_len, cfg.d_model) * seq_len


class LanguageModelTask(TransformerTask):
  """Packed next-token prediction; eval reports loss, perplexity and next-token accuracy."""

  metric_names = ("loss", "perplexity", "accuracy")

  def __init__(self, config: ml_collections.ConfigDict, process_index: int = 0,
               process_count: int = 1):
    super().__init__(config, process_index, process_count)
    self.throughput_unit = ("tokens", config.seq_len)
    sources.check_source(config.data)
    self.tokenizer = make_tokenizer(config)
    for path in self._shard_directories():  # a tokenizer mismatch fails now, not mid-run
      shards.check_tokenizer(shards.read_manifest(path), self.tokenizer, path)
    self.model_cfg = TransformerConfig.from_config(config, self.tokenizer.vocab_size)
    self.model = gpt.Decoder(self.model_cfg)
    self._check_sample()
    self._validation = self._windows("validation")  # a split too short fails now, not at eval

  # The loop's interface.

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    shape = (batch_size, self.config.seq_len)
    return {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32),
            "targets": jax.ShapeDtypeStruct(shape, jnp.int32)}

  def init(self, rng, batch):
    return self.model.init({"params": rng}, batch["inputs"])

  def loss(self, params, batch, rng, train: bool):
    logits_BxLxV, _ = self.model.apply({"params": params}, batch["inputs"], train=train,
                                       rngs=dropout_rngs(rng))
    loss_BxL = optax.softmax_cross_entropy_with_integer_labels(
        logits_BxLxV.astype(jnp.float32), batch["targets"])
    return Loss(total=loss_BxL.sum(), weight=jnp.float32(loss_BxL.size))

  def eval_sums(self, params, batch) -> dict[str, jax.Array]:
    logits_BxLxV, _ = self.model.apply({"params": params}, batch["inputs"])
    logits_BxLxV = logits_BxLxV.astype(jnp.float32)
    loss_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch["targets"])
    correct_BxL = jnp.argmax(logits_BxLxV, -1) == batch["targets"]
    return {"loss": loss_BxL.sum(), "correct": correct_BxL.sum(), "tokens": loss_BxL.size}

  def eval_summary(self, sums) -> Report:
    loss = float(sums["loss"] / sums["tokens"])
    return Report({"loss": loss, "perplexity": float(np.exp(loss)),
                   "accuracy": float(sums["correct"] / sums["tokens"])})

  def train_data(self, local_batch: int, seed: int):
    windows = self._windows("train")
    return pipeline.train_batches(windows.train_order(seed), windows.read, local_batch, seed,
                                  self.process_index, self.process_count,
                                  self.config.data.workers)

  def eval_data(self, local_batch: int, num_batches: int):
    keys = self._validation.eval_keys()
    return pipeline.eval_batches(len(keys), lambda i, rng: self._validation.read(keys[i]),
                                 local_batch, num_batches, self.config.seed, self.process_index,
                                 self.process_count)

  def flops_per_example(self, params) -> float:
    return decoder_flops_per_example(params, self.model_cfg, self.config.seq_len)

  def finish(self, params, rng) -> Report:
    """A text sample from the trained model, continuing `config.sample.prompt`."""
    s = self.config.sample
    if not s.prompt:
      return Report()
    # Imported here, not with the package: `python -m bigjax.generate` would load it twice.
    from bigjax import generate

    prompt = self.tokenizer.encode(s.prompt)
    new = generate.generate(self.model, params, [prompt],
                            min(s.max_new_tokens, self.model_cfg.max_len - len(prompt)),
                            s.temperature, s.top_k, s.top_p,
                            seed=int(jax.random.randint(rng, (), 0, 2**31 - 1)))[0]
    return Report(texts={"sample": s.prompt + self.tokenizer.decode(new)})

  def _check_sample(self) -> None:
    """The final sample's settings must work, or the run would fail after all its steps."""
    s, vocab = self.config.sample, self.tokenizer.vocab_size
    if s.top_k > vocab:
      raise ConfigError(f"sample.top_k={s.top_k} is larger than the vocabulary ({vocab}); use "
                        f"at most {vocab} (0 = all)")
    if s.prompt and len(self.tokenizer.encode(s.prompt)) >= self.model_cfg.max_len:
      raise ConfigError(f"sample.prompt is {len(self.tokenizer.encode(s.prompt))} tokens, no "
                        f"room left in model.max_len={self.model_cfg.max_len}; shorten it")

  # Data.

  def _shard_directories(self) -> list[str]:
    data = self.config.data
    if data.source != "shards":
      return []
    return [path for path, _ in mixture.parse(data.mixture)] if data.mixture else [data.path]

  def _windows(self, split: str) -> mixture.Mixture:
    """Windows of the split's token stream, or of each stream of a mixture."""
    data = self.config.data
    if data.source == "shards":
      parts = mixture.parse(data.mixture) if data.mixture else [(data.path, 1.0)]
      pick = 1 if split == "validation" else 0
      streams = [shards.ShardStream(path).split(data.val_fraction)[pick] for path, _ in parts]
      names, weights = [path for path, _ in parts], [weight for _, weight in parts]
    else:
      streams = [lm_data.pack(sources.documents(data, split), self.tokenizer)]
      names, weights = [data.path or data.source], [1.0]
    windows = mixture.Mixture(streams, weights, self.config.seq_len)
    for name, w in zip(names, windows.windows):
      if not len(w):
        raise ConfigError(
            f"the {split} split of {name} has fewer than seq_len+1={self.config.seq_len + 1} "
            f"tokens; use more data or a shorter seq_len")
    return windows
