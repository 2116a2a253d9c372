"""`wan-export comfyui`: names, layout, refusals, determinism, atomic failure, streaming memory."""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from tests.converters.release_factory import SPIECE_BYTES, layout_release, write_dit
from wan_export.cli import cli
from wan_export.converters.comfyui import COMPONENTS, convert, dit_stem
from wan_export.converters.stock import hub_config
from wan_export.dtypes import ST_TO_NP, cast
from wan_export.errors import BadInputError, UnsupportedError
from wan_export.keymaps.umt5_hf import UMT5_HF
from wan_export.model.config import DiTConfig
from wan_export.safetensors_io import SafetensorsFile, SafetensorsWriter, TensorInfo
from wan_export.synthetic import dit_state, tiny_dit_config, write_safetensors
from wan_export.variants import VARIANTS, dit_shapes

T2V = "wan2.1-t2v-1.3b"


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def leftovers(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith(".") or n.endswith(".partial"))


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


# ---------------------------------------------------------------- names

RELEASED_STEMS = {
    ("wan2.1-t2v-1.3b", None): "wan2.1_t2v_1.3B", ("wan2.1-t2v-14b", None): "wan2.1_t2v_14B",
    ("wan2.1-i2v-14b", None): "wan2.1_i2v_14B", ("wan2.1-flf2v-14b", None): "wan2.1_flf2v_720p_14B",
    ("wan2.1-vace-1.3b", None): "wan2.1_vace_1.3B", ("wan2.1-vace-14b", None): "wan2.1_vace_14B",
    ("wan2.2-t2v-a14b", "high_noise"): "wan2.2_t2v_high_noise_14B",
    ("wan2.2-t2v-a14b", "low_noise"): "wan2.2_t2v_low_noise_14B",
    ("wan2.2-i2v-a14b", "high_noise"): "wan2.2_i2v_high_noise_14B",
    ("wan2.2-i2v-a14b", None): "wan2.2_i2v_14B",
    ("wan2.2-ti2v-5b", None): "wan2.2_ti2v_5B",
}


@pytest.mark.parametrize("variant, expert", sorted(RELEASED_STEMS, key=str))
def test_released_configs_get_comfy_org_names(variant, expert):
    comp = SimpleNamespace(config=VARIANTS[variant].config, expert=expert)
    assert dit_stem(comp) == RELEASED_STEMS[variant, expert]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_custom_dims_never_pretend_to_be_the_release(variant):
    expert = "high_noise" if VARIANTS[variant].experts else None
    stem = dit_stem(SimpleNamespace(config=tiny_dit_config(variant), expert=expert))
    assert stem.endswith("custom_d256_l2") and not any(s in stem for s in ("1.3B", "14B", "5B"))
    assert stem.startswith(VARIANTS[variant].family.lower())


def test_cli_component_choices_match_the_table():
    params = {p.name: p for p in cli.commands["comfyui"].params}
    assert list(params["component"].type.choices) == list(COMPONENTS)
    assert list(params["dtype"].type.choices) == ["bf16", "fp16", "fp32"]


# ---------------------------------------------------------------- what is written


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rel") / "Wan-tiny"
    expected = layout_release(str(folder), T2V, dtype="BF16")
    return str(folder), expected


def test_release_gives_three_comfyui_files(tmp_path, release):
    src, expected = release
    result = convert(src, str(tmp_path), dtype="fp16")
    names = sorted(os.path.basename(r["path"]) for r in result["files"])
    assert names == ["umt5_custom_d4096_l2_fp16.safetensors", "wan2.1_t2v_custom_d256_l2_fp16.safetensors",
                     "wan_2.1_vae_custom_d16.safetensors"]
    dit = SafetensorsFile(str(tmp_path / names[1]))
    assert [i.name for i in dit.infos()] == list(dit_shapes(tiny_dit_config(T2V)))    # bare, official order
    assert dit.infos()[0].shape == (256, 16, 1, 2, 2)                                  # 5-D patch embedding
    assert {i.dtype for i in dit.infos()} == {"F16"}
    for k, v in expected["dit"].items():
        np.testing.assert_array_equal(dit.read(k), cast(v, "F16"))
    assert dit.metadata["wan_export.dtype"] == "fp16" and dit.metadata["wan_export.component"] == "dit"
    assert dit.metadata["wan_export.pairs_with_vae"] == "wan_2.1_vae"
    assert not any("/" in v for v in dit.metadata.values())           # no paths, no time stamps

    vae = SafetensorsFile(str(tmp_path / names[2]))
    assert {i.name for i in vae.infos()} == set(expected["vae"])

    te = SafetensorsFile(str(tmp_path / names[0]))
    hf = UMT5_HF.rename(expected["t5"], to_stock=False)
    assert {i.name for i in te.infos()} == set(hf.values()) | {"spiece_model"}
    assert te.read("spiece_model").dtype == np.uint8 and te.read("spiece_model").tobytes() == SPIECE_BYTES
    for k, v in expected["t5"].items():
        np.testing.assert_array_equal(te.read(hf[k]), cast(v, "F16"))
    assert any("detect_te_model" in n for n in result["notes"])      # a tiny UMT5 is not loadable there


def test_same_input_same_bytes_whatever_the_input_layout(tmp_path):
    state = dit_state(tiny_dit_config("wan2.1-i2v-14b"), dtype="BF16")
    shas = set()
    for layout in ("stock", "diffusers", "fused-qkv", "comfyui-prefixed", "stock"):
        src = tmp_path / f"{layout}.safetensors"
        write_dit(str(src), state, layout)
        out = tmp_path / f"out-{layout}.safetensors"
        convert(str(src), str(out), dtype="bf16", overwrite=True)
        shas.add(sha(out))
    assert len(shas) == 1


def test_a14b_gives_one_file_per_expert(tmp_path):
    src = tmp_path / "a14b"
    expected = layout_release(str(src), "wan2.2-i2v-a14b", layout="diffusers", vae=False, t5=False, tokenizer=False)
    result = convert(str(src), str(tmp_path / "out"), dtype="bf16")
    names = [os.path.basename(r["path"]) for r in result["files"]]
    assert names == ["wan2.2_i2v_high_noise_custom_d256_l2_bf16.safetensors",
                     "wan2.2_i2v_low_noise_custom_d256_l2_bf16.safetensors"]
    for name, slot in zip(names, ("dit.high_noise", "dit.low_noise")):
        f = SafetensorsFile(str(tmp_path / "out" / name))
        assert f.metadata["wan_export.expert"] == slot.split(".")[1]
        np.testing.assert_array_equal(f.read("head.modulation"), cast(expected[slot]["head.modulation"], "BF16"))


def test_checkpoint_uses_comfyui_prefixes(tmp_path, release):
    src, expected = release
    out = tmp_path / "aio.safetensors"
    convert(src, str(out), checkpoint=True)
    keys = {i.name for i in SafetensorsFile(str(out)).infos()}
    hf = UMT5_HF.rename(expected["t5"], to_stock=False)
    assert keys == ({"model.diffusion_model." + k for k in expected["dit"]} | {"vae." + k for k in expected["vae"]}
                    | {"text_encoders.umt5xxl.transformer." + v for v in hf.values()}
                    | {"text_encoders.spiece_model"})


def test_checkpoint_refuses_two_experts(tmp_path):
    src = tmp_path / "a14b"
    layout_release(str(src), "wan2.2-t2v-a14b", t5=False, tokenizer=False)
    with pytest.raises(UnsupportedError, match="holds one diffusion model"):
        convert(str(src), str(tmp_path / "x.safetensors"), checkpoint=True)


def test_one_file_wants_a_file_path_several_want_a_folder(tmp_path, release):
    src, _ = release
    r = run("comfyui", src, "-o", tmp_path / "one.safetensors")
    assert r.exit_code == 2 and "3 files result" in r.output and "-o must name a folder" in r.output
    assert os.listdir(tmp_path) == []
    r = run("comfyui", src, "--component", "vae", "-o", tmp_path / "vae.safetensors")
    assert r.exit_code == 0 and os.listdir(tmp_path) == ["vae.safetensors"]


# ---------------------------------------------------------------- refusals


def test_text_dim_other_than_4096_is_refused(tmp_path):
    cfg = replace(tiny_dit_config(T2V), text_dim=768)
    src = write_safetensors(str(tmp_path / "t768.safetensors"), dit_state(cfg))
    r = run("comfyui", src, "-o", tmp_path / "out.safetensors")
    assert r.exit_code == 2
    assert r.output.startswith(f"Error: {src}: not loadable by ComfyUI: text_dim is 768: ComfyUI hard-codes")
    assert not (tmp_path / "out.safetensors").exists()


def test_head_dim_other_than_128_gets_a_metadata_override(tmp_path):
    cfg = replace(tiny_dit_config(T2V), num_heads=4)                   # head_dim 64
    folder = tmp_path / "h64"
    folder.mkdir()
    write_safetensors(str(folder / "diffusion_pytorch_model.safetensors"), dit_state(cfg))
    (folder / "config.json").write_text(json.dumps(hub_config(cfg)))
    result = convert(str(folder), str(tmp_path / "out.safetensors"))
    meta = SafetensorsFile(str(tmp_path / "out.safetensors")).metadata
    assert json.loads(meta["config"]) == {"transformer": {"num_heads": 4}}
    assert any("num_heads = dim // 128 = 2" in n for n in result["notes"])


def test_text_encoder_without_tokenizer_is_refused(tmp_path):
    src = tmp_path / "rel"
    layout_release(str(src), T2V, tokenizer=False)
    r = run("comfyui", src, "--component", "text-encoder", "-o", tmp_path / "te.safetensors")
    assert r.exit_code == 2
    assert r.output.startswith(f"Error: {src / 'models_t5_umt5-xxl-enc-bf16.pth'}: no UMT5 tokenizer")
    assert "spiece_model" in r.output and len(r.output.strip().splitlines()) == 1


def test_missing_component_is_a_clear_error(tmp_path):
    src = write_safetensors(str(tmp_path / "dit.safetensors"), dit_state(tiny_dit_config(T2V)))
    with pytest.raises(BadInputError, match="no vae component to write for ComfyUI"):
        convert(src, str(tmp_path), component="vae")


# ---------------------------------------------------------------- atomic, NaN, overwrite


def _nan_state(cfg):
    state = dit_state(cfg)
    late = list(state)[-5]
    state[late] = state[late].copy()
    state[late].reshape(-1)[[0, 7, 9]] = [np.nan, np.inf, -np.inf]
    return state, late


def test_nan_late_in_the_file_exit_2_one_line_nothing_left(tmp_path):
    state, late = _nan_state(tiny_dit_config(T2V))
    src = write_safetensors(str(tmp_path / "src.safetensors"), state)
    out = tmp_path / "out"
    out.mkdir()
    r = run("comfyui", src, "-o", out / "x.safetensors")
    assert r.exit_code == 2
    assert r.output == f"Error: {src}: tensor {late} has 3 NaN/Inf values\n"
    assert os.listdir(out) == []


def test_failure_in_a_later_file_leaves_no_file_of_the_run(tmp_path, release, monkeypatch):
    src, _ = release
    real = SafetensorsFile.read

    def crash(self, name):                  # a reader failing mid-way (disk error, bug ...)
        if name.startswith("decoder."):
            raise RuntimeError("boom")
        return real(self, name)

    from wan_export import sources

    real_pth = sources.PthSource.read
    monkeypatch.setattr(sources.PthSource, "read",
                        lambda self, n: crash(self, n) if n.startswith("decoder.") else real_pth(self, n))
    monkeypatch.setattr(SafetensorsFile, "read", crash)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError, match="boom"):
        convert(src, str(out))
    assert os.listdir(out) == []                      # the DiT and T5 written before the VAE are gone too


def test_overwrite(tmp_path):
    src = write_safetensors(str(tmp_path / "src.safetensors"), dit_state(tiny_dit_config(T2V)))
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"old")
    r = run("comfyui", src, "-o", out)
    assert r.exit_code == 2 and r.output == f"Error: {out}: output exists (use --overwrite)\n"
    assert out.read_bytes() == b"old"
    r = run("comfyui", src, "-o", out, "--overwrite")
    assert r.exit_code == 0 and out.stat().st_size > 1000
    assert leftovers(tmp_path) == []


def test_json_lists_paths_sizes_and_sha256(tmp_path):
    src = write_safetensors(str(tmp_path / "src.safetensors"), dit_state(tiny_dit_config(T2V)))
    r = run("comfyui", src, "-o", tmp_path / "o.safetensors", "--json")
    assert r.exit_code == 0
    row = json.loads(r.output)["files"][0]
    assert row["path"] == str(tmp_path / "o.safetensors") and row["component"] == "dit"
    assert row["bytes"] == os.path.getsize(row["path"]) and row["sha256"] == sha(row["path"])


# ---------------------------------------------------------------- streaming: no torch, bounded memory

# Peak RSS of the conversion alone: VmHWM after resetting it (clear_refs 5) once imports are done.
# (ru_maxrss would not do: Linux carries it over from the forking parent, here pytest, across exec.)
SCRIPT = """
import sys
import ml_dtypes, numpy as np
from wan_export.converters.comfyui import convert
from wan_export.dtypes import cast
cast(np.zeros(2, ml_dtypes.bfloat16), "F16")    # loads the optional numba cast: a fixed cost, not per tensor
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
base = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
convert(sys.argv[1], sys.argv[2], dtype=sys.argv[3] if sys.argv[3] != "-" else None)
print(status("VmHWM:") - base, "torch" in sys.modules)
"""
MEDIUM = DiTConfig("t2v", dim=512, ffn_dim=2048, num_heads=4, num_layers=24)


def write_streamed(path: str, cfg: DiTConfig, dtype: str = "BF16") -> int:
    """A checkpoint of any size, streamed from one random block (largest tensor returned)."""
    shapes = dit_shapes(cfg)
    biggest = max(math.prod(s) for s in shapes.values())
    block = (np.random.default_rng(0).standard_normal(biggest, dtype=np.float32) * 0.02).astype(ST_TO_NP[dtype])
    infos = [TensorInfo(k, s, dtype) for k, s in shapes.items()]
    with SafetensorsWriter(path, infos, {"format": "pt"}) as w:
        for i in infos:
            w.write(i.name, block[: i.numel].reshape(i.shape))
    return biggest * ST_TO_NP[dtype].itemsize


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc only")


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("medium") / "medium.safetensors")
    return path, write_streamed(path, MEDIUM)


@needs_proc
@pytest.mark.parametrize("dtype", ["-", "fp16", "fp32"])
def test_peak_memory_follows_the_largest_tensor_not_the_file(tmp_path, medium, dtype):
    src, largest = medium
    size = os.path.getsize(src)
    out = subprocess.run([sys.executable, "-c", SCRIPT, src, str(tmp_path / "o.safetensors"), dtype],
                         capture_output=True, text=True, check=True).stdout.split()
    grew, torch_loaded = int(out[0]), out[1] == "True"
    # rename: a view of the mapped tensor (+ NaN-check temporaries); fp32: + the widened copy
    assert grew < 12 * largest + (16 << 20) < size / 2, (grew, largest, size)
    assert not torch_loaded                              # a rename/cast never imports torch


SABOTAGE = {
    "keep the mapped pages": "import wan_export.safetensors_io as io\nio._drop_pages = lambda *a: None\n",
    "keep every tensor": ("from wan_export.safetensors_io import SafetensorsFile as F\n"
                          "kept, read = [], F.read\n"
                          "F.read = lambda self, n: kept.append(read(self, n)) or kept[-1]\n"),
}


@needs_proc
@pytest.mark.parametrize("sabotage", sorted(SABOTAGE))
def test_the_memory_test_can_fail(tmp_path, medium, sabotage):
    """Controls: without dropping each tensor's mapped pages, RSS grows with the file."""
    src, _ = medium
    out = subprocess.run([sys.executable, "-c", SABOTAGE[sabotage] + SCRIPT, src, str(tmp_path / "o.safetensors"),
                          "-"], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) > os.path.getsize(src) / 2


def test_shards_are_merged_and_clip_is_left_out(tmp_path, tiny_release):
    src = tiny_release("wan2.1-i2v-14b", shards=3)          # conftest: sharded DiT + CLIP
    result = convert(src, str(tmp_path))
    assert [r["component"] for r in result["files"]] == ["dit", "t5", "vae"]
    assert any("clip: not written" in n for n in result["notes"])
    dit = SafetensorsFile(result["files"][0]["path"])
    assert [i.name for i in dit.infos()] == list(dit_shapes(tiny_dit_config("wan2.1-i2v-14b")))


@pytest.mark.parametrize("command", ["comfyui", "stock"])
def test_help_has_an_example(command):
    r = run(command, "--help")
    assert r.exit_code == 0 and "Example" in r.output and "wan-export " + command in r.output


def test_failure_removes_the_output_folder_it_created(tmp_path):
    state, _ = _nan_state(tiny_dit_config(T2V))
    src = write_safetensors(str(tmp_path / "src.safetensors"), state)
    with pytest.raises(BadInputError, match="NaN/Inf"):
        convert(src, str(tmp_path / "new" / "folder"))
    assert sorted(os.listdir(tmp_path)) == ["src.safetensors"]
