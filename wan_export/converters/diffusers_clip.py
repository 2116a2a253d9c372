"""Wan's open-clip XLM-R ViT-H/14 (`models_clip_open-clip-...-vit-huge-14.pth`)
<-> transformers `CLIPVisionModel`, as named reversible operations.

Only the vision tower is converted: renames (a KeyMap), one split (the fused
`attn.to_qkv` -> q/k/v, in that order along dim 0, as Wan's `view(b, s, 3, n, d)`
reads it) and two reshapes (class and position embeddings lose their unit
dims). Wan's pre_norm, exact GELU, LayerNorm eps 1e-5 and 1/sqrt(d) attention
are what CLIPVisionModel computes, and `hidden_states[-2]` (what diffusers'
pipelines take) is Wan's `use_31_block` output. Dropped, with the reason:
the XLM-R text tower and `log_scale` (Wan I2V never runs them) and
`visual.head` (the image projection, which CLIPVisionModel has no slot for).
"""
from __future__ import annotations

from wan_export.errors import BadInputError
from wan_export.keymaps import KeyMap, _compile

_L = "vision_model.encoder.layers.{i}"
RENAMES = KeyMap("hf-clip-vision", [
    ("visual.patch_embedding.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("visual.pre_norm.{rest}", "vision_model.pre_layrnorm.{rest}"),
    ("visual.post_norm.{rest}", "vision_model.post_layernorm.{rest}"),
    ("visual.transformer.{i}.norm1.{rest}", f"{_L}.layer_norm1.{{rest}}"),
    ("visual.transformer.{i}.norm2.{rest}", f"{_L}.layer_norm2.{{rest}}"),
    ("visual.transformer.{i}.attn.proj.{rest}", f"{_L}.self_attn.out_proj.{{rest}}"),
    ("visual.transformer.{i}.mlp.0.{rest}", f"{_L}.mlp.fc1.{{rest}}"),
    ("visual.transformer.{i}.mlp.2.{rest}", f"{_L}.mlp.fc2.{{rest}}"),
])
# fused stock pattern -> its parts, split along dim 0 in this order
SPLITS = (("visual.transformer.{i}.attn.to_qkv.{rest}",
           tuple(f"{_L}.self_attn.{p}_proj.{{rest}}" for p in "qkv")),)
# stock name -> (HF name, leading unit dims the HF tensor drops)
RESHAPES = {"visual.cls_embedding": ("vision_model.embeddings.class_embedding", 2),
            "visual.pos_embedding": ("vision_model.embeddings.position_embedding.weight", 1)}
DROPPED = ("textual.", "log_scale", "visual.head")


def _dropped(name: str) -> bool:
    return name.startswith(DROPPED)


def plan_to_hf(infos, path: str | None = None) -> list[tuple[str, tuple, str, object]]:
    """Stock infos -> [(hf name, hf shape, stock name, transform)], transform(array) -> array.

    Raises once listing every stock key that fits no rule.
    """
    out, renames = [], []
    for info in infos:
        name, shape = info.name, tuple(info.shape)
        if _dropped(name):
            continue
        if name in RESHAPES:
            hf, lead = RESHAPES[name]
            out.append((hf, shape[lead:], name, lambda a, s=shape[lead:]: a.reshape(s)))
            continue
        split = _split_parts(name)
        if split:
            n = shape[0] // len(split)
            out += [(part, (n,) + shape[1:], name, lambda a, k=k, n=n: a[k * n:(k + 1) * n])
                    for k, part in enumerate(split)]
            continue
        renames.append((name, shape))
    mapping = RENAMES.rename([n for n, _ in renames], to_stock=False, path=path)
    out += [(mapping[n], s, n, None) for n, s in renames]
    return out


def _split_parts(name: str) -> tuple[str, ...] | None:
    for fused, parts in SPLITS:
        m = _compile(fused).fullmatch(name)
        if m:
            return tuple(p.format(**m.groupdict()) for p in parts)
    return None


def _fused_of(name: str) -> tuple[str, int] | None:
    """HF part name -> (stock fused name, part index)."""
    for fused, parts in SPLITS:
        for k, part in enumerate(parts):
            m = _compile(part).fullmatch(name)
            if m:
                return fused.format(**m.groupdict()), k
    return None


def to_stock(hf: dict, cat, path: str | None = None) -> dict:
    """HF CLIPVisionModel tensors -> stock `visual.*` tensors (inverse of plan_to_hf).

    `cat(list, dim)` concatenates (torch.cat or numpy.concatenate), so this serves both.
    """
    back = {hf_name: (stock, lead) for stock, (hf_name, lead) in RESHAPES.items()}
    out, parts, plain = {}, {}, []
    for name, t in hf.items():
        if name in back:
            stock, lead = back[name]
            out[stock] = t.reshape((1,) * lead + tuple(t.shape))
        elif (fused := _fused_of(name)) is not None:
            parts.setdefault(fused[0], {})[fused[1]] = t
        else:
            plain.append(name)
    incomplete = [f for f, p in parts.items() if sorted(p) != list(range(3))]
    if incomplete:
        raise BadInputError(f"CLIP attention lacks some of q/k/v for: {', '.join(sorted(incomplete))}", path)
    out |= {f: cat([p[k] for k in range(3)], 0) for f, p in parts.items()}
    mapping = RENAMES.rename(plain, to_stock=True, path=path)
    out |= {mapping[n]: hf[n] for n in plain}
    return out
