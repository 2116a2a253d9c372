"""Stock Wan DiT <-> diffusers WanTransformer3DModel / WanVACETransformer3DModel names.

A pure rename for every variant (formats-diffusers.md section 1), including the
FLF2V `emb_pos` that diffusers' single-file loader forgets.
"""
from wan_export.keymaps import KeyMap

_BLOCK = [
    ("self_attn.q", "attn1.to_q"), ("self_attn.k", "attn1.to_k"), ("self_attn.v", "attn1.to_v"),
    ("self_attn.o", "attn1.to_out.0"),
    ("self_attn.norm_q", "attn1.norm_q"), ("self_attn.norm_k", "attn1.norm_k"),
    ("cross_attn.q", "attn2.to_q"), ("cross_attn.k", "attn2.to_k"), ("cross_attn.v", "attn2.to_v"),
    ("cross_attn.o", "attn2.to_out.0"),
    ("cross_attn.norm_q", "attn2.norm_q"), ("cross_attn.norm_k", "attn2.norm_k"),
    ("cross_attn.k_img", "attn2.add_k_proj"), ("cross_attn.v_img", "attn2.add_v_proj"),
    ("cross_attn.norm_k_img", "attn2.norm_added_k"),
    ("norm3", "norm2"),            # stock norm3 (affine, before cross-attn) is diffusers' norm2
    ("ffn.0", "ffn.net.0.proj"), ("ffn.2", "ffn.net.2"),
    ("before_proj", "proj_in"), ("after_proj", "proj_out"),   # VACE blocks only
]

_TOP = [
    ("patch_embedding", "patch_embedding"),
    ("vace_patch_embedding", "vace_patch_embedding"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.head", "proj_out"),
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),
    ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
]

ROWS = (
    [(f"{blk}.{{i}}.{s}.{{rest}}", f"{blk}.{{i}}.{d}.{{rest}}")
     for blk in ("blocks", "vace_blocks") for s, d in _BLOCK]
    + [(f"{blk}.{{i}}.modulation", f"{blk}.{{i}}.scale_shift_table") for blk in ("blocks", "vace_blocks")]
    + [(f"{s}.{{rest}}", f"{d}.{{rest}}") for s, d in _TOP]
    + [("head.modulation", "scale_shift_table"),
       ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed")]
)

DIT_DIFFUSERS = KeyMap("diffusers", ROWS)
