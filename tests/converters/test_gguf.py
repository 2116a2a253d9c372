"""GGUF: policy table, sizes from shapes, every variant, read-back, single read, determinism,
fallbacks, imatrix, bad inputs and the validator (pass, tampered data fails with exit 1)."""
import hashlib
import json
import os
import re
from dataclasses import replace

import gguf
import numpy as np
import pytest

from wan_export.cli import cli
from wan_export.components import load_component
from wan_export.converters import gguf_pool
from wan_export.converters.gguf import convert_gguf, file_size, plan_file
from wan_export.converters.gguf_read import GGUFSource
from wan_export.errors import BadInputError, UnsupportedError
from wan_export.quantizers.gguf_policy import MIXES, GGUFPolicy, missing_quantizers, resolve
from wan_export.release import open_input
from wan_export.synthetic import dit_state, tiny_dit_config, write_safetensors
from wan_export.validators.gguf import TOLERANCE, validate_gguf
from wan_export.variants import VARIANTS, dit_shapes

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
README_HEADING = "### `wan-export gguf`"


def need(*mixes):
    """Skip (with the import error) when a mix's quantizer module has not landed yet."""
    missing = missing_quantizers(mixes)
    if missing:
        pytest.skip(f"quantizer not importable yet: {missing}")


def _reader(path):
    return gguf.GGUFReader(path)


def _kv(r, key):
    f = r.get_field(key)
    return None if f is None else f.contents()


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ---------------------------------------------------------------- tables

def test_table_cli_and_readme_agree(runner):
    assert all(TOLERANCE.get(m) for m in MIXES), "every mix needs a stated output tolerance"
    help_text = runner.invoke(cli, ["gguf", "-h"], terminal_width=400).output
    listed = re.search(r"one file each: (.*?)\.\s", " ".join(help_text.split())).group(1).split(", ")
    assert listed == list(MIXES)
    text = open(README, encoding="utf-8").read()
    if README_HEADING not in text:
        pytest.skip(f"README has no {README_HEADING!r} section yet")
    section = text.split(README_HEADING, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    assert [m for m in MIXES if f"`{m}`" not in section] == []


def test_policy_config_validates_and_serialises():
    p = GGUFPolicy("Q4_K_M", overrides=((r"ffn\.0", "Q8_0"),))
    d = p.to_dict()
    assert d["type"] == "wan_export.gguf_policy" and d["version"] == 1 and d["params"]["mix"] == "Q4_K_M"
    assert GGUFPolicy.from_dict(d) == p
    with pytest.raises(UnsupportedError, match="Q7_K"):
        GGUFPolicy("Q7_K")
    with pytest.raises(BadInputError, match="regular expression"):
        GGUFPolicy("Q8_0", overrides=(("(", "Q8_0"),))
    with pytest.raises(UnsupportedError, match="raw parameters"):
        resolve(GGUFPolicy("Q8_0", overrides=(("modulation", "Q8_0"),)), [("blocks.0.modulation", (1, 6, 256))])


def test_policy_matches_published_layout():
    shapes = dit_shapes(VARIANTS["wan2.1-i2v-14b"].config)
    by = {d.name: d for d in resolve(GGUFPolicy("Q4_K_S"), list(shapes.items()))}
    quantized = {n for n, d in by.items() if d.ggml.startswith("Q")}
    assert quantized == {n for n, s in shapes.items() if re.match(
        r"blocks\.\d+\.(self_attn|cross_attn)\.(q|k|v|o|k_img|v_img)\.weight$|blocks\.\d+\.ffn\.[02]\.weight$", n)}
    assert by["blocks.0.modulation"].ggml == "F32" and by["img_emb.proj.1.weight"].ggml == "F16"
    assert by["patch_embedding.weight"].ggml == "F32" and by["head.head.weight"].ggml == "F16"
    assert by["blocks.1.self_attn.v.weight"].ggml == "Q5_K" and by["blocks.2.self_attn.v.weight"].ggml == "Q4_K"
    assert by["blocks.5.ffn.2.weight"].ggml == "Q5_K" and by["blocks.0.cross_attn.v_img.weight"].ggml == "Q4_K"


# Formats-gguf.md §5: model column (GB, excluded F32) = city96's published 14B files;
# TI2V-5B (GiB, excluded F16) = the published unsloth mirror.
SIZES_14B_F32 = {"Q2_K": 5.774, "Q3_K_S": 6.988, "Q3_K_M": 7.649, "Q4_0": 9.031, "Q4_K_S": 9.221, "Q4_1": 9.732,
                 "Q4_K_M": 10.125, "Q5_K_S": 10.610, "Q5_0": 10.787, "Q5_K_M": 11.265, "Q5_1": 11.488,
                 "Q6_K": 12.476, "Q8_0": 15.879}
CITY96_PUBLISHED = {"Q3_K_S": 6.99, "Q3_K_M": 7.65, "Q4_0": 9.03, "Q4_K_S": 9.22, "Q4_1": 9.73, "Q4_K_M": 10.1,
                    "Q5_0": 10.8, "Q5_K_M": 11.3, "Q5_1": 11.5, "Q6_K": 12.5, "Q8_0": 15.9}
TI2V_PUBLISHED_GIB = {"Q2_K": 1.73, "Q3_K_S": 2.14, "Q3_K_M": 2.37, "Q4_0": 2.82, "Q4_K_S": 2.90, "Q4_1": 3.03,
                      "Q4_K_M": 3.20, "Q5_K_S": 3.32, "Q5_0": 3.39, "Q5_K_M": 3.55, "Q5_1": 3.60, "Q6_K": 3.92,
                      "Q8_0": 5.03}


@pytest.mark.parametrize("mix", list(SIZES_14B_F32))
def test_sizes_14b_from_shapes(mix):
    c14 = VARIANTS["wan2.1-t2v-14b"].config
    size = file_size(c14, mix, float_type="F32") / 1e9
    assert abs(size / SIZES_14B_F32[mix] - 1) < 1e-3
    if mix in CITY96_PUBLISHED:      # published to 3 significant digits: compare at that precision
        assert abs(size - CITY96_PUBLISHED[mix]) <= 0.05 + 1e-3 * size
    ti2v = file_size(VARIANTS["wan2.2-ti2v-5b"].config, mix) / 2**30
    assert abs(ti2v - TI2V_PUBLISHED_GIB[mix]) <= 0.01


_HIPREC_F16 = ((r"(\.bias|norm\w*\.weight|modulation)$", "F16"),)      # QuantStack: fp16 source


@pytest.mark.parametrize("variant,vace,mix,overrides,published", [
    ("wan2.2-t2v-a14b", False, "Q3_K_S", _HIPREC_F16, 6_513_373_696),
    ("wan2.2-i2v-a14b", False, "Q5_K_S", _HIPREC_F16, 10_137_514_496),
    ("wan2.2-t2v-a14b", True, "Q4_K_S", (), 10_552_539_040),
    ("wan2.2-t2v-a14b", True, "Q3_K_M", (), 8_636_061_600),
])
def test_sizes_byte_exact_published(variant, vace, mix, overrides, published):
    cfg = VARIANTS[variant].config
    if vace:     # Wan2.2 VACE-Fun-A14B: the 14B T2V expert plus 8 VACE blocks
        cfg = replace(cfg, model_type="vace", vace_layers=tuple(range(0, 40, 5)))
    _, layout = plan_file(dit_shapes(cfg), GGUFPolicy(mix, overrides=overrides), "x", "high_noise")
    assert abs(layout.file_size / published - 1) < 1e-3
    assert abs(layout.file_size - published) < 4096      # header/KV differences only


# ---------------------------------------------------------------- converting

def _check_layout(path, cfg, mix):
    r = _reader(path)
    assert _kv(r, "general.architecture") == "wan"
    assert _kv(r, "general.quantization_version") == 2
    assert _kv(r, "general.file_type") == MIXES[mix].file_type
    assert GGUFPolicy.from_dict(json.loads(_kv(r, "wan_export.quantization"))).mix == mix
    tensors = {t.name: t for t in r.tensors}
    shapes = dit_shapes(cfg)
    assert list(tensors) == list(shapes)                       # stock names and order, no prefix
    for name, shape in shapes.items():
        t = tensors[name]
        if len(shape) == 5:                                    # folded Conv3d + orig_shape
            assert list(t.shape) == [shape[4], shape[3], shape[2], shape[0] * shape[1]]
            assert _kv(r, f"comfy.gguf.orig_shape.{name}") == list(shape)
            assert r.get_field(f"comfy.gguf.orig_shape.{name}").types == [gguf.GGUFValueType.ARRAY,
                                                                            gguf.GGUFValueType.INT32]
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
        else:
            assert list(t.shape) == list(reversed(shape))     # modulation keeps n_dims 3
        if len(shape) == 1 or name.endswith("modulation"):
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
    assert max(len(t.shape) for t in r.tensors) <= 4
    return r


@pytest.mark.parametrize("variant,mix", [("wan2.1-t2v-1.3b", "Q4_K_M"), ("wan2.1-i2v-14b", "Q8_0"),
                                         ("wan2.1-flf2v-14b", "Q5_0"), ("wan2.1-vace-1.3b", "Q3_K_M"),
                                         ("wan2.2-ti2v-5b", "IQ4_XS")])
def test_every_variant_converts(tmp_path, tiny_dit_file, variant, mix):
    need(mix)
    src = tiny_dit_file(variant)
    result = convert_gguf(src, str(tmp_path), types=mix, jobs=1)
    (out,) = result["outputs"]
    assert os.path.basename(out["path"]).endswith(f"-custom-256d2l-{mix}.gguf")      # never a release name
    assert os.path.getsize(out["path"]) == out["bytes"]
    _check_layout(out["path"], tiny_dit_config(variant), mix)
    assert load_component(out["path"]).config == tiny_dit_config(variant)


def test_a14b_release_gives_two_files(tmp_path, tiny_release):
    need("Q8_0")
    release = tiny_release("wan2.2-t2v-a14b")
    result = convert_gguf(release, str(tmp_path), types="Q8_0")
    names = sorted(os.path.basename(o["path"]) for o in result["outputs"])
    assert names == ["wan2.2-t2v-custom-256d2l-high_noise-Q8_0.gguf", "wan2.2-t2v-custom-256d2l-low_noise-Q8_0.gguf"]
    assert sorted(os.listdir(tmp_path)) == names
    for o in result["outputs"]:
        r = _check_layout(o["path"], tiny_dit_config("wan2.2-t2v-a14b"), "Q8_0")
        assert _kv(r, "wan_export.expert") in o["path"]
    assert any("skipped" in n for n in result["notes"])
    low = next(o["path"] for o in result["outputs"] if "low_noise" in o["path"])
    report = validate_gguf(low, release)          # picks the low-noise expert of the release
    assert report.passed and report.info["expert"] == "low_noise"


def test_release_names_follow_community_convention():
    from wan_export.converters.gguf import default_name

    t14 = VARIANTS["wan2.1-t2v-14b"].config
    assert default_name(t14, None, "Q4_K_M") == "wan2.1-t2v-14b-Q4_K_M.gguf"
    assert default_name(t14, "high_noise", "Q4_K_M") == "wan2.2_t2v_high_noise_14B_Q4_K_M.gguf"
    assert default_name(VARIANTS["wan2.2-i2v-a14b"].config, "low_noise", "Q8_0") == "wan2.2_i2v_low_noise_14B_Q8_0.gguf"
    assert default_name(VARIANTS["wan2.2-ti2v-5b"].config, None, "Q5_K_M") == "wan2.2-ti2v-5b-Q5_K_M.gguf"


@pytest.mark.parametrize("dtype,mix", [("F32", "F32"), ("F16", "F16"), ("BF16", "BF16")])
def test_source_round_trips_floats_exactly(tmp_path, dtype, mix):
    cfg = tiny_dit_config("wan2.1-flf2v-14b")
    state = dit_state(cfg, dtype=dtype)
    src = write_safetensors(str(tmp_path / "in.safetensors"), state)
    out = convert_gguf(src, str(tmp_path / "o.gguf"), types=mix, float_type=mix)["outputs"][0]["path"]
    gs = GGUFSource(out)
    assert {i.name: i.shape for i in gs.infos()} == {k: v.shape for k, v in state.items()}
    for k, v in state.items():
        np.testing.assert_array_equal(gs.read(k), v.astype(np.float32))


def _city96_file(path, state, prefix=""):
    """A file as city96's convert.py + fix_5d_tensors.py leave it: native 5-D F32, 3 KVs."""
    w = gguf.GGUFWriter(path, "wan")
    w.add_quantization_version(2)
    w.add_file_type(1)
    for k, v in state.items():
        w.add_tensor(prefix + k, v.astype(np.float32 if v.ndim != 2 else np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_reads_city96_files(tmp_path, prefix):
    cfg = tiny_dit_config("wan2.1-vace-1.3b")
    state = dit_state(cfg, dtype="F16")
    path = _city96_file(str(tmp_path / "c.gguf"), state, prefix)
    comp = load_component(path)
    assert comp.config == cfg
    for k in ("patch_embedding.weight", "vace_patch_embedding.weight", "blocks.0.modulation"):
        np.testing.assert_array_equal(comp.table.read(k), state[k].astype(np.float32))


def test_several_types_share_one_read(tmp_path, tiny_dit_file):
    need("Q8_0", "Q4_0")
    rel = open_input(tiny_dit_file("wan2.1-i2v-14b"))
    counts: dict = {}
    for comp in rel.dits.values():
        for name, (info, read) in list(comp.table.entries.items()):
            def counted(read=read, name=name):
                counts[name] = counts.get(name, 0) + 1
                return read()
            comp.table.entries[name] = (info, counted)
    result = convert_gguf(rel, str(tmp_path), types="Q8_0,Q4_0,F16")
    assert len(result["outputs"]) == 3
    assert set(counts.values()) == {1} and len(counts) == len(dit_shapes(tiny_dit_config("wan2.1-i2v-14b")))


def test_bytes_do_not_depend_on_workers(tmp_path, tiny_dit_file, monkeypatch):
    need("Q4_K_M", "Q5_1")
    src = tiny_dit_file("wan2.1-t2v-1.3b")
    a = convert_gguf(src, str(tmp_path / "a"), types="Q4_K_M,Q5_1", jobs=1)
    monkeypatch.setattr(gguf_pool, "CHUNK_ELEMENTS", 4096)         # many row chunks on 2 workers
    b = convert_gguf(src, str(tmp_path / "b"), types="Q4_K_M,Q5_1", jobs=2)
    for x, y in zip(a["outputs"], b["outputs"]):
        assert _sha(x["path"]) == _sha(y["path"])


def test_row_length_fallback_is_visible(tmp_path, runner):
    need("Q4_K_M")
    cfg = replace(tiny_dit_config("wan2.1-t2v-1.3b"), dim=384, num_heads=3, ffn_dim=768)
    src = write_safetensors(str(tmp_path / "d384.safetensors"), dit_state(cfg, dtype="BF16"))
    res = runner.invoke(cli, ["gguf", src, "-t", "Q4_K_M", "-o", str(tmp_path / "f.gguf")])
    assert res.exit_code == 0, res.output
    assert "row-fallback:" in res.output and "is not a multiple of 256 (Q4_K): F16" in res.output
    r = _reader(str(tmp_path / "f.gguf"))
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blocks.0.self_attn.q.weight"] == "F16" and types["blocks.0.ffn.2.weight"] == "Q6_K"
    assert "blocks.0.self_attn.q.weight" in _kv(r, "wan_export.fallbacks")
    res = runner.invoke(cli, ["gguf", src, "-t", "Q4_K_M", "-o", str(tmp_path / "f.gguf"), "--overwrite", "--json"])
    (out,) = json.loads(res.output)["outputs"]
    assert {f["tensor"] for f in out["fallbacks"]} >= {"blocks.0.self_attn.q.weight", "blocks.1.ffn.0.weight"}
    assert {"rule": "row-fallback", "type": "F16"}.items() <= next(
        r for r in out["rules"] if r["rule"] == "row-fallback").items()


# ---------------------------------------------------------------- imatrix

def _imatrix(cfg, seed=3):
    rng = np.random.default_rng(seed)
    return {n: (rng.random(s[-1]) * 2).astype(np.float32) for n, s in dit_shapes(cfg).items()
            if n.startswith("blocks.") and n.endswith(".weight") and len(s) == 2}


def test_imatrix_formats_agree_and_change_k_quants(tmp_path, tiny_dit_file):
    need("Q4_K_M")
    cfg = tiny_dit_config("wan2.1-t2v-1.3b")
    src, im = tiny_dit_file("wan2.1-t2v-1.3b"), _imatrix(cfg)
    st = write_safetensors(str(tmp_path / "im.safetensors"), im)
    w = gguf.GGUFWriter(str(tmp_path / "im.gguf"), "imatrix")
    for n, v in im.items():          # llama.cpp layout: sums = importance * counts (8: exact in float32)
        w.add_tensor(f"model.diffusion_model.{n}.in_sum2", (v * 8)[None, :])
        w.add_tensor(f"model.diffusion_model.{n}.counts", np.array([[8.0]], np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    plain = convert_gguf(src, str(tmp_path / "p.gguf"), types="Q4_K_M")["outputs"][0]["path"]
    a = convert_gguf(src, str(tmp_path / "a.gguf"), types="Q4_K_M", imatrix=st)
    b = convert_gguf(src, str(tmp_path / "b.gguf"), types="Q4_K_M", imatrix=str(tmp_path / "im.gguf"))
    ra, rb, rp = (_reader(p) for p in (a["outputs"][0]["path"], b["outputs"][0]["path"], plain))
    for ta, tb, tp in zip(ra.tensors, rb.tensors, rp.tensors):
        np.testing.assert_array_equal(ta.data, tb.data)
    assert any(not np.array_equal(ta.data, tp.data) for ta, tp in zip(ra.tensors, rp.tensors))
    assert "imatrix: " in a["notes"][0]


def test_imatrix_that_does_not_fit_is_refused(tmp_path, tiny_dit_file, runner):
    cfg = tiny_dit_config("wan2.1-t2v-1.3b")
    bad = {n: v[:-1] for n, v in _imatrix(cfg).items()}
    st = write_safetensors(str(tmp_path / "bad.safetensors"), bad)
    out = tmp_path / "out"
    res = runner.invoke(cli, ["gguf", tiny_dit_file("wan2.1-t2v-1.3b"), "-t", "Q8_0", "--imatrix", st, "-o", str(out)])
    assert res.exit_code == 2
    assert res.output.startswith(f"Error: {st}: imatrix does not fit this model") and res.output.count("\n") == 1
    assert not out.exists() or os.listdir(out) == []


# ---------------------------------------------------------------- bad input

def test_bad_inputs_are_one_line_errors(tmp_path, tiny_dit_file, runner):
    src, out = tiny_dit_file("wan2.1-t2v-1.3b"), tmp_path / "out"
    cases = [
        (["-t", "Q7_K"], "Error: unsupported GGUF type 'Q7_K'"),
        (["-t", "Q8_0,F16", "-o", str(tmp_path / "one.gguf")], "this writes 2 files"),
        (["-t", "Q8_0", "--tensor-type", "modulation=Q8_0"], "Error: --tensor-type would give"),
        (["-t", "Q8_0", "--tensor-type", "noequals"], "expected REGEX=TYPE"),
    ]
    for args, message in cases:
        argv = ["gguf", src] + args + (["-o", str(out)] if "-o" not in args else [])
        res = runner.invoke(cli, argv)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output and res.output.count("\n") == 1, res.output
    assert not out.exists() and not (tmp_path / "one.gguf").exists()


def test_nan_source_leaves_nothing_behind(tmp_path, runner):
    state = dit_state(tiny_dit_config("wan2.1-t2v-1.3b"), dtype="F32")
    state["blocks.1.ffn.0.weight"][3, 5] = np.nan            # late tensor: files are half written by then
    src = write_safetensors(str(tmp_path / "nan.safetensors"), state)
    out = tmp_path / "out"
    res = runner.invoke(cli, ["gguf", src, "-t", "Q8_0,F16", "-o", str(out)])
    assert res.exit_code == 2 and "blocks.1.ffn.0.weight has 1 NaN/Inf values" in res.output
    assert not out.exists() or os.listdir(out) == []


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_gguf_input(tmp_path, tiny_dit_file, runner, damage):
    good = convert_gguf(tiny_dit_file("wan2.1-t2v-1.3b"), str(tmp_path / "g.gguf"), types="F16")
    data = open(good["outputs"][0]["path"], "rb").read()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(7, 71)) if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(BadInputError) as e:
        GGUFSource(str(bad))
    assert e.value.path == str(bad)
    res = runner.invoke(cli, ["gguf", str(bad), "-t", "Q8_0", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and res.output.startswith(f"Error: {bad}: ") and res.output.count("\n") == 1
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- validator

@pytest.fixture(scope="module")
def i2v_outputs(tmp_path_factory):
    from wan_export import synthetic

    folder = tmp_path_factory.mktemp("gguf_val")
    src = synthetic.write_safetensors(str(folder / "i2v.safetensors"),
                                      dit_state(tiny_dit_config("wan2.1-i2v-14b"), dtype="BF16"))
    mixes = [m for m in ("Q8_0", "Q4_K_M") if not missing_quantizers([m])]
    return src, {o["type"]: o["path"] for o in convert_gguf(src, str(folder), types=mixes)["outputs"]}


@pytest.mark.parametrize("mix", ["Q8_0", "Q4_K_M"])
def test_validator_passes_good_files(i2v_outputs, runner, mix):
    src, outs = i2v_outputs
    if mix not in outs:
        need(mix)
    report = validate_gguf(outs[mix], src)
    assert report.passed, report.to_markdown()
    assert report.info["mix"] == mix and {"loader checks", "error by type", "per-tensor error"} <= set(report.tables)
    assert runner.invoke(cli, ["validate", outs[mix], "--against", src]).exit_code == 0


def test_validator_fails_tampered_data(i2v_outputs, tmp_path, runner):
    src, outs = i2v_outputs
    path = next(iter(outs.values()))
    t = next(t for t in _reader(path).tensors if t.name == "blocks.0.ffn.0.weight")
    data = bytearray(open(path, "rb").read())
    rng = np.random.default_rng(0)
    data[t.data_offset: t.data_offset + t.n_bytes] = rng.integers(0, 255, t.n_bytes, dtype=np.uint8).tobytes()
    bad = tmp_path / os.path.basename(path)
    bad.write_bytes(bytes(data))
    report = validate_gguf(str(bad), src)
    assert not report.passed
    res = runner.invoke(cli, ["validate", str(bad), "--against", src])
    assert res.exit_code == 1 and "parity failed" in res.output


def test_validator_flags_loader_rule_breaks(tmp_path, tiny_dit_file):
    cfg = tiny_dit_config("wan2.1-t2v-1.3b")
    state = dit_state(cfg, dtype="F16")
    path = _city96_file(str(tmp_path / "c.gguf"), state)          # native 5-D, no array KV: allowed
    report = validate_gguf(path, tiny_dit_file("wan2.1-t2v-1.3b", dtype="F16"))
    rows = {r["check"]: r for r in report.tables["loader checks"]}
    assert rows["n_dims <= 4, or > 4-D without array KVs"]["result"] == "ok"
    assert "Sep 2025" in rows["n_dims <= 4, or > 4-D without array KVs"]["detail"]
    assert report.passed, report.to_markdown()
