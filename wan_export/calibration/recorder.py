"""Forward hooks that record activation statistics of a reference WanDiT.

`Recorder(dits)` hooks every Linear inside `blocks.{i}` / `vace_blocks.{i}` of each DiT
(stock names, prefixed with the expert slot for A14B) and the attention of each block:
q, k, v as they enter attention and the softmax output. Inputs shared by several
Linears (self-attention q/k/v, cross-attention k/v) are measured once per call.
Statistics go to the current prompt's partial (`begin_prompt` / `end_prompt`), so the
caller can fold prompts in a fixed order.
"""
from __future__ import annotations

import contextlib
import math
import re

import torch
from torch import nn

from wan_export.calibration.stats import AttentionStats, LayerStats
from wan_export.model import dit as dit_module

_LAYER = re.compile(r"^(blocks|vace_blocks)\.\d+\..+$")
_ATTN = re.compile(r"^(blocks|vace_blocks)\.\d+\.(self_attn|cross_attn)$")
SOFTMAX_ROWS = 64      # query rows per head and call used for the softmax amax


def calib_layers(dit: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(stock name, module) of every Linear inside a block, in module order."""
    return [(n, m) for n, m in dit.named_modules() if isinstance(m, nn.Linear) and _LAYER.match(n)]


def attention_modules(dit: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in dit.named_modules() if _ATTN.match(n)]


def slot_prefix(slot: str) -> str:
    """Name prefix of an expert's statistics ('' for a single DiT)."""
    return "" if slot in ("dit", "", None) else f"{slot}."


class Recorder:
    """Hooks on the DiTs of a pipeline; `rows_per_call` input rows are sampled per Linear call."""

    def __init__(self, dits: dict[str, nn.Module], rows_per_call: int = 0, attention: bool = True):
        self.rows_per_call, self.attention = rows_per_call, attention
        self.current: dict | None = None
        self._shared: tuple[torch.Tensor, LayerStats] | None = None
        self._attn_name: str | None = None
        self._handles = []
        self.layer_names: list[str] = []
        for slot, dit in dits.items():
            prefix = slot_prefix(slot)
            for name, mod in calib_layers(dit):
                self.layer_names.append(prefix + name)
                self._handles.append(mod.register_forward_pre_hook(self._linear_hook(prefix + name)))
            if attention:
                for name, mod in attention_modules(dit):
                    self._handles.append(mod.register_forward_pre_hook(self._enter(prefix + name)))
                    self._handles.append(mod.register_forward_hook(self._leave))

    def _linear_hook(self, name: str):
        def hook(_mod, args):
            if self.current is None:
                return
            x = args[0]
            # the same tensor object feeding q/k/v (or k/v) is measured once; holding it
            # keeps its id from being reused by a later temporary
            if self._shared is None or self._shared[0] is not x:
                self._shared = (x, LayerStats.of(x, self.rows_per_call))
            stats = self._shared[1]
            mine = self.current.get(name)
            if mine is None:
                self.current[name] = mine = LayerStats(stats.in_features)
            mine.merge(stats)
        return hook

    def _enter(self, name: str):
        def hook(_mod, _args):
            self._attn_name = name + ".sdpa"
        return hook

    def _leave(self, _mod, _args, _out):
        self._attn_name = None

    def record_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """q, k, v [B, L, N, hd] as attention sees them."""
        if self.current is None or self._attn_name is None:
            return
        s = AttentionStats(q=float(q.detach().abs().amax()), k=float(k.detach().abs().amax()),
                           v=float(v.detach().abs().amax()), softmax=softmax_amax(q.detach(), k.detach()))
        self.current.setdefault(self._attn_name, AttentionStats()).merge(s)

    def begin_prompt(self) -> None:
        self.current, self._shared = {}, None

    def end_prompt(self) -> dict:
        part, self.current, self._shared = self.current, None, None
        return part

    @contextlib.contextmanager
    def active(self):
        """Route the DiT's attention through `record_attention` while inside; remove hooks on exit."""
        original = dit_module._attention

        def attention(q, k, v):
            self.record_attention(q, k, v)
            return original(q, k, v)

        if self.attention:
            dit_module._attention = attention
        try:
            yield self
        finally:
            dit_module._attention = original
            for h in self._handles:
                h.remove()


def softmax_amax(q: torch.Tensor, k: torch.Tensor) -> float:
    """max of softmax(q k^T / sqrt(hd)) over at most SOFTMAX_ROWS evenly spaced query rows per head.

    The max of a softmax row is exp(max - logsumexp), so no probabilities are formed.
    """
    lq = q.shape[1]
    stride = max(1, math.ceil(lq / SOFTMAX_ROWS))
    qs = q[:, ::stride].transpose(1, 2).float()           # [B, N, r, hd]
    s = qs @ k.transpose(1, 2).float().transpose(-1, -2) / math.sqrt(q.shape[-1])
    return float(torch.exp(s.amax(-1) - torch.logsumexp(s, -1)).amax())
