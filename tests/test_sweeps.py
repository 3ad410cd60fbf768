"""W&B sweep files -> config overrides, and the local runner (scripts/sweep.py) end to end."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from bigjax import sweeps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, text):
  path.write_text(text)
  return str(path)


def test_grid_expands_to_the_product_last_parameter_fastest(tmp_path):
  sweep = sweeps.load(write(tmp_path / "s.yaml", """
method: grid
metric: {name: eval/loss, goal: minimize}
parameters:
  optim.lr: {values: [1.0e-3, 1.0e-2]}
  model.d_model: {values: [16, 32, 64]}
  steps: {value: 4}
"""))
  runs = sweeps.grid(sweep.parameters)
  assert len(runs) == 6
  assert runs[:2] == [{"optim.lr": 1e-3, "model.d_model": 16, "steps": 4},
                      {"optim.lr": 1e-3, "model.d_model": 32, "steps": 4}]
  assert sweeps.run_name(runs[-1]) == "optim.lr=0.01,model.d_model=64,steps=4"


def test_random_draws_from_each_distribution_and_repeats_with_the_seed(tmp_path):
  sweep = sweeps.load(write(tmp_path / "s.yaml", """
method: random
metric: {name: eval/loss, goal: minimize}
parameters:
  optim.lr: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}
  optim.b2: {min: 0.9, max: 0.999}
  model.num_layers: {min: 1, max: 3}
  model.d_model: {values: [16, 32]}
  optim.clip_norm: {distribution: q_uniform, min: 0.0, max: 2.0, q: 0.5}
  seed: {value: 7}
"""))
  runs = sweeps.random(sweep.parameters, 200, seed=0)
  assert runs == sweeps.random(sweep.parameters, 200, seed=0)
  assert runs[:10] == sweeps.random(sweep.parameters, 10, seed=0)  # a larger count extends
  assert runs != sweeps.random(sweep.parameters, 200, seed=1)
  lrs = [r["optim.lr"] for r in runs]
  assert 1e-4 <= min(lrs) and max(lrs) <= 1e-2
  assert sum(lr < 1e-3 for lr in lrs) > 60  # log-uniform: half the draws below the geometric middle
  assert all(0.9 <= r["optim.b2"] <= 0.999 for r in runs)
  assert {r["model.num_layers"] for r in runs} == {1, 2, 3}  # integer min/max: int_uniform
  assert {r["model.d_model"] for r in runs} == {16, 32}
  assert {r["optim.clip_norm"] for r in runs} <= {0.0, 0.5, 1.0, 1.5, 2.0}
  assert {r["seed"] for r in runs} == {7}


@pytest.mark.parametrize("text, message", [
    ("method: hyperband", "method 'hyperband' is not one of grid, random, bayes"),
    ("method: grid\nparameters: {optim.lr: {values: [1]}}", "set `metric:"),
    ("method: grid\nmetric: {name: l}\nparameters: {optim: {parameters: {lr: {values: [1]}}}}",
     "name each one by its config path"),
])
def test_bad_sweep_files_get_one_line_errors(tmp_path, text, message):
  with pytest.raises(sweeps.SweepError, match=message.replace("(", r"\(")):
    sweeps.load(write(tmp_path / "s.yaml", text))


def test_grid_needs_values_and_unknown_distributions_are_named():
  with pytest.raises(sweeps.SweepError, match="needs `values` or `value`"):
    sweeps.grid({"optim.lr": {"min": 0.1, "max": 1.0}})
  with pytest.raises(sweeps.SweepError, match="distribution 'beta' is not supported"):
    sweeps.random({"optim.lr": {"distribution": "beta", "min": 0.1, "max": 1.0}}, 1, 0)


def test_bare_overrides_become_config_flags_and_agent_runs_get_their_own_workdir(monkeypatch):
  argv = ["train.py", "--config=c.py", "--workdir=runs/x/optim.lr=0.1", "optim.lr=0.001",
          "steps=10", "tracking.wandb=online"]
  assert sweeps.overrides_as_flags(argv) == [
      "train.py", "--config=c.py", "--workdir=runs/x/optim.lr=0.1", "--config.optim.lr=0.001",
      "--config.steps=10", "--config.tracking.wandb=online"]
  monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
  assert sweeps.agent_workdir("runs/s") == "runs/s"
  monkeypatch.setenv("WANDB_SWEEP_ID", "abc")
  monkeypatch.setenv("WANDB_RUN_ID", "r1")
  assert sweeps.agent_workdir("runs/s") == os.path.join("runs/s", "r1")


def run_sweep(sweep_file, workdir, corpus_path, *extra):
  command = [sys.executable, os.path.join(ROOT, "scripts", "sweep.py"), f"--sweep={sweep_file}",
             "--config=" + os.path.join(ROOT, "configs", "gpt_tiny.py"), f"--workdir={workdir}",
             "--workers=2", "--config.data.source=text", f"--config.data.path={corpus_path}",
             "--config.model.num_layers=1", "--config.model.num_heads=2", "--config.seq_len=32",
             "--config.model.max_len=32", "--config.batch_size=4", "--config.eval_steps=1",
             "--config.checkpoint_every=2", "--config.tracking.tensorboard=False",
             "--config.sample.prompt=", *extra]
  return subprocess.run(command, capture_output=True, text=True, cwd=ROOT)


def test_bayes_and_unknown_parameters_stop_before_any_run(tmp_path, corpus_path):
  bayes = run_sweep(os.path.join(ROOT, "configs", "sweeps", "gpt_tiny_bayes.yaml"),
                    tmp_path / "b", corpus_path)
  assert bayes.returncode != 0 and "bayes needs the W&B sweep server" in bayes.stderr
  typo = write(tmp_path / "t.yaml", "method: grid\nmetric: {name: eval/loss}\n"
               "parameters: {optim.lrr: {values: [0.1]}}")
  typo = run_sweep(typo, tmp_path / "t", corpus_path)
  assert typo.returncode != 0 and "'optim.lrr' is not a config key" in typo.stderr
  assert not os.path.exists(tmp_path / "b") and not os.path.exists(tmp_path / "t")


def test_local_grid_sweep_runs_every_point_and_resumes_without_rerunning(
    tmp_path, corpus_path, monkeypatch):
  # Each run on one CPU device (not conftest's 8), compiled at XLA's quickest level.
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
  sweep_file = write(tmp_path / "grid.yaml", """
method: grid
metric: {name: eval/loss, goal: minimize}
parameters:
  optim.lr: {values: [1.0e-3, 1.0e-2]}
  model.d_model: {values: [16, 32]}
  steps: {value: 4}
""")
  workdir = tmp_path / "sweep"
  first = run_sweep(sweep_file, workdir, corpus_path)
  assert first.returncode == 0, first.stdout + first.stderr
  names = ["optim.lr=0.001,model.d_model=16", "optim.lr=0.001,model.d_model=32",
           "optim.lr=0.01,model.d_model=16", "optim.lr=0.01,model.d_model=32"]
  table = first.stdout.split("eval/loss  optim.lr")[1].splitlines()[1:5]
  assert sorted(row.split()[-1] for row in table) == names
  losses = [float(row.split()[0]) for row in table]
  assert losses == sorted(losses)
  assert (workdir / "sweep.png").read_bytes()[:4] == b"\x89PNG"

  # Interrupt one run after its step-2 checkpoint: drop its last checkpoint and final metrics.
  cut = workdir / names[1]
  shutil.rmtree(cut / "checkpoints" / "4")
  lines = (cut / "metrics.jsonl").read_text().splitlines(keepends=True)
  (cut / "metrics.jsonl").write_text("".join(l for l in lines if '"step": 4' not in l))
  logs = {n: (workdir / n / "train.log").read_text() for n in names}

  second = run_sweep(sweep_file, workdir, corpus_path)
  assert second.returncode == 0, second.stdout + second.stderr
  assert "3 finished before, 1 to run" in second.stdout
  for n in names:
    log = (workdir / n / "train.log").read_text()
    assert (log == logs[n]) == (n != names[1])  # only the interrupted run ran again
  assert "resuming from step 2" in (cut / "train.log").read_text()
  assert len(second.stdout.split("eval/loss  optim.lr")[1].splitlines()[1:5]) == 4


def test_command_line_overrides_win_over_the_sweep_file(tmp_path, corpus_path, monkeypatch):
  """As the runner's docstring says: --config.steps=2 shortens a sweep whose file sets steps."""
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
  sweep_file = write(tmp_path / "one.yaml", """
method: grid
metric: {name: eval/loss, goal: minimize}
parameters:
  optim.lr: {values: [1.0e-3]}
  steps: {value: 50}
""")
  result = run_sweep(sweep_file, tmp_path / "sweep", corpus_path, "--config.steps=2")
  assert result.returncode == 0, result.stdout + result.stderr
  assert "--config.steps on the command line replaces the sweep's steps" in result.stdout
  rows = [json.loads(line) for line in (tmp_path / "sweep" / "optim.lr=0.001" /
                                        "metrics.jsonl").read_text().splitlines()]
  assert max(r["step"] for r in rows) == 2 and "eval/loss" in rows[-1]
