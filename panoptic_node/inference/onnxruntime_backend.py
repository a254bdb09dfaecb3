"""ONNX Runtime backend: the two exported graphs (detect + kept-query mask head).

CPU by default; CUDA / TensorRT execution providers are used when present and asked for."""
import platform
from pathlib import Path
from typing import Optional

import torch

from .backend import ExportedGraphBackend


VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def cpu_flags() -> set:
    """This CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def int8_kernels_saturate(machine: str, flags: set) -> bool:
    """Whether ONNX Runtime's int8 kernels saturate on 8-bit weights here: x86 without VNNI
    (see quantize.quantize_int8)."""
    return machine.lower() in ("x86_64", "amd64", "i386", "i686") and not flags & VNNI_FLAGS


def int8_saturation_warning(meta: dict, machine: str, flags: set) -> Optional[str]:
    """A warning when an int8 graph with full 8-bit weights is about to run where ONNX Runtime's
    int8 kernels saturate; None when it is safe."""
    if meta.get("precision") != "int8" or meta.get("int8_weight_bits") != 8:
        return None
    if not int8_kernels_saturate(machine, flags):
        return None
    return ("WARNING: this int8 graph has 8-bit weights and this x86 CPU has no VNNI, where ONNX Runtime's int8 "
            "kernels saturate (a street model fell from PQ 52.7 to 19.6); re-export it with "
            "`panoptic-node export --precision int8 --reduce-range` for this CPU")


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
            warning = int8_saturation_warning(self.meta, platform.machine(), cpu_flags())
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
