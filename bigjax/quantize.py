"""Post-training quantization: a trained run (float or QAT) -> a run stored as int8/int4.

    python -m bigjax.quantize --workdir=runs/gpt_tiny --out=runs/gpt_tiny_int4 --weights=int4 \
        [--tile=32] [--activations=int8]

int8 keeps one scale per output channel; int4 usually wants `--tile` (one scale per that many
inputs). Embeddings stay float. `bigjax.load(OUT)`, evaluation and the server read the result.
Prints the weights' size (counted in bits: JAX stores int4 in whole bytes) and the eval loss,
before and after. See bigjax/adapt/quantize.py.
"""

import sys

from absl import app, flags
from absl import logging as absl_logging

from bigjax import cli
from bigjax.config_checks import ConfigError

flags.DEFINE_string("workdir", None, "the trained run (workdir, checkpoints dir or step)")
flags.DEFINE_string("out", None, "where the quantized run is written")
flags.DEFINE_string("weights", "int8", "int8 or int4")
flags.DEFINE_integer("tile", 0, "inputs per weight scale (0 = one scale per output channel)")
flags.DEFINE_string("activations", "", "int8 to quantize the matmuls' inputs too")
flags.mark_flags_as_required(["workdir", "out"])


def mib(bits: int) -> str:
  return f"{bits / 8 / 2**20:.2f} MiB"


def main(argv) -> None:
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax narrates every read and write at INFO
  del argv
  from bigjax.adapt import quantize
  f = flags.FLAGS
  try:
    report = quantize.quantize_run(f.workdir, f.out, f.weights, f.tile, f.activations)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"weights: {mib(report['bits_before'])} -> {mib(report['bits_after'])} "
        f"(kernels {mib(report['kernel_bits_before'])} -> {mib(report['kernel_bits_after'])})")
  print(f"eval loss: {report['loss_before']:.4f} -> {report['loss_after']:.4f}")
  print(f"wrote {f.out}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
