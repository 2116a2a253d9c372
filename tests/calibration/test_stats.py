"""Calibration statistics: histogram bins, exact merging, the recorder's hooks on a real DiT, CALIB files."""
import json

import numpy as np
import pytest
import torch

from wan_export import synthetic
from wan_export.calibration import calibfile
from wan_export.calibration.recorder import Recorder, calib_layers, softmax_amax
from wan_export.calibration.stats import NBINS, LayerStats, hist_edges, histogram, merge_all
from wan_export.errors import BadInputError
from wan_export.model.dit import load_dit
from wan_export.validators.parity import DiTCase, dit_inputs


def test_histogram_bins_follow_the_edges():
    edges = hist_edges()
    assert len(edges) == NBINS - 1
    x = torch.tensor([0.0, 1e-30, 2.0 ** -24, 1.0, 1.0905, 2.0, 3.0, 1e9])
    h = histogram(x)
    assert h.sum() == len(x) and h[0] == 1 and h[1] == 2 and h[NBINS - 1] == 1
    # every value lands in the bin whose lower edge it reaches
    rng = np.random.default_rng(0)
    v = torch.from_numpy(np.exp(rng.uniform(-15, 10, 2000)).astype(np.float32))
    idx = [int(histogram(t.reshape(1)).nonzero()[0]) for t in v[:200]]
    for t, i in zip(v[:200].tolist(), idx):
        assert np.float32(edges[i - 1]) <= t and (i == NBINS - 1 or t < np.float32(edges[i]))


def test_stats_of_rows_and_merge_order():
    rng = np.random.default_rng(1)
    a, b = (torch.from_numpy(rng.standard_normal((2, 7, 16)).astype(np.float32)) for _ in range(2))
    sa, sb = LayerStats.of(a, sample_rows=3), LayerStats.of(b, sample_rows=3)
    both = torch.cat([a.reshape(-1, 16), b.reshape(-1, 16)])
    m = merge_all([{"L": sa}, {"L": sb}])["L"]
    assert m.count == 28 and m.amax == float(both.abs().max())
    assert torch.equal(m.channel_amax, both.abs().amax(0))
    assert torch.allclose(m.sum2, both.double().pow(2).sum(0), rtol=1e-6)
    assert int(m.hist.sum()) == both.numel()
    assert m.sample().shape == (6, 16)
    m.thin(4)
    assert m.sample().shape == (4, 16)


@pytest.fixture(scope="module")
def tiny_dit():
    cfg = synthetic.tiny_dit_config("wan2.1-i2v-14b")
    return load_dit({k: torch.from_numpy(v) for k, v in synthetic.dit_state(cfg).items()}, cfg), cfg


def test_recorder_sees_every_block_linear_and_attention(tiny_dit):
    dit, cfg = tiny_dit
    rec = Recorder({"dit": dit}, rows_per_call=2)
    x = dit_inputs(cfg, DiTCase(1, 2, 4, 4, 8))
    with rec.active(), torch.no_grad():
        rec.begin_prompt()
        plain = None
        out = dit(**x)
        part = rec.end_prompt()
    names = [n for n, _ in calib_layers(dit)]
    assert rec.layer_names == names and set(names) <= set(part)
    assert {"blocks.0.cross_attn.k_img", "blocks.1.ffn.2", "blocks.0.self_attn.o"} <= set(names)
    assert any(k.endswith("self_attn.sdpa") for k in part) and any(k.endswith("cross_attn.sdpa") for k in part)
    tokens = 2 * 2 * 2          # frames 2 x (4/2) x (4/2) patches
    assert part["blocks.0.self_attn.q"].count == tokens
    assert part["blocks.0.cross_attn.k"].count == 8
    # q/k/v share their input: identical statistics, measured once
    q, v = part["blocks.1.self_attn.q"], part["blocks.1.self_attn.v"]
    assert torch.equal(q.sum2, v.sum2) and q.amax == v.amax
    # hooks are gone and outputs are unchanged by them
    with torch.no_grad():
        plain = dit(**x)
    assert torch.equal(out, plain)
    assert all(not m._forward_pre_hooks for _, m in calib_layers(dit))


def test_softmax_amax_matches_the_probabilities():
    rng = np.random.default_rng(2)
    q, k = (torch.from_numpy(rng.standard_normal((1, 40, 2, 8)).astype(np.float32)) for _ in range(2))
    p = torch.softmax(q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2) / 8 ** 0.5, -1)
    assert softmax_amax(q, k) == pytest.approx(float(p.max()), rel=1e-6)


def test_calib_file_round_trip_and_layer_check(tmp_path):
    rng = np.random.default_rng(3)
    s = LayerStats.of(torch.from_numpy(rng.standard_normal((5, 16)).astype(np.float32)), sample_rows=5)
    path = str(tmp_path / "c.safetensors")
    tensors = calibfile.layer_tensors("blocks.0.ffn.0", s) + calibfile.layer_tensors("high_noise_model.blocks.0.ffn.0", s)
    calibfile.write_calib(path, tensors, {"variant": "x", "experts": ["high_noise_model"]})
    c = calibfile.read_calib(path)
    assert c.layers() == ["blocks.0.ffn.0"] and c.layers("high_noise_model") == ["blocks.0.ffn.0"]
    got = c.layer("blocks.0.ffn.0")
    assert float(got["input_amax"]) == np.float32(s.amax) and int(got["input_count"]) == 5
    assert got["input_sample"].shape == (5, 16)
    with pytest.raises(BadInputError, match="no statistics for blocks.1.ffn.0"):
        c.check_layers(["blocks.0.ffn.0", "blocks.1.ffn.0"])
    bad = str(tmp_path / "nan.safetensors")
    with pytest.raises(BadInputError, match="not finite"):
        calibfile.write_calib(bad, [("a.input_amax", np.array(np.nan, dtype=np.float32))], {})
    assert not (tmp_path / "nan.safetensors").exists()
    plain = synthetic.write_safetensors(str(tmp_path / "plain.safetensors"), {"x": np.zeros(2, np.float32)})
    with pytest.raises(BadInputError, match="not a wan-export calibration file"):
        calibfile.read_calib(plain)
    meta = json.loads(c._file.metadata[calibfile.META_KEY])
    assert meta["format"] == calibfile.FORMAT
