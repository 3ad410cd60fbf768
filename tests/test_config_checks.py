"""Bad input fails before anything compiles, with one line that says what to change.

Three layers: the schema tested from itself (every key of configs/base.py has an entry, and every
entry refuses the bad values its rule names, so the table cannot fall behind the config); a table
of bad inputs as users make them, each through the whole loop with compiling forbidden; and the
command lines (train, sweep, bench), where bad input is `error: ...` and exit status 2.
"""

import concurrent.futures
import importlib
import os
import pathlib
import re
import subprocess
import sys

import jax
import pytest

from bigjax import build, config_checks, optim, sharding, sweeps, train
from bigjax.config_checks import ConfigError, check_config
from configs import base, schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_line_error(match, fn, *args, **kwargs):
  with pytest.raises(ConfigError, match=match) as e:
    fn(*args, **kwargs)
  assert "\n" not in str(e.value)
  return str(e.value)


@pytest.mark.parametrize("overrides, match", [
    ({"batch_size": 12}, r"batch_size=12 is not divisible by the 8 data-parallel devices"),
    ({"mesh.data": 2, "mesh.fsdp": 2}, r"needs 4 devices but 8 are present"),
    ({"mesh.fsdp": -1, "mesh.tensor": -1}, r"at most one mesh axis may be -1"),
    ({"optim.grad_accum_steps": 3}, r"grad_accum_steps=3"),
    ({"dtype": "float8"}, r"dtype='float8'"),
])
def test_check_config_names_the_problem(make_config, overrides, match):
  one_line_error(match, check_config, make_config(**overrides), 8)


# The schema, from itself.

BASE_KEYS = {key for key, _ in config_checks.leaves(base.get_config())}


def test_every_key_of_the_base_config_has_a_schema_entry():
  missing = sorted(BASE_KEYS - set(schema.SCHEMA))
  assert not missing, (f"configs/schema.py has no entry for {', '.join(missing)}: add one line "
                       f"per key (see the docstring there)")
  stale = sorted(set(schema.SCHEMA) - BASE_KEYS)
  assert not stale, f"configs/schema.py has entries for keys base.py lacks: {', '.join(stale)}"
  assert set(schema.MAY_CHANGE_ON_RESUME) <= BASE_KEYS


def _set(tree: dict, key: str, value) -> None:
  *parents, leaf = key.split(".")
  for name in parents:
    tree = tree[name]
  tree[leaf] = value


SCHEMA_CASES = [(key, bad) for key, rule in sorted(schema.SCHEMA.items())
                for bad in rule.bad_values()]


def test_every_rule_names_bad_values():
  assert {key for key, _ in SCHEMA_CASES} == set(schema.SCHEMA)


@pytest.mark.parametrize("key,bad", SCHEMA_CASES, ids=[f"{k}={b!r}" for k, b in SCHEMA_CASES])
def test_every_key_refuses_a_bad_value(key, bad):
  """A plain dict, so ml_collections' own type checks cannot be what refuses the value."""
  config = base.get_config().to_dict()
  _set(config, key, bad)
  one_line_error(re.escape(key), config_checks.check_values, config)


def _shipped_configs():
  for path in sorted(pathlib.Path(ROOT, "configs").glob("*.py")):
    if path.stem in ("__init__", "schema", "finetune"):  # finetune's is a saved run's config
      continue
    module = importlib.import_module(f"configs.{path.stem}")
    yield path.stem, module.get_config()
    for size in getattr(module, "SIZES", {}):
      yield f"{path.stem}:{size}", module.get_config(size)


@pytest.mark.parametrize("name,config", list(_shipped_configs()),
                         ids=[name for name, _ in _shipped_configs()])
def test_every_shipped_config_passes_the_schema(name, config, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  for path in (config.data.path, config.get("init_from", "")):
    if path.startswith("runs/"):  # made by the commands its docstring runs first
      os.makedirs(path)
  config_checks.check_values(config)


# Bad inputs as users make them, through the whole loop: each must fail before compiling.

def _file(name: str, content: bytes):
  def make(tmp_path):
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)
  return make


# (name, overrides: values, or callables of tmp_path for files the case needs, text of the error)
BAD_INPUTS = [
    ("positions", {"model.positions": "rotary"}, "model.positions='rotary' is unknown"),
    ("norm", {"model.norm": "rms"}, "model.norm='rms' is unknown; use one of layernorm, rmsnorm"),
    ("mlp", {"model.mlp": "swish"}, "model.mlp='swish' is unknown"),
    ("negative_lr", {"optim.lr": -1e-3}, "optim.lr=-0.001 must be a number > 0"),
    ("zero_lr", {"optim.lr": 0.0}, "optim.lr=0.0 must be a number > 0"),
    ("dropout_one", {"model.dropout": 1.0}, "model.dropout=1.0 must be a number in [0, 1)"),
    ("dropout_negative", {"model.dropout": -0.1}, "model.dropout=-0.1"),
    ("warmup", {"optim.warmup_steps": -5}, "optim.warmup_steps=-5 must be an integer >= 0"),
    ("b1", {"optim.b1": 1.0}, "optim.b1=1.0 must be a number in [0, 1)"),
    ("b2", {"optim.b2": -0.1}, "optim.b2=-0.1"),
    ("momentum", {"optim.momentum": 1.5}, "optim.momentum=1.5"),
    ("clip", {"optim.clip_norm": -1.0}, "optim.clip_norm=-1.0 must be a number >= 0"),
    ("min_lr_ratio", {"optim.min_lr_ratio": 2.0}, "optim.min_lr_ratio=2.0"),
    ("checkpoint_every", {"checkpoint_every": -1}, "checkpoint_every=-1 must be an integer >= 0"),
    ("eval_every", {"eval_every": -1}, "eval_every=-1"),
    ("log_every", {"log_every": 0}, "log_every=0 must be an integer >= 1"),
    ("eval_steps", {"eval_steps": 0}, "eval_steps=0"),
    ("steps", {"steps": 0}, "steps=0 must be an integer >= 1"),
    ("batch_size", {"batch_size": 0}, "batch_size=0"),
    ("seed", {"seed": -1}, "seed=-1 must be an integer in [0, 4294967295]"),
    ("keep_zero", {"keep_checkpoints": 0}, "keep_checkpoints=0 must be an integer >= 1"),
    ("keep_negative", {"keep_checkpoints": -1}, "keep_checkpoints=-1"),
    ("skips", {"max_consecutive_skips": 0}, "max_consecutive_skips=0"),
    ("heads_zero", {"model.num_heads": 0}, "model.num_heads=0 must be an integer >= 1"),
    ("kv_heads_negative", {"model.num_kv_heads": -2}, "model.num_kv_heads=-2"),
    ("max_len", {"model.max_len": 0}, "model.max_len=0"),
    ("rope_theta", {"model.rope_theta": 0.0}, "model.rope_theta=0.0"),
    ("attention", {"model.attention": "flash"}, "model.attention='flash' is unknown"),
    ("remat", {"model.remat": "some"}, "model.remat='some' is unknown"),
    ("dtype", {"dtype": "float8"}, "dtype='float8' is unknown"),
    ("nonfinite", {"on_nonfinite": "ignore"}, "on_nonfinite='ignore' is unknown"),
    ("task", {"task": "lmm"}, "task='lmm' is unknown"),
    ("optimizer", {"optim.name": "adamww"}, "optim.name='adamww' is unknown"),
    ("schedule", {"optim.schedule": "cosin"}, "optim.schedule='cosin' is unknown"),
    ("source", {"data.source": "web"}, "data.source='web' is unknown"),
    ("tokenizer", {"data.tokenizer": "wordpiece"}, "data.tokenizer='wordpiece' is unknown"),
    ("val_fraction", {"data.val_fraction": 1.0}, "data.val_fraction=1.0"),
    ("top_k_negative", {"sample.top_k": -1}, "sample.top_k=-1"),
    ("max_new_tokens", {"sample.max_new_tokens": -1}, "sample.max_new_tokens=-1"),
    ("temperature", {"sample.temperature": -0.5}, "sample.temperature=-0.5"),
    ("profile_order", {"profile_steps": "5,2"}, "profile_steps='5,2'"),
    ("profile_words", {"profile_steps": "a,b"}, "profile_steps='a,b'"),
    ("freeze", {"freeze": "(embed"}, "freeze='(embed' is not a regular expression"),
    ("early_stop_mode", {"early_stop.mode": "maximize"}, "early_stop.mode='maximize'"),
    ("patience_alone", {"early_stop.patience": 3}, "early_stop.patience=3 needs early_stop.metric"),
    ("wandb_mode", {"tracking.wandb": "on"}, "tracking.wandb='on' is unknown"),
    ("wandb_project", {"tracking.project": "a/b"}, "tracking.project='a/b' is malformed"),
    ("coordinator", {"distributed.coordinator": "10.0.0.1"}, "distributed.coordinator='10.0.0.1'"),
    ("heartbeat", {"distributed.heartbeat_seconds": 0}, "distributed.heartbeat_seconds=0"),
    ("chat_template", {"data.chat_template": "plian"}, "neither 'plain' nor a Jinja template"),
    ("mesh_zero", {"mesh.tensor": 0}, "mesh.tensor=0"),
    ("mesh_product", {"mesh.data": 3}, "needs 3 devices but 8 are present"),
    ("two_free_axes", {"mesh.fsdp": -1, "mesh.tensor": -1}, "at most one mesh axis"),
    ("batch_split", {"batch_size": 12}, "not divisible by the 8 data-parallel devices"),
    ("grad_accum", {"optim.grad_accum_steps": 3}, "grad_accum_steps=3"),
    ("heads_tensor", {"mesh.data": 1, "mesh.tensor": 8}, "not divisible by mesh.tensor=8"),
    ("kv_heads_divide", {"model.num_kv_heads": 3}, "not divisible by model.num_kv_heads"),
    ("width_heads", {"model.d_model": 30}, "not divisible by model.num_heads"),
    ("seq_len", {"seq_len": 128}, "longer than model.max_len"),
    ("metric_typo", {"early_stop.metric": "eval/acc"}, "is not reported by task lm"),
    ("top_k_vocab", {"sample.top_k": 1000}, "sample.top_k=1000 is larger than the vocabulary"),
    ("prompt_too_long", {"sample.prompt": "x" * 64}, "no room left in model.max_len=64"),
    ("short_validation", {"data.val_fraction": 0.0001}, "has fewer than seq_len+1"),
    ("missing_data", {"data.path": "/no/such/file.txt"}, "does not exist"),
    ("no_data_path", {"data.path": ""}, "needs --config.data.path"),
    ("binary_data", {"data.path": _file("data.bin", bytes(range(256)) * 64)}, "is binary"),
    ("latin1_data", {"data.path": _file("latin1.txt", "café déjà vu\n".encode("latin-1") * 99)},
     "is not UTF-8 text"),
    ("tokenizer_dir", {"data.tokenizer": "sentencepiece", "data.tokenizer_path": lambda t: str(t)},
     "is not a SentencePiece model"),
    ("tokenizer_not_model", {"data.tokenizer": "sentencepiece",
                             "data.tokenizer_path": _file("not.model", b"hello")},
     "is not a SentencePiece model"),
    ("init_from", {"init_from": "/no/such/run"}, "init_from='/no/such/run' does not exist"),
    ("cache_dir_file", {"compilation_cache_dir": _file("cache", b"")}, "is a file"),
    ("tfds_name", {"data.source": "tfds", "data.name": "imagenet_typo"}, "not a known text"),
]


@pytest.fixture
def nothing_compiles(monkeypatch):
  def compile(*args, **kwargs):
    raise AssertionError("compiled before the error")
  monkeypatch.setattr(build.Run, "compile", compile)


@pytest.mark.parametrize("name,overrides,message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_before_compiling(make_config, tmp_path, nothing_compiles, name,
                                                overrides, message):
  values = {k: v(tmp_path) if callable(v) else v for k, v in overrides.items()}
  workdir = tmp_path / "run"
  one_line_error(re.escape(message), train.train_and_evaluate, make_config(**values),
                 str(workdir))
  assert not (workdir / "checkpoints").exists()


def test_job_settings_without_a_coordinator_are_refused(make_config, monkeypatch):
  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
  config = make_config(**{"distributed.num_processes": 2, "distributed.process_id": 0})
  one_line_error("need distributed.coordinator", sharding.initialize_distributed,
                 config.distributed)


def test_a_vision_task_ignores_transformer_settings(make_config):
  """The tensor axis splits heads of Transformers; an MLP on digits has none to split."""
  config = make_config(**{"task": "classify", "data.source": "sklearn", "data.name": "digits",
                          "model.name": "mlp", "mesh.data": 1, "mesh.tensor": 8})
  assert build.build(config, jax.devices()).mesh_shape["tensor"] == 8


def test_a_good_config_resolves_the_free_mesh_axis(make_config):
  assert check_config(make_config(**{"mesh.data": -1, "mesh.tensor": 2}), 8) == {
      "data": 4, "fsdp": 1, "tensor": 2}


@pytest.mark.parametrize("axis", ["fsdp", "tensor"])
def test_an_axis_set_to_minus_one_takes_the_devices_from_the_default_data_axis(make_config, axis):
  """The README's FSDP command sets only mesh.fsdp=-1; mesh.data keeps its default -1."""
  assert check_config(make_config(**{f"mesh.{axis}": -1}), 8) == {
      "data": 1, "fsdp": 1, "tensor": 1} | {axis: 8}


@pytest.mark.parametrize("overrides, match", [
    ({"task": "nope"}, r"task='nope' is unknown; use one of .*lm"),
    ({"data.path": ""}, r"data.source='text' needs --config.data.path"),
    ({"data.path": "/no/such/file.txt"}, r"data.path='/no/such/file.txt' does not exist"),
    ({"data.source": "tfds", "data.name": "nope"}, r"data.name='nope' is not a known"),
    ({"data.source": "nope"}, r"data.source='nope' is unknown"),
    ({"optim.name": "adamax"}, r"optim.name='adamax' is unknown; use one of adamw"),
    ({"optim.schedule": "exp"}, r"optim.schedule='exp' is unknown; use one of cosine"),
])
def test_the_loop_fails_before_compiling(make_config, workdir, overrides, match):
  one_line_error(match, train.train_and_evaluate, make_config(**overrides), workdir,
                 jax.devices()[:1])




def test_optimizer_table_rejects_unknown_names(make_config):
  config = make_config(**{"optim.name": "rmsprop"})
  one_line_error(r"optim.name='rmsprop'", optim.make_optimizer, config.optim, 10)


@pytest.mark.parametrize("text,message", [
    ("method: grid\nparameters: [", "is not valid YAML"),
    ("method: grid\nmetric: {name: l}\nparameters: {optim.lr: {values: 0.1}}",
     "`values` must be a non-empty list"),
    ("method: grid\nmetric: {name: l}\nparameters: {optim.lr: {values: []}}",
     "`values` must be a non-empty list"),
    ("method: random\nmetric: {name: l}\nparameters: {optim.lr: {distribution: "
     "log_uniform_values, min: 0, max: 0.1}}", "min=0 must be above 0"),
    ("method: random\nmetric: {name: l}\nparameters: {optim.lr: {min: 0.1, max: 0.01}}",
     "min=0.1 is above max=0.01"),
    ("method: random\nmetric: {name: l}\nrun_cap: 0\nparameters: {seed: {value: 1}}",
     "run_cap=0"),
], ids=["yaml", "scalar_values", "empty_values", "log_min_zero", "min_above_max", "run_cap"])
def test_bad_sweep_files_are_one_line(tmp_path, text, message):
  path = tmp_path / "s.yaml"
  path.write_text(text)
  with pytest.raises(sweeps.SweepError, match=re.escape(message)) as e:
    sweeps.load(str(path))
  assert "\n" not in str(e.value)


# The command lines: `error: ...`, exit status 2, no traceback, before any work.

def _sweep_file(text):
  def make(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return str(path)
  return make


GOOD_SWEEP = "method: grid\nmetric: {name: eval/loss}\nparameters: {seed: {values: [1]}}"
TRAIN, SWEEP, BENCH = ("-m", "bigjax.train"), ("scripts/sweep.py",), ("scripts/bench.py",)
CLI_CASES = [
    ("variant", TRAIN, ["--config=configs/gpt2.py:huge"],
     "configs/gpt2.py:huge is unknown; use one of small"),
    ("two_configs", TRAIN, ["--config=configs/gpt_tiny.py", "--config=configs/gpt2.py"],
     "--config is given 2 times"),
    ("key_far", TRAIN, ["--config=configs/gpt_tiny.py", "--config.zzzqqq=1"],
     "config key zzzqqq is unknown; see configs/base.py"),
    ("key_near", TRAIN, ["--config=configs/gpt_tiny.py", "--config.val_fraction=0.2"],
     "config key val_fraction is unknown; did you mean data.val_fraction?"),
    ("value", TRAIN, ["--config=configs/gpt_tiny.py", "--config.optim.lr=-1"],
     "optim.lr=-1.0 must be a number > 0"),
    ("no_coordinator", TRAIN, ["--config=configs/gpt_tiny.py",
                               "--config.distributed.num_processes=2"],
     "need distributed.coordinator"),
    ("sweep_yaml", SWEEP, ["--sweep={f}", "--workdir={t}/s"], "is not valid YAML"),
    ("sweep_workers", SWEEP, ["--sweep={f}", "--workdir={t}/s", "--workers=0"],
     "flag --workers=0"),
    ("sweep_empty", SWEEP, ["--sweep={f}", "--workdir={t}/s"], "non-empty list"),
    ("sweep_value", SWEEP, ["--sweep={f}", "--workdir={t}/s", "--config.optim.lr=-1"],
     "optim.lr=-1.0 must be a number > 0"),
    ("bench_rounds", BENCH, ["--rounds=0"], "flag --rounds=0"),
    ("bench_steps", BENCH, ["--steps=0"], "flag --steps=0"),
    ("bench_mesh", BENCH, ["--config.mesh.data=3"], "needs 3 devices but 1 are present"),
]
SWEEP_FILES = {"sweep_yaml": "method: [", "sweep_workers": GOOD_SWEEP, "sweep_value": GOOD_SWEEP,
               "sweep_empty": GOOD_SWEEP.replace("[1]", "[]")}


def _run_cli(case, tmp_path):
  name, program, args, _ = case
  sweep_file = tmp_path / f"{name}.yaml"
  sweep_file.write_text(SWEEP_FILES.get(name, ""))
  args = [a.format(f=sweep_file, t=tmp_path / name) for a in args]
  if program == TRAIN:
    args.append(f"--workdir={tmp_path / name / 'run'}")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}  # one device
  return subprocess.run([sys.executable, *program, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_command_lines_refuse_bad_input_in_one_line(tmp_path):
  """All at once: each is a process that starts Python and JAX, then stops at the error."""
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    done = list(pool.map(lambda case: _run_cli(case, tmp_path), CLI_CASES))
  for (name, _, _, message), result in zip(CLI_CASES, done):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (name, result.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (
        name, result.stderr[-2000:])
    assert not (tmp_path / name / "run" / "checkpoints").exists()
    assert not (tmp_path / name / "s").exists()
