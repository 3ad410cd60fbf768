"""Sampling from a decoder with a KV cache: one prefill over the prompts, then one token per step.

    python -m bigjax.generate --workdir=runs/gpt_tiny --prompt='def ' [--max_new_tokens=200
        --temperature=0.8 --top_k=40 --top_p=0.95 --seed=0 --best]

Flags left out take the run's `config.sample` settings. From Python:

    run = bigjax.load("runs/gpt_tiny")
    new = generate(run.model, run.params, [run.tokenizer.encode("def ")], max_new_tokens=50)

Prompts of different lengths share a batch right-padded: each row writes the cache from its own
index and reads its own positions (`cache_index` per row), so a row never attends to padding and
a prompt gives the same tokens alone or in a batch. Temperature, top-k, top-p and the seed are
per-row arrays traced into the program: new values never recompile, and rows with different
settings share a batch. The server's engine (bigjax/serve/engine.py) runs the same `prefill`,
`decode_step` and `sample`, so it answers what this module answers.
"""

import functools
import sys
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bigjax.config_checks import ConfigError
from bigjax.models import gpt

PAD_TO = 16  # prompt lengths and stop-token lists are padded to multiples of this


class Sampling(NamedTuple):
  """Per-row sampling settings (arrays of shape B), traced: a new value never recompiles."""

  temperature_B: jax.Array  # softmax temperature; 0 = greedy (argmax)
  top_k_B: jax.Array  # sample among the k most likely tokens (0 = all)
  top_p_B: jax.Array  # ... then among the fewest whose probability reaches p (1 = all)
  seed_B: jax.Array  # row b draws its t-th token with fold_in(key(seed_b), t)


def sampling(batch: int, temperature=1.0, top_k=0, top_p=1.0, seed=0) -> Sampling:
  """Sampling settings for `batch` rows from scalars or per-row sequences, range-checked."""
  row = lambda x, dtype: np.broadcast_to(np.asarray(x, dtype), (batch,))
  s = Sampling(row(temperature, np.float32), row(top_k, np.int32), row(top_p, np.float32),
               row(seed, np.int32))
  if (s.temperature_B < 0).any() or not np.isfinite(s.temperature_B).all():
    raise ConfigError(f"temperature={temperature} must be finite and at least 0 (0 = greedy)")
  if (s.top_k_B < 0).any():
    raise ConfigError(f"top_k={top_k} must be at least 0 (0 = all tokens)")
  if ((s.top_p_B <= 0) | (s.top_p_B > 1)).any():
    raise ConfigError(f"top_p={top_p} must lie in (0, 1]")
  return s


def _filter_top_k_top_p(scaled_BxV, top_k_B, top_p_B):
  """Logits outside each row's top k, then outside the smallest set (of what is left) whose
  probability reaches top_p, set to -inf. Both keep a prefix of the sorted logits."""
  V = scaled_BxV.shape[-1]
  sorted_BxV = -jnp.sort(-scaled_BxV, axis=-1)
  k_Bx1 = jnp.where(top_k_B > 0, jnp.minimum(top_k_B, V), V)[:, None]
  in_top_k_BxV = jnp.arange(V) < k_Bx1
  probs_BxV = jax.nn.softmax(jnp.where(in_top_k_BxV, sorted_BxV, -jnp.inf), axis=-1)
  mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
  kept_B = (in_top_k_BxV & (mass_before_BxV < top_p_B[:, None])).sum(-1)  # at least 1
  cutoff_Bx1 = jnp.take_along_axis(sorted_BxV, kept_B[:, None] - 1, axis=-1)
  return jnp.where(scaled_BxV >= cutoff_Bx1, scaled_BxV, -jnp.inf)


def sample(logits_BxV, s: Sampling, drawn_B):
  """token_B: argmax where the temperature is 0, else a draw from softmax(logits / T) after top-k
  and top-p filtering, keyed by the row's seed and `drawn_B`, the tokens it has drawn before."""
  logits_BxV = logits_BxV.astype(jnp.float32)
  greedy_B = jnp.argmax(logits_BxV, axis=-1)

  def draw(logits_BxV):
    scaled_BxV = logits_BxV / jnp.where(s.temperature_B > 0, s.temperature_B, 1.0)[:, None]
    filtering = jnp.any((s.top_k_B > 0) | (s.top_p_B < 1))
    scaled_BxV = jax.lax.cond(filtering, _filter_top_k_top_p, lambda x, *_: x,
                              scaled_BxV, s.top_k_B, s.top_p_B)
    keys_B = jax.vmap(lambda seed, t: jax.random.fold_in(jax.random.key(seed), t))(
        s.seed_B, drawn_B)
    return jax.vmap(jax.random.categorical)(keys_B, scaled_BxV)

  # The sort and the draws are skipped when every row is greedy.
  drawn = jax.lax.cond(jnp.any(s.temperature_B > 0), draw, lambda _: greedy_B, logits_BxV)
  return jnp.where(s.temperature_B > 0, drawn, greedy_B).astype(jnp.int32)


def prefill(model: gpt.Decoder, params, tokens_BxP, lengths_B, cache):
  """Writes right-padded prompts into the cache from index 0 -> (logits_BxV after each row's last
  prompt token, logits_BxPxV at every position, cache). Padding lands past each row's length,
  where no query of that row looks until its own tokens overwrite it."""
  logits_BxPxV, cache = model.apply({"params": params}, tokens_BxP, cache=cache, cache_index=0)
  last_BxV = jnp.take_along_axis(logits_BxPxV, (lengths_B - 1)[:, None, None], axis=1)[:, 0]
  return last_BxV, logits_BxPxV, cache


def decode_step(model: gpt.Decoder, params, token_B, index_B, cache):
  """Feeds token_B at positions index_B (one per row) -> (next-token logits_BxV, cache)."""
  logits_Bx1xV, cache = model.apply({"params": params}, token_B[:, None], cache=cache,
                                    cache_index=index_B)
  return logits_Bx1xV[:, 0], cache


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def _generate(model: gpt.Decoder, params, tokens_BxP, lengths_B, s: Sampling, stop_S,
              max_new_tokens: int):
  """new_BxN: sampled tokens, -1 after a row's first stop token. Stops early once every row has
  stopped."""
  B, P = tokens_BxP.shape
  cache = gpt.init_cache(model.cfg, B, P + max_new_tokens)
  logits_BxV, _, cache = prefill(model, params, tokens_BxP, lengths_B, cache)
  token_B = sample(logits_BxV, s, jnp.zeros(B, jnp.int32))
  new_BxN = jnp.full((B, max_new_tokens), -1, jnp.int32).at[:, 0].set(token_B)

  def running(carry):
    j, _, _, _, stopped_B = carry
    return (j < max_new_tokens) & ~stopped_B.all()

  def step(carry):  # new token j - 1 sits at position length + j - 1; draw new token j
    j, token_B, cache, new_BxN, stopped_B = carry
    logits_BxV, cache = decode_step(model, params, token_B, lengths_B + j - 1, cache)
    token_B = sample(logits_BxV, s, jnp.full(B, j))
    stopped_B = stopped_B | jnp.isin(new_BxN[:, j - 1], stop_S)
    new_BxN = new_BxN.at[:, j].set(jnp.where(stopped_B, -1, token_B))
    return j + 1, token_B, cache, new_BxN, stopped_B

  carry = (1, token_B, cache, new_BxN, jnp.zeros(B, bool))
  return jax.lax.while_loop(running, step, carry)[3]


def check_length(prompt_length: int, max_new_tokens: int, max_len: int,
                 name: str = "max_new_tokens") -> None:
  """A one-line error unless the prompt and its new tokens fit the model's positions."""
  if prompt_length + max_new_tokens > max_len:
    raise ConfigError(f"a prompt of {prompt_length} tokens plus {name}={max_new_tokens} is "
                      f"{prompt_length + max_new_tokens} tokens, more than the model's "
                      f"max_len={max_len}; shorten the prompt or lower {name}")


def generate(model: gpt.Decoder, params, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             temperature=1.0, top_k=0, top_p=1.0, seed=0,
             stop_tokens: Sequence[int] = ()) -> list[np.ndarray]:
  """The new tokens after each prompt (token id sequences, lengths may differ), up to and not
  including the first of `stop_tokens`. Sampling settings are scalars or one per prompt."""
  prompts = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
  if not prompts or min(len(p) for p in prompts) == 0:
    raise ConfigError("every prompt needs at least one token")
  if max_new_tokens < 1:
    raise ConfigError(f"max_new_tokens={max_new_tokens} must be at least 1")
  lengths_B = np.array([len(p) for p in prompts], np.int32)
  check_length(int(lengths_B.max()), max_new_tokens, model.cfg.max_len)
  # Padded to a multiple of PAD_TO (within max_len), as the stop tokens are, so that calls with
  # similar prompts share one compiled program.
  P = min(-(-lengths_B.max() // PAD_TO) * PAD_TO, model.cfg.max_len - max_new_tokens)
  tokens_BxP = np.zeros((len(prompts), P), np.int32)
  for row, p in zip(tokens_BxP, prompts):
    row[:len(p)] = p
  stop_S = np.full(-(-max(len(stop_tokens), 1) // PAD_TO) * PAD_TO, -1, np.int32)
  stop_S[:len(stop_tokens)] = stop_tokens
  s = sampling(len(prompts), temperature, top_k, top_p, seed)
  new_BxN = np.asarray(_generate(model, params, tokens_BxP, lengths_B, s, stop_S,
                                 max_new_tokens))
  ends_BxN = (new_BxN < 0) | np.isin(new_BxN, stop_tokens)
  return [row[:np.argmax(end) if end.any() else len(row)] for row, end in zip(new_BxN, ends_BxN)]


def main(argv) -> None:
  from absl import flags
  from absl import logging as absl_logging

  import bigjax

  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax narrates every read at INFO
  f = flags.FLAGS
  try:
    run = bigjax.load(f.workdir, best=f.best, devices=jax.devices()[:1])
    if run.config.task != "lm":
      raise ConfigError(f"{f.workdir} is a task={run.config.task} run; generate samples from "
                        f"decoder language models (task=lm)")
    s = run.config.sample
    prompt = run.tokenizer.encode(f.prompt)
    max_new_tokens = f.max_new_tokens or min(s.max_new_tokens,
                                             run.model.cfg.max_len - len(prompt))
    new = generate(run.model, run.params, [prompt], max_new_tokens,
                   temperature=s.temperature if f.temperature is None else f.temperature,
                   top_k=s.top_k if f.top_k is None else f.top_k,
                   top_p=s.top_p if f.top_p is None else f.top_p, seed=f.seed,
                   stop_tokens=[run.tokenizer.eos_id])[0]
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f.prompt + run.tokenizer.decode(new))


if __name__ == "__main__":
  from absl import app, flags

  from bigjax import cli

  flags.DEFINE_string("workdir", None, "the run to sample from (its newest checkpoint)",
                      required=True)
  flags.DEFINE_string("prompt", None, "text the sample continues", required=True)
  flags.DEFINE_integer("max_new_tokens", 0, "tokens to generate (0 = the run's sample setting, "
                       "cut to fit max_len)")
  flags.DEFINE_float("temperature", None, "softmax temperature, 0 = greedy (default: the run's)")
  flags.DEFINE_integer("top_k", None, "sample among the k most likely tokens, 0 = all (default: "
                       "the run's)")
  flags.DEFINE_float("top_p", None, "sample among the fewest tokens whose probability reaches p, "
                     "1 = all (default: the run's)")
  flags.DEFINE_integer("seed", 0, "random seed of the draws")
  flags.DEFINE_bool("best", False, "read WORKDIR/best (the early-stopping checkpoint)")
  app.run(main, flags_parser=cli.parse_flags)
