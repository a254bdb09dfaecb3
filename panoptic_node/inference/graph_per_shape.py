"""A compiled model per input size. A graph or engine has one static input size; on a canvas larger than
the frame, DETR sees padding it never trained with (class logits moved by up to 9 on a 1066x800 frame
in an 800x1333 canvas) and a portrait frame was scaled down into a landscape canvas. So the graphs the
cache exports for a CPU runtime, and the TensorRT engines compiled from the PyTorch model, are made per
padded input size, on the first frame of that size (about 4 s for the street model's fp32 graph, 11 s
for DETR R50; a camera has one size), and kept: the answer no longer depends on the backend. With a
model's shipped int8 scales (int8_scales.py) the CPU graphs are int8, made per size from the same
scales. A graph the user gives keeps its one canvas."""
import threading
from typing import Callable, Dict, Optional, Tuple

from .backend import Backend
from .graph_cache import cached_graph

Shape = Tuple[int, int]

# one graph or engine made at a time in this process: torch's ONNX export (and TensorRT's compile) keep
# global state, and inference workers (several pipelines, a thread each) meeting a new frame size together
# would make it together ("GLOBALS.in_onnx_export must be False"); the next one finds it made
_MAKING = threading.Lock()


class PerShape(Backend):
    """Routes each call to the backend made for the input's size by `make(shape)`, made when new."""
    max_batch = 1  # each graph / engine has a static batch of 1 (export.py)
    size = None    # frames are sized by the model config, not fitted into a canvas

    def __init__(self, make: Callable[[Shape], Backend], first: Shape):
        self.make = make
        self._by_shape: Dict[Shape, Backend] = {}
        backend = self._for(first)  # the config's own canvas now: a graph that cannot be made is said at start
        self.name, self.precision, self.mask_stride = backend.name, backend.precision, backend.mask_stride
        # every size's graph is made from the same scales, with the same weight width and matrix products
        self.int8_weight_bits, self.int8_matrix_products = backend.int8_weight_bits, backend.int8_matrix_products
        self._current = backend

    def _for(self, shape) -> Backend:
        shape = tuple(int(v) for v in shape)
        if shape not in self._by_shape:
            with _MAKING:
                self._by_shape[shape] = self.make(shape)
        return self._by_shape[shape]

    @property
    def shapes(self):
        return sorted(self._by_shape)

    def detect(self, images, pad_mask):
        self._current = self._for(images.shape[-2:])
        return self._current.detect(images, pad_mask)

    def masks(self, mask_features, index, hs):
        return self._current.masks(mask_features, index, hs)  # the part pair of the last detect


def GraphPerShape(cfg, weights, open_graph: Callable, log=print, int8: Optional[dict] = None) -> PerShape:
    """Graphs the cache exports (fp32, or int8 from `int8` scales), opened by `open_graph(path)`."""
    return PerShape(lambda shape: open_graph(cached_graph(cfg, weights, log=log, canvas=shape, int8=int8)),
                    tuple(cfg.input.canvas))
