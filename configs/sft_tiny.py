"""Chat fine-tuning of the default job's model on generated dialogues with checkable answers.

    python -m bigjax.train --config=configs/gpt_tiny.py --workdir=runs/gpt_tiny
    python -m bigjax.data.dialogues --out=runs/dialogues
    python -m bigjax.train --config=configs/sft_tiny.py --workdir=runs/sft_tiny

The dialogues (bigjax/data/dialogues.py) ask for sums, reversed and capitalised words and letter
counts; the loss is on the assistant's answers only, several conversations packed to a row. The
run ends by printing the exact match of greedy answers on held-out dialogues before (the
pretrained model) and after, and a few of the answers.
"""

from configs import gpt_tiny


def get_config():
  c = gpt_tiny.get_config()
  c.task = "sft"
  c.init_from = "runs/gpt_tiny"
  c.data.source = "jsonl"
  c.data.path = "runs/dialogues"
  c.data.chat_template = "plain"
  c.seq_len = 256  # three single-question conversations (about 80 bytes each) per row
  c.steps = 300
  c.eval_every = 100
  c.eval_steps = 10  # the 200 held-out conversations pack into about 5 batches: all of them
  c.checkpoint_every = 100
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 30
  c.sample.prompt = ""  # the run ends with greedy answers instead of a text sample
  return c
