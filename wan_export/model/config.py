"""Configs of the Wan modules: DiT, VAE (2.1 / 2.2) and UMT5 encoder.

Frozen dataclasses with any dims, so tiny test models and fine-tunes work the
same as the released ones. `variants.py` infers these from tensor shapes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

HEAD_DIM = 128          # every released Wan DiT; ComfyUI assumes it (num_heads = dim // 128)
TEXT_DIM = 4096         # UMT5-XXL width; ComfyUI hard-codes it
TEXT_LEN = 512
CLIP_DIM = 1280
CLIP_TOKENS = 257       # ViT-H/14 at 224 px, 31st block output
FREQ_DIM = 256
VACE_IN_DIM = 96


@dataclass(frozen=True)
class DiTConfig:
    """Shape of a Wan diffusion transformer.

    model_type follows the official code: t2v, i2v, flf2v, vace, ti2v.
    `image_branch` is the Wan2.1 CLIP branch (img_emb, k_img/v_img); Wan2.2
    I2V-A14B has model_type i2v with in_dim 36 but no image branch.
    """

    model_type: str = "t2v"
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = TEXT_DIM
    freq_dim: int = FREQ_DIM
    eps: float = 1e-6
    patch_size: tuple[int, int, int] = (1, 2, 2)
    image_branch: bool = False
    flf_pos_len: int = 0                      # 514 for FLF2V (img_emb.emb_pos)
    vace_layers: tuple[int, ...] = ()
    vace_in_dim: int = VACE_IN_DIM
    clip_dim: int = CLIP_DIM

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of num_heads {self.num_heads}")
        if self.model_type not in ("t2v", "i2v", "flf2v", "vace", "ti2v"):
            raise ValueError(f"unknown model_type {self.model_type!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def is_vace(self) -> bool:
        return bool(self.vace_layers)

    @property
    def clip_tokens(self) -> int:
        """Image tokens the CLIP branch takes: 257, or 514 for FLF2V."""
        return self.flf_pos_len or CLIP_TOKENS

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        d["vace_layers"] = list(self.vace_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DiTConfig":
        d = dict(d)
        d["patch_size"] = tuple(d.get("patch_size", (1, 2, 2)))
        d["vace_layers"] = tuple(d.get("vace_layers", ()))
        return cls(**d)


WAN21_LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
WAN22_LATENT_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542,
    0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109,
    0.2665, -0.2108, -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899,
    -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
WAN22_LATENT_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344,
    0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804,
    0.5833, 1.4146, 0.8986, 0.5659, 0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999,
    0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)


@dataclass(frozen=True)
class VAEConfig:
    """Shape of a Wan causal 3D VAE. version '2.1' (z16, stride 8) or '2.2' (z48, stride 16)."""

    version: str = "2.1"
    dim: int = 96                   # encoder base dim (2.2: 160)
    dec_dim: int = 96               # decoder base dim (2.2: 256)
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    latents_mean: tuple[float, ...] = field(default=WAN21_LATENT_MEAN)
    latents_std: tuple[float, ...] = field(default=WAN21_LATENT_STD)

    def __post_init__(self):
        if self.version not in ("2.1", "2.2"):
            raise ValueError(f"unknown VAE version {self.version!r}")
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError("latents_mean/std must have z_dim entries")

    @property
    def in_channels(self) -> int:
        """Channels the encoder's conv1 sees: 3, or 12 after 2.2's 2x2 space-to-depth."""
        return 3 if self.version == "2.1" else 12

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.dim_mult) - 1) * (1 if self.version == "2.1" else 2)

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("dim_mult", "temporal_downsample", "latents_mean", "latents_std"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VAEConfig":
        d = dict(d)
        for k in ("dim_mult", "temporal_downsample", "latents_mean", "latents_std"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


VAE21 = VAEConfig()
VAE22 = VAEConfig(version="2.2", dim=160, dec_dim=256, z_dim=48,
                  latents_mean=WAN22_LATENT_MEAN, latents_std=WAN22_LATENT_STD)


@dataclass(frozen=True)
class T5Config:
    """Shape of the UMT5 encoder (Wan's `t5.py` T5Encoder): gated tanh-GELU, no 1/sqrt(d)."""

    vocab: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "T5Config":
        return cls(**d)


UMT5_XXL = T5Config()
