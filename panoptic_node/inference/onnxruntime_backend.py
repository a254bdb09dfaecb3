"""ONNX Runtime backend: the two exported graphs (detect + kept-query mask head).

CPU by default; CUDA / TensorRT execution providers are used when present and asked for."""
from pathlib import Path

import torch

from .backend import ExportedGraphBackend
from .cpu_features import int8_saturation_warning


class OnnxRuntimeBackend(ExportedGraphBackend):
    name = "onnxruntime"

    def __init__(self, onnx_path, expected_config=None, device: str = "cpu", threads: int = 0, log=print):
        import onnxruntime as ort

        path = Path(onnx_path)
        masks = self._open(path, expected_config)
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
        if self.providers[0] == "CPUExecutionProvider":
            warning = int8_saturation_warning(self.meta, "ONNX Runtime")
            if warning:
                log(warning)
        self.feature_names = [o.name for o in self.detect_session.get_outputs()][3:]
        batch = self.detect_session.get_inputs()[0].shape[0]
        self.max_batch = batch if isinstance(batch, int) else None

    def detect(self, images, pad_mask):
        logits, boxes, hs, *feats = self.detect_session.run(None, self._detect_feeds(images, pad_mask))
        return torch.from_numpy(logits), torch.from_numpy(boxes), torch.from_numpy(hs), feats

    def masks(self, mask_features, index, hs):
        return torch.from_numpy(self.mask_session.run(None, self._mask_feeds(mask_features, index, hs))[0][0])
