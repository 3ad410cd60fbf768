"""Text classification with a BERT-style encoder, usually fine-tuned from a masked-LM run.

    --config.init_from=runs/bert_mlm  copies `embed` and `encoder` from the pretrained run
    --config.freeze='^(embed|encoder)/'  trains the new head alone (a linear probe)

Data (`config.data`): source="stdlib" tells four standard-library packages apart from a snippet
of their source (offline, deterministic; validation snippets come from held-out files);
source="tfds" with name="imdb_reviews" is movie-review sentiment. Eval reports loss, accuracy,
macro and per-class precision/recall/F1 (eval/f1/asyncio), ROC-AUC, and the confusion matrix and
ROC curves as images, from bigjax.metrics.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from bigjax import metrics
from bigjax.config_checks import ConfigError
from bigjax.data import augment, pipeline
from bigjax.data import text_classify as classify_data
from bigjax.models import bert
from bigjax.tasks.base import Loss, Report, TransformerTask, dropout_rngs
from bigjax.tasks.classify import classification_report
from bigjax.tasks.lm import make_tokenizer
from bigjax.tasks.mlm import encoder_config, encoder_flops_per_example, special_tokens


class TextClassificationTask(TransformerTask):

  metric_names = metrics.CLASSIFICATION_METRICS

  def __init__(self, config: ml_collections.ConfigDict, process_index: int = 0,
               process_count: int = 1):
    if config.data.source not in ("stdlib", "tfds"):
      raise ConfigError(f"data.source={config.data.source!r}: text classification reads "
                        f"stdlib (package families) or tfds (imdb_reviews)")
    if config.seq_len < 3:
      raise ConfigError(f"seq_len={config.seq_len} leaves no room for text; use at least 3")
    super().__init__(config, process_index, process_count)
    self.throughput_unit = ("tokens", config.seq_len)
    self.tokenizer = make_tokenizer(config)
    self.special = special_tokens(self.tokenizer)
    self._splits = {}
    # Named classes (an imported classifier's labels) build the model without reading any data.
    self.class_names = tuple(config.data.class_names) or self._examples("train").class_names
    self.model_cfg = encoder_config(config, self.special)
    self.model = bert.Classifier(self.model_cfg, len(self.class_names), config.model.token_types)

  # The loop's interface.

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {"inputs": jax.ShapeDtypeStruct((batch_size, self.config.seq_len), jnp.int32),
            "labels": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

  def init(self, rng, batch):
    return self.model.init({"params": rng}, batch["inputs"], batch["inputs"] != self.special.pad)

  def _logits(self, params, batch, rng=None, train=False):
    return self.model.apply({"params": params}, batch["inputs"],
                            batch["inputs"] != self.special.pad, train=train,
                            rngs=dropout_rngs(rng))

  def loss(self, params, batch, rng, train: bool):
    logits_BxC = self._logits(params, batch, rng, train).astype(jnp.float32)
    loss_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, batch["labels"])
    correct_B = logits_BxC.argmax(-1) == batch["labels"]
    return Loss(total=loss_B.sum(), weight=jnp.float32(loss_B.size),
                metrics={"accuracy": correct_B.sum()})

  def eval_sums(self, params, batch) -> dict[str, jax.Array]:
    logits_BxC = self._logits(params, batch)
    return metrics.classification_sums(logits_BxC, batch["labels"],
                                       jnp.ones(batch["labels"].shape, jnp.float32))

  def eval_summary(self, sums) -> Report:
    return classification_report(sums, self.class_names)

  def train_data(self, local_batch: int, seed: int):
    examples = augment.corrupted(self._examples("train"), self.config.augment, self.special)
    return pipeline.train_batches(pipeline.shuffled(len(examples), seed), examples.example,
                                  local_batch, seed, self.process_index, self.process_count,
                                  self.config.data.workers)

  def eval_data(self, local_batch: int, num_batches: int):
    examples = self._examples("validation")
    return pipeline.eval_batches(len(examples), examples.example, local_batch, num_batches,
                                 self.config.seed, self.process_index, self.process_count)

  def flops_per_example(self, params) -> float:
    return encoder_flops_per_example(params, self.model_cfg, self.config.seq_len)

  def probabilities(self, params, inputs_BxL):
    """probs_BxC over `class_names` for encoder inputs (mlm.encoder_inputs)."""
    return jax.nn.softmax(self._logits(params, {"inputs": inputs_BxL}).astype(jnp.float32))

  # Data.

  def _examples(self, split: str) -> classify_data.ClassifyExamples:
    if split not in self._splits:
      d = self.config.data
      args = (split, self.tokenizer, self.config.seq_len)
      if d.source == "stdlib":
        snippets, names = classify_data.stdlib_family_snippets(*args, d.val_fraction)
      else:
        snippets, names = classify_data.tfds_classify_snippets(d.name, *args, d.tfds_dir)
      if d.class_names and len(d.class_names) != len(names):
        raise ConfigError(f"data.class_names has {len(d.class_names)} classes but the data has "
                          f"{len(names)} ({', '.join(names)}); set data.class_names=() or match it")
      self._splits[split] = classify_data.ClassifyExamples(snippets, names, self.config.seq_len,
                                                           self.special)
    return self._splits[split]
