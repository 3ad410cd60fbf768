"""Federated averaging over 10 simulated clients holding scikit-learn's digits; no download needed.

    python -m bigjax.train --config=configs/digits_federated.py --workdir=runs/digits_fedavg
    python -m bigjax.train --config=configs/digits_federated.py:noniid --workdir=runs/digits_fedavg_noniid

Every step is a round (bigjax/methods/federated.py): 5 of the 10 clients, drawn at random, each
train 2 epochs of SGD on their own examples in batches of 16, and the server moves the model by
their average change (weighted by their sizes): SGD at learning rate 1, plain FedAvg. The model is
evaluated on the 360 test digits after every round. `:noniid` spreads each digit class over the
clients by Dirichlet(0.1), so most clients hold one or two classes. Add
--config.privacy.clip_norm=C --config.privacy.noise_multiplier=SIGMA for client-level DP.
"""

from configs import digits_mlp


def get_config(variant: str = ""):
  c = digits_mlp.get_config()
  c.federated.clients = 10
  c.federated.clients_per_round = 5
  c.federated.local_epochs = 2
  c.federated.client_lr = 0.05
  c.batch_size = 16  # each client's local batch
  c.steps = 100  # rounds
  c.log_every = 10
  c.eval_every = 1  # accuracy after every round
  c.checkpoint_every = 50
  c.optim.name = "sgd"  # the server: params + average client change
  c.optim.lr = 1.0
  c.optim.momentum = 0.0
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 0.0
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  if variant == "noniid":
    c.federated.split = "dirichlet"
    c.federated.alpha = 0.1
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; use '' or 'noniid'")
  return c
