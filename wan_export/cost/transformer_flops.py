"""Analytic FLOPs and activation memory of the transformer stages: the Wan DiT, UMT5-XXL and CLIP ViT-H/14.

Each function mirrors one reference forward (wan_export/model/dit.py, t5.py; CLIP as
Wan's `clip.py` runs it: 31 of 32 blocks at 224 px) layer by layer, so that the
matmul classes equal FlopCounterMode exactly (tests/cost/test_flops.py).
`shards` > 1 gives one rank's share under Ulysses sequence parallelism: token
work is split, context/text work is replicated on every rank.
"""
from __future__ import annotations

import math

from wan_export.cost.ops import Ops, attention, conv, linear
from wan_export.model.config import CLIP_DIM, TEXT_LEN, DiTConfig, T5Config

# Elementwise ops per token and channel (our estimate, not counted by FlopCounterMode):
# three LayerNorms ~15, two modulations 4, two gates 4, residuals 3, q/k RMSNorms 12, RoPE 12.
DIT_OPS_PER_D = 50
GELU_OPS = 9            # tanh-GELU per element of the FFN hidden layer
T5_OPS_PER_D = 12       # two RMSNorms, two residuals, fp16 clamp
CLIP_OPS_PER_D = 14     # two LayerNorms, two residuals

# ViT-H/14 of Wan's open-clip checkpoint (wan-architecture.md §7)
CLIP_LAYERS_RUN = 31    # use_31_block: the output of 31 of 32 blocks
CLIP_HEADS, CLIP_MLP, CLIP_PATCH, CLIP_IMAGE = 16, 5120, 14, 224


def dit_tokens(cfg: DiTConfig, lat_t: int, lat_h: int, lat_w: int) -> int:
    pt, ph, pw = cfg.patch_size
    return (lat_t // pt) * (lat_h // ph) * (lat_w // pw)


def _block(cfg: DiTConfig, q_len: int, full_len: int, text_len: int, image_len: int, image: bool) -> Ops:
    d, f, n = cfg.dim, cfg.ffn_dim, cfg.num_heads
    ops = linear(q_len, d, d) * 4 + attention(d, n, q_len, full_len)            # self-attention
    ops += linear(q_len, d, d) * 2 + linear(text_len, d, d) * 2 + attention(d, n, q_len, text_len)
    if image:
        ops += linear(image_len, d, d) * 2 + attention(d, n, q_len, image_len)
    ops += linear(q_len, d, f) + linear(q_len, f, d)
    return ops + Ops(elementwise=q_len * (DIT_OPS_PER_D * d + GELU_OPS * f) + 4 * text_len * d)


def dit_forward(cfg: DiTConfig, tokens: int, *, batch: int = 1, text_len: int = TEXT_LEN,
                per_token_time: bool = False, shards: int = 1) -> Ops:
    """One DiT forward on `batch` samples of `tokens` patch tokens (Wan pads the text to 512 rows).

    per_token_time: TI2V's [B, L] timesteps, which run the time MLP on every token.
    shards: Ulysses degree; tokens must already be padded to a multiple of it.
    """
    d, kernel = cfg.dim, math.prod(cfg.patch_size)
    local = tokens // shards
    image_len = cfg.clip_tokens if cfg.image_branch else 0
    time_rows = local if per_token_time else 1
    ops = conv(local, cfg.in_dim, d, kernel)
    ops += linear(text_len, cfg.text_dim, d) + linear(text_len, d, d)
    ops += linear(time_rows, cfg.freq_dim, d) + linear(time_rows, d, d) + linear(time_rows, d, 6 * d)
    if cfg.image_branch:
        ops += linear(image_len, CLIP_DIM, CLIP_DIM) + linear(image_len, CLIP_DIM, d)
    # Ulysses: each rank attends its heads over the whole sequence = 1/shards of the score work
    attn_q = local
    block = _block(cfg, attn_q, tokens, text_len, image_len, cfg.image_branch)
    ops += block * cfg.num_layers
    if cfg.is_vace:
        ops += conv(local, cfg.vace_in_dim, d, kernel) + linear(local, d, d)       # before_proj
        vace = _block(cfg, attn_q, tokens, text_len, 0, False) + linear(local, d, d)  # + after_proj
        ops += vace * len(cfg.vace_layers)
    ops += linear(local, d, cfg.out_dim * kernel)
    return ops * batch


def dit_activation_bytes(cfg: DiTConfig, tokens: int, *, batch: int = 1, per_token_time: bool = False,
                         act_bytes: int = 2) -> int:
    """Peak live activations of one forward (our estimate; flash attention keeps no L×L scores).

    Per token: attention phase x, fp32 norm, modulated input, q/k/v, fp32 RoPE copies and output
    (~12 D elements of act_bytes); FFN phase x, fp32 norm, input and two F-wide hidden tensors.
    Plus fp32 RoPE cos/sin and, for per-token timesteps, the fp32 e and e0 (7 D per token).
    """
    d, f = cfg.dim, cfg.ffn_dim
    per_token = max(12 * d, 4 * d + 2 * f) * act_bytes + 2 * cfg.head_dim * 4
    if per_token_time:
        per_token += 7 * d * 4
    context = (TEXT_LEN + cfg.clip_tokens * cfg.image_branch) * d * act_bytes * 3
    return batch * (tokens * per_token + context)


def t5_forward(cfg: T5Config, length: int = TEXT_LEN, batch: int = 1) -> Ops:
    """UMT5 encoder over `batch` sequences of `length` tokens (Wan pads every prompt to 512)."""
    d, a, f = cfg.dim, cfg.dim_attn, cfg.dim_ffn
    layer = linear(length, d, a) * 3 + linear(length, a, d) + attention(a, cfg.num_heads, length, length)
    layer += linear(length, d, f) * 2 + linear(length, f, d)
    layer += Ops(elementwise=length * (T5_OPS_PER_D * d + (GELU_OPS + 1) * f))
    return layer * (cfg.num_layers * batch)


def t5_activation_bytes(cfg: T5Config, length: int = TEXT_LEN, batch: int = 1, act_bytes: int = 2) -> int:
    """Peak: the [N, L, L] position bias and scores (act dtype + an fp32 softmax copy) plus x and the FFN."""
    scores = cfg.num_heads * length * length * (2 * act_bytes + 4)
    ffn = length * (3 * cfg.dim_ffn + 2 * cfg.dim) * act_bytes
    return batch * max(scores + length * 5 * cfg.dim * act_bytes, ffn)


def clip_forward(images: int) -> Ops:
    """Wan's CLIP image tower at 224 px on `images` frames (1 for I2V, 2 for FLF2V)."""
    d = CLIP_DIM
    patches = (CLIP_IMAGE // CLIP_PATCH) ** 2
    n = patches + 1
    layer = linear(n, d, 3 * d) + linear(n, d, d) + attention(d, CLIP_HEADS, n, n)
    layer += linear(n, d, CLIP_MLP) + linear(n, CLIP_MLP, d)
    layer += Ops(elementwise=n * (CLIP_OPS_PER_D * d + GELU_OPS * CLIP_MLP))
    ops = conv(patches, 3, d, CLIP_PATCH * CLIP_PATCH) + layer * CLIP_LAYERS_RUN
    return ops * images


def clip_activation_bytes(images: int, act_bytes: int = 2) -> int:
    n = (CLIP_IMAGE // CLIP_PATCH) ** 2 + 1
    return images * (CLIP_HEADS * n * n * 4 + n * (4 * CLIP_DIM + 2 * CLIP_MLP) * act_bytes)
