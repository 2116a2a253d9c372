"""`wan-export onnx --quant fp8|nvfp4`: rewrite an exported DiT graph into the Q/DQ form
TensorRT builds (ModelOpt's ONNX conventions, formats-onnx-tensorrt.md §5.7).

- fp8: each block Linear's weight becomes a FLOAT8E4M3FN initializer + DequantizeLinear
  (per-tensor scale w_amax/448, opset >= 19); with CALIB its input gets a static
  QuantizeLinear -> DequantizeLinear at `L.input_amax / 448` (one pair per shared input);
  with CALIB attention stats, q / k / v and the softmax output get FP8 Q/DQ as well.
- nvfp4: a FLOAT4E2M1 initializer [out, in] with FLOAT8E4M3FN block scales [out, in/16]
  through two DQs (DQ(scale8, s2) -> DQ(w4, ., axis=-1, block_size=16)) at opset 23; with
  CALIB the input is quantized at run time by `trt::TRT_FP4DynamicQuantize` under the global
  scale `L.input_amax / (6*448)`, followed by the same two-step DQ.
The weights keep their stock names (`model.<L>.weight` is the DQ output), so refit maps hold.
The quantizer math is `wan_export.quantizers` (ModelOpt layout, bit-exact with ModelOpt 0.47).
"""
from __future__ import annotations

import re

import numpy as np

from wan_export.errors import BadInputError, UnsupportedError

QUANTS = ("fp8", "nvfp4")
OPSET = {"fp8": 20, "nvfp4": 23}
BLOCK = 16
TRT_DOMAIN = "trt"
PREFIX = "model."          # the exporter's module wrapper: initializers are `model.<stock name>`
ATTN = re.compile(r"^((?:vace_)?blocks\.\d+\.(?:self_attn|cross_attn))\.q$")


def read_amax(calib, name: str, expert: str | None) -> float:
    return float(calib.layer(name, expert)["input_amax"])


def quantize_dit_graph(model, quant: str, names: list[str], calib=None, expert: str | None = None,
                       path: str = "") -> dict:
    """Rewrite `model` (onnx ModelProto, weights loaded) in place: the Linears `names` (the quant
    policy's decision, wan_export.quantizers.policy) get `quant`; returns the per-layer table."""
    from onnx import helper

    if quant not in QUANTS:
        raise UnsupportedError(f"unknown --quant {quant!r} (choose from {', '.join(QUANTS)})")
    g = Graph(model.graph)
    layers = g.linears(set(names))
    if len(layers) != len(set(names)):
        missing = sorted(set(names) - {n for n, _ in layers})
        raise BadInputError(f"graph lacks the weights of {', '.join(missing[:4])}", path)
    rows, acts = [], {}
    for name, (init, matmul) in layers:
        w = g.pop_initializer(init)
        dtype = g.dtypes[name] = w.data_type
        (_fp8_weight if quant == "fp8" else _nvfp4_weight)(g, init, w)
        act = "none"
        if calib is not None:
            x = matmul.input[0]
            acts.setdefault(x, (dtype, []))[1].append((name, read_amax(calib, name, expert)))
            act = "static fp8" if quant == "fp8" else "dynamic nvfp4"
        rows.append({"layer": name, "weight": quant, "activation": act})
    for x, (dtype, users) in acts.items():
        amax = max(a for _, a in users)
        (_fp8_activation if quant == "fp8" else _nvfp4_activation)(g, x, amax, dtype, users[0][0])
    attention = _attention(g, calib, expert) if calib is not None and quant == "fp8" else []
    g.commit()
    _set_opset(model, OPSET[quant], helper)
    return {"layers": rows, "attention": attention}


class Graph:
    """A small editable view: consumers by tensor name, new nodes inserted before their users."""

    def __init__(self, graph):
        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.new_nodes: list = []
        self.new_inits: list = []
        self.renames: dict[tuple[int, int], str] = {}       # (node id, input index) -> new input
        self.counter = 0
        self.dtypes: dict[str, int] = {}                     # Linear -> its weight's (the graph's) dtype

    def consumers(self, name: str) -> list:
        return [n for n in self.graph.node if name in n.input]

    def linears(self, wanted: set[str]) -> list[tuple[str, tuple[str, object]]]:
        """(stock Linear name, (weight initializer, MatMul)) for each wanted Linear: W -> Transpose -> MatMul."""
        out = []
        for init in sorted(self.inits):
            if not (init.startswith(PREFIX) and init.endswith(".weight")):
                continue
            name = init[len(PREFIX):-len(".weight")]
            if name not in wanted:
                continue
            users = self.consumers(init)
            mm = [m for t in users if t.op_type == "Transpose" for m in self.consumers(t.output[0])
                  if m.op_type == "MatMul" and m.input[1] == t.output[0]]
            if len(users) != 1 or len(mm) != 1:
                raise UnsupportedError(f"{init} does not feed one Transpose -> MatMul (re-export with the "
                                       f"dynamo exporter)")
            out.append((name, (init, mm[0])))
        return out

    def pop_initializer(self, name: str):
        t = self.inits.pop(name)
        self.graph.initializer.remove(t)
        return t

    def add_init(self, name: str, array: np.ndarray | None = None, tensor=None) -> str:
        from onnx import numpy_helper

        self.new_inits.append(tensor if tensor is not None else numpy_helper.from_array(array, name))
        return name

    def add_node(self, op: str, inputs: list[str], outputs: list[str] | int = 1, domain: str = "", **attrs) -> list[str]:
        from onnx import helper

        if isinstance(outputs, int):
            self.counter += 1
            outputs = [f"qdq_{op}_{self.counter}_{i}" for i in range(outputs)]
        self.new_nodes.append(helper.make_node(op, inputs, outputs, name=outputs[0], domain=domain, **attrs))
        return outputs

    def reroute(self, tensor: str, new: str, users) -> None:
        for n in users:
            for i, x in enumerate(n.input):
                if x == tensor:
                    n.input[i] = new

    def commit(self) -> None:
        """Insert the new nodes at the front (their inputs are initializers or graph tensors already
        produced earlier), then restore a topological order."""
        self.graph.initializer.extend(self.new_inits)
        nodes = list(self.graph.node) + self.new_nodes
        del self.graph.node[:]
        self.graph.node.extend(_toposort(nodes, {i.name for i in self.graph.input} | set(
            t.name for t in self.graph.initializer)))


def _toposort(nodes: list, ready: set[str]) -> list:
    ready = set(ready) | {""}
    out, pending = [], list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(x in ready for x in n.input):
                out.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise UnsupportedError(f"Q/DQ rewrite left a cycle or dangling input at {rest[0].name}")
        pending = rest
    return out


# ---- weights ------------------------------------------------------------------------------------

def _np_dtype(data_type: int):
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(data_type)


def _weight_array(w) -> "torch.Tensor":  # noqa: F821
    import torch
    from onnx import numpy_helper

    return torch.from_numpy(numpy_helper.to_array(w).astype(np.float32))


def _fp8_weight(g: Graph, init: str, w) -> None:
    """W -> FLOAT8E4M3FN initializer + DQ(scale in the graph dtype) producing the stock name."""
    from wan_export.quantizers.fp8 import FP8Config, FP8Quantizer

    q = FP8Quantizer(FP8Config(layout="modelopt")).quantize(_weight_array(w))
    data = g.add_init(f"{init}.fp8", tensor=_float8_tensor(f"{init}.fp8", q.data))
    scale = g.add_init(f"{init}.scale", np.array(q.scale.item(), dtype=_np_dtype(w.data_type)))
    g.add_node("DequantizeLinear", [data, scale, _fp8_zero(g)], [init])


def _nvfp4_weight(g: Graph, init: str, w) -> None:
    """W -> FLOAT4E2M1 [out, in] + FLOAT8E4M3FN block scales: DQ(s8, s2) -> Cast -> DQ(w4, ., block 16)."""
    from onnx import TensorProto, helper

    from wan_export.quantizers.nvfp4 import NVFP4Config, NVFP4Quantizer

    t = NVFP4Quantizer(NVFP4Config(layout="modelopt")).quantize(_weight_array(w))
    rows, cols = t.shape
    # ModelOpt's layout packs element 2i in the low nibble, as ONNX packs FLOAT4E2M1
    w4 = helper.make_tensor(f"{init}.fp4", TensorProto.FLOAT4E2M1, [rows, cols], t.packed.numpy().tobytes(), raw=True)
    data = g.add_init(f"{init}.fp4", tensor=w4)
    s8 = g.add_init(f"{init}.block_scale", tensor=_float8_tensor(f"{init}.block_scale", t.block_scale))
    s2 = g.add_init(f"{init}.global_scale", np.array(t.global_scale.item(), dtype=np.float32))
    (blk,) = g.add_node("DequantizeLinear", [s8, s2])
    (blk16,) = g.add_node("Cast", [blk], to=w.data_type)
    g.add_node("DequantizeLinear", [data, blk16], [init], axis=-1, block_size=BLOCK)


def _float8_tensor(name: str, t):
    from onnx import TensorProto, helper

    return helper.make_tensor(name, TensorProto.FLOAT8E4M3FN, list(t.shape), t.contiguous().view(
        __import__("torch").uint8).numpy().tobytes(), raw=True)


def _fp8_zero(g: Graph) -> str:
    from onnx import TensorProto, helper

    name = "qdq.fp8_zero_point"
    if not any(t.name == name for t in g.new_inits):
        g.add_init(name, tensor=helper.make_tensor(name, TensorProto.FLOAT8E4M3FN, [], b"\x00", raw=True))
    return name


# ---- activations --------------------------------------------------------------------------------

def _fp8_activation(g: Graph, x: str, amax: float, dtype: int, layer: str) -> None:
    """x -> Q(amax/448) -> DQ, rerouting every MatMul that reads x (the Linears sharing it)."""
    users = [n for n in g.consumers(x) if n.op_type == "MatMul"]
    _insert_fp8_qdq(g, x, amax, dtype, f"{layer}.input", users)


def _insert_fp8_qdq(g: Graph, x: str, amax: float, dtype: int, tag: str, users) -> None:
    scale = g.add_init(f"{tag}.scale", np.array(_scale(amax, 448.0, tag), dtype=_np_dtype(dtype)))
    (q,) = g.add_node("QuantizeLinear", [x, scale, _fp8_zero(g)])
    (dq,) = g.add_node("DequantizeLinear", [q, scale, _fp8_zero(g)])
    g.reroute(x, dq, users)


def _nvfp4_activation(g: Graph, x: str, amax: float, dtype: int, layer: str) -> None:
    """x -> trt::TRT_FP4DynamicQuantize(x, s_glob) -> DQ(s_blk, s_glob) -> DQ(x4, ., block 16)."""
    from onnx import TensorProto

    users = [n for n in g.consumers(x) if n.op_type == "MatMul"]
    s_glob = g.add_init(f"{layer}.input.global_scale", np.array(_scale(amax, 6.0 * 448.0, layer),
                                                                 dtype=_np_dtype(dtype)))
    x4, s_blk = g.add_node("TRT_FP4DynamicQuantize", [x, s_glob], 2, domain=TRT_DOMAIN, axis=-1,
                           block_size=BLOCK, scale_type=TensorProto.FLOAT8E4M3FN)
    (blk,) = g.add_node("DequantizeLinear", [s_blk, s_glob])
    (dq,) = g.add_node("DequantizeLinear", [x4, blk], axis=-1, block_size=BLOCK)
    g.reroute(x, dq, users)


def _scale(amax: float, divisor: float, what: str) -> float:
    if not np.isfinite(amax) or amax <= 0:
        raise BadInputError(f"calibration amax of {what} is {amax}: not a positive finite number")
    return amax / divisor


# ---- attention ------------------------------------------------------------------------------------

def _attention(g: Graph, calib, expert: str | None) -> list[dict]:
    """FP8 Q/DQ on q, k, v and the softmax output of every attention CALIB has stats for.

    The exporter decomposes SDPA into MatMul(q*c, k^T*c) -> Softmax -> MatMul(p, v); each
    Softmax is tied to its attention by the nearest q Linear upstream (structure, not node
    names). q and k are quantized before the constant scaling, where CALIB measured them."""
    rows = []
    nodes = list(g.graph.node) + g.new_nodes
    producer = {o: n for n in nodes for o in n.output}
    users: dict[str, list] = {}
    for n in nodes:
        for x in n.input:
            users.setdefault(x, []).append(n)
    for soft in (n for n in nodes if n.op_type == "Softmax"):
        qk = producer.get(soft.input[0])
        pv = next((m for m in users.get(soft.output[0], []) if m.op_type == "MatMul"), None)
        if qk is None or qk.op_type != "MatMul" or pv is None:
            continue
        name = _owner(producer, qk.input[0])
        stats = calib.attention(name, expert) if name else None
        if not stats:
            continue
        dtype = g.dtypes[f"{name}.q"]
        sites = [(*_unscaled(g, producer, qk, 0), "q_amax"), (*_unscaled(g, producer, qk, 1), "k_amax"),
                 (pv.input[1], [pv], "v_amax"), (soft.output[0], [pv], "softmax_amax")]
        for tensor, consumers, key in sites:
            amax = 1.0 if key == "softmax_amax" else stats[key]   # ModelOpt: a fixed 1/448 after Softmax
            _insert_fp8_qdq(g, tensor, amax, dtype, f"{name}.sdpa.{key[:-5]}", consumers)
        rows.append({"attention": name, **{k: stats[k] for k in ("q_amax", "k_amax", "v_amax")}})
    return rows


def _unscaled(g: Graph, producer: dict, qk, i: int):
    """(tensor, consumers) to quantize for input i of MatMul(q, k^T): before a constant Mul."""
    x = qk.input[i]
    mul = producer.get(x)
    if mul is not None and mul.op_type == "Mul":
        const = [j for j, t in enumerate(mul.input) if t in g.inits or (
            producer.get(t) is not None and producer[t].op_type == "Constant")]
        if len(const) == 1:
            return mul.input[1 - const[0]], [mul]
    return x, [qk]


def _owner(producer: dict, tensor: str, limit: int = 60) -> str | None:
    """The attention whose q Linear is nearest upstream of `tensor` (breadth first)."""
    frontier, seen = [tensor], set()
    while frontier and len(seen) < limit:
        nxt = []
        for t in frontier:
            m = ATTN.match(t[len(PREFIX):-len(".weight")]) if t.startswith(PREFIX) and t.endswith(".weight") else None
            if m:
                return m[1]
            node = producer.get(t)
            if node is not None and id(node) not in seen:
                seen.add(id(node))
                nxt.extend(node.input)
        frontier = nxt
    return None


def _set_opset(model, opset: int, helper) -> None:
    """Raise the default opset (FP8 Q/DQ: 19; FLOAT4E2M1 and block_size on DQ: 23) and declare `trt`.

    The graph was exported at opset 20 on purpose: the ops it holds changed between 20 and 23
    only by accepting more types, while a fresh opset-23 export would emit Attention and
    RMSNormalization (TensorRT >= 10.14/10.15) and hide the MatMuls the Q/DQ pairs sit on."""
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = max(op.version, opset)
    if any(n.domain == TRT_DOMAIN for n in model.graph.node) and not any(
            op.domain == TRT_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(TRT_DOMAIN, 1))
