"""Exported graphs made on demand: when a CPU runtime (OpenVINO, ONNX Runtime) is asked for and no
graph is given, the PyTorch model is exported once (about 4 s for the street model) into a cache and
reused from then on. This is what lets `--backend auto` run OpenVINO on x86 CPUs by default, 1.3-1.6x
torch end to end with the same PQ (bench/bench_backends.py), with no export step by hand.

Like the TensorRT engine cache, a graph's file name carries what it was made from: the weights' and
the config's sha256, the canvas, and the source of the code that builds and exports the model; new
weights, a changed config or a changed exporter export again instead of reusing a stale graph.
"""
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from ..export import OPSET, export_onnx, mask_graph_path
from .cache_key import file_sha256, model_source_sha256

PACKAGE = Path(__file__).resolve().parents[1]
KEEP = 3  # graphs kept per model name
KEY_CHARS = 24  # of the sha256 in a graph's name


def cache_dir() -> Path:
    """$PANOPTIC_NODE_GRAPH_CACHE, else ~/.cache/panoptic_node/graphs. Set but empty counts as unset:
    Path("") is the current folder, where graphs were written."""
    return Path(os.environ.get("PANOPTIC_NODE_GRAPH_CACHE") or Path.home() / ".cache" / "panoptic_node" / "graphs")


def _exporter_sha256() -> str:
    """The source of everything that shapes an exported graph: the model and the exporter."""
    h = hashlib.sha256()
    for path in sorted([*PACKAGE.glob("model/*.py"), PACKAGE / "export.py", PACKAGE / "onnx_passes.py"]):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _quantizer_sha256() -> str:
    return file_sha256(PACKAGE / "quantize.py")


def cached_graph_path(cfg, weights, directory: Optional[Path] = None, canvas=None, int8: Optional[dict] = None) -> Path:
    h, w = canvas or cfg.input.canvas
    part = f"onnx opset {OPSET} canvas {h}x{w} exporter {_exporter_sha256()}"
    if int8 is not None:  # what the int8 graph is made from: the scales and the quantizer's code
        part += f" int8 {json.dumps(int8, sort_keys=True)} quantizer {_quantizer_sha256()}"
    key = model_source_sha256(weights, cfg, part)[:KEY_CHARS]
    return Path(directory or cache_dir()) / f"{cfg.name}-{h}x{w}{'-int8' if int8 is not None else ''}-{key}.onnx"


def cached_graph(cfg, weights: Optional[str] = None, log=print, directory: Optional[Path] = None,
                 canvas=None, int8: Optional[dict] = None) -> Path:
    """The graph pair (detect + mask head) of `cfg` with `weights` (default: the config's) for an input
    of `canvas` (H, W; default the config's), exported into the cache the first time: fp32, or with
    `int8` (a scales file's content, int8_scales.load_scales) the int8 detect graph made from those
    scales (the mask head stays fp32, as in every int8 export)."""
    from ..model.checkpoint import load_model, require_weights_file, weights_of

    source = require_weights_file(weights_of(cfg, weights))  # before its bytes are hashed
    canvas = tuple(canvas or cfg.input.canvas)
    path = cached_graph_path(cfg, source, directory, canvas, int8)
    if is_cached(path):
        os.utime(path)  # the cache keeps the graphs used last
        return path
    if path.is_file() and mask_graph_path(path).is_file():
        # truncated, emptied, or half-deleted by hand: made again instead of failing every run
        log(f"cached graph {path} does not match its checksum (damaged?); exporting it again")
    precision = "int8" if int8 is not None else "fp32"
    model = load_model(cfg, source)  # first: weights that do not load are their own error, not an export's
    shutil.rmtree(compiled_dir(path), ignore_errors=True)  # compiled from a pair that did not check out
    log(f"exporting {cfg.name} ({precision}) for the CPU runtime to {path} (once; later runs reuse it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    # in a folder of this process's own: two nodes starting together never write into one file
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as d:
        detect, masks = export_onnx(model, canvas, Path(d) / path.name)
        if int8 is not None:
            from ..quantize import quantize_with_scales
            detect = quantize_with_scales(detect, Path(d) / f"int8-{path.name}", cfg, canvas, int8["scales"],
                                          reduce_range=int8["int8_weight_bits"] == 7,
                                          float_matmuls=not int8.get("int8_matmuls", True),
                                          float_nodes=int8.get("float_nodes", ()), weights=source)
        os.replace(masks, mask_graph_path(path))
        os.replace(detect, path)  # then: a graph in the cache always has its mask graph
        checksum = Path(d) / "checksum"
        checksum.write_text(_pair_sha256(path))
        os.replace(checksum, _checksum_file(path))  # last: only a complete pair has one
    _prune(path.parent, cfg.name, canvas, precision)
    return path


def is_cached(path: Path) -> bool:
    """A complete pair at `path`: both graphs, and the checksum written last over them matches."""
    path = Path(path)
    return (path.is_file() and mask_graph_path(path).is_file() and _checksum_file(path).is_file()
            and _checksum_file(path).read_text() == _pair_sha256(path))


def _checksum_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def compiled_dir(path: Path) -> Path:
    """Beside a cached graph pair, the folder where a runtime keeps what it compiled them to (OpenVINO's
    model cache: read and compiled in 0.4 s instead of 1.1 for the street model's int8 graph on the Zen 2). It goes
    with the pair: made again with it, pruned with it."""
    path = Path(path)
    return path.with_name(path.name + ".compiled")


def _pair_sha256(path: Path) -> str:
    """Of a cached graph and its mask graph, as written: what a later run checks before trusting them."""
    return " ".join(file_sha256(p) for p in (path, mask_graph_path(path)))



def _prune(directory: Path, name: str, canvas, precision: str = "fp32", keep: int = KEEP) -> None:
    """Only the `keep` graphs of a model, input size and precision used last stay: every new weights
    file or exporter change adds one (27 MB for the street model, 170 MB for DETR R50)."""
    h, w = canvas
    # not another model's, not another size's or precision's, not a mask graph
    tag = "-int8" if precision == "int8" else ""
    ours = re.compile(rf"{re.escape(name)}-{h}x{w}{tag}-[0-9a-f]{{{KEY_CHARS}}}\.onnx")
    graphs = [p for p in directory.iterdir() if ours.fullmatch(p.name)]
    graphs.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in graphs[keep:]:
        old.unlink(missing_ok=True)  # the graph first: a mask graph alone is never taken for a graph
        mask_graph_path(old).unlink(missing_ok=True)
        _checksum_file(old).unlink(missing_ok=True)
        shutil.rmtree(compiled_dir(old), ignore_errors=True)
