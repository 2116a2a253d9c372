"""ONNX export specs per graph (after optimum's OnnxConfig): file name, inputs and
outputs with symbolic dims, divisibility rules, the example sizes the graph is
traced at, the validation grid (every case differs from the example) and the
tolerances per dtype. Pure data plus small builders; torch is imported lazily.

A dim is an int (static), a symbol ("batch") or a multiple of one ("2*hh"):
the symbol is what varies, the multiple is the divisibility rule.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

from wan_export.model.config import DiTConfig, T5Config, VAEConfig
from wan_export.validators.report import Tolerance

DEFAULT_OPSET = 20          # TRT 10.0 parses opsets 9..20; 23 emits Attention/RMSNormalization (TRT >= 10.14/10.15)
OPSETS = range(17, 24)      # the legacy exporter needs <= 20, the dynamo exporter >= 18
DTYPES = {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}
# ONNX Conv (and Sin/Cos) accept bfloat16 only from opset 22: a bf16 graph at 20 fails onnx.checker
MIN_OPSET = {"fp32": 17, "fp16": 17, "bf16": 22}
EXPORTERS = ("dynamo", "legacy")
# --component -> (release component kind, graph roles)
COMPONENTS = {
    "dit": ("dit", ("dit",)),
    "vae-decoder": ("vae", ("vae_decoder_first", "vae_decoder_step")),
    "vae-encoder": ("vae", ("vae_encoder_first", "vae_encoder_step")),
    "text-encoder": ("t5", ("text_encoder",)),
}
COMPONENT_CHOICES = (*COMPONENTS, "all")
# release slot -> DiT graph file (diffusers names: `transformer` is the A14B high-noise expert)
DIT_FILES = {"dit": "transformer.onnx", "dit.high_noise": "transformer.onnx", "dit.low_noise": "transformer_2.onnx"}
ROLE_FILES = {r: f"{r}.onnx" for r in ("vae_decoder_first", "vae_decoder_step", "vae_encoder_first",
                                       "vae_encoder_step", "text_encoder")}
MANIFEST, VAE_SIDECAR = "wan_onnx.json", "vae.json"
EXTERNAL_DATA_BYTES = 1 << 30    # protobuf's hard limit is 2 GiB; graphs above 1 GiB of weights go external

# Bounds ~5-10x above the worst rel-L2 measured on the tiny synthetic models over each grid
# (tests/converters/test_onnx.py), against the fp32 reference on the source weights:
# fp32 DiT 4e-6 (float32 vs the reference's float64 time/RoPE angles), VAE 1.4e-6, UMT5 9e-7;
# fp16 DiT 5e-4, VAE 1.7e-3, UMT5 1.7e-3; bf16 (onnx.reference) DiT 6.6e-3, VAE 2.3e-2, UMT5 2.8e-2.
# At fp32 a rel-L2 bound implies cosine >= 1 - rel^2/2, so none is stated.
TOLERANCES = {
    ("dit", "fp32"): Tolerance(max_rel_l2=1e-4),
    ("dit", "fp16"): Tolerance(max_rel_l2=5e-3, min_cosine=0.99999),
    ("dit", "bf16"): Tolerance(max_rel_l2=4e-2, min_cosine=0.999),
    ("vae", "fp32"): Tolerance(max_rel_l2=1e-4),
    ("vae", "fp16"): Tolerance(max_rel_l2=1e-2, min_cosine=0.9999),
    ("vae", "bf16"): Tolerance(max_rel_l2=1e-1, min_cosine=0.995),
    ("text_encoder", "fp32"): Tolerance(max_rel_l2=1e-4),
    ("text_encoder", "fp16"): Tolerance(max_rel_l2=1e-2, min_cosine=0.9999),
    ("text_encoder", "bf16"): Tolerance(max_rel_l2=1e-1, min_cosine=0.995),
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. dtype: a numpy-style name, or "model" for the export dtype."""

    name: str
    dims: tuple
    dtype: str = "float32"


@dataclass(frozen=True)
class GraphSpec:
    role: str                          # dit | vae_decoder_first | ... | text_encoder
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    example: dict                      # symbol -> size the graph is traced at
    grid: tuple[dict, ...]             # validation sizes, none equal to `example`
    rules: dict = field(default_factory=dict)   # symbol -> human-readable constraint

    @property
    def family(self) -> str:
        return "vae" if self.role.startswith("vae") else self.role

    def to_dict(self, dtype: str) -> dict:
        def io(t: TensorSpec) -> dict:
            kind = DTYPE_NAMES[dtype] if t.dtype == "model" else t.dtype
            return {"name": t.name, "shape": list(t.dims), "dtype": kind}
        return {"role": self.role, "file": self.file, "inputs": [io(t) for t in self.inputs],
                "outputs": [io(t) for t in self.outputs], "export_example": dict(self.example),
                "divisibility": dict(self.rules)}


DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def default_opset(dtype: str) -> int:
    return max(DEFAULT_OPSET, MIN_OPSET[dtype])


def mul(k: int, sym: str) -> str | int:
    return sym if k == 1 else f"{k}*{sym}"


def parse_dim(d) -> tuple[int, str | None]:
    """2*hh -> (2, 'hh'); batch -> (1, 'batch'); 16 -> (16, None)."""
    if isinstance(d, int):
        return d, None
    k, _, sym = d.rpartition("*")
    return (int(k) if k else 1), sym


def concrete(dims: tuple, sizes: dict) -> tuple[int, ...]:
    out = []
    for d in dims:
        k, sym = parse_dim(d)
        out.append(k if sym is None else k * sizes[sym])
    return tuple(out)


# ---- DiT -----------------------------------------------------------------------------------

DIT_EXAMPLE = {"batch": 2, "frames": 3, "hh": 5, "ww": 4, "text_len": 13}   # batch >= 2: no 0/1 specialisation
DIT_GRID = ({"batch": 1, "frames": 1, "hh": 2, "ww": 3, "text_len": 7},
            {"batch": 2, "frames": 5, "hh": 3, "ww": 4, "text_len": 33},
            {"batch": 1, "frames": 2, "hh": 1, "ww": 6, "text_len": 1})


def dit_spec(cfg: DiTConfig, file: str = "transformer.onnx") -> GraphSpec:
    """latents [B, C_in, F, 2*hh, 2*ww] (+ timestep, context, optional image/VACE inputs) -> noise_pred."""
    pt, ph, pw = cfg.patch_size
    grid = ("batch", None, mul(pt, "frames"), mul(ph, "hh"), mul(pw, "ww"))
    per_frame = cfg.model_type == "ti2v"
    inputs = [TensorSpec("latents", _with(grid, cfg.in_dim)),
              TensorSpec("timestep", ("batch", "frames") if per_frame else ("batch",)),
              TensorSpec("context", ("batch", "text_len", cfg.text_dim))]
    if cfg.image_branch:
        inputs.append(TensorSpec("clip_features", ("batch", cfg.clip_tokens, cfg.clip_dim)))
    if cfg.is_vace:
        inputs += [TensorSpec("vace_context", _with(grid, cfg.vace_in_dim)), TensorSpec("vace_scale", (1,))]
    rules = {"hh": f"latent height = {ph}*hh (pixels: {8 * ph}*hh for the 2.1 VAE, {16 * ph}*hh for 2.2)",
             "ww": f"latent width = {pw}*ww", "frames": "latent frames, any >= 1 (video frames = 4*(F-1)+1)",
             "text_len": "any >= 1 (Wan pads to 512)", "batch": "any >= 1 (CFG: 2)"}
    if per_frame:
        rules["timestep"] = ("one timestep per latent frame [B, F], expanded to every token in-graph "
                             "(TI2V image-to-video: 0 on frame 0)")
    return GraphSpec("dit", file, tuple(inputs), (TensorSpec("noise_pred", _with(grid, cfg.out_dim)),),
                     DIT_EXAMPLE, DIT_GRID, rules)


def _with(grid: tuple, channels: int) -> tuple:
    return (grid[0], channels, *grid[2:])


# ---- VAE step graphs -----------------------------------------------------------------------

VAE_EXAMPLE = {"batch": 2, "h": 3, "w": 5}
# (batch, latent frames, h, w): 1, 2, 3 latent frames = 1, 5, 9 video frames
VAE_GRID = ({"batch": 1, "frames": 1, "h": 2, "w": 4}, {"batch": 2, "frames": 2, "h": 4, "w": 2},
            {"batch": 1, "frames": 3, "h": 3, "w": 3})


@dataclass(frozen=True)
class CacheTensor:
    slot: str              # the causal layer owning it, e.g. decoder.upsamples.3.residual.2
    dims: tuple            # (batch, C, T, m*h, m*w)

    @property
    def input(self) -> str:
        return f"cache_in.{self.slot}"

    @property
    def output(self) -> str:
        return f"cache_out.{self.slot}"


@functools.lru_cache(maxsize=16)
def vae_cache(cfg: VAEConfig, part: str) -> tuple[CacheTensor, ...]:
    """Cache slots of the encoder or decoder with dims as multiples of the latent h, w.

    Derived from the reference model on the meta device at two sizes, so the
    multiples are checked, not assumed.
    """
    import torch

    from wan_export.model.vae import WanVAE

    with torch.device("meta"):
        vae = WanVAE(cfg)
    s = cfg.spatial_stride
    spec = vae.encoder_cache_spec if part == "encoder" else vae.decoder_cache_spec
    shape = (lambda h, w: (2, 3, 1, s * h, s * w)) if part == "encoder" else (lambda h, w: (2, cfg.z_dim, 1, h, w))
    one, other = spec(shape(1, 1)), spec(shape(3, 2))
    out = []
    for a, b in zip(one, other):
        mh, mw = a.shape[3], a.shape[4]
        if (b.shape[3], b.shape[4]) != (3 * mh, 2 * mw) or a.name != b.name:
            raise ValueError(f"VAE cache slot {a.name} does not scale linearly with the latent size")
        out.append(CacheTensor(a.name, ("batch", a.shape[1], a.shape[2], mul(mh, "h"), mul(mw, "w"))))
    if len({c.slot for c in out}) != len(out):
        raise ValueError("VAE cache slot names are not unique")
    return tuple(out)


def bind(dims: tuple, sizes: dict) -> tuple:
    """Make the dims whose symbol is in `sizes` static (2*h with h=11 -> 22); leave the others."""
    out = []
    for d in dims:
        k, sym = parse_dim(d)
        out.append(k * sizes[sym] if sym in sizes else d)
    return tuple(out)


def vae_specs(cfg: VAEConfig, part: str, tile: int | None = None) -> tuple[GraphSpec, GraphSpec]:
    """(first, step) graphs of the encoder or decoder; see `vae_protocol` for how to drive them.

    With `tile` (latents) h and w are static at the tile shape (TensorRT engines build once for
    it); batch stays dynamic and the validation grid runs at that tile.
    """
    s, z = cfg.spatial_stride, cfg.z_dim
    fixed = {} if tile is None else {"h": tile, "w": tile}
    cache = vae_cache(cfg, part)
    c_in = tuple(TensorSpec(c.input, bind(c.dims, fixed), "model") for c in cache)
    c_out = tuple(TensorSpec(c.output, bind(c.dims, fixed), "model") for c in cache)
    latent = TensorSpec("latent" if part == "decoder" else "mu", bind(("batch", z, 1, "h", "w"), fixed))
    rules = {"h": f"latent height; video height = {s}*h", "w": f"latent width; video width = {s}*w",
             "batch": "any >= 1"}
    if tile is not None:
        rules.update(h=f"static: the tile, {tile} latents = {s * tile} px", w=f"static: the tile, {tile} latents")
    example, grid = {**VAE_EXAMPLE, **fixed}, tuple({**c, **fixed} for c in VAE_GRID)
    specs = []
    for first in (True, False):
        role = f"vae_{part}_{'first' if first else 'step'}"
        frames = 1 if first else cfg.temporal_stride
        video = TensorSpec("video", bind(("batch", 3, frames, mul(s, "h"), mul(s, "w")), fixed))
        x, y = (latent, video) if part == "decoder" else (video, latent)
        specs.append(GraphSpec(role, ROLE_FILES[role], (x, *(() if first else c_in)), (y, *c_out),
                               example, grid, rules))
    return specs[0], specs[1]


TILING_RULES = {
    "units": "tile, overlap, stride in video pixels; *_latent in latents (pixels / spatial_stride)",
    "starts": "per axis of latent size n: [0] if n <= tile_latent, else k = ceil((n - tile_latent) / "
              "stride_latent) + 1 tiles at floor((i * (n - tile_latent) + floor((k - 1) / 2)) / (k - 1)), "
              "i = 0..k-1 (equal tiles, evenly spread, the last on the edge)",
    "order": "tile by tile (rows, then columns); each tile runs the first/step protocol over all its "
             "time chunks with its own cache, starting from the first graph",
    "weights": "linear, per axis, in output units (decoder: pixels, encoder: latents) x = 0.5, 1.5, ... from the tile's "
             "start, L its length: w = min(1, x / ov_prev, (L - x) / ov_next), where ov_prev / ov_next is the "
             "overlap with the previous / next tile on that axis (a term is left out when there is no "
             "neighbour); the tile weight is w_y * w_x",
    "combine": "output = sum(tile_output * weight) / sum(weight) over the tiles covering each position",
}


def vae_protocol(cfg: VAEConfig, dtype: str, parts: tuple[str, ...], tiling=None) -> dict:
    """The JSON sidecar: how to iterate the step graphs, cache names and shapes, normalisation,
    and with `tiling` (vae_tiling.Tiling) how to tile the frame for the fixed-shape graphs."""
    tile = None if tiling is None else tiling.tile
    doc = {"version": cfg.version, "z_dim": cfg.z_dim, "spatial_stride": cfg.spatial_stride,
           "temporal_stride": cfg.temporal_stride, "cache_dtype": DTYPE_NAMES[dtype],
           "latents_mean": list(cfg.latents_mean), "latents_std": list(cfg.latents_std),
           "dims": {"batch": "any >= 1", "h": f"latent height; video height = {cfg.spatial_stride}*h",
                    "w": f"latent width; video width = {cfg.spatial_stride}*w"},
           "video": "float32 RGB in [-1, 1], [batch, 3, frames, H, W]; the decoder clamps its output",
           "normalization": {"decoder_input": "latent = z * latents_std + latents_mean  (z as the DiT samples it)",
                             "encoder_output": "z = (mu - latents_mean) / latents_std"}}
    if tiling is not None:
        doc["dims"].update(h=f"static {tile} (the tile)", w=f"static {tile} (the tile)")
        doc["tiling"] = {**tiling.to_dict(cfg.spatial_stride), **TILING_RULES}
    for part in parts:
        first, step = vae_specs(cfg, part, tile)
        x, y = first.inputs[0].name, first.outputs[0].name
        doc[part] = {
            "first": first.file, "step": step.file,
            "input": x, "output": y, "frames_in": {"first": 1, "step": 1 if part == "decoder" else cfg.temporal_stride},
            "frames_out": {"first": 1, "step": cfg.temporal_stride if part == "decoder" else 1},
            "cache": [{"input": i.name, "output": o.name, "shape": list(i.dims)}
                      for i, o in zip(step.inputs[1:], step.outputs[1:])],
            "protocol": [f"run {first.file} on the first {'latent frame' if part == 'decoder' else 'video frame'}",
                         f"then run {step.file} on each next "
                         + ("latent frame" if part == "decoder" else f"{cfg.temporal_stride} video frames")
                         + ", feeding every cache_out.<slot> of the previous run as cache_in.<slot>",
                         f"concatenate the '{y}' outputs on axis 2"],
        }
    return doc


# ---- text encoder --------------------------------------------------------------------------

T5_EXAMPLE = {"batch": 2, "text_len": 13}
T5_GRID = ({"batch": 1, "text_len": 7}, {"batch": 3, "text_len": 33}, {"batch": 2, "text_len": 1})


def t5_spec(cfg: T5Config) -> GraphSpec:
    ids = ("batch", "text_len")
    return GraphSpec("text_encoder", ROLE_FILES["text_encoder"],
                     (TensorSpec("input_ids", ids, "int64"), TensorSpec("attention_mask", ids, "int64")),
                     (TensorSpec("last_hidden_state", ("batch", "text_len", cfg.dim)),),
                     T5_EXAMPLE, T5_GRID, {"text_len": "any >= 1 (Wan uses 512)", "batch": "any >= 1"})


# ---- inputs --------------------------------------------------------------------------------

def _video(shape, g):
    import torch

    return torch.rand(shape, generator=g) * 2 - 1


def _timestep(shape, g):
    import torch

    return torch.rand(shape, generator=g) * 1000


def _ids(shape, g, vocab: int = 1000):
    import torch

    return torch.randint(0, vocab, shape, generator=g)


def _mask(shape, g):
    import torch

    mask = torch.ones(shape, dtype=torch.int64)
    if shape[0] > 1 and shape[1] > 1:
        mask[-1, shape[1] // 2:] = 0      # one padded row, so the mask is exercised
    return mask


def _scale(shape, g):
    import torch

    return torch.full(shape, 0.75)


# input name -> filler(shape, generator); anything else is standard normal
FILL = {"video": _video, "timestep": _timestep, "input_ids": _ids, "attention_mask": _mask, "vace_scale": _scale}


def make_inputs(spec: GraphSpec, sizes: dict, seed: int = 0, vocab: int | None = None) -> dict:
    """Deterministic torch inputs for a graph at `sizes` (caches are zeros, as the first step leaves them)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for t in spec.inputs:
        shape = concrete(t.dims, sizes)
        if t.name.startswith("cache_in."):
            out[t.name] = torch.zeros(shape)
        elif t.name == "input_ids" and vocab:
            out[t.name] = _ids(shape, g, vocab)
        else:
            out[t.name] = FILL.get(t.name, lambda s, gen: torch.randn(s, generator=gen))(shape, g)
    return out
