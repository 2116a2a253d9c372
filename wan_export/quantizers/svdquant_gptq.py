"""GPTQ on the SVDQuant residual, through the shared `quantizers.gptq` (quant branch).

The group scales are fixed first from the residual itself (INT4: amax/7 per 64 in the
compute dtype; NVFP4: per-tensor wtscale and FP8 micro-scales per 16), exactly as nearest
rounding would store them; GPTQ then only chooses the codes, column by column, against the
Hessian of the *smoothed* input. `gptq.choose` keeps nearest rounding when GPTQ does not
lower the layer-output error tr((R - Q) H (R - Q)^T).
"""
from __future__ import annotations

import torch

from wan_export.quantizers import svdquant_kernel as K


def _encode(v: torch.Tensor, prec: K.Precision) -> torch.Tensor:
    if prec.name == "int4":
        return (torch.round(v).clamp(-8, 7).to(torch.int64) & 0xF).to(torch.uint8)
    return K.e2m1_codes(v)


def gptq_residual(r: torch.Tensor, hessian: torch.Tensor, prec: K.Precision, scale_dtype: torch.dtype,
                  outer: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8 [N, K], stored scales [N, K/group]) of the residual r [N, K]."""
    from wan_export.quantizers.gptq import choose, gptq

    nearest_codes, scales = K.quantize_groups(r, prec, scale_dtype, outer)
    s = scales.float() * outer
    s = torch.where(s > 0, s, 1.0).repeat_interleave(prec.group, dim=1)      # [N, K]: each column's scale

    def quantize_columns(cols: torch.Tensor, start: int) -> torch.Tensor:
        sc = s[:, start:start + cols.shape[1]]
        return K.code_values(_encode(cols / sc, prec), prec) * sc

    q_hat = gptq(r, hessian.float(), quantize_columns)
    nearest = K.dequantize_groups(nearest_codes, scales, prec, outer)
    best, used, _ = choose(r, hessian.float(), nearest, q_hat)
    if used == "nearest":
        return nearest_codes, scales
    return _encode(best / s, prec), scales
