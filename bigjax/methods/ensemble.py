"""Deep ensembles: K copies of a model trained side by side in one vmapped, compiled step.

    --config.ensemble.members=5   (any array task; the issue's digits MLP in the README)

Member k is exactly the run with seed + k: its own initialisation, dropout, data order and any
other random draw (augmentation, DP noise). The state gains a leading member axis (parameters and
optimizer state, each member's laid out as a single run's would be), training batches gain a
member axis after the rows (each member's own batch, B x K x ...: the rows stay split over the
data-parallel devices), and build vmaps init and the train step over it.

Eval reports each member's metrics (eval/member_k/...) and, for classifiers, the ensemble's, which
predicts the mean of the members' probabilities, with calibration for both: expected calibration
error and negative log-likelihood (the eval loss). For other tasks the top-level metrics are the
members' mean.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from bigjax import metrics
from bigjax.config_checks import ConfigError
from bigjax.step import TrainState
from bigjax.tasks.base import Report, TaskWrapper
from bigjax.tasks.classify import classification_report

# The step counter is one for all members; parameters and optimizer states are per member.
MEMBER_AXES = TrainState(step=None, params=0, opt_state=0)
BATCH_MEMBER_AXIS = 1  # batches are rows x members x ...: the rows stay sharded over devices


def stacked_layout(abstract: TrainState, shardings: TrainState, init, members: int, mesh):
  """A single member's (abstract state, shardings, init) -> the whole ensemble's."""
  def stack(sharding):
    return NamedSharding(mesh, P(None, *sharding.spec))

  shardings = TrainState(step=shardings.step, params=jax.tree.map(stack, shardings.params),
                         opt_state=jax.tree.map(stack, shardings.opt_state))
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          jax.eval_shape(lambda: stacked_init(init, members, 0)), shardings)

  def ensemble_init(seed):
    return stacked_init(init, members, seed)

  return abstract, shardings, ensemble_init


def stacked_init(init, members: int, seed) -> TrainState:
  return jax.vmap(init, out_axes=MEMBER_AXES)(seed + jnp.arange(members))


def vmapped_train_step(train_step, members: int, seed: int):
  """(state, batch) -> (state, metrics): every member's step at once; metrics are the members'
  means (a member's are those of the run with seed + k)."""
  seeds = seed + jnp.arange(members)
  step_all = jax.vmap(train_step, in_axes=(MEMBER_AXES, BATCH_MEMBER_AXIS, 0),
                      out_axes=(MEMBER_AXES, 0))

  def ensemble_step(state, batch):
    state, metrics_K = step_all(state, batch, seeds)
    return state, jax.tree.map(jnp.mean, metrics_K)

  return ensemble_step


class StackedData:
  def __init__(self, datasets):
    self.datasets = datasets

  def __iter__(self):
    return StackedIterator([iter(d) for d in self.datasets])


class StackedIterator:
  """The members' training iterators (seeds seed..seed+K-1), batches stacked on axis 1."""

  def __init__(self, iterators):
    self.iterators = iterators

  def __iter__(self):
    return self

  def __next__(self):
    batches = [next(it) for it in self.iterators]
    return {k: np.stack([b[k] for b in batches], axis=BATCH_MEMBER_AXIS) for k in batches[0]}

  def get_state(self) -> dict:
    return {"members": [it.get_state() for it in self.iterators]}

  def set_state(self, state: dict) -> None:
    for it, member_state in zip(self.iterators, state["members"]):
      it.set_state(member_state)


class EnsembleTask(TaskWrapper):
  """`ensemble.members` copies of the inner task's model."""

  def __init__(self, inner, members: int):
    super().__init__(inner)
    self._members = members
    self.classifies = inner.config.task == "classify"
    names = (*inner.metric_names, "ece") if self.classifies else inner.metric_names
    ensemble_names = (*names, "mean_member_accuracy") if self.classifies else names
    self._metric_names = (*ensemble_names,
                          *(f"member_{k}/{name}" for k in range(members) for name in names))

  @property
  def members(self):
    return self._members

  @property
  def metric_names(self):
    return self._metric_names

  def batch_spec(self, batch_size):
    spec = self.inner.batch_spec(batch_size)
    return {k: jax.ShapeDtypeStruct((v.shape[0], self._members, *v.shape[1:]), v.dtype)
            for k, v in spec.items()}

  def eval_batch_spec(self, batch_size):
    return self.inner.eval_batch_spec(batch_size)  # every member reads the same eval batch

  def train_data(self, local_batch, seed):
    return StackedData([self.inner.train_data(local_batch, seed + k)
                        for k in range(self._members)])

  def eval_sums(self, params_K, batch):
    """The members' sums (leading axis K); for a classifier, also the ensemble's."""
    members = jax.vmap(self.inner.eval_sums, in_axes=(0, None))(params_K, batch)
    if not self.classifies:
      return {"members": members}
    logits_KxBxC = jax.vmap(lambda p: self.inner.model.apply({"params": p}, batch["image"]))(
        params_K).astype(jnp.float32)
    member_calibration = jax.vmap(metrics.calibration_sums, in_axes=(0, None, None))(
        logits_KxBxC, batch["label"], batch["weight"])
    # The ensemble predicts the mean probability; its log is a valid logit vector for softmax.
    log_mean_BxC = jax.nn.logsumexp(jax.nn.log_softmax(logits_KxBxC), axis=0) - jnp.log(
        self._members)
    return {"members": members, "member_calibration": member_calibration,
            "ensemble": metrics.classification_sums(log_mean_BxC, batch["label"],
                                                    batch["weight"]),
            "calibration": metrics.calibration_sums(log_mean_BxC, batch["label"],
                                                    batch["weight"])}

  def eval_summary(self, sums) -> Report:
    scalars = {}
    member_reports = []
    for k in range(self._members):
      report = self.inner.eval_summary(jax.tree.map(lambda x: x[k], sums["members"]))
      if self.classifies:
        report.scalars["ece"] = metrics.calibration_summary(
            jax.tree.map(lambda x: x[k], sums["member_calibration"]))
      member_reports.append(report.scalars)
      scalars |= {f"member_{k}/{name}": value for name, value in report.scalars.items()}
    if not self.classifies:
      means = {name: float(np.mean([r[name] for r in member_reports]))
               for name in member_reports[0]}
      return Report({**means, **scalars})
    report = classification_report(sums["ensemble"])
    report.scalars["ece"] = metrics.calibration_summary(sums["calibration"])
    report.scalars["mean_member_accuracy"] = float(np.mean([r["accuracy"]
                                                            for r in member_reports]))
    return Report({**report.scalars, **scalars}, report.images)

  def flops_per_example(self, params_K):
    member = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), params_K)
    return self._members * self.inner.flops_per_example(member)

  def finish(self, params_K, rng):
    """The first member's outputs (a sample, image grids)."""
    return self.inner.finish(jax.tree.map(lambda x: x[0], params_K), rng)


def check(config) -> None:
  if config.ensemble.members < 1:
    raise ConfigError(f"ensemble.members={config.ensemble.members} must be at least 1 "
                      f"(1 = a single model)")
