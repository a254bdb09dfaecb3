"""Exported graphs at each frame's own size. A graph has one static input size; on a canvas larger than
the frame, DETR sees padding it never trained with (class logits moved by up to 9 on a 1066x800 frame
in an 800x1333 canvas) and a portrait frame was scaled down into a landscape canvas. The graphs the
cache exports for a CPU runtime are therefore made per padded input size, on the first frame of that
size (about 4 s for the street model, 11 s for DETR R50; a camera has one size), and kept: the answer
no longer depends on the backend. With a model's shipped int8 scales (int8_scales.py) the graphs are
int8, made per size from the same scales. A graph the user gives keeps its one canvas."""
from typing import Callable, Dict, Optional, Tuple

from .backend import Backend
from .graph_cache import cached_graph


class GraphPerShape(Backend):
    """Routes each call to the runtime backend of the input's size, exporting its graph when new."""
    max_batch = 1  # each graph has a static batch of 1 (export.py)
    size = None    # frames are sized by the model config, not fitted into a canvas

    def __init__(self, cfg, weights, open_graph: Callable, log=print, int8: Optional[dict] = None):
        self.cfg, self.weights, self.open_graph, self.log, self.int8 = cfg, weights, open_graph, log, int8
        self._by_shape: Dict[Tuple[int, int], Backend] = {}
        first = self._for(cfg.input.canvas)  # the config's own canvas now: a graph that cannot be made is said at start
        self.name, self.precision, self.mask_stride = first.name, first.precision, first.mask_stride
        self._current = first

    def _for(self, shape) -> Backend:
        shape = tuple(int(v) for v in shape)
        if shape not in self._by_shape:
            path = cached_graph(self.cfg, self.weights, log=self.log, canvas=shape, int8=self.int8)
            self._by_shape[shape] = self.open_graph(path)
        return self._by_shape[shape]

    def detect(self, images, pad_mask):
        self._current = self._for(images.shape[-2:])
        return self._current.detect(images, pad_mask)

    def masks(self, mask_features, index, hs):
        return self._current.masks(mask_features, index, hs)  # the graph pair of the last detect
