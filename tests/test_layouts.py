"""Reading foreign layouts into stock names: prefixes, diffusers names, fused QKV, fp8 scales."""
import ml_dtypes
import numpy as np
import pytest

from wan_export.components import load_component
from wan_export.errors import BadInputError
from wan_export.keymaps.dit_diffusers import DIT_DIFFUSERS
from wan_export.synthetic import dit_state, tiny_dit_config, write_safetensors

CFG = tiny_dit_config("wan2.1-i2v-14b")


@pytest.fixture(scope="module")
def state():
    return dit_state(CFG, dtype="F32")


def _same(comp, state):
    assert comp.config == CFG
    assert comp.table.names() == list(state) or set(comp.table.names()) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(comp.table.read(k), v)


@pytest.mark.parametrize("prefix", ["model.diffusion_model.", "net.", "diffusion_model."])
def test_prefixed(tmp_path, state, prefix):
    path = write_safetensors(str(tmp_path / "p.safetensors"), {prefix + k: v for k, v in state.items()})
    comp = load_component(path)
    _same(comp, state)
    assert any("stripped prefix" in n for n in comp.table.notes)


def test_diffusers_names(tmp_path, state):
    renamed = DIT_DIFFUSERS.rename(state, to_stock=False)
    path = write_safetensors(str(tmp_path / "d.safetensors"), {renamed[k]: v for k, v in state.items()})
    comp = load_component(path)
    assert comp.layout == "diffusers"
    _same(comp, state)


def test_fused_qkv(tmp_path, state):
    fused = {}
    for k, v in state.items():
        if ".self_attn.q." in k:
            parts = [state[k.replace(".q.", f".{x}.")] for x in "qkv"]
            fused[k.replace(".q.", ".qkv.")] = np.concatenate(parts)
        elif ".self_attn.k." not in k and ".self_attn.v." not in k:
            fused[k] = v
    path = write_safetensors(str(tmp_path / "f.safetensors"), fused)
    comp = load_component(path)
    assert "fused-qkv" in comp.layout
    _same(comp, state)


def test_comfyui_fp8_scaled_applies_scales(tmp_path, state):
    out, expect = {"scaled_fp8": np.zeros(0, ml_dtypes.float8_e4m3fn)}, dict(state)
    for k, v in state.items():
        if k.endswith("ffn.0.weight"):
            scale = np.float32(np.abs(v).max() / 448)
            q = (v / scale).astype(ml_dtypes.float8_e4m3fn)
            out[k], out[k[:-len("weight")] + "scale_weight"] = q, np.array(scale, np.float32)
            expect[k] = q.astype(np.float32) * scale
        else:
            out[k] = v
    path = write_safetensors(str(tmp_path / "s.safetensors"), out)
    comp = load_component(path)
    assert "fp8-scaled" in comp.layout and not comp.warnings
    _same(comp, expect)


def test_raw_fp8_without_scale_warns(tmp_path, state):
    out = {k: (v.astype(ml_dtypes.float8_e4m3fn) if k.endswith("ffn.2.weight") else v) for k, v in state.items()}
    comp = load_component(write_safetensors(str(tmp_path / "r.safetensors"), out))
    assert any("no scale" in w for w in comp.warnings)


def test_unknown_keys_name_the_file(tmp_path):
    path = write_safetensors(str(tmp_path / "x.safetensors"), {"foo.weight": np.zeros(3, np.float32)})
    with pytest.raises(BadInputError, match="not a recognised Wan component") as e:
        load_component(path)
    assert e.value.path == path
