"""PyTorch references of t5x_lite's benchmark models, timed beside ours (`make bench`).

`Decoder(config)` is a nanoGPT-style decoder written from a t5x_lite TransformerConfig:
token embedding, pre-RMSNorm blocks of attention (RoPE with the half rotation, MHA or
GQA, torch's scaled_dot_product_attention, causal or with a bidirectional prefix) and
an MLP (gelu_tanh/silu/relu, optionally gated), a final RMSNorm, and an untied output
layer, or the tied embedding scaled by d_model**-0.5 as t5x_lite does. It has exactly
the parameters t5x_lite counts (tests/test_benchmark.py), hence the same FLOPs.
`TrainStep` is one optimizer step as t5x_lite's trainer takes it: cross-entropy plus
z-loss over target tokens, global-norm clipping, AdamW on matrices only.

The encoder-decoder reference is Hugging Face's T5 (`hf_t5(config)`), built to the
shape of a t5x_lite T5 v1.1-style config.

torch comes with the `hf` extra (tests and benchmarks); the library never imports this.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from t5x_lite.models import TransformerConfig
from t5x_lite.models.params import flat_params

ACTIVATIONS = {"relu": F.relu, "silu": F.silu, "gelu": F.gelu,
               "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


def check_supported(config: TransformerConfig) -> None:
  """The knobs Decoder reproduces; anything else is refused rather than approximated."""
  wanted = dict(norm="rms", norm_position="pre", position_encoding="rope", use_bias=False,
                dropout_rate=0.0)
  wrong = {k: getattr(config, k) for k, v in wanted.items() if getattr(config, k) != v}
  if config.is_encoder_decoder or wrong:
    raise ValueError(f"the PyTorch decoder reference does not reproduce {wrong or 'an encoder'}")


class RMSNorm(nn.Module):
  def __init__(self, d: int, eps: float):
    super().__init__()
    self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(length: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
  """cos, sin [length, head_dim / 2] of t5x_lite's RoPE (models/layers.apply_rope)."""
  inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
  angles = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq[None]
  return angles.cos(), angles.sin()


def apply_rope(x_BxHxTxD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
  first, second = x_BxHxTxD.chunk(2, dim=-1)
  return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


class Attention(nn.Module):
  def __init__(self, config: TransformerConfig):
    super().__init__()
    d, self.heads, self.kv_heads = config.d_model, config.num_heads, config.kv_heads
    self.head_dim = config.resolved_head_dim
    self.query = nn.Linear(d, self.heads * self.head_dim, bias=False)
    self.key = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
    self.value = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
    self.out = nn.Linear(self.heads * self.head_dim, d, bias=False)
    self.scale = None if config.scale_attention_logits else 1.0

  def forward(self, x_BxTxD, cos, sin, mask: Optional[torch.Tensor]) -> torch.Tensor:
    b, t, _ = x_BxTxD.shape
    split = lambda y, heads: y.view(b, t, heads, self.head_dim).transpose(1, 2)  # noqa: E731
    q = apply_rope(split(self.query(x_BxTxD), self.heads), cos, sin)
    k = apply_rope(split(self.key(x_BxTxD), self.kv_heads), cos, sin)
    v = split(self.value(x_BxTxD), self.kv_heads)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                       scale=self.scale, enable_gqa=self.kv_heads != self.heads)
    return self.out(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class Mlp(nn.Module):
  def __init__(self, config: TransformerConfig):
    super().__init__()
    self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
    self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False) if config.gated else None
    self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
    self.activation = ACTIVATIONS[config.activation]

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    hidden = self.activation(self.wi_0(x))
    return self.wo(hidden * self.wi_1(x) if self.wi_1 is not None else hidden)


class Block(nn.Module):
  def __init__(self, config: TransformerConfig):
    super().__init__()
    self.attention_norm = RMSNorm(config.d_model, config.norm_epsilon)
    self.attention = Attention(config)
    self.mlp_norm = RMSNorm(config.d_model, config.norm_epsilon)
    self.mlp = Mlp(config)

  def forward(self, x, cos, sin, mask):
    x = x + self.attention(self.attention_norm(x), cos, sin, mask)
    return x + self.mlp(self.mlp_norm(x))


class Decoder(nn.Module):
  """A causal or prefix decoder of `config` (see the module docstring)."""

  def __init__(self, config: TransformerConfig):
    super().__init__()
    check_supported(config)
    self.config = config
    self.embedding = nn.Embedding(config.vocab_size, config.d_model)
    self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_decoder_layers))
    self.final_norm = RMSNorm(config.d_model, config.norm_epsilon)
    self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model,
                                                                config.vocab_size, bias=False)

  def forward(self, tokens_BxT: torch.Tensor,
              prefix_BxT: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Logits [B, T, V]; prefix_BxT (bool) marks the bidirectional prefix."""
    length = tokens_BxT.shape[1]
    cos, sin = rope_tables(length, self.config.resolved_head_dim, self.config.rope_theta)
    mask = None
    if prefix_BxT is not None:
      causal = torch.ones(length, length, dtype=torch.bool).tril()
      mask = (causal[None] | (prefix_BxT[:, :, None] & prefix_BxT[:, None, :]))[:, None]
    x = self.embedding(tokens_BxT)
    for block in self.blocks:
      x = block(x, cos, sin, mask)
    x = self.final_norm(x)
    if self.lm_head is not None:
      return self.lm_head(x)
    scale = self.config.d_model ** -0.5 if self.config.scales_decoder_outputs else 1.0
    return (x * scale) @ self.embedding.weight.T


def copy_weights(reference: Decoder, model) -> None:
  """Loads a t5x_lite Transformer's parameters into its Decoder reference."""
  flat = flat_params(model)
  state = {"embedding.weight": flat[("token_embedding", "embedding")],
           "final_norm.weight": flat[("decoder", "final_norm", "scale")]}
  if ("logits_dense", "kernel") in flat:
    state["lm_head.weight"] = flat[("logits_dense", "kernel")].T
  for i in range(model.config.num_decoder_layers):
    ours, theirs = ("decoder", "layers", i), f"blocks.{i}"
    state[f"{theirs}.attention_norm.weight"] = flat[ours + ("self_attention_norm", "scale")]
    state[f"{theirs}.mlp_norm.weight"] = flat[ours + ("mlp_norm", "scale")]
    for name in ("query", "key", "value"):  # (d, heads, head_dim) -> (heads*head_dim, d)
      kernel = flat[ours + ("self_attention", name, "kernel")]
      state[f"{theirs}.attention.{name}.weight"] = kernel.reshape(kernel.shape[0], -1).T
    kernel = flat[ours + ("self_attention", "out", "kernel")]
    state[f"{theirs}.attention.out.weight"] = kernel.reshape(-1, kernel.shape[-1]).T
    for name in ("wi_0", "wi_1", "wo"):
      if ours + ("mlp", name, "kernel") in flat:
        state[f"{theirs}.mlp.{name}.weight"] = flat[ours + ("mlp", name, "kernel")].T
  reference.load_state_dict({k: torch.tensor(np.ascontiguousarray(v)) for k, v in state.items()},
                            strict=True)


def hf_t5(config: TransformerConfig):
  """Hugging Face's T5 of a t5x_lite T5 v1.1-style config (relative bias, RMS pre-norm,
  no logit scaling, gated gelu_tanh or relu MLP, untied output)."""
  import transformers

  wanted = dict(position_encoding="t5_relative", norm="rms", norm_position="pre",
                scale_attention_logits=False, tie_embeddings=False, use_bias=False)
  wrong = {k: getattr(config, k) for k, v in wanted.items() if getattr(config, k) != v}
  if not config.is_encoder_decoder or wrong or config.activation not in ("gelu_tanh", "relu"):
    raise ValueError(f"HF T5 does not reproduce {wrong or config.activation}")
  activation = "gelu_new" if config.activation == "gelu_tanh" else "relu"
  hf = transformers.T5Config(
      vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.resolved_head_dim,
      d_ff=config.d_ff, num_layers=config.num_encoder_layers,
      num_decoder_layers=config.num_decoder_layers, num_heads=config.num_heads,
      relative_attention_num_buckets=config.relative_attention_num_buckets,
      relative_attention_max_distance=config.relative_attention_max_distance,
      feed_forward_proj=f"gated-{activation}" if config.gated else activation,
      tie_word_embeddings=False, dropout_rate=0.0, layer_norm_epsilon=config.norm_epsilon)
  model = transformers.T5ForConditionalGeneration(hf)
  # transformers ties T5's lm_head at construction; t5x_lite's untied model has its own.
  model.lm_head.weight = nn.Parameter(model.shared.weight.detach().clone())
  return model


def parameter_count(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


class TrainStep:
  """One optimizer step as t5x_lite's trainer takes it (make_step_functions):
  token cross-entropy + z-loss 1e-4 over target tokens, global-norm clipping at 1.0,
  AdamW (b2 0.95, weight decay 0.1 on matrices only)."""

  def __init__(self, model: nn.Module, forward, learning_rate: float = 3e-4):
    self.model, self.forward = model, forward
    matrices = [p for p in model.parameters() if p.ndim > 1]
    vectors = [p for p in model.parameters() if p.ndim <= 1]
    self.optimizer = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": 0.1}, {"params": vectors, "weight_decay": 0.0}],
        lr=learning_rate, betas=(0.9, 0.95), eps=1e-8)

  def __call__(self, batch: dict[str, torch.Tensor]) -> float:
    logits = self.forward(batch).float()
    targets = batch["decoder_target_tokens"].long()
    weights = batch["decoder_loss_weights"].float()
    log_z = torch.logsumexp(logits, dim=-1)
    cross_entropy = F.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                    reduction="none").view_as(weights)
    tokens = weights.sum().clamp(min=1.0)
    loss = ((cross_entropy + 1e-4 * log_z.square()) * weights).sum() / tokens
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
    self.optimizer.step()
    return float(loss.detach())


def decoder_forward(model: Decoder):
  """The batch -> logits function of a Decoder on seqio feature dicts."""
  def forward(batch):
    prefix = batch.get("decoder_causal_attention")
    return model(batch["decoder_input_tokens"], None if prefix is None else prefix.bool())
  return forward


def t5_forward(model):
  """The batch -> logits function of HF T5 on seqio feature dicts."""
  def forward(batch):
    encoder = batch["encoder_input_tokens"]
    return model(input_ids=encoder, attention_mask=encoder > 0,
                 decoder_input_ids=batch["decoder_input_tokens"]).logits
  return forward


def counted_flops(run) -> float:
  """The FLOPs torch counts for `run()` (backward included if `run` has one). Attention
  runs on PyTorch's math kernel here, whose matmuls the counter sees (its fused CPU
  kernel is not counted), over the full, unmasked length as t5x_lite counts it."""
  with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
    run()
  return float(counter.get_total_flops())
