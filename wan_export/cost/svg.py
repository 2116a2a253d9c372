"""`cost --plot`: a self-contained SVG of the stage breakdown against resolution and frame count.

Two panels of stacked bars (estimated seconds per stage on the chosen GPU): one over
sizes at the chosen frame count, one over frame counts at the chosen size. Written
by hand (no plotting dependency), deterministic, so the same request gives the same bytes.
"""
from __future__ import annotations

import math
from xml.sax.saxutils import escape

COLORS = {"umt5": "#4e79a7", "clip": "#76b7b2", "vae-encode": "#59a14f", "dit": "#f28e2b",
          "dit.high_noise": "#e15759", "dit.low_noise": "#f28e2b", "vae-decode": "#b07aa1"}
SIZES = ((832, 480), (1024, 576), (1280, 720), (1600, 896), (1920, 1088))
FRAMES = (17, 33, 49, 81, 121)
W, H, PANEL_W, TOP, PLOT_H = 980, 470, 440, 60, 300


def sweep_sizes(multiple: int) -> list[tuple[int, int]]:
    """The standard 16:9 ladder, rounded to the sizes this VAE + patch can take."""
    return [(w // multiple * multiple, h // multiple * multiple) for w, h in SIZES]


def _nice(top: float) -> tuple[float, int]:
    """A round axis maximum and tick count for data up to `top`."""
    if top <= 0:
        return 1.0, 1
    step = 10 ** math.floor(math.log10(top / 4))
    for m in (1, 2, 2.5, 5, 10):
        if top / (step * m) <= 5:
            step *= m
            break
    n = math.ceil(top / step)
    return step * n, n


def _text(x, y, s, size=12, anchor="middle", weight="normal") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}">{escape(s)}</text>')


def _panel(x0: float, title: str, labels: list[str], bars: list[dict[str, float]], stages: list[str]) -> list[str]:
    out = [_text(x0 + PANEL_W / 2, TOP - 14, title, 13, weight="bold")]
    top, n = _nice(max(sum(b.values()) for b in bars))
    left, bottom = x0 + 50, TOP + PLOT_H
    for i in range(n + 1):
        y = bottom - PLOT_H * i / n
        out.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{x0 + PANEL_W:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(_text(left - 6, y + 4, f"{top * i / n:g}", 11, "end"))
    out.append(_text(x0 + 12, TOP + PLOT_H / 2, "seconds", 11, "middle").replace(
        "<text ", f'<text transform="rotate(-90 {x0 + 12:.1f} {TOP + PLOT_H / 2:.1f})" '))
    slot = (x0 + PANEL_W - left) / len(bars)
    for i, (label, bar) in enumerate(zip(labels, bars)):
        x, y = left + slot * (i + 0.2), bottom
        for name in stages:
            h = PLOT_H * bar.get(name, 0.0) / top
            if h > 0:
                out.append(f'<rect x="{x:.1f}" y="{y - h:.1f}" width="{slot * 0.6:.1f}" height="{h:.1f}" '
                           f'fill="{COLORS.get(name, "#999")}"><title>{escape(name)}: '
                           f'{bar[name]:.1f} s</title></rect>')
                y -= h
        total = sum(bar.values())
        out.append(_text(x + slot * 0.3, y - 4, f"{total:.0f}" if total >= 10 else f"{total:.1f}", 11))
        out.append(_text(x + slot * 0.3, bottom + 16, label, 11))
    out.append(f'<line x1="{left:.1f}" y1="{bottom:.1f}" x2="{x0 + PANEL_W:.1f}" y2="{bottom:.1f}" stroke="#333"/>')
    return out


def _times(report: dict) -> dict[str, float]:
    return {s["name"]: s["time"]["total_s"] for s in report["stages"]}


def render_svg(title: str, size_reports: list[tuple[str, dict]], frame_reports: list[tuple[str, dict]],
               subtitles: tuple[str, str], chosen: dict) -> str:
    """chosen: the report of the requested setting, whose per-stage seconds the legend gives."""
    stages = list(dict.fromkeys(n for _, r in size_reports + frame_reports for n in _times(r)))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
             'font-family="DejaVu Sans, Arial, sans-serif">', f'<rect width="{W}" height="{H}" fill="white"/>',
             _text(W / 2, 24, title, 15, weight="bold")]
    for x0, sub, reps in ((20, subtitles[0], size_reports), (20 + PANEL_W + 60, subtitles[1], frame_reports)):
        parts += _panel(x0, sub, [label for label, _ in reps], [_times(r) for _, r in reps], stages)
    x, values = 40, _times(chosen)
    st = chosen["settings"]
    parts.append(_text(x, H - 48, f"seconds per stage at {st['size']}, {st['frames']} frames:", 12, "start"))
    for name in stages:
        label = f"{name} {values.get(name, 0):.{1 if values.get(name, 0) >= 10 else 2}f} s"
        parts.append(f'<rect x="{x}" y="{H - 36}" width="12" height="12" fill="{COLORS.get(name, "#999")}"/>')
        parts.append(_text(x + 16, H - 26, label, 12, "start"))
        x += 36 + 7 * len(label)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def plot(path: str, estimate, report: dict, multiple: int) -> None:
    """Sweep sizes and frame counts with `estimate(width, height, frames)` and write the SVG atomically."""
    from wan_export.atomic import atomic_file

    st = report["settings"]
    w, h = (int(x) for x in st["size"].split("x"))
    sizes = [(f"{sw}x{sh}", estimate(sw, sh, st["frames"])) for sw, sh in sweep_sizes(multiple)]
    frames = [(str(f), estimate(w, h, f)) for f in FRAMES]
    title = (f"{report['model']} on {report['gpu']['name']}: {st['steps']} steps, CFG {'on' if st['cfg'] else 'off'}, "
             f"{st['format']}" + (f", {st['gpus']} GPUs {st['parallel']}" if st["gpus"] > 1 else ""))
    svg = render_svg(title, sizes, frames, (f"by size ({st['frames']} frames)", f"by frames ({st['size']})"),
                     report)
    with atomic_file(path, "w") as f:
        f.write(svg)
