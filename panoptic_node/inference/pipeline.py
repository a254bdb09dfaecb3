"""Pipeline: RGB uint8 frame -> PanopticResult, the object the node, replay and CLI share."""
import dataclasses
import time
import warnings
from typing import Dict, List, Optional

import numpy as np
import torch

from ..model.checkpoint import load_model, weights_of
from ..model.config import ModelConfig, load_config, DEFAULT_MODEL
from ..model.detr import build_model
from ..taxonomy import get_mapping, get_taxonomy
from .backend import TorchBackend, Backend
from .cache_key import weights_identity
from .cell_decision import CellDecision
from .postprocess import merge_panoptic, resize_masks, select_queries
from .preprocess import Geometry, preprocess, target_size
from .published import published_panoptic, select_queries_published
from .remap import remap_result
from .result import PanopticResult, upsample_result


# CellDecision.resample_share above which every mask is resized instead (measured: at 0.26 both paths
# took the same time, a hundred queries of smooth random masks at 480x640; at 0.04, CamVid frames of
# the street model, cells take half the time; on pure noise, 1.4, five times as long)
DENSE_ABOVE = 0.2


class Pipeline:
    def __init__(self, cfg: ModelConfig, backend: Backend, labels: Optional[str] = None,
                 threshold: Optional[float] = None):
        self.cfg = cfg
        self.backend = backend
        self.threshold = cfg.postprocess.threshold if threshold is None else float(threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold {self.threshold} is not in [0, 1]")
        self.taxonomy = get_taxonomy(cfg.labels)
        self.mapping = None if labels in (None, cfg.labels) else get_mapping(cfg.labels, labels)
        self.labels = labels or cfg.labels
        self._warned_scale = False  # said once per pipeline (see _warn_if_scaled_down)
        self.weights_id = ""  # which weights file runs, by name and sha256 (cache_key.weights_identity)
        self.weights_path = None  # that file (or the exported graph that holds them)
        self.scales_id = ""  # the int8 scales its graphs were made from, by name and sha256 ("": none)

    @classmethod
    def from_config(cls, model: str = DEFAULT_MODEL, weights: Optional[str] = None, backend: str = "torch",
                    device: str = "cpu", threshold: Optional[float] = None, labels: Optional[str] = None,
                    random_weights: bool = False) -> "Pipeline":
        """model: a name under models/ or a YAML path; weights default to the config's own file.

        random_weights builds an untrained network (tests, speed measurements only).
        """
        cfg = load_config(model) if isinstance(model, str) else model
        net = build_model(cfg) if random_weights else load_model(cfg, weights)
        if backend != "torch":
            raise ValueError(f"Pipeline.from_config builds the torch backend; for '{backend}' use "
                             f"panoptic_node.inference.backends.make_pipeline")
        pipeline = cls(cfg, TorchBackend(net, device), labels=labels, threshold=threshold)
        if not random_weights:
            pipeline.weights_path = weights_of(cfg, weights)
            pipeline.weights_id = weights_identity(pipeline.weights_path)
        return pipeline

    def __call__(self, rgb: np.ndarray) -> PanopticResult:
        return self.run_batch([rgb])[0]

    def _masks_to_decide(self, mask_logits, geom, scores):
        """What merge_panoptic decides from: on a CPU the low-resolution logits, cell by cell
        (cell_decision.py), unless noisy masks would open most cells; otherwise (and on a GPU) the
        masks resized to the frame."""
        if not len(mask_logits):
            return torch.zeros(0, geom.height, geom.width)
        pp, stride = self.cfg.postprocess, self.backend.mask_stride
        if mask_logits.device.type == "cpu":
            cells = CellDecision(mask_logits, geom, stride, scores, pp.merge)
            if cells.resample_share(pp.overlap > 0) <= DENSE_ABOVE:
                return cells
        return resize_masks(mask_logits, geom, stride)

    def _warn_if_scaled_down(self, prepared, canvas) -> None:
        """Once: a frame the fixed canvas holds only smaller than the config's own sizing (a portrait
        frame on a landscape canvas) is seen at a smaller scale than torch would see it."""
        if self._warned_scale:
            return
        for _, _, g in prepared:
            want_h, want_w = target_size(g.height, g.width, self.cfg.input.short_side, self.cfg.input.max_size)
            if g.resized_h < want_h:
                warnings.warn(f"a {g.width}x{g.height} frame is scaled to {g.resized_w}x{g.resized_h} to fit the "
                              f"exported graph's {canvas[1]}x{canvas[0]} canvas, smaller than the {want_w}x{want_h} "
                              f"the model's config asks for; for such frames leave --onnx out (the cache then makes a graph "
                              f"of each frame size) or export one of their shape (panoptic-node export --size)",
                              stacklevel=3)
                self._warned_scale = True
                return

    def run_batch(self, frames: List[np.ndarray]) -> List[PanopticResult]:
        """Several frames (e.g. several cameras) in one network call when their padded sizes agree."""
        return [self.decide(detected) for detected in self.detect_batch(frames)]

    def detect_batch(self, frames: List[np.ndarray]) -> List["Detected"]:
        """The network's half of run_batch: each frame's kept queries and their low-resolution masks. The
        other half, decide(), needs no network: with overlap_postprocessing the node runs it for one frame
        while the network runs the next."""
        limit = self.backend.max_batch
        if limit and len(frames) > limit:  # a static-batch graph: in slices it takes
            return [d for i in range(0, len(frames), limit) for d in self.detect_batch(frames[i:i + limit])]
        t0 = time.perf_counter()
        # static-shape backends (an exported graph) take one fixed canvas
        fixed = getattr(self.backend, "size", None)
        prepared = [preprocess(f, self.cfg.input, fixed_size=fixed) for f in frames]
        if fixed is not None:
            self._warn_if_scaled_down(prepared, fixed)
        shapes = {p[0].shape for p in prepared}
        if len(shapes) > 1:  # different sizes: one call each
            return [d for f in frames for d in self.detect_batch([f])]
        images = torch.cat([p[0] for p in prepared])
        masks = torch.cat([p[1] for p in prepared])
        t1 = time.perf_counter()
        logits, _, hs, feats = self.backend.detect(images, masks)
        t2 = time.perf_counter()
        detected = []
        for i, (_, _, geom) in enumerate(prepared):
            ts = time.perf_counter()
            select = select_queries_published if self.cfg.postprocess.rule == "published" else select_queries
            keep, labels, scores = select(logits[i].float().cpu(), self.threshold)
            # mask logits stay where the backend made them: on a GPU, resizing and the per-pixel
            # decision run there too (postprocess.py)
            mask_logits = (self.backend.masks(feats, i, hs[i, keep]).float() if len(keep)
                           else torch.zeros(0, 1, 1))
            timings = {"preprocess": (t1 - t0) / len(frames), "detect": (t2 - t1) / len(frames),
                       "mask_head": time.perf_counter() - ts}
            detected.append(Detected(mask_logits, labels, scores, geom, timings))
        return detected

    def decide(self, detected: "Detected") -> PanopticResult:
        """The post-processing's half of run_batch: which query wins each pixel, segments, instances."""
        tm = time.perf_counter()
        mask_logits, labels, scores, geom = detected.mask_logits, detected.labels, detected.scores, detected.geom
        pp = self.cfg.postprocess
        published = pp.rule == "published"
        # a frame larger than the network's view (a 1080p camera) is decided at the network's
        # resolution and its maps nearest-upsampled, as DETR's published post-processing does:
        # deciding every input pixel costs ~5x more at 1080p, for boundaries placed within a
        # network pixel (postprocess.full_resolution: true still does it)
        larger = geom.height * geom.width > geom.resized_h * geom.resized_w
        decided_at = dataclasses.replace(geom, height=geom.resized_h, width=geom.resized_w) \
            if larger and not pp.full_resolution and not published else geom
        if published:  # DETR's own rule: decided at the network's size, areas at the frame's
            result = published_panoptic(mask_logits.cpu(), labels, scores, geom, self.backend.mask_stride,
                                        self.taxonomy.thing_lut, self.cfg.labels)
        else:
            result = merge_panoptic(self._masks_to_decide(mask_logits, decided_at, scores), labels, scores,
                                    self.taxonomy.thing_lut, pp.merge, pp.min_area, self.cfg.labels, pp.overlap,
                                    split_things=pp.split_things, merge_things=pp.merge_things)
        if self.mapping is not None:
            result = remap_result(result, self.mapping)
        if decided_at is not geom:  # last: every step before works on the smaller maps
            result = upsample_result(result, geom.height, geom.width)
        result.timings = {**detected.timings, "postprocess": time.perf_counter() - tm}
        return result


@dataclasses.dataclass
class Detected:
    """One frame between the network and the post-processing (Pipeline.detect_batch -> Pipeline.decide)."""
    mask_logits: torch.Tensor  # K x h x w at the backend's mask stride, the kept queries only
    labels: torch.Tensor       # K class ids
    scores: torch.Tensor       # K class probabilities
    geom: Geometry             # where the frame sits on the network's canvas
    timings: Dict[str, float]  # seconds per stage so far
