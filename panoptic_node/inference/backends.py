"""Choosing a backend: auto picks TensorRT if CUDA and TensorRT import; else, when an exported graph
is given or found beside the weights, OpenVINO on an x86 CPU where it is installed (the fastest CPU
runtime of the graph measured here, int8 above all: bench/bench_backends.py; ONNX Runtime's int8 is
slower than torch there), else ONNX Runtime; else torch.

TensorRT runs an exported graph when there is one, else the PyTorch model compiled by torch_tensorrt."""
import importlib.util
import platform
from pathlib import Path
from typing import Optional

from ..model.config import load_config
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


def resolve(backend: str, cfg, onnx: Optional[str] = None) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend '{backend}' is not one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    graph = onnx or default_onnx_path(cfg)
    if tensorrt_available() and (graph or importlib.util.find_spec("torch_tensorrt")):
        return "tensorrt"
    if graph and importlib.util.find_spec("openvino") and platform.machine().lower() in ("x86_64", "amd64"):
        return "openvino"
    if graph and importlib.util.find_spec("onnxruntime"):
        return "onnxruntime"
    return "torch"


def compile_torch_tensorrt(cfg, weights: Optional[str] = None, precision: str = "fp16", log=print):
    """The TensorRT backend for a PyTorch checkpoint (no exported graph): torch_tensorrt, cached."""
    from ..model.checkpoint import load_weights
    from ..model.detr import build_model
    from .torch_tensorrt_backend import TorchTensorRTBackend
    source = weights or cfg.weights
    if not source:
        raise FileNotFoundError(f"model '{cfg.name}' has no default weights; pass --weights FILE")
    net = build_model(cfg)
    load_weights(net, source)
    return TorchTensorRTBackend(net, cfg, source, precision=precision, log=log)


def make_pipeline(model: str, weights: Optional[str] = None, backend: str = "auto", device: str = "cpu",
                  threshold: Optional[float] = None, labels: Optional[str] = None, onnx: Optional[str] = None,
                  log=None) -> Pipeline:
    cfg = load_config(model)
    chosen = resolve(backend, cfg, onnx)
    if log:
        log(f"backend: {chosen}" + (" (auto)" if backend == "auto" else ""))
    if chosen == "torch":
        return Pipeline.from_config(cfg, weights=weights, device=device, threshold=threshold, labels=labels)
    path = onnx or default_onnx_path(cfg)
    if chosen == "tensorrt" and path is None:
        return Pipeline(cfg, compile_torch_tensorrt(cfg, weights, log=log or print), labels=labels,
                        threshold=threshold)
    if path is None:
        raise FileNotFoundError(f"backend '{chosen}' needs an exported graph: pass --onnx FILE "
                                f"(make one with `panoptic-node export --model {cfg.name}`)")
    if chosen == "tensorrt":
        from .tensorrt_backend import TensorRTBackend
        be = TensorRTBackend(path, cfg, device=device, log=log or print)
    elif chosen == "openvino":
        if device != "cpu":
            raise ValueError(f"backend 'openvino' runs on the CPU; device '{device}' is for the tensorrt, "
                             f"onnxruntime or torch backends")
        from .openvino_backend import OpenVinoBackend
        be = OpenVinoBackend(path, cfg)
    else:
        from .onnxruntime_backend import OnnxRuntimeBackend
        be = OnnxRuntimeBackend(path, cfg, device=device, log=log or print)
    return Pipeline(cfg, be, labels=labels, threshold=threshold)
