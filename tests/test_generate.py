"""bigjax.generate: per-row cache positions, greedy decoding equal to repeated full passes, batch
invariance, traced sampling settings, top-k/top-p, stop tokens, the length check and the CLI."""

import dataclasses
import functools
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax import generate
from bigjax.config_checks import ConfigError
from bigjax.models import gpt
from bigjax.models.layers import TransformerConfig

# Untied output projections: with a tied one, an untrained model's argmax mostly repeats the
# last token, and greedy tests would compare runs of one token.
GPT2 = TransformerConfig(vocab_size=64, num_layers=2, num_heads=4, num_kv_heads=4, d_model=32,
                         d_ff=64, max_len=32, tie_embeddings=False)
LLAMA = dataclasses.replace(GPT2, num_kv_heads=2, positions="rope", norm="rmsnorm", mlp="swiglu",
                            use_bias=False)
STYLES = {"gpt2": GPT2, "llama": LLAMA}
PROMPTS = [np.array([5, 17, 3]), np.array([40, 2, 9, 9, 31, 7, 60]), np.array([12])]


@pytest.fixture(scope="module", params=list(STYLES))
def model(request):
  """(Decoder, params) for each style: learned and rotary positions."""
  cfg = STYLES[request.param]
  decoder = gpt.Decoder(cfg)
  params = jax.jit(lambda: nn.meta.unbox(decoder.init(
      jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]))()
  return decoder, params


@functools.partial(jax.jit, static_argnums=0)
def full_pass(decoder, params, tokens_BxL):
  """Logits at every position, without a cache (the causal mask hides what follows)."""
  return decoder.apply({"params": params}, tokens_BxL)[0]


def test_per_row_cache_index_matches_the_full_forward_pass(model):
  """Rows of 3 and 6 tokens prefilled right-padded, then decoded at their own positions: every
  real position's logits equal the full pass over that row alone."""
  decoder, params = model
  rows = [np.array([5, 17, 3, 22, 8, 1, 44, 30]), np.array([40, 2, 9, 9, 31, 7, 60, 13])]
  lengths_B, steps = np.array([3, 6]), 2
  tokens_BxP = np.stack([r[:6] for r in rows]) * (np.arange(6) < lengths_B[:, None])

  @jax.jit
  def cached():
    cache = gpt.init_cache(decoder.cfg, 2, 6 + steps)
    _, prefill_BxPxV, cache = generate.prefill(decoder, params, tokens_BxP, lengths_B, cache)
    decoded = []
    for t in range(steps):
      token_B = jnp.array([r[n + t] for r, n in zip(rows, lengths_B)])
      logits_BxV, cache = generate.decode_step(decoder, params, token_B, lengths_B + t, cache)
      decoded.append(logits_BxV)
    return prefill_BxPxV, jnp.stack(decoded, 1)

  prefill_BxPxV, decoded_BxTxV = cached()
  full_BxLxV = full_pass(decoder, params, np.stack(rows))
  for b, n in enumerate(lengths_B):
    np.testing.assert_allclose(prefill_BxPxV[b, :n], full_BxLxV[b, :n], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(decoded_BxTxV[b], full_BxLxV[b, n:n + steps], rtol=1e-4,
                               atol=1e-5)


def test_greedy_generation_is_the_argmax_of_repeated_full_passes(model):
  decoder, params = model
  new = generate.generate(decoder, params, PROMPTS, max_new_tokens=8, temperature=0.0)
  for prompt, tokens in zip(PROMPTS, new):
    sequence = list(prompt)
    for _ in range(8):  # the whole sequence again, zero-padded to one length: one compile
      padded_1xL = np.zeros((1, decoder.cfg.max_len), np.int32)
      padded_1xL[0, :len(sequence)] = sequence
      logits_V = full_pass(decoder, params, padded_1xL)[0, len(sequence) - 1]
      sequence.append(int(jnp.argmax(logits_V)))
    assert list(tokens) == sequence[len(prompt):]
  assert len({tuple(t) for t in new}) == len(PROMPTS)  # the prompts lead different ways


def test_a_prompt_gives_the_same_tokens_alone_and_in_a_batch(model):
  """Greedy and sampled rows, each with its own settings, alone or batched with the others."""
  decoder, params = model
  settings = dict(temperature=[0.0, 0.9, 1.3], top_k=[0, 5, 0], top_p=[1.0, 1.0, 0.8],
                  seed=[0, 1, 2])
  batched = generate.generate(decoder, params, PROMPTS, 8, **settings)
  for i, prompt in enumerate(PROMPTS):
    alone = generate.generate(decoder, params, [prompt], 8,
                              **{k: v[i] for k, v in settings.items()})[0]
    np.testing.assert_array_equal(alone, batched[i])


def test_new_sampling_values_and_stop_tokens_do_not_recompile(model):
  decoder, params = model
  generate.generate(decoder, params, PROMPTS, 8, temperature=0.7, top_k=3, seed=1)
  compiled = generate._generate._cache_size()
  for settings in [dict(temperature=1.5, top_p=0.5, seed=9), dict(temperature=0.0),
                   dict(temperature=[0.0, 0.5, 2.0], top_k=[1, 0, 7], top_p=[0.3, 1.0, 0.9]),
                   dict(stop_tokens=[3, 4])]:
    generate.generate(decoder, params, PROMPTS, 8, **settings)
  assert generate._generate._cache_size() == compiled


def draws(logits_V, n=4000, **settings):
  """n draws (one per seed) from the same logits."""
  s = generate.sampling(n, seed=np.arange(n), **settings)
  return np.asarray(jax.jit(generate.sample)(jnp.tile(logits_V, (n, 1)), s,
                                             jnp.zeros(n, jnp.int32)))


def test_top_k_and_top_p_draw_only_from_their_tokens_in_proportion():
  probs_V = np.array([0.05, 0.5, 0.15, 0.3])  # sorted: 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05)
  logits_V = jnp.log(jnp.asarray(probs_V))
  assert set(draws(logits_V, temperature=0.0)) == {1}
  assert set(draws(logits_V, top_k=3)) == {1, 3, 2}
  # top_p=0.8: token 2 has 0.8 before it, so the nucleus is {1, 3}, renormalised 0.625 / 0.375.
  nucleus = draws(logits_V, top_p=0.8)
  assert set(nucleus) == {1, 3}
  # 4 standard deviations of a binomial share over 4000 draws: 4 * sqrt(.625 * .375 / 4000).
  assert abs(np.mean(nucleus == 1) - 0.625) < 4 * np.sqrt(0.625 * 0.375 / 4000)
  # Both: top-k first, then top-p over what is left (0.5 / 0.8 of the top 2 is below 0.7).
  assert set(draws(logits_V, top_k=2, top_p=0.7)) == {1, 3}
  assert set(draws(logits_V, top_k=3, top_p=0.5)) == {1}


def test_a_stop_token_ends_its_row_there(model):
  decoder, params = model
  free = generate.generate(decoder, params, PROMPTS, 8, temperature=0.0)
  row = next(r for r in free if len(set(r)) > 3)
  stop = int(row[3])
  stopped = generate.generate(decoder, params, PROMPTS, 8, temperature=0.0, stop_tokens=[stop])
  for tokens, full in zip(stopped, free):
    end = list(full).index(stop) if stop in full else len(full)
    np.testing.assert_array_equal(tokens, full[:end])


def test_prompt_and_new_tokens_must_fit_max_len(model):
  decoder, params = model
  with pytest.raises(ConfigError, match=r"^a prompt of 7 tokens plus max_new_tokens=26 is 33 "
                                        r"tokens, more than the model's max_len=32"):
    generate.generate(decoder, params, PROMPTS, 26)
  with pytest.raises(ConfigError, match="top_p"):
    generate.generate(decoder, params, PROMPTS, 4, top_p=1.5)


def test_generate_command_samples_a_run(lm_run):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  command = [sys.executable, "-m", "bigjax.generate", f"--workdir={lm_run}",
             "--prompt=def f", "--max_new_tokens=12", "--temperature=0"]
  out = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
  assert out.returncode == 0, out.stderr
  import bigjax
  run = bigjax.load(lm_run, devices=jax.devices()[:1])
  new = generate.generate(run.model, run.params, [run.tokenizer.encode("def f")], 12,
                          temperature=0.0, stop_tokens=[run.tokenizer.eos_id])[0]
  assert out.stdout == "def f" + run.tokenizer.decode(new) + "\n"

  missing = subprocess.run(command[:3] + ["--workdir=/nonexistent", "--prompt=x"],
                           capture_output=True, text=True, timeout=300, env=env)
  assert missing.returncode == 2
  assert missing.stderr.startswith("error: /nonexistent does not exist")
  assert len(missing.stderr.strip().splitlines()) == 1
