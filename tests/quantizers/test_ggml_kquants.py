"""K-quants (Q2_K…Q6_K) against ggml's golden vectors, byte for byte and bit for bit.

The golden files come from ggml's non-FMA C build (see tests/data/golden/ggml/README.md):
`chunk`/`chunk_imatrix` are what llama-quantize writes, `ref` the per-row reference,
`dequant` the C dequantizer's output for `ref`.
"""
from __future__ import annotations


import numpy as np
import pytest

from tests.shared_data import golden
from wan_export.quantizers.ggml import GGML_TYPES, dequantize, quantize

TYPES = [name for name, t in GGML_TYPES.items() if t.impl and t.impl.startswith("kquants:")]


def _check_rows(z, key, make):
    """make(X, imatrix) must equal z[f'{key}_{n}'] for every row length; lists offenders."""
    bad = {}
    for n in z["row_lengths"].tolist():
        got, want = make(z[f"input_{n}"], z[f"imatrix_{n}"]), z[f"{key}_{n}"]
        assert got.shape == want.shape and got.dtype == want.dtype
        rows = np.flatnonzero((got != want).any(axis=1))
        if rows.size:
            bad[n] = [f"{i}:{z[f'kinds_{n}'][i]}" for i in rows]
    assert not bad, f"rows differing from {key}: {bad}"


@pytest.mark.parametrize("name", TYPES)
def test_quantize_matches_chunk(name):
    _check_rows(golden(name), "chunk", lambda x, im: quantize(x, name))


@pytest.mark.parametrize("name", TYPES)
def test_quantize_imatrix_matches_chunk_imatrix(name):
    _check_rows(golden(name), "chunk_imatrix", lambda x, im: quantize(x, name, im))


@pytest.mark.parametrize("name", TYPES)
def test_quantize_matches_ref(name):
    _check_rows(golden(name), "ref", lambda x, im: quantize(x, name))


@pytest.mark.parametrize("name", TYPES)
def test_dequantize_is_bitwise(name):
    z = golden(name)
    for n in z["row_lengths"].tolist():
        got, want = dequantize(z[f"ref_{n}"], name), z[f"dequant_{n}"]
        assert got.dtype == np.float32 and got.shape == want.shape
        # bitwise, so -0.0 vs 0.0 and NaN payloads count as differences
        diff = got.view(np.uint32) != want.view(np.uint32)
        assert not diff.any(), f"n={n}: rows {np.flatnonzero(diff.any(axis=1)).tolist()}"


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("rows", [1, 3])
def test_odd_row_counts(name, rows):
    """Row count changes nothing: any subset of rows quantizes as in the full chunk."""
    z = golden(name)
    n = int(z["row_lengths"][-1])
    x, im = z[f"input_{n}"], z[f"imatrix_{n}"]
    pick = np.random.default_rng(rows).choice(len(x), rows, replace=False)
    assert (quantize(x[pick], name) == z[f"chunk_{n}"][pick]).all()
    assert (quantize(x[pick], name, im) == z[f"chunk_imatrix_{n}"][pick]).all()
    assert dequantize(quantize(x[pick], name), name).shape == (rows, n)


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("use_imatrix", [False, True])
def test_zero_rows(name, use_imatrix):
    x = np.zeros((2, 512), np.float32)
    im = np.ones(512, np.float32) if use_imatrix else None
    q = quantize(x, name, im)
    assert q.shape == (2, GGML_TYPES[name].row_bytes(512))
    y = dequantize(q, name)
    assert (y == 0).all()
    assert (quantize(x[:1], name, im) == q[:1]).all()


@pytest.mark.parametrize("name", TYPES)
def test_deterministic(name):
    x = (0.02 * np.random.default_rng(7).standard_normal((5, 1024))).astype(np.float32)
    im = np.random.default_rng(8).chisquare(2, 1024).astype(np.float32)
    for imatrix in (None, im):
        first = quantize(x, name, imatrix)
        assert (quantize(x.copy(), name, imatrix) == first).all()
        assert (quantize(x[::-1], name, imatrix)[::-1] == first).all()


@pytest.mark.parametrize("name", TYPES)
def test_bad_shapes_raise(name):
    with pytest.raises(ValueError):
        quantize(np.zeros((1, 100), np.float32), name)
    with pytest.raises(ValueError):
        quantize(np.zeros((1, 512), np.float32), name, np.ones(256, np.float32))


def test_search_public_api():
    """The block-major wrappers other quantizers import: shapes, ranges, degenerate blocks."""
    from wan_export.quantizers.ggml import search

    rng = np.random.default_rng(3)
    x = (0.02 * rng.standard_normal((40, 32))).astype(np.float32)
    x[0] = 0                                   # all-zero block
    x[1] = -0.5                                # flat block (max == min after min<=0)
    w = rng.chisquare(2, (40, 32)).astype(np.float32)

    d, L = search.make_qx_quants(x, 8, 1, w)
    assert d.dtype == np.float32 and L.dtype == np.uint8 and L.shape == x.shape
    assert d[0] == 0 and not L[0].any() and L.max() <= 15
    d_t, L_t = search.qx_quants_t(np.ascontiguousarray(x.T), 8, 1, np.ascontiguousarray(w.T))
    assert (d_t == d).all() and (L_t.T == L).all()

    for make, nmax in ((search.make_qkx2_quants, 15), (search.make_qkx3_quants, 31)):
        scale, the_min, L = make(x, w, nmax, -0.9, 0.05, 36)
        assert scale.shape == (40,) and L.shape == x.shape and L.max() <= nmax
        assert scale[1] == 0 and the_min[1] == 0.5 and not L[1].any()
        assert (the_min >= 0).all()

    scale, L = search.make_q3_quants(x[:, :16], 4)
    assert L.max() <= 7 and scale[0] == 0
    scale, L = search.make_qp_quants(np.abs(x[:, :8]), 63, w[:, :8])
    assert L.max() <= 63 and scale[0] == 0
