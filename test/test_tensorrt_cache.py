"""TensorRT engine cache: key derivation, metadata check and the rebuild decision (plain Python,
fake engine files); requesting TensorRT without CUDA is one clear error; GPU tests skip cleanly."""
import json

import pytest
import torch

from panoptic_node.inference.backends import make_pipeline, resolve
from panoptic_node.inference.tensorrt_backend import (EngineKey, check_cached, engine_paths, file_sha256, get_engine,
                                                      profile_shapes)
from panoptic_node.model.config import load_config


def key(**changes):
    base = dict(source_sha256="ab" * 32, tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7",
                precision="fp16", input_shape=(384, 480))
    base.update(changes)
    return EngineKey(**base)


def test_key_changes_with_every_field():
    digests = {key().digest()}
    for change in (dict(source_sha256="cd" * 32), dict(tensorrt_version="10.4.0"), dict(gpu_name="RTX 4090"),
                   dict(compute_capability="8.9"), dict(precision="int8"), dict(input_shape=(360, 480))):
        digests.add(key(**change).digest())
    assert len(digests) == 7


def test_file_sha256(tmp_path):
    (tmp_path / "a.onnx").write_bytes(b"abc")
    assert file_sha256(tmp_path / "a.onnx") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_build_once_then_reuse(tmp_path):
    builds, logs = [], []

    def build(out):
        builds.append(out)
        out.write_bytes(b"engine bytes")

    first = get_engine(key(), build, logs.append, tmp_path)
    second = get_engine(key(), build, logs.append, tmp_path)
    assert first == second and len(builds) == 1 and first.read_bytes() == b"engine bytes"
    assert "no cached engine" in logs[0]


def test_mismatched_metadata_triggers_a_logged_rebuild(tmp_path):
    engine, meta = engine_paths(key(), tmp_path)
    engine.parent.mkdir(parents=True, exist_ok=True)
    engine.write_bytes(b"old")
    stored = json.loads(json.dumps({**key().__dict__, "input_shape": [384, 480]}))
    stored["tensorrt_version"] = "8.6.1"  # e.g. JetPack upgraded under the cache
    meta.write_text(json.dumps(stored))
    ok, reason = check_cached(key(), tmp_path)
    assert not ok and "tensorrt_version" in reason
    logs = []
    get_engine(key(), lambda out: out.write_bytes(b"new"), logs.append, tmp_path)
    assert engine.read_bytes() == b"new" and "tensorrt_version" in logs[0]


def test_empty_or_unlabelled_engine_is_never_used(tmp_path):
    engine, meta = engine_paths(key(), tmp_path)
    engine.parent.mkdir(parents=True, exist_ok=True)
    engine.write_bytes(b"")
    assert check_cached(key(), tmp_path) == (False, f"cached engine {engine.name} is empty")
    engine.write_bytes(b"x")
    assert "no metadata" in check_cached(key(), tmp_path)[1]


def test_optimization_profile_covers_the_mask_graphs_query_dimension(tmp_path):
    """TensorRT needs (min, opt, max) shapes for dynamic inputs: only the mask graph's `hs` has one."""
    onnx = pytest.importorskip("onnx")
    from conftest import compact_config
    from panoptic_node.export import export_onnx
    from panoptic_node.model.detr import build_model
    cfg = compact_config()
    detect, masks = export_onnx(build_model(cfg).eval(), (64, 96), tmp_path / "m.onnx")

    def shapes(path):  # what TensorRT's parser reports: -1 for a named (dynamic) dimension
        return {i.name: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim)
                for i in onnx.load(str(path)).graph.input}

    assert profile_shapes(shapes(detect), cfg.num_queries) == {}
    d = cfg.hidden_dim
    assert profile_shapes(shapes(masks), cfg.num_queries) == {"hs": ((1, 1, d), (1, cfg.num_queries, d),
                                                                      (1, cfg.num_queries, d))}


@pytest.mark.parametrize("gpu,found,machine,graph,device,want", [
    (True, {"tensorrt", "torch_tensorrt", "openvino", "onnxruntime"}, "x86_64", None, "cuda", "tensorrt"),
    (True, {"tensorrt", "openvino", "onnxruntime"}, "x86_64", None, "cuda", "torch"),  # no graph, no torch_tensorrt
    (True, {"tensorrt", "openvino", "onnxruntime"}, "x86_64", None, "cpu", "openvino"),  # asked for the CPU
    (False, {"openvino", "onnxruntime"}, "x86_64", "m.onnx", "cpu", "openvino"),
    (False, {"openvino", "onnxruntime"}, "aarch64", "m.onnx", "cpu", "onnxruntime"),  # OpenVINO measured on x86 only
    (False, {"onnxruntime"}, "x86_64", "m.onnx", "cpu", "onnxruntime"),
    (False, {"openvino", "onnxruntime"}, "x86_64", None, "cpu", "openvino"),  # the graph is exported into the cache
    (False, {"openvino", "onnxruntime"}, "aarch64", None, "cpu", "torch"),
    (False, {"openvino", "onnxruntime"}, "x86_64", None, "cuda", "torch"),
    (False, set(), "x86_64", "m.onnx", "cpu", "torch"),
])
def test_auto_picks_the_fastest_runtime_present(monkeypatch, gpu, found, machine, graph, device, want):
    from panoptic_node.inference import backends
    monkeypatch.setattr(backends, "tensorrt_available", lambda: gpu)
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: object() if name in found else None)
    monkeypatch.setattr(backends.platform, "machine", lambda: machine)
    monkeypatch.setattr(backends, "default_onnx_path", lambda cfg: None)
    assert resolve("auto", load_config("street_lite0"), onnx=graph, device=device) == want
    assert resolve("torch", load_config("street_lite0"), onnx=graph, device=device) == "torch"


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="not one of auto, torch, onnxruntime, openvino, tensorrt"):
        resolve("tflite", load_config("street_lite0"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_tensorrt_without_cuda_says_what_to_do(tmp_path):
    from panoptic_node.inference.tensorrt_backend import TensorRTBackend
    with pytest.raises(RuntimeError, match="needs CUDA.*use --backend onnxruntime or torch"):
        TensorRTBackend(tmp_path / "m.onnx", load_config("street_lite0"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU with TensorRT")
def test_tensorrt_engine_runs_on_gpu(tmp_path):  # pragma: no cover - GPU only
    pytest.importorskip("tensorrt")
    from panoptic_node.export import export_onnx
    from panoptic_node.model.detr import build_model
    cfg = load_config("street_lite0")
    export_onnx(build_model(cfg).eval(), (384, 480), tmp_path / "m.onnx")
    p = make_pipeline(cfg.name, backend="tensorrt", device="cuda", onnx=str(tmp_path / "m.onnx"))
    import numpy as np
    assert p(np.zeros((360, 480, 3), np.uint8)).shape == (360, 480)
