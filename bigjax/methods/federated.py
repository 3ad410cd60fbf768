"""Federated averaging (FedAvg, McMahan et al., 2017) over simulated clients, one round per step.

    python -m bigjax.train --config=configs/digits_federated.py --workdir=runs/digits_fedavg

The training split is divided among `federated.clients` clients once (a fixed seed, so every run
sees the same clients): `split="iid"` deals examples out evenly at random; `split="dirichlet"`
gives each class's examples to the clients in proportions drawn from Dirichlet(alpha), the usual
non-IID benchmark (Hsu et al., 2019: alpha = 0.1 leaves most clients a class or two).

A train step is one round, in one jitted program: `clients_per_round` clients are drawn uniformly
without replacement (the host draws them from (seed, round)); a round's batch holds each one's
whole local data, padded with weight-0 rows (clients x M x ..., the clients split over the
data-parallel devices). The clients run at once (vmapped), each for `local_epochs` epochs of plain
SGD (step size `client_lr`) over its own data in shuffled local batches of `batch_size` (scanned;
a client with less data than the largest takes fewer real steps, the rest are no-ops). Their
parameter changes are averaged, weighted by their numbers of examples, and the negated average is
the gradient the run's optimizer (`config.optim`, the server optimizer) applies: SGD at learning
rate 1 is FedAvg; Adam gives FedAdam. With one local step of the whole client data, equal client
sizes and every client in the round, a round is exactly one step of centralized SGD.

With privacy (config.privacy.clip_norm > 0) the unit of privacy is a client (DP-FedAvg, McMahan et
al., 2018): each client's change is clipped to `clip_norm` (jax_privacy.clipped_fun), the clipped
changes are summed with equal weights, Gaussian noise of std noise_multiplier * clip_norm is added
and the sum divided by clients_per_round. The accountant composes one Gaussian mechanism on a
fixed-size sample without replacement of the clients per round, under replace-one-client
adjacency (the number of clients is public): replacing one client moves the sum of clipped changes
by at most twice the clip norm, the sensitivity the noise is measured against.
"""

import dp_accounting
import jax
import jax.numpy as jnp
import jax_privacy
import ml_collections
import numpy as np
from jax_privacy import noise_addition

from bigjax.config_checks import ConfigError
from bigjax.methods import privacy
from bigjax.step import mean_gradient
from bigjax.tasks.base import TaskWrapper

SPLITS = ("iid", "dirichlet")
SPLIT_SEED = 0  # the clients' data never changes with config.seed
REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE


def split_clients(labels: np.ndarray, clients: int, split: str, alpha: float,
                  seed: int = SPLIT_SEED) -> list[np.ndarray]:
  """Each client's example indices (sorted): IID or Dirichlet(alpha) over each class."""
  rng = np.random.default_rng(seed)
  if split == "iid":
    return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), clients)]
  owned = [[] for _ in range(clients)]
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    shares = rng.dirichlet(np.full(clients, alpha))
    cuts = (np.cumsum(shares)[:-1] * len(members)).round().astype(int)
    for client, part in enumerate(np.split(members, cuts)):
      owned[client].extend(part)
  return [np.sort(np.array(indices, dtype=int)) for indices in owned]


class Rounds:
  """This process's share of each round's clients, every client's data padded to M rows;
  checkpointed as the number of rounds drawn."""

  def __init__(self, arrays: dict, clients: list[np.ndarray], per_round: int, rows: int,
               seed: int, process_index: int, process_count: int):
    self.arrays, self.clients, self.per_round, self.rows = arrays, clients, per_round, rows
    self.seed, self.drawn = seed, 0
    self.mine = slice(process_index * per_round // process_count,
                      (process_index + 1) * per_round // process_count)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self.drawn])
    self.drawn += 1
    chosen = rng.choice(len(self.clients), self.per_round, replace=False)[self.mine]
    index = np.zeros((len(chosen), self.rows), int)
    weight = np.zeros((len(chosen), self.rows), np.float32)
    for row, client in enumerate(chosen):
      own = self.clients[client]
      index[row, :len(own)], weight[row, :len(own)] = own, 1.0
    batch = {k: v[index] for k, v in self.arrays.items()}
    return {**batch, "weight": weight}

  def get_state(self) -> dict:
    return {"drawn": self.drawn}

  def set_state(self, state: dict) -> None:
    self.drawn = state["drawn"]


class RoundData:
  def __init__(self, *args):
    self.args = args

  def __iter__(self):
    return Rounds(*self.args)


class FederatedTask(TaskWrapper):
  """FedAvg around an array task (see the module docstring)."""

  def __init__(self, inner, config: ml_collections.ConfigDict):
    super().__init__(inner)
    fed = self.fed = config.federated
    examples = inner.train_examples
    self.arrays = {k: np.stack([examples[i][k] for i in range(len(examples))])
                   for k in examples[0] if k != "weight"}
    labels = self.arrays.get("label")
    if fed.split == "dirichlet" and labels is None:
      raise ConfigError(f"federated.split='dirichlet' splits by label; task={config.task} has "
                        f"none (use split='iid')")
    self.clients = split_clients(labels if labels is not None else np.zeros(len(examples)),
                                 fed.clients, fed.split, fed.alpha)
    self.rows = max(len(c) for c in self.clients)  # M: the largest client's examples
    self.local_batch = config.batch_size
    self.local_steps = -(-self.rows // self.local_batch)  # per epoch
    self.per_round = fed.clients_per_round or fed.clients
    self.private = privacy.enabled(config)
    if self.private:
      self._account(config)

  def _account(self, config):
    p = config.privacy
    # Sensitivity of the sum of clipped client changes to replacing one client: 2 * clip_norm.
    sensitivity = 2 * p.clip_norm
    step_event = lambda sigma: dp_accounting.SampledWithoutReplacementDpEvent(
        self.fed.clients, self.per_round, dp_accounting.GaussianDpEvent(sigma))
    relative = p.noise_multiplier * p.clip_norm / sensitivity
    if p.target_epsilon:
      relative = privacy.calibrate_noise(step_event, config.steps, p.target_epsilon, p.delta,
                                         REPLACE_ONE)
    self.noise_stddev = relative * sensitivity
    self.epsilon_after = None
    if relative:
      self.epsilon_after = jnp.asarray(privacy.epsilons(
          step_event(relative), range(config.steps + 1), p.delta, REPLACE_ONE), jnp.float32)

  @property
  def throughput_unit(self):
    """Examples a round trains on (padding included), per row of `batch_size`."""
    return ("examples", self.per_round * self.fed.local_epochs * self.local_steps)

  def check_mesh(self, mesh_shape):
    shards = mesh_shape["data"] * mesh_shape["fsdp"]
    if self.per_round % shards or self.per_round % self.process_count:
      raise ConfigError(f"federated.clients_per_round={self.per_round} must divide over the "
                        f"{shards} data-parallel devices and {self.process_count} processes")
    self.inner.check_mesh(mesh_shape)

  def batch_spec(self, batch_size):
    spec = self.inner.batch_spec(self.rows)
    return {k: jax.ShapeDtypeStruct((self.per_round, *v.shape), v.dtype) for k, v in spec.items()}

  def train_data(self, local_batch, seed):
    return RoundData(self.arrays, self.clients, self.per_round, self.rows, seed,
                     self.process_index, self.process_count)

  def _client_update(self, loss, params, data, rng, step):
    """(change of the parameters, Loss sums) after local_epochs of SGD on one client's data."""
    E, T, B = self.fed.local_epochs, self.local_steps, self.local_batch
    padded = jax.tree.map(lambda x: jnp.pad(x, [(0, T * B - x.shape[0])] + [(0, 0)] * (x.ndim - 1)),
                          data)

    def epoch(carry, e):
      key = jax.random.fold_in(rng, e)
      # This epoch's order: the client's own rows shuffled, then its padding.
      order = jnp.argsort(jnp.where(padded["weight"] > 0,
                                    jax.random.uniform(key, padded["weight"].shape), 2.0))
      batches = jax.tree.map(lambda x: x[order].reshape(T, B, *x.shape[1:]), padded)

      def local_step(carry, j):
        params, seen = carry
        batch = jax.tree.map(lambda x: x[j], batches)
        scalars, grads = mean_gradient(loss, params, batch, jax.random.fold_in(key, j), step, 1)
        weight = batch["weight"].sum()
        params = jax.tree.map(lambda p, g: p - self.fed.client_lr * g, params, grads)
        return (params, seen + jnp.stack([scalars["loss"] * weight, weight])), None

      return jax.lax.scan(local_step, carry, jnp.arange(T))[0], None

    (local, seen), _ = jax.lax.scan(epoch, (params, jnp.zeros(2)), jnp.arange(E))
    return jax.tree.map(jnp.subtract, local, params), seen

  def gradients(self, loss, params, batch, rng, step):
    """(scalars, the negated average client change): one round of FedAvg."""
    client_key, noise_key = jax.random.split(rng)
    client = lambda data, key: self._client_update(loss, params, data, key, step)
    if self.private:
      change, scalars = self._private_average(client, batch, client_key, noise_key, step)
    else:
      changes, seen_Sx2 = jax.vmap(client)(batch, jax.random.split(client_key, self.per_round))
      examples_S = batch["weight"].sum(axis=1)
      share_S = examples_S / jnp.maximum(examples_S.sum(), 1.0)
      change = jax.tree.map(lambda c: jnp.tensordot(share_S, c, axes=1), changes)
      scalars = {"loss": seen_Sx2[:, 0].sum() / jnp.maximum(seen_Sx2[:, 1].sum(), 1.0)}
    return scalars, jax.tree.map(jnp.negative, change)

  def _private_average(self, client, batch, client_key, noise_key, step):
    """Client-level DP: clipped client changes, summed, noised, over clients_per_round."""
    p = self.config.privacy
    # Splits client_key over the clients as the plain path does.
    clipped = jax_privacy.clipping.clipped_fun(
        client, has_aux=True, batch_argnums=0, prng_argnum=1, keep_batch_dim=False,
        l2_clip_norm=p.clip_norm, return_norms=True)
    total, (seen_Sx2, norms_S) = clipped(batch, client_key)
    privatizer = noise_addition.gaussian_privatizer(stddev=self.noise_stddev, prng_key=noise_key)
    noisy, _ = privatizer.update(total, privatizer.init(total))
    scalars = {"loss": seen_Sx2[:, 0].sum() / jnp.maximum(seen_Sx2[:, 1].sum(), 1.0),
               "clipped_share": (norms_S > p.clip_norm).mean()}
    if self.epsilon_after is not None:
      scalars["epsilon"] = self.epsilon_after[jnp.minimum(step + 1, len(self.epsilon_after) - 1)]
    return jax.tree.map(lambda x: x / self.per_round, noisy), scalars


def check(config: ml_collections.ConfigDict, task) -> None:
  """Bad settings, one line each, before anything compiles."""
  fed = config.federated
  if fed.clients < 0 or fed.clients_per_round < 0:
    raise ConfigError(f"federated.clients={fed.clients}, clients_per_round="
                      f"{fed.clients_per_round} must be >= 0")
  if not fed.clients:
    return
  if fed.clients_per_round > fed.clients:
    raise ConfigError(f"federated.clients_per_round={fed.clients_per_round} is more than the "
                      f"{fed.clients} clients; sample at most federated.clients")
  if fed.split not in SPLITS:
    raise ConfigError(f"federated.split={fed.split!r}; use one of {', '.join(SPLITS)}")
  if fed.split == "dirichlet" and fed.alpha <= 0:
    raise ConfigError(f"federated.alpha={fed.alpha}: a Dirichlet concentration must be > 0 "
                      f"(smaller is more skewed)")
  if fed.local_epochs < 1 or fed.client_lr <= 0:
    raise ConfigError(f"federated.local_epochs={fed.local_epochs}, client_lr={fed.client_lr}: "
                      f"need at least one epoch and a positive step size")
  if not hasattr(task, "train_examples"):
    raise ConfigError(f"federated.* splits an array task's examples among clients; "
                      f"task={config.task} is not one")
  if len(task.phases) > 1 or config.optim.grad_accum_steps > 1:
    raise ConfigError("federated.* trains a task with one optimizer, without "
                      "optim.grad_accum_steps (clients take whole local batches)")
  if fed.clients > len(task.train_examples):
    raise ConfigError(f"federated.clients={fed.clients} is more than the "
                      f"{len(task.train_examples)} training examples")
