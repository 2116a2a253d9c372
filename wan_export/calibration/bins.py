"""The fixed |x| histogram bins of CALIB files (no torch, so readers stay light).

Bin 0 counts exact zeros. Bins 1..NBINS-1 have lower edges 2^e * (1 + j/8) for
e = MIN_EXP..MAX_EXP-1 and j = 0..7: the float32 exponent and top three mantissa bits,
so a histogram is one integer pass over the bits. Bin 1 also takes the values below
2^MIN_EXP, the last bin those above its edge.
"""
from __future__ import annotations

BINS_PER_OCTAVE = 8
MIN_EXP, MAX_EXP = -24, 16
NBINS = 1 + BINS_PER_OCTAVE * (MAX_EXP - MIN_EXP)


def hist_edges() -> list[float]:
    """Lower edge of bins 1..NBINS-1 (exact float32 values)."""
    return [2.0 ** e * (1 + j / BINS_PER_OCTAVE) for e in range(MIN_EXP, MAX_EXP) for j in range(BINS_PER_OCTAVE)]


def bin_bounds() -> tuple[list[float], list[float]]:
    """(lower, upper) of every bin 0..NBINS-1; bin 0 is [0, 0], the last bin's upper is its next edge."""
    edges = hist_edges()
    lower = [0.0] + edges
    upper = [0.0] + edges[1:] + [2.0 ** MAX_EXP]
    return lower, upper
