"""Strict loading of stock-named weights into a module built on the meta device.

Shared by the DiT, VAE and UMT5: every missing, unexpected or wrongly shaped
key is named in one BadInputError (via variants.check_shapes), then the
tensors are assigned without a second copy.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn

from ..errors import BadInputError
from ..variants import check_shapes


def as_state_dict(tensors: Mapping | Iterable, what: str) -> dict:
    try:
        return dict(tensors.items() if isinstance(tensors, Mapping) else tensors)
    except (TypeError, ValueError) as e:
        raise BadInputError(f"{what}: expected a state dict or (name, tensor) pairs") from e


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous, 64-byte-aligned tensor. oneDNN picks other conv kernels for strided or
    misaligned weights (e.g. views into a mapped file), which changes the last bits: equal
    weights must give equal outputs."""
    if t.is_contiguous() and t.data_ptr() % 64 == 0:
        return t
    return t.clone(memory_format=torch.contiguous_format)


def load_strict(model: nn.Module, state: dict, what: str, *, dtype: torch.dtype = torch.float32,
                device="cpu") -> nn.Module:
    """Check keys and shapes against `model`, then load with assign=True, strict=True."""
    check_shapes({k: tuple(v.shape) for k, v in state.items()},
                 {k: tuple(v.shape) for k, v in model.state_dict().items()}, what, None)
    state = {k: _aligned(v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device))
             for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)
