"""GPT-2's shapes (Radford et al. 2019): learned positions, LayerNorm, GELU, tied embeddings.

    python -m bigjax.train --config=configs/gpt2.py:small --workdir=runs/gpt2_small
    python -m bigjax.train --config=configs/gpt2.py:medium --config.mesh.fsdp=-1 ...

Byte-level by default (vocab 256) so it runs with no tokenizer file, which makes each size
smaller than GPT-2's count with its 50,257-token embedding: small 86.0M parameters (GPT-2: 124M),
medium 303.6M (355M), large 710.0M (774M), xl 1.48B (1.56B). Point data at a real corpus and set
data.tokenizer=sentencepiece for a word-piece vocabulary.
"""

from configs import base

SIZES = {  # name: (layers, heads, width)
    "small": (12, 12, 768),
    "medium": (24, 16, 1024),
    "large": (36, 20, 1280),
    "xl": (48, 25, 1600),
}


def get_config(size: str = "small"):
  if size not in SIZES:
    raise ValueError(f"configs/gpt2.py:{size} is unknown; use one of {', '.join(SIZES)}")
  c = base.get_config()
  layers, heads, width = SIZES[size]
  c.model.num_layers, c.model.num_heads, c.model.d_model = layers, heads, width
  c.model.d_ff = 4 * width
  c.model.max_len = 1024
  c.seq_len = 1024
  c.batch_size = 32
  c.steps = 10_000
  c.dtype = "bfloat16"
  c.optim.lr = 6e-4
  c.optim.warmup_steps = 500
  c.log_every = 100
  c.eval_every = 1000
  c.checkpoint_every = 1000
  if size == "xl":
    # 1.5B parameters with Adam are 18 GB in float32: shard them over every device (FSDP). Without
    # remat the activations need 28 GB per v5e chip; saving only the projections needs 4.4 GB.
    # python scripts/aot_compile.py --config=configs/gpt2.py:xl --topology=v5e-16
    c.mesh.data, c.mesh.fsdp = 1, -1
    c.model.remat = "dots_no_batch"
  return c
