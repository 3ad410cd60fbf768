"""Fine-tunes the masked-LM encoder of configs/bert_mlm.py to name a snippet's stdlib package.

    python -m bigjax.train --config=configs/bert_mlm.py --workdir=runs/bert_mlm
    python -m bigjax.train --config=configs/bert_classify.py --workdir=runs/bert_classify \
        --config.init_from=runs/bert_mlm

The four classes are asyncio, email, tkinter and unittest; validation snippets come from files
held out of training. Without init_from the same model trains from scratch (the baseline).
Add --config.freeze='^(embed|encoder)/' to train only the new head (a linear probe).
Variant `:imdb` classifies tfds imdb_reviews sentiment, once prepared on a machine with network:
`python -m bigjax.data.prepare_tfds imdb_reviews` (then pass --config.data.tfds_dir if elsewhere).
"""

from configs import bert_mlm


def get_config(variant: str = ""):
  c = bert_mlm.get_config()
  c.task = "text_classify"
  c.steps = 300
  c.eval_every = 100
  c.eval_steps = 16
  c.checkpoint_every = 100
  c.model.dropout = 0.1
  c.optim.lr = 3e-4
  c.optim.warmup_steps = 30
  c.optim.weight_decay = 0.01
  if variant == "imdb":
    c.data.source = "tfds"
    c.data.name = "imdb_reviews"
    c.steps = 2000
    c.eval_steps = 50
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; use '' or 'imdb'")
  return c
