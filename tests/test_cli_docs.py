"""Every command has --help with an example and a README section; the README's commands are real."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wan_export.cli import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_help_has_an_example(runner, name):
    result = runner.invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and f"wan-export {name}" in result.output


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_has_a_readme_section(name):
    assert f"### `wan-export {name}`" in README


def test_readme_sections_name_real_commands():
    assert set(re.findall(r"### `wan-export (\w+)`", README)) <= set(cli.commands)


def test_ci_runs_the_readme_test_command():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert f"```bash\n{ci}\n```" in README


def test_usage_errors_exit_2(runner):
    result = runner.invoke(cli, ["gguf"])
    assert result.exit_code == 2


def test_help_does_not_import_torch():
    code = "import sys; from wan_export.cli import main; sys.argv=['wan-export','--help']\n" \
           "try: main()\nexcept SystemExit: pass\nassert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
