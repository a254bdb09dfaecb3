"""OpenVINO backend: the same two exported graphs as ONNX Runtime (detect + kept-query mask head), fp32
or int8 QDQ, compiled by OpenVINO for the CPU.

Why a second CPU runtime: on x86 CPUs with VNNI / AMX, OpenVINO runs our int8 QDQ graph as int8
convolutions and matrix products end to end, where ONNX Runtime leaves a third of the convolutions and
every ReLU6 in float and ends up slower than its fp32 graph (measured in bench/bench_backends.py). On x86
without VNNI its int8 kernels saturate on 8-bit weights, as ONNX Runtime's do (cpu_features.py)."""
import os
import shutil
import threading
from pathlib import Path
from typing import Optional

import torch

from .backend import ExportedGraphBackend
from .cpu_features import int8_saturation_warning
from .signal_stack import kept_signal_stack


# OpenVINO's Python bindings (2026.4.1) make a C++ static the first time they turn a numpy array into an input,
# and two threads doing so at once can deadlock there for good: one waits for the static holding the GIL, the
# other makes the static and waits for the GIL (a replay with two inference workers hung at its first frames,
# both workers inside InferRequest.infer). So each request's first call runs alone in the process; every later
# call runs in parallel, as before.
_FIRST_CALLS = threading.Lock()


def _writable(folder: Path) -> Optional[Path]:
    """`folder`, made if need be, when this process can write in it (a read-only cache is only not used)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK | os.X_OK) else None


class OpenVinoBackend(ExportedGraphBackend):
    name = "openvino"

    def __init__(self, onnx_path, expected_config=None, threads: int = 0, log=print, compiled=None):
        """compiled: a folder where OpenVINO keeps what it compiles, for the graph cache's own graphs
        (graph_cache.compiled_dir), whose names say what they hold; a graph given by path may be replaced in
        place, so it is compiled afresh every time."""
        try:
            import openvino as ov
        except ImportError:
            raise RuntimeError("backend 'openvino' needs the openvino package: pip install openvino") from None

        path = Path(onnx_path)
        self._called = set()  # the requests (by id) whose first call is over
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
        compiled = _writable(compiled) if compiled is not None else None
        try:
            try:
                self._compile(ov, path, masks, config, compiled)
            except Exception:
                if compiled is None:
                    raise
                # what it kept there does not load (damaged): compiled afresh now, kept anew at the next start
                shutil.rmtree(compiled, ignore_errors=True)
                self._compile(ov, path, masks, config, None)
        except Exception as e:
            raise ValueError(f"OpenVINO cannot load '{path}' ({str(e).strip().splitlines()[0]})") from None
        # a compiled output may carry several tensor names (an internal one too): use the one the
        # mask-head graph takes as its input
        mask_inputs = {name for i in self.mask_request.model_inputs for name in i.get_names()}
        self.feature_names = [sorted(o.get_names() & mask_inputs)[0] for o in self.detect_request.model_outputs[3:]]
        batch = self.detect_request.model_inputs[0].get_partial_shape()[0]
        self.max_batch = batch.get_length() if batch.is_static else None

    def _compile(self, ov, path, masks, config, compiled) -> None:
        with kept_signal_stack():  # the plugin leaves a dangling alternate signal stack (signal_stack.py)
            core = ov.Core()
            if compiled is None:
                graphs = str(path), str(masks)
            else:
                # read first: OpenVINO then keys what it keeps by the graph's content; given a path it keys
                # by the file's modification time too, which the graph cache renews on every use
                config = {**config, "CACHE_DIR": str(compiled)}
                graphs = core.read_model(str(path)), core.read_model(str(masks))
            self.detect_request = core.compile_model(graphs[0], "CPU", config).create_infer_request()
            self.mask_request = core.compile_model(graphs[1], "CPU", config).create_infer_request()
        self.loaded_from_cache = compiled is not None and \
            bool(self.detect_request.get_compiled_model().get_property("LOADED_FROM_CACHE"))

    def detect(self, images, pad_mask):
        # inputs are read in place for this synchronous call; outputs come back as our own copies
        # (share_outputs=False): the request reuses its buffers on the next call
        with kept_signal_stack():  # the first call on a thread installs one too (the node's worker)
            out = self._infer(self.detect_request, self._detect_feeds(images, pad_mask))
        logits, boxes, hs, *feats = (out[o] for o in self.detect_request.model_outputs)
        return torch.from_numpy(logits), torch.from_numpy(boxes), torch.from_numpy(hs), feats

    def masks(self, mask_features, index, hs):
        with kept_signal_stack():
            out = self._infer(self.mask_request, self._mask_feeds(mask_features, index, hs))
        return torch.from_numpy(out[self.mask_request.model_outputs[0]][0])

    def _infer(self, request, feeds):
        if id(request) in self._called:
            return request.infer(feeds, share_inputs=True, share_outputs=False)
        with _FIRST_CALLS:  # its first call, alone in the process (_FIRST_CALLS)
            out = request.infer(feeds, share_inputs=True, share_outputs=False)
            self._called.add(id(request))
        return out
