"""German -> English translation on WMT14 with a Transformer-base encoder-decoder, scored in BLEU.

    python -m bigjax.data.prepare_tfds wmt14_translate/de-en  # once, on a machine with network
    python -m bigjax.train --config=configs/wmt14_de_en.py --workdir=runs/wmt14_de_en

The first command downloads and prepares tfds wmt14_translate/de-en (about 4.5M train pairs;
several GB, into data.tfds_dir). The first run trains a 32k-piece SentencePiece vocabulary shared
by both languages into data.tokenizer_path, which later runs reuse. Eval beam-decodes eval_steps
batches of the validation split (newstest2013) and reports eval/bleu (on words of the detokenized
output, see bigjax.bleu.words) and eval/exact_match. `:t2t` reads wmt_t2t_translate/de-en
instead, the tensor2tensor mix of the same corpora.

The model is Vaswani et al.'s base (6+6 layers, width 512, 8 heads, MLP 2048, dropout 0.1, Adam
b2 0.98, 4000 warmup steps), without their label smoothing; sentences longer than 128 pieces are
cut. Eval decodes without a KV cache (a full decoder pass per output token): keep eval_steps small.
"""

from configs import base

DATASETS = {"": "wmt14_translate/de-en", "t2t": "wmt_t2t_translate/de-en"}


def get_config(variant: str = ""):
  if variant not in DATASETS:
    raise ValueError(f"configs/wmt14_de_en.py:{variant} is unknown; use '' or 't2t'")
  c = base.get_config()
  c.task = "seq2seq"
  c.data.source = "tfds"
  c.data.name = DATASETS[variant]
  c.data.tokenizer = "sentencepiece"
  c.data.tokenizer_path = "runs/tokenizers/wmt14_de_en_32k.model"
  c.data.vocab_size = 32_000
  c.seq_len = 128
  c.batch_size = 256  # 32k source and 32k target token slots per step, as in the paper's 25k+25k
  c.steps = 100_000
  c.dtype = "bfloat16"
  c.model.num_layers = 6  # each of the encoder and the decoder
  c.model.num_heads = 8
  c.model.d_model = 512
  c.model.d_ff = 2048
  c.model.max_len = 128
  c.model.dropout = 0.1
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 4000
  c.optim.b2 = 0.98
  c.optim.weight_decay = 0.0
  c.seq2seq.beam_size = 4
  c.seq2seq.length_penalty = 0.6
  c.log_every = 100
  c.eval_every = 5000
  c.eval_steps = 4  # 1024 of newstest2013's 3000 sentences
  c.checkpoint_every = 5000
  return c
