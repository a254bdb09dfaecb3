"""Backends run the network; the pipeline does everything else.

A backend has two calls, so the expensive mask head runs on the kept queries only:
  detect(images, pad_mask) -> (logits B x Q x C+1, boxes B x Q x 4, hs B x Q x D, mask_features)
  masks(mask_features, index, hs) -> K x h x w mask logits for image `index` of the batch
ONNX Runtime and TensorRT backends implement the same two calls.
"""
from typing import Any, Optional, Tuple

import copy

import numpy as np
import torch
from torch import Tensor

from ..model.fuse import fold_batchnorm


def inference_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The backend's own eval copy of a model with BatchNorm folded into the convolutions; the
    trained module and its state-dict names stay untouched."""
    model = copy.deepcopy(model).eval()
    fold_batchnorm(model.backbone)
    return model


def int8_weight_bits_of(meta: dict) -> int:
    """An exported graph's int8 weight width from its metadata (quantize.py writes it); 0 for an fp32 graph or
    one of a release that did not say."""
    return int(meta.get("int8_weight_bits", 0)) if meta.get("precision") == "int8" else 0


def int8_matrix_products_of(meta: dict) -> str:
    """How an int8 graph multiplies matrices: "int8", or "float" where it leaves them so (quantize.py, on an x86
    CPU without VNNI, where int8 ones run slower); "" for an fp32 graph or one of a release that did not say."""
    if meta.get("precision") != "int8" or "int8_matmuls" not in meta:
        return ""
    return "int8" if meta["int8_matmuls"] else "float"


class Backend:
    name = "base"
    precision = "fp32"
    # an int8 graph's weight width: 8, or 7 where 8-bit weights overflow the CPU's int8 kernels (cpu_features.py);
    # the same scales give other maps at either width. 0: not int8 (or a graph of a release that did not say)
    int8_weight_bits = 0
    # an int8 graph's matrix products (the transformer's): "int8", "float" (kept so on a CPU without VNNI), or ""
    int8_matrix_products = ""
    # frames one detect() call takes; None: any number. Exported graphs and compiled engines have a
    # static batch of 1 (export.py), so several cameras go through them one frame at a time
    max_batch: Optional[int] = None

    def detect(self, images: Tensor, pad_mask: Tensor) -> Tuple[Tensor, Tensor, Tensor, Any]:
        raise NotImplementedError

    def masks(self, mask_features: Any, index: int, hs: Tensor) -> Tensor:
        raise NotImplementedError


class ExportedGraphBackend(Backend):
    """What the runtimes of the exported pair (ONNX Runtime, OpenVINO) share: the checks and metadata
    of the files, the fixed input size, and the mask head's feeds (the detect graph's feature outputs,
    one image of the batch, and the kept queries)."""
    feature_names: list = []

    def _open(self, path, expected_config):
        """Check the pair, read its metadata; returns the mask-head graph's path."""
        from ..export import graph_config, open_exported
        meta, masks = open_exported(path, expected_config)
        self.meta = meta
        self.size = tuple(meta["input_size"])
        self.precision = meta.get("precision", "fp32")
        self.int8_weight_bits = int8_weight_bits_of(meta)
        self.int8_matrix_products = int8_matrix_products_of(meta)
        # the network's part of the config (export.graph_config: the post-processing recorded with a graph is
        # whatever config first exported it; a value refused today made every later run fall back to fp32)
        self.mask_stride = graph_config(meta).output_mask_stride
        return masks

    def _detect_feeds(self, images: Tensor, pad_mask: Tensor) -> dict:
        if tuple(images.shape[-2:]) != self.size:
            raise ValueError(f"ONNX graph takes {self.size[0]}x{self.size[1]} inputs, got "
                             f"{images.shape[-2]}x{images.shape[-1]}")
        # the runtime reads these in place: no copy of a frame already float32, the mask's bools as bytes
        mask = np.ascontiguousarray(pad_mask.numpy())
        return {"image": np.ascontiguousarray(images.numpy(), np.float32),
                "pad_mask": mask.view(np.uint8) if mask.dtype == np.bool_ else mask.astype(np.uint8)}

    def _mask_feeds(self, mask_features, index: int, hs: Tensor) -> dict:
        feeds = {name: f[index:index + 1] for name, f in zip(self.feature_names, mask_features)}
        feeds["hs"] = hs[None].numpy().astype(np.float32)
        return feeds


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str = "cpu"):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device '{device}' requested but CUDA is not available here; use --device cpu")
        self.device = torch.device(device)
        # our own copy with BatchNorm folded into the convolutions; channels-last runs the
        # convolutions (depthwise ones above all) ~1.5x faster on CPU
        model = inference_copy(model)
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self.mask_stride = model.mask_stride

    @torch.inference_mode()
    def detect(self, images, pad_mask):
        images = images.to(self.device).contiguous(memory_format=torch.channels_last)
        out = self.model.detect(images, pad_mask.to(self.device))
        return out.logits, out.boxes, out.hs, out.mask_features

    @torch.inference_mode()
    def masks(self, mask_features, index, hs):
        feats = tuple(f[index:index + 1] for f in mask_features)
        return self.model.predict_masks(feats, hs[None])[0]
