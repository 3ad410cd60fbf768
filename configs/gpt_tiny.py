"""The default job: a 4-layer byte-level GPT on Python's own standard library sources.

    python -m bigjax.train --config=configs/gpt_tiny.py --workdir=runs/gpt_tiny

Needs no download and trains in a few minutes on a 2-core laptop CPU.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.steps = 600
  c.batch_size = 16
  c.seq_len = 128
  c.log_every = 50
  c.eval_every = 200
  c.eval_steps = 10
  c.checkpoint_every = 200
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.d_model = 128
  c.model.d_ff = 512
  c.model.max_len = 256
  c.model.scan_layers = False  # 4 unrolled layers compile as fast and step ~20% faster on CPU
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 50
  return c
