"""The model as portable compiled programs: `jax.export` artifacts (StableHLO) plus a manifest.

    python -m bigjax.export --workdir=W --out=DIR [--platforms=cpu,cuda,tpu] [--cache_len=1024]

W is a bigjax run or a Hugging Face model directory. DIR receives, for a language model,
  forward.jax   (params, tokens_BxL) -> logits_BxLxV
  prefill.jax   (params, prompt_BxP) -> (last logits_BxV, cache): the prompt written to a KV cache
                of cache_len slots
  decode.jax    (params, token_B, index, cache) -> (logits_BxV, cache): one token at position
                `index` (a scalar), written to the cache at that slot
and for an encoder (mlm, text_classify) only forward.jax: (params, tokens_BxL, valid_BxL) -> logits.
B (and L, P) are symbolic: one artifact serves every batch size. Parameters are an input, not
constants in the program, so an artifact's size does not grow with the model: they are saved
beside it in params.npz ("/"-joined paths, float32). manifest.json holds the jax version, the
calling convention, the platforms, every function's input and output shapes, the run's config
and its tokenizer (copied into DIR/tokenizer for a Hugging Face one).

Reloading needs jax and numpy only: see scripts/run_exported.py. Attention is exported as plain
XLA attention on every platform: cuDNN's custom calls are not among those jax.export allows, and
the CPU's blockwise kernel needs a static length.
"""

import dataclasses
import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np

from bigjax.config_checks import ConfigError
from bigjax.hf.tokenizer import HuggingFaceTokenizer
from bigjax.load import LoadedRun, load
from bigjax.models import gpt

PLATFORMS = ("cpu", "cuda", "tpu")
ENCODER_TASKS = ("mlm", "text_classify")


def _flat(params) -> dict[str, np.ndarray]:
  return {"/".join(str(k.key) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def _nested(flat: dict[str, np.ndarray]) -> dict:
  """"/"-joined names back into nested plain dicts: the tree a reloading script rebuilds."""
  tree = {}
  for name, array in flat.items():
    *parents, leaf = name.split("/")
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = array
  return tree


def decoder_functions(model, cache_len: int):
  """{name: (function, symbolic input shapes after params)} for a decoder-only LM."""
  cfg = model.cfg

  def forward(params, tokens_BxL):
    return model.apply({"params": params}, tokens_BxL)[0]

  def prefill(params, prompt_BxP):
    cache = gpt.init_cache(cfg, prompt_BxP.shape[0], cache_len)
    logits_BxPxV, cache = model.apply({"params": params}, prompt_BxP, cache=cache, cache_index=0)
    return logits_BxPxV[:, -1], cache

  def decode(params, token_B, index, cache):
    positions_Bx1 = jnp.full((token_B.shape[0], 1), index)
    logits_Bx1xV, cache = model.apply({"params": params}, token_B[:, None],
                                      positions_BxL=positions_Bx1, cache=cache, cache_index=index)
    return logits_Bx1xV[:, 0], cache

  tokens = jax.ShapeDtypeStruct(jax.export.symbolic_shape("b, l"), jnp.int32)
  prompt = jax.ShapeDtypeStruct(
      jax.export.symbolic_shape("b, p", constraints=[f"p <= {cache_len}"]), jnp.int32)
  (b,) = jax.export.symbolic_shape("b")
  cache = jax.eval_shape(lambda: gpt.init_cache(cfg, 1, cache_len))
  cache = jax.tree.map(lambda c: jax.ShapeDtypeStruct(_with_batch(c.shape, cfg, b), c.dtype),
                       cache)
  return {"forward": (forward, (tokens,)), "prefill": (prefill, (prompt,)),
          "decode": (decode, (jax.ShapeDtypeStruct((b,), jnp.int32),
                              jax.ShapeDtypeStruct((), jnp.int32), cache))}


def _with_batch(shape, cfg, b):
  """A cache shape with its batch axis (after the layer axis when scanned) made symbolic."""
  axis = 1 if cfg.scan_layers else 0
  return shape[:axis] + (b,) + shape[axis + 1:]


def encoder_functions(model):
  def forward(params, tokens_BxL, valid_BxL):
    out = model.apply({"params": params}, tokens_BxL, valid_BxL)
    return out[0] if isinstance(out, tuple) else out  # the masked-LM logits, not NSP's

  b, length = jax.export.symbolic_shape("b, l")
  return {"forward": (forward, (jax.ShapeDtypeStruct((b, length), jnp.int32),
                                jax.ShapeDtypeStruct((b, length), jnp.bool_)))}


def export(run: LoadedRun, out: str, platforms=PLATFORMS, cache_len: int = 0) -> dict:
  """Writes the artifacts, params.npz, the tokenizer and manifest.json; returns the manifest."""
  cfg = dataclasses.replace(run.task.model_cfg, attention="xla")
  model = run.model.clone(cfg=cfg)
  if run.config.task == "lm":
    cache_len = cache_len or cfg.max_len
    if not 0 < cache_len <= cfg.max_len:
      raise ConfigError(f"cache_len={cache_len} must lie in 1..model.max_len={cfg.max_len}")
    functions = decoder_functions(model, cache_len)
  elif run.config.task in ENCODER_TASKS:
    functions = encoder_functions(model)
  else:
    raise ConfigError(f"task={run.config.task!r}: bigjax.export writes language models (lm) and "
                      f"encoders ({', '.join(ENCODER_TASKS)})")
  bad = [p for p in platforms if p not in PLATFORMS]
  if bad or not platforms:
    raise ConfigError(f"platforms={','.join(platforms)}; use some of {','.join(PLATFORMS)}")
  os.makedirs(out, exist_ok=True)
  flat = _flat(run.params)
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _nested(flat))
  manifest = {"jax_version": jax.__version__, "platforms": list(platforms), "functions": {},
              "params": "params.npz", "config": run.config.to_dict(),
              "tokenizer": _write_tokenizer(run, out)}
  for name, (function, inputs) in functions.items():
    exported = jax.export.export(jax.jit(function), platforms=platforms)(params, *inputs)
    with open(os.path.join(out, f"{name}.jax"), "wb") as f:
      f.write(exported.serialize())
    manifest["calling_convention_version"] = exported.calling_convention_version
    manifest["functions"][name] = {
        "file": f"{name}.jax",
        "inputs": [str(a) for a in exported.in_avals[len(jax.tree.leaves(params)):]],
        "outputs": [str(a) for a in exported.out_avals]}
  np.savez(os.path.join(out, "params.npz"), **flat)
  with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2)
  return manifest


def _write_tokenizer(run: LoadedRun, out: str) -> dict:
  """The manifest's tokenizer entry; a Hugging Face tokenizer's files go to DIR/tokenizer."""
  if isinstance(run.tokenizer, HuggingFaceTokenizer):
    shutil.copytree(run.tokenizer.directory, os.path.join(out, "tokenizer"), dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.safetensors*", "*.bin"))
    return {"type": "hf", "directory": "tokenizer", "ids": run.tokenizer.ids}
  return {"type": run.config.data.tokenizer, "eos_id": int(run.tokenizer.eos_id)}


def main(argv) -> None:
  from absl import flags
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax narrates every read and write at INFO
  del argv
  f = flags.FLAGS
  try:
    if not (f.workdir and f.out):
      raise ConfigError("usage: python -m bigjax.export --workdir=W --out=DIR")
    run = load(f.workdir, devices=jax.devices()[:1])
    manifest = export(run, f.out, tuple(p for p in f.platforms.split(",") if p), f.cache_len)
    print(f"exported {', '.join(manifest['functions'])} for {', '.join(manifest['platforms'])} "
          f"to {f.out}")
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  from absl import app, flags

  from bigjax import cli

  flags.DEFINE_string("workdir", "", "the bigjax run or Hugging Face model directory to export")
  flags.DEFINE_string("out", "", "directory for the artifacts, params.npz and manifest.json")
  flags.DEFINE_string("platforms", ",".join(PLATFORMS), "comma-separated: cpu, cuda, tpu")
  flags.DEFINE_integer("cache_len", 0, "KV-cache slots of prefill/decode (0 = model.max_len)")
  app.run(main, flags_parser=cli.parse_flags)
