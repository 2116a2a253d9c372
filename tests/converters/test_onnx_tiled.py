"""VAE step graphs exported at a static tile shape (`onnx --vae-tile`): vae.json's tiling protocol,
driven here from vae.json alone with onnxruntime and numpy, matches the torch tiled decode."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from wan_export import synthetic
from wan_export.converters import onnx_specs as S
from wan_export.converters.onnx_export import export_onnx
from wan_export.model.config import VAEConfig
from wan_export.model.vae import load_vae
from wan_export.model.vae_tiling import Tiling, decode_tiled
from wan_export.validators.metrics import compare
from wan_export.validators.onnx import validate_onnx

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

# The 4-level 2.1 VAE at base dim 4: the smallest tile (11 latents, 88 px) stays cheap.
CFG = VAEConfig(version="2.1", dim=4, dec_dim=4, z_dim=16)
TILE_PX, OVERLAP_PX = 88, 24
LATENT = (2, 14, 17)           # latent frames, h, w: 2 x 3 tiles
TOL = 2e-5                     # rel-L2, ORT vs torch (measured ~1e-7: only fp32 summation order differs)


@pytest.fixture(scope="module")
def tiled_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx-tiled")
    src = str(folder / "vae.safetensors")
    synthetic.write_safetensors(src, synthetic.vae_state(CFG, seed=3))
    out = str(folder / "out")
    export_onnx(src, out, component="vae-decoder", vae_tile=TILE_PX, vae_overlap=OVERLAP_PX, exporter="legacy")
    return out, src


def _starts(n: int, t: dict) -> list[int]:
    tile, stride = t["tile_latent"], t["stride_latent"]
    if n <= tile:
        return [0]
    k = math.ceil((n - tile) / stride) + 1
    return [(i * (n - tile) + (k - 1) // 2) // (k - 1) for i in range(k)]


def _weights(n: int, t: dict, scale: int) -> list[np.ndarray]:
    first, tile = _starts(n, t), t["tile_latent"]
    out = []
    for i, a in enumerate(first):
        x = np.arange(min(tile, n) * scale) + 0.5
        w = np.ones_like(x)
        if i > 0:
            w = np.minimum(w, x / ((first[i - 1] + tile - a) * scale))
        if i + 1 < len(first):
            w = np.minimum(w, (len(x) - x) / ((a + tile - first[i + 1]) * scale))
        out.append(w)
    return out


def drive_tiled(folder: str, z: np.ndarray) -> np.ndarray:
    """Tiled decode using nothing but vae.json (and the graphs it names), as a deployer would."""
    with open(os.path.join(folder, S.VAE_SIDECAR)) as f:
        side = json.load(f)
    proto, t, s = side["decoder"], side["tiling"], side["spatial_stride"]
    first, step = (ort.InferenceSession(os.path.join(folder, proto[k])) for k in ("first", "step"))
    _, _, frames, h, w = z.shape
    tile = t["tile_latent"]
    out = np.zeros((z.shape[0], 3, 1 + side["temporal_stride"] * (frames - 1), h * s, w * s), np.float32)
    total = np.zeros((h * s, w * s), np.float32)
    for y0, wy in zip(_starts(h, t), _weights(h, t, s)):
        for x0, wx in zip(_starts(w, t), _weights(w, t, s)):
            weight = (wy[:, None] * wx[None, :]).astype(np.float32)
            cache, chunks = {}, []
            for i in range(frames):
                piece = z[:, :, i:i + 1, y0:y0 + tile, x0:x0 + tile]
                res = (first if i == 0 else step).run(None, {proto["input"]: piece, **cache})
                chunks.append(res[0])
                cache = {c["input"]: r for c, r in zip(proto["cache"], res[1:])}
            out[:, :, :, y0 * s:(y0 + tile) * s, x0 * s:(x0 + tile) * s] += np.concatenate(chunks, 2) * weight
            total[y0 * s:(y0 + tile) * s, x0 * s:(x0 + tile) * s] += weight
    return out / total


def test_sidecar_and_static_graphs(tiled_export):
    out, _ = tiled_export
    with open(os.path.join(out, S.VAE_SIDECAR)) as f:
        side = json.load(f)
    assert {k: side["tiling"][k] for k in ("tile", "overlap", "stride", "tile_latent", "blend")} == \
        {"tile": 88, "overlap": 24, "stride": 64, "tile_latent": 11, "blend": "linear"}
    assert set(S.TILING_RULES) <= set(side["tiling"])
    assert {"first", "step", "cache", "protocol"} <= set(side["decoder"])       # the untiled fields stay
    graph = onnx.load(os.path.join(out, side["decoder"]["step"]), load_external_data=False).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims["latent"] == ["batch", 16, 1, 11, 11]
    assert all(isinstance(c["shape"][3], int) for c in side["decoder"]["cache"])
    with open(os.path.join(out, S.MANIFEST)) as f:
        assert {g["vae_tile"] for g in json.load(f)["graphs"]} == {11}


def test_onnxruntime_tiled_decode_matches_torch(tiled_export):
    out, src = tiled_export
    from wan_export.release import open_input
    from wan_export.validators.parity import torch_state

    comp = open_input(src).only("vae")
    vae = load_vae(torch_state(comp.table), comp.config)
    t, h, w = LATENT
    z = torch.randn(1, CFG.z_dim, t, h, w, generator=torch.Generator().manual_seed(5))
    ref = decode_tiled(vae, z, Tiling(11, 3))
    got = drive_tiled(out, z.numpy())
    assert got.shape == tuple(ref.shape)
    assert compare(ref, got)["rel_l2"] < TOL


def test_tiled_graphs_validate_at_the_tile(tiled_export):
    out, src = tiled_export
    report = validate_onnx(out, src)
    bad = [f"{c.name}: {c.failures}" for c in report.checks if not c.passed]
    assert not bad, "\n".join(bad)
    assert sum(c.name.startswith("vae decoder steps") and "h=11 w=11" in c.name for c in report.checks) == 3


def test_bad_tile_exit_2_writes_nothing(runner, tiled_export, tmp_path):
    from wan_export.cli import cli

    _, src = tiled_export
    res = runner.invoke(cli, ["onnx", src, "--component", "vae-decoder", "--vae-tile", "60", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and res.stderr == \
        "Error: --tile 60 is not a multiple of the Wan2.1 VAE's spatial stride 8 px\n"
    assert os.listdir(tmp_path) == []


def test_cli_onnx_backend_matches_torch_backend(runner, tiled_export, tmp_path):
    from PIL import Image

    from wan_export.cli import cli

    out, src = tiled_export
    z = np.random.default_rng(2).standard_normal((16, 1, 11, 14)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    frames = {}
    for backend, vae in (("onnx", out), ("torch", src)):
        res = runner.invoke(cli, ["vae", "decode", str(tmp_path / "z.npy"), "-o", str(tmp_path / backend),
                                  "--vae", vae, "--backend", backend, "--tile", "88", "--overlap", "24", "-q"])
        assert res.exit_code == 0, res.output
        frames[backend] = np.asarray(Image.open(tmp_path / backend / "frame_00000.png")).astype(int)
    assert np.abs(frames["onnx"] - frames["torch"]).max() <= 1       # uint8 rounding of ~1e-7 differences
    res = runner.invoke(cli, ["vae", "decode", str(tmp_path / "z.npy"), "-o", str(tmp_path / "x"), "--vae", out,
                              "--backend", "onnx", "--tile", "128"])
    assert res.exit_code == 2 and res.stderr == ("Error: the ONNX graphs were exported at --vae-tile 88 "
                                                 "--vae-overlap 24 px; --tile/--overlap must match\n")
