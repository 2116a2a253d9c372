"""Variant specs and detection: full-size key lists (no data) and tiny synthetic files."""

import pytest

from tests.shared_data import DIT_KEY_FILES, key_shapes
from wan_export.components import load_component
from wan_export.errors import BadInputError
from wan_export.synthetic import dit_state, tiny_dit_config, write_safetensors
from wan_export.variants import VARIANTS, dit_shapes, infer_dit_config, match_variant

# (tensors, parameters) from wan-architecture.md section 1
COUNTS = {"wan2.1-vace-1.3b": (1264, 2_153_972_032), "wan2.1-vace-14b": (1331, 17_337_592_896),
          "wan2.1-t2v-1.3b": (825, 1_418_996_800), "wan2.2-ti2v-5b": (825, 4_999_787_712),
          "wan2.1-flf2v-14b": (1304, 16_395_536_704), "wan2.2-i2v-a14b": (1095, 14_288_901_184)}


@pytest.mark.parametrize("variant", sorted(DIT_KEY_FILES))
def test_full_size_keys_equal_official_lists(variant):
    official = key_shapes(DIT_KEY_FILES[variant])
    assert list(dit_shapes(VARIANTS[variant].config).items()) == list(official.items())
    cfg = infer_dit_config(official)
    assert cfg == VARIANTS[variant].config


@pytest.mark.parametrize("variant", sorted(COUNTS))
def test_tensor_and_parameter_counts(variant):
    import math

    shapes = dit_shapes(VARIANTS[variant].config)
    assert (len(shapes), sum(math.prod(s) for s in shapes.values())) == COUNTS[variant]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tiny_files_detect_their_variant(tmp_path, variant):
    cfg = tiny_dit_config(variant)
    path = write_safetensors(str(tmp_path / "m.safetensors"), dit_state(cfg, dtype="BF16"))
    comp = load_component(path)
    assert comp.kind == "dit" and comp.layout == "stock"
    assert comp.config == cfg
    # an A14B T2V expert has exactly the 2.1 T2V-14B shapes; only a release folder tells them apart
    family = "wan2.1" if variant == "wan2.2-t2v-a14b" else VARIANTS[variant].family.lower()
    assert match_variant(cfg) is None and comp.variant.startswith(family)


def test_wrong_shape_names_the_key(tmp_path):
    cfg = tiny_dit_config("wan2.1-t2v-1.3b")
    state = dit_state(cfg)
    state["blocks.1.self_attn.q.weight"] = state["blocks.1.self_attn.q.weight"][:, :128].copy()
    path = write_safetensors(str(tmp_path / "m.safetensors"), state)
    with pytest.raises(BadInputError, match=r"wrong shape: blocks\.1\.self_attn\.q\.weight \[256, 128\]"):
        load_component(path)


def test_missing_and_unexpected_keys_listed(tmp_path):
    state = dit_state(tiny_dit_config("wan2.1-t2v-1.3b"))
    del state["blocks.0.ffn.2.bias"]
    state["blocks.0.extra.weight"] = state["blocks.0.norm3.weight"]
    path = write_safetensors(str(tmp_path / "m.safetensors"), state)
    with pytest.raises(BadInputError) as e:
        load_component(path)
    assert "1 missing: blocks.0.ffn.2.bias" in str(e.value) and "1 unexpected: blocks.0.extra.weight" in str(e.value)
