"""Run `wan-export trt` plans on a GPU: engines with torch CUDA tensors as I/O buffers
(engine.py), the DiT step loop and the VAE streaming protocol (pipeline.py), and the
validator's GPU parity (parity.py). Needs a CUDA GPU and the runtime the plans were built
for; every TensorRT and CUDA import is inside a function."""
