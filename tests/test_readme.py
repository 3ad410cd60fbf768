"""Every command the README shows runs as a new user would type it: shortened, offline.

The commands are read from README.md, not listed here: each line of a ```bash block (joined
across trailing backslashes, split at `&&`) and each inline `code` span that starts like a
command (python, pip, scripts/..., tensorboard, wandb, sbatch, possibly after VAR=value). A
`[...]` part is optional: it is run with the command, unless it holds `...`. PLANS says, by
pattern, how each command is shortened (flags appended after the README's own: absl keeps the
last value), what it must print, or why it is not run. A command no plan matches fails here
until it gets one, so a new README section is checked from the day it is written.

The commands run in one scratch directory (configs/ and scripts/ linked in, so `runs/...` lands
there), with `python` on PATH being this interpreter, one CPU device, tfds pointed at an empty
directory and no network needed: first the ones that write runs (training, sweeps), in README
order, then the ones that read them (evaluate, plot, ...). The longest test file: 10 minutes on
the 2-core development machine (conftest.py collects it first, so an xdist worker starts on it).
"""

import dataclasses
import glob
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")

# What a README command may start with, after any VAR=value assignments.
COMMAND_WORDS = ("python", "pip", "scripts/", "tensorboard", "wandb", "sbatch", "bash")

# Every training run: a few steps, one eval batch, a short sample, and a compilation cache of its
# own (not the user's), which the rerun of a finished run and the evaluations reuse.
SHORT = ["--config.steps=2", "--config.eval_steps=1", "--config.log_every=1",
         "--config.checkpoint_every=0", "--config.sample.max_new_tokens=8",
         "--config.tracking.progress=False", "--config.compilation_cache_dir={cache}"]
# GPT-2 and Llama sizes, 2 layers of width 64 on 8 CPU devices: the config's own layout and
# settings (FSDP, remat, GQA, positions) at a size a test compiles in seconds.
SMALL_MODEL = ["--config.model.num_layers=2", "--config.model.d_model=64",
               "--config.model.num_heads=4", "--config.model.num_kv_heads=2",
               "--config.model.d_ff=128", "--config.model.max_len=64", "--config.seq_len=32",
               "--config.batch_size=8", "--config.dtype=float32"]
BENCH = ["--steps=1", "--rounds=1", "--warmup=0", "--config.seq_len=64",
         "--config.compilation_cache_dir={cache}"]


@dataclasses.dataclass(frozen=True)
class Plan:
  """How the commands matching `pattern` are checked."""

  pattern: str  # a regex, matched at the start of the command
  args: tuple = ()  # appended to the command
  returncode: int = 0
  output: str = ""  # a regex the command's stdout + stderr must hold
  skip: str = ""  # why the command is not run (then nothing else applies)
  check: str = ""  # a function of this module that checks the command instead of running it
  after_training: bool = False  # reads what the training commands write
  files: tuple = ()  # paths, relative to the scratch directory, the command must write
  again: str = ""  # a regex the same command, run a second time, must print


def tfds_error(name):
  """A config reading tfds, in a scratch directory without prepared data: one line, exit 2."""
  return dict(returncode=2, output=rf"^error: tfds {re.escape(name)} is not prepared in \S+ "
                                   r"\(data\.tfds_dir=.*python -m bigjax\.data\.prepare_tfds")


# First match wins: specific patterns before general ones.
PLANS = [
    # Not run.
    Plan(r"pip install", skip="installs packages: the tests run in the environment it builds"),
    Plan(r"python -m pytest", skip="the test suite itself"),
    Plan(r"python -m bigjax\.data\.prepare_tfds",
         skip="downloads, the one command that needs the network; tests/test_tfds_source.py "
              "prepares a dataset generated offline through the same code"),
    Plan(r"wandb (sync|sweep|agent)", skip="W&B's server: needs the network and an account"),
    Plan(r".*(\.\.\.|TPU_NAME)", skip="a pattern, not a command line; tests/test_launch.py "
                                      "runs the launchers (DRY_RUN output, two real processes)"),
    Plan(r"python -m bigjax\.launch$", skip="names the module; tests/test_launch.py runs it"),
    Plan(r"python -m bigjax\.(hf|export|lora merge)$",
         skip="names the module; its commands are run below"),
    Plan(r"python (-m bigjax\.data\.prepare|scripts/bench_data\.py) .*\bOUT\b",
         skip="the recipe of a measurement on a corpus made for it; the command's real form runs "
              "below, tests/test_prepare.py checks what it writes"),
    Plan(r"S=|python -m bigjax\.train \$S|python -c \"import bigjax; from bigjax\.adapt\.measure",
         skip="the recipe of the LoRA measurement (150 steps a run); tests/test_lora.py checks "
              "LoRA's recovery of a full fine-tune at a smaller size"),
    Plan(r"(python )?scripts/\S+\.py --workdir=W$|python (-m bigjax\.export|scripts/run_exported"
         r"\.py) .*\b(W|DIR)\b", skip="a pattern, not a command line; tests/test_export.py and "
                                       "tests/test_serve.py run these commands"),
    Plan(r"python scripts/bench_hf\.py", skip="times GPT-2 small's full size (minutes); "
                                               "tests/test_hf_*.py check the same parity"),
    Plan(r"curl ", skip="sent by check_serve to the server the README starts before them"),
    # Checked without running.
    Plan(r"python scripts/aot_compile\.py", check="check_aot_command"),
    # Hugging Face round trip, on a tiny random GPT-2 made in the scratch directory's models/.
    Plan(r"python -m bigjax\.hf import", files=("runs/gpt2_hf/checkpoints/0",)),
    Plan(r"python -m bigjax\.train --config=configs/finetune\.py",
         args=(*SHORT, "--config.data.path={corpus}")),
    Plan(r"python -m bigjax\.hf export", files=("models/gpt2_tuned/config.json",
                                                   "models/gpt2_tuned/tokenizer.json")),
    Plan(r"python -c \"import transformers", output=r"ROMEO:"),
    # Data: a corpus prepared into shards (then trained on below), generated dialogues.
    Plan(r"python -m bigjax\.data\.prepare", args=("--input={corpus}", "--workers=1"),
         files=("data/web/manifest.json",)),
    Plan(r"python -m bigjax\.data\.dialogues", args=("--train=64", "--validation=16"),
         files=("runs/dialogues/train.jsonl",)),
    # Training (and sweeps): shortened.
    Plan(r"python -m bigjax\.train --config=configs/mnist_mlp\.py", args=(
        "--config.data.tfds_dir=",), **tfds_error("mnist")),
    Plan(r"python -m bigjax\.train --config=configs/(gpt2|llama)\.py",
         args=(*SHORT, *SMALL_MODEL)),
    Plan(r"python -m bigjax\.train --config=configs/shakespeare_char\.py",
         args=(*SHORT, "--config.data.path={corpus}")),  # the README's PATH is the user's file
    # The default job: a text sample at the end; run again, it says it has finished.
    Plan(r"python -m bigjax\.train --config=configs/gpt_tiny\.py --workdir=runs/gpt_tiny$",
         args=tuple(SHORT), output=r"^--- sample ---$",
         again=r"^runs/gpt_tiny finished at step 2: .*eval/loss"),
    # Every classifier saves its confusion matrix; the VAE its image grids.
    Plan(r"python -m bigjax\.train --config=configs/(bert_classify|digits_mlp)\.py",
         args=tuple(SHORT), files=("runs/*/images/eval_confusion_matrix_step2.png",)),
    Plan(r"python -m bigjax\.train --config=configs/digits_vae\.py", args=tuple(SHORT),
         files=("runs/digits_vae/images/reconstructions_step2.png",
                "runs/digits_vae/images/samples_step2.png")),
    Plan(r"(XLA_FLAGS=\S+ )?python -m bigjax\.train", args=tuple(SHORT)),
    Plan(r"python scripts/sweep\.py", args=(*SHORT, "--workers=1", "--count=1"),
         output=r"^wrote \S*sweep\.png"),
    # Reading what training wrote.
    Plan(r"python -m bigjax\.evaluate", args=("--config.eval_steps=1",), after_training=True,
         output=r"step 2: eval/loss"),
    Plan(r"python -m bigjax\.generate", after_training=True),  # as written, from runs/gpt_tiny
    Plan(r"python scripts/plot\.py", after_training=True, output=r"wrote"),
    Plan(r"python scripts/bench\.py --config=configs/(gpt2|llama)\.py",
         args=(*BENCH, *SMALL_MODEL), after_training=True, output=r"tokens_per_sec"),
    Plan(r"python scripts/bench\.py", args=tuple(BENCH), after_training=True,
         output=r"tokens_per_sec"),
    Plan(r"python scripts/bench_pytorch\.py", args=tuple(BENCH), after_training=True,
         output=r"tokens_per_sec"),
    Plan(r"python scripts/bench_data\.py", args=("--batches=2", "--workers=0", "--batch_size=4"),
         after_training=True),
    Plan(r"python -m bigjax\.lora merge", after_training=True,
         files=("runs/lora_merged/checkpoints",)),
    Plan(r"python -m bigjax\.quantize", after_training=True,
         files=("runs/gpt_tiny_int4/checkpoints",)),
    Plan(r"python scripts/compress_report\.py",
         skip="fine-tunes and times six variants (90 s at 2 steps each); tests/test_quantize.py "
              "and tests/test_prune.py check each variant; its decode timing is bigjax.generate's"),
    Plan(r"tensorboard --logdir=runs$", check="check_tensorboard", after_training=True),
    Plan(r"python -m bigjax\.serve", check="check_serve", after_training=True),
    Plan(r"python scripts/bench_serve\.py", args=("--requests=2", "--clients=2",
                                                   "--max_tokens=4", "--rounds=1"),
         after_training=True, output=r"tokens_per_sec"),
]


def readme_commands(text: str) -> list[str]:
  """The commands of ```bash blocks and inline code spans, in README order, without repeats."""
  commands, prose = [], []
  for part, is_code in _fences(text):
    if is_code:
      joined = part.replace("\\\n", " ")
      for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line.startswith("#"):  # a comment line
          continue
        commands += [" ".join(c.split()) for c in line.split(" && ") if c.strip()]
    else:
      prose.append(part)
  for span in re.findall(r"`([^`]+)`", "\n".join(prose)):
    span = " ".join(span.split())
    words = [w for w in span.split() if not re.fullmatch(r"[A-Z_]+=\S*", w)]
    if len(span.split()) > 1 and words and words[0].startswith(COMMAND_WORDS):
      commands.append(span)
  return list(dict.fromkeys(commands))


def _fences(text):
  """(text, is a bash block) pieces; other fenced blocks (output, Python) count as neither."""
  pieces = re.split(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.S | re.M)
  yield pieces[0], False
  for i in range(1, len(pieces), 3):
    language, body, after = pieces[i:i + 3]
    if language in ("bash", "sh", "shell"):
      yield body, True
    yield after, False


def plan_for(command: str) -> Plan | None:
  return next((p for p in PLANS if re.match(p.pattern, command)), None)


def runnable_form(command: str) -> str:
  """`[...]` optional parts included (the first of `a|b|c` alternatives), except those that are
  placeholders themselves."""
  def optional(m):
    part = m.group(1)
    return "" if "..." in part else re.sub(r"=([\w.-]+)(\|[\w.-]+)+", r"=\1", part)
  # After a space: `x[0]` in Python code is no optional part.
  return re.sub(r"(?<=\s)\[([^\]]*)\]", optional, command)


COMMANDS = readme_commands(open(README, encoding="utf-8").read())
# What runs: training first (in README order), then what reads its runs. A command without a
# plan is here too, to fail.
TO_RUN = sorted((c for c in COMMANDS if not (plan_for(c) and plan_for(c).skip)),
                key=lambda c: bool(plan_for(c) and plan_for(c).after_training))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, corpus_path):
  """A directory like the repository's root to run commands in, and their environment."""
  home = tmp_path_factory.mktemp("readme")
  for name in ("configs", "scripts", "bigjax"):
    os.symlink(os.path.join(ROOT, name), home / name)
  bin_dir = home / ".bin"
  bin_dir.mkdir()
  os.symlink(sys.executable, bin_dir / "python")
  os.symlink(os.path.join(os.path.dirname(sys.executable), "tensorboard"), bin_dir / "tensorboard")
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
             PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(":"),
             TFDS_DATA_DIR=str(home / "tfds"),  # tfds's default: an empty directory
             # One CPU device, as a new user has (conftest emulates 8 for the other tests);
             # XLA's quickest compile level, which changes speed only.
             XLA_FLAGS="--xla_backend_optimization_level=0")
  save_tiny_gpt2(str(home / "models" / "gpt2"))
  return dict(cwd=str(home), env=env, fill={"corpus": corpus_path, "cache": str(home / "cache")})


def save_tiny_gpt2(directory: str) -> None:
  """A random 2-layer GPT-2 with a byte-level BPE tokenizer: what `hf download` would bring."""
  from tests import hf_models

  tokenizer_dir = directory + "_tokenizer"
  hf_models.save_bpe_tokenizer(tokenizer_dir)
  hf_models.save(hf_models.gpt2(), directory, tokenizer_dir)


def test_every_readme_command_has_a_plan():
  assert len(COMMANDS) > 20 and any(c.startswith("python -m bigjax.train") for c in COMMANDS)
  missing = [c for c in COMMANDS if plan_for(c) is None]
  assert not missing, (f"README commands without a plan in tests/test_readme.py PLANS: {missing}"
                       f"; add how to shorten each (or why it cannot run)")


def test_untagged_code_blocks_hold_no_commands():
  """Commands belong in ```bash blocks, where this test finds them."""
  text = open(README, encoding="utf-8").read()
  for language, body in re.findall(r"^```(\w*)[ \t]*\n(.*?)^```", text, flags=re.S | re.M):
    if not language:
      assert not re.search(r"^\s*(python|pip) ", body, re.M), f"tag this block bash:\n{body}"


@pytest.mark.parametrize("command", TO_RUN)
def test_readme_command(command, scratch):
  plan = plan_for(command)
  assert plan, f"no plan for {command!r}: see test_every_readme_command_has_a_plan"
  runnable = runnable_form(command)
  if plan.check:
    globals()[plan.check](runnable, scratch)
    return
  args = " ".join(shlex.quote(a.format(**scratch["fill"])) for a in plan.args)
  run_and_expect(f"{runnable} {args}", plan.returncode, plan.output, scratch)
  for pattern in plan.files:
    assert glob.glob(os.path.join(scratch["cwd"], pattern)), f"{command} wrote no {pattern}"
  if plan.again:
    run_and_expect(f"{runnable} {args}", 0, plan.again, scratch)


def run_and_expect(command: str, returncode: int, output: str, scratch) -> None:
  start = time.perf_counter()
  result = subprocess.run(["bash", "-c", command], cwd=scratch["cwd"], env=scratch["env"],
                          capture_output=True, text=True, timeout=600)
  printed = result.stdout + result.stderr
  assert result.returncode == returncode, (
      f"{command}\nexit {result.returncode} after {time.perf_counter() - start:.0f}s\n"
      f"{printed[-3000:]}")
  assert re.search(output, printed, re.M), f"{command}\n{printed[-3000:]}"


def check_aot_command(command, scratch):
  """Compiling for a TPU slice takes libtpu (not installed in CI) and minutes per large model;
  what can drift is the command itself: its flags parse, its config loads, and the config fits
  the slice's chip count before anything compiles."""
  import runpy

  from absl import flags
  from ml_collections import config_flags

  from bigjax.config_checks import check_config

  aot = runpy.run_path(os.path.join(ROOT, "scripts", "aot_compile.py"))
  words = shlex.split(command)[2:]  # after `python scripts/aot_compile.py`
  topology = [w.split("=", 1)[1] for w in words if w.startswith("--topology=")]
  argv = ["aot_compile.py", *[w for w in words if w.startswith("--config")]]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)
  fv(argv)
  config = fv.config
  chips = aot["parse_slice"](topology[0]).chips
  assert check_config(config, chips)


def check_tensorboard(command, scratch):
  """TensorBoard serves the runs written above: its scalars include the training loss."""
  import portpicker

  port = portpicker.pick_unused_port()
  server = subprocess.Popen(["bash", "-c", f"exec {command} --port={port}"], cwd=scratch["cwd"],
                            env=scratch["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  try:
    deadline, tags = time.time() + 120, ""
    while time.time() < deadline and "train/loss" not in tags:
      try:
        url = f"http://localhost:{port}/data/plugin/scalars/tags"
        tags = urllib.request.urlopen(url, timeout=5).read().decode()
      except OSError:
        assert server.poll() is None, server.stdout.read().decode()[-3000:]
      time.sleep(1)
    assert "train/loss" in tags, tags
  finally:
    server.terminate()
    server.wait(timeout=30)


def check_serve(command, scratch):
  """The server the README starts answers the README's curl commands, key and all."""
  import portpicker

  port, key = portpicker.pick_unused_port(), "readme-key"
  env = dict(scratch["env"], KEY=key)
  command = command.replace("--port=8000", f"--port={port}")
  server = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=scratch["cwd"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 300
    while True:
      assert server.poll() is None, server.stdout.read().decode()[-3000:]
      assert time.time() < deadline, "the server never became ready"
      try:
        if urllib.request.urlopen(f"http://localhost:{port}/ready", timeout=5).status == 200:
          break
      except OSError:
        time.sleep(1)
    for curl in (c for c in COMMANDS if c.startswith("curl ")):
      result = subprocess.run(["bash", "-c", curl.replace("localhost:8000", f"localhost:{port}")],
                              env=env, capture_output=True, text=True, timeout=120)
      assert result.returncode == 0 and result.stdout, f"{curl}\n{result.stderr}"
      assert '"error"' not in result.stdout, f"{curl}\n{result.stdout[:2000]}"
  finally:
    server.terminate()
    server.wait(timeout=30)
