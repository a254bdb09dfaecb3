"""Choosing a backend: auto picks TensorRT if CUDA and TensorRT import; else, on an x86 CPU where
OpenVINO is installed, OpenVINO (the fastest CPU runtime measured here, int8 above all:
bench/bench_backends.py) on the graph given, found beside the weights, or exported into the cache
(graph_cache; int8 when the weights ship int8 scales, int8_scales.py); else ONNX Runtime when a graph
is given or found; else torch.

TensorRT runs an exported graph when there is one, else the PyTorch model compiled by torch_tensorrt.
An exported graph that cannot be made (a read-only cache, an exporter failure) leaves auto on torch,
said in one line; missing weights are an error on every backend."""
import errno
import importlib.util
import os
import platform
from pathlib import Path
from typing import Optional

from ..errors import first_line
from ..model.checkpoint import weights_of
from ..model.config import load_config
from .cache_key import weights_identity
from .graph_cache import compiled_dir
from .graph_per_shape import GraphPerShape, PerShape
from .pipeline import Pipeline

BACKENDS = ("auto", "torch", "onnxruntime", "openvino", "tensorrt")
PRECISIONS = ("auto", "fp32", "int8")


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
    """The TensorRT backend for a PyTorch checkpoint (no exported graph): torch_tensorrt engines, one per
    padded input size (graph_per_shape.py), cached; the config's canvas is compiled now."""
    from ..model.checkpoint import load_model
    from . import torch_tensorrt_backend
    model, source = load_model(cfg, weights), weights_of(cfg, weights)
    return PerShape(lambda shape: torch_tensorrt_backend.TorchTensorRTBackend(model, cfg, source, precision=precision,
                                                                             log=log, canvas=shape),
                    tuple(cfg.input.canvas))


def int8_scales_for(cfg, weights, chosen: str, precision: str, log, device: str = "cpu") -> Optional[dict]:
    """The int8 scales the cache makes `chosen`'s graphs from (int8_scales.py), or None for fp32 graphs.
    auto: int8 on OpenVINO when the weights have scales beside them (2.1x torch for 0.2 PQ on this
    project's CPUs with VNNI, 1.36x for 0.5 PQ on one without, bench/bench_backends.py); ONNX Runtime stays
    fp32 there (its int8 kernels run slower than its fp32 ones on x86)."""
    if precision == "fp32":
        return None
    from ..int8_scales import default_scales_path, load_scales
    from .cpu_features import int8_saturates
    source = weights_of(cfg, weights)
    path = default_scales_path(source)
    if precision == "auto" and (chosen != "openvino" or not path.is_file()):
        return None
    try:
        body = load_scales(path, source)
    except (OSError, ValueError) as e:
        if precision == "int8":
            raise
        (log or print)(f"{e}; running fp32")
        return None
    # the activation scales hold for any weight width: where 8-bit weights overflow the CPU's int8 kernels
    # (x86 without VNNI, cpu_features.py), the cache makes graphs with 7-bit ones, a graph of their own, and
    # leaves their matrix products in float, faster there than int8 ones (quantize.quantize_int8)
    if device == "cpu" and int8_saturates():
        return {**body, "int8_weight_bits": 7, "int8_matmuls": False}
    return body


def check_threshold(threshold: Optional[float], cfg) -> None:
    if threshold is not None and not 0.0 <= threshold <= 1.0:  # also refuses nan
        raise ValueError(f"--threshold {threshold}: expected a class probability in [0, 1] (model {cfg.name} "
                         f"uses {cfg.postprocess.threshold})")


def check_threads(threads, option: str = "threads") -> None:
    """A thread count the runtimes can take: 0 (their own choice) up to this machine's CPUs. More threads
    than CPUs only compete with each other, and absurd counts crash torch's thread pool (a segfault at
    100000), so they are refused in one line."""
    cpus = os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= cpus:
        raise ValueError(f"{option} {threads!r}: expected a whole number from 0 (every core) to {cpus} "
                         f"(this machine's CPUs)")


def why_no_graph(e: Exception) -> str:
    """Why the cache made no graph, naming the cache: a full disk with its free space (ENOSPC alone names
    neither), anything else in its first line."""
    from .graph_cache import cache_dir
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        from ..errors import no_space
        return f"{no_space(e, [cache_dir()])}; PANOPTIC_NODE_GRAPH_CACHE chooses another folder"
    return f"{first_line(e)}; graph cache {cache_dir()}"


def make_pipeline(model: str, weights: Optional[str] = None, backend: str = "auto", device: str = "cpu",
                  threshold: Optional[float] = None, labels: Optional[str] = None, onnx: Optional[str] = None,
                  log=None, precision: str = "auto", threads: int = 0, warn=None) -> Pipeline:
    """precision: of the graphs the cache makes (int8_scales_for); a graph given with --onnx runs at
    its own precision, which a precision other than auto must name. threads: CPU threads for the network
    (0: each runtime's own choice, every core; the post-processing takes torch's, one where the network
    runs on another runtime: _set_torch_threads), so that several pipelines on one machine (fleet workers,
    a node beside the driving stack) do not each take every core. warn: where a
    fallback to a slower deployment is said (the node's WARN; default: log)."""
    check_threads(threads)
    cfg = load_config(model)
    check_threshold(threshold, cfg)  # before any graph is exported for it
    chosen = resolve(backend, cfg, onnx, device)
    # the graph beside the config's weights belongs to those weights, not to --weights
    path = onnx or (default_onnx_path(cfg) if not weights or weights == cfg.weights else None)
    if chosen == "openvino" and device != "cpu":
        raise ValueError(f"backend 'openvino' runs on the CPU; device '{device}' is for the tensorrt, "
                         f"onnxruntime or torch backends")
    if precision not in PRECISIONS:
        raise ValueError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}")
    if path is not None and precision != "auto":
        from ..export import read_metadata
        given = read_metadata(path).get("precision", "fp32")
        if given != precision:
            raise ValueError(f"the graph '{path}' is {given}, not the {precision} asked for; leave --onnx out to "
                             f"run graphs the cache makes, or pass a {precision} graph")
    per_shape = None
    if path is None and chosen in ("openvino", "onnxruntime"):
        from ..model.checkpoint import CheckpointError
        int8 = int8_scales_for(cfg, weights, chosen, precision, warn or log, device)
        # graphs of the cache's own, whose names carry what they hold: their compiled forms are kept beside them
        opener = lambda p: _open_graph(chosen, p, cfg, device, log, threads, compiled_dir(p))  # noqa: E731
        try:  # graphs the cache exports, one per input size (graph_per_shape.py)
            try:
                per_shape = GraphPerShape(cfg, weights, opener, log=log or print, int8=int8)
            except ValueError as e:  # scales that do not fit the graph: auto runs the fp32 one
                if int8 is None or precision != "auto":
                    raise
                (warn or log or print)(f"{str(e).splitlines()[0]}; running fp32")
                per_shape = GraphPerShape(cfg, weights, opener, log=log or print)
        except (FileNotFoundError, CheckpointError):  # missing or bad weights: torch could not load them either
            raise
        except Exception as e:  # a read-only cache, an exporter failure
            if backend != "auto" or precision == "int8":
                raise
            (warn or log or print)(f"no exported graph for {chosen} ({why_no_graph(e)}); running on torch, "
                                   f"slower (bench/bench_backends.py)")
            chosen = "torch"
    if log:
        log(f"backend: {chosen}" + (" (auto)" if backend == "auto" else ""))
    if precision == "int8" and per_shape is None and path is None:
        raise ValueError(f"precision int8 runs on the openvino or onnxruntime backend (graphs made from the "
                         f"model's int8 scales) or from an int8 --onnx graph; backend '{chosen}' runs fp32")
    _set_torch_threads(threads if chosen == "torch" else 1)
    if chosen == "torch":
        return Pipeline.from_config(cfg, weights=weights, device=device, threshold=threshold, labels=labels)
    if chosen == "tensorrt" and path is None:
        be = compile_torch_tensorrt(cfg, weights, log=log or print)
    else:
        be = per_shape or _open_graph(chosen, path, cfg, device, log, threads)
    pipeline = Pipeline(cfg, be, labels=labels, threshold=threshold)
    pipeline.weights_path = path or weights_of(cfg, weights)  # a graph given holds its weights
    pipeline.weights_id = weights_identity(pipeline.weights_path)
    if path is None and pipeline.backend.precision == "int8":  # its graphs made from the scales beside the weights
        from ..int8_scales import default_scales_path
        pipeline.scales_id = weights_identity(default_scales_path(pipeline.weights_path))
    return pipeline


_TORCH_OWN_THREADS = []  # torch's thread count before make_pipeline first set it


def _set_torch_threads(threads: int) -> None:
    """torch runs the network on the torch backend (`threads`, 0: torch's own count, every core) and the
    post-processing whatever the backend. Where another runtime runs the network, torch gets one thread:
    the post-processing's operations are small and no slower on one, while with more torch's OpenMP workers
    spin after each of them and take the cores from the runtime's next frame (OpenVINO's network on a 2-core
    Zen 2, the pipeline's own stage timings: 42 ms a frame beside two torch threads, 36 beside one)."""
    import torch
    if not _TORCH_OWN_THREADS:
        _TORCH_OWN_THREADS.append(torch.get_num_threads())
    torch.set_num_threads(threads or _TORCH_OWN_THREADS[0])


def _open_graph(chosen: str, path, cfg, device: str, log, threads: int = 0, compiled: Optional[Path] = None):
    """compiled: a folder where OpenVINO may keep what it compiles the graph to (graph_cache.compiled_dir)."""
    if chosen == "tensorrt":
        from .tensorrt_backend import TensorRTBackend
        return TensorRTBackend(path, cfg, device=device, log=log or print)
    if chosen == "openvino":
        from .openvino_backend import OpenVinoBackend
        return OpenVinoBackend(path, cfg, threads=threads, log=log or print, compiled=compiled)
    from .onnxruntime_backend import OnnxRuntimeBackend
    return OnnxRuntimeBackend(path, cfg, device=device, threads=threads, log=log or print)
