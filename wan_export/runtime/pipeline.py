"""The DiT step loop and the VAE streaming protocol on TensorRT engines (GPU).

`TrtDiT` is called like the reference WanDiT (latents, timestep, context, ...) so the
sampler (`wan_export.pipeline.generate`, when present) can use it in `Pipeline.dits`;
`denoise` is a self-contained flow-matching Euler loop with CFG batched as batch 2.
`VaeStream` runs the first/step graphs of vae.json, feeding every cache_out.<slot> back.
"""
from __future__ import annotations

import os

from wan_export.runtime.engine import Engine


class TrtDiT:
    """A DiT plan with the reference model's call signature."""

    def __init__(self, engine: Engine, per_frame_timestep: bool = False):
        self.engine, self.per_frame = engine, per_frame_timestep

    def __call__(self, latents, timestep, context, clip_features=None, vace_context=None, vace_scale=1.0):
        import torch

        t = timestep
        if t.dim() == 0:
            t = t.expand(latents.shape[0])
        if self.per_frame and t.dim() == 1:
            t = t[:, None].expand(-1, latents.shape[2])
        feeds = {"latents": latents, "timestep": t.float(), "context": context}
        if clip_features is not None:
            feeds["clip_features"] = clip_features
        if vace_context is not None:
            feeds["vace_context"] = vace_context
            feeds["vace_scale"] = torch.tensor([float(vace_scale)])
        return self.engine(feeds)["noise_pred"].float()


def denoise(dit, latents, sigmas, context, negative=None, guidance: float = 5.0, on_step=None):
    """Euler flow matching: x <- x + (sigma_next - sigma) * v, v from CFG over one batch-2 call."""
    import torch

    x = latents
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        t = torch.full((x.shape[0],), s * 1000.0, device=x.device)
        if negative is None or guidance == 1.0:
            v = dit(x, t, context)
        else:
            both = dit(torch.cat([x, x]), torch.cat([t, t]), torch.cat([negative, context]))
            uncond, cond = both.chunk(2)
            v = uncond + guidance * (cond - uncond)
        x = x + (s_next - s) * v
        if on_step is not None:
            on_step(i, s, x)
    return x


class VaeStream:
    """Drive `first` then `step` engines over frames, the cache carried between calls."""

    def __init__(self, first: Engine, step: Engine, protocol: dict):
        self.first, self.step, self.protocol = first, step, protocol

    @classmethod
    def from_folder(cls, folder: str, doc: dict, part: str = "decoder", backend=None) -> "VaeStream":
        proto = doc["vae"][part]
        plans = {p["graph"]: p["file"] for p in doc["plans"]}
        load = lambda graph: Engine.load(os.path.join(folder, plans[graph]), backend)  # noqa: E731
        return cls(load(proto["first"]), load(proto["step"]), proto)

    def __call__(self, x):
        """Decoder: latent [B, z, T, h, w] -> video; encoder: video [B, 3, 1+4k, H, W] -> mu."""
        import torch

        p = self.protocol
        k = p["frames_in"]["step"]
        chunks = [x[:, :, :1]] + [x[:, :, j:j + k] for j in range(1, x.shape[2], k)]
        outs, cache = [], {}
        for i, chunk in enumerate(chunks):
            eng = self.first if i == 0 else self.step
            res = eng({p["input"]: chunk, **cache})
            outs.append(res[p["output"]].float())
            cache = {c["input"]: res[c["output"]] for c in p["cache"]}
        return torch.cat(outs, dim=2)
