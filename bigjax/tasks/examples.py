"""What every task over an in-memory split of examples shares: data, FLOPs, the throughput unit.

Classification, regression and reconstruction read whole (train, test) splits of small datasets
(scikit-learn's, MNIST) from bigjax/data/arrays.py; they differ in model, loss and metrics only.
"""

import jax
import jax.numpy as jnp
import ml_collections

from bigjax.config_checks import ConfigError
from bigjax.data import arrays, pipeline
from bigjax.tasks.base import Task


class ExamplesTask(Task):
  """Base of the array tasks; subclasses add the model, `batch_spec`, `loss` and eval metrics."""

  throughput_unit = ("examples", 1)  # the loop counts examples, not tokens

  def __init__(self, config: ml_collections.ConfigDict, process_index: int, process_count: int,
               kind: str):
    super().__init__(config, process_index, process_count)
    self.num_classes = arrays.check_source(config.data, kind)  # 0 for a regression target
    self.train_examples = arrays.examples(config.data, "train")
    self.test_examples = arrays.examples(config.data, "test")

  def train_data(self, local_batch: int, seed: int):
    examples = self.train_examples
    if len(examples) < local_batch * self.process_count:
      raise ConfigError(f"{len(examples)} training examples are fewer than the "
                        f"{local_batch * self.process_count} rows of a batch; lower batch_size")
    return pipeline.train_batches(pipeline.shuffled(len(examples), seed),
                                  lambda i, rng: examples[i], local_batch, seed,
                                  self.process_index, self.process_count,
                                  self.config.data.workers)

  def eval_data(self, local_batch: int, num_batches: int):
    """The whole test split every time (`num_batches` is not used): each example counts once."""
    del num_batches
    return arrays.eval_batches(self.test_examples, local_batch, self.process_index,
                               self.process_count)

  def flops_per_example(self, params) -> float:
    """Forward FLOPs of one example as XLA counts them, times 3 (backward is about twice forward).

    Convolutions and attention make parameter counting wrong for these models, so the compiler's
    own cost analysis of the forward pass is used instead.
    """
    x = jax.ShapeDtypeStruct((1, *self.model_cfg.input_shape), jnp.float32)
    forward = jax.jit(lambda p, x: self.model.apply({"params": p}, x)).lower(params, x)
    return 3 * float(forward.cost_analysis()["flops"])
