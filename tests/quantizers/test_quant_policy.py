"""Layer policy rules, activation calibrators and GPTQ, from names, shapes and small tensors only."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wan_export.errors import BadInputError, UnsupportedError
from wan_export.quantizers import act_scales, gptq
from wan_export.quantizers.layer import LayerSpec, quantize_layer
from wan_export.quantizers.policy import (
    FALLBACK_RULE,
    QuantPolicy,
    metadata_json,
    parse_exclude_blocks,
    parse_overrides,
    resolve,
)
from wan_export.variants import VARIANTS, dit_shapes


def decisions(policy, variant="wan2.1-t2v-14b"):
    return {d.name: d for d in resolve(policy, list(dit_shapes(VARIANTS[variant].config).items()))}


def test_only_block_linears_are_quantized_each_kept_tensor_has_a_reason():
    d = decisions(QuantPolicy("fp8"), "wan2.1-i2v-14b")
    quantized = {n for n, x in d.items() if x.format}
    assert "blocks.0.cross_attn.k_img.weight" in quantized and "blocks.39.ffn.2.weight" in quantized
    assert len(quantized) == 40 * 12                     # q k v o, q k v o k_img v_img, ffn.0 ffn.2
    kept = {n: x.rule for n, x in d.items() if not x.format}
    assert kept["patch_embedding.weight"] == "conv3d" and kept["head.head.weight"] == "embedding"
    assert kept["img_emb.proj.1.weight"] == "embedding" and kept["time_projection.1.weight"] == "embedding"
    assert kept["blocks.0.modulation"] == "modulation" and kept["blocks.0.norm3.weight"] == "norm"
    assert kept["blocks.0.ffn.0.bias"] == "bias" and kept["blocks.0.self_attn.norm_q.weight"] == "norm"
    assert all(x.why for x in d.values())
    vace = decisions(QuantPolicy("nvfp4"), "wan2.1-vace-14b")
    assert vace["vace_blocks.0.ffn.0.weight"].format == "nvfp4"


def test_exclude_blocks_and_overrides_in_front():
    first, last = parse_exclude_blocks("first:3,last:3")
    d = decisions(QuantPolicy("nvfp4", first, last, parse_overrides([r"blocks\.0\.ffn\.0=fp8", "ffn=bf16"])))
    assert d["blocks.0.ffn.0.weight"].format == "fp8"                 # the first override wins
    assert d["blocks.2.self_attn.q.weight"].rule == "excluded-block"
    assert d["blocks.37.self_attn.q.weight"].format is None and d["blocks.36.self_attn.q.weight"].format == "nvfp4"
    assert d["blocks.10.ffn.2.weight"].format is None                 # ffn=bf16
    with pytest.raises(BadInputError):
        parse_exclude_blocks("middle:2")
    with pytest.raises(UnsupportedError):
        QuantPolicy("int4")
    with pytest.raises(UnsupportedError):
        QuantPolicy("fp8", overrides=(("ffn", "q4"),))


def test_block_size_misfit_falls_back_visibly_and_is_recorded():
    policy = QuantPolicy("mxfp8")
    ds = resolve(policy, [("blocks.0.ffn.2.weight", (256, 1040)), ("blocks.0.ffn.0.weight", (1040, 256))])
    fb, ok = ds
    assert (fb.format, fb.rule, fb.wanted) == ("fp8", FALLBACK_RULE, "mxfp8") and "1040" in fb.why
    assert ok.format == "mxfp8"
    meta = metadata_json(policy, ds)
    assert '"fallbacks":[{"format":"fp8","tensor":"blocks.0.ffn.2.weight"' in meta


def test_override_onto_a_norm_or_conv_is_refused():
    with pytest.raises(UnsupportedError, match="norm weight"):
        decisions(QuantPolicy("fp8", overrides=(("norm3", "fp8"),)))
    with pytest.raises(UnsupportedError, match="Conv3d"):
        decisions(QuantPolicy("fp8", overrides=(("patch_embedding", "fp8"),)))


def _hist(values: np.ndarray) -> np.ndarray:
    from wan_export.calibration.stats import histogram
    return histogram(torch.from_numpy(np.abs(values)).float()).numpy()


def test_activation_calibrators():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200_000).astype(np.float32)
    x[:20] *= 200                                          # rare outliers
    stats = {"input_amax": np.float32(np.abs(x).max()), "input_hist": _hist(x)}
    amax = float(stats["input_amax"])
    assert act_scales.clip_value(stats, ("max", None)) == amax
    p = act_scales.clip_value(stats, act_scales.parse_method("percentile:99.99"))
    assert 3.0 < p < 10.0
    # E4M3's error is relative, so clipping outliers buys no resolution: the MSE clip stays at the max
    # unless values would fall into subnormals; it never exceeds it
    mse = act_scales.clip_value(stats, act_scales.parse_method("mse"))
    assert mse == amax

    assert act_scales.input_scale("fp8", amax) == pytest.approx(amax / 448)
    assert act_scales.input_scale("nvfp4", amax) == pytest.approx(amax / 2688)
    assert act_scales.input_scale("mxfp8", amax) is None
    for bad in ("percentile:0", "percentile:x", "p99", "mse:3"):
        with pytest.raises(BadInputError):
            act_scales.parse_method(bad)


@pytest.mark.parametrize("fmt", ["fp8", "nvfp4"])
def test_gptq_lowers_layer_output_error_on_correlated_inputs(fmt):
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(128, 128, generator=g) / 8
    x = torch.randn(512, 128, generator=g) @ (torch.eye(128) + mix)          # correlated channels
    w = torch.randn(96, 128, generator=g) * 0.05
    stats = {"input_amax": np.float32(x.abs().max()), "input_sample": x.numpy()}
    r = quantize_layer(LayerSpec("comfy", fmt, "gptq"), w.numpy(), stats)
    assert r.record["rounding"] == "gptq"
    assert r.record["output_error_gptq"] < 0.9 * r.record["output_error_nearest"]
    near = quantize_layer(LayerSpec("comfy", fmt, "nearest"), w.numpy(), stats)
    assert near.tensors["weight_scale"].tobytes() == r.tensors["weight_scale"].tobytes()   # same scales


def test_gptq_falls_back_when_it_would_be_worse():
    w = torch.randn(8, 16)
    h = torch.eye(16)
    best, used, errs = gptq.choose(w, h, w.clone(), w + 1)
    assert used == "nearest" and errs["nearest"] == 0.0 and torch.equal(best, w)
