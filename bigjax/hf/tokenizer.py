"""Hugging Face tokenizers in bigjax: a model's own `tokenizer.json`, and bigjax's bytes as one.

`HuggingFaceTokenizer(directory)` runs the directory's `tokenizer.json` through the `tokenizers`
library (byte-level BPE for GPT-2 and Llama, WordPiece for BERT), so a run that imported a model
reads text exactly as the model was trained to. Its special tokens ([BOS], [EOS], [PAD], BERT's
[CLS] [SEP] [MASK]) are the ones the model's files name: `tokenizer_config.json`, else
`special_tokens_map.json`, else the ids in `config.json`. A chat template comes from
`chat_template.jinja` or `tokenizer_config.json`.

`write_byte_tokenizer(directory)` goes the other way for a run trained on bigjax's byte tokenizer:
a byte-level BPE with no merges whose id for each byte is the byte itself, so Hugging Face
tooling encodes text to the very ids the model saw.
"""

import dataclasses
import json
import os
import shutil
from typing import Iterable

import numpy as np
import tokenizers

from bigjax.config_checks import ConfigError

ROLES = ("bos", "eos", "pad", "unk", "cls", "sep", "mask")
# What a directory's tokenizer is made of; `copy_files` carries these into a run or an export.
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
         "chat_template.jinja")
# transformers' decode tidies the spaces WordPiece leaves before punctuation when
# tokenizer_config.json asks for it (never for BPE, whose spaces are part of the tokens).
_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


@dataclasses.dataclass(frozen=True)
class VocabularySpecialTokens:
  """BERT's [PAD] [CLS] [SEP] [MASK], held inside the tokenizer's own vocabulary, with the
  interface of bigjax.data.tokenizers.SpecialTokens (whose ids sit above the tokenizer's)."""

  pad: int
  cls: int
  sep: int
  mask: int
  vocab_size: int
  special_ids: tuple[int, ...]  # every id the tokenizer marks special: never masked, never text

  @property
  def bos(self) -> int:  # a seq2seq target's first input: BERT starts every sequence with [CLS]
    return self.cls

  @property
  def base_vocab(self) -> int:  # random replacements come from the whole vocabulary, as in BERT
    return self.vocab_size

  def is_special(self, tokens: np.ndarray) -> np.ndarray:
    return np.isin(tokens, self.special_ids)


class HuggingFaceTokenizer:
  """The `tokenizer.json` in `directory`, with the special ids its companion files name."""

  def __init__(self, directory: str):
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
      raise ConfigError(f"{directory} has no tokenizer.json; save the model's tokenizer there "
                        f"(tokenizer.save_pretrained(DIR) in transformers)")
    self.directory = directory
    self._tokenizer = tokenizers.Tokenizer.from_file(path)
    self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
    settings = _read_json(os.path.join(directory, "tokenizer_config.json"))
    self.tokens = _special_token_strings(directory, settings)
    self.ids = {role: self._tokenizer.token_to_id(token) for role, token in self.tokens.items()}
    self.ids = {role: i for role, i in self.ids.items() if i is not None}
    model_config = _read_json(os.path.join(directory, "config.json"))
    for role in ("bos", "eos", "pad"):  # a model's config.json may name ids its tokenizer does not
      if role not in self.ids and isinstance(model_config.get(f"{role}_token_id"), int):
        self.ids[role] = model_config[f"{role}_token_id"]
    # Documents are packed with an end-of-document id between them; BERT's is [SEP].
    eos = self.ids.get("eos", self.ids.get("sep"))
    if eos is None:
      raise ConfigError(f"the tokenizer in {directory} names no eos_token (or sep_token); add one "
                        f"to its tokenizer_config.json")
    self.eos_id = eos
    self._clean_up = (bool(settings.get("clean_up_tokenization_spaces"))
                      and type(self._tokenizer.model).__name__ != "BPE")
    self.chat_template = _chat_template(directory, settings)

  def encode(self, text: str, add_special_tokens: bool = False) -> np.ndarray:
    """Token ids of `text`; special tokens written in the text are recognised, and the model's
    own additions ([CLS] ... [SEP], Llama's <s>) come only with `add_special_tokens`."""
    ids = self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
    return np.asarray(ids, np.int32)

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    """The text of `ids`, without special tokens unless asked (as the byte tokenizer drops its
    end-of-document id)."""
    text = self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
    if self._clean_up:
      for before, after in _CLEAN_UP:
        text = text.replace(before, after)
    return text

  def encoder_special_tokens(self) -> VocabularySpecialTokens | None:
    """The [PAD] [CLS] [SEP] [MASK] of a BERT vocabulary; None when it lacks any of them."""
    if not all(role in self.ids for role in ("pad", "cls", "sep", "mask")):
      return None
    added = self._tokenizer.get_added_tokens_decoder()
    special_ids = {i for i, token in added.items() if token.special} | set(self.ids.values())
    return VocabularySpecialTokens(pad=self.ids["pad"], cls=self.ids["cls"], sep=self.ids["sep"],
                                   mask=self.ids["mask"], vocab_size=self.vocab_size,
                                   special_ids=tuple(sorted(special_ids)))

  def template_tokens(self) -> dict[str, str]:
    """bos_token and eos_token, as a Jinja chat template expects them (bigjax.data.chat)."""
    return {f"{role}_token": self.tokens[role] for role in ("bos", "eos") if role in self.tokens}


def _special_token_strings(directory: str, settings: dict) -> dict[str, str]:
  """role -> token text, from tokenizer_config.json, then special_tokens_map.json."""
  fallback = _read_json(os.path.join(directory, "special_tokens_map.json"))
  tokens = {}
  for role in ROLES:
    value = settings.get(f"{role}_token") or fallback.get(f"{role}_token")
    if isinstance(value, dict):  # a serialised AddedToken
      value = value.get("content")
    if isinstance(value, str) and value:
      tokens[role] = value
  return tokens


def _chat_template(directory: str, settings: dict) -> str:
  """The Jinja chat template, if the tokenizer has one ("" otherwise)."""
  path = os.path.join(directory, "chat_template.jinja")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return f.read()
  template = settings.get("chat_template") or ""
  if isinstance(template, list):  # several named templates: the default one
    template = next((t["template"] for t in template if t.get("name") == "default"), "")
  return template


def copy_files(source: str, destination: str, extra: tuple[str, ...] = ()) -> None:
  """The tokenizer files (and `extra` files) of `source` that exist, copied into `destination`."""
  os.makedirs(destination, exist_ok=True)
  for name in FILES + extra:
    if os.path.exists(os.path.join(source, name)):
      shutil.copyfile(os.path.join(source, name), os.path.join(destination, name))


def byte_characters() -> list[str]:
  """The stand-in character for each byte that byte-level BPE uses (GPT-2's alphabet): printable
  Latin-1 bytes stand for themselves, the others for code points 256, 257, ... in byte order."""
  printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)}
  chars, unprintable = [], 0
  for byte in range(256):
    chars.append(chr(byte) if byte in printable else chr(256 + unprintable))
    unprintable += byte not in printable
  return chars


def write_byte_tokenizer(directory: str) -> None:
  """tokenizer.json and tokenizer_config.json that encode text as bigjax's ByteTokenizer does:
  id b for byte b. NUL (id 0, bigjax's end of document) stays an ordinary byte, so that every
  text keeps its encoding; config.json names it as eos_token_id."""
  vocab = {char: byte for byte, char in enumerate(byte_characters())}
  tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                use_regex=False)
  tokenizer.decoder = tokenizers.decoders.ByteLevel()
  os.makedirs(directory, exist_ok=True)
  tokenizer.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False},
              f, indent=2)
