"""Quantizers: ggml block types (GGUF), FP8, NVFP4, SVDQuant and calibration."""
