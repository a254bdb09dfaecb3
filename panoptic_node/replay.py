"""`panoptic-node replay`: run the Pipeline over a recorded bag, write the node's output topics to a
new bag, summarise speed, render an overlay video and score against ground truth in the bag.

Ground truth (/ground_truth/panoptic + /ground_truth/semantic) is matched to frames by header stamp
in one pass over the bag, so memory stays flat however long the bag is. It is scored in the label set
the model publishes: /ground_truth/label_info says which set the bag's is in; another set is mapped
where a mapping exists (Cityscapes / KITTI -> CamVid), else the replay goes on unscored. `--gt-topic` may
name another panoptic map, or a recorded run's semantic map (raw or its PNG twin), put together with its
instances map (bag/recorded_maps.py): a car's recording of the node is then the reference for a new model.
"""
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from . import __version__
from .atomic import partial_path, write_json
from .bag.convert import GT_LABEL_INFO, GT_PANOPTIC, GT_SEMANTIC
from .bag.outputs import ResultBagWriter
from .bag.reader import BagMessage, BagReader, decode_frame, label_set_phrase
from .bag.recorded_health import INT8_ARITHMETIC_KEYS, StatusHealth, node_health, ran_line
from .bag.recorded_maps import LABEL_MAPS, MapTopics, label_info_topic, named_maps, panoptic_of_labels
from .bag.writer import BagWriter, diagnostic_msg, header
from .evaluation.association import AssociationQuality
from .evaluation.evaluator import Evaluator
from .evaluation.per_frame import PerFrameScores
from .in_order import PipelinesInOrder
from .inference.ego_mask import apply_ego_mask, describe, fit_note, fitted, masks_for
from .inference.preprocess import OffScaleNotes
from .inference.tracking import DEFAULT_MAX_LOST, DEFAULT_MIN_IOU, InstanceTracker
from .messages import FrameError, calibrated_size, calibration_misfit, image_array
from .output_safety import check_outputs
from .params import camera_namespace
from .render import overlay, side_by_side
from .taxonomy import NAMES, LabelMapping, find_mapping, get_taxonomy
from .topic_qos import DIAGNOSTICS


@dataclass
class ReplaySummary:
    frames: int = 0
    cameras: Dict[str, int] = field(default_factory=dict)  # frames replayed per camera topic
    undecodable: int = 0
    errors: List[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    stage_ms: Dict[str, List[float]] = field(default_factory=dict)
    evaluated: int = 0
    unscored: int = 0   # frames whose ground truth could not be scored (wrong size, unknown labels)
    gt_unmatched: int = 0      # ground-truth frames with no replayed frame of their stamp
    frames_without_gt: int = 0  # replayed frames with no ground truth of their stamp (when scoring)
    stamps_unmatchable: int = 0  # replayed frames stamped 0 or with another frame's stamp: never paired
    metrics: Optional[dict] = None
    backend: str = ""
    precision: str = ""
    model: str = ""
    weights: str = ""       # which weights file ran, by name and sha256 (cache_key.weights_identity)
    scales: str = ""        # the int8 scales its graphs were made from, by name and sha256 ("": fp32)
    weight_bits: int = 0    # its int8 graphs' weight width (Backend.int8_weight_bits; 0: not int8)
    matrix_products: str = ""  # its int8 graphs' matrix products, "int8" or "float" (Backend.int8_matrix_products)
    workers: int = 1        # pipelines that inferred frames at once (the node's inference_workers)
    scoring: bool = False   # ground truth was there to score against
    parameters: Optional[dict] = None  # the node's parameters the replay ran (replay --params), for the record
    node_health: List[StatusHealth] = field(default_factory=list)  # the recording node's own /diagnostics
    evaluator: Optional[Evaluator] = field(default=None, repr=False)  # its accumulators (fleet merges them)

    def percentiles(self) -> Dict[str, Dict[str, float]]:
        out = {}
        for stage, values in self.stage_ms.items():
            a = np.array(values)
            out[stage] = {p: float(np.percentile(a, int(p[1:]))) for p in ("p50", "p90", "p99")}
        return out

    def to_dict(self) -> dict:
        return {"frames": self.frames, "cameras": self.cameras, "undecodable": self.undecodable,
                "errors": self.errors[:20],
                "fps": self.frames / self.wall_seconds if self.wall_seconds else 0.0, "inference_workers": self.workers,
                "latency_ms": self.percentiles(), "evaluated_frames": self.evaluated, "unscored_frames": self.unscored,
                "ground_truth_unmatched": self.gt_unmatched, "frames_without_ground_truth": self.frames_without_gt,
                "frames_with_unmatchable_stamps": self.stamps_unmatchable,
                "backend": self.backend, "precision": self.precision,
                # which weights (and int8 calibration and width) gave these numbers, kept with them
                "model": self.model, "weights": self.weights,
                **({"int8_scales": self.scales} if self.scales else {}),
                **({"int8_weight_bits": self.weight_bits} if self.weight_bits else {}),
                **({"int8_matrix_products": self.matrix_products} if self.matrix_products else {}),
                "metrics": self.metrics,
                **({"node_parameters": self.parameters} if self.parameters else {}),
                **({"recorded_node_health": [h.line() for h in self.node_health],
                    "recorded_node_ran": self.recorded_ran()} if self.node_health else {})}

    def recorded_ran(self) -> List[str]:
        """What the node that recorded the bag ran (its inference statuses), each change in order."""
        return [line for h in self.node_health for line in h.ran_lines()]

    def ran_values(self) -> Dict[str, str]:
        """What this replay ran, in the values a node's inference status gives (recorded_health.RAN_KEYS)."""
        return {"model": self.model, "weights": self.weights, "backend": self.backend, "precision": self.precision,
                **({"int8 scales": self.scales} if self.scales else {}),
                **({"int8 weight bits": str(self.weight_bits)} if self.weight_bits else {}),
                **({"int8 matrix products": self.matrix_products} if self.matrix_products else {})}

    def format(self) -> str:
        d = self.to_dict()
        lines = [f"{self.frames} frames in {self.wall_seconds:.1f} s ({d['fps']:.1f} frames/s), "
                 f"{self.undecodable} undecodable, backend {self.backend} ({self.precision}"
                 + (f", {self.weight_bits}-bit weights" if self.weight_bits else "")
                 + (f", {self.matrix_products} matrix products" if self.matrix_products else "")
                 + (f", {self.workers} inference workers" if self.workers > 1 else "") + f"), model {self.model}"
                 + (f" ({self.weights})" if self.weights else "")]
        if len(self.cameras) > 1:
            lines.append("cameras: " + ", ".join(f"{t} {n}" for t, n in self.cameras.items()))
        lines.append(f"{'stage':<12}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}")
        for stage, p in d["latency_ms"].items():
            lines.append(f"{stage:<12}{p['p50']:9.1f}{p['p90']:9.1f}{p['p99']:9.1f}")
        if self.metrics:
            m = self.metrics
            lines.append(f"PQ {100 * m['pq']['pq']:.1f} (things {100 * m['pq_things']['pq']:.1f}, stuff "
                         f"{100 * m['pq_stuff']['pq']:.1f})  mIoU {100 * m['miou']:.1f}  pixel accuracy "
                         f"{100 * m['pixel_accuracy']:.1f}  on {self.evaluated} frames")
            if "tracking" in m:
                t = m["tracking"]
                lines.append(f"STQ {100 * t['stq']:.1f} (AQ {100 * t['aq']:.1f} over {t['tracks']} labelled tracks, "
                             f"mIoU {100 * m['miou']:.1f})")
        if self.unscored:
            first = next(e for e in self.errors if e.startswith("ground truth"))
            lines.append(f"{self.unscored} frames' ground truth not scored (first: {first})")
        if self.stamps_unmatchable:
            lines.append(f"{self.stamps_unmatchable} frames not scored: stamped 0 (a driver that leaves header.stamp "
                         f"unset) or with another frame's stamp, so no ground truth can be told to be theirs")
        if self.gt_unmatched or self.frames_without_gt:
            lines.append(f"{self.gt_unmatched} ground-truth frames matched no replayed frame and "
                         f"{self.frames_without_gt} replayed frames had no ground truth: ground truth is matched "
                         f"by header stamp, exactly (are the stamps of the two topics the same?)")
        if self.scoring and not self.metrics:
            lines.append("not scored: no frame had ground truth that could be scored (see above)")
        if self.node_health:
            lines.append("the node that recorded this bag, on its /diagnostics:")
            lines += [f"  {h.line()}" for h in self.node_health]
            ran = self.recorded_ran()
            lines += [f"  it ran {line}" for line in ran]
            # its maps as ground truth, or its latency beside ours: two models' figures, not one's
            ours = self.ran_values()
            theirs = [v for h in self.node_health for v in h.ran if v.get("weights")]  # older releases named none
            if self.weights and any(v["weights"] != self.weights for v in theirs):
                lines.append(f"  this replay ran other weights than that node: {self.weights}")
            elif self.weights and any(not _same_arithmetic(v, ours) for v in theirs):
                # the same weights in fp32 and int8, or from two calibrations or weight widths: close maps, not
                # the same ones
                lines.append(f"  this replay ran the same weights in another precision than that node: "
                             f"{ran_line(ours)}")
        return "\n".join(lines)


def _same_arithmetic(theirs: Dict[str, str], ours: Dict[str, str]) -> bool:
    """Whether two runs' values (recorded_health.RAN_KEYS) name the same precision and, where both name them, the
    same int8 scales, weight width and matrix products: what sets the maps' numbers besides the weights (fp32
    runtimes agree to rounding; int8 and fp32, two calibrations, two widths, int8 or float matrix products do
    not). A node of an older release named none of them."""
    return theirs.get("precision") == ours.get("precision") and all(
        not theirs.get(key) or not ours.get(key) or theirs[key] == ours[key]
        for key in INT8_ARITHMETIC_KEYS)


class VideoWriter:
    """MP4 through imageio-ffmpeg (an ffmpeg binary shipped in the wheel); written to a .partial name."""

    def __init__(self, path, fps: float):
        import imageio.v2 as imageio
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = imageio.get_writer(self.partial, fps=fps, codec="libx264", quality=7, macro_block_size=2,
                                         ffmpeg_log_level="error")

    def add(self, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2]
        self.writer.append_data(rgb[: h - h % 2, : w - w % 2])

    def close(self) -> None:
        self.writer.close()
        self.partial.replace(self.path)

    def abort(self) -> None:
        """An interrupted replay: no video that looks finished is left behind."""
        self.writer.close()
        self.partial.unlink(missing_ok=True)


def write_per_frame(per_frame: Optional[PerFrameScores], path, timeline=None, report=None, log=print) -> None:
    """The per-frame CSV and / or the timeline picture, and a line naming the frames of lowest PQ; nothing
    written when no frame was scored (an empty table would read as a drive without a bad frame)."""
    asked = " and ".join(str(p) for p in (path, timeline) if p)
    if per_frame is None or not per_frame.rows:
        log(f"no per-frame scores written to {asked}: no frame was scored")
        return
    if path:
        per_frame.write(path)
    if timeline:
        from .evaluation.report import timeline_chart
        timeline_chart(per_frame.rows, timeline, report)
    worst = ", ".join(f"{r['stamp_ns']} (PQ {r['pq']:.1f})" for r in per_frame.worst())
    log(f"per-frame scores: {asked} ({len(per_frame.rows)} frames; lowest PQ at stamps {worst or 'none defined'})")


def check_window(start_s: Optional[float], duration_s: Optional[float]) -> None:
    """--start / --duration, refused in one line before anything is read or written."""
    if start_s is not None and not (math.isfinite(start_s) and start_s >= 0):
        raise ValueError(f"--start {start_s}: expected seconds >= 0 after the bag's first message")
    if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"--duration {duration_s}: expected a finite number of seconds > 0 (leave it out for the "
                         f"rest of the bag)")


def replay(pipeline, bag, out_bag=None, image_topic: Union[None, str, Sequence[str]] = None,
           gt_topic: Optional[str] = None, video=None, metrics_path=None, max_frames: Optional[int] = None,
           overwrite: bool = False, storage: str = "mcap", log=print, on_scored=None,
           start_s: Optional[float] = None, duration_s: Optional[float] = None,
           per_frame_path=None, timeline_path=None, ego_masks=None, track: bool = True,
           stq: bool = False, track_min_iou: float = DEFAULT_MIN_IOU, track_max_lost: int = DEFAULT_MAX_LOST,
           publish: Optional[Dict[str, bool]] = None, overlay_labels: bool = True,
           parameters: Optional[dict] = None, more_pipelines: Sequence = ()) -> ReplaySummary:
    """image_topic: one camera topic or several (default: every camera in the bag); each camera's
    results go under its own namespace, as the node publishes them. Ground truth belongs to one camera,
    so it is scored only when one is replayed; the video shows every camera side by side.

    on_scored(stamp, gt_semantic, pred_semantic, rgb_third): called for every scored frame, with
    the frame at a third of its size (fleet.py's gallery of worst frames).

    start_s / duration_s: replay only what the bag recorded from `start_s` seconds after its first
    message, for `duration_s` seconds (a part of a long drive), as `ros2 bag play --start-offset` counts.
    per_frame_path: a CSV of each scored frame's own scores (evaluation/per_frame.py); timeline_path: those
    scores drawn along the drive. ego_masks: a folder of ego masks (inference/ego_mask.py), applied to each
    camera's outputs as the node applies them, and to its ground truth before scoring (the car's own bonnet
    is not scored). track: each camera's instance ids kept from frame to frame, as the node's default
    track_instances keeps them (inference/tracking.py); False numbers each frame's things 1..N. stq: the
    ground truth's instance ids are track ids (KITTI-STEP): also score how well the predicted ids follow them
    (evaluation/association.py: AQ, and STQ with the mIoU); track_min_iou / track_max_lost: the tracker's
    settings (the node's parameters of those names). publish: which of the node's topics the output bag gets
    (its publish_* switches, bag/outputs.py; all by default); overlay_labels: class names on the overlays.
    parameters: the node's parameters these settings came from (replay --params), kept in --metrics' JSON.
    more_pipelines: copies of `pipeline` (its threads shared among them) that infer frames at the same time,
    as the node's inference_workers do; every frame is handled in the bag's order all the same."""
    summary = ReplaySummary(backend=pipeline.backend.name, precision=pipeline.backend.precision,
                            model=pipeline.cfg.name, weights=pipeline.weights_id, scales=pipeline.scales_id,
                            weight_bits=getattr(pipeline.backend, "int8_weight_bits", 0),
                            matrix_products=getattr(pipeline.backend, "int8_matrix_products", ""),
                            workers=1 + len(more_pipelines), parameters=parameters)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames {max_frames}: expected a positive number of frames (leave it out for all)")
    check_window(start_s, duration_s)
    check_outputs({"--out": out_bag, "--video": video, "--metrics": metrics_path, "--per-frame": per_frame_path,
                   "--timeline": timeline_path}, [bag], overwrite, bags={"--out"})
    reader = BagReader(bag)
    try:
        cameras, left_out = reader.pick_image_topics([image_topic] if isinstance(image_topic, str) else image_topic)
        namespaces = [camera_namespace(t) for t in cameras]
        for i, ns in enumerate(namespaces):
            if ns in namespaces[:i]:
                raise ValueError(f"cameras '{cameras[namespaces.index(ns)]}' and '{cameras[i]}' would both write "
                                 f"{ns}/panoptic/*; replay them in two runs (--image-topic)")
        if gt_topic:
            if gt_topic in cameras:
                raise ValueError(f"--gt-topic '{gt_topic}' is a camera this replay runs; expected the ground-truth "
                                 f"panoptic topic ({GT_PANOPTIC} in the bags `convert` writes)")
            gt_maps = named_maps(reader, gt_topic, "--gt-topic")  # a semantic map, scored with its instances twin
            if gt_maps is None:
                require_map_topic(reader, gt_topic, "--gt-topic")
                gt_maps = MapTopics(panoptic=gt_topic)
        else:
            gt_maps = MapTopics(panoptic=GT_PANOPTIC) if GT_PANOPTIC in reader.topics else None
        several = (f"ground truth belongs to one camera and {len(cameras)} are replayed ({', '.join(cameras)}); "
                   f"choose the one it labels with --image-topic")
        if gt_topic and len(cameras) > 1:
            raise ValueError(several)
        window = reader.window(start_s, duration_s)
        masks = masks_for(ego_masks, namespaces) if ego_masks else {}
    except BaseException:
        reader.close()
        raise
    gt_pan = gt_maps.name if gt_maps else None  # what the ground truth is called; falsy: nothing is scored
    for ns, keep in masks.items():
        log(describe(ego_masks, ns, keep))
    keep_of = {t: masks.get(ns) for t, ns in zip(cameras, namespaces)}
    if window:
        first, last = reader.reader.start_time, reader.reader.end_time
        log(f"replaying {(window[0] - first) / 1e9:g} s to {(window[1] - first) / 1e9:g} s of the "
            f"bag's {(last - first) / 1e9:.3f} s (receive time after its first message)")
    for why in left_out.values():
        log(f"{why} (--image-topic chooses)")
    if gt_pan and len(cameras) > 1:
        log(f"not scored: {several}")
        gt_pan = None
    if video and len(cameras) > 1:
        log(f"the video shows the {len(cameras)} cameras side by side, a frame for each frame of {cameras[0]} "
            f"with the others' latest (--image-topic chooses)")
    published = pipeline.taxonomy if pipeline.mapping is None else pipeline.mapping.target
    gt_map = gt_labels = None
    try:  # the label set the LabelInfo beside the ground truth announces (another run's maps have theirs)
        gt_label_topic = label_info_topic(gt_maps) if gt_pan else GT_LABEL_INFO
        gt_labels = reader.label_set(gt_label_topic) if gt_pan else None
        gt_map = ground_truth_mapping(gt_labels, published.name, f"the ground truth in '{bag}'",
                                      "the model publishes", log, gt_label_topic)
    except ValueError as e:
        if gt_topic:
            reader.close()
            raise ValueError(f"{e}; replay with a model publishing those labels (--labels)") from None
        log(f"not scored: {e}")
        gt_pan = None
    # a converted bag's class map is scored beside its panoptic map (KITTI's void and stuff differ there)
    gt_sem = GT_SEMANTIC if gt_pan == GT_PANOPTIC and GT_SEMANTIC in reader.topics else None
    # label maps become a panoptic map in their own label set, before it is mapped into the model's
    gt_things = (get_taxonomy(gt_labels) if gt_labels in NAMES else published).thing_lut
    evaluator = Evaluator(published) if gt_pan else None
    per_frame = PerFrameScores(published) if gt_pan and (per_frame_path or timeline_path) else None
    association = AssociationQuality(published.thing_lut) if gt_pan and stq else None
    if stq and not gt_pan:
        log("no tracking scores (STQ): nothing to score against")
    writer = BagWriter(out_bag, storage, overwrite, inputs=[bag]) if out_bag else None
    taxonomy = evaluator.taxonomy if evaluator else pipeline.taxonomy
    results_out = {t: ResultBagWriter(writer, ns, taxonomy, pipeline.threshold, publish, overlay_labels)
                   for t, ns in zip(cameras, namespaces)} if writer else {}
    off_scale = OffScaleNotes(pipeline.cfg.input)
    # ids are seen only in what is written (bag, video) and by --stq: PQ and mIoU are the same either way
    trackers = {t: InstanceTracker(track_min_iou, track_max_lost) for t in cameras} \
        if track and (out_bag or video or stq) else {}
    latest: Dict[str, np.ndarray] = {}  # each camera's newest overlay, for a video of several side by side
    # predictions and ground truth waiting for their partner, by stamp (bounded: GT sits next to its frame)
    pending_pred: "OrderedDict[int, tuple]" = OrderedDict()
    pending_gt: "OrderedDict[int, dict]" = OrderedDict()
    # ground truth is paired by header stamp: a frame stamped 0, or with a stamp another frame had, cannot be
    # told apart from the others, so neither it nor ground truth of its stamp is scored (it would be paired
    # with whichever frame came last)
    frame_stamps, unmatchable = set(), set()

    def gt_complete(stamp):
        entry = pending_gt.get(stamp, {})
        return "pan" in entry and ("sem" in entry or not gt_sem)

    def score(stamp):
        pred, gt = pending_pred.pop(stamp), pending_gt.pop(stamp)
        try:
            if "error" in gt:
                raise ValueError(gt["error"])
            pan, sem = gt["pan"], gt.get("sem")
            if gt_map:  # into the label set the model publishes
                pan = gt_map.map_panoptic(pan)
                sem = None if sem is None else gt_map.map_semantic(sem)
            if keep_of.get(cameras[0]) is not None:  # the car's own bonnet is not scored
                keep = fitted(keep_of[cameras[0]], *pan.shape)
                pan = np.where(keep, pan, -1).astype(pan.dtype)
                sem = None if sem is None else np.where(keep, sem, 255).astype(sem.dtype)
            gt_semantic = _semantic_of(pan) if sem is None else sem
            evaluator.add(pan, gt_semantic, pred[0], pred[1])
            if association:
                association.add(pan, pred[0])
            if per_frame:
                per_frame.add(stamp, pan, gt_semantic, pred[0], pred[1])
            if on_scored:
                on_scored(stamp, gt_semantic, pred[1], pred[2])
        except ValueError as e:  # bad ground truth costs its frame's score, not the replay
            summary.unscored += 1
            summary.errors.append(f"ground truth at {stamp}: {e}")
            if summary.unscored == 1:
                bar.write(f"not scored: ground truth at {stamp}: {e} (further frames are only counted)")
            return
        summary.evaluated += 1

    # each camera's calibration beside it (<ns>/camera_info, as convert writes it): passed on with its maps
    info_of = {f"{ns}/camera_info": t for t, ns in zip(cameras, namespaces)
               if reader.topics.get(f"{ns}/camera_info") == "sensor_msgs/msg/CameraInfo"} if writer else {}
    camera_infos: Dict[str, object] = {}
    misfits_said = set()  # (camera, why): each said once, as the node's /diagnostics WARN says it
    fit_said = set()  # (camera, frame size) whose ego mask fit was judged
    namespace_of = dict(zip(cameras, namespaces))
    gt_topics = [t for t in (gt_maps.panoptic, gt_maps.semantic, gt_maps.instances) if t] if gt_pan else []
    topics = cameras + gt_topics + [t for t in (gt_sem,) if t] + list(info_of)
    video_out = None

    def handle_frame(m, rgb, result):
        """A camera frame's result, in the bag's order: ego mask, tracking, outputs, video, scoring."""
        nonlocal video_out, tile
        if keep_of.get(m.topic) is not None:
            if (m.topic, result.shape) not in fit_said:  # said once per camera and size, as the node does
                fit_said.add((m.topic, result.shape))
                said = fit_note(namespace_of[m.topic], keep_of[m.topic], *result.shape)
                if said:
                    bar.write(f"warning: {said}")
            result = apply_ego_mask(result, keep_of[m.topic], published.thing_lut)
        if trackers:
            result = trackers[m.topic].update(result)
        for stage, sec in result.timings.items():
            summary.stage_ms.setdefault(stage, []).append(1000 * sec)
        summary.frames += 1
        summary.cameras[m.topic] = summary.cameras.get(m.topic, 0) + 1
        bar.update(1)
        out = results_out.get(m.topic)
        drawn = overlay(rgb, result, taxonomy, labels=overlay_labels) \
            if video or (out and out.publish["overlay"]) else None  # once for the overlay topic and the video
        if out:
            info = camera_infos.get(m.topic)
            out.add(m.msg.header, m.stamp_ns, result, rgb, drawn, info)
            misfit = calibration_misfit(calibrated_size(info), rgb.shape[1::-1]) if info is not None else ""
            if misfit and (m.topic, misfit) not in misfits_said:
                misfits_said.add((m.topic, misfit))
                bar.write(f"warning: {m.topic}: {misfit}")
        if video:
            latest[m.topic] = drawn
            if m.topic == cameras[0]:  # the first camera paces the video
                if video_out is None:
                    video_out = VideoWriter(video, fps=10)
                    tile = drawn.shape[:2]  # every camera fitted into the first one's size
                # fitted even for one camera: a camera whose size changes mid-drive (a driver
                # reconfigured) would otherwise end the video, and the replay, at that frame
                video_out.add(side_by_side([latest.get(t) for t in cameras], *tile))
        if evaluator and (m.stamp_ns == 0 or m.stamp_ns in frame_stamps):
            unmatchable.add(m.stamp_ns)
            summary.stamps_unmatchable += 1 + (pending_pred.pop(m.stamp_ns, None) is not None)
            pending_gt.pop(m.stamp_ns, None)
        elif evaluator:
            frame_stamps.add(m.stamp_ns)
            pending_pred[m.stamp_ns] = (result.panoptic, result.semantic,
                                        np.ascontiguousarray(rgb[::3, ::3]) if on_scored else None)
            if gt_complete(m.stamp_ns):
                score(m.stamp_ns)

    def handle_message(m, rgb=None, result=None):
        """Any message of the bag, in the bag's order: a camera frame with its result, a calibration, ground truth."""
        if m.topic in cameras:
            handle_frame(m, rgb, result)
        elif m.topic in info_of:
            if m.msg is not None:  # one that does not deserialize leaves the previous one in use
                camera_infos[info_of[m.topic]] = m.msg
        elif m.stamp_ns in unmatchable:
            pass  # counted with its frames
        else:
            entry = pending_gt.setdefault(m.stamp_ns, {})
            kind = "sem" if m.topic == gt_sem else "pan"  # a label map is half of the panoptic map
            try:  # a bad ground-truth message costs its frame's score (said in score())
                if m.topic in (gt_maps.semantic, gt_maps.instances):
                    entry[m.topic] = m  # the panoptic map is made once its twin came (a bad half fails both)
                    if gt_maps.semantic in entry and gt_maps.instances in entry:
                        pair = (entry.pop(gt_maps.semantic), entry.pop(gt_maps.instances))
                        for half in pair:
                            if half.error:
                                raise ValueError(half.error)
                        entry["pan"] = panoptic_of_labels(BagMessage(gt_pan, LABEL_MAPS, m.stamp_ns, pair),
                                                          gt_things)
                else:
                    entry[kind] = map_array(m, kind)
            except (FrameError, ValueError) as e:
                entry[kind] = None
                entry.setdefault("error", str(e))
            if gt_complete(m.stamp_ns) and m.stamp_ns in pending_pred:
                score(m.stamp_ns)
        # forget partners that never came, counted
        while len(pending_pred) > 64:
            pending_pred.popitem(last=False)
            summary.frames_without_gt += 1
        while len(pending_gt) > 64:
            pending_gt.popitem(last=False)
            summary.gt_unmatched += 1

    workers = PipelinesInOrder([pipeline, *more_pipelines]) if more_pipelines else None  # None: called in the loop
    tile = None  # the video's size: the first camera's first frame
    start = time.perf_counter()
    bar = tqdm(total=max_frames, desc="replay", unit="frame")
    try:
        for m in reader.messages(topics, window_ns=window):
            if m.topic in cameras:
                taken = summary.frames + summary.undecodable + (workers.frames_in_flight() if workers else 0)
                if max_frames and taken >= max_frames:
                    break
                if m.error:
                    _skip(summary, m.error, bar)
                    continue
                try:
                    rgb = decode_frame(m.msg, m.msgtype)
                except FrameError as e:
                    _skip(summary, f"frame at {m.stamp_ns}: {e}", bar)
                    continue
                note = off_scale.first(*rgb.shape[:2])
                if note:
                    bar.write(f"warning: {note}")
                if workers is None:
                    handle_message(m, rgb, pipeline(rgb))
                else:
                    workers.submit(rgb, (m, rgb))
            elif workers is None:
                handle_message(m)
            else:  # behind the frames in flight, so that every message is handled in the bag's order
                workers.pass_through((m, None))
            for (done, rgb), result in workers.ready() if workers else ():
                handle_message(done, rgb, result)
        for (done, rgb), result in workers.drain() if workers else ():  # what is still in flight at the end
            handle_message(done, rgb, result)
        summary.node_health = node_health(reader, window)  # a record:= bag keeps them
    except BaseException:
        if writer:
            writer.abort()
        if video_out:
            video_out.abort()
        raise
    finally:
        if workers:
            workers.close()
        bar.close()
        reader.close()
    summary.wall_seconds = time.perf_counter() - start
    if evaluator:
        summary.scoring = True
        summary.frames_without_gt += len(pending_pred)
        summary.gt_unmatched += len(pending_gt)
    summary.evaluator = evaluator
    if evaluator and summary.evaluated:
        if evaluator.labelled_pixels:
            summary.metrics = evaluator.report()
            if association:
                summary.metrics["tracking"] = association.result(summary.metrics["miou"])
        else:  # scores of 0 that would read as a model that sees nothing
            log(f"not scored: the ground truth of the {summary.evaluated} frames matched labels no pixel (all void)")
    if writer:
        stamp = int(time.time() * 1e9)
        p = summary.percentiles()
        writer.write("/diagnostics", diagnostic_msg(
            header(stamp, ""), "panoptic_node: replay", pipeline.cfg.name, 0 if not summary.undecodable else 1,
            f"{summary.frames} frames, {summary.undecodable} undecodable",
            {"frames": summary.frames, "undecodable": summary.undecodable, "backend": summary.backend,
             "model": summary.model, "precision": pipeline.backend.precision, "weights": summary.weights,
             "version": __version__,
             **{f"{s}_p50_ms": f"{v['p50']:.1f}" for s, v in p.items()},
             **{f"{s}_p99_ms": f"{v['p99']:.1f}" for s, v in p.items()}}), stamp, DIAGNOSTICS)
        writer.close()
    if video_out:
        video_out.close()
    elif video:  # asked for, and not a single frame of its camera to draw
        log(f"no video written: no frame of {cameras[0]} was replayed")
    if per_frame_path or timeline_path:
        write_per_frame(per_frame, per_frame_path, timeline_path, summary.metrics, log)
    if metrics_path:
        write_json(summary.to_dict(), metrics_path, indent=1)  # through a .partial name
    return summary


def ground_truth_mapping(gt_labels: Optional[str], target: str, where: str, target_is: str,
                         log=print, label_topic: str = GT_LABEL_INFO) -> Optional[LabelMapping]:
    """How ground truth announced in `gt_labels` (BagReader.label_set; None: not announced, taken as
    `target`) reaches the `target` label set: None when it is there already, the mapping between the
    two (said in one line) where there is one; ValueError when there is none, since scores across
    label sets would mean nothing."""
    if not gt_labels or gt_labels == target:
        return None
    mapping = find_mapping(gt_labels, target) if gt_labels in NAMES else None
    if mapping is None:
        hint = (f" (--labels {gt_labels} publishes the model's output in the ground truth's)"
                if gt_labels in NAMES and find_mapping(target, gt_labels) else "")
        raise ValueError(f"{where} is in {label_set_phrase(gt_labels)} ({label_topic}) and {target_is} "
                         f"{label_set_phrase(target)}, with no mapping from one to the other{hint}")
    log(f"ground truth mapped from the {gt_labels} label set to {target}")
    return mapping


GT_ENCODINGS = {"pan": "32SC1", "sem": "mono8"}


def require_map_topic(reader: BagReader, topic: str, option: str) -> None:
    """A topic named to be scored exists in the bag and carries images: refused in one line before any
    frame is read, where otherwise its messages would pair with nothing and the run say only that."""
    if topic not in reader.topics:
        raise ValueError(f"bag '{reader.path}' has no topic '{topic}' ({option}); topics: "
                         f"{', '.join(sorted(reader.topics))}{reader.why_unreadable(topic)}")
    if reader.topics[topic] != "sensor_msgs/msg/Image":
        raise ValueError(f"{option} '{topic}' in bag '{reader.path}' is a {reader.topics[topic]}; expected a "
                         f"sensor_msgs/Image topic of panoptic maps (32SC1, label*1000 + instance)")


def map_array(m, kind: str) -> np.ndarray:
    """A map message to score (ground truth, or evaluate's predictions) as an array, refused unless it
    is the encoding its kind has: a class map (mono8) on the panoptic topic would be scored as stuff
    labels and mean nothing, an overlay (bgr8) would not even fit the label type."""
    if m.error:
        raise ValueError(m.error)
    want = GT_ENCODINGS[kind]
    encoding = getattr(m.msg, "encoding", None)
    if encoding != want:
        got = encoding if encoding is not None else f"a {m.msgtype}"
        raise ValueError(f"'{m.topic}' at {m.stamp_ns} is {got}; expected a {want} sensor_msgs/Image "
                         f"({'label*1000 + instance' if kind == 'pan' else 'class ids'})")
    return image_array(m.msg)


def _skip(summary: ReplaySummary, error: str, bar) -> None:
    summary.undecodable += 1
    summary.errors.append(error)
    bar.write(f"skipped undecodable frame: {error}")


def _semantic_of(panoptic: np.ndarray) -> np.ndarray:
    label = np.where(panoptic >= 1000, panoptic // 1000, panoptic)
    return np.where(panoptic < 0, 255, label).astype(np.uint8)
