"""ONNX export: DiT (t2v, i2v, ti2v per-frame timesteps, vace), VAE step graphs and UMT5,
each checked in onnxruntime over a grid of shapes none of which is the export shape.

Exports are slow (seconds per graph), so each is made once per session and shared
between pytest-xdist workers through a file lock.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from wan_export import synthetic
from wan_export.cli import cli
from wan_export.converters import onnx_specs as S
from wan_export.converters.onnx_export import export_onnx
from wan_export.validators import trt_ops
from wan_export.validators.metrics import compare
from wan_export.validators.onnx import forbidden_types, op_table, validate_onnx

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

DIT_VARIANTS = ("wan2.1-t2v-1.3b", "wan2.1-i2v-14b", "wan2.2-ti2v-5b", "wan2.1-vace-1.3b")


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory):
    """A folder every xdist worker of this session sees (the session's own base temp otherwise)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def sources(shared_dir):
    """sources(kind, name, seed=0) -> a tiny fp32 source file (deterministic, shared)."""
    from filelock import FileLock

    def make(kind: str, name: str, seed: int = 0) -> str:
        path = shared_dir / "onnx-src" / f"{kind}-{name}-{seed}.safetensors"
        path.parent.mkdir(exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not path.exists():
                state = {"dit": lambda: synthetic.dit_state(synthetic.tiny_dit_config(name), seed),
                         "vae": lambda: synthetic.vae_state(synthetic.tiny_vae_config(name), seed),
                         "t5": lambda: synthetic.t5_state(synthetic.tiny_t5_config(), seed, "F32")}[kind]()
                synthetic.write_safetensors(str(path), state)
        return str(path)

    return make


@pytest.fixture(scope="session")
def exported(shared_dir, sources):
    """exported(kind, name, **options) -> (export folder, source) made once per session."""
    from filelock import FileLock

    def make(kind: str, name: str, **options) -> tuple[str, str]:
        src = sources(kind, name)
        tag = "-".join(f"{k}={v}" for k, v in sorted(options.items()))
        out = shared_dir / "onnx-out" / f"{kind}-{name}-{tag}"
        out.parent.mkdir(exist_ok=True)
        with FileLock(str(out) + ".lock"):
            if not out.exists():
                export_onnx(src, str(out), **options)
        return str(out), src

    return make


def _passed(report) -> None:
    bad = [f"{c.name}: {c.failures}" for c in report.checks if not c.passed]
    assert not bad, "\n".join(bad)


# ---- tables ------------------------------------------------------------------------------------

def test_tables_agree(runner):
    import click

    assert set(S.COMPONENT_CHOICES) == {*S.COMPONENTS, "all"}
    assert runner.invoke(cli, ["onnx", "--help"]).exit_code == 0
    cmd = cli.commands["onnx"]
    opts = {p.name: p for p in cmd.params}
    assert opts["component"].get_help_record(click.Context(cmd))[1].startswith(
        f"Which graphs to write: {', '.join(S.COMPONENT_CHOICES)}.")
    assert tuple(opts["dtype"].type.choices) == tuple(S.DTYPES)
    assert tuple(opts["exporter"].type.choices) == S.EXPORTERS
    assert opts["opset"].default is None and S.default_opset("fp32") == S.DEFAULT_OPSET == 20
    assert S.default_opset("bf16") == 22
    assert {d for _, d in S.TOLERANCES} == set(S.DTYPES)
    assert {f for f, _ in S.TOLERANCES} == {"dit", "vae", "text_encoder"}
    for example, grid in ((S.DIT_EXAMPLE, S.DIT_GRID), (S.T5_EXAMPLE, S.T5_GRID), (S.VAE_EXAMPLE, S.VAE_GRID)):
        assert all(any(case.get(k) != v for k, v in example.items()) for case in grid)
        assert min(example.values()) >= 2      # dynamo specialises sizes 0 and 1


def test_trt_table_and_hygiene_helpers():
    from onnx import TensorProto, helper

    assert trt_ops.classify("MatMul") == ("ok", "")
    assert trt_ops.classify("Attention")[0] == "needs-newer"
    assert trt_ops.classify("Unique")[0] == "unsupported"
    assert trt_ops.classify("Foo")[0] == "unknown"
    assert trt_ops.classify("X", "trt")[0] == "custom"
    assert not trt_ops.PLAIN & trt_ops.UNSUPPORTED and not set(trt_ops.RESTRICTED) & trt_ops.PLAIN
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE),
             helper.make_node("Unique", ["y"], ["z"]), helper.make_node("DFT", ["z"], ["w"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("w", TensorProto.COMPLEX64, [2])])
    assert forbidden_types(graph) == ["Cast to DOUBLE (x1)", "value COMPLEX64 (x1)"]
    rows, bad = op_table(graph)
    assert [r["op"] for r in rows] == ["Cast", "DFT", "Unique"] and len(bad) == 2


# ---- DiT -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dit_graphs(exported):
    """variant -> (ORT session, reference fp32 model, config); exported on first use."""
    from wan_export.model.dit import load_dit

    cache: dict = {}

    def get(variant: str):
        if variant not in cache:
            out, _ = exported("dit", variant)
            cfg = synthetic.tiny_dit_config(variant)
            state = {k: torch.from_numpy(v) for k, v in synthetic.dit_state(cfg).items()}
            sess = ort.InferenceSession(os.path.join(out, "transformer.onnx"), providers=["CPUExecutionProvider"])
            cache[variant] = sess, load_dit(state, cfg), cfg
        return cache[variant]

    return get


GRID = S.DIT_GRID + ({"batch": 3, "frames": 4, "hh": 4, "ww": 2, "text_len": 24},)


@pytest.mark.parametrize("sizes", GRID, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
@pytest.mark.parametrize("variant", DIT_VARIANTS)
def test_dit_onnxruntime_matches_reference(dit_graphs, variant, sizes):
    sess, model, cfg = dit_graphs(variant)
    spec = S.dit_spec(cfg)
    x = S.make_inputs(spec, sizes, seed=7)
    t = x["timestep"]
    if cfg.model_type == "ti2v":             # the official per-token form: one value per token
        assert t.shape == (sizes["batch"], sizes["frames"])
        t = t.repeat_interleave(sizes["hh"] * sizes["ww"], dim=1)
    with torch.no_grad():
        ref = model(x["latents"], t, x["context"], x.get("clip_features"), x.get("vace_context"),
                    x.get("vace_scale", 1.0))
    out = sess.run(None, {k: v.numpy() for k, v in x.items()})[0]
    assert out.shape == tuple(ref.shape)
    assert compare(ref, out)["rel_l2"] < 2e-5


@pytest.mark.parametrize("variant", DIT_VARIANTS)
def test_dit_validates_with_hygiene(exported, variant):
    out, src = exported("dit", variant)
    report = validate_onnx(out, src)
    _passed(report)
    names = [c.name for c in report.checks]
    assert sum(n.startswith("transformer.onnx batch=") for n in names) == len(S.DIT_GRID)
    for check in ("onnx.checker (full)", "shape inference (strict)", "no DOUBLE or complex types",
                  "every op parsed by TensorRT", "I/O as in wan_onnx.json"):
        assert f"transformer.onnx: {check}" in names
    ops = {r["op"] for r in report.tables["ops of transformer.onnx (TensorRT parser)"]}
    assert not ops & {"ScatterND", "Attention", "RMSNormalization"}    # export-friendly RoPE, opset 20
    graph = onnx.load(os.path.join(out, "transformer.onnx")).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims["latents"][2:] == ["frames", "2*hh", "2*ww"] and dims["context"][:2] == ["batch", "text_len"]


def test_dit_legacy_exporter_also_dynamic(exported):
    out, src = exported("dit", "wan2.1-t2v-1.3b", exporter="legacy")
    _passed(validate_onnx(out, src))


@pytest.mark.parametrize("dtype, runtime", [("fp16", "onnxruntime"), ("bf16", "onnx.reference")])
def test_dit_half_precision(exported, dtype, runtime):
    out, src = exported("dit", "wan2.1-t2v-1.3b", dtype=dtype)
    report = validate_onnx(out, src)
    _passed(report)
    assert report.info["runtime transformer.onnx"].startswith(runtime)
    inits = {t.name: t.data_type for t in onnx.load(os.path.join(out, "transformer.onnx")).graph.initializer}
    low = onnx.TensorProto.FLOAT16 if dtype == "fp16" else onnx.TensorProto.BFLOAT16
    assert low in inits.values()
    kept = [n for n in inits if "modulation" in n or "time_embedding" in n]
    assert kept and all(inits[n] == onnx.TensorProto.FLOAT for n in kept)     # fp32 islands


def test_bf16_too_big_for_onnx_reference_is_graph_checked_only(exported, monkeypatch):
    from wan_export.validators import onnx as validator

    monkeypatch.setattr(validator, "REFERENCE_MAX_BYTES", 0)
    out, src = exported("dit", "wan2.1-t2v-1.3b", dtype="bf16")
    report = validate_onnx(out, src)
    _passed(report)
    assert report.info["runtime transformer.onnx"].startswith("none: graph-checked only")
    assert not [c for c in report.checks if c.name.startswith("transformer.onnx batch=")]


# ---- VAE -----------------------------------------------------------------------------------------

def _drive(folder: str, part: str, chunks: list[np.ndarray]) -> np.ndarray:
    """Run the step graphs using nothing but vae.json, as a deployer would."""
    with open(os.path.join(folder, S.VAE_SIDECAR)) as f:
        proto = json.load(f)[part]
    first, step = (ort.InferenceSession(os.path.join(folder, proto[k])) for k in ("first", "step"))
    outs, cache = [], {}
    for i, chunk in enumerate(chunks):
        res = (first if i == 0 else step).run(None, {proto["input"]: chunk, **cache})
        outs.append(res[0])
        cache = {c["input"]: r for c, r in zip(proto["cache"], res[1:])}
    return np.concatenate(outs, axis=2)


@pytest.fixture(scope="module")
def vae_model():
    from wan_export.model.vae import load_vae

    def get(version: str):
        cfg = synthetic.tiny_vae_config(version)
        return load_vae({k: torch.from_numpy(v) for k, v in synthetic.vae_state(cfg).items()}, cfg)

    return get


@pytest.mark.parametrize("frames", [1, 2, 3])
@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_vae_decoder_steps_match_decode(exported, vae_model, version, frames):
    out, _ = exported("vae", version, component="vae-decoder")
    model = vae_model(version)
    z = torch.randn(2 if frames == 2 else 1, model.cfg.z_dim, frames, 3, 5 - frames,
                    generator=torch.Generator().manual_seed(frames))
    with torch.no_grad():
        ref = model.decode(z)
    got = _drive(out, "decoder", [z[:, :, i:i + 1].numpy() for i in range(frames)])
    assert got.shape == tuple(ref.shape) and got.shape[2] == 1 + 4 * (frames - 1)
    assert compare(ref, got)["rel_l2"] < 2e-5


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_vae_encoder_steps_match_encode(exported, vae_model, frames):
    out, _ = exported("vae", "2.2", component="vae-encoder")
    model = vae_model("2.2")
    s = model.cfg.spatial_stride
    video = torch.rand(1, 3, frames, 2 * s, 3 * s, generator=torch.Generator().manual_seed(frames)) * 2 - 1
    with torch.no_grad():
        ref = model.encode(video)
    chunks = [video[:, :, :1]] + [video[:, :, i:i + 4] for i in range(1, frames, 4)]
    got = _drive(out, "encoder", [c.numpy() for c in chunks])
    assert compare(ref, got)["rel_l2"] < 2e-5


@pytest.mark.parametrize("version, part", [("2.1", "decoder"), ("2.2", "decoder"), ("2.2", "encoder")])
def test_vae_graphs_validate(exported, version, part):
    out, src = exported("vae", version, component=f"vae-{part}")
    report = validate_onnx(out, src)
    _passed(report)
    assert sum(c.name.startswith(f"vae {part} steps") for c in report.checks) == len(S.VAE_GRID)
    with open(os.path.join(out, S.VAE_SIDECAR)) as f:
        side = json.load(f)
    step = onnx.load(os.path.join(out, side[part]["step"]), load_external_data=False).graph
    assert [c["input"] for c in side[part]["cache"]] == [i.name for i in step.input][1:]
    assert [c["output"] for c in side[part]["cache"]] == [o.name for o in step.output][1:]
    assert side["latents_std"] == list(synthetic.tiny_vae_config(version).latents_std)


# ---- text encoder, external data -------------------------------------------------------------------

def test_text_encoder(exported):
    out, src = exported("t5", "tiny")
    report = validate_onnx(os.path.join(out, "text_encoder.onnx"), src)
    _passed(report)
    assert sum(c.name.startswith("text_encoder.onnx batch=") for c in report.checks) == len(S.T5_GRID)


def test_external_data_is_one_file(sources, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "EXTERNAL_DATA_BYTES", 0)
    src = sources("t5", "tiny")
    result = export_onnx(src, str(tmp_path / "o"), component="text-encoder")
    assert result["graphs"][0]["external_data"] == "text_encoder.onnx.data"
    assert sorted(os.listdir(tmp_path / "o")) == ["text_encoder.onnx", "text_encoder.onnx.data", S.MANIFEST]
    assert os.path.getsize(tmp_path / "o" / "text_encoder.onnx") < 100_000
    _passed(validate_onnx(str(tmp_path / "o"), src))


# ---- CLI -------------------------------------------------------------------------------------------

def test_cli_bad_component_is_one_line_exit_2(runner, sources, tmp_path):
    out = tmp_path / "o"
    res = runner.invoke(cli, ["onnx", sources("t5", "tiny"), "--component", "unet", "-o", str(out)])
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr == ("Error: unknown component 'unet' (choose from dit, vae-decoder, vae-encoder, "
                          "text-encoder, all)\n")
    assert not out.exists()


def test_cli_missing_component_exit_2_leaves_nothing(runner, sources, tmp_path):
    src = sources("t5", "tiny")
    res = runner.invoke(cli, ["onnx", src, "--component", "dit", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr == f"Error: {src}: no dit component found to export as dit\n"
    assert os.listdir(tmp_path) == []


def test_cli_export_json_then_parity_failure_exit_1(runner, sources, tmp_path):
    out = tmp_path / "o"
    res = runner.invoke(cli, ["onnx", sources("t5", "tiny"), "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["graphs"][0]["file"] == "text_encoder.onnx"
    ok = runner.invoke(cli, ["validate", str(out), "--against", sources("t5", "tiny")])
    assert ok.exit_code == 0, ok.output
    wrong = runner.invoke(cli, ["validate", str(out), "--against", sources("dit", "wan2.1-t2v-1.3b")])
    assert wrong.exit_code == 2 and wrong.stderr.endswith(
        ": has no t5 component to compare text_encoder.onnx with\n")
    bad = runner.invoke(cli, ["validate", str(out), "--against", sources("t5", "tiny", seed=1)])
    assert bad.exit_code == 1 and "**FAIL**" in bad.stdout
    assert bad.stderr.startswith(f"Error: {out}: parity failed in 3 of ") and bad.stderr.count("\n") == 1
