"""STEP's association quality (evaluation/association.py), on tracks counted by hand."""
import numpy as np
import pytest

from panoptic_node.evaluation.association import AssociationQuality

THING = np.zeros(12, bool)
THING[[8, 9]] = True
CAR, ROAD = 8, 3


def frames_with(boxes_ids, n=4, shape=(20, 40), label=CAR):
    """n panoptic maps of road with a box per (x0, x1, id) list entry of each frame (or one list for all)."""
    out = []
    for t in range(n):
        pan = np.full(shape, ROAD, np.int32)
        for x0, x1, i in (boxes_ids[t] if isinstance(boxes_ids[0], list) else boxes_ids):
            pan[5:15, x0:x1] = label * 1000 + i
        out.append(pan)
    return out


def aq_of(gt_frames, pred_frames, sequences=None):
    aq = AssociationQuality(THING)
    for i, (g, p) in enumerate(zip(gt_frames, pred_frames)):
        aq.add(g, p, sequence=(sequences or [""] * len(gt_frames))[i])
    return aq.result(miou=0.64)


def test_one_id_kept_over_the_track_scores_1_and_stq_is_the_geometric_mean():
    gt = frames_with([(5, 15, 1)])
    r = aq_of(gt, frames_with([(5, 15, 7)]))  # another number, kept: association is about consistency
    assert r["aq"] == pytest.approx(1.0) and r["tracks"] == 1 and r["stq"] == pytest.approx(0.8)


def test_an_id_switch_half_way_scores_one_half():
    gt = frames_with([(5, 15, 1)])
    pred = frames_with([[(5, 15, 1)], [(5, 15, 1)], [(5, 15, 2)], [(5, 15, 2)]])
    # each half: TPA 200, FNA 200, FPA 0 -> IoU 1/2, weighted by 200 / 400, twice
    assert aq_of(gt, pred)["aq"] == pytest.approx(0.5)


def test_a_prediction_spilling_over_is_a_false_positive_association():
    gt = frames_with([(5, 15, 1)])
    pred = frames_with([(5, 25, 1)])  # 100 of its 200 pixels a frame outside: IoU 400 / 800
    assert aq_of(gt, pred)["aq"] == pytest.approx(0.5)


def test_two_objects_under_one_id_each_score_one_half():
    gt = frames_with([(5, 15, 1), (15, 25, 2)])
    pred = frames_with([(5, 25, 3)])
    r = aq_of(gt, pred)
    assert r["tracks"] == 2 and r["aq"] == pytest.approx(0.5)


def test_a_change_of_class_is_another_track():
    gt = frames_with([(5, 15, 1)])
    pred = frames_with([(5, 15, 1)], n=2) + frames_with([(5, 15, 1)], n=2, label=9)
    assert aq_of(gt, pred)["aq"] == pytest.approx(0.5)


def test_void_ground_truth_is_not_scored():
    gt = frames_with([(5, 15, 1)])
    for g in gt:
        g[:, 15:25] = -1  # unlabelled beside the car
    pred = frames_with([(5, 25, 1)])  # the spill lands on void
    assert aq_of(gt, pred)["aq"] == pytest.approx(1.0)


def test_sequences_are_scored_apart_and_weighted_by_their_tracks():
    gt = frames_with([(5, 15, 1)], n=4)
    pred = frames_with([[(5, 15, 1)], [(5, 15, 1)], [(5, 15, 1)], [(5, 15, 1)]])
    # the same ids in two sequences are two tracks; the second sequence's prediction switches half way
    pred2 = frames_with([[(5, 15, 1)], [(5, 15, 1)], [(5, 15, 2)], [(5, 15, 2)]])
    r = aq_of(gt + gt, pred + pred2, sequences=["a"] * 4 + ["b"] * 4)
    assert r["tracks"] == 2 and r["aq"] == pytest.approx(0.75)
    assert r["per_sequence"] == pytest.approx({"a": 1.0, "b": 0.5})


def test_maps_of_two_sizes_are_refused():
    with pytest.raises(ValueError, match="differ in size"):
        AssociationQuality(THING).add(np.zeros((2, 2), np.int32), np.zeros((2, 3), np.int32))
