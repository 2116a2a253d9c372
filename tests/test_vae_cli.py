"""`wan-export vae decode|encode`: PNG folders and mp4, torch and onnx backends, one-line bad input."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from wan_export import synthetic
from wan_export.cli import cli
from wan_export.model.config import VAEConfig

CFG = VAEConfig(version="2.1", dim=4, dec_dim=4, z_dim=16)     # 4 levels (stride 8), base dim 4
SHAPE = (16, 2, 11, 14)                                         # [C, T, h, w]: 5 frames of 112x88
TILE = ["--tile", "88", "--overlap", "24"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("vae-cli")
    vae = synthetic.write_safetensors(str(d / "vae.safetensors"), synthetic.vae_state(CFG, seed=1))
    z = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    np.save(d / "z.npy", z)
    np.save(d / "z48.npy", np.zeros((48, 2, 11, 14), np.float32))
    (d / "bad.npy").write_bytes(b"not numpy")
    return d, vae


def test_decode_png_then_encode_back(runner, files, tmp_path):
    d, vae = files
    res = runner.invoke(cli, ["vae", "decode", str(d / "z.npy"), "-o", str(tmp_path / "frames"), "--vae", vae,
                              *TILE, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["kind"] == "png" and out["shape"] == [5, 88, 112, 3] and out["tiling"]["tile"] == 88
    assert sorted(os.listdir(tmp_path / "frames")) == [f"frame_{i:05d}.png" for i in range(5)]
    res = runner.invoke(cli, ["vae", "encode", str(tmp_path / "frames"), "-o", str(tmp_path / "z.safetensors"),
                              "--vae", vae, *TILE, "--json", "-q"])
    assert res.exit_code == 0, res.output
    from wan_export.video_io import read_latents

    assert read_latents(str(tmp_path / "z.safetensors")).shape == (1, *SHAPE)


def test_mp4_round_trip_is_deterministic(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    from wan_export.video_io import read_video, write_video

    yy, xx = np.mgrid[0:32, 0:48]
    still = np.stack([xx * 5, yy * 7, (xx + yy) * 3], axis=-1).astype(np.uint8)     # smooth: H.264 keeps it
    frames = np.repeat(still[None], 5, axis=0)
    for name in ("a.mp4", "b.mp4"):
        assert write_video(str(tmp_path / name), frames, 16) == "mp4"
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    back = read_video(str(tmp_path / "a.mp4"))
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 4        # lossy (yuv420), but the same picture


@pytest.mark.parametrize("args, message", [
    (["decode", "{d}/z.npy", *TILE[:1], "80"], "Error: --tile 80 px is smaller than the Wan2.1 VAE's receptive "
                                                "field (88 px = 11 latents)"),
    (["decode", "{d}/z.npy", "--tile", "100"], "Error: --tile 100 is not a multiple of the Wan2.1 VAE's spatial "
                                                "stride 8 px"),
    (["decode", "{d}/z48.npy"], "Error: {d}/z48.npy: latents have 48 channels but the Wan2.1 VAE takes 16"),
    (["decode", "{d}/bad.npy"], "Error: {d}/bad.npy: not a readable .npy file"),
    (["decode", "{d}/none.safetensors"], "Error: {d}/none.safetensors: no such file"),
    (["decode", "{d}/z.npy", "--backend", "trt"], "Error: --backend trt needs "),
    (["decode", "{d}/z.npy", "--backend", "tpu"], "Error: unknown backend 'tpu' (choose from torch, onnx, trt)"),
    (["encode", "{d}/frames4", "-o", "{out}.npy"], "Error: {d}/frames4: video has 4 frames; the VAE encodes 4k+1"),
])
def test_bad_input_exit_2_one_line_nothing_written(runner, files, tmp_path, args, message):
    d, vae = files
    if "frames4" in args[1]:
        from wan_export.video_io import write_video

        if not (d / "frames4").exists():
            write_video(str(d / "frames4"), np.zeros((4, 16, 16, 3), np.uint8), 16)
    out = str(tmp_path / "out")
    argv = ["vae", *[a.format(d=d, out=out) for a in args], "--vae", vae]
    if "-o" not in argv:
        argv += ["-o", out]
    res = runner.invoke(cli, argv)
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith(message.format(d=d)) and res.stderr.count("\n") == 1 and res.stdout == ""
    assert os.listdir(tmp_path) == []
