"""The reference UMT5-XXL encoder (Wan `t5.py` T5Encoder) with stock tensor names.

T5 RMSNorm, per-layer bidirectional relative position bias (UMT5), attention
without 1/sqrt(d) and with a padding mask, gated tanh-GELU FFN. `forward` has
no data-dependent control flow, so it exports with dynamic batch and length.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn

from .config import T5Config
from .loading import as_state_dict, load_strict


def relative_position_buckets(length: int, num_buckets: int, max_distance: int,
                              device: torch.device | str | None = None) -> torch.Tensor:
    """Bidirectional T5 buckets of (key − query), [length, length] int64."""
    pos = torch.arange(length, device=device)
    rel = pos[None, :] - pos[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).long() * half
    rel = rel.abs()
    max_exact = half // 2
    # The clamp keeps log() finite where the exact branch wins anyway (the official code
    # takes log(0) there and discards it); elsewhere the values are the official ones.
    scaled = torch.log(rel.clamp(min=max_exact).float() / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (scaled * (half - max_exact)).long()).clamp(max=half - 1)
    return buckets + torch.where(rel < max_exact, rel, large)


class T5LayerNorm(nn.Module):
    """RMS norm without mean subtraction or bias, computed in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.type_as(self.weight)
        return self.weight * x


class TanhGELU(nn.Module):
    """The official `GELU` of t5.py (tanh approximation), written out as there."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class T5Attention(nn.Module):
    def __init__(self, dim: int, dim_attn: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim], bias [B, N, L, L] (position bias, −inf-like on padded keys)."""
        b, l, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, l, self.num_heads, -1).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        scores = q @ k.transpose(-1, -2) + bias  # T5: no 1/sqrt(d) scaling
        attn = scores.float().softmax(dim=-1).type_as(scores)
        return self.o((attn @ v).transpose(1, 2).reshape(b, l, -1))


class T5FeedForward(nn.Module):
    def __init__(self, dim: int, dim_ffn: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), TanhGELU())
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class T5RelativeEmbedding(nn.Module):
    def __init__(self, num_buckets: int, num_heads: int):
        super().__init__()
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, buckets: torch.Tensor) -> torch.Tensor:
        """[L, L] buckets -> [1, N, L, L] bias."""
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)


def _fp16_clamp(x: torch.Tensor) -> torch.Tensor:
    # Official clamps only when an inf appears; clamping always is equivalent up to the
    # last 1000 of the fp16 range and avoids a data-dependent branch.
    if x.dtype == torch.float16:
        limit = torch.finfo(torch.float16).max - 1000
        x = x.clamp(-limit, limit)
    return x


class T5Block(nn.Module):
    """Official `T5SelfAttention` block with its own relative bias (`shared_pos=False`)."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.norm1 = T5LayerNorm(cfg.dim, cfg.eps)
        self.attn = T5Attention(cfg.dim, cfg.dim_attn, cfg.num_heads)
        self.norm2 = T5LayerNorm(cfg.dim, cfg.eps)
        self.ffn = T5FeedForward(cfg.dim, cfg.dim_ffn)
        self.pos_embedding = T5RelativeEmbedding(cfg.num_buckets, cfg.num_heads)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
        bias = self.pos_embedding(buckets)
        bias = torch.where(keep, bias, torch.finfo(bias.dtype).min)
        x = _fp16_clamp(x + self.attn(self.norm1(x), bias))
        return _fp16_clamp(x + self.ffn(self.norm2(x)))


class UMT5Encoder(nn.Module):
    """Wan's UMT5 text encoder. State-dict keys and shapes equal the official file."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab, cfg.dim)
        self.blocks = nn.ModuleList(T5Block(cfg) for _ in range(cfg.num_layers))
        self.norm = T5LayerNorm(cfg.dim, cfg.eps)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids [B, L] int64, attention_mask [B, L] (1 = token, 0 = pad) -> [B, L, dim] float32."""
        b, l = input_ids.shape
        x = self.token_embedding(input_ids)
        buckets = relative_position_buckets(l, self.cfg.num_buckets, self.cfg.max_distance, x.device)
        keep = attention_mask.reshape(b, 1, 1, l) != 0
        for block in self.blocks:
            x = block(x, keep, buckets)
        return self.norm(x).float()


def load_t5(tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
            cfg: T5Config, dtype: torch.dtype = torch.float32) -> UMT5Encoder:
    """Build a UMT5Encoder on the meta device and load stock-named tensors into it (in `dtype`)."""
    with torch.device("meta"):
        model = UMT5Encoder(cfg)
    return load_strict(model, as_state_dict(tensors, "UMT5 encoder"), "UMT5 encoder", dtype=dtype)
