"""Stock Wan UMT5 encoder (t5.py) <-> Hugging Face UMT5EncoderModel names.

Pure rename (formats-diffusers.md section 3.4); HF's tied
`encoder.embed_tokens.weight` is the same tensor as `shared.weight`.
"""
from wan_export.keymaps import KeyMap

_E = "encoder.block.{i}.layer"
ROWS = [
    ("token_embedding.weight", "shared.weight"),
    ("blocks.{i}.norm1.weight", f"{_E}.0.layer_norm.weight"),
    ("blocks.{i}.attn.q.weight", f"{_E}.0.SelfAttention.q.weight"),
    ("blocks.{i}.attn.k.weight", f"{_E}.0.SelfAttention.k.weight"),
    ("blocks.{i}.attn.v.weight", f"{_E}.0.SelfAttention.v.weight"),
    ("blocks.{i}.attn.o.weight", f"{_E}.0.SelfAttention.o.weight"),
    ("blocks.{i}.pos_embedding.embedding.weight", f"{_E}.0.SelfAttention.relative_attention_bias.weight"),
    ("blocks.{i}.norm2.weight", f"{_E}.1.layer_norm.weight"),
    ("blocks.{i}.ffn.gate.0.weight", f"{_E}.1.DenseReluDense.wi_0.weight"),
    ("blocks.{i}.ffn.fc1.weight", f"{_E}.1.DenseReluDense.wi_1.weight"),
    ("blocks.{i}.ffn.fc2.weight", f"{_E}.1.DenseReluDense.wo.weight"),
    ("norm.weight", "encoder.final_layer_norm.weight"),
]

UMT5_HF = KeyMap("hf-umt5", ROWS)
TIED = {"encoder.embed_tokens.weight": "shared.weight"}
