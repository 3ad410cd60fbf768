"""GPT-2 (`GPT2LMHeadModel`) <-> bigjax's decoder with learned positions, LayerNorm and GELU.

GPT-2's Conv1D stores kernels as (inputs, outputs) like bigjax, so nothing is transposed; its
`c_attn` fuses the query, key and value projections along the output axis. The head is tied to the
token embedding (an untied GPT-2 head has no bias, which bigjax's biased output layer cannot
express, so `tie_word_embeddings=false` is refused). Files saved from `GPT2Model` lack the
`transformer.` prefix; older files carry the causal-mask buffers `attn.bias` / `attn.masked_bias`.
"""

import re

from bigjax.config_checks import ConfigError
from bigjax.hf.mapping import Tensor, require
from bigjax.models.layers import TransformerConfig

ARCHITECTURES = ("GPT2LMHeadModel",)
LAYERS = ""  # the layer stack sits at the top of the parameter tree
OPTIONAL_PREFIX = "transformer."
ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact"}
UNUSED = None  # every tensor of a valid file is a parameter of the model
NOT_APPLIED = ("attn_pdrop",)  # training-only settings bigjax has no counterpart for


def ignored(config) -> re.Pattern:
  """Tensors a file may hold that are not parameters: mask buffers, the tied head's copy."""
  del config
  return re.compile(r"\.attn\.(bias|masked_bias)$|^lm_head\.weight$")


def from_hf(hf: dict) -> dict:
  """config.json -> bigjax config overrides; fields bigjax cannot honour are refused."""
  require(hf, "scale_attn_weights", (True,), True)
  require(hf, "scale_attn_by_inverse_layer_idx", (False,), False)
  require(hf, "add_cross_attention", (False,), False)
  require(hf, "tie_word_embeddings", (True,), True)
  activation = require(hf, "activation_function", tuple(ACTIVATIONS), "gelu_new")
  d = hf["n_embd"]
  return {"task": "lm", "model.vocab_size": hf["vocab_size"], "model.num_layers": hf["n_layer"],
          "model.num_heads": hf["n_head"], "model.num_kv_heads": hf["n_head"], "model.d_model": d,
          "model.d_ff": hf.get("n_inner") or 4 * d, "model.max_len": hf["n_positions"],
          "model.positions": "learned", "model.norm": "layernorm",
          "model.norm_eps": hf.get("layer_norm_epsilon", 1e-5),
          "model.mlp": ACTIVATIONS[activation],
          "model.use_bias": True, "model.tie_embeddings": True,
          "model.dropout": hf.get("resid_pdrop", 0.0)}


def to_hf(task, special_ids: dict[str, int]) -> dict:
  """The run's model -> config.json, or a one-line error naming what GPT-2 cannot express."""
  m: TransformerConfig = task.model_cfg
  for name, want in (("norm", "layernorm"), ("use_bias", True), ("tie_embeddings", True)):
    if getattr(m, name) != want:
      raise ConfigError(f"model.{name}={getattr(m, name)!r}: GPT-2 has {name}={want!r}, so this "
                        f"run cannot be written as GPT2LMHeadModel")
  if m.mlp == "swiglu" or m.num_kv_heads != m.num_heads:
    raise ConfigError("GPT-2 has a GELU MLP and one key/value head per query head; this run "
                      "has model.mlp='swiglu' or grouped-query attention")
  activation = "gelu" if m.mlp == "gelu_exact" else "gelu_new"
  return {"architectures": list(ARCHITECTURES), "model_type": "gpt2",
          "vocab_size": m.vocab_size, "n_positions": m.max_len, "n_embd": m.d_model,
          "n_layer": m.num_layers, "n_head": m.num_heads, "n_inner": m.d_ff,
          "activation_function": activation, "layer_norm_epsilon": m.norm_eps or 1e-5,
          "resid_pdrop": m.dropout, "embd_pdrop": m.dropout, "attn_pdrop": 0.0,
          "tie_word_embeddings": True, "bos_token_id": special_ids.get("bos"),
          "eos_token_id": special_ids.get("eos")}


def tensors(config) -> tuple[list[Tensor], list[Tensor]]:
  """(tensors outside the layers, tensors of layer {i})."""
  outer = [Tensor("transformer.wte.weight", "embed/embedding"),
           Tensor("transformer.wpe.weight", "pos_embed/embedding"),
           Tensor("transformer.ln_f.weight", "final_norm/scale"),
           Tensor("transformer.ln_f.bias", "final_norm/bias")]
  del config  # every GPT-2 here has the same tensors
  h = "transformer.h.{i}."
  qkv = ("attn/query", "attn/key", "attn/value")
  layer = [Tensor(h + "ln_1.weight", "attn_norm/scale"), Tensor(h + "ln_1.bias", "attn_norm/bias"),
           Tensor(h + "attn.c_attn.weight", tuple(p + "/kernel" for p in qkv), "conv1d"),
           Tensor(h + "attn.c_attn.bias", tuple(p + "/bias" for p in qkv), "flat"),
           Tensor(h + "attn.c_proj.weight", "attn/out/kernel", "conv1d", n_in=2),
           Tensor(h + "attn.c_proj.bias", "attn/out/bias"),
           Tensor(h + "ln_2.weight", "mlp_norm/scale"), Tensor(h + "ln_2.bias", "mlp_norm/bias"),
           Tensor(h + "mlp.c_fc.weight", "mlp/up/kernel", "conv1d"),
           Tensor(h + "mlp.c_fc.bias", "mlp/up/bias"),
           Tensor(h + "mlp.c_proj.weight", "mlp/down/kernel", "conv1d"),
           Tensor(h + "mlp.c_proj.bias", "mlp/down/bias")]
  return outer, layer
