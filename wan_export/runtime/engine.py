"""One TensorRT plan as a callable on torch CUDA tensors.

    eng = Engine.load("trt/transformer....plan", backend)       # backend from converters.trt_backend
    out = eng({"latents": x, "timestep": t, "context": c})     # dict of CUDA tensors

Shapes are set per call (inside the plan's profile), outputs are allocated as torch tensors
of the engine's reported shape, and the engine runs on torch's current CUDA stream.
A weightless plan is refitted from its ONNX first (`onnx_path`).
"""
from __future__ import annotations

from wan_export.errors import BadInputError, UnsupportedError

# TensorRT DataType name -> torch dtype name
TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
                "BOOL": "bool", "INT8": "int8", "UINT8": "uint8", "FP8": "float8_e4m3fn"}


class Engine:
    def __init__(self, backend, engine, path: str):
        import torch

        self.backend, self.engine, self.path = backend, engine, path
        self.context = engine.create_execution_context()
        trt = backend.trt
        self.inputs, self.outputs = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)
        self.dtypes = {n: getattr(torch, TORCH_DTYPES[engine.get_tensor_dtype(n).name])
                       for n in self.inputs + self.outputs}

    @classmethod
    def load(cls, path: str, backend, onnx_path: str | None = None) -> "Engine":
        from wan_export.converters.trt_backend import make_logger

        trt = backend.trt
        logger = make_logger(trt)
        runtime = trt.Runtime(logger)
        with open(path, "rb") as f:
            engine = runtime.deserialize_cuda_engine(f.read())
        if engine is None:
            raise UnsupportedError(f"{backend.trt.__name__} {backend.version} cannot load this plan here: "
                                   + (" ".join(logger.errors()[-1:]) or "no GPU or a different runtime"), path)
        if onnx_path is not None and _weightless(engine):
            refit_from_onnx(backend, engine, onnx_path, logger)
        return cls(backend, engine, path)

    def __call__(self, feeds: dict) -> dict:
        import torch

        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise BadInputError(f"missing engine inputs {', '.join(missing)}", self.path)
        keep = []
        for name in self.inputs:
            x = feeds[name].to(device="cuda", dtype=self.dtypes[name]).contiguous()
            keep.append(x)
            if not self.context.set_input_shape(name, tuple(x.shape)):
                raise BadInputError(f"{name} shape {tuple(x.shape)} is outside the plan's profile", self.path)
            self.context.set_tensor_address(name, x.data_ptr())
        out = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            out[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
            self.context.set_tensor_address(name, out[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise UnsupportedError("TensorRT execution failed", self.path)
        stream.synchronize()
        return out


def _weightless(engine) -> bool:
    return bool(getattr(engine, "refittable", False))


def refit_from_onnx(backend, engine, onnx_path: str, logger) -> None:
    trt = backend.trt
    refitter = trt.Refitter(engine, logger)
    if not trt.OnnxParserRefitter(refitter, logger).refit_from_file(onnx_path) or not refitter.refit_cuda_engine():
        raise UnsupportedError("refitting the weightless plan from its ONNX failed", onnx_path)
