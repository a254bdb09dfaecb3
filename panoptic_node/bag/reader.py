"""Reading camera frames and ground truth from rosbag2 (sqlite3 or mcap) without ROS."""
import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from rosbags.highlevel import AnyReader

from ..messages import SUPPORTED_ENCODINGS, compressed_to_rgb, image_to_rgb, stamp_ns
from ..taxonomy import taxonomy_of
from .tolerant import TolerantReader
from .types import typestore
from .writer import BagError

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


def is_camera(topic: str, msgtype: str) -> bool:
    """An image topic a camera recorded: not ground truth, not a replay's or the node's output."""
    return msgtype in IMAGE_TYPES and "/ground_truth/" not in topic and "/panoptic/" not in topic


def raw_twin(topic: str, topics) -> Optional[str]:
    """The raw topic an image_transport '<raw>/compressed' topic repeats, when `topics` hold it too."""
    raw = topic[:-len("/compressed")] if topic.endswith("/compressed") else None
    return raw if raw in topics else None


@dataclass
class BagMessage:
    topic: str
    msgtype: str
    stamp_ns: int   # the message header stamp (the bag's receive time when there is no header)
    msg: object
    error: Optional[str] = None  # set when the message does not deserialize (counted, skipped)


def decode_frame(msg, msgtype: str) -> np.ndarray:
    return compressed_to_rgb(msg) if msgtype.endswith("CompressedImage") else image_to_rgb(msg)


class BagReader:
    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag '{self.path}' does not exist; expected a rosbag2 folder (sqlite3 or mcap)")
        self.unreadable: Dict[str, str] = {}  # topics left out because their message definition does not read
        try:
            self.reader = self._open()
        except Exception as e:  # rosbags raises several types for corrupt metadata / storage files
            storage = self.path.suffix in (".mcap", ".db3") or (
                self.path.is_dir() and any(p.suffix in (".mcap", ".db3") for p in self.path.iterdir()))
            hint = (f"; if the recording was cut short, `panoptic-node recover {self.path} --out NEW_BAG` keeps "
                    f"its complete messages") if storage else ""
            raise BagError(f"bag '{self.path}' cannot be opened ({_one_line(e)}); expected a rosbag2 folder "
                           f"with metadata.yaml and .db3 or .mcap files{hint}") from None
        self.topics: Dict[str, str] = {c.topic: c.msgtype for c in self.reader.connections}

    def _open(self):
        """rosbags' AnyReader; where it refuses the bag, the rosbag2 bag with its topics' types taken one by one
        (bag/tolerant.py): a topic whose definition does not read costs that topic, not the bag. When that
        fails too, AnyReader's reason is the one said."""
        reader = AnyReader([self.path], default_typestore=typestore())
        try:
            reader.open()
            return reader
        except Exception as first:
            if self.path.suffix == ".bag":  # ROS 1: AnyReader's alone
                raise
            try:
                tolerant = TolerantReader(self.path, typestore())
            except Exception:
                raise first from None
            if not tolerant.unreadable:  # it failed for another reason than a definition: not ours to hide
                tolerant.close()
                raise first
            self.unreadable = tolerant.unreadable
            return tolerant

    def why_unreadable(self, topic: str) -> str:
        """'; <topic> is in the bag, but ...' for a topic left out, to end a line saying it is missing; else ''."""
        why = self.unreadable.get(topic)
        return f"; {topic} is in the bag, but {why}" if why else ""

    def image_topics(self) -> List[str]:
        return sorted(t for t, ty in self.topics.items() if ty in IMAGE_TYPES)

    def pick_image_topics(self, topics: Optional[Sequence[str]] = None) -> Tuple[List[str], Dict[str, str]]:
        """The given topics (checked, each once), or every camera a car bag recorded, as the node would
        serve them; and the image topics left out, each with the line that says why (none when topics
        are given: the user chose)."""
        if topics:
            for topic in topics:
                if self.topics.get(topic) not in IMAGE_TYPES:
                    raise BagError(f"bag '{self.path}' has no image topic '{topic}'; image topics: "
                                   f"{', '.join(self.image_topics()) or 'none'}{self.why_unreadable(topic)}")
            return list(dict.fromkeys(topics)), {}
        found = [t for t in self.image_topics() if is_camera(t, self.topics[t])]
        left: Dict[str, str] = {}
        for t in found:
            raw = raw_twin(t, found)
            if raw:  # image_transport records a camera twice: its raw frames, once
                left[t] = f"{t} is {raw} compressed: the raw frames are replayed"
            else:
                why = self._not_a_camera(t)
                if why:
                    left[t] = why
        cameras = [t for t in found if t not in left]
        if not cameras:
            raise BagError(f"bag '{self.path}' has no camera image topic (sensor_msgs/Image or CompressedImage of "
                           f"camera frames, outside /ground_truth/ and /panoptic/); image topics: "
                           f"{', '.join(self.image_topics()) or 'none'}" + "".join(f"; {w}" for w in left.values())
                           + "".join(self.why_unreadable(t) for t in self.unreadable)
                           + ("; --image-topic T replays one anyway" if left else ""))
        return cameras, left

    def _not_a_camera(self, topic: str) -> Optional[str]:
        """Why an image topic holds no camera frames, from its first message (a depth camera's 16UC1 /
        32FC1 images, compressedDepth), or None."""
        first = next(self.messages([topic], max_count=1), None)
        if first is None or first.msg is None:
            return None  # nothing to judge by: replayed, and what it holds is counted there
        encoding = getattr(first.msg, "encoding", None)
        if encoding is not None and encoding not in SUPPORTED_ENCODINGS:
            return f"{topic} holds {encoding} images (depth, or no colour / grey encoding this reads): not replayed"
        if "compressedDepth" in (getattr(first.msg, "format", "") or ""):
            return f"{topic} holds compressed depth ({first.msg.format}): not replayed"
        return None

    def messages(self, topics: List[str], max_count: Optional[int] = None,
                 window_ns: Optional[Tuple[int, int]] = None) -> Iterator[BagMessage]:
        """Messages of the given topics in bag order (those recorded in [start, stop) of `window_ns`, by the
        bag's receive time, as `ros2 bag play --start-offset` counts). A storage error ends the stream with
        BagError."""
        conns = [c for c in self.reader.connections if c.topic in topics]
        start, stop = window_ns or (None, None)
        seen = 0
        try:
            for conn, t, raw in self.reader.messages(connections=conns, start=start, stop=stop):
                try:
                    msg = self.reader.deserialize(raw, conn.msgtype)
                except Exception as e:
                    seen += 1
                    yield BagMessage(conn.topic, conn.msgtype, int(t), None,
                                     f"message does not deserialize as {conn.msgtype} ({_one_line(e)})")
                    continue
                hdr = getattr(msg, "header", None)
                yield BagMessage(conn.topic, conn.msgtype, stamp_ns(hdr) if hdr is not None else int(t), msg)
                seen += 1
                if max_count and seen >= max_count:
                    return
        except Exception as e:
            raise BagError(f"bag '{self.path}' is truncated or corrupt after {seen} messages "
                           f"({_one_line(e)})") from None

    def window(self, start_s: Optional[float], duration_s: Optional[float]) -> Optional[Tuple[int, int]]:
        """[start, stop) in the bag's receive-time nanoseconds for `start_s` seconds after its first message,
        lasting `duration_s` (None: to the end); None when neither is given. A start past the bag's last
        message is refused naming how long the bag is."""
        if start_s is None and duration_s is None:
            return None
        first, last = self.reader.start_time, self.reader.end_time
        # compared in seconds first: a huge value (1e300) would overflow as nanoseconds
        if (start_s or 0.0) > (last - first) / 1e9:
            raise ValueError(f"--start {start_s:g}: bag '{self.path}' lasts {(last - first) / 1e9:.3f} s; expected a "
                             f"start inside it (seconds after its first message)")
        start = first + round((start_s or 0.0) * 1e9)
        if duration_s is None or duration_s > (last - start) / 1e9:
            return start, last + 1  # to the end
        return start, start + round(duration_s * 1e9)

    def label_set(self, topic: str) -> Optional[str]:
        """The label set a LabelInfo topic announces (its first message): a taxonomy name, a
        description of a class map we do not know, or None when the bag has no such topic."""
        if self.topics.get(topic) != "vision_msgs/msg/LabelInfo":
            return None
        for m in self.messages([topic], max_count=1):
            if m.msg is None:
                return f"an unreadable one ({m.error})"
            tax = taxonomy_of((c.class_id, c.class_name) for c in m.msg.class_map)
            return tax.name if tax else f"an unknown one of {len(m.msg.class_map)} classes"
        return None

    def close(self) -> None:
        self.reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def pairs_by_stamp(a: Iterator[BagMessage], b: Iterator[BagMessage], window: int = 64, unmatched=None):
    """(message of a, message of b) with equal header stamps, from two streams each in bag order,
    read side by side: at most `window` messages wait for a partner on either side (a message whose
    partner never comes is dropped once the window passes it), so memory does not grow with the bags.
    Messages that did not deserialize are skipped. A stamp does not tell messages apart when it is 0 (a
    driver that leaves header.stamp unset) or two messages of one side carry it: those are never paired
    (either partner could be anyone's). `unmatched` ([0, 0]) counts, per side, the messages that found no
    partner (unreadable and ambiguous ones included), so a caller can say what it did not score."""
    unmatched = unmatched if unmatched is not None else [0, 0]
    waiting: Tuple[Dict[int, BagMessage], Dict[int, BagMessage]] = ({}, {})
    ambiguous = {0}

    def readable(stream, side):
        for m in stream:
            if m.msg is None:
                unmatched[side] += 1
            else:
                yield m
    merged = heapq.merge(((m.stamp_ns, 0, m) for m in readable(a, 0)),
                         ((m.stamp_ns, 1, m) for m in readable(b, 1)), key=lambda x: (x[0], x[1]))
    for stamp, side, m in merged:
        if stamp in waiting[side]:  # a second message of this stamp on the same side
            ambiguous.add(stamp)
            del waiting[side][stamp]
            unmatched[side] += 1
        if stamp in ambiguous:
            unmatched[side] += 1
            continue
        partner = waiting[1 - side].pop(stamp, None)
        if partner is not None:
            yield (partner, m) if side else (m, partner)
            continue
        waiting[side][stamp] = m
        while len(waiting[side]) > window:
            del waiting[side][next(iter(waiting[side]))]  # the oldest
            unmatched[side] += 1
    unmatched[0] += len(waiting[0])
    unmatched[1] += len(waiting[1])


def label_set_phrase(name: str) -> str:
    """BagReader.label_set's answer in a sentence: 'the camvid label set', 'an unknown one of 7 classes'."""
    return name if name.startswith("an ") else f"the {name} label set"


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
