"""Starting from a pretrained model: copy its matching parameters, optionally freeze some.

`config.init_from` names another run's workdir, its `checkpoints` directory, one step of it, or a
Hugging Face model directory (read through bigjax/hf). A fresh run copies every parameter whose
path and shape it shares with that checkpoint's `state.params` (for a BERT classifier: `embed`
and `encoder`, not the masked-LM head) and keeps its own fresh initialisation for the rest (the
new head). Only those arrays are read, straight into this run's sharded layout. A run that
already has checkpoints of its own resumes from them instead: init_from only seeds step 0.

`config.freeze` is a regex searched in each "/"-joined parameter path; matching parameters get
zero gradients and zero updates, so neither the optimizer nor weight decay moves them (their
optimizer moments still take memory: they stay zero).
"""

import logging
import os
import re

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp

from bigjax import checkpoint
from bigjax.config_checks import ConfigError
from bigjax.hf import convert, files

log = logging.getLogger(__name__)


def path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def state_directory(init_from: str) -> str:
  """The `state` item of the newest step under `init_from` (workdir, checkpoints dir or step)."""
  path = os.path.abspath(init_from)
  if os.path.isdir(os.path.join(path, "state")):
    return os.path.join(path, "state")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []
  if not steps:
    raise ConfigError(f"init_from={init_from!r} holds no checkpoint; point it at a workdir, "
                      f"its checkpoints directory or one step directory")
  return os.path.join(path, str(steps[-1]), "state")


def load_pretrained(params, abstract_params, init_from: str):
  """`params` with every leaf the checkpoint shares (same path and shape) replaced by its value.

  `abstract_params` carries the target shardings; a shared path with a different shape means the
  two models do not fit together, which is an error rather than something to skip silently.
  """
  if files.is_model_directory(init_from):
    source = os.path.abspath(init_from)
    restored = _drop_empty(convert.read_params(init_from, abstract_params, strict=False))
  else:
    source = state_directory(init_from)
    restored = _restore_shared(source, abstract_params)
  if not restored:
    raise ConfigError(f"init_from={init_from!r}: no parameter path is shared with this model")
  loaded = {path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(restored)}
  log.warning("init_from %s: copied %d parameter arrays (%s); %d start fresh", source,
              len(loaded), ", ".join(sorted({n.split("/")[0] for n in loaded})),
              len(jax.tree.leaves(params)) - len(loaded))
  return jax.tree_util.tree_map_with_path(
      lambda p, x: _lookup(restored, p, x), params)


def _restore_shared(directory: str, abstract_params):
  """The parameters of the bigjax checkpoint `directory` that share a path with the target."""
  checkpointer = ocp.PyTreeCheckpointer()
  saved = checkpointer.metadata(directory).item_metadata.tree["params"]
  saved_shapes = {path_name(p): m.shape for p, m in jax.tree_util.tree_leaves_with_path(saved)}

  def wanted(path, leaf):
    name = path_name(path)
    if name not in saved_shapes:
      return None
    if tuple(saved_shapes[name]) != leaf.shape:
      raise ConfigError(f"init_from: parameter {name} has shape {tuple(saved_shapes[name])} in "
                        f"{directory} but {leaf.shape} here; use the pretrained model's sizes")
    return leaf

  target = _drop_empty(jax.tree_util.tree_map_with_path(wanted, abstract_params))
  return checkpoint.restore_params(directory, target) if target else {}


def _drop_empty(tree):
  """Removes None leaves and the dicts they leave empty."""
  if isinstance(tree, dict):
    kept = {k: _drop_empty(v) for k, v in tree.items()}
    return {k: v for k, v in kept.items() if v is not None and not (isinstance(v, dict) and not v)}
  return tree


def _lookup(tree, path, default):
  for key in path:
    if not isinstance(tree, dict) or key.key not in tree:
      return default
    tree = tree[key.key]
  return tree


def freeze(tx: optax.GradientTransformation, pattern: str) -> optax.GradientTransformation:
  """`tx` with the gradients and updates of parameters whose path matches `pattern` set to zero.

  Zeroing the gradients first keeps frozen parameters out of the clipping norm and the moments;
  zeroing the updates last removes what weight decay would still do to them.
  """
  if not pattern:
    return tx
  try:
    regex = re.compile(pattern)
  except re.error as e:
    raise ConfigError(f"freeze={pattern!r} is not a valid regex ({e}); e.g. '^(embed|encoder)/'")
  is_frozen = lambda path: bool(regex.search(path_name(path)))

  def init(params):
    names = [path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    # optax.tree_map_params calls init with a placeholder that has no leaves: nothing to check.
    if names and all(regex.search(n) for n in names):
      raise ConfigError(f"freeze={pattern!r} matches every parameter; nothing would train")
    if names and not any(regex.search(n) for n in names):
      raise ConfigError(f"freeze={pattern!r} matches no parameter path (they look like "
                        f"{names[0]!r})")
    return optax.EmptyState()

  def zero_frozen(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(
        lambda p, u: jnp.zeros_like(u) if is_frozen(p) else u, updates), state

  zero = optax.GradientTransformation(init, zero_frozen)
  return optax.chain(zero, tx, zero)
