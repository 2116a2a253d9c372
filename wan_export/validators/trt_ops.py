"""The ONNX ops TensorRT's ONNX parser accepts, for graph-hygiene checks without TensorRT.

Transcribed from onnx-tensorrt `docs/operators.md` (TensorRT 10.15, opsets 9-24;
TensorRT 10.0 parses opsets 9-20) plus the version notes of
formats-onnx-tensorrt.md §6. `classify(op)` says whether a TensorRT build can
parse a node; restrictions are kept as notes (they are checked by TensorRT).
"""
from __future__ import annotations

TRT_OPSETS = {"10.0": (9, 20), "10.15": (9, 24)}

# Supported with no restriction that concerns Wan graphs.
PLAIN = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh BatchNormalization BlackmanWindow Cast
CastLike Ceil Celu Clip Concat ConstantOfShape Conv ConvTranspose Cos Cosh DepthToSpace Div Einsum Elu
Equal Erf Exp Expand Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GroupNormalization HammingWindow HannWindow
HardSigmoid HardSwish Identity ImageScaler InstanceNormalization IsInf IsNaN LeakyRelu Less
LessOrEqual Log LogSoftmax LRN LpNormalization MatMul Max Mean MeanVarianceNormalization Min Mish Mod
Mul Neg NonMaxSuppression NonZero Not Or Pad ParametricSoftplus Pow PRelu Range Reciprocal Relu Reshape
ReverseSequence RoiAlign Round ScaledTanh Scan Scatter ScatterElements Selu Shape Shrink Sigmoid Sign
Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Sub Sum Tan Tanh ThresholdedRelu
Tile Transpose Trilu Upsample Where Xor
""".split())

# Supported, with a restriction worth knowing (from the matrix).
RESTRICTED = {
    "AveragePool": "2D or 3D pooling only; dilations empty or all ones",
    "Constant": "sparse_value and string values unsupported",
    "CumSum": "axis must be a build-time constant",
    "DeformConv": "1D or 2D spatial input; symmetric pads",
    "DequantizeLinear": "x_zero_point must be zero",
    "QuantizeLinear": "y_zero_point must be 0",
    "Dropout": "is_training must be an initializer evaluating to False",
    "EyeLike": "input must have static dimensions",
    "GridSample": "4D input only",
    "GRU": "bidirectional: same activations both ways",
    "LSTM": "bidirectional: same activations both ways; input_forget and layout 0",
    "RNN": "bidirectional: same activations both ways",
    "Hardmax": "axis dimension must be a build-time constant",
    "If": "both branches' outputs must have the same rank and different names",
    "LayerNormalization": "only the first output Y",
    "Loop": "scan output length cannot be dynamic; carried shapes fixed",
    "LpPool": "dilations empty or all ones",
    "MaxPool": "2D or 3D only; no Indices output; dilations empty or all ones",
    "OneHot": "depth must be a build-time constant",
    "RandomNormal": "seed ignored", "RandomNormalLike": "seed ignored",
    "RandomUniform": "seed ignored", "RandomUniformLike": "seed ignored",
    "ReduceL1": "axes must be an initializer", "ReduceL2": "axes must be an initializer",
    "ReduceLogSum": "axes must be an initializer", "ReduceLogSumExp": "axes must be an initializer",
    "ReduceMax": "axes must be an initializer", "ReduceMean": "axes must be an initializer",
    "ReduceMin": "axes must be an initializer", "ReduceProd": "axes must be an initializer",
    "ReduceSum": "axes must be an initializer", "ReduceSumSquare": "axes must be an initializer",
    "Resize": "modes nearest/linear; nearest_mode floor/ceil/round_prefer_*; no antialias",
    "ScatterND": "reduction must be none",
    "Squeeze": "axes must resolve to a constant", "Unsqueeze": "axes must resolve to a constant",
    "STFT": "FP32 only; frame_step and window initializers; real input",
    "TopK": "sorted must be 1; K < 3840",
}

# Added to the parser later than TensorRT 10.0 (formats-onnx-tensorrt.md §6; opset-23 exports emit them).
SINCE = {"Attention": "10.14", "RMSNormalization": "10.15", "RotaryEmbedding": "10.15", "TensorScatter": "10.15"}

# Listed as unsupported in the matrix.
UNSUPPORTED = frozenset("""
AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad Compress
ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool
MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement
OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty
SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence
StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
""".split())

# ONNX element types (TensorProto enum) that must not appear: TensorRT has no complex types and
# only casts DOUBLE down (with clamping); the graphs are written to need neither.
FORBIDDEN_TYPES = {11: "DOUBLE", 14: "COMPLEX64", 15: "COMPLEX128"}


# Custom-domain ops TensorRT's parser handles itself (ModelOpt's exports; checked with TensorRT-RTX 1.7)
PARSED_CUSTOM = {("trt", "TRT_FP4DynamicQuantize"): "ModelOpt's NVFP4 activation quantizer (parsed natively)"}


def classify(op: str, domain: str = "") -> tuple[str, str]:
    """(status, note): status is ok | restricted | needs-newer | unsupported | unknown | custom."""
    if (domain, op) in PARSED_CUSTOM:
        return "restricted", PARSED_CUSTOM[(domain, op)]
    if domain not in ("", "ai.onnx"):
        return "custom", f"op in domain {domain!r}: needs a TensorRT plugin"
    if op in PLAIN:
        return "ok", ""
    if op in RESTRICTED:
        return "restricted", RESTRICTED[op]
    if op in SINCE:
        return "needs-newer", f"parsed from TensorRT {SINCE[op]} (use opset <= 20 for older)"
    if op in UNSUPPORTED:
        return "unsupported", "not supported by TensorRT's ONNX parser"
    return "unknown", "not in TensorRT's ONNX operator matrix"


FAILING = ("unsupported", "unknown", "custom")
