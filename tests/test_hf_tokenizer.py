"""A model's own tokenizer in bigjax: encode and decode equal to transformers' for a byte-level
BPE and a WordPiece (special tokens included), the byte tokenizer written as a tokenizer.json, the
BERT tasks on the tokenizer's own [CLS] [SEP] [MASK] [PAD], and the chat template carried over."""

import numpy as np
import pytest

pytest.importorskip("torch")  # tests/hf_models.py builds models with it
transformers = pytest.importorskip("transformers")

from bigjax.config_checks import ConfigError  # noqa: E402
from bigjax.data import chat  # noqa: E402
from bigjax.data.tokenizers import ByteTokenizer  # noqa: E402
from bigjax.hf import convert  # noqa: E402
from bigjax.hf.tokenizer import HuggingFaceTokenizer, write_byte_tokenizer  # noqa: E402
from bigjax.tasks.lm import LanguageModelTask  # noqa: E402
from bigjax.tasks.mlm import MaskedLanguageModelTask  # noqa: E402
from tests import hf_models  # noqa: E402


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("bpe"))
  hf_models.save_bpe_tokenizer(directory)
  return directory


@pytest.fixture(scope="module")
def wordpiece_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("wordpiece"))
  hf_models.save_wordpiece_tokenizer(directory)
  return directory


def _assert_same_as_transformers(directory: str, text: str):
  ours = HuggingFaceTokenizer(directory)
  theirs = transformers.AutoTokenizer.from_pretrained(directory)
  for add in (False, True):
    assert ours.encode(text, add).tolist() == theirs.encode(text, add_special_tokens=add)
  ids = ours.encode(text, add_special_tokens=True)
  for skip in (False, True):
    assert ours.decode(ids, skip) == theirs.decode(ids.tolist(), skip_special_tokens=skip)
  return ours, theirs


def test_byte_level_bpe_matches_transformers(bpe_dir):
  text = hf_models.TEXT + "<|endoftext|>next document"
  ours, theirs = _assert_same_as_transformers(bpe_dir, text)
  assert ours.decode(ours.encode(text), skip_special_tokens=False) == text  # lossless
  assert ours.eos_id == theirs.eos_token_id and ours.ids["bos"] == theirs.bos_token_id
  assert ours.eos_id in ours.encode(text)  # the special token written in the text is one id


def test_wordpiece_matches_transformers(wordpiece_dir):
  ours, theirs = _assert_same_as_transformers(wordpiece_dir, hf_models.TEXT + " a [MASK] word")
  special = ours.encoder_special_tokens()
  assert (special.cls, special.sep, special.mask, special.pad) == (
      theirs.cls_token_id, theirs.sep_token_id, theirs.mask_token_id, theirs.pad_token_id)
  assert ours.eos_id == theirs.sep_token_id  # BERT's documents are separated by [SEP]


def test_byte_tokenizer_file_reproduces_bigjax_bytes(tmp_path):
  write_byte_tokenizer(str(tmp_path))
  theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  text = hf_models.TEXT + "\x00 after a NUL, Ā stays two bytes"
  expected = ByteTokenizer().encode(text).tolist()
  assert theirs.encode(text, add_special_tokens=False) == expected
  assert theirs.decode(expected) == text


@pytest.fixture(scope="module")
def mlm_task(make_config, wordpiece_dir):
  config = make_config(**{"task": "mlm", "data.tokenizer": "hf",
                          "data.tokenizer_path": wordpiece_dir, "model.token_types": 2})
  return MaskedLanguageModelTask(config)


def test_bert_task_uses_the_tokenizers_own_special_ids(mlm_task, wordpiece_dir):
  tokenizer = transformers.AutoTokenizer.from_pretrained(wordpiece_dir)
  assert mlm_task.model_cfg.vocab_size == len(tokenizer)  # no ids added above the vocabulary
  batch = next(iter(mlm_task.train_data(8, seed=0)))
  assert (batch["targets"][:, 0] == tokenizer.cls_token_id).all()
  assert (batch["targets"][:, -1] == tokenizer.sep_token_id).all()
  graded = batch["weights"] > 0
  assert not np.isin(batch["targets"][graded], tokenizer.all_special_ids).any()
  # 80% of the graded positions become [MASK]: over 8 x 32 tokens at 15%, well over one.
  assert (batch["inputs"][graded] == tokenizer.mask_token_id).sum() > 1


def test_lm_task_reads_the_tokenizer_and_checks_the_vocabulary(make_config, bpe_dir):
  hf = {"data.tokenizer": "hf", "data.tokenizer_path": bpe_dir}
  task = LanguageModelTask(make_config(**hf, **{"model.vocab_size": 384}))
  assert task.model_cfg.vocab_size == 384 and task.tokenizer.vocab_size == hf_models.BPE_VOCAB
  window = next(iter(task.eval_data(2, 1)))["inputs"]
  assert window.max() < hf_models.BPE_VOCAB
  with pytest.raises(ConfigError, match="model.vocab_size=100 is smaller than the 320 ids"):
    LanguageModelTask(make_config(**hf, **{"model.vocab_size": 100}))


def test_chat_template_is_carried_and_renders_as_transformers(bpe_dir, tmp_path):
  hf_dir = hf_models.save(hf_models.gpt2(), str(tmp_path / "model"), bpe_dir)
  config = convert.run_config(hf_dir)
  assert config.data.chat_template == hf_models.CHAT_TEMPLATE
  messages = [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5"}]
  ours = chat.render_text(messages, config.data.chat_template, add_generation_prompt=True,
                          special_tokens=HuggingFaceTokenizer(hf_dir).template_tokens())
  theirs = transformers.AutoTokenizer.from_pretrained(hf_dir).apply_chat_template(
      messages, tokenize=False, add_generation_prompt=True)
  assert ours == theirs
