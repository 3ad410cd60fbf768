"""A DCGAN-style GAN on scikit-learn's 8x8 digits; no download needed.

    python -m bigjax.train --config=configs/digits_mlp.py --workdir=runs/digits_mlp
    python -m bigjax.train --config=configs/digits_gan.py --workdir=runs/digits_gan \
        --config.gan.classifier=runs/digits_mlp

Generator: a 16-number code -> dense -> 2x2x64 -> two stride-2 transposed convs -> 8x8 pixels.
Discriminator: two stride-2 convs (32, 64 channels, leaky ReLU) -> one logit. Each has its own
Adam (b1 = 0.5, as DCGAN), two discriminator updates per generator update in every step.
With gan.classifier, eval scores the samples with the digits classifier (bigjax/tasks/gan.py);
the run ends with a grid of samples in WORKDIR/images.

Measured on a shared 2-core CPU with the digits_mlp classifier: after 1,500 steps 70% of the
samples are classified with confidence >= 0.9, covering all 10 digits, classifier score 7.39 of
a possible 10 (an untrained generator's samples are all alike and score about 1). The score
passes 7 at step 1,250 and stays near it (6.6 to 7.4 up to step 3,000).
"""

from configs import base


def get_config():
  c = base.get_config()
  c.task = "gan"
  c.data.source = "sklearn"
  c.data.name = "digits"
  c.data.val_fraction = 0.2  # the 360 test images are the real ones eval's discriminator sees
  c.model.channels = (32, 64)
  c.model.latent = 16
  c.gan.discriminator_steps = 2
  c.gan.generator_lr = 5e-4
  c.gan.discriminator_lr = 5e-4
  c.steps = 1500
  c.batch_size = 128  # 2 discriminator batches of 64 real images
  c.log_every = 100
  c.eval_every = 250
  c.checkpoint_every = 500
  c.optim.name = "adam"
  c.optim.b1 = 0.5
  c.optim.b2 = 0.999
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  c.optim.clip_norm = 0.0
  c.sample.prompt = ""  # nothing to generate as text
  return c
