"""`wan-export diffusers` on tiny synthetic releases: the folders load offline with
DiffusionPipeline, carry the official scheduler/expert settings, reproduce the
source tensors bit for bit, shard, are deterministic, fail atomically, and the
reference DiT, the diffusers transformer and the CLIP tower agree numerically.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest
import torch

from wan_export import synthetic
from wan_export.cli import cli
from wan_export.converters import diffusers_clip as clip_map
from wan_export.converters.diffusers import convert
from wan_export.dtypes import to_torch
from wan_export.release import open_input
from wan_export.validators.diffusers_loader import load_diffusers_artifact
from wan_export.variants import VARIANTS

# variant -> (pipeline class, expand_timesteps or None when the pipeline has none)
PIPELINE = {
    "wan2.1-t2v-1.3b": ("WanPipeline", False), "wan2.1-i2v-14b": ("WanImageToVideoPipeline", False),
    "wan2.1-flf2v-14b": ("WanImageToVideoPipeline", False), "wan2.2-ti2v-5b": ("WanPipeline", True),
    "wan2.1-vace-1.3b": ("WanVACEPipeline", None), "wan2.2-t2v-a14b": ("WanPipeline", False),
    "wan2.2-i2v-a14b": ("WanImageToVideoPipeline", False),
}


@pytest.fixture(scope="module")
def converted(tiny_release, tmp_path_factory):
    """converted(variant, DiT dtype of the release, **convert options) -> (release, output folder), cached."""
    cache = {}

    def make(variant: str, release_dtype: str = "F32", **options):
        key = (variant, release_dtype, json.dumps(options, sort_keys=True))
        if key not in cache:
            src = tiny_release(variant, dtype=release_dtype)
            out = str(tmp_path_factory.mktemp("diffusers") / variant)
            convert(src, out, **options)
            cache[key] = (src, out)
        return cache[key]

    return make


def _stock_sources(src: str) -> dict:
    rel = open_input(src)
    return {slot: c.table for slot, c in rel.components.items()}


def _same_tensor(a: torch.Tensor, b: np.ndarray) -> bool:
    b = to_torch(np.array(b))
    return a.dtype == b.dtype and torch.equal(a, b)


# ---- DiT numerics: diffusers' transformer from our folder vs the reference model on the source

def _inputs(cfg, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    b, f, h, w = 1, 2, 4, 6
    tokens = f * (h // 2) * (w // 2)
    t = torch.rand(b, generator=g) * 1000
    if cfg.model_type == "ti2v":                      # per-token t, first frame clean
        t = t[:, None].expand(b, tokens).clone()
        t[:, : tokens // f] = 0
    # I2V cross-attention takes the last 512 tokens as text (formats-diffusers.md 3.5)
    x = {"latents": torch.randn(b, cfg.in_dim, f, h, w, generator=g), "timestep": t,
         "context": torch.randn(b, 512 if cfg.image_branch else 24, cfg.text_dim, generator=g)}
    if cfg.image_branch:
        x["clip_features"] = torch.randn(b, cfg.clip_tokens, cfg.clip_dim, generator=g)
    if cfg.is_vace:
        x["vace_context"] = torch.randn(b, cfg.vace_in_dim, f, h, w, generator=g)
    return x


def _run_diffusers(model, cfg, x: dict) -> torch.Tensor:
    kw = {"hidden_states": x["latents"], "timestep": x["timestep"], "encoder_hidden_states": x["context"],
          "return_dict": False}
    if "clip_features" in x:                          # FLF2V frames go in stacked as [2B, 257, C]
        kw["encoder_hidden_states_image"] = x["clip_features"].reshape(-1, 257, cfg.clip_dim)
    if "vace_context" in x:
        kw["control_hidden_states"] = x["vace_context"]
        kw["control_hidden_states_scale"] = torch.ones(len(cfg.vace_layers))
    return model(**kw)[0]


def _check_dit_outputs(model, comp) -> None:
    from wan_export.model.dit import load_dit
    from wan_export.validators.parity import torch_state

    cfg = comp.config
    ref = load_dit(torch_state(comp.table), cfg)
    x = _inputs(cfg)
    with torch.no_grad():
        want, got = ref(**x), _run_diffusers(model.float(), cfg, x)
    peak = want.abs().max().item()
    assert peak > 0.1 and (got - want).abs().max().item() <= 1e-5 * peak


@pytest.mark.parametrize("variant", sorted(PIPELINE))
def test_pipeline_folder_loads_and_matches(converted, variant):
    src, out = converted(variant)
    v = VARIANTS[variant]
    art = load_diffusers_artifact(out)          # DiffusionPipeline + key-set and meta checks
    _, pipe = art.pop("pipeline")
    cls, expand = PIPELINE[variant]
    assert type(pipe).__name__ == cls
    assert pipe.scheduler.config.flow_shift == v.flow_shift
    assert pipe.scheduler.config.use_flow_sigmas and pipe.scheduler.config.prediction_type == "flow_prediction"
    assert pipe.config.boundary_ratio == (v.boundary_ratio if v.experts else None)
    assert (pipe.transformer_2 is not None) == v.experts
    if expand is not None:
        assert pipe.config.expand_timesteps == expand
    if cls == "WanImageToVideoPipeline":
        assert (pipe.image_encoder is not None) == v.config.image_branch
    rel = open_input(src)
    for slot, (kind, stock) in art.items():
        table = rel.components[slot].table
        want = {n for n in table.names() if kind != "clip" or not clip_map._dropped(n)}
        assert set(stock) == want, slot
        # transformers/diffusers may load at another dtype; every source dtype survives fp32 exactly
        bad = [n for n in want if not _same_tensor(stock[n].float(), table.read(n).astype(np.float32))]
        assert not bad, f"{slot}: {bad[:3]}"
    for sub, slot in (("transformer", "dit.high_noise" if v.experts else "dit"), ("transformer_2", "dit.low_noise")):
        if getattr(pipe, sub, None) is not None:
            _check_dit_outputs(getattr(pipe, sub), rel.components[slot])


@pytest.mark.parametrize("variant", sorted(PIPELINE))
def test_stock_diffusers_stock_is_byte_identical(converted, variant):
    src, out = converted(variant, "BF16")
    before, after = _stock_sources(src), _stock_sources(out)
    assert set(after) == set(before)
    for slot, table in after.items():
        names = table.names()
        if slot == "clip":                           # HF names: undo the split and reshapes
            arrays = clip_map.to_stock({n: table.read(n) for n in names}, np.concatenate)
        else:
            arrays = {n: table.read(n) for n in names}
        for name, arr in arrays.items():
            ref = before[slot].read(name)
            assert arr.dtype == ref.dtype and arr.shape == ref.shape, name
            assert np.ascontiguousarray(arr).tobytes() == np.ascontiguousarray(ref).tobytes(), name


def test_clip_tower_matches_wan_vision_transformer(converted):
    """hidden_states[-2] of the converted CLIPVisionModel == Wan's use_31_block output."""
    src, out = converted("wan2.1-i2v-14b")
    art = load_diffusers_artifact(out)
    pipe = art["pipeline"][1]
    sd = {n: to_torch(np.array(open_input(src).components["clip"].table.read(n))).float()
          for n in art["clip"][1]}
    heads = pipe.image_encoder.config.num_attention_heads
    pixels = torch.randn(2, 3, pipe.image_encoder.config.image_size, pipe.image_encoder.config.image_size)
    with torch.no_grad():
        got = pipe.image_encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    want = _wan_vit_31_blocks(sd, pixels, heads)
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()
    # Wan's preprocessing: the whole frame resized to a square, no centre crop
    from PIL import Image

    image = Image.fromarray(np.zeros((30, 90, 3), np.uint8))
    assert pipe.image_processor(images=image, return_tensors="pt").pixel_values.shape[-2:] == pixels.shape[-2:]


def _wan_vit_31_blocks(sd: dict, x: torch.Tensor, heads: int) -> torch.Tensor:
    """Wan clip.py VisionTransformer.forward(use_31_block=True), written out: pre-norm ViT,
    fused qkv read as view(b, s, 3, n, d), exact GELU, LayerNorm eps 1e-5, all blocks but the last."""
    ln = torch.nn.functional.layer_norm
    p = lambda n: sd[f"visual.{n}"]                                                 # noqa: E731
    d = p("patch_embedding.weight").shape[0]
    h = torch.nn.functional.conv2d(x, p("patch_embedding.weight"), stride=p("patch_embedding.weight").shape[-1])
    h = torch.cat([p("cls_embedding").expand(x.shape[0], -1, -1), h.flatten(2).transpose(1, 2)], 1)
    h = ln(h + p("pos_embedding"), (d,), p("pre_norm.weight"), p("pre_norm.bias"), 1e-5)
    layers = len({k.split(".")[2] for k in sd if k.startswith("visual.transformer.")})
    for i in range(layers - 1):
        q = lambda n: p(f"transformer.{i}.{n}")                                     # noqa: E731
        y = ln(h, (d,), q("norm1.weight"), q("norm1.bias"), 1e-5)
        b, s, _ = y.shape
        qkv = torch.nn.functional.linear(y, q("attn.to_qkv.weight"), q("attn.to_qkv.bias"))
        qq, kk, vv = qkv.view(b, s, 3, heads, d // heads).unbind(2)
        a = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (qq, kk, vv)))
        h = h + torch.nn.functional.linear(a.transpose(1, 2).reshape(b, s, d), q("attn.proj.weight"),
                                           q("attn.proj.bias"))
        y = ln(h, (d,), q("norm2.weight"), q("norm2.bias"), 1e-5)
        y = torch.nn.functional.gelu(torch.nn.functional.linear(y, q("mlp.0.weight"), q("mlp.0.bias")))
        h = h + torch.nn.functional.linear(y, q("mlp.2.weight"), q("mlp.2.bias"))
    return h


def test_pipeline_runs_end_to_end(converted):
    """Two denoising steps and a VAE decode through the real pipeline (precomputed prompt embeds:
    the tiny text encoder is narrower than the DiT's text_dim)."""
    _, out = converted("wan2.1-t2v-1.3b")
    pipe = load_diffusers_artifact(out)["pipeline"][1]
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, 512, 4096, generator=g)
    video = pipe(prompt_embeds=embeds, negative_prompt_embeds=embeds, height=16, width=16, num_frames=5,
                 num_inference_steps=2, generator=g, output_type="np").frames
    assert video.shape == (1, 5, 16, 16, 3) and np.isfinite(video).all()


def test_dtype_casts_every_float(converted):
    src, out = converted("wan2.2-ti2v-5b", "F32", dtype="bf16")
    before, after = _stock_sources(src), _stock_sources(out)
    for slot, table in after.items():
        for info in table.infos():
            assert info.dtype == "BF16", info.name
            want = before[slot].read(info.name).astype(np.float32).astype(ml_dtypes.bfloat16)
            assert np.array_equal(table.read(info.name).view(np.uint16), want.view(np.uint16))


def test_shards_with_index_load(converted):
    src, out = converted("wan2.1-i2v-14b", "F32", shard_bytes={"diffusers": 400_000, "transformers": 60_000})
    names = {os.path.relpath(os.path.join(r, f), out) for r, _, fs in os.walk(out) for f in fs}
    assert "transformer/diffusion_pytorch_model.safetensors.index.json" in names
    assert "text_encoder/model.safetensors.index.json" in names
    for sub, stem in (("transformer", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                      ("text_encoder", "model"), ("image_encoder", "model")):
        shards = sorted(n for n in names if n.startswith(f"{sub}/{stem}-"))
        assert len(shards) > 1 and shards[-1].endswith(f"-of-{len(shards):05d}.safetensors"), sub
        index = json.loads(open(os.path.join(out, sub, f"{stem}.safetensors.index.json")).read())
        assert sorted(set(index["weight_map"].values())) == [os.path.basename(s) for s in shards]
    art = load_diffusers_artifact(out)
    assert {k for k in art} == {"pipeline", "dit", "vae", "t5", "clip"}


def _digests(folder: str) -> dict[str, str]:
    paths = [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs]
    return {os.path.relpath(p, folder): hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}


def test_deterministic_bytes(tiny_release, tmp_path):
    src = tiny_release("wan2.1-flf2v-14b")
    convert(src, str(tmp_path / "a"))
    convert(src, str(tmp_path / "b"), overwrite=True)
    a, b = _digests(str(tmp_path / "a")), _digests(str(tmp_path / "b"))
    assert a == b and "model_index.json" in a and "tokenizer/tokenizer.json" in a


def test_nan_input_exits_2_and_leaves_nothing(tiny_release, tmp_path, runner):
    src = shutil.copytree(tiny_release("wan2.1-t2v-1.3b"), tmp_path / "src")
    cfg = synthetic.tiny_dit_config("wan2.1-t2v-1.3b")
    state = synthetic.dit_state(cfg)
    state["blocks.1.ffn.2.weight"][3, 5] = np.nan
    for f in os.listdir(src):
        if f.startswith("diffusion_pytorch_model"):
            os.remove(src / f)
    synthetic.write_safetensors(str(src / "diffusion_pytorch_model.safetensors"), state)
    out = tmp_path / "out"
    result = runner.invoke(cli, ["diffusers", str(src), "-o", str(out)])
    assert result.exit_code == 2
    assert result.output.strip() == (f"Error: {src / 'diffusion_pytorch_model.safetensors'}: "
                                      "tensor blocks.1.ffn.2.weight has 1 NaN/Inf values")
    assert sorted(os.listdir(tmp_path)) == ["src"]


@pytest.mark.parametrize("variant, cls", [("wan2.1-t2v-1.3b", "WanTransformer3DModel"),
                                          ("wan2.1-vace-1.3b", "WanVACETransformer3DModel")])
def test_dit_only_source_writes_a_transformer_folder(tiny_dit_file, tmp_path, runner, variant, cls):
    import diffusers

    out = tmp_path / "out"
    result = runner.invoke(cli, ["diffusers", tiny_dit_file(variant, "F32"), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["layout"] == "transformer"
    assert sorted(os.listdir(out)) == ["config.json", "diffusion_pytorch_model.safetensors"]
    model = getattr(diffusers, cls).from_pretrained(str(out), local_files_only=True)
    assert type(model).__name__ == cls
    assert set(load_diffusers_artifact(str(out))) == {"dit"}


def test_a14b_experts_only_write_both_transformers(tiny_release, tmp_path):
    src = tmp_path / "src"
    for expert in ("high_noise_model", "low_noise_model"):
        shutil.copytree(os.path.join(tiny_release("wan2.2-t2v-a14b"), expert), src / expert)
    result = convert(str(src), str(tmp_path / "out"))
    assert result["layout"] == "transformers"
    assert sorted(os.listdir(tmp_path / "out")) == ["transformer", "transformer_2"]
    art = load_diffusers_artifact(str(tmp_path / "out"))
    assert set(art) == {"dit.high_noise", "dit.low_noise"}


def test_fp8_scaled_source_is_dequantized(tmp_path):
    cfg = synthetic.tiny_dit_config("wan2.1-t2v-1.3b")
    state, out, expect = synthetic.dit_state(cfg), {"scaled_fp8": np.zeros(0, ml_dtypes.float8_e4m3fn)}, {}
    for k, v in state.items():
        if v.ndim == 2 and k.startswith("blocks."):
            scale = np.float32(np.abs(v).max() / 448)
            q = (v / scale).astype(ml_dtypes.float8_e4m3fn)
            out[k], out[k[:-len("weight")] + "scale_weight"] = q, np.array(scale, np.float32)
            expect[k] = q.astype(np.float32) * scale
        else:
            out[k] = expect[k] = v
    path = synthetic.write_safetensors(str(tmp_path / "fp8.safetensors"), out)
    convert(path, str(tmp_path / "out"))
    table = open_input(str(tmp_path / "out")).only("dit").table
    assert set(table.names()) == set(expect)
    assert all(np.array_equal(table.read(k), expect[k]) for k in expect)


def test_incomplete_release_names_every_missing_part(tiny_release, tmp_path, runner):
    src = shutil.copytree(tiny_release("wan2.1-i2v-14b"), tmp_path / "src")
    os.remove(src / synthetic.VAE_FILES["2.1"])
    os.remove(src / synthetic.CLIP_FILE)
    result = runner.invoke(cli, ["diffusers", str(src), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "no VAE" in result.output and "no CLIP image encoder" in result.output
    assert not (tmp_path / "out").exists()


def test_default_name_is_hub_like(tiny_release, tmp_path, runner, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["diffusers", tiny_release("wan2.2-ti2v-5b"), "-q"])
    assert result.exit_code == 0, result.output
    assert os.path.isfile(tmp_path / "Wan2.2-TI2V-5B-Diffusers" / "model_index.json")
    vae = json.loads((tmp_path / "Wan2.2-TI2V-5B-Diffusers" / "vae" / "config.json").read_text())
    assert vae["z_dim"] == 48 and vae["is_residual"] and vae["patch_size"] == 2 and "clip_output" not in vae


def test_validate_reports_parity(converted):
    from wan_export.validators.diffusers_loader import validate_diffusers

    src, out = converted("wan2.1-vace-1.3b", "F32", dtype="fp16")
    report = validate_diffusers(out, src)
    assert report.passed, report.to_markdown()
    names = [c.name for c in report.checks]
    n = len(open_input(src).only("dit").table.names())
    assert f"dit weights ({n} tensors) vs source at stored dtype" in names
    assert any("diffusers forward" in n for n in names) and any("vae decode" in n for n in names)
    assert report.info["flow_shift"] == report.info["official_flow_shift"] == 16.0


def test_missing_keys_diffusers_hides_are_reported(tiny_dit_file, tmp_path):
    from safetensors.numpy import load_file, save_file

    from wan_export.errors import BadInputError

    convert(tiny_dit_file("wan2.1-t2v-1.3b", "F32"), str(tmp_path / "out"))
    path = str(tmp_path / "out" / "diffusion_pytorch_model.safetensors")
    state = load_file(path)
    del state["blocks.0.attn1.to_q.weight"]
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(BadInputError, match="1 missing: blocks.0.attn1.to_q.weight.*left on the meta device"):
        load_diffusers_artifact(str(tmp_path / "out"))


def test_boundary_without_second_expert_is_refused(converted, tmp_path):
    from wan_export.errors import BadInputError

    _, out = converted("wan2.1-t2v-1.3b")
    bad = shutil.copytree(out, tmp_path / "bad")
    index = json.loads((bad / "model_index.json").read_text())
    (bad / "model_index.json").write_text(json.dumps({**index, "boundary_ratio": 0.875}))   # diffusers' script bug
    with pytest.raises(BadInputError, match="boundary_ratio and transformer_2 must come together"):
        load_diffusers_artifact(str(bad))
