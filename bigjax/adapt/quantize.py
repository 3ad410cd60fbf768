"""int8/int4 quantization with qwix: quantization-aware training and post-training conversion.

One rule describes both: weights as `quant.weights` (absmax scales, one per output channel, or
one per `quant.tile` inputs), optionally the matmuls' inputs as int8 (dynamic, per token).

- QAT (`quant.mode=qat`, the training default): qwix's QtProvider fake-quantizes in the forward
  pass and passes gradients straight through; the parameters stay float.
- PTQ (`quant.mode=ptq`, written by `python -m bigjax.quantize`): the parameters are stored as
  integers with their scales (qwix's PtqProvider reads them). A QAT run converts to exactly the
  numbers it trained with.

Embeddings stay float (a quantized table cannot be indexed with jnp.take), and so do the vocabulary
projections and attention's own score and value products (activations times activations).
"""

import jax
import ml_collections
import qwix
from qwix._src.providers.ptq import WithAux  # qwix's quantized parameter (an int array + scales)

from bigjax.config_checks import ConfigError
from bigjax.models.layers import TransformerConfig

QTYPES = ("int8", "int4")
MODES = ("qat", "ptq")
# Module paths quantized: every module but the embeddings (names ending in "embed": embed,
# pos_embed, type_embed, unembed) and the attention modules themselves (attn, self_attn,
# cross_attn), whose own matmuls multiply activations; their Dense children are quantized.
QUANTIZED_MODULES = r"(?!(.*/)?\w*(embed|attn)$).*"
STACKED = "layers"  # the module nn.scan stacks a model's layers in (layers.stack_layers)


def enabled(config: ml_collections.ConfigDict) -> bool:
  return bool(config.quant.weights)


def check(config: ml_collections.ConfigDict) -> None:
  quant = config.quant
  if quant.weights not in ("", *QTYPES):
    raise ConfigError(f"quant.weights={quant.weights!r}; use int8 or int4")
  if quant.activations not in ("", "int8"):
    raise ConfigError(f"quant.activations={quant.activations!r}; use int8 or '' (float)")
  if quant.activations and not quant.weights:
    raise ConfigError("quant.activations needs quant.weights (int8 or int4) too")
  if quant.mode not in MODES:
    raise ConfigError(f"quant.mode={quant.mode!r}; use qat (training) or ptq (bigjax.quantize "
                      f"sets it)")
  if quant.tile < 0:
    raise ConfigError(f"quant.tile={quant.tile} must be 0 (per channel) or a positive tile")


def check_tiles(config: ml_collections.ConfigDict, model_cfg: TransformerConfig) -> None:
  """A tile must divide every width a quantized matmul contracts over (its innermost input)."""
  tile = config.quant.tile
  widths = {"d_model": model_cfg.d_model, "d_ff": model_cfg.d_ff,
            "head_dim": model_cfg.head_dim}
  uneven = [f"{name}={width}" for name, width in widths.items() if tile and width % tile]
  if uneven:
    raise ConfigError(f"quant.tile={tile} does not divide {', '.join(uneven)}; pick a tile that "
                      f"divides {', '.join(f'{n}={w}' for n, w in widths.items())}")


def rule_settings(config: ml_collections.ConfigDict) -> dict:
  quant = config.quant
  return dict(module_path=QUANTIZED_MODULES, weight_qtype=quant.weights,
              act_qtype=quant.activations or None, tile_size=quant.tile or None)


def wrap(model, config: ml_collections.ConfigDict):
  """`model` with fake-quantized matmuls (qat) or integer parameters (ptq)."""
  if config.quant.mode == "qat":
    provider = qwix.QtProvider([qwix.QtRule(**rule_settings(config))])
  else:
    provider = qwix.PtqProvider([qwix.QuantizationRule(**rule_settings(config))])
  return qwix.quantize_model(model, provider)


def quantize_params(params: dict, abstract_quantized) -> dict:
  """Float parameters -> the quantized ones `abstract_quantized` describes (qwix.quantize_params
  per kernel; other leaves pass through).

  A scanned stack's kernel is quantized one layer at a time (vmap over its layer axis): its
  qwix description is of one layer, and quantizing the stacked array as a whole would compute
  scales over the wrong axes.
  """
  def one(path, value, abstract):
    if not isinstance(abstract, WithAux):
      return value
    quantize = lambda v, a: qwix.quantize_params({"w": v}, {"w": a})["w"]
    if STACKED in (getattr(k, "key", None) for k in path):
      one_layer = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), abstract)
      return jax.vmap(lambda v: quantize(v, one_layer))(value)
    return quantize(value, abstract)

  return jax.tree_util.tree_map_with_path(one, params, abstract_quantized)


def weight_bits(params) -> int:
  """Bits the parameters take, counted by their logical width (JAX stores int4 in a byte)."""
  return sum(x.size * jax.dtypes.itemsize_bits(x.dtype) for x in jax.tree.leaves(params))


def kernel_bits(params) -> int:
  """Bits of the quantizable kernels alone (their int values when quantized, not the scales)."""
  kernels = jax.tree.map(lambda x: x.array.qvalue if isinstance(x, WithAux) else x, params,
                         is_leaf=lambda x: isinstance(x, WithAux))
  flat = jax.tree_util.tree_leaves_with_path(kernels)
  return sum(weight_bits(x) for path, x in flat
             if any(getattr(k, "key", None) == "kernel" for k in path))


def quantize_run(workdir: str, out: str, weights: str, tile: int = 0, activations: str = "",
                 devices=None) -> dict[str, float]:
  """Post-training quantization of the run in `workdir` into a new run in `out`.

  A QAT run converts to the numbers it trained with. Returns weight bits and eval losses, before
  and after.
  """
  from bigjax import build
  from bigjax.adapt import lora, measure
  from bigjax.load import layout_config, load, save

  devices = list(devices if devices is not None else jax.devices())
  check(ml_collections.ConfigDict({"quant": dict(weights=weights, tile=tile,
                                                 activations=activations, mode="ptq")}))
  source = load(workdir, devices=devices)
  if lora.enabled(source.config):
    raise ConfigError(f"{workdir} is a LoRA run; fold its adapters first: python -m bigjax.lora "
                      f"merge --workdir={workdir} --out=MERGED")
  config = ml_collections.ConfigDict(source.config.to_dict())
  config.quant.update(weights=weights, tile=tile, activations=activations, mode="ptq")
  config.prune.sparsity = 0.0  # a pruned run's zeros are in its weights already
  config.lock()
  target = build.build(layout_config(config, len(devices), None), devices).abstract.params
  params = jax.jit(lambda p: quantize_params(p, target),
                   out_shardings=jax.tree.map(lambda x: x.sharding, target))(source.params)
  save(out, config, source.step, params)
  params = load(out, devices=devices).params  # what evaluation and serving will read
  return {"bits_before": weight_bits(source.params), "bits_after": weight_bits(params),
          "kernel_bits_before": kernel_bits(source.params),
          "kernel_bits_after": kernel_bits(params),
          "loss_before": measure.eval_loss(source.config, source.params, devices),
          "loss_after": measure.eval_loss(config, params, devices)}
