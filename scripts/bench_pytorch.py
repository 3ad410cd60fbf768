"""bigjax against Hugging Face transformers' GPT-2 in PyTorch (eager), same shape, one process.

    pip install -r requirements-bench.txt
    python scripts/bench_pytorch.py --config=configs/gpt_tiny.py --config.seq_len=256 [--bf16]

Builds GPT2LMHeadModel with the config's shape (layers, heads, width, MLP width, sequence length,
vocabulary, tied embeddings, no dropout, float32) and trains both on the same batch with AdamW at
the config's betas, weight decay (on matrices only, in both) and gradient clipping. Timing windows
of `--steps` steps alternate between the two, so a busy host slows both alike; each reports its
fastest window and the median. Prints one JSON line per framework, then the speed ratio.
Time to the first step counts from building the model to the first finished step, imports
excluded, in both; only the first one built in the process (bigjax float32) is a cold start.

`--bf16` adds both in bfloat16 to the same alternation: bigjax with `dtype=bfloat16` (the
precision policy of bigjax/models/precision.py) and PyTorch under CPU autocast to bfloat16 (its
mixed-precision recipe: float32 weights, bf16 matmuls), and prints every ratio of the four.
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402

import bench  # noqa: E402  (its flags: --config, --steps, --rounds, --warmup)

flags.DEFINE_bool("bf16", False, "also time both in bfloat16: bigjax with dtype=bfloat16, "
                  "PyTorch under CPU autocast")


class HuggingFaceGpt2Bench:
  """GPT2LMHeadModel and torch.optim.AdamW, eager, trained on bigjax's batch; with `bf16`, the
  forward pass and loss under `torch.autocast("cpu", torch.bfloat16)`."""

  def __init__(self, model_cfg, optim, seed, batch, bf16: bool = False):
    import torch
    import transformers

    start = time.perf_counter()
    torch.manual_seed(seed)
    gpt2 = transformers.GPT2Config(
        vocab_size=model_cfg.vocab_size, n_positions=model_cfg.max_len,
        n_embd=model_cfg.d_model, n_layer=model_cfg.num_layers, n_head=model_cfg.num_heads,
        n_inner=model_cfg.d_ff, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, layer_norm_epsilon=1e-5, tie_word_embeddings=model_cfg.tie_embeddings)
    self.model = transformers.GPT2LMHeadModel(gpt2)
    matrices = [p for p in self.model.parameters() if p.ndim == 2]
    others = [p for p in self.model.parameters() if p.ndim != 2]
    self.optimizer = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": optim.weight_decay},
         {"params": others, "weight_decay": 0.0}], lr=optim.lr, betas=(optim.b1, optim.b2))
    self.clip_norm = optim.clip_norm
    self.bf16 = bf16
    self.inputs = torch.tensor(batch["inputs"], dtype=torch.long)
    self.targets = torch.tensor(batch["targets"], dtype=torch.long)
    self.seconds_per_step(1)
    self.info = {
        "framework": f"transformers {transformers.__version__} GPT2LMHeadModel, torch "
                     f"{torch.__version__} eager, attention {self.model.config._attn_implementation}",
        "dtype": "bfloat16 autocast" if bf16 else "float32",
        "params": sum(p.numel() for p in self.model.parameters()),
        "threads": torch.get_num_threads(),
        "first_step_seconds": round(time.perf_counter() - start, 2),
    }

  def seconds_per_step(self, n: int) -> float:
    import torch
    start = time.perf_counter()
    for _ in range(n):
      with torch.autocast("cpu", torch.bfloat16, enabled=self.bf16):
        logits = self.model(input_ids=self.inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(),
                                                 self.targets.flatten())
      loss.backward()
      if self.clip_norm:
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
      self.optimizer.step()
      self.optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / n


def main(argv):
  del argv
  import jax
  import numpy as np

  f = flags.FLAGS
  ours = bench.TrainStepBench(f.config)
  cfg = ours.task.model_cfg
  if (cfg.positions, cfg.norm, cfg.mlp, cfg.num_kv_heads, cfg.dropout) != (
      "learned", "layernorm", "gelu", cfg.num_heads, 0.0):
    raise SystemExit("error: GPT-2 has learned positions, LayerNorm, a GELU MLP, one key/value "
                     "head per query head and (here) no dropout; use a GPT-2-style config")
  batch = jax.tree.map(np.asarray, next(ours.batches))  # --data=fixed: every step repeats it
  benches = {"bigjax": ours,
             "pytorch": HuggingFaceGpt2Bench(cfg, f.config.optim, f.config.seed, batch)}
  if f.bf16:
    config = f.config.copy_and_resolve_references()
    config.dtype = "bfloat16"
    benches["bigjax bf16"] = bench.TrainStepBench(config)
    benches["pytorch bf16"] = HuggingFaceGpt2Bench(cfg, f.config.optim, f.config.seed, batch,
                                                   bf16=True)
  if f.warmup:
    for b in benches.values():
      b.seconds_per_step(f.warmup)
  times = {name: [] for name in benches}
  for _ in range(f.rounds):
    for name, b in benches.items():
      times[name].append(b.seconds_per_step(f.steps))

  tokens = ours.info["tokens_per_step"]
  for name, b in benches.items():
    best, median = min(times[name]), statistics.median(times[name])
    if name.startswith("bigjax"):
      line = {"framework": f"bigjax (jax {jax.__version__})", **b.report(best)}
    else:
      line = {**b.info, "step_seconds": round(best, 5), "tokens_per_sec": round(tokens / best, 1)}
    print(json.dumps({**line, "median_step_seconds": round(median, 5)}))
  pairs = [("bigjax", "pytorch"), ("bigjax bf16", "pytorch bf16"), ("bigjax bf16", "bigjax"),
           ("pytorch bf16", "pytorch")]
  for a, b in pairs:
    if a in times and b in times:
      print(f"{a} / {b} tokens/s: best {min(times[b]) / min(times[a]):.2f}x, median "
            f"{statistics.median(times[b]) / statistics.median(times[a]):.2f}x")


if __name__ == "__main__":
  from bigjax.cli import parse_flags
  app.run(main, flags_parser=parse_flags)
