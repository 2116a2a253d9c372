"""Tiny Wan inputs in every layout the readers accept, with the stock tensors they must read as.

`write_dit(path, state, layout)` writes a stock-named state in one input layout
and returns what the foundation must read back (fp8-scaled: the dequantized
values); `layout_release(folder, variant, ...)` writes an official-looking
release folder with its DiT(s) in that layout (+ config.json, VAE and T5 .pth,
tokenizer), built from `wan_export.synthetic`, the one fixture factory.
"""
from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np

from wan_export import synthetic
from wan_export.keymaps.dit_diffusers import DIT_DIFFUSERS
from wan_export.synthetic import dit_state, tiny_dit_config, write_safetensors
from wan_export.variants import EXPERTS, VARIANTS

SPIECE_BYTES = synthetic.tokenizer_model("umt5")


def _prefixed(prefix):
    def write(state):
        return {prefix + k: v for k, v in state.items()}, state
    return write


def _diffusers(state):
    names = DIT_DIFFUSERS.rename(state, to_stock=False)
    return {names[k]: v for k, v in state.items()}, state


def _fused_qkv(state):
    out = {}
    for k, v in state.items():
        if ".self_attn.q." in k:
            out[k.replace(".q.", ".qkv.")] = np.concatenate([state[k.replace(".q.", f".{x}.")] for x in "qkv"])
        elif ".self_attn.k." not in k and ".self_attn.v." not in k:
            out[k] = v
    return out, state


def _fp8_scaled(state):
    """ComfyUI legacy scaled fp8: block Linear weights as e4m3fn + F32 scale_weight + scaled_fp8 marker."""
    out, expect = {"scaled_fp8": np.zeros(0, ml_dtypes.float8_e4m3fn)}, dict(state)
    for k, v in state.items():
        if k.startswith("blocks.") and k.endswith(".weight") and v.ndim == 2:
            scale = np.float32(np.abs(v.astype(np.float32)).max() / 448)
            q = (v.astype(np.float32) / scale).astype(ml_dtypes.float8_e4m3fn)
            out[k], out[k[: -len("weight")] + "scale_weight"] = q, np.array(scale, np.float32)
            expect[k] = q.astype(np.float32) * scale
        else:
            out[k] = v
    return out, expect


# input layout -> state -> (tensors to write, stock state the reader must return)
LAYOUTS = {
    "stock": lambda s: (s, s),
    "diffusers": _diffusers,
    "comfyui-prefixed": _prefixed("model.diffusion_model."),
    "net-prefixed": _prefixed("net."),
    "fused-qkv": _fused_qkv,
    "fp8-scaled": _fp8_scaled,
}


def write_dit(path: str, state: dict, layout: str) -> dict:
    tensors, expect = LAYOUTS[layout](state)
    write_safetensors(path, tensors)
    return expect


def layout_release(folder: str, variant: str, *, layout: str = "stock", dtype: str = "F32", vae: bool = True,
                   t5: bool = True, tokenizer: bool = True, seed: int = 0) -> dict:
    """Write a tiny release; returns {slot: stock state as the reader must see it}."""
    os.makedirs(folder, exist_ok=True)
    v = VARIANTS[variant]
    cfg = tiny_dit_config(variant)
    config = json.dumps(synthetic.hub_config(cfg), indent=2, sort_keys=True)
    expected = {}
    subs = [(f"dit.{e}", f"{e}_model", seed + k) for k, e in enumerate(EXPERTS)] if v.experts else [("dit", "", seed)]
    for slot, sub, s in subs:
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
        with open(os.path.join(folder, sub, "config.json"), "w") as f:
            f.write(config)
        expected[slot] = write_dit(os.path.join(folder, sub, "diffusion_pytorch_model.safetensors"),
                                   dit_state(cfg, seed=s, dtype=dtype), layout)
    if vae:
        expected["vae"] = synthetic.vae_state(synthetic.tiny_vae_config(v.vae), seed + 10)
        synthetic.write_pth(os.path.join(folder, synthetic.VAE_FILES[v.vae]), expected["vae"])
    if t5:
        expected["t5"] = synthetic.t5_state(synthetic.tiny_t5_config(), seed + 20)
        synthetic.write_pth(os.path.join(folder, synthetic.T5_FILE), expected["t5"])
    if tokenizer:
        synthetic.write_tokenizer(os.path.join(folder, "google", "umt5-xxl"), "umt5")
    return expected
