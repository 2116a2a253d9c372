"""Roofline time of a stage on a GPU, and the communication terms of multi-GPU DiT sampling.

Per forward: time = max(matmul time, weight-read time) + elementwise time + exposed
communication, where matmul time sums each class's FLOPs over (dense peak of its
dtype x efficiency) and memory terms use (bandwidth x efficiency). The efficiency
factors are stated assumptions, not measurements: they are what well-tuned kernels
typically reach on these GPUs (cuBLAS GEMM, FlashAttention-2/3, cuDNN 3D conv).
"""
from __future__ import annotations

from dataclasses import dataclass

from wan_export.cost.gpus import GPU
from wan_export.cost.ops import MATMUL_CLASSES, Ops

EFFICIENCY = {
    "gemm": 0.70,         # large bf16/fp8 GEMMs reach 60-80 % of dense peak
    "attention": 0.55,    # FlashAttention: ~35-75 % of peak by GPU generation (softmax, exp units)
    "conv": 0.45,         # cuDNN 3D convolutions with few output channels are far from peak
    "memory": 0.80,       # achievable fraction of DRAM bandwidth
    "link": 0.70,         # NCCL all-to-all / all-gather bus bandwidth fraction
}
PARALLEL_MODES = ("cfg", "sequence", "ulysses", "ring")


@dataclass(frozen=True)
class Timing:
    matmul_s: float
    memory_s: float
    elementwise_s: float
    comm_s: float = 0.0          # exposed communication

    @property
    def total_s(self) -> float:
        return max(self.matmul_s, self.memory_s) + self.elementwise_s + self.comm_s

    @property
    def bound(self) -> str:
        return "compute" if self.matmul_s >= self.memory_s else "memory"

    def __mul__(self, k: float) -> "Timing":
        return Timing(self.matmul_s * k, self.memory_s * k, self.elementwise_s * k, self.comm_s * k)

    def to_dict(self) -> dict:
        return {"matmul_s": self.matmul_s, "memory_s": self.memory_s, "elementwise_s": self.elementwise_s,
                "comm_s": self.comm_s, "total_s": self.total_s, "bound": self.bound}


def peak(gpu: GPU, dtype: str) -> float:
    """FLOP/s of dtype on gpu, falling back to bf16 (then fp32) where it has no tensor path."""
    for d in (dtype, "bf16", "fp32"):
        t = gpu.tflops(d)
        if t:
            return t * 1e12
    raise ValueError(f"{gpu.name} has no peak figure")


def forward_time(ops: Ops, dtypes: dict, weight_read: int, act_bytes: int, gpu: GPU,
                 extra_gemm: int = 0, comm_s: float = 0.0) -> Timing:
    """One forward: `dtypes` maps each matmul class to its compute dtype."""
    matmul = sum(getattr(ops, k) / (peak(gpu, dtypes[k]) * EFFICIENCY[k]) for k in MATMUL_CLASSES)
    matmul += extra_gemm / (peak(gpu, "bf16") * EFFICIENCY["gemm"])
    bw = gpu.bandwidth_gbs * 1e9 * EFFICIENCY["memory"]
    return Timing(matmul, weight_read / bw, ops.elementwise * act_bytes / bw, comm_s)


def link_time(gpu: GPU, nbytes: float, collectives: int) -> float:
    return collectives * gpu.latency_us * 1e-6 + nbytes / (gpu.link_gbs * 1e9 * EFFICIENCY["link"])


def ulysses_comm(gpu: GPU, tokens: int, dim: int, blocks: int, degree: int, act_bytes: int = 2) -> float:
    """All-to-all of q, k, v before and of the output after every self-attention (DeepSpeed-Ulysses,
    as Wan's xDiT `usp`): each rank sends (P-1)/P of 4 tensors of tokens/P x dim per block."""
    if degree == 1:
        return 0.0
    per_block = 4 * tokens / degree * dim * act_bytes * (degree - 1) / degree
    return link_time(gpu, per_block * blocks, 4 * blocks)


def ring_comm(gpu: GPU, tokens: int, dim: int, blocks: int, degree: int, attn_s: float,
              act_bytes: int = 2) -> float:
    """Ring attention: P-1 hops of the local K and V per block, overlapped with the attention
    compute of the same block; only the part that does not hide behind it is exposed."""
    if degree == 1:
        return 0.0
    per_block = (degree - 1) * 2 * tokens / degree * dim * act_bytes
    comm = link_time(gpu, per_block * blocks, (degree - 1) * blocks)
    return max(0.0, comm - attn_s)


def gather_comm(gpu: GPU, nbytes: int, degree: int) -> float:
    """All-gather of a result split over `degree` ranks (CFG branches or sequence shards)."""
    if degree == 1:
        return 0.0
    return link_time(gpu, nbytes * (degree - 1) / degree, 1)
