"""Llama (`LlamaForCausalLM`) <-> bigjax's decoder with RoPE, RMSNorm, SwiGLU and GQA.

torch's nn.Linear stores kernels as (outputs, inputs): every kernel is transposed. Hugging Face
Llama rotates the two halves of each head (rotate-half), as `layers.rope` does, so its query and
key projections need no permutation (Meta's original files, which rotate interleaved pairs, would).
The RMSNorm epsilon, RoPE base and llama3 frequency scaling come from config.json, in either the
transformers 4 fields (`rope_theta`, `rope_scaling`) or the transformers 5 one (`rope_parameters`).
"""

import re

from bigjax.config_checks import ConfigError
from bigjax.hf.mapping import Tensor, require
from bigjax.models.layers import TransformerConfig

ARCHITECTURES = ("LlamaForCausalLM",)
LAYERS = ""
OPTIONAL_PREFIX = ""
UNUSED = None  # every tensor of a valid file is a parameter of the model
NOT_APPLIED = ("attention_dropout",)  # training-only settings bigjax has no counterpart for
# config.json's llama3 fields -> bigjax's model keys.
LLAMA3 = {"factor": "rope_factor", "low_freq_factor": "rope_low_freq_factor",
          "high_freq_factor": "rope_high_freq_factor",
          "original_max_position_embeddings": "rope_original_max_len"}


def ignored(config) -> re.Pattern:
  """Tensors a file may hold that are not parameters: RoPE buffers, a tied head's copy."""
  tied = r"|^lm_head\.weight$" if config.model.tie_embeddings else ""
  return re.compile(r"\.rotary_emb\.inv_freq$" + tied)


def rope_settings(hf: dict) -> dict:
  """RoPE base and scaling as bigjax model keys; a scaling bigjax lacks is refused."""
  parameters = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or parameters
  theta = hf.get("rope_theta", parameters.get("rope_theta", 10000.0))
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if kind == "default":
    return {"model.rope_theta": theta, "model.rope_scaling": ""}
  if kind != "llama3":
    raise ConfigError(f"config.json has rope scaling of type {kind!r}, which bigjax does not "
                      f"implement (it supports 'llama3')")
  missing = [field for field in LLAMA3 if field not in scaling]
  if missing:
    raise ConfigError(f"config.json's llama3 rope scaling lacks {', '.join(missing)}")
  return {"model.rope_theta": theta, "model.rope_scaling": "llama3",
          **{f"model.{key}": scaling[field] for field, key in LLAMA3.items()}}


def from_hf(hf: dict) -> dict:
  """config.json -> bigjax config overrides; fields bigjax cannot honour are refused."""
  require(hf, "hidden_act", ("silu",), "silu")
  require(hf, "attention_bias", (False,), False)
  require(hf, "mlp_bias", (False,), False)
  d, heads = hf["hidden_size"], hf["num_attention_heads"]
  require(hf, "head_dim", (d // heads, None))  # bigjax derives the head width as D / H
  return {"task": "lm", "model.vocab_size": hf["vocab_size"],
          "model.num_layers": hf["num_hidden_layers"], "model.num_heads": heads,
          "model.num_kv_heads": hf.get("num_key_value_heads") or heads, "model.d_model": d,
          "model.d_ff": hf["intermediate_size"], "model.max_len": hf["max_position_embeddings"],
          "model.positions": "rope", "model.norm": "rmsnorm",
          "model.norm_eps": hf.get("rms_norm_eps", 1e-6), "model.mlp": "swiglu",
          "model.use_bias": False, "model.tie_embeddings": hf.get("tie_word_embeddings", False),
          "model.dropout": 0.0, **rope_settings(hf)}


def to_hf(task, special_ids: dict[str, int]) -> dict:
  """The run's model -> config.json (transformers 4 rope fields, which 5 also reads)."""
  m: TransformerConfig = task.model_cfg
  for name, want in (("norm", "rmsnorm"), ("mlp", "swiglu"), ("use_bias", False)):
    if getattr(m, name) != want:
      raise ConfigError(f"model.{name}={getattr(m, name)!r}: Llama has {name}={want!r}, so this "
                        f"run cannot be written as LlamaForCausalLM")
  out = {"architectures": list(ARCHITECTURES), "model_type": "llama", "vocab_size": m.vocab_size,
         "hidden_size": m.d_model, "intermediate_size": m.d_ff, "num_hidden_layers": m.num_layers,
         "num_attention_heads": m.num_heads, "num_key_value_heads": m.num_kv_heads,
         "head_dim": m.head_dim, "max_position_embeddings": m.max_len,
         "rms_norm_eps": m.norm_eps or 1e-6, "rope_theta": m.rope_theta, "hidden_act": "silu",
         "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": m.tie_embeddings,
         "bos_token_id": special_ids.get("bos"), "eos_token_id": special_ids.get("eos")}
  if m.rope_scaling == "llama3":
    out["rope_scaling"] = {"rope_type": "llama3",
                           **{field: getattr(m, key) for field, key in LLAMA3.items()}}
  return out


def tensors(config) -> tuple[list[Tensor], list[Tensor]]:
  """(tensors outside the layers, tensors of layer {i})."""
  outer = [Tensor("model.embed_tokens.weight", "embed/embedding"),
           Tensor("model.norm.weight", "final_norm/scale")]
  if not config.model.tie_embeddings:
    outer.append(Tensor("lm_head.weight", "unembed/kernel", "linear"))
  p = "model.layers.{i}."
  layer = [Tensor(p + "input_layernorm.weight", "attn_norm/scale"),
           Tensor(p + "self_attn.q_proj.weight", "attn/query/kernel", "linear"),
           Tensor(p + "self_attn.k_proj.weight", "attn/key/kernel", "linear"),
           Tensor(p + "self_attn.v_proj.weight", "attn/value/kernel", "linear"),
           Tensor(p + "self_attn.o_proj.weight", "attn/out/kernel", "linear", n_in=2),
           Tensor(p + "post_attention_layernorm.weight", "mlp_norm/scale"),
           Tensor(p + "mlp.gate_proj.weight", "mlp/gate/kernel", "linear"),
           Tensor(p + "mlp.up_proj.weight", "mlp/up/kernel", "linear"),
           Tensor(p + "mlp.down_proj.weight", "mlp/down/kernel", "linear")]
  return outer, layer
