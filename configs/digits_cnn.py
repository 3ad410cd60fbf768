"""A small CNN classifying scikit-learn's 8x8 digits; no download needed.

    python -m bigjax.train --config=configs/digits_cnn.py --workdir=runs/digits_cnn

Two 3x3 conv layers (32 and 64 channels, each followed by 2x2 max-pooling: 8x8 -> 4x4 -> 2x2),
then a 128-wide dense layer and the 10-way head.
"""

from configs import digits_mlp


def get_config():
  c = digits_mlp.get_config()
  c.model.name = "cnn"
  c.model.channels = (32, 64)
  c.model.hidden = (128,)
  return c
