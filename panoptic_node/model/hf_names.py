"""Hugging Face DetrForSegmentation parameter names -> ours.

Two layouts exist: the one stored on the hub by transformers 4 (timm or HF-ResNet backbone under
`backbone.conv_encoder.model`, attention `out_proj`, `fc1`, mask head `lay1`/`gn1`/`adapter1`,
`bbox_attention.q_linear`) and transformers 5's (`backbone.model`, `o_proj`, `mlp.fc1`,
`mask_head.conv1.conv`/`fpn_stages.N`, `bbox_attention.q_proj`). Both are handled here.
"""
import re
from typing import Dict

import torch

_BACKBONE_PREFIXES = ("detr.model.backbone.conv_encoder.model.", "detr.model.backbone.model.")


def looks_like_hf(state: Dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("detr.model.") for k in state)


def _hf_resnet_key(key: str) -> str:
    """HF ResNet (embedder / encoder.stages) or timm/torchvision names -> torchvision names."""
    key = key.replace("embedder.embedder.convolution.", "conv1.").replace("embedder.embedder.normalization.", "bn1.")
    m = re.match(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)", key)
    if not m:
        return key  # timm ResNet already uses torchvision names
    stage, block, rest = int(m.group(1)), m.group(2), m.group(3)
    rest = (rest.replace("shortcut.convolution.", "downsample.0.").replace("shortcut.normalization.", "downsample.1.")
            .replace("layer.0.convolution.", "conv1.").replace("layer.0.normalization.", "bn1.")
            .replace("layer.1.convolution.", "conv2.").replace("layer.1.normalization.", "bn2.")
            .replace("layer.2.convolution.", "conv3.").replace("layer.2.normalization.", "bn3."))
    return f"layer{stage + 1}.{block}.{rest}"


_MASK_HEAD_V5 = [
    (r"mask_head\.conv1\.conv\.", "mask_head.lay1."), (r"mask_head\.conv1\.norm\.", "mask_head.gn1."),
    (r"mask_head\.conv2\.conv\.", "mask_head.lay2."), (r"mask_head\.conv2\.norm\.", "mask_head.gn2."),
    (r"mask_head\.output_conv\.", "mask_head.out_lay."),
]


def _mask_head_key(key: str) -> str:
    for pat, rep in _MASK_HEAD_V5:
        key = re.sub("^" + pat, rep, key)
    m = re.match(r"mask_head\.fpn_stages\.(\d+)\.(fpn_adapter|refine\.conv|refine\.norm)\.(.*)", key)
    if m:
        i = int(m.group(1))
        part = {"fpn_adapter": f"adapter{i + 1}", "refine.conv": f"lay{i + 3}", "refine.norm": f"gn{i + 3}"}[m.group(2)]
        key = f"mask_head.{part}.{m.group(3)}"
    key = key.replace("bbox_attention.q_proj.", "bbox_attention.q_linear.").replace(
        "bbox_attention.k_proj.", "bbox_attention.k_linear.")
    return "masks." + key


def convert_hf_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    attn: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        backbone = next((p for p in _BACKBONE_PREFIXES if key.startswith(p)), None)
        if backbone:
            out["backbone." + _hf_resnet_key(key[len(backbone):])] = value
            continue
        if key.startswith(("mask_head.", "bbox_attention.")):
            out[_mask_head_key(key)] = value
            continue
        k = key.replace("detr.model.", "").replace("detr.", "")
        k = (k.replace("input_projection.", "input_proj.").replace("query_position_embeddings.", "query_embed.")
             .replace("class_labels_classifier.", "class_embed.").replace("bbox_predictor.", "bbox_embed.")
             .replace("decoder.layernorm.", "decoder.norm."))
        m = re.match(r"(encoder|decoder)\.layers\.(\d+)\.(.*)", k)
        if not m:
            out["transformer." + k if k.startswith("decoder.norm.") else k] = value
            continue
        where, idx, rest = m.groups()
        prefix = f"transformer.{where}.layers.{idx}."
        am = re.match(r"(self_attn|encoder_attn)\.(q_proj|k_proj|v_proj|o_proj|out_proj)\.(weight|bias)", rest)
        if am:
            module = "self_attn" if am.group(1) == "self_attn" else "multihead_attn"
            proj = "out_proj" if am.group(2) in ("o_proj", "out_proj") else am.group(2)
            if proj == "out_proj":
                out[f"{prefix}{module}.out_proj.{am.group(3)}"] = value
            else:
                attn.setdefault(f"{prefix}{module}.in_proj_{am.group(3)}", {})[proj] = value
            continue
        rest = rest.replace("mlp.fc1.", "fc1.").replace("mlp.fc2.", "fc2.").replace("fc1.", "linear1.").replace(
            "fc2.", "linear2.")
        if where == "encoder":
            rest = rest.replace("self_attn_layer_norm.", "norm1.").replace("final_layer_norm.", "norm2.")
        else:
            rest = (rest.replace("self_attn_layer_norm.", "norm1.").replace("encoder_attn_layer_norm.", "norm2.")
                    .replace("final_layer_norm.", "norm3."))
        out[prefix + rest] = value
    for key, parts in attn.items():
        if set(parts) != {"q_proj", "k_proj", "v_proj"}:
            missing = sorted({"q_proj", "k_proj", "v_proj"} - set(parts))
            out[key + ".incomplete"] = torch.empty(0)  # surfaces as an unexpected key naming the gap
            out[key.replace("in_proj_", f"missing_{'_'.join(missing)}_")] = torch.empty(0)
            continue
        out[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
    return out
