"""The one training loop. Every model family runs through `train_and_evaluate`.

    python -m bigjax.train --config=configs/gpt_tiny.py --workdir=runs/gpt_tiny \
        [--config.optim.lr=3e-4 ...]  # or bare: optim.lr=3e-4 (as `wandb agent` passes them)

It reads top to bottom in the order things happen: check the config, build the mesh and the task,
work out the state's shapes and shardings, create or restore the state, compile the step, loop.
"""

import logging
import math
import os
import signal
import sys
import time
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bigjax import checkpoint, finetune, optim, sharding, sweeps, throughput, tracking
from bigjax.config_checks import ConfigError, check_config, check_workdir
from bigjax.tasks import TASKS

log = logging.getLogger("bigjax")

# Purposes the root key is split into; folding a constant keeps each stream fixed by the seed.
PARAMS_STREAM, DROPOUT_STREAM, SAMPLE_STREAM = 0, 1, 2


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


class NonFiniteLoss(RuntimeError):
  pass


def make_train_step(task, tx, lr_schedule, config):
  """train_step(state, batch) -> (state, metrics): one optimizer update, maybe over microbatches."""
  accum = config.optim.grad_accum_steps
  dropout_key = jax.random.fold_in(jax.random.key(config.seed), DROPOUT_STREAM)
  grad_fn = jax.value_and_grad(lambda p, b, r: task.loss(p, b, r, train=True), has_aux=True)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(dropout_key, state.step)  # a resumed run draws the same dropout
    if accum == 1:
      (loss, aux), grads = grad_fn(state.params, batch, rng)
    else:
      # Microbatch j takes rows j, j+accum, ...: each device keeps its own rows, no data moves.
      micro = jax.tree.map(lambda x: x.reshape(-1, accum, *x.shape[1:]).swapaxes(0, 1), batch)

      def add_microbatch(grad_sum, j):
        mb = jax.tree.map(lambda x: x[j], micro)
        (loss, aux), grads = grad_fn(state.params, mb, jax.random.fold_in(rng, j))
        return jax.tree.map(jnp.add, grad_sum, grads), (loss, aux)

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      grad_sum, (losses, auxes) = jax.lax.scan(add_microbatch, zeros, jnp.arange(accum))
      grads = jax.tree.map(lambda g: g / accum, grad_sum)
      loss, aux = losses.mean(), jax.tree.map(jnp.mean, auxes)

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    out = {"train/loss": loss, "train/grad_norm": optax.tree.norm(grads),
           "train/param_norm": optax.tree.norm(params),
           "train/update_norm": optax.tree.norm(updates), "train/lr": lr_schedule(state.step),
           **{f"train/{k}": v for k, v in aux.items()}}
    if isinstance(opt_state, optax.ApplyIfFiniteState):
      out["train/skipped_steps"] = opt_state.total_notfinite
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), out

  return train_step


def state_layout(task, tx, config, mesh):
  """(abstract state with shardings, state shardings, init function), without allocating.

  Parameter shardings come from the logical axis names the modules attach; optimizer moments
  take the sharding of their parameter, and everything else (counters, factored statistics) is
  replicated.
  """
  def init_params(rng):
    dummy = {k: jnp.zeros(v.shape, v.dtype) for k, v in task.batch_spec(1).items()}
    return task.init(rng, dummy)["params"]

  boxed = jax.eval_shape(init_params, jax.random.key(0))
  param_shardings = sharding.logical_shardings(boxed, mesh, config)
  abstract_params = jax.eval_shape(lambda r: nn.meta.unbox(init_params(r)), jax.random.key(0))
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_shardings = optax.tree_map_params(
      tx, lambda leaf, param, sh: sh if leaf.shape == param.shape else sharding.replicated(mesh),
      abstract_opt, abstract_params, param_shardings,
      transform_non_params=lambda _: sharding.replicated(mesh))
  shardings = TrainState(step=sharding.replicated(mesh), params=param_shardings,
                         opt_state=opt_shardings)

  def init(rng):
    params = nn.meta.unbox(init_params(rng))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  abstract = jax.eval_shape(init, jax.random.key(0))
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  return abstract, shardings, init


def compile_train_step(task, tx, lr_schedule, config, mesh, abstract, shardings):
  """The train step compiled once, ahead of the first batch: explicit shardings, donated state."""
  batch_sharding = sharding.batch_sharding(mesh)
  batch_abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
                    for k, v in task.batch_spec(config.batch_size).items()}
  step = jax.jit(make_train_step(task, tx, lr_schedule, config),
                 in_shardings=(shardings, batch_sharding),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  return step.lower(abstract, batch_abstract).compile()


def evaluate(task, eval_step, params, config, mesh):
  """(scores, images): a task's summary holds numbers and may hold plots (HxWx3 uint8 arrays)."""
  local_batch = config.batch_size // jax.process_count()
  sums = None
  for local in task.eval_data(local_batch, config.eval_steps):
    batch_sums = eval_step(params, sharding.global_batch(local, mesh))
    sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
  summary = {f"eval/{k}": v for k, v in task.eval_summary(jax.device_get(sums)).items()}
  images = {k: v for k, v in summary.items() if isinstance(v, np.ndarray)}
  return {k: v for k, v in summary.items() if k not in images}, images


class BestCheckpoint:
  """The best evaluation so far by `config.early_stop.metric`, with its checkpoint in
  WORKDIR/best, and early stopping after `patience` evaluations in a row without improvement.

  Both survive a restart: the best step and score are read back from WORKDIR/best, and the
  evaluations since the best one are counted up to the step the run resumes from.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, start_step: int):
    es = config.early_stop
    self.metric, self.mode, self.patience = es.metric, es.mode, es.patience
    self.best = self.best_step = self.ckpt = None
    self.stale = 0  # evaluations since the best one
    if not self.metric:
      return
    if self.mode not in ("max", "min"):
      raise ConfigError(f"early_stop.mode={self.mode!r}; use 'max' or 'min'")
    if self.patience and not config.eval_every:
      raise ConfigError("early_stop.patience needs evaluations during training; set eval_every")
    self.ckpt = checkpoint.Checkpointer(f"{workdir}/best", keep=1, best_metric=self.metric,
                                        best_mode=self.mode)
    if self.ckpt.steps():
      self.best_step = self.ckpt.steps()[-1]
      self.best = self.ckpt.metrics(self.best_step)[self.metric]
      self.stale = max(0, start_step // config.eval_every - self.best_step // config.eval_every)

  @property
  def exhausted(self) -> bool:
    return bool(self.patience) and self.stale >= self.patience

  def update(self, step: int, scores: dict, state, data_state: dict, config: dict) -> bool:
    """Records one evaluation, saving the state if it is the best; True when it is time to stop."""
    if not self.metric:
      return False
    if self.metric not in scores:
      raise ConfigError(f"early_stop.metric={self.metric!r} is not reported by this task; use "
                        f"one of {', '.join(scores)}")
    value = scores[self.metric]
    if step == self.best_step:  # a resumed run evaluating its best step again
      return self.exhausted
    if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
      self.best, self.best_step, self.stale = value, step, 0
      self.ckpt.save(step, state, data_state, config, metrics={self.metric: value})
    else:
      self.stale += 1
    return self.exhausted

  def close(self) -> None:
    if self.ckpt:
      self.ckpt.wait()
      self.ckpt.close()


class _StopRequest:
  """SIGTERM/SIGINT (preemption, Ctrl-C) set a flag; the loop saves and exits at the next step."""

  def __init__(self):
    self.signal = None
    self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, frame):
    self.signal = signal.Signals(signum).name

  def restore(self):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def use_compilation_cache(directory: str) -> None:
  """Keeps compiled programs in `directory`: a rerun of an unchanged config loads them instead of
  compiling (the README's throughput section has the time to first step, cold and warm)."""
  if directory:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
  """Trains `config` in `workdir`, resuming from its newest checkpoint; returns the final metrics.

  `devices` restricts the run to a subset (tests compare 1 and 8 devices in one process).
  """
  devices = devices if devices is not None else jax.devices()
  primary = jax.process_index() == 0
  mesh_shape = check_config(config, len(devices), jax.process_count())
  check_workdir(workdir)
  use_compilation_cache(config.compilation_cache_dir)
  tracking.check_wandb(config)
  mesh = sharding.make_mesh(mesh_shape, devices)
  if config.task not in TASKS:
    raise ConfigError(f"task={config.task!r} is unknown; use one of {', '.join(TASKS)}")
  task = TASKS[config.task](config, jax.process_index(), jax.process_count())
  tx, lr_schedule = optim.make_optimizer(config.optim, config.steps,
                                         skip_nonfinite=config.on_nonfinite == "skip")
  tx = finetune.freeze(tx, config.freeze)
  root_key = jax.random.key(config.seed)
  batch_sharding = sharding.batch_sharding(mesh)

  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
    abstract, shardings, init = state_layout(task, tx, config, mesh)

    # Create or restore the state, directly in its sharded layout.
    ckpt = checkpoint.Checkpointer(f"{workdir}/checkpoints", config.keep_checkpoints)
    train_data = task.train_data(config.batch_size // jax.process_count(), config.seed)
    train_iter = iter(train_data)
    restored = ckpt.restore(abstract)
    if restored:
      start_step, state, data_state = restored
      train_iter.set_state(data_state)
    else:
      start_step = 0
      init_key = jax.random.fold_in(root_key, PARAMS_STREAM)
      state = jax.jit(init, out_shardings=shardings)(init_key)
      if config.init_from:  # only a fresh start: the run's own checkpoints win
        state = state.replace(params=finetune.load_pretrained(state.params, abstract.params,
                                                              config.init_from))

    best = BestCheckpoint(config, workdir, start_step)
    compile_start = time.perf_counter()
    train_step = compile_train_step(task, tx, lr_schedule, config, mesh, abstract, shardings)
    compile_seconds = time.perf_counter() - compile_start
    eval_step = jax.jit(task.eval_sums, in_shardings=(shardings.params, batch_sharding),
                        out_shardings=sharding.replicated(mesh))

    flops_per_step = task.flops_per_example(abstract.params) * config.batch_size
    # Throughput counts tokens (seq_len per example) unless the task names its own unit.
    unit, per_example = getattr(task, "throughput_unit", ("tokens", config.seq_len))
    units_per_step = (unit, config.batch_size * per_example)
    peak, peak_source = throughput.peak_flops_per_device(devices[0], jnp.dtype(config.dtype))
    tracker = tracking.Tracker(config, workdir, active=primary, params=abstract.params)
    if primary:
      _print_summary(config, abstract, mesh_shape, train_step, flops_per_step, peak_source,
                     compile_seconds, start_step, units_per_step)
    train_step = tracker.profiled(train_step, first_step=start_step + 1)  # config.profile_steps

    stop = _StopRequest()
    progress = _progress_bar(config, start_step, primary)
    # Lines for the console: through the bar when there is one, so it is not torn; process 0 only.
    say = progress.write if progress else (print if primary else lambda text: None)
    final = {}
    pending = None  # (step, device metrics) of the step before: fetched while the next one runs
    window_start, window_steps = time.perf_counter(), 0
    last_saved = start_step if restored else None
    try:
      early_stop = best.exhausted  # a rerun of a run that already stopped early does not train
      for step in range(start_step + 1, start_step if early_stop else config.steps + 1):
        batch = sharding.global_batch(next(train_iter), mesh)
        state, step_metrics = train_step(state, batch)
        if pending:
          _check_finite(pending, ckpt, last_saved)
        pending, window_steps = (step, step_metrics), window_steps + 1
        if progress:
          progress.update(1)

        if step % config.log_every == 0 or step == config.steps:
          host = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
          seconds = (time.perf_counter() - window_start) / window_steps
          host |= _throughput(units_per_step, seconds, flops_per_step, len(devices), peak)
          tracker.write(step, host)
          if progress:
            progress.set_postfix({"loss": f"{host['train/loss']:.3f}",
                                  f"{unit}/s": f"{host[f'perf/{unit}_per_sec']:.0f}",
                                  "mfu": f"{host['perf/mfu']:.1%}"})
          final |= host
          window_start, window_steps = time.perf_counter(), 0
        if config.eval_every and step % config.eval_every == 0 or step == config.steps:
          scores, images = evaluate(task, eval_step, state.params, config, mesh)
          tracker.write(step, scores)
          for name, image in images.items():
            tracker.write_image(step, name, image)
          final |= scores
          early_stop = best.update(step, scores, state, train_iter.get_state(), config.to_dict())
          say(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
          window_start, window_steps = time.perf_counter(), 0
        if (config.checkpoint_every and step % config.checkpoint_every == 0
            or step == config.steps or stop.signal or early_stop):
          _check_finite(pending, ckpt, last_saved)
          ckpt.save(step, state, train_iter.get_state(), config.to_dict())
          last_saved = step
        if stop.signal:
          ckpt.wait()
          log.warning("%s received: saved step %d in %s; rerun the same command to resume",
                      stop.signal, step, ckpt.directory)
          return final
        if early_stop:
          say(f"early stop at step {step}: {best.metric} has not improved for {best.stale} "
              f"evaluations; the best, {best.best:.4f} at step {best.best_step}, is in "
              f"{best.ckpt.directory}")
          break
      if best.metric:
        final |= {f"best/{best.metric}": best.best, "best/step": best.best_step}
      if pending:
        _check_finite(pending, ckpt, last_saved)
      ckpt.wait()
      tracker.write_checkpoint(last_saved, f"{ckpt.directory}/{last_saved}")
      if progress:
        progress.close()  # before the sample is printed, so the finished bar is not drawn again
      sample_key = jax.random.fold_in(root_key, SAMPLE_STREAM)
      for name, output in task.finish(state.params, sample_key).items():
        if isinstance(output, np.ndarray):  # an image, e.g. VAE samples
          tracker.write_image(last_saved, name, output)
          continue
        tracker.write_text(last_saved, name, output)
        if primary:
          print(f"\n--- {name} ---\n{output}\n", flush=True)
      return final
    finally:
      stop.restore()
      if progress:
        progress.close()
      tracker.close()
      ckpt.close()
      best.close()


def _check_finite(pending, ckpt, last_saved) -> None:
  step, step_metrics = pending
  if "train/skipped_steps" in step_metrics:  # on_nonfinite=skip: such an update was dropped
    return
  # The loss is computed from the parameters before the update, the parameter norm after it:
  # both must be finite before this step's state may be called good (and saved).
  loss, param_norm = (float(step_metrics[k]) for k in ("train/loss", "train/param_norm"))
  if not (math.isfinite(loss) and math.isfinite(param_norm)):
    where = f"step {last_saved} in {ckpt.directory}" if last_saved is not None else "none"
    raise NonFiniteLoss(f"loss is {loss} and parameter norm {param_norm} at step {step}; last "
                        f"good checkpoint: {where}. Lower optim.lr, raise optim.warmup_steps, or "
                        f"set on_nonfinite=skip")


def _throughput(units_per_step, step_seconds, flops_per_step, num_devices,
                peak) -> dict[str, float]:
  unit, count = units_per_step  # ("tokens", batch x seq_len) or ("examples", batch)
  return {"perf/step_seconds": step_seconds,
          f"perf/{unit}_per_sec": count / step_seconds,
          f"perf/{unit}_per_sec_per_device": count / step_seconds / num_devices,
          "perf/mfu": throughput.mfu(flops_per_step, step_seconds, num_devices, peak)}


def _progress_bar(config, start_step, primary):
  if not (primary and config.tracking.progress):
    return None
  from tqdm import tqdm
  return tqdm(total=config.steps, initial=start_step, desc="train", dynamic_ncols=True,
              file=sys.stdout)


def _print_summary(config, abstract, mesh_shape, compiled, flops_per_step, peak_source,
                   compile_seconds, start_step, units_per_step) -> None:
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))
  unit, count = units_per_step
  memory = compiled.memory_analysis()
  lines = [
      f"task {config.task}: {n_params:,} parameters, {flops_per_step / count:.3g} train "
      f"FLOPs/{unit.rstrip('s')}, {count:,} {unit}/step",
      f"mesh {mesh_shape} on {math.prod(mesh_shape.values())} {jax.devices()[0].platform} "
      f"devices "
      f"({jax.process_count()} process(es)); MFU against {peak_source}",
  ]
  if memory is not None:
    size = lambda b: f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"
    lines.append(f"memory per device: arguments {size(memory.argument_size_in_bytes)}, "
                 f"temporaries {size(memory.temp_size_in_bytes)}, "
                 f"outputs {size(memory.output_size_in_bytes)}")
  lines.append(f"compiled the train step in {compile_seconds:.1f}s; "
               + (f"resuming from step {start_step}" if start_step else "starting from step 0"))
  print("\n".join(lines), flush=True)


def main(argv) -> None:
  from absl import flags
  from absl import logging as absl_logging
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax narrates every save at INFO
  config, workdir = flags.FLAGS.config, sweeps.agent_workdir(flags.FLAGS.workdir)
  try:
    sharding.initialize_distributed(config.distributed)
    train_and_evaluate(config, workdir)
  except (ConfigError, NonFiniteLoss) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    reason = str(e).splitlines()[0][:300]
    print(f"error: process {jax.process_index()} lost a peer ({reason}); restart every process "
          f"with the same command to resume from the last checkpoint", file=sys.stderr, flush=True)
    os._exit(3)  # skip JAX's exit barrier: it would wait for the dead peer, then abort noisily


def parse_flags(argv):
  """absl's parsing, with a bad flag or config override reported in one line, not a traceback."""
  from absl import flags
  try:
    argv = flags.FLAGS(argv)
    flags.FLAGS.config.task  # config_flags loads the file lazily: fail here, not mid-run
    return argv
  except Exception as e:  # config_flags raises KeyError/TypeError/ValueError/OSError as it goes
    detail = e.__cause__ or e
    while isinstance(detail, KeyError) and detail.args:  # a KeyError's str() is its repr
      detail = detail.args[0]
    text = str(detail).replace("\\n", "\n").replace("\\'", "'")  # undo repr() escapes
    text = text[1:-1] if text[:1] == text[-1:] == "'" else text
    print("error: " + "; ".join(line.strip() for line in str(text).splitlines() if line.strip()),
          file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  # Bare optim.lr=3e-4 arguments override the config too; config_flags reads sys.argv itself.
  sys.argv = sweeps.overrides_as_flags(sys.argv)
  config_flags.DEFINE_config_file("config", "configs/gpt_tiny.py", "experiment config file")
  flags.DEFINE_string("workdir", "runs/default", "checkpoints, metrics and logs go here")
  app.run(main, flags_parser=parse_flags)
