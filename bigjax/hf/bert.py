"""BERT (`BertForMaskedLM`, `BertForSequenceClassification`) <-> bigjax's encoder in its
post-norm layout (`model.post_norm`, `model.embed_norm`; see bigjax/models/bert.py).

Kernels are torch nn.Linear (outputs, inputs) and are transposed. Hugging Face BERT always has
token-type embeddings (`type_vocab_size`, bigjax's `model.token_types`), exact-erf GELU
(`hidden_act="gelu"`, bigjax's mlp="gelu_exact") and LayerNorm epsilon 1e-12. The masked-LM
decoder is tied to the word embedding; its bias is `cls.predictions.bias`. A classifier's pooler
and linear layer are bigjax's `classifier/pooler` and `classifier/out`, its labels (`id2label`)
the run's `data.class_names`.
"""

import re

from bigjax.config_checks import ConfigError
from bigjax.hf.mapping import Tensor, require
from bigjax.models.layers import TransformerConfig

ARCHITECTURES = ("BertForMaskedLM", "BertForSequenceClassification")
TASKS = {"BertForMaskedLM": "mlm", "BertForSequenceClassification": "text_classify"}
LAYERS = "encoder"  # the layer stack sits under the encoder
OPTIONAL_PREFIX = ""
# Training-only settings bigjax lacks (its one model.dropout is hidden_dropout_prob).
NOT_APPLIED = ("attention_probs_dropout_prob", "classifier_dropout")
ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}


def ignored(config) -> re.Pattern:
  """Tensors a file may hold that are not parameters: position ids, the decoder's tied copies."""
  del config
  return re.compile(r"embeddings\.position_ids$|^cls\.predictions\.decoder\.(weight|bias)$")


# Pretraining heads that BERT checkpoints published as BertForMaskedLM still carry (the pooler,
# next-sentence prediction): read where the model has them (a classifier's pooler under
# init_from), otherwise left out with a warning that names them.
UNUSED = re.compile(r"^bert\.pooler\.|^cls\.seq_relationship\.")


def from_hf(hf: dict) -> dict:
  """config.json -> bigjax config overrides; fields bigjax cannot honour are refused."""
  architecture = hf["architectures"][0]
  require(hf, "position_embedding_type", ("absolute",), "absolute")
  require(hf, "is_decoder", (False,), False)
  require(hf, "add_cross_attention", (False,), False)
  require(hf, "tie_word_embeddings", (True,), True)
  activation = require(hf, "hidden_act", tuple(ACTIVATIONS), "gelu")
  dropout = hf.get("hidden_dropout_prob", 0.0)
  overrides = {
      "task": TASKS[architecture], "model.vocab_size": hf["vocab_size"],
      "model.num_layers": hf["num_hidden_layers"], "model.num_heads": hf["num_attention_heads"],
      "model.num_kv_heads": hf["num_attention_heads"], "model.d_model": hf["hidden_size"],
      "model.d_ff": hf["intermediate_size"], "model.max_len": hf["max_position_embeddings"],
      "model.positions": "learned", "model.norm": "layernorm",
      "model.norm_eps": hf.get("layer_norm_eps", 1e-12), "model.post_norm": True,
      "model.embed_norm": True, "model.mlp": ACTIVATIONS[activation], "model.use_bias": True,
      "model.tie_embeddings": True, "model.token_types": hf.get("type_vocab_size", 2),
      "model.dropout": dropout}
  if architecture == "BertForSequenceClassification":
    require(hf, "problem_type", (None, "single_label_classification"))
    labels = hf.get("id2label") or {str(i): f"LABEL_{i}" for i in range(hf.get("num_labels", 2))}
    if len(labels) < 2:
      raise ConfigError("config.json has a single label (regression); bigjax's text_classify "
                        "needs two or more classes")
    overrides["data.class_names"] = tuple(labels[str(i)] for i in range(len(labels)))
  return overrides


def to_hf(task, special_ids: dict[str, int]) -> dict:
  """The run's model -> config.json, or a one-line error naming what BERT cannot express."""
  m: TransformerConfig = task.model_cfg
  config = task.config
  for name, want in (("post_norm", True), ("embed_norm", True), ("norm", "layernorm"),
                     ("use_bias", True), ("positions", "learned")):
    if getattr(m, name) != want:
      raise ConfigError(f"model.{name}={getattr(m, name)!r}: Hugging Face BERT has "
                        f"{name}={want!r}, so this run cannot be written as BERT")
  if m.mlp == "swiglu" or m.num_kv_heads != m.num_heads or not config.model.token_types:
    raise ConfigError("Hugging Face BERT has a GELU MLP, one key/value head per query head and "
                      "token-type embeddings (model.token_types >= 1)")
  if config.task == "mlm" and config.mlm.nsp:
    raise ConfigError("mlm.nsp=True: BertForMaskedLM has no next-sentence head")
  out = {"architectures": [next(a for a, t in TASKS.items() if t == config.task)],
         "model_type": "bert", "vocab_size": m.vocab_size, "hidden_size": m.d_model,
         "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_heads,
         "intermediate_size": m.d_ff, "hidden_act": "gelu" if m.exact_gelu else "gelu_new",
         "max_position_embeddings": m.max_len, "type_vocab_size": config.model.token_types,
         "layer_norm_eps": m.norm_eps or 1e-5, "hidden_dropout_prob": m.dropout,
         "attention_probs_dropout_prob": 0.0, "pad_token_id": special_ids.get("pad", 0)}
  if config.task == "text_classify":
    out["id2label"] = {str(i): name for i, name in enumerate(task.class_names)}
    out["label2id"] = {name: i for i, name in enumerate(task.class_names)}
  return out


def tensors(config) -> tuple[list[Tensor], list[Tensor]]:
  """(tensors outside the layers, tensors of layer {i})."""
  e = "bert.embeddings."
  outer = [Tensor(e + "word_embeddings.weight", "embed/embedding"),
           Tensor(e + "position_embeddings.weight", "encoder/pos_embed/embedding"),
           Tensor(e + "token_type_embeddings.weight", "encoder/type_embed/embedding"),
           Tensor(e + "LayerNorm.weight", "encoder/embed_norm/scale"),
           Tensor(e + "LayerNorm.bias", "encoder/embed_norm/bias")]
  if config.task == "mlm":
    c = "cls.predictions."
    outer += [Tensor(c + "transform.dense.weight", "mlm_head/transform/kernel", "linear"),
              Tensor(c + "transform.dense.bias", "mlm_head/transform/bias"),
              Tensor(c + "transform.LayerNorm.weight", "mlm_head/norm/scale"),
              Tensor(c + "transform.LayerNorm.bias", "mlm_head/norm/bias"),
              Tensor(c + "bias", "mlm_head/bias")]
  # The pooler is a classifier's; a masked-LM model has none (and writes none).
  mlm = config.task == "mlm"
  outer += [Tensor("bert.pooler.dense.weight", "classifier/pooler/kernel", "linear", optional=mlm),
            Tensor("bert.pooler.dense.bias", "classifier/pooler/bias", optional=mlm)]
  if config.task == "text_classify":
    outer += [Tensor("classifier.weight", "classifier/out/kernel", "linear"),
              Tensor("classifier.bias", "classifier/out/bias")]
  p = "bert.encoder.layer.{i}."
  layer = []
  for hf, bigjax in (("query", "query"), ("key", "key"), ("value", "value")):
    layer += [Tensor(f"{p}attention.self.{hf}.weight", f"attn/{bigjax}/kernel", "linear"),
              Tensor(f"{p}attention.self.{hf}.bias", f"attn/{bigjax}/bias", "flat")]
  layer += [Tensor(p + "attention.output.dense.weight", "attn/out/kernel", "linear", n_in=2),
            Tensor(p + "attention.output.dense.bias", "attn/out/bias"),
            Tensor(p + "attention.output.LayerNorm.weight", "attn_norm/scale"),
            Tensor(p + "attention.output.LayerNorm.bias", "attn_norm/bias"),
            Tensor(p + "intermediate.dense.weight", "mlp/up/kernel", "linear"),
            Tensor(p + "intermediate.dense.bias", "mlp/up/bias"),
            Tensor(p + "output.dense.weight", "mlp/down/kernel", "linear"),
            Tensor(p + "output.dense.bias", "mlp/down/bias"),
            Tensor(p + "output.LayerNorm.weight", "mlp_norm/scale"),
            Tensor(p + "output.LayerNorm.bias", "mlp_norm/bias")]
  return outer, layer
