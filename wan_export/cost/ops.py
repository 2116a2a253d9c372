"""FLOP counts by op class, the unit every stage of the cost model is built from.

The classes are defined so that `gemm + attention + conv` is exactly what
`torch.utils.flop_counter.FlopCounterMode` counts on the reference models:
gemm = `mm`/`addmm` (every nn.Linear), attention = the two batched products of
attention (`bmm`: Q·Kᵀ and P·V, whether SDPA or written out as in UMT5), conv =
`convolution`. `elementwise` (norms, activations, RoPE, softmax, residuals) is
our own estimate: FlopCounterMode does not count it. `softmax` (also an estimate)
is kept apart because it runs inside the attention kernels and moves no memory.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

MATMUL_CLASSES = ("gemm", "attention", "conv")
CLASSES = MATMUL_CLASSES + ("elementwise", "softmax")
SOFTMAX_OPS = 5      # max, subtract, exp, sum, divide per score (our estimate)


@dataclass(frozen=True)
class Ops:
    """FLOPs by op class (a FLOP is one multiply or one add: a multiply-add is 2)."""

    gemm: int = 0
    attention: int = 0
    conv: int = 0
    elementwise: int = 0
    softmax: int = 0

    def __add__(self, other: "Ops") -> "Ops":
        return Ops(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __mul__(self, k: int) -> "Ops":
        return Ops(*(getattr(self, f.name) * k for f in fields(self)))

    __rmul__ = __mul__

    @property
    def counted(self) -> int:
        """What FlopCounterMode counts: gemm + attention + conv."""
        return self.gemm + self.attention + self.conv

    @property
    def total(self) -> int:
        return self.counted + self.elementwise + self.softmax

    def to_dict(self) -> dict:
        return {**asdict(self), "counted": self.counted, "total": self.total}


def linear(tokens: int, n_in: int, n_out: int) -> Ops:
    return Ops(gemm=2 * tokens * n_in * n_out)


def attention(width: int, heads: int, q_len: int, k_len: int) -> Ops:
    """Q·Kᵀ and P·V over all heads (width = heads · head_dim), plus the softmax estimate."""
    return Ops(attention=4 * q_len * k_len * width, softmax=SOFTMAX_OPS * heads * q_len * k_len)


def conv(out_positions: int, c_in: int, c_out: int, kernel: int) -> Ops:
    """A dense convolution: out_positions = batch · prod(output spatial/time dims), kernel = prod(kernel)."""
    return Ops(conv=2 * out_positions * c_in * c_out * kernel)
