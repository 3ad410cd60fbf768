"""Chat and instruction fine-tuning data: conversations -> tokens with an assistant mask -> packed
rows with segment ids.

Records are the lines of JSONL files (data.source="jsonl") or the rows of a local Hugging Face
dataset (data.source="hf", bigjax.data.hf), each one of
    {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}
    {"prompt": "...", "completion": "..."}        (a user turn, then the assistant's answer)

A conversation is rendered with the run's chat template (data.chat_template, bigjax.data.chat)
into segments tagged with whether the assistant wrote them, and tokenized segment by segment, so
every token knows its author. Inputs are its tokens but the last, targets the next tokens, and
the loss is taken only where the target is the assistant's: the model learns to answer, not to
ask. A conversation longer than seq_len + 1 tokens is cut to that length.

Packing: each row of seq_len positions holds several conversations one after another (next fit,
in a new shuffled order every epoch), each with its own `positions` (0, 1, ... from its start)
and `segment_ids` (1, 2, ... along the row; 0 for the padding after the last), and attention
honours the segments (bigjax.models.layers.Attention): a packed conversation sees exactly what it
would see alone.

Splits: data.path is a directory holding train.jsonl and validation.jsonl, or one JSONL file
whose last data.val_fraction of conversations is held out.
"""

import bisect
import os
import threading

import ml_collections
import numpy as np

from bigjax.config_checks import ConfigError
from bigjax.data import chat, hf, jsonl

SOURCES = ("jsonl", "hf")
SPLIT_FILES = {"train": "train.jsonl", "validation": "validation.jsonl"}


class Records:
  """Random access to a split's records, with where each one came from for error messages."""

  def __init__(self, rows, where):
    self._rows, self._where = rows, where

  def __len__(self) -> int:
    return len(self._rows)

  def __getitem__(self, i: int) -> dict:
    return self._rows[i]

  def where(self, i: int) -> str:
    return self._where(i)


def _jsonl_records(data: ml_collections.ConfigDict, split: str) -> Records:
  if os.path.isdir(data.path):
    path = os.path.join(data.path, SPLIT_FILES[split])
    if not os.path.exists(path):
      raise ConfigError(f"data.path={data.path!r} has no {SPLIT_FILES[split]}; put the "
                        f"{split} conversations there, or point data.path at one JSONL file")
    lines = list(jsonl.read(path))
  else:
    lines = list(jsonl.read(data.path))
    cut = int(len(lines) * (1 - data.val_fraction))
    lines = lines[:cut] if split == "train" else lines[cut:]
  return Records([record for _, record in lines], lambda i: lines[i][0])


def records(data: ml_collections.ConfigDict, split: str) -> Records:
  """The conversations of `split` ("train" or "validation"), read by index."""
  if data.source not in SOURCES:
    raise ConfigError(f"data.source={data.source!r}: chat fine-tuning reads "
                      f"{' or '.join(SOURCES)} (conversations, or prompt/completion pairs)")
  if not data.path or not os.path.exists(data.path):
    raise ConfigError(f"data.path={data.path!r} does not exist; point it at JSONL "
                      f"conversations or a Hugging Face dataset")
  if data.source == "jsonl":
    return _jsonl_records(data, split)
  rows = hf.rows(data, split)
  return Records(rows, lambda i: f"{data.path} ({split} row {i})")


def messages(record: dict, where: str) -> list[dict]:
  """A record's conversation; prompt/completion becomes a user turn and an assistant turn."""
  if "messages" in record:
    conversation = record["messages"]
  elif isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
    conversation = [{"role": "user", "content": record["prompt"]},
                    {"role": "assistant", "content": record["completion"]}]
  else:
    raise ConfigError(f"{where}: needs \"messages\", or \"prompt\" and \"completion\" strings "
                      f"(fields: {', '.join(record) or 'none'})")
  try:
    chat.check_messages(conversation)
  except ConfigError as e:
    raise ConfigError(f"{where}: {e}") from None
  if not any(m["role"] == "assistant" for m in conversation):
    raise ConfigError(f"{where}: the conversation has no assistant turn to learn from")
  return conversation


def tokenize(conversation: list[dict], template: str, tokenizer) -> tuple[np.ndarray, np.ndarray]:
  """(tokens_T, written by the assistant_T) of the rendered conversation."""
  pieces, authors = [], []
  for text, is_assistant in chat.render(conversation, template):
    ids = tokenizer.encode(text)
    pieces.append(ids)
    authors.append(np.full(len(ids), is_assistant))
  return np.concatenate(pieces).astype(np.int32), np.concatenate(authors)


class Conversations:
  """A split's conversations as token arrays of at most seq_len + 1 tokens."""

  def __init__(self, split_records: Records, template: str, tokenizer, seq_len: int):
    self.records, self.template, self.tokenizer = split_records, template, tokenizer
    self.seq_len = seq_len
    # Positions each conversation takes in a row (its tokens but one). Reading every record now
    # also checks them all before anything compiles.
    self.lengths = np.array([len(self.example(i)[0]) - 1 for i in range(len(self))], np.int64)

  def __len__(self) -> int:
    return len(self.records)

  def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    conversation = messages(self.records[i], self.records.where(i))
    tokens_T, assistant_T = tokenize(conversation, self.template, self.tokenizer)
    return tokens_T[:self.seq_len + 1], assistant_T[:self.seq_len + 1]


def pack_row(examples: list[tuple[np.ndarray, np.ndarray]], seq_len: int) -> dict:
  """Conversations one after another in one row, each with its segment id and own positions."""
  row = {k: np.zeros(seq_len, np.int32) for k in ("inputs", "targets", "positions",
                                                  "segment_ids")}
  row["weights"] = np.zeros(seq_len, np.float32)
  start = 0
  for segment, (tokens_T, assistant_T) in enumerate(examples, start=1):
    span = slice(start, start + len(tokens_T) - 1)
    row["inputs"][span], row["targets"][span] = tokens_T[:-1], tokens_T[1:]
    row["weights"][span] = assistant_T[1:]  # the loss is on the tokens the assistant wrote
    row["positions"][span] = np.arange(len(tokens_T) - 1)
    row["segment_ids"][span] = segment
    start = span.stop
  return row


def next_fit(lengths: np.ndarray, order: np.ndarray, capacity: int) -> list[np.ndarray]:
  """Rows of example indices: `order` filled in, a new row whenever the next does not fit."""
  rows, current, used = [], [], 0
  for i in order:
    if current and used + lengths[i] > capacity:
      rows.append(np.array(current))
      current, used = [], 0
    current.append(i)
    used += lengths[i]
  return rows + ([np.array(current)] if current else [])


class PackedRows:
  """Endless packed rows: epoch e packs every conversation once, in an order drawn from (seed, e).

  Row r's content depends only on (data, seed, r); the row counts of the epochs before it are
  computed once, as the rows are asked for (a resumed run computes them up to its epoch).
  """

  def __init__(self, conversations: Conversations, seq_len: int, seed: int):
    self.conversations, self.seq_len, self.seed = conversations, seq_len, seed
    self._first_rows = [0]  # row number where each epoch computed so far begins
    self._plans = {}  # epoch -> its rows; the last two, as a batch may straddle two epochs
    self._lock = threading.Lock()  # grain reads rows from several threads

  def __getstate__(self):  # grain's worker processes get a copy; a lock does not travel
    return {k: v for k, v in self.__dict__.items() if k != "_lock"}

  def __setstate__(self, state):
    self.__dict__.update(state, _lock=threading.Lock())

  def _plan(self, epoch: int) -> list[np.ndarray]:
    if epoch not in self._plans:
      lengths = self.conversations.lengths
      order = np.random.default_rng([self.seed, epoch]).permutation(len(lengths))
      self._plans = {e: p for e, p in self._plans.items() if e == epoch - 1}
      self._plans[epoch] = next_fit(lengths, order, self.seq_len)
    return self._plans[epoch]

  def rows(self, r: int) -> np.ndarray:
    """Indices of the conversations in row r."""
    with self._lock:
      while self._first_rows[-1] <= r:
        self._first_rows.append(self._first_rows[-1] + len(self._plan(len(self._first_rows) - 1)))
      epoch = bisect.bisect_right(self._first_rows, r) - 1
      return self._plan(epoch)[r - self._first_rows[epoch]]

  def read(self, r: int, rng: np.random.Generator | None = None) -> dict:
    del rng  # the packing order already carries the randomness
    return pack_row([self.conversations.example(int(i)) for i in self.rows(r)], self.seq_len)
