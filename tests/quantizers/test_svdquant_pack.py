"""Nunchaku tile layout: golden bytes from deepcompressor's packer, exact round trips, and the
emulated kernel inside diffusers' SVDQW4A4Linear equal to the logical (unpacked) math."""
import hashlib

import pytest
import torch

from wan_export.quantizers import svdquant_pack as P
from wan_export.quantizers.svdquant_kernel import PRECISIONS, W4A4Layer, e2m1_codes, code_values, quantize_groups

# sha256[:16] of deepcompressor's NunchakuWeightPacker output (69f3473) on the seeded inputs below
GOLDEN = {"qweight": "15d0a2985f973f18", "scales": "4a14f0a4f101a5a6", "micro": "ab5ef2c04d4d5ed0",
          "down": "8dd1b27eb0e1eddc", "up": "3be0bcddf97e2507"}


def _h(t):
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


def test_golden_bytes_match_deepcompressor_packer():
    g = torch.Generator().manual_seed(1234)
    n, k, r = 256, 256, 32
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.int32)
    s = torch.randn(n, k // 64, generator=g).to(torch.bfloat16)
    ms = (torch.rand(n, k // 16, generator=g) * 400).to(torch.bfloat16).to(torch.float8_e4m3fn)
    down = torch.randn(r, k, generator=g).to(torch.bfloat16)      # deepcompressor's lora_down [r, K]
    up = torch.randn(n, r, generator=g).to(torch.bfloat16)
    got = {"qweight": _h(P.pack_qweight(codes)), "scales": _h(P.pack_scales(s)),
           "micro": _h(P.pack_micro_scales(ms)), "down": _h(P.pack_lowrank(down.t().contiguous(), down=True)),
           "up": _h(P.pack_lowrank(up, down=False))}
    assert got == GOLDEN


@pytest.mark.parametrize("n,k,r", [(128, 128, 16), (256, 384, 32), (384, 256, 64)])
def test_pack_unpack_is_identity(n, k, r):
    g = torch.Generator().manual_seed(n + k)
    codes = torch.randint(0, 16, (n, k), generator=g).to(torch.uint8)
    assert torch.equal(P.unpack_qweight(P.pack_qweight(codes)), codes)
    s = torch.randn(n, k // 64, generator=g).to(torch.bfloat16)
    assert torch.equal(P.unpack_scales(P.pack_scales(s)), s)
    v = torch.randn(n, generator=g).to(torch.float16)
    assert torch.equal(P.unpack_scales(P.pack_scales(v)), v)
    ms = torch.rand(n, k // 16, generator=g).mul(400).to(torch.float8_e4m3fn)
    assert torch.equal(P.unpack_micro_scales(P.pack_micro_scales(ms)).view(torch.uint8), ms.view(torch.uint8))
    for c, down in ((k, True), (n, False)):
        w = torch.randn(c, r, generator=g).to(torch.bfloat16)
        assert torch.equal(P.unpack_lowrank(P.pack_lowrank(w, down), down), w)


def test_shapes_outside_the_tiles_are_refused():
    assert not P.fits_tiles(256, 192) and not P.fits_tiles(200, 256) and P.fits_tiles(1536, 8960)
    with pytest.raises(ValueError):
        P.pack_qweight(torch.zeros(128, 192, dtype=torch.uint8))


def test_e2m1_rounds_to_nearest_ties_to_even():
    v = torch.tensor([0.24, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.6, -6.0])
    vals = code_values(e2m1_codes(v), PRECISIONS["nvfp4"])
    assert vals.tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -0.5, -6.0]


def _layer(name, n=256, k=384, r=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = PRECISIONS[name]
    w = torch.randn(n, k, generator=g)
    wt = wc = None
    if name == "nvfp4":
        wt = (w.abs().max() / (6 * 448)).to(torch.bfloat16).reshape(1)
        wc = torch.ones(n, dtype=torch.bfloat16)
    codes, scales = quantize_groups(w, p, torch.bfloat16, outer=float(wt) if wt is not None else 1.0)
    bf = torch.bfloat16
    return W4A4Layer(name, codes, scales, (torch.rand(k, generator=g) + 0.5).to(bf),
                     (torch.randn(k, r, generator=g) * 0.05).to(bf), (torch.randn(n, r, generator=g) * 0.05).to(bf),
                     torch.randn(n, generator=g).to(bf), wc, wt)


@pytest.mark.parametrize("name", ["int4", "nvfp4"])
def test_emulated_diffusers_layer_equals_logical_math(name):
    pytest.importorskip("diffusers")
    from wan_export.validators.svdquant_kernels import emulated_nunchaku

    layer = _layer(name)
    assert W4A4Layer.from_packed(layer.packed(), name).forward(torch.ones(1, 384, dtype=torch.bfloat16)).equal(
        layer.forward(torch.ones(1, 384, dtype=torch.bfloat16)))
    x = torch.randn(2, 150, 384, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    with emulated_nunchaku() as utils:
        m = utils.SVDQW4A4Linear(384, 256, rank=32, precision=name, group_size=PRECISIONS[name].group,
                                 torch_dtype=torch.bfloat16)
        m.load_state_dict(layer.packed(), strict=True)
        y = m(x)
    assert y.dtype == torch.bfloat16 and torch.equal(y, layer.forward(x))


def test_row_major_nibbles_load_cleanly_but_compute_noise():
    """The packing rule diffuse-compressor warns about: a logical-order qweight has the right shape and
    dtype, loads, and is wrong; the layer check of the validator sees it."""
    pytest.importorskip("diffusers")
    from wan_export.validators.svdquant_kernels import emulated_nunchaku

    layer = _layer("int4")
    t = layer.packed()
    c = layer.codes
    t["qweight"] = (c[:, 0::2] | (c[:, 1::2] << 4)).view(torch.int8)      # row-major nibbles, not tiles
    x = torch.randn(64, 384, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    with emulated_nunchaku() as utils:
        m = utils.SVDQW4A4Linear(384, 256, rank=32, torch_dtype=torch.bfloat16)
        m.load_state_dict(t, strict=True)
        y = m(x).float()
    good = layer.forward(x).float()
    assert float((y - good).norm() / good.norm()) > 0.5
