"""The torch_tensorrt path (TensorRT from the PyTorch model, no ONNX): the float16 conversion that keeps
normalisation in float32 and the cache identity run here; compiling needs a GPU and skips without one."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from panoptic_node.inference.backends import make_pipeline
from panoptic_node.inference.torch_tensorrt_backend import (Float32GroupNorm, Float32LayerNorm,
                                                            half_with_float32_norms, model_source_sha256)
from panoptic_node.model.checkpoint import save_checkpoint
from panoptic_node.model.config import load_config
from panoptic_node.model.detr import build_model

from conftest import compact_config, randomize_batchnorm, small_config


@pytest.mark.parametrize("make_cfg", [compact_config, small_config], ids=["lite0-dot-product", "r50-detr-conv"])
def test_half_model_keeps_norms_float32_and_matches_float32(make_cfg):
    torch.manual_seed(0)
    cfg = make_cfg()
    model = build_model(cfg).eval()
    randomize_batchnorm(model)
    half = half_with_float32_norms(model)

    norms = [m for m in half.modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm))]
    assert norms and all(isinstance(m, (Float32LayerNorm, Float32GroupNorm)) for m in norms)
    for name, p in half.named_parameters():
        in_norm = any(p is q for m in norms for q in m.parameters())
        assert p.dtype == (torch.float32 if in_norm else torch.float16), name
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the original is untouched

    h, w = cfg.input.canvas
    image = torch.randn(1, 3, h, w)
    pad = torch.zeros(1, h, w, dtype=torch.bool)
    pad[:, :, w - 32:] = True
    with torch.no_grad():
        ref = model.detect(image, pad)
        out = half.detect(image.half(), pad)
        ref_masks = model.predict_masks(tuple(ref.mask_features), ref.hs[:, :3])
        out_masks = half.predict_masks(tuple(out.mask_features), out.hs[:, :3])
    assert out.logits.dtype == torch.float16
    for a, b in ((out.logits, ref.logits), (out.boxes, ref.boxes), (out_masks, ref_masks)):
        scale = b.abs().max().item()
        assert (a.float() - b).abs().max().item() <= 0.02 * scale + 1e-3


def test_norms_compute_in_float32():
    # features with a large common offset: float16 arithmetic loses the small deviations LayerNorm keeps
    x = (1000 + torch.randn(4, 64)).half()
    ln = nn.LayerNorm(64)
    ours = half_with_float32_norms(nn.Sequential(ln))[0]
    out = ours(x)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), F.layer_norm(x.float(), (64,)), atol=2e-3, rtol=1e-3)
    gn = half_with_float32_norms(nn.Sequential(nn.GroupNorm(4, 16)))[0]
    y = (1000 + torch.randn(2, 16, 5, 5)).half()
    torch.testing.assert_close(gn(y).float(), F.group_norm(y.float(), 4), atol=2e-3, rtol=1e-3)


def test_source_hash_follows_weights_config_and_part(tmp_path):
    cfg = compact_config()
    model = build_model(cfg)
    save_checkpoint(model, tmp_path / "a.pth")
    torch.nn.init.zeros_(model.class_embed.weight)
    save_checkpoint(model, tmp_path / "b.pth")
    base = model_source_sha256(tmp_path / "a.pth", cfg, "detect")
    assert model_source_sha256(tmp_path / "a.pth", cfg, "detect") == base
    assert model_source_sha256(tmp_path / "a.pth", compact_config(weights="elsewhere.pth"), "detect") == base
    others = {model_source_sha256(tmp_path / "b.pth", cfg, "detect"),
              model_source_sha256(tmp_path / "a.pth", compact_config(num_queries=20), "detect"),
              model_source_sha256(tmp_path / "a.pth", cfg, "masks")}
    assert base not in others and len(others) == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_tensorrt_without_onnx_or_cuda_says_what_to_do():
    with pytest.raises(RuntimeError, match="needs CUDA.*use --backend onnxruntime or torch"):
        make_pipeline("street_lite0", backend="tensorrt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU with torch_tensorrt")
def test_torch_tensorrt_pipeline_agrees_with_torch(tmp_path, monkeypatch):  # pragma: no cover - GPU only
    pytest.importorskip("torch_tensorrt")
    monkeypatch.setenv("PANOPTIC_NODE_ENGINE_CACHE", str(tmp_path / "cache"))
    cfg = load_config("street_lite0")
    gpu = make_pipeline("street_lite0", backend="tensorrt")
    cpu = make_pipeline("street_lite0", backend="torch")
    frame = np.random.default_rng(0).integers(0, 255, (360, 480, 3), dtype=np.uint8)
    a, b = gpu(frame), cpu(frame)
    assert a.semantic.shape == (360, 480) and cfg.num_queries > 0
    assert (a.semantic == b.semantic).mean() > 0.98
    again = make_pipeline("street_lite0", backend="tensorrt")  # from the cache this time
    assert (again(frame).semantic == a.semantic).all()


def test_tensorrt_without_a_graph_compiles_one_engine_pair_per_input_size(tiny_model_yaml, rng, monkeypatch):
    """What runs on a GPU: each padded input size gets its own compiled pair at exactly that canvas, so
    the answer is torch's on every frame shape. The compiler is replaced by one that records the canvas
    and runs the same network in torch at that static size (TensorRT itself needs a GPU)."""
    from panoptic_node.inference import torch_tensorrt_backend
    from panoptic_node.inference.backend import TorchBackend

    built = []

    class StaticCanvasStandIn(TorchBackend):
        def __init__(self, model, cfg, weights, precision="fp16", log=print, canvas=None):
            super().__init__(model)
            self.name, self.precision, self.canvas = "tensorrt", precision, tuple(canvas)
            built.append(self.canvas)

        def detect(self, images, pad_mask):
            assert tuple(images.shape[-2:]) == self.canvas  # a static engine takes nothing else
            return super().detect(images, pad_mask)

    monkeypatch.setattr(torch_tensorrt_backend, "TorchTensorRTBackend", StaticCanvasStandIn)
    trt = make_pipeline(tiny_model_yaml, backend="tensorrt", threshold=0.0)
    torch_pipe = make_pipeline(tiny_model_yaml, backend="torch", threshold=0.0)
    cfg = load_config(tiny_model_yaml)
    assert built == [tuple(cfg.input.canvas)]  # the config's canvas at start
    for h, w in ((48, 64), (64, 48), (40, 96), (48, 64)):
        rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        a, b = trt(rgb), torch_pipe(rgb)
        assert a.panoptic.shape == (h, w)
        np.testing.assert_array_equal(a.semantic, b.semantic)
        np.testing.assert_array_equal(a.panoptic, b.panoptic)
    assert len(built) == len(set(built)) >= 3  # one per size, each made once
    assert trt.backend.name == "tensorrt"
