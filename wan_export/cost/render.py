"""Text form of a cost report: one row per stage, then totals, memory and warnings."""
from __future__ import annotations

COLUMNS = ("stage", "runs", "GEMM", "attention", "conv", "elementwise*", "weights", "activations",
           "feat_cache", "time s", "bound")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n else "-"


def _pf(n: int) -> str:
    return f"{n / 1e15:.3f}" if n else "-"


def _duration(s: float) -> str:
    return f"{s:.1f} s" + (f" ({s / 60:.1f} min)" if s >= 120 else "")


def _row(s: dict) -> list[str]:
    f, t = s["flops"], s["time"]
    return [s["name"], str(s["runs"]), _pf(f["gemm"]), _pf(f["attention"]), _pf(f["conv"]),
            _pf(f["elementwise"]), _gb(s["weight_bytes"]), _gb(s["activation_bytes"]), _gb(s["cache_bytes"]),
            f"{t['total_s']:.2f}", t["bound"]]


def table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return [fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows[1:]]


def render_text(r: dict) -> str:
    st, geo, gpu = r["settings"], r["geometry"], r["gpu"]
    lat = "x".join(str(x) for x in geo["latent"])
    par = f", {st['gpus']} GPUs ({st['parallel']} parallel)" if st["gpus"] > 1 else ""
    lines = [f"{r['model']}: {st['size']}, {st['frames']} frames (latent {lat}, {geo['tokens']:,} tokens), "
             f"{st['steps']} steps, CFG {'on' if st['cfg'] else 'off'}, batch {st['batch']}, format {st['format']}"
             + (f", boundary {st['boundary_ratio']}" if st["boundary_ratio"] else ""),
             f"GPU {gpu['name']}{par}: bf16 {gpu['peak_tflops']['bf16']:g} TFLOPS dense, "
             f"{gpu['bandwidth_gbs']:g} GB/s" + (f", {gpu['memory_gb']:g} GB" if gpu["memory_gb"] else "")
             + "; efficiency "
             + ", ".join(f"{k} {v:.2f}" for k, v in r["efficiency"].items()), ""]
    rows = [list(COLUMNS)] + [_row(s) for s in r["stages"]]
    tot = r["total"]["flops"]
    rows.append(["total", "", _pf(tot["gemm"]), _pf(tot["attention"]), _pf(tot["conv"]), _pf(tot["elementwise"]),
                 "", "", "", f"{r['total']['time_s']:.2f}", ""])
    lines += table(rows)
    mem = r["memory"]
    lines += ["", f"FLOPs in PFLOP; GEMM + attention + conv = {tot['counted'] / 1e15:.3f} PFLOP is what "
                  "FlopCounterMode counts; *elementwise (plus softmax "
                  f"{tot['softmax'] / 1e15:.3f} PFLOP) is our estimate.",
              f"estimated time: {_duration(r['total']['time_s'])}",
              f"memory per GPU: {_gb(mem['offloaded_peak_bytes'])} with per-stage offload, "
              f"{_gb(mem['resident_peak_bytes'])} with every model resident"
              + (f" ({gpu['name']}: {gpu['memory_gb']:g} GB)" if gpu["memory_gb"] else "")]
    lines += [f"  {s['name']}: {s['note']}" for s in r["stages"] if s["note"]]
    lines += [f"warning: {w}" for w in r["warnings"]]
    return "\n".join(lines)
