"""Legacy (Q4_0…Q8_0) and IQ4 (IQ4_NL, IQ4_XS) quantizers against ggml's golden vectors.

The golden files come from ggml's non-FMA C build (see tests/data/golden/ggml/README.md);
`chunk`/`chunk_imatrix` are what llama-quantize writes. gguf-py's numpy quantizers are
a second, independent oracle for the legacy types.
"""
from __future__ import annotations


import numpy as np
import pytest

from tests.shared_data import golden
from wan_export.quantizers.ggml import (
    GGML_TYPES,
    dequantize,
    iq4,
    legacy,
    quantize,
    quantizer,
)

TYPES = [name for name, t in GGML_TYPES.items()
         if t.impl and t.impl.split(":")[0] in ("legacy", "iq4")]
LEGACY = [name for name in TYPES if GGML_TYPES[name].impl.startswith("legacy:")]


def _bad_rows(got, want):
    assert got.shape == want.shape and got.dtype == want.dtype
    return np.flatnonzero((got != want).any(axis=1)).tolist()


def _check_rows(z, key, make):
    """make(X, imatrix, n) must equal z[f'{key}_{n}'] for every row length."""
    bad = {}
    for n in z["row_lengths"].tolist():
        got = make(z[f"input_{n}"], z[f"imatrix_{n}"], n)
        rows = _bad_rows(got, z[f"{key}_{n}"])
        if rows:
            bad[n] = [f"{i}:{z[f'kinds_{n}'][i]}" for i in rows]
    assert not bad, f"rows differing from {key}: {bad}"


@pytest.mark.parametrize("name", TYPES)
def test_quantize_matches_chunk(name):
    _check_rows(golden(name), "chunk", lambda x, im, n: quantize(x, name))


@pytest.mark.parametrize("name", TYPES)
def test_quantize_imatrix_matches_chunk_imatrix(name):
    _check_rows(golden(name), "chunk_imatrix", lambda x, im, n: quantize(x, name, im))


@pytest.mark.parametrize("name", [t for t in TYPES if t != "IQ4_NL"])
def test_quantize_matches_ref(name):
    z = golden(name)
    for n in z["row_lengths"].tolist():
        assert (z[f"ref_{n}"] == z[f"chunk_{n}"]).all()
    _check_rows(z, "ref", lambda x, im, n: quantize(x, name))


def test_iq4_nl_ref_mode():
    """quantize_row_iq4_nl_ref is ntry=-1; its all-zero blocks hold undefined bytes in C."""
    z = golden("IQ4_NL")
    for n in z["row_lengths"].tolist():
        got = iq4.IQ4_NL.quantize_rows(z[f"input_{n}"], ntry=-1).reshape(44, -1, 18)
        want = z[f"ref_{n}"].reshape(44, -1, 18)
        undefined = z[f"ref_block_undefined_{n}"]
        differs = (got != want).any(axis=2) & ~undefined
        assert not differs.any(), f"n={n}: blocks {np.argwhere(differs).tolist()}"
        assert (got[undefined][:, 2:] == 0).all()


@pytest.mark.parametrize("name", TYPES)
def test_dequantize_matches_golden(name):
    z = golden(name)
    for n in z["row_lengths"].tolist():
        got, want = dequantize(z[f"ref_{n}"], name), z[f"dequant_{n}"]
        assert got.dtype == np.float32 and got.shape == want.shape
        same = got.view(np.uint32) == want.view(np.uint32)
        if name == "IQ4_NL":   # undefined blocks: only the sign of zero may differ
            loose = np.repeat(z[f"ref_block_undefined_{n}"], 32, axis=1)
            same |= loose & (got == want)
        assert same.all(), f"n={n}: {np.argwhere(~same)[:10].tolist()}"


@pytest.mark.parametrize("name", TYPES)
def test_chunk_boundaries(name, monkeypatch):
    """Tiny chunks cut rows and superblocks apart; the imatrix must stay aligned."""
    z = golden(name)
    n = int(z["row_lengths"][-1])
    x, im = z[f"input_{n}"][:6], z[f"imatrix_{n}"]
    module = legacy if name in LEGACY else iq4
    monkeypatch.setattr(module, "_CHUNK", 7 if module is legacy else 7 * 256)
    assert _bad_rows(quantize(x, name), z[f"chunk_{n}"][:6]) == []
    assert _bad_rows(quantize(x, name, im), z[f"chunk_imatrix_{n}"][:6]) == []


def _gguf_type(name):
    gguf = pytest.importorskip("gguf")
    return gguf, gguf.GGMLQuantizationType[name]


def _cross_check_data(rng, rows=64, n=512):
    """Normal, heavy-tailed and 1/8-grid data (rounding ties), plus ± ties for the max."""
    x = rng.standard_normal((rows, n)).astype(np.float32)
    x[: rows // 4] *= np.float32(0.02)
    x[rows // 4: rows // 2] = rng.standard_t(3, (rows // 4, n))
    x[rows // 2: 3 * rows // 4] = np.round(x[rows // 2: 3 * rows // 4] * 8) / 8
    x[-4:, ::32], x[-4:, 5::32] = 3.0, -3.0        # +max first ...
    x[-2:, ::32], x[-2:, 5::32] = -3.0, 3.0        # ... and -max first
    return x


@pytest.mark.parametrize("name", LEGACY)
def test_quantize_matches_gguf_py(name):
    gguf, qtype = _gguf_type(name)
    x = _cross_check_data(np.random.default_rng(20240607))
    want = gguf.quants.quantize(x, qtype)
    assert _bad_rows(quantize(x, name), want) == []


@pytest.mark.parametrize("name", TYPES)
def test_dequantize_matches_gguf_py(name):
    gguf, qtype = _gguf_type(name)
    rng = np.random.default_rng(7)
    t = GGML_TYPES[name]
    q = rng.integers(0, 256, (16, 8 * t.type_size), dtype=np.uint8)
    blocks = q.reshape(16, 8, t.type_size)
    blocks[..., :4] = np.clip(rng.standard_normal((16, 8, 2)), -60000, 60000) \
        .astype(np.float16).view(np.uint8)            # finite d (and m)
    want = gguf.quants.dequantize(q, qtype)
    got = dequantize(q, name)
    assert (got.view(np.uint32) == want.view(np.uint32)).all()


@pytest.mark.parametrize("name", TYPES)
def test_shapes_and_errors(name):
    t, cls = GGML_TYPES[name], quantizer(name)
    n = 2 * t.block_size
    assert cls.quantize_rows(np.zeros((0, n), np.float32)).shape == (0, t.row_bytes(n))
    assert cls.dequantize_rows(np.zeros((0, t.row_bytes(n)), np.uint8)).shape == (0, n)
    assert quantize(np.ones(n, np.float32), name).shape == (1, t.row_bytes(n))
    with pytest.raises(ValueError):
        cls.quantize_rows(np.zeros((2, n + 16), np.float32))
    with pytest.raises(ValueError):
        cls.quantize_rows(np.ones((2, n), np.float32), np.ones(n - 1, np.float32))
    with pytest.raises(ValueError):
        cls.dequantize_rows(np.zeros((2, t.type_size + 1), np.uint8))


def _best_index_int8(x):
    """Literal port of ggml's best_index_int8(16, kvalues_iq4nl, x) (binary search)."""
    v = iq4.KVALUES.astype(np.float32)
    if x <= v[0]:
        return 0
    if x >= v[-1]:
        return 15
    ml, mu = 0, 15
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if x < v[mav]:
            mu = mav
        else:
            ml = mav
    return mu - 1 if x - v[mu - 1] < v[mu] - x else mu


def test_iq4_level_table_is_best_index_int8():
    mids = (iq4.KVALUES[:-1].astype(np.float32) + iq4.KVALUES[1:]) / 2
    near = (mids.view(np.int32)[:, None] + np.arange(-3, 4, dtype=np.int32)).view(np.float32)
    rng = np.random.default_rng(3)
    a = np.concatenate([near.ravel(), iq4.KVALUES.astype(np.float32),
                        rng.uniform(-140, 140, 2000).astype(np.float32),
                        np.float32([0.0, -0.0, 1e-30, -1e-30, 300, -300, 1e30, -1e30])])
    k = iq4._level_keys(a, np.float32(2), np.empty_like(a), clip=True)
    assert iq4._IDX[k].tolist() == [_best_index_int8(v) for v in a]


@pytest.mark.parametrize("name", ["IQ4_NL", "IQ4_XS"])
def test_iq4_rejects_non_finite(name):
    x = np.zeros((1, 256), np.float32)
    x[0, 3] = np.inf
    with pytest.raises(ValueError, match="finite"):
        quantize(x, name)
