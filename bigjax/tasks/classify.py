"""Image classification (MLP, CNN or ViT) on digits, MNIST or Fashion-MNIST.

Eval reports loss, accuracy, macro precision/recall/F1 and one-vs-rest macro ROC-AUC over the
whole test split, plus the confusion matrix and ROC curves as images.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bigjax import metrics, plots
from bigjax.config_checks import ConfigError
from bigjax.data import arrays
from bigjax.models import vision

CLASSIFIERS = ("mlp", "cnn", "vit")


class ClassifyTask:
  """Weighted cross-entropy on (image, label, weight) batches; padding rows have weight 0."""

  throughput_unit = ("examples", 1)  # the loop counts examples, not tokens

  def __init__(self, config: ml_collections.ConfigDict, process_index: int = 0,
               process_count: int = 1):
    self.config = config
    self.process_index, self.process_count = process_index, process_count
    if config.model.name not in CLASSIFIERS:
      raise ConfigError(f"model.name={config.model.name!r} is not a classifier; use one of "
                        f"{', '.join(CLASSIFIERS)}")
    self.num_classes = arrays.check_source(config.data, "classes")
    self.train_examples = arrays.examples(config.data, "train")
    self.test_examples = arrays.examples(config.data, "test")
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
                                  rngs={"dropout": rng}).astype(jnp.float32)
    loss_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxO, batch["label"])
    accuracy = (logits_BxO.argmax(-1) == batch["label"]).mean()
    return (loss_B * batch["weight"]).sum() / batch["weight"].sum(), {"accuracy": accuracy}

  def eval_sums(self, params, batch) -> dict[str, jax.Array]:
    logits_BxO = self.model.apply({"params": params}, batch["image"])
    return metrics.classification_sums(logits_BxO, batch["label"], batch["weight"])

  def eval_summary(self, sums) -> dict:
    """Scalars, and images (HxWx3 uint8) of the confusion matrix and the ROC curves."""
    return metrics.classification_summary(sums) | {
        "confusion_matrix": plots.confusion_matrix(np.asarray(sums["confusion"])),
        "roc": plots.roc_curves(np.asarray(sums["auc_positives"]),
                                np.asarray(sums["auc_negatives"]))}

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


def training_flops(model, params, input_shape) -> float:
  """Forward FLOPs of one example as XLA counts them, times 3 (backward is about twice forward).

  Convolutions and attention make parameter counting wrong for these models, so the compiler's
  own cost analysis of the forward pass is used instead.
  """
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(params, x)
  return 3 * float(forward.cost_analysis()["flops"])
