"""Hugging Face interchange, measured: logit parity per architecture and GPT-2 small's import and
export times.

    python scripts/bench_hf.py [--workdir=/tmp/bench_hf] [--skip_timing]

Parity: random models of each architecture (2 layers, width 64, weights at std 0.1, 64 positions,
float32) built with transformers, imported with bigjax.load, exported with `python -m bigjax.hf
export` and reloaded by transformers; prints the largest |logit difference| both ways.
Timing: a random GPT-2 small (124M parameters, GPT2Config()'s shape) saved by transformers, then
`python -m bigjax.hf import` and `export` as subprocesses, wall-clock including interpreter and
JAX start-up. Needs requirements-bench.txt (torch, transformers).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

import bigjax  # noqa: E402
from bigjax.hf.__main__ import export_model  # noqa: E402
from bigjax.hf.tokenizer import write_byte_tokenizer  # noqa: E402

SMALL = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
             initializer_range=0.1)


def models():
  """name -> (transformers model, its Auto class)."""
  wordpiece_vocab = 256  # the byte tokenizer's size: every test id is a token
  return {
      "GPT2LMHeadModel": (transformers.GPT2LMHeadModel(transformers.GPT2Config(
          n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=128,
          initializer_range=0.1, eos_token_id=0, bos_token_id=0)),
          transformers.AutoModelForCausalLM),
      "LlamaForCausalLM (GQA 4/2, untied, theta 5e5)": (transformers.LlamaForCausalLM(
          transformers.LlamaConfig(**SMALL, num_key_value_heads=2, vocab_size=256,
                                   max_position_embeddings=128, rope_theta=5e5,
                                   tie_word_embeddings=False, eos_token_id=0)),
          transformers.AutoModelForCausalLM),
      "BertForMaskedLM": (transformers.BertForMaskedLM(transformers.BertConfig(
          **SMALL, vocab_size=wordpiece_vocab, max_position_embeddings=128)),
          transformers.AutoModelForMaskedLM),
      "BertForSequenceClassification": (transformers.BertForSequenceClassification(
          transformers.BertConfig(**SMALL, vocab_size=wordpiece_vocab,
                                  max_position_embeddings=128, num_labels=2)),
          transformers.AutoModelForSequenceClassification),
  }


def _logits(run, tokens_BxL):
  if run.config.task == "lm":
    return np.asarray(run.model.apply({"params": run.params}, tokens_BxL)[0])
  out = run.model.apply({"params": run.params}, tokens_BxL, tokens_BxL >= 0)
  return np.asarray(out[0] if run.config.task == "mlm" else out)


def _save_with_tokenizer(model, directory: str, bert: bool) -> None:
  model.eval().save_pretrained(directory)
  write_byte_tokenizer(directory)
  if bert:  # BERT's tasks need [PAD] [CLS] [SEP] [MASK]: name four byte ids as them
    with open(os.path.join(directory, "tokenizer_config.json")) as f:
      settings = json.load(f)
    settings.update(pad_token="Ā", cls_token="ā", sep_token="Ă", mask_token="ă")
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
      json.dump(settings, f)


def parity(root: str) -> None:
  torch.manual_seed(0)
  tokens_BxL = np.random.default_rng(0).integers(4, 256, (2, 64)).astype(np.int32)
  print("| architecture | max abs logit | import: bigjax - transformers | export: transformers "
        "(from bigjax's files) - bigjax |\n| --- | --- | --- | --- |")
  for name, (model, auto_class) in models().items():
    directory = os.path.join(root, name.split()[0])
    _save_with_tokenizer(model, directory, bert=name.startswith("Bert"))
    run = bigjax.load(directory, devices=jax.devices()[:1])
    ours = _logits(run, tokens_BxL)
    with torch.no_grad():
      theirs = model(torch.tensor(tokens_BxL, dtype=torch.long)).logits.numpy()
    export_model(directory, directory + "-exported")
    again = auto_class.from_pretrained(directory + "-exported").eval()
    with torch.no_grad():
      back = again(torch.tensor(tokens_BxL, dtype=torch.long)).logits.numpy()
    print(f"| {name} | {np.abs(theirs).max():.2f} | {np.abs(ours - theirs).max():.2e} | "
          f"{np.abs(back - ours).max():.2e} |")


def timing(root: str) -> None:
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config())
  hf_dir = os.path.join(root, "gpt2-small")
  model.save_pretrained(hf_dir)
  write_byte_tokenizer(hf_dir)  # config.json's eos_token_id=50256 is the end of document
  params = sum(p.numel() for p in model.parameters())
  env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
  commands = {
      "import": ["import", f"--hf={hf_dir}", f"--workdir={root}/gpt2-small-run"],
      "export": ["export", f"--workdir={root}/gpt2-small-run", f"--out={root}/gpt2-small-out"]}
  for name, args in commands.items():
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bigjax.hf", *args], check=True, env=env)
    print(f"GPT-2 small ({params / 1e6:.0f}M parameters, float32) {name}: "
          f"{time.perf_counter() - start:.1f} s")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/bench_hf")
  parser.add_argument("--skip_timing", action="store_true")
  args = parser.parse_args()
  shutil.rmtree(args.workdir, ignore_errors=True)
  os.makedirs(args.workdir)
  parity(args.workdir)
  if not args.skip_timing:
    timing(args.workdir)


if __name__ == "__main__":
  main()
