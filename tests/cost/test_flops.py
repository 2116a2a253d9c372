"""The analytic FLOPs equal FlopCounterMode on the reference models, exactly, per op class.

Every stage (DiT of every variant, UMT5, CLIP, VAE 2.1/2.2 decode and encode) at
full-size widths on the meta device, at several shapes. The DiTs keep every full
width but two blocks (one VACE block); one model runs at full depth. FlopCounterMode
sees SDPA on meta as its math decomposition (two bmm), so: mm/addmm = gemm,
bmm = attention, convolution = conv.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from wan_export.cost.ops import MATMUL_CLASSES, Ops
from wan_export.cost.transformer_flops import clip_forward, dit_forward, dit_tokens, t5_forward
from wan_export.cost.vae import decode_chunk, decode_cost, encode_chunk, encode_cost
from wan_export.model.config import UMT5_XXL, VAE21, VAE22
from wan_export.model.dit import WanDiT
from wan_export.model.t5 import UMT5Encoder
from wan_export.model.vae import WanVAE
from wan_export.variants import VARIANTS

OP_CLASS = {"mm": "gemm", "addmm": "gemm", "bmm": "attention", "convolution": "conv"}
# (batch, latent frames, latent height, latent width)
DIT_SHAPES = ((1, 1, 4, 6), (2, 3, 6, 10))


def measured(fn) -> dict[str, int]:
    with FlopCounterMode(display=False) as counter:
        fn()
    out = dict.fromkeys(MATMUL_CLASSES, 0)
    for op, n in counter.get_flop_counts()["Global"].items():
        out[OP_CLASS[str(op).split(".")[1]]] += n     # KeyError: an op class we do not model
    return out


def predicted(ops: Ops) -> dict[str, int]:
    return {k: getattr(ops, k) for k in MATMUL_CLASSES}


def _dit_inputs(cfg, b, t, h, w):
    x = torch.empty(b, cfg.in_dim, t, h, w)
    tokens = dit_tokens(cfg, t, h, w)
    ts = torch.empty(b, tokens) if cfg.model_type == "ti2v" else torch.empty(b)
    kw = {}
    if cfg.image_branch:
        kw["clip_features"] = torch.empty(b, cfg.clip_tokens, 1280)
    if cfg.is_vace:
        kw["vace_context"] = torch.empty(b, cfg.vace_in_dim, t, h, w)
    return (x, ts, torch.empty(b, 512, 4096)), kw, tokens


def _check_dit(cfg, shapes):
    with torch.device("meta"):
        model = WanDiT(cfg)
        for b, t, h, w in shapes:
            args, kw, tokens = _dit_inputs(cfg, b, t, h, w)
            got = measured(lambda: model(*args, **kw))
            want = dit_forward(cfg, tokens, batch=b, per_token_time=cfg.model_type == "ti2v")
            assert got == predicted(want), (cfg.model_type, b, t, h, w)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_dit_every_variant(name):
    cfg = VARIANTS[name].config
    _check_dit(replace(cfg, num_layers=2, vace_layers=(0,) if cfg.is_vace else ()), DIT_SHAPES)


def test_dit_full_depth():
    _check_dit(VARIANTS["wan2.1-t2v-1.3b"].config, DIT_SHAPES[:1])


def test_ulysses_shards_split_tokens_and_replicate_context():
    cfg, p, tokens = VARIANTS["wan2.1-i2v-14b"].config, 4, 75_600
    context = dit_forward(cfg, 0)
    assert dit_forward(cfg, tokens, shards=p) * p == dit_forward(cfg, tokens) + context * (p - 1)


@pytest.mark.parametrize("batch,length", [(2, 512), (1, 77)])
def test_umt5(batch, length):
    with torch.device("meta"):
        model = UMT5Encoder(UMT5_XXL)
        ids = torch.empty(batch, length, dtype=torch.long)
        got = measured(lambda: model(ids, ids))
    assert got == predicted(t5_forward(UMT5_XXL, length, batch))


def test_clip_vision_tower():
    """Wan's CLIP runs 31 of 32 ViT-H/14 blocks: a 31-layer CLIPVisionModel computes the same."""
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=31,
                                           num_attention_heads=16, image_size=224, patch_size=14,
                                           attn_implementation="sdpa")
    with torch.device("meta"):
        model = transformers.CLIPVisionModel(config)
        for images in (1, 2):
            got = measured(lambda: model(pixel_values=torch.empty(images, 3, 224, 224)))
            assert got == predicted(clip_forward(images)), images


@pytest.mark.parametrize("cfg", [VAE21, VAE22], ids=["vae2.1", "vae2.2"])
def test_vae_decode_encode_and_cache(cfg):
    s = cfg.spatial_stride
    with torch.device("meta"):
        vae = WanVAE(cfg)
        for b, t, h, w in ((1, 1, 4, 6), (2, 3, 6, 4)):
            got = measured(lambda: vae.decode(torch.empty(b, cfg.z_dim, t, h, w)))
            assert got == predicted(decode_cost(cfg, t, h, w, batch=b).ops), ("decode", b, t, h, w)
        got = measured(lambda: vae.encode(torch.empty(2, 3, 9, 6 * s, 4 * s)))
        assert got == predicted(encode_cost(cfg, 9, 6 * s, 4 * s, batch=2).ops)
    # the traced feat_cache slots are exactly the ones the reference carries between chunks
    dec = [tuple(x.shape) for x in vae.decoder_cache_spec((2, cfg.z_dim, 1, 6, 4))]
    enc = [tuple(x.shape) for x in vae.encoder_cache_spec((2, 3, 1, 6 * s, 4 * s))]
    assert decode_chunk(cfg, 6, 4, first=False, batch=2).cache == dec
    assert encode_chunk(cfg, 6 * s, 4 * s, first=False, batch=2).cache == enc
