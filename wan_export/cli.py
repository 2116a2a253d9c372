"""The `wan-export` Click group. Each command parses options and calls one library function.

Library code raises WanExportError; the group turns it into one
`Error: <file>: <problem>` line on stderr and the error's exit code
(2 bad input or usage, 1 parity failed). Heavy imports happen inside commands.
"""
from __future__ import annotations

import functools
import json
import sys

import click

from wan_export import __version__
from wan_export.errors import WanExportError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except WanExportError as e:
            click.echo(f"Error: {e.one_line()}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("Error: interrupted", err=True)
            ctx.exit(130)


class TableHelpOption(click.Option):
    """An option whose values the library checks (one-line errors) and whose help lists a table
    ("module:NAME") imported only when help is shown, so start-up stays light."""

    def __init__(self, *args, table: str, help_text: str, **kwargs):
        self._table, self._help_text = table, help_text
        super().__init__(*args, **kwargs)

    def get_help_record(self, ctx):
        from importlib import import_module

        module, name = self._table.split(":")
        self.help = self._help_text.format(", ".join(getattr(import_module(module), name)))
        return super().get_help_record(ctx)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print a JSON result on stdout.")(f)


def output_options(f):
    """-o/--output, --overwrite, --quiet and --json, shared by every writer."""
    f = click.option("-q", "--quiet", is_flag=True, help="No progress bars.")(f)
    f = click.option("--overwrite", is_flag=True, help="Replace an existing output.")(f)
    f = click.option("-o", "--output", "output", type=click.Path(), default=None,
                     help="Output path (default: a community-convention name in the current folder).")(f)
    return json_option(f)


def emit(result: dict, as_json: bool, text: str | None = None) -> None:
    """Print a command's result: JSON on stdout with --json, else the text form."""
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))
    elif text:
        click.echo(text)


def progress(quiet: bool):
    """A progress factory for library calls: progress(total, label) -> context yielding update(n)."""
    from wan_export.progress import bar

    return functools.partial(bar, enabled=not quiet)


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="wan-export")
def cli():
    """Convert, quantize and validate Wan video models.

    \b
    Examples:
      wan-export inspect Wan2.1-T2V-1.3B/
      wan-export comfyui Wan2.1-T2V-1.3B/ --dtype bf16
      wan-export gguf Wan2.1-T2V-14B/ --type Q4_K_M,Q8_0
      wan-export validate out.gguf --against Wan2.1-T2V-14B/
    """


@cli.command(context_settings=CONTEXT)
@click.argument("path")
@click.option("--no-scan", is_flag=True, help="Skip reading the data (no NaN/Inf check).")
@json_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def inspect(path, no_scan, as_json, quiet):
    """Show the variant, config, components, dtypes and warnings of PATH.

    PATH is a tensor file (.safetensors, index.json, .pth, .gguf), an official
    release folder, an A14B release or a diffusers pipeline folder.

    \b
    Example:
      wan-export inspect Wan2.1-T2V-1.3B/ --json
    """
    from wan_export.inspect import inspect_path, render_text

    report = inspect_path(path, scan=not no_scan, progress=progress(quiet or as_json))
    emit(report, as_json, render_text(report))


@cli.command(context_settings=CONTEXT)
@click.argument("path")
@click.option("--against", required=True, help="The source checkpoint (file or release folder).")
@click.option("--report", "report_path", type=click.Path(), default=None,
              help="Write the report here (.json for JSON, anything else for Markdown).")
@json_option
def validate(path, against, report_path, as_json):
    """Load artifact PATH through its real consumer and compare against SRC.

    Runs the reference model on both weight sets with fixed inputs and checks
    the outputs against per-format, per-dtype tolerances stated in the report.
    Exit code 0: parity holds; 1: parity failed; 2: bad input.

    \b
    Example:
      wan-export validate wan2.1_t2v_1.3B_bf16.safetensors --against Wan2.1-T2V-1.3B/ --report parity.md
    """
    from wan_export.validators.validate import validate as run

    report = run(path, against, report_path)
    emit(report.to_dict(), as_json, report.to_markdown())
    report.raise_if_failed()


@cli.command(context_settings=CONTEXT)
@click.option("-o", "--output", default="wan-export-demo", show_default=True, type=click.Path(),
              help="Folder for the synthetic release and every artifact.")
@click.option("--variant", default="wan2.1-t2v-1.3b", show_default=True,
              help="Variant of the tiny synthetic release (a variant id, as inspect prints it).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo folder.")
@json_option
def demo(output, variant, overwrite, as_json):
    """Write a tiny synthetic release, convert and validate it every way, summarise.

    \b
    Example:
      wan-export demo -o /tmp/wan-demo --variant wan2.2-ti2v-5b
    """
    from wan_export.demo import raise_if_failed, render_text, run_demo

    summary = run_demo(output, variant, overwrite=overwrite)
    emit(summary, as_json, render_text(summary))
    raise_if_failed(summary)


@cli.command(context_settings=CONTEXT)
@click.argument("src")
@click.option("-t", "--type", "types", cls=TableHelpOption,
              table="wan_export.quantizers.gguf_policy:MIXES",
              help_text="GGUF type(s), comma-separated, one file each: {}.", default="Q4_K_M", show_default=True,
              metavar="T[,T...]")
@click.option("--tensor-type", "tensor_types", multiple=True, metavar="REGEX=TYPE",
              help="Override the type of tensors whose stock name matches REGEX (repeatable; first match wins).")
@click.option("--imatrix", default=None, metavar="FILE",
              help="Importance matrix: llama.cpp imatrix .gguf or .safetensors {tensor: float32[in_features]}.")
@click.option("--float-type", type=click.Choice(["F16", "BF16", "F32"]), default=None,
              help="Type of the unquantized matrices (embeddings, head; default F16, or F32/BF16 for those types).")
@click.option("-j", "--jobs", type=int, default=0, show_default=True, help="Worker processes (0: every core).")
@output_options
def gguf(src, types, tensor_types, imatrix, float_type, jobs, output, overwrite, quiet, as_json):
    """Write GGUF files for ComfyUI-GGUF and stable-diffusion.cpp from SRC's DiT.

    One file per type (and per expert for A14B), all from a single read of SRC.
    -o is a .gguf path for one file, else a folder; default names follow city96
    (wan2.1-t2v-14b-Q4_K_M.gguf) and Comfy-Org for A14B experts.

    \b
    Examples:
      wan-export gguf Wan2.1-T2V-14B/ --type Q4_K_M,Q8_0 -o gguf/
      wan-export gguf Wan2.2-T2V-A14B/ --type Q5_K_M --tensor-type 'ffn\\.2\\.weight$=Q6_K'
    """
    from wan_export.converters.gguf import convert_gguf, render_text

    result = convert_gguf(src, output, types=types, tensor_types=tensor_types, imatrix=imatrix,
                          float_type=float_type, jobs=jobs, overwrite=overwrite,
                          progress=progress(quiet or as_json))
    emit(result, as_json, render_text(result))


@cli.command(context_settings=CONTEXT)
@click.argument("src")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="Cast every float tensor (default: keep each tensor's source dtype).")
@click.option("--flow-shift", type=float, default=None,
              help="Scheduler shift (default: the official one of the variant; Wan uses 3.0 for I2V at 480p).")
@output_options
def diffusers(src, dtype, flow_shift, output, overwrite, quiet, as_json):
    """Write a diffusers pipeline folder from SRC, loadable offline with DiffusionPipeline.

    SRC is an official release folder (A14B too), a diffusers folder or a DiT
    file. Weights are renamed, never changed, except for --dtype; the scheduler
    gets the official flow_shift and A14B its boundary_ratio. A DiT-only SRC
    becomes a folder WanTransformer3DModel.from_pretrained loads (A14B:
    transformer/ + transformer_2/). Default output: e.g. Wan2.1-T2V-1.3B-Diffusers.

    \b
    Examples:
      wan-export diffusers Wan2.1-T2V-1.3B/
      wan-export diffusers Wan2.2-T2V-A14B/ --dtype bf16 -o Wan2.2-T2V-A14B-Diffusers
    """
    from wan_export.converters.diffusers import convert, render_text

    result = convert(src, output, dtype=dtype, overwrite=overwrite, flow_shift=flow_shift,
                     progress=progress(quiet or as_json))
    emit(result, as_json, render_text(result))


@cli.command(context_settings=CONTEXT)
@click.argument("src")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="Cast every float tensor (default: the source dtype; mixed dtypes widen losslessly).")
@click.option("--component", type=click.Choice(["dit", "vae", "text-encoder", "all"]), default="all",
              show_default=True, help="Which file(s) to write.")
@click.option("--checkpoint", is_flag=True,
              help="One all-in-one file (DiT + VAE + UMT5) for ComfyUI's checkpoints/ folder.")
@output_options
def comfyui(src, dtype, component, checkpoint, output, overwrite, quiet, as_json):
    """Write the ComfyUI files of SRC: diffusion_models/, vae/ and text_encoders/.

    DiT: stock names, bare, shards merged (A14B: one file per expert). VAE: bare
    stock names. UMT5: HF names plus the embedded `spiece_model` tokenizer.
    -o is a .safetensors path when one file results, else a folder. Default
    names follow Comfy-Org (wan2.1_t2v_1.3B_bf16.safetensors, wan_2.1_vae.safetensors,
    umt5_xxl_fp16.safetensors); custom dims get _custom_d<dim>_l<layers>.

    \b
    Examples:
      wan-export comfyui Wan2.1-T2V-1.3B/ --dtype bf16 -o comfy/
      wan-export comfyui Wan2.2-T2V-A14B/ --component dit --dtype fp16
      wan-export comfyui diffusion_pytorch_model.safetensors -o wan.safetensors
    """
    from wan_export.converters.comfyui import convert, render_text

    result = convert(src, output, dtype=dtype, component=component, checkpoint=checkpoint,
                     overwrite=overwrite, digests=as_json, progress=progress(quiet or as_json))
    emit(result, as_json, render_text(result))


@cli.command(context_settings=CONTEXT)
@click.argument("src")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="Cast the DiT (default: its source dtype). The VAE and T5 keep their source dtype.")
@output_options
def stock(src, dtype, output, overwrite, quiet, as_json):
    """Write SRC (any layout) back as an official Wan release folder.

    DiT: diffusion_pytorch_model.safetensors (shards + index above 10 GB) and
    config.json; A14B: high_noise_model/ + low_noise_model/; VAE: Wan2.1_VAE.pth /
    Wan2.2_VAE.pth; T5: models_t5_umt5-xxl-enc-<dtype>.pth; tokenizer folders.
    Default output: e.g. Wan2.1-T2V-1.3B.

    \b
    Examples:
      wan-export stock wan2.1_t2v_1.3B_bf16.safetensors -o Wan2.1-T2V-1.3B
      wan-export stock Wan2.2-T2V-A14B-Diffusers/ -o Wan2.2-T2V-A14B
    """
    from wan_export.converters.stock import render_text, write_stock

    result = write_stock(src, output, dtype=dtype, overwrite=overwrite, digests=as_json,
                         progress=progress(quiet or as_json))
    emit(result, as_json, render_text(result))


@cli.command(context_settings=CONTEXT)
@click.argument("src")
@click.option("--component", cls=TableHelpOption,
              table="wan_export.converters.onnx_specs:COMPONENT_CHOICES", help_text="Which graphs to write: {}.", default="all", show_default=True, metavar="NAME")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Weights of the graphs (fp16/bf16 keep the DiT's norms, modulation and time path in fp32).")
@click.option("--opset", type=int, default=None,
              help="ONNX opset (default 20; bf16: 22, the first whose Conv takes bfloat16). TensorRT 10.0 "
                   "parses <= 20; 23 emits Attention/RMSNormalization (TensorRT 10.15+).")
@click.option("--exporter", type=click.Choice(["dynamo", "legacy"]), default="dynamo", show_default=True,
              help="torch.onnx route; legacy (TorchScript) is faster but copies the weights (< 1 GiB only).")
@click.option("--vae-tile", type=int, default=None, metavar="PX",
              help="Export the VAE step graphs at this static tile (pixels) and write the tiling protocol to vae.json.")
@click.option("--vae-overlap", type=int, default=None, metavar="PX",
              help="Pixels shared by neighbouring VAE tiles (default: tile/4).")
@output_options
def onnx(src, component, dtype, opset, exporter, vae_tile, vae_overlap, output, overwrite, quiet, as_json):
    """Export SRC's DiT, VAE and UMT5 encoder to ONNX graphs with dynamic shapes.

    The DiT takes latents [B, C, F, H, W] (H, W even), timestep, context [B, L, 4096]
    (+ clip_features / vace_context); A14B writes transformer.onnx (high noise) and
    transformer_2.onnx. The VAE becomes first/step graphs with its causal cache as
    explicit inputs/outputs, described in vae.json; wan_onnx.json lists every graph.
    Weights above 1 GiB go to <graph>.onnx.data. Check with `wan-export validate`.

    \b
    Examples:
      wan-export onnx Wan2.1-T2V-1.3B/ -o onnx/
      wan-export onnx Wan2.2-TI2V-5B/ --component vae-decoder --dtype fp16 -o vae-onnx/
      wan-export onnx Wan2.1-T2V-1.3B/ --component vae-decoder --vae-tile 256 --vae-overlap 64 -o vae-tiled/
    """
    from wan_export.converters.onnx_export import export_onnx, render_text

    result = export_onnx(src, output, component=component, dtype=dtype, opset=opset, exporter=exporter,
                         overwrite=overwrite, vae_tile=vae_tile, vae_overlap=vae_overlap,
                         progress=progress(quiet or as_json))
    emit(result, as_json, render_text(result))


@cli.group(context_settings=CONTEXT)
def vae():
    """Decode latents to video or encode video to latents with a (tiled) Wan VAE.

    \b
    Examples:
      wan-export vae decode latents.safetensors -o video.mp4 --vae Wan2.1-T2V-1.3B/
      wan-export vae encode video.mp4 -o latents.safetensors --vae Wan2.2_VAE.pth
    """


def vae_options(f):
    """--vae, --tile, --overlap, --backend, --raw, -o, --overwrite, --json, -q of `vae decode|encode`."""
    f = click.option("--raw", is_flag=True,
                     help="Latents are the VAE's own mu, not normalised by latents_mean/std as the DiT samples them.")(f)
    f = click.option("--backend", default="torch", show_default=True, metavar="torch|onnx|trt",
                     help="torch: the reference model on SRC; onnx: a `wan-export onnx` folder (vae.json); "
                          "trt: TensorRT (needs an NVIDIA GPU).")(f)
    f = click.option("--overlap", type=int, default=None,
                     help="Pixels shared by neighbouring tiles, a multiple of the VAE stride (default: tile/4).")(f)
    f = click.option("--tile", type=int, default=None,
                     help="Tile side in pixels, a multiple of the VAE stride (default 256 for Wan2.1, 512 for "
                          "Wan2.2); 0 decodes the whole frame at once.")(f)
    f = click.option("--vae", "vae_src", required=True, metavar="SRC",
                     help="The VAE: a file, release or diffusers folder (torch), or an ONNX export folder (onnx).")(f)
    f = click.option("-q", "--quiet", is_flag=True, help="No progress bars.")(f)
    f = click.option("--overwrite", is_flag=True, help="Replace an existing output.")(f)
    f = click.option("-o", "--output", "output", type=click.Path(), required=True, help="Output path.")(f)
    return json_option(f)


@vae.command("decode", context_settings=CONTEXT)
@click.argument("latents")
@vae_options
@click.option("--fps", type=int, default=None, help="Frame rate of an .mp4 (default: 16 for Wan2.1, 24 for Wan2.2).")
def vae_decode(latents, output, overwrite, quiet, vae_src, tile, overlap, backend, raw, fps, as_json):
    """Decode LATENTS (.safetensors or .npy, [C, T, h, w] or [1, C, T, h, w]) to video.

    -o ending in .mp4 writes H.264 (needs the [video] extra); any other path
    becomes a folder of PNG frames (frame_00000.png, ...). The frame is decoded
    in overlapping tiles, each with its own causal cache, blended linearly:
    memory follows the tile, not the resolution.

    \b
    Examples:
      wan-export vae decode latents.safetensors -o video.mp4 --vae Wan2.1-T2V-1.3B/ --tile 256 --overlap 64
      wan-export vae decode latents.npy -o frames/ --vae vae-onnx/ --backend onnx
    """
    from wan_export.vae_files import decode_file, render_text

    result = decode_file(latents, output, vae_src, tile=tile, overlap=overlap, backend=backend, raw=raw,
                         fps=fps, overwrite=overwrite, progress=progress(quiet or as_json))
    emit(result, as_json, render_text(result))


@vae.command("encode", context_settings=CONTEXT)
@click.argument("video")
@vae_options
def vae_encode(video, output, overwrite, quiet, vae_src, tile, overlap, backend, raw, as_json):
    """Encode VIDEO (.mp4 or a folder of PNG frames; 4k+1 frames) to latents (-o .safetensors or .npy).

    The latents are normalised as the DiT expects them unless --raw; tiles as in
    `vae decode`.

    \b
    Example:
      wan-export vae encode video.mp4 -o latents.safetensors --vae Wan2.2_VAE.pth --tile 512
    """
    from wan_export.vae_files import encode_file, render_text

    result = encode_file(video, output, vae_src, tile=tile, overlap=overlap, backend=backend, raw=raw,
                         overwrite=overwrite, progress=progress(quiet or as_json))
    emit(result, as_json, render_text(result))


# -- commands above --


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="wan-export", standalone_mode=True)
    except SystemExit as e:
        sys.exit(e.code)
