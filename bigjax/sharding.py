"""The device mesh, logical-axis rules and the shardings of state and batches.

Sharding is data: modules name logical axes, `config.sharding_rules` maps them to mesh axes, and
the same code runs data-parallel, FSDP or tensor-parallel by changing `config.mesh` alone.
"""

import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from bigjax.config_checks import ConfigError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both; fsdp shards params too


def make_mesh(shape: dict[str, int], devices=None) -> jax.sharding.Mesh:
  auto = (jax.sharding.AxisType.Auto,) * len(AXES)
  return jax.make_mesh(tuple(shape[a] for a in AXES), AXES, axis_types=auto,
                       devices=devices if devices is not None else jax.devices())


def rules(config: ml_collections.ConfigDict) -> tuple:
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in config.sharding_rules)


def logical_shardings(abstract_tree, mesh, config):
  """NamedShardings for a tree whose leaves carry logical axis names (nn.Partitioned boxes)."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules(config))


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """This process's rows -> global arrays laid out over the batch axes of the mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}



def _auto_detected_cluster() -> bool:
  """True under a scheduler JAX reads on its own: SLURM with several tasks, a TPU pod slice."""
  slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
  tpu_pod = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return slurm or tpu_pod


def initialize_distributed(dist: ml_collections.ConfigDict) -> None:
  """Joins a multi-process job before any JAX computation; a single process needs nothing.

  An explicit coordinator comes from `distributed.coordinator` or JAX_COORDINATOR_ADDRESS, with
  the process count and index from the config or JAX_NUM_PROCESSES / JAX_PROCESS_ID. SLURM and
  TPU pod slices are detected by JAX itself. A process whose peer dies stops after
  `heartbeat_seconds` instead of waiting in a collective forever.
  """
  coordinator = dist.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  if not coordinator and not _auto_detected_cluster():
    if dist.num_processes > 1 or dist.process_id >= 0:  # a job's settings, but no job to join
      raise ConfigError(f"distributed.num_processes={dist.num_processes}, distributed.process_id="
                        f"{dist.process_id} need distributed.coordinator=HOST:PORT (process 0's "
                        f"address) or JAX_COORDINATOR_ADDRESS")
    return
  # CPU processes need a collectives library to talk to each other; GPUs and TPUs ignore this.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if coordinator:
    count = dist.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0"))
    index = dist.process_id if dist.process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", "-1"))
    if count < 1 or not 0 <= index < count:
      raise ConfigError(f"coordinator {coordinator} needs distributed.num_processes and "
                        f"distributed.process_id (or JAX_NUM_PROCESSES and JAX_PROCESS_ID); "
                        f"got {count} and {index}")
    kwargs = dict(coordinator_address=coordinator, num_processes=count, process_id=index)
  jax.distributed.initialize(**kwargs, heartbeat_timeout_seconds=dist.heartbeat_seconds)
  from jax.experimental import multihost_utils

  from bigjax import console
  with console.silent_stdout():  # the first collective connects: gloo says so on stdout
    multihost_utils.sync_global_devices("bigjax: connected")
