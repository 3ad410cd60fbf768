"""Compiles the real train step for a TPU slice on this machine, no TPU needed, and says whether
it fits in the chips' memory.

    pip install -r requirements-tpu.txt   # libtpu: the TPU compiler, usable without a TPU
    python scripts/aot_compile.py --config=configs/llama.py:7b --topology=v5p-64 \
        [--config.batch_size=128 ...]

The step is built exactly as bigjax.train builds it (`state_layout`, `compile_train_step`), over
a mesh of compile-only devices that libtpu describes for the slice. It prints per-device memory,
FLOPs per step, the collectives XLA chose, and a verdict against the chip's HBM. Exit status: 0
fits, 1 does not fit, 2 bad input.

Slice names are the ones `gcloud compute tpus tpu-vm create --accelerator-type` takes: v4-N and
v5p-N count TensorCores (two per chip: v5p-64 is 32 chips), v5e-N (or v5litepod-N) and v6e-N count
chips. An explicit libtpu topology such as v5p:2x4x4 works too.
"""

import dataclasses
import math
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# This script never runs on a TPU, so JAX's default backend stays the CPU. Other JAX processes
# on the machine may hold libtpu's single-user lockfile; compiling uses no chip, so it can share.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Generation:
  grid_dims: int  # chips form a 2D (v5e, v6e) or 3D torus (v4, v5p)
  cores_per_name_unit: int  # v4-8 counts 8 TensorCores (4 chips); v5e-8 counts 8 chips
  hbm_bytes: int  # per chip; JAX sees one device per chip (v4 and v5p pair cores as "megacore")
  max_chips: int  # the largest slice the name can describe (a whole pod for v5e and v6e)


GENERATIONS = {
    "v4": Generation(grid_dims=3, cores_per_name_unit=2, hbm_bytes=32 * GiB, max_chips=4096),
    "v5p": Generation(grid_dims=3, cores_per_name_unit=2, hbm_bytes=95 * GiB, max_chips=8960),
    "v5e": Generation(grid_dims=2, cores_per_name_unit=1, hbm_bytes=16 * GiB, max_chips=256),
    "v6e": Generation(grid_dims=2, cores_per_name_unit=1, hbm_bytes=32 * GiB, max_chips=256),
}
ALIASES = {"v5litepod": "v5e"}  # gcloud's accelerator type for v5e
CHIPS_PER_HOST = (2, 2, 1)  # libtpu's default host; smaller slices must say their own bounds

VALID_FORMS = ("use v4-N or v5p-N (N TensorCores, two per chip: 8, 16, 32, ...), v5e-N or v6e-N "
               "(N chips: 1, 4, 8, ..., 256), or an explicit topology such as v5p:2x4x4 or v5e:4x4")


class BadSliceName(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class TpuSlice:
  name: str  # as the user wrote it, "v5p-64"
  generation: str  # "v5p"
  grid: tuple[int, ...]  # chips along each torus axis, (2, 4, 4)

  @property
  def chips(self) -> int:
    return math.prod(self.grid)

  @property
  def topology(self) -> str:
    """The name libtpu's get_topology_desc expects: "v5p:2x4x4"."""
    return f"{self.generation}:{'x'.join(map(str, self.grid))}"

  @property
  def accelerator_type(self) -> str:
    """gcloud's name for the slice: "v5p-64", "v5litepod-16"."""
    count = self.chips * GENERATIONS[self.generation].cores_per_name_unit
    return f"{'v5litepod' if self.generation == 'v5e' else self.generation}-{count}"

  @property
  def hbm_bytes(self) -> int:
    return GENERATIONS[self.generation].hbm_bytes

  def topology_options(self) -> dict:
    options = {}
    if GENERATIONS[self.generation].cores_per_name_unit == 2:
      # One JAX device per chip, its two TensorCores working as one, as on a real v4/v5p VM.
      options["chip_config_name"] = "megacore"
    if self.chips < math.prod(CHIPS_PER_HOST):
      options["chips_per_host_bounds"] = (*self.grid, 1)[:3]
    return options


def standard_grid(chips: int, dims: int) -> tuple[int, ...]:
  """The torus shape Cloud TPU gives a slice of `chips`: double the smallest axis, the last first.

  2D: 1x1, 2x2, 2x4, 4x4, 4x8, ... 16x16. 3D, from one 2x2x1 host: 2x2x2, 2x2x4, 2x4x4, 4x4x4, ...
  """
  grid = [1, 1] if dims == 2 else [2, 2, 1]
  while math.prod(grid) < chips:
    smallest = min(grid)
    last = max(i for i, size in enumerate(grid) if size == smallest)
    grid[last] *= 2
  return tuple(grid)


def parse_slice(name: str) -> TpuSlice:
  """"v5p-64" -> TpuSlice("v5p", (2, 4, 4)); raises BadSliceName with the valid forms."""
  bad = BadSliceName(f"--topology={name!r} is not a TPU slice; {VALID_FORMS}")
  explicit = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)+)", name)
  counted = re.fullmatch(r"([a-z0-9]+)-(\d+)", name)
  if not (explicit or counted):
    raise bad
  generation = ALIASES.get((explicit or counted)[1], (explicit or counted)[1])
  if generation not in GENERATIONS:
    raise bad
  gen = GENERATIONS[generation]
  if explicit:
    grid = tuple(int(size) for size in explicit[2].split("x"))
    if len(grid) != gen.grid_dims or min(grid) < 1:
      raise bad
  else:
    count = int(counted[2])
    chips = count // gen.cores_per_name_unit
    smallest = 1 if gen.grid_dims == 2 else math.prod(CHIPS_PER_HOST)
    power_of_two = chips >= 1 and chips & (chips - 1) == 0
    if count % gen.cores_per_name_unit or not power_of_two or chips < smallest:
      raise bad
    grid = standard_grid(chips, gen.grid_dims)
  if math.prod(grid) > gen.max_chips:
    raise BadSliceName(f"--topology={name!r} has {math.prod(grid)} chips; a {generation} slice "
                       f"has at most {gen.max_chips}")
  return TpuSlice(name, generation, grid)


def count_collectives(hlo_text: str) -> dict[str, int]:
  """Collective instructions in the compiled program (async pairs once; a loop body once)."""
  ops = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
  found = re.findall(r"\b(" + "|".join(ops) + r")(?:-start)?\(", hlo_text)
  return {op: found.count(op) for op in ops}


def compile_for_slice(config, tpu: TpuSlice):
  """(compiled step, run, compile seconds): the loop's own build, on the slice's devices."""
  from jax.experimental import topologies

  from bigjax import build

  # libtpu looks for the TPU VM it runs on; saying "one worker, this slice" stops it warning.
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", tpu.accelerator_type)
  devices = topologies.get_topology_desc(topology_name=tpu.topology, platform="tpu",
                                         **tpu.topology_options()).devices
  run = build.build(config, devices)
  start = time.perf_counter()
  compiled = run.lower_train_step().compile()
  return compiled, run, time.perf_counter() - start


def verdict(total_bytes: int, tpu: TpuSlice) -> str:
  hbm = tpu.hbm_bytes
  if total_bytes <= hbm:
    return (f"fits: {total_bytes / GiB:.2f} GiB of {hbm / GiB:.0f} GiB HBM per {tpu.generation} "
            f"chip, {(hbm - total_bytes) / GiB:.2f} GiB ({1 - total_bytes / hbm:.0%}) to spare")
  return (f"does not fit: {total_bytes / GiB:.2f} GiB needed per {tpu.generation} chip, "
          f"{hbm / GiB:.0f} GiB HBM; shard more (mesh.fsdp=-1), raise model.remat or lower "
          f"batch_size")


def _bad_input(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv) -> None:
  from absl import flags
  del argv
  try:
    tpu = parse_slice(flags.FLAGS.topology)
  except BadSliceName as e:
    _bad_input(str(e))
  try:
    import libtpu  # noqa: F401
  except ImportError:
    _bad_input("the TPU compiler is not installed; pip install -r requirements-tpu.txt")

  import jax

  from bigjax import throughput
  from bigjax.config_checks import ConfigError

  config = flags.FLAGS.config
  print(f"compiling {config.task} for {tpu.name}: {tpu.chips} {tpu.generation} chips as "
        f"{tpu.topology}", flush=True)
  try:
    compiled, run, seconds = compile_for_slice(config, tpu)
  except ConfigError as e:
    _bad_input(str(e))
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    # The TPU compiler knows the chip's HBM and refuses a program that cannot fit in it.
    print(f"verdict: does not fit: {str(e).splitlines()[0][:400]}")
    sys.exit(1)

  memory = throughput.memory_per_device(compiled)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost  # one dict per program in older jax
  flops = cost.get("flops", 0.0)
  collectives = count_collectives(compiled.as_text())
  gib = lambda b: f"{b / GiB:.2f} GiB" if b >= GiB else f"{b / 2**20:.1f} MiB"
  print(f"{run.num_params:,} parameters; mesh {run.mesh_shape}; batch {config.batch_size} x seq_len "
        f"{config.seq_len}; dtype {config.dtype}; remat {config.model.remat}")
  print(f"compiled in {seconds:.1f}s")
  print(f"memory per device: arguments {gib(memory['arguments'])}, temporaries "
        f"{gib(memory['temporaries'])}, outputs {gib(memory['outputs'])} (aliased with "
        f"arguments {gib(memory['aliased'])}), total {gib(memory['total'])}")
  model_flops = run.flops_per_step
  # XLA counts a loop body once, so with scanned layers its figure covers one layer of N.
  loop_note = " (a scanned layer counted once)" if config.model.scan_layers else ""
  print(f"FLOPs per step: {model_flops:.3e} by the model count (6 x parameters x tokens + "
        f"attention, what MFU uses); XLA's cost analysis {flops:.3e} per device{loop_note}")
  print("collectives: " + ", ".join(f"{op} {n}" for op, n in collectives.items()))
  fits = memory["total"] <= tpu.hbm_bytes
  print(f"verdict: {verdict(memory['total'], tpu)}")
  sys.exit(0 if fits else 1)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  from bigjax.cli import parse_flags

  config_flags.DEFINE_config_file("config", "configs/gpt_tiny.py", "experiment config file")
  flags.DEFINE_string("topology", "v5e-4", "TPU slice: v5p-64, v5e-16, v6e-8, v4-32, v5p:2x4x4")
  app.run(main, flags_parser=parse_flags)
