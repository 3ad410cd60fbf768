"""Hugging Face checkpoints <-> bigjax parameters, for every architecture in `ARCHITECTURES`.

    config = run_config(HF_DIR)                    # the bigjax config of that model
    params = read_params(HF_DIR, run.abstract.params)   # straight into the run's layout
    for name, array in hf_tensors(run.config, params): ...   # and back

Each architecture module (gpt2, llama, bert) holds a table of `mapping.Tensor`s; this file applies
it in either direction. Key accounting is strict: a parameter the model needs that the files lack,
a tensor the files hold that the model has no place for, and a shape that does not fit are each a
one-line error naming the tensor. Per-layer tensors go to one stacked parameter (scanned layers,
`layers/...`, leading axis N) or one per layer (`layer_{i}/...`), whichever the target has.
"""

import logging
import os
import re
from typing import Iterator

import jax
import ml_collections
import numpy as np

from bigjax.config_checks import ConfigError
from bigjax.hf import bert, files, gpt2, llama
from bigjax.hf.mapping import Tensor
from bigjax.hf.tokenizer import HuggingFaceTokenizer

log = logging.getLogger(__name__)

ARCHITECTURES = {name: module for module in (gpt2, llama, bert) for name in module.ARCHITECTURES}
STACKED = -1  # the layer of a scanned parameter: every layer, stacked along its leading axis


def architecture(hf: dict):
  """The module that maps config.json's architecture."""
  names = hf.get("architectures") or []
  if len(names) != 1 or names[0] not in ARCHITECTURES:
    raise ConfigError(f"config.json names architectures {names}; bigjax reads one of "
                      f"{', '.join(ARCHITECTURES)}")
  return ARCHITECTURES[names[0]]


def model_config(hf: dict) -> ml_collections.ConfigDict:
  """bigjax's base config with the model (and task) that config.json describes."""
  from configs import base  # the schema: every key a config may hold

  config = base.get_config()
  try:
    overrides = architecture(hf).from_hf(hf)
  except KeyError as e:
    raise ConfigError(f"config.json lacks {e.args[0]}, which {hf['architectures'][0]} "
                      f"needs") from None
  config.update_from_flattened_dict(overrides)
  config.seq_len = min(config.seq_len, config.model.max_len)
  return config


def run_config(directory: str, scan_layers: bool = True) -> ml_collections.ConfigDict:
  """The locked bigjax config of the Hugging Face model in `directory`, reading its tokenizer."""
  hf = files.read_config(directory)
  config = model_config(hf)
  config.model.scan_layers = scan_layers
  for field in architecture(hf).NOT_APPLIED:
    if hf.get(field):
      log.warning("%s: %s=%s is not applied (bigjax's model.dropout=%s acts on embeddings and "
                  "residual branches only)", directory, field, hf[field], config.model.dropout)
  tokenizer = HuggingFaceTokenizer(directory)
  config.data.tokenizer = "hf"
  config.data.tokenizer_path = os.path.abspath(directory)
  config.data.chat_template = tokenizer.chat_template
  config.lock()
  return config


def _path(tree_path) -> str:
  return "/".join(str(k.key) for k in tree_path)


def _sources(module, config, num_layers: int) -> dict[str, tuple[Tensor, int, int | None]]:
  """bigjax parameter path -> (its Tensor, its part of that tensor, its layer: None for a tensor
  outside the layers, STACKED for the scanned parameter of all layers)."""
  outer, per_layer = module.tensors(config)
  prefix = module.LAYERS + "/" if module.LAYERS else ""
  sources = {path: (t, k, None) for t in outer for k, path in enumerate(t.bigjax)}
  for t in per_layer:
    for k, path in enumerate(t.bigjax):
      sources[f"{prefix}layers/{path}"] = (t, k, STACKED)
      sources.update({f"{prefix}layer_{i}/{path}": (t, k, i) for i in range(num_layers)})
  return sources


def _renamer(module, names: list[str]):
  """Spelling differences between files of one architecture: an absent model prefix (GPT-2
  saved from GPT2Model) and the LayerNorm gamma/beta of old files."""
  add_prefix = module.OPTIONAL_PREFIX and not any(n.startswith(module.OPTIONAL_PREFIX)
                                                  for n in names)
  def rename(name: str) -> str:
    name = re.sub(r"(LayerNorm|layer_norm)\.gamma$", r"\1.weight", name)
    name = re.sub(r"(LayerNorm|layer_norm)\.beta$", r"\1.bias", name)
    keep = name.startswith("lm_head.")
    return name if keep or not add_prefix else module.OPTIONAL_PREFIX + name
  return rename


def _read_one(tensors: files.TensorFiles, t: Tensor, part: int, layer: int,
              shape: tuple[int, ...]) -> np.ndarray:
  name = t.hf.format(i=layer)
  if name not in tensors:
    raise ConfigError(f"{tensors.directory}: tensor {name} is missing")
  have, want = tensors.shape(name), t.fused_shape(shape)
  if have != want:
    raise ConfigError(f"{tensors.directory}: tensor {name} has shape {have}, but the model "
                      f"needs {want}")
  return t.to_bigjax(tensors.read(name), part, shape)


def _layer_count(abstract_params, layers_prefix: str) -> int:
  """How many layers the target has: the leading axis of its stacked (scanned) parameters, or
  its number of layer_{i} subtrees."""
  paths = {_path(p): a for p, a in jax.tree_util.tree_leaves_with_path(abstract_params)}
  stacked = [a.shape[0] for p, a in paths.items() if p.startswith(layers_prefix + "layers/")]
  if stacked:
    return stacked[0]
  pattern = re.compile(re.escape(layers_prefix) + r"layer_(\d+)/")
  return len({m[1] for m in map(pattern.match, paths) if m})


def read_params(directory: str, abstract_params, strict: bool = True):
  """The parameters `abstract_params` describes (ShapeDtypeStructs with shardings), read from the
  Hugging Face checkpoint in `directory` into that layout.

  strict: every parameter must be found and every tensor used (import, load). Otherwise
  (init_from) only the parameters the checkpoint has are returned (None for the others), and
  tensors the model has no place for (a masked-LM head under a classifier) are skipped.
  """
  hf = files.read_config(directory)
  module = architecture(hf)
  config = model_config(hf)
  num_layers = config.model.num_layers
  prefix = module.LAYERS + "/" if module.LAYERS else ""
  target_layers = _layer_count(abstract_params, prefix)
  if target_layers != num_layers:
    raise ConfigError(f"{directory} holds {num_layers} layers but this model has "
                      f"{target_layers}; use the checkpoint's model.num_layers")
  sources = _sources(module, config, num_layers)
  tensors = files.TensorFiles(directory)
  tensors.rename(_renamer(module, tensors.names()))
  used = set()

  def read(tree_path, abstract):
    path = _path(tree_path)
    if path not in sources:
      if strict:
        raise ConfigError(f"{directory}: this model's parameter {path} has no Hugging Face "
                          f"tensor in {module.__name__}")
      return None
    t, part, layer = sources[path]
    if layer == STACKED:
      layers = range(num_layers)
      array = np.stack([_read_one(tensors, t, part, i, abstract.shape[1:]) for i in layers])
    else:
      layers = [layer]
      array = _read_one(tensors, t, part, layer, abstract.shape)
    used.update(t.hf.format(i=i) for i in layers)
    array = array.astype(abstract.dtype)
    # Each device (of any process) receives only its own shard of the host copy.
    return jax.make_array_from_callback(array.shape, abstract.sharding, lambda index: array[index])

  params = jax.tree_util.tree_map_with_path(read, abstract_params)
  left = sorted(n for n in tensors.names() - used if not module.ignored(config).search(n))
  unused = [n for n in left if module.UNUSED and module.UNUSED.search(n)]
  if unused:
    log.warning("%s: %d tensors of heads this model does not have are not used: %s", directory,
                len(unused), ", ".join(unused))
  unexpected = [n for n in left if n not in unused]
  if strict and unexpected:
    raise ConfigError(f"{directory}: unexpected tensor {unexpected[0]} (not part of a "
                      f"{hf['architectures'][0]} as bigjax maps it)")
  return params


def hf_tensors(config: ml_collections.ConfigDict, params) -> Iterator[tuple[str, np.ndarray]]:
  """(Hugging Face name, array) for every tensor of the run's model, layer by layer."""
  module = export_architecture(config)
  outer, per_layer = module.tensors(config)
  prefix = module.LAYERS + "/" if module.LAYERS else ""
  flat = {_path(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(params)}
  scanned = any(path.startswith(prefix + "layers/") for path in flat)
  for t in outer:
    if t.optional and not all(path in flat for path in t.bigjax):
      continue
    yield t.hf, t.to_hf([jax.device_get(flat[path]) for path in t.bigjax])
  for i in range(config.model.num_layers):
    for t in per_layer:
      arrays = [jax.device_get(flat[f"{prefix}layers/{path}"][i]) if scanned
                else jax.device_get(flat[f"{prefix}layer_{i}/{path}"]) for path in t.bigjax]
      yield t.hf.format(i=i), t.to_hf(arrays)


def export_architecture(config: ml_collections.ConfigDict):
  """The architecture module a bigjax run is written as, or a one-line error."""
  if config.task == "lm":
    return gpt2 if config.model.positions == "learned" else llama
  if config.task in ("mlm", "text_classify"):
    return bert
  raise ConfigError(f"task={config.task!r} has no Hugging Face counterpart here; export lm "
                    f"(GPT-2, Llama), mlm or text_classify (BERT) runs")
