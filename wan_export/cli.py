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
@dry_run_option
@output_options
def diffusers(src, dtype, flow_shift, dry_run, output, overwrite, quiet, as_json):
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
    if dry_run:
        return emit_dry_run("diffusers", src, as_json, dtype=dtype, flow_shift=flow_shift)
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
@dry_run_option
@output_options
def comfyui(src, dtype, component, checkpoint, dry_run, output, overwrite, quiet, as_json):
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
    if dry_run:
        return emit_dry_run("comfyui", src, as_json, dtype=dtype, component=component, checkpoint=checkpoint)
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
@dry_run_option
@output_options
def onnx(src, component, dtype, opset, exporter, dry_run, output, overwrite, quiet, as_json):
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
    """
    if dry_run:
        return emit_dry_run("onnx", src, as_json, component=component, dtype=dtype)
    from wan_export.converters.onnx_export import export_onnx, render_text

    result = export_onnx(src, output, component=component, dtype=dtype, opset=opset, exporter=exporter,
                         overwrite=overwrite, progress=progress(quiet or as_json))
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
