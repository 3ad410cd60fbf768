"""A CNN on MNIST (or Fashion-MNIST with `:fashion`), read from tfds once prepared (mnist_mlp.py).

    python -m bigjax.train --config=configs/mnist_cnn.py --workdir=runs/mnist_cnn
    python -m bigjax.train --config=configs/mnist_cnn.py:fashion --workdir=runs/fashion_cnn

Two 3x3 conv layers (32, 64 channels; 28x28 -> 14x14 -> 7x7 by max-pooling), a 128-wide dense
layer and the 10-way head.
"""

from configs import mnist_mlp


def get_config(variant: str = ""):
  c = mnist_mlp.get_config(variant)
  c.model.name = "cnn"
  c.model.channels = (32, 64)
  c.model.hidden = (128,)
  return c
