"""GPU checks of the TensorRT runtime: a tiny fp16 DiT plan and the VAE decoder step plans,
deserialized and run on torch CUDA tensors against the PyTorch reference. Skipped cleanly
without a CUDA GPU or TensorRT-RTX (plans of TensorRT-RTX do not run on Hopper SM90)."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
trt = pytest.importorskip("tensorrt_rtx")

from tests.converters.test_onnx import exported, shared_dir, sources  # noqa: E402,F401


def _target() -> str:
    major, minor = torch.cuda.get_device_capability()
    sm = f"sm{major}{minor}"
    if sm not in ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121"):
        pytest.skip(f"TensorRT-RTX plans do not run on {sm}")
    return sm


def test_dit_plan_runs_and_matches(exported, tmp_path):  # noqa: F811
    from wan_export.converters.trt import Request, build_trt
    from wan_export.validators.trt import validate_trt

    onnx_dir, src = exported("dit", "wan2.1-t2v-1.3b", dtype="fp16")
    out = tmp_path / "plans"
    build_trt(onnx_dir, str(out), Request(target=_target(), profiles=("64x64x9",)))
    report = validate_trt(str(out), src)
    assert report.passed, report.to_markdown()
    assert any("on GPU" in c.name for c in report.checks)


def test_vae_stream_runs(sources, tmp_path):  # noqa: F811
    from wan_export.components import load_component
    from wan_export.converters.trt import Request, build_trt
    from wan_export.converters.trt_backend import load_backend
    from wan_export.runtime.pipeline import VaeStream
    from wan_export.validators.metrics import compare
    from wan_export.validators.onnx import _reference

    src = sources("vae", "2.1")
    out = tmp_path / "vae"
    build_trt(src, str(out), Request(component="vae-decoder", target=_target(), profiles=("64x64",), batch="1",
                                      exporter="legacy"))
    doc = json.loads((out / "trt.json").read_text())
    stream = VaeStream.from_folder(str(out), doc, "decoder", load_backend("rtx"))
    z = torch.randn(1, 16, 3, 8, 8, device="cuda")
    ref = _reference(load_component(src)).cuda().decode(z)
    assert compare(ref.cpu(), stream(z).cpu())["rel_l2"] < 1e-2
