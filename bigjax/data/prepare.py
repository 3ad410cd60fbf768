"""Tokenize a corpus once into ArrayRecord shards of token ids; train from them forever after.

    python -m bigjax.data.prepare --input=FILES_OR_DIRS --out=DIR --tokenizer=byte|MODEL_FILE \
        [--format=text|jsonl|parquet|hf] [--field=text] [--workers=N] [--shard_mb=64]

Then train with `--config.data.source=shards --config.data.path=DIR` (bigjax.data.shards).

What a document is: a whole file (text, as data.source="text" reads it), one line's `--field`
(jsonl), one row's `--field` column (parquet; hf: a local Hugging Face dataset, a save_to_disk
directory or files `datasets` reads, its train split). Documents are tokenized and joined with
the tokenizer's end-of-document id into one token stream, which the shards hold in order, cut
into records of `--record_tokens` ids. Training cuts that stream into windows of any seq_len.

The input is first cut into units of about `--shard_mb` MB (a large text or JSONL file at line
boundaries, a Parquet file by row groups, a dataset by rows); each unit becomes one shard, written by one of
`--workers` processes. A shard's content depends only on its unit, so the output is the same for
any number of workers. A shard is written to a temporary name and renamed once complete, then its
entry (tokens, documents, sha256) is recorded in DIR/.prepare/; a rerun after an interruption
keeps and verifies the finished shards and writes only the rest. DIR/manifest.json, written last,
lists the tokenizer, the totals and every shard with its checksum.
"""

import concurrent.futures
import dataclasses
import functools
import glob
import hashlib
import json
import multiprocessing
import os
import sys
import time
from typing import Iterator

import numpy as np

from bigjax.config_checks import ConfigError
from bigjax.data import hf, jsonl, tokenizers
from bigjax.data.lm import token_dtype

MANIFEST = "manifest.json"
PROGRESS = ".prepare"  # the plan and each finished shard's entry, while and after preparing
FORMATS = ("text", "jsonl", "parquet", "hf")
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the output depends on, besides the inputs: a rerun must match them to resume."""

  format: str
  field: str
  tokenizer: str  # "byte" or a SentencePiece model's absolute path
  fingerprint: str  # tokenizers.fingerprint: the same ids whatever the file is called
  record_tokens: int


# Planning: files -> pieces (byte ranges, or row groups) -> units of about shard_bytes each.

def input_files(inputs: list[str], fmt: str) -> list[str]:
  """Every file named, or found below a named directory (text: any file; jsonl: *.jsonl and
  *.json; parquet: *.parquet), sorted; a name that matches nothing is an error. For hf, each
  name is one dataset (a save_to_disk directory, or files `datasets` reads)."""
  suffixes = {"text": ("",), "jsonl": (".jsonl", ".json"), "parquet": (".parquet",)}.get(fmt)
  files = []
  for name in inputs:
    if fmt == "hf" and os.path.exists(name):
      files.append(name)
    elif os.path.isdir(name):
      found = (p for p in glob.glob(os.path.join(name, "**", "*"), recursive=True)
               if os.path.isfile(p) and p.endswith(suffixes))
      files += sorted(found)
    elif os.path.isfile(name):
      files.append(name)
    else:
      raise ConfigError(f"--input {name!r} does not exist")
  return [os.path.abspath(f) for f in files]


def _line_cuts(path: str, size: int, target: int) -> list[int]:
  """Byte offsets that cut a file into pieces of about `target` bytes, each after a newline."""
  cuts = [0]
  with open(path, "rb") as f:
    while cuts[-1] + target < size:
      f.seek(cuts[-1] + target)
      f.readline()
      if f.tell() >= size:
        break
      cuts.append(f.tell())
  return cuts + [size]


def _pieces(path: str, fmt: str, target: int) -> list[tuple[list, int]]:
  """[([path, start, stop], input bytes)]: byte ranges for text and JSONL, row groups for
  Parquet, row ranges of about `target` bytes for a Hugging Face dataset."""
  if fmt == "hf":
    rows = hf.training_rows(path)
    bytes_per_row = max(1, rows.data.nbytes // max(1, len(rows)))
    step = max(1, target // bytes_per_row)
    return [([path, a, min(a + step, len(rows))], (min(a + step, len(rows)) - a) * bytes_per_row)
            for a in range(0, len(rows), step)]
  if fmt == "parquet":
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    return [([path, g, g + 1], meta.row_group(g).total_byte_size)
            for g in range(meta.num_row_groups)]
  size = os.path.getsize(path)
  cuts = _line_cuts(path, size, target)
  return [([path, a, b], b - a) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def plan(files: list[str], fmt: str, shard_bytes: int) -> list[dict]:
  """Units of consecutive pieces, each about `shard_bytes` of input: one shard each."""
  units, pieces, size = [], [], 0
  for path in files:
    for piece, piece_size in _pieces(path, fmt, shard_bytes):
      pieces.append(piece)
      size += piece_size
      if size >= shard_bytes:
        units.append({"pieces": pieces, "bytes": size})
        pieces, size = [], 0
  if pieces:
    units.append({"pieces": pieces, "bytes": size})
  return units


# Reading: a piece -> its documents.

def _line_number(path: str, offset: int) -> int:
  """1-based number of the line starting at byte `offset` (counted only to report an error)."""
  with open(path, "rb") as f:
    return f.read(offset).count(b"\n") + 1


def _jsonl_documents(path: str, start: int, stop: int, field: str) -> Iterator[str]:
  with open(path, "rb") as f:
    f.seek(start)
    lines = f.read(stop - start).split(b"\n")
  offset = start
  for line in lines:
    line_start, offset = offset, offset + len(line) + 1
    if not line.strip():
      continue
    where = lambda: f"{path}:{_line_number(path, line_start)}"
    record = jsonl.parse(line, where)
    if not isinstance(record.get(field), str):
      raise ConfigError(f"{where()}: no text field {field!r} (fields: {', '.join(record)}); "
                        f"set --field")
    yield record[field]


def _parquet_documents(path: str, group: int, field: str) -> Iterator[str]:
  import pyarrow.parquet as pq

  parquet = pq.ParquetFile(path)
  if field not in parquet.schema_arrow.names:
    raise ConfigError(f"{path}: no column {field!r} (columns: "
                      f"{', '.join(parquet.schema_arrow.names)}); set --field")
  for text in parquet.read_row_group(group, columns=[field]).column(0).to_pylist():
    if not isinstance(text, str):
      raise ConfigError(f"{path}: column {field!r} holds {type(text).__name__}, not text")
    yield text


def _hf_documents(path: str, start: int, stop: int, field: str) -> Iterator[str]:
  rows = hf.training_rows(path)
  if field not in rows.column_names:
    raise ConfigError(f"{path}: no column {field!r} (columns: {', '.join(rows.column_names)}); "
                      f"set --field")
  for i, text in enumerate(rows[start:stop][field], start=start):
    if not isinstance(text, str):
      raise ConfigError(f"{path}: row {i}'s {field!r} is {type(text).__name__}, not text")
    yield text


def documents(piece: list, fmt: str, field: str) -> Iterator[tuple[str, bool]]:
  """(text, whether it ends a document) for each document or part of one in a piece."""
  path, start, stop = piece
  if fmt == "text":
    with open(path, "rb") as f:
      f.seek(start)
      text = f.read(stop - start).decode("utf-8", errors="replace")
    yield text, stop == os.path.getsize(path)  # a large file's earlier pieces continue it
  elif fmt == "jsonl":
    yield from ((text, True) for text in _jsonl_documents(path, start, stop, field))
  elif fmt == "hf":
    yield from ((text, True) for text in _hf_documents(path, start, stop, field))
  else:
    yield from ((text, True) for text in _parquet_documents(path, start, field))


# Writing one shard.

def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


@functools.cache
def _tokenizer(spec: str) -> tokenizers.Tokenizer:
  return tokenizers.from_spec(spec)  # once per worker process


def shard_name(index: int) -> str:
  return f"shard-{index:05d}.array_record"


class _Records:
  """Token ids -> ArrayRecord records of exactly `size` ids each (the shard's last one shorter).

  One record per chunk, uncompressed: reading a training window touches only the records it
  spans, with no chunk of other records to decompress.
  """

  def __init__(self, path: str, size: int, dtype: np.dtype):
    from array_record.python import array_record_module

    self.size, self.dtype, self.tokens, self.records = size, dtype, 0, 0
    self._writer = array_record_module.ArrayRecordWriter(path, "group_size:1,uncompressed")
    self._pending = np.zeros(0, dtype)

  def add(self, ids: np.ndarray) -> None:
    stream = np.concatenate([self._pending, ids.astype(self.dtype)])
    full = len(stream) // self.size * self.size
    for first in range(0, full, self.size):
      self._write(stream[first:first + self.size])
    self._pending = stream[full:]

  def _write(self, ids: np.ndarray) -> None:
    self._writer.write(ids.tobytes())
    self.tokens, self.records = self.tokens + len(ids), self.records + 1

  def close(self) -> None:
    if len(self._pending):
      self._write(self._pending)
    self._writer.close()


def write_shard(out: str, index: int, unit: dict, settings: Settings) -> dict:
  """Tokenizes one unit into OUT/shard-INDEX.array_record; returns (and records) its entry."""
  tokenizer = _tokenizer(settings.tokenizer)
  final = os.path.join(out, shard_name(index))
  records = _Records(final + ".tmp", settings.record_tokens, token_dtype(tokenizer.vocab_size))
  docs = 0
  for piece in unit["pieces"]:
    for text, ends_document in documents(piece, settings.format, settings.field):
      records.add(tokenizer.encode(text))
      if ends_document:
        records.add(np.array([tokenizer.eos_id]))
        docs += 1
  records.close()
  os.replace(final + ".tmp", final)
  entry = {"file": shard_name(index), "tokens": records.tokens, "documents": docs,
           "records": records.records, "input_bytes": unit["bytes"],
           "bytes": os.path.getsize(final), "sha256": _sha256(final)}
  _write_json(os.path.join(out, PROGRESS, f"{index:05d}.json"), entry)
  return entry


def _write_json(path: str, value) -> None:
  """Whole or not at all: written to a temporary name, then renamed."""
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=1)
  os.replace(path + ".tmp", path)


# The whole corpus.

def _finished(out: str, index: int) -> dict | None:
  """The entry of a shard an earlier run finished, verified against its checksum; None if the
  shard still has to be written."""
  entry_path = os.path.join(out, PROGRESS, f"{index:05d}.json")
  shard = os.path.join(out, shard_name(index))
  if not (os.path.exists(entry_path) and os.path.exists(shard)):
    return None
  with open(entry_path) as f:
    entry = json.load(f)
  if os.path.getsize(shard) != entry["bytes"] or _sha256(shard) != entry["sha256"]:
    raise ConfigError(f"{shard} is corrupt (its sha256 differs from the one recorded when it "
                      f"was written); delete it and rerun prepare to write it again")
  return entry


def _start(out: str, settings: Settings, units: list[dict]) -> None:
  """Records the plan, or checks that an earlier run in `out` that finished shards had the same
  one (an earlier run that finished none, say one stopped by a bad input line, is replaced)."""
  progress = os.path.join(out, PROGRESS)
  os.makedirs(progress, exist_ok=True)
  plan_path = os.path.join(progress, "plan.json")
  wanted = {"settings": dataclasses.asdict(settings), "units": units}
  finished = [f for f in os.listdir(progress) if f[0].isdigit()]
  if os.path.exists(plan_path) and finished:
    with open(plan_path) as f:
      if json.load(f) != wanted:
        raise ConfigError(f"--out={out} holds shards of other inputs or settings; use a new "
                          f"--out, or delete it to start over")
  else:
    _write_json(plan_path, wanted)


def prepare(inputs: list[str], out: str, tokenizer: str, fmt: str = "text", field: str = "text",
            workers: int = 1, shard_mb: float = 64, record_tokens: int = 4096,
            progress: bool = True) -> dict:
  """Writes (or finishes writing) the shards of `inputs` into `out`; returns the manifest."""
  if fmt not in FORMATS:
    raise ConfigError(f"--format={fmt!r}; use one of {', '.join(FORMATS)}")
  spec = tokenizer if tokenizer == "byte" else os.path.abspath(tokenizer)
  settings = Settings(fmt, field, spec, tokenizers.fingerprint(_tokenizer(spec)), record_tokens)
  units = plan(input_files(inputs, fmt), fmt, max(1, int(shard_mb * 2**20)))
  if not units:
    raise ConfigError(f"--input={','.join(inputs)} holds no {fmt} input (no file, or only empty "
                      f"ones)")
  _start(out, settings, units)
  entries = {i: _finished(out, i) for i in range(len(units))}
  todo = [i for i, entry in entries.items() if entry is None]
  start = time.perf_counter()
  entries |= _write_shards(out, units, todo, settings, workers, progress)
  manifest = _manifest(settings, [entries[i] for i in range(len(units))])
  if not manifest["documents"]:
    raise ConfigError(f"--input={','.join(inputs)} holds no documents")
  _write_json(os.path.join(out, MANIFEST), manifest)
  written = sum(units[i]["bytes"] for i in todo) / 2**20
  seconds = time.perf_counter() - start
  manifest["report"] = (f"{out}: {len(units)} shards, {manifest['tokens']:,} tokens, "
                        f"{manifest['documents']:,} documents; "
                        + (f"{len(todo)} shards written now ({written:.1f} MB of input in "
                           f"{seconds:.1f} s, {written / max(seconds, 1e-9):.1f} MB/s), "
                           f"{len(units) - len(todo)} kept" if todo else
                           "every shard was already written and verifies"))
  return manifest


def _write_shards(out, units, todo, settings, workers, progress) -> dict[int, dict]:
  """Writes the shards numbered in `todo`, `workers` at a time, with a progress bar in bytes."""
  from tqdm import tqdm

  bar = tqdm(total=sum(u["bytes"] for u in units), unit="B", unit_scale=True, desc="prepare",
             initial=sum(u["bytes"] for i, u in enumerate(units) if i not in todo),
             disable=not progress)
  entries = {}
  with bar:
    if workers <= 1:
      for i in todo:
        entries[i] = write_shard(out, i, units[i], settings)
        bar.update(units[i]["bytes"])
      return entries
    # Forked workers start at once, with this process's modules already imported; they run
    # tokenizers and file writes only, never JAX. Spawn where fork does not exist.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)
    try:
      futures = {pool.submit(write_shard, out, i, units[i], settings): i for i in todo}
      for future in concurrent.futures.as_completed(futures):
        i = futures[future]
        entries[i] = future.result()  # a worker's error (a bad input line) is raised here
        bar.update(units[i]["bytes"])
    finally:
      pool.shutdown(cancel_futures=True)  # on an error, shards not yet started are not begun
  return entries


def _manifest(settings: Settings, shards: list[dict]) -> dict:
  """What training reads: the tokenizer, the token layout, the totals and every shard."""
  tokenizer = _tokenizer(settings.tokenizer)
  return {"format_version": FORMAT_VERSION,
          "tokenizer": {"spec": settings.tokenizer, "fingerprint": settings.fingerprint,
                        "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id},
          "dtype": token_dtype(tokenizer.vocab_size).name,
          "record_tokens": settings.record_tokens,
          "tokens": sum(s["tokens"] for s in shards),
          "documents": sum(s["documents"] for s in shards),
          "input_bytes": sum(s["input_bytes"] for s in shards),
          "input": {"format": settings.format, "field": settings.field},
          "shards": shards}


def main(argv) -> None:
  from absl import flags

  f = flags.FLAGS
  try:
    manifest = prepare(f.input, f.out, f.tokenizer, f.format, f.field, f.workers, f.shard_mb,
                       f.record_tokens, progress=sys.stderr.isatty())
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(manifest["report"])


if __name__ == "__main__":
  from absl import app, flags

  from bigjax import cli

  flags.DEFINE_list("input", None, "files or directories to tokenize (comma-separated)")
  flags.DEFINE_string("out", None, "directory for the shards and manifest.json")
  flags.DEFINE_string("tokenizer", "byte", '"byte" or a SentencePiece model file')
  flags.DEFINE_enum("format", "text", FORMATS, "text: a file is a document; jsonl: a line; "
                    "parquet: a row; hf: a row of a local Hugging Face dataset")
  flags.DEFINE_string("field", "text", "the text field (jsonl) or column (parquet)")
  flags.DEFINE_integer("workers", 1, "processes tokenizing shards at once")
  flags.DEFINE_float("shard_mb", 64, "input per shard, in MB")
  flags.DEFINE_integer("record_tokens", 4096, "token ids per ArrayRecord record")
  flags.mark_flags_as_required(["input", "out"])
  app.run(main, flags_parser=cli.parse_flags)
