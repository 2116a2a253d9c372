"""GPU table of the roofline: dense peak per dtype (TFLOPS, TOPS for integers), memory and links.

Every figure is the vendor's **dense** number (NVIDIA lists most tensor figures "with
sparsity"; those are halved here). `None` means the GPU has no tensor-core path for
that dtype. Each entry cites its datasheet (name + URL); figures were confirmed
against the pages named "checked:". Links are per direction (half the bidirectional
figure NVIDIA quotes).
"""
from __future__ import annotations

from dataclasses import dataclass

from wan_export.errors import BadInputError

DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4", "fp4")


@dataclass(frozen=True)
class GPU:
    name: str
    peak: dict                # dtype -> dense TFLOPS (TOPS); None = not supported
    bandwidth_gbs: float      # memory bandwidth, GB/s
    memory_gb: float
    link_gbs: float           # GPU-to-GPU bandwidth per direction, GB/s
    link: str
    latency_us: float         # per collective (our assumption: NVLink 10 us, PCIe 25 us)
    arch: str = ""            # sm_XX

    def tflops(self, dtype: str) -> float | None:
        return self.peak.get(dtype)

    def to_dict(self) -> dict:
        return {"name": self.name, "peak_tflops": dict(self.peak), "bandwidth_gbs": self.bandwidth_gbs,
                "memory_gb": self.memory_gb, "link_gbs": self.link_gbs, "link": self.link, "arch": self.arch}


def _peaks(fp32, tf32, bf16, fp16, fp8=None, int8=None, int4=None, fp4=None) -> dict:
    return dict(zip(DTYPES, (fp32, tf32, bf16, fp16, fp8, int8, int4, fp4)))


GPUS: dict[str, GPU] = {g.name: g for g in (
    # NVIDIA H100 Tensor Core GPU datasheet (H100 SXM column; tensor figures "with sparsity", halved):
    # https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
    # checked: https://archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html (datasheet table),
    #          https://glennklockwood.com/garden/processors/h100
    # FP32 67, TF32 989*, BF16/FP16 1979*, FP8 3958*, INT8 3958*; 80 GB HBM3, 3.35 TB/s; NVLink 900 GB/s.
    GPU("H100", _peaks(67, 494.5, 989.5, 989.5, 1979, 1979), 3350, 80, 450, "NVLink 4 (900 GB/s bidir.)", 10,
        "sm_90"),
    # NVIDIA H200 Tensor Core GPU datasheet (H200 SXM): same compute as H100 SXM, 141 GB HBM3e, 4.8 TB/s:
    # https://www.nvidia.com/en-us/data-center/h200/
    # checked: https://lzwjava.github.io/nvidia-h200-gpu-specs-en (H100/H200 SXM table),
    #          https://www.aiminingco.com/gpu/h200/specs
    GPU("H200", _peaks(67, 494.5, 989.5, 989.5, 1979, 1979), 4800, 141, 450, "NVLink 4 (900 GB/s bidir.)", 10,
        "sm_90"),
    # NVIDIA HGX B200 specifications (per GPU at 1,000 W; dense = half of the sparse figures):
    # https://www.nvidia.com/en-us/data-center/hgx/
    # checked: https://glennklockwood.com/garden/processors/B200 (HGX B200 table: FP32 80, TF32 1100,
    #          BF16/FP16 2250, FP8/INT8 4500, FP4 9000), https://docs.vultr.com/inference-cookbook/cuda/
    #          getting-started/hardware-overview (179-180 GB HBM3e, 8.0 TB/s, NVLink 5 1.8 TB/s bidir.)
    GPU("B200", _peaks(80, 1100, 2250, 2250, 4500, 4500, None, 9000), 8000, 180, 900,
        "NVLink 5 (1.8 TB/s bidir.)", 10, "sm_100"),
    # NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM; "with sparsity" figures halved):
    # https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
    # checked: https://glennklockwood.com/garden/processors/A100 (FP32 19.5, TF32 156, BF16/FP16 312,
    #          INT8 624, INT4 1248; 80 GB HBM2e 2,039 GB/s), NVLink 3 600 GB/s bidir.
    GPU("A100", _peaks(19.5, 156, 312, 312, None, 624, 1248), 2039, 80, 300, "NVLink 3 (600 GB/s bidir.)", 10,
        "sm_80"),
    # NVIDIA L40S datasheet: FP32 91.6, TF32 183 (366*), BF16/FP16 362.05 (733*), FP8 733 (1,466*),
    # INT8 733 (1,466*), INT4 733 (1,466*); 48 GB GDDR6, 864 GB/s; PCIe Gen4 x16 64 GB/s bidir., no NVLink:
    # https://resources.nvidia.com/en-us-l40s/l40s-datasheet-28413
    # checked: https://www.mullet.se/product.html?product_id=355414 (L40/L40S datasheet table),
    #          https://www.itcreations.com/nvidia-gpu/nvidia-l40s-gpu-accelerator
    GPU("L40S", _peaks(91.6, 183, 362.05, 362.05, 733, 733, 733), 864, 48, 32, "PCIe Gen4 x16 (64 GB/s bidir.)",
        25, "sm_89"),
    # NVIDIA Ada GPU Architecture whitepaper, appendix (GeForce RTX 4090; dense, FP32 accumulate, which is
    # what PyTorch uses): FP32 82.6, TF32 82.6, BF16/FP16 165.2, FP8 330.3, INT8 660.6, INT4 1,321.2;
    # 24 GB GDDR6X, 1,008 GB/s; PCIe Gen4 x16, no NVLink:
    # https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf
    # checked: https://waredb.com/processor/nvidia-geforce-rtx-4090 (same tensor table),
    #          https://hmc-tech.com/gpus/nvidia-geforce-rtx-4090-vs-nvidia-rtx-pro-5000-blackwell
    GPU("RTX 4090", _peaks(82.6, 82.6, 165.2, 165.2, 330.3, 660.6, 1321.2), 1008, 24, 32,
        "PCIe Gen4 x16 (64 GB/s bidir.)", 25, "sm_89"),
    # NVIDIA RTX Blackwell GPU Architecture whitepaper, appendix (GeForce RTX 5090): 104.8 FP32; tensor
    # FP16 838.4*, FP8 1,676.8*, FP4 3,352* (sparse, FP16 accumulate); dense FP32-accumulate figures are
    # a quarter of those for FP16/FP8 (GeForce half rate) and half for FP4: BF16/FP16 209.5, FP8 419,
    # FP4 1,676; INT8 838; 32 GB GDDR7, 1,792 GB/s; PCIe Gen5 x16 (128 GB/s bidir.), no NVLink:
    # https://images.nvidia.com/aem-dam/Solutions/geforce/blackwell/nvidia-rtx-blackwell-gpu-architecture.pdf
    # checked: https://www.spheron.network/blog/nvidia-rtx-5090-specs/ (sparse FP16/FP8/FP4, 1,792 GB/s),
    #          https://analysis.castromedia.org/analysis/compute/entities/rtx-5090.html (838 dense INT8)
    GPU("RTX 5090", _peaks(104.8, 104.8, 209.5, 209.5, 419, 838, None, 1676), 1792, 32, 64,
        "PCIe Gen5 x16 (128 GB/s bidir.)", 25, "sm_120"),
)}
ALIASES = {"4090": "RTX 4090", "5090": "RTX 5090", "RTX4090": "RTX 4090", "RTX5090": "RTX 5090"}


def get_gpu(name: str) -> GPU:
    key = name.strip().upper().replace("-", " ").replace("_", " ")
    for gpu in GPUS.values():
        if gpu.name.upper() == key:
            return gpu
    key = ALIASES.get(key.replace(" ", ""), key)
    if key in GPUS:
        return GPUS[key]
    raise BadInputError(f"unknown GPU {name!r} (known: {', '.join(GPUS)}; or give --peak-tflops and --bandwidth)")


def custom_gpu(peak_tflops: float, bandwidth_gbs: float, memory_gb: float = 0.0,
               link_gbs: float = 32.0) -> GPU:
    """A GPU given by one dense tensor peak (used for every dtype) and its memory bandwidth."""
    if peak_tflops <= 0 or bandwidth_gbs <= 0:
        raise BadInputError("--peak-tflops and --bandwidth must be positive")
    peak = {d: float(peak_tflops) for d in DTYPES}
    return GPU(f"custom ({peak_tflops:g} TFLOPS, {bandwidth_gbs:g} GB/s)", peak, float(bandwidth_gbs),
               memory_gb, link_gbs, f"{link_gbs:g} GB/s per direction", 25, "")
