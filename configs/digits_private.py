"""DP-SGD on scikit-learn's digits: (8, 1e-5)-differential privacy for every training example.

    python -m bigjax.train --config=configs/digits_private.py --workdir=runs/digits_private

bigjax/methods/privacy.py: each step Poisson-samples the 1437 training digits at rate 64/1437
(batches of 64 on average, held in 128 rows), clips every example's gradient to norm 1, and adds
Gaussian noise whose multiplier is calibrated by dp-accounting's RDP accountant so that the 1000
steps spend epsilon = 8 at delta = 1e-5; train/epsilon logs what has been spent so far.
"""

from configs import digits_mlp


def get_config():
  c = digits_mlp.get_config()
  c.model.hidden = (256,)  # fewer parameters: the same noise per coordinate hurts a small model less
  c.batch_size = 128  # rows that hold each Poisson draw (mean 64)
  c.privacy.expected_batch_size = 64
  c.privacy.clip_norm = 1.0
  c.privacy.target_epsilon = 8.0
  c.privacy.delta = 1e-5
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 0.0  # per-example clipping replaces it
  return c
