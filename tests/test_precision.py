"""The precision policy: bf16 matmul inputs, float32 accumulation, forward and backward."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax import build
from bigjax.models import precision

BF16_EPS = 2.0**-8  # bfloat16 keeps 8 significant bits: one rounding is off by at most 2^-9
STEPS = 20


def products(x, w, g, dot):
  """(x . w, d/dx, d/dw) for the cotangent g, contracting x's last two dims with w's first two."""
  dims = (((2, 3), (0, 1)), ((), ()))
  y, vjp = jax.vjp(lambda x, w: dot(x, w, dims), x, w)
  return (y, *vjp(g.astype(y.dtype)))


def test_bfloat16_products_accumulate_in_float32():
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (3, 5, 4, 8), jnp.bfloat16)  # B x L x H x K, like `out`
  w = jax.random.normal(keys[1], (4, 8, 16), jnp.bfloat16)  # H x K x D
  g = jax.random.normal(keys[2], (3, 5, 16), jnp.bfloat16)  # bf16-exact, so only outputs round
  y, dx, dw = products(x, w, g, precision.dot_general)
  assert (y.dtype, dx.dtype, dw.dtype) == (jnp.float32, jnp.bfloat16, jnp.bfloat16)
  # The reference multiplies the same bf16 values in float32 throughout.
  ref = products(x.astype(jnp.float32), w.astype(jnp.float32), g, jax.lax.dot_general)
  # Forward: the same exact products summed in float32, in another order (32 terms, ~1e-6).
  np.testing.assert_allclose(y, ref[0], rtol=1e-5, atol=1e-5)
  # Backward: float32 sums rounded once to bf16 at the end. A bf16 sum would be off by up to
  # 2^-9 per term added (16 or 15 terms here), far beyond one rounding.
  for got, want in zip((dx, dw), ref[1:]):
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=BF16_EPS, atol=1e-6)


@pytest.fixture(scope="module")
def runs(make_config):
  """{dtype: (run, compiled programs)} for the tiny model in float32 and bfloat16."""
  out = {}
  for dtype in ("float32", "bfloat16"):
    run = build.build(make_config(dtype=dtype, steps=STEPS), jax.devices()[:1])
    out[dtype] = run, run.compile()
  return out


def loss_curve(run, programs, steps):
  state = run.fresh_state(programs)
  batches = iter(run.task.train_data(run.local_batch_size, run.config.seed))
  losses = []
  for _ in range(steps):
    state, metrics = programs.train_step(state, run.global_batch(next(batches)))
    losses.append(float(metrics["train/loss"]))
  return np.array(losses)


def test_bfloat16_training_tracks_float32(runs):
  f32, bf16 = (loss_curve(*runs[dtype], STEPS) for dtype in ("float32", "bfloat16"))
  assert f32[0] - f32[-1] > 0.5  # the model learns, so tracking the curve means something
  # 0.01 nats = 2^-9 x 5 nats, what one bf16 rounding of the loss itself may move it by; with
  # float32 accumulation the curves stay 10x closer (measured <= 0.001 over 40 steps).
  np.testing.assert_allclose(bf16, f32, atol=0.01, rtol=0)


def dots(hlo: str) -> list[tuple[str, str, str, str]]:
  """(model source, lhs dtype, rhs dtype, result dtype) of every dot in compiled HLO text."""
  found = []
  for body in re.findall(r"^(?:ENTRY )?%\S+ [^\n]*\{\n(.*?)\n\}", hlo, re.M | re.S):
    dtype_of = dict(re.findall(r"%(\S+) = (\w+)\[", body))
    for out, lhs, rhs, source in re.findall(
        r"= (\w+)\[[^\n]*? dot\(%(\S+), %(\S+)\)[^\n]*op_name=\"([^\"]+)\"", body):
      found.append((source, dtype_of[lhs], dtype_of[rhs], out))
  return found


def test_dense_products_stay_bfloat16_in_the_compiled_step(runs):
  """Forward and both backward products of every dense layer and of the output projection are
  bf16 x bf16 -> f32 in the compiled step: no float32 copies of their operands (on CPU, XLA's
  fast path; see bigjax/models/precision.py)."""
  run, programs = runs["bfloat16"]
  dense = [d for d in dots(programs.train_step.as_text())
           if re.search(r"(/(query|key|value|out|up|down)|Decoder\)+)/dot_general$", d[0])]
  # The scanned block compiles once: its 6 dense layers and the output projection, each with a
  # forward and two backward products.
  assert run.config.model.scan_layers and len(dense) == 3 * (6 + 1)
  assert {d[1:] for d in dense} == {("bf16", "bf16", "f32")}
