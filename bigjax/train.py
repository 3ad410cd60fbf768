"""The one training loop. Every model family runs through `train_and_evaluate`.

    python -m bigjax.train --config=configs/gpt_tiny.py --workdir=runs/gpt_tiny \
        [--config.optim.lr=3e-4 ...]  # or bare: optim.lr=3e-4 (as `wandb agent` passes them)

`bigjax.build` assembles the run; this file drives it, top to bottom in the order things happen:
restore or initialise, step, log, evaluate, save, wrap up.
"""

import logging
import math
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections

from bigjax import build, checkpoint, cli, config_checks, console, multihost, sharding, sweeps
from bigjax import throughput, tracking
from bigjax import workdir as workdir_lib
from bigjax.data.prefetch import Prefetcher
from bigjax.step import SAMPLE_STREAM
from bigjax.tasks.base import Report

log = logging.getLogger("bigjax")


class NonFiniteLoss(RuntimeError):
  pass


class Interrupted(KeyboardInterrupt):
  """A stop signal before the first step (while building, compiling, restoring)."""


class StopRequest:
  """SIGTERM/SIGINT (preemption, Ctrl-C) set a flag; the loop saves and exits at the next step.

  Before the first step there is nothing to save, so a signal ends the run at once (`Interrupted`)
  rather than after a compile that may take minutes; what is on disk then is what a kill would
  leave, which a rerun resumes from. Handlers are installed only on the main thread (Python allows
  no other), so the loop also runs from a notebook thread. With several processes, `agreed()` is
  true on all of them at the same step as soon as one received a signal, so they save together.
  """

  def __init__(self):
    self.signal = None
    self._started = False
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, frame):
    self.signal = signal.Signals(signum).name
    if not self._started:
      self.start()

  def start(self) -> None:
    """Called before the first step; raises Interrupted after a signal (again, if JAX's C++ code
    dropped the exception the handler raised inside its tracing)."""
    if self.signal:  # exit status: that of a process the signal killed
      raise Interrupted(f"{self.signal} received before the first step; nothing was lost: rerun "
                        f"the same command to start (or resume)", 128 + signal.Signals[self.signal])
    self._started = True

  def agreed(self) -> bool:
    return multihost.any_process(self.signal is not None)

  def restore(self):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def evaluate(run: build.Run, eval_step, params) -> Report:
  """The task's metrics over its eval batches, as "eval/NAME" scalars and images."""
  sums = None
  for local in run.task.eval_data(run.local_batch_size, run.config.eval_steps):
    batch_sums = eval_step(params, run.global_batch(local))
    sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
  report = run.task.eval_summary(jax.device_get(sums))
  return Report({f"eval/{k}": v for k, v in report.scalars.items()},
                {f"eval/{k}": v for k, v in report.images.items()})


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
    self.ckpt = checkpoint.Checkpointer(f"{workdir}/best", keep=1, best_metric=self.metric,
                                        best_mode=self.mode)
    if found := self.ckpt.newest_scored(self.metric):
      self.best_step, self.best = found
      if config.eval_every:  # without evaluations during training there is nothing to count
        self.stale = max(0, start_step // config.eval_every - self.best_step // config.eval_every)

  @property
  def exhausted(self) -> bool:
    return bool(self.patience) and self.stale >= self.patience

  def update(self, step: int, scores: dict, state, data_state: dict, config: dict) -> bool:
    """Records one evaluation, saving the state if it is the best; True when it is time to stop."""
    if not self.metric or step == self.best_step:  # (a resumed run evaluating its best again)
      return self.exhausted
    value = scores[self.metric]
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


class StepMetrics:
  """Each step's metrics, fetched while the next step runs (the device never waits for Python).

  Fetching checks that the step left a finite state before it may be saved or logged; every
  `log_every` steps the metrics and the throughput since the last log go to the tracker.
  """

  def __init__(self, run: build.Run, tracker: tracking.Tracker, ckpt, progress):
    self.run, self.tracker, self.ckpt, self.progress = run, tracker, ckpt, progress
    self.pending = None  # (step, metrics still on device)
    self.last_saved = None  # the newest step known to be finite and saved
    self.latest: dict[str, float] = {}
    self.peak = throughput.peak_flops_per_device(run.devices[0], jnp.dtype(run.config.dtype))[0]
    self._mark = (time.perf_counter(), run.config.steps)  # set for real by restart_window

  def push(self, step: int, device_metrics) -> None:
    """Hands over step `step`'s metrics and fetches the previous step's."""
    self.flush()
    self.pending = (step, device_metrics)
    if self.progress:
      self.progress.update(1)

  def flush(self) -> None:
    """Fetches the pending step's metrics: stops on a non-finite state, logs on a log step."""
    if self.pending is None:
      return
    step, device_metrics = self.pending
    self.pending = None
    host = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    self._check_finite(step, host)
    self.ckpt.check()  # a failed background save stops the run now, not at the next save
    if step % self.run.config.log_every == 0 or step == self.run.config.steps:
      started, since_step = self._mark
      host |= self._throughput((time.perf_counter() - started) / max(step - since_step, 1))
      self.tracker.write(step, host)
      self.latest |= host
      self.restart_window(step)
      if self.progress:
        unit = self.run.units_per_step[0]
        self.progress.set_postfix({"loss": f"{host['train/loss']:.3f}",
                                   f"{unit}/s": f"{host[f'perf/{unit}_per_sec']:.0f}",
                                   "mfu": f"{host['perf/mfu']:.1%}"})

  def restart_window(self, step: int) -> None:
    """Throughput counts from now, when `step` is done (also after an evaluation: eval time is
    not training time)."""
    self._mark = (time.perf_counter(), step)

  def _check_finite(self, step: int, host: dict[str, float]) -> None:
    # The loss is of the parameters before the update, the norm after it. A skipped update
    # (on_nonfinite=skip) left the parameters as they were: only their norm counts.
    skipped = "train/skipped_steps" in host
    if math.isfinite(host["train/param_norm"]) and (skipped or math.isfinite(host["train/loss"])):
      return
    saved = self.last_saved
    where = "none" if saved is None else f"step {saved} in {self.ckpt.directory}"
    cause = f"after {self.run.config.max_consecutive_skips} skips in a row, " if skipped else ""
    raise NonFiniteLoss(f"{cause}loss is {host['train/loss']} and parameter norm "
                        f"{host['train/param_norm']} at step {step}; last good checkpoint: "
                        f"{where}. Lower optim.lr, raise optim.warmup_steps"
                        f"{'' if skipped else ', or set on_nonfinite=skip'}")

  def _throughput(self, step_seconds: float) -> dict[str, float]:
    unit, count = self.run.units_per_step
    devices = len(self.run.devices)
    return {"perf/step_seconds": step_seconds,
            f"perf/{unit}_per_sec": count / step_seconds,
            f"perf/{unit}_per_sec_per_device": count / step_seconds / devices,
            "perf/mfu": throughput.mfu(self.run.flops_per_step, step_seconds, devices, self.peak)}


def restore(run: build.Run, ckpt, train_iter):
  """(start step, state) of the newest readable checkpoint, read into the run's layout before
  anything compiles, with `train_iter` moved to its data position; (0, None) if there is none."""
  restored = ckpt.restore(run.checkpointed(run.abstract), train_iter)
  return (0, None) if restored is None else restored[:2]


def due(step: int, every: int, last: int) -> bool:
  return bool(every) and step % every == 0 or step == last


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None,
                       resume_with_changes: bool = False) -> dict:
  """Trains `config` in `workdir`, resuming from its newest checkpoint; returns the final metrics.

  `devices` restricts the run to a subset (tests compare 1 and 8 devices in one process).
  `resume_with_changes` lets a resume change keys that configs/schema.py does not list as safe.
  """
  stop = StopRequest()  # first: Ctrl-C while compiling ends cleanly
  try:
    config = config_checks.locked(config)
    with workdir_lib.claim(workdir):  # the only run in workdir while it runs
      tracking.check_wandb(config)
      run = build.build(config, devices)
      workdir_lib.check_resume(workdir, config, resume_with_changes)
      return _train(run, workdir, stop)
  finally:
    stop.restore()


def _train(run: build.Run, workdir: str, stop: StopRequest) -> dict:
  config, primary = run.config, jax.process_index() == 0
  ckpt = checkpoint.Checkpointer(f"{workdir}/checkpoints", config.keep_checkpoints)
  batches = Prefetcher(iter(run.task.train_data(run.local_batch_size, config.seed)),
                       run.global_batch)
  start_step, state = restore(run, ckpt, batches)
  best = BestCheckpoint(config, workdir, start_step)
  if start_step >= config.steps or best.exhausted:
    for closable in (batches, ckpt, best):
      closable.close()
    final = tracking.final_metrics(workdir, start_step)
    if best.metric:
      final |= {f"best/{best.metric}": best.best, "best/step": best.best_step}
    if primary:
      print(f"{workdir} finished at step {start_step}: {_format(final)}", flush=True)
    return final
  if primary:
    print(f"compiling the {config.task} steps...", flush=True)
  # A resumed run needs no initialiser, unless its checkpoint is not the whole state (LoRA's).
  programs = run.compile(init=state is None or not run.saves_everything)
  state = run.fresh_state(programs) if state is None else run.resumed(programs, state)
  stop.start()
  tracker = tracking.Tracker(config, workdir, active=primary, params=run.abstract.params,
                             start_step=start_step)
  progress = _progress_bar(config, start_step, primary)
  metrics = StepMetrics(run, tracker, ckpt, progress)
  if primary:
    _print_summary(run, programs, start_step)
  metrics.restart_window(start_step)
  train_step = tracker.profiled(programs.train_step, first_step=start_step + 1)
  try:
    step, early_stop = start_step, False
    while step < config.steps and not early_stop:
      step += 1
      state, step_metrics = train_step(state, next(batches))
      metrics.push(step, step_metrics)
      if due(step, config.eval_every, config.steps):
        early_stop = _evaluate(run, programs, state, step, best, batches, metrics, progress)
      stopping = stop.agreed()
      if due(step, config.checkpoint_every, config.steps) or stopping or early_stop:
        metrics.flush()  # a non-finite state is never saved
        ckpt.save(step, run.checkpointed(state), batches.get_state(), config.to_dict())
        metrics.last_saved = step
      if stopping:
        ckpt.wait()
        log.warning("%s: saved step %d in %s; rerun the same command to resume",
                    f"{stop.signal} received" if stop.signal else
                    "another process received a stop signal", step, ckpt.directory)
        return metrics.latest
    metrics.flush()
    return _wrap_up(run, state, ckpt, tracker, best, metrics, progress, step)
  finally:
    batches.close()
    for closable in (progress, tracker, ckpt, best):
      if closable:
        closable.close()


def _evaluate(run, programs, state, step, best, batches, metrics, progress) -> bool:
  """Evaluates, logs, keeps the best checkpoint; True when early stopping says to stop."""
  metrics.flush()  # the evaluation waits for this step anyway
  report = evaluate(run, programs.eval_step.result(), state.params)
  metrics.tracker.write(step, report.scalars)
  for name, image in report.images.items():
    metrics.tracker.write_image(step, name, image)
  metrics.latest |= report.scalars
  saved = run.checkpointed(state), batches.get_state(), run.config.to_dict()
  early_stop = best.update(step, report.scalars, *saved)
  _say(progress, f"step {step}: {_format(report.scalars)}")
  if early_stop:
    _say(progress, f"early stop at step {step}: {best.metric} has not improved for "
         f"{best.stale} evaluations; the best, {best.best:.4f} at step {best.best_step}, is in "
         f"{best.ckpt.directory}")
  metrics.restart_window(step)
  return early_stop


def _wrap_up(run, state, ckpt, tracker, best, metrics, progress, step) -> dict:
  """Waits for the last save, then the task's final outputs (a text sample, image grids)."""
  final = metrics.latest
  if best.metric:
    final |= {f"best/{best.metric}": best.best, "best/step": best.best_step}
  ckpt.wait()
  tracker.write_checkpoint(step, f"{ckpt.directory}/{step}")
  if progress:
    progress.close()  # before the sample is printed, so the finished bar is not drawn again
  outputs = run.task.finish(state.params, jax.random.fold_in(jax.random.key(run.config.seed),
                                                            SAMPLE_STREAM))
  for name, image in outputs.images.items():
    tracker.write_image(step, name, image)
  for name, text in outputs.texts.items():
    tracker.write_text(step, name, text)
    if jax.process_index() == 0:
      print(f"\n--- {name} ---\n{text}\n", flush=True)
  return final


def _format(scalars: dict) -> str:
  """The headline values; per-class ones (eval/f1/CLASS) go to the trackers only."""
  return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                   for k, v in scalars.items() if k.count("/") < 2)


def _say(progress, text: str) -> None:
  """A console line on process 0, through the bar when there is one, so it is not torn."""
  if jax.process_index() == 0:
    (progress.write if progress else print)(text)


def _progress_bar(config, start_step, primary):
  if not (primary and config.tracking.progress):
    return None
  from tqdm import tqdm
  return tqdm(total=config.steps, initial=start_step, desc="train", dynamic_ncols=True,
              file=sys.stdout)


def _print_summary(run: build.Run, programs: build.Programs, start_step: int) -> None:
  unit, count = run.units_per_step
  peak_source = throughput.peak_flops_per_device(run.devices[0], jnp.dtype(run.config.dtype))[1]
  memory = programs.train_step.memory_analysis()
  lines = [
      f"task {run.config.task}: {run.num_params:,} parameters ({run.num_trainable:,} trainable), "
      f"{run.flops_per_step / count:.3g} train FLOPs/{unit.rstrip('s')}, {count:,} {unit}/step",
      f"mesh {run.mesh_shape} on {len(run.devices)} {run.devices[0].platform} devices "
      f"({jax.process_count()} process(es)); MFU against {peak_source}",
  ]
  if memory is not None:
    size = lambda b: f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"
    lines.append(f"memory per device: arguments {size(memory.argument_size_in_bytes)}, "
                 f"temporaries {size(memory.temp_size_in_bytes)}, "
                 f"outputs {size(memory.output_size_in_bytes)}")
  lines.append(f"compiled in {programs.compile_seconds:.1f}s; "
               + (f"resuming from step {start_step}" if start_step else "starting from step 0"))
  print("\n".join(lines), flush=True)


def main(_) -> None:
  from absl import flags
  console.quiet()
  config, workdir = flags.FLAGS.config, sweeps.agent_workdir(flags.FLAGS.workdir)
  with cli.one_line_errors(NonFiniteLoss, checkpoint.CheckpointError):
    try:
      config_checks.check_values(config)  # before joining a job with it
      sharding.initialize_distributed(config.distributed)
      train_and_evaluate(config, workdir, resume_with_changes=flags.FLAGS.resume_with_changes)
    except Interrupted as e:
      cli.fail(*e.args)
    except jax.errors.JaxRuntimeError as e:
      if jax.process_count() == 1:
        raise
      # os._exit inside: JAX's exit barrier would wait for the dead peer, then abort noisily.
      cli.fail(f"process {jax.process_index()} lost a peer ({str(e).splitlines()[0][:300]}); "
               f"restart every process with the same command to resume from the last checkpoint",
               status=3)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  # Bare optim.lr=3e-4 arguments override the config too; config_flags reads sys.argv itself.
  sys.argv = sweeps.overrides_as_flags(sys.argv)
  config_flags.DEFINE_config_file("config", "configs/gpt_tiny.py", "experiment config file")
  flags.DEFINE_string("workdir", "runs/default", "checkpoints, metrics and logs go here")
  flags.DEFINE_bool("resume_with_changes", False, "resume although the config differs from the "
                    "stored one in keys configs/schema.py does not list as safe to change")
  app.run(main, flags_parser=cli.parse_flags)
