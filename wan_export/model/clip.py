"""The reference CLIP vision tower of Wan2.1 I2V/FLF2V (open-clip XLM-R ViT-H/14, `clip.py`).

Only what Wan runs: pre-norm ViT with a bias-free patch embedding, class token,
learned positions, `pre_norm`, blocks of LayerNorm (eps 1e-5) -> fused `to_qkv`
attention (read as view(b, s, 3, heads, d)) -> exact-GELU MLP, and the output
of all blocks but the last (`use_31_block`), no post-norm: [n, 257, 1280].
Stock `visual.*` names; any width / depth / MLP size, so the tiny model works.
Preprocessing as Wan's: bicubic resize of the whole frame to the square input,
then CLIP mean/std.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .loading import load_strict

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LN_EPS = 1e-5


@dataclass(frozen=True)
class CLIPVisionConfig:
    dim: int = 1280
    layers: int = 32
    heads: int = 16
    mlp_dim: int = 5120
    patch: int = 14
    image_size: int = 224
    embed_dim: int = 1024

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch) ** 2 + 1


class VisionBlock(nn.Module):
    def __init__(self, c: CLIPVisionConfig):
        super().__init__()
        self.heads = c.heads
        self.norm1 = nn.LayerNorm(c.dim, eps=LN_EPS)
        self.attn = nn.Module()
        self.attn.to_qkv = nn.Linear(c.dim, 3 * c.dim)
        self.attn.proj = nn.Linear(c.dim, c.dim)
        self.norm2 = nn.LayerNorm(c.dim, eps=LN_EPS)
        self.mlp = nn.Sequential(nn.Linear(c.dim, c.mlp_dim), nn.GELU(), nn.Linear(c.mlp_dim, c.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.attn.to_qkv(self.norm1(x)).view(b, s, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + self.attn.proj(a.transpose(1, 2).reshape(b, s, d))
        return x + self.mlp(self.norm2(x))


class CLIPVisual(nn.Module):
    """Wan's `VisionTransformer` (the `visual` half of the CLIP .pth)."""

    def __init__(self, c: CLIPVisionConfig):
        super().__init__()
        self.cfg = c
        self.patch_embedding = nn.Conv2d(3, c.dim, c.patch, stride=c.patch, bias=False)
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, c.tokens, c.dim))
        self.pre_norm = nn.LayerNorm(c.dim, eps=LN_EPS)
        self.transformer = nn.ModuleList(VisionBlock(c) for _ in range(c.layers))
        self.post_norm = nn.LayerNorm(c.dim, eps=LN_EPS)
        self.head = nn.Parameter(torch.zeros(c.dim, c.embed_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels [n, 3, S, S] -> features [n, tokens, dim] after all blocks but the last."""
        x = self.patch_embedding(pixels.to(self.head.dtype)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_embedding.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        x = self.pre_norm(x)
        for block in self.transformer[:-1]:
            x = block(x)
        return x

    def preprocess(self, frames: list[torch.Tensor]) -> torch.Tensor:
        """Frames [3, H, W] in [-1, 1] -> [n, 3, S, S]: bicubic resize of the whole frame, CLIP mean/std."""
        size = (self.cfg.image_size,) * 2
        x = torch.cat([F.interpolate(f[None].float(), size=size, mode="bicubic", align_corners=False)
                       for f in frames]).to(self.head.device)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        return (x * 0.5 + 0.5 - mean) / std

    def encode_images(self, frames: list[torch.Tensor]) -> torch.Tensor:
        """CLIP features [1, n * tokens, dim] of 1 (I2V) or 2 (FLF2V: first, last) frames."""
        with torch.no_grad():
            out = self(self.preprocess(frames)).float()
        return out.reshape(1, -1, out.shape[-1])


def config_from_shapes(shapes: dict[str, tuple]) -> CLIPVisionConfig:
    """Vision config from stock `visual.*` shapes (heads as the diffusers converter assumes them)."""
    from wan_export.converters.diffusers_configs import clip_shape_config

    d = clip_shape_config(shapes)
    return CLIPVisionConfig(dim=d["hidden_size"], layers=d["num_hidden_layers"], heads=d["num_attention_heads"],
                            mlp_dim=d["intermediate_size"], patch=d["patch_size"], image_size=d["image_size"],
                            embed_dim=shapes["visual.head"][1])


def load_clip_visual(state: dict, dtype: torch.dtype = torch.float32) -> CLIPVisual:
    """Build on meta and load the `visual.*` tensors of a Wan CLIP state dict (the text tower is skipped)."""
    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    cfg = config_from_shapes({f"visual.{k}": tuple(v.shape) for k, v in visual.items()})
    with torch.device("meta"):
        model = CLIPVisual(cfg)
    return load_strict(model, visual, "Wan CLIP vision tower", dtype=dtype)
