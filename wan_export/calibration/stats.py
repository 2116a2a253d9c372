"""Per-layer activation statistics that merge exactly, whatever the split of the work.

Each Linear gets: abs-max (per tensor and per input channel), per-channel sum of
squares (float64 across calls) with a row count (the importance matrix), a histogram
of |x| (8 bins per octave, read off the float32 bits, over at most HIST_ROWS evenly
spaced rows per call), and optionally a deterministic sample of input rows. Sums are kept
per prompt and folded in prompt order (`merge`), so one process and N torchrun ranks
give the same float64 sums, hence the same bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from wan_export.calibration.bins import BINS_PER_OCTAVE, MIN_EXP, NBINS, hist_edges  # noqa: F401

HIST_ROWS = 64          # rows per call that go into the histogram (evenly spaced): its cost stays small
_KEY0 = (127 + MIN_EXP) * BINS_PER_OCTAVE              # float32 (exponent, 3 mantissa bits) key of 2^MIN_EXP


def histogram(x: torch.Tensor) -> torch.Tensor:
    """int64 [NBINS] counts of |x| read off the float32 bits: exponent and top 3 mantissa bits."""
    bits = x.reshape(-1).float().contiguous().view(torch.int32) & 0x7FFFFFFF
    zeros = int((bits == 0).sum())
    keys = torch.bincount((bits >> 20).reshape(-1), minlength=2048).cpu()
    h = torch.zeros(NBINS, dtype=torch.int64)
    h[1:] = keys[_KEY0:_KEY0 + NBINS - 1]
    h[1] += keys[:_KEY0].sum() - zeros
    h[-1] += keys[_KEY0 + NBINS - 1:].sum()
    h[0] = zeros
    return h


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
        x = x.detach().reshape(-1, x.shape[-1]).float()
        # amax and amin along rows, no |x| copy (torch.aminmax(dim=0) is ~5x slower here)
        cmax = torch.maximum(x.amax(dim=0), -x.amin(dim=0)).cpu()
        # one call's sum in float32, accumulated across calls in float64 (einsum is far slower here)
        sum2 = x.square().sum(dim=0).double().cpu()
        rows = x if x.shape[0] <= HIST_ROWS else x[_even(x.shape[0], HIST_ROWS).to(x.device)]
        s = cls(x.shape[-1], amax=float(cmax.max()), channel_amax=cmax, sum2=sum2, count=x.shape[0],
                hist=histogram(rows))
        if sample_rows:
            s.samples.append(x[_even(x.shape[0], sample_rows).to(x.device)].cpu())
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
            self.samples = [rows[_even(rows.shape[0], n)].contiguous()] if n else []

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


def _even(n: int, k: int) -> torch.Tensor:
    """k (at most n) evenly spaced indices into range(n)."""
    return torch.linspace(0, n - 1, min(k, n)).round().long()


def merge_all(parts: list[dict]) -> dict:
    """Fold a list of {name: LayerStats | AttentionStats} dicts in list order."""
    out: dict = {}
    for part in parts:
        for name, s in part.items():
            if name not in out:
                out[name] = type(s)(s.in_features) if isinstance(s, LayerStats) else AttentionStats()
            out[name].merge(s)
    return out
