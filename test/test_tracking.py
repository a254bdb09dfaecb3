"""Instance ids kept from frame to frame (inference/tracking.py), on frames drawn here whose objects are known."""
import numpy as np
import pytest

from panoptic_node.inference.result import LABEL_DIVISOR, VOID_PANOPTIC, result_from_segments
from panoptic_node.inference.tracking import BUFFER, MAX_TRACK_ID, InstanceTracker, buffered_iou

CAR, PERSON, ROAD = 8, 9, 3
THING = np.zeros(12, bool)
THING[[CAR, PERSON, 10]] = True
H, W = 120, 200


def frame(objects, order=None):
    """A frame with road everywhere and each (label, x0, y0, x1, y1) drawn on it; `order` permutes the
    segment numbering, as the pipeline's own numbering changes from frame to frame."""
    order = list(range(len(objects))) if order is None else order
    ids = np.ones((H, W), np.int32)  # segment 1: road
    labels, scores = [ROAD], [0.9]
    for k, i in enumerate(order):
        label, x0, y0, x1, y1 = objects[i]
        ids[y0:y1, x0:x1] = k + 2
        labels.append(label)
        scores.append(0.8)
    return result_from_segments(ids, np.array(labels), np.array(scores), THING, "camvid")


def id_at(result, x, y):
    return int(result.instance[y, x])


def test_objects_keep_their_ids_while_they_move_and_the_pipeline_renumbers_them():
    tracker = InstanceTracker()
    seen = []
    for t in range(20):
        objects = [(CAR, 10 + 3 * t, 30, 60 + 3 * t, 70), (PERSON, 150 - 2 * t, 20, 165 - 2 * t, 90)]
        out = tracker.update(frame(objects, order=[t % 2, 1 - t % 2]))
        seen.append((id_at(out, 35 + 3 * t, 50), id_at(out, 157 - 2 * t, 50)))
        # every map tells the same story: instance map, panoptic map, segments
        for s in out.segments:
            mask = out.segment_ids == s.id
            assert (out.instance[mask] == s.instance).all()
            assert (out.panoptic[mask] == (s.label * LABEL_DIVISOR + s.instance if s.is_thing else s.label)).all()
    assert len(set(seen)) == 1 and seen[0][0] != seen[0][1] and 0 not in seen[0]
    # the per-frame numbering alone would have swapped them every frame
    assert len({(id_at(frame([(CAR, 10, 30, 60, 70), (PERSON, 150, 20, 165, 90)], order=o), 35, 50))
                for o in ([0, 1], [1, 0])}) == 2


def test_stuff_semantic_and_void_are_unchanged():
    before = frame([(CAR, 10, 10, 50, 50)])
    before.segment_ids[0, :] = 0  # a void row
    before.semantic[0, :], before.instance[0, :], before.panoptic[0, :] = 255, 0, VOID_PANOPTIC
    tracker = InstanceTracker()
    tracker.update(frame([(PERSON, 100, 10, 120, 60)]))  # an earlier object takes id 1
    out = tracker.update(before)
    assert (out.semantic == before.semantic).all() and (out.segment_ids == before.segment_ids).all()
    stuff = ~THING[before.semantic.clip(0, 11)] | (before.segment_ids == 0)
    assert (out.panoptic[stuff] == before.panoptic[stuff]).all() and (out.instance[stuff] == 0).all()
    assert id_at(out, 20, 20) == 2  # a new track: the id the person holds is not given twice


def test_an_object_hidden_for_a_few_frames_comes_back_with_its_id_a_longer_gap_gets_a_new_one():
    tracker = InstanceTracker(max_lost=3)
    car = [(CAR, 40, 30, 90, 80)]
    first = id_at(tracker.update(frame(car)), 60, 50)
    for _ in range(3):
        tracker.update(frame([]))
    assert id_at(tracker.update(frame(car)), 60, 50) == first
    for _ in range(4):
        tracker.update(frame([]))
    again = id_at(tracker.update(frame(car)), 60, 50)
    assert again not in (0, first)  # ended after 3 unseen frames; its id is not handed out at once


def test_another_class_in_the_same_place_is_another_object():
    tracker = InstanceTracker()
    car = id_at(tracker.update(frame([(CAR, 40, 30, 90, 80)])), 60, 50)
    person = id_at(tracker.update(frame([(PERSON, 40, 30, 90, 80)])), 60, 50)
    assert person != car


def test_one_segment_continues_one_track_when_two_overlap_it():
    tracker = InstanceTracker()
    out = tracker.update(frame([(CAR, 10, 30, 60, 80), (CAR, 62, 30, 112, 80)]))
    left, right = id_at(out, 30, 50), id_at(out, 90, 50)
    # the two cars now seen as one segment that overlaps the right one most
    merged = tracker.update(frame([(CAR, 30, 30, 112, 80)]))
    assert id_at(merged, 90, 50) == right
    # the left car's track is alive: when the two part again it gets its id back
    parted = tracker.update(frame([(CAR, 10, 30, 60, 80), (CAR, 62, 30, 112, 80)]))
    assert (id_at(parted, 30, 50), id_at(parted, 90, 50)) == (left, right)


@pytest.mark.parametrize("min_iou, same", [(0.3, True), (0.5, False)])
def test_min_iou_decides_how_far_an_object_may_jump(min_iou, same):
    """A car jumps 60 pixels to the right before its velocity is known, one and a half times its core box (40
    pixels, the middle 80 % of its 50 columns): the core boxes enlarged by 30 % overlap by IoU 0.03, enlarged
    by their size on every side (the second stage) by 0.33."""
    tracker = InstanceTracker(min_iou=min_iou)
    first = id_at(tracker.update(frame([(CAR, 10, 30, 60, 80)])), 30, 50)
    assert (id_at(tracker.update(frame([(CAR, 70, 30, 120, 80)])), 90, 50) == first) is same


def test_ids_come_back_only_after_every_other_free_id():
    tracker = InstanceTracker(max_lost=0)
    ids = []
    for t in range(MAX_TRACK_ID + 5):
        x = 10 + 60 * (t % 2)  # alternating places: no overlap, a new object each frame
        ids.append(id_at(tracker.update(frame([(CAR, x, 30, x + 40, 80)])), x + 5, 50))
    assert ids[:MAX_TRACK_ID] == list(range(1, MAX_TRACK_ID + 1))
    assert ids[MAX_TRACK_ID:] == [1, 2, 3, 4, 5]


def test_a_new_frame_size_or_a_reset_ends_the_tracks():
    tracker = InstanceTracker()
    car = [(CAR, 40, 30, 90, 80)]
    first = id_at(tracker.update(frame(car)), 60, 50)
    tracker.reset()
    assert id_at(tracker.update(frame(car)), 60, 50) != first
    second = id_at(tracker.update(frame(car)), 60, 50)
    small = result_from_segments(np.ones((60, 100), np.int32), np.array([CAR]), np.array([0.9]), THING, "camvid")
    assert int(tracker.update(small).instance.max()) not in (0, first, second)


def test_more_things_in_a_frame_than_the_panoptic_map_holds_is_refused_in_one_line():
    tracker = InstanceTracker()
    n = MAX_TRACK_ID + 1
    ids = np.arange(1, n + 1, dtype=np.int32).reshape(1, n).repeat(2, 0)
    many = result_from_segments(ids, np.full(n, CAR), np.full(n, 0.9), THING, "camvid")
    with pytest.raises(ValueError, match="more than 999 thing segments in one frame"):
        tracker.update(many)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="min_iou"):
        InstanceTracker(min_iou=0.0)
    with pytest.raises(ValueError, match="max_lost"):
        InstanceTracker(max_lost=-1)


def test_a_small_fast_object_keeps_its_id():
    """A pedestrian 10 pixels wide moving 6 pixels a frame overlaps its last box by a quarter (IoU 4 / 16):
    the buffered boxes and the velocity carry it."""
    tracker = InstanceTracker()
    ids = {id_at(tracker.update(frame([(PERSON, 10 + 6 * t, 20, 20 + 6 * t, 60)])), 15 + 6 * t, 40) for t in range(25)}
    assert len(ids) == 1 and 0 not in ids


def test_a_track_unseen_for_a_while_is_expected_where_its_motion_took_it():
    tracker = InstanceTracker(max_lost=5)
    for t in range(5):  # 8 pixels a frame to the right
        first = id_at(tracker.update(frame([(CAR, 10 + 8 * t, 30, 40 + 8 * t, 60)])), 25 + 8 * t, 45)
    for _ in range(3):
        tracker.update(frame([]))
    # 4 frames on: 32 pixels further, entirely clear of where it was last seen (x 42..72)
    assert id_at(tracker.update(frame([(CAR, 82, 30, 112, 60)])), 97, 45) == first


def test_buffered_iou_by_hand():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[10, 0, 20, 10], [100, 100, 110, 110]])
    # enlarged by 3 on each side: [-3, 13] x [-3, 13] and [7, 23] x [-3, 13]: 6 x 16 shared of 16 x 16 each
    assert BUFFER == 0.3
    assert buffered_iou(a, b) == pytest.approx(np.array([[96 / (256 + 256 - 96), 0.0]]))
    assert buffered_iou(a, b, buffer=0.0)[0, 0] == 0.0


def test_the_defaults_are_the_nodes():
    from panoptic_node.inference.tracking import DEFAULT_MAX_LOST, DEFAULT_MIN_IOU
    from panoptic_node.params import defaults
    d = defaults()
    assert (d["track_instances"], d["track_min_iou"], d["track_max_lost"]) == (True, DEFAULT_MIN_IOU, DEFAULT_MAX_LOST)


class ScriptedPipeline:
    """The tiny pipeline's identity (backend, config, label set) with results drawn here: frame t holds a car
    moving right and a pedestrian moving left, numbered in the opposite order every other frame."""

    def __init__(self, real):
        self.real, self.t = real, 0

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __call__(self, rgb):
        t, self.t = self.t, self.t + 1
        objects = [(CAR, 2 + t, 10, 22 + t, 30), (PERSON, 50 - t, 5, 58 - t, 40)]
        ids = np.ones(rgb.shape[:2], np.int32)
        labels = [ROAD]
        for k, i in enumerate([t % 2, 1 - t % 2]):
            label, x0, y0, x1, y1 = objects[i]
            ids[y0:y1, x0:x1] = k + 2
            labels.append(label)
        return result_from_segments(ids, np.array(labels), np.full(3, 0.9), THING, "camvid")


@pytest.mark.parametrize("track", [True, False])
def test_replay_keeps_each_objects_id_in_the_maps_and_detections(tiny_pipeline, tmp_path, rng, track):
    from test_bag import camera_bag
    from panoptic_node.bag.reader import BagReader
    from panoptic_node.messages import image_array
    from panoptic_node.replay import replay
    frames = [(1_700_000_000_000_000_000 + i * 33_000_000, rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
              for i in range(6)]
    bag = camera_bag(tmp_path / "in", "mcap", frames)
    replay(ScriptedPipeline(tiny_pipeline), bag, tmp_path / "out", track=track)
    with BagReader(tmp_path / "out") as r:
        instances = [image_array(m.msg) for m in r.messages(["/front/panoptic/instances"])]
        detections = [m.msg for m in r.messages(["/front/panoptic/detections"])]
    car = [int(m[20, 12 + t]) for t, m in enumerate(instances)]
    person = [int(m[20, 54 - t]) for t, m in enumerate(instances)]
    for m, d in zip(instances, detections):  # the detection's id is the object's value in the instance map
        assert sorted(int(x.id) for x in d.detections) == sorted(set(np.unique(m).tolist()) - {0})
    if track:
        assert len(set(car)) == 1 and len(set(person)) == 1 and car[0] != person[0]
    else:  # each frame's own numbering: the two swap every frame
        assert car == [1, 2, 1, 2, 1, 2] and person == [2, 1, 2, 1, 2, 1]


def test_core_boxes_leave_out_a_segments_small_distant_pieces():
    from panoptic_node.inference.tracking import core_boxes
    ids = np.ones((H, W), np.int32)
    ids[40:80, 100:140] = 2          # a car of 1600 pixels
    ids[110:115, 0:10] = 2           # and a piece of 50 far away, left with it by merge_things / split_things
    result = result_from_segments(ids, np.array([ROAD, CAR]), np.array([0.9, 0.9]), THING, "camvid")
    (car,) = [s for s in result.segments if s.is_thing]
    assert car.box == (0, 40, 140, 115)
    # directly: the first column with more than 10 % of the pixels at or left of it, the first reaching 90 %
    ys, xs = np.nonzero(ids == 2)
    def first(v, share, strict):
        c = np.cumsum(np.bincount(v))
        return int(np.argmax(c > share * len(v)) if strict else np.argmax(c >= share * len(v)))
    expected = [first(xs, 0.1, True), first(ys, 0.1, True), first(xs, 0.9, False) + 1, first(ys, 0.9, False) + 1]
    assert core_boxes(result.segment_ids, [car]).tolist() == [expected]
    assert 100 <= expected[0] and expected[3] <= 80  # the car's own block


def kitti_step_fixture(root, frames=6, sequences=("0002",)):
    """A KITTI-STEP folder (deeplab2's layout) whose labels are ScriptedPipeline's objects: a car (trainId 13,
    track 5) moving right, a person (11, track 300) moving left, on road (0); the person's crowd-free."""
    from PIL import Image
    for seq in sequences:
        for t in range(frames):
            for kind in ("images", "panoptic_maps"):
                (root / kind / "val" / seq).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(root / "images" / "val" / seq / f"{t:06d}.png")
            step = np.zeros((48, 64, 3), np.uint8)  # road, no track
            step[10:30, 2 + t:22 + t] = (13, 0, 5)
            step[5:40, 50 - t:58 - t] = (11, 300 // 256, 300 % 256)
            step[45:, :] = (255, 0, 0)  # void
            Image.fromarray(step).save(root / "panoptic_maps" / "val" / seq / f"{t:06d}.png")
    return root


def test_kitti_step_converts_with_track_ids_kept_over_the_sequence(tmp_path):
    from panoptic_node.bag.convert import convert
    from panoptic_node.bag.reader import BagReader
    from panoptic_node.messages import image_array
    src = kitti_step_fixture(tmp_path / "step")
    assert convert("kitti-step", src, tmp_path / "bag") == 6
    with BagReader(tmp_path / "bag") as r:
        pans = [image_array(m.msg) for m in r.messages(["/ground_truth/panoptic"])]
        stamps = [m.stamp_ns for m in r.messages(["/camera/image_raw"])]
    assert np.diff(stamps).tolist() == [100_000_000] * 5  # KITTI's 10 Hz
    cars = {int(p[20, 12 + t]) for t, p in enumerate(pans)}
    people = {int(p[20, 54 - t]) for t, p in enumerate(pans)}
    # one id per track over the sequence, 1..999 as tracks appear (within a frame by class, then track id)
    assert people == {11 * 1000 + 1} and cars == {13 * 1000 + 2}
    assert all((p[45:] == -1).all() and (p[0, :2] == 0).all() for p in pans)  # void; road is stuff


def test_kitti_step_refusals_name_what_was_expected(tmp_path):
    from panoptic_node.bag.convert import convert
    src = kitti_step_fixture(tmp_path / "step", frames=1, sequences=("0002", "0006"))
    with pytest.raises(ValueError, match=r"holds 2 sequences \(0002, 0006\); choose one with --sequence"):
        convert("kitti-step", src, tmp_path / "a")
    with pytest.raises(ValueError, match="--sequence 0009: not in KITTI-STEP val; expected one of 0002, 0006"):
        convert("kitti-step", src, tmp_path / "b", sequence="0009")
    with pytest.raises(ValueError, match="only KITTI-STEP has sequences"):
        convert("camvid", src, tmp_path / "c", sequence="0002")
    with pytest.raises(FileNotFoundError, match="no KITTI-STEP split 'train'"):
        convert("kitti-step", src, tmp_path / "d", split="train")
    assert not any((tmp_path / n).exists() for n in "abcd")
    assert convert("kitti-step", src, tmp_path / "e", sequence="0006") == 1


@pytest.mark.parametrize("track, aq", [(True, 1.0), (False, 0.5)])
def test_replay_scores_tracking_against_kitti_step_tracks(tiny_pipeline, tmp_path, track, aq):
    """The scripted objects are the labelled ones, pixel for pixel: kept ids give AQ 1; per-frame numbering,
    which swaps the two every frame, cuts each track into two halves (AQ 1/2)."""
    from panoptic_node.bag.convert import convert
    from panoptic_node.replay import replay
    convert("kitti-step", kitti_step_fixture(tmp_path / "step"), tmp_path / "bag")
    summary = replay(ScriptedPipeline(tiny_pipeline), tmp_path / "bag", track=track, stq=True)
    t = summary.metrics["tracking"]
    assert t["tracks"] == 2 and t["aq"] == pytest.approx(aq)
    assert t["stq"] == pytest.approx(np.sqrt(aq * summary.metrics["miou"]))
    assert f"STQ {100 * t['stq']:.1f} (AQ {100 * aq:.1f} over 2 labelled tracks" in summary.format()


def test_evaluate_scores_tracking_of_a_replayed_bag(tiny_pipeline, tmp_path, capsys):
    from panoptic_node.bag.convert import convert
    from panoptic_node.cli import main
    from panoptic_node.replay import replay
    convert("kitti-step", kitti_step_fixture(tmp_path / "step"), tmp_path / "bag")
    replay(ScriptedPipeline(tiny_pipeline), tmp_path / "bag", tmp_path / "pred", track=False)
    assert main(["evaluate", "--bag", str(tmp_path / "bag"), "--pred-bag", str(tmp_path / "pred"), "--stq",
                 "--json", str(tmp_path / "r.json")]) == 0
    assert "AQ 50.0  (2 labelled tracks)" in capsys.readouterr().out
    import json
    assert json.loads((tmp_path / "r.json").read_text())["tracking"]["aq"] == pytest.approx(0.5)
    assert main(["evaluate", "--gt-json", "a", "--gt-folder", "b", "--pred-json", "c", "--pred-folder", "d",
                 "--stq"]) == 2
    assert "--stq scores the frames of bags" in capsys.readouterr().err


@pytest.mark.parametrize("damage, says", [
    (lambda p: __import__("PIL.Image").Image.open(p).convert("L").save(p), "is a L image; expected an RGB PNG"),
    (lambda p: __import__("PIL.Image").Image.new("RGB", (10, 10)).save(p), "is 10x10, its frame 64x48"),
    (lambda p: __import__("PIL.Image").Image.new("RGB", (64, 48), (40, 0, 0)).save(p), "holds class 40"),
])
def test_a_kitti_step_map_that_is_not_one_is_refused_and_no_bag_is_left(tmp_path, damage, says):
    from panoptic_node.bag.convert import convert
    src = kitti_step_fixture(tmp_path / "step", frames=3)
    damage(src / "panoptic_maps" / "val" / "0002" / "000001.png")
    with pytest.raises(ValueError, match=says):
        convert("kitti-step", src, tmp_path / "bag")
    assert not (tmp_path / "bag").exists()


@pytest.mark.parametrize("track", [True, False])
def test_infer_track_keeps_each_objects_id_over_a_folder_of_frames(tiny_pipeline, tmp_path, rng, monkeypatch,
                                                                      track):
    """infer --track: a clip's frames, numbered, are one camera in time order; the instance PNGs keep each
    object's id as the node does; without it each image numbers its own."""
    from PIL import Image
    import panoptic_node.cli as cli
    frames = tmp_path / "clip"
    frames.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(frames / f"frame_{i:04d}.png")
    # one pipeline: the scripted results follow the order of its calls (two workers: test_pipeline.py)
    monkeypatch.setattr(cli, "_pipeline", lambda args, *more, **named: ScriptedPipeline(tiny_pipeline))
    assert cli.main(["infer", str(frames), "--out", str(tmp_path / "out"), "--inference-workers", "1"]
                    + (["--track"] if track else [])) == 0
    instances = [np.asarray(Image.open(tmp_path / "out" / f"frame_{i:04d}_instances.png")) for i in range(6)]
    car = [int(m[20, 12 + t]) for t, m in enumerate(instances)]
    person = [int(m[20, 54 - t]) for t, m in enumerate(instances)]
    if track:
        assert len(set(car)) == 1 and len(set(person)) == 1 and car[0] != person[0]
    else:
        assert car == [1, 2, 1, 2, 1, 2] and person == [2, 1, 2, 1, 2, 1]
