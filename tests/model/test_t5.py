"""Reference UMT5 encoder: stock keys/shapes and parity with transformers' UMT5EncoderModel."""
from __future__ import annotations

import re

import pytest
import torch

from tests.shared_data import key_list

from wan_export.errors import BadInputError
from wan_export.model.config import UMT5_XXL, T5Config
from wan_export.model.t5 import UMT5Encoder, load_t5

TINY = T5Config(vocab=256, dim=64, dim_attn=64, dim_ffn=96, num_heads=4, num_layers=2,
                num_buckets=32, max_distance=128)


def test_stock_keys_on_meta():
    with torch.device("meta"):
        model = UMT5Encoder(UMT5_XXL)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == key_list("wan_t5_umt5xxl_encoder_keys.txt")
    assert sum(p.numel() for p in model.parameters()) == 5_680_910_336


# Stock Wan -> HF names (formats-diffusers.md §3.4).
_RENAMES = [
    (r"^token_embedding\.", "shared."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.block.\1.layer.0.layer_norm."),
    (r"^blocks\.(\d+)\.attn\.", r"encoder.block.\1.layer.0.SelfAttention."),
    (r"^blocks\.(\d+)\.pos_embedding\.embedding\.",
     r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.block.\1.layer.1.layer_norm."),
    (r"^blocks\.(\d+)\.ffn\.gate\.0\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_0."),
    (r"^blocks\.(\d+)\.ffn\.fc1\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_1."),
    (r"^blocks\.(\d+)\.ffn\.fc2\.", r"encoder.block.\1.layer.1.DenseReluDense.wo."),
    (r"^norm\.", "encoder.final_layer_norm."),
]


def to_hf(key: str) -> str:
    for pattern, repl in _RENAMES:
        new = re.sub(pattern, repl, key)
        if new != key:
            return new
    raise KeyError(key)


def random_t5(cfg: T5Config, seed: int = 0) -> UMT5Encoder:
    g = torch.Generator().manual_seed(seed)
    model = UMT5Encoder(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * r)
            elif "embedding" in name:
                p.copy_(r)
            else:
                p.copy_(r * p.shape[1] ** -0.5)
    return model


@pytest.fixture(scope="module")
def pair():
    from transformers import UMT5Config, UMT5EncoderModel

    model = random_t5(TINY)
    hf_cfg = UMT5Config(vocab_size=TINY.vocab, d_model=TINY.dim, d_kv=TINY.dim_attn // TINY.num_heads,
                        d_ff=TINY.dim_ffn, num_layers=TINY.num_layers, num_heads=TINY.num_heads,
                        relative_attention_num_buckets=TINY.num_buckets,
                        relative_attention_max_distance=TINY.max_distance,
                        feed_forward_proj="gated-gelu", dropout_rate=0.0)
    ref = UMT5EncoderModel(hf_cfg).eval()
    sd = {to_hf(k): v for k, v in model.state_dict().items()}
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"encoder.embed_tokens.weight"}
    return model, ref


@pytest.mark.parametrize("length", [7, 40, 300])  # 300 > max_distance: the log buckets saturate
def test_matches_transformers_with_padding(pair, length):
    model, ref = pair
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(0, TINY.vocab, (3, length), generator=g)
    mask = torch.ones(3, length, dtype=torch.long)
    mask[1, length // 2:] = 0
    mask[2, 1:] = 0
    with torch.no_grad():
        ours = model(ids, mask)
        theirs = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    assert ours.dtype == torch.float32 and ours.shape == (3, length, TINY.dim)
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() <= 1e-5


def test_padding_does_not_leak(pair):
    model, _ = pair
    ids = torch.randint(0, TINY.vocab, (1, 12))
    short = model(ids[:, :8], torch.ones(1, 8, dtype=torch.long))
    mask = torch.ones(1, 12, dtype=torch.long)
    mask[:, 8:] = 0
    padded = model(ids, mask)[:, :8]
    assert torch.allclose(short, padded, atol=1e-5)


def test_load_t5_round_trip_and_errors():
    model = random_t5(TINY)
    sd = model.state_dict()
    loaded = load_t5(iter(sd.items()), TINY)
    ids = torch.randint(0, TINY.vocab, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    assert torch.equal(loaded(ids, mask), model(ids, mask).detach())

    bad = {k: v for k, v in sd.items() if k != "norm.weight"}
    bad["blocks.0.attn.q.weight"] = torch.zeros(3, 3)
    with pytest.raises(BadInputError) as err:
        load_t5(bad, TINY)
    assert "norm.weight" in str(err.value) and "blocks.0.attn.q.weight" in str(err.value)


def test_exports_with_dynamic_batch_and_length(pair):
    from torch.export import Dim

    model, _ = pair
    ids = torch.randint(0, TINY.vocab, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 9:] = 0
    auto = {0: Dim.AUTO, 1: Dim.AUTO}
    with torch.no_grad():
        graph = torch.export.export(model, (ids, mask), dynamic_shapes=(auto, auto)).module()
        ids2 = torch.randint(0, TINY.vocab, (3, 70))
        mask2 = torch.ones(3, 70, dtype=torch.long)
        mask2[0, 20:] = 0
        assert torch.equal(graph(ids2, mask2), model(ids2, mask2))
