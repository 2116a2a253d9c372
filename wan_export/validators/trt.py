"""Validate a `wan-export trt` folder against its source.

On any machine: trt.json consistency (names, sha256s, profile hashes), each plan's header
(`Runtime.get_engine_validity`), the ONNX graphs re-parsed by the installed TensorRT parser
with every node accepted and the network I/O as recorded, and profiles that cover the shapes
they claim (divisibility included). With a GPU and the matching runtime
(wan_export.runtime): each plan is deserialized and run at several shapes inside its
profile against the PyTorch reference, with per-precision tolerances.
"""
from __future__ import annotations

import hashlib
import os

from wan_export.converters import trt as C
from wan_export.converters import trt_specs as T
from wan_export.errors import BadInputError
from wan_export.validators.onnx import _fact
from wan_export.validators.report import Report, Tolerance

# A GPU engine against the fp32 PyTorch reference (the ONNX tolerances plus TensorRT's own
# kernel choices: fp16 accumulation and fused attention). Not measured here: no GPU.
GPU_TOLERANCES = {"fp32": Tolerance(max_rel_l2=1e-3), "fp16": Tolerance(max_rel_l2=1e-2, min_cosine=0.9999),
                  "bf16": Tolerance(max_rel_l2=5e-2, min_cosine=0.999),
                  "fp8": Tolerance(max_rel_l2=1e-1, min_cosine=0.995), "nvfp4": Tolerance(max_rel_l2=3e-1, min_cosine=0.98)}


def validate_trt(path: str, against: str, **options) -> Report:
    from wan_export.converters.trt_backend import load_backend
    from wan_export.release import read_json

    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    mpath = os.path.join(folder, C.MANIFEST)
    if not os.path.exists(mpath):
        raise BadInputError(f"no {C.MANIFEST}: not a wan-export TensorRT folder", folder)
    doc = read_json(mpath)
    if doc.get("format") != "wan-export-trt" or not isinstance(doc.get("plans"), list):
        raise BadInputError("corrupt trt.json: not a wan-export-trt manifest", mpath)
    report = Report(path, against, "trt")
    b = doc["backend"]
    report.info.update({"backend": f"{b['module']} {b['version']}", "runs on": b.get("runs_on", "")})
    backend = load_backend(b["name"])
    if backend.version != b["version"]:
        report.info["installed backend"] = f"{backend.version} (plans need {b['version']} to run)"
    onnx_dir = os.path.normpath(os.path.join(folder, doc["onnx"]["folder"]))
    _config_matches(report, doc, against)
    for plan in doc["plans"]:
        check_plan(report, backend, folder, onnx_dir, plan, doc)
    gpu_parity(report, backend, folder, doc, against)
    return report


def _config_matches(report: Report, doc: dict, against: str) -> None:
    from wan_export.release import open_input

    rel = open_input(against)
    for slot, cfg in doc.get("configs", {}).items():
        comp = rel.components.get(slot)
        ours = comp.config.to_dict() if comp is not None else None
        diff = [] if ours is None else sorted(k for k in ours if cfg.get(k) != ours[k])
        problems = [f"source has no {slot}"] if ours is None else ([f"differs in {', '.join(diff)}"] if diff else [])
        _fact(report, f"{slot}: config matches the source", problems)


def check_plan(report: Report, backend, folder: str, onnx_dir: str, plan: dict, doc: dict) -> None:
    name = plan["file"]
    _fact(report, f"{name}: name matches trt.json", _name_problems(plan, doc))
    ppath = os.path.join(folder, name)
    if not os.path.exists(ppath):
        _fact(report, f"{name}: present", ["plan file missing"])
        return
    with open(ppath, "rb") as f:
        data = f.read()
    sha = hashlib.sha256(data).hexdigest()
    _fact(report, f"{name}: sha256 as recorded", [] if sha == plan["plan_sha256"] else [f"sha256 {sha[:12]}…"])
    _fact(report, f"{name}: plan header", _header_problems(backend, data))
    _fact(report, f"{name}: profiles cover the shapes they claim", profile_problems(plan, doc))
    onnx_path = os.path.join(onnx_dir, plan["graph"])
    if not os.path.exists(onnx_path):
        _fact(report, f"{plan['graph']}: ONNX present for the parser check", [f"not found in {onnx_dir}"])
        return
    osha = C.sha256_file(onnx_path)
    _fact(report, f"{name}: ONNX sha256 as recorded", [] if osha == plan["onnx_sha256"] else ["ONNX changed"])
    _fact(report, f"{name}: every ONNX node accepted by the {backend.trt.__name__} parser",
          parser_problems(backend, onnx_path, plan))


def _name_problems(plan: dict, doc: dict) -> list[str]:
    m = T.PLAN_NAME.match(plan["file"])
    if not m:
        return ["not <graph>.<backend>-<version>.<sm...>.<precision>.<hash>.plan"]
    want = {"stem": plan["graph"].removesuffix(".onnx"), "backend": doc["backend"]["name"],
            "version": doc["backend"]["version"], "targets": "-".join(plan["targets"]),
            "precision": plan["precision"], "hash": plan["profile_hash"]}
    return [f"{k} {m[k]!r} != {v!r}" for k, v in want.items() if m[k] != v]


def _header_problems(backend, data: bytes) -> list[str]:
    from wan_export.converters.trt_backend import engine_validity

    validity, flags = engine_validity(backend, data)
    if "MALFORMED_ENGINE" in flags:
        return ["malformed plan header"]
    if validity == "VALID" or not _gpu_present():
        return []          # on a CPU every plan reads INVALID with no diagnostic: the header is well formed
    return [f"{validity}: {', '.join(flags) or 'no diagnostic'}"]


def _gpu_present() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def profile_problems(plan: dict, doc: dict) -> list[str]:
    """Recompute every input range from the profile claims; each must equal the recorded one,
    have min <= opt <= max, and its latent sizes divisible as the graph needs."""
    problems = []
    manifest = {"configs": doc.get("configs", {})}
    entry = {"role": plan["role"], "slot": plan["slot"],
             "inputs": [{"name": t["name"], "shape": t["shape"]} for t in plan["io"] if t["io"] == "input"]}
    for i, claim in enumerate(plan["profiles"]):
        try:
            prof = T.parse_profile(claim["spec"], tuple(claim["batch"]), claim["text_len"])
            sizes = T.graph_sizes(prof, C._role_kind(plan["role"]), C._stride(manifest, doc.get("vae"), entry),
                                  C._patch(manifest, entry), C._fixed_text(manifest, entry))
        except BadInputError as e:
            problems.append(f"profile {i}: {e.message}")
            continue
        want = T.input_ranges(entry, sizes)
        for t in plan["io"]:
            if t["io"] != "input":
                continue
            got = t["profiles"][i]
            lo, opt, hi = got["min"], got["opt"], got["max"]
            if [lo, opt, hi] != want[t["name"]]:
                problems.append(f"profile {i} {t['name']}: {got} != claimed {want[t['name']]}")
            if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
                problems.append(f"profile {i} {t['name']}: not min <= opt <= max")
            static = [d for d in t["dims"]]
            if any(s != -1 and s != x for s, x in zip(static, lo)):
                problems.append(f"profile {i} {t['name']}: {lo} conflicts with the network's dims {static}")
    hashes = T.profile_hash([{t["name"]: [p["min"], p["opt"], p["max"]] for t in plan["io"] if t["io"] == "input"
                              for p in [t["profiles"][i]]} for i in range(len(plan["profiles"]))])
    if hashes != plan["profile_hash"]:
        problems.append(f"profile hash {hashes} != recorded {plan['profile_hash']}")
    return problems


def parser_problems(backend, onnx_path: str, plan: dict) -> list[str]:
    from wan_export.converters.trt_backend import network_io, parse_onnx

    try:
        _builder, network, _parser, _logger = parse_onnx(backend, onnx_path)
    except BadInputError as e:
        return [e.message]
    got = {(t["name"], t["io"], t["dtype"]) for t in network_io(network)}
    want = {(t["name"], t["io"], t["dtype"]) for t in plan["io"]}
    return [f"network I/O differs: {sorted(got ^ want)}"] if got != want else []


def gpu_parity(report: Report, backend, folder: str, doc: dict, against: str) -> None:
    """Deserialize and run each plan inside its profiles against the reference (GPU only)."""
    if not _gpu_present():
        report.info["GPU parity"] = "not run: no CUDA GPU here (CPU-side checks only)"
        return
    from wan_export.runtime.parity import run_parity

    run_parity(report, backend, folder, doc, against, GPU_TOLERANCES)
