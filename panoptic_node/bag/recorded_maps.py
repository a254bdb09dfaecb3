"""The panoptic maps a recording holds, for scoring: a `<camera>/panoptic/panoptic` topic (32SC1), or the
camera's semantic and instances maps put together. A car that recorded the node's lossless PNG twins
(`.../semantic/compressed`, `.../instances/compressed`, tens of times smaller than the raw maps) and no panoptic
map loses nothing: label * 1000 + instance for things, the label for stuff is exactly the panoptic map the node
published beside them (the node builds all three from one segment map)."""
from dataclasses import dataclass
from typing import Iterator, List, Optional

import numpy as np

from ..evaluation.gt import panoptic_from_labels
from ..messages import FrameError, image_array, png_labels
from .reader import BagMessage, BagReader, pairs_by_stamp

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
LABEL_MAPS = "semantic + instances"  # the msgtype of a pair read together: msg = (semantic, instances) messages
PANOPTIC, SEMANTIC, INSTANCES = "/panoptic/panoptic", "/panoptic/semantic", "/panoptic/instances"


@dataclass(frozen=True)
class MapTopics:
    """Where a recording's panoptic maps are: one panoptic topic, or a semantic and an instances topic."""
    panoptic: Optional[str] = None
    semantic: Optional[str] = None
    instances: Optional[str] = None

    @property
    def name(self) -> str:
        return self.panoptic or f"{self.semantic} + {self.instances}"


def _label_map_twins(semantic: str, topics) -> Optional[MapTopics]:
    """A semantic topic with the instances topic of the same camera and transport, when the bag has both with
    the types the node publishes them in (raw Image, or the CompressedImage twin)."""
    compressed = semantic.endswith("/compressed")
    base = semantic[:-len("/compressed")] if compressed else semantic
    if not base.endswith(SEMANTIC):
        return None
    instances = base[:-len(SEMANTIC)] + INSTANCES + ("/compressed" if compressed else "")
    kind = COMPRESSED if compressed else IMAGE
    if topics.get(semantic) != kind or topics.get(instances) != kind:
        return None
    return MapTopics(semantic=semantic, instances=instances)


def named_maps(reader: BagReader, topic: str, option: str) -> Optional[MapTopics]:
    """`--pred-topic` / `--gt-topic` naming a camera's semantic map (raw or compressed): it and its instances
    twin. None when the topic is not a semantic map (it is then a panoptic topic, checked as one)."""
    if not topic.rstrip("/").endswith((SEMANTIC, SEMANTIC + "/compressed")):
        return None
    if topic not in reader.topics:  # as a panoptic topic that is not there is said (replay.require_map_topic)
        raise ValueError(f"bag '{reader.path}' has no topic '{topic}' ({option}); topics: "
                         f"{', '.join(sorted(reader.topics))}{reader.why_unreadable(topic)}")
    twins = _label_map_twins(topic, reader.topics)
    if twins is None:
        compressed = topic.endswith("/compressed")
        wanted = topic.replace(SEMANTIC, INSTANCES)
        kind = COMPRESSED if compressed else IMAGE
        have = {t: reader.topics.get(t, "absent") for t in (topic, wanted)}
        raise ValueError(f"{option} '{topic}' is scored with its instances map '{wanted}', and bag '{reader.path}' "
                         f"holds {', '.join(f'{t}: {k}' for t, k in have.items())}; expected both as {kind}")
    return twins


def found_predictions(reader: BagReader) -> MapTopics:
    """Without --pred-topic: the one camera's panoptic map (what replay writes), else that camera's semantic and
    instances maps, raw or the PNG twins (what a car records to save space)."""
    panoptic = sorted(t for t, kind in reader.topics.items() if t.endswith(PANOPTIC) and kind == IMAGE)
    if len(panoptic) == 1:
        return MapTopics(panoptic=panoptic[0])
    by_camera = {}
    for topic in sorted(reader.topics):
        twins = _label_map_twins(topic, reader.topics)
        if twins:  # raw before its compressed twin in sorted order: a camera with both is read raw
            by_camera.setdefault(topic.split(SEMANTIC)[0], twins)
    if not panoptic and len(by_camera) == 1:
        return next(iter(by_camera.values()))
    maps = (f"; semantic + instances maps of {len(by_camera)} cameras ({', '.join(sorted(by_camera))})"
            if not panoptic and by_camera else
            "; nor a camera's semantic + instances maps (<camera>/panoptic/semantic and .../instances, raw or "
            "/compressed)" if not panoptic else "")
    raise ValueError(f"bag '{reader.path}' holds {len(panoptic)} panoptic map topics (<camera>/panoptic/panoptic"
                     f"{': ' + ', '.join(panoptic) if panoptic else ''}){maps}; choose the predictions with "
                     f"--pred-topic")


def label_info_topic(maps: MapTopics) -> str:
    """The LabelInfo topic beside the maps: `<camera>/panoptic/label_info` beside the node's, and
    `/ground_truth/label_info` beside a converted bag's `/ground_truth/panoptic`."""
    topic = maps.panoptic or maps.semantic
    topic = topic[:-len("/compressed")] if topic.endswith("/compressed") else topic
    return topic.rsplit("/", 1)[0] + "/label_info"


def map_messages(path, maps: MapTopics, unpaired: List[int]) -> Iterator[BagMessage]:
    """The recording's maps in bag order: panoptic messages as they are, or a semantic and an instances
    message of one header stamp as one LABEL_MAPS message (decoded by `panoptic_of_labels` where it is scored,
    so a damaged one costs its frame, with the reason). `unpaired[0]` counts maps whose twin never came."""
    with BagReader(path) as reader:
        if maps.panoptic:
            yield from reader.messages([maps.panoptic])
            return
        with BagReader(path) as twin_reader:  # each topic read by its own reader, side by side
            counts = [0, 0]
            for s, i in pairs_by_stamp(reader.messages([maps.semantic]), twin_reader.messages([maps.instances]),
                                       unmatched=counts):
                yield BagMessage(maps.name, LABEL_MAPS, s.stamp_ns, (s, i))
            unpaired[0] += counts[0] + counts[1]


def _label_map(m: BagMessage, encoding: str) -> np.ndarray:
    if m.msgtype == COMPRESSED:
        return png_labels(m.msg)
    if m.msg.encoding != encoding:
        raise FrameError(f"is {m.msg.encoding}; expected {encoding}")
    return image_array(m.msg)


def panoptic_of_labels(m: BagMessage, thing_lut: np.ndarray) -> np.ndarray:
    """A LABEL_MAPS message -> its panoptic map (label * 1000 + instance for things, label for stuff, -1 void),
    refused in one line when a map does not decode or the two differ in size (a label outside the set is the
    evaluator's to refuse, as in any panoptic map; `thing_lut` covers every uint8 value)."""
    s, i = m.msg
    try:
        semantic = _label_map(s, "mono8")
        instance = _label_map(i, "mono16")
    except FrameError as e:
        raise ValueError(f"the maps '{m.topic}' at {m.stamp_ns}: {e}") from None
    if semantic.shape != instance.shape:
        raise ValueError(f"the maps '{m.topic}' at {m.stamp_ns} differ in size: semantic {semantic.shape[1]}x"
                         f"{semantic.shape[0]}, instances {instance.shape[1]}x{instance.shape[0]}")
    return panoptic_from_labels(semantic, instance, thing_lut)
