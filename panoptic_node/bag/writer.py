"""rosbag2 writing (sqlite3 or mcap) that never leaves a finished-looking bag behind a crash:
everything goes to `<name>.partial/` and is renamed to `<name>/` only by `close()`."""
import shutil
from pathlib import Path
from typing import Dict, Optional, Sequence

from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer

from ..output_safety import WRITTEN_BY, WRITTEN_BY_KEY, OutputLock, check_outputs
from ..topic_qos import TopicQos
from .types import msg_class, typestore

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


def rosbag_qos(qos: TopicQos) -> Qos:
    """As rosbag2 records an offer; zero durations are 'unspecified' (rmw's defaults)."""
    unset = QosTime(sec=0, nsec=0)
    return Qos(history=QosHistory.KEEP_LAST, depth=qos.depth,
               reliability=QosReliability.RELIABLE if qos.reliable else QosReliability.BEST_EFFORT,
               durability=QosDurability.TRANSIENT_LOCAL if qos.transient_local else QosDurability.VOLATILE,
               deadline=unset, lifespan=unset, liveliness=QosLiveliness.SYSTEM_DEFAULT,
               liveliness_lease_duration=unset, avoid_ros_namespace_conventions=False)


class BagError(RuntimeError):
    """A bag that cannot be read or written; the message names the bag and the problem."""


class BagWriter:
    """Writes one bag, marked in its metadata as ours (so --overwrite may later replace it and nothing
    else), holding the output's lock until closed or aborted."""

    COMMIT_EVERY = 64  # messages between SQLite commits (a replayed frame is about 7 messages)

    def __init__(self, path, storage: str = "mcap", overwrite: bool = False, inputs=()):
        self.path = Path(path)
        if storage not in STORAGES:
            raise ValueError(f"storage '{storage}' is not one of {', '.join(STORAGES)}")
        check_outputs({"output bag": self.path}, inputs, overwrite, bags={"output bag"})
        self.overwrite = overwrite
        self.lock = OutputLock(self.path).acquire()
        try:
            # the bag is written as <name>.partial/<name> (its storage file takes the folder's name) and
            # moved to <name> when complete
            self.partial = self.path.with_name(self.path.name + ".partial")
            if self.partial.exists():  # the leftover of an interrupted run (the lock says none is running)
                leftover = [p.name for p in self.partial.iterdir()]
                if leftover not in ([], [self.path.name]):
                    raise FileExistsError(f"'{self.partial}' exists and is not an interrupted bag of ours "
                                          f"(it holds {', '.join(sorted(leftover)[:3])}); move it away")
                shutil.rmtree(self.partial)
            self.partial.mkdir(parents=True)
            self.writer = Writer(self.partial / self.path.name, version=8, storage_plugin=STORAGES[storage])
            self.writer.set_custom_data(WRITTEN_BY_KEY, WRITTEN_BY)
            self.writer.open()
        except BaseException:
            self.lock.release()
            raise
        self.connections: Dict[str, object] = {}
        self.store = typestore()
        self.count = 0

    def write(self, topic: str, msg, stamp_ns: int, qos: Optional[TopicQos] = None) -> None:
        """qos: the offer recorded for the topic at its first message (none: `ros2 bag play` offers
        reliable, volatile)."""
        self.write_raw(topic, msg.__msgtype__, self.store.serialize_cdr(msg, msg.__msgtype__), stamp_ns,
                       [rosbag_qos(qos)] if qos else ())

    def write_raw(self, topic: str, msgtype: str, cdr: bytes, stamp_ns: int, offered_qos: Sequence[Qos] = ()) -> None:
        """An already serialized message (CDR) of a type the typestore knows; offered_qos: the
        publishers' offers recorded for the topic at its first message, as rosbags reads them."""
        conn = self.connections.get(topic)
        if conn is None:
            conn = self.writer.add_connection(topic, msgtype, typestore=self.store, offered_qos_profiles=offered_qos)
            self.connections[topic] = conn
        self.writer.write(conn, int(stamp_ns), cdr)
        self.count += 1
        if self.count % self.COMMIT_EVERY == 0 and hasattr(self.writer.storage, "conn"):
            # rosbags' SQLite writer commits only at close: a run killed before then would leave a
            # .db3 whose journal rolls every row back. Committing as we go keeps what was written
            # recoverable (`panoptic-node recover`); MCAP files need nothing, their chunks stand alone
            self.writer.storage.conn.commit()

    def close(self) -> Path:
        try:
            self.writer.close()
            for mcap in (self.partial / self.path.name).glob("*.mcap"):
                fill_chunk_crcs(mcap)
            if self.path.exists():  # checked again: the folder may have changed while we wrote
                check_outputs({"output bag": self.path}, (), self.overwrite, bags={"output bag"})
                shutil.rmtree(self.path)
            (self.partial / self.path.name).rename(self.path)
            self.partial.rmdir()
        finally:
            self.lock.release()
        return self.path

    def abort(self) -> None:
        """Flush what was written but keep the `.partial` name: visible, never mistaken for complete."""
        try:
            self.writer.close()
        except Exception:  # the storage may already be broken; the partial folder stays either way
            pass
        finally:
            self.lock.release()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def fill_chunk_crcs(path) -> int:
    """Writes each chunk's CRC-32 into a finished MCAP file, in place (rosbags writes 0, "no CRC", so a
    flipped byte inside a chunk went unnoticed; readers check a CRC that is there, rosbags and
    `recover` included). Chunk record: opcode, length, start / end times, uncompressed size, CRC,
    compression, compressed size, records. Returns the number of chunks."""
    import mmap
    import struct
    from binascii import crc32

    from rosbags.rosbag2.storage_mcap import decompress

    n = 0
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as data:
        pos = 8  # after the magic
        while pos + 9 <= len(data) - 8:
            op, length = data[pos], struct.unpack_from("<Q", data, pos + 1)[0]
            if op == 0x06:
                c = pos + 9
                size = struct.unpack_from("<Q", data, c + 16)[0]
                (k,) = struct.unpack_from("<I", data, c + 28)
                compression = bytes(data[c + 32:c + 32 + k]).decode()
                (m,) = struct.unpack_from("<Q", data, c + 32 + k)
                records = bytes(data[c + 40 + k:c + 40 + k + m])
                struct.pack_into("<I", data, c + 24, crc32(decompress(records, compression, size, 0)))
                n += 1
            elif op == 0x02:  # the footer: the end
                break
            pos += 9 + length
        data.flush()
    return n


# --- message construction (rosbags dataclasses) --------------------------------------------------

def header(stamp_ns: int, frame_id: str):
    Time = msg_class("builtin_interfaces/msg/Time")
    return msg_class("std_msgs/msg/Header")(stamp=Time(sec=int(stamp_ns // 1_000_000_000),
                                                       nanosec=int(stamp_ns % 1_000_000_000)), frame_id=frame_id)


def image_msg(hdr, fields: Dict[str, object]):
    return msg_class("sensor_msgs/msg/Image")(header=hdr, **fields)


def compressed_msg(hdr, fmt: str, data: bytes):
    import numpy as np
    return msg_class("sensor_msgs/msg/CompressedImage")(header=hdr, format=fmt, data=np.frombuffer(data, np.uint8))


def camera_info_msg(hdr, width: int, height: int, k=None, p=None, d=None):
    import numpy as np
    k = np.asarray(k if k is not None else [0.0] * 9, np.float64)
    p = np.asarray(p if p is not None else [0.0] * 12, np.float64)
    Roi = msg_class("sensor_msgs/msg/RegionOfInterest")
    return msg_class("sensor_msgs/msg/CameraInfo")(
        header=hdr, height=height, width=width, distortion_model="plumb_bob",
        d=np.asarray(d if d is not None else [0.0] * 5, np.float64), k=k,
        r=np.eye(3).reshape(-1), p=p, binning_x=0, binning_y=0,
        roi=Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def detection_array_msg(hdr, dets):
    import numpy as np
    V = msg_class
    pose = V("geometry_msgs/msg/PoseWithCovariance")(
        pose=V("geometry_msgs/msg/Pose")(position=V("geometry_msgs/msg/Point")(x=0.0, y=0.0, z=0.0),
                                          orientation=V("geometry_msgs/msg/Quaternion")(x=0.0, y=0.0, z=0.0, w=1.0)),
        covariance=np.zeros(36))
    out = []
    for d in dets:
        hyp = V("vision_msgs/msg/ObjectHypothesisWithPose")(
            hypothesis=V("vision_msgs/msg/ObjectHypothesis")(class_id=d["class_id"], score=d["score"]), pose=pose)
        bbox = V("vision_msgs/msg/BoundingBox2D")(
            center=V("vision_msgs/msg/Pose2D")(position=V("vision_msgs/msg/Point2D")(x=d["center_x"], y=d["center_y"]),
                                               theta=0.0),
            size_x=d["size_x"], size_y=d["size_y"])
        out.append(V("vision_msgs/msg/Detection2D")(header=hdr, results=[hyp], bbox=bbox, id=d["id"]))
    return V("vision_msgs/msg/Detection2DArray")(header=hdr, detections=out)


def label_info_msg(hdr, classes, threshold: float):
    V = msg_class
    return V("vision_msgs/msg/LabelInfo")(
        header=hdr, class_map=[V("vision_msgs/msg/VisionClass")(class_id=c["class_id"], class_name=c["class_name"])
                               for c in classes], threshold=float(threshold))


def diagnostic_msg(hdr, name: str, hardware_id: str, level: int, message: str, values: Dict[str, str]):
    V = msg_class
    status = V("diagnostic_msgs/msg/DiagnosticStatus")(
        level=level, name=name, message=message, hardware_id=hardware_id,
        values=[V("diagnostic_msgs/msg/KeyValue")(key=k, value=str(v)) for k, v in values.items()])
    return V("diagnostic_msgs/msg/DiagnosticArray")(header=hdr, status=[status])
