"""Tests of the reference Wan DiT (`wan_export.model.dit`).

Full-size key/shape/parameter checks on the meta device against the official
key lists, fp32 parity with diffusers on tiny random models for every variant,
fused q/k/v, strict loading errors and meta-device builds.
"""
from __future__ import annotations

import re

import pytest
import torch

from tests.shared_data import key_list

from wan_export.errors import BadInputError
from wan_export.model.config import DiTConfig
from wan_export.model.dit import WanDiT, fuse_qkv_state_dict, load_dit, split_qkv_state_dict
from wan_export.model.rope import sinusoidal_embedding


# (key file or None, config, parameter count) from wan-architecture.md §1
_14B = dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
_1_3B = dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
FULL = {
    "t2v_1.3b": ("wan21_t2v_1_3b_keys.txt", DiTConfig("t2v", **_1_3B), 1_418_996_800),
    "t2v_14b": ("wan21_t2v_14b_keys.txt", DiTConfig("t2v", **_14B), 14_288_491_584),
    "i2v_14b": ("wan21_i2v_14b_keys.txt", DiTConfig("i2v", **_14B, in_dim=36, image_branch=True), 16_394_878_784),
    "flf2v_14b": ("wan21_flf2v_14b_keys.txt",
                  DiTConfig("flf2v", **_14B, in_dim=36, image_branch=True, flf_pos_len=514), 16_395_536_704),
    "i2v_a14b": ("wan22_i2v_a14b_keys.txt", DiTConfig("i2v", **_14B, in_dim=36), 14_288_901_184),
    "ti2v_5b": ("wan22_ti2v_5b_keys.txt",
                DiTConfig("ti2v", dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48, out_dim=48),
                4_999_787_712),
}
VACE = {  # config, tensors, parameters
    "vace_1.3b": (DiTConfig("vace", **_1_3B, vace_layers=tuple(range(0, 30, 2))), 1264, 2_153_972_032),
    "vace_14b": (DiTConfig("vace", **_14B, vace_layers=tuple(range(0, 40, 5))), 1331, 17_337_592_896),
}


def _meta_model(cfg: DiTConfig, fused_qkv: bool = False) -> WanDiT:
    with torch.device("meta"):
        return WanDiT(cfg, fused_qkv=fused_qkv)


@pytest.mark.parametrize("variant", FULL)
def test_full_size_keys_match_official(variant):
    key_file, cfg, params = FULL[variant]
    model = _meta_model(cfg)
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == key_list(key_file)
    assert sum(p.numel() for p in model.parameters()) == params
    assert not list(model.buffers())


@pytest.mark.parametrize("variant", VACE)
def test_full_size_vace_counts(variant):
    cfg, tensors, params = VACE[variant]
    sd = _meta_model(cfg).state_dict()
    assert len(sd) == tensors
    assert sum(v.numel() for v in sd.values()) == params
    d = cfg.dim
    assert sd["vace_patch_embedding.weight"].shape == (d, 96, 1, 2, 2)
    assert sd["vace_blocks.0.before_proj.weight"].shape == (d, d)
    assert sd[f"vace_blocks.{len(cfg.vace_layers) - 1}.after_proj.bias"].shape == (d,)
    assert "vace_blocks.1.before_proj.weight" not in sd


# ---------------------------------------------------------------- tiny models and diffusers parity

TINY = dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2)
VARIANTS = {
    "t2v": DiTConfig("t2v", **TINY),
    "i2v": DiTConfig("i2v", **TINY, in_dim=36, image_branch=True),
    "flf2v": DiTConfig("flf2v", **TINY, in_dim=36, image_branch=True, flf_pos_len=514),
    "i2v22": DiTConfig("i2v", **TINY, in_dim=36),
    "ti2v": DiTConfig("ti2v", **TINY, in_dim=48, out_dim=48),
    "vace": DiTConfig("vace", **{**TINY, "num_layers": 3}, vace_layers=(0, 2)),
}

# stock -> diffusers names (formats-diffusers.md §1); matched on whole dotted prefixes
_BLOCK_MAP = {
    "modulation": "scale_shift_table", "norm3": "norm2", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
    "before_proj": "proj_in", "after_proj": "proj_out",
    **{f"{s}_attn.{a}": f"attn{n}.to_{a}" for s, n in (("self", 1), ("cross", 2)) for a in "qkv"},
    **{f"{s}_attn.o": f"attn{n}.to_out.0" for s, n in (("self", 1), ("cross", 2))},
    **{f"{s}_attn.norm_{a}": f"attn{n}.norm_{a}" for s, n in (("self", 1), ("cross", 2)) for a in "qk"},
    "cross_attn.k_img": "attn2.add_k_proj", "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
}
_TOP_MAP = {
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.modulation": "scale_shift_table", "head.head": "proj_out",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
    "img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed",
}


def _to_diffusers_key(key: str) -> str:
    m = re.match(r"((?:vace_)?blocks\.\d+\.)(.*)", key)
    prefix, rest, table = (m[1], m[2], _BLOCK_MAP) if m else ("", key, _TOP_MAP)
    for stock, diff in table.items():
        if rest == stock or rest.startswith(stock + "."):
            return prefix + diff + rest[len(stock):]
    return key


def _random_weights(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Weights of a meaningful scale: ~unit activations, nonzero biases, modulation and emb_pos."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in model.state_dict().items():
        r = torch.randn(p.shape, generator=g)
        if name.endswith(("modulation", "emb_pos")):
            sd[name] = 0.3 * r
        elif p.dim() >= 2:
            sd[name] = r / p[0].numel() ** 0.5
        elif name.endswith("bias"):
            sd[name] = 0.1 * r
        else:  # norm weights
            sd[name] = 1 + 0.1 * r
    return sd


def _diffusers_model(cfg: DiTConfig, sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

    kwargs = dict(patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
                  in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
                  ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, eps=cfg.eps)
    if cfg.image_branch:
        kwargs.update(image_dim=cfg.clip_dim, added_kv_proj_dim=cfg.dim, pos_embed_seq_len=cfg.flf_pos_len or None)
    if cfg.is_vace:
        model = WanVACETransformer3DModel(**kwargs, vace_layers=list(cfg.vace_layers), vace_in_channels=cfg.vace_in_dim)
    else:
        model = WanTransformer3DModel(**kwargs)
    model.load_state_dict({_to_diffusers_key(k): v for k, v in sd.items()}, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_models():
    """variant -> (cfg, stock state dict, our model, diffusers model), built once."""
    out = {}
    for i, (name, cfg) in enumerate(VARIANTS.items()):
        torch.manual_seed(i)
        sd = _random_weights(WanDiT(cfg), seed=100 + i)
        out[name] = (cfg, sd, load_dit(sd, cfg), _diffusers_model(cfg, sd))
    return out


def _inputs(cfg: DiTConfig, b: int, f: int, h: int, w: int, text_len: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    tokens = f * (h // 2) * (w // 2)
    if cfg.model_type == "ti2v":  # per-token t, first latent frame at t = 0 as in TI2V
        t = (torch.rand(b, 1, generator=g) * 1000).expand(b, tokens).clone()
        t[:, : tokens // f] = 0
    else:
        t = torch.rand(b, generator=g) * 1000
    x = dict(latents=torch.randn(b, cfg.in_dim, f, h, w, generator=g), timestep=t,
             context=torch.randn(b, 512 if cfg.image_branch else text_len, cfg.text_dim, generator=g))
    if cfg.image_branch:
        x["clip_features"] = torch.randn(b, cfg.clip_tokens, cfg.clip_dim, generator=g)
    if cfg.is_vace:
        x["vace_context"] = torch.randn(b, cfg.vace_in_dim, f, h, w, generator=g)
    return x


def _run_diffusers(model, cfg: DiTConfig, x: dict, vace_scale: float = 1.0) -> torch.Tensor:
    kw = dict(hidden_states=x["latents"], timestep=x["timestep"], encoder_hidden_states=x["context"],
              return_dict=False)
    if "clip_features" in x:  # diffusers takes the FLF2V frames stacked as [2B, 257, C]
        kw["encoder_hidden_states_image"] = x["clip_features"].reshape(-1, 257, cfg.clip_dim)
    if "vace_context" in x:
        kw["control_hidden_states"] = x["vace_context"]
        kw["control_hidden_states_scale"] = torch.full((len(cfg.vace_layers),), vace_scale)
    return model(**kw)[0]


SHAPES = [(1, 1, 4, 6, 7), (2, 3, 8, 8, 512), (2, 3, 4, 6, 7)]  # B, F, H, W, text length


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}f{}_{}x{}_t{}".format(*s))
@pytest.mark.parametrize("variant", VARIANTS)
def test_parity_with_diffusers(tiny_models, variant, shape):
    cfg, _, ours, ref = tiny_models[variant]
    x = _inputs(cfg, *shape, seed=list(VARIANTS).index(variant) * 10 + SHAPES.index(shape))
    scale = 0.7 if cfg.is_vace else 1.0
    with torch.no_grad():
        expected = _run_diffusers(ref, cfg, x, vace_scale=scale)
        got = ours(**x, vace_scale=scale)
    assert got.dtype == torch.float32 and got.shape == expected.shape == (shape[0], cfg.out_dim, *shape[1:4])
    peak = expected.abs().max().item()
    assert peak > 0.5 and expected.std().item() > 0.05, "reference output is trivially small"
    err = (got - expected).abs().max().item()
    assert err <= 1e-5 * peak, f"{variant}: max abs err {err:.3g} vs peak {peak:.3g}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_parity_with_fp64_time_embedding(tiny_models, variant, monkeypatch):
    """diffusers computes the sinusoid in fp32; given the official fp64 one it matches to ~3e-7."""
    cfg, _, ours, ref = tiny_models[variant]
    monkeypatch.setattr(ref.condition_embedder.timesteps_proj, "forward",
                        lambda t: sinusoidal_embedding(t, cfg.freq_dim))
    x = _inputs(cfg, *SHAPES[2], seed=7)
    with torch.no_grad():
        expected, got = _run_diffusers(ref, cfg, x), ours(**x)
    assert (got - expected).abs().max() <= 1e-6 * expected.abs().max()


@pytest.mark.parametrize("variant", ["i2v", "flf2v", "vace", "t2v"])
def test_every_condition_matters(tiny_models, variant):
    """Non-vacuity: the parity above covers paths that really change the output."""
    cfg, _, model, _ = tiny_models[variant]
    x = _inputs(cfg, 1, 2, 4, 4, 7, seed=5)
    torch.manual_seed(6)
    with torch.no_grad():
        base = model(**x)
        for name in ("context", "clip_features", "vace_context", "timestep"):
            if name in x:  # a fresh draw: scaling would be undone by img_emb's LayerNorm
                other = torch.rand_like(x[name]) * 1000 if name == "timestep" else torch.randn_like(x[name])
                changed = model(**{**x, name: other})
                assert (changed - base).abs().max() > 1e-2 * base.abs().max(), name


def test_ti2v_scalar_timestep_equals_expanded(tiny_models):
    cfg, _, model, _ = tiny_models["ti2v"]
    x = _inputs(cfg, 2, 2, 4, 6, 7, seed=3)
    t = torch.tensor([250.0, 875.5])
    with torch.no_grad():
        a = model(**{**x, "timestep": t})
        b = model(**{**x, "timestep": t[:, None].expand(2, 2 * 2 * 3)})
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * a.abs().max().item())  # only matmul-shape rounding


# ---------------------------------------------------------------- fused qkv, loading, meta builds

@pytest.mark.parametrize("variant", ["t2v", "vace"])
def test_fused_qkv_matches_unfused(tiny_models, variant):
    cfg, sd, model, _ = tiny_models[variant]
    fused = load_dit(sd, cfg, fused_qkv=True)
    fsd = fused.state_dict()
    assert "blocks.0.self_attn.qkv.weight" in fsd and "blocks.0.self_attn.q.weight" not in fsd
    assert fsd["blocks.1.self_attn.qkv.weight"].shape == (3 * cfg.dim, cfg.dim)
    assert fsd["blocks.1.self_attn.qkv.bias"].shape == (3 * cfg.dim,)
    x = _inputs(cfg, 2, 3, 4, 6, 7, seed=11)
    with torch.no_grad():
        ref = model(**x)
        torch.testing.assert_close(fused(**x), ref, rtol=0, atol=1e-6 * ref.abs().max().item())
    # a fused state dict also loads into an unfused model
    again = load_dit(fsd, cfg)
    with torch.no_grad():
        torch.testing.assert_close(again(**x), ref, rtol=0, atol=0)


def test_fuse_split_round_trip(tiny_models):
    _, sd, _, _ = tiny_models["vace"]
    fused = fuse_qkv_state_dict(sd)
    assert len(fused) == len(sd) - 4 * (3 + 2)  # 3 -> 1 for weight and bias, in 3 blocks + 2 vace blocks
    assert WanDiT.fuse_qkv_state_dict(sd).keys() == fused.keys()
    back = split_qkv_state_dict(fused)
    assert list(back) == list(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    assert list(fuse_qkv_state_dict(back)) == list(fused)


def test_load_dit_reports_every_offender(tiny_models):
    cfg, sd, _, _ = tiny_models["t2v"]
    bad = dict(sd)
    del bad["blocks.0.self_attn.k.weight"], bad["head.modulation"]
    bad["blocks.0.extra.weight"] = torch.zeros(1)
    bad["img_emb.proj.1.weight"] = torch.zeros(1)
    bad["blocks.1.ffn.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(BadInputError) as info:
        load_dit(bad, cfg)
    msg = str(info.value)
    for key in ("blocks.0.self_attn.k.weight", "head.modulation", "blocks.0.extra.weight",
                "img_emb.proj.1.weight", "blocks.1.ffn.0.weight"):
        assert key in msg
    assert "2 missing" in msg and "2 unexpected" in msg and "1 wrong shape" in msg
    with pytest.raises(BadInputError, match="missing"):
        load_dit(bad, cfg, fused_qkv=True)  # an incomplete q/k/v triple is reported, not fused


def test_load_dit_accepts_iterables_and_dtype(tiny_models):
    cfg, sd, model, _ = tiny_models["t2v"]
    half = load_dit(iter(sd.items()), cfg, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    x = _inputs(cfg, 1, 2, 4, 4, 7, seed=2)
    with torch.no_grad():
        ref, out = model(**x), half(**x)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_meta_build_then_assign_load(tiny_models):
    """RoPE and time tables are computed per call, so nothing is stuck on meta."""
    for variant in ("ti2v", "flf2v"):
        cfg, sd, model, _ = tiny_models[variant]
        meta = _meta_model(cfg)
        meta.load_state_dict(sd, strict=True, assign=True)
        assert not any(t.is_meta for t in [*meta.parameters(), *meta.buffers()])
        x = _inputs(cfg, 2, 3, 8, 8, 7, seed=4)
        with torch.no_grad():
            torch.testing.assert_close(meta(**x), model(**x), rtol=0, atol=0)


def test_fp32_angles_stay_close(tiny_models, monkeypatch):
    """The float32-angle switch (for runtimes without doubles) changes little at these positions."""
    cfg, _, model, _ = tiny_models["ti2v"]
    x = _inputs(cfg, 2, 3, 8, 8, 7, seed=9)
    with torch.no_grad():
        ref = model(**x)
        monkeypatch.setattr(model, "angle_dtype", torch.float32)
        out = model(**x)
    assert 0 < (out - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_bad_configs_and_inputs(tiny_models):
    with pytest.raises(ValueError):
        WanDiT(DiTConfig("vace", **TINY))
    with pytest.raises(ValueError):
        _meta_model(DiTConfig("vace", **TINY, vace_layers=(1,)))
    cfg, _, model, _ = tiny_models["i2v"]
    x = _inputs(cfg, 1, 1, 4, 4, 7, seed=0)
    with pytest.raises(ValueError, match="clip_features"):
        model(**{k: v for k, v in x.items() if k != "clip_features"})
