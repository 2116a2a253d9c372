"""The reference PyTorch implementation of Wan: DiT, causal VAE and UMT5.

Every validator compares artifacts against these modules. They load stock
(official) tensor names directly and are written to export cleanly: real RoPE,
no data-dependent Python control flow in `forward`.
"""
