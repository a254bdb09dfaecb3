"""Backends run the network; the pipeline does everything else.

A backend has two calls, so the expensive mask head runs on the kept queries only:
  detect(images, pad_mask) -> (logits B x Q x C+1, boxes B x Q x 4, hs B x Q x D, mask_features)
  masks(mask_features, index, hs) -> K x h x w mask logits for image `index` of the batch
ONNX Runtime and TensorRT backends implement the same two calls.
"""
from typing import Any, Optional, Tuple

import copy

import torch
from torch import Tensor

from ..model.fuse import fold_batchnorm

def inference_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The backend's own eval copy of a model with BatchNorm folded into the convolutions; the
    trained module and its state-dict names stay untouched."""
    model = copy.deepcopy(model).eval()
    fold_batchnorm(model.backbone)
    return model


class Backend:
    name = "base"
    precision = "fp32"
    # frames one detect() call takes; None: any number. Exported graphs and compiled engines have a
    # static batch of 1 (export.py), so several cameras go through them one frame at a time
    max_batch: Optional[int] = None

    def detect(self, images: Tensor, pad_mask: Tensor) -> Tuple[Tensor, Tensor, Tensor, Any]:
        raise NotImplementedError

    def masks(self, mask_features: Any, index: int, hs: Tensor) -> Tensor:
        raise NotImplementedError


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
