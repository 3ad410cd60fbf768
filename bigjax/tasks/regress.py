"""Regression of one number from a feature vector with an MLP (scikit-learn's diabetes).

The model predicts the target standardized by the training split's mean and spread, so the loss
starts near 1 whatever the target's units; eval reports MSE, RMSE, MAE and R^2 in the target's
own units over the whole test split.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bigjax import metrics
from bigjax.config_checks import ConfigError
from bigjax.data import arrays
from bigjax.models import vision
from bigjax.tasks.classify import training_flops


class RegressTask:
  """Weighted MSE on (features, target, weight) batches; padding rows have weight 0."""

  throughput_unit = ("examples", 1)  # the loop counts examples, not tokens

  def __init__(self, config: ml_collections.ConfigDict, process_index: int = 0,
               process_count: int = 1):
    self.config = config
    self.process_index, self.process_count = process_index, process_count
    if config.model.name != "mlp":
      raise ConfigError(f"model.name={config.model.name!r}: regression uses model.name='mlp'")
    arrays.check_source(config.data, "target")
    self.train_examples = arrays.examples(config.data, "train")
    self.test_examples = arrays.examples(config.data, "test")
    targets = np.array([self.train_examples[i]["target"] for i in range(len(self.train_examples))])
    self.target_mean, self.target_std = float(targets.mean()), float(targets.std())
    num_features = self.train_examples[0]["features"].shape
    self.model_cfg = vision.VisionConfig.from_config(config, num_features, num_outputs=1)
    self.model = vision.MODELS["mlp"](self.model_cfg)

  def _predict(self, params, features_BxF, rng=None, train=False):
    """Predictions in the target's units: the model's standardized output, scaled back."""
    out_Bx1 = self.model.apply({"params": params}, features_BxF, train=train,
                               rngs={"dropout": rng} if rng is not None else {})
    return out_Bx1[:, 0].astype(jnp.float32) * self.target_std + self.target_mean

  # The loop's interface.

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {"features": jax.ShapeDtypeStruct((batch_size, *self.model_cfg.input_shape),
                                             jnp.float32),
            "target": jax.ShapeDtypeStruct((batch_size,), jnp.float32),
            "weight": jax.ShapeDtypeStruct((batch_size,), jnp.float32)}

  def init(self, rng, batch):
    return self.model.init({"params": rng}, batch["features"])

  def loss(self, params, batch, rng, train: bool):
    preds_B = self._predict(params, batch["features"], rng, train)
    standardized_error_B = (preds_B - batch["target"]) / self.target_std
    weights_B = batch["weight"]
    return (weights_B * standardized_error_B**2).sum() / weights_B.sum(), {}

  def eval_sums(self, params, batch) -> dict[str, jax.Array]:
    return metrics.regression_sums(self._predict(params, batch["features"]), batch["target"],
                                   batch["weight"])

  def eval_summary(self, sums) -> dict[str, float]:
    return metrics.regression_summary(sums)

  def train_data(self, local_batch: int, seed: int):
    return arrays.train_dataset(self.train_examples, local_batch, seed, self.process_index,
                                self.process_count)

  def eval_data(self, local_batch: int, num_batches: int):
    """The whole test split every time (`num_batches` is not used): each example counts once."""
    del num_batches
    return arrays.eval_batches(self.test_examples, local_batch, self.process_index,
                               self.process_count)

  def flops_per_example(self, params) -> float:
    return training_flops(self.model, params, self.model_cfg.input_shape)

  def finish(self, params, rng) -> dict:
    return {}
