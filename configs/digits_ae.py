"""A convolutional autoencoder on scikit-learn's 8x8 digits; no download needed.

    python -m bigjax.train --config=configs/digits_ae.py --workdir=runs/digits_ae

Two stride-2 convs (8x8 -> 4x4 -> 2x2) and a dense layer squeeze each image into a 16-number
code; the mirror-image decoder rebuilds it. Ends with WORKDIR/images/reconstructions_*.png:
test images on odd rows, their reconstructions below.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.task = "reconstruct"
  c.data.source = "sklearn"
  c.data.name = "digits"
  c.data.val_fraction = 0.2
  c.model.name = "autoencoder"
  c.model.channels = (32, 64)
  c.model.latent = 16
  c.steps = 2000
  c.batch_size = 64
  c.log_every = 100
  c.eval_every = 500
  c.checkpoint_every = 1000
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 1e-4
  c.optim.b2 = 0.999
  return c
