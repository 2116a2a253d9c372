"""The emulated W4A4 kernel against the real Nunchaku Lite kernels (rootonchair/nunchaku-lite-kernels):
INT4 on sm_75-89, NVFP4 on sm_120/121. Skipped without such a GPU, the `kernels` package or the
Hub (the kernels are downloaded at run time; set DIFFUSERS_TRUST_REMOTE_KERNELS=true)."""
import pytest
import torch

pytestmark = pytest.mark.gpu

SUPPORTED = {"int4": lambda cc: (7, 5) <= cc < (9, 0), "nvfp4": lambda cc: cc >= (12, 0)}
# rel-L2 of the real kernel's output against the emulator's: both quantize the same activations, but
# the kernel accumulates in its own order and rounds ascales on the fly
TOLERANCE = 2e-2


def _real_ops():
    try:
        from kernels import get_kernel

        return get_kernel("rootonchair/nunchaku-lite-kernels", version=2, trust_remote_code=True).ops
    except Exception as e:    # no package, no network, untrusted publisher...
        pytest.skip(f"real Nunchaku Lite kernels unavailable: {type(e).__name__}: {e}")


@pytest.mark.parametrize("precision", ["int4", "nvfp4"])
def test_real_kernel_matches_emulator(precision):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    cc = torch.cuda.get_device_capability()
    if not SUPPORTED[precision](cc):
        pytest.skip(f"{precision} kernels do not run on sm_{cc[0]}{cc[1]}")
    from tests.quantizers.test_svdquant_pack import _layer
    from wan_export.quantizers.svdquant_kernel import PRECISIONS
    from wan_export.validators.svdquant_kernels import emulated_nunchaku

    ops = _real_ops()
    layer = _layer(precision)
    x = torch.randn(300, 384, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    with emulated_nunchaku() as utils:
        m = utils.SVDQW4A4Linear(384, 256, rank=32, precision=precision, group_size=PRECISIONS[precision].group,
                                 torch_dtype=torch.bfloat16)
        m.load_state_dict(layer.packed())
        emulated = m(x).float()
        saved, utils.ops = utils.ops, ops
        try:
            real = m.cuda()(x.cuda()).float().cpu()
        finally:
            utils.ops = saved
    assert float((real - emulated).norm() / emulated.norm()) < TOLERANCE
