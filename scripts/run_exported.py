"""Runs a `python -m bigjax.export` directory with jax and numpy alone (no bigjax, no Flax).

    python scripts/run_exported.py DIR --tokens=ids.npy --logits=out.npy   # forward: B x L ids
    python scripts/run_exported.py DIR --prompt=72,101,108 --new_tokens=16  # greedy decoding

The calling convention is manifest.json's: every function takes the parameter tree first (the
nested dict that params.npz's "/"-joined names spell), then its own inputs.
"""

import argparse
import json
import os

import jax
import numpy as np


def load_params(directory: str, manifest: dict) -> dict:
  flat = np.load(os.path.join(directory, manifest["params"]))
  tree = {}
  for name in flat.files:
    *parents, leaf = name.split("/")
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = flat[name]
  return tree


def load_function(directory: str, manifest: dict, name: str):
  with open(os.path.join(directory, manifest["functions"][name]["file"]), "rb") as f:
    return jax.export.deserialize(bytearray(f.read()))


def greedy(directory: str, manifest: dict, params: dict, prompt_BxP: np.ndarray,
           new_tokens: int) -> np.ndarray:
  """prompt_BxP followed by `new_tokens` argmax tokens: one prefill, then one decode per token."""
  prefill = load_function(directory, manifest, "prefill")
  decode = load_function(directory, manifest, "decode")
  logits_BxV, cache = prefill.call(params, prompt_BxP)
  tokens = [np.argmax(logits_BxV, -1).astype(np.int32)]
  for i in range(new_tokens - 1):
    index = np.int32(prompt_BxP.shape[1] + i)
    logits_BxV, cache = decode.call(params, tokens[-1], index, cache)
    tokens.append(np.argmax(logits_BxV, -1).astype(np.int32))
  return np.concatenate([prompt_BxP, np.stack(tokens, axis=1)], axis=1)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("directory")
  parser.add_argument("--tokens", help=".npy of B x L token ids for the forward function")
  parser.add_argument("--logits", help="where the forward logits go (.npy)")
  parser.add_argument("--prompt", help="comma-separated token ids to continue greedily")
  parser.add_argument("--new_tokens", type=int, default=16)
  args = parser.parse_args()
  with open(os.path.join(args.directory, "manifest.json"), encoding="utf-8") as f:
    manifest = json.load(f)
  params = load_params(args.directory, manifest)
  if args.tokens:
    tokens_BxL = np.load(args.tokens).astype(np.int32)
    inputs = (tokens_BxL,) if "prefill" in manifest["functions"] else (tokens_BxL, tokens_BxL >= 0)
    logits = load_function(args.directory, manifest, "forward").call(params, *inputs)
    np.save(args.logits, np.asarray(logits))
  if args.prompt:
    prompt_1xP = np.array([[int(t) for t in args.prompt.split(",")]], np.int32)
    print(",".join(map(str, greedy(args.directory, manifest, params, prompt_1xP,
                                   args.new_tokens)[0])))


if __name__ == "__main__":
  main()
