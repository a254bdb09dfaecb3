"""TensorRT backend (Jetson / desktop GPUs): an engine built from the exported ONNX, cached.

The cache key is the ONNX file's sha256 (for torch_tensorrt: the weights' and the config's) + TensorRT
version + GPU name and compute capability + precision + input shape. A cached engine's sidecar
metadata is checked on load; on any mismatch the engine is rebuilt with a log line, never silently
used. The key / check / rebuild decision is plain Python (tested without a GPU); building and running
need CUDA and the tensorrt package.
"""
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from ..atomic import atomic_path, write_json
from .backend import Backend, int8_matrix_products_of, int8_weight_bits_of
from .cache_key import file_sha256


@dataclass(frozen=True)
class EngineKey:
    source_sha256: str  # of the ONNX file; for a torch_tensorrt module, of weights + config + part
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    input_shape: Tuple[int, ...]

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:32]


def cache_dir() -> Path:
    return Path(os.environ.get("PANOPTIC_NODE_ENGINE_CACHE", Path.home() / ".cache" / "panoptic_node" / "engines"))


def engine_paths(key: EngineKey, directory: Optional[Path] = None) -> Tuple[Path, Path]:
    d = Path(directory or cache_dir())
    return d / f"{key.digest()}.engine", d / f"{key.digest()}.json"


def check_cached(key: EngineKey, directory: Optional[Path] = None) -> Tuple[bool, str]:
    """(usable, reason). Usable only when the engine exists, is non-empty and its metadata equals the key."""
    engine, meta = engine_paths(key, directory)
    if not engine.is_file():
        return False, "no cached engine"
    if engine.stat().st_size == 0:
        return False, f"cached engine {engine.name} is empty"
    if not meta.is_file():
        return False, f"cached engine {engine.name} has no metadata"
    try:
        stored = json.loads(meta.read_text())
    except json.JSONDecodeError:
        return False, f"metadata of {engine.name} is unreadable"
    want = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(key).items()}
    diff = sorted(k for k in want if stored.get(k) != want[k])
    if diff:
        return False, f"cached engine {engine.name} was built for another {', '.join(diff)}"
    return True, "cached engine matches"


def get_engine(key: EngineKey, build: Callable[[Path], None], log=print, directory: Optional[Path] = None) -> Path:
    """The cached engine for `key`, rebuilt (with a log line saying why) when missing or mismatched."""
    ok, reason = check_cached(key, directory)
    engine, meta = engine_paths(key, directory)
    if ok:
        return engine
    log(f"building TensorRT engine ({reason}); this takes minutes on a Jetson")
    engine.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(engine) as tmp:
        build(tmp)
    write_json({k: list(v) if isinstance(v, tuple) else v for k, v in asdict(key).items()}, meta)
    return engine


def profile_shapes(input_shapes: Dict[str, Sequence[int]], max_queries: int) -> Dict[str, Tuple[Tuple[int, ...], ...]]:
    """(min, opt, max) shapes for the inputs with a dynamic dimension (-1): the mask graph's query
    dimension, from 1 to the model's number of queries; TensorRT refuses to build without them."""
    profiles = {}
    for name, shape in input_shapes.items():
        if any(d < 0 for d in shape):
            lo = tuple(1 if d < 0 else d for d in shape)
            hi = tuple(max_queries if d < 0 else d for d in shape)
            profiles[name] = (lo, hi, hi)
    return profiles


def build_engine(onnx_path, out_path, precision: str, max_queries: int = 100,
                 log=print) -> None:  # pragma: no cover - needs a GPU
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as f:
        if not parser.parse(f.read()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT cannot parse '{onnx_path}': {errors}")
    config = builder.create_builder_config()
    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    dynamic = profile_shapes(inputs, max_queries)
    if dynamic:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in dynamic.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # scales come from the QDQ nodes of the graph
    # LayerNorm in FP32: FP16 LayerNorm loses accuracy in transformers
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.NORMALIZATION:
            layer.precision = trt.float32
    log(f"TensorRT: building {precision} engine from {onnx_path} ...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from '{onnx_path}'")
    Path(out_path).write_bytes(bytes(serialized))
    log("TensorRT: engine built")


def require_cuda() -> None:
    """Both TensorRT backends (an exported graph, or the PyTorch model via torch_tensorrt) need CUDA."""
    if not torch.cuda.is_available():
        raise RuntimeError("backend 'tensorrt' needs CUDA, which is not available here; use --backend onnxruntime "
                           "or torch")


class TensorRTBackend(Backend):  # pragma: no cover - needs a GPU
    name = "tensorrt"

    def __init__(self, onnx_path, cfg, device: str = "cuda", precision: str = "fp16", log=print):
        require_cuda()
        import tensorrt as trt

        from ..export import open_exported
        meta, masks = open_exported(onnx_path, cfg)
        self.size = tuple(meta["input_size"])
        self.precision = "int8" if meta.get("precision") == "int8" else precision
        self.int8_weight_bits = int8_weight_bits_of(meta)
        self.int8_matrix_products = int8_matrix_products_of(meta)
        self.mask_stride = cfg.output_mask_stride
        self.max_batch = 1  # the exported graphs' static batch
        props = torch.cuda.get_device_properties(0)
        engines = []
        for graph in (Path(onnx_path), masks):
            key = EngineKey(file_sha256(graph), trt.__version__, props.name, f"{props.major}.{props.minor}",
                            self.precision, self.size)
            engines.append(get_engine(key, lambda out, g=graph: build_engine(g, out, self.precision, cfg.num_queries, log),
                                      log))
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.detect_engine = runtime.deserialize_cuda_engine(engines[0].read_bytes())
        self.mask_engine = runtime.deserialize_cuda_engine(engines[1].read_bytes())
        self.detect_ctx = self.detect_engine.create_execution_context()
        self.mask_ctx = self.mask_engine.create_execution_context()
        self.stream = torch.cuda.Stream()

    def _run(self, engine, ctx, inputs):
        outputs = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if name in inputs:
                t = inputs[name].contiguous().cuda()
                inputs[name] = t
                ctx.set_input_shape(name, tuple(t.shape))
                ctx.set_tensor_address(name, t.data_ptr())
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if name not in inputs:
                shape = tuple(ctx.get_tensor_shape(name))
                outputs[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
                ctx.set_tensor_address(name, outputs[name].data_ptr())
        # the inputs were copied / computed on torch's current stream: let the engine's stream wait for them
        self.stream.wait_stream(torch.cuda.current_stream())
        ctx.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return outputs

    def detect(self, images, pad_mask):
        out = self._run(self.detect_engine, self.detect_ctx, {"image": images, "pad_mask": pad_mask.to(torch.uint8)})
        feats = [out[k] for k in sorted(k for k in out if k.startswith("mf"))]
        return out["logits"].cpu(), out["boxes"].cpu(), out["hs"], feats

    def masks(self, mask_features, index, hs):
        feeds = {f"mf{i}": f[index:index + 1] for i, f in enumerate(mask_features)}
        feeds["hs"] = hs[None]
        return self._run(self.mask_engine, self.mask_ctx, feeds)["masks"][0]  # stays on the GPU for postprocess
