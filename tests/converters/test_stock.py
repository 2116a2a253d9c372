"""`wan-export stock`: the official release layout written back from any input."""
from __future__ import annotations

import hashlib
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from tests.converters.release_factory import SPIECE_BYTES, layout_release
from wan_export.cli import cli
from wan_export.converters.comfyui import convert
from wan_export.converters.stock import default_folder, hub_config, write_stock
from wan_export.dtypes import cast
from wan_export.release import open_input
from wan_export.synthetic import dit_state, tiny_dit_config, write_safetensors
from wan_export.variants import VARIANTS

HUB_KEYS = ["_class_name", "dim", "eps", "ffn_dim", "freq_dim", "in_dim", "model_type", "num_heads",
            "num_layers", "out_dim", "text_len"]


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rel") / "src"
    return str(folder), layout_release(str(folder), "wan2.1-t2v-1.3b", dtype="F32")


def test_release_layout_and_config(tmp_path, release):
    src, expected = release
    out = tmp_path / "Wan"
    result = write_stock(src, str(out), dtype="bf16")
    assert sorted(os.path.relpath(r["path"], out) for r in result["files"]) == [
        "Wan2.1_VAE.pth", "config.json", "diffusion_pytorch_model.safetensors",
        "google/umt5-xxl/special_tokens_map.json", "google/umt5-xxl/spiece.model",
        "google/umt5-xxl/tokenizer_config.json", "models_t5_umt5-xxl-enc-bf16.pth"]
    text = (out / "config.json").read_text()
    config = json.loads(text)
    assert list(config) == HUB_KEYS and text == json.dumps(config, indent=2, sort_keys=True) + "\n"
    assert config == {"_class_name": "WanModel", "dim": 256, "eps": 1e-06, "ffn_dim": 512, "freq_dim": 256,
                      "in_dim": 16, "model_type": "t2v", "num_heads": 2, "num_layers": 2, "out_dim": 16,
                      "text_len": 512}
    rel = open_input(str(out))
    for k, v in expected["dit"].items():                     # --dtype casts the DiT ...
        np.testing.assert_array_equal(rel.components["dit"].table.read(k), cast(v, "BF16"))
    assert {i.dtype for i in rel.components["vae"].table.infos()} == {"F32"}     # ... not the VAE
    assert {i.dtype for i in rel.components["t5"].table.infos()} == {"BF16"}
    assert (out / "google/umt5-xxl/spiece.model").read_bytes() == SPIECE_BYTES


def test_pth_files_load_with_weights_only_and_are_deterministic(tmp_path, release):
    import torch

    src, expected = release
    write_stock(src, str(tmp_path / "a"))
    write_stock(src, str(tmp_path / "b"))
    for name in ("Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth", "diffusion_pytorch_model.safetensors"):
        assert sha(tmp_path / "a" / name) == sha(tmp_path / "b" / name), name
    vae = torch.load(tmp_path / "a" / "Wan2.1_VAE.pth", weights_only=True)
    assert list(vae)[:2] == ["encoder.conv1.weight", "encoder.conv1.bias"]        # module order
    for k, v in expected["vae"].items():
        np.testing.assert_array_equal(vae[k].numpy(), v)


def test_t5_file_name_says_its_source_dtype(tmp_path):
    src = tmp_path / "src"
    layout_release(str(src), "wan2.1-t2v-1.3b", vae=False)
    te = convert(str(src), str(tmp_path / "te.safetensors"), component="text-encoder", dtype="fp32")["files"]
    result = write_stock(te[0]["path"], str(tmp_path / "out"), dtype="fp16")
    names = sorted(os.path.relpath(r["path"], tmp_path / "out") for r in result["files"])
    assert names == ["google/umt5-xxl/spiece.model", "models_t5_umt5-xxl-enc-fp32.pth"]


def test_a14b_expert_folders(tmp_path):
    src = tmp_path / "src"
    layout_release(str(src), "wan2.2-t2v-a14b", layout="diffusers", vae=False, t5=False, tokenizer=False)
    result = write_stock(str(src), str(tmp_path / "out"))
    assert sorted(os.path.relpath(r["path"], tmp_path / "out") for r in result["files"]) == [
        f"{e}_model/{f}" for e in ("high_noise", "low_noise")
        for f in ("config.json", "diffusion_pytorch_model.safetensors")]
    rel = open_input(str(tmp_path / "out"))
    assert rel.layout == "release (A14B experts)" and sorted(rel.dits) == ["dit.high_noise", "dit.low_noise"]


def test_vace_config_and_shards_above_the_threshold(tmp_path):
    cfg = tiny_dit_config("wan2.1-vace-1.3b")
    src = write_safetensors(str(tmp_path / "vace.safetensors"), dit_state(cfg))
    write_stock(src, str(tmp_path / "out"), max_shard_bytes=4 << 20)
    names = sorted(os.listdir(tmp_path / "out"))
    shards = [n for n in names if n.endswith(".safetensors")]
    assert len(shards) > 2 and shards[0] == f"diffusion_pytorch_model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "out" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["_class_name"] == "VaceWanModel" and config["vace_layers"] == [0, 1]
    assert config == hub_config(cfg)
    assert open_input(str(tmp_path / "out")).components["dit"].config == cfg


def test_default_folder_names():
    def fake(variant, tiny=False, experts=False):
        cfg = tiny_dit_config(variant) if tiny else VARIANTS[variant].config
        comps = {f"dit.{e}": SimpleNamespace(config=cfg) for e in ("high_noise", "low_noise")} if experts \
            else {"dit": SimpleNamespace(config=cfg)}
        return SimpleNamespace(dits=comps)

    assert default_folder(fake("wan2.1-t2v-1.3b")) == "Wan2.1-T2V-1.3B"
    assert default_folder(fake("wan2.2-t2v-a14b", experts=True)) == "Wan2.2-T2V-A14B"
    assert default_folder(fake("wan2.2-ti2v-5b", tiny=True)) == "Wan2.2-TI2V-custom-d256-l2"


def test_failure_leaves_no_folder(tmp_path):
    state = dit_state(tiny_dit_config("wan2.1-t2v-1.3b"))
    state["head.head.weight"] = state["head.head.weight"].copy()
    state["head.head.weight"][0, 0] = np.nan
    src = write_safetensors(str(tmp_path / "nan.safetensors"), state)
    r = CliRunner().invoke(cli, ["stock", src, "-o", str(tmp_path / "out")])
    assert r.exit_code == 2 and r.output == f"Error: {src}: tensor head.head.weight has 1 NaN/Inf values\n"
    assert sorted(os.listdir(tmp_path)) == ["nan.safetensors"]


def test_cli_json(tmp_path, release):
    src, _ = release
    r = CliRunner().invoke(cli, ["stock", src, "-o", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)["files"]
    assert all(row["sha256"] == sha(row["path"]) for row in rows)
    r = CliRunner().invoke(cli, ["stock", src, "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and r.output == f"Error: {tmp_path / 'o'}: output exists (use --overwrite)\n"


def test_sharded_release_with_clip_round_trips(tmp_path, tiny_release):
    src = tiny_release("wan2.1-flf2v-14b", shards=3)
    write_stock(src, str(tmp_path / "out"))
    names = sorted(os.listdir(tmp_path / "out"))
    assert "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth" in names and "xlm-roberta-large" in names
    a, b = open_input(src), open_input(str(tmp_path / "out"))
    assert sorted(a.components) == sorted(b.components) == ["clip", "dit", "t5", "vae"]
    for slot, comp in a.components.items():
        other = b.components[slot]
        assert comp.table.names() == other.table.names() or set(comp.table.names()) == set(other.table.names())
        for k in comp.table.names():
            np.testing.assert_array_equal(comp.table.read(k), other.table.read(k), err_msg=f"{slot} {k}")


def test_a_dit_only_conversion_never_imports_torch(tmp_path):
    import subprocess
    import sys

    src = write_safetensors(str(tmp_path / "d.safetensors"), dit_state(tiny_dit_config("wan2.1-t2v-1.3b")))
    code = ("import sys\nfrom wan_export.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    for args in (["stock", src, "-o", str(tmp_path / "s"), "--dtype", "fp16"],
                 ["comfyui", src, "-o", str(tmp_path / "c.safetensors")]):
        p = subprocess.run([sys.executable, "-c", code] + args, capture_output=True, text=True, check=True)
        assert p.stderr.strip().splitlines()[-1] == "False", (args, p.stderr)
