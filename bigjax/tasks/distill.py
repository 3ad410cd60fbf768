"""Knowledge distillation: a student decoder learns from a trained teacher's soft targets.

    python -m bigjax.train --config=configs/gpt_tiny.py --workdir=runs/student \
        --config.task=distill --config.distill.teacher=runs/gpt_tiny \
        --config.model.d_model=64 --config.model.d_ff=256

Per token (Hinton et al., 2015): alpha * T^2 * KL(p_teacher || p_student) + (1 - alpha) * CE(label),
both distributions softened to softmax(logits / T); the T^2 keeps the soft term's gradients on the
hard term's scale whatever T is.

The teacher is a finished run. Its parameters sit under params["teacher"], so they are laid out
on the run's mesh by their own logical axis names, but they never train (`bigjax.adapt` keeps them
out of the gradient and the optimizer) and the teacher runs in eval mode under stop_gradient.
Evaluation reports the student's own loss on the labels, comparable with a student trained on
the labels alone.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import optax

from bigjax import checkpoint
from bigjax.config_checks import ConfigError
from bigjax.models import gpt
from bigjax.models.layers import TransformerConfig
from bigjax.tasks.base import Loss
from bigjax.tasks.lm import LanguageModelTask
from bigjax.throughput import decoder_flops_per_token

TEACHER = "teacher"  # the key of the teacher's parameters in a distillation run's params


def _vocabulary(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """What a token id means: the tokenizer, and for SentencePiece its model file."""
  data = config.data
  if data.tokenizer == "sentencepiece":
    return data.tokenizer, os.path.abspath(data.tokenizer_path)
  return (data.tokenizer,)


class DistillTask(LanguageModelTask):
  """Next-token prediction for a student (config.model) taught by `distill.teacher`."""

  def __init__(self, config: ml_collections.ConfigDict, process_index: int = 0,
               process_count: int = 1):
    super().__init__(config, process_index, process_count)
    distill = config.distill
    if not distill.teacher:
      raise ConfigError("task=distill needs distill.teacher=WORKDIR, a trained lm run")
    if distill.temperature <= 0 or not 0 <= distill.alpha <= 1:
      raise ConfigError(f"distill.temperature={distill.temperature} must be positive and "
                        f"distill.alpha={distill.alpha} within [0, 1]")
    teacher_config, self.teacher_state = _teacher_run(distill.teacher)
    theirs, ours = _vocabulary(teacher_config), _vocabulary(config)
    if theirs != ours:
      raise ConfigError(f"distill.teacher={distill.teacher} uses another vocabulary {theirs} "
                        f"than this student {ours}; distill between models sharing a tokenizer")
    if config.seq_len > teacher_config.model.max_len:
      raise ConfigError(f"seq_len={config.seq_len} is longer than the teacher's max_len="
                        f"{teacher_config.model.max_len}; shorten seq_len")
    self.teacher_cfg = TransformerConfig.from_config(teacher_config, self.tokenizer.vocab_size,
                                                     dtype=self.model_cfg.dtype)
    self.teacher = gpt.Decoder(self.teacher_cfg)

  def init(self, rng, batch):
    student = super().init(rng, batch)["params"]
    return {"params": {**student, TEACHER: self.teacher.init(rng, batch["inputs"])["params"]}}

  def with_teacher(self, params: dict, abstract_params: dict) -> dict:
    """Fresh parameters with the teacher's trained ones read in, in the run's layout."""
    return {**params, TEACHER: checkpoint.restore_params(self.teacher_state,
                                                         abstract_params[TEACHER])}

  def loss(self, params, batch, rng, train: bool):
    logits_BxLxV, _ = self.model.apply({"params": student(params)}, batch["inputs"], train=train,
                                       rngs={"dropout": rng})
    teacher_BxLxV, _ = self.teacher.apply({"params": jax.lax.stop_gradient(params[TEACHER])},
                                          batch["inputs"])
    t = self.config.distill.temperature
    log_student_BxLxV = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32) / t)
    log_teacher_BxLxV = jax.nn.log_softmax(teacher_BxLxV.astype(jnp.float32) / t)
    soft_BxL = t**2 * jnp.sum(jnp.exp(log_teacher_BxLxV) * (log_teacher_BxLxV - log_student_BxLxV),
                              axis=-1)
    hard_BxL = optax.softmax_cross_entropy_with_integer_labels(
        logits_BxLxV.astype(jnp.float32), batch["targets"])
    alpha = self.config.distill.alpha
    total = alpha * soft_BxL.sum() + (1 - alpha) * hard_BxL.sum()
    return Loss(total=total, weight=jnp.float32(hard_BxL.size),
                metrics={"soft_loss": soft_BxL.sum(), "hard_loss": hard_BxL.sum()})

  def eval_sums(self, params, batch):
    return super().eval_sums(student(params), batch)

  def flops_per_example(self, params) -> float:
    """The student's training FLOPs plus the teacher's forward pass (a third of training)."""
    cfg, L = self.teacher_cfg, self.config.seq_len
    n = gpt.count_params(params[TEACHER]) - params[TEACHER]["embed"]["embedding"].size
    n -= params[TEACHER]["pos_embed"]["embedding"].size if "pos_embed" in params[TEACHER] else 0
    n += cfg.vocab_size * cfg.d_model if cfg.tie_embeddings else 0
    teacher = decoder_flops_per_token(n, cfg.num_layers, L, cfg.d_model) * L / 3
    return super().flops_per_example(student(params)) + teacher

  def finish(self, params, rng):
    return super().finish(student(params), rng)


def student(params: dict) -> dict:
  return {k: v for k, v in params.items() if k != TEACHER}


def _teacher_run(path: str) -> tuple[ml_collections.ConfigDict, str]:
  """(the teacher's config, its newest step's state directory)."""
  # bigjax.load builds runs, and runs build tasks: imported when needed
  from bigjax.load import config_from_dict, find_checkpoint

  directory, step = find_checkpoint(path)
  ckpt = checkpoint.Checkpointer(directory, keep=1, async_save=False)
  try:
    config = config_from_dict(ckpt.read_config(step))
  finally:
    ckpt.close()
  if config.task != "lm" or config.lora.targets:
    raise ConfigError(f"distill.teacher={path} is a task={config.task} run"
                      f"{' with LoRA (merge it first)' if config.lora.targets else ''}; "
                      f"the teacher must be a plain lm run")
  return config, os.path.join(directory, str(step), "state")
