"""Reference Wan2.1/2.2 diffusion transformer: T2V, I2V, FLF2V, VACE and TI2V.

State-dict names, order and shapes equal the official `WanModel` / `VaceWanModel`.
The math follows the official code (float64 time and RoPE angles, fp32
modulation and norms); the forward is export-friendly: real-valued RoPE
computed per call, SDPA, no complex tensors, no loops over the batch.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from wan_export.model.config import DiTConfig
from wan_export.model.loading import as_state_dict, load_strict
from wan_export.model.rope import apply_rope, rope_cos_sin, sinusoidal_embedding

_QKV = re.compile(r"^(.*self_attn\.)(q|qkv)\.(weight|bias)$")


class RMSNorm(nn.Module):
    """WanRMSNorm over the whole last dim; plain ops because the legacy ONNX
    exporter has no aten::rms_norm."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FP32LayerNorm(nn.LayerNorm):
    """WanLayerNorm: computed on x.float(), cast back to x's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA on [B, L, N, hd] tensors (no mask, default scale) -> [B, L, N*hd]."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).flatten(2)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float, fused_qkv: bool = False):
        super().__init__()
        self.num_heads, self.fused_qkv = num_heads, fused_qkv
        if fused_qkv:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(self, x, cos, sin):
        if self.fused_qkv:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        heads = (self.num_heads, -1)
        q = apply_rope(self.norm_q(q).unflatten(2, heads), cos, sin)
        k = apply_rope(self.norm_k(k).unflatten(2, heads), cos, sin)
        return self.o(_attention(q, k, v.unflatten(2, heads)))


class CrossAttention(nn.Module):
    """Text cross-attention; with `image_branch` also the 2.1 I2V image path.

    Image tokens come as their own tensor, so nothing is split by length.
    """

    def __init__(self, dim: int, num_heads: int, eps: float, image_branch: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)
        if image_branch:
            self.k_img, self.v_img = nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.norm_k_img = RMSNorm(dim, eps)

    def forward(self, x, context, context_img=None):
        heads = (self.num_heads, -1)
        q = self.norm_q(self.q(x)).unflatten(2, heads)
        k = self.norm_k(self.k(context)).unflatten(2, heads)
        out = _attention(q, k, self.v(context).unflatten(2, heads))
        if context_img is not None:
            k_img = self.norm_k_img(self.k_img(context_img)).unflatten(2, heads)
            out = out + _attention(q, k_img, self.v_img(context_img).unflatten(2, heads))
        return self.o(out)


class Block(nn.Module):
    """WanAttentionBlock; `vace_id` set makes it a VaceWanAttentionBlock (after_proj, before_proj on 0)."""

    def __init__(self, cfg: DiTConfig, fused_qkv: bool = False, image_branch: bool = False,
                 vace_id: int | None = None):
        super().__init__()
        d = cfg.dim
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)
        self.norm1 = FP32LayerNorm(d, cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(d, cfg.num_heads, cfg.eps, fused_qkv)
        self.norm3 = FP32LayerNorm(d, cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(d, cfg.num_heads, cfg.eps, image_branch)
        self.norm2 = FP32LayerNorm(d, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        if vace_id == 0:
            self.before_proj = nn.Linear(d, d)
        if vace_id is not None:
            self.after_proj = nn.Linear(d, d)

    def forward(self, x, e0, context, context_img, cos, sin):
        """e0: [B, 1 or L, 6, D] fp32 time projection (per-sample or per-token)."""
        m = (self.modulation.float().unsqueeze(0) + e0).unbind(2)
        y = self.self_attn((self.norm1(x).float() * (1 + m[1]) + m[0]).type_as(x), cos, sin)
        x = (x.float() + y.float() * m[2]).type_as(x)
        x = x + self.cross_attn(self.norm3(x), context, context_img)
        y = self.ffn((self.norm2(x).float() * (1 + m[4]) + m[3]).type_as(x))
        return (x.float() + y.float() * m[5]).type_as(x)


class Head(nn.Module):
    def __init__(self, dim: int, out_features: int, eps: float):
        super().__init__()
        self.norm = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_features)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x, e):
        """e: [B, 1 or L, D] fp32 time embedding."""
        shift, scale = (self.modulation.float().unsqueeze(0) + e.unsqueeze(2)).unbind(2)
        return self.head((self.norm(x).float() * (1 + scale) + shift).type_as(x))


class ImageEmbedding(nn.Module):
    """MLPProj: CLIP features -> D; FLF2V adds `emb_pos` over both frames' tokens."""

    def __init__(self, in_dim: int, out_dim: int, pos_len: int = 0):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, in_dim), nn.GELU(),
                                  nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))
        self.pos_len = pos_len
        self.emb_pos = nn.Parameter(torch.zeros(1, pos_len, in_dim)) if pos_len else None

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        if self.emb_pos is not None:
            # [B, 514, C] as given, or the official [2B, 257, C] stacking of both frames
            clip = clip.reshape(-1, self.pos_len, clip.shape[-1]) + self.emb_pos
        return self.proj(clip)


class WanDiT(nn.Module):
    """The Wan DiT for any `DiTConfig`; `fused_qkv` swaps self-attention q/k/v for one `qkv` Linear."""

    # dtype of the time and RoPE angles; official float64, set float32 for runtimes without doubles
    angle_dtype: torch.dtype = torch.float64

    def __init__(self, cfg: DiTConfig, fused_qkv: bool = False):
        super().__init__()
        _check_cfg(cfg)
        self.cfg, self.fused_qkv = cfg, fused_qkv
        d, ps = cfg.dim, tuple(cfg.patch_size)
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=ps, stride=ps)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(Block(cfg, fused_qkv, cfg.image_branch) for _ in range(cfg.num_layers))
        self.head = Head(d, cfg.out_dim * math.prod(ps), cfg.eps)
        if cfg.image_branch:
            self.img_emb = ImageEmbedding(cfg.clip_dim, d, cfg.flf_pos_len)
        if cfg.is_vace:
            self.vace_blocks = nn.ModuleList(Block(cfg, fused_qkv, vace_id=j) for j in range(len(cfg.vace_layers)))
            self.vace_patch_embedding = nn.Conv3d(cfg.vace_in_dim, d, kernel_size=ps, stride=ps)
        self._hint_of_layer = {layer: j for j, layer in enumerate(cfg.vace_layers)}

    def forward(self, latents, timestep, context, clip_features=None, vace_context=None,
                vace_scale: float = 1.0) -> torch.Tensor:
        """latents [B, in_dim, F, H, W]; timestep [B] or per-token [B, L]; context [B, L_text, text_dim];
        clip_features [B, 257|514, 1280] (image branch); vace_context [B, 96, F, H, W] (VACE).
        Returns the float32 noise prediction [B, out_dim, F, H, W]."""
        cfg = self.cfg
        self._check_inputs(clip_features, vace_context)
        pt, ph, pw = cfg.patch_size
        f, h, w = latents.shape[2] // pt, latents.shape[3] // ph, latents.shape[4] // pw
        dtype = self.patch_embedding.weight.dtype
        x = self.patch_embedding(latents.to(dtype)).flatten(2).transpose(1, 2)
        cos, sin = rope_cos_sin(f, h, w, cfg.head_dim, device=x.device, dtype=self.angle_dtype)
        e, e0 = self.time_embed(timestep)
        context = self.text_embedding(context.to(dtype))
        context_img = None if clip_features is None else self.img_emb(clip_features.to(dtype))
        hints = [] if vace_context is None else self._vace_hints(x, vace_context, e0, context, cos, sin)
        for i, block in enumerate(self.blocks):
            x = block(x, e0, context, context_img, cos, sin)
            if i in self._hint_of_layer:
                # a tensor vace_scale (the ONNX input, fp32) must not promote a 16-bit stream
                x = x + (hints[self._hint_of_layer[i]] * vace_scale).type_as(x)
        return self._unpatchify(self.head(x, e), f, h, w).float()

    def time_embed(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """timestep [B] or [B, L] -> e [B, 1|L, D] and e0 [B, 1|L, 6, D], both fp32."""
        t = timestep.unsqueeze(1) if timestep.dim() == 1 else timestep
        wdtype = self.time_embedding[0].weight.dtype
        e = self.time_embedding(sinusoidal_embedding(t, self.cfg.freq_dim, self.angle_dtype).to(wdtype))
        e0 = self.time_projection(e).unflatten(-1, (6, self.cfg.dim))
        return e.float(), e0.float()

    def _vace_hints(self, x, vace_context, e0, context, cos, sin) -> list[torch.Tensor]:
        c = self.vace_patch_embedding(vace_context.to(x.dtype)).flatten(2).transpose(1, 2)
        hints = []
        for j, block in enumerate(self.vace_blocks):
            if j == 0:
                c = block.before_proj(c) + x
            c = block(c, e0, context, None, cos, sin)
            hints.append(block.after_proj(c))
        return hints

    def _unpatchify(self, x, f, h, w) -> torch.Tensor:
        """[B, f*h*w, (p q r c)] -> [B, c, f*p, h*q, w*r]; head channels have c innermost."""
        pt, ph, pw = self.cfg.patch_size
        x = x.reshape(x.shape[0], f, h, w, pt, ph, pw, self.cfg.out_dim)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(x.shape[0], self.cfg.out_dim, f * pt, h * ph, w * pw)

    def _check_inputs(self, clip_features, vace_context) -> None:
        if self.cfg.image_branch != (clip_features is not None):
            raise ValueError("clip_features are required by, and only by, image-branch (Wan2.1 I2V/FLF2V) models")
        if self.cfg.is_vace and vace_context is None:
            raise ValueError("a VACE model needs vace_context")
        if vace_context is not None and not self.cfg.is_vace:
            raise ValueError("vace_context given to a non-VACE model")


def _check_cfg(cfg: DiTConfig) -> None:
    if (cfg.model_type == "vace") != cfg.is_vace:
        raise ValueError("model_type 'vace' and a non-empty vace_layers go together")
    if cfg.is_vace and (0 not in cfg.vace_layers or max(cfg.vace_layers) >= cfg.num_layers
                        or cfg.image_branch):
        raise ValueError(f"bad VACE config: vace_layers {cfg.vace_layers} must include 0 and be "
                         f"< num_layers {cfg.num_layers}, without an image branch")


def fuse_qkv_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stock `self_attn.{q,k,v}` -> `self_attn.qkv` (cat on dim 0), keeping key order.

    A triple with a member missing is left as it is, for the loader to report.
    """
    out = {}
    for key, value in sd.items():
        m = _QKV.match(key)
        if m and m[2] == "q":
            parts = [f"{m[1]}{n}.{m[3]}" for n in "qkv"]
            if all(p in sd for p in parts):
                out[f"{m[1]}qkv.{m[3]}"] = torch.cat([sd[p] for p in parts], dim=0)
                continue
        elif _is_fusable_kv(key, sd):
            continue
        out[key] = value
    return out


def _is_fusable_kv(key: str, sd: Mapping) -> bool:
    m = re.match(r"^(.*self_attn\.)([kv])\.(weight|bias)$", key)
    return bool(m) and all(f"{m[1]}{n}.{m[3]}" in sd for n in "qkv")


def split_qkv_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `fuse_qkv_state_dict`: `self_attn.qkv` -> q, k, v (chunk on dim 0), in stock order."""
    out = {}
    for key, value in sd.items():
        m = _QKV.match(key)
        if not (m and m[2] == "qkv"):
            out[key] = value
            continue
        fused = {leaf: sd[f"{m[1]}qkv.{leaf}"] for leaf in ("weight", "bias") if f"{m[1]}qkv.{leaf}" in sd}
        if any(t.dim() == 0 or t.shape[0] % 3 for t in fused.values()):
            out[key] = value  # not a q/k/v stack: left for the loader to report
        elif f"{m[1]}q.{m[3]}" not in out:
            chunks = {leaf: t.chunk(3, dim=0) for leaf, t in fused.items()}
            for i, name in enumerate("qkv"):
                for leaf, parts in chunks.items():
                    out[f"{m[1]}{name}.{leaf}"] = parts[i].clone()  # no shared storage: safetensors refuses it
    return out


WanDiT.fuse_qkv_state_dict = staticmethod(fuse_qkv_state_dict)
WanDiT.split_qkv_state_dict = staticmethod(split_qkv_state_dict)


def load_dit(weights: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]], cfg: DiTConfig, *,
             dtype: torch.dtype = torch.float32, device="cpu", fused_qkv: bool = False) -> WanDiT:
    """Build on meta and load stock (or fused) weights strictly with assign=True.

    Floating tensors are cast to `dtype`; q/k/v are fused or split to match `fused_qkv`.
    """
    sd = as_state_dict(weights, "Wan DiT")
    sd = fuse_qkv_state_dict(sd) if fused_qkv else split_qkv_state_dict(sd)
    with torch.device("meta"):
        model = WanDiT(cfg, fused_qkv=fused_qkv)
    what = f"{cfg.model_type} DiT config (dim {cfg.dim}, {cfg.num_layers} layers)"
    return load_strict(model, sd, what, dtype=dtype, device=device)
