"""Documents -> tokens -> packed windows -> grain batches: nothing lost, nothing repeated."""

import pathlib
import sysconfig

import numpy as np

from bigjax.data import lm as lm_data
from bigjax.data import pipeline, sources
from bigjax.data.tokenizers import ByteTokenizer
from bigjax.tasks import lm as lm_task
from configs import base

DOCS = ["def f(x):\n  return x\n", "naïve café — ünïcode ✓", "", "last"]


def test_byte_tokenizer_round_trip():
  tok = ByteTokenizer()
  for doc in DOCS:
    ids = tok.encode(doc)
    assert ids.dtype == np.int32 and ids.min(initial=1) > tok.eos_id
    assert tok.decode(ids) == doc


def test_pack_separates_documents_with_eos_and_keeps_every_token():
  tok = ByteTokenizer()
  stream = lm_data.pack(DOCS, tok)
  assert len(stream) == sum(len(tok.encode(d)) + 1 for d in DOCS)
  assert stream[-1] == tok.eos_id
  pieces = np.split(stream, np.flatnonzero(stream == tok.eos_id) + 1)[:-1]
  assert [tok.decode(p) for p in pieces] == DOCS


def test_windows_targets_are_inputs_shifted_by_one():
  windows = lm_data.TokenWindows(np.arange(103, dtype=np.uint16), seq_len=10)
  assert len(windows) == 10  # 103 tokens hold 10 windows of 10 inputs plus one target
  batch = lm_data.as_example(np.stack([windows[i] for i in range(len(windows))]))
  assert batch["inputs"].shape == batch["targets"].shape == (10, 10)
  np.testing.assert_array_equal(batch["targets"], batch["inputs"] + 1)
  # Windows tile the stream: every token is an input exactly once.
  np.testing.assert_array_equal(batch["inputs"].ravel(), np.arange(100))


def _window_ids(batch, seq_len):
  return tuple(batch["inputs"][:, 0] // seq_len)


def _train_dataset(windows, batch_size, seed):
  read = lambda i, rng: lm_data.as_example(windows[i])
  return pipeline.train_batches(pipeline.shuffled(len(windows), seed), read, batch_size, seed)


def test_train_dataset_is_seeded_reshuffled_each_epoch_and_resumable():
  seq_len, batch_size, num_windows = 4, 4, 12
  windows = lm_data.TokenWindows(np.arange(num_windows * seq_len + 1), seq_len)
  first = lambda ds, n: [_window_ids(b, seq_len) for b, _ in zip(ds, range(n))]

  run = first(_train_dataset(windows, batch_size, seed=0), 9)  # three epochs of 3 batches
  assert run == first(_train_dataset(windows, batch_size, seed=0), 9)
  assert run != first(_train_dataset(windows, batch_size, seed=1), 9)
  epochs = [sum(run[3 * e:3 * e + 3], ()) for e in range(3)]
  for epoch in epochs:  # each epoch visits every window once
    assert sorted(epoch) == list(range(num_windows))
  assert epochs[0] != epochs[1] != epochs[2]

  it = iter(_train_dataset(windows, batch_size, seed=0))
  for _ in range(4):
    next(it)
  state = it.get_state()
  expected = [_window_ids(next(it), seq_len) for _ in range(3)]
  resumed = iter(_train_dataset(windows, batch_size, seed=0))
  resumed.set_state(state)
  assert [_window_ids(next(resumed), seq_len) for _ in range(3)] == expected == run[4:7]


def test_stdlib_split_is_stable_and_disjoint():
  files = sources.stdlib_files()
  assert len(files) > 500 and files == sources.stdlib_files()
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  val = {f for f in files if sources.is_validation(str(f.relative_to(root)), 0.1)}
  train = set(files) - val
  assert train and val and 0.05 < len(val) / len(files) < 0.15

  data = base.get_config().data
  docs = sources.documents(data, "validation")
  assert docs == sources.documents(data, "validation")
  read = lambda files: [f.read_text(encoding="utf-8", errors="replace") for f in files]
  assert docs == read(sorted(val))


def test_text_source_holds_out_the_end_of_each_file(tmp_path):
  (tmp_path / "a.txt").write_text("a" * 90 + "A" * 10)
  (tmp_path / "b.txt").write_text("b" * 180 + "B" * 20)
  data = base.get_config().data
  data.update({"source": "text", "path": str(tmp_path), "val_fraction": 0.1})
  assert sources.documents(data, "train") == ["a" * 90, "b" * 180]
  assert sources.documents(data, "validation") == ["A" * 10, "B" * 20]
  data.path = str(tmp_path / "b.txt")
  assert sources.documents(data, "validation") == ["B" * 20]


def test_tfds_source_reads_mock_data_without_downloading(no_network, make_config, tmp_path):
  import tensorflow_datasets as tfds

  config = make_config(**{"data.source": "tfds", "data.name": "tiny_shakespeare",
                          "data.tfds_dir": str(tmp_path), "seq_len": 8, "batch_size": 2})
  with tfds.testing.mock_data(num_examples=40):
    docs = sources.documents(config.data, "train")
    assert len(docs) == 40 and all(isinstance(d, str) and d for d in docs)
    # The whole task reads it too: packed into windows and batched by grain.
    task = lm_task.LanguageModelTask(config)
    batch = next(iter(task.train_data(2, seed=0)))
    assert batch["inputs"].shape == (2, 8)
    assert next(task.eval_data(2, 1))["targets"].shape == (2, 8)


def test_sentencepiece_tokenizer_trains_and_round_trips(make_config, corpus_path, tmp_path):
  model_path = str(tmp_path / "spm" / "tok.model")
  config = make_config(**{"data.tokenizer": "sentencepiece", "data.tokenizer_path": model_path,
                          "data.vocab_size": 400})
  tok = lm_task.make_tokenizer(config)
  assert tok.vocab_size == 400 and (tmp_path / "spm" / "tok.model").exists()
  text = "def encode(self, o):\n    return '\"' + o + '\"'  # naïve ✓"
  ids = tok.encode(text)
  assert len(ids) < 0.8 * len(text.encode("utf-8"))  # merges learned from the corpus
  assert tok.decode(ids) == text
  assert tok.eos_id not in ids
  stream = lm_data.pack(["a b", "c d"], tok)
  assert (stream == tok.eos_id).sum() == 2
