"""Mixtures of prepared corpora, and local Hugging Face datasets as a language model's text."""

import numpy as np
import pytest

from bigjax.config_checks import ConfigError
from bigjax.data import lm as lm_data
from bigjax.data import prepare
from bigjax.data.tokenizers import ByteTokenizer
from bigjax.tasks.lm import LanguageModelTask

SEQ_LEN = 8


@pytest.fixture(scope="module")
def letters_and_digits(tmp_path_factory):
  """Two prepared corpora a window can be told apart by: letters only, and digits only."""
  root = tmp_path_factory.mktemp("mixture")
  rng = np.random.default_rng(0)
  for name, alphabet in (("letters", list("abcdefgh")), ("digits", list("0123456789"))):
    (root / f"{name}.txt").write_text("".join(rng.choice(alphabet, size=3000)))
    prepare.prepare([str(root / f"{name}.txt")], str(root / name), "byte", progress=False)
  return root


def mixture_task(make_config, spec):
  return LanguageModelTask(make_config(**{"data.source": "shards", "data.mixture": spec,
                                          "seq_len": SEQ_LEN}))


def letter_rows(batch) -> np.ndarray:
  return (batch["inputs"] >= ord("a")).all(-1)


def test_mixture_proportions_follow_the_weights_and_resume_exactly(letters_and_digits,
                                                                   make_config):
  root = letters_and_digits
  task = mixture_task(make_config, f"{root / 'letters'}:0.7,{root / 'digits'}:0.3")
  batches = iter(task.train_data(10, seed=0))
  seen = [next(batches) for _ in range(60)]
  # Every window is one corpus's: all letters or all digits, never both.
  assert all(letter_rows(b).sum() + (b["inputs"] < ord("a")).all(-1).sum() == 10 for b in seen)
  share = np.mean([letter_rows(b).mean() for b in seen])
  # grain's mix keeps every prefix within two windows of the weights: 2 / 600 of the share.
  assert abs(share - 0.7) < 0.01
  # The letters corpus has (3001 * 0.9 - 1) // 8 = 337 training windows, fewer than the 420
  # drawn from it: it is repeated, in a new order, rather than running out.
  assert len({bytes(x) for b in seen for x in b["inputs"][letter_rows(b)]}) <= 337

  interrupted = iter(task.train_data(10, seed=0))
  for _ in range(23):
    next(interrupted)
  spec = f"{root / 'letters'}:0.7,{root / 'digits'}:0.3"
  restarted = iter(mixture_task(make_config, spec).train_data(10, seed=0))
  restarted.set_state(interrupted.get_state())
  for expected in seen[23:30]:
    np.testing.assert_array_equal(next(restarted)["inputs"], expected["inputs"])

  other_seed = next(iter(task.train_data(10, seed=1)))
  assert not np.array_equal(other_seed["inputs"], seen[0]["inputs"])


def test_bad_mixtures_are_one_line_errors(letters_and_digits, make_config):
  root = letters_and_digits
  for spec, message in ((f"{root / 'letters'}", "not DIR:WEIGHT"),
                        (f"{root / 'letters'}:0", "positive weight"),
                        (f"{root / 'nowhere'}:1", "not a directory")):
    with pytest.raises(ConfigError, match=message) as error:
      mixture_task(make_config, spec)
    assert "\n" not in str(error.value)


def test_hugging_face_datasets_from_disk_and_from_jsonl(no_network, tmp_path, make_config):
  import datasets

  train = [f"train document {i}: " + "abc" * i for i in range(20)]
  held_out = [f"held-out document {i}." for i in range(5)]
  datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": train}),
                        "validation": datasets.Dataset.from_dict({"body": held_out})}
                       ).save_to_disk(str(tmp_path / "saved"))
  config = make_config(**{"data.source": "hf", "data.path": str(tmp_path / "saved"),
                          "data.field": "body", "seq_len": SEQ_LEN})
  task = LanguageModelTask(config)
  stream = lm_data.pack(train, ByteTokenizer()).astype(np.uint8)
  windows = {bytes(stream[i:i + SEQ_LEN]) for i in range(0, len(stream) - SEQ_LEN, SEQ_LEN)}
  batch = next(iter(task.train_data(4, seed=0)))
  assert all(bytes(row.astype(np.uint8)) in windows for row in batch["inputs"])
  held_out_text = bytes(lm_data.pack(held_out, ByteTokenizer()).astype(np.uint8))
  assert all(bytes(row.astype(np.uint8)) in held_out_text
             for row in next(task.eval_data(2, 1))["inputs"])

  # JSONL files through `datasets`, with no split of their own: the last tenth is held out.
  lines = tmp_path / "docs.jsonl"
  lines.write_text("".join(f'{{"body": "{text}"}}\n' for text in train))
  task = LanguageModelTask(make_config(**{"data.source": "hf", "data.path": str(lines),
                                          "data.field": "body", "seq_len": SEQ_LEN}))
  assert next(iter(task.train_data(2, seed=0)))["inputs"].shape == (2, SEQ_LEN)
  with pytest.raises(ConfigError, match="has no column 'text' \\(columns: body\\)"):
    LanguageModelTask(make_config(**{"data.source": "hf", "data.path": str(lines),
                                     "seq_len": SEQ_LEN}))

