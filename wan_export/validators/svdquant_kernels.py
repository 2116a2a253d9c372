"""Run diffusers' own Nunchaku Lite loading path on CPU with the emulated W4A4 kernel.

diffusers (0.40+) loads Nunchaku Lite folders through `NunchakuLiteQuantizer`
(config parsing, module replacement, strict state-dict check) and runs
`SVDQW4A4Linear`, whose forward calls the module-global `ops` of
`diffusers.quantizers.nunchaku.utils`, fetched at import time from the Hub
(`kernels.get_kernel("rootonchair/nunchaku-lite-kernels")`, CUDA only). Two
things are swapped, nothing else:
- `ops`: the module is imported with a stand-in `kernels` that hands back
  `EmulatedOps` (nothing is downloaded or executed from the Hub), and `ops` is
  set to the emulator while the context is active;
- `NunchakuLiteQuantizer.validate_environment`, which refuses any machine
  without a CUDA GPU, accepts the CPU while the context is active.
"""
from __future__ import annotations

import importlib
import sys
import types
from contextlib import contextmanager

KERNEL_REPO = "rootonchair/nunchaku-lite-kernels"
UTILS = "diffusers.quantizers.nunchaku.utils"


def _import_utils_offline(ops):
    """Import diffusers' Nunchaku utils with a stand-in `kernels` package that returns `ops`."""
    import diffusers.utils as dutils
    import diffusers.utils.constants as constants

    def get_kernel(repo, *args, **kwargs):
        if repo != KERNEL_REPO:
            raise RuntimeError(f"unexpected kernel repository {repo!r}")
        return types.SimpleNamespace(ops=ops)

    stand_in = types.ModuleType("kernels")
    stand_in.get_kernel = get_kernel
    saved_mod = sys.modules.get("kernels")
    saved = dutils.is_kernels_available, constants.DIFFUSERS_TRUST_REMOTE_KERNELS
    sys.modules["kernels"] = stand_in
    dutils.is_kernels_available = lambda: True
    constants.DIFFUSERS_TRUST_REMOTE_KERNELS = True
    try:
        return importlib.import_module(UTILS)
    finally:
        dutils.is_kernels_available, constants.DIFFUSERS_TRUST_REMOTE_KERNELS = saved
        if saved_mod is None:
            sys.modules.pop("kernels", None)
        else:
            sys.modules["kernels"] = saved_mod


def _cpu_environment(self, *args, **kwargs):
    """validate_environment for the emulator: any device; the config is still parsed by diffusers."""


@contextmanager
def emulated_nunchaku():
    """Within the block, diffusers loads and runs Nunchaku Lite checkpoints with EmulatedOps."""
    from diffusers.quantizers.nunchaku.nunchaku_quantizer import NunchakuLiteQuantizer

    from wan_export.quantizers.svdquant_kernel import EmulatedOps

    ops = EmulatedOps()
    utils = sys.modules.get(UTILS) or _import_utils_offline(ops)
    saved_ops, saved_env = utils.ops, NunchakuLiteQuantizer.validate_environment
    utils.ops = ops
    NunchakuLiteQuantizer.validate_environment = _cpu_environment
    try:
        yield utils
    finally:
        utils.ops = saved_ops
        NunchakuLiteQuantizer.validate_environment = saved_env
