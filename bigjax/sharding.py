"""The device mesh, logical-axis rules and the shardings of state and batches.

Sharding is data: modules name logical axes, `config.sharding_rules` maps them to mesh axes, and
the same code runs data-parallel, FSDP or tensor-parallel by changing `config.mesh` alone.
"""

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

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
