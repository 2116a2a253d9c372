"""README.md model card of a release: Hugging Face YAML front matter, the files, usage for each
consumer the artifacts serve (USAGE: one entry per consumer), validation and provenance.
Built from the manifest only, so it is as reproducible as the manifest.
"""
from __future__ import annotations

import os

from wan_export.atomic import atomic_file
from wan_export.release_pipeline.formats import FORMATS
from wan_export.release_pipeline.manifest import human_size
from wan_export.variants import VARIANTS

PIPELINE_TAGS = {"t2v": "text-to-video", "vace": "text-to-video", "i2v": "image-to-video",
                 "flf2v": "image-to-video", "ti2v": "text-to-video"}
COMFY_FOLDERS = (("umt5", "text_encoders", "Load CLIP (CLIPLoader, type wan)"),
                 ("vae", "vae", "Load VAE (VAELoader)"),
                 ("", "diffusion_models", "Load Diffusion Model (UNETLoader)"))


def _files(art: dict, suffix: str = "") -> list[str]:
    return [f["path"] for f in art.get("files", []) if f["path"].endswith(suffix)]


def _comfyui(art, ctx) -> list[str]:
    lines = ["Copy the files into ComfyUI's model folders and load them with the core nodes:", "",
             "| file | ComfyUI folder | node |", "|---|---|---|"]
    for path in _files(art, ".safetensors"):
        base = os.path.basename(path)
        marker, folder, node = next(r for r in COMFY_FOLDERS if r[0] in base)
        if "checkpoint" in base:
            folder, node = "checkpoints", "Load Checkpoint (CheckpointLoaderSimple)"
        lines.append(f"| `{path}` | `ComfyUI/models/{folder}/` | {node} |")
    return lines


def _comfyui_gguf(art, ctx) -> list[str]:
    return ["With the ComfyUI-GGUF custom node: copy a `.gguf` file into `ComfyUI/models/unet/` (or "
            "`diffusion_models/`) and load it with **Unet Loader (GGUF)** (`UnetLoaderGGUF`); the VAE and "
            "text encoder load with the core nodes."]


def _sdcpp(art, ctx) -> list[str]:
    gguf = (_files(art, ".gguf") or ["model.gguf"])[0]
    shift = ctx["variant"].flow_shift if ctx["variant"] else 5.0
    vae = "wan2.2_vae.safetensors" if ctx["variant"] and ctx["variant"].vae == "2.2" else "wan_2.1_vae.safetensors"
    return ["stable-diffusion.cpp:", "", "```bash",
            f"sd -M vid_gen --diffusion-model {gguf} --vae {vae} --t5xxl umt5_xxl_fp16.safetensors \\",
            "   -p \"a cat walking in the snow\" --cfg-scale 5.0 --sampling-method euler -W 832 -H 480 \\",
            f"   --video-frames 33 --flow-shift {shift:g}", "```"]


def _diffusers(art, ctx) -> list[str]:
    index = [p for p in _files(art, "model_index.json")]
    folder = os.path.dirname(index[0]) if index else art["name"]
    repo = ctx["repo"]
    where = f'"{repo}", subfolder="{folder}"' if repo else f'"{folder}"'
    return ["diffusers (offline-loadable folder):", "", "```python", "import torch",
            "from diffusers import DiffusionPipeline", "",
            f"pipe = DiffusionPipeline.from_pretrained({where}, torch_dtype=torch.bfloat16)",
            "pipe.to(\"cuda\")",
            "video = pipe(prompt=\"a cat walking in the snow\", num_frames=33).frames[0]", "```"]


def _onnx(art, ctx) -> list[str]:
    return ["onnxruntime (graphs and I/O are described in `wan_onnx.json`; the VAE streams by `vae.json`):", "",
            "```python", "import onnxruntime as ort", "",
            f"dit = ort.InferenceSession(\"{art['name']}/transformer.onnx\", providers=[\"CPUExecutionProvider\"])",
            "```"]


def _tensorrt(art, ctx) -> list[str]:
    return ["TensorRT for RTX (`pip install tensorrt-rtx`):", "", "```python", "import tensorrt_rtx as trt", "",
            "runtime = trt.Runtime(trt.Logger())",
            f"engine = runtime.deserialize_cuda_engine(open(\"{art['name']}/transformer.plan\", \"rb\").read())",
            "context = engine.create_execution_context()", "```"]


def _wan(art, ctx) -> list[str]:
    return ["The official Wan layout: point Wan's `generate.py --ckpt_dir` at the folder."]


def _nunchaku(art, ctx) -> list[str]:
    return ["nunchaku (SVDQuant W4A4 kernels) loads the `.safetensors` file."]


USAGE = {"comfyui": ("ComfyUI", _comfyui), "comfyui-gguf": ("ComfyUI-GGUF", _comfyui_gguf),
         "sdcpp": ("stable-diffusion.cpp", _sdcpp), "diffusers": ("diffusers", _diffusers),
         "onnxruntime": ("ONNX Runtime", _onnx), "tensorrt": ("TensorRT runtime", _tensorrt),
         "wan": ("Wan reference code", _wan), "nunchaku": ("nunchaku", _nunchaku)}


def front_matter(man: dict, variant) -> list[str]:
    m = man["model"]
    built = [a for a in man["artifacts"] if a["status"] != "unavailable"]
    libs = [FORMATS[a["format"]].library for a in built] or ["diffusers"]
    library = "diffusers" if "diffusers" in libs else libs[0]
    tag = m.get("pipeline_tag") or (PIPELINE_TAGS[variant.config.model_type] if variant else "text-to-video")
    tags = list(dict.fromkeys(["wan", "video", "wan-export", *sorted({a["format"] for a in built}), *m.get("tags", [])]))
    return ["---", f"base_model: {m['base_model']}", "base_model_relation: quantized", f"library_name: {library}",
            f"pipeline_tag: {tag}", f"license: {m['license']}", "tags:", *[f"- {t}" for t in tags], "---"]


def _validation(a: dict) -> str:
    v = a.get("validation")
    if a["status"] == "unavailable":
        return f"not built: {a.get('reason')}"
    if not v:
        return "not validated"
    w = v.get("worst")
    worst = f"; worst {w['metric']} {w['value']} (bound {w['bound']}) in {w['check']}" if w else ""
    return f"{'passed' if v['passed'] else 'FAILED'} {v['checks'] - v['failed']}/{v['checks']} checks{worst}"


def render(man: dict) -> str:
    variant = VARIANTS.get(man["source"].get("variant") or "")
    m = man["model"]
    lines = front_matter(man, variant) + ["", f"# {m['name']}", ""]
    if m.get("description"):
        lines += [m["description"], ""]
    lines += [f"Converted from [{m['base_model']}](https://huggingface.co/{m['base_model']}) by wan-export "
              f"{man['tool']['version']}; every artifact was loaded back through its consumer's loader and "
              "compared with a reference PyTorch Wan implementation (see report.html).", ""]
    if m.get("authors"):
        lines += [f"Authors of the model: {', '.join(m['authors'])}.", ""]
    lines += ["## Files", "", "| artifact | format | options | size | validation |", "|---|---|---|---|---|"]
    for a in man["artifacts"]:
        opts = ", ".join(f"{k}={v}" for k, v in a["options"].items())
        size = human_size(a.get("bytes"))
        lines.append(f"| `{a['name']}` | {a['format']} | {opts} | {size} | {_validation(a)} |")
    ctx = {"variant": variant, "repo": m.get("repo")}
    lines += ["", "## Usage"]
    for a in (a for a in man["artifacts"] if a["status"] != "unavailable"):
        for consumer in FORMATS[a["format"]].consumers:
            title, fn = USAGE[consumer]
            lines += ["", f"### {title}: `{a['name']}`", "", *fn(a, ctx)]
    lines += ["", "## Provenance", "", f"- recipe `{man['recipe']['file']}` sha256 `{man['recipe']['sha256']}`",
              f"- source sha256 `{man['source']['sha256']}` ({len(man['source']['files'])} files)",
              "- `manifest.json` lists every file with its sha256; `sha256sum -c SHA256SUMS` checks them."]
    return "\n".join(lines) + "\n"


def write(dist: str, recipe, man: dict) -> None:
    with atomic_file(os.path.join(dist, "README.md"), "w") as f:
        f.write(render(man))
