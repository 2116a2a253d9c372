"""One module per output format (diffusers, comfyui, gguf, onnx, trt, stock)."""
