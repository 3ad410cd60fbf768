"""What a compressed model is worth: eval loss, weight bits and single-stream decoding speed."""

import time

import jax
import ml_collections

from bigjax import build, generate


def eval_loss(config: ml_collections.ConfigDict, params, devices=None) -> float:
  """The run's own evaluation (its eval batches, `eval_steps` of them) of `params`, laid out as
  `bigjax.load` lays them out (replicated over `devices`, default all)."""
  from bigjax import train  # train imports build, which imports this package's parent

  config = ml_collections.ConfigDict(config.to_dict())
  config.mesh.update({"data": -1, "fsdp": 1, "tensor": 1})
  config.init_from = ""  # the parameters are given
  config.compilation_cache_dir = ""
  config.lock()
  run = build.build(config, devices)
  # jax.jit rather than the run's ahead-of-time compiled eval step: XLA:CPU's compiled programs
  # reject int4 arguments (jax 0.10.2), and jit compiles for the arguments it is given.
  eval_step = jax.jit(run.task.eval_sums, in_shardings=(run.shardings.params, run.batch_sharding))
  with run.activate():
    return train.evaluate(run, eval_step, params).scalars["eval/loss"]


def decode_tokens_per_second(model, params, tokenizer, prompt: str = "def ",
                             new_tokens: int = 128, rounds: int = 3) -> float:
  """Greedy single-stream decoding (batch 1, KV cache), best of `rounds` after a warm-up."""
  # generate returns host arrays: each call has finished when it returns.
  decode = lambda: generate.generate(model, params, [tokenizer.encode(prompt)], new_tokens,
                                     temperature=0.0)
  decode()  # compiles
  best = float("inf")
  for _ in range(rounds):
    start = time.perf_counter()
    decode()
    best = min(best, time.perf_counter() - start)
  return new_tokens / best
