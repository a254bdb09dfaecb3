"""Our DETR panoptic model loaded from Hugging Face DetrForSegmentation weights gives the same
logits, boxes and mask logits as transformers itself (the independent reference)."""
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import DetrConfig, DetrForSegmentation, ResNetConfig  # noqa: E402

from panoptic_node.model.checkpoint import load_weights, read_state_dict  # noqa: E402
from panoptic_node.model.config import ModelConfig  # noqa: E402
from panoptic_node.model.detr import build_model  # noqa: E402

from conftest import randomize_batchnorm  # noqa: E402


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    cfg = DetrConfig(backbone_config=ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"]),
                     num_labels=250, use_pretrained_backbone=False)
    model = DetrForSegmentation(cfg).eval()
    with torch.no_grad():
        randomize_batchnorm(model)
        # transformers initialises some biases to zero: make every parameter non-trivial
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def to_v4_names(state):
    """The layout transformers 4 stored on the hub (what most downloaded checkpoints use)."""
    out = {}
    for k, v in state.items():
        k = k.replace("detr.model.backbone.model.", "detr.model.backbone.conv_encoder.model.")
        k = k.replace(".o_proj.", ".out_proj.").replace(".mlp.fc1.", ".fc1.").replace(".mlp.fc2.", ".fc2.")
        k = k.replace("mask_head.conv1.conv.", "mask_head.lay1.").replace("mask_head.conv1.norm.", "mask_head.gn1.")
        k = k.replace("mask_head.conv2.conv.", "mask_head.lay2.").replace("mask_head.conv2.norm.", "mask_head.gn2.")
        k = k.replace("mask_head.output_conv.", "mask_head.out_lay.")
        m = re.match(r"mask_head\.fpn_stages\.(\d)\.(fpn_adapter|refine\.conv|refine\.norm)\.(.*)", k)
        if m:
            i = int(m.group(1))
            k = "mask_head." + {"fpn_adapter": f"adapter{i + 1}", "refine.conv": f"lay{i + 3}",
                                "refine.norm": f"gn{i + 3}"}[m.group(2)] + "." + m.group(3)
        k = k.replace("bbox_attention.q_proj.", "bbox_attention.q_linear.").replace(
            "bbox_attention.k_proj.", "bbox_attention.k_linear.")
        out[k] = v
    return out


def ours_from(path):
    model = build_model(ModelConfig(name="detr_r50_panoptic")).eval()
    assert load_weights(model, path) == "huggingface"
    return model


def compare(ours, theirs, height, width, pad_h, pad_w):
    torch.manual_seed(height * width)
    images = torch.randn(1, 3, height, width)
    pixel_mask = torch.ones(1, height, width, dtype=torch.long)
    pixel_mask[:, height - pad_h:] = 0
    pixel_mask[:, :, width - pad_w:] = 0
    images = images * pixel_mask[:, None]
    with torch.no_grad():
        ref = theirs(pixel_values=images, pixel_mask=pixel_mask)
        logits, boxes, masks = ours(images, pixel_mask == 0)
    torch.testing.assert_close(logits, ref.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(boxes, ref.pred_boxes, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(masks, ref.pred_masks, atol=1e-4, rtol=1e-4)
    # the per-query path the pipeline uses: mask head on a subset of queries only
    with torch.no_grad():
        out = ours.detect(images, pixel_mask == 0)
        subset = torch.tensor([3, 17, 42])
        part = ours.predict_masks(out.mask_features, out.hs[:, subset])
    torch.testing.assert_close(part, ref.pred_masks[:, subset], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "bin_v4"])
def test_hf_weights_match_transformers(hf_model, tmp_path, fmt):
    if fmt == "safetensors":
        hf_model.save_pretrained(tmp_path)
        path = tmp_path / "model.safetensors"
    else:
        state = hf_model.state_dict()
        path = tmp_path / "pytorch_model.bin"
        torch.save(to_v4_names(state) if fmt == "bin_v4" else state, path)
    ours = ours_from(path)
    compare(ours, hf_model, 96, 128, pad_h=16, pad_w=0)
    compare(ours, hf_model, 128, 96, pad_h=0, pad_w=24)


def test_hf_missing_key_is_named(hf_model, tmp_path):
    state = dict(hf_model.state_dict())
    del state["detr.class_labels_classifier.weight"]
    path = tmp_path / "broken.bin"
    torch.save(state, path)
    sd, fmt, _ = read_state_dict(path)
    assert fmt == "huggingface"
    with pytest.raises(ValueError, match=r"1 missing keys \(class_embed.weight\)"):
        ours_from(path)
