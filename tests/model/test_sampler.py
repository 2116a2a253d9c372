"""The official sampler against diffusers' UniPCMultistepScheduler (flow sigmas) and Wan's grid.

Tolerances (measured on CPU, float32 latents): timesteps equal, sigmas bit-identical,
every step's latents within rel-L2 1e-6 (measured <= 2.6e-7) and 1e-5 max abs.
"""
import pytest
import torch

from wan_export.model.sampler import (WAN_SIGMA_MAX, FlowEuler, FlowUniPC, cfg, flow_sigmas,
                                      make_solver, shift_sigmas)

diffusers = pytest.importorskip("diffusers")
OFFICIAL_SHIFTS = (3.0, 5.0, 12.0, 16.0)
STEP_REL_L2, STEP_ABS = 1e-6, 1e-5


def _velocity(x, w):
    """A smooth stand-in for the DiT: linear mixing plus a nonlinearity."""
    return torch.einsum("oc,bcfhw->bofhw", w, x) + 0.1 * torch.sin(x)


@pytest.mark.parametrize("steps", (10, 20, 50))
@pytest.mark.parametrize("shift", OFFICIAL_SHIFTS)
def test_unipc_equals_diffusers(steps, shift):
    ref = diffusers.UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=shift,
                                            prediction_type="flow_prediction")
    ref.set_timesteps(steps)
    ours = FlowUniPC(steps, shift, grid="diffusers")
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert torch.equal(ours.sigmas, ref.sigmas)
    g = torch.Generator().manual_seed(steps)
    x = torch.randn(1, 4, 3, 8, 8, generator=g)
    w = torch.randn(4, 4, generator=g) * 0.5
    y = x.clone()
    for t in ref.timesteps:
        x = ref.step(_velocity(x, w), t, x).prev_sample
        y = ours.step(_velocity(y, w), y)
        assert ((x - y).norm() / x.norm()).item() < STEP_REL_L2
        assert (x - y).abs().max().item() < STEP_ABS


@pytest.mark.parametrize("shift", OFFICIAL_SHIFTS)
def test_wan_grid(shift):
    """Wan's FlowUniPCMultistepScheduler: linspace(0.999, 0, n+1)[:-1], shifted, t = int(1000 sigma)."""
    ts, sig = flow_sigmas(40, shift, grid="wan")
    base = torch.linspace(WAN_SIGMA_MAX, 0, 41, dtype=torch.float64)[:-1]
    want = shift * base / (1 + (shift - 1) * base)
    assert torch.equal(sig[:-1], want.float()) and sig[-1] == 0 and sig.dtype == torch.float32
    assert torch.equal(ts, (want * 1000).long())
    assert ts[0] == int(1000 * shift * 0.999 / (1 + (shift - 1) * 0.999))


def test_euler_is_the_flow_ode_step():
    solver = FlowEuler(4, 5.0)
    x = torch.ones(2, 3)
    v = torch.full((2, 3), 2.0)
    s = solver.sigmas
    out = solver.step(v, x)
    assert torch.allclose(out, x + (s[1] - s[0]) * v)


def test_last_step_lands_on_x0():
    """The final sigma is 0, so the last UniPC step returns the x0 prediction exactly."""
    solver = FlowUniPC(3, 5.0)
    x = torch.randn(1, 4, 1, 2, 2)
    for _ in range(2):
        x = solver.step(torch.zeros_like(x), x)
    v = torch.randn_like(x)
    sigma = float(solver.sigmas[2])
    assert torch.allclose(solver.step(v, x), x - sigma * v, atol=1e-6)


def test_cfg_and_bad_arguments():
    assert torch.equal(cfg(torch.zeros(2), torch.ones(2), 5.0), torch.full((2,), 5.0))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        flow_sigmas(0, 5.0)
    with pytest.raises(ValueError, match="unknown solver"):
        make_solver("dpm++", 10, 5.0)
    solver = FlowEuler(1, 3.0)
    solver.step(torch.zeros(1), torch.zeros(1))
    with pytest.raises(RuntimeError, match="all 1 steps are done"):
        solver.step(torch.zeros(1), torch.zeros(1))
    assert torch.equal(shift_sigmas(torch.tensor([0.0, 1.0]), 7.0), torch.tensor([0.0, 1.0]))
