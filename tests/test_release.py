"""Official-style release folders of every variant: layout, detection, inspect, same bytes every run."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from wan_export import synthetic
from wan_export.cli import cli
from wan_export.release import open_input
from wan_export.variants import VARIANTS

CUSTOM = "(custom: dim 256, 2 layers)"
# variant -> (what inspect calls the tiny release, whose defaults it uses). At dim 256 a
# 14B-shaped DiT cannot be told from a 1.3B one; only A14B folders are named exactly.
EXPECTED = {
    "wan2.1-t2v-1.3b": (f"wan2.1-t2v {CUSTOM}", "wan2.1-t2v-1.3b"),
    "wan2.1-t2v-14b": (f"wan2.1-t2v {CUSTOM}", "wan2.1-t2v-1.3b"),
    "wan2.1-i2v-14b": (f"wan2.1-i2v {CUSTOM}", "wan2.1-i2v-14b"),
    "wan2.1-flf2v-14b": (f"wan2.1-flf2v {CUSTOM}", "wan2.1-flf2v-14b"),
    "wan2.1-vace-1.3b": (f"wan2.1-vace {CUSTOM}", "wan2.1-vace-1.3b"),
    "wan2.1-vace-14b": (f"wan2.1-vace {CUSTOM}", "wan2.1-vace-1.3b"),
    "wan2.2-t2v-a14b": ("wan2.2-t2v-a14b", "wan2.2-t2v-a14b"),
    "wan2.2-i2v-a14b": ("wan2.2-i2v-a14b", "wan2.2-i2v-a14b"),
    "wan2.2-ti2v-5b": (f"wan2.2-ti2v {CUSTOM}", "wan2.2-ti2v-5b"),
}
HUB_KEYS = {"_class_name", "_diffusers_version", "dim", "eps", "ffn_dim", "freq_dim", "in_dim", "model_type",
            "num_heads", "num_layers", "out_dim", "text_len"}


def test_expected_covers_every_variant():
    assert set(EXPECTED) == set(VARIANTS)


def _slots(variant: str) -> set[str]:
    v = VARIANTS[variant]
    dits = {"dit.high_noise", "dit.low_noise"} if v.experts else {"dit"}
    return dits | {"vae", "t5"} | ({"clip"} if v.config.image_branch else set())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_release_is_opened_and_detected(tiny_release, variant):
    folder = tiny_release(variant)
    rel = open_input(folder)
    v = VARIANTS[variant]
    assert set(rel.components) == _slots(variant)
    assert rel.variant.name == EXPECTED[variant][1]
    for comp in rel.dits.values():
        assert comp.config == synthetic.tiny_dit_config(variant)
    assert rel.only("vae").config == synthetic.tiny_vae_config(v.vae)
    assert rel.only("t5").config == synthetic.tiny_t5_config()
    assert rel.tokenizer_dir == os.path.join(folder, "google", "umt5-xxl")
    if v.config.image_branch:
        assert rel.only("clip").config == {"vision_layers": synthetic.tiny_clip_config().vision_layers}
        assert rel.clip_tokenizer_dir == os.path.join(folder, "xlm-roberta-large")
    else:
        assert rel.clip_tokenizer_dir is None


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_inspect_json_names_the_variant(tiny_release, runner, variant):
    result = runner.invoke(cli, ["inspect", tiny_release(variant), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["variant"], report["defaults_from"]) == EXPECTED[variant]
    assert report["pairs_with_vae"] == VARIANTS[variant].vae
    assert report["warnings"] == []
    assert {c["slot"] for c in report["components"]} == _slots(variant)


def test_inspect_text(tiny_release, runner):
    folder = tiny_release("wan2.2-t2v-a14b")
    result = runner.invoke(cli, ["inspect", folder])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"{folder}  (release (A14B experts))"
    assert lines[1].startswith("variant: wan2.2-t2v-a14b  (flow shift 12.0, boundary 0.875;")
    assert [line.split()[0] for line in lines if "params" in line] == ["dit.high_noise", "dit.low_noise", "t5", "vae"]
    assert f"  tokenizer      {os.path.join(folder, 'google', 'umt5-xxl')}" in lines
    assert result.stderr == ""


def test_a14b_experts_differ(tiny_release):
    rel = open_input(tiny_release("wan2.2-i2v-a14b"))
    hi, lo = rel.components["dit.high_noise"], rel.components["dit.low_noise"]
    assert (hi.expert, lo.expert) == ("high_noise", "low_noise")
    assert hi.table.names() == lo.table.names()
    assert (hi.table.read("head.head.weight") != lo.table.read("head.head.weight")).any()


def test_dit_files_look_official(tiny_release):
    folder = tiny_release("wan2.1-vace-1.3b")
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    assert set(config) == HUB_KEYS | {"vace_layers", "vace_in_dim"}
    assert config["_class_name"] == "VaceWanModel" and config["num_heads"] == 2
    with open(os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json")) as f:
        index = json.load(f)
    shards = sorted(set(index["weight_map"].values()))
    assert shards == [f"diffusion_pytorch_model-0000{k}-of-00002.safetensors" for k in (1, 2)]
    names = {n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))}
    assert names == set(shards) | {"config.json", "diffusion_pytorch_model.safetensors.index.json",
                                   "Wan2.1_VAE.pth", synthetic.T5_FILE}


def test_single_file_and_three_shards(tmp_path):
    one = synthetic.write_release(str(tmp_path / "one"), "wan2.2-ti2v-5b", shards=1)
    assert "diffusion_pytorch_model.safetensors" in os.listdir(one)
    three = synthetic.write_release(str(tmp_path / "three"), "wan2.2-ti2v-5b", shards=3)
    assert "diffusion_pytorch_model-00003-of-00003.safetensors" in os.listdir(three)
    for folder in (one, three):
        assert open_input(folder).only("dit").config == synthetic.tiny_dit_config("wan2.2-ti2v-5b")
        assert "Wan2.2_VAE.pth" in os.listdir(folder)


def _digest(folder: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_same_arguments_same_bytes(tmp_path, tiny_release):
    again = synthetic.write_release(str(tmp_path / "again"), "wan2.1-i2v-14b")
    assert _digest(again) == _digest(tiny_release("wan2.1-i2v-14b"))
    other = synthetic.write_release(str(tmp_path / "other"), "wan2.1-i2v-14b", seed=1)
    changed = {k for k, h in _digest(other).items() if h != _digest(again)[k]}
    assert changed and not any(k.endswith(".model") for k in changed)


def test_tokenizer_training_is_deterministic_across_processes():
    code = ("import hashlib; from wan_export.synthetic import tokenizer_model as t; "
            "print(' '.join(hashlib.sha256(t(k)).hexdigest() for k in ('umt5', 'xlmr')))")
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = [hashlib.sha256(synthetic.tokenizer_model.__wrapped__(k)).hexdigest() for k in ("umt5", "xlmr")]
    assert fresh.stdout.split() == here


def test_tokenizers_load_offline_with_transformers(tiny_release, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tiny_release("wan2.1-i2v-14b")
    umt5 = transformers.AutoTokenizer.from_pretrained(os.path.join(folder, "google", "umt5-xxl"))
    t5 = transformers.T5Tokenizer.from_pretrained(os.path.join(folder, "google", "umt5-xxl"))
    assert len(umt5) == len(t5) == synthetic.tiny_t5_config().vocab
    assert (umt5.pad_token_id, umt5.eos_token_id, umt5.unk_token_id) == (0, 1, 2)
    ids = umt5("A cat walks on the grass", padding="max_length", max_length=16).input_ids
    assert ids[ids.index(1) + 1:] == [0] * (15 - ids.index(1)) and 2 not in ids
    xlmr = transformers.AutoTokenizer.from_pretrained(os.path.join(folder, "xlm-roberta-large"))
    assert len(xlmr) == synthetic.tiny_clip_config().vocab
    assert xlmr("A cat").input_ids[0] == xlmr.bos_token_id == 0
