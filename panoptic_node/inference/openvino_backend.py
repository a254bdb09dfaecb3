"""OpenVINO backend: the same two exported graphs as ONNX Runtime (detect + kept-query mask head), fp32
or int8 QDQ, compiled by OpenVINO for the CPU.

Why a second CPU runtime: on x86 CPUs with VNNI / AMX, OpenVINO runs our int8 QDQ graph as int8
convolutions and matrix products end to end, where ONNX Runtime leaves a third of the convolutions and
every ReLU6 in float and ends up slower than its fp32 graph (measured in bench/bench_backends.py). On x86
without VNNI its int8 kernels saturate on 8-bit weights, as ONNX Runtime's do (cpu_features.py)."""
import os
from pathlib import Path

import torch

from .backend import ExportedGraphBackend
from .cpu_features import int8_saturation_warning
from .signal_stack import kept_signal_stack


class OpenVinoBackend(ExportedGraphBackend):
    name = "openvino"

    def __init__(self, onnx_path, expected_config=None, threads: int = 0, log=print):
        try:
            import openvino as ov
        except ImportError:
            raise RuntimeError("backend 'openvino' needs the openvino package: pip install openvino") from None

        path = Path(onnx_path)
        masks = self._open(path, expected_config)
        warning = int8_saturation_warning(self.meta, "OpenVINO")
        if warning:
            log(warning)
        # float layers stay float32: on CPUs with AMX / AVX512-BF16 OpenVINO would otherwise run them
        # in bfloat16, which is a different precision from the one the graph and its metadata name
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if 0 < threads < (os.cpu_count() or 1):
            # OpenVINO pins a compiled model's threads to cores counted from the first, in every
            # process alike: pipelines given a share of the cores each (fleet workers, node workers)
            # would all run on the same first ones and leave the rest idle (two 1-thread fleet workers
            # on 2 cores: 11.8 frames/s instead of 17.2 for one 2-thread worker); unpinned, the OS
            # spreads them
            config["ENABLE_CPU_PINNING"] = False
        self.compile_config = config
        try:
            with kept_signal_stack():  # the plugin leaves a dangling alternate signal stack (signal_stack.py)
                core = ov.Core()
                self.detect_request = core.compile_model(str(path), "CPU", config).create_infer_request()
                self.mask_request = core.compile_model(str(masks), "CPU", config).create_infer_request()
        except Exception as e:
            raise ValueError(f"OpenVINO cannot load '{path}' ({str(e).strip().splitlines()[0]})") from None
        # a compiled output may carry several tensor names (an internal one too): use the one the
        # mask-head graph takes as its input
        mask_inputs = {name for i in self.mask_request.model_inputs for name in i.get_names()}
        self.feature_names = [sorted(o.get_names() & mask_inputs)[0] for o in self.detect_request.model_outputs[3:]]
        batch = self.detect_request.model_inputs[0].get_partial_shape()[0]
        self.max_batch = batch.get_length() if batch.is_static else None

    def detect(self, images, pad_mask):
        # inputs are read in place for this synchronous call; outputs come back as our own copies
        # (share_outputs=False): the request reuses its buffers on the next call
        with kept_signal_stack():  # the first call on a thread installs one too (the node's worker)
            out = self.detect_request.infer(self._detect_feeds(images, pad_mask), share_inputs=True,
                                            share_outputs=False)
        logits, boxes, hs, *feats = (out[o] for o in self.detect_request.model_outputs)
        return torch.from_numpy(logits), torch.from_numpy(boxes), torch.from_numpy(hs), feats

    def masks(self, mask_features, index, hs):
        with kept_signal_stack():
            out = self.mask_request.infer(self._mask_feeds(mask_features, index, hs), share_inputs=True,
                                          share_outputs=False)
        return torch.from_numpy(out[self.mask_request.model_outputs[0]][0])
