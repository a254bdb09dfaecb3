"""Bags: message conversions for every encoding, round trip convert -> replay -> read back on both
storages, converters on fixtures in the datasets' on-disk formats, and every kind of bad input."""
import io
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image

from panoptic_node.bag.convert import DatasetFrame, cityscapes_panoptic, convert, write_bag
from panoptic_node.bag.reader import BagReader
from panoptic_node.bag.writer import BagError, BagWriter, compressed_msg, header, image_msg
from panoptic_node.messages import FrameError, compressed_to_rgb, image_array, image_fields, image_to_rgb, stamp_ns
from panoptic_node.replay import replay
from panoptic_node.taxonomy import get_mapping

from conftest import camvid_or_skip, png_declaring, png_with_a_broken_chunk, write_rgbd_bag


def raw_image(rgb, encoding, pad=0):
    conv = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]),
            "bgra8": np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 7, np.uint8)]), "mono8": rgb[..., :1]}[encoding]
    h, w, c = conv.shape
    step = w * c + pad
    data = np.zeros((h, step), np.uint8)
    data[:, : w * c] = conv.reshape(h, w * c)
    return SimpleNamespace(encoding=encoding, height=h, width=w, step=step, is_bigendian=0, data=data.ravel())


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
@pytest.mark.parametrize("pad", [0, 3])
def test_image_to_rgb_every_encoding(rng, encoding, pad):
    rgb = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
    out = image_to_rgb(raw_image(rgb, encoding, pad))
    expected = np.repeat(rgb[..., :1], 3, 2) if encoding == "mono8" else rgb
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("encoding", ["rgb16", "bgr16", "rgba16", "bgra16", "mono16"])
@pytest.mark.parametrize("bigendian", [0, 1])
def test_16_bit_camera_frames_keep_their_top_byte_in_either_byte_order(rng, encoding, bigendian):
    """As cv_bridge turns them into 8-bit images; a big-endian message is read as big-endian."""
    rgb16 = rng.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    planes = {"rgb16": rgb16, "bgr16": rgb16[..., ::-1], "rgba16": np.dstack([rgb16, rgb16[..., :1]]),
              "bgra16": np.dstack([rgb16[..., ::-1], rgb16[..., :1]]), "mono16": rgb16[..., :1]}[encoding]
    h, w, c = planes.shape
    data = planes.astype(">u2" if bigendian else "<u2").tobytes()
    msg = SimpleNamespace(encoding=encoding, height=h, width=w, step=w * c * 2, is_bigendian=bigendian, data=data)
    top = (rgb16 // 256).astype(np.uint8)
    expected = np.repeat(top[..., :1], 3, 2) if encoding == "mono16" else top
    np.testing.assert_array_equal(image_to_rgb(msg), expected)


def test_a_16_bit_grey_png_frame_keeps_its_top_byte_as_its_raw_frame_does(rng):
    """A mono16 camera through image_transport's png compression: the compressed frame decodes to the
    same 8-bit image as the raw one (PIL's own conversion clipped it white)."""
    grey = rng.integers(0, 65536, (6, 8), dtype=np.uint16)
    raw = SimpleNamespace(encoding="mono16", height=6, width=8, step=16, is_bigendian=0, data=grey.astype("<u2").tobytes())
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    png = SimpleNamespace(format="mono16; png compressed mono16", data=buf.getvalue())
    np.testing.assert_array_equal(compressed_to_rgb(png), image_to_rgb(raw))
    np.testing.assert_array_equal(compressed_to_rgb(png)[..., 0], grey >> 8)


def bilinear_demosaic_directly(raw, pattern):
    """Each pixel: its own colour as is; another colour the mean of that colour's sites among its four
    neighbours, or if none, among its four diagonal neighbours (the frame mirrored at its border)."""
    h, w = raw.shape
    colour_at = lambda y, x: pattern[2 * (y % 2) + (x % 2)]  # noqa: E731
    mirror = lambda i, n: -i if i < 0 else (2 * (n - 1) - i if i >= n else i)  # noqa: E731
    out = np.zeros((h, w, 3), np.uint8)
    for y in range(h):
        for x in range(w):
            for ci, c in enumerate("rgb"):
                if colour_at(y, x) == c:
                    out[y, x, ci] = raw[y, x]
                    continue
                for ring in (((-1, 0), (1, 0), (0, -1), (0, 1)), ((-1, -1), (-1, 1), (1, -1), (1, 1))):
                    values = [float(raw[mirror(y + dy, h), mirror(x + dx, w)]) for dy, dx in ring
                              if colour_at(mirror(y + dy, h), mirror(x + dx, w)) == c]
                    if values:
                        out[y, x, ci] = np.round(np.mean(values))
                        break
    return out


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_frames_are_demosaiced_bilinearly(rng, pattern):
    raw = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    msg = SimpleNamespace(encoding=f"bayer_{pattern}8", height=6, width=8, step=8 + 2, is_bigendian=0,
                          data=np.hstack([raw, np.zeros((6, 2), np.uint8)]).tobytes())  # with row padding
    np.testing.assert_array_equal(image_to_rgb(msg), bilinear_demosaic_directly(raw, pattern))


@pytest.mark.parametrize("encoding, y_first", [("yuv422", False), ("uyvy", False), ("yuv422_yuy2", True),
                                               ("yuyv", True)])
def test_yuv422_frames_give_the_bt601_colours(encoding, y_first):
    """Reference values of ITU-R BT.601 (studio range): white, black, and the primaries' Y, U, V."""
    colours = {(255, 255, 255): (235, 128, 128), (0, 0, 0): (16, 128, 128), (255, 0, 0): (81, 90, 240),
               (0, 255, 0): (145, 54, 34), (0, 0, 255): (41, 240, 110)}
    pairs = []
    for y, u, v in colours.values():  # two pixels of one colour each
        pairs += [y, u, y, v] if y_first else [u, y, v, y]
    w = 2 * len(colours)
    msg = SimpleNamespace(encoding=encoding, height=1, width=w, step=2 * w, is_bigendian=0,
                          data=np.array(pairs, np.uint8).tobytes())
    got = image_to_rgb(msg)[0].astype(int)
    expected = np.repeat(np.array(list(colours), int), 2, axis=0)
    assert np.abs(got - expected).max() <= 2, (got, expected)
    with pytest.raises(FrameError, match="expected an even width"):
        image_to_rgb(SimpleNamespace(encoding=encoding, height=1, width=3, step=6, is_bigendian=0, data=bytes(6)))


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_compressed(rng, fmt):
    rgb = np.full((16, 16, 3), 120, np.uint8)
    rgb[4:12, 4:12] = (20, 200, 90)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt.upper())
    out = compressed_to_rgb(SimpleNamespace(format=fmt, data=np.frombuffer(buf.getvalue(), np.uint8)))
    assert out.shape == (16, 16, 3)
    err = np.abs(out.astype(int) - rgb)
    assert err.max() == 0 if fmt == "png" else err.mean() < 8  # jpeg is lossy


@pytest.mark.parametrize("msg,expected", [
    (SimpleNamespace(encoding="32FC1", height=2, width=2, step=4, is_bigendian=0, data=np.zeros(8, np.uint8)),
     "unsupported encoding '32FC1'"),
    # Pillow's DecompressionBombError escaped as an unexpected error (in the node, it ended the worker thread)
    (SimpleNamespace(format="png", data=png_declaring(30000, 30000)), "declares more pixels than any camera's"),
    (SimpleNamespace(format="png", data=png_declaring(9000, 9000)), "declares 9000x9000 pixels, more than any"),
    # a PNG whose second data chunk has a damaged type: Pillow raises SyntaxError ("broken PNG file"), which
    # escaped as an unexpected error (found by mutating frames many bytes at a time)
    (SimpleNamespace(format="png", data=png_with_a_broken_chunk()), r"does not decode as 'png' \(SyntaxError: broken PNG"),
    (SimpleNamespace(encoding="rgb8", height=2, width=2, step=6, is_bigendian=0, data=np.zeros(11, np.uint8)),
     "data length 11 != step x height"),
    (SimpleNamespace(encoding="rgb8", height=0, width=2, step=6, is_bigendian=0, data=np.zeros(0, np.uint8)),
     "zero-size"),
    (SimpleNamespace(encoding="rgb8", height=2, width=4, step=6, is_bigendian=0, data=np.zeros(12, np.uint8)),
     "step 6 is smaller"),
    # Pillow's words named a BytesIO object at an address; the bytes' own start says more
    (SimpleNamespace(format="jpeg", data=np.frombuffer(b"\xff\xd8garbage", np.uint8)),
     r"^compressed frame does not decode as 'jpeg': its 9 bytes are no image file Pillow knows \(they start "
     r"ff d8 67 61 72 62 61 67\)$"),
    (SimpleNamespace(format="jpeg", data=np.zeros(0, np.uint8)), r"^compressed frame holds no data \(0 bytes\)"),
    # image_transport's depth plugin: a 12-byte header, then a 16-bit PNG of depths, not a camera frame
    (SimpleNamespace(format="16UC1; compressedDepth png", data=np.zeros(40, np.uint8)),
     "is a depth image \\(image_transport's compressedDepth\\); expected a camera frame in jpeg or png"),
    (SimpleNamespace(format="tiff", data=np.zeros(4, np.uint8)), "expected jpeg or png"),
])
def test_bad_frames(msg, expected):
    fn = compressed_to_rgb if hasattr(msg, "format") else image_to_rgb
    with pytest.raises(FrameError, match=expected):
        fn(msg)


@pytest.mark.parametrize("encoding,dtype", [("mono8", np.uint8), ("mono16", np.uint16), ("32SC1", np.int32)])
def test_output_image_round_trip(rng, encoding, dtype):
    a = rng.integers(-5 if dtype == np.int32 else 0, 60000 if dtype != np.uint8 else 255, (4, 6)).astype(dtype)
    f = image_fields(a, encoding)
    assert f["step"] == 6 * np.dtype(dtype).itemsize and f["is_bigendian"] == 0
    np.testing.assert_array_equal(image_array(SimpleNamespace(**f)), a)


def camera_bag(path, storage, frames, compressed=False, topic="/front/image_raw"):
    """frames: list of (stamp, rgb or a prepared raw namespace)."""
    with BagWriter(path, storage) as w:
        for stamp, frame in frames:
            hdr = header(stamp, "front_optical")
            if compressed:
                buf = io.BytesIO()
                Image.fromarray(frame).save(buf, format="PNG")
                w.write(topic.replace("image_raw", "image_raw/compressed"), compressed_msg(hdr, "png", buf.getvalue()),
                        stamp)
            elif isinstance(frame, SimpleNamespace):
                w.write(topic, image_msg(hdr, {k: getattr(frame, k) for k in
                                               ("height", "width", "encoding", "is_bigendian", "step", "data")}), stamp)
            else:
                w.write(topic, image_msg(hdr, image_fields(frame, "rgb8")), stamp)
    return path


def decoded_with_mcap_ros2(bag_dir, storage):
    """Every message of an output bag decoded by Foxglove's mcap_ros2 (not rosbags), from the message
    definitions stored in the bag itself, with each topic's type and recorded QoS offer:
    {topic: (type, offered QoS list, [messages])}."""
    import sqlite3
    from mcap.reader import make_reader
    from mcap.records import Schema
    from mcap_ros2.decoder import DecoderFactory

    factory = DecoderFactory()
    (path,) = list(bag_dir.glob("*.mcap" if storage == "mcap" else "*.db3"))
    out = {}
    if storage == "mcap":
        with open(path, "rb") as f:
            reader = make_reader(f, decoder_factories=[factory])
            assert reader.get_header().profile == "ros2"  # what rosbag2's MCAP plugin expects
            summary = reader.get_summary()
            for c in summary.channels.values():
                schema = summary.schemas[c.schema_id]
                assert (schema.encoding, c.message_encoding) == ("ros2msg", "cdr")
                out[c.topic] = (schema.name, yaml.safe_load(c.metadata.get("offered_qos_profiles") or "[]"), [])
            for _, channel, _, msg in reader.iter_decoded_messages():
                out[channel.topic][2].append(msg)
        return out
    db = sqlite3.connect(path)
    definitions = {t: (enc, text) for t, enc, text in
                   db.execute("SELECT topic_type, encoding, encoded_message_definition FROM message_definitions")}
    decoders = {}
    for tid, name, msgtype, fmt, qos in db.execute(
            "SELECT id, name, type, serialization_format, offered_qos_profiles FROM topics"):
        assert fmt == "cdr" and definitions[msgtype][0] == "ros2msg"
        decoders[tid] = factory.decoder_for("cdr", Schema(id=tid, name=msgtype, encoding="ros2msg", data=definitions[msgtype][1].encode()))
        out[name] = (msgtype, yaml.safe_load(qos or "[]"), [])
    names = {tid: name for tid, name in db.execute("SELECT id, name FROM topics")}
    for tid, data in db.execute("SELECT topic_id, data FROM messages ORDER BY timestamp, id"):
        out[names[tid]][2].append(decoders[tid](data))
    db.close()
    return out


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_output_bag_decodes_with_an_independent_reader(tiny_pipeline, tmp_path, rng, storage):
    """What a ROS 2 tool sees in our output bags: every message decodes with another implementation of
    CDR and of the .msg definitions (mcap_ros2, used by Foxglove) from the definitions the bag stores;
    types are the live node's; each topic records the QoS the live node offers, label_info latched
    (transient local), so `ros2 bag play` offers it to late subscribers; metadata.yaml is rosbag2's
    version 8 with the message counts of the storage."""
    stamps = [1_700_000_000_000_000_000 + i * 50_000_000 for i in range(3)]
    bag = camera_bag(tmp_path / "in", storage, [(s, rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for s in stamps])
    replay(tiny_pipeline, bag, tmp_path / "out", storage=storage)
    got = decoded_with_mcap_ros2(tmp_path / "out", storage)
    ns = "/front/panoptic"
    assert {t: v[0] for t, v in got.items()} == {
        f"{ns}/semantic": "sensor_msgs/msg/Image", f"{ns}/instances": "sensor_msgs/msg/Image",
        f"{ns}/panoptic": "sensor_msgs/msg/Image", f"{ns}/overlay": "sensor_msgs/msg/Image",
        f"{ns}/detections": "vision_msgs/msg/Detection2DArray", f"{ns}/label_info": "vision_msgs/msg/LabelInfo",
        "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray"}
    for name, encoding, size in (("semantic", "mono8", 1), ("instances", "mono16", 2), ("panoptic", "32SC1", 4),
                                 ("overlay", "bgr8", 3)):
        msgs = got[f"{ns}/{name}"][2]
        assert [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in msgs] == stamps
        for m in msgs:
            assert (m.header.frame_id, m.encoding, m.height, m.width, m.step) == ("front_optical", encoding, 48, 64, 64 * size)
            assert len(m.data) == m.step * m.height and m.is_bigendian == 0
    for det, inst in zip(got[f"{ns}/detections"][2], got[f"{ns}/instances"][2]):
        ids = np.unique(np.frombuffer(bytes(inst.data), np.uint16))
        assert sorted(int(d.id) for d in det.detections) == sorted(set(ids.tolist()) - {0})
        assert all(d.results and d.bbox.size_x > 0 for d in det.detections)
    (info,) = got[f"{ns}/label_info"][2]
    assert [c.class_name for c in info.class_map] == [c["class_name"] for c in
                                                       __import__("panoptic_node.messages", fromlist=["label_info"])
                                                       .label_info(tiny_pipeline.taxonomy)]
    (diag,) = got["/diagnostics"][2]
    assert {kv.key: kv.value for kv in diag.status[0].values}["frames"] == "3"
    # the offers recorded, as rosbag2 reads them (reliability 1 reliable / 2 best effort; durability
    # 1 transient local / 2 volatile)
    qos = {t: [(q["reliability"], q["durability"]) for q in v[1]] for t, v in got.items()}
    assert qos[f"{ns}/label_info"] == [(1, 1)]
    assert qos[f"{ns}/semantic"] == qos[f"{ns}/detections"] == qos["/diagnostics"] == [(1, 2)]
    assert qos[f"{ns}/overlay"] == [(2, 2)]
    meta = yaml.safe_load((tmp_path / "out" / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 8 and meta["storage_identifier"] == storage
    assert {t["topic_metadata"]["name"]: t["message_count"] for t in meta["topics_with_message_count"]} == \
        {t: len(v[2]) for t, v in got.items()}
    assert all(yaml.safe_load(t["topic_metadata"]["offered_qos_profiles"] or "[]") == got[t["topic_metadata"]["name"]][1]
               for t in meta["topics_with_message_count"])


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("compressed", [False, True])
def test_replay_round_trip(tiny_pipeline, tmp_path, rng, storage, compressed):
    stamps = [1_700_000_000_000_000_000 + i * 50_000_000 for i in range(3)]
    frames = [(s, rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for s in stamps]
    bag = camera_bag(tmp_path / "in", storage, frames, compressed)
    out = tmp_path / "out"
    summary = replay(tiny_pipeline, bag, out, storage=storage, video=tmp_path / "v.mp4",
                     metrics_path=tmp_path / "m.json")
    assert summary.frames == 3 and summary.undecodable == 0
    assert (tmp_path / "v.mp4").stat().st_size > 0 and json.loads((tmp_path / "m.json").read_text())["frames"] == 3
    with BagReader(out) as r:
        ns = "/front"  # as the node publishes it, whichever transport came in
        expected = {f"{ns}/panoptic/semantic": "sensor_msgs/msg/Image", f"{ns}/panoptic/instances": "sensor_msgs/msg/Image",
                    f"{ns}/panoptic/panoptic": "sensor_msgs/msg/Image", f"{ns}/panoptic/overlay": "sensor_msgs/msg/Image",
                    f"{ns}/panoptic/detections": "vision_msgs/msg/Detection2DArray",
                    f"{ns}/panoptic/label_info": "vision_msgs/msg/LabelInfo",
                    "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray"}
        assert r.topics == expected
        msgs = list(r.messages(list(expected)))
    by_topic = {}
    for m in msgs:
        by_topic.setdefault(m.topic, []).append(m)
    encodings = {"semantic": "mono8", "instances": "mono16", "panoptic": "32SC1", "overlay": "bgr8"}
    for name, enc in encodings.items():
        got = by_topic[f"{ns}/panoptic/{name}"]
        assert [stamp_ns(m.msg.header) for m in got] == stamps
        assert all(m.msg.header.frame_id == "front_optical" for m in got)
        assert all((m.msg.encoding, m.msg.height, m.msg.width) == (enc, 48, 64) for m in got)
    for det, inst in zip(by_topic[f"{ns}/panoptic/detections"], by_topic[f"{ns}/panoptic/instances"]):
        assert stamp_ns(det.msg.header) == stamp_ns(inst.msg.header)
        instance = image_array(inst.msg)
        assert sorted(int(d.id) for d in det.msg.detections) == sorted(set(np.unique(instance)) - {0})
        for d in det.msg.detections:
            ys, xs = np.nonzero(instance == int(d.id))
            assert d.bbox.size_x == xs.max() + 1 - xs.min() and d.bbox.center.position.x == (xs.min() + xs.max() + 1) / 2
    info = by_topic[f"{ns}/panoptic/label_info"]
    assert len(info) == 1 and [c.class_name for c in info[0].msg.class_map][:2] == ["sky", "building"]


def test_frames_whose_stamp_does_not_tell_them_apart_are_not_scored(tiny_pipeline, tmp_path, rng):
    """Ground truth is paired by header stamp: frames a driver left stamped 0, or two frames with one stamp,
    were paired with whichever ground truth came last (silently wrong scores). They are replayed, not scored,
    and said; the frames with stamps of their own are scored as before."""
    def bag(path, events):  # ("frame" | "gt", header stamp), in the bag's order
        with BagWriter(path) as w:
            for i, (kind, stamp) in enumerate(events):
                if kind == "frame":
                    rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
                    w.write("/camera/image_raw", image_msg(header(stamp, "cam"), image_fields(rgb, "rgb8")), 100 + i)
                else:
                    pan = np.full((48, 64), 3, np.int32)
                    w.write("/ground_truth/panoptic", image_msg(header(stamp, "cam"), image_fields(pan, "32SC1")),
                            100 + i)
        return path
    # a car's recording: each frame's maps come after the next frame (the node's latency)
    unstamped = replay(tiny_pipeline, bag(tmp_path / "unstamped", [("frame", 0), ("frame", 0), ("gt", 0),
                                                                    ("frame", 0), ("gt", 0), ("gt", 0)]),
                       log=lambda *_: None)
    assert (unstamped.frames, unstamped.evaluated, unstamped.stamps_unmatchable) == (3, 0, 3)
    assert "3 frames not scored: stamped 0 (a driver that leaves header.stamp unset) or with another frame's " \
           "stamp" in unstamped.format()
    shared = replay(tiny_pipeline, bag(tmp_path / "shared", [("frame", 5), ("frame", 7), ("gt", 5), ("frame", 7),
                                                             ("gt", 7), ("frame", 9), ("gt", 7), ("gt", 9)]),
                    log=lambda *_: None)
    assert (shared.frames, shared.evaluated, shared.stamps_unmatchable) == (4, 2, 2)
    assert shared.to_dict()["frames_with_unmatchable_stamps"] == 2



CALIBRATION = [50.0, 0.0, 32.0, 0.0, 50.0, 24.0, 0.0, 0.0, 1.0]  # a 64x48 camera's K


def calibrated_bag(path, rng, frames: int, ground_truth: bool = False):
    """A camera at 20 Hz with its camera_info before each frame, frame i calibrated with K + i (so each
    frame's own calibration can be told apart); with ground_truth, a random panoptic map after each frame.
    Returns the frames' stamps."""
    from panoptic_node.bag.writer import camera_info_msg
    stamps = [1_700_000_000_000_000_000 + i * 50_000_000 for i in range(frames)]
    with BagWriter(path) as w:
        for i, stamp in enumerate(stamps):
            hdr = header(stamp, "front_optical")
            w.write("/front/camera_info", camera_info_msg(hdr, 64, 48, [v + i for v in CALIBRATION]), stamp)
            w.write("/front/image_raw", image_msg(hdr, image_fields(rng.integers(0, 255, (48, 64, 3), np.uint8),
                                                                   "rgb8")), stamp)
            if ground_truth:
                pan = rng.integers(0, 4, (48, 64)).astype(np.int32) * 1000
                w.write("/ground_truth/panoptic", image_msg(hdr, image_fields(pan, "32SC1")), stamp + 1)
    return stamps

def test_inference_workers_replay_a_bag_as_one_pipeline_does(tiny_pipeline, tiny_model_yaml, tmp_path, rng):
    """replay with more pipelines (the node's inference_workers, --inference-workers): frames inferred at once,
    handled in the bag's order: the same summary, scores, output bag (tracked ids, each frame's own
    calibration) as one pipeline gives. The command refuses a count it cannot run, in one line."""
    from panoptic_node.cli import main
    from panoptic_node.inference.pipeline import Pipeline
    calibrated_bag(tmp_path / "in", rng, 9, ground_truth=True)
    one = replay(tiny_pipeline, tmp_path / "in", tmp_path / "one", video=tmp_path / "one.mp4", log=lambda *_: None)
    two = replay(tiny_pipeline, tmp_path / "in", tmp_path / "two", video=tmp_path / "two.mp4", log=lambda *_: None,
                 more_pipelines=[Pipeline.from_config(tiny_model_yaml)])
    assert (two.frames, two.evaluated) == (one.frames, one.evaluated) == (9, 9)
    assert json.dumps(two.metrics, sort_keys=True) == json.dumps(one.metrics, sort_keys=True)  # NaN: no such class
    assert (tmp_path / "two.mp4").stat().st_size > 0

    def written(path):
        with BagReader(path) as r:
            topics = [t for t in r.topics if t != "/diagnostics"]
            return [(m.topic, m.stamp_ns, bytes(m.msg.data) if hasattr(m.msg, "data") else str(m.msg))
                    for m in r.messages(topics)]
    assert written(tmp_path / "two") == written(tmp_path / "one")
    capped = replay(tiny_pipeline, tmp_path / "in", max_frames=4, log=lambda *_: None,
                    more_pipelines=[Pipeline.from_config(tiny_model_yaml)])
    assert capped.frames == 4  # frames in flight count towards --max-frames

    class Slow(Pipeline):  # frames still in flight when the ground truth after them is read
        def __call__(self, rgb):
            time.sleep(0.05)
            return super().__call__(rgb)

    slow = [Pipeline.from_config(tiny_model_yaml) for _ in range(2)]
    for pipeline in slow:
        pipeline.__class__ = Slow
    with BagWriter(tmp_path / "shared") as w:  # two frames share stamp 7: neither is scored, as with one pipeline
        events = [("frame", 5), ("frame", 7), ("gt", 5), ("frame", 7), ("gt", 7), ("frame", 9), ("gt", 7), ("gt", 9)]
        for i, (kind, stamp) in enumerate(events):
            data = image_fields(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "rgb8") if kind == "frame" else \
                image_fields(np.full((48, 64), 3, np.int32), "32SC1")
            w.write("/camera/image_raw" if kind == "frame" else "/ground_truth/panoptic",
                    image_msg(header(stamp, "cam"), data), 100 + i)
    counts = [(r.frames, r.evaluated, r.stamps_unmatchable, r.frames_without_gt, r.gt_unmatched) for r in
              (replay(tiny_pipeline, tmp_path / "shared", log=lambda *_: None),
               replay(slow[0], tmp_path / "shared", log=lambda *_: None, more_pipelines=slow[1:]))]
    assert counts[1] == counts[0] == (4, 2, 2, 0, 0)
    base = ["replay", str(tmp_path / "in"), "--model", str(tiny_model_yaml), "--backend", "torch"]
    assert main(base + ["--inference-workers", "2", "--threads", "2", "--metrics", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["metrics"]["miou"] == pytest.approx(one.metrics["miou"])
    assert main(base + ["--inference-workers", "0"]) == 2
    assert main(base + ["--inference-workers", "3", "--threads", "2"]) == 2

def test_the_cameras_calibration_is_written_with_its_maps(tiny_pipeline, tmp_path, rng, capsys):
    """A bag with <ns>/camera_info beside the camera (what convert writes): the replay writes the node's
    <ns>/panoptic/camera_info, the camera's newest calibration stamped as each frame's maps; a bag without one
    gets no such topic (test_replay_round_trip). A calibration of another size is said once, as the node's
    /diagnostics say it."""
    from panoptic_node.bag.writer import camera_info_msg
    stamps = calibrated_bag(tmp_path / "in", rng, 3)
    k = CALIBRATION
    replay(tiny_pipeline, tmp_path / "in", tmp_path / "out", log=lambda *_: None)
    with BagReader(tmp_path / "out") as r:
        assert r.topics["/front/panoptic/camera_info"] == "sensor_msgs/msg/CameraInfo"
        infos = [m.msg for m in r.messages(["/front/panoptic/camera_info"])]
    assert [stamp_ns(i.header) for i in infos] == stamps and {i.header.frame_id for i in infos} == {"front_optical"}
    assert [list(i.k) for i in infos] == [[v + n for v in k] for n in range(3)]  # each frame's newest
    assert {(i.width, i.height, i.distortion_model) for i in infos} == {(64, 48, "plumb_bob")}
    assert "camera_info describes" not in capsys.readouterr().out
    with BagWriter(tmp_path / "full_size") as w:  # calibrated at 128x96, the camera sends 64x48
        for stamp in stamps:
            hdr = header(stamp, "front_optical")
            w.write("/front/camera_info", camera_info_msg(hdr, 128, 96, k), stamp)
            w.write("/front/image_raw", image_msg(hdr, image_fields(rng.integers(0, 255, (48, 64, 3), np.uint8),
                                                                   "rgb8")), stamp)
    replay(tiny_pipeline, tmp_path / "full_size", tmp_path / "out2", log=lambda *_: None)
    said = [line for line in capsys.readouterr().out.splitlines() if "camera_info describes" in line]
    assert said == ["warning: /front/image_raw: camera_info describes 128x96 frames (after its roi and binning), "
                    "the frames are 64x48: the maps go out with a calibration that does not fit them (the driver's "
                    "calibration file is for another resolution?)"]


def test_bad_frames_are_counted_and_skipped(tiny_pipeline, tmp_path, rng):
    good = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    bigger = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    bad_enc = SimpleNamespace(encoding="32FC1", height=48, width=64, step=128, is_bigendian=0,
                              data=np.zeros(48 * 128, np.uint8))
    short = SimpleNamespace(encoding="rgb8", height=48, width=64, step=192, is_bigendian=0,
                            data=np.zeros(100, np.uint8))
    frames = [(1, good), (2, bad_enc), (3, short), (4, bigger), (5, good)]
    bag = camera_bag(tmp_path / "in", "mcap", frames)
    out = tmp_path / "out"
    summary = replay(tiny_pipeline, bag, out)
    assert summary.frames == 3 and summary.undecodable == 2
    # a video asked for when no frame decodes: none written, and said
    lines = []
    only_bad = camera_bag(tmp_path / "bad", "mcap", [(2, bad_enc), (3, short)])
    assert replay(tiny_pipeline, only_bad, video=tmp_path / "v.mp4", image_topic="/front/image_raw",
                  log=lines.append).frames == 0
    assert lines == ["no video written: no frame of /front/image_raw was replayed"] and not list(tmp_path.glob("v*"))
    assert "32FC1" in summary.errors[0] and "data length" in summary.errors[1]
    with BagReader(out) as r:
        sizes = [(m.msg.height, m.msg.width) for m in r.messages(["/front/panoptic/semantic"])]
    assert sizes == [(48, 64), (60, 80), (48, 64)]  # frames may change size mid-bag


def test_a_panorama_in_a_bag_is_named_once_and_still_replayed(tiny_pipeline, tmp_path, rng, capsys):
    wide = rng.integers(0, 255, (24, 400, 3), dtype=np.uint8)  # the tiny model's max_size leaves it a few px high
    bag = camera_bag(tmp_path / "in", "mcap", [(1, wide), (2, wide), (3, rng.integers(0, 255, (48, 64, 3), np.uint8))])
    summary = replay(tiny_pipeline, bag, tmp_path / "out")
    said = capsys.readouterr()
    assert summary.frames == 3
    assert (said.out + said.err).count("warning: a 400x24 frame runs at") == 1


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_start_and_duration_replay_a_part_of_a_long_drive(tiny_pipeline, tiny_model_yaml, tmp_path, rng, storage,
                                                          capsys):
    """--start / --duration count seconds after the bag's first message (receive time), as ros2 bag play's
    --start-offset does: ten frames 1 s apart, seconds 3 to 6 (stop exclusive) are frames 3, 4, 5."""
    from panoptic_node.cli import main
    t0 = 1_700_000_000_000_000_000
    rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    bag = camera_bag(tmp_path / "drive", storage, [(t0 + i * 1_000_000_000, rgb) for i in range(10)])
    summary = replay(tiny_pipeline, bag, tmp_path / "part", start_s=3.0, duration_s=3.0, log=print)
    assert summary.frames == 3
    assert "replaying 3 s to 6 s of the bag's 9.000 s" in capsys.readouterr().out
    with BagReader(tmp_path / "part") as r:
        assert [m.stamp_ns for m in r.messages(["/front/panoptic/semantic"])] == [t0 + i * 1_000_000_000
                                                                                 for i in (3, 4, 5)]
    assert replay(tiny_pipeline, bag, start_s=8.5).frames == 1                 # to the end
    assert replay(tiny_pipeline, bag, duration_s=2.5).frames == 3              # from the start
    assert replay(tiny_pipeline, bag, start_s=2.0, duration_s=1e300).frames == 8  # too large for nanoseconds
    (tmp_path / "mine.json").write_text("the user's")
    capsys.readouterr()
    for bad, says in ((["--start", "12"], "--start 12: bag '{bag}' lasts 9.000 s; expected a start inside it"),
                      (["--start", "1e300"], "--start 1e+300: bag '{bag}' lasts 9.000 s; expected a start inside it"),
                      (["--start", "-1"], "--start -1.0: expected seconds >= 0"),
                      (["--duration", "0"], "--duration 0.0: expected a finite number of seconds > 0"),
                      (["--duration", "nan"], "--duration nan: expected a finite number of seconds > 0")):
        assert main(["replay", str(bag), "--model", str(tiny_model_yaml), "--out", str(tmp_path / "refused"),
                     "--metrics", str(tmp_path / "mine.json"), "--overwrite", *bad]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(errors) == 1 and says.format(bag=bag) in errors[0], errors
        assert not (tmp_path / "refused").exists() and (tmp_path / "mine.json").read_text() == "the user's"


def test_unknown_topic_lists_image_topics(tiny_pipeline, tmp_path, rng):
    bag = camera_bag(tmp_path / "in", "mcap", [(1, rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))])
    with pytest.raises(BagError, match=r"no image topic '/rear/image'; image topics: /front/image_raw"):
        replay(tiny_pipeline, bag, tmp_path / "out", image_topic="/rear/image")


def _car_bag(path, rng, second="/rear/image_raw", ground_truth=False):
    """A car's recording: two cameras of different sizes stamped together (hardware-synchronised),
    three frames each, and optionally ground truth of the front camera's frames."""
    front = rng.integers(0, 255, (3, 48, 64, 3), dtype=np.uint8)
    rear = rng.integers(0, 255, (3, 40, 80, 3), dtype=np.uint8)
    stamps = [1_700_000_000_000_000_000 + i * 50_000_000 for i in range(3)]
    with BagWriter(path, "mcap") as w:
        for stamp, f, r in zip(stamps, front, rear):
            w.write("/front/image_raw", image_msg(header(stamp, "front_optical"), image_fields(f, "rgb8")), stamp)
            w.write(second, image_msg(header(stamp, "rear_optical"), image_fields(r, "rgb8")), stamp)
            if ground_truth:
                pan = np.full((48, 64), 3, np.int32)  # all road
                w.write("/ground_truth/panoptic", image_msg(header(stamp, "front_optical"),
                                                            image_fields(pan, "32SC1")), stamp)
    return path, stamps, {"/front": front, second.rsplit("/", 1)[0]: rear}


def test_a_camera_whose_size_changes_mid_drive_keeps_its_video(tiny_pipeline, tmp_path, rng):
    """A driver reconfigured mid-drive (64x48 frames, then 80x60): the video keeps the first size, each
    later frame fitted into it (the writer refused the new size, which ended the replay at that frame)."""
    import imageio.v2 as imageio
    frames = [(1 + i, rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for i in range(2)]
    frames += [(10 + i, rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)) for i in range(2)]
    bag = camera_bag(tmp_path / "bag", "mcap", frames)
    summary = replay(tiny_pipeline, bag, tmp_path / "out", video=tmp_path / "v.mp4")
    assert summary.frames == 4 and (tmp_path / "out" / "metadata.yaml").is_file()
    with imageio.get_reader(tmp_path / "v.mp4") as video:
        assert video.count_frames() == 4 and {video.get_data(i).shape[:2] for i in range(4)} == {(48, 64)}


def test_a_car_bag_replays_every_camera_under_its_own_namespace(tiny_pipeline, tmp_path, rng):
    """As the node serves several cameras, replay of a car's bag runs every camera by default (or the
    ones --image-topic names) and writes each one's outputs under its namespace, frame for frame what
    the pipeline gives that camera's frame alone; the video shows the cameras side by side and says so."""
    import imageio.v2 as imageio
    from panoptic_node.render import overlay, side_by_side
    bag, stamps, frames = _car_bag(tmp_path / "car", rng)
    lines = []
    summary = replay(tiny_pipeline, bag, tmp_path / "out", video=tmp_path / "v.mp4", log=lines.append)
    assert summary.frames == 6 and summary.cameras == {"/front/image_raw": 3, "/rear/image_raw": 3}
    assert "cameras: /front/image_raw 3, /rear/image_raw 3" in summary.format()
    assert lines == ["the video shows the 2 cameras side by side, a frame for each frame of /front/image_raw with "
                     "the others' latest (--image-topic chooses)"]
    with imageio.get_reader(tmp_path / "v.mp4") as video:  # each camera in a tile of the first one's size
        assert video.count_frames() == 3 and video.get_data(0).shape[:2] == (48, 128)
        first, second = video.get_data(0).astype(int), video.get_data(1).astype(int)
    assert first[:, 64:].max() < 40 and first[:, :64].mean() > 40  # the rear camera had no frame yet: black

    def rear_tile(i):  # the rear camera's i-th overlay fitted into 48 x 64 (32 x 64, centred)
        rgb = frames["/rear"][i]
        return side_by_side([overlay(rgb, tiny_pipeline(rgb), tiny_pipeline.taxonomy)], 48, 64)[8:40].ravel()

    shown = second[8:40, 64:].ravel()  # the second video frame: the rear camera's first overlay (lossy video)
    assert np.corrcoef(shown, rear_tile(0))[0, 1] > 0.7 > np.corrcoef(shown, rear_tile(1))[0, 1]
    assert second[:6, 64:].max() < 40  # black above the fitted frame
    with BagReader(tmp_path / "out") as r:
        for ns, rgb in frames.items():
            got = list(r.messages([f"{ns}/panoptic/semantic"]))
            assert [stamp_ns(m.msg.header) for m in got] == stamps
            for m, frame in zip(got, rgb):
                assert np.array_equal(image_array(m.msg), tiny_pipeline(frame).semantic)
            assert len(list(r.messages([f"{ns}/panoptic/label_info"]))) == 1
    from panoptic_node.fleet.run import frames_in
    assert frames_in(bag) == 6 and frames_in(tmp_path / "out") == 0  # fleet's bar: every camera, no outputs
    only = replay(tiny_pipeline, bag, tmp_path / "rear_only", image_topic=["/rear/image_raw"])
    assert only.cameras == {"/rear/image_raw": 3}
    with BagReader(tmp_path / "rear_only") as r:
        assert not [t for t in r.topics if t.startswith("/front/")] and "/rear/panoptic/semantic" in r.topics


def test_ground_truth_of_one_camera_is_scored_only_when_that_camera_is_replayed_alone(tiny_pipeline, tmp_path, rng,
                                                                                      capsys):
    """Ground truth is matched by stamp, and synchronised cameras share stamps: with two cameras it
    would be scored against either. Found by itself it is left unscored with one line; asked for with
    --gt-topic it is refused before anything is written; with the camera chosen it scores."""
    bag, _, _ = _car_bag(tmp_path / "car", rng, ground_truth=True)
    lines = []
    summary = replay(tiny_pipeline, bag, tmp_path / "out", log=lines.append)
    assert summary.frames == 6 and summary.evaluated == 0 and not summary.scoring
    assert lines == ["not scored: ground truth belongs to one camera and 2 are replayed (/front/image_raw, "
                     "/rear/image_raw); choose the one it labels with --image-topic"]
    with pytest.raises(ValueError, match=r"^ground truth belongs to one camera and 2 are replayed"):
        replay(tiny_pipeline, bag, tmp_path / "refused", gt_topic="/ground_truth/panoptic")
    assert not (tmp_path / "refused").exists()
    front = replay(tiny_pipeline, bag, tmp_path / "front", image_topic="/front/image_raw")
    assert front.evaluated == 3 and front.metrics is not None
    # evaluate finds the predictions of the one camera replayed, and asks which when there are two
    from panoptic_node.cli import main
    assert main(["evaluate", "--bag", str(bag), "--pred-bag", str(tmp_path / "front"), "--json",
                 str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["pq"] == front.metrics["pq"]
    assert main(["evaluate", "--bag", str(bag), "--pred-bag", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.endswith(
        f"error: bag '{tmp_path / 'out'}' holds 2 panoptic map topics (<camera>/panoptic/panoptic: "
        f"/front/panoptic/panoptic, /rear/panoptic/panoptic); choose the predictions with --pred-topic\n")


def test_a_camera_recorded_raw_and_compressed_is_replayed_once(tiny_pipeline, tmp_path, rng):
    """image_transport records a camera twice (image_raw and image_raw/compressed): by default the raw
    frames are replayed, once, and one line says so; the compressed twin alone publishes under the
    same namespace, as the node does with input_transport compressed."""
    frames = [(1_700_000_000_000_000_000 + i, rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for i in range(2)]
    with BagWriter(tmp_path / "both", "mcap") as w:
        for stamp, f in frames:
            w.write("/front/image_raw", image_msg(header(stamp, "front"), image_fields(f, "rgb8")), stamp)
            buf = io.BytesIO()
            Image.fromarray(f).save(buf, format="PNG")
            w.write("/front/image_raw/compressed", compressed_msg(header(stamp, "front"), "png", buf.getvalue()), stamp)
    from panoptic_node.fleet.run import frames_in
    assert frames_in(tmp_path / "both") == 2  # fleet's progress bar counts the camera once too
    lines = []
    summary = replay(tiny_pipeline, tmp_path / "both", tmp_path / "out", log=lines.append)
    assert summary.cameras == {"/front/image_raw": 2}
    assert lines == ["/front/image_raw/compressed is /front/image_raw compressed: the raw frames are replayed "
                     "(--image-topic chooses)"]
    only = replay(tiny_pipeline, tmp_path / "both", tmp_path / "c", image_topic="/front/image_raw/compressed")
    assert only.cameras == {"/front/image_raw/compressed": 2}
    with BagReader(tmp_path / "out") as a, BagReader(tmp_path / "c") as b:
        assert set(a.topics) == set(b.topics) and "/front/panoptic/semantic" in a.topics
        for ma, mb in zip(a.messages(["/front/panoptic/semantic"]), b.messages(["/front/panoptic/semantic"])):
            assert np.array_equal(image_array(ma.msg), image_array(mb.msg))  # PNG is lossless: the same frames


def test_a_depth_cameras_images_are_not_taken_for_a_camera(tiny_pipeline, tmp_path, rng):
    """An RGB-D recording: besides the colour frames, 16UC1 depth images and their compressedDepth twin.
    By default only the colour camera is replayed and each depth topic gets one line (it would have
    been replayed frame by frame as undecodable); a bag of depth alone is refused naming why."""
    lines = []
    summary = replay(tiny_pipeline, write_rgbd_bag(tmp_path / "rgbd", rng), tmp_path / "out", log=lines.append)
    assert summary.cameras == {"/cam/color/image_raw": 2} and summary.undecodable == 0
    assert sorted(lines) == [
        "/cam/depth/image_raw holds 16UC1 images (depth, or no colour / grey encoding this reads): not replayed "
        "(--image-topic chooses)",
        "/cam/depth/image_raw/compressedDepth holds compressed depth (16UC1; compressedDepth png): not replayed "
        "(--image-topic chooses)"]
    with pytest.raises(BagError, match=r"has no camera image topic .*; /cam/depth/image_raw holds 16UC1 images"):
        replay(tiny_pipeline, write_rgbd_bag(tmp_path / "depth", rng, with_colour=False), tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_two_cameras_of_one_namespace_are_refused_before_anything_is_written(tiny_pipeline, tmp_path, rng):
    """/front/image_raw and /front/image_rect would both write /front/panoptic/*: one line names both."""
    bag, _, _ = _car_bag(tmp_path / "car", rng, second="/front/image_rect")
    with pytest.raises(ValueError, match=r"^cameras '/front/image_raw' and '/front/image_rect' would both write "
                                         r"/front/panoptic/\*; replay them in two runs \(--image-topic\)$"):
        replay(tiny_pipeline, bag, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert replay(tiny_pipeline, bag, tmp_path / "out", image_topic="/front/image_rect").frames == 3
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="would both write"):  # asked to replace it, and refused: it stays
        replay(tiny_pipeline, bag, tmp_path / "out", overwrite=True)
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_corrupt_and_truncated_bags(tiny_pipeline, tmp_path, rng, storage):
    frames = [(i + 1, rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for i in range(6)]
    bag = camera_bag(tmp_path / "in", storage, frames)
    data_file = next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    with pytest.raises(BagError) as e:
        replay(tiny_pipeline, bag, tmp_path / "out")
    assert "\n" not in str(e.value) and str(bag) in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing that looks finished
    (bag / "metadata.yaml").write_text("not: [a, bag")
    with pytest.raises(BagError, match="cannot be opened"):
        BagReader(bag)
    with pytest.raises(BagError, match="does not exist"):
        BagReader(tmp_path / "nothing")


def test_recover_keeps_the_complete_messages_of_a_cut_recording(tiny_pipeline, tmp_path, rng):
    from panoptic_node.bag.recover import recover
    from panoptic_node.cli import main
    # frames big enough that the writer closes several 1 MiB chunks, as any camera recording does
    frames = [(1_700_000_000_000_000_000 + i * 50_000_000, rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
              for i in range(12)]
    bag = camera_bag(tmp_path / "in", "mcap", frames)
    data_file = next(bag.glob("*.mcap"))
    # power lost mid-recording: the file stops part-way, no footer, no metadata.yaml
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size * 2 // 3])
    (bag / "metadata.yaml").unlink()
    with pytest.raises(BagError, match="panoptic-node recover"):
        BagReader(bag)
    result = recover(bag, tmp_path / "fixed", log=lambda m: None)
    assert 0 < result.messages < len(frames) and result.lost_bytes > 0
    with BagReader(tmp_path / "fixed") as r:
        got = [(m.stamp_ns, image_to_rgb(m.msg)) for m in r.messages(["/front/image_raw"])]
    originals = dict(frames)
    assert [s for s, _ in got] == [s for s, _ in frames[:len(got)]]  # the first frames, in order
    for stamp, rgb in got:
        np.testing.assert_array_equal(rgb, originals[stamp])
    assert replay(tiny_pipeline, tmp_path / "fixed", tmp_path / "out").frames == len(got)
    # through the command; a file cut inside its first record has nothing to recover: one line, exit 2
    assert main(["recover", str(data_file), "--out", str(tmp_path / "fixed2")]) == 0
    data_file.write_bytes(data_file.read_bytes()[:40])
    assert main(["recover", str(data_file), "--out", str(tmp_path / "fixed3")]) == 2
    assert not (tmp_path / "fixed3").exists() and not (tmp_path / "fixed3.partial").exists()
    not_mcap = tmp_path / "x.mcap"
    not_mcap.write_bytes(b"hello")
    with pytest.raises(BagError, match="not an MCAP file"):
        recover(not_mcap, tmp_path / "fixed4")


def test_recover_a_sqlite_recording_without_its_metadata(tiny_pipeline, tmp_path, rng):
    # rosbag2 writes metadata.yaml last: a killed recorder leaves the .db3 alone
    from panoptic_node.bag.recover import recover
    frames = [(1_700_000_000_000_000_000 + i * 50_000_000, rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
              for i in range(4)]
    bag = camera_bag(tmp_path / "in", "sqlite3", frames)
    (bag / "metadata.yaml").unlink()
    with pytest.raises(BagError, match="panoptic-node recover"):
        BagReader(bag)
    assert recover(bag, tmp_path / "fixed", log=lambda m: None).messages == 4
    with BagReader(tmp_path / "fixed") as r:
        got = [(m.stamp_ns, image_to_rgb(m.msg)) for m in r.messages(["/front/image_raw"])]
    assert [s for s, _ in got] == [s for s, _ in frames]
    for (_, a), (_, b) in zip(got, frames):
        np.testing.assert_array_equal(a, b)
    db3 = next(bag.glob("*.db3"))
    db3.write_bytes(db3.read_bytes()[:3000])  # not a SQLite cut that happens in practice, but bad input
    with pytest.raises(BagError, match="not a readable rosbag2 SQLite file"):
        recover(bag, tmp_path / "fixed2", log=lambda m: None)
    assert not (tmp_path / "fixed2").exists() and not (tmp_path / "fixed2.partial").exists()


def split_recording(folder, storage, frames, parts):
    """A recording as `ros2 bag record --max-bag-size` leaves it: <name>_0, <name>_1, ... in one folder, each
    file with the schemas and channels of its own messages (here without metadata.yaml: it was cut short)."""
    folder.mkdir()
    size = -(-len(frames) // parts)
    for i in range(parts):
        part = camera_bag(folder.parent / f"part{i}", storage, frames[i * size:(i + 1) * size])
        data = next(f for f in part.iterdir() if f.suffix in (".mcap", ".db3"))
        data.rename(folder / f"{folder.name}_{i}{data.suffix}")
        shutil.rmtree(part)
    return folder


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_recover_takes_every_file_of_a_split_recording_into_one_bag(tmp_path, rng, storage, capsys):
    """A car records in splits (a file per GB or minute); cut short, the folder held two files and recover
    refused it ('expected one (pass the file itself)'), so each part became a bag of its own."""
    from panoptic_node.bag.recover import recover, storage_files
    frames = [(1_700_000_000_000_000_000 + i * 50_000_000, rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
              for i in range(12)]
    rec = split_recording(tmp_path / "rec", storage, frames, 12)  # rec_0 ... rec_11: rec_10 comes after rec_9
    ext = next(rec.glob("rec_0.*")).suffix
    assert [p.name for p in storage_files(rec)[0]] == [f"rec_{i}{ext}" for i in range(12)]
    said = []
    assert recover(rec, tmp_path / "fixed", log=said.append).messages == 12
    assert "from 12 files into" in said[0]
    assert "recover: 12 messages [" in capsys.readouterr().err  # long work shows progress (a car's GBs)
    with BagReader(tmp_path / "fixed") as r:
        got = [(m.stamp_ns, image_to_rgb(m.msg)) for m in r.messages(["/front/image_raw"])]
    assert [s for s, _ in got] == [s for s, _ in frames]  # every frame, in the order recorded
    for (_, a), (_, b) in zip(got, frames):
        np.testing.assert_array_equal(a, b)
    # recorded with --compression-mode file and cut: every file closed before the cut is <name>_N.<ext>.zstd
    import zstandard
    packed = tmp_path / "packed"
    shutil.copytree(rec, packed)
    for f in storage_files(packed)[0][:-1]:  # all but rec_11, the one being written
        f.with_name(f.name + ".zstd").write_bytes(zstandard.ZstdCompressor().compress(f.read_bytes()))
        f.unlink()
    assert len(list(packed.glob("*.zstd"))) == 11
    assert recover(packed, tmp_path / "unpacked", log=lambda m: None).messages == 12
    with BagReader(tmp_path / "unpacked") as r:
        assert [m.stamp_ns for m in r.messages(["/front/image_raw"])] == [s for s, _ in frames]
    # a file that cannot be read is left out and named; the files around it are kept
    bad = next(rec.glob("*_5.*"))
    bad.write_bytes(b"damaged" * 10)
    said = []
    assert recover(rec, tmp_path / "fixed2", log=said.append).messages == 11
    assert any(line.startswith(f"left out {bad.name}: ") for line in said)
    # files of two recordings in one folder: refused, naming them, nothing written
    (rec / f"other_0{bad.suffix}").write_bytes(b"")
    with pytest.raises(BagError, match=r"holds files of more than one recording \(.*other_0"):
        recover(rec, tmp_path / "fixed3")
    assert not (tmp_path / "fixed3").exists() and not (tmp_path / "fixed3.partial").exists()


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_topic_whose_message_definition_does_not_read_costs_that_topic_not_the_bag(tiny_pipeline, tmp_path, rng,
                                                                                      storage):
    """rosbags refuses a whole bag when one topic's recorded definition does not parse or does not match its
    recorded hash ("Message type 'my_car_msgs/msg/CanFrame' hash mismatch ..."): a car's bag with one vendor
    message it cannot read could not be replayed, though replay reads only the camera."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from panoptic_node.bag.types import typestore
    frames = [(1_700_000_000_000_000_000 + i * 50_000_000, rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
              for i in range(3)]
    plain = camera_bag(tmp_path / "plain", storage, frames)
    bag = tmp_path / "car"
    writer = Writer(bag, version=8, storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)
    with BagReader(plain) as r, writer:
        cam = writer.add_connection("/front/image_raw", "sensor_msgs/msg/Image", typestore=typestore())
        wrong_hash = writer.add_connection("/vehicle/can", "my_car_msgs/msg/CanFrame", msgdef="uint8[8] data",
                                           rihs01="RIHS01_" + "0" * 64)
        no_parse = writer.add_connection("/vehicle/odd", "my_car_msgs/msg/Odd", msgdef="uint8[8 data = ?",
                                         rihs01="RIHS01_" + "1" * 64)
        for m in r.reader.messages():
            writer.write(cam, m[1], m[2])
            writer.write(wrong_hash, m[1] + 1, b"\x00\x01\x00\x00" + bytes(8))
            writer.write(no_parse, m[1] + 2, b"\x00\x01\x00\x00" + bytes(8))
    with BagReader(bag) as r:
        assert sorted(r.topics) == ["/front/image_raw"]
        assert set(r.unreadable) == {"/vehicle/can", "/vehicle/odd"}
        assert "does not read (its definition hashes to RIHS01_" in r.unreadable["/vehicle/can"]
        got = [(m.stamp_ns, image_to_rgb(m.msg)) for m in r.messages(["/front/image_raw"])]
    assert [s for s, _ in got] == [s for s, _ in frames]
    for (_, a), (_, b) in zip(got, frames):
        np.testing.assert_array_equal(a, b)
    assert replay(tiny_pipeline, bag, out_bag=tmp_path / "out").frames == 3
    with pytest.raises(BagError, match=r"no image topic '/vehicle/can'; image topics: /front/image_raw; /vehicle/can "
                                       r"is in the bag, but the message definition of my_car_msgs/msg/CanFrame "):
        replay(tiny_pipeline, bag, image_topic="/vehicle/can")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_recover_decompresses_a_recording_compressed_message_by_message(tmp_path, rng, storage):
    """`ros2 bag record --compression-mode message`, cut short: with no metadata.yaml to say so, recover copied
    each zstd-compressed message as if it were the message, and made a bag that looked whole and held not one
    frame that deserialized ('Invalid or unsupported CDR encapsulation' for every frame in replay)."""
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, Reader, StoragePlugin, Writer
    from panoptic_node.bag.recover import recover
    from panoptic_node.bag.types import typestore
    frames = [(1_700_000_000_000_000_000 + i * 50_000_000, rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
              for i in range(5)]
    plain = camera_bag(tmp_path / "plain", storage, frames)
    rec = tmp_path / "rec"
    writer = Writer(rec, version=8, storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)
    writer.set_compression(CompressionMode.MESSAGE, CompressionFormat.ZSTD)
    with Reader(plain) as r, writer:
        conn = writer.add_connection("/front/image_raw", "sensor_msgs/msg/Image", typestore=typestore())
        for _, stamp, raw in r.messages():
            writer.write(conn, stamp, raw)
    (rec / "metadata.yaml").unlink()  # written last: the cut recording has none
    data = next(f for f in rec.iterdir() if f.suffix in (".mcap", ".db3"))
    assert b"\x28\xb5\x2f\xfd" in data.read_bytes()  # compressed one by one indeed
    said = []
    assert recover(rec, tmp_path / "fixed", log=said.append).messages == 5
    assert said[0].endswith("; 5 messages were compressed one by one (--compression-mode message) and are written "
                            "uncompressed")
    with BagReader(tmp_path / "fixed") as r:
        got = [(m.stamp_ns, image_to_rgb(m.msg)) for m in r.messages(["/front/image_raw"])]
    assert [s for s, _ in got] == [s for s, _ in frames]
    for (_, a), (_, b) in zip(got, frames):
        np.testing.assert_array_equal(a, b)
    if storage == "sqlite3":  # a compressed message that does not decompress is left out and counted
        import sqlite3
        with sqlite3.connect(data) as db:
            db.execute("UPDATE messages SET data = ? WHERE id = 2", (b"\x28\xb5\x2f\xfd" + b"garbage" * 5,))
        said = []
        assert recover(rec, tmp_path / "fixed2", log=said.append).messages == 4
        assert said[0].endswith("; 4 messages were compressed one by one (--compression-mode message) and are written "
                                "uncompressed; 1 compressed messages that do not decompress left out")


def test_recover_names_the_files_a_split_bags_metadata_lists_and_it_lacks(tmp_path, rng):
    """Copied off the car in part: rosbags refuses the bag ('Some database files are missing') and points to
    recover, which kept what was there without saying what was not."""
    from panoptic_node.bag.recover import recover
    frames = [(1_700_000_000_000_000_000 + i * 50_000_000, rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
              for i in range(4)]
    rec = split_recording(tmp_path / "rec", "mcap", frames, 2)
    (rec / "metadata.yaml").write_text(yaml.safe_dump({"rosbag2_bagfile_information": {
        "version": 8, "storage_identifier": "mcap", "relative_file_paths": ["rec_0.mcap", "rec_1.mcap"]}}))
    (rec / "rec_1.mcap").unlink()
    with pytest.raises(BagError, match="panoptic-node recover"):
        BagReader(rec)
    said = []
    assert recover(rec, tmp_path / "fixed", log=said.append).messages == 2
    assert said[-1] == (f"not recovered: rec_1.mcap, listed in {rec / 'metadata.yaml'}, is not there (its messages "
                        f"are not in {tmp_path / 'fixed'})")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_recover_keeps_each_topics_recorded_qos(tmp_path, rng, storage):
    """A latched topic (/tf_static, a class map) must stay latched in the recovered bag, or `ros2 bag
    play` offers it volatile and late subscribers never get it."""
    from rosbags.interfaces import QosDurability, QosReliability
    from rosbags.rosbag2 import Reader
    from panoptic_node.bag.recover import recover
    from panoptic_node.bag.writer import label_info_msg
    from panoptic_node.topic_qos import LABEL_INFO, OVERLAY
    with BagWriter(tmp_path / "in", storage) as w:
        w.write("/cam/label_info", label_info_msg(header(1, "cam"), [{"class_id": 0, "class_name": "road"}], 0.5), 1,
                LABEL_INFO)
        for i in range(3):
            w.write("/cam/image", image_msg(header(2 + i, "cam"), image_fields(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
                                                                             "rgb8")), 2 + i, OVERLAY)
        w.write("/cam/plain", image_msg(header(9, "cam"), image_fields(np.zeros((2, 2, 3), np.uint8), "rgb8")), 9)
    (tmp_path / "in" / "metadata.yaml").unlink()
    assert recover(tmp_path / "in", tmp_path / "fixed", log=lambda m: None).messages == 5
    with Reader(tmp_path / "fixed") as r:
        offers = {c.topic: [(q.reliability, q.durability, q.depth) for q in c.ext.offered_qos_profiles]
                  for c in r.connections}
    assert offers == {"/cam/label_info": [(QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, 1)],
                      "/cam/image": [(QosReliability.BEST_EFFORT, QosDurability.VOLATILE, 5)],
                      "/cam/plain": []}


def test_existing_output_is_refused_without_overwrite(tiny_pipeline, tmp_path, rng):
    bag = camera_bag(tmp_path / "in", "mcap", [(1, rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))])
    assert replay(tiny_pipeline, bag, tmp_path / "out").frames == 1
    with pytest.raises(FileExistsError, match="--overwrite"):
        replay(tiny_pipeline, bag, tmp_path / "out")
    assert replay(tiny_pipeline, bag, tmp_path / "out", overwrite=True).frames == 1  # our own bag: replaced
    (tmp_path / "folder").mkdir()  # anything else is not, even with --overwrite
    with pytest.raises(FileExistsError, match="not a bag panoptic_node wrote"):
        replay(tiny_pipeline, bag, tmp_path / "folder", overwrite=True)
    assert (tmp_path / "folder").is_dir() and not list((tmp_path / "folder").iterdir())


def test_interrupted_writer_leaves_only_a_partial(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with BagWriter(tmp_path / "out", "mcap") as w:
            w.write("/x/panoptic/semantic", image_msg(header(1, "f"), image_fields(np.zeros((2, 2), np.uint8), "mono8")), 1)
            raise KeyboardInterrupt
    assert not (tmp_path / "out").exists() and (tmp_path / "out.partial").is_dir()


def test_interrupted_replay_leaves_nothing_that_looks_finished(tiny_pipeline, tmp_path, rng):
    """Ctrl-C on the third frame: no output bag, no video, no metrics under their final names."""
    stamps = [1_700_000_000_000_000_000 + i * 50_000_000 for i in range(4)]
    bag = camera_bag(tmp_path / "in", "mcap", [(s, rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for s in stamps])
    with pytest.raises(KeyboardInterrupt):
        replay(_InterruptedAt(tiny_pipeline, 3), bag, tmp_path / "out", video=tmp_path / "v.mp4",
               metrics_path=tmp_path / "m.json")
    assert not (tmp_path / "out").exists() and not (tmp_path / "v.mp4").exists() and not (tmp_path / "m.json").exists()
    assert not list(tmp_path.glob("v.partial*"))


class _InterruptedAt:
    """The real pipeline, with Ctrl-C arriving on frame `at`."""

    def __init__(self, pipeline, at):
        self.__dict__.update(vars(pipeline))
        self._pipeline, self._at, self._calls = pipeline, at, 0

    def __call__(self, rgb):
        self._calls += 1
        if self._calls == self._at:
            raise KeyboardInterrupt
        return self._pipeline(rgb)


def test_cityscapes_fixture(tmp_path, rng):
    root = tmp_path / "cs"
    for split_dir in ("leftImg8bit/val/aachen", "gtFine/val/aachen"):
        (root / split_dir).mkdir(parents=True)
    label = np.full((16, 24), 7, np.uint8)          # road
    label[:4] = 23                                   # sky
    label[8:12, 2:8] = 26                            # car with instance
    label[8:12, 12:16] = 26                          # car pixels without instance -> void
    label[0, 0] = 29                                 # caravan: ignoreInEval -> void
    inst = label.astype(np.int32).copy()
    inst[8:12, 2:8] = 26000
    for frame in (19, 20):
        name = f"aachen_000000_{frame:06d}"
        Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(
            root / f"leftImg8bit/val/aachen/{name}_leftImg8bit.png")
        Image.fromarray(label).save(root / f"gtFine/val/aachen/{name}_gtFine_labelIds.png")
        Image.fromarray(inst.astype(np.uint16)).save(root / f"gtFine/val/aachen/{name}_gtFine_instanceIds.png")
    assert convert("cityscapes", root, tmp_path / "bag", storage="sqlite3") == 2
    with BagReader(tmp_path / "bag") as r:
        assert r.label_set("/ground_truth/label_info") == "cityscapes"
        (info,) = r.messages(["/ground_truth/label_info"])  # once, at the first frame, latched
        assert info.stamp_ns == next(r.messages(["/camera/image_raw"])).stamp_ns
        pans = [image_array(m.msg) for m in r.messages(["/ground_truth/panoptic"])]
        stamps = [m.stamp_ns for m in r.messages(["/camera/image_raw"])]
    assert stamps[1] - stamps[0] == round(1e9 / 17)
    pan = pans[0]
    assert (pan[8:12, 2:8] == 13001).all() and (pan[8:12, 12:16] == -1).all() and pan[0, 0] == -1
    assert pan[5, 5] == 0 and pan[1, 5] == 10
    sem, _ = cityscapes_panoptic(label, inst)
    assert sem[9, 13] == 255 and sem[9, 3] == 13


def test_kitti_fixtures(tmp_path, rng):
    drive = tmp_path / "raw" / "2011_09_26" / "2011_09_26_drive_0001_sync" / "image_02"
    (drive / "data").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (10, 20, 3), dtype=np.uint8)).save(drive / "data" / f"{i:010d}.png")
    (drive / "timestamps.txt").write_text("\n".join(f"2011-09-26 13:02:25.{100000000 + i * 103000000:09d}"
                                                    for i in range(3)) + "\n")
    (tmp_path / "raw" / "2011_09_26" / "calib_cam_to_cam.txt").write_text(
        "calib_time: 09-Jan-2012 13:57:47\nK_02: 9.5e+02 0 6.9e+02 0 9.5e+02 2.4e+02 0 0 1\n"
        "P_rect_02: 7.2e+02 0 6.0e+02 4.4e+01 0 7.2e+02 1.7e+02 2.1e-01 0 0 1 2.7e-03\n")
    assert convert("kitti", tmp_path / "raw", tmp_path / "bag") == 3
    with BagReader(tmp_path / "bag") as r:
        infos = list(r.messages(["/camera/camera_info"]))
        assert "/ground_truth/panoptic" not in r.topics and "/ground_truth/label_info" not in r.topics
    assert infos[0].msg.k[0] == 950.0 and infos[0].msg.p[3] == 44.0
    assert infos[1].stamp_ns - infos[0].stamp_ns == 103_000_000

    sem_root = tmp_path / "sem" / "training"
    for d in ("image_2", "semantic", "instance"):
        (sem_root / d).mkdir(parents=True)
    label = np.full((10, 20), 7, np.uint8)
    label[2:6, 2:8] = 26
    instance = (label.astype(np.uint16) * 256)
    instance[2:6, 2:8] += 3
    Image.fromarray(rng.integers(0, 255, (10, 20, 3), dtype=np.uint8)).save(sem_root / "image_2" / "000000_10.png")
    Image.fromarray(label).save(sem_root / "semantic" / "000000_10.png")
    Image.fromarray(instance).save(sem_root / "instance" / "000000_10.png")
    assert convert("kitti", tmp_path / "sem", tmp_path / "bag2") == 1
    with BagReader(tmp_path / "bag2") as r:
        pan = image_array(next(r.messages(["/ground_truth/panoptic"])).msg)
        assert r.label_set("/ground_truth/label_info") == "cityscapes"  # KITTI's semantics use Cityscapes labels
    assert (pan[2:6, 2:8] == 13003).all() and pan[0, 0] == 0


def test_camvid_convert_and_replay_scores(tiny_pipeline, tiny_model_yaml, tmp_path):
    from panoptic_node.cli import main
    root = camvid_or_skip()
    assert convert("camvid", root, tmp_path / "bag", max_frames=3) == 3
    with BagReader(tmp_path / "bag") as r:
        assert set(r.topics) == {"/camera/image_raw", "/camera/camera_info", "/ground_truth/panoptic",
                                 "/ground_truth/semantic", "/ground_truth/label_info"}
        assert r.label_set("/ground_truth/label_info") == "camvid"
        pans = [image_array(m.msg) for m in r.messages(["/ground_truth/panoptic"])]
        stamps = [m.stamp_ns for m in r.messages(["/camera/image_raw"])]
    frames = [int(line.split()[0].rsplit("_", 1)[1][:-4]) for line in (root / "val.txt").read_text().split("\n")[:3]]
    assert stamps[1] - stamps[0] == round((frames[1] - frames[0]) * 1e9 / 30)  # frame numbers of 30 Hz video
    cars = pans[0][(pans[0] // 1000) == 8]
    assert len(np.unique(cars)) >= 1 and (cars % 1000 > 0).all()
    summary = replay(tiny_pipeline, tmp_path / "bag", tmp_path / "pred")
    assert summary.evaluated == 3 and summary.metrics is not None
    with BagReader(tmp_path / "pred") as r:  # every frame's maps with the calibration, the first included
        assert [m.stamp_ns for m in r.messages(["/camera/panoptic/camera_info"])] == stamps
    # replay's own scores, through the command: the confusion matrix counts every labelled pixel, with two
    # inference workers too (the ground truth after the last frame once went unread: a pool holding only
    # messages behind a frame already handed back read as empty)
    assert main(["replay", str(tmp_path / "bag"), "--model", str(tiny_model_yaml), "--out", str(tmp_path / "p2"),
                 "--metrics", str(tmp_path / "m.json"), "--confusion", str(tmp_path / "m.png"),
                 "--inference-workers", "2", "--threads", "2"]) == 0
    written = json.loads((tmp_path / "m.json").read_text())
    matrix = np.array(written["metrics"]["confusion"]["matrix"])
    # with the weights that gave these numbers (torch: no int8 scales nor width)
    assert written["weights"] == tiny_pipeline.weights_id and written["weights"].startswith("tiny.pth, sha256 ")
    assert "int8_scales" not in written and "int8_weight_bits" not in written
    with BagReader(tmp_path / "bag") as r:
        labelled = sum(int((image_array(m.msg) != 255).sum()) for m in r.messages(["/ground_truth/semantic"]))
    assert matrix.sum() == labelled and Image.open(tmp_path / "m.png").width > 400
    # the evaluate command on the two bags agrees with replay's own scoring
    assert main(["evaluate", "--bag", str(tmp_path / "bag"), "--pred-bag", str(tmp_path / "pred"),
                 "--json", str(tmp_path / "e.json"), "--chart", str(tmp_path / "e.png")]) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["pq"]["pq"] == pytest.approx(summary.metrics["pq"]["pq"], abs=1e-12)
    assert report["miou"] == pytest.approx(summary.metrics["miou"], abs=1e-12)
    assert (tmp_path / "e.png").stat().st_size > 0


def write_clip(path, frames, fps=10):
    import imageio.v2 as imageio
    w = imageio.get_writer(str(path), fps=fps, codec="libx264", macro_block_size=2, ffmpeg_log_level="error")
    for f in frames:
        w.append_data(f)
    w.close()
    return path


def test_a_camera_clip_converts_to_a_bag_that_replays(tiny_pipeline, tmp_path, rng):
    """convert video: a dashcam clip's frames stamped at their time in the clip, then replayed into an overlay."""
    frames = [np.full((48, 64, 3), 10 * i, np.uint8) for i in range(8)]
    clip = write_clip(tmp_path / "clip.mp4", frames, fps=10)
    assert convert("video", clip, tmp_path / "bag") == 8
    with BagReader(tmp_path / "bag") as r:
        assert set(r.topics) == {"/camera/image_raw", "/camera/camera_info"}
        msgs = list(r.messages(["/camera/image_raw"]))
    assert [m.stamp_ns - msgs[0].stamp_ns for m in msgs] == [i * 100_000_000 for i in range(8)]  # 10 frames/s
    decoded = [image_array(m.msg) for m in msgs]
    assert all(d.shape == (48, 64, 3) for d in decoded)
    assert [int(d.mean()) for d in decoded] == pytest.approx([10 * i for i in range(8)], abs=3)  # lossy, in order
    summary = replay(tiny_pipeline, tmp_path / "bag", tmp_path / "pred", video=tmp_path / "overlay.mp4")
    assert summary.frames == 8 and summary.metrics is None and (tmp_path / "overlay.mp4").stat().st_size > 0
    assert convert("video", clip, tmp_path / "first3", max_frames=3) == 3


def test_a_clip_cut_short_or_unreadable_is_one_line_and_no_finished_bag(tmp_path, rng):
    clip = write_clip(tmp_path / "clip.mkv", [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(40)])
    data = clip.read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[:len(data) // 2])  # a recorder that lost power: no error, fewer frames
    with pytest.raises(ValueError) as e:
        convert("video", tmp_path / "cut.mkv", tmp_path / "bag")
    msg = str(e.value)
    assert "\n" not in msg and "its header announces: it is cut short; convert the part that decodes with " \
                                "--max-frames" in msg
    assert not (tmp_path / "bag").exists()  # at most a .partial, which never looks finished
    n = int(msg.rsplit(" ", 1)[1])
    assert convert("video", tmp_path / "cut.mkv", tmp_path / "first", max_frames=n) == n
    (tmp_path / "text.mp4").write_text("not a video")
    for src, expected in ((tmp_path / "text.mp4", "cannot be read"), (tmp_path / "none.mp4", "does not exist"),
                          (tmp_path, "is a folder")):
        with pytest.raises(ValueError, match=expected):
            convert("video", src, tmp_path / "bag2")
        assert not (tmp_path / "bag2").exists() and not (tmp_path / "bag2.partial").exists()
    with pytest.raises(ValueError, match="--split val: a video has no splits"):
        convert("video", clip, tmp_path / "bag3", split="val")


def _read_like_rosbag2(meta: dict, distro: str) -> dict:
    """metadata.yaml decoded by the rules of rosbag2_storage's yaml.hpp: the fields each distro reads
    for the file's version, with yaml-cpp's conversions (a field of the wrong kind fails there as a
    'bad conversion'). Humble's reader knows versions up to 5 and skips fields it does not know;
    Jazzy's reads them all up to 8 (9 made offered_qos_profiles a list, which Humble cannot read)."""
    info = meta["rosbag2_bagfile_information"]
    version = info["version"]

    def nanoseconds(node, key):
        value = node[key]
        assert isinstance(value, int) and value >= 0, (key, value)
        return value

    def text(node, key):
        assert isinstance(node[key], str), (key, node[key])
        return node[key]

    out = {"storage": text(info, "storage_identifier"), "duration": nanoseconds(info["duration"], "nanoseconds"),
           "start": nanoseconds(info["starting_time"], "nanoseconds_since_epoch"),
           "count": nanoseconds(info, "message_count"), "topics": {}}
    for entry in info["topics_with_message_count"]:
        t = entry["topic_metadata"]
        topic = {k: text(t, k) for k in ("name", "type", "serialization_format")}
        if version >= 4:
            topic["qos"] = text(t, "offered_qos_profiles")
        if distro == "jazzy" and version >= 7:
            topic["hash"] = text(t, "type_description_hash")
        out["topics"][topic["name"]] = (topic, nanoseconds(entry, "message_count"))
    out["paths"] = [p for p in info["relative_file_paths"] if isinstance(p, str)]
    assert len(out["paths"]) == len(info["relative_file_paths"])
    if version >= 3:
        out["compression"] = (text(info, "compression_format"), text(info, "compression_mode"))
    if version >= 5:
        out["files"] = [(text(f, "path"), nanoseconds(f["starting_time"], "nanoseconds_since_epoch"),
                         nanoseconds(f["duration"], "nanoseconds"), nanoseconds(f, "message_count"))
                        for f in info["files"]]
    if distro == "jazzy" and version >= 6:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in (info["custom_data"] or {}).items())
    if distro == "jazzy" and version >= 8:
        out["distro"] = text(info, "ros_distro")
    return out


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("distro", ["humble", "jazzy"])
def test_output_metadata_reads_as_rosbag2_reads_it(tiny_pipeline, tmp_path, rng, storage, distro):
    """What `ros2 bag info` prints comes from metadata.yaml: every field each distro reads is there with
    the kind it converts to, the files it names exist in the finished bag (not in the temporary folder
    the bag was written in), and the counts and times agree with the messages stored."""
    stamps = [1_700_000_000_000_000_000 + i * 50_000_000 for i in range(3)]
    bag = camera_bag(tmp_path / "in", storage, [(s, rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for s in stamps])
    replay(tiny_pipeline, bag, tmp_path / "out", storage=storage)
    meta = _read_like_rosbag2(yaml.safe_load((tmp_path / "out" / "metadata.yaml").read_text()), distro)
    assert meta["storage"] == storage and meta["compression"] == ("", "")
    assert [p for p in meta["paths"] if (tmp_path / "out" / p).is_file()] == meta["paths"] and meta["paths"]
    assert [f[0] for f in meta["files"]] == meta["paths"]
    assert sum(f[3] for f in meta["files"]) == meta["count"] == sum(n for _, n in meta["topics"].values())
    assert all(t["serialization_format"] == "cdr" for t, _ in meta["topics"].values())
    from rosbags.highlevel import AnyReader
    with AnyReader([tmp_path / "out"]) as reader:  # the messages' log times, from the storage
        times = [t for _, t, _ in reader.messages()]
    assert meta["start"] == min(times) and meta["duration"] == max(times) - min(times)
    assert meta["count"] == len(times)
    if storage == "sqlite3":  # Iron and later also keep the metadata inside the .db3; the same must be there
        import sqlite3
        con = sqlite3.connect(tmp_path / "out" / meta["paths"][0])
        (version, text), = con.execute("SELECT metadata_version, metadata FROM metadata").fetchall()
        con.close()
        assert version == 8
        assert _read_like_rosbag2({"rosbag2_bagfile_information": yaml.safe_load(text)}, distro) == meta


def _bag_with_ground_truth(path, labels, rng, storage="mcap", remap=None):
    """Three street frames (the same for every call) with ground truth in `labels` (None: an older bag
    without /ground_truth/label_info): Cityscapes trainIds road, sky, terrain, two cars and a truck, a
    person crowd, void; `remap` converts them to another label set first."""
    pan = np.zeros((48, 64), np.int32)                     # road
    pan[:10] = 10                                          # sky
    pan[10:14, :8] = 9                                     # terrain
    pan[20:30, 5:15], pan[20:30, 20:30], pan[20:32, 40:52] = 13001, 13002, 14001
    pan[35:40, 50:60] = 11                                 # a crowd of people
    pan[0, :5] = -1
    if remap is not None:
        pan = remap.map_panoptic(pan)
    sem = np.where(pan < 0, 255, np.where(pan >= 1000, pan // 1000, pan)).astype(np.uint8)
    images = np.random.default_rng(5).integers(0, 255, (3, 48, 64, 3), dtype=np.uint8)
    frames = [DatasetFrame(1_700_000_000_000_000_000 + i * 50_000_000, images[i], sem, pan) for i in range(3)]
    write_bag(iter(frames), path, storage, labels=labels)
    return path


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_replay_scores_in_the_label_set_the_model_publishes(tiny_pipeline, tmp_path, rng, storage):
    """Ground truth in another label set than the model publishes is mapped into it where a mapping
    exists (Cityscapes -> CamVid), and scores as if converted in that set; where none exists (COCO ->
    CamVid) PQ would mean nothing: one line says so and the replay goes on unscored, and asked for
    that ground truth explicitly, replay refuses before writing anything. Bags without label_info
    score as before."""
    assert tiny_pipeline.taxonomy.name == "camvid"
    lines = []
    mapped = replay(tiny_pipeline, _bag_with_ground_truth(tmp_path / "cs", "cityscapes", rng, storage),
                    log=lines.append)
    assert lines == ["ground truth mapped from the cityscapes label set to camvid"]
    cityscapes_to_camvid = get_mapping("cityscapes", "camvid")
    native = replay(tiny_pipeline, _bag_with_ground_truth(tmp_path / "cv", "camvid", rng, storage,
                                                          remap=cityscapes_to_camvid))
    assert mapped.evaluated == native.evaluated == 3
    assert json.dumps(mapped.metrics, sort_keys=True) == json.dumps(native.metrics, sort_keys=True)
    road = mapped.metrics["per_class"][3]  # Cityscapes road (0) scored as CamVid road (3), once per frame
    assert road["name"] == "road" and road["tp"] + road["fn"] == 3

    bag = _bag_with_ground_truth(tmp_path / "coco", "coco", rng, storage)
    lines = []
    summary = replay(tiny_pipeline, bag, tmp_path / "out", log=lines.append)
    assert summary.frames == 3 and summary.evaluated == 0 and summary.metrics is None
    assert lines == [f"not scored: the ground truth in '{bag}' is in the coco label set (/ground_truth/label_info) "
                     f"and the model publishes the camvid label set, with no mapping from one to the other"]
    with BagReader(tmp_path / "out") as r:
        assert len(list(r.messages(["/camera/panoptic/panoptic"]))) == 3
    with pytest.raises(ValueError, match="ground truth .* is in the coco label set .* with no mapping from one to "
                                         "the other; replay with a model publishing those labels"):
        replay(tiny_pipeline, bag, tmp_path / "out2", gt_topic="/ground_truth/panoptic")
    assert not (tmp_path / "out2").exists()
    old = replay(tiny_pipeline, _bag_with_ground_truth(tmp_path / "old", None, rng, storage, remap=cityscapes_to_camvid))
    assert json.dumps(old.metrics, sort_keys=True) == json.dumps(native.metrics, sort_keys=True)


def test_cityscapes_ground_truth_maps_to_camvid():
    """Classes through the table; instances stay apart, renumbered in their new class (a car and a truck
    both become cars); crowds stay crowds; classes CamVid lacks (terrain) become void."""
    pan = np.array([[-1, 0, 9, 13001, 14001], [13002, 12001, 18001, 11, 13]], np.int32)
    out = get_mapping("cityscapes", "camvid").map_panoptic(pan)
    assert out.dtype == np.int32 and out.tolist() == [[-1, 3, -1, 8001, 8003], [8002, 10001, 10002, 9, 8]]
    with pytest.raises(ValueError, match="not in our convention"):
        get_mapping("cityscapes", "camvid").map_panoptic(np.array([[300000]], np.int32))


def test_evaluate_scores_in_the_predictions_label_set(tiny_pipeline, tmp_path, rng, capsys):
    """evaluate scores in the predictions' label set (their label_info), maps ground truth announced in
    another where it can, and otherwise refuses in one line that names both sets."""
    from panoptic_node.cli import main
    cs = _bag_with_ground_truth(tmp_path / "cs", "cityscapes", rng)
    assert main(["evaluate", "--bag", str(cs), "--pred-topic", "/ground_truth/panoptic",
                 "--json", str(tmp_path / "e.json")]) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["pq"]["pq"] == 1.0 and report["per_class"]["10"]["name"] == "sky"  # Cityscapes' class 10
    replay(tiny_pipeline, _bag_with_ground_truth(tmp_path / "cv", "camvid", rng, remap=get_mapping("cityscapes", "camvid")),
           tmp_path / "pred")
    assert main(["evaluate", "--bag", str(cs), "--pred-bag", str(tmp_path / "pred"), "--json",
                 str(tmp_path / "m.json")]) == 0
    assert "ground truth mapped from the cityscapes label set to camvid" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["per_class"]["3"]["name"] == "road"
    coco = _bag_with_ground_truth(tmp_path / "coco", "coco", rng)
    capsys.readouterr()
    assert main(["evaluate", "--bag", str(coco), "--pred-bag", str(tmp_path / "pred")]) == 2
    assert capsys.readouterr().err == (
        f"panoptic-node evaluate: error: the ground truth in '{coco}' is in the coco label set (/ground_truth/label_info) "
        "and the scores (/camera/panoptic/label_info) are in the camvid label set, with no mapping from one to the "
        "other\n")
    assert main(["evaluate", "--bag", str(cs), "--pred-bag", str(tmp_path / "pred"), "--labels", "cityscapes"]) == 2
    assert f"the predictions in '{tmp_path / 'pred'}' are in the camvid label set (/camera/panoptic/label_info), " \
           "not in the cityscapes label set (--labels)" in capsys.readouterr().err


def _frames_bag(path, panoptics, t0=1_700_000_000_000_000_000):
    """A bag of CamVid-labelled frames whose /ground_truth/panoptic are `panoptics` (20 x 20), 0.1 s apart."""
    frames = []
    for i, pan in enumerate(panoptics):
        sem = np.where(pan < 0, 255, np.where(pan >= 1000, pan // 1000, pan)).astype(np.uint8)
        frames.append(DatasetFrame(t0 + i * 100_000_000, np.zeros((20, 20, 3), np.uint8), sem, pan.astype(np.int32)))
    write_bag(iter(frames), path, "mcap", labels="camvid")
    return path


def test_per_frame_scores_by_hand(tiny_pipeline, tiny_model_yaml, tmp_path, capsys):
    """evaluate / replay --per-frame: each frame scored alone, against numbers worked out by hand."""
    from panoptic_node.cli import main
    truth = np.full((20, 20), 3)                  # road
    truth[5:10, 5:10] = 8001                      # a car of 25 pixels
    void = np.full((20, 20), -1)
    gt = _frames_bag(tmp_path / "gt", [truth, truth, void, truth])
    pred = _frames_bag(tmp_path / "pred", [truth, np.full((20, 20), 3), np.full((20, 20), 3), truth])
    (tmp_path / "mine.csv").write_text("the user's")
    assert main(["evaluate", "--bag", str(gt), "--pred-bag", str(pred), "--pred-topic", "/ground_truth/panoptic",
                 "--per-frame", str(tmp_path / "mine.csv")]) == 2                 # exists: refused, untouched
    assert (tmp_path / "mine.csv").read_text() == "the user's"
    assert main(["evaluate", "--bag", str(gt), "--pred-bag", str(pred), "--pred-topic", "/ground_truth/panoptic",
                 "--per-frame", str(tmp_path / "frames.csv"), "--timeline", str(tmp_path / "drive.png")]) == 0
    assert Image.open(tmp_path / "drive.png").size == (1000, 360)  # the same scores along the drive
    t0 = 1_700_000_000_000_000_000
    rows = (tmp_path / "frames.csv").read_text().splitlines()
    assert rows[0] == "stamp_ns,pq,pq_things,pq_stuff,miou,pixel_accuracy,gt_segments,pred_segments,matched_segments"
    # frame 0: perfect. Frame 1: the car missed: road IoU 375 / 400, PQ road 93.75 and car 0 (a miss), mIoU the
    # same two, pixel accuracy 375 / 400. Frame 2: ground truth all void: nothing defined. Frame 3 as frame 0
    assert rows[1:] == [f"{t0},100.0,100.0,100.0,100.0,100.0,2,2,2",
                        f"{t0 + 100_000_000},46.88,0.0,93.75,46.88,93.75,2,1,1",
                        f"{t0 + 200_000_000},,,,,,0,0,0",
                        f"{t0 + 300_000_000},100.0,100.0,100.0,100.0,100.0,2,2,2"]
    assert f"lowest PQ at stamps {t0 + 100_000_000} (PQ 46.9), {t0} (PQ 100.0)" in capsys.readouterr().out
    assert main(["evaluate", "--gt-json", "a.json", "--gt-folder", "a", "--pred-json", "b.json", "--pred-folder", "b",
                 "--per-frame", str(tmp_path / "coco.csv")]) == 2
    assert "--per-frame scores the frames of bags" in capsys.readouterr().err
    # replay writes the same table for the frames it scores, and one line when it scores none
    assert main(["replay", str(gt), "--model", str(tiny_model_yaml), "--timeline", str(tmp_path / "t.txt")]) == 2
    assert "--timeline '" in capsys.readouterr().err and not (tmp_path / "t.txt").exists()  # a picture's suffix
    assert main(["replay", str(gt), "--model", str(tiny_model_yaml), "--per-frame", str(tmp_path / "r.csv"),
                 "--timeline", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").stat().st_size > 0
    assert [r.split(",")[0] for r in (tmp_path / "r.csv").read_text().splitlines()[1:]] == [
        str(t0 + i * 100_000_000) for i in range(4)]
    camera_only = camera_bag(tmp_path / "camera_only", "mcap", [(t0, np.zeros((20, 20, 3), np.uint8))])
    capsys.readouterr()
    assert main(["replay", str(camera_only), "--model", str(tiny_model_yaml), "--per-frame",
                 str(tmp_path / "none.csv")]) == 0
    assert "no per-frame scores written" in capsys.readouterr().out and not (tmp_path / "none.csv").exists()


def test_replay_applies_ego_masks_to_outputs_and_leaves_the_bonnet_unscored(tiny_model_yaml, tmp_path, capsys):
    from panoptic_node.cli import main
    truth = np.full((20, 20), 3)
    truth[12:] = 8001                                  # labelled as a car: the camera's own bonnet
    gt = _frames_bag(tmp_path / "gt", [truth, truth])
    keep = np.full((20, 20), 255, np.uint8)
    keep[12:] = 0
    (tmp_path / "masks").mkdir()
    Image.fromarray(keep).save(tmp_path / "masks" / "camera.png")  # the camera of /camera/image_raw
    assert main(["replay", str(gt), "--model", str(tiny_model_yaml), "--out", str(tmp_path / "pred"),
                 "--ego-masks", str(tmp_path / "masks"), "--metrics", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "camera /camera: ego mask " in out and "scaled" not in out  # drawn at the frames' size: nothing to say
    with BagReader(tmp_path / "pred") as r:
        maps = [image_array(m.msg) for m in r.messages(["/camera/panoptic/semantic"])]
    assert len(maps) == 2 and all((m[12:] == 255).all() for m in maps)
    # drawn at another size and shape: scaled, and said once (the node says it; the replay said nothing)
    Image.fromarray(keep[:, :10]).save(tmp_path / "masks" / "camera.png")
    assert main(["replay", str(gt), "--model", str(tiny_model_yaml), "--out", str(tmp_path / "wide"),
                 "--ego-masks", str(tmp_path / "masks")]) == 0
    assert capsys.readouterr().out.count("warning: camera /camera: ego mask is 10x20, its frames 20x20: the mask is "
                                         "scaled to them, stretched from a 0.50 to a 1.00 aspect ratio") == 1
    matrix = np.array(json.loads((tmp_path / "m.json").read_text())["metrics"]["confusion"]["matrix"])
    assert matrix.sum() == 2 * 12 * 20 and matrix[8].sum() == 0  # only the street is scored; no car row
    assert main(["replay", str(gt), "--model", str(tiny_model_yaml), "--out", str(tmp_path / "p2"),
                 "--ego-masks", str(tmp_path / "nowhere")]) == 2
    assert "ego mask folder" in capsys.readouterr().err and not (tmp_path / "p2").exists()


def test_label_set_of_an_unknown_class_map(tmp_path):
    from panoptic_node.bag.reader import label_set_phrase
    from panoptic_node.bag.writer import label_info_msg
    with BagWriter(tmp_path / "b", "mcap") as w:
        w.write("/ground_truth/label_info", label_info_msg(header(5, ""), [
            {"class_id": 0, "class_name": "sky"}, {"class_id": 1, "class_name": "lane marking"}], 0.0), 5)
    with BagReader(tmp_path / "b") as r:
        found = r.label_set("/ground_truth/label_info")
        assert r.label_set("/camera/panoptic/label_info") is None
    assert label_set_phrase(found) == "an unknown one of 2 classes"
    assert label_set_phrase("camvid") == "the camvid label set"


def test_ground_truth_that_cannot_be_scored_costs_its_frames_score_not_the_replay(tiny_pipeline, tmp_path, rng):
    """A bag from elsewhere whose ground truth is in labels the model does not know and that does not say
    so (no label_info): each such frame is counted as not scored, with the reason; the replay finishes
    and its outputs are complete."""
    bag = _bag_with_ground_truth(tmp_path / "cs", None, rng)  # Cityscapes ids: a truck is 14, CamVid has 11
    summary = replay(tiny_pipeline, bag, tmp_path / "out", metrics_path=tmp_path / "m.json")
    assert (summary.frames, summary.evaluated, summary.unscored) == (3, 0, 3) and summary.metrics is None
    assert "3 frames' ground truth not scored (first: ground truth at 1700000000000000000: ground-truth panoptic " \
           "map holds value 13001, outside the camvid label set" in summary.format()
    assert json.loads((tmp_path / "m.json").read_text())["unscored_frames"] == 3
    with BagReader(tmp_path / "out") as r:
        assert len(list(r.messages(["/camera/panoptic/panoptic"]))) == 3


def test_ground_truth_outside_our_convention_is_not_scored_but_replayed(tiny_pipeline, tmp_path, rng):
    """Announced Cityscapes ground truth whose values are not label*1000 + instance cannot be mapped:
    its frames are counted as not scored, the replay goes on."""
    pan = np.full((48, 64), 300_000, np.int32)
    frames = [DatasetFrame(1_700_000_000_000_000_000 + i, rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), None, pan)
              for i in range(2)]
    write_bag(iter(frames), tmp_path / "bag", labels="cityscapes")
    summary = replay(tiny_pipeline, tmp_path / "bag", tmp_path / "out", log=lambda m: None)
    assert (summary.frames, summary.evaluated, summary.unscored) == (2, 0, 2)
    assert "not in our convention" in summary.format()


def test_no_mapping_for_ground_truth_names_the_flag_that_helps():
    """A COCO model on Cityscapes ground truth: no COCO labels come from Cityscapes ones, but the model
    can publish Cityscapes labels, and the line says how."""
    from panoptic_node.replay import ground_truth_mapping
    with pytest.raises(ValueError, match=r"publishes the coco label set, with no mapping from one to the other "
                                         r"\(--labels cityscapes publishes the model's output in the ground truth's\)"):
        ground_truth_mapping("cityscapes", "coco", "the ground truth in 'b'", "the model publishes")
    with pytest.raises(ValueError, match=r"with no mapping from one to the other$"):
        ground_truth_mapping("coco", "camvid", "the ground truth in 'b'", "the model publishes")
    assert ground_truth_mapping("camvid", "camvid", "", "") is None and ground_truth_mapping(None, "coco", "", "") is None


def test_pairs_by_stamp_reads_two_streams_side_by_side():
    from panoptic_node.bag.reader import BagMessage, pairs_by_stamp

    def stream(stamps, topic):
        return (BagMessage(topic, "t", s, object()) for s in stamps)
    got = list(pairs_by_stamp(stream(range(1, 101), "gt"), stream([*range(2, 101, 2), 500], "pred")))
    assert [(a.stamp_ns, b.stamp_ns, a.topic, b.topic) for a, b in got] == [(s, s, "gt", "pred") for s in range(2, 101, 2)]
    # a partner that comes more than `window` messages late finds nothing waiting: memory stays bounded
    late = [50, 1]
    assert [a.stamp_ns for a, _ in pairs_by_stamp(stream(range(1, 101), "gt"), stream(late, "pred"), window=10)] == [50]
    assert [a.stamp_ns for a, _ in pairs_by_stamp(stream(range(1, 101), "gt"), stream(late, "pred"), window=200)] == [50, 1]
    unreadable = BagMessage("pred", "t", 7, None, "does not deserialize")
    assert list(pairs_by_stamp(stream([7], "gt"), iter([unreadable]))) == []
    # a stamp that does not tell messages apart (0: unset; two on one side) pairs nothing, and is counted
    unmatched = [0, 0]
    got = pairs_by_stamp(stream([0, 0, 1, 2, 2, 3], "gt"), stream([0, 0, 1, 2, 3], "pred"), unmatched=unmatched)
    assert [a.stamp_ns for a, _ in got] == [1, 3] and unmatched == [4, 3]


def _small_message_bag(path, n=120):
    """n mono8 messages, each holding its own index as bytes, all in one (unfinished-able) chunk."""
    with BagWriter(path) as w:
        for i in range(n):
            marker = np.frombuffer(f"msg{i:05d}".encode() * 4, np.uint8).reshape(4, 8)
            w.write("/x/panoptic/semantic", image_msg(header(i + 1, "f"), image_fields(marker, "mono8")), i + 1)
    return next(Path(path).glob("*.mcap"))


def test_our_mcap_chunks_carry_their_crc(tmp_path):
    """Every chunk's CRC is the CRC-32 of its records (checked by the mcap library), and a flipped byte
    inside a chunk is then found by our reader instead of decoding as a wrong message."""
    from binascii import crc32
    from mcap.records import Chunk
    from mcap.stream_reader import StreamReader
    data_file = _small_message_bag(tmp_path / "b")
    with open(data_file, "rb") as f:
        chunks = [r for r in StreamReader(f, emit_chunks=True).records if isinstance(r, Chunk)]
    assert chunks and all(c.compression == "" and c.uncompressed_crc == crc32(c.data) != 0 for c in chunks)
    with open(data_file, "rb") as f:  # the library's own check passes
        assert sum(1 for _ in StreamReader(f, validate_crcs=True).records) > 0
    raw = bytearray(data_file.read_bytes())
    at = raw.find(b"msg00060")
    raw[at + 3] ^= 0x01  # "msg10060"
    data_file.write_bytes(bytes(raw))
    with pytest.raises(BagError, match="checksum"):
        with BagReader(tmp_path / "b") as r:
            list(r.messages(["/x/panoptic/semantic"]))


@pytest.mark.parametrize("cut_at", ["msg00037", "msg00090"])
def test_recover_keeps_every_complete_message_of_an_unfinished_chunk(tmp_path, cut_at):
    """Cut inside the chunk being written (the file ends mid-chunk, as a killed recorder leaves it):
    every message record that ends before the cut comes back, not only those of finished chunks."""
    from panoptic_node.bag.recover import recover
    data_file = _small_message_bag(tmp_path / "b")
    raw = data_file.read_bytes()
    cut = raw.find(cut_at.encode()) + 5  # inside that message's data
    data_file.write_bytes(raw[:cut])
    (tmp_path / "b" / "metadata.yaml").unlink()
    complete = [i for i in range(120) if raw.find(f"msg{i:05d}".encode() * 4) + 32 <= cut]
    result = recover(data_file, tmp_path / "fixed", log=lambda m: None)
    assert result.messages == len(complete) == int(cut_at[3:])
    with BagReader(tmp_path / "fixed") as r:
        got = [bytes(image_array(m.msg).tobytes()[:8]) for m in r.messages(["/x/panoptic/semantic"])]
    assert got == [f"msg{i:05d}".encode() for i in complete]


def test_sample_bags_script_makes_bags_replay_and_recover_read(tiny_pipeline, tmp_path):
    """rosbags/make_samples.py: the synthetic bag replays (raw and compressed topics), the cut recording
    recovers; an existing sample is not replaced without --overwrite."""
    import subprocess
    import sys
    from panoptic_node.bag.recover import recover
    script = Path(__file__).resolve().parents[1] / "rosbags" / "make_samples.py"
    out = tmp_path / "samples"
    cmd = [sys.executable, str(script), "--out", str(out), "--camvid", str(tmp_path / "no_camvid")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0 and "CamVid samples skipped" in done.stderr, done.stderr
    assert replay(tiny_pipeline, out / "synthetic_camera", image_topic="/camera/image_raw").frames == 30
    assert replay(tiny_pipeline, out / "synthetic_camera", image_topic="/camera/image_raw/compressed").frames == 30
    got = recover(out / "cut_recording.mcap", tmp_path / "recovered", log=lambda m: None)
    assert 0 < got.per_topic["/camera/image_raw"] < 30
    before = (out / "cut_recording.mcap").read_bytes()
    assert subprocess.run(cmd, capture_output=True).returncode != 0
    assert (out / "cut_recording.mcap").read_bytes() == before
