"""report.html in real headless Chromium: no console errors, every plot visible, a non-empty
screenshot. The page has no scripts; the test adds one probe that measures each plot and image
and reports through the title (read back with --dump-dom). Skips when chromium is absent."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from wan_export.release_pipeline import report_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--window-size=1000,2400"]
PROBE = """<script>
window.addEventListener('load', function () {
  var items = document.querySelectorAll('svg.plot, .frames img'), shown = 0;
  items.forEach(function (e) { var r = e.getBoundingClientRect();
    if (r.width > 20 && r.height > 20 && (e.tagName !== 'IMG' || e.naturalWidth > 0)) shown++; });
  document.title = 'PLOTS ' + shown + ' OF ' + items.length;
});
</script></body>"""


def _report() -> dict:
    rng = np.random.default_rng(0)
    frame = (rng.random((16, 24, 3)) * 255).astype(np.uint8)
    checks = [{"name": "dit output", "passed": True, "failures": [], "tolerance": {"max_rel_l2": 0.17},
               "metrics": {"rel_l2": 0.08, "cosine": 0.997}}]
    table = [{"tensor": f"blocks.{i}.ffn.0.weight", "type": "Q4_K", "rel_l2": 0.01 * (i + 1)} for i in range(12)]
    return {"artifact": "x.gguf", "against": "src", "format": "gguf", "passed": True, "checks": checks,
            "tables": {"per-tensor error": table}, "info": {},
            "sampling": {"per_step_rel_l2": [0.001 * s for s in range(1, 9)],
                         "frames": {"reference": [frame, frame], "artifact": [frame[::-1], frame]}}}


def _run(args, tmp_path):
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_chromium(tmp_path):
    model = report_html.single_model(report_html.json.loads(report_html.to_json({"r": _report()}))["r"])
    html = report_html.to_html(model)
    assert "<script" not in html and "per-layer error" in html and "data:image/png;base64," in html
    page = tmp_path / "report.html"
    page.write_text(html.replace("</body>", PROBE))
    shot = tmp_path / "shot.png"
    r = _run([f"--screenshot={shot}", page.as_uri()], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if "CONSOLE" in line and ("ERROR" in line or "Uncaught" in line)]
    assert not errors, errors
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] > 500 and len(np.unique(img.reshape(-1, 3), axis=0)) > 20   # not blank
    dom = _run(["--dump-dom", page.as_uri()], tmp_path)
    m = re.search(r"<title>PLOTS (\d+) OF (\d+)</title>", dom.stdout)
    assert m and m.group(1) == m.group(2) and int(m.group(2)) == 2 + 4, dom.stdout[:500]   # bars, curve, 4 frames


def test_validate_report_html_for_one_artifact(tmp_path):
    from wan_export.validators.report import Report, Tolerance

    r = Report("a.gguf", "src", "gguf", tables={"per-tensor error": [{"tensor": "blocks.0.ffn.0.weight",
                                                                       "rel_l2": 0.05}]})
    r.add("dit output", {"rel_l2": 0.08, "cosine": 0.997, "max_abs": 0.1, "snr_db": 20.0}, Tolerance(max_rel_l2=0.17))
    r.write(str(tmp_path / "r.html"))
    html = (tmp_path / "r.html").read_text()
    assert "<svg" in html and "rel_l2 0.08 &lt;= 0.17" in html and "sampling parity: not run" in html
