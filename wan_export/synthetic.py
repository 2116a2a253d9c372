"""Tiny, architecture-faithful synthetic Wan weights: the one fixture factory.

Used by the test suite and by `wan-export demo`. Tiny DiTs keep dim 256 (two
heads of 128, which ComfyUI assumes) and text_dim 4096. Weights are random but
well-scaled (fan-in init, norms near 1) so parity tests are not vacuous.
`write_release` lays out an official-style release folder (DiT shards, VAE,
UMT5 + tokenizer, CLIP + tokenizer) for any variant.
Deterministic: the same arguments give the same bytes.
"""
from __future__ import annotations

import functools
import io
import json
import math
import os
import zlib
from dataclasses import dataclass, replace

import numpy as np

from wan_export.dtypes import ST_TO_NP
from wan_export.errors import BadInputError
from wan_export.model.config import (TEXT_LEN, WAN22_LATENT_MEAN, WAN22_LATENT_STD, DiTConfig,
                                     T5Config, VAEConfig)
from wan_export.variants import EXPERTS, VARIANTS, dit_shapes

TINY_DIM, TINY_FFN, TINY_LAYERS = 256, 512, 2
TOKENIZER_VOCAB = 384          # pieces in each tiny sentencepiece model (hard limit, so it never drifts)


def tiny_dit_config(variant: str) -> DiTConfig:
    """The released variant's config shrunk to dim 256, 2 heads, 2 layers (VACE: hints on both)."""
    c = VARIANTS[variant].config
    vace = (0, 1) if c.vace_layers else ()
    return replace(c, dim=TINY_DIM, ffn_dim=TINY_FFN, num_heads=TINY_DIM // 128,
                   num_layers=TINY_LAYERS, vace_layers=vace)


def tiny_vae_config(version: str = "2.1") -> VAEConfig:
    """Wan VAE with base dim 16 (2.2: decoder 32, z 48 and the 2.2 latent statistics)."""
    if version == "2.1":
        return VAEConfig(version="2.1", dim=16, dec_dim=16, z_dim=16)
    if version == "2.2":
        return VAEConfig(version="2.2", dim=16, dec_dim=32, z_dim=48,
                         latents_mean=WAN22_LATENT_MEAN, latents_std=WAN22_LATENT_STD)
    raise BadInputError(f"unknown VAE version {version!r} (expected 2.1 or 2.2)")


def tiny_t5_config() -> T5Config:
    """UMT5 encoder whose vocabulary is exactly the tiny tokenizer's, 4096 wide like UMT5-XXL (the
    DiT's text_dim, so the whole text path runs) with narrow attention and FFN."""
    return T5Config(vocab=TOKENIZER_VOCAB, dim=4096, dim_attn=32, dim_ffn=32, num_heads=4,
                    num_layers=2, num_buckets=32)


@dataclass(frozen=True)
class CLIPConfig:
    """XLM-RoBERTa CLIP ViT-H/14 in the official naming (full size: 1280 / 32 / 1024 / 24)."""

    vision_dim: int = 1280         # the DiT's img_emb takes 1280-wide features (ComfyUI hard-codes it)
    vision_layers: int = 2
    vision_mlp: int = 256          # full size: 4 x 1280; narrow here to keep the tiny file small
    patch: int = 14
    image_size: int = 224          # 16x16 patches + cls = 257 tokens, as FLF2V's emb_pos expects (x2)
    text_dim: int = 32
    text_layers: int = 2
    text_len: int = 32             # positions = text_len + 2, as XLM-R's 514
    vocab: int = TOKENIZER_VOCAB + 2   # HF XLM-R adds <pad> and <mask> to the sentencepiece pieces
    embed_dim: int = 32


def tiny_clip_config() -> CLIPConfig:
    return CLIPConfig()


def _init(name: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    if not shape:                               # CLIP log_scale: the usual log(1/0.07)
        return np.full(shape, math.log(1 / 0.07))
    if name.endswith("modulation"):
        return rng.standard_normal(shape) * 0.1
    if name.endswith("emb_pos"):
        return rng.standard_normal(shape) * 0.05
    if len(shape) == 1:
        if ("norm" in name or "gamma" in name) and name.endswith(("weight", "gamma")):
            return 1.0 + 0.1 * rng.standard_normal(shape)
        return 0.02 * rng.standard_normal(shape)
    fan_in = math.prod(shape[1:]) or 1
    if "gamma" in name:
        return 1.0 + 0.1 * rng.standard_normal(shape)
    return rng.standard_normal(shape) / math.sqrt(fan_in)


def random_state(shapes: dict[str, tuple], seed: int = 0, dtype: str = "F32") -> dict[str, np.ndarray]:
    """Random weights for a key -> shape table; each tensor seeded by (seed, name)."""
    out = {}
    for name, shape in shapes.items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        out[name] = _init(name, tuple(shape), rng).astype(np.float32).astype(ST_TO_NP[dtype])
    return out


def dit_state(cfg: DiTConfig, seed: int = 0, dtype: str = "F32") -> dict[str, np.ndarray]:
    return random_state(dit_shapes(cfg), seed, dtype)


def vae_state(cfg: VAEConfig, seed: int = 0, dtype: str = "F32") -> dict[str, np.ndarray]:
    return random_state(_vae_shapes(cfg), seed, dtype)


@functools.lru_cache(maxsize=None)
def _vae_shapes(cfg: VAEConfig) -> dict[str, tuple]:
    from wan_export.components import vae_shapes

    return vae_shapes(cfg)     # builds the reference VAE on meta: worth doing once


def t5_state(cfg: T5Config | None = None, seed: int = 0, dtype: str = "BF16") -> dict[str, np.ndarray]:
    from wan_export.components import t5_shapes

    return random_state(t5_shapes(cfg or tiny_t5_config()), seed, dtype)


def clip_shapes(c: CLIPConfig) -> dict[str, tuple]:
    """Keys and shapes of the official Wan CLIP `.pth` (fused `attn.to_qkv`), in file order."""
    v, t = c.vision_dim, c.text_dim
    mid = (t + c.embed_dim) // 2
    rows = [("log_scale", ()), ("visual.cls_embedding", (1, 1, v)),
            ("visual.pos_embedding", (1, (c.image_size // c.patch) ** 2 + 1, v)),
            ("visual.head", (v, c.embed_dim)), ("visual.patch_embedding.weight", (v, 3, c.patch, c.patch))]
    rows += _affine("visual.pre_norm", v)
    for i in range(c.vision_layers):
        p = f"visual.transformer.{i}"
        rows += _affine(f"{p}.norm1", v) + _linear(f"{p}.attn.to_qkv", 3 * v, v)
        rows += _linear(f"{p}.attn.proj", v, v) + _affine(f"{p}.norm2", v)
        rows += _linear(f"{p}.mlp.0", c.vision_mlp, v) + _linear(f"{p}.mlp.2", v, c.vision_mlp)
    rows += _affine("visual.post_norm", v)
    rows += [("textual.token_embedding.weight", (c.vocab, t)), ("textual.type_embedding.weight", (1, t)),
             ("textual.pos_embedding.weight", (c.text_len + 2, t))]
    for i in range(c.text_layers):
        p = f"textual.blocks.{i}"
        for x in "qkvo":
            rows += _linear(f"{p}.attn.{x}", t, t)
        rows += _affine(f"{p}.norm1", t) + _linear(f"{p}.ffn.0", 4 * t, t)
        rows += _linear(f"{p}.ffn.2", t, 4 * t) + _affine(f"{p}.norm2", t)
    rows += _affine("textual.norm", t)
    rows += [("textual.head.0.weight", (mid, t)), ("textual.head.2.weight", (c.embed_dim, mid))]
    return dict(rows)


def _linear(p: str, out: int, inp: int) -> list[tuple[str, tuple]]:
    return [(f"{p}.weight", (out, inp)), (f"{p}.bias", (out,))]


def _affine(p: str, n: int) -> list[tuple[str, tuple]]:
    return [(f"{p}.weight", (n,)), (f"{p}.bias", (n,))]


def clip_state(cfg: CLIPConfig | None = None, seed: int = 0, dtype: str = "F32") -> dict[str, np.ndarray]:
    return random_state(clip_shapes(cfg or tiny_clip_config()), seed, dtype)


def write_safetensors(path: str, state: dict[str, np.ndarray], metadata: dict | None = None) -> str:
    """Write a small in-memory state dict with our streaming writer."""
    from wan_export.dtypes import st_code
    from wan_export.safetensors_io import SafetensorsWriter, TensorInfo

    infos = [TensorInfo(k, tuple(v.shape), st_code(v)) for k, v in state.items()]
    with SafetensorsWriter(path, infos, metadata) as w:
        for k, v in state.items():
            w.write(k, v)
    return path


def write_pth(path: str, state: dict[str, np.ndarray]) -> str:
    """torch.save a plain state dict (loads with weights_only=True), atomically.

    Saving through a file object names the archive root "archive", so the bytes
    depend on the tensors only, never on the (temporary) file name.
    """
    import torch

    from wan_export.atomic import atomic_file
    from wan_export.dtypes import to_torch

    with atomic_file(path) as f:
        torch.save({k: to_torch(v) for k, v in state.items()}, f)
    return path


# ---- tokenizers -------------------------------------------------------------

CORPUS = """\
A cat walks on the grass, realistic style.
Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage.
A young woman with long flowing hair turns to face the camera, soft light, cinematic.
Summer beach vacation style, a white cat wearing sunglasses sits on a surfboard.
The camera slowly pans across a misty mountain lake at sunrise.
An astronaut rides a horse across the surface of the moon, high detail.
A red sports car drives along a coastal road, drone shot, golden hour.
Close-up of raindrops falling on green leaves, slow motion, shallow depth of field.
A chef chops vegetables in a busy kitchen while steam rises from the pots.
An old fisherman mends his nets on a wooden pier as seagulls circle overhead.
Neon signs flicker in a rainy cyberpunk street at night, people with umbrellas hurry past.
A hummingbird hovers beside a purple flower, its wings a blur.
Children fly colourful kites on a windy hill under a cloudy sky.
A steam locomotive crosses a stone viaduct through autumn forests.
Waves crash against black volcanic rocks, spray glittering in the sunlight.
A panda eats bamboo in a quiet bamboo grove, documentary footage.
Time-lapse of city traffic at dusk, headlights streaming along the highway.
A ballet dancer spins gracefully on an empty stage lit by a single spotlight.
Snow falls gently on a small village with warm windows glowing.
A golden retriever puppy chases a ball across a sunny backyard.
Vibrant colors, overexposed, static, blurry details, subtitles, style, artwork, painting, still image.
Worst quality, low quality, JPEG compression artifacts, ugly, incomplete, extra fingers, poorly drawn hands.
Poorly drawn face, deformed, disfigured, malformed limbs, fused fingers, messy background, three legs.
Many people in the background, walking backwards, still picture, overall gray.
色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，
JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，
手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走。镜头晃动，镜头切换。
Un chat marche sur l'herbe au coucher du soleil. Ein Hund läuft durch den Park.
Un gato duerme junto a la ventana mientras llueve. Кошка сидит на подоконнике.
"""

_UMT5_SPECIALS = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
_XLMR_SPECIALS = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "mask_token": "<mask>",
                  "pad_token": "<pad>", "sep_token": "</s>", "unk_token": "<unk>"}
# kind -> (model file, sentencepiece trainer options, tokenizer_config.json, special_tokens_map.json)
TOKENIZERS = {
    "umt5": ("spiece.model", {"model_type": "unigram", "pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": -1},
             {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "additional_special_tokens": [],
              "model_max_length": TEXT_LEN, **_UMT5_SPECIALS}, _UMT5_SPECIALS),
    # the fairseq convention of xlm-roberta-large's sentencepiece.bpe.model; HF adds <pad>, <mask>
    "xlmr": ("sentencepiece.bpe.model", {"model_type": "bpe", "unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1},
             {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512, **_XLMR_SPECIALS},
             _XLMR_SPECIALS),
}


@functools.lru_cache(maxsize=None)
def tokenizer_model(kind: str = "umt5") -> bytes:
    """A tiny sentencepiece model trained in-process on CORPUS (same bytes every run)."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines()), model_writer=out, vocab_size=TOKENIZER_VOCAB,
        hard_vocab_limit=True, character_coverage=1.0, num_threads=1, shuffle_input_sentence=False,
        minloglevel=2, **TOKENIZERS[kind][1])
    return out.getvalue()


def write_tokenizer(folder: str, kind: str = "umt5") -> str:
    """A tokenizer folder like `google/umt5-xxl/` (kind umt5) or `xlm-roberta-large/` (xlmr)."""
    model_file, _, config, special = TOKENIZERS[kind]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, model_file), "wb") as f:
        f.write(tokenizer_model(kind))
    _write_json(os.path.join(folder, "tokenizer_config.json"), config)
    _write_json(os.path.join(folder, "special_tokens_map.json"), special)
    return folder


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


# ---- official release folders -------------------------------------------------

T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
VAE_FILES = {"2.1": "Wan2.1_VAE.pth", "2.2": "Wan2.2_VAE.pth"}
DIT_STEM = "diffusion_pytorch_model"


def hub_config(cfg: DiTConfig) -> dict:
    """The DiT `config.json` as published (ignore_for_config keys left out)."""
    d = {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": cfg.dim, "eps": cfg.eps,
         "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "in_dim": cfg.in_dim,
         "model_type": cfg.model_type, "num_heads": cfg.num_heads, "num_layers": cfg.num_layers,
         "out_dim": cfg.out_dim, "text_len": TEXT_LEN}
    if cfg.vace_layers:
        d.update(_class_name="VaceWanModel", vace_layers=list(cfg.vace_layers), vace_in_dim=cfg.vace_in_dim)
    return d


def _shard_groups(state: dict[str, np.ndarray], shards: int) -> list[list[str]]:
    """Consecutive groups of about equal bytes, none empty."""
    names = list(state)
    if not 1 <= shards <= len(names):
        raise BadInputError(f"cannot split {len(names)} tensors into {shards} shards")
    target = sum(a.nbytes for a in state.values()) / shards
    groups: list[list[str]] = [[]]
    done = 0
    for i, name in enumerate(names):
        must_move = len(names) - i <= shards - len(groups)
        if groups[-1] and len(groups) < shards and (done >= target * len(groups) or must_move):
            groups.append([])
        groups[-1].append(name)
        done += state[name].nbytes
    return groups


def write_dit_folder(folder: str, cfg: DiTConfig, *, seed: int = 0, dtype: str = "BF16",
                     shards: int = 2) -> list[str]:
    """config.json plus one DiT file, or `-0000k-of-0000n` shards and their index.json."""
    os.makedirs(folder, exist_ok=True)
    state = dit_state(cfg, seed, dtype)
    _write_json(os.path.join(folder, "config.json"), hub_config(cfg))
    meta = {"format": "pt"}
    if shards == 1:
        return [write_safetensors(os.path.join(folder, f"{DIT_STEM}.safetensors"), state, meta)]
    groups = _shard_groups(state, shards)
    paths, weight_map = [], {}
    for k, names in enumerate(groups, 1):
        name = f"{DIT_STEM}-{k:05d}-of-{len(groups):05d}.safetensors"
        paths.append(write_safetensors(os.path.join(folder, name), {n: state[n] for n in names}, meta))
        weight_map.update(dict.fromkeys(names, name))
    index = {"metadata": {"total_size": sum(a.nbytes for a in state.values())},
             "weight_map": dict(sorted(weight_map.items()))}
    _write_json(os.path.join(folder, f"{DIT_STEM}.safetensors.index.json"), index)
    return paths


def write_release(folder: str, variant: str, *, seed: int = 0, dtype: str = "BF16", shards: int = 2) -> str:
    """An official-style release folder of `variant` with tiny weights; returns the folder.

    DiT shards + index + config.json (A14B: in high_noise_model/ and
    low_noise_model/, seeds differ), the VAE it pairs with (fp32), the bf16
    UMT5 encoder and `google/umt5-xxl/`; 2.1 I2V/FLF2V add the fp32 CLIP and
    `xlm-roberta-large/`.
    """
    if variant not in VARIANTS:
        raise BadInputError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    v, cfg = VARIANTS[variant], tiny_dit_config(variant)
    os.makedirs(folder, exist_ok=True)
    if v.experts:
        for k, expert in enumerate(EXPERTS):
            write_dit_folder(os.path.join(folder, f"{expert}_model"), cfg, seed=seed + k, dtype=dtype,
                             shards=shards)
    else:
        write_dit_folder(folder, cfg, seed=seed, dtype=dtype, shards=shards)
    write_pth(os.path.join(folder, VAE_FILES[v.vae]), vae_state(tiny_vae_config(v.vae), seed))
    write_pth(os.path.join(folder, T5_FILE), t5_state(tiny_t5_config(), seed))
    write_tokenizer(os.path.join(folder, "google", "umt5-xxl"), "umt5")
    if cfg.image_branch:
        write_pth(os.path.join(folder, CLIP_FILE), clip_state(tiny_clip_config(), seed))
        write_tokenizer(os.path.join(folder, "xlm-roberta-large"), "xlmr")
    return folder


def write_image(path: str, width: int, height: int, seed: int = 0) -> str:
    """A smooth synthetic RGB frame (gradients plus noise) as PNG, for image-conditioned variants."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    rgb = np.stack([xx, yy, 1 - xx * yy], -1) * 200 + rng.normal(0, 12, (height, width, 3))
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path)
    return path
