"""Hugging Face models in and out of bigjax.

    python -m bigjax.hf import --hf=DIR --workdir=W [--scan_layers=false]
    python -m bigjax.hf export --workdir=W --out=DIR [--max_shard_size=5GB] [--dtype=bfloat16]

import: DIR (config.json, model.safetensors or shards with their index, tokenizer.json) becomes
the bigjax run W: its config, a step-0 checkpoint of the parameters and W/tokenizer. Every bigjax
command takes W: `bigjax.load(W)`, `--config.init_from=W` to fine-tune into a new workdir,
generation, serving, `python -m bigjax.export`.

export: the run in W (imported, fine-tuned or trained here) becomes a directory that
transformers' `from_pretrained` loads with every weight used: config.json, safetensors (sharded
above --max_shard_size, with model.safetensors.index.json) and the tokenizer files; a byte-level
run gets a tokenizer.json that encodes text to its byte ids.
"""

import json
import os
import sys

import jax

from bigjax import checkpoint
from bigjax.load import load
from bigjax.config_checks import ConfigError
from bigjax.data.tokenizers import ByteTokenizer
from bigjax.hf import convert, files, tokenizer

USAGE = "usage: python -m bigjax.hf import --hf=DIR --workdir=W | export --workdir=W --out=DIR"


def import_model(hf_dir: str, workdir: str, scan_layers: bool = True):
  """Writes the Hugging Face model in `hf_dir` as the bigjax run `workdir`; returns the model
  as `bigjax.load` gives it."""
  if not files.is_model_directory(hf_dir):
    raise ConfigError(f"--hf={hf_dir} has no config.json; pass a Hugging Face model directory")
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise ConfigError(f"--workdir={workdir} already holds a run; pick a new directory")
  run = load(hf_dir, devices=jax.devices()[:1], scan_layers=scan_layers)
  tokenizer_dir = os.path.abspath(os.path.join(workdir, "tokenizer"))
  tokenizer.copy_files(hf_dir, tokenizer_dir, extra=("config.json",))  # config.json: its ids
  config = run.config.to_dict()
  config["data"]["tokenizer_path"] = tokenizer_dir
  write_run(workdir, config, run.params)
  return run


def write_run(workdir: str, config: dict, params) -> None:
  """A bigjax run directory holding `params` as its step-0 checkpoint: everything `bigjax.load`
  and `init_from` read (no optimizer state, so it seeds new runs rather than resuming)."""
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=1, async_save=False)
  try:
    ckpt.save(0, {"params": params}, data_state={}, config=config)
  finally:
    ckpt.close()


def export_model(workdir: str, out: str, max_shard_size: str = "5GB",
                 dtype: str = "float32") -> list[str]:
  """Writes the bigjax run (or Hugging Face directory) `workdir` as a Hugging Face model in
  `out`; returns the weight files written."""
  if files.is_model_directory(out) or os.path.exists(os.path.join(out, files.SINGLE)):
    raise ConfigError(f"--out={out} already holds a model; pass a new or empty directory")
  shard_bytes = files.parse_size(max_shard_size)
  if dtype not in files.DTYPES:
    raise ConfigError(f"--dtype={dtype}; use one of {', '.join(files.DTYPES)}")
  run = load(workdir, devices=jax.devices()[:1])
  module = convert.export_architecture(run.config)
  if isinstance(run.tokenizer, tokenizer.HuggingFaceTokenizer):
    special_ids = run.tokenizer.ids
    write_tokenizer = lambda: tokenizer.copy_files(run.tokenizer.directory, out)
  elif isinstance(run.tokenizer, ByteTokenizer) and run.config.task == "lm":
    special_ids = {"bos": run.tokenizer.eos_id, "eos": run.tokenizer.eos_id}
    write_tokenizer = lambda: tokenizer.write_byte_tokenizer(out)
  else:
    raise ConfigError(f"data.tokenizer={run.config.data.tokenizer!r} ({run.config.task}) has no "
                      f"Hugging Face tokenizer file; export byte-level LMs or runs with a "
                      f"Hugging Face tokenizer")
  hf_config = {**module.to_hf(run.task, special_ids), "dtype": dtype}
  written = files.write_safetensors(out, convert.hf_tensors(run.config, run.params),
                                    shard_bytes, dtype)
  write_tokenizer()
  with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf_config, f, indent=2)
  return written


def main(argv) -> None:
  from absl import flags
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax narrates every read and write at INFO
  command = argv[1:]
  f = flags.FLAGS
  try:
    if command == ["import"] and f.hf and f.workdir:
      import_model(f.hf, f.workdir, f.scan_layers)
      print(f"imported {f.hf} as the bigjax run {f.workdir}")
    elif command == ["export"] and f.workdir and f.out:
      written = export_model(f.workdir, f.out, f.max_shard_size, f.dtype)
      print(f"exported {f.workdir} to {f.out} ({', '.join(written)})")
    else:
      raise ConfigError(USAGE)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  from absl import app, flags

  from bigjax import cli

  flags.DEFINE_string("hf", "", "import: the Hugging Face model directory")
  flags.DEFINE_string("workdir", "", "the bigjax run: written by import, read by export")
  flags.DEFINE_string("out", "", "export: the Hugging Face directory to write")
  flags.DEFINE_string("max_shard_size", "5GB", "export: largest safetensors file (5GB, 500MB)")
  flags.DEFINE_string("dtype", "float32", "export: float32, bfloat16 or float16")
  flags.DEFINE_bool("scan_layers", True, "import: stack the layers for nn.scan (else one each)")
  app.run(main, flags_parser=cli.parse_flags)
