"""Image classification (MLP, CNN or ViT) on digits, MNIST or Fashion-MNIST.

Eval reports loss, accuracy, macro and per-class precision/recall/F1 (eval/f1/3: digit 3's) and
one-vs-rest macro ROC-AUC over the whole test split, plus the confusion matrix and ROC curves as
images.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bigjax import metrics, plots
from bigjax.config_checks import ConfigError
from bigjax.models import vision
from bigjax.tasks.base import Loss, Report, dropout_rngs
from bigjax.tasks.examples import ExamplesTask

CLASSIFIERS = ("mlp", "cnn", "vit")


class ClassifyTask(ExamplesTask):
  """Weighted cross-entropy on (image, label, weight) batches; padding rows have weight 0."""

  metric_names = metrics.CLASSIFICATION_METRICS

  def __init__(self, config: ml_collections.ConfigDict, process_index: int = 0,
               process_count: int = 1):
    if config.model.name not in CLASSIFIERS:
      raise ConfigError(f"model.name={config.model.name!r} is not a classifier; use one of "
                        f"{', '.join(CLASSIFIERS)}")
    super().__init__(config, process_index, process_count, kind="classes")
    image_shape = self.train_examples[0]["image"].shape
    if config.model.name == "vit" and any(s % config.model.patch_size for s in image_shape[:2]):
      raise ConfigError(f"model.patch_size={config.model.patch_size} does not divide the "
                        f"{image_shape[0]}x{image_shape[1]} images; pick a divisor")
    self.model_cfg = vision.VisionConfig.from_config(config, image_shape, self.num_classes)
    self.model = vision.MODELS[config.model.name](self.model_cfg)

  # The loop's interface.

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {"image": jax.ShapeDtypeStruct((batch_size, *self.model_cfg.input_shape), jnp.float32),
            "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
            "weight": jax.ShapeDtypeStruct((batch_size,), jnp.float32)}

  def init(self, rng, batch):
    return self.model.init({"params": rng}, batch["image"])

  def loss(self, params, batch, rng, train: bool):
    logits_BxO = self.model.apply({"params": params}, batch["image"], train=train,
                                  rngs=dropout_rngs(rng)).astype(jnp.float32)
    loss_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxO, batch["label"])
    weight_B = batch["weight"]
    correct_B = logits_BxO.argmax(-1) == batch["label"]
    return Loss(total=(loss_B * weight_B).sum(), weight=weight_B.sum(),
                metrics={"accuracy": (correct_B * weight_B).sum()})

  def eval_sums(self, params, batch) -> dict[str, jax.Array]:
    logits_BxO = self.model.apply({"params": params}, batch["image"])
    return metrics.classification_sums(logits_BxO, batch["label"], batch["weight"])

  def eval_summary(self, sums) -> Report:
    return classification_report(sums)


def classification_report(sums, class_names=None) -> Report:
  """Scalars (macro and per class), and images of the confusion matrix and the ROC curves."""
  return Report(metrics.classification_summary(sums, class_names), images={
      "confusion_matrix": plots.confusion_matrix(np.asarray(sums["confusion"])),
      "roc": plots.roc_curves(np.asarray(sums["auc_positives"]),
                              np.asarray(sums["auc_negatives"]))})


