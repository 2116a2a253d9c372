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


def quant_options(choices):
    """--quant, --calib, --act-calib, --rounding, --exclude-blocks, --tensor-type (quantized writers)."""
    def deco(f):
        f = click.option("--tensor-type", "tensor_types", multiple=True, metavar="REGEX=FORMAT",
                         help="Override the format of matching tensors: fp8, nvfp4, mxfp8 or bf16 "
                              "(unquantized); first match wins, in front of the built-in rules.")(f)
        f = click.option("--exclude-blocks", default=None, metavar="first:N,last:M",
                         help="Keep the first N / last M blocks unquantized (ModelOpt keeps 3 and 3).")(f)
        f = click.option("--rounding", type=click.Choice(["nearest", "gptq"]), default="nearest", show_default=True,
                         help="Weight rounding; gptq needs CALIB input_sample rows and never does worse "
                              "than nearest on a layer.")(f)
        f = click.option("--act-calib", default="max", show_default=True, metavar="max|percentile:P|mse",
                         help="How input_scale is derived from CALIB statistics.")(f)
        f = click.option("--calib", default=None, metavar="CALIB",
                         help="Calibration file from `wan-export calibrate`: stores input_scale per layer.")(f)
        return click.option("--quant", default=None, metavar="|".join(choices),
                            help=f"Quantize the DiT's block Linears: {', '.join(choices)}.")(f)
    return deco


def quant_request(quant, layout, calib, act_calib, rounding, exclude_blocks, tensor_types):
    """The QuantRequest of the options above, or None without --quant."""
    from wan_export.errors import BadInputError

    if quant is None:
        if calib or tensor_types or exclude_blocks or rounding != "nearest":
            raise BadInputError("--calib, --rounding, --exclude-blocks and --tensor-type need --quant")
        return None
    from wan_export.converters.quant_plan import QuantRequest     # imports torch: only when quantizing
    from wan_export.quantizers.policy import parse_exclude_blocks, parse_overrides

    return QuantRequest(quant, layout, calib, act_calib, rounding, parse_exclude_blocks(exclude_blocks),
                        parse_overrides(tensor_types))


def emit(result: dict, as_json: bool, text: str | None = None) -> None:
    """Print a command's result: JSON on stdout with --json, else the text form."""
    if as_json:
        from wan_export.validators.report import json_default

        click.echo(json.dumps(result, indent=2, sort_keys=True, default=json_default))
    elif text:
        click.echo(text)


def dry_run_option(f):
    return click.option("--dry-run", is_flag=True,
                        help="List the files, tensors, types and sizes that would be written, and write nothing "
                             "(SRC may be shapes:VARIANT, e.g. shapes:wan2.1-t2v-14b, for full-size shapes).")(f)


def emit_dry_run(writer: str, src: str, as_json: bool, **options) -> None:
    from wan_export import dryrun
    from wan_export.meta_release import open_for_dry_run

    rows = getattr(dryrun, writer)(open_for_dry_run(src), **options)
    emit({"dry_run": True, "files": rows}, as_json, dryrun.render_text(rows))


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
              help="Write the report here (.json for JSON, .html for a self-contained page with plots, "
                   "anything else for Markdown).")
@click.option("--sampling", is_flag=True,
              help="Also sample a short video through the artifact and the reference from the same noise.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Sampling steps (default 10).")
@click.option("--size", default=None, metavar="WxH", help="Sampling size (default: twice the size multiple).")
@click.option("--frames", type=int, default=None, help="Sampled frames, 4k+1 (default 5).")
@click.option("--prompt", default=None, help="Prompt for --sampling (default: a fixed test prompt).")
@click.option("--seed", type=int, default=None, help="Seed of the initial noise (default 0).")
@json_option
def validate(path, against, report_path, sampling, steps, size, frames, prompt, seed, as_json):
    """Load artifact PATH through its real consumer and compare against SRC.

    Runs the reference model on both weight sets with fixed inputs and checks
    the outputs against per-format, per-dtype tolerances stated in the report.
    With --sampling it also runs the official sampler (UniPC, CFG, expert
    switch; a diffusers folder with its own scheduler config) through both and
    reports per-step latent rel-L2 and the decoded video's PSNR.
    Exit code 0: parity holds; 1: parity failed; 2: bad input.

    \b
    Example:
      wan-export validate wan2.1_t2v_1.3B_bf16.safetensors --against Wan2.1-T2V-1.3B/ --report parity.md
      wan-export validate Wan2.1-T2V-1.3B-Diffusers/ --against Wan2.1-T2V-1.3B/ --sampling --steps 10 --size 64x64
    """
    from wan_export.validators.validate import validate as run

    options = None
    if sampling:
        from wan_export.pipeline import parse_size

        options = dict(steps=steps, size=parse_size(size), frames=frames, prompt=prompt, seed=seed)
    elif any(v is not None for v in (steps, size, frames, prompt, seed)):
        raise click.UsageError("--steps, --size, --frames, --prompt and --seed go with --sampling")
    report = run(path, against, report_path, sampling=options)
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
@dry_run_option
@output_options
def gguf(src, types, tensor_types, imatrix, float_type, jobs, dry_run, output, overwrite, quiet, as_json):
    """Write GGUF files for ComfyUI-GGUF and stable-diffusion.cpp from SRC's DiT.

    One file per type (and per expert for A14B), all from a single read of SRC.
    -o is a .gguf path for one file, else a folder; default names follow city96
    (wan2.1-t2v-14b-Q4_K_M.gguf) and Comfy-Org for A14B experts.

    \b
    Examples:
      wan-export gguf Wan2.1-T2V-14B/ --type Q4_K_M,Q8_0 -o gguf/
      wan-export gguf Wan2.2-T2V-A14B/ --type Q5_K_M --tensor-type 'ffn\\.2\\.weight$=Q6_K'
    """
    if dry_run:
        return emit_dry_run("gguf", src, as_json, types=types, tensor_types=tensor_types, float_type=float_type)
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
@quant_options(("fp8", "nvfp4"))
@dry_run_option
@output_options
def diffusers(src, dtype, flow_shift, dry_run, output, overwrite, quiet, as_json, quant, calib, act_calib, rounding,
              exclude_blocks, tensor_types):
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
      wan-export diffusers Wan2.2-T2V-A14B/ --quant fp8 --calib calib.safetensors --exclude-blocks first:3,last:3

    --quant writes ModelOpt's HF export layout (weight, weight_scale, weight_scale_2,
    input_scale; quantization_config in transformer/config.json), as NVIDIA's
    Wan2.2-T2V-A14B-Diffusers-FP8; default output name gets -FP8 / -NVFP4.
    """
    if dry_run and quant is None:
        return emit_dry_run("diffusers", src, as_json, dtype=dtype, flow_shift=flow_shift)
    from wan_export.converters.diffusers import convert, render_text
    from wan_export.converters.quant_report import render_quant_text

    req = quant_request(quant, "modelopt", calib, act_calib, rounding, exclude_blocks, tensor_types)
    result = convert(src, output, dtype=dtype, overwrite=overwrite, flow_shift=flow_shift,
                     progress=progress(quiet or as_json), quant=req, dry_run=dry_run)
    text = render_text(result) if req is None and not dry_run else "\n".join(
        [f"{'planned' if dry_run else 'wrote'} {result['output']} ({result['class']}, {result['variant']})",
         render_quant_text({**result, "files": []})])
    emit(result, as_json, text)


@cli.command(context_settings=CONTEXT)
@click.argument("src")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="Cast every float tensor (default: the source dtype; mixed dtypes widen losslessly).")
@click.option("--component", type=click.Choice(["dit", "vae", "text-encoder", "all"]), default="all",
              show_default=True, help="Which file(s) to write.")
@click.option("--checkpoint", is_flag=True,
              help="One all-in-one file (DiT + VAE + UMT5) for ComfyUI's checkpoints/ folder.")
@quant_options(("fp8", "nvfp4", "mxfp8", "fp8-legacy"))
@dry_run_option
@output_options
def comfyui(src, dtype, component, checkpoint, dry_run, output, overwrite, quiet, as_json, quant, calib, act_calib,
            rounding, exclude_blocks, tensor_types):
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
      wan-export comfyui Wan2.1-T2V-1.3B/ --component dit --quant fp8 --calib calib.safetensors

    --quant writes ComfyUI's per-layer quantized layers (`.comfy_quant`, weight_scale,
    weight_scale_2, input_scale) or the legacy scaled_fp8 form (fp8-legacy, e4m3fn);
    the UMT5 text encoder is written in fp8 too. Without --calib the file is weight-only.
    """
    if dry_run and quant is None:
        return emit_dry_run("comfyui", src, as_json, dtype=dtype, component=component, checkpoint=checkpoint)
    from wan_export.converters.comfyui import convert
    from wan_export.converters.quant_report import render_quant_text
    from wan_export.converters.stock import render_text

    req = quant_request(quant, "comfy", calib, act_calib, rounding, exclude_blocks, tensor_types)
    result = convert(src, output, dtype=dtype, component=component, checkpoint=checkpoint,
                     overwrite=overwrite, digests=as_json, progress=progress(quiet or as_json),
                     quant=req, dry_run=dry_run)
    emit(result, as_json, render_quant_text(result) if req or dry_run else render_text(result))


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
@click.option("--quant", type=click.Choice(["fp8", "nvfp4"]), default=None,
              help="Q/DQ DiT graphs for TensorRT: FP8 E4M3 (opset 20; SM89+) or NVFP4 (opset 23; SM120).")
@click.option("--calib", default=None, metavar="CALIB",
              help="Calibration file (wan-export calibrate): quantize activations too (else weight-only).")
@click.option("--vae-tile", type=int, default=None, metavar="PX",
              help="Export the VAE step graphs at this static tile (pixels) and write the tiling protocol to vae.json.")
@click.option("--vae-overlap", type=int, default=None, metavar="PX",
              help="Pixels shared by neighbouring VAE tiles (default: tile/4).")
@dry_run_option
@output_options
def onnx(src, component, dtype, opset, exporter, quant, calib, vae_tile, vae_overlap, dry_run, output, overwrite,
         quiet, as_json):
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
      wan-export onnx Wan2.1-T2V-1.3B/ --component dit --dtype fp16 --quant fp8 --calib calib.safetensors
      wan-export onnx Wan2.1-T2V-1.3B/ --component vae-decoder --vae-tile 256 --vae-overlap 64 -o vae-tiled/
    """
    if dry_run:
        return emit_dry_run("onnx", src, as_json, component=component, dtype=dtype)
    from wan_export.converters.onnx_export import export_onnx, render_text

    result = export_onnx(src, output, component=component, dtype=dtype, opset=opset, exporter=exporter,
                         overwrite=overwrite, quant=quant, calib=calib, vae_tile=vae_tile, vae_overlap=vae_overlap,
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


@cli.command(context_settings=CONTEXT)
@click.argument("src")
@click.option("--component", cls=TableHelpOption, table="wan_export.converters.onnx_specs:COMPONENT_CHOICES",
              help_text="Which graphs to build: {}.", default="all", show_default=True, metavar="NAME")
@click.option("--target", default="all", show_default=True, metavar="SM[,SM...]|all",
              help="GPU architectures of one plan (sm75, sm80, sm86, sm89, sm120, sm121; tensorrt: sm90, sm100); "
                   "all: one plan per tier (sm80+sm86, sm89, sm120) that builds the precision.")
@click.option("--precision", cls=TableHelpOption, table="wan_export.converters.trt_specs:PRECISIONS",
              help_text="{} (default: the ONNX folder's; fp16 from a checkpoint). fp8 needs SM89+, nvfp4 SM120.",
              default=None, metavar="P")
@click.option("--calib", default=None, metavar="CALIB",
              help="Calibration file (wan-export calibrate) for fp8/nvfp4 activation scales.")
@click.option("--profile", "profiles", multiple=True, metavar="SIZE[:SIZE[:SIZE]]",
              help="One optimization profile per option: 480p, 720p, 704p (TI2V) or WxH[xFRAMES] "
                   "(frames 4k+1, default 81); one size = frames 1..F at that size, MIN:MAX or MIN:OPT:MAX. "
                   "Default 480p.")
@click.option("--batch", default="1-2", show_default=True, metavar="MIN-MAX", help="Batch range (2: CFG batching).")
@click.option("--text-len", type=int, default=512, show_default=True, help="Longest text (Wan pads to 512).")
@click.option("--backend", type=click.Choice(["auto", "rtx", "tensorrt"]), default="auto", show_default=True,
              help="rtx: TensorRT for RTX (ahead of time, no GPU needed); tensorrt: standard TensorRT "
                   "(builds on the GPU it targets).")
@click.option("--weightless", is_flag=True, help="Strip the weights (refit from the ONNX at load time).")
@click.option("--exporter", type=click.Choice(["dynamo", "legacy"]), default="dynamo", show_default=True,
              help="ONNX exporter when SRC is a checkpoint (legacy: faster, no --precision fp8/nvfp4).")
@click.option("--dry-run", is_flag=True, help="Check every option and list the plans, build nothing.")
@output_options
def trt(src, component, target, precision, calib, profiles, batch, text_len, backend, weightless, exporter,
        dry_run, output, overwrite, quiet, as_json):
    """Build TensorRT plans from SRC (a checkpoint, or a `wan-export onnx` folder).

    From a checkpoint the ONNX graphs are exported first into DIR/onnx/. One plan
    per graph and target group: <graph>.<backend>-<version>.<sm...>.<precision>.<hash>.plan,
    described in trt.json (I/O ranges, sha256s, build settings, the VAE protocol).
    TensorRT for RTX builds on any machine; its plans run on RTX-class GPUs and
    A100 (not Hopper). Check with `wan-export validate DIR --against SRC`.

    \b
    Examples:
      wan-export trt Wan2.1-T2V-1.3B/ -o trt/ --target sm86,sm89 --precision fp16
      wan-export trt onnx-fp8/ -o trt-fp8/ --target sm89 --profile 480p --profile 720p
      wan-export trt Wan2.2-TI2V-5B/ --component vae-decoder --profile 704p -o vae-trt/
    """
    from wan_export.converters.trt import Request, build_trt, render_text

    req = Request(component=component, target=target, precision=precision, calib=calib,
                  profiles=tuple(profiles) or ("480p",), batch=batch, text_len=text_len, backend=backend,
                  weightless=weightless, exporter=exporter)
    result = build_trt(src, output, req, overwrite=overwrite, dry_run=dry_run, progress=progress(quiet or as_json))
    emit(result, as_json, render_text(result))


@cli.command(context_settings=CONTEXT)
@click.argument("src")
@click.option("-o", "--output", default="calib.safetensors", show_default=True, type=click.Path(),
              help="The CALIB .safetensors file to write.")
@click.option("--prompts", "prompts", default=None, metavar="FILE",
              help="Prompts: .txt (one per line), .jsonl ({\"prompt\": ...}) or .csv (prompt/caption column); "
                   "default: the built-in set of 72.")
@click.option("--num-prompts", type=int, default=None, help="Use the first N prompts.")
@click.option("--context", default=None, metavar="FILE",
              help="Precomputed embeddings instead of prompts: .safetensors with prompt_embeds [N, L, 4096] "
                   "(+ negative_prompt_embeds [L, 4096]); needs no UMT5.")
@click.option("--steps", type=int, default=None, help="Denoising steps (default: the variant's official count).")
@click.option("--size", default=None, metavar="WxH", help="Video size in pixels (default: the official one).")
@click.option("--frames", type=int, default=None, help="Video frames, 4k+1 (default: official).")
@click.option("--guidance", type=float, default=None, help="CFG scale (default: official; A14B: per expert).")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed of prompt i is SEED + i.")
@click.option("--image", default=None, metavar="FILE", help="First frame (I2V, FLF2V, TI2V).")
@click.option("--last-image", default=None, metavar="FILE", help="Last frame (FLF2V).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Under torchrun with cuda, rank r uses GPU LOCAL_RANK.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="Compute dtype of the reference models.")
@click.option("--save-activations", type=int, default=0, show_default=True, metavar="N",
              help="Also keep N input rows per layer (for SVDQuant smoothing and GPTQ).")
@click.option("--imatrix-gguf", default=None, metavar="FILE",
              help="Also write llama.cpp's imatrix GGUF (in_sum2/counts) for sd.cpp and llama.cpp tools.")
@click.option("--no-attention", is_flag=True, help="Skip the attention (q/k/v/softmax) amax.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@json_option
def calibrate(src, output, prompts, num_prompts, context, steps, size, frames, guidance, seed, image, last_image,
              device, dtype, save_activations, imatrix_gguf, no_attention, overwrite, quiet, as_json):
    """Record activation statistics of SRC's DiT over the official sampling trajectory.

    Runs prompts -> UMT5 -> the DiT(s) with the official sampler, CFG and (A14B)
    expert switch, and writes per-Linear input amax (tensor and channel), sum of
    squares + count (the importance matrix), a |x| histogram and attention amax
    under stock names: the CALIB file that gguf --imatrix, the FP8/NVFP4 writers,
    svdquant and trt read. On several processes: torchrun --nproc-per-node N -m
    wan_export calibrate ... (same bytes as one process).

    \b
    Examples:
      wan-export calibrate Wan2.1-T2V-1.3B/ -o calib.safetensors --num-prompts 16 --steps 20 --size 480x272
      torchrun --nproc-per-node 2 -m wan_export calibrate Wan2.2-T2V-A14B/ --device cuda -o calib.safetensors
    """
    from wan_export.calibration.run import calibrate as run, render_text

    result = run(src, output, prompts=prompts, num_prompts=num_prompts, context=context, steps=steps, size=size,
                 frames=frames, guidance=guidance, seed=seed, image=image, last_image=last_image, device=device,
                 dtype=dtype, save_activations=save_activations, imatrix_gguf=imatrix_gguf,
                 attention=not no_attention, overwrite=overwrite, progress=progress(quiet or as_json))
    emit(result, as_json, render_text(result))


@cli.command(context_settings=CONTEXT)
@click.argument("src", required=False)
@click.option("--variant", default=None, help="A released variant instead of SRC (e.g. wan2.1-t2v-14b).")
@click.option("--size", default=None, metavar="WxH", help="Video size (default: the largest trained size).")
@click.option("--frames", type=int, default=None, help="Frames, 4k+1 (default: 81; TI2V-5B 121).")
@click.option("--steps", type=int, default=None, help="Denoising steps (default: the official count).")
@click.option("--cfg/--no-cfg", default=True, show_default=True,
              help="Classifier-free guidance: two DiT forwards per step and a negative prompt.")
@click.option("--batch", type=int, default=1, show_default=True, help="Videos generated together.")
@click.option("--format", "fmt", cls=TableHelpOption, table="wan_export.cost.formats:NATIVE", default="bf16",
              show_default=True, metavar="NAME",
              help_text="DiT weight format: {} or any GGUF type (Q8_0, Q4_K_M, ...).")
@click.option("--shift", type=float, default=None, help="Flow shift (default: official; sets the A14B split).")
@click.option("--gpu", cls=TableHelpOption, table="wan_export.cost.gpus:GPUS", default=None, metavar="NAME",
              help_text="GPU: {} (default H100).")
@click.option("--peak-tflops", type=float, default=None, help="A custom GPU: dense tensor peak, TFLOPS.")
@click.option("--bandwidth", type=float, default=None, help="A custom GPU: memory bandwidth, GB/s.")
@click.option("--gpus", type=int, default=1, show_default=True, help="GPUs sharing the DiT.")
@click.option("--parallel", cls=TableHelpOption, table="wan_export.cost.roofline:PARALLEL_MODES",
              default="sequence", show_default=True, metavar="MODE",
              help_text="Multi-GPU DiT: {} (sequence = Ulysses; cfg splits the CFG branches).")
@click.option("--plot", default=None, metavar="FILE.svg", help="Also draw the stage breakdown by size and frames.")
@json_option
def cost(src, variant, size, frames, steps, cfg, batch, fmt, shift, gpu, peak_tflops, bandwidth, gpus, parallel,
         plot, as_json):
    """Estimate FLOPs, memory and time of a Wan generation, stage by stage.

    SRC is any input inspect takes (only shapes are read), or give --variant.
    Stages: UMT5 (prompt + negative prompt), CLIP and VAE encode (I2V/FLF2V/
    TI2V/VACE), the DiT x steps x CFG (A14B split at the boundary), VAE decode.
    FLOPs by op class (GEMM + attention + conv as FlopCounterMode counts them),
    weight bytes in --format, activations and VAE feat_cache, and a roofline
    time on --gpu with the efficiency factors it prints.

    \b
    Examples:
      wan-export cost --variant wan2.1-t2v-14b --size 1280x720 --frames 81 --gpu H100
      wan-export cost Wan2.2-T2V-A14B/ --format Q4_K_M --gpu "RTX 4090" --json
      wan-export cost --variant wan2.1-t2v-14b --gpus 8 --parallel ring --plot cost.svg
    """
    from wan_export.cost import run_cost
    from wan_export.cost.render import render_text

    report = run_cost(src, variant, size=size, frames=frames, steps=steps, cfg=cfg, batch=batch, fmt=fmt,
                      gpu=gpu, peak_tflops=peak_tflops, bandwidth=bandwidth, gpus=gpus, parallel=parallel,
                      shift=shift, plot=plot)
    emit(report, as_json, render_text(report))


@cli.command(context_settings=CONTEXT)
@click.argument("src")
@click.option("--calib", default=None, help="CALIB file (wan-export calibrate; --smooth auto needs "
              "--save-activations samples).")
@click.option("--precision", default="int4", show_default=True, help="Residual format: int4 (group 64, 16-bit "
              "scales; Turing-Ada GPUs) or nvfp4 (group 16, FP8 micro-scales; Blackwell).")
@click.option("--rank", default=32, show_default=True, type=int, help="Rank of the 16-bit branch (multiple of 16).")
@click.option("--smooth", default="auto", show_default=True,
              help="auto: search (alpha, beta) per layer on the activation sample; or a fixed alpha in [0, 1].")
@click.option("--gptq", is_flag=True, help="Quantize the residual with GPTQ on the activation sample.")
@click.option("--exclude-blocks", default=None, metavar="LIST",
              help="Blocks kept 16-bit: e.g. 0,38-39,vace_blocks.0.")
@click.option("--compute-dtype", type=click.Choice(["bfloat16", "float16"]), default="bfloat16",
              show_default=True, help="Runtime dtype of the quantized model (and its 16-bit tensors).")
@click.option("--dry-run", is_flag=True, help="Check everything and print the plan; write nothing.")
@output_options
def svdquant(src, calib, precision, rank, smooth, gptq, exclude_blocks, compute_dtype, dry_run, output,
             overwrite, quiet, as_json):
    """SVDQuant W4A4 of SRC's DiT as a diffusers Nunchaku Lite folder.

    Smooths each block Linear's input channels, keeps a rank-r 16-bit branch from
    the SVD of the smoothed weight and stores the residual in 4 bits, packed as
    diffusers' SVDQW4A4Linear loads it (quantization_config nunchaku_lite). Writes
    a pipeline folder, or a transformer folder when SRC has only a DiT (A14B: both
    experts). Check it with `wan-export validate DIR --against SRC`.

    \b
    Examples:
      wan-export svdquant Wan2.1-T2V-14B/ --calib calib.safetensors
      wan-export svdquant Wan2.2-T2V-A14B/ --calib calib.safetensors --precision nvfp4 --rank 64 -o out/
    """
    from wan_export.converters.svdquant import convert, render_text

    result = convert(src, calib, output, precision=precision, rank=rank, smooth=smooth, gptq=gptq,
                     exclude_blocks=exclude_blocks, compute_dtype=compute_dtype, overwrite=overwrite,
                     dry_run=dry_run, progress=progress(quiet or as_json))
    emit(result, as_json, render_text(result))


@cli.command(context_settings=CONTEXT)
@click.argument("recipe", type=click.Path())
@click.argument("collect_dirs", nargs=-1, type=click.Path(), metavar="[DIR...]")
@click.option("-o", "--output", "dist", default="dist", show_default=True, type=click.Path(),
              help="Release folder (DIST): artifacts, manifest.json, SHA256SUMS, README.md, report.*.")
@click.option("--only", "only", multiple=True, metavar="NAME",
              help="Run only this artifact's job (repeatable); merge job folders later with --collect.")
@click.option("--collect", is_flag=True,
              help="Merge the job outputs of --only runs (the DIR... arguments) into DIST and write the release files.")
@click.option("--plan", "plan_only", is_flag=True,
              help="Print the job graph (JSON with --json) and a GitHub Actions matrix, with dry-run sizes.")
@click.option("--dry-run", is_flag=True, help="List every file, tensor, type and size; write nothing.")
@click.option("--resume", is_flag=True, help="Skip artifacts whose input hashes and files match DIST's records.")
@click.option("--source", default=None, type=click.Path(), help="Source release (overrides the recipe's [source]).")
@click.option("-j", "--jobs", type=int, default=0, show_default=True, help="Worker processes for quantizers (0: every core).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@json_option
def release(recipe, collect_dirs, dist, only, collect, plan_only, dry_run, resume, source, jobs, quiet, as_json):
    """Build, validate and publish every artifact of a release RECIPE (TOML, see recipes/).

    Writes DIST/<artifact>/ for each artifact, manifest.json (sha256 of every file,
    options, validation summary, input hashes), SHA256SUMS, README.md (Hugging Face
    model card) and report.html/.md/.json. Exit 0: every gate passed; 1: a gate
    failed (everything is still written, failed artifacts marked); 2: bad recipe.

    \b
    Examples:
      wan-export release recipes/demo.toml -o dist
      wan-export release recipes/wan2.1-t2v-14b.toml --plan --json
      wan-export release recipes/wan2.1-t2v-14b.toml --only gguf -o job-gguf
      wan-export release recipes/wan2.1-t2v-14b.toml --collect job-gguf job-comfyui -o dist
    """
    from wan_export.release_pipeline import engine, plan

    if plan_only or dry_run:
        result = plan.plan(recipe, source=source, tensors=dry_run)
        emit(result, as_json, plan.render_text(result, tensors=dry_run))
        return
    if bool(collect) != bool(collect_dirs):
        raise click.UsageError("--collect takes the job folders as arguments: release RECIPE --collect DIR...")
    if collect:
        result = engine.collect(recipe, collect_dirs, dist)
    else:
        result = engine.release(recipe, dist, only=only, source=source, jobs=jobs, resume=resume,
                                progress=progress(quiet or as_json))
    emit(result, as_json, plan.render_result(result))
    engine.raise_if_failed(result)


# -- commands above --


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="wan-export", standalone_mode=True)
    except SystemExit as e:
        sys.exit(e.code)
