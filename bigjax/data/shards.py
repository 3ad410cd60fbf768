"""Training from prepared shards (`python -m bigjax.data.prepare`): a token stream on disk.

`ShardStream` is the corpus's token stream as one sequence: its length is the manifest's token
count, and a slice reads the records it spans, no more. Training windows are slices
(bigjax.data.lm.TokenWindows), cut at whatever seq_len the run uses, so memory stays flat
whatever the corpus size: a process holds the manifest, an index of record positions kept on
disk, and the windows grain has read ahead. Each process reads only the windows of its rows.

The last `data.val_fraction` of the stream is held out for evaluation, as the text source holds
out the end of each file. A run checks that its tokenizer is the one the shards were written
with, and a record that cannot be read (a damaged file) stops the run with its shard named.
"""

import bisect
import json
import os

import numpy as np

from bigjax.config_checks import ConfigError
from bigjax.data import prepare, tokenizers


def read_manifest(directory: str) -> dict:
  """DIR/manifest.json, after checking every shard it lists is there with its recorded size."""
  path = os.path.join(directory, prepare.MANIFEST)
  if not os.path.exists(path):
    raise ConfigError(f"{directory} has no {prepare.MANIFEST}; write it with python -m "
                      f"bigjax.data.prepare --out={directory} (rerun it to finish an "
                      f"interrupted one)")
  with open(path) as f:
    manifest = json.load(f)
  if manifest.get("format_version") != prepare.FORMAT_VERSION:
    raise ConfigError(f"{path} was written by another version of bigjax.data.prepare; prepare "
                      f"the corpus again")
  for shard in manifest["shards"]:
    file = os.path.join(directory, shard["file"])
    if not os.path.exists(file) or os.path.getsize(file) != shard["bytes"]:
      raise ConfigError(f"{file} is missing or not the size prepare wrote; rerun prepare with "
                        f"--out={directory} to write it again")
  return manifest


def check_tokenizer(manifest: dict, tokenizer, directory: str) -> None:
  """Fails when `directory` was prepared with another tokenizer than this run's."""
  if manifest["tokenizer"]["fingerprint"] != tokenizers.fingerprint(tokenizer):
    raise ConfigError(f"{directory} was prepared with tokenizer {manifest['tokenizer']['spec']}, "
                      f"not this run's (data.tokenizer, data.tokenizer_path); use that one, or "
                      f"prepare the corpus again with yours")


class ShardStream:
  """Tokens [start, stop) of a prepared corpus's stream, read from its shards on demand."""

  def __init__(self, directory: str, start: int = 0, stop: int | None = None):
    import grain  # imported here: prepare's worker processes import this module without it

    self.directory = directory
    self.manifest = manifest = read_manifest(directory)
    self.start = start
    self.stop = manifest["tokens"] if stop is None else stop
    self._dtype = np.dtype(manifest["dtype"])
    shards = manifest["shards"]
    self._token_starts = np.cumsum([0] + [s["tokens"] for s in shards]).tolist()
    self._record_starts = np.cumsum([0] + [s["records"] for s in shards]).tolist()
    # The record index on disk, not in memory: a corpus of many records would otherwise hold
    # eight bytes per record in every process.
    self._records = grain.sources.ArrayRecordDataSource(
        [os.path.join(directory, s["file"]) for s in shards],
        reader_options={"index_storage_option": "offloaded", "footer_prefetch_bytes": "0"})

  def __len__(self) -> int:
    return self.stop - self.start

  def split(self, val_fraction: float) -> tuple["ShardStream", "ShardStream"]:
    """(train, validation): the validation part is the last `val_fraction` of the tokens."""
    cut = self.start + int(len(self) * (1 - val_fraction))
    return (ShardStream(self.directory, self.start, cut),
            ShardStream(self.directory, cut, self.stop))

  def __getitem__(self, index: slice) -> np.ndarray:
    first, stop, step = index.indices(len(self))
    if step != 1:
      raise ValueError("a ShardStream is sliced with step 1 only")
    parts, position, stop = [], self.start + first, self.start + max(first, stop)
    while position < stop:
      shard = bisect.bisect_right(self._token_starts, position) - 1
      record, offset = divmod(position - self._token_starts[shard], self.manifest["record_tokens"])
      part = self._record(shard, record)[offset:offset + stop - position]
      parts.append(part)
      position += len(part)
    return np.concatenate(parts) if parts else np.zeros(0, self._dtype)

  def _record(self, shard: int, record: int) -> np.ndarray:
    """Record `record` of shard `shard`, checked to hold as many ids as prepare wrote into it."""
    entry = self.manifest["shards"][shard]
    size = self.manifest["record_tokens"]
    expected = min(size, entry["tokens"] - record * size)
    where = f"{os.path.join(self.directory, entry['file'])}, record {record}"
    try:
      ids = np.frombuffer(self._records[self._record_starts[shard] + record], self._dtype)
    except Exception as e:  # ArrayRecord raises RuntimeError on a bad chunk hash, and others
      reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
      raise ConfigError(f"{where} cannot be read ({reason}); rerun prepare with "
                        f"--out={self.directory}: it checks every shard") from None
    if len(ids) != expected:
      raise ConfigError(f"{where} holds {len(ids)} token ids, not {expected}; rerun prepare "
                        f"with --out={self.directory}: it checks every shard")
    return ids
