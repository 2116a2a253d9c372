"""Inline SVG plots and PNG images for the self-contained HTML reports (no network, no scripts).

`bars` draws horizontal error bars (worst first) with an optional bound line; `curves` draws
per-step lines; `png_data_uri` encodes a uint8 image with zlib alone.
"""
from __future__ import annotations

import base64
import math
import struct
import zlib
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _num(v: float) -> str:
    return f"{v:.3g}" if v else "0"


def bars(rows: list[tuple[str, float]], bound: float | None = None, title: str = "", unit: str = "rel L2") -> str:
    """Horizontal bars, one per (label, value), in the given order (callers sort worst first)."""
    left, width, row_h = 260, 420, 16
    top = 22
    height = top + row_h * len(rows) + 24
    peak = max([v for _, v in rows if math.isfinite(v)] + [bound or 0, 1e-30])
    out = [f'<svg class="plot" role="img" xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" '
           f'height="{height}" viewBox="0 0 {left + width + 80} {height}">',
           f'<title>{escape(title)}</title>',
           f'<text x="0" y="14" font-size="12" font-weight="bold">{escape(title)}</text>']
    for i, (label, v) in enumerate(rows):
        y = top + i * row_h
        w = width * (min(v, peak) / peak if math.isfinite(v) else 1.0)
        color = "#d62728" if bound is not None and v > bound else PALETTE[0]
        out.append(f'<text x="{left - 6}" y="{y + 11}" font-size="10" text-anchor="end">{escape(label[:48])}</text>')
        out.append(f'<rect x="{left}" y="{y + 2}" width="{max(w, 1):.1f}" height="{row_h - 4}" fill="{color}"/>')
        out.append(f'<text x="{left + max(w, 1) + 4:.1f}" y="{y + 11}" font-size="10">{_num(v)}</text>')
    if bound is not None:
        x = left + width * bound / peak
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 20}" stroke="#000" '
                   f'stroke-dasharray="4 3"/>')
        out.append(f'<text x="{x:.1f}" y="{height - 6}" font-size="10" text-anchor="middle">bound {_num(bound)}</text>')
    out.append(f'<text x="{left}" y="{height - 6}" font-size="10">{escape(unit)}</text>')
    return "\n".join(out + ["</svg>"])


def curves(series: dict[str, list[float]], title: str = "", ylabel: str = "rel L2") -> str:
    """Lines of value per step (x = index), one colour per series, with a legend."""
    w, h, pad = 520, 220, 44
    values = [v for s in series.values() for v in s if math.isfinite(v)] or [0.0]
    top, n = max(values) or 1.0, max((len(s) for s in series.values()), default=1)
    out = [f'<svg class="plot" role="img" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}">', f'<title>{escape(title)}</title>',
           f'<text x="{pad}" y="14" font-size="12" font-weight="bold">{escape(title)}</text>',
           f'<line x1="{pad}" y1="{h - pad}" x2="{w - 10}" y2="{h - pad}" stroke="#000"/>',
           f'<line x1="{pad}" y1="24" x2="{pad}" y2="{h - pad}" stroke="#000"/>',
           f'<text x="4" y="30" font-size="10">{_num(top)}</text>',
           f'<text x="{w // 2}" y="{h - 8}" font-size="10" text-anchor="middle">step</text>',
           f'<text x="4" y="{h - pad}" font-size="10">{escape(ylabel)}</text>']
    for k, (name, s) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        pts = " ".join(f"{pad + (w - pad - 10) * i / max(n - 1, 1):.1f},"
                       f"{h - pad - (h - pad - 24) * (v / top if math.isfinite(v) else 1):.1f}" for i, v in enumerate(s))
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
        out.append(f'<text x="{w - 150}" y="{30 + 12 * k}" font-size="10" fill="{color}">{escape(name)}</text>')
    return "\n".join(out + ["</svg>"])


def png_bytes(pixels) -> bytes:
    """PNG of an HxWx3 (or HxW) uint8 array or nested list."""
    import numpy as np

    a = np.asarray(pixels, dtype=np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    h, w = a.shape[:2]
    raw = b"".join(b"\0" + a[y, :, :3].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def png_data_uri(pixels) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode()
