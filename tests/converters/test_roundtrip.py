"""Any to any: every variant, in every input layout, through comfyui and stock and back.

Property: the tensors that come out equal the source's stock tensors exactly
at the output dtype (fp8-scaled inputs: the dequantized values), whichever way
they travelled, and equal inputs give byte-identical ComfyUI files.
"""
from __future__ import annotations

import hashlib
import os
import tempfile

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.converters.release_factory import LAYOUTS, SPIECE_BYTES, layout_release
from wan_export.components import load_component
from wan_export.converters.comfyui import convert
from wan_export.converters.stock import lossless_dtype, write_stock
from wan_export.dtypes import DTYPE_NAMES, cast, st_code
from wan_export.release import open_input
from wan_export.safetensors_io import SafetensorsFile, TensorInfo
from wan_export.synthetic import tiny_dit_config
from wan_export.variants import VARIANTS, dit_shapes

SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LAYOUT_NAMES = sorted(LAYOUTS)
DTYPES = ["F32", "BF16", "F16"]
REQUESTS = [None, "bf16", "fp16", "fp32"]
# every variant and every input layout at least once, whatever hypothesis draws
COVER = [(v, LAYOUT_NAMES[i % len(LAYOUT_NAMES)], DTYPES[i % 3], REQUESTS[i % 4])
         for i, v in enumerate(sorted(VARIANTS))]


def cover(test):
    for variant, layout, src_dtype, requested in COVER:
        test = example(variant=variant, layout=layout, src_dtype=src_dtype, requested=requested)(test)
    return test


def sha(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def assert_state(table, expected: dict, dtype: str) -> None:
    assert set(table.names()) == set(expected)
    for name, want in expected.items():
        got = table.read(name)
        assert got.dtype == cast(want, dtype).dtype, name
        np.testing.assert_array_equal(got, cast(want, dtype), err_msg=name)


def out_dtype(expected: dict, requested: str | None) -> str:
    if requested:
        return DTYPE_NAMES[requested]
    return lossless_dtype([TensorInfo(k, v.shape, st_code(v)) for k, v in expected.items()])


@SETTINGS
@given(variant=st.sampled_from(sorted(VARIANTS)), layout=st.sampled_from(LAYOUT_NAMES),
       src_dtype=st.sampled_from(DTYPES), requested=st.sampled_from(REQUESTS))
@cover
def test_dit_any_layout_to_comfyui_to_stock_and_back(variant, layout, src_dtype, requested):
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        expected = layout_release(src, variant, layout=layout, dtype=src_dtype, vae=False, t5=False, tokenizer=False)
        dtype = out_dtype(next(iter(expected.values())), requested)
        order = list(dit_shapes(tiny_dit_config(variant)))

        comfy = [r["path"] for r in convert(src, os.path.join(tmp, "comfy"), dtype=requested)["files"]]
        assert len(comfy) == len(expected)                        # A14B: one file per expert
        for path, slot in zip(comfy, sorted(expected)):
            assert [i.name for i in SafetensorsFile(path).infos()] == order      # bare stock names
            comp = load_component(path)
            assert comp.layout == "stock"
            assert_state(comp.table, expected[slot], dtype)

        stock = os.path.join(tmp, "stock")
        write_stock(src, stock, dtype=requested)
        back = open_input(stock)
        for slot, state in expected.items():
            assert_state(back.components[slot].table, state, dtype)

        # stock -> comfyui gives the very same files; a ComfyUI file -> stock keeps the tensors
        again = [r["path"] for r in convert(stock, os.path.join(tmp, "comfy2"), dtype=requested)["files"]]
        assert [sha(p) for p in again] == [sha(p) for p in comfy]
        for path, slot in zip(comfy, sorted(expected)):
            folder = os.path.join(tmp, "from-" + os.path.basename(path))
            write_stock(path, folder)
            assert_state(open_input(folder).components["dit"].table, expected[slot], dtype)


@settings(max_examples=4, deadline=None)
@given(variant=st.sampled_from(["wan2.1-t2v-1.3b", "wan2.2-ti2v-5b"]), requested=st.sampled_from([None, "bf16"]))
def test_vae_and_text_encoder_round_trip(variant, requested):
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        expected = layout_release(src, variant, dtype="F32")
        first = convert(src, os.path.join(tmp, "comfy"), component="all", dtype=requested)["files"]
        files = {r["component"]: r["path"] for r in first}
        vae_dtype, t5_dtype = (DTYPE_NAMES[requested],) * 2 if requested else ("F32", "BF16")
        assert_state(load_component(files["vae"]).table, expected["vae"], vae_dtype)
        te = load_component(files["t5"])
        assert te.layout == "hf" and bytes(te.side["spiece_model"][1]()) == SPIECE_BYTES
        assert_state(te.table, expected["t5"], t5_dtype)

        # release -> stock -> comfyui: identical files; ComfyUI TE -> stock rebuilds the tokenizer file
        write_stock(src, os.path.join(tmp, "stock"))
        again = convert(os.path.join(tmp, "stock"), os.path.join(tmp, "comfy2"), dtype=requested)["files"]
        assert [sha(r["path"]) for r in again] == [sha(r["path"]) for r in first]
        write_stock(files["t5"], os.path.join(tmp, "te-stock"))
        rel = open_input(os.path.join(tmp, "te-stock"))
        assert_state(rel.components["t5"].table, expected["t5"], t5_dtype)
        with open(os.path.join(rel.tokenizer_dir, "spiece.model"), "rb") as f:
            assert f.read() == SPIECE_BYTES
