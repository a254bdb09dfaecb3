"""INT8 as explicit QDQ (what TensorRT consumes), calibrated on real frames from a bag or folder.

Symmetric activations and weights (zero point 0, as TensorRT requires), per-channel weights.
Only Conv and weight MatMul/Gemm are quantized: LayerNorm, Softmax, the attention products and every
other op stay float, and so do the last projections of the class and box heads. A convolution
followed by ReLU6 is quantized over the ReLU6 range, not its calibrated pre-activation range.
The small mask-head graph stays fp32.
"""
import contextlib
import logging
from pathlib import Path
from typing import Iterator, List, Sequence

import numpy as np
from tqdm import tqdm

from .atomic import atomic_path
from .images import read_rgb
from .inference.preprocess import preprocess

KEEP_FLOAT_PATTERNS = ("class_embed", "bbox_embed/layers.2", "bbox_embed.layers.2")


def calibration_frames(source, limit: int) -> Iterator[np.ndarray]:
    """RGB frames from a rosbag2 folder (any image topic) or a folder of PNG / JPEG files."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"calibration source '{source}' does not exist; expected a bag or an image folder")
    if not source.is_dir():
        raise NotADirectoryError(f"calibration source '{source}' is a file; expected a bag folder or a folder of "
                                 f".png / .jpg frames")
    count = 0
    if (source / "metadata.yaml").is_file():
        from .bag.reader import BagReader, decode_frame
        from .messages import FrameError
        with BagReader(source) as r:
            for m in r.messages(r.pick_image_topics()[0]):  # every camera's frames calibrate
                if m.msg is None:
                    continue
                try:
                    yield decode_frame(m.msg, m.msgtype)
                except FrameError:
                    continue
                count += 1
                if count >= limit:
                    return
    else:
        for p in sorted(source.iterdir()):
            if p.suffix.lower() in (".png", ".jpg", ".jpeg"):
                yield read_rgb(p)
                count += 1
                if count >= limit:
                    return
    if count == 0:
        raise ValueError(f"calibration source '{source}' holds no frames; expected a bag with an image topic or a "
                         f"folder of .png / .jpg files")


class _Reader:
    """ONNX Runtime's calibration data; with `progress`, a bar over the frames as the calibrator takes them
    (each runs the whole graph and records every activation: a minute or more for 32 frames)."""

    def __init__(self, frames: List[np.ndarray], cfg, size, progress: bool = False):
        self.items = []
        for f in frames:
            x, mask, _ = preprocess(f, cfg.input, fixed_size=size)
            self.items.append({"image": x.numpy(), "pad_mask": mask.numpy().astype(np.uint8)})
        self.bar = tqdm(total=len(self.items), desc="calibrate", unit="frame") if progress else None
        self.it = iter(self.items)

    def get_next(self):
        item = next(self.it, None)
        if self.bar is not None:
            if item is None:
                self.bar.close()
            else:
                self.bar.update()
        return item

    def rewind(self):
        self.it = iter(self.items)
        if self.bar is not None:
            self.bar.reset()


def float_kept_nodes(model) -> List[str]:
    """The head's last projections, and every MatMul between two activations (attention scores and
    the attention-weighted sum: their outputs feed Softmax, which must stay float). model: onnx.ModelProto."""
    weights = {i.name for i in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    keep = []
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm", "Add") and any(p in n.name for p in KEEP_FLOAT_PATTERNS):
            keep.append(n.name)
        elif n.op_type == "MatMul" and not any(i in weights or i in consts for i in n.input):
            keep.append(n.name)
    return keep


def constant_nodes(model) -> List[str]:
    """Nodes whose inputs all come from constants, not from the image. In DETR's first decoder layer
    the target is zero, so its whole self-attention is a constant the runtimes fold away; Q/DQ pairs
    there gain nothing, and OpenVINO fails to compile a graph with them (a DequantizeLinear left
    without its consumer once the constant is folded). model: onnx.ModelProto."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model).graph
    static = {v.name for v in list(inferred.value_info) + list(inferred.input) + list(inferred.output)
              if v.type.tensor_type.HasField("shape")
              and all(d.HasField("dim_value") for d in v.type.tensor_type.shape.dim)}
    constant = {i.name for i in model.graph.initializer} | {""}
    names = []
    for n in model.graph.node:  # ONNX nodes are stored in topological order
        # the shape of a fixed-size tensor is a constant (the exported graphs have a fixed input size)
        if all(i in constant for i in n.input) or (n.op_type == "Shape" and n.input[0] in static):
            constant.update(n.output)
            names.append(n.name)
    return names


def clipped_conv_ranges(model) -> dict:
    """Quantization ranges for convolution outputs that feed a ReLU6 (Clip): the clip's own range.

    The quantizer puts the Q/DQ pair on the convolution's output, before the Clip. Calibrated there,
    the pre-activation range (up to ~90 in the Lite stem) leaves about 8 levels for the [0, 6] that
    survives the Clip; over [-6, 6] it gets 127. Values beyond it saturate to what the Clip would give.
    model: onnx.ModelProto."""
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    conv_outputs = {n.output[0] for n in model.graph.node if n.op_type == "Conv"}
    overrides = {}
    for n in model.graph.node:
        if n.op_type == "Clip" and n.input[0] in conv_outputs and len(n.input) == 3 and n.input[2] in values:
            hi = float(abs(values[n.input[2]]))
            overrides[n.input[0]] = [{"rmin": np.array(-hi, np.float32), "rmax": np.array(hi, np.float32)}]
    return overrides


def quantize_int8(fp32_path, out_path, cfg, size, source, frames: int = 32, method: str = "minmax",
                  reduce_range: bool = False, float_matmuls: bool = False) -> Path:
    """reduce_range: 7-bit weights, for x86 CPUs without VNNI, whose int8 kernels (ONNX Runtime's and
    OpenVINO's) add pairs of 8-bit products in saturating 16-bit lanes: full-range weights overflow them
    (cpu_features.py; a street model on CamVid val: PQ 52.7 fp32, 19.6 int8 with 8-bit weights, 52.1 with
    7-bit ones).
    TensorRT, VNNI and ARM CPUs have no such limit, and 7 bits cost accuracy there (the shipped
    street model on a VNNI CPU: PQ 55.9 fp32, 55.7 with 8-bit weights, 54.3 with 7-bit ones).
    float_matmuls: quantize the convolutions only and leave the matrix products (the transformer's) in
    float: on x86 without VNNI the runtimes' int8 matrix products are slower than their float ones (the
    street model's on OpenVINO, AMD EPYC Zen 2: 10.8 ms a frame in int8, 5.3 in float; the whole graph
    37.7 ms instead of 41.9, at the same PQ). Calibration keeps them quantized: scales for every activation.
    The weight width and what is quantized are recorded in the graph's metadata (a backend warns about a
    width this CPU cannot take)."""
    from onnxruntime.quantization import CalibrationMethod

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"calibration method '{method}' is not one of {', '.join(methods)}")
    data = list(calibration_frames(source, frames))
    return _quantize(fp32_path, out_path, _Reader(data, cfg, size, progress=True), methods[method], reduce_range,
                     float_matmuls, shipped=None)


def quantize_with_scales(fp32_path, out_path, cfg, size, scales: dict, reduce_range: bool = False,
                         float_matmuls: bool = False, float_nodes: Sequence[str] = (), weights=None) -> Path:
    """The int8 graph of `fp32_path` with shipped activation scales (int8_scales.py) instead of frames:
    what quantize_int8 made at calibration, for any input size. One blank frame passes through the
    calibrator only because ONNX Runtime always calibrates; every activation's range comes from
    `scales`, and an activation without one is an error, not a range guessed from the blank frame.
    float_nodes: node-name prefixes ('/transformer/decoder') whose convolutions and matrix products stay float
    (float_nodes_of). weights: the file the scales belong to, so a refusal names the command that mends them."""
    import numpy as np
    from onnxruntime.quantization import CalibrationMethod

    h, w = size
    blank = np.full((h, w, 3), 127, np.uint8)
    overrides = {name: [{"scale": np.array(v, np.float32), "zero_point": np.array(0, np.int8)}]
                 for name, v in scales.items()}
    return _quantize(fp32_path, out_path, _Reader([blank], cfg, size), CalibrationMethod.MinMax, reduce_range,
                     float_matmuls, shipped=overrides, float_nodes=float_nodes, weights=weights)


class _WithoutPreprocessingAdvice(logging.Filter):
    """ONNX Runtime's quantizer advises its pre-processing (shape inference and graph fusions) on the root
    logger, for every graph. Ours are exported with static shapes and quantized as they will run, which is
    what the int8 figures measure; the advice, printed for each input size, reads like a fault to a user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_quantizer():
    advice = _WithoutPreprocessingAdvice()
    logging.getLogger().addFilter(advice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(advice)


def float_nodes_of(model, prefixes: Sequence[str]) -> List[str]:
    """The nodes inside one of the modules at `prefixes` (in_module; a module's path in the exported graph, e.g.
    '/backbone/_blocks.3' or '/transformer/decoder'): kept float to measure, or to spare, what int8 costs
    there (bench/bench_int8_layers.py). A prefix that names no node is an error, not a silent no-op."""
    names = [n.name for n in model.graph.node]
    for p in prefixes:
        if not isinstance(p, str) or not p or not any(in_module(n, p) for n in names):
            raise ValueError(f"float node prefix {p!r} names no node of the graph; expected a module path such as "
                             f"'/transformer/decoder' or '/backbone/_blocks.3'")
    return [n for n in names if any(in_module(n, p) for p in prefixes)]


def in_module(node_name: str, prefix: str) -> bool:
    """Whether a node belongs to the module at `prefix`, matched by whole path parts: '/backbone/_blocks.1'
    holds '/backbone/_blocks.1/Conv', not '/backbone/_blocks.10/Conv'."""
    prefix = prefix.rstrip("/")
    return node_name == prefix or node_name.startswith(prefix + "/")


def _quantize(fp32_path, out_path, reader, method, reduce_range: bool, float_matmuls: bool, shipped,
              float_nodes: Sequence[str] = (), weights=None) -> Path:
    """shipped: TensorQuantOverrides of every activation (from shipped scales, made for `weights`), or None
    to calibrate on the reader's frames (with the ReLU6 ranges of clipped_conv_ranges)."""
    import onnx

    from .export import set_metadata
    from .int8_scales import activation_scales, recalibrate_command
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(fp32_path))  # read once for the choices below
    overrides = shipped if shipped is not None else clipped_conv_ranges(graph)
    excluded = float_kept_nodes(graph) + constant_nodes(graph) + float_nodes_of(graph, float_nodes)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp, _quiet_quantizer():
        quantize_static(str(fp32_path), str(tmp), reader, quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                        reduce_range=reduce_range,
                        op_types_to_quantize=["Conv"] if float_matmuls else ["Conv", "MatMul", "Gemm"],
                        nodes_to_exclude=excluded,
                        calibrate_method=method,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                       "TensorQuantOverrides": overrides})
        if shipped is not None:
            missing = sorted(set(activation_scales(onnx.load(str(tmp)))) - set(shipped))
            if missing:
                raise ValueError(f"the int8 scales lack {len(missing)} activation(s) of this graph (e.g. "
                                 f"'{missing[0]}'): they were made for another model or exporter; recalibrate "
                                 f"with {recalibrate_command(weights or 'WEIGHTS')}")
        set_metadata(tmp, precision="int8", int8_weight_bits=7 if reduce_range else 8, int8_matmuls=not float_matmuls)
    return out_path
