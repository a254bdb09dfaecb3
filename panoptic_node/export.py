"""`panoptic-node export`: the model as two ONNX graphs so the mask head runs on kept queries only.

  <out>            detect graph: image 1x3xHxW (normalised), pad_mask 1xHxW (uint8, 1 = padding)
                   -> logits, boxes, hs, mask features (mf0, mf1, ...)
  <out>.masks.onnx mask graph: mask features + hs 1xKxD (K dynamic) -> masks 1xKxhxw

Opset 17 keeps LayerNorm one node (TensorRT needs it for FP16 accuracy). Metadata (model config,
classes, input size, normalisation, precision) rides in the ONNX so a backend needs no side file.
"""
import json
import warnings
from pathlib import Path
from typing import Tuple

import torch
from torch import nn

from .atomic import atomic_path
from .errors import first_line
from .model.config import ModelConfig, network_changes, network_config
from .onnx_passes import fold_pads_into_convs

OPSET = 17


class _Detect(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image, pad_mask):
        out = self.model.detect(image, pad_mask.bool())
        return (out.logits, out.boxes, out.hs) + tuple(out.mask_features)


class _Masks(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, hs, *features):
        return self.model.predict_masks(tuple(features), hs)


def mask_graph_path(path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".masks.onnx")


def metadata(cfg, size: Tuple[int, int], precision: str) -> dict:
    return {"panoptic_node": json.dumps({"config": cfg.to_dict(), "input_size": list(size), "precision": precision,
                                         "normalization": cfg.input.normalization, "format": 1})}


def export_onnx(model, size: Tuple[int, int], out, precision: str = "fp32") -> Tuple[Path, Path]:
    """Writes the two fp32 graphs for a padded canvas of `size` (H, W); returns their paths."""
    import onnx

    model = model.eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    image = torch.zeros(1, 3, h, w)
    pad = torch.zeros(1, h, w, dtype=torch.uint8)
    with torch.no_grad():
        det = model.detect(image, pad.bool())
    n_feats = len(det.mask_features)
    feat_names = [f"mf{i}" for i in range(n_feats)]
    masks_path = mask_graph_path(out)
    hs = det.hs[:, :3]
    meta = metadata(model.cfg, size, precision)
    with atomic_path(out) as tmp, atomic_path(masks_path) as masks_tmp, warnings.catch_warnings():
        # the tracer's notes on Python-level shape arithmetic hold for one static canvas, which is what
        # we export; the legacy exporter's deprecation is ours to follow, not the user's to read
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(_Detect(model).eval(), (image, pad), tmp, opset_version=OPSET, dynamo=False,
                          input_names=["image", "pad_mask"], output_names=["logits", "boxes", "hs"] + feat_names)
        torch.onnx.export(_Masks(model).eval(), (hs,) + tuple(det.mask_features), masks_tmp, opset_version=OPSET,
                          dynamo=False, input_names=["hs"] + feat_names, output_names=["masks"],
                          dynamic_axes={"hs": {1: "queries"}, "masks": {1: "queries"}})
        for p in (tmp, masks_tmp):
            m = onnx.load(str(p))
            fold_pads_into_convs(m)
            for k, v in meta.items():
                m.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
            onnx.save(m, str(p))
    return out, masks_path


def set_metadata(path, **changes) -> None:
    """Updates fields of a graph's panoptic_node metadata in place (e.g. precision after quantization)."""
    import onnx
    m = onnx.load(str(path))
    for p in m.metadata_props:
        if p.key == "panoptic_node":
            p.value = json.dumps({**json.loads(p.value), **changes})
    onnx.save(m, str(path))


def read_metadata(path) -> dict:
    import onnx
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ValueError(f"'{path}' is not a readable ONNX file ({first_line(e)}); "
                         f"export one with `panoptic-node export`") from None
    props = {p.key: p.value for p in m.metadata_props}
    if "panoptic_node" not in props:
        raise ValueError(f"'{path}' has no panoptic_node metadata; expected a graph written by `panoptic-node export`")
    return json.loads(props["panoptic_node"])


def graph_config(meta: dict) -> ModelConfig:
    """The network's config a graph was exported from (model.config.network_config: its post-processing left
    out, keys added since at their defaults)."""
    return network_config(meta["config"])


def open_exported(path, expected_config=None) -> Tuple[dict, Path]:
    """What a backend checks before loading an exported pair: the detect graph exists and carries our
    metadata, its mask-head graph lies beside it, and it was exported from `expected_config`'s model
    (when given). Returns (metadata, mask graph path)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file '{path}' does not exist; create it with `panoptic-node export`")
    meta = read_metadata(path)
    masks = mask_graph_path(path)
    if not masks.is_file():
        raise FileNotFoundError(f"mask-head graph '{masks}' is missing beside '{path}'; re-run `panoptic-node export`")
    if expected_config is not None:
        diff = network_changes(graph_config(meta), expected_config)
        if diff:
            raise ValueError(f"ONNX file '{path}' was exported from another model (differs in {', '.join(diff)}); "
                             f"re-export it for model '{expected_config.name}'")
    return meta, masks
