"""Bounded-memory DiT parity: run the reference DiT block by block on two weight sets, holding
the embeddings and head of each plus ONE block of each at a time (read lazily, freed after use).

For every block it measures both
- teacher-forced error: the artifact's block on the reference's input vs the reference's block
  (the error that block itself adds), and
- free-running error: each weight set's own hidden state after the block (the error so far),
and the final outputs, which equal `WanDiT.forward` on the whole model (same modules, same
order). Validating a 14B artifact then needs one block (~0.9 GB fp32) per weight set plus
activations, not two whole fp32 models.
"""
from __future__ import annotations

from wan_export.model.config import DiTConfig
from wan_export.validators.metrics import compare
from wan_export.validators.parity import DIT_CASES, dit_inputs
from wan_export.validators.report import Report, Tolerance


def _reader(weights):
    """name-set -> {name: fp32 torch tensor}: a lazy table (infos/read) or a Mapping of tensors."""
    import torch

    from wan_export.validators.parity import torch_state

    if hasattr(weights, "infos"):
        return lambda names: torch_state(weights, names)
    return lambda names: {k: (v if isinstance(v, torch.Tensor) else torch.as_tensor(v)).float()
                          for k, v in weights.items() if k in names}


def _names(shapes, prefix: str | None) -> set[str]:
    if prefix is None:     # everything outside the blocks
        return {k for k in shapes if not k.startswith(("blocks.", "vace_blocks."))}
    return {k for k in shapes if k.startswith(prefix)}


class _Side:
    """One weight set: a meta-built WanDiT whose stem is loaded and whose blocks load one at a time."""

    def __init__(self, weights, cfg: DiTConfig, shapes):
        import torch

        from wan_export.model.dit import WanDiT, split_qkv_state_dict
        from wan_export.model.loading import _aligned

        self.read, self.shapes, self._split, self._aligned = _reader(weights), shapes, split_qkv_state_dict, _aligned
        with torch.device("meta"):
            self.model = WanDiT(cfg)
        stem = self._load(None)
        self.model.load_state_dict(stem, strict=False, assign=True)
        self.model.eval().requires_grad_(False)

    def _load(self, prefix: str | None) -> dict:
        sd = self._split(self.read(_names(self.shapes, prefix)))
        return {k: self._aligned(v.float().contiguous()) for k, v in sd.items()}

    def block(self, kind: str, i: int):
        """The i-th block (kind 'blocks' or 'vace_blocks') with its weights loaded."""
        blk = getattr(self.model, kind)[i]
        sd = {k[len(f"{kind}.{i}."):]: v for k, v in self._load(f"{kind}.{i}.").items()}
        blk.load_state_dict(sd, strict=True, assign=True)
        return blk

    def free(self, kind: str, i: int) -> None:
        getattr(self.model, kind)[i].to("meta")


def _prepare(side: _Side, inp: dict):
    """Everything before the blocks, as WanDiT.forward does it."""
    from wan_export.model.rope import rope_cos_sin

    m, cfg = side.model, side.model.cfg
    pt, ph, pw = cfg.patch_size
    lat = inp["latents"]
    f, h, w = lat.shape[2] // pt, lat.shape[3] // ph, lat.shape[4] // pw
    x = m.patch_embedding(lat.float()).flatten(2).transpose(1, 2)
    cos, sin = rope_cos_sin(f, h, w, cfg.head_dim, device=x.device, dtype=m.angle_dtype)
    e, e0 = m.time_embed(inp["timestep"])
    ctx = m.text_embedding(inp["context"].float())
    img = m.img_emb(inp["clip_features"].float()) if inp.get("clip_features") is not None else None
    c = m.vace_patch_embedding(inp["vace_context"].float()).flatten(2).transpose(1, 2) \
        if inp.get("vace_context") is not None else None
    return {"x": x, "e": e, "e0": e0, "ctx": ctx, "img": img, "cos": cos, "sin": sin, "fhw": (f, h, w), "c": c,
            "hints": []}


def _run_block(blk, s: dict, x, vace: bool):
    return blk(x, s["e0"], s["ctx"], None if vace else s["img"], s["cos"], s["sin"])


def _step(kind: str, i: int, sides, states, rows) -> None:
    """One block of both weight sets over every case: free-running and teacher-forced."""
    vace = kind == "vace_blocks"
    blocks = [side.block(kind, i) for side in sides]
    tf, fr = [], []
    for ref_s, art_s in states:
        pair = []
        for blk, s in zip(blocks, (ref_s, art_s)):
            x = s["c"] if vace else s["x"]
            if vace and i == 0:
                x = blk.before_proj(x) + s["x"]
            pair.append(x)
        ref_out = _run_block(blocks[0], ref_s, pair[0], vace)
        forced = _run_block(blocks[1], art_s, pair[0], vace)       # artifact block, reference input
        art_out = _run_block(blocks[1], art_s, pair[1], vace)
        tf.append(compare(ref_out, forced)["rel_l2"])
        fr.append(compare(ref_out, art_out)["rel_l2"])
        for blk, s, out in zip(blocks, (ref_s, art_s), (ref_out, art_out)):
            if vace:
                s["c"] = out
                s["hints"].append(blk.after_proj(out))
            else:
                s["x"] = out
    if not vace:
        _add_hints(sides[0].model, i, states)
    rows.append({"block": f"{kind}.{i}", "rel_l2": max(tf), "free_running_rel_l2": max(fr)})
    for side in sides:
        side.free(kind, i)


def _add_hints(model, i: int, states) -> None:
    j = model._hint_of_layer.get(i)
    if j is not None:
        for pair in states:
            for s in pair:
                s["x"] = s["x"] + s["hints"][j]


def blockwise_outputs(ref, art, cfg: DiTConfig, cases=DIT_CASES, ref_cfg: DiTConfig | None = None):
    """(reference outputs, artifact outputs, per-block rows) for every case, one block at a time.
    `ref_cfg`: the reference's config when it differs from the artifact's (e.g. the head count
    ComfyUI derives), same shapes."""
    import torch

    from wan_export.variants import dit_shapes

    shapes = dit_shapes(cfg)
    sides = (_Side(ref, ref_cfg or cfg, shapes), _Side(art, cfg, shapes))
    rows: list[dict] = []
    with torch.no_grad():
        inputs = [dit_inputs(cfg, c, seed=i) for i, c in enumerate(cases)]
        states = [tuple(_prepare(side, inp) for side in sides) for inp in inputs]
        for j in range(len(cfg.vace_layers)):
            _step("vace_blocks", j, sides, states, rows)
        for i in range(cfg.num_layers):
            _step("blocks", i, sides, states, rows)
        outs = [[side.model._unpatchify(side.model.head(s["x"], s["e"]), *s["fhw"]).float()
                 for side, s in zip(sides, pair)] for pair in states]
    return [o[0] for o in outs], [o[1] for o in outs], rows


def check_dit_blockwise(report: Report, ref, art, cfg: DiTConfig, tolerance: Tolerance, label: str = "dit",
                        cases=DIT_CASES, ref_cfg: DiTConfig | None = None) -> list:
    """Like parity.check_dit (same check names), plus a 'per-block error' table; bounded memory.

    ref / art: lazy tables (read one tensor at a time) or Mappings of stock-named tensors.
    """
    ref_out, art_out, rows = blockwise_outputs(ref, art, cfg, cases, ref_cfg)
    for case, r, a in zip(cases, ref_out, art_out):
        report.add(f"{label} output {case.label}", compare(r, a), tolerance)
    report.tables[f"{label} per-block error (teacher-forced rel_l2; free-running)"] = rows
    return ref_out



class LazyState:
    """A read-only name -> fp32 torch tensor Mapping over a lazy table, reading on access."""

    def __init__(self, table):
        self.table, self._names = table, set(table.names()) if hasattr(table, "names") else {
            i.name for i in table.infos()}

    def __contains__(self, name) -> bool:
        return name in self._names

    def __getitem__(self, name):
        from wan_export.validators.parity import torch_state

        return torch_state(self.table, {name})[name]
