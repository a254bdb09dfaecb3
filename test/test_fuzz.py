"""Fuzzing with a fixed budget (hypothesis, derandomized so CI runs the same cases every time): whatever
bytes arrive, image messages decode or raise FrameError, bags read or raise BagError, and the evaluator
scores or raises ValueError. Anything else would be a traceback for a user."""
import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import from_test_extra
from panoptic_node.bag.reader import BagReader
from panoptic_node.bag.writer import BagError, BagWriter, header, image_msg
from panoptic_node.evaluation.evaluator import Evaluator
from panoptic_node.messages import FrameError, SUPPORTED_ENCODINGS, compressed_to_rgb, image_fields, image_to_rgb
from panoptic_node.taxonomy import get_taxonomy

from_test_extra("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BUDGET = settings(max_examples=150, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

encodings = st.one_of(st.sampled_from(SUPPORTED_ENCODINGS + ("nv21", "16UC1", "32FC1", "", "RGB8")), st.text(max_size=8))


@BUDGET
@given(encoding=encodings, h=st.integers(-2, 12), w=st.integers(-2, 12), step=st.integers(-4, 60),
       extra=st.integers(-8, 8), bigendian=st.integers(0, 1), seed=st.integers(0, 2**16))
def test_image_messages_decode_or_raise_frame_error(encoding, h, w, step, extra, bigendian, seed):
    n = max(0, step * max(h, 0) + extra)
    data = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    msg = SimpleNamespace(encoding=encoding, height=h, width=w, step=step, is_bigendian=bigendian, data=data)
    try:
        rgb = image_to_rgb(msg)
    except FrameError:
        return
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8


@BUDGET
@given(fmt=st.sampled_from(["png", "jpeg", "rgb8; png compressed", "bmp", ""]), cut=st.integers(0, 4000),
       flips=st.lists(st.tuples(st.integers(0, 3999), st.integers(1, 255)), max_size=6))
def test_compressed_messages_decode_or_raise_frame_error(fmt, cut, flips):
    """Several damaged bytes at once: one at a time never met Pillow's SyntaxError ("broken PNG file")."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
        buf, format="JPEG" if "jpeg" in fmt else "PNG")
    data = bytearray(buf.getvalue())
    for at, xor in flips:
        if at < len(data):
            data[at] ^= xor
    msg = SimpleNamespace(format=fmt, data=bytes(data[:cut] if cut < len(data) else data))
    try:
        rgb = compressed_to_rgb(msg)
    except FrameError:
        return
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8


@pytest.fixture(scope="module", params=["mcap", "sqlite3"])
def clean_bag(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"fuzz_{request.param}")
    rng = np.random.default_rng(0)
    with BagWriter(d / "bag", request.param) as w:
        for i in range(4):
            hdr = header(i + 1, "cam")
            w.write("/camera/image_raw", image_msg(hdr, image_fields(rng.integers(0, 255, (8, 8, 3), np.uint8), "rgb8")),
                    i + 1)
            w.write("/ground_truth/panoptic", image_msg(hdr, image_fields(np.full((8, 8), 3, np.int32), "32SC1")),
                    i + 1)
    data_file = next(p for p in (d / "bag").iterdir() if p.suffix in (".mcap", ".db3"))
    return d / "bag", data_file.name, data_file.read_bytes(), (d / "bag" / "metadata.yaml").read_text()


@BUDGET
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_damaged_bags_read_or_raise_bag_error(clean_bag, tmp_path_factory, flips, cut):
    src, name, data, meta = clean_bag
    data = bytearray(data)
    for where, value in flips:
        data[int(where * len(data))] ^= value
    if cut is not None:
        data = data[: int(cut * len(data))]
    d = tmp_path_factory.mktemp("damaged") / "bag"
    d.mkdir()
    (d / name).write_bytes(bytes(data))
    (d / "metadata.yaml").write_text(meta)
    try:
        with BagReader(d) as r:
            for m in r.messages(list(r.topics)):
                if m.msg is not None and m.topic == "/camera/image_raw":
                    try:
                        image_to_rgb(m.msg)
                    except FrameError:
                        pass
    except BagError as e:
        assert "\n" not in str(e) and str(d) in str(e)


@BUDGET
@given(seed=st.integers(0, 2**16), scale=st.sampled_from([1, 20, 12_000, 2**31 - 1]), negative=st.booleans())
def test_the_evaluator_scores_or_raises_value_error(seed, scale, negative):
    rng = np.random.default_rng(seed)
    low = -scale if negative else -1
    gt = rng.integers(low, scale, (6, 7), dtype=np.int64).astype(np.int32)
    pred = np.where(rng.random((6, 7)) < 0.5, 3, 8001).astype(np.int32)
    ev = Evaluator(get_taxonomy("camvid"))
    sem = np.where(gt >= 1000, gt // 1000, np.where(gt < 0, 255, gt))
    sem = np.clip(sem, 0, 255).astype(np.uint8)
    try:
        ev.add(gt, sem, pred, np.where(pred >= 1000, pred // 1000, pred).astype(np.uint8))
    except ValueError:
        return
    report = ev.report()
    assert 0.0 <= report["pq"]["pq"] <= 1.0 and 0.0 <= report["miou"] <= 1.0
