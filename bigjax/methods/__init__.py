"""Training methods: each changes how a task trains, by wrapping it (tasks.base.TaskWrapper).

A method overrides only what it changes, through the task contract's hooks:
- the training loss (`transform_loss`): adversarial examples (adversarial.py), image augmentation
  (augment.py; text augmentation happens in the text-classification data pipeline);
- how a loss becomes the optimizer's gradient (`gradients`): DP-SGD (privacy.py), federated
  averaging (federated.py, client-level DP with privacy on);
- how many models train at once (`members`): ensembles (ensemble.py), vmapped by bigjax.build;
- and whatever else it needs from the contract: data (Poisson batches, client rounds), eval
  (robust accuracy, ensemble calibration), batch shapes.

`wrap` is the one place they are chosen, innermost first: the adversarial attack sees the
augmented image; DP and FedAvg differentiate the resulting loss; an ensemble stacks it all.
This module lives apart from bigjax/tasks because a method applies to many tasks.
"""

import ml_collections

from bigjax.config_checks import ConfigError
from bigjax.data import augment as augment_data
from bigjax.methods import adversarial, augment, ensemble, federated, privacy
from bigjax.tasks.base import Task


def check(config: ml_collections.ConfigDict, task: Task) -> None:
  """Every method's settings, and that they fit `task` and each other; one line each."""
  ensemble.check(config)
  adversarial.check(config)
  augment.check(config, task)
  privacy.check(config, task)
  federated.check(config, task)
  if config.federated.clients and config.adversarial.attack:
    raise ConfigError("adversarial training inside federated clients is not supported; turn "
                      "off adversarial.attack or federated.clients")


def wrap(task: Task, config: ml_collections.ConfigDict) -> Task:
  """`task` inside the methods the config turns on (it is returned as it is when none is)."""
  check(config, task)
  if config.adversarial.attack or config.adversarial.epsilon:
    task = adversarial.AdversarialTask(task, config.adversarial)
  if augment_data.augments_images(config.augment):
    task = augment.AugmentedTask(task, config.augment)
  if config.federated.clients:
    task = federated.FederatedTask(task, config)
  elif privacy.enabled(config):
    task = privacy.PrivateTask(task, config)
  if config.ensemble.members > 1:
    task = ensemble.EnsembleTask(task, config.ensemble.members)
  return task


def training_only_off(config: ml_collections.ConfigDict) -> None:
  """Turns off, in place, the settings that shape only how a run trains (DP-SGD, federated
  rounds, a GAN's discriminator steps): they leave the parameters as they are, and their checks of
  the training batch do not apply to a run loaded for use (bigjax.load)."""
  config.privacy.update({"clip_norm": 0.0, "noise_multiplier": 0.0, "target_epsilon": 0.0})
  config.federated.clients = 0
  config.gan.discriminator_steps = 1
