"""W&B sweep files, read as W&B reads them, turned into the config overrides of each run.

A sweep file is W&B's own YAML (docs.wandb.ai/guides/sweeps/define-sweep-configuration) with the
parameters named by config path:

    method: grid                        # grid | random | bayes
    metric: {name: eval/loss, goal: minimize}
    parameters:
      optim.lr: {values: [0.001, 0.003]}
      model.d_model: {value: 64}
    command: [${env}, ${interpreter}, -m, bigjax.train, --config=configs/gpt_tiny.py,
              --workdir=runs/wandb_sweep, tracking.wandb=online, ${args_no_hyphens}]

The same file runs two ways:
- `wandb sweep FILE`, then `wandb agent SWEEP_ID` (every method, bayes included): the agent runs
  `command` with the run's values as bare `optim.lr=0.001` arguments (`${args_no_hyphens}`), which
  bigjax.train reads as config overrides (`overrides_as_flags`), and each agent run trains in
  WORKDIR/<W&B run id> (`agent_workdir`).
- `python scripts/sweep.py --sweep=FILE ...` (grid and random): parallel local runs, no server.

YAML note: PyYAML, like W&B, reads `1e-3` as a string; it reaches the config as the same text either
way, but write `1.0e-3` if you want a number in the file.
"""

import dataclasses
import itertools
import math
import os
import re

import numpy as np
import yaml


class SweepError(ValueError):
  """A sweep file that cannot run; the message says what to change."""


METHODS = ("grid", "random", "bayes")
GOALS = ("minimize", "maximize")


@dataclasses.dataclass(frozen=True)
class Sweep:
  method: str
  metric: str  # the name the runs log it under, e.g. "eval/loss"
  goal: str
  parameters: dict  # config path -> W&B parameter spec ({"values": [...]}, {"min": ...}, ...)
  run_cap: int | None  # W&B's limit on the number of runs, if the file sets one


DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform",
                 "log_uniform_values", "q_log_uniform_values", "normal", "log_normal")


def load(path: str) -> Sweep:
  try:
    with open(path) as f:
      spec = yaml.safe_load(f)
  except OSError as e:
    raise SweepError(f"{path}: {e.strerror}") from None
  except yaml.YAMLError as e:
    where = getattr(e, "problem_mark", None)
    line = f" (line {where.line + 1})" if where else ""
    raise SweepError(f"{path} is not valid YAML{line}: {getattr(e, 'problem', None) or e}") from None
  if not isinstance(spec, dict):
    raise SweepError(f"{path} is not a W&B sweep file (a YAML mapping with method, metric, "
                     f"parameters)")
  method = spec.get("method")
  if method not in METHODS:
    raise SweepError(f"{path}: method {method!r} is not one of {', '.join(METHODS)}")
  metric = spec.get("metric") or {}
  if not isinstance(metric, dict) or "name" not in metric:
    raise SweepError(f"{path}: set `metric: {{name: eval/loss, goal: minimize}}`")
  goal = metric.get("goal", "minimize")
  if goal not in GOALS:
    raise SweepError(f"{path}: metric goal {goal!r} is not one of {', '.join(GOALS)}")
  parameters = spec.get("parameters")
  if not isinstance(parameters, dict) or not parameters:
    raise SweepError(f"{path}: set `parameters:`, e.g. `optim.lr: {{values: [0.001, 0.003]}}`")
  for name, p in parameters.items():
    if not isinstance(p, dict):
      raise SweepError(f"{path}: parameter {name} must be a mapping such as {{values: [...]}}, "
                       f"{{value: ...}} or {{distribution: ..., min: ..., max: ...}}")
    if "parameters" in p:
      raise SweepError(f"{path}: parameter {name} nests `parameters`; name each one by its config "
                       f"path instead, e.g. {name}.lr")
    check_parameter(f"{path}: parameter {name}", p)
  run_cap = spec.get("run_cap")
  if run_cap is not None and not (isinstance(run_cap, int) and run_cap >= 1):
    raise SweepError(f"{path}: run_cap={run_cap!r}; use a positive number of runs")
  return Sweep(method=method, metric=metric["name"], goal=goal, parameters=parameters,
               run_cap=run_cap)


def check_parameter(where: str, p: dict) -> None:
  """A parameter spec W&B would accept, and this runner can draw from: one line if not."""
  kind = p.get("distribution")
  if kind is not None and kind not in DISTRIBUTIONS:
    raise SweepError(f"{where}: distribution {kind!r} is not supported; use one of "
                     f"{', '.join(DISTRIBUTIONS)}")
  if "values" in p:
    values = p["values"]
    if not isinstance(values, list) or not values:
      raise SweepError(f"{where}: `values` must be a non-empty list, e.g. [0.001, 0.003]")
    probabilities = p.get("probabilities")
    if probabilities is not None and (
        not isinstance(probabilities, list) or len(probabilities) != len(values)
        or not math.isclose(sum(probabilities), 1.0, abs_tol=1e-6)):
      raise SweepError(f"{where}: `probabilities` must be one per value, adding up to 1")
  elif "value" not in p and ("min" in p or "max" in p):
    low, high = p.get("min"), p.get("max")
    if not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in (low, high)):
      raise SweepError(f"{where}: `min` and `max` must both be numbers")
    if low > high:
      raise SweepError(f"{where}: min={low} is above max={high}")
    if kind in ("log_uniform_values", "q_log_uniform_values") and low <= 0:
      raise SweepError(f"{where}: {kind} draws between min and max on a log scale; min={low} "
                       f"must be above 0")
  elif "value" not in p and kind not in ("normal", "log_normal"):
    raise SweepError(f"{where}: set `values: [...]`, `value: ...` or `min:` and `max:`")


def grid(parameters: dict) -> list[dict]:
  """Every combination, the last parameter varying fastest (as W&B's grid orders them)."""
  choices = []
  for name, p in parameters.items():
    if "values" in p:
      choices.append(p["values"])
    elif "value" in p:
      choices.append([p["value"]])
    else:
      raise SweepError(f"grid parameter {name} needs `values` or `value`; a distribution needs "
                       f"method: random or bayes")
  return [dict(zip(parameters, combo)) for combo in itertools.product(*choices)]


def random(parameters: dict, count: int, seed: int) -> list[dict]:
  """`count` draws. The same seed gives the same runs, and a larger count extends the list."""
  rng = np.random.default_rng(seed)
  return [{name: _sample(name, p, rng) for name, p in parameters.items()} for _ in range(count)]


def _sample(name: str, p: dict, rng: np.random.Generator):
  """One draw from a W&B parameter spec; W&B's rules pick the distribution when none is named."""
  kind = p.get("distribution")
  if kind is None:
    if "value" in p:
      kind = "constant"
    elif "values" in p:
      kind = "categorical"
    elif isinstance(p.get("min"), int) and isinstance(p.get("max"), int):
      kind = "int_uniform"
    else:
      kind = "uniform"
  try:
    if kind == "constant":
      return p["value"]
    if kind == "categorical":
      return p["values"][rng.choice(len(p["values"]), p=p.get("probabilities"))]
    if kind == "normal":
      return float(rng.normal(float(p.get("mu", 0.0)), float(p.get("sigma", 1.0))))
    if kind == "log_normal":
      return float(math.exp(rng.normal(float(p.get("mu", 0.0)), float(p.get("sigma", 1.0)))))
    low, high = float(p["min"]), float(p["max"])
    if kind == "int_uniform":
      return int(rng.integers(int(low), int(high), endpoint=True))
    if kind in ("uniform", "q_uniform"):
      x = rng.uniform(low, high)
    elif kind == "log_uniform":  # min and max are natural logs, as in W&B
      x = math.exp(rng.uniform(low, high))
    elif kind in ("log_uniform_values", "q_log_uniform_values"):
      x = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
      raise SweepError(f"parameter {name}: distribution {kind!r} is not supported; use one of "
                       f"{', '.join(DISTRIBUTIONS)}")
  except KeyError as missing:
    raise SweepError(f"parameter {name}: distribution {kind} needs {missing.args[0]}") from None
  if kind.startswith("q_"):
    q = float(p.get("q", 1.0))
    x = round(x / q) * q
  return float(x)


def run_name(overrides: dict) -> str:
  """The directory name of a run: its overrides, "optim.lr=0.001,model.d_model=64"."""
  return ",".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                  for k, v in overrides.items()).replace("/", "_")


# A bare `optim.lr=0.001`; a path such as `runs/a=b` (with a slash) is not one.
_OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=.*", re.DOTALL)


def overrides_as_flags(argv: list[str]) -> list[str]:
  """`optim.lr=3e-4` -> `--config.optim.lr=3e-4`: bare PATH=VALUE arguments override the config.

  It is the form in which `wandb agent` passes a run's values (`${args_no_hyphens}`), and a short
  one to type: `python -m bigjax.train --config=configs/gpt_tiny.py optim.lr=3e-4 steps=100`.
  """
  return argv[:1] + [f"--config.{a}" if _OVERRIDE.fullmatch(a) else a for a in argv[1:]]


def agent_workdir(workdir: str) -> str:
  """WORKDIR/<W&B run id> under `wandb agent`, else WORKDIR.

  A sweep's command names one workdir for all its runs; without this, each run would resume the
  previous one's checkpoint. The agent reruns a preempted run with the same id, so it resumes.
  """
  if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
    return os.path.join(workdir, os.environ["WANDB_RUN_ID"])
  return workdir
