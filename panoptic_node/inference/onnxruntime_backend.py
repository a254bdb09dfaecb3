"""ONNX Runtime backend: the two exported graphs (detect + kept-query mask head).

CPU by default; CUDA / TensorRT execution providers are used when present and asked for."""
from pathlib import Path

import numpy as np
import torch

from ..model.config import ModelConfig
from ..export import mask_graph_path, read_metadata
from .backend import Backend


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, onnx_path, expected_config=None, device: str = "cpu", threads: int = 0):
        import onnxruntime as ort

        path = Path(onnx_path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file '{path}' does not exist; create it with `panoptic-node export`")
        meta = read_metadata(path)
        masks = mask_graph_path(path)
        if not masks.is_file():
            raise FileNotFoundError(f"mask-head graph '{masks}' is missing beside '{path}'; re-run `panoptic-node export`")
        self.meta = meta
        self.size = tuple(meta["input_size"])
        self.precision = meta.get("precision", "fp32")
        if expected_config is not None:
            want, got = expected_config.to_dict(), meta["config"]
            diff = sorted(k for k in want if k not in ("weights", "postprocess") and want[k] != got.get(k))
            if diff:
                raise ValueError(f"ONNX file '{path}' was exported from another model (differs in {', '.join(diff)}); "
                                 f"re-export it for model '{expected_config.name}'")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ONNX Runtime's worker threads spin after each run by default; on a 2-core machine they then
        # steal the cores from the torch post-processing that follows (measured: post-processing
        # 39 ms instead of 13, end to end 71 ms instead of 41)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            available = ort.get_available_providers()
            providers = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available] + providers
        try:
            self.detect_session = ort.InferenceSession(str(path), opts, providers=providers)
            self.mask_session = ort.InferenceSession(str(masks), opts, providers=providers)
        except Exception as e:
            raise ValueError(f"ONNX Runtime cannot load '{path}' ({str(e).splitlines()[0]})") from None
        self.providers = self.detect_session.get_providers()
        self.feature_names = [o.name for o in self.detect_session.get_outputs()][3:]
        self.mask_stride = ModelConfig.from_dict(meta["config"]).output_mask_stride

    def detect(self, images, pad_mask):
        if tuple(images.shape[-2:]) != self.size:
            raise ValueError(f"ONNX graph takes {self.size[0]}x{self.size[1]} inputs, got "
                             f"{images.shape[-2]}x{images.shape[-1]}")
        logits, boxes, hs, *feats = self.detect_session.run(
            None, {"image": images.numpy().astype(np.float32), "pad_mask": pad_mask.numpy().astype(np.uint8)})
        return torch.from_numpy(logits), torch.from_numpy(boxes), torch.from_numpy(hs), feats

    def masks(self, mask_features, index, hs):
        feeds = {name: f[index:index + 1] for name, f in zip(self.feature_names, mask_features)}
        feeds["hs"] = hs[None].numpy().astype(np.float32)
        return torch.from_numpy(self.mask_session.run(None, feeds)[0][0])
