"""Differentially private SGD: per-example clipping and Gaussian noise (jax-privacy), with the
privacy spent accounted by dp-accounting.

    --config.privacy.clip_norm=1.0 --config.privacy.noise_multiplier=1.1 \
        --config.privacy.expected_batch_size=64 [--config.privacy.target_epsilon=8]

Any array task (classify, regress, reconstruct) becomes DP-SGD (Abadi et al., 2016):
- Sampling: every step, each training example joins the batch independently with probability
  q = expected_batch_size / N (Poisson sampling, what the accountant assumes), drawn on the host
  from (seed, process, step), so a resumed run draws the same batches. The `batch_size` rows of a
  batch hold the draw; weight-0 rows pad it. A draw larger than the rows would have to be cut,
  which the analysis does not cover: before anything compiles, the chance of that over the whole
  run (a binomial tail) must be below delta / 100, and epsilon is reported at delta minus it.
- Update: the sum of per-example gradients, each clipped to L2 norm `clip_norm`
  (jax_privacy.clipped_grad; padding rows contribute zero), plus N(0, (noise_multiplier *
  clip_norm)^2) noise per coordinate (jax_privacy's Gaussian privatizer, keyed by the step), divided
  by the expected batch size (a public constant, unlike the drawn size). The optimizer then
  applies it as any gradient (momentum and Adam are post-processing).
- Accounting: add-or-remove-one-example adjacency; the RDP accountant of dp-accounting composes one
  Poisson-subsampled Gaussian per step; train/epsilon is the epsilon spent after each step, at
  `delta`. With `target_epsilon`, the noise multiplier is calibrated to reach it at the last step.

With federated training (config.federated) the unit of privacy is a client instead: see
methods/federated.py.
"""

import logging

import dp_accounting
import jax
import jax.numpy as jnp
import jax_privacy
import ml_collections
import numpy as np
from jax_privacy import noise_addition
from scipy import stats

from bigjax.config_checks import ConfigError
from bigjax.tasks.base import TaskWrapper

log = logging.getLogger(__name__)
TAIL_SHARE_OF_DELTA = 0.01  # what the chance of a cut Poisson draw may take from delta


def enabled(config: ml_collections.ConfigDict) -> bool:
  return config.privacy.clip_norm > 0


# Accounting.


def epsilons(step_event: dp_accounting.DpEvent, step_counts, delta: float,
             neighboring=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE) -> np.ndarray:
  """epsilon at `delta` after each number of steps of `step_counts` (RDP accountant).

  Renyi DP adds up over steps: t steps spend t times one step's RDP at every order, exactly what
  composing the event t times gives, so one step is accounted once.
  """
  accountant = dp_accounting.rdp.RdpAccountant(neighboring_relation=neighboring)
  accountant.compose(step_event)
  one_step = np.asarray(accountant.rdp)
  return np.array([dp_accounting.rdp.compute_epsilon(accountant.orders, t * one_step, delta)[0]
                   if t else 0.0 for t in step_counts])


def calibrate_noise(make_step_event, steps: int, target_epsilon: float, delta: float,
                    neighboring=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE) -> float:
  """The smallest noise multiplier whose `steps` steps spend at most `target_epsilon`."""
  return dp_accounting.calibrate_dp_mechanism(
      lambda: dp_accounting.rdp.RdpAccountant(neighboring_relation=neighboring),
      lambda sigma: dp_accounting.SelfComposedDpEvent(make_step_event(sigma), steps),
      target_epsilon, delta)


def poisson_step(sampling_rate: float, noise_multiplier: float) -> dp_accounting.DpEvent:
  return dp_accounting.PoissonSampledDpEvent(sampling_rate,
                                             dp_accounting.GaussianDpEvent(noise_multiplier))


def cut_draw_chance(examples: int, rows: int, sampling_rate: float, draws: int) -> float:
  """Union bound on any of `draws` Poisson draws (Binomial(examples, rate)) exceeding `rows`."""
  return draws * float(stats.binom.sf(rows, examples, sampling_rate))


# Sampling.


class PoissonBatches:
  """This process's Poisson-sampled batches, padded to `rows` with weight-0 rows; checkpointed
  as the number of batches drawn."""

  def __init__(self, examples, rows: int, sampling_rate: float, seed: int, process_index: int):
    self.examples, self.rows, self.rate = examples, rows, sampling_rate
    self.seed, self.process_index, self.drawn = seed, process_index, 0
    self.padding = {k: np.zeros_like(v) for k, v in examples[0].items()}  # weight 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self.process_index, self.drawn])
    self.drawn += 1
    chosen = np.flatnonzero(rng.random(len(self.examples)) < self.rate)
    if len(chosen) > self.rows:  # the checked, negligible tail: keep a uniform subset
      chosen = np.sort(rng.choice(chosen, self.rows, replace=False))
    rows = [self.examples[int(i)] for i in chosen]
    rows += [self.padding] * (self.rows - len(rows))
    return {k: np.stack([row[k] for row in rows]) for k in rows[0]}

  def get_state(self) -> dict:
    return {"drawn": self.drawn}

  def set_state(self, state: dict) -> None:
    self.drawn = state["drawn"]


class PoissonData:
  def __init__(self, *args):
    self.args = args

  def __iter__(self):
    return PoissonBatches(*self.args)


# The update.


def noisy_clipped_sum(loss, params, batch, rng, clip_norm: float, stddev: float,
                      microbatches: int = 1):
  """(sum of per-example gradients clipped to `clip_norm` + N(0, stddev^2) noise, per-example
  Loss sums, per-example gradient norms before clipping). Rows of weight 0 contribute nothing."""
  example_key, noise_key = jax.random.split(rng)
  per_example = lambda p, example, key: (lambda s: (s.total, s))(loss(p, example, key))
  rows = batch["weight"].shape[0]
  clipped = jax_privacy.clipped_grad(
      per_example, has_aux=True, l2_clip_norm=clip_norm, batch_argnums=1, prng_argnum=2,
      return_grad_norms=True, microbatch_size=rows // microbatches if microbatches > 1 else None)
  grad_sum, aux = clipped(params, batch, example_key, is_padding_example=batch["weight"] == 0)
  privatizer = noise_addition.gaussian_privatizer(stddev=stddev, prng_key=noise_key)
  noisy, _ = privatizer.update(grad_sum, privatizer.init(grad_sum))
  return noisy, aux.aux, aux.grad_norms


class PrivateTask(TaskWrapper):
  """DP-SGD around an array task (see the module docstring)."""

  def __init__(self, inner, config: ml_collections.ConfigDict):
    super().__init__(inner)
    p = config.privacy
    self.clip_norm = p.clip_norm
    self.expected = p.expected_batch_size
    self.microbatches = config.optim.grad_accum_steps
    num_examples = len(inner.train_examples)
    self.sampling_rate = self.expected / num_examples
    share = -(-num_examples // inner.process_count)
    draws = config.steps * inner.process_count
    cut = cut_draw_chance(share, config.batch_size // inner.process_count, self.sampling_rate,
                          draws)
    if cut > TAIL_SHARE_OF_DELTA * p.delta:
      rows = next(r for r in range(self.expected, share + 1)
                  if cut_draw_chance(share, r, self.sampling_rate, draws)
                  <= TAIL_SHARE_OF_DELTA * p.delta)
      raise ConfigError(f"batch_size={config.batch_size} rows may not hold a Poisson draw of "
                        f"mean {self.expected} (chance {cut:.2g} over the run, above delta/100); "
                        f"use batch_size >= {rows * inner.process_count} or a smaller "
                        f"privacy.expected_batch_size")
    self.noise_multiplier = p.noise_multiplier
    if p.target_epsilon:
      self.noise_multiplier = calibrate_noise(lambda s: poisson_step(self.sampling_rate, s),
                                              config.steps, p.target_epsilon, p.delta - cut)
      log.warning("privacy: noise multiplier %.4f spends epsilon %.3g at delta %.3g in %d steps",
                  self.noise_multiplier, p.target_epsilon, p.delta, config.steps)
    # (Written out: 0 * inf, no noise with no clipping, would be NaN.)
    self.noise_stddev = self.noise_multiplier * self.clip_norm if self.noise_multiplier else 0.0
    self.epsilon_after = None  # no noise: no privacy to account
    if self.noise_multiplier:
      self.epsilon_after = jnp.asarray(epsilons(
          poisson_step(self.sampling_rate, self.noise_multiplier), range(config.steps + 1),
          p.delta - cut), jnp.float32)

  def train_data(self, local_batch, seed):
    share = self.inner.train_examples[self.process_index::self.process_count]
    return PoissonData(share, local_batch, self.sampling_rate, seed, self.process_index)

  def gradients(self, loss, params, batch, rng, step):
    """(scalars, noisy gradient): the noisy clipped sum over the expected batch size. The loss
    and metrics logged are means over the drawn examples (not private: for watching a run)."""
    noisy, sums, norms_B = noisy_clipped_sum(loss, params, batch, rng, self.clip_norm,
                                             self.noise_stddev, self.microbatches)
    real_B = batch["weight"] > 0
    drawn = jnp.maximum(sums.weight.sum(), 1.0)
    scalars = {"loss": sums.total.sum() / drawn,
               **{k: v.sum() / drawn for k, v in sums.metrics.items()},
               "clipped_share": ((norms_B > self.clip_norm) & real_B).sum() / drawn,
               "drawn_batch": real_B.sum().astype(jnp.float32)}
    if self.epsilon_after is not None:
      scalars["epsilon"] = self.epsilon_after[jnp.minimum(step + 1, len(self.epsilon_after) - 1)]
    return scalars, jax.tree.map(lambda g: g / self.expected, noisy)


def check(config: ml_collections.ConfigDict, task) -> None:
  """Bad settings, one line each, before anything compiles."""
  p = config.privacy
  for key in ("noise_multiplier", "clip_norm", "target_epsilon"):
    if p[key] < 0:
      raise ConfigError(f"privacy.{key}={p[key]} must be >= 0")
  if (p.noise_multiplier or p.target_epsilon) and not p.clip_norm:
    raise ConfigError("privacy.noise_multiplier/target_epsilon need privacy.clip_norm > 0: "
                      "noise is only private relative to a bounded per-example gradient")
  if p.target_epsilon and p.noise_multiplier:
    raise ConfigError("set privacy.target_epsilon or privacy.noise_multiplier, not both")
  if not enabled(config):
    return
  if p.clip_norm == float("inf") and (p.noise_multiplier or p.target_epsilon):
    raise ConfigError("privacy.clip_norm=inf bounds nothing, so no noise makes it private; use a "
                      "finite clip norm")
  if not 0 < p.delta < 1:
    raise ConfigError(f"privacy.delta={p.delta} must be in (0, 1)")
  if len(task.phases) > 1:
    raise ConfigError(f"privacy.* trains a task with one optimizer; task={config.task} has "
                      f"{len(task.phases)} phases")
  if config.federated.clients:
    return  # client-level privacy: methods/federated.py checks its own sampling
  if not hasattr(task, "train_examples"):
    raise ConfigError(f"privacy.* Poisson-samples an array task's examples (classify, regress, "
                      f"reconstruct); task={config.task} is not one")
  if not 0 < p.expected_batch_size <= config.batch_size:
    raise ConfigError(f"privacy.expected_batch_size={p.expected_batch_size}: Poisson sampling's "
                      f"mean batch must be in 1..batch_size ({config.batch_size} rows hold it)")
  if config.augment.mixup_alpha or config.augment.cutmix_alpha:
    raise ConfigError("augment.mixup_alpha/cutmix_alpha blend two examples, which per-example "
                      "clipping cannot bound; turn mixing off with privacy")
