"""Tokenize once into shards, stream forever: what prepare writes is exactly what training reads."""

import hashlib
import json
import os

import numpy as np
import pytest

from bigjax.config_checks import ConfigError
from bigjax.data import lm as lm_data
from bigjax.data import prepare, shards
from bigjax.data.tokenizers import ByteTokenizer
from bigjax.tasks.lm import LanguageModelTask

# Tiny shards and records, so a few kB of text spans several of each and windows cross both.
SMALL = {"shard_mb": 600 / 2**20, "record_tokens": 7, "progress": False}


@pytest.fixture(scope="module")
def texts(corpus_path):
  """Four documents of different sizes: the corpus, cut."""
  text = open(corpus_path, encoding="utf-8").read()[:5000]
  return [text[:2100], "naïve café ✓ " + " ".join(map(str, range(30))), text[2100:2300],
          text[2300:]]


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory, texts):
  directory = tmp_path_factory.mktemp("texts")
  for i, text in enumerate(texts):
    (directory / f"doc{i}.txt").write_text(text, encoding="utf-8")
  return directory


def sha(ids: np.ndarray) -> str:
  return hashlib.sha256(np.asarray(ids, np.int64).tobytes()).hexdigest()


def test_text_shards_hold_the_packed_documents(text_dir, texts, tmp_path):
  manifest = prepare.prepare([str(text_dir)], str(tmp_path), "byte", **SMALL)
  # 2100 bytes of one file cut into 4 pieces: some shards end inside a document.
  assert len(manifest["shards"]) > len(texts) and manifest["documents"] == len(texts)
  stream = shards.ShardStream(str(tmp_path))
  expected = lm_data.pack(texts, ByteTokenizer())
  assert len(stream) == manifest["tokens"] == len(expected)
  assert sha(stream[0:len(stream)]) == sha(expected)
  # Any slice, wherever it starts and ends among records and shards.
  for start, stop in ((0, 1), (5, 12), (6, 8), (590, 1250), (len(expected) - 3, len(expected))):
    np.testing.assert_array_equal(stream[start:stop], expected[start:stop])


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf"])
def test_jsonl_parquet_and_dataset_rows_are_documents(texts, tmp_path, fmt):
  rows = [{"text": t, "id": i} for i, t in enumerate(texts)]
  path = tmp_path / f"docs.{fmt}"
  if fmt == "jsonl":
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n", encoding="utf-8")
  elif fmt == "parquet":
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
  else:
    import datasets
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
  out = tmp_path / "out"
  prepare.prepare([str(path)], str(out), "byte", fmt=fmt, **SMALL)
  stream = shards.ShardStream(str(out))
  assert sha(stream[0:len(stream)]) == sha(lm_data.pack(texts, ByteTokenizer()))


def test_two_workers_write_the_same_shards_as_one(text_dir, tmp_path):
  one = prepare.prepare([str(text_dir)], str(tmp_path / "one"), "byte", workers=1, **SMALL)
  two = prepare.prepare([str(text_dir)], str(tmp_path / "two"), "byte", workers=2, **SMALL)
  assert [s["sha256"] for s in one["shards"]] == [s["sha256"] for s in two["shards"]]


def test_training_windows_read_back_every_token_once(tmp_path, make_config):
  # Counting numbers: no two windows of this text are alike, so each names its place.
  texts = [" ".join(map(str, range(start, start + 400))) for start in (0, 400, 800)]
  for i, text in enumerate(texts):
    (tmp_path / f"doc{i}.txt").write_text(text)
  prepare.prepare([str(tmp_path)], str(tmp_path / "out"), "byte", **SMALL)
  config = make_config(**{"data.source": "shards", "data.path": str(tmp_path / "out"),
                          "seq_len": 16, "data.val_fraction": 0.2})
  task = LanguageModelTask(config)
  expected = lm_data.pack(texts, ByteTokenizer())
  train_tokens = int(len(expected) * 0.8)
  num_windows = (train_tokens - 1) // 16
  # The first epoch, in batches of 4: distinct windows of the packed stream, each cut at a
  # multiple of seq_len (a window: its inputs and its last target).
  batches = iter(task.train_data(4, seed=0))
  rows = [np.append(x, y[-1]) for b in (next(batches) for _ in range(num_windows // 4))
          for x, y in zip(b["inputs"], b["targets"])]
  index = {bytes(expected[i * 16:i * 16 + 17].astype(np.uint8)): i for i in range(num_windows)}
  read = [index[bytes(row.astype(np.uint8))] for row in rows]
  assert len(set(read)) == len(read) == num_windows // 4 * 4
  # Validation is the held-out tail of the stream.
  tail = bytes(expected[train_tokens:].astype(np.uint8))
  assert all(bytes(row.astype(np.uint8)) in tail for row in next(task.eval_data(2, 1))["inputs"])


def test_an_interrupted_prepare_resumes_without_redoing_shards(text_dir, tmp_path):
  out = str(tmp_path)
  first = prepare.prepare([str(text_dir)], out, "byte", **SMALL)
  last = len(first["shards"]) - 1
  # As if killed while writing the last shard: its temporary file half written, no entry, no
  # manifest. The finished shards must be kept as they are.
  for name in (prepare.MANIFEST, prepare.shard_name(last), f"{prepare.PROGRESS}/{last:05d}.json"):
    os.remove(os.path.join(out, name))
  with open(os.path.join(out, prepare.shard_name(last) + ".tmp"), "wb") as f:
    f.write(b"half a shard")
  kept = {i: os.stat(os.path.join(out, prepare.shard_name(i))).st_mtime_ns for i in range(last)}
  resumed = prepare.prepare([str(text_dir)], out, "byte", **SMALL)
  assert resumed["shards"] == first["shards"]
  assert {i: os.stat(os.path.join(out, prepare.shard_name(i))).st_mtime_ns
          for i in range(last)} == kept
  assert sorted(f for f in os.listdir(out) if f.startswith("shard-")) == [
      prepare.shard_name(i) for i in range(last + 1)]  # no duplicate, no leftover .tmp
  assert "every shard was already written" in prepare.prepare([str(text_dir)], out, "byte",
                                                             **SMALL)["report"]


def test_a_corrupted_shard_is_named_by_prepare_and_by_training(text_dir, tmp_path, make_config):
  out = str(tmp_path)
  prepare.prepare([str(text_dir)], out, "byte", **SMALL)
  damaged = os.path.join(out, prepare.shard_name(1))
  data = bytearray(open(damaged, "rb").read())
  data[200] ^= 0xFF  # inside the first records' data; the file keeps its size
  open(damaged, "wb").write(bytes(data))
  with pytest.raises(ConfigError, match="shard-00001.array_record is corrupt") as error:
    prepare.prepare([str(text_dir)], out, "byte", **SMALL)
  assert "\n" not in str(error.value)
  stream = shards.ShardStream(out)
  with pytest.raises(ConfigError, match=r"shard-00001.array_record, record \d+ cannot be read"):
    stream[0:len(stream)]


def test_bad_inputs_are_one_line_errors(tmp_path, make_config):
  def error_of(inputs, **kwargs):
    with pytest.raises(ConfigError) as error:
      prepare.prepare([str(p) for p in inputs], str(tmp_path / "out"), "byte", progress=False,
                      **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)

  empty = tmp_path / "empty.txt"
  empty.write_text("")
  assert "holds no text input" in error_of([empty])
  assert "does not exist" in error_of([tmp_path / "missing.txt"])
  lines = tmp_path / "bad.jsonl"
  lines.write_text('{"text": "fine"}\n\n{"text": broken}\n')
  assert error_of([lines], fmt="jsonl").startswith(f"{lines}:3: not JSON")
  lines.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
  assert error_of([lines], fmt="jsonl").startswith(f"{lines}:2: no text field 'text'")


def test_shards_of_another_tokenizer_are_refused(text_dir, texts, tmp_path, make_config):
  from bigjax.data.tokenizers import SentencePieceTokenizer

  model = str(tmp_path / "spm.model")
  SentencePieceTokenizer.train(texts, model, vocab_size=400)
  prepare.prepare([str(text_dir)], str(tmp_path / "out"), "byte", **SMALL)
  config = make_config(**{"data.source": "shards", "data.path": str(tmp_path / "out"),
                          "data.tokenizer": "sentencepiece", "data.tokenizer_path": model})
  with pytest.raises(ConfigError, match="was prepared with tokenizer byte, not this run's") as e:
    LanguageModelTask(config)
  assert "\n" not in str(e.value)
  # Its own tokenizer reads them, under any file name.
  prepare.prepare([str(text_dir)], str(tmp_path / "spm_out"), model, **SMALL)
  os.rename(model, tmp_path / "renamed.model")
  config = make_config(**{"data.source": "shards", "data.path": str(tmp_path / "spm_out"),
                          "data.tokenizer": "sentencepiece",
                          "data.tokenizer_path": str(tmp_path / "renamed.model")})
  assert LanguageModelTask(config).tokenizer.vocab_size == 400
