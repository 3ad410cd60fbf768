"""Random tiny Hugging Face models and tokenizers for the tests, built offline and saved to disk.

Weights are drawn with initializer_range=0.3 (transformers' default is 0.02) so that logits spread
over several units and a wrong mapping (a transpose, a swapped head, a missing norm) moves them by
far more than the 1e-4 tolerance, instead of hiding in near-zero outputs.
"""

import os

import numpy as np
import tokenizers
import torch
import transformers

# Mixed text: spaces and indentation, tabs, newlines, accents, CJK, an emoji, punctuation.
TEXT = ("Hello, world!  The quick brown fox\tjumps over the lazy dog.\n"
        "    def f(x):\n        return x ** 2  # déjà vu, naïve café\n\n"
        "日本語のテキスト and 中文 🙂 don't stop; it's 3.14159!\n")
INIT = 0.3
BPE_VOCAB = 320
WORDPIECE_VOCAB = 160
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _corpus() -> list[str]:
  lines = TEXT.splitlines() * 20
  return lines + [" ".join(f"word{i} token{i % 7}" for i in range(k, k + 12)) for k in range(40)]


def save_bpe_tokenizer(directory: str) -> transformers.PreTrainedTokenizerFast:
  """A byte-level BPE (GPT-2's kind) trained on the test text, with <|endoftext|> and a chat
  template, saved as transformers saves one."""
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = tokenizers.decoders.ByteLevel()
  bpe.train_from_iterator(_corpus(), tokenizers.trainers.BpeTrainer(
      vocab_size=BPE_VOCAB, special_tokens=["<|endoftext|>"],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
  tokenizer.chat_template = CHAT_TEMPLATE
  tokenizer.save_pretrained(directory)
  return tokenizer


def save_wordpiece_tokenizer(directory: str) -> transformers.PreTrainedTokenizerFast:
  """A BERT WordPiece (lowercasing, [CLS] text [SEP]) trained on the test text."""
  wordpiece = tokenizers.Tokenizer(tokenizers.models.WordPiece(unk_token="[UNK]"))
  wordpiece.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
  wordpiece.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
  wordpiece.decoder = tokenizers.decoders.WordPiece()
  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  wordpiece.train_from_iterator(_corpus(), tokenizers.trainers.WordPieceTrainer(
      vocab_size=WORDPIECE_VOCAB, special_tokens=specials))
  cls, sep = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
  wordpiece.post_processor = tokenizers.processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
      special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
      sep_token="[SEP]", mask_token="[MASK]", clean_up_tokenization_spaces=True)
  tokenizer.save_pretrained(directory)
  return tokenizer


def gpt2(init: float = INIT, **overrides) -> transformers.GPT2LMHeadModel:
  config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=BPE_VOCAB,
                                   n_positions=96, initializer_range=init, bos_token_id=0,
                                   eos_token_id=0, **overrides)
  return transformers.GPT2LMHeadModel(config)


def llama(kv_heads: int = 2, tied: bool = False, rope_theta: float = 500.0, init: float = INIT,
          **overrides) -> transformers.LlamaForCausalLM:
  config = transformers.LlamaConfig(
      num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=kv_heads,
      intermediate_size=48, vocab_size=BPE_VOCAB, max_position_embeddings=128,
      rms_norm_eps=1e-5, rope_theta=rope_theta, tie_word_embeddings=tied,
      initializer_range=init, bos_token_id=0, eos_token_id=0, **overrides)
  return transformers.LlamaForCausalLM(config)


def bert(classifier: bool = False, init: float = INIT, **overrides):
  config = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                   intermediate_size=48, vocab_size=WORDPIECE_VOCAB,
                                   max_position_embeddings=64, initializer_range=init,
                                   num_labels=3, **overrides)
  model_class = (transformers.BertForSequenceClassification if classifier
                 else transformers.BertForMaskedLM)
  return model_class(config)


def save(model, directory: str, tokenizer_dir: str, **save_kwargs) -> str:
  """`model` (in eval mode, seeded) saved with the tokenizer files of `tokenizer_dir`."""
  model.eval()
  model.save_pretrained(directory, **save_kwargs)
  for name in os.listdir(tokenizer_dir):
    with open(os.path.join(tokenizer_dir, name), "rb") as src, \
         open(os.path.join(directory, name), "wb") as dst:
      dst.write(src.read())
  return directory


def logits(model, tokens_BxL: np.ndarray, mask_BxL: np.ndarray | None = None) -> np.ndarray:
  with torch.no_grad():
    kwargs = {} if mask_BxL is None else {"attention_mask": torch.tensor(mask_BxL.astype(int))}
    return model(torch.tensor(tokens_BxL, dtype=torch.long), **kwargs).logits.float().numpy()
