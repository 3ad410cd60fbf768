"""Fine-tunes a pretrained model: a bigjax run or a Hugging Face directory, named after the colon.

    python -m bigjax.hf import --hf=PATH/TO/gpt2 --workdir=runs/gpt2_hf
    python -m bigjax.train --config=configs/finetune.py:runs/gpt2_hf --workdir=runs/gpt2_tuned \
        --config.data.source=text --config.data.path=PATH/TO/corpus.txt

The model, tokenizer and task are the pretrained run's own (so its parameters fit), `init_from`
points at it, and the schedule is a short low-learning-rate one. The pretrained BERT -> sentiment
path keeps the encoder and starts a new head:

    python -m bigjax.train --config=configs/finetune.py:runs/bert_hf --workdir=runs/bert_imdb \
        --config.task=text_classify --config.data.source=tfds --config.data.name=imdb_reviews
"""

from bigjax.load import saved_config


def get_config(pretrained: str = ""):
  if not pretrained:
    raise ValueError("name the pretrained run: --config=configs/finetune.py:WORKDIR_OR_HF_DIR")
  c = saved_config(pretrained).copy_and_resolve_references()
  c.init_from = pretrained
  c.steps = 500
  c.eval_every = 100
  c.checkpoint_every = 100
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 0.01
  return c
