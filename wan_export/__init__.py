"""wan-export: convert, quantize and validate Wan video models.

Stock (official Wan) tensor names are the hub: every reader maps to them and
every writer maps from them. Heavy libraries (torch, diffusers, onnx) are
imported lazily inside the functions that need them, so the CLI starts fast.
"""

__version__ = "0.1.0"
