"""bigjax against Hugging Face transformers' GPT-2 in PyTorch (eager), same shape, one process.

    pip install -r requirements-bench.txt
    python scripts/bench_pytorch.py --config=configs/gpt_tiny.py --config.seq_len=256

Builds GPT2LMHeadModel with the config's shape (layers, heads, width, MLP width, sequence length,
vocabulary, tied embeddings, no dropout, float32) and trains both on the same batch with AdamW at
the config's betas, weight decay (on matrices only, in both) and gradient clipping. Timing windows
of `--steps` steps alternate between the two, so a busy host slows both alike; each reports its
fastest window and the median. Prints one JSON line per framework, then the speed ratio.
Time to the first step counts from building the model to the first finished step, imports
excluded, in both.
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402

import bench  # noqa: E402  (its flags: --config, --steps, --rounds, --warmup)


class HuggingFaceGpt2Bench:
  """GPT2LMHeadModel and torch.optim.AdamW, eager, trained on bigjax's batch."""

  def __init__(self, model_cfg, optim, seed, batch):
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
    self.inputs = torch.tensor(batch["inputs"], dtype=torch.long)
    self.targets = torch.tensor(batch["targets"], dtype=torch.long)
    self.seconds_per_step(1)
    self.info = {
        "framework": f"transformers {transformers.__version__} GPT2LMHeadModel, torch "
                     f"{torch.__version__} eager, attention {self.model.config._attn_implementation}",
        "params": sum(p.numel() for p in self.model.parameters()),
        "threads": torch.get_num_threads(),
        "first_step_seconds": round(time.perf_counter() - start, 2),
    }

  def seconds_per_step(self, n: int) -> float:
    import torch
    start = time.perf_counter()
    for _ in range(n):
      logits = self.model(input_ids=self.inputs).logits
      loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), self.targets.flatten())
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
  batch = next(ours.batches)  # --data=fixed: the one batch every step repeats
  theirs = HuggingFaceGpt2Bench(cfg, f.config.optim, f.config.seed,
                                jax.tree.map(np.asarray, batch))
  if f.warmup:
    ours.seconds_per_step(f.warmup)
    theirs.seconds_per_step(f.warmup)
  times = {"bigjax": [], "pytorch": []}
  for _ in range(f.rounds):
    times["bigjax"].append(ours.seconds_per_step(f.steps))
    times["pytorch"].append(theirs.seconds_per_step(f.steps))

  tokens = ours.info["tokens_per_step"]
  best = {name: min(t) for name, t in times.items()}
  print(json.dumps({"framework": f"bigjax (jax {jax.__version__})", **ours.report(best["bigjax"]),
                    "median_step_seconds": round(statistics.median(times["bigjax"]), 5)}))
  print(json.dumps({**theirs.info, "step_seconds": round(best["pytorch"], 5),
                    "tokens_per_sec": round(tokens / best["pytorch"], 1),
                    "median_step_seconds": round(statistics.median(times["pytorch"]), 5)}))
  print(f"bigjax / pytorch tokens/s: best {best['pytorch'] / best['bigjax']:.2f}x, median "
        f"{statistics.median(times['pytorch']) / statistics.median(times['bigjax']):.2f}x")


if __name__ == "__main__":
  from bigjax.cli import parse_flags
  app.run(main, flags_parser=parse_flags)
