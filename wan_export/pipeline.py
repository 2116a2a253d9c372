"""The official Wan text/image-to-video pipeline on the reference models.

`official_settings(variant)` gives Wan's own sampling settings
(wan-architecture.md 4), `load_pipeline(src)` builds the reference DiT(s), VAE,
UMT5 (+ tokenizer) and CLIP of any release, `encode_prompts` runs the text
path as Wan does, and `generate` samples latents with CFG, the A14B expert
switch and every variant's conditioning. The DiT modules in `Pipeline.dits`
are the ones that run, so forward hooks on them see every step and branch.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field, replace

import torch

from wan_export.errors import BadInputError
from wan_export.model.config import TEXT_LEN
from wan_export.variants import VARIANTS, Variant

NEGATIVE_PROMPT = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
                   "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
                   "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")
# variant -> (frames, (width, height), prefix of the negative prompt); steps, shift, guidance and
# boundary come from variants.VARIANTS
OFFICIAL = {
    "wan2.1-t2v-1.3b": (81, (832, 480), ""),
    "wan2.1-t2v-14b": (81, (1280, 720), ""),
    "wan2.1-i2v-14b": (81, (1280, 720), "镜头晃动，"),
    "wan2.1-flf2v-14b": (81, (1280, 720), "镜头切换，"),
    "wan2.1-vace-1.3b": (81, (832, 480), ""),
    "wan2.1-vace-14b": (81, (1280, 720), ""),
    "wan2.2-t2v-a14b": (81, (1280, 720), ""),
    "wan2.2-i2v-a14b": (81, (1280, 720), ""),
    "wan2.2-ti2v-5b": (121, (1280, 704), ""),
}
I2V_480P_SHIFT = 3.0          # Wan2.1 generate.py: i2v at 832*480 / 480*832 samples with shift 3
SLOTS = {"dit": "dit", "dit.high_noise": "high_noise_model", "dit.low_noise": "low_noise_model"}
IMAGE_VARIANTS = ("i2v", "flf2v")            # model types that need an image


@dataclass(frozen=True)
class SampleSettings:
    """One sampling run. guidance is a float, or (low, high) for A14B's two experts."""

    steps: int
    width: int
    height: int
    frames: int
    guidance: float | tuple[float, float]
    shift: float
    boundary_ratio: float | None = None
    solver: str = "unipc"
    seed: int = 0
    negative_prompt: str = NEGATIVE_PROMPT
    grid: str = "wan"                 # sigma grid: "wan" (official) or "diffusers"

    def __post_init__(self):
        if self.steps < 1:
            raise BadInputError(f"steps must be at least 1, got {self.steps}")
        if self.frames < 1 or (self.frames - 1) % 4:
            raise BadInputError(f"frames must be 4k+1 (1, 5, 9, ..., 81), got {self.frames}")
        if self.solver not in ("unipc", "euler"):
            raise BadInputError(f"unknown solver {self.solver!r} (unipc or euler)")

    def guide(self, slot: str) -> float:
        """The guide scale of an expert slot: (low, high) pairs pick by slot."""
        if isinstance(self.guidance, (int, float)):
            return float(self.guidance)
        low, high = self.guidance
        return float(high if slot == "high_noise_model" else low)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["guidance"] = list(d["guidance"]) if isinstance(d["guidance"], tuple) else d["guidance"]
        return d


def official_settings(variant_id: str, **overrides) -> SampleSettings:
    """Wan's settings for a variant (wan-architecture.md 4); keyword overrides win."""
    if variant_id not in VARIANTS:
        raise BadInputError(f"unknown variant {variant_id!r}; known: {', '.join(VARIANTS)}")
    v = VARIANTS[variant_id]
    frames, (width, height), neg_prefix = OFFICIAL[variant_id]
    guidance = v.guidance if len(v.guidance) == 2 else v.guidance[0]
    base = dict(steps=v.steps, width=width, height=height, frames=frames, guidance=guidance,
                shift=v.flow_shift, boundary_ratio=v.boundary_ratio, negative_prompt=neg_prefix + NEGATIVE_PROMPT)
    base.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(base["guidance"], list):
        base["guidance"] = tuple(base["guidance"])
    if (variant_id == "wan2.1-i2v-14b" and overrides.get("shift") is None
            and {base["width"], base["height"]} == {832, 480}):
        base["shift"] = I2V_480P_SHIFT
    return SampleSettings(**base)


@dataclass
class Pipeline:
    dits: dict[str, torch.nn.Module]
    vae: torch.nn.Module
    t5: torch.nn.Module | None
    tokenizer: object | None
    clip: torch.nn.Module | None
    variant: str                      # variant id, e.g. wan2.1-t2v-1.3b
    source: str = ""
    device: str = "cpu"
    extras: dict = field(default_factory=dict)

    @property
    def info(self) -> Variant:
        return VARIANTS[self.variant]

    @property
    def config(self):
        return next(iter(self.dits.values())).cfg

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this: VAE stride x patch."""
        return self.vae.cfg.spatial_stride * self.config.patch_size[1]


_DTYPE_CODES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def _state(comp, dtype: torch.dtype, device) -> dict:
    from wan_export.validators.parity import torch_state

    return {k: v.to(device) for k, v in torch_state(comp.table, dtype=_DTYPE_CODES[dtype]).items()}


def load_pipeline(src, device="cpu", dtype: torch.dtype = torch.float32, text: bool = True,
                  dit_loader=None) -> Pipeline:
    """Build the reference pipeline of a release (any input `release.open_input` reads).

    text=False skips UMT5 and the tokenizer (the caller brings precomputed context).
    `dit_loader(slot, component) -> stock state dict` overrides where DiT weights come from
    (the sampling validator loads an artifact's weights this way). The VAE and CLIP run in fp32.
    """
    from wan_export.model.dit import load_dit
    from wan_export.model.vae import load_vae
    from wan_export.release import open_input

    if dtype not in _DTYPE_CODES:
        raise BadInputError(f"unsupported dtype {dtype} (float32, bfloat16 or float16)")
    rel = open_input(str(src)) if not hasattr(src, "components") else src
    if not rel.dits:
        raise BadInputError("no DiT in this source", rel.path)
    variant = rel.variant
    dits = {}
    for slot, comp in sorted(rel.dits.items()):
        weights = dit_loader(SLOTS[slot], comp) if dit_loader else _state(comp, dtype, "cpu")
        dits[SLOTS[slot]] = load_dit(weights, comp.config, dtype=dtype, device=device)
    if "vae" not in rel.components:
        raise BadInputError("no VAE (Wan2.1_VAE.pth / Wan2.2_VAE.pth) in this source", rel.path)
    vae_comp = rel.components["vae"]
    vae = load_vae(_state(vae_comp, torch.float32, "cpu"), vae_comp.config).to(device)
    t5 = tokenizer = None
    if text:
        t5, tokenizer = _load_text(rel, dtype, device)
    clip = _load_clip(rel, device) if next(iter(dits.values())).cfg.image_branch else None
    pipe = Pipeline(dits, vae, t5, tokenizer, clip, variant.name if variant else "", rel.path, str(device))
    _check_pairing(pipe, rel.path)
    return pipe


def _load_text(rel, dtype, device):
    from wan_export.model.t5 import load_t5

    missing = [what for ok, what in ((("t5" in rel.components), "no UMT5 text encoder "
                                      "(models_t5_umt5-xxl-enc-bf16.pth)"),
                                     (rel.tokenizer_dir is not None, "no UMT5 tokenizer folder "
                                      "(google/umt5-xxl with spiece.model)")) if not ok]
    if missing:
        raise BadInputError("; ".join(missing) + ": supply precomputed prompt embeddings instead", rel.path)
    comp = rel.components["t5"]
    t5 = load_t5(_state(comp, dtype, "cpu"), comp.config, dtype=dtype).to(device)
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(rel.tokenizer_dir, local_files_only=True)
    except (ImportError, OSError, ValueError) as e:
        raise BadInputError(f"cannot load the UMT5 tokenizer ({e})", rel.tokenizer_dir) from None
    return t5, tokenizer


def _load_clip(rel, device):
    if "clip" not in rel.components:
        raise BadInputError("no CLIP image encoder (models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth), "
                            "which Wan2.1 I2V/FLF2V needs", rel.path)
    from wan_export.model.clip import load_clip_visual

    from wan_export.validators.parity import torch_state

    table = rel.components["clip"].table
    visual = [n for n in table.names() if n.startswith("visual.")]      # the text tower never runs
    return load_clip_visual(torch_state(table, names=set(visual))).to(device)


def _check_pairing(pipe: Pipeline, path: str) -> None:
    cfg = pipe.config
    if pipe.vae.cfg.z_dim != cfg.out_dim:
        raise BadInputError(f"the VAE has {pipe.vae.cfg.z_dim} latent channels but the DiT {cfg.out_dim}", path)
    if pipe.t5 is not None and pipe.t5.cfg.dim != cfg.text_dim:
        raise BadInputError(f"the UMT5 encoder is {pipe.t5.cfg.dim} wide but the DiT takes {cfg.text_dim}: "
                            "supply precomputed prompt embeddings instead", path)


# ---- text ---------------------------------------------------------------------

def clean_prompt(text: str) -> str:
    """Wan's `clean='whitespace'`: ftfy + HTML unescape, then collapse whitespace."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:                # ftfy ships with the [diffusers] extra; ASCII prompts need none
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def encode_prompts(pipe: Pipeline, prompts: list[str]) -> list[torch.Tensor]:
    """UMT5 embeddings [L_i, 4096] per prompt, trimmed to each prompt's true length (as Wan)."""
    if pipe.t5 is None or pipe.tokenizer is None:
        raise BadInputError("this pipeline has no UMT5 encoder/tokenizer: supply precomputed prompt embeddings",
                            pipe.source or None)
    out = []
    device = next(pipe.t5.parameters()).device
    for prompt in prompts:
        tok = pipe.tokenizer([clean_prompt(prompt)], return_tensors="pt", padding="max_length",
                             truncation=True, max_length=TEXT_LEN, add_special_tokens=True)
        ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)
        with torch.no_grad():
            ctx = pipe.t5(ids, mask)
        out.append(ctx[0, : int(mask.sum())].float())
    return out


def pad_context(context: torch.Tensor, width: int) -> torch.Tensor:
    """[L, D] (or [1, L, D]) -> [1, 512, D], zero rows after the prompt, as the official DiT pads."""
    if isinstance(context, (list, tuple)):
        if len(context) != 1:
            raise BadInputError(f"generate samples one prompt at a time, got {len(context)} contexts")
        context = context[0]
    context = context[0] if context.dim() == 3 else context
    if context.dim() != 2 or context.shape[1] != width:
        raise BadInputError(f"prompt embeddings must be [L, {width}], got {list(context.shape)}")
    if context.shape[0] > TEXT_LEN:
        raise BadInputError(f"prompt embeddings have {context.shape[0]} rows, more than {TEXT_LEN}")
    out = context.new_zeros(1, TEXT_LEN, width)
    out[0, : context.shape[0]] = context
    return out


# ---- sampling -------------------------------------------------------------------

def latent_shape(pipe: Pipeline, s: SampleSettings) -> tuple[int, int, int, int, int]:
    """[1, z, T_lat, H/stride, W/stride], after checking the size fits the VAE and patching."""
    m = pipe.size_multiple
    if s.width % m or s.height % m or s.width < m or s.height < m:
        raise BadInputError(f"size {s.width}x{s.height} does not fit this model: width and height must be "
                            f"multiples of {m} (VAE stride {pipe.vae.cfg.spatial_stride} x patch "
                            f"{pipe.config.patch_size[1]})")
    st = pipe.vae.cfg.spatial_stride
    return (1, pipe.vae.cfg.z_dim, (s.frames - 1) // pipe.vae.cfg.temporal_stride + 1, s.height // st, s.width // st)


def initial_noise(pipe: Pipeline, s: SampleSettings) -> torch.Tensor:
    """float32 randn from a generator seeded with `seed` (Wan seeds a CUDA generator; ours is CPU)."""
    g = torch.Generator().manual_seed(s.seed)
    return torch.randn(latent_shape(pipe, s), generator=g, dtype=torch.float32)


def expert_for(pipe: Pipeline, s: SampleSettings, t: int) -> str:
    """A14B: the high-noise expert while t >= boundary * 1000, else the low-noise one."""
    if len(pipe.dits) == 1:
        return next(iter(pipe.dits))
    if s.boundary_ratio is None:
        raise BadInputError("an A14B pipeline needs settings with boundary_ratio")
    return "high_noise_model" if t >= s.boundary_ratio * 1000 else "low_noise_model"


def generate(pipe: Pipeline, context, negative_context, settings: SampleSettings, *, image=None,
             last_image=None, vace=None, noise=None, on_step=None, progress=None,
             solver=None) -> torch.Tensor:
    """Sample the final latents [1, z, T_lat, h, w] (float32) of one prompt.

    context / negative_context: [L, 4096] embeddings (encode_prompts). image / last_image:
    [3, H, W] in [-1, 1] (I2V, FLF2V, TI2V). vace: a precomputed [1, 96, T_lat, h, w] context or
    a dict(frames=[3, F, H, W], mask=[F, H, W]); None means Wan's pure-generation context.
    on_step(index, timestep, slot, latents) runs after every step; progress(n) advances a bar.
    solver: an object with `timesteps` and `step(velocity, latents)` replacing the settings' solver
    (the sampling validator runs a diffusers folder's own scheduler this way).
    """
    from wan_export.sampling_loop import run_loop

    return run_loop(pipe, context, negative_context, settings, image=image, last_image=last_image,
                    vace=vace, noise=noise, on_step=on_step, progress=progress, solver=solver)


def decode(pipe: Pipeline, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> video [1, 3, F, H, W] in [-1, 1] through the pipeline's VAE (fp32)."""
    with torch.no_grad():
        return pipe.vae.decode(latents.to(pipe.vae.device, pipe.vae.dtype), normalize=True)


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'832x480' (or '832*480', Wan's spelling) -> (width, height)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[x*X]\s*(\d+)\s*", text)
    if not m:
        raise BadInputError(f"size must be WxH (e.g. 832x480), got {text!r}")
    return int(m[1]), int(m[2])


def with_overrides(settings: SampleSettings, **kw) -> SampleSettings:
    return replace(settings, **{k: v for k, v in kw.items() if v is not None})
