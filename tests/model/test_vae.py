"""Reference Wan VAE: stock keys/shapes, parity with diffusers, the explicit step cache."""
from __future__ import annotations

import re

import pytest
import torch

from tests.shared_data import key_list

from wan_export.errors import BadInputError
from wan_export.model.config import VAE21, VAE22, WAN22_LATENT_MEAN, WAN22_LATENT_STD, VAEConfig
from wan_export.model.vae import WanVAE, load_vae

TINY21 = VAEConfig(version="2.1", dim=16, dec_dim=16, z_dim=16)
TINY22 = VAEConfig(version="2.2", dim=16, dec_dim=32, z_dim=48,
                   latents_mean=WAN22_LATENT_MEAN, latents_std=WAN22_LATENT_STD)
TINY = {"2.1": TINY21, "2.2": TINY22}


@pytest.mark.parametrize("cfg, keyfile, params", [
    (VAE21, "wan_vae21_keys.txt", 126_892_531),
    (VAE22, "wan_vae22_keys.txt", 704_688_668),
])
def test_stock_keys_on_meta(cfg, keyfile, params):
    with torch.device("meta"):
        model = WanVAE(cfg)
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == key_list(keyfile)
    assert sum(p.numel() for p in model.parameters()) == params


# ---- random weights and the stock -> diffusers rename (facts: formats-diffusers.md §2) ----

def random_vae(cfg: VAEConfig, seed: int = 0) -> WanVAE:
    g = torch.Generator().manual_seed(seed)
    model = WanVAE(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.2 * r)
            elif name.endswith("bias"):
                p.copy_(0.1 * r)
            else:  # conv weights (attention proj included, though zero-init officially)
                p.copy_(r * (1.0 / p[0].numel()) ** 0.5)
        model.decoder.head[2].weight.mul_(0.3)  # keep decoded pixels mostly inside the clamp
    return model


_RES = {"residual.0.gamma": "norm1.gamma", "residual.2.": "conv1.", "residual.3.gamma": "norm2.gamma",
        "residual.6.": "conv2.", "shortcut.": "conv_shortcut."}


def to_diffusers(key: str, version: str) -> str:
    k = re.sub(r"^conv1\.", "quant_conv.", key)
    k = re.sub(r"^conv2\.", "post_quant_conv.", k)
    k = re.sub(r"^(encoder|decoder)\.conv1\.", r"\1.conv_in.", k)
    k = re.sub(r"\.head\.0\.gamma$", ".norm_out.gamma", k)
    k = re.sub(r"\.head\.2\.", ".conv_out.", k)
    k = k.replace(".middle.0.", ".mid_block.resnets.0.").replace(".middle.2.", ".mid_block.resnets.1.")
    k = k.replace(".middle.1.", ".mid_block.attentions.0.")
    if version == "2.1":
        k = re.sub(r"^encoder\.downsamples\.", "encoder.down_blocks.", k)
        k = re.sub(r"^decoder\.upsamples\.(\d+)\.",
                   lambda m: f"decoder.up_blocks.{int(m[1]) // 4}."
                   + (f"resnets.{int(m[1]) % 4}." if int(m[1]) % 4 < 3 else "upsamplers.0."), k)
    else:
        k = re.sub(r"^encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\.",
                   lambda m: f"encoder.down_blocks.{m[1]}."
                   + (f"resnets.{m[2]}." if int(m[2]) < 2 else "downsampler."), k)
        k = re.sub(r"^decoder\.upsamples\.(\d+)\.upsamples\.(\d+)\.",
                   lambda m: f"decoder.up_blocks.{m[1]}."
                   + (f"resnets.{m[2]}." if int(m[2]) < 3 else "upsampler."), k)
    for a, b in _RES.items():
        k = k.replace(a, b)
    return k


def diffusers_twin(model: WanVAE):
    from diffusers import AutoencoderKLWan

    cfg = model.cfg
    kw = dict(base_dim=cfg.dim, z_dim=cfg.z_dim, latents_mean=list(cfg.latents_mean),
              latents_std=list(cfg.latents_std))
    if cfg.version == "2.2":
        kw.update(decoder_base_dim=cfg.dec_dim, is_residual=True, in_channels=12, out_channels=12,
                  patch_size=2, scale_factor_spatial=16)
    ref = AutoencoderKLWan(**kw).eval()
    ref.load_state_dict({to_diffusers(k, cfg.version): v for k, v in model.state_dict().items()},
                        strict=True)
    return ref


@pytest.fixture(scope="module", params=["2.1", "2.2"])
def pair(request):
    model = random_vae(TINY[request.param])
    return model, diffusers_twin(model)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


CASES = [(1, 1, 32, 32), (2, 5, 32, 48), (1, 9, 32, 32)]  # (batch, frames, H, W)


@pytest.mark.parametrize("b, t, h, w", CASES)
def test_encode_matches_diffusers(pair, b, t, h, w):
    model, ref = pair
    video = torch.rand(b, 3, t, h, w, generator=torch.Generator().manual_seed(t)) * 2 - 1
    with torch.no_grad():
        ours = model.encode(video)
        theirs = ref.encode(video).latent_dist.mean
    s = model.cfg.spatial_stride
    assert ours.shape == (b, model.cfg.z_dim, 1 + (t - 1) // 4, h // s, w // s) == theirs.shape
    assert rel_err(ours, theirs) <= 1e-5


@pytest.mark.parametrize("b, t, h, w", CASES)
def test_decode_matches_diffusers(pair, b, t, h, w):
    model, ref = pair
    s, t_lat = model.cfg.spatial_stride, 1 + (t - 1) // 4
    z = torch.randn(b, model.cfg.z_dim, t_lat, h // s, w // s, generator=torch.Generator().manual_seed(t))
    with torch.no_grad():
        ours = model.decode(z)
        theirs = ref.decode(z).sample
    assert ours.shape == (b, 3, t, h, w) == theirs.shape
    assert (theirs.abs() < 1).float().mean() > 0.5, "outputs saturate: the test would be blind"
    assert rel_err(ours, theirs) <= 1e-5


def test_normalize_round_trip_matches_official_formula(pair):
    model, _ = pair
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    mean = torch.tensor(model.cfg.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(model.cfg.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        mu = model.encode(video)
        assert torch.allclose(model.encode(video, normalize=True), (mu - mean) / std, atol=1e-5)
        zn = (mu - mean) / std
        assert torch.allclose(model.decode(zn, normalize=True), model.decode(zn * std + mean), atol=1e-5)


def _check_functional(cache_in, snapshot):
    """The step must not modify the cache it was given."""
    for a, b in zip(cache_in, snapshot):
        assert torch.equal(a, b)


def test_decoder_steps_stream_like_diffusers(pair):
    model, ref = pair
    s = model.cfg.spatial_stride
    z = torch.randn(1, model.cfg.z_dim, 4, 32 // s, 48 // s, generator=torch.Generator().manual_seed(7))
    spec = model.decoder_cache_spec(z.shape)
    zeros = model.init_decoder_cache(z.shape)
    assert [tuple(c.shape) for c in zeros] == [slot.shape for slot in spec]
    assert all(not c.any() for c in zeros)
    frames, cache = [], zeros
    with torch.no_grad():
        for i in range(z.shape[2]):
            snapshot = [c.clone() for c in cache]
            out, new = model.decoder_step(z[:, :, i:i + 1], cache, first=i == 0)
            _check_functional(cache, snapshot)
            assert [tuple(c.shape) for c in new] == [slot.shape for slot in spec]
            assert out.shape[2] == (1 if i == 0 else 4)
            frames.append(out)
            cache = [c.clone() for c in new]  # a fresh copy, as an engine would hand it back
        streamed = torch.cat(frames, dim=2)
        assert torch.equal(streamed, model.decode(z))
        assert rel_err(streamed, ref.decode(z).sample) <= 1e-5


def test_encoder_steps_match_encode(pair):
    model, _ = pair
    video = torch.rand(1, 3, 9, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    spec = model.encoder_cache_spec(video.shape)
    cache = model.init_encoder_cache(video.shape)
    chunks = [video[:, :, :1], video[:, :, 1:5], video[:, :, 5:9]]
    mus = []
    with torch.no_grad():
        for i, chunk in enumerate(chunks):
            snapshot = [c.clone() for c in cache]
            mu, new = model.encoder_step(chunk, cache, first=i == 0)
            _check_functional(cache, snapshot)
            assert [tuple(c.shape) for c in new] == [slot.shape for slot in spec]
            mus.append(mu)
            cache = new
        assert torch.equal(torch.cat(mus, dim=2), model.encode(video))


def test_step_misuse_is_rejected():
    model = random_vae(TINY21)
    with pytest.raises(ValueError):
        model.decoder_step(torch.zeros(1, 16, 1, 4, 4), None, first=False)
    with pytest.raises(ValueError):  # the official first chunk is one frame
        model.encoder_step(torch.zeros(1, 3, 5, 32, 32), None, first=True)
    with pytest.raises(ValueError):
        model.decoder_step(torch.zeros(1, 16, 2, 4, 4), None, first=True)


def test_load_vae_round_trip_and_errors():
    model = random_vae(TINY22)
    sd = model.state_dict()
    loaded = load_vae(iter(sd.items()), TINY22, dtype=torch.float32)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())
    assert not any(p.requires_grad or p.is_meta for p in loaded.parameters())

    bad = dict(sd)
    del bad["conv1.weight"]
    bad["extra.weight"] = torch.zeros(1)
    bad["conv2.bias"] = torch.zeros(3)
    with pytest.raises(BadInputError) as err:
        load_vae(bad, TINY22)
    msg = str(err.value)
    assert "conv1.weight" in msg and "extra.weight" in msg and "conv2.bias" in msg


def test_bad_frame_count_rejected():
    model = random_vae(TINY21)
    with pytest.raises(BadInputError):
        model.encode(torch.zeros(1, 3, 4, 32, 32))


class _Step(torch.nn.Module):
    """Exposes one step as forward(x, cache) for torch.export."""

    def __init__(self, model: WanVAE, kind: str, first: bool):
        super().__init__()
        self.model, self.kind, self.first = model, kind, first

    def forward(self, x, cache):
        step = self.model.decoder_step if self.kind == "decoder" else self.model.encoder_step
        return step(x, cache, self.first)


def test_steps_export_as_static_graphs(pair):
    """No data-dependent control flow: the 'step' graphs export, with dynamic h/w for the decoder."""
    from torch.export import Dim

    model, _ = pair
    s, z_dim = model.cfg.spatial_stride, model.cfg.z_dim
    with torch.no_grad():
        z = torch.randn(1, z_dim, 1, 32 // s, 48 // s)
        cache = model.decoder_step(z, None, first=True)[1]
        auto = {3: Dim.AUTO, 4: Dim.AUTO}
        graph = torch.export.export(_Step(model, "decoder", False), (z, cache),
                                    dynamic_shapes=(auto, [auto] * len(cache))).module()
        z2 = torch.randn(1, z_dim, 1, 64 // s, 32 // s)
        cache2 = model.decoder_step(z2, None, first=True)[1]
        assert torch.equal(graph(z2, cache2)[0], model.decoder_step(z2, cache2, first=False)[0])

        x = torch.rand(1, 3, 4, 32, 32) * 2 - 1
        cache = model.init_encoder_cache(x.shape)
        graph = torch.export.export(_Step(model, "encoder", False), (x, cache)).module()
        assert torch.equal(graph(x, cache)[0], model.encoder_step(x, cache, first=False)[0])
