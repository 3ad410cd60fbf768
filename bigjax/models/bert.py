"""BERT-style encoder: every position attends to every non-padding position, then a head.

The encoder is gpt.py's decoder without the causal mask, plus optional token-type (segment)
embeddings. Blocks are pre-norm with a final norm, as in gpt.py: BERT's original post-norm needs
long warmups to train stably at small batch sizes. `model.post_norm` and `model.embed_norm` give
that original layout (a norm over the summed embeddings, then x = norm(x + f(x)) in every block,
no final norm), so Hugging Face BERT checkpoints load here (bigjax/hf/bert.py). Heads: masked-LM
(tied to the token embedding) with optional next-sentence prediction, and sequence
classification from the [CLS] position.

The token embedding lives in the parent module and is shared with the encoder and the masked-LM
head, so every model here has the same top-level names `embed` and `encoder`; fine-tuning copies
exactly those from a pretrained checkpoint (see bigjax/finetune.py) and starts the head fresh.
"""

import flax.linen as nn
import jax.numpy as jnp

from bigjax.models import layers
from bigjax.models.layers import TransformerConfig


def token_embedding(cfg: TransformerConfig) -> nn.Embed:
  return nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=jnp.float32,
                  embedding_init=layers.normal_init(0.02, ("vocab", "embed")))


class EncoderBlock(nn.Module):
  """Bidirectional self-attention over the positions the mask allows, then the MLP; each a
  residual branch, normalised before it (pre-norm) or after the residual add (post-norm)."""

  cfg: TransformerConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BxLxD, cache, positions_BxL, mask_BxLxL):
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)
    attn_norm, mlp_norm = layers.norm(cfg, "attn_norm"), layers.norm(cfg, "mlp_norm")
    attend = lambda h_BxLxD: layers.Attention(cfg, causal=False, name="attn")(
        h_BxLxD, positions_BxL, mask_BxLxS=mask_BxLxL)[0]
    mlp = layers.Mlp(cfg, name="mlp")
    if cfg.post_norm:
      x_BxLxD = attn_norm(x_BxLxD + drop(attend(x_BxLxD)))
      x_BxLxD = mlp_norm(x_BxLxD + drop(mlp(x_BxLxD)))
    else:
      x_BxLxD = x_BxLxD + drop(attend(attn_norm(x_BxLxD)))
      x_BxLxD = x_BxLxD + drop(mlp(mlp_norm(x_BxLxD)))
    return layers.constrain(x_BxLxD), cache


class Encoder(nn.Module):
  """tokens_BxL -> h_BxLxD. Padding (valid_BxL False) is never attended to."""

  cfg: TransformerConfig
  embed: nn.Module  # the parent's token embedding, shared with the output head
  num_token_types: int = 0  # segment embeddings (BERT: 2, sentence A and B); 0 = none

  @nn.compact
  def __call__(self, tokens_BxL, valid_BxL, types_BxL=None, train: bool = False):
    cfg = self.cfg
    positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1]), tokens_BxL.shape)
    x_BxLxD = self.embed(tokens_BxL)
    if cfg.positions == "learned":
      x_BxLxD += nn.Embed(cfg.max_len, cfg.d_model, dtype=cfg.dtype, param_dtype=jnp.float32,
                          embedding_init=layers.normal_init(0.01, (None, "embed")),
                          name="pos_embed")(positions_BxL)
    if self.num_token_types:
      types_BxL = jnp.zeros_like(tokens_BxL) if types_BxL is None else types_BxL
      x_BxLxD += nn.Embed(self.num_token_types, cfg.d_model, dtype=cfg.dtype,
                          param_dtype=jnp.float32,
                          embedding_init=layers.normal_init(0.02, (None, "embed")),
                          name="type_embed")(types_BxL)
    if cfg.embed_norm:
      x_BxLxD = layers.norm(cfg, "embed_norm")(x_BxLxD)
    x_BxLxD = layers.constrain(nn.Dropout(cfg.dropout, deterministic=not train)(x_BxLxD))
    # Query l may attend to key s when s is a real token; padded queries are computed but unused.
    L = tokens_BxL.shape[1]
    mask_BxLxL = jnp.broadcast_to(valid_BxL[:, None, :], (tokens_BxL.shape[0], L, L))

    block = layers.stack_layers(EncoderBlock, cfg, num_broadcast_args=2)
    if cfg.scan_layers:
      x_BxLxD, _ = block(cfg, deterministic=not train, name="layers")(
          x_BxLxD, None, positions_BxL, mask_BxLxL)
    else:
      for i in range(cfg.num_layers):
        x_BxLxD, _ = block(cfg, deterministic=not train, name=f"layer_{i}")(
            x_BxLxD, None, positions_BxL, mask_BxLxL)
    return x_BxLxD if cfg.post_norm else layers.norm(cfg, "final_norm")(x_BxLxD)


class MaskedLMHead(nn.Module):
  """h_BxLxD -> logits_BxLxV: dense + GELU + norm, then the (tied) token embedding, plus a bias."""

  cfg: TransformerConfig
  embed: nn.Module

  @nn.compact
  def __call__(self, h_BxLxD):
    cfg = self.cfg
    h_BxLxD = layers.dense(cfg, cfg.d_model, ("embed", "act_embed"), "transform")(h_BxLxD)
    h_BxLxD = nn.gelu(h_BxLxD, approximate=not cfg.exact_gelu)
    h_BxLxD = layers.norm(cfg, "norm")(h_BxLxD)
    bias_V = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                             ("vocab",)),
                        (cfg.vocab_size,), jnp.float32)
    return layers.logits(cfg, self.embed, h_BxLxD) + bias_V


class ClsHead(nn.Module):
  """h_BxLxD -> logits_BxC from the [CLS] position: BERT's tanh pooler, dropout, a linear map."""

  cfg: TransformerConfig
  num_outputs: int

  @nn.compact
  def __call__(self, h_BxLxD, train: bool = False):
    cfg = self.cfg
    pooled_BxD = jnp.tanh(layers.dense(cfg, cfg.d_model, ("embed", "act_embed"), "pooler")(
        h_BxLxD[:, 0]))
    pooled_BxD = nn.Dropout(cfg.dropout, deterministic=not train)(pooled_BxD)
    return layers.dense(cfg, self.num_outputs, ("embed", None), "out")(pooled_BxD)


class MaskedLM(nn.Module):
  """Pretraining model: (tokens_BxL, valid_BxL[, types_BxL]) -> (mlm logits_BxLxV, nsp logits_Bx2
  or None)."""

  cfg: TransformerConfig
  num_token_types: int = 0
  nsp: bool = False  # add the next-sentence-prediction head

  def setup(self):
    self.embed = token_embedding(self.cfg)
    self.encoder = Encoder(self.cfg, self.embed, self.num_token_types)
    self.mlm_head = MaskedLMHead(self.cfg, self.embed)
    if self.nsp:
      self.nsp_head = ClsHead(self.cfg, 2)

  def __call__(self, tokens_BxL, valid_BxL, types_BxL=None, train: bool = False):
    h_BxLxD = self.encoder(tokens_BxL, valid_BxL, types_BxL, train=train)
    nsp_Bx2 = self.nsp_head(h_BxLxD, train=train) if self.nsp else None
    return self.mlm_head(h_BxLxD), nsp_Bx2


class Classifier(nn.Module):
  """Fine-tuning model: (tokens_BxL, valid_BxL[, types_BxL]) -> class logits_BxC."""

  cfg: TransformerConfig
  num_classes: int
  num_token_types: int = 0

  def setup(self):
    self.embed = token_embedding(self.cfg)
    self.encoder = Encoder(self.cfg, self.embed, self.num_token_types)
    self.classifier = ClsHead(self.cfg, self.num_classes)

  def __call__(self, tokens_BxL, valid_BxL, types_BxL=None, train: bool = False):
    return self.classifier(self.encoder(tokens_BxL, valid_BxL, types_BxL, train=train),
                           train=train)
