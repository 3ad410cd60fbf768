"""LoRA and QLoRA with qwix: low-rank adapters beside frozen, optionally quantized, kernels.

qwix intercepts the matmul of every Dense whose module path fully matches `lora.targets` and
adds (alpha / rank) * x A B to it, creating `kernel_lora_a` (inputs x rank, random) and
`kernel_lora_b` (rank x outputs, zero, so the first step's loss is the base model's) beside the
kernel. They take the kernel's logical axis names (and the layer axis of scanned layers), so they
shard like it. With `lora.base_qtype`, the same interception keeps the kernel as int8/int4.

'.*(attn|mlp)/.*' adapts every attention and MLP projection; adding '|embed' also adapts a tied
output projection (x E^T; the input lookup stays as it is), which is where a change of domain
(code to prose, say) shows first.

Only the adapters train (`bigjax.adapt.trainable_split`); a checkpoint holds them and their
optimizer state, and refers to the base through the run's config (`init_from`, or the seed).
`python -m bigjax.lora merge` folds them into the kernels: a plain float run.
"""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import qwix
from qwix._src.providers.ptq import WithAux  # qwix's quantized parameter (an int array + scales)
from qwix._src.utils import flax_util

from bigjax.config_checks import ConfigError

QTYPES = ("int8", "int4")
ADAPTER_SUFFIXES = ("_lora_a", "_lora_b")


def enabled(config: ml_collections.ConfigDict) -> bool:
  return bool(config.lora.targets)


def _targets_embedding(targets: str) -> bool:
  return any(re.fullmatch(targets, path) for path in ("embed", "Decoder/embed"))


def check(config: ml_collections.ConfigDict, platform: str) -> None:
  lora = config.lora
  if lora.base_qtype and not enabled(config):
    raise ConfigError(f"lora.base_qtype={lora.base_qtype!r} needs lora.targets (QLoRA adapts a "
                      f"quantized base), e.g. '.*(attn|mlp)/.*'")
  if not enabled(config):
    return
  # Each value alone is checked by configs/schema.py.
  if config.dtype != "float32" and _targets_embedding(lora.targets):
    raise ConfigError(f"lora.targets={lora.targets!r} adapts the tied output projection, which "
                      f"qwix sees in float32 runs only; set dtype=float32 or leave out embed")
  if lora.base_qtype == "int4" and platform == "cpu":
    # The train step is compiled ahead of time, and jax 0.10.2's CPU backend rejects int4
    # arguments to such programs (an array's layout there never matches the program's).
    raise ConfigError("lora.base_qtype=int4 cannot train on CPU (XLA:CPU programs reject int4 "
                      "arrays in jax 0.10.2); use int8 here, int4 on GPU or TPU")


def is_adapter(path: tuple[str, ...]) -> bool:
  return path[-1].endswith(ADAPTER_SUFFIXES)


def no_adapters_error(config: ml_collections.ConfigDict, params: dict):
  """The one-line error for a target regex that matched no module (with paths that exist)."""
  modules = sorted({"/".join(path[:-1]) for path in _paths(params) if path[-1] == "kernel"})
  raise ConfigError(f"lora.targets={config.lora.targets!r} matches no module with a kernel; "
                    f"module paths look like {', '.join(repr(m) for m in modules[:4])}")


class _Provider(qwix.LoraProvider):
  """qwix's LoRA, with adapter dropout only while training, and adapters created under rules.

  qwix drops adapter inputs on every call, evaluation included, and then asks evaluation for a
  dropout rng. Here the rule loses its dropout wherever the model runs without a dropout rng,
  which is how our tasks evaluate and decode (`tasks.base.dropout_rngs`).
  """

  def dot_general(self, lhs, rhs, *args, **kwargs):
    # qwix adds the float32 adapters' output to the matmul's: keep the matmul's dtype (bfloat16
    # compute stays bfloat16, and a scanned layer's carry keeps its type).
    dtype = kwargs.get("preferred_element_type") or jnp.result_type(lhs.dtype, rhs.dtype)
    if not flax_util.get_current_module().is_initializing():
      return super().dot_general(lhs, rhs, *args, **kwargs).astype(dtype)
    # qwix names a new adapter by unboxing the kernel's box around the adapter's value: under
    # logical-axis rules that constrains, say, a rank-2 adapter with a rank-3 kernel's names and
    # fails. The names are right once qwix has transposed them, so the rules wait till then.
    with nn.logical_axis_rules(()):
      return super().dot_general(lhs, rhs, *args, **kwargs).astype(dtype)

  def _get_current_rule_and_op_id(self, op_name, **kwargs):
    rule, op_id = super()._get_current_rule_and_op_id(op_name, **kwargs)
    if (isinstance(rule, qwix.LoraRule) and rule.dropout
        and not flax_util.get_current_module().scope.has_rng("dropout")):
      rule = dataclasses.replace(rule, dropout=0.0)
    return rule, op_id


def wrap(model, config: ml_collections.ConfigDict):
  """`model` with adapters on the target modules (and a quantized base for QLoRA)."""
  lora = config.lora
  adapter = dict(rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout)
  rules = [qwix.LoraRule(module_path=lora.targets, weight_qtype=lora.base_qtype or None,
                         tile_size=config.quant.tile or None, **adapter)]
  if lora.base_qtype:  # a targeted embedding (its output projection) stays float: jnp.take
    # cannot read a quantized table. qwix applies the first rule that matches.
    embeddings = rf"(?=(?:{lora.targets})$)(.*/)?\w*embed"
    rules.insert(0, qwix.LoraRule(module_path=embeddings, **adapter))
  return qwix.apply_lora_to_model(model, _Provider(rules))


def _paths(tree: dict, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _paths(value, (*prefix, key))
    else:
      yield (*prefix, key)


def _float_kernel(kernel):
  return qwix.dequantize(kernel.array) if isinstance(kernel, WithAux) else kernel


def folded(params: dict, scale: float) -> dict:
  """Every kernel's adapter folded into it, W + scale A B, and dropped (a QLoRA base is
  dequantized to float first)."""
  out = {}
  for key, value in params.items():
    if isinstance(value, dict):
      out[key] = folded(value, scale)
    elif not is_adapter((key,)):
      out[key] = _float_kernel(value)
      if key == "kernel" and "kernel_lora_a" in params:
        a, b = params["kernel_lora_a"], params["kernel_lora_b"]
        # A is (inputs, rank) and B (rank, outputs), inputs and outputs flattened in the kernel's
        # order, after the layer axis of scanned layers.
        delta = jnp.einsum("...ir,...ro->...io", a, b).reshape(out[key].shape)
        out[key] = out[key] + scale * delta
  return out


def untied_head(params: dict, config: ml_collections.ConfigDict) -> dict:
  """A decoder's parameters with an adapted tied output projection made its own `unembed`.

  The tied projection is x E^T; its adapter cannot fold into E, which the input lookup shares,
  so the merged model unties them: unembed = E^T + (alpha / rank) A B, E unchanged.
  """
  embed = params["embed"]
  head_DxV = embed["embedding"].T + (config.lora.alpha / config.lora.rank) * (
      embed["embedding_lora_a"] @ embed["embedding_lora_b"])
  unembed = {"kernel": head_DxV}
  if config.model.use_bias:
    unembed["bias"] = jnp.zeros(head_DxV.shape[-1], head_DxV.dtype)
  return {**params, "unembed": unembed}


def load_quantized_base(params: dict, abstract_params, init_from: str) -> dict:
  """QLoRA's step 0: the float base read from `init_from`, then quantized into the frozen
  kernels (once, in the run's layout), beside the fresh adapters."""
  from bigjax import finetune
  from bigjax.adapt import quantize

  is_quantized = lambda x: isinstance(x, WithAux)
  as_float = lambda x: (_float_kernel(x) if is_quantized(x) else x)
  float_abstract = jax.tree.map(
      lambda x: (jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=x.array.qvalue.sharding)
                 if is_quantized(x) else x), abstract_params, is_leaf=is_quantized)
  float_params = jax.jit(lambda p: jax.tree.map(as_float, p, is_leaf=is_quantized))(params)
  float_params = finetune.load_pretrained(float_params, float_abstract, init_from)
  shardings = jax.tree.map(lambda x: x.sharding, abstract_params)
  return jax.jit(lambda p: quantize.quantize_params(p, abstract_params),
                 out_shardings=shardings)(float_params)


def merge_run(workdir: str, out: str, devices=None) -> float:
  """Folds the LoRA run in `workdir` into a plain run in `out`; returns the merged eval loss."""
  from bigjax.adapt import measure
  from bigjax.load import load, save

  run = load(workdir, devices=devices)
  if not enabled(run.config):
    raise ConfigError(f"{workdir} is not a LoRA run (lora.targets is empty): nothing to merge")
  config = ml_collections.ConfigDict(run.config.to_dict())
  config.lora.update(targets="", base_qtype="")
  config.init_from = ""  # the merged parameters are the whole model
  head_adapted = "embedding_lora_a" in run.params.get("embed", {})
  if head_adapted and config.task not in ("lm", "distill"):
    raise ConfigError(f"adapters on the tied embedding of a task={config.task} model cannot be "
                      f"folded; train them without the embedding in lora.targets")
  config.model.tie_embeddings = config.model.tie_embeddings and not head_adapted
  config.lock()
  scale = run.config.lora.alpha / run.config.lora.rank
  untie = lambda p: untied_head(p, run.config) if head_adapted else p
  params = jax.jit(lambda p: folded(untie(p), scale))(run.params)
  save(out, config, run.step, params)
  return measure.eval_loss(config, params, devices)
