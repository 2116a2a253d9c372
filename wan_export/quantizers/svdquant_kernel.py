"""The W4A4 kernel math of nunchaku / diffusers Nunchaku Lite, in torch on CPU.

`W4A4Layer` is one SVDQuant Linear in logical (unpacked) form and its forward
is the reference math (quantization-svdquant.md sections 2.4-2.5):

    y = wtscale * wcscales[n] * sum_g s_a[t,g] s_w[n,g] (q_a[t,g,:] . q_w[n,g,:])
        + (x @ proj_down) @ proj_up^T + bias,

with q_a, s_a from quantizing x / smooth_factor per token and group (INT4:
group 64, scale amax/7 in the compute dtype; NVFP4: group 16, E2M1 values with
FP8-E4M3 scales amax/6). `EmulatedOps` offers the two kernel entry points
diffusers' `SVDQW4A4Linear.forward` calls (`quantize_w4a4_act_fuse_lora`,
`gemm_w4a4`) with the same arguments and buffers; it reads the packed weights
and runs the same helpers, so an emulated layer equals the logical math bit
for bit. The activation buffers are the emulator's own (logical nibbles,
scales [K/group, tokens]); they never reach a file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from wan_export.quantizers import svdquant_pack as pack

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)     # code 0..7; +8 is the negative
FP8_MAX = 448.0


@dataclass(frozen=True)
class Precision:
    name: str
    group: int
    qmax: float                   # largest code magnitude: INT4 7, E2M1 6


PRECISIONS = {"int4": Precision("int4", 64, 7.0), "nvfp4": Precision("nvfp4", 16, 6.0)}


def precision(name: str) -> Precision:
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r} (expected {' or '.join(PRECISIONS)})")
    return PRECISIONS[name]


# ---- 4-bit codes ---------------------------------------------------------------------------

_E2M1 = torch.tensor(E2M1_VALUES)
_E2M1_MIDS = (_E2M1[1:] + _E2M1[:-1]) / 2


def e2m1_codes(v: torch.Tensor) -> torch.Tensor:
    """Round to the nearest E2M1 value (ties to the even code, saturating at 6) -> nibble codes."""
    mag = v.abs().clamp(max=6.0)
    lo = torch.bucketize(mag, _E2M1_MIDS, right=False)
    hi = torch.bucketize(mag, _E2M1_MIDS, right=True)
    idx = torch.where((lo != hi) & (lo % 2 == 1), hi, lo)
    return (idx + 8 * (v < 0)).to(torch.uint8)


_VALUES = {"int4": torch.tensor([float(i) for i in range(8)] + [float(i - 16) for i in range(8, 16)]),
           "nvfp4": torch.cat([_E2M1, -_E2M1])}


def code_values(codes: torch.Tensor, prec: Precision) -> torch.Tensor:
    """Nibble codes -> float32 values (INT4 two's complement, or E2M1)."""
    return _VALUES[prec.name][codes.to(torch.int32)]


def quantize_groups(x: torch.Tensor, prec: Precision, scale_dtype: torch.dtype,
                    outer: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float32 -> (codes uint8 [M, K], scales [M, K/group] in their stored dtype).

    INT4 stores scale amax/7 in the 16-bit compute dtype; NVFP4 stores amax/6/outer,
    clamped to 448, as FP8-E4M3 (outer is the per-tensor wtscale; 1 for activations).
    Codes divide by the stored (rounded) scale, as the stored scale is what multiplies back.
    """
    m, k = x.shape
    g = x.reshape(m, k // prec.group, prec.group)
    amax = g.abs().amax(-1)
    if prec.name == "int4":
        s = (amax / prec.qmax).to(scale_dtype)
        sf = s.float()
        q = torch.round(g / torch.where(sf > 0, sf, 1.0)[..., None]).clamp(-8, 7)
        codes = (q.to(torch.int64) & 0xF).to(torch.uint8)
    else:
        s = (amax / prec.qmax / outer).clamp(max=FP8_MAX).to(torch.float8_e4m3fn)
        sf = s.float() * outer
        codes = e2m1_codes(g / torch.where(sf > 0, sf, 1.0)[..., None])
    return codes.reshape(m, k), s


def dequantize_groups(codes: torch.Tensor, scales: torch.Tensor, prec: Precision, outer: float = 1.0):
    m, k = codes.shape
    v = code_values(codes, prec).reshape(m, k // prec.group, prec.group)
    return (v * (scales.float() * outer)[..., None]).reshape(m, k)


# ---- the layer math ------------------------------------------------------------------------

def quantize_activations(x: torch.Tensor, smooth: torch.Tensor, prec: Precision):
    """What quantize_w4a4_act_fuse_lora computes for the GEMM: x / smooth per token and group."""
    scale_dtype = x.dtype if prec.name == "int4" else torch.float8_e4m3fn
    return quantize_groups(x.float() / smooth.float(), prec, scale_dtype)


def lowrank_down(x: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """The low-rank down projection, fp32, on the raw (un-smoothed) input."""
    return x.float() @ down.float()


def w4a4_gemm(a_codes, a_scales, w_codes, w_scales, prec: Precision, wcscales=None, wtscale=None):
    """The 4-bit GEMM term, fp32 [M, N]: dequantized activations times dequantized weights."""
    y = dequantize_groups(a_codes, a_scales, prec) @ dequantize_groups(w_codes, w_scales, prec).t()
    if wcscales is not None:
        y = y * wcscales.float()
    if wtscale is not None:
        y = y * wtscale.float().reshape(())
    return y


def epilogue(y, lora_act, up, bias, lora_scales, out_dtype):
    """GEMM + (lora_act @ up^T, each 16-rank slice times its lora scale) + bias, cast to out_dtype."""
    if up.shape[1]:
        scale = torch.tensor(lora_scales, dtype=torch.float32).repeat_interleave(16)[: up.shape[1]]
        y = y + (lora_act * scale) @ up.float().t()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


@dataclass
class W4A4Layer:
    """One SVDQuant Linear in logical form (N = out, K = in, r = rank)."""

    precision: str
    codes: torch.Tensor            # uint8 [N, K] nibbles
    wscales: torch.Tensor          # [N, K/group]: compute dtype (int4) or float8_e4m3fn (nvfp4)
    smooth: torch.Tensor           # [K], compute dtype
    down: torch.Tensor             # [K, r], acts on the raw input
    up: torch.Tensor               # [N, r]
    bias: torch.Tensor | None      # [N]
    wcscales: torch.Tensor | None = None    # [N] (nvfp4)
    wtscale: torch.Tensor | None = None     # [1] (nvfp4)

    @property
    def prec(self) -> Precision:
        return precision(self.precision)

    @property
    def rank(self) -> int:
        return self.down.shape[1]

    def forward(self, x: torch.Tensor, out_dtype: torch.dtype | None = None, acts=None) -> torch.Tensor:
        """The logical math on x [..., K] (x in the compute dtype); `acts` may pass in
        `quantize_activations(x, self.smooth)` when several layers share the smoothing."""
        shape, k = x.shape, x.shape[-1]
        x2 = x.reshape(-1, k)
        a_codes, a_scales = acts if acts is not None else quantize_activations(x2, self.smooth, self.prec)
        y = w4a4_gemm(a_codes, a_scales, self.codes, self.wscales, self.prec, self.wcscales, self.wtscale)
        lora_scales = [1.0] * math.ceil(self.rank / 16)
        y = epilogue(y, lowrank_down(x2, self.down), self.up, self.bias, lora_scales,
                     out_dtype or self.smooth.dtype)
        return y.reshape(*shape[:-1], y.shape[-1])

    def packed(self) -> dict[str, torch.Tensor]:
        """The tensors SVDQW4A4Linear loads, in the Nunchaku tile layout, by parameter name."""
        scales = pack.pack_scales if self.precision == "int4" else pack.pack_micro_scales
        out = {"qweight": pack.pack_qweight(self.codes), "wscales": scales(self.wscales),
               "smooth_factor": pack.pack_scales(self.smooth),
               "proj_down": pack.pack_lowrank(self.down, down=True),
               "proj_up": pack.pack_lowrank(self.up, down=False)}
        if self.bias is not None:
            out["bias"] = pack.pack_scales(self.bias)
        if self.precision == "nvfp4":
            out["wcscales"] = pack.pack_scales(self.wcscales)
            out["wtscale"] = self.wtscale.reshape(1)
        return out

    @classmethod
    def from_packed(cls, t: dict[str, torch.Tensor], precision_name: str) -> "W4A4Layer":
        nv = precision_name == "nvfp4"
        scales = pack.unpack_micro_scales if nv else pack.unpack_scales
        return cls(precision_name, pack.unpack_qweight(t["qweight"]), scales(t["wscales"]),
                   pack.unpack_scales(t["smooth_factor"]), pack.unpack_lowrank(t["proj_down"], True),
                   pack.unpack_lowrank(t["proj_up"], False),
                   pack.unpack_scales(t["bias"]) if t.get("bias") is not None else None,
                   pack.unpack_scales(t["wcscales"]) if nv else None, t["wtscale"] if nv else None)


# ---- the kernel entry points diffusers calls -------------------------------------------------

def _nibbles_to_bytes(codes: torch.Tensor) -> torch.Tensor:
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8)


def _bytes_to_nibbles(b: torch.Tensor) -> torch.Tensor:
    out = torch.empty(b.shape[0], b.shape[1] * 2, dtype=torch.uint8)
    out[:, 0::2], out[:, 1::2] = b & 0xF, b >> 4
    return out


class EmulatedOps:
    """Stands in for the `ops` of rootonchair/nunchaku-lite-kernels (positional signatures as
    diffusers' quantizers/nunchaku/utils.py calls them)."""

    def quantize_w4a4_act_fuse_lora(self, x, qx, ascales, proj_down, lora_act, smooth, fuse_glu, fp4):
        if fuse_glu:
            raise NotImplementedError("fuse_glu is not emulated (diffusers never sets it)")
        prec = PRECISIONS["nvfp4" if fp4 else "int4"]
        m = x.shape[0]
        codes, scales = quantize_activations(x, pack.unpack_scales(smooth), prec)
        qx.zero_()
        qx[:m] = _nibbles_to_bytes(codes)
        raw = ascales.view(torch.uint8) if ascales.dtype == torch.float8_e4m3fn else ascales   # fp8 has no zero_
        raw.zero_()
        ascales[:, :m] = scales.t().to(ascales.dtype)
        lora_act.zero_()
        lora_act[:m] = lowrank_down(x, pack.unpack_lowrank(proj_down, down=True))

    def gemm_w4a4(self, act, wgt, out, qout, ascales, wscales, oscales, poolout, lora_act_in, lora_up,
                  lora_down, lora_act_out, norm_q, norm_k, rotary_emb, bias, smooth_factor, out_vk,
                  out_linearattn, act_unsigned, lora_scales, fuse_silu, fp4, alpha, wcscales,
                  out_q=None, out_k=None, out_v=None, attn_tokens=0):
        unused = {"qout": qout, "oscales": oscales, "poolout": poolout, "lora_down": lora_down,
                  "lora_act_out": lora_act_out, "norm_q": norm_q, "norm_k": norm_k, "rotary_emb": rotary_emb,
                  "smooth_factor": smooth_factor, "out_vk": out_vk, "out_linearattn": out_linearattn,
                  "out_q": out_q, "out_k": out_k, "out_v": out_v}
        used = [k for k, v in unused.items() if v is not None]
        if used or act_unsigned or fuse_silu:
            raise NotImplementedError(f"gemm_w4a4 epilogue not emulated: {used or 'act_unsigned/fuse_silu'}")
        prec = PRECISIONS["nvfp4" if fp4 else "int4"]
        m = out.shape[0]
        a_codes = _bytes_to_nibbles(act[:m])
        a_scales = ascales[:, :m].t()
        w_scales = pack.unpack_micro_scales(wscales) if fp4 else pack.unpack_scales(wscales)
        y = w4a4_gemm(a_codes, a_scales, pack.unpack_qweight(wgt), w_scales, prec,
                      pack.unpack_scales(wcscales) if wcscales is not None else None, alpha)
        b = pack.unpack_scales(bias) if bias is not None else None
        out.copy_(epilogue(y, lora_act_in[:m], pack.unpack_lowrank(lora_up, down=False), b, lora_scales,
                           out.dtype))
