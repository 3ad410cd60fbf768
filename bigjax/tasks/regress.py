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
from bigjax.models import vision
from bigjax.tasks.base import Loss, Report, dropout_rngs
from bigjax.tasks.examples import ExamplesTask


class RegressTask(ExamplesTask):
  """Weighted MSE on (features, target, weight) batches; padding rows have weight 0."""

  metric_names = ("mse", "rmse", "mae", "r2")

  def __init__(self, config: ml_collections.ConfigDict, process_index: int = 0,
               process_count: int = 1):
    if config.model.name != "mlp":
      raise ConfigError(f"model.name={config.model.name!r}: regression uses model.name='mlp'")
    super().__init__(config, process_index, process_count, kind="target")
    targets = np.array([self.train_examples[i]["target"] for i in range(len(self.train_examples))])
    self.target_mean, self.target_std = float(targets.mean()), float(targets.std())
    num_features = self.train_examples[0]["features"].shape
    self.model_cfg = vision.VisionConfig.from_config(config, num_features, num_outputs=1)
    self.model = vision.MODELS["mlp"](self.model_cfg)

  def _predict(self, params, features_BxF, rng=None, train=False):
    """Predictions in the target's units: the model's standardized output, scaled back."""
    out_Bx1 = self.model.apply({"params": params}, features_BxF, train=train,
                               rngs=dropout_rngs(rng))
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
    return Loss(total=(weights_B * standardized_error_B**2).sum(), weight=weights_B.sum())

  def eval_sums(self, params, batch) -> dict[str, jax.Array]:
    return metrics.regression_sums(self._predict(params, batch["features"]), batch["target"],
                                   batch["weight"])

  def eval_summary(self, sums) -> Report:
    return Report(metrics.regression_summary(sums))

