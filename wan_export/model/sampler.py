"""The official Wan sampler: flow-matching sigmas with shift, UniPC (bh2) and Euler steps, CFG.

Pure torch. `FlowUniPC` is the multistep UniPC predictor-corrector of Wan's
`FlowUniPCMultistepScheduler` (solver order 2, bh2, x0 prediction from the
flow velocity, lower order on the first and last steps), which is also what
diffusers' `UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type=
"flow_prediction")` computes. The two differ only in the sigma grid
(formats-diffusers.md 3.3), so `flow_sigmas` takes `grid="wan"` (official:
linspace(0.999, 0, n+1), shifted) or `grid="diffusers"` (linspace(1, 1/1000),
shifted, sigma 0 lowered by 1e-6). Solver coefficients are computed in float64
from the float32 sigma grid; the latents stay in their dtype.
"""
from __future__ import annotations

import math

import torch

NUM_TRAIN_TIMESTEPS = 1000
WAN_SIGMA_MAX = float(torch.tensor(0.999, dtype=torch.float32))   # Wan: float32 1 - 1/1000
GRIDS = ("wan", "diffusers")
SOLVERS = ("unipc", "euler")


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow-matching time shift s*sigma / (1 + (s-1)*sigma)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_sigmas(steps: int, shift: float, grid: str = "wan") -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps int64 [steps], sigmas float32 [steps + 1] ending in 0)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if grid == "wan":
        base = torch.linspace(WAN_SIGMA_MAX, 0.0, steps + 1, dtype=torch.float64)[:-1]
        sig = shift_sigmas(base, shift)
    elif grid == "diffusers":
        base = torch.linspace(1.0, 1.0 / NUM_TRAIN_TIMESTEPS, steps + 1, dtype=torch.float64)[:-1]
        sig = shift_sigmas(base, shift)
        if abs(float(sig[0]) - 1.0) < 1e-6:      # diffusers keeps log(sigma) finite on its first step
            sig[0] -= 1e-6
    else:
        raise ValueError(f"unknown sigma grid {grid!r}; expected one of {GRIDS}")
    timesteps = (sig * NUM_TRAIN_TIMESTEPS).to(torch.int64)
    sigmas = torch.cat([sig, sig.new_zeros(1)]).to(torch.float32)
    return timesteps, sigmas


def cfg(uncond: torch.Tensor, cond: torch.Tensor, g: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + g * (cond - uncond)."""
    return uncond + g * (cond - uncond)


class _FlowSolver:
    """Shared state: the grid and a step counter. `step(velocity, latents) -> latents`."""

    def __init__(self, steps: int, shift: float, grid: str = "wan"):
        self.steps, self.shift, self.grid = steps, shift, grid
        self.timesteps, self.sigmas = flow_sigmas(steps, shift, grid)
        self._sig = [float(s) for s in self.sigmas]     # the float32 grid, as Python floats
        self.index = 0

    def _advance(self) -> int:
        if self.index >= self.steps:
            raise RuntimeError(f"all {self.steps} steps are done")
        self.index += 1
        return self.index - 1


class FlowEuler(_FlowSolver):
    """The plain flow Euler step: x <- x + (sigma_next - sigma) * v."""

    def step(self, velocity: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        i = self._advance()
        dt = self._sig[i + 1] - self._sig[i]
        return (latents.float() + dt * velocity.float()).to(latents.dtype)


def _lam(sigma: float) -> float:
    """log-SNR of flow sigma: log(1 - sigma) - log(sigma); +inf at sigma 0."""
    return math.inf if sigma == 0 else math.log(1 - sigma) - math.log(sigma)


def _phis(h: float) -> tuple[float, float, float]:
    """(h*phi_1 with hh = -h, B(h) of bh2, hh) of the x0-predicting UniPC."""
    hh = -h
    e = math.expm1(hh)
    return e, e, hh


def _unic_rhos(h: float, rk: float | None) -> tuple[float, ...]:
    """Corrector weights: order 1 -> (0.5,); order 2 solves [[1, 1], [rk, 1]] rho = b."""
    if rk is None:
        return (0.5,)
    h_phi_1, b_h, hh = _phis(h)
    k1 = h_phi_1 / hh - 1
    k2 = k1 / hh - 0.5
    b1, b2 = k1 / b_h, 2 * k2 / b_h
    rho0 = (b1 - b2) / (1 - rk)             # Cramer's rule on the 2x2 system
    return rho0, b1 - rho0


class FlowUniPC(_FlowSolver):
    """Wan's UniPC multistep solver (order 2, bh2, x0 prediction, lower_order_final).

    Each `step` takes the (guided) flow velocity at the current latents: it
    first corrects the latents with UniC using the new prediction, then
    predicts the next latents with UniP.
    """

    order = 2

    def __init__(self, steps: int, shift: float, grid: str = "wan"):
        super().__init__(steps, shift, grid)
        self._x0: list[torch.Tensor] = []          # the last `order` x0 predictions, newest last
        self._last_sample: torch.Tensor | None = None
        self._last_order = 0

    def step(self, velocity: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        i = self._advance()
        sig = self._sig
        x0 = latents - sig[i] * velocity.to(latents.dtype)
        if i > 0:
            latents = self._correct(i, x0)
        self._x0 = (self._x0 + [x0])[-self.order:]
        order = min(self.order, self.steps - i, i + 1)
        self._last_sample, self._last_order = latents, order
        return self._predict(i, latents, order)

    def _predict(self, i: int, x: torch.Tensor, order: int) -> torch.Tensor:
        sig = self._sig
        s_t, s_0 = sig[i + 1], sig[i]
        a_t = 1 - s_t
        h = _lam(s_t) - _lam(s_0)
        h_phi_1, b_h, _ = _phis(h)
        m0 = self._x0[-1]
        out = (s_t / s_0) * x - (a_t * h_phi_1) * m0
        if order == 2:
            rk = (_lam(sig[i - 1]) - _lam(s_0)) / h
            out = out - (a_t * b_h * 0.5 / rk) * (self._x0[-2] - m0)
        return out.to(x.dtype)

    def _correct(self, i: int, x0_now: torch.Tensor) -> torch.Tensor:
        """UniC on the sample the previous step started from, with the previous step's order."""
        sig = self._sig
        s_t, s_0 = sig[i], sig[i - 1]
        a_t = 1 - s_t
        h = _lam(s_t) - _lam(s_0)
        h_phi_1, b_h, _ = _phis(h)
        m0, x = self._x0[-1], self._last_sample
        rk = (_lam(sig[i - 2]) - _lam(s_0)) / h if self._last_order == 2 else None
        rhos = _unic_rhos(h, rk)
        out = (s_t / s_0) * x - (a_t * h_phi_1) * m0
        corr = rhos[-1] * (x0_now - m0)
        if rk is not None:
            corr = corr + (rhos[0] / rk) * (self._x0[-2] - m0)
        return (out - (a_t * b_h) * corr).to(x.dtype)


def make_solver(solver: str, steps: int, shift: float, grid: str = "wan") -> _FlowSolver:
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
    return (FlowUniPC if solver == "unipc" else FlowEuler)(steps, shift, grid)
