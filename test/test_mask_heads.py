"""The dot-product mask head at stride 8 and 4: output grids, config validation, and a stride-4
model runs through the Pipeline to full-resolution maps."""
import numpy as np
import pytest
import torch

from panoptic_node.inference.backend import TorchBackend
from panoptic_node.inference.pipeline import Pipeline
from panoptic_node.model.config import ModelConfig
from panoptic_node.model.detr import build_model

from conftest import compact_config, small_config


@pytest.mark.parametrize("stride", [8, 4])
def test_mask_logits_come_at_the_configured_stride(stride):
    cfg = compact_config(mask_stride=stride)
    model = build_model(cfg).eval()
    assert model.mask_stride == stride == cfg.output_mask_stride
    with torch.no_grad():
        out = model.detect(torch.zeros(2, 3, 64, 96), torch.zeros(2, 64, 96, dtype=torch.bool))
        masks = model.predict_masks(out.mask_features, out.hs[:, :3])
    assert tuple(masks.shape) == (2, 3, 64 // stride, 96 // stride)


def test_stride4_head_sees_the_stride4_features():
    """Changing only the stride-4 backbone tap changes the pixel embeddings."""
    torch.manual_seed(0)
    model = build_model(compact_config(mask_stride=4)).eval()
    mem = torch.randn(1, model.cfg.hidden_dim, 2, 3)
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 64, 96))
        a = model.masks.prepare(None, mem, None, feats)[0]
        feats[0] = feats[0] + 1.0
        b = model.masks.prepare(None, mem, None, feats)[0]
    assert not torch.allclose(a, b)


def test_stride4_model_through_the_pipeline(rng):
    torch.manual_seed(0)
    cfg = compact_config(mask_stride=4)
    pipeline = Pipeline(cfg, TorchBackend(build_model(cfg).eval()))
    result = pipeline(rng.integers(0, 255, (72, 100, 3), dtype=np.uint8))
    assert result.panoptic.shape == result.semantic.shape == (72, 100)
    assert len(result.segments) > 0


@pytest.mark.parametrize("overrides, message", [
    (dict(mask_head="dot_product", mask_stride=16), "'mask_stride' = 16 is invalid: allowed one of 4, 8"),
    (dict(mask_head="detr_conv", mask_stride=4), "mask_stride 4 is not allowed"),
    (dict(postprocess={"merge_things": True}), "merge_things needs split_things > 0"),
    (dict(mask_head="dot_product", fpn_smooth="depthwise"), "'fpn_smooth' = 'depthwise' is invalid: allowed one of"),
    (dict(mask_head="detr_conv", fpn_smooth="separable"), "fpn_smooth separable is not allowed with mask_head detr_conv"),
    (dict(mask_head="detr_conv", decoder="masked"), "decoder masked needs mask_head dot_product"),
    (dict(mask_head="dot_product", decoder="mask2former"), "'decoder' = 'mask2former' is invalid: allowed one of"),
])
def test_bad_mask_config_is_refused(overrides, message):
    base = small_config().to_dict()
    base.update(overrides)
    with pytest.raises(ValueError, match=message) as e:
        ModelConfig.from_dict(base, source="m.yaml")
    assert str(e.value).startswith("model config m.yaml: ")  # schema and relation problems read alike


@pytest.mark.parametrize("stride", [8, 4])
def test_query_side_projection_equals_projecting_every_pixel(stride):
    """forward() applies pixel_out to the query embeddings; it must equal pixel_out on the pixels."""
    torch.manual_seed(1)
    model = build_model(compact_config(mask_stride=stride)).eval()
    torch.nn.init.normal_(model.masks.pixel_out.bias)  # a bias that matters
    with torch.no_grad():
        out = model.detect(torch.randn(2, 3, 64, 96), torch.zeros(2, 64, 96, dtype=torch.bool))
        got = model.predict_masks(out.mask_features, out.hs[:, :5])
        pixels = model.masks.pixel_out(out.mask_features[0])
        want = torch.einsum("bqc,bchw->bqhw", model.masks.mask_embed(out.hs[:, :5]), pixels)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_separable_smoothing_is_a_depthwise_3x3_then_a_1x1_with_the_same_outputs_shape(rng):
    """fpn_smooth: separable (the stride-16 and stride-8 smoothings as depthwise 3x3 + 1x1, ~9x fewer operations
    than full 3x3 convolutions): the layers it says, the same mask grid, fewer parameters, and a checkpoint of
    one layout is refused by the other (a state dict is not silently half loaded)."""
    full, sep = compact_config(), compact_config(fpn_smooth="separable")
    a, b = build_model(full).eval(), build_model(sep).eval()
    for smooth in (b.masks.smooth16, b.masks.smooth8):
        dw, pw = smooth[0], smooth[1]
        assert (dw.kernel_size, dw.groups, pw.kernel_size) == ((3, 3), dw.in_channels, (1, 1))
    assert a.masks.smooth8[0].groups == 1 and a.masks.smooth8[0].kernel_size == (3, 3)
    assert sum(p.numel() for p in b.parameters()) < sum(p.numel() for p in a.parameters())
    with torch.no_grad():
        out = b.detect(torch.zeros(1, 3, 64, 96), torch.zeros(1, 64, 96, dtype=torch.bool))
        assert tuple(b.predict_masks(out.mask_features, out.hs[:, :2]).shape) == (1, 2, 8, 12)
    with pytest.raises(RuntimeError, match="smooth8"):
        b.load_state_dict(a.state_dict())
    pipeline = Pipeline(sep, TorchBackend(b))
    assert pipeline(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).semantic.shape == (48, 80)
