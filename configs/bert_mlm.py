"""Masked-LM pretraining of a small byte-level BERT on Python's standard library sources.

    python -m bigjax.train --config=configs/bert_mlm.py --workdir=runs/bert_mlm

Then fine-tune it to tell stdlib packages apart (see configs/bert_classify.py):

    python -m bigjax.train --config=configs/bert_classify.py --workdir=runs/bert_classify \
        --config.init_from=runs/bert_mlm

Trains in a few minutes on a 2-core CPU. Variant `:nsp` adds next-sentence prediction with segment embeddings. No download needed.
"""

from configs import base


def get_config(variant: str = ""):
  c = base.get_config()
  c.task = "mlm"
  c.steps = 400
  c.batch_size = 16
  c.seq_len = 128
  c.log_every = 50
  c.eval_every = 200
  c.eval_steps = 10
  c.checkpoint_every = 200
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.d_model = 128
  c.model.d_ff = 512
  c.model.max_len = 128
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 50
  c.optim.b2 = 0.98
  if variant == "nsp":
    c.mlm.nsp = True
    c.model.token_types = 2
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; use '' or 'nsp'")
  return c
