"""The JSON side of a diffusers pipeline folder: component configs, the
scheduler, `model_index.json`, and the per-variant tables they come from.

Every value follows formats-diffusers.md sections 1-3 and the official Wan
settings, not the diffusers conversion script (section 6: wrong flow_shift,
boundary_ratio and Wan2.2 VAE config there). Pure data: no torch, no diffusers.
"""
from __future__ import annotations

import math

from wan_export.errors import UnsupportedError
from wan_export.model.config import DiTConfig, T5Config, VAEConfig
from wan_export.variants import Variant

# The oldest releases that load what we write: diffusers 0.35 brought Wan2.2
# (boundary_ratio, transformer_2, expand_timesteps, the 2.2 VAE without clip_output).
MIN_DIFFUSERS = "0.35.0"
MIN_TRANSFORMERS = "4.52.0"

# diffusers ModelMixin.save_pretrained and transformers PreTrainedModel.save_pretrained
# defaults ("10GB" / "50GB", decimal as huggingface_hub parses them).
DIFFUSERS_SHARD_BYTES = 10 * 10**9
TRANSFORMERS_SHARD_BYTES = 50 * 10**9

# Hub-like folder names (Wan-AI/<name>-Diffusers); I2V-14B cannot tell 480P from 720P by its weights.
HUB_NAMES = {
    "wan2.1-t2v-1.3b": "Wan2.1-T2V-1.3B", "wan2.1-t2v-14b": "Wan2.1-T2V-14B",
    "wan2.1-i2v-14b": "Wan2.1-I2V-14B", "wan2.1-flf2v-14b": "Wan2.1-FLF2V-14B-720P",
    "wan2.1-vace-1.3b": "Wan2.1-VACE-1.3B", "wan2.1-vace-14b": "Wan2.1-VACE-14B",
    "wan2.2-t2v-a14b": "Wan2.2-T2V-A14B", "wan2.2-i2v-a14b": "Wan2.2-I2V-A14B",
    "wan2.2-ti2v-5b": "Wan2.2-TI2V-5B",
}

# model_type -> (pipeline class, transformer class)
PIPELINES = {
    "t2v": ("WanPipeline", "WanTransformer3DModel"),
    "ti2v": ("WanPipeline", "WanTransformer3DModel"),
    "i2v": ("WanImageToVideoPipeline", "WanTransformer3DModel"),
    "flf2v": ("WanImageToVideoPipeline", "WanTransformer3DModel"),
    "vace": ("WanVACEPipeline", "WanVACETransformer3DModel"),
}
# pipeline class -> optional model_index entries its __init__ takes in MIN_DIFFUSERS
# (WanVACEPipeline got transformer_2 / boundary_ratio only later, and never expand_timesteps)
PIPELINE_ARGS = {
    "WanPipeline": ("transformer_2", "boundary_ratio", "expand_timesteps"),
    "WanImageToVideoPipeline": ("transformer_2", "boundary_ratio", "expand_timesteps", "image_encoder",
                                "image_processor"),
    "WanVACEPipeline": (),
}
# model_type -> expand_timesteps value (TI2V: per-token timesteps, first frame clean)
EXPANDS = {"ti2v": True}

SCHEDULER = {
    "_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction",
    "use_flow_sigmas": True, "num_train_timesteps": 1000, "solver_order": 2, "solver_type": "bh2",
    "predict_x0": True, "final_sigmas_type": "zero", "timestep_spacing": "linspace",
    "lower_order_final": True, "use_dynamic_shifting": False,
}

# version -> AutoencoderKLWan fields that differ between the 2.1 and 2.2 VAE (never clip_output)
VAE_FIELDS = {
    "2.1": {"is_residual": False, "patch_size": None},
    "2.2": {"is_residual": True, "patch_size": 2},
}

# CLIP width -> heads (shapes cannot tell). Released: ViT-H/14; other widths assume ViT-B/L's 64-wide heads.
CLIP_HEADS = {1280: 16}
CLIP_HEAD_DIM = 64
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

TORCH_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
               "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def _diffusers(cls: str, fields: dict) -> dict:
    return {"_class_name": cls, "_diffusers_version": MIN_DIFFUSERS, **fields}


def transformer_config(cfg: DiTConfig) -> dict:
    """WanTransformer3DModel / WanVACETransformer3DModel config of a stock DiT config."""
    fields = {
        "patch_size": list(cfg.patch_size), "num_attention_heads": cfg.num_heads,
        "attention_head_dim": cfg.head_dim, "in_channels": cfg.in_dim, "out_channels": cfg.out_dim,
        "text_dim": cfg.text_dim, "freq_dim": cfg.freq_dim, "ffn_dim": cfg.ffn_dim,
        "num_layers": cfg.num_layers, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
        "eps": cfg.eps, "rope_max_seq_len": 1024,
        # the 2.1 CLIP branch only; 2.2 I2V-A14B has in_dim 36 but no image branch
        "image_dim": cfg.clip_dim if cfg.image_branch else None,
        "added_kv_proj_dim": cfg.dim if cfg.image_branch else None,
        "pos_embed_seq_len": cfg.flf_pos_len or None,
    }
    if cfg.vace_layers:
        fields |= {"vace_layers": list(cfg.vace_layers), "vace_in_channels": cfg.vace_in_dim}
    return _diffusers(PIPELINES[cfg.model_type][1], fields)


def vae_config(cfg: VAEConfig) -> dict:
    """AutoencoderKLWan config; latents mean/std are carried for the pipelines to use."""
    return _diffusers("AutoencoderKLWan", {
        "base_dim": cfg.dim, "decoder_base_dim": None if cfg.dec_dim == cfg.dim else cfg.dec_dim,
        "z_dim": cfg.z_dim, "dim_mult": list(cfg.dim_mult), "num_res_blocks": cfg.num_res_blocks,
        "attn_scales": [], "temperal_downsample": list(cfg.temporal_downsample), "dropout": 0.0,
        "latents_mean": list(cfg.latents_mean), "latents_std": list(cfg.latents_std),
        "in_channels": cfg.in_channels, "out_channels": cfg.in_channels,
        "scale_factor_temporal": cfg.temporal_stride, "scale_factor_spatial": cfg.spatial_stride,
        **VAE_FIELDS[cfg.version],
    })


def text_encoder_config(c: T5Config, dtype: str) -> dict:
    """transformers UMT5EncoderModel config (google/umt5-xxl's, with the source's dims)."""
    return {
        "architectures": ["UMT5EncoderModel"], "model_type": "umt5",
        "vocab_size": c.vocab, "d_model": c.dim, "d_kv": c.dim_attn // c.num_heads, "d_ff": c.dim_ffn,
        "num_layers": c.num_layers, "num_decoder_layers": c.num_layers, "num_heads": c.num_heads,
        "relative_attention_num_buckets": c.num_buckets,
        "relative_attention_max_distance": c.max_distance, "layer_norm_epsilon": c.eps,
        # Wan's gated FFN: GELU(tanh) on wi_0 times wi_1
        "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": True,
        "is_encoder_decoder": True, "tie_word_embeddings": False, "use_cache": True,
        "dropout_rate": 0.1, "classifier_dropout": 0.0, "initializer_factor": 1.0,
        "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
        "tokenizer_class": "T5Tokenizer", "torch_dtype": TORCH_NAMES.get(dtype, "float32"),
        "transformers_version": MIN_TRANSFORMERS,
    }


def clip_shape_config(shapes: dict[str, tuple], path: str | None = None) -> dict:
    """Vision-tower dims from stock `visual.*` shapes (heads from CLIP_HEADS)."""
    hidden, _, patch, _ = shapes["visual.patch_embedding.weight"]
    grid = math.isqrt(shapes["visual.pos_embedding"][1] - 1)
    layers = len({k.split(".")[2] for k in shapes if k.startswith("visual.transformer.")})
    heads = CLIP_HEADS.get(hidden, hidden // CLIP_HEAD_DIM)
    if not heads or hidden % heads or grid * grid + 1 != shapes["visual.pos_embedding"][1]:
        raise UnsupportedError(f"CLIP vision tower of width {hidden} with "
                               f"{shapes['visual.pos_embedding'][1]} positions is not a ViT this tool knows", path)
    return {"hidden_size": hidden, "intermediate_size": shapes["visual.transformer.0.mlp.0.weight"][0],
            "num_attention_heads": heads, "num_hidden_layers": layers,
            "image_size": grid * patch, "patch_size": patch,
            "projection_dim": shapes["visual.head"][1] if "visual.head" in shapes else hidden}


def image_encoder_config(dims: dict, dtype: str) -> dict:
    """transformers CLIPVisionModel config. Wan's ViT uses exact GELU and LayerNorm eps 1e-5."""
    return {"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model", **dims,
            "num_channels": 3, "hidden_act": "gelu", "layer_norm_eps": 1e-5, "attention_dropout": 0.0,
            "initializer_factor": 1.0, "initializer_range": 0.02,
            "torch_dtype": TORCH_NAMES.get(dtype, "float32"), "transformers_version": MIN_TRANSFORMERS}


def image_processor_config(image_size: int) -> dict:
    """Wan's preprocessing: bicubic resize of the whole frame to a square, no crop (clip.py).

    diffusers' hub folders resize the short side and centre-crop instead (formats-diffusers.md 3.5).
    """
    square = {"height": image_size, "width": image_size}
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": square,
            "resample": 3, "do_center_crop": False, "crop_size": square, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": CLIP_MEAN,
            "image_std": CLIP_STD, "do_convert_rgb": True}


def scheduler_config(flow_shift: float) -> dict:
    return {**SCHEDULER, "_diffusers_version": MIN_DIFFUSERS, "flow_shift": float(flow_shift)}


def model_index(cfg: DiTConfig, variant: Variant, *, experts: bool, clip: bool) -> dict:
    """model_index.json: pipeline class, components, boundary_ratio / expand_timesteps."""
    pipeline, transformer = PIPELINES[cfg.model_type]
    optional = {
        "transformer_2": ["diffusers", transformer] if experts else [None, None],
        "boundary_ratio": variant.boundary_ratio if experts else None,
        "expand_timesteps": EXPANDS.get(cfg.model_type, False),
        "image_encoder": ["transformers", "CLIPVisionModel"] if clip else [None, None],
        # spelled out: transformers 5 without torchvision would write "CLIPImageProcessorPil"
        "image_processor": ["transformers", "CLIPImageProcessor"] if clip else [None, None],
    }
    if experts and "transformer_2" not in PIPELINE_ARGS[pipeline]:
        raise UnsupportedError(f"{pipeline} takes no second expert in diffusers {MIN_DIFFUSERS}")
    return _diffusers(pipeline, {
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
        "transformer": ["diffusers", transformer],
        "vae": ["diffusers", "AutoencoderKLWan"],
        **{k: optional[k] for k in PIPELINE_ARGS[pipeline]},
    })


def default_name(variant: Variant | None, transformer_only: bool = False) -> str:
    stem = HUB_NAMES.get(variant.name, variant.name) if variant else "Wan"
    return f"{stem}-Diffusers" + ("-transformer" if transformer_only else "")
