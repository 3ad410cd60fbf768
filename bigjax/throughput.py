"""Throughput accounting: model FLOPs per token, device peak FLOP/s and MFU."""

import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per device, matched against jax.devices()[0].device_kind.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def decoder_flops_per_token(non_embedding_params: int, num_layers: int, seq_len: int,
                            d_model: int, causal: bool = True) -> float:
  """Training FLOPs per token: 6 x matmul params + attention (12 N L D, halved when causal).

  `non_embedding_params` counts every matmul weight, the output projection included (tied or
  not, it is a matmul); the input embedding lookup and positions are not FLOPs.
  """
  attention = 12 * num_layers * seq_len * d_model * (0.5 if causal else 1.0)
  return 6 * non_embedding_params + attention


def _products(dtype) -> dict[str, Callable]:
  """The ways XLA can multiply two `dtype` matrices: as they are, and (below float32) with the
  float32 accumulation the models use, which XLA:CPU runs several times faster where the CPU
  has bf16 dot instructions (AVX512-BF16, AMX)."""
  name = jnp.dtype(dtype).name
  products = {f"{name} x {name} -> {name}": lambda a: a @ a}
  if jnp.dtype(dtype).itemsize < 4:
    products[f"{name} x {name} -> float32"] = lambda a: jnp.dot(
        a, a, preferred_element_type=jnp.float32)
  return products


@functools.cache
def measured_matmul_peak(dtype=jnp.float32, n: int = 1024, reps: int = 5,
                         trials: int = 5) -> tuple[float, str]:
  """(FLOP/s, which product) of the fastest large matmul with `dtype` inputs on device 0: the
  stand-in peak for devices not in the table, so MFU is never measured against a slow path.

  The best of several timing windows, since a busy host only ever makes a window slower; measured
  once per process and dtype, so repeated runs in one process report against one peak.
  """
  x = jnp.ones((n, n), dtype)
  rates = {}
  for name, product in _products(dtype).items():
    f = jax.jit(product)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(trials):
      start = time.perf_counter()
      for _ in range(reps):
        y = f(x)
      y.block_until_ready()
      best = min(best, time.perf_counter() - start)
    rates[name] = 2 * n**3 * reps / best
  fastest = max(rates, key=rates.get)
  return rates[fastest], fastest


def peak_flops_per_device(device=None, dtype=jnp.float32) -> tuple[float, str]:
  """(peak FLOP/s, where it came from): the table for known kinds, else a measured matmul."""
  kind = (device or jax.devices()[0]).device_kind
  for name, peak in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return peak, f"{kind} bf16 peak"
  peak, product = measured_matmul_peak(jnp.dtype(dtype))
  return peak, f"the fastest measured {product} matmul on {kind}, {peak / 1e12:.2f} TFLOP/s"


def mfu(flops_per_step: float, step_seconds: float, num_devices: int, peak: float) -> float:
  return flops_per_step / (step_seconds * num_devices * peak)


def memory_per_device(compiled) -> dict[str, int]:
  """Bytes per device a compiled step needs: its arguments, temporaries and outputs, and in all."""
  stats = compiled.memory_analysis()
  # The state is donated, so outputs alias arguments: each buffer counts once. The TPU compiler
  # also reports its own peak, which holds scratch space the other figures leave out.
  live = (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
          + stats.temp_size_in_bytes + stats.generated_code_size_in_bytes)
  return {"arguments": stats.argument_size_in_bytes, "temporaries": stats.temp_size_in_bytes,
          "outputs": stats.output_size_in_bytes, "aliased": stats.alias_size_in_bytes,
          "total": max(live, stats.peak_memory_in_bytes)}
