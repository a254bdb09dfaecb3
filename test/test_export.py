"""ONNX export: both model families match PyTorch within 1e-4 through ONNX Runtime and OpenVINO, the
mask graph takes any number of queries, metadata rides along, and wrong / corrupt files are refused."""
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from panoptic_node.export import export_onnx, read_metadata  # noqa: E402
from panoptic_node.inference.backend import TorchBackend  # noqa: E402
from panoptic_node.inference.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from panoptic_node.inference.pipeline import Pipeline  # noqa: E402
from panoptic_node.model.detr import build_model  # noqa: E402

from conftest import compact_config, small_config  # noqa: E402


def openvino_backend(*args, **kwargs):
    pytest.importorskip("openvino")
    from panoptic_node.inference.openvino_backend import OpenVinoBackend
    return OpenVinoBackend(*args, **kwargs)


# the two CPU runtimes of the exported graphs
RUNTIMES = pytest.mark.parametrize("runtime", [OnnxRuntimeBackend, openvino_backend], ids=["onnxruntime", "openvino"])


@pytest.fixture(scope="module", params=["compact", "compact_stride4", "compact_masked", "compact_memory16", "compact_m2f",
                                                "r50"])
def exported(request, tmp_path_factory):
    cfg = {"compact": compact_config, "compact_stride4": lambda: compact_config(mask_stride=4),
           "compact_masked": lambda: compact_config(decoder="masked"),
           "compact_memory16": lambda: compact_config(memory_stride=16),
           "compact_m2f": lambda: compact_config(decoder_layer="mask2former"), "r50": small_config}[request.param]()
    torch.manual_seed(0)
    model = build_model(cfg, pretrained_backbone=request.param != "r50").eval()
    path = tmp_path_factory.mktemp("onnx") / f"{cfg.name}.onnx"
    export_onnx(model, (64, 96), path)
    return cfg, model, path


@RUNTIMES
def test_parity_with_torch(exported, runtime):
    cfg, model, path = exported
    be = runtime(path, cfg)
    torch.manual_seed(1)
    x = torch.randn(1, 3, 64, 96)
    pad = torch.zeros(1, 64, 96, dtype=torch.bool)
    pad[:, 50:] = True
    x = x * ~pad[:, None]
    logits, boxes, hs, feats = be.detect(x, pad)
    with torch.no_grad():
        ref = model.detect(x, pad)
        for queries in ([0], [1, 4, 7], list(range(cfg.num_queries))):
            want = model.predict_masks(ref.mask_features, ref.hs[:, queries])[0]
            torch.testing.assert_close(be.masks(feats, 0, hs[0, queries]), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits, ref.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(boxes, ref.boxes, atol=1e-4, rtol=1e-4)


@RUNTIMES
def test_pipeline_on_exported_graphs_equals_torch(exported, runtime, rng):
    cfg, model, path = exported
    frame = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)
    ort_result = Pipeline(cfg, runtime(path, cfg))(frame)
    assert ort_result.shape == (48, 80)
    # same canvas for torch, so both see identical pixels
    torch_backend = TorchBackend(model)
    torch_backend.size = (64, 96)
    torch_result = Pipeline(cfg, torch_backend)(frame)
    agree = (ort_result.panoptic == torch_result.panoptic).mean()
    assert agree > 0.999


def test_onnxruntime_threads_do_not_spin_between_runs(exported):
    # spinning workers steal the cores from the post-processing that follows each run (README figures)
    cfg, _, path = exported
    be = OnnxRuntimeBackend(path, cfg)
    for session in (be.detect_session, be.mask_session):
        assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"



def test_openvino_leaves_a_share_of_the_cores_unpinned(exported, monkeypatch):
    """Pinned, pipelines given a share of the cores each would all run on the first ones (the
    backend's comment): with fewer threads than cores the threads are not pinned."""
    cfg, _, path = exported
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    share = openvino_backend(path, cfg, threads=2)
    for request in (share.detect_request, share.mask_request):
        assert request.get_compiled_model().get_property("ENABLE_CPU_PINNING") is False
    every = openvino_backend(path, cfg, threads=4)  # every core: OpenVINO's own choice stays
    assert "ENABLE_CPU_PINNING" not in every.compile_config

def test_metadata(exported):
    cfg, _, path = exported
    meta = read_metadata(path)
    assert meta["input_size"] == [64, 96] and meta["config"]["name"] == cfg.name
    assert meta["normalization"] == cfg.input.normalization and meta["precision"] == "fp32"
    import onnx
    assert onnx.load(str(path)).opset_import[0].version >= 17


@RUNTIMES
def test_onnx_from_another_model_is_refused(exported, runtime):
    cfg, _, path = exported
    other = compact_config(num_classes=19, labels="cityscapes") if cfg.backbone.startswith("eff") else \
        small_config(num_queries=20)
    with pytest.raises(ValueError, match="exported from another model"):
        runtime(path, other)


def test_a_graph_exported_before_a_config_key_existed_has_that_key_s_default(exported, tmp_path):
    """A graph exported by an earlier release lacks keys added since (fpn_smooth): it was made with their
    defaults, so it loads for a config that keeps the default and is refused for one that does not."""
    import json
    import onnx
    from panoptic_node.export import open_exported
    cfg, _, path = exported
    model = onnx.load(str(path))
    for p in model.metadata_props:
        if p.key == "panoptic_node":
            meta = json.loads(p.value)
            del meta["config"]["fpn_smooth"]
            p.value = json.dumps(meta)
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    (tmp_path / "old.masks.onnx").write_bytes(path.with_name(path.stem + ".masks.onnx").read_bytes())
    assert open_exported(old, cfg)[0]["config"].get("fpn_smooth") is None
    if cfg.mask_head == "dot_product":
        import dataclasses
        with pytest.raises(ValueError, match=r"differs in fpn_smooth full -> separable\)"):
            open_exported(old, dataclasses.replace(cfg, fpn_smooth="separable"))


@RUNTIMES
def test_corrupt_onnx(tmp_path, runtime):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ValueError, match="not a readable ONNX file|no panoptic_node metadata"):
        runtime(bad)
    with pytest.raises(FileNotFoundError, match="panoptic-node export"):
        runtime(tmp_path / "missing.onnx")


@RUNTIMES
def test_several_cameras_through_a_static_batch_graph(exported, runtime, rng):
    """The exported graphs take one frame per call: the node's batched call for several cameras goes
    through them frame by frame (it failed on every frame before), with each frame's own result."""
    cfg, model, path = exported
    pipeline = Pipeline(cfg, runtime(path, cfg))
    assert pipeline.backend.max_batch == 1
    frames = [rng.integers(0, 255, (48, 80, 3), dtype=np.uint8) for _ in range(3)]
    batched = pipeline.run_batch(frames)
    for frame, result in zip(frames, batched):
        np.testing.assert_array_equal(result.panoptic, pipeline(frame).panoptic)
