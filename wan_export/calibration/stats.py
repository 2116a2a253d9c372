"""Per-layer activation statistics that merge exactly, whatever the split of the work.

Each Linear gets: abs-max (per tensor and per input channel), per-channel sum of
squares (float64) with a row count (the importance matrix), a histogram of |x| over
fixed log2 bins, and optionally a deterministic sample of input rows. Sums are kept
per prompt and folded in prompt order (`merge`), so one process and N torchrun ranks
give the same float64 sums, hence the same bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

BINS_PER_OCTAVE = 8
MIN_EXP, MAX_EXP = -24, 16
NBINS = 1 + BINS_PER_OCTAVE * (MAX_EXP - MIN_EXP)      # bin 0: exact zeros
# thresholds of the sub-octave bins on the mantissa 2m in [1, 2): exact float32 constants
_SUB = torch.tensor([2.0 ** (j / BINS_PER_OCTAVE) for j in range(1, BINS_PER_OCTAVE)], dtype=torch.float32)


def hist_edges() -> list[float]:
    """Lower edge of bins 1..NBINS-1 (|x| >= edge): 2^(k/8), k = 8*MIN_EXP .. 8*MAX_EXP-1."""
    return [2.0 ** (k / BINS_PER_OCTAVE) for k in range(BINS_PER_OCTAVE * MIN_EXP, BINS_PER_OCTAVE * MAX_EXP)]


def histogram(absx: torch.Tensor) -> torch.Tensor:
    """int64 [NBINS] counts of a float tensor of |x| values (frexp + exact thresholds, no log)."""
    a = absx.reshape(-1).float()
    mant, exp = torch.frexp(a)                       # a = mant * 2^exp, mant in [0.5, 1)
    octave = exp.long() - 1 - MIN_EXP               # a in [2^(exp-1), 2^exp)
    sub = torch.bucketize(mant * 2, _SUB.to(a.device), right=True)
    idx = (octave * BINS_PER_OCTAVE + sub + 1).clamp(1, NBINS - 1)
    idx = torch.where(a == 0, torch.zeros_like(idx), idx)
    return torch.bincount(idx, minlength=NBINS).cpu()


@dataclass
class LayerStats:
    """Accumulated statistics of one Linear's input ([..., in_features] rows)."""

    in_features: int
    amax: float = 0.0
    channel_amax: torch.Tensor | None = None       # float32 [K]
    sum2: torch.Tensor | None = None               # float64 [K]
    count: int = 0
    hist: torch.Tensor | None = None               # int64 [NBINS]
    samples: list[torch.Tensor] = field(default_factory=list)   # float32 [n_i, K] chunks, in order

    def __post_init__(self):
        k = self.in_features
        if self.channel_amax is None:
            self.channel_amax = torch.zeros(k, dtype=torch.float32)
        if self.sum2 is None:
            self.sum2 = torch.zeros(k, dtype=torch.float64)
        if self.hist is None:
            self.hist = torch.zeros(NBINS, dtype=torch.int64)

    @classmethod
    def of(cls, x: torch.Tensor, sample_rows: int = 0) -> "LayerStats":
        """The statistics of one call's rows x [..., K]; keeps `sample_rows` evenly spaced rows."""
        x = x.detach().reshape(-1, x.shape[-1])
        ax = x.abs().float()
        cmax = ax.amax(dim=0).cpu()
        # float32 squares summed in float64: exact enough, and the same on every rank
        s = cls(x.shape[-1], amax=float(cmax.max()), channel_amax=cmax,
                sum2=ax.square().sum(dim=0, dtype=torch.float64).cpu(), count=x.shape[0], hist=histogram(ax))
        if sample_rows:
            idx = torch.linspace(0, x.shape[0] - 1, min(sample_rows, x.shape[0])).round().long()
            s.samples.append(x[idx.to(x.device)].float().cpu())
        return s

    def merge(self, other: "LayerStats") -> None:
        """self <- self then other (the order matters for sum2 and samples only)."""
        self.amax = max(self.amax, other.amax)
        self.channel_amax = torch.maximum(self.channel_amax, other.channel_amax)
        self.sum2 = self.sum2 + other.sum2
        self.count += other.count
        self.hist = self.hist + other.hist
        self.samples.extend(other.samples)

    def thin(self, n: int) -> None:
        """Keep n of the sampled rows, evenly spaced over everything kept so far."""
        if self.samples:
            rows = torch.cat(self.samples)
            idx = torch.linspace(0, rows.shape[0] - 1, min(n, rows.shape[0])).round().long()
            self.samples = [rows[idx].contiguous()] if n else []

    def sample(self) -> torch.Tensor | None:
        """The kept input rows float32 [n, K], or None."""
        return torch.cat(self.samples) if self.samples else None


@dataclass
class AttentionStats:
    """amax of q, k, v entering attention and of the softmax output."""

    q: float = 0.0
    k: float = 0.0
    v: float = 0.0
    softmax: float = 0.0

    def merge(self, other: "AttentionStats") -> None:
        for f in ("q", "k", "v", "softmax"):
            setattr(self, f, max(getattr(self, f), getattr(other, f)))


def merge_all(parts: list[dict]) -> dict:
    """Fold a list of {name: LayerStats | AttentionStats} dicts in list order."""
    out: dict = {}
    for part in parts:
        for name, s in part.items():
            if name not in out:
                out[name] = type(s)(s.in_features) if isinstance(s, LayerStats) else AttentionStats()
            out[name].merge(s)
    return out
