"""`evaluate` on a recording that holds a camera's semantic and instances maps but no panoptic map: the raw
maps, or the node's lossless PNG twins (what a car records to save space). The panoptic map rebuilt from
them must score exactly as the panoptic map the node published beside them."""
import json

import numpy as np
import pytest

from panoptic_node.bag.reader import BagReader
from panoptic_node.bag.recorded_maps import LABEL_MAPS, MapTopics, map_messages, panoptic_of_labels
from panoptic_node.bag.writer import BagWriter, compressed_msg, header, image_msg, label_info_msg
from panoptic_node.cli import main
from panoptic_node.inference.result import result_from_segments
from panoptic_node.messages import image_array, image_fields, label_info, png_fields, png_labels
from panoptic_node.taxonomy import get_taxonomy

CAMVID = get_taxonomy("camvid")
BASE = 1_700_000_000_000_000_000
STAMPS = [BASE + i * 100_000_000 for i in range(4)]
ROAD, BUILDING, SKY, CAR, PEDESTRIAN = 3, 1, 0, 8, 9


def _segments(rng, shift=0):
    """A street of stuff bands and several cars and pedestrians, as a segment map with per-segment labels
    (the node's own representation); `shift` moves the objects, so predictions differ from the truth."""
    seg = np.zeros((36, 48), np.int32)
    seg[:10], seg[10:24], seg[24:] = 1, 2, 3
    labels = [SKY, BUILDING, ROAD]
    for k in range(int(rng.integers(3, 6))):
        y, x = int(rng.integers(8, 28)), int(rng.integers(0, 40))
        seg[y:y + 6, max(0, x + shift):x + shift + 7] = len(labels) + 1
        labels.append(CAR if k % 2 == 0 else PEDESTRIAN)
    seg[0, :3] = 0  # a few void pixels
    present = np.unique(seg[seg > 0])  # keep segment ids 1..S without gaps
    remap = np.zeros(seg.max() + 1, np.int32)
    remap[present] = np.arange(1, len(present) + 1)
    return remap[seg], [labels[i - 1] for i in present]


def _maps(rng, shift):
    seg, labels = _segments(rng, shift)
    return result_from_segments(seg, np.array(labels), np.ones(len(labels)), CAMVID.thing_lut, "camvid")


@pytest.fixture
def recordings(tmp_path):
    """Ground truth; the node's three raw maps (what replay writes); the car's recording of the PNG twins
    only; the raw semantic and instances only. One frame's predictions per stamp, label_info beside them."""
    rng_gt, rng_pred = np.random.default_rng(1), np.random.default_rng(1)
    gt, node, png, raw = (tmp_path / n for n in ("gt", "node", "png", "raw"))
    with BagWriter(gt) as g, BagWriter(node) as n, BagWriter(png) as p, BagWriter(raw) as r:
        for w in (n, p, r):
            w.write("/car/panoptic/label_info", label_info_msg(header(STAMPS[0], "cam"), label_info(CAMVID), 0.5),
                    STAMPS[0])
        for stamp in STAMPS:
            hdr = header(stamp, "cam")
            g.write("/ground_truth/panoptic", image_msg(hdr, image_fields(_maps(rng_gt, 0).panoptic, "32SC1")), stamp)
            pred = _maps(rng_pred, 2)
            n.write("/car/panoptic/panoptic", image_msg(hdr, image_fields(pred.panoptic, "32SC1")), stamp)
            for w in (n, r):
                w.write("/car/panoptic/semantic", image_msg(hdr, image_fields(pred.semantic, "mono8")), stamp)
                w.write("/car/panoptic/instances", image_msg(hdr, image_fields(pred.instance, "mono16")), stamp)
            fields = png_fields(pred.semantic, "mono8"), png_fields(pred.instance, "mono16")
            p.write("/car/panoptic/semantic/compressed", compressed_msg(hdr, fields[0]["format"], fields[0]["data"]), stamp)
            p.write("/car/panoptic/instances/compressed", compressed_msg(hdr, fields[1]["format"], fields[1]["data"]), stamp)
    return gt, node, png, raw


def _report(tmp_path, capsys, *args):
    out = tmp_path / f"r{len(list(tmp_path.glob('r*.json')))}.json"
    assert main(["evaluate", *args, "--json", str(out)]) == 0, capsys.readouterr().err
    return json.loads(out.read_text())


def test_the_maps_rebuilt_from_label_maps_are_the_published_panoptic_maps(recordings):
    _, node, png, raw = recordings
    with BagReader(node) as r:
        published = [image_array(m.msg) for m in r.messages(["/car/panoptic/panoptic"])]
    assert any((p >= 1000).any() for p in published)  # things with instance ids, not only stuff
    for bag, suffix in ((png, "/compressed"), (raw, "")):
        maps = MapTopics(semantic=f"/car/panoptic/semantic{suffix}", instances=f"/car/panoptic/instances{suffix}")
        unpaired = [0]
        got = list(map_messages(bag, maps, unpaired))
        assert [m.msgtype for m in got] == [LABEL_MAPS] * len(STAMPS) and [m.stamp_ns for m in got] == STAMPS
        for m, want in zip(got, published):
            assert np.array_equal(panoptic_of_labels(m, CAMVID.thing_lut), want)
        assert unpaired == [0]


def test_evaluate_scores_a_recording_of_the_png_twins_as_the_panoptic_maps(recordings, tmp_path, capsys):
    gt, node, png, raw = recordings
    want = _report(tmp_path, capsys, "--bag", str(gt), "--pred-bag", str(node))
    assert 0 < want["pq"]["pq"] < 1 and want["pq_things"]["pq"] > 0  # a real score, with things in it
    # found by themselves: the bag has no panoptic map, only the camera's two maps
    assert _report(tmp_path, capsys, "--bag", str(gt), "--pred-bag", str(png)) == want
    assert _report(tmp_path, capsys, "--bag", str(gt), "--pred-bag", str(raw)) == want
    # named: a semantic topic is scored with its instances twin
    assert _report(tmp_path, capsys, "--bag", str(gt), "--pred-bag", str(png), "--pred-topic",
                   "/car/panoptic/semantic/compressed", "--per-frame", str(tmp_path / "f.csv")) == want
    assert len((tmp_path / "f.csv").read_text().splitlines()) == len(STAMPS) + 1
    # a recording of the twins as the reference (the car's model) for another run's panoptic maps
    same = _report(tmp_path, capsys, "--bag", str(png), "--gt-topic", "/car/panoptic/semantic/compressed",
                   "--pred-bag", str(node))
    assert same["pq"]["pq"] == pytest.approx(1.0) and same["miou"] == pytest.approx(1.0)


def _rewrite(src, dst, change):
    """A copy of bag `src` with each message passed through change(topic, msg, stamp) -> [(topic, msg)]."""
    with BagReader(src) as r, BagWriter(dst) as w:
        for m in r.messages(sorted(r.topics)):
            for topic, msg in change(m.topic, m.msg, m.stamp_ns):
                w.write(topic, msg, m.stamp_ns)
    return dst


def test_label_maps_that_cannot_be_put_together_are_refused_with_the_reason(recordings, tmp_path, capsys):
    gt, node, png, raw = recordings
    # the instances twin missing: refused before a frame is read, naming it
    no_twin = _rewrite(png, tmp_path / "no_twin", lambda t, m, s: [] if "instances" in t else [(t, m)])
    assert main(["evaluate", "--bag", str(gt), "--pred-bag", str(no_twin), "--pred-topic",
                 "/car/panoptic/semantic/compressed"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'/car/panoptic/instances/compressed'" in err and "absent" in err
    assert main(["evaluate", "--bag", str(gt), "--pred-bag", str(no_twin)]) == 2
    assert "nor a camera's semantic + instances maps" in capsys.readouterr().err

    def damage(kind):
        def change(topic, msg, stamp):
            if topic.endswith("semantic/compressed") and stamp == STAMPS[1]:
                labels = np.full((36, 48), 40 if kind == "label" else 3, np.uint8)
                fields = (png_fields(labels, "mono8") if kind == "label" else
                          png_fields(labels[:30], "mono8") if kind == "size" else
                          png_fields(labels.astype(np.uint16), "mono16") | {"format": msg.format})
                return [(topic, compressed_msg(msg.header, fields["format"], fields["data"]))]
            return [(topic, msg)]
        return change
    for kind, says in (("label", "predicted panoptic map holds value 40, outside the camvid label set"),
                       ("size", "differ in size: semantic 48x30, instances 48x36"),
                       ("mode", "holds a PNG image of mode I;16; expected a one-channel 8-bit PNG")):
        bag = _rewrite(png, tmp_path / kind, damage(kind))
        assert main(["evaluate", "--bag", str(gt), "--pred-bag", str(bag)]) == 0  # the other frames score
        err = capsys.readouterr().err
        assert f"1 frame pairs not scored (first at {STAMPS[1]}:" in err and says in err, err


def test_two_cameras_label_maps_are_named_for_a_choice(recordings, tmp_path, capsys):
    _, _, png, _ = recordings
    two = _rewrite(png, tmp_path / "two", lambda t, m, s: [(t, m)] + ([(t.replace("/car/", "/car2/"), m)]
                                                                      if "/panoptic/" in t else []))
    assert main(["evaluate", "--bag", str(recordings[0]), "--pred-bag", str(two)]) == 2
    assert capsys.readouterr().err.endswith(
        "holds 0 panoptic map topics (<camera>/panoptic/panoptic); semantic + instances maps of 2 cameras (/car, "
        "/car2); choose the predictions with --pred-topic\n")



def _car_recording(tmp_path, rng, pipeline):
    """A car's recording: a camera's frames, and the node's maps as a car records them (the PNG twins and
    label_info; the maps replay writes for these frames)."""
    from panoptic_node.replay import replay
    camera = tmp_path / "camera"
    with BagWriter(camera) as w:
        for stamp in STAMPS:
            rgb = rng.integers(0, 255, (36, 48, 3), dtype=np.uint8)
            w.write("/car/image_raw", image_msg(header(stamp, "cam"), image_fields(rgb, "rgb8")), stamp)
    assert replay(pipeline, camera, tmp_path / "on_car").frames == len(STAMPS)
    # the car's recording: its frames, and the node's maps as the car records them (the PNG twins)
    with BagWriter(tmp_path / "car") as w:
        for bag in (camera, tmp_path / "on_car"):
            with BagReader(bag) as r:
                for m in r.messages(sorted(r.topics)):
                    if m.topic.endswith(("/semantic", "/instances")):
                        fields = png_fields(image_array(m.msg), m.msg.encoding)
                        w.write(m.topic + "/compressed", compressed_msg(m.msg.header, fields["format"],
                                                                        fields["data"]), m.stamp_ns)
                    elif m.topic.endswith(("/image_raw", "/label_info")):
                        w.write(m.topic, m.msg, m.stamp_ns)
    return tmp_path / "car"


def test_replay_scores_a_new_run_against_a_recording_of_the_nodes_maps(recordings, tiny_pipeline, tmp_path, rng,
                                                                      capsys):
    """A car's recording (its camera and the node's PNG twins, label_info beside them) is the reference for a
    replay of another model on the same frames (`replay --gt-topic .../semantic/compressed`): the model that
    made the maps agrees with them exactly, and another one scores what `evaluate` gives on the two runs."""
    from panoptic_node.replay import replay
    twin = "/car/panoptic/semantic/compressed"
    same = replay(tiny_pipeline, _car_recording(tmp_path, rng, tiny_pipeline), gt_topic=twin)
    assert same.evaluated == len(STAMPS) and same.metrics["miou"] == pytest.approx(1.0)
    assert same.metrics["pq"]["pq"] == pytest.approx(1.0)
    # the fixture's maps of several cars and pedestrians as the car's, beside camera frames of their stamps
    car = tmp_path / "rich"
    with BagReader(recordings[2]) as r, BagWriter(car) as w:
        for m in r.messages(sorted(r.topics)):
            w.write(m.topic, m.msg, m.stamp_ns)
        for stamp in STAMPS:
            rgb = rng.integers(0, 255, (36, 48, 3), dtype=np.uint8)
            w.write("/car/image_raw", image_msg(header(stamp, "cam"), image_fields(rgb, "rgb8")), stamp)
    new = replay(tiny_pipeline, car, tmp_path / "new", gt_topic=twin)
    assert new.evaluated == len(STAMPS) and 0 < new.metrics["miou"] < 1.0
    want = _report(tmp_path, capsys, "--bag", str(car), "--gt-topic", twin, "--pred-bag", str(tmp_path / "new"))
    things = [c for c in want["per_class"].values() if c["isthing"]]
    assert sum(c.get("tp", 0) + c.get("fn", 0) for c in things) > len(STAMPS)  # the reference's cars, one segment each
    assert json.loads(json.dumps({k: new.metrics[k] for k in want})) == want  # the same scores, every class


def test_a_recording_that_kept_the_frames_jpeg_twin_replays_against_the_nodes_maps(tiny_pipeline, tmp_path, rng):
    """car.launch.py record_frames:=compressed keeps the driver's JPEG twin of the frames the node read raw
    (<frames>/compressed): a replay finds the camera there and scores every frame against the maps the node
    said (from the raw frames: the same model agrees as far as JPEG leaves the frames alike)."""
    from panoptic_node.messages import jpeg_fields
    from panoptic_node.replay import replay
    raw = _car_recording(tmp_path, rng, tiny_pipeline)

    def jpeg(topic, msg, stamp):
        if topic != "/car/image_raw":
            return [(topic, msg)]
        fields = jpeg_fields(image_array(msg), quality=95)  # image_transport's default quality
        return [(topic + "/compressed", compressed_msg(msg.header, fields["format"], fields["data"]))]
    kept = _rewrite(raw, tmp_path / "kept_jpeg", jpeg)
    with BagReader(kept) as r:
        assert "/car/image_raw" not in r.topics and "/car/image_raw/compressed" in r.topics
    run = replay(tiny_pipeline, kept, gt_topic="/car/panoptic/semantic/compressed")
    assert run.frames == run.evaluated == len(STAMPS)
    assert run.metrics["pixel_accuracy"] > 0.5, run.metrics["pixel_accuracy"]


def test_replay_refuses_a_reference_it_cannot_score_before_writing(tiny_pipeline, tmp_path, rng):
    """A semantic map named without its instances twin, and label maps in a label set the model cannot be
    scored in, are refused in one line before the output bag exists."""
    from panoptic_node.replay import replay
    png = _car_recording(tmp_path, rng, tiny_pipeline)
    no_twin = _rewrite(png, tmp_path / "no_twin", lambda t, m, s: [] if "instances" in t else [(t, m)])
    with pytest.raises(ValueError, match=r"^--gt-topic '/car/panoptic/semantic/compressed' is scored with its "
                                         r"instances map '/car/panoptic/instances/compressed'.*absent"):
        replay(tiny_pipeline, no_twin, tmp_path / "out", gt_topic="/car/panoptic/semantic/compressed")
    coco = get_taxonomy("coco")
    other_set = _rewrite(png, tmp_path / "coco", lambda t, m, s: [(t, label_info_msg(m.header, label_info(coco), 0.5))
                                                                  if t.endswith("label_info") else (t, m)])
    with pytest.raises(ValueError, match=r"^the ground truth in .* is in the coco label set "
                                         r"\(/car/panoptic/label_info\) and the model publishes"):
        replay(tiny_pipeline, other_set, tmp_path / "out", gt_topic="/car/panoptic/semantic/compressed")
    assert not (tmp_path / "out").exists()

    def cut(topic, msg, stamp):  # one frame's semantic map of another size than its instances map
        if topic.endswith("semantic/compressed") and stamp == STAMPS[1]:
            fields = png_fields(png_labels(msg)[:30], "mono8")
            return [(topic, compressed_msg(msg.header, fields["format"], fields["data"]))]
        return [(topic, msg)]
    summary = replay(tiny_pipeline, _rewrite(png, tmp_path / "cut", cut), gt_topic="/car/panoptic/semantic/compressed")
    assert (summary.evaluated, summary.unscored) == (len(STAMPS) - 1, 1)  # that frame's score, not the replay
    assert summary.errors == [f"ground truth at {STAMPS[1]}: the maps '/car/panoptic/semantic/compressed + "
                              f"/car/panoptic/instances/compressed' at {STAMPS[1]} differ in size: semantic 48x30, "
                              f"instances 48x36"]
    # a half that does not even deserialize (bytes damaged on disk) fails its pair once, counted once
    import sqlite3
    with BagReader(png) as r, BagWriter(tmp_path / "damaged", "sqlite3") as w:
        for m in r.messages(sorted(r.topics)):
            w.write(m.topic, m.msg, m.stamp_ns)
    db = sqlite3.connect(next((tmp_path / "damaged").glob("*.db3")))
    db.execute("UPDATE messages SET data = X'00010203' WHERE timestamp = ? AND topic_id = (SELECT id FROM topics "
               "WHERE name = '/car/panoptic/semantic/compressed')", (STAMPS[2],))
    db.commit()
    db.close()
    summary = replay(tiny_pipeline, tmp_path / "damaged", gt_topic="/car/panoptic/semantic/compressed")
    assert (summary.evaluated, summary.unscored, summary.gt_unmatched) == (len(STAMPS) - 1, 1, 0)
    assert summary.errors[0].startswith(f"ground truth at {STAMPS[2]}: ")
