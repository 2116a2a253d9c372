"""Stock Wan VAE (2.1 flat, 2.2 nested) <-> diffusers AutoencoderKLWan names.

A pure rename in both versions (formats-diffusers.md section 2). The 2.1
decoder's flat `upsamples.k` index becomes (up block, resnet | upsampler) by
the explicit table below, which assumes dim_mult [1,2,4,4] and two residual
blocks per level like diffusers' own converter; 2.2 nests them already.
"""
from __future__ import annotations

from wan_export.keymaps import KeyMap

NUM_RES = 2          # residual blocks per encoder level (decoder: NUM_RES + 1); every released Wan VAE
LEVELS = 4           # len(dim_mult)

# Wan ResidualBlock children -> diffusers WanResidualBlock children
_RESIDUAL = (("residual.0", "norm1"), ("residual.2", "conv1"), ("residual.3", "norm2"),
             ("residual.6", "conv2"), ("shortcut", "conv_shortcut"))
# children a Resample keeps under the same name
_RESAMPLE = ("resample", "time_conv")


def _resnet(stock: str, diffusers: str) -> list[tuple[str, str]]:
    return [(f"{stock}.{s}.{{rest}}", f"{diffusers}.{d}.{{rest}}") for s, d in _RESIDUAL]


def _resampler(stock: str, diffusers: str) -> list[tuple[str, str]]:
    return [(f"{stock}.{c}.{{rest}}", f"{diffusers}.{c}.{{rest}}") for c in _RESAMPLE]


def _shared() -> list[tuple[str, str]]:
    rows = [("conv1.{rest}", "quant_conv.{rest}"), ("conv2.{rest}", "post_quant_conv.{rest}")]
    for part in ("encoder", "decoder"):
        rows += [(f"{part}.conv1.{{rest}}", f"{part}.conv_in.{{rest}}"),
                 (f"{part}.head.0.{{rest}}", f"{part}.norm_out.{{rest}}"),
                 (f"{part}.head.2.{{rest}}", f"{part}.conv_out.{{rest}}"),
                 (f"{part}.middle.1.{{rest}}", f"{part}.mid_block.attentions.0.{{rest}}")]
        rows += _resnet(f"{part}.middle.0", f"{part}.mid_block.resnets.0")
        rows += _resnet(f"{part}.middle.2", f"{part}.mid_block.resnets.1")
    return rows


def _up21_table() -> dict[int, tuple[int, str]]:
    """2.1 decoder: stock upsamples.k -> (up block, "resnets.r" | "upsamplers.0").

    Each level has NUM_RES+1 resnets, then one upsampler (none after the last
    level): 0-2 -> up_blocks.0.resnets.0-2, 3 -> up_blocks.0.upsamplers.0, ...
    """
    table, k = {}, 0
    for b in range(LEVELS):
        for r in range(NUM_RES + 1):
            table[k] = (b, f"resnets.{r}")
            k += 1
        if b < LEVELS - 1:
            table[k] = (b, "upsamplers.0")
            k += 1
    return table


UP21 = _up21_table()


def _rows21() -> list[tuple[str, str]]:
    rows = _shared()
    rows += _resnet("encoder.downsamples.{i}", "encoder.down_blocks.{i}")
    rows += _resampler("encoder.downsamples.{i}", "encoder.down_blocks.{i}")
    for k, (b, child) in UP21.items():
        stock, diff = f"decoder.upsamples.{k}", f"decoder.up_blocks.{b}.{child}"
        rows += _resnet(stock, diff) if child.startswith("resnets") else _resampler(stock, diff)
    return rows


def _rows22() -> list[tuple[str, str]]:
    rows = _shared()
    for r in range(NUM_RES):
        rows += _resnet(f"encoder.downsamples.{{i}}.downsamples.{r}", f"encoder.down_blocks.{{i}}.resnets.{r}")
    rows += _resampler(f"encoder.downsamples.{{i}}.downsamples.{NUM_RES}", "encoder.down_blocks.{i}.downsampler")
    for r in range(NUM_RES + 1):
        rows += _resnet(f"decoder.upsamples.{{i}}.upsamples.{r}", f"decoder.up_blocks.{{i}}.resnets.{r}")
    rows += _resampler(f"decoder.upsamples.{{i}}.upsamples.{NUM_RES + 1}", "decoder.up_blocks.{i}.upsampler")
    return rows


VAE21_DIFFUSERS = KeyMap("diffusers-vae-2.1", _rows21())
VAE22_DIFFUSERS = KeyMap("diffusers-vae-2.2", _rows22())
BY_VERSION = {"2.1": VAE21_DIFFUSERS, "2.2": VAE22_DIFFUSERS}

# A name only the nested 2.2 layout has, on each side.
_NESTED_MARKS = (".upsampler.", ".downsampler.", ".upsamples.0.upsamples.", ".downsamples.0.downsamples.")


def version_of(names) -> str:
    """'2.2' when the keys (stock or diffusers) use the nested layout, else '2.1'."""
    return "2.2" if any(m in n for n in names for m in _NESTED_MARKS) else "2.1"


def keymap_for(names) -> KeyMap:
    """The key map for a VAE's keys, either side (components.py reads diffusers VAEs through it)."""
    return BY_VERSION[version_of(names)]


def to_diffusers(names, version: str | None = None, path: str | None = None) -> dict[str, str]:
    """stock name -> diffusers name for every key (raises listing every unmapped key)."""
    names = list(names)
    return BY_VERSION[version or version_of(names)].rename(names, to_stock=False, path=path)
