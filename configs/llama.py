"""Llama-style decoders: RoPE, RMSNorm, SwiGLU, no biases, untied output, grouped-query attention.

    python -m bigjax.train --config=configs/llama.py:1b --workdir=runs/llama_1b
    python scripts/aot_compile.py --config=configs/llama.py:7b --topology=v5p-64

Shapes follow the published Llama 2 (7b, 13b, 70b) and Llama 3.2 (1b) models; 150m is a
GPT-2-small-sized Llama. Byte-level by default (vocab 256), so the counts leave out most of the
embedding and the output layer: 150m has 75.9M parameters, 1b 0.97B (Llama 3.2 1B: 1.24B with
its 128,256 tokens), 7b 6.48B (6.74B with Llama 2's 32,000), 13b 12.69B (13.02B), 70b 68.46B
(68.98B). The big ones shard parameters with FSDP over all devices and recompute activations in
the backward pass.
"""

from configs import base

SIZES = {  # name: (layers, heads, kv_heads, width, mlp width)
    "tiny": (4, 4, 2, 128, 384),
    "150m": (12, 12, 4, 768, 2048),
    "1b": (16, 32, 8, 2048, 8192),
    "7b": (32, 32, 32, 4096, 11008),
    "13b": (40, 40, 40, 5120, 13824),
    "70b": (80, 64, 8, 8192, 28672),
}


def get_config(size: str = "tiny"):
  if size not in SIZES:
    raise ValueError(f"configs/llama.py:{size} is unknown; use one of {', '.join(SIZES)}")
  c = base.get_config()
  layers, heads, kv_heads, width, mlp = SIZES[size]
  m = c.model
  m.num_layers, m.num_heads, m.num_kv_heads, m.d_model, m.d_ff = layers, heads, kv_heads, width, mlp
  m.positions, m.norm, m.mlp = "rope", "rmsnorm", "swiglu"
  m.use_bias, m.tie_embeddings = False, False
  m.rope_theta = 500_000.0
  if size == "tiny":
    c.steps, c.batch_size, c.seq_len, m.max_len = 600, 16, 256, 256
    return c
  m.max_len = 4096
  c.seq_len = 4096 if size != "150m" else 1024
  c.dtype = "bfloat16"
  c.batch_size = 256
  c.steps = 100_000
  c.optim.lr = 3e-4
  c.optim.warmup_steps = 2000
  c.log_every, c.eval_every, c.checkpoint_every = 100, 2000, 1000
  c.mesh.data, c.mesh.fsdp = 1, -1  # FSDP over every device: parameters never live whole
  # From 7b up, saving the projections ("dots_no_batch") needs 129 GiB per v5p chip at 8
  # sequences per chip; recomputing each layer from its input ("full") needs 56 GiB.
  m.remat = "full" if size in ("7b", "13b", "70b") else "dots_no_batch"
  return c
