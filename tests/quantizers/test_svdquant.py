"""SVDQuant per-Linear math: the search grid, randomized vs full SVD, smoothing + low rank
beating plain W4A4 on an outlier-heavy layer, the branch on the raw input, config checks."""
import pytest
import torch

from wan_export.quantizers.svdquant import (Objective, SVDQuantConfig, plain_w4a4, quantize_linear,
                                            residual_value, top_r)


def _outlier_layer(n=256, k=256, s=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) / k ** 0.5
    w[:, :4] *= 8                                      # heavy input channels in the weight
    w += 0.5 * torch.randn(n, 4, generator=g) @ torch.randn(4, k, generator=g) / k ** 0.5
    x = torch.randn(s, k, generator=g)
    x[:, 10:14] *= 30                                  # activation outlier channels
    return w, torch.randn(n, generator=g) * 0.1, x


def test_grid_is_deepcompressors():
    assert len(SVDQuantConfig().candidates()) == 19
    assert len(SVDQuantConfig(grid=20).candidates()) == 39
    assert SVDQuantConfig(smooth=0.3).candidates() == [(0.3, 0.7)]


def test_randomized_svd_matches_full_within_5e_3():
    w, _, _ = _outlier_layer(512, 384)
    full = top_r(w, 32, SVDQuantConfig(full_svd_max=10 ** 6))
    rand = top_r(w, 32, SVDQuantConfig(full_svd_max=0))
    res = [float((w - u @ d.t()).norm()) for u, d in (full, rand)]
    assert abs(res[1] - res[0]) / res[0] < 5e-3
    assert torch.equal(rand[0], top_r(w, 32, SVDQuantConfig(full_svd_max=0))[0])     # fixed seed


@pytest.mark.parametrize("precision", ["int4", "nvfp4"])
def test_svdquant_beats_plain_w4a4_on_outliers(precision):
    w, b, x = _outlier_layer()
    cfg = SVDQuantConfig(precision=precision, grid=4, lowrank_iters=3)
    layer, stats = quantize_linear(w, b, cfg, x)
    plain = Objective(w, b, x, cfg.dtype)(plain_w4a4(w, b, cfg))
    assert stats["error"] <= stats["error_after_search"] and stats["error"] < 0.6 * plain
    assert stats["objective"] == "output" and layer.rank == 32
    # the branch acts on the raw input: smoothed residual + (x @ down) @ up^T reproduces x W^T
    eff = residual_value(layer) / layer.smooth.float() + layer.up.float() @ layer.down.float().t()
    assert float((eff - w).norm() / w.norm()) < 0.1


def test_fixed_alpha_without_sample_uses_weight_objective():
    w, b, x = _outlier_layer()
    layer, stats = quantize_linear(w, b, SVDQuantConfig(smooth=0.5, lowrank_iters=2), None, x.abs().amax(0))
    assert stats["objective"] == "weight" and (stats["alpha"], stats["beta"]) == (0.5, 0.5)


@pytest.mark.parametrize("kwargs,text", [({"precision": "int8"}, "unknown precision"),
                                         ({"rank": 24}, "multiple of 16"), ({"smooth": 1.5}, "alpha in [0, 1]"),
                                         ({"compute_dtype": "float32"}, "compute dtype")])
def test_config_refuses(kwargs, text):
    with pytest.raises(ValueError, match=text.replace("[", r"\[").replace("]", r"\]")):
        SVDQuantConfig(**kwargs)


def test_gptq_on_the_residual_does_not_hurt():
    w, b, x = _outlier_layer(256, 256, 128)
    base = SVDQuantConfig(smooth=0.5, lowrank_iters=1)
    _, plain_stats = quantize_linear(w, b, base, x)
    layer, stats = quantize_linear(w, b, SVDQuantConfig(smooth=0.5, lowrank_iters=1, gptq=True), x)
    assert stats["error"] <= plain_stats["error"] * 1.02
    values = residual_value(layer) / layer.wscales.float().repeat_interleave(64, dim=1).clamp_min(1e-30)
    assert torch.equal(values, values.round())          # still on the INT4 grid of the stored scales
