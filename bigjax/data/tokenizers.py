"""Tokenizers: bytes by default (no file, no training), SentencePiece for real corpora; the
special ids the encoder tasks add above a tokenizer's own."""

import dataclasses
import hashlib
import json
import os
from typing import Callable, Iterable, Protocol

import numpy as np

from bigjax.config_checks import ConfigError


class Tokenizer(Protocol):
  vocab_size: int
  eos_id: int

  def encode(self, text: str) -> np.ndarray: ...

  def decode(self, ids: Iterable[int]) -> str: ...

  def template_tokens(self) -> dict[str, str]:
    """Strings a Jinja chat template may use (bos_token, eos_token); {} when there are none."""
    ...


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255. NUL (id 0) never occurs in text, so it marks document ends."""

  vocab_size = 256
  eos_id = 0

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    return bytes(int(i) for i in ids if i != self.eos_id).decode("utf-8", errors="replace")

  def template_tokens(self) -> dict[str, str]:
    return {}


class SentencePieceTokenizer:
  """A SentencePiece model; `train` builds one from text when the model file does not exist."""

  def __init__(self, model_path: str):
    import sentencepiece as spm  # optional dependency, only needed for this tokenizer

    from bigjax.config_checks import ConfigError
    try:
      self._sp = spm.SentencePieceProcessor(model_file=model_path)
    except (OSError, RuntimeError) as e:
      raise ConfigError(f"data.tokenizer_path={model_path!r} is not a SentencePiece model "
                        f"({str(e).splitlines()[0][:200]}); point it at a .model file, or at a "
                        f"missing path to train one there") from None
    self.vocab_size = self._sp.get_piece_size()
    self.eos_id = self._sp.eos_id()

  @staticmethod
  def train(texts: Iterable[str], model_path: str, vocab_size: int) -> None:
    import sentencepiece as spm

    os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
    lines = (line for text in texts for line in text.splitlines() if line.strip())
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines, model_prefix=model_path.removesuffix(".model"),
        vocab_size=vocab_size, model_type="bpe", character_coverage=1.0, byte_fallback=True,
        pad_id=-1, unk_id=0, bos_id=-1, eos_id=1, minloglevel=2,
        # Keep text as written: the default NFKC rule and space folding would lose indentation
        # and newlines, so decode(encode(text)) would not give the text back.
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        input_sentence_size=2_000_000, shuffle_input_sentence=True)

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), dtype=np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids if i != self.eos_id])

  def template_tokens(self) -> dict[str, str]:
    return {}


def sentencepiece(path: str, vocab_size: int,
                  texts: Callable[[], Iterable[str]]) -> SentencePieceTokenizer:
  """The SentencePiece model at `path`, trained first from `texts()` when the file is missing:
  on process 0 alone, the others waiting for it (and failing with its error if it fails)."""
  from bigjax import multihost

  if not os.path.exists(path):
    multihost.on_primary(lambda: SentencePieceTokenizer.train(texts(), path, vocab_size))
  return SentencePieceTokenizer(path)


def from_spec(spec: str) -> Tokenizer:
  """"byte", or the path of a SentencePiece model file (what `prepare --tokenizer` takes)."""
  if spec == "byte":
    return ByteTokenizer()
  if not os.path.isfile(spec):
    raise ConfigError(f"tokenizer {spec!r} is neither 'byte' nor a SentencePiece model file")
  return SentencePieceTokenizer(spec)


# Text whose encoding joins the fingerprint: two tokenizers that split it differently differ.
_PROBE = "def f(x):\n    return x  # naïve café, 12345 ✓\n"


def fingerprint(tokenizer: Tokenizer) -> str:
  """A short hash of what the tokenizer does (its vocabulary, end id and a sample encoding), so
  token ids written with one tokenizer are never read with another, whatever its file is called."""
  described = [tokenizer.vocab_size, tokenizer.eos_id, tokenizer.encode(_PROBE).tolist(),
               [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]]
  return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """[PAD] [BOS] [CLS] [SEP] [MASK], numbered from the first id the tokenizer does not use, so
  the byte tokenizer keeps ids 0..255 for bytes (0 still ends a document). A BERT WordPiece
  brings its own [PAD] [CLS] [SEP] [MASK] (bigjax.hf.tokenizer.VocabularySpecialTokens, the same
  interface)."""

  base_vocab: int

  @property
  def pad(self) -> int:
    return self.base_vocab

  @property
  def bos(self) -> int:  # first decoder input of a seq2seq target
    return self.base_vocab + 1

  @property
  def cls(self) -> int:
    return self.base_vocab + 2

  @property
  def sep(self) -> int:
    return self.base_vocab + 3

  @property
  def mask(self) -> int:
    return self.base_vocab + 4

  @property
  def vocab_size(self) -> int:
    return self.base_vocab + 5

  def is_special(self, tokens: np.ndarray) -> np.ndarray:
    return tokens >= self.base_vocab
