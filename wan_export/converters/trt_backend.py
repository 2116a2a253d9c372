"""The one builder for TensorRT for RTX (`tensorrt_rtx`, ahead of time, no GPU needed) and
standard TensorRT 10.x/11.x (`tensorrt`, builds for the GPU it runs on).

Both expose the same Python API; the differences are a table (`BACKENDS`) and are
reached by enum *names* only, never integers (their values moved between 10.16
and 11.0). Precision lives in the ONNX (strongly typed networks), so no precision
flags are set. Every import of TensorRT happens in `load_backend`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from wan_export.errors import BadInputError, UnsupportedError

# backend -> (module, install line, how it targets GPUs)
BACKENDS = {
    "rtx": ("tensorrt_rtx", 'pip install "wan-export[trt]"  (or: pip install tensorrt-rtx)', "compute_capabilities"),
    "tensorrt": ("tensorrt", "pip install tensorrt-cu12  (NVIDIA's wheels come from pypi.nvidia.com; a GPU "
                             "host is needed to build)", "local_gpu"),
}
# TensorRT-RTX logs these at its most severe level on a machine without a GPU; they are harmless
# (formats-onnx-tensorrt.md §9) and never reach the user
HARMLESS = ("Thread context has not been set", "Error reading CUDA GPU properties", "cudaError 35")
WORKSPACE_BYTES = 8 << 30


@dataclass
class Backend:
    name: str                 # rtx | tensorrt
    trt: object               # the imported module
    version: str

    @property
    def aot(self) -> bool:
        return BACKENDS[self.name][2] == "compute_capabilities"


def load_backend(name: str) -> Backend:
    """Import the backend's module, or raise one line with the install command."""
    from importlib import import_module

    if name == "auto":
        for candidate in ("rtx", "tensorrt"):
            try:
                return load_backend(candidate)
            except UnsupportedError:
                continue
        raise UnsupportedError(f"no TensorRT is installed: {BACKENDS['rtx'][1]}")
    if name not in BACKENDS:
        raise UnsupportedError(f"unknown backend {name!r} (choose from auto, {', '.join(BACKENDS)})")
    module, install, _ = BACKENDS[name]
    try:
        trt = import_module(module)
    except ImportError:
        raise UnsupportedError(f"{module} is not installed: {install}") from None
    return Backend(name, trt, trt.__version__)


def make_logger(trt):
    """A logger that keeps messages (errors for the user, the rest for --verbose diagnosis)."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity, msg):
            if not any(h in msg for h in HARMLESS):
                self.messages.append((severity.name, msg))

        def errors(self) -> list[str]:
            return [m for s, m in self.messages if s in ("ERROR", "INTERNAL_ERROR")]

    return Logger()


def _network(backend: Backend, builder):
    """A strongly typed network: TensorRT 10.x needs the flag, TensorRT 11 and RTX are always typed."""
    trt = backend.trt
    flag = trt.NetworkDefinitionCreationFlag.__members__.get("STRONGLY_TYPED")
    major = int(backend.version.split(".")[0])
    if backend.name == "tensorrt" and major < 11 and flag is not None:
        return builder.create_network(1 << int(flag))
    return builder.create_network(0)


def parse_onnx(backend: Backend, path: str, logger=None):
    """(builder, network, parser, logger), or BadInputError naming every node the parser rejects."""
    trt = backend.trt
    logger = logger or make_logger(trt)
    builder = trt.Builder(logger)
    network = _network(backend, builder)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.path.abspath(path)):
        raise BadInputError(f"the {backend.trt.__name__} ONNX parser rejects " + "; ".join(parser_errors(parser)),
                            path)
    return builder, network, parser, logger


def parser_errors(parser) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        where = f"node {e.node_name() or e.node()} ({e.node_operator()})" if e.node() >= 0 else "graph"
        out.append(f"{where}: {' '.join(e.desc().split())[:200]}")
    return out or ["the graph (no detail given)"]


def network_io(network) -> list[dict]:
    """Name, direction, dtype (TensorRT name) and dims (-1 = dynamic) of every network I/O."""
    out = []
    for kind, n, get in (("input", network.num_inputs, network.get_input),
                         ("output", network.num_outputs, network.get_output)):
        for i in range(n):
            t = get(i)
            out.append({"name": t.name, "io": kind, "dtype": t.dtype.name.lower(), "dims": list(t.shape)})
    return out


@dataclass(frozen=True)
class BuildSettings:
    targets: tuple[str, ...]
    weightless: bool = False
    optimization_level: int = 3
    workspace_bytes: int = WORKSPACE_BYTES

    def to_dict(self, backend: Backend) -> dict:
        flags = ["STRIP_PLAN", "REFIT_IDENTICAL"] if self.weightless else []
        return {"builder_optimization_level": self.optimization_level, "workspace_bytes": self.workspace_bytes,
                "strongly_typed": True, "flags": flags, "compute_capabilities":
                [t.upper() for t in self.targets] if backend.aot else "the local GPU"}


def build_plan(backend: Backend, onnx_path: str, profiles: list[dict], settings: BuildSettings) -> tuple[bytes, dict]:
    """Parse, configure, build; returns (plan bytes, info with network I/O and seconds)."""
    trt = backend.trt
    builder, network, _parser, logger = parse_onnx(backend, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    config.builder_optimization_level = settings.optimization_level
    if backend.aot:
        config.num_compute_capabilities = len(settings.targets)
        for i, target in enumerate(settings.targets):
            config.set_compute_capability(trt.ComputeCapability.__members__[target.upper()], i)
    if settings.weightless:
        for flag in ("STRIP_PLAN", "REFIT_IDENTICAL"):
            config.set_flag(trt.BuilderFlag.__members__[flag])
    io = network_io(network)
    names = {t["name"] for t in io if t["io"] == "input"}
    for ranges in profiles:
        missing = sorted(names - set(ranges))
        if missing:
            raise BadInputError(f"no profile shapes for network inputs {', '.join(missing)}", onnx_path)
        p = builder.create_optimization_profile()
        for name in sorted(names):
            lo, opt, hi = (tuple(s) for s in ranges[name])
            p.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(p)
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        errors = logger.errors() or ["the builder returned no plan"]
        raise UnsupportedError(f"TensorRT build for {', '.join(settings.targets)} failed: "
                               + " ".join(errors[-1].split())[:300], onnx_path)
    return bytes(plan), {"io": io, "seconds": round(seconds, 2)}


def engine_validity(backend: Backend, plan: bytes) -> tuple[str, list[str]]:
    """(validity name, diagnostics names) from the plan header; RTX 1.1+ and TensorRT 10.x+ have it."""
    trt = backend.trt
    runtime = trt.Runtime(make_logger(trt))
    get = getattr(runtime, "get_engine_validity", None)
    if get is None:
        return "UNKNOWN", ["this runtime has no get_engine_validity"]
    validity, diagnostics = get(plan)
    flags = [name for name, member in trt.EngineInvalidityDiagnostics.__members__.items()
             if int(diagnostics) & int(member)]
    return validity.name, flags
