"""The classic MNIST MLP (784-512-256-128-10), read from tfds once prepared (~20 MB).

    python -m bigjax.data.prepare_tfds mnist fashion_mnist  # once, on a machine with network
    python -m bigjax.train --config=configs/mnist_mlp.py --workdir=runs/mnist_mlp
    python -m bigjax.train --config=configs/mnist_mlp.py:fashion --workdir=runs/fashion_mlp

Variant `fashion` trains on Fashion-MNIST instead. 60k training and 10k test images, read with
`tfds.data_source` and grain (no TensorFlow) from data.tfds_dir (default ~/tensorflow_datasets);
the whole test split is evaluated.
"""

from configs import base


def get_config(variant: str = ""):
  if variant not in ("", "fashion"):
    raise ValueError(f"unknown variant {variant!r}; use '' or 'fashion'")
  c = base.get_config()
  c.task = "classify"
  c.data.source = "tfds"
  c.data.name = "fashion_mnist" if variant == "fashion" else "mnist"
  c.model.name = "mlp"
  c.model.hidden = (512, 256, 128)
  c.steps = 5000  # about 5 epochs at batch 64
  c.batch_size = 64
  c.log_every = 100
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 1e-4
  c.optim.b2 = 0.999
  return c
