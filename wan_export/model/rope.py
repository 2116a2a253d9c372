"""Position helpers of the Wan DiT: sinusoidal time embedding and 3-axis RoPE.

Both follow the official math (angles in float64, results cast to float32) and
are computed per call from sizes, with no stored tables, so they work on any
device, for any grid, and after a meta-device build. ONNX wrappers reuse them.
"""
from __future__ import annotations

import torch

THETA = 10000.0


def sinusoidal_embedding(t: torch.Tensor, dim: int = 256, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Official `sinusoidal_embedding_1d`: [cos, sin] (cos first), any leading shape.

    t [...] -> [..., dim] float32; angles t * 10000^(-j/half) in `dtype` (official: float64;
    float32 is for graphs whose runtime has no doubles, e.g. TensorRT).
    """
    half = dim // 2
    t = t.to(dtype)
    freqs = torch.pow(THETA, -torch.arange(half, dtype=dtype, device=t.device).div(half))
    angles = t.unsqueeze(-1) * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).float()


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Real dims given to (frame, height, width): hd - 4(hd//6), 2(hd//6), 2(hd//6)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _axis_angles(n, dim: int, device, dtype) -> torch.Tensor:
    """Official `rope_params` rows 0..n-1: pos * theta^(-2i/dim), [n, dim/2]."""
    inv = 1.0 / torch.pow(THETA, torch.arange(0, dim, 2, dtype=dtype, device=device).div(dim))
    return torch.arange(n, dtype=dtype, device=device).unsqueeze(1) * inv


def rope_cos_sin(f, h, w, head_dim: int, device=None,
                 dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for an (f, h, w) token grid in (f, h, w) order: two [f*h*w, head_dim/2] float32.

    Angles in `dtype` (official: float64), as for `sinusoidal_embedding`.
    """
    dt, dh, dw = rope_split(head_dim)
    af = _axis_angles(f, dt, device, dtype)[:, None, None, :].expand(f, h, w, -1)
    ah = _axis_angles(h, dh, device, dtype)[None, :, None, :].expand(f, h, w, -1)
    aw = _axis_angles(w, dw, device, dtype)[None, None, :, :].expand(f, h, w, -1)
    angles = torch.cat([af, ah, aw], dim=-1).reshape(-1, head_dim // 2)
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (2i, 2i+1) of x [B, L, N, hd] by cos/sin [L, hd/2], in fp32.

    Real-valued equivalent of the official complex product; written with stack
    (no strided writes, no complex dtype) so both ONNX exporters handle it.
    """
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.type_as(x)
