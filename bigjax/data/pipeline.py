"""The one input pipeline: examples read by index -> this process's rows of each global batch.

Every task's input is a function of a *global position*: position g of an endless sequence of
example indices (`shuffled`: every index once per epoch, in a new order each epoch). Global batch
b holds positions [b*G, (b+1)*G), and process p reads rows [p*R, (p+1)*R) of it, R = G/P: the
rows its devices hold, as the mesh lays the batch out over devices in process order
(tests/test_data_processes.py checks it with two processes). So the global batch at step b
depends on the data and the seed alone, never on the number of processes, and the iterator's
checkpointed state is the batch number: a job restarted on another number of processes (an
elastic restart) continues the same sequence, and each process reads only its rows.

Randomness an example needs (BERT's masks) comes from a generator seeded by (seed, position):
every epoch draws anew, and a resumed run draws what the uninterrupted one would have.

Batches are built by grain: on threads of this process (`workers=0`), or in `workers` processes,
for examples whose reading holds the GIL (tokenizing, rendering chat templates).
"""

import sys
from typing import Callable, Iterator, Sequence

import grain
import numpy as np

# read(key, rng) -> one example: a dict of arrays; `key` is what the order holds at a position.
Read = Callable[[object, np.random.Generator], dict[str, np.ndarray]]
# Batches read ahead: enough to hide a slow read, few enough that memory stays flat however large
# the batch (grain's default, 500, would hold gigabytes of a large batch).
READ_OPTIONS = grain.ReadOptions(num_threads=8, prefetch_buffer_size=8)


def stack(examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def shuffled(size: int, seed: int) -> grain.MapDataset:
  """Position -> example index: every index once per epoch, in a new order every epoch."""
  return grain.MapDataset.range(size).shuffle(seed=seed).repeat()


def in_order() -> grain.MapDataset:
  """Position -> itself: for examples that carry their own order (packed rows)."""
  return grain.MapDataset.range(sys.maxsize)


def process_rows(global_batch: int, process_index: int, process_count: int) -> range:
  """The rows of every global batch that this process reads."""
  rows = global_batch // process_count
  return range(process_index * rows, (process_index + 1) * rows)


def train_batches(order: grain.MapDataset, read: Read, local_batch: int, seed: int,
                  process_index: int = 0, process_count: int = 1,
                  workers: int = 0) -> grain.IterDataset:
  """Endless batches of this process's rows; element b (the checkpointed position) is batch b."""
  global_batch = local_batch * process_count
  rows = process_rows(global_batch, process_index, process_count)

  def batch(b: int) -> dict[str, np.ndarray]:
    positions = (b * global_batch + r for r in rows)
    return stack([read(order[g], np.random.default_rng([seed, g])) for g in positions])

  ds = grain.MapDataset.range(sys.maxsize).map(batch).to_iter_dataset(READ_OPTIONS)
  if workers:
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; a notebook parsed none
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return ds


def eval_batches(size: int, read: Read, local_batch: int, num_batches: int, seed: int,
                 process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """`num_batches` global batches of evenly spaced examples, the same at every evaluation (and
  on any number of processes), so evaluations compare."""
  global_batch = local_batch * process_count
  index = np.linspace(0, size - 1, global_batch * num_batches).round().astype(int)
  rows = process_rows(global_batch, process_index, process_count)
  for b in range(num_batches):
    chosen = (int(index[b * global_batch + r]) for r in rows)
    yield stack([read(i, np.random.default_rng([seed, i])) for i in chosen])
