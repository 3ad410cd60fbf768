"""A convolutional VAE on scikit-learn's 8x8 digits, trained on the ELBO; no download needed.

    python -m bigjax.train --config=configs/digits_vae.py --workdir=runs/digits_vae

The autoencoder of configs/digits_ae.py with a Gaussian 8-number code. Eval reports the negative
ELBO (nats per image) and its reconstruction and KL parts. Ends with image grids in
WORKDIR/images: reconstructions of test digits, and samples decoded from codes drawn from N(0, I).
"""

from configs import digits_ae


def get_config():
  c = digits_ae.get_config()
  c.model.name = "vae"
  c.model.latent = 8
  return c
