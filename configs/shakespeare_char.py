"""nanoGPT's character-level Shakespeare recipe for a CPU ("baby GPT", README of nanoGPT).

    python -m bigjax.train --config=configs/shakespeare_char.py \
        --config.data.path=../shared/data/tiny_shakespeare.txt --workdir=runs/shakespeare_char

Same shape and schedule as nanoGPT's
`train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
--log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
--max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`, which reports a validation loss of 1.88.
The last 10% of the text is validation, as in nanoGPT. Bytes stand in for nanoGPT's 65
characters (the text is ASCII, so the sequences are the same).
"""

from configs import base


def get_config():
  c = base.get_config()
  c.data.source = "text"
  c.data.val_fraction = 0.1
  c.steps = 2000
  c.batch_size = 12
  c.seq_len = 64
  c.log_every = 100
  c.eval_every = 250
  c.eval_steps = 20
  c.checkpoint_every = 500
  m = c.model
  m.num_layers, m.num_heads, m.d_model, m.d_ff, m.max_len = 4, 4, 128, 512, 64
  m.dropout = 0.0
  m.scan_layers = False  # 4 unrolled layers step faster than a scan on CPU
  m.use_bias = False
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 100
  c.optim.min_lr_ratio = 0.1
  c.optim.b2 = 0.99
  c.optim.weight_decay = 0.1
  c.optim.clip_norm = 1.0
  c.sample.prompt = "ROMEO:"
  return c
