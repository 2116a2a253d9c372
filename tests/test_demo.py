"""`wan-export demo`: a tiny release through every step, the summary table and its failure modes."""
from __future__ import annotations

import json
import os

import pytest

from wan_export import demo
from wan_export.cli import cli
from wan_export.errors import BadInputError


def test_demo_runs_every_step(runner, tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(cli, ["demo", "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"wan-export demo: wan2.1-t2v-1.3b in {out}"
    assert lines[1].split() == ["step", "artifact", "size", "time", "result"]
    assert [line.split()[0] for line in lines[2:-1]] == [label for label, _, _ in demo.STEPS]
    assert lines[-1].startswith("all steps passed in ")
    assert "variant wan2.1-t2v (custom: dim 256, 2 layers)" in result.stdout
    with open(out / demo.SUMMARY_FILE) as f:
        summary = json.load(f)
    assert summary["ok"]
    assert os.path.isfile(out / "release" / "Wan2.1_VAE.pth")


def test_demo_json_and_variant(runner, tmp_path):
    result = runner.invoke(cli, ["demo", "-o", str(tmp_path / "d"), "--variant", "wan2.2-ti2v-5b", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["variant"] == "wan2.2-ti2v-5b" and summary["ok"]
    rows = {r["step"]: r for r in summary["steps"]}
    assert rows["release"]["artifact"] == str(tmp_path / "d" / "release") and rows["release"]["bytes"] > 0
    assert rows["inspect"]["result"].startswith("variant wan2.2-ti2v")


def test_demo_refuses_existing_output(runner, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = runner.invoke(cli, ["demo", "-o", str(tmp_path)])
    assert (result.exit_code, result.stderr) == (2, f"Error: {tmp_path}: output exists (use --overwrite)\n")
    result = runner.invoke(cli, ["demo", "-o", str(tmp_path), "--overwrite"])
    assert result.exit_code == 2 and "not a demo folder" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_demo_overwrites_an_earlier_demo(runner, tmp_path):
    assert runner.invoke(cli, ["demo", "-o", str(tmp_path / "d")]).exit_code == 0
    assert runner.invoke(cli, ["demo", "-o", str(tmp_path / "d"), "--overwrite"]).exit_code == 0


def test_unknown_variant(runner, tmp_path):
    result = runner.invoke(cli, ["demo", "-o", str(tmp_path / "d"), "--variant", "wan9"])
    assert result.exit_code == 2 and result.stderr.startswith("Error: unknown variant 'wan9'; known: wan2.1-t2v-1.3b")


# ---- the row contract, with stand-in functions ------------------------------------

def fake_convert(src, output):
    with open(output, "w") as f:
        f.write(src)
    return {"artifact": output}


def fake_validate(path, against, passed=True):
    return {"artifact": path, "passed": passed, "checks": [
        {"name": "dit", "passed": passed, "tolerance": {"max_rel_l2": 0.01, "min_cosine": 0.999}}]}


def fake_bad_input(path):
    raise BadInputError("tensor x has 1 NaN/Inf values", path)


ROWS = (
    ("convert", "tests.test_demo:fake_convert", {"src": "{src}", "output": "{out}/x.txt"}),
    ("validate", "tests.test_demo:fake_validate", {"path": "{out}/x.txt", "against": "{src}"}),
)


def test_rows_format_paths_and_report_parity(tmp_path):
    summary = demo.run_demo(str(tmp_path / "d"), steps=ROWS)
    convert, validate = summary["steps"]
    assert convert["artifact"] == str(tmp_path / "d" / "x.txt") and convert["bytes"] == len(summary["release"])
    assert validate["parity"] == "pass" and validate["tolerance"] == "max_rel_l2 0.01, min_cosine 0.999"
    assert validate["result"] == "pass 1/1 checks; worst rel_l2 not measured (bound 0.01), cosine not measured (bound 0.999)"
    assert summary["ok"]
    demo.raise_if_failed(summary)


@pytest.mark.parametrize("row, status, exit_code", [
    (("validate", "tests.test_demo:fake_validate", {"path": "{out}", "against": "{src}", "passed": False}),
     "failed", 1),
    (("nan", "tests.test_demo:fake_bad_input", {"path": "{src}"}), "error", 2),
])
def test_failed_steps_fail_the_demo(runner, tmp_path, monkeypatch, row, status, exit_code):
    monkeypatch.setattr(demo, "STEPS", demo.STEPS[:2] + (row,))   # release, inspect, the failing row
    result = runner.invoke(cli, ["demo", "-o", str(tmp_path / "d")])
    assert result.exit_code == exit_code
    assert f"{row[0]}" in result.stdout.splitlines()[-2] and "some steps failed" in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {tmp_path / 'd'}: 1 of 3 demo steps failed: {row[0]}: ")
    summary = json.loads((tmp_path / "d" / demo.SUMMARY_FILE).read_text())
    assert summary["steps"][-1]["status"] == status


def test_missing_function_is_skipped(tmp_path):
    summary = demo.run_demo(str(tmp_path / "d"), steps=(
        ("later", "wan_export.converters.not_yet_written:convert", {"src": "{src}"}),))
    assert summary["steps"][0]["status"] == "skipped" and summary["ok"]
    assert "skipped: not available" in demo.render_text(summary)
