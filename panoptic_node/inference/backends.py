"""Choosing a backend: auto picks TensorRT if CUDA and TensorRT import; else, on an x86 CPU where
OpenVINO is installed, OpenVINO (the fastest CPU runtime measured here, int8 above all:
bench/bench_backends.py) on the graph given, found beside the weights, or exported into the cache
(graph_cache); else ONNX Runtime when a graph is given or found; else torch.

TensorRT runs an exported graph when there is one, else the PyTorch model compiled by torch_tensorrt.
An exported graph that cannot be made (a read-only cache, an exporter failure) leaves auto on torch,
said in one line; missing weights are an error on every backend."""
import importlib.util
import platform
from pathlib import Path
from typing import Optional

from ..model.config import load_config
from .graph_per_shape import GraphPerShape
from .pipeline import Pipeline

BACKENDS = ("auto", "torch", "onnxruntime", "openvino", "tensorrt")


def tensorrt_available() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import torch
    return torch.cuda.is_available()


def default_onnx_path(cfg) -> Optional[Path]:
    """The exported graph shipped beside the model's weights (models/<name>.onnx), if any."""
    if cfg.weights:
        p = Path(cfg.weights).with_suffix(".onnx")
        if p.is_file():
            return p
    return None


def resolve(backend: str, cfg, onnx: Optional[str] = None, device: str = "cpu") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend '{backend}' is not one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    graph = onnx or default_onnx_path(cfg)
    if tensorrt_available() and (graph or importlib.util.find_spec("torch_tensorrt")):
        return "tensorrt"
    if device == "cpu" and importlib.util.find_spec("openvino") and platform.machine().lower() in ("x86_64", "amd64"):
        return "openvino"  # without a graph, one is exported into the cache
    if graph and importlib.util.find_spec("onnxruntime"):
        return "onnxruntime"
    return "torch"


def compile_torch_tensorrt(cfg, weights: Optional[str] = None, precision: str = "fp16", log=print):
    """The TensorRT backend for a PyTorch checkpoint (no exported graph): torch_tensorrt, cached."""
    from ..model.checkpoint import load_model, weights_of
    from .torch_tensorrt_backend import TorchTensorRTBackend
    return TorchTensorRTBackend(load_model(cfg, weights), cfg, weights_of(cfg, weights), precision=precision, log=log)


def make_pipeline(model: str, weights: Optional[str] = None, backend: str = "auto", device: str = "cpu",
                  threshold: Optional[float] = None, labels: Optional[str] = None, onnx: Optional[str] = None,
                  log=None) -> Pipeline:
    cfg = load_config(model)
    chosen = resolve(backend, cfg, onnx, device)
    # the graph beside the config's weights belongs to those weights, not to --weights
    path = onnx or (default_onnx_path(cfg) if not weights or weights == cfg.weights else None)
    if chosen == "openvino" and device != "cpu":
        raise ValueError(f"backend 'openvino' runs on the CPU; device '{device}' is for the tensorrt, "
                         f"onnxruntime or torch backends")
    per_shape = None
    if path is None and chosen in ("openvino", "onnxruntime"):
        try:  # graphs the cache exports, one per input size (graph_per_shape.py)
            per_shape = GraphPerShape(cfg, weights, lambda p: _open_graph(chosen, p, cfg, device, log),
                                      log=log or print)
        except FileNotFoundError:  # missing weights: torch would not find them either
            raise
        except Exception as e:  # a read-only cache, an exporter failure
            if backend != "auto":
                raise
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            (log or print)(f"no exported graph for {chosen} ({reason}); running on torch")
            chosen = "torch"
    if log:
        log(f"backend: {chosen}" + (" (auto)" if backend == "auto" else ""))
    if chosen == "torch":
        return Pipeline.from_config(cfg, weights=weights, device=device, threshold=threshold, labels=labels)
    if chosen == "tensorrt" and path is None:
        return Pipeline(cfg, compile_torch_tensorrt(cfg, weights, log=log or print), labels=labels,
                        threshold=threshold)
    be = per_shape or _open_graph(chosen, path, cfg, device, log)
    return Pipeline(cfg, be, labels=labels, threshold=threshold)


def _open_graph(chosen: str, path, cfg, device: str, log):
    if chosen == "tensorrt":
        from .tensorrt_backend import TensorRTBackend
        return TensorRTBackend(path, cfg, device=device, log=log or print)
    if chosen == "openvino":
        from .openvino_backend import OpenVinoBackend
        return OpenVinoBackend(path, cfg)
    from .onnxruntime_backend import OnnxRuntimeBackend
    return OnnxRuntimeBackend(path, cfg, device=device, log=log or print)
