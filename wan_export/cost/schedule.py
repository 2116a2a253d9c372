"""How many denoising steps each A14B expert runs, counted as Wan's sampler counts them.

Wan2.2 (`text2video.py` / `image2video.py`) builds `FlowUniPCMultistepScheduler`
(num_train_timesteps 1000, shift 1), then `set_timesteps(steps, shift=s)`:
sigmas = linspace(sigma_max, sigma_min, steps + 1)[:-1] with sigma_max/min taken
from the float32 training table (0.999 / 0), shifted s·σ/(1 + (s−1)·σ), and
timesteps = int64(σ·1000). The high-noise expert runs while t >= boundary·1000
(wan-architecture.md §4).
"""
from __future__ import annotations

import numpy as np

TRAIN_STEPS = 1000


def flow_sigmas(steps: int, shift: float) -> np.ndarray:
    """The shifted sigmas of Wan's FlowUniPC `set_timesteps` (float64, without the final 0)."""
    alphas = np.linspace(1, 1 / TRAIN_STEPS, TRAIN_STEPS)[::-1]
    table = (1.0 - alphas).astype(np.float32)          # the scheduler keeps its table in float32
    sigma_max, sigma_min = float(table[0]), float(table[-1])
    sigmas = np.linspace(sigma_max, sigma_min, steps + 1)[:-1]
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def timesteps(steps: int, shift: float) -> np.ndarray:
    return (flow_sigmas(steps, shift) * TRAIN_STEPS).astype(np.int64)


def expert_steps(steps: int, shift: float, boundary_ratio: float | None) -> dict[str, int]:
    """{"high_noise": n, "low_noise": steps - n} for A14B, {"dit": steps} otherwise."""
    if boundary_ratio is None:
        return {"dit": steps}
    high = int((timesteps(steps, shift) >= boundary_ratio * TRAIN_STEPS).sum())
    return {"high_noise": high, "low_noise": steps - high}
