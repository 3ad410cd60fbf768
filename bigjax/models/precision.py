"""The precision policy of every model family: what is stored, multiplied and summed in which dtype.

  * Parameters are float32 (the optimizer updates them in float32).
  * Matmul inputs are cast to the compute dtype (`config.dtype`); every product (dense layers,
    attention, the output projection) accumulates in float32 (`preferred_element_type`), in the
    forward pass and in both backward products.
  * The loss and the softmax statistics are computed in float32.

`dot_general` below is the one matmul the models call (through `layers.Dense`, `layers.logits`,
or as flax's `nn.Dense(dot_general=...)`). In float32 it is `jax.lax.dot_general`. In a lower
compute dtype it carries its own backward pass, for two reasons:

  * JAX's own transpose of a bf16 x bf16 -> f32 product multiplies the f32 cotangent by a bf16
    operand, so both backward matmuls run in float32. Here the cotangent is cast to the compute
    dtype first and both backward products accumulate in float32.
  * XLA:CPU runs bf16 x bf16 -> f32 products on its fast path (YNNPACK) only when both operands
    are row-major with the contraction at the end of the left one and the start of the right
    one. A transposed operand (`g @ W^T`, `X^T @ g`) normally stays a transpose in name only
    (a column-major layout), and XLA then converts both operands to float32 before the product.
    On CPUs each operand here is pinned to a row-major layout, so XLA writes the transpose out
    (fused with the cast) and all three products take the fast path. Other platforms' compilers
    handle transposed operands themselves and get no constraint.

What this gains for a training step is in the README's throughput section.
"""

import math

import jax
import jax.numpy as jnp
from jax.experimental.layout import Layout, with_layout_constraint

# A library that intercepts jax.lax.dot_general (qwix's quantization and LoRA patch its code
# while a model runs) must see the plain call with the real weight: then no custom backward.
_DOT_GENERAL_CODE = jax.lax.dot_general.__code__


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                **kwargs) -> jax.Array:
  """`jax.lax.dot_general` under the policy: operands as given (cast them to the compute dtype
  first), the result accumulated and returned in float32. Same signature, so flax's
  `nn.Dense(dot_general=...)` takes it; `preferred_element_type` is ignored (always float32)."""
  del preferred_element_type
  (lhs_contract, rhs_contract), batch = dimension_numbers
  n = len(lhs_contract)
  is_matmul = (tuple(lhs_contract) == tuple(range(lhs.ndim - n, lhs.ndim))
               and tuple(rhs_contract) == tuple(range(n)) and batch == ((), ()))
  low_precision = lhs.dtype == getattr(rhs, "dtype", None) != jnp.float32
  intercepted = (not isinstance(rhs, jax.Array)
                 or jax.lax.dot_general.__code__ is not _DOT_GENERAL_CODE)
  if not is_matmul or not low_precision or intercepted or precision is not None or kwargs:
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision,
                               preferred_element_type=jnp.float32, **kwargs)
  # lhs's trailing n dims against rhs's leading n: a product of the flattened operands.
  k = math.prod(rhs.shape[:n])
  y_MxN = _matmul(lhs.reshape(-1, k), rhs.reshape(k, -1))
  return y_MxN.reshape(lhs.shape[:lhs.ndim - n] + rhs.shape[n:])


def _row_major(a):
  """`a` laid out row-major when compiled for a CPU (a no-op if it already is); as is elsewhere."""
  return jax.lax.platform_dependent(
      a, cpu=lambda a: with_layout_constraint(a, Layout(tuple(range(a.ndim)))),
      default=lambda a: a)


def _dot(a_MxK, b_KxN) -> jax.Array:
  return jax.lax.dot_general(_row_major(a_MxK), _row_major(b_KxN), (((1,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)


@jax.custom_vjp
def _matmul(x_MxK, w_KxN):
  return _dot(x_MxK, w_KxN)


def _matmul_forward(x_MxK, w_KxN):
  return _dot(x_MxK, w_KxN), (x_MxK, w_KxN)


def _matmul_backward(residuals, g_MxN):
  x_MxK, w_KxN = residuals
  g_MxN = g_MxN.astype(x_MxK.dtype)
  return (_dot(g_MxN, w_KxN.T).astype(x_MxK.dtype),
          _dot(x_MxK.T, g_MxN).astype(w_KxN.dtype))


_matmul.defvjp(_matmul_forward, _matmul_backward)
