"""LoRA runs from the command line: fold the adapters into the base weights.

    python -m bigjax.lora merge --workdir=runs/lora --out=runs/lora_merged

The merged run is a plain float model (no adapters, no reference to a base): `bigjax.load`,
evaluation, serving, `bigjax.quantize` and `init_from` read it. See bigjax/adapt/lora.py.
"""

import sys

from absl import app, flags
from absl import logging as absl_logging

from bigjax import cli
from bigjax.config_checks import ConfigError

flags.DEFINE_string("workdir", None, "the LoRA run (workdir, checkpoints dir or step)")
flags.DEFINE_string("out", None, "where the merged run is written")
flags.mark_flags_as_required(["workdir", "out"])

COMMANDS = ("merge",)


def main(argv) -> None:
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax narrates every read and write at INFO
  from bigjax.adapt import lora
  if argv[1:] != ["merge"]:
    print(f"error: say what to do: python -m bigjax.lora {'|'.join(COMMANDS)} --workdir=W "
          f"--out=M", file=sys.stderr)
    sys.exit(2)
  try:
    loss = lora.merge_run(flags.FLAGS.workdir, flags.FLAGS.out)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {flags.FLAGS.out} (eval loss {loss:.4f})")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
