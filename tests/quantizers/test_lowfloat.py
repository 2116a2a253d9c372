"""FP8 / NVFP4 / MXFP8 quantizers are bit-exact with the consumers' own code.

References: comfy-kitchen's eager quantizers (what ComfyUI runs) for the comfy layouts, and
nvidia-modelopt 0.47's export math (NVFP4QTensor, to_quantized_weight) for the HF layout. Both run
on CPU; each test skips when its library is not installed ([comfyui] / [modelopt] extras).
"""
from __future__ import annotations

import pytest
import torch

from wan_export.quantizers.fp8 import FP8Config, FP8Quantizer
from wan_export.quantizers.lowbit import swizzle, unswizzle
from wan_export.quantizers.mxfp8 import MXFP8Quantizer
from wan_export.quantizers.nvfp4 import NVFP4Config, NVFP4Quantizer

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SHAPES = ((256, 256), (200, 96), (48, 1040))


def weight(shape, dtype, seed=0):
    """Heavy-tailed rows, a zero block, a tiny block (scale underflow), -0.0 and exact grid ties."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * torch.rand(shape[0], 1, generator=g) ** 3
    w[0, :32] = 0
    w[1, :16] = 1e-30
    w[2, 3] = -0.0
    w[4, :16] = torch.tensor([6.0, 0.75, 1.75, 3.5, 0.25, 1.25, 2.5, 5.0] * 2)   # ties after scaling by 1
    w[5, 0] = w.abs().max() * 4                                                  # one outlier
    return w.to(dtype)


def ck_eager():
    pytest.importorskip("comfy_kitchen")
    from comfy_kitchen.backends.eager import quantization
    return quantization


def u8(t):
    return t.view(torch.uint8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_comfy_layouts_match_comfy_kitchen(shape, dtype):
    E = ck_eager()
    w = weight(shape, dtype)
    fp8 = FP8Quantizer().quantize(w)            # fp32 math on the upcast, as the references on w.float()
    assert torch.equal(u8(fp8.data), u8(E.quantize_per_tensor_fp8(w.float(), fp8.scale)))
    assert torch.equal(FP8Quantizer().dequantize(fp8), E.dequantize_per_tensor_fp8(fp8.data, fp8.scale, torch.float32))

    q = NVFP4Quantizer()
    t = q.quantize(w)
    packed, scales = E.quantize_nvfp4(w, t.global_scale, pad_16x=True)
    assert torch.equal(t.packed, packed) and torch.equal(u8(t.block_scale), u8(scales))
    ref = E.dequantize_nvfp4(packed, t.global_scale, scales, torch.float32)[: shape[0], : shape[1]]
    assert torch.equal(q.dequantize(t), ref)

    m = MXFP8Quantizer()
    mt = m.quantize(w)
    data, e = E.quantize_mxfp8(w, pad_32x=True)
    assert torch.equal(u8(mt.data), u8(data)) and torch.equal(mt.scale, u8(e))
    assert torch.equal(m.dequantize(mt), E.dequantize_mxfp8(data, e, torch.float32)[: shape[0], : shape[1]])


@pytest.mark.parametrize("shape", SHAPES)
def test_activation_fake_quant_matches_comfy_kitchen(shape):
    """fake(x, input_scale) is what ComfyUI's FP8 / NVFP4 / MXFP8 GEMM feeds its tensor cores."""
    E = ck_eager()
    x = weight(shape, torch.float32, seed=1) * 3
    s = x.abs().amax() / 448 / 4              # a calibrated scale that clips the outliers
    q8 = E.quantize_per_tensor_fp8(x, s)
    assert torch.equal(FP8Quantizer().fake(x, s), E.dequantize_per_tensor_fp8(q8, s, torch.float32))
    s2 = x.abs().amax() / (6 * 448) / 4
    packed, scales = E.quantize_nvfp4(x, s2, pad_16x=True)
    ref = E.dequantize_nvfp4(packed, s2, scales, torch.float32)[: shape[0], : shape[1]]
    assert torch.equal(NVFP4Quantizer().fake(x, s2), ref)
    data, e = E.quantize_mxfp8(x, pad_32x=True)
    assert torch.equal(MXFP8Quantizer().fake(x), E.dequantize_mxfp8(data, e, torch.float32)[: shape[0], : shape[1]])


def modelopt():
    pytest.importorskip("modelopt")
    from modelopt.torch.export import quant_utils
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor
    return NVFP4QTensor, quant_utils


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ((256, 256), (48, 1040)))
def test_modelopt_layout_matches_modelopt(shape, dtype):
    NVFP4QTensor, qu = modelopt()
    w = weight(shape, dtype)
    q = NVFP4Quantizer(NVFP4Config("modelopt"))
    t = q.quantize(w)
    ref, s_blk, s2 = NVFP4QTensor.quantize(w.clone(), 16)
    assert torch.equal(t.packed, ref._quantized_data)
    assert torch.equal(u8(t.block_scale), u8(s_blk)) and torch.equal(t.global_scale, s2)
    deq = ref.dequantize(torch.float32, scale=s_blk, double_scale=s2, block_sizes={-1: 16})
    assert torch.equal(q.dequantize(t), deq)

    for granularity, quant in (("tensor", qu.QUANTIZATION_FP8), ("channel", qu.QUANTIZATION_FP8_PC_PT)):
        f = FP8Quantizer(FP8Config(granularity, "modelopt"))
        ft = f.quantize(w)
        assert torch.equal(u8(ft.data), u8(qu.to_quantized_weight(w.float(), ft.scale, quant)))


def test_swizzle_is_invertible_and_zero_padded():
    s = torch.arange(1, 200 * 7 + 1, dtype=torch.int32).reshape(200, 7)
    b = swizzle(s)
    assert b.shape == (256, 8) and int((b != 0).sum()) == s.numel()
    assert torch.equal(unswizzle(b, 200, 7), s)


def test_nvfp4_conventions_differ_where_documented():
    """Zero block: comfy stores scale 0, ModelOpt 1.0; nibble order is swapped."""
    w = torch.zeros(16, 32)
    w[:, 16:] = torch.linspace(-1, 1, 16)[:, None]
    comfy = NVFP4Quantizer().quantize(w)
    mo = NVFP4Quantizer(NVFP4Config("modelopt")).quantize(w)
    assert float(NVFP4Quantizer().linear_scales(comfy)[0, 0]) == 0.0
    assert float(mo.block_scale.float()[0, 0]) == 1.0
    swapped = (mo.packed >> 4) | ((mo.packed & 0xF) << 4)
    assert torch.equal(swapped[:, 8:], comfy.packed[:, 8:])


def test_configs_validate_themselves():
    from wan_export.errors import UnsupportedError
    with pytest.raises(UnsupportedError):
        FP8Config("channel", "comfy")
    with pytest.raises(UnsupportedError):
        NVFP4Config("nibbles")
    assert NVFP4Config().to_dict() == {"type": "nvfp4", "version": 1, "params": {"layout": "comfy", "block_size": 16}}
