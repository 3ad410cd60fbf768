"""The allowed values of every key of configs/base.py: one entry per key, checked before anything
is built (`bigjax.config_checks.check_values`, called by `build` and the command lines).

To add a key: add it to base.py with its comment, then its entry here, e.g.
    "optim.lr": Number(above=0),
Rules: Integer(min, max, also=(-1,)), Number(min/max inclusive, above/below exclusive),
Choice(values), Flag(), Text(pattern), Path(kind, must_exist), Regex(), Sizes(), Custom(fn, bad).
tests/test_config_checks.py fails naming any key of base.py without an entry, and tries the bad
values of every entry. Checks across keys (the batch against the mesh, heads against the width)
live in `config_checks.check_config` and in each task.

MAY_CHANGE_ON_RESUME lists the keys a resumed run may set differently from the run that wrote
its checkpoints; any other difference stops the resume unless --resume_with_changes is given.
"""

import re

from bigjax import optim, tracking
from bigjax.config_checks import (DTYPES, Choice, ConfigError, Custom, Flag, Integer, Number,
                                  Path, Regex, Sizes, Text)
from bigjax.methods import adversarial, federated
from bigjax.models import layers, vision
from bigjax.sharding import AXES
from bigjax.tasks import TASKS

SEED_MAX = 2**32 - 1  # grain's shuffle takes seeds up to this
WANDB_PROJECT = r"[^/\\#?%:]{1,128}"  # W&B refuses these characters in project names


def _profile_steps(key, value):
  if not isinstance(value, str):
    raise ConfigError(f"{key}={value!r} must be a string such as '10,13'")
  tracking.profile_window(value)


def _sharding_rules(key, value):
  """((logical axis, mesh axis | (mesh axes) | None), ...)."""
  def mesh_axes(axes):
    return axes if isinstance(axes, (tuple, list)) else () if axes is None else (axes,)
  ok = isinstance(value, (tuple, list)) and all(
      isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
      and all(axis in AXES for axis in mesh_axes(rule[1])) for rule in value)
  if not ok:
    raise ConfigError(f"{key} must be pairs (logical axis, mesh axis or tuple of them or None) "
                      f"over the mesh axes {', '.join(AXES)}; see configs/base.py")


def _class_names(key, value):
  if not (isinstance(value, (tuple, list)) and all(isinstance(v, str) and v for v in value)):
    raise ConfigError(f"{key}={value!r} must be a tuple of class names (non-empty strings)")


def _clip_norm(key, value):
  """inf is allowed: noise with no clipping, the plain step's gradient (a test of the DP path)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
    raise ConfigError(f"{key}={value!r} must be a number >= 0 (0 = off)")


def _chat_template(key, value):
  if not isinstance(value, str):
    raise ConfigError(f"{key}={value!r} must be a string")
  if value in ("", "plain"):
    return
  if not re.search(r"{[{%]", value):
    raise ConfigError(f"{key}={value!r} is neither 'plain' nor a Jinja template")
  import jinja2

  try:
    jinja2.Environment().parse(value)
  except jinja2.TemplateSyntaxError as e:
    raise ConfigError(f"{key}: the Jinja template does not parse ({e.message}, line "
                      f"{e.lineno})") from None


SCHEMA = {
    "task": Choice(tuple(TASKS)),
    "steps": Integer(min=1),
    "batch_size": Integer(min=1),
    "seq_len": Integer(min=1),
    "seed": Integer(min=0, max=SEED_MAX),
    "compilation_cache_dir": Path(kind="dir"),
    "dtype": Choice(DTYPES),
    "log_every": Integer(min=1),
    "profile_steps": Custom(_profile_steps, bad=("5,2", "0,1", "a,b", "1,2,3", 3)),
    "eval_every": Integer(min=0),
    "eval_steps": Integer(min=1),
    "checkpoint_every": Integer(min=0),
    "keep_checkpoints": Integer(min=1),
    "on_nonfinite": Choice(("stop", "skip")),
    "max_consecutive_skips": Integer(min=1),
    "init_from": Path(must_exist=True),
    "freeze": Regex(),

    "mesh.data": Integer(min=1, also=(-1,)),
    "mesh.fsdp": Integer(min=1, also=(-1,)),
    "mesh.tensor": Integer(min=1, also=(-1,)),
    "sharding_rules": Custom(_sharding_rules, bad=((("batch", "nodes"),), (("batch",),), "x")),

    "early_stop.metric": Text(),  # the task's metric names are checked by build.make_task
    "early_stop.mode": Choice(("max", "min")),
    "early_stop.patience": Integer(min=0),

    "distributed.coordinator": Text(pattern=r"(\S+:\d+)?", example="10.0.0.1:1234",
                                    bad="10.0.0.1"),
    "distributed.num_processes": Integer(min=0),
    "distributed.process_id": Integer(min=0, also=(-1,)),
    "distributed.heartbeat_seconds": Integer(min=1),

    "data.source": Choice(("stdlib", "text", "tfds", "sklearn", "synthetic", "hf", "shards",
                           "jsonl")),
    "data.mixture": Text(pattern=r"|[^,:]+:[0-9.eE+-]+(,[^,:]+:[0-9.eE+-]+)*",
                         example="runs/web:0.7,runs/code:0.3", bad="runs/web"),
    "data.field": Text(pattern=r".+", example="text", bad=""),
    "data.workers": Integer(min=0),
    "data.path": Path(must_exist=True),
    "data.class_names": Custom(_class_names, bad=("pos", ("pos", ""), (1, 2))),
    "data.name": Text(),  # each task checks the names it reads
    "data.tfds_dir": Path(kind="dir"),
    "data.tokenizer": Choice(("byte", "sentencepiece", "hf")),
    "data.tokenizer_path": Path(),  # SentencePiece: a file (trained when missing); hf: a directory
    "data.vocab_size": Integer(min=259),  # SentencePiece: 256 byte pieces, unknown, end, more
    "data.val_fraction": Number(above=0, below=1),
    "data.chat_template": Custom(_chat_template, bad=("plian", "{% if %}", 3)),

    "model.num_layers": Integer(min=1),
    "model.num_heads": Integer(min=1),
    "model.num_kv_heads": Integer(min=0),
    "model.d_model": Integer(min=1),
    "model.d_ff": Integer(min=1),
    "model.max_len": Integer(min=1),
    "model.positions": Choice(layers.POSITIONS),
    "model.rope_theta": Number(above=0),
    "model.rope_scaling": Choice(layers.ROPE_SCALINGS),
    "model.rope_factor": Number(min=1),
    "model.rope_low_freq_factor": Number(above=0),
    "model.rope_high_freq_factor": Number(above=0),
    "model.rope_original_max_len": Integer(min=1),
    "model.norm_eps": Number(min=0),
    "model.post_norm": Flag(),
    "model.embed_norm": Flag(),
    "model.vocab_size": Integer(min=0),
    "model.norm": Choice(layers.NORMS),
    "model.mlp": Choice(layers.MLPS),
    "model.use_bias": Flag(),
    "model.tie_embeddings": Flag(),
    "model.dropout": Number(min=0, below=1),
    "model.remat": Choice(("none", *layers.REMAT_POLICIES)),
    "model.scan_layers": Flag(),
    "model.attention": Choice(layers.ATTENTION),
    "model.attention_block_len": Integer(min=1),
    "model.name": Choice(tuple(vision.MODELS)),
    "model.hidden": Sizes(),
    "model.channels": Sizes(min_len=1),
    "model.patch_size": Integer(min=1),
    "model.latent": Integer(min=1),
    "model.token_types": Integer(min=0),

    "mlm.mask_rate": Number(above=0, below=1),
    "mlm.nsp": Flag(),

    "seq2seq.beam_size": Integer(min=1),
    "seq2seq.length_penalty": Number(min=0),

    "optim.name": Choice(optim.OPTIMIZERS),
    "optim.lr": Number(above=0),
    "optim.schedule": Choice(optim.SCHEDULES),
    "optim.warmup_steps": Integer(min=0),
    "optim.min_lr_ratio": Number(min=0, max=1),
    "optim.weight_decay": Number(min=0),
    "optim.clip_norm": Number(min=0),
    "optim.b1": Number(min=0, below=1),
    "optim.b2": Number(min=0, below=1),
    "optim.momentum": Number(min=0, below=1),
    "optim.grad_accum_steps": Integer(min=1),

    "tracking.wandb": Choice(tracking.WANDB_MODES),
    "tracking.project": Text(pattern=WANDB_PROJECT, example="bigjax", bad="my/project"),
    "tracking.wandb_checkpoint": Flag(),
    "tracking.tensorboard": Flag(),
    "tracking.progress": Flag(),

    "sample.prompt": Text(),  # the LM task checks that it fits model.max_len
    "sample.max_new_tokens": Integer(min=0),
    "sample.temperature": Number(min=0),
    "sample.top_k": Integer(min=0),  # the LM task checks it against the vocabulary
    "sample.top_p": Number(above=0, max=1),
    "gan.discriminator_steps": Integer(min=1),
    "gan.generator_lr": Number(above=0),
    "gan.discriminator_lr": Number(above=0),
    "gan.classifier": Path(kind="dir", must_exist=True),
    "ensemble.members": Integer(min=1),
    "augment.crop_padding": Integer(min=0),
    "augment.flip": Flag(),
    "augment.rotate_degrees": Number(min=0, max=180),
    "augment.brightness": Number(min=0),
    "augment.contrast": Number(min=0, below=1),
    "augment.mixup_alpha": Number(min=0),
    "augment.cutmix_alpha": Number(min=0),
    "augment.token_delete": Number(min=0, below=1),
    "augment.token_swap": Number(min=0, max=1),
    "augment.token_mask": Number(min=0, max=1),
    "adversarial.attack": Choice(("", *adversarial.ATTACKS)),
    "adversarial.epsilon": Number(min=0),
    "adversarial.steps": Integer(min=1),
    "adversarial.step_size": Number(above=0),
    "adversarial.mix": Number(min=0, max=1),
    "federated.clients": Integer(min=0),
    "federated.clients_per_round": Integer(min=0),
    "federated.split": Choice(federated.SPLITS),
    "federated.alpha": Number(above=0),
    "federated.local_epochs": Integer(min=1),
    "federated.client_lr": Number(above=0),
    "privacy.clip_norm": Custom(_clip_norm, bad=(-1.0, "1", float("nan"))),
    "privacy.noise_multiplier": Number(min=0),
    "privacy.target_epsilon": Number(min=0),
    "privacy.delta": Number(above=0, below=1),
    "privacy.expected_batch_size": Integer(min=0),
    "lora.targets": Regex(),
    "lora.rank": Integer(min=1),
    "lora.alpha": Number(above=0),
    "lora.dropout": Number(min=0, below=1),
    "lora.base_qtype": Choice(("", "int8", "int4")),
    "quant.weights": Choice(("", "int8", "int4")),
    "quant.activations": Choice(("", "int8")),
    "quant.tile": Integer(min=0),
    "quant.mode": Choice(("qat", "ptq")),
    "prune.sparsity": Number(min=0, below=1),
    "prune.pattern": Choice(("unstructured", "2:4")),
    "prune.schedule": Choice(("gradual", "oneshot")),
    "prune.begin_step": Integer(min=0),
    "prune.end_step": Integer(min=0),
    "prune.every": Integer(min=1),
    "distill.teacher": Path(),  # task=distill checks it
    "distill.temperature": Number(above=0),
    "distill.alpha": Number(min=0, max=1),
}

# What a resumed run may change: how long it runs, how often it evaluates, saves and logs, where
# it reports, how it is laid out on devices and processes, and its final sample. None of these
# changes what a step computes (steps does change the learning-rate schedule's length: extending
# a run is what it is for).
MAY_CHANGE_ON_RESUME = (
    "steps", "log_every", "profile_steps", "eval_every", "eval_steps", "checkpoint_every",
    "keep_checkpoints", "compilation_cache_dir", "init_from", "early_stop.patience",
    "mesh.data", "mesh.fsdp", "mesh.tensor", "sharding_rules", "distributed.coordinator",
    "distributed.num_processes", "distributed.process_id", "distributed.heartbeat_seconds",
    "data.tfds_dir", "tracking.wandb", "tracking.project", "tracking.wandb_checkpoint",
    "tracking.tensorboard", "tracking.progress", "sample.prompt", "sample.max_new_tokens",
    "sample.temperature", "sample.top_k", "sample.top_p",
)
