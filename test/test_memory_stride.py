"""`memory_stride: 16`: the transformer reads the backbone's last level upsampled onto its stride-16 level (an
FPN top-down step) instead of the last level alone. Its input against a direct computation, the padding at the
finer grid, the one new parameter, a training step, the pipeline, and the configs it refuses."""
import numpy as np
import pytest
import torch

from panoptic_node.inference.backend import TorchBackend
from panoptic_node.inference.pipeline import Pipeline
from panoptic_node.model.config import ModelConfig
from panoptic_node.model.detr import build_model

from conftest import compact_config
from test_training import one_training_step


def transformer_inputs(model, images, pad):
    """What detect() hands the transformer: (src, mask, queries, pos)."""
    seen = {}
    hook = model.transformer.register_forward_pre_hook(lambda _, args: seen.setdefault("args", args))
    with torch.no_grad():
        model.detect(images, pad)
    hook.remove()
    return seen["args"][:4]


def test_the_transformer_reads_both_levels_at_stride_16():
    torch.manual_seed(0)
    model = build_model(compact_config(memory_stride=16), pretrained_backbone=True).eval()  # features that vary
    images, pad = torch.randn(2, 3, 64, 96), torch.zeros(2, 64, 96, dtype=torch.bool)
    src, mask, _, pos = transformer_inputs(model, images, pad)
    assert src.shape == (2, model.cfg.hidden_dim, 4, 6) and pos.shape[-2:] == (4, 6)
    with torch.no_grad():
        feats = model.backbone(images)
        coarse = model.input_proj(feats[3])                       # stride 32: 2 x 3 cells
        assert (coarse[..., 0, :] - coarse[..., 1, :]).abs().max() > 0.1  # else any upsampling would pass
        want = model.input_proj16(feats[2])
        for i in range(4):                                         # bilinear x2, half-pixel centres, edges clamped
            for j in range(6):
                y, x = min(max((i + 0.5) / 2 - 0.5, 0), 1), min(max((j + 0.5) / 2 - 0.5, 0), 2)
                y0, x0 = int(y), int(x)
                y1, x1 = min(y0 + 1, 1), min(x0 + 1, 2)
                wy, wx = y - y0, x - x0
                want[..., i, j] += ((1 - wy) * (1 - wx) * coarse[..., y0, x0] + (1 - wy) * wx * coarse[..., y0, x1]
                                    + wy * (1 - wx) * coarse[..., y1, x0] + wy * wx * coarse[..., y1, x1])
    torch.testing.assert_close(src, want)
    assert not mask.any()


def test_the_default_reads_the_last_level_alone():
    torch.manual_seed(0)
    model = build_model(compact_config(), pretrained_backbone=True).eval()
    images, pad = torch.randn(1, 3, 64, 96), torch.zeros(1, 64, 96, dtype=torch.bool)
    src, *_ = transformer_inputs(model, images, pad)
    with torch.no_grad():
        torch.testing.assert_close(src, model.input_proj(model.backbone(images)[3]))


def test_padding_is_masked_on_the_finer_grid():
    torch.manual_seed(0)
    model = build_model(compact_config(memory_stride=16)).eval()
    pad = torch.zeros(1, 64, 96, dtype=torch.bool)
    pad[:, :, 64:] = True                                          # the last 32 columns: two stride-16 cells
    _, mask, _, _ = transformer_inputs(model, torch.randn(1, 3, 64, 96), pad)
    assert mask.shape == (1, 4, 6)
    assert mask[0, :, 4:].all() and not mask[0, :, :4].any()


def test_the_only_new_parameters_are_the_stride_16_projection():
    finer = build_model(compact_config(memory_stride=16)).state_dict()
    plain = build_model(compact_config()).state_dict()
    assert set(finer) - set(plain) == {"input_proj16.weight", "input_proj16.bias"}
    assert set(plain) <= set(finer)
    assert all(finer[k].shape == plain[k].shape for k in plain)


def test_one_training_step_lowers_the_loss_and_reaches_the_new_projection(tmp_path, rng):
    model, before, after = one_training_step(tmp_path, rng, compact_config(memory_stride=16))
    assert model.input_proj16.weight.grad.abs().sum() > 0 and model.input_proj.weight.grad.abs().sum() > 0
    assert after < before


def test_the_pipeline_runs_a_stride_16_model(rng):
    torch.manual_seed(0)
    cfg = compact_config(memory_stride=16)
    result = Pipeline(cfg, TorchBackend(build_model(cfg).eval()))(rng.integers(0, 255, (72, 100, 3), dtype=np.uint8))
    assert result.panoptic.shape == (72, 100) and len(result.segments) > 0


@pytest.mark.parametrize("overrides, named", [
    (dict(memory_stride=16, decoder="masked"), "decoder detr"),
    (dict(memory_stride=16, mask_head="detr_conv"), "mask_head dot_product"),
])
def test_configs_it_cannot_serve_are_refused_in_one_line(overrides, named):
    with pytest.raises(ValueError) as err:
        compact_config(**overrides).validate("model config test")
    message = str(err.value)
    assert "\n" not in message and "memory_stride 16" in message and named in message


def test_the_schema_allows_16_and_32_only():
    base = compact_config().to_dict()
    for good in (16, 32):
        assert ModelConfig.from_dict({**base, "memory_stride": good}).memory_stride == good
    with pytest.raises(ValueError, match="memory_stride"):
        ModelConfig.from_dict({**base, "memory_stride": 8})
