"""Choosing a backend: auto picks TensorRT if CUDA and TensorRT import, else ONNX Runtime (when an
exported graph is given or found beside the weights), else torch."""
import importlib.util
from pathlib import Path
from typing import Optional

from ..model.config import load_config
from .pipeline import Pipeline

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


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
    if tensorrt_available() and (onnx or default_onnx_path(cfg)):
        return "tensorrt"
    if importlib.util.find_spec("onnxruntime") and (onnx or default_onnx_path(cfg)):
        return "onnxruntime"
    return "torch"


def make_pipeline(model: str, weights: Optional[str] = None, backend: str = "auto", device: str = "cpu",
                  threshold: Optional[float] = None, labels: Optional[str] = None, onnx: Optional[str] = None,
                  log=None) -> Pipeline:
    cfg = load_config(model)
    chosen = resolve(backend, cfg, onnx)
    if log:
        log(f"backend: {chosen}" + (f" (auto)" if backend == "auto" else ""))
    if chosen == "torch":
        return Pipeline.from_config(cfg, weights=weights, device=device, threshold=threshold, labels=labels)
    path = onnx or default_onnx_path(cfg)
    if path is None:
        raise FileNotFoundError(f"backend '{chosen}' needs an exported graph: pass --onnx FILE "
                                f"(make one with `panoptic-node export --model {cfg.name}`)")
    if chosen == "tensorrt":
        from .tensorrt_backend import TensorRTBackend
        be = TensorRTBackend(path, cfg, device=device)
    else:
        from .onnxruntime_backend import OnnxRuntimeBackend
        be = OnnxRuntimeBackend(path, cfg, device=device)
    return Pipeline(cfg, be, labels=labels, threshold=threshold)
