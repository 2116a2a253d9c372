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


# -- commands above --


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="wan-export", standalone_mode=True)
    except SystemExit as e:
        sys.exit(e.code)
