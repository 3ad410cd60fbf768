"""Autoregressive sampling with a KV cache: one prefill over the prompt, then one token per step."""

import functools

import jax
import jax.numpy as jnp

from bigjax.models import gpt


def sample_logits(logits_BxV, rng, temperature: float, top_k: int):
  """Greedy when temperature is 0; otherwise softmax(logits / T) over the top k (0 = all)."""
  if temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1)
  logits_BxV = logits_BxV.astype(jnp.float32) / temperature
  if top_k:
    kth_B1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_B1, -jnp.inf, logits_BxV)
  return jax.random.categorical(rng, logits_BxV, axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k"))
def generate(model: gpt.Decoder, params, prompt_BxP, rng, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0):
  """prompt_BxP -> tokens_BxT (T = P + max_new_tokens). Prompts in a batch share one length."""
  B, P = prompt_BxP.shape
  total = P + max_new_tokens
  cache = gpt.init_cache(model.cfg, B, total)
  logits_BxPxV, cache = model.apply({"params": params}, prompt_BxP, cache=cache, cache_index=0)
  first_B = sample_logits(logits_BxPxV[:, -1], jax.random.fold_in(rng, 0), temperature, top_k)

  def step(carry, i):
    token_B, cache = carry
    position_Bx1 = jnp.full((B, 1), P + i)
    logits_Bx1xV, cache = model.apply({"params": params}, token_B[:, None],
                                      positions_BxL=position_Bx1, cache=cache, cache_index=P + i)
    next_B = sample_logits(logits_Bx1xV[:, 0], jax.random.fold_in(rng, i + 1), temperature, top_k)
    return (next_B, cache), token_B

  _, new_NxB = jax.lax.scan(step, (first_B, cache), jnp.arange(max_new_tokens))
  return jnp.concatenate([prompt_BxP, new_NxB.T], axis=1)
