"""GPTQ (Frantar et al. 2022) for any grid with fixed scales: error-aware rounding of one Linear.

    H = hessian_from_sample(x_rows)                           # X^T X, or diag(sum2) via hessian_from_sum2
    q_hat = gptq(w, H, quantize_columns)                      # fp32 [out, in], on the grid
    best, used, errs = choose(w, H, nearest_hat, q_hat)       # never worse than nearest (per layer)

`quantize_columns(cols, start)` rounds columns start..start+n-1 (fp32 [out, n]) onto the grid and
returns their dequantized values; scales are fixed beforehand from the original weight (fp8: the
per-tensor scale; nvfp4: global + e4m3 block scales), so the result re-encodes exactly. Columns are
processed in blocks of `block` with lazy updates; `damp` adds a fraction of mean(diag H).
The layer-output error measure is tr((W-Q) H (W-Q)^T) = sum over calibration rows of |x (W-Q)^T|^2.
A diagonal H gives plain nearest rounding (no cross terms to absorb the error), so the writer
records `nearest` for such layers.
"""
from __future__ import annotations

from typing import Callable

import torch

ColumnQuantizer = Callable[[torch.Tensor, int], torch.Tensor]


def hessian_from_sample(x: torch.Tensor) -> torch.Tensor:
    x = x.double().reshape(-1, x.shape[-1])
    return (x.T @ x).float()


def hessian_from_sum2(sum2) -> torch.Tensor:
    return torch.diag(torch.as_tensor(sum2, dtype=torch.float32))


def output_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    d = (w.double() - q.double())
    return float(((d @ h.double()) * d).sum())


def _inverse_cholesky(h: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    h = h.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += torch.eye(h.shape[0], dtype=h.dtype) * (damp * torch.diag(h).mean())
    for _ in range(4):                      # raise damping until H is positive definite
        chol, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0:
            break
        h += torch.eye(h.shape[0], dtype=h.dtype) * (damp * torch.diag(h).mean())
    hinv = torch.cholesky_inverse(chol)
    return torch.linalg.cholesky(hinv, upper=True), dead


def gptq(w: torch.Tensor, h: torch.Tensor, quantize_columns: ColumnQuantizer, *, block: int = 128,
         damp: float = 0.01) -> torch.Tensor:
    """Quantize w [out, in] column by column, propagating each column's rounding error onto the
    columns not yet quantized (weighted by the inverse Hessian)."""
    w = w.double().clone()
    u, dead = _inverse_cholesky(h, damp)
    w[:, dead] = 0.0
    n = w.shape[1]
    q = torch.zeros_like(w)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1, err1, u1 = w[:, i1:i2].clone(), torch.zeros_like(w[:, i1:i2]), u[i1:i2, i1:i2]
        for j in range(i2 - i1):
            qc = quantize_columns(w1[:, j:j + 1].float(), i1 + j).double()[:, 0]
            q[:, i1 + j] = qc
            e = (w1[:, j] - qc) / u1[j, j]
            w1[:, j:] -= e[:, None] * u1[j, j:][None, :]
            err1[:, j] = e
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return q.float()


def choose(w: torch.Tensor, h: torch.Tensor, nearest: torch.Tensor, candidate: torch.Tensor):
    """(best, 'gptq' | 'nearest', {method: error}): the candidate only when it lowers the error."""
    errs = {"nearest": output_error(w, nearest, h), "gptq": output_error(w, candidate, h)}
    if errs["gptq"] < errs["nearest"]:
        return candidate, "gptq", errs
    return nearest, "nearest", errs
