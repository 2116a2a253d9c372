"""Parity metrics between a reference output and an artifact's output.

All metrics are computed in float64 on numpy copies, so they are the same
whether the inputs came from torch, onnxruntime or numpy.
"""
from __future__ import annotations

import math

import numpy as np

METRICS = ("max_abs", "mean_abs", "rel_l2", "cosine", "psnr_db", "snr_db")


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def compare(ref, out) -> dict[str, float]:
    """max/mean abs error, relative L2, cosine similarity, PSNR and SNR (dB)."""
    r, o = _np(ref), _np(out)
    if r.shape != o.shape:
        raise ValueError(f"shape mismatch: reference {r.shape} vs output {o.shape}")
    err = o - r
    n_ref, n_err = float(np.sqrt((r * r).sum())), float(np.sqrt((err * err).sum()))
    n_out = float(np.sqrt((o * o).sum()))
    peak = float(np.abs(r).max()) if r.size else 0.0
    mse = float((err * err).mean()) if r.size else 0.0
    finite = bool(np.isfinite(o).all())
    return {
        "max_abs": float(np.abs(err).max()) if r.size else 0.0,
        "mean_abs": float(np.abs(err).mean()) if r.size else 0.0,
        "rel_l2": n_err / n_ref if n_ref else (0.0 if n_err == 0 else math.inf),
        "cosine": float((r * o).sum() / (n_ref * n_out)) if n_ref and n_out else float(n_ref == n_out),
        "psnr_db": _db(peak * peak, mse),
        "snr_db": _db(n_ref * n_ref, n_err * n_err),
        "ref_max_abs": peak,
        "finite": finite,
    }


def _db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
