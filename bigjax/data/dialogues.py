"""Conversations with checkable answers, generated from a seed: what configs/sft_tiny.py tunes on.

    python -m bigjax.data.dialogues --out=runs/dialogues [--train=4000] [--validation=200]

writes OUT/train.jsonl and OUT/validation.jsonl, one {"messages": [...]} conversation a line.
Each question has exactly one right answer, computed here:
    add      What is 27 + 5?                         -> 32
    reverse  Reverse the word "lamp".                -> pmal
    upper    Write "cat" in capital letters.         -> CAT
    count    How many letters are in "banana"?       -> 6
A quarter of the conversations ask a second question after the first answer. Validation
conversations are drawn from another seed, and any whose questions all occur in the training
file are dropped, so exact match on them measures answers to questions the model has not seen.
"""

import json
import os
import string

import numpy as np

LETTERS = np.array(list(string.ascii_lowercase))
SEEDS = {"train": 0, "validation": 1}


def _word(rng: np.random.Generator) -> str:
  return "".join(rng.choice(LETTERS, size=int(rng.integers(3, 7))))


def _add(rng):
  a, b = (int(x) for x in rng.integers(0, 50, size=2))
  return f"What is {a} + {b}?", str(a + b)


def _reverse(rng):
  word = _word(rng)
  return f'Reverse the word "{word}".', word[::-1]


def _upper(rng):
  word = _word(rng)
  return f'Write "{word}" in capital letters.', word.upper()


def _count(rng):
  word = _word(rng)
  return f'How many letters are in "{word}"?', str(len(word))


KINDS = {"add": _add, "reverse": _reverse, "upper": _upper, "count": _count}


def conversation(rng: np.random.Generator, kinds=tuple(KINDS)) -> list[dict]:
  """One or two questions of the given kinds, each followed by its answer."""
  messages = []
  for _ in range(2 if rng.random() < 0.25 else 1):
    question, answer = KINDS[kinds[int(rng.integers(len(kinds)))]](rng)
    messages += [{"role": "user", "content": question},
                 {"role": "assistant", "content": answer}]
  return messages


def generate(count: int, split: str, kinds=tuple(KINDS)) -> list[list[dict]]:
  rng = np.random.default_rng(SEEDS[split])
  return [conversation(rng, kinds) for _ in range(count)]


def questions(messages: list[dict]) -> tuple[str, ...]:
  return tuple(m["content"] for m in messages if m["role"] == "user")


def write(out: str, train: int = 4000, validation: int = 200, kinds=tuple(KINDS)) -> None:
  """OUT/train.jsonl and OUT/validation.jsonl (validation: questions unseen in training)."""
  os.makedirs(out, exist_ok=True)
  train_set = generate(train, "train", kinds)
  seen = {q for messages in train_set for q in questions(messages)}
  held_out = [m for m in generate(3 * validation, "validation", kinds)
              if not set(questions(m)) <= seen][:validation]
  for name, conversations in (("train", train_set), ("validation", held_out)):
    with open(os.path.join(out, f"{name}.jsonl"), "w") as f:
      f.writelines(json.dumps({"messages": m}) + "\n" for m in conversations)


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string("out", "runs/dialogues", "directory for train.jsonl and validation.jsonl")
  flags.DEFINE_integer("train", 4000, "training conversations")
  flags.DEFINE_integer("validation", 200, "held-out conversations")
  flags.DEFINE_list("kinds", list(KINDS), f"question kinds, among {', '.join(KINDS)}")
  flags.register_validator("kinds", lambda kinds: set(kinds) <= set(KINDS),
                           f"--kinds must name some of {', '.join(KINDS)}")
  from bigjax import cli

  app.run(lambda argv: write(flags.FLAGS.out, flags.FLAGS.train, flags.FLAGS.validation,
                             tuple(flags.FLAGS.kinds)), flags_parser=cli.parse_flags)
