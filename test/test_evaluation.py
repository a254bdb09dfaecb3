"""PQ / SQ / RQ equal panopticapi, cityscapesscripts and hotcoco on generated cases with crowd,
void, misses, false positives and partial overlaps; mIoU / pixel accuracy equal a direct numpy
computation; the streaming evaluator needs no frame kept in memory."""
import json

import numpy as np
import pytest
from PIL import Image

from panoptic_node.coco_format import id_to_rgb
from panoptic_node.evaluation.coco_folders import evaluate_folders
from panoptic_node.evaluation.evaluator import Evaluator
from panoptic_node.evaluation.semantic import ConfusionMatrix
from panoptic_node.taxonomy import get_taxonomy

from conftest import panopticapi_pq_compute, spawned_pools

CATEGORIES = [{"id": 1, "name": "sky", "isthing": 0}, {"id": 2, "name": "road", "isthing": 0},
              {"id": 3, "name": "tree", "isthing": 0}, {"id": 4, "name": "car", "isthing": 1},
              {"id": 5, "name": "person", "isthing": 1}]


def make_frame(rng):
    """GT and prediction id maps + segment infos for one 48x64 frame."""
    h, w = 48, 64
    gt = np.zeros((h, w), np.int64)
    gt_segs = {}
    gt[:16] = 1; gt_segs[1] = (1, 0)              # sky
    gt[16:] = 2; gt_segs[2] = (2, 0)              # road
    gt[:16, 40:] = 3; gt_segs[3] = (3, 0)         # tree
    sid = 4
    for _ in range(rng.integers(2, 5)):          # cars
        y, x = rng.integers(18, 40), rng.integers(0, 54)
        gt[y:y + rng.integers(4, 9), x:x + rng.integers(5, 11)] = sid
        gt_segs[sid] = (4, 0)
        sid += 1
    y = rng.integers(18, 40)
    gt[y:y + 6, 20:24] = sid; gt_segs[sid] = (5, 0); sid += 1          # person
    gt[40:46, 50:62] = sid; gt_segs[sid] = (4, 1); sid += 1            # crowd of cars
    gt[rng.integers(0, 48, 40), rng.integers(0, 64, 40)] = 0          # void pixels
    gt[0:3, 0:10] = 0
    gt_segs = {k: v for k, v in gt_segs.items() if (gt == k).any()}

    pred = np.zeros((h, w), np.int64)
    pred_segs = {}
    offset = 100
    for k, (cat, crowd) in gt_segs.items():
        if crowd or rng.random() < 0.15:                                   # misses (crowd is never predicted)
            continue
        m = gt == k
        shift = int(rng.integers(-3, 4))
        m = np.roll(m, shift, axis=int(rng.integers(0, 2)))               # partial overlaps
        label = cat if rng.random() > 0.1 else (4 if cat == 5 else 5 if cat == 4 else cat)  # some wrong classes
        pred[m & (pred == 0)] = offset
        pred_segs[offset] = (label, 0)
        offset += 1
    pred[(pred == 0)] = offset; pred_segs[offset] = (2, 0); offset += 1  # fill holes as road
    pred[0:3, 0:8] = offset; pred_segs[offset] = (5, 0); offset += 1     # mostly on void: not a false positive
    pred[41:45, 52:60] = offset; pred_segs[offset] = (4, 0); offset += 1  # on the car crowd: not a false positive
    pred[rng.integers(18, 40), 30:36] = offset; pred_segs[offset] = (5, 0); offset += 1  # a false positive
    pred_segs = {k: v for k, v in pred_segs.items() if (pred == k).any()}
    return gt, gt_segs, pred, pred_segs


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pq")
    rng = np.random.default_rng(7)
    gt_anns, pred_anns = [], []
    for d in ("gt", "pred"):
        (root / d).mkdir()
    for i in range(8):
        gt, gt_segs, pred, pred_segs = make_frame(rng)
        name = f"frame{i}.png"
        Image.fromarray(id_to_rgb(gt)).save(root / "gt" / name)
        Image.fromarray(id_to_rgb(pred)).save(root / "pred" / name)
        gt_anns.append({"image_id": i + 1, "file_name": name, "segments_info": [
            {"id": int(k), "category_id": c, "iscrowd": crowd, "area": int((gt == k).sum()), "bbox": [0, 0, 1, 1]}
            for k, (c, crowd) in gt_segs.items()]})
        pred_anns.append({"image_id": i + 1, "file_name": name, "segments_info": [
            {"id": int(k), "category_id": c, "iscrowd": 0, "area": int((pred == k).sum()), "bbox": [0, 0, 1, 1]}
            for k, (c, _) in pred_segs.items()]})
    images = [{"id": i + 1, "file_name": f"frame{i}.png", "height": 48, "width": 64} for i in range(8)]
    (root / "gt.json").write_text(json.dumps({"annotations": gt_anns, "categories": CATEGORIES, "images": images}))
    (root / "pred.json").write_text(json.dumps({"annotations": pred_anns, "categories": CATEGORIES, "images": images}))
    return root


def ours(folders):
    ev = evaluate_folders(folders / "gt.json", folders / "gt", folders / "pred.json", folders / "pred")
    acc, tax = ev.pq, ev.taxonomy
    return {"All": acc.summary(), "Things": acc.summary(tax.thing_ids), "Stuff": acc.summary(tax.stuff_ids)}, \
        acc.per_class()


def assert_same(mine, per_class, theirs):
    for part in ("All", "Things", "Stuff"):
        for k in ("pq", "sq", "rq"):
            assert mine[part][k] == pytest.approx(theirs[part][k], abs=1e-9), (part, k)
        assert mine[part]["n"] == theirs[part]["n"]
    for cat, vals in theirs["per_class"].items():
        for k in ("pq", "sq", "rq"):
            assert per_class.get(int(cat), {}).get(k, 0.0) == pytest.approx(vals[k], abs=1e-9), (cat, k)


def test_cases_are_not_trivial(folders):
    mine, per_class = ours(folders)
    assert 0.3 < mine["All"]["pq"] < 0.95
    assert sum(v["fp"] for v in per_class.values()) > 0 and sum(v["fn"] for v in per_class.values()) > 0


def test_equals_panopticapi(folders):
    theirs = panopticapi_pq_compute(folders / "gt.json", folders / "pred.json", folders / "gt", folders / "pred")
    assert_same(*ours(folders), theirs)


def test_equals_hotcoco(folders):
    pq_compute = pytest.importorskip("hotcoco.panoptic").pq_compute
    theirs = pq_compute(str(folders / "gt.json"), str(folders / "pred.json"), str(folders / "gt"), str(folders / "pred"))
    assert_same(*ours(folders), theirs)


def test_equals_cityscapesscripts(folders, tmp_path):
    with spawned_pools(pytest.importorskip("cityscapesscripts.evaluation.evalPanopticSemanticLabeling")) as cs:
        theirs = cs.evaluatePanoptic(str(folders / "gt.json"), str(folders / "gt"), str(folders / "pred.json"),
                                     str(folders / "pred"), str(tmp_path / "cs.json"))
    mine, per_class = ours(folders)
    for part in ("All", "Things", "Stuff"):
        for k in ("pq", "sq", "rq"):
            assert mine[part][k] == pytest.approx(theirs[part][k], abs=1e-9), (part, k)
    for cat, vals in theirs["per_class"].items():
        for k in ("pq", "sq", "rq"):
            assert per_class.get(int(cat), {}).get(k, 0.0) == pytest.approx(vals[k], abs=1e-9)


def test_confusion_metrics_equal_numpy(rng):
    cm = ConfusionMatrix(4)
    gts, preds = [], []
    for _ in range(3):
        gt = rng.integers(0, 4, (20, 30)).astype(np.uint8)
        gt[rng.random((20, 30)) < 0.1] = 255
        pred = np.where(rng.random((20, 30)) < 0.7, gt, rng.integers(0, 4, (20, 30))).astype(np.uint8)
        pred[rng.random((20, 30)) < 0.05] = 255
        cm.add(gt, pred)
        gts.append(gt)
        preds.append(pred)
    g, p = np.concatenate(gts).ravel(), np.concatenate(preds).ravel()
    valid = g != 255
    ious = []
    for c in range(4):
        inter = ((g == c) & (p == c) & valid).sum()
        union = (((g == c) & valid) | ((p == c) & valid)).sum()
        ious.append(inter / union)
    s = cm.scores()
    assert s["miou"] == pytest.approx(np.mean(ious), abs=1e-12)
    assert s["pixel_accuracy"] == pytest.approx((g[valid] == p[valid]).mean(), abs=1e-12)


def test_the_reports_confusion_matrix_counts_each_pixel_where_it_went(rng):
    """On a label set whose ids have gaps (as COCO's do), the report's matrix equals a direct count:
    row = ground-truth class, column = predicted class in class order, then void; void ground truth
    is not counted. The chart's row shares sum to one for every class that has pixels."""
    from panoptic_node.evaluation.evaluator import taxonomy_from_categories
    from panoptic_node.evaluation.report import row_shares
    def panoptic_of(sem):  # one car instance, stuff as its label
        return np.where(sem == 255, -1, np.where(sem == 4, 4001, sem.astype(np.int32)))
    tax = taxonomy_from_categories({1: {"name": "road"}, 4: {"name": "car", "isthing": 1}, 7: {"name": "sky"}})
    ev = Evaluator(tax)
    pairs = []
    for _ in range(3):
        gt = rng.choice([1, 4, 7, 255], (12, 16)).astype(np.uint8)
        pred = np.where(rng.random((12, 16)) < 0.6, gt, rng.choice([1, 4, 7, 255], (12, 16))).astype(np.uint8)
        gt[:, :2] = 1  # changed after the prediction was drawn from it: more pixels off the diagonal
        ev.add(panoptic_of(gt), gt, panoptic_of(pred), pred)
        pairs.append((gt, pred))
    g = np.concatenate([p[0].ravel() for p in pairs])
    p = np.concatenate([p[1].ravel() for p in pairs])
    columns = [1, 4, 7, 255]
    direct = [[int(((g == row) & (p == col)).sum()) for col in columns] for row in [1, 4, 7]]
    confusion = ev.report()["confusion"]
    assert confusion == {"classes": ["road", "car", "sky"], "matrix": direct}
    shares = row_shares(confusion["matrix"] + [[0, 0, 0, 0]])  # and a class with no pixels at all
    np.testing.assert_allclose(shares[:3].sum(1), 1.0)
    assert shares[3].tolist() == [0, 0, 0, 0]
    assert json.loads(json.dumps(ev.report()))["confusion"] == confusion  # goes into --json / --metrics as it is


def test_evaluator_on_our_panoptic_convention():
    camvid = get_taxonomy("camvid")
    gt = np.full((10, 10), 3, np.int32)
    gt[:4] = 0
    gt[6:9, 1:4] = 8001
    gt[0, 0] = -1
    pred = gt.copy()
    pred[6:9, 1:3] = 8002
    pred[6:9, 3] = 3
    ev = Evaluator(camvid)
    sem = np.where(gt >= 1000, gt // 1000, gt).astype(np.int64)
    sem = np.where(gt < 0, 255, sem).astype(np.uint8)
    psem = np.where(pred >= 1000, pred // 1000, pred).astype(np.uint8)
    ev.add(gt, sem, pred, psem)
    r = ev.report()
    assert r["per_class"][8]["tp"] == 1 and r["per_class"][8]["sq"] == pytest.approx(6 / 9)
    assert r["per_class"][3]["tp"] == 1 and r["per_class"][0]["pq"] == 1.0


def our_frame(rng, layout):
    """Ground truth and prediction in our panoptic convention (CamVid classes, things 8-10):
    blocks of stuff, thing instances, thing crowds (a thing label with no instance), void; the
    prediction shifted, with some wrong classes and instances that are not there. "noise" frames
    change at almost every pixel (counted per pixel, not per run)."""
    h, w = 48, 64
    if layout == "noise":
        gt = rng.choice([-1, 0, 3, 8, 8001, 8002, 9001], (h, w)).astype(np.int32)
        pred = np.where(rng.random((h, w)) < 0.8, gt, rng.choice([0, 3, 8001, 8003], (h, w))).astype(np.int32)
        return gt, np.where(pred == -1, 3, pred).astype(np.int32)
    gt = np.kron(rng.integers(0, 8, (4, 4)), np.ones((12, 16), np.int64)).astype(np.int32)
    for k in range(1, int(rng.integers(3, 7))):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 10)
        gt[y:y + rng.integers(3, 9), x:x + rng.integers(3, 11)] = int(rng.integers(8, 11)) * 1000 + k
    gt[40:46, 50:62] = 8                                   # a crowd of cars
    gt[rng.integers(0, h, 30), rng.integers(0, w, 30)] = -1
    pred = np.roll(gt, int(rng.integers(-2, 3)), axis=1)
    pred = np.where(pred == 8, 8007, pred)                 # the crowd predicted as one car
    pred[rng.integers(0, h - 4):, 30:34] = 9005            # a pedestrian that is not there
    pred = np.where((pred // 1000 == 8) & (rng.random() < 0.3), pred + 1000, pred)  # cars read as pedestrians
    pred[pred == 3] = 4 if rng.random() < 0.3 else 3      # road read as pavement
    pred[pred == -1] = 1
    return gt, pred.astype(np.int32)


def semantic_of(panoptic):
    return np.where(panoptic < 0, 255, np.where(panoptic >= 1000, panoptic // 1000, panoptic)).astype(np.uint8)


def write_coco_folders(frames, root, taxonomy):
    """(ground truth, prediction) pairs of our maps as COCO panoptic folders + JSON under root:
    each value is a segment (id = value + 1, so void is 0), a thing label with no instance in the
    ground truth a crowd."""
    anns = {"gt": [], "pred": []}
    for d in anns:
        (root / d).mkdir()
    for i, pair in enumerate(frames):
        for d, pan in zip(anns, pair):
            Image.fromarray(id_to_rgb(pan.astype(np.int64) + 1)).save(root / d / f"{i}.png")
            values, areas = np.unique(pan, return_counts=True)
            anns[d].append({"image_id": i, "file_name": f"{i}.png", "segments_info": [
                {"id": int(v) + 1, "category_id": int(v // 1000 if v >= 1000 else v),
                 "iscrowd": int(d == "gt" and v < 1000 and taxonomy.is_thing(int(v))), "area": int(a)}
                for v, a in zip(values, areas) if v >= 0]})
    cats = [{"id": c.id, "name": c.name, "isthing": int(c.isthing)} for c in taxonomy.classes]
    for d in anns:
        (root / f"{d}.json").write_text(json.dumps({"annotations": anns[d], "categories": cats}))


@pytest.mark.parametrize("layout", ["blocks", "noise"])
def test_evaluator_on_our_maps_equals_panopticapi(tmp_path, layout):
    """Replay's evaluator (our label maps, segments found among runs) scores what panopticapi's
    pq_compute scores on the same frames written as COCO panoptic folders; mIoU and pixel accuracy
    equal a direct count."""
    camvid = get_taxonomy("camvid")
    rng = np.random.default_rng(11)
    frames = [our_frame(rng, layout) for _ in range(6)]
    ev = Evaluator(camvid)
    for gt, pred in frames:
        ev.add(gt, semantic_of(gt), pred, semantic_of(pred))
    write_coco_folders(frames, tmp_path, camvid)
    theirs = panopticapi_pq_compute(tmp_path / "gt.json", tmp_path / "pred.json", tmp_path / "gt", tmp_path / "pred")
    report = ev.report()
    for part, key in (("All", "pq"), ("Things", "pq_things"), ("Stuff", "pq_stuff")):
        for k in ("pq", "sq", "rq"):
            assert report[key][k] == pytest.approx(theirs[part][k], abs=1e-9), (part, k)
    for cat, vals in theirs["per_class"].items():
        assert report["per_class"][int(cat)].get("pq", 0.0) == pytest.approx(vals["pq"], abs=1e-9), cat
    assert sum(report["per_class"][c]["fp"] for c in (8, 9)) > 0 and 0.2 < report["pq"]["pq"] < 0.95
    g = np.concatenate([semantic_of(gt).ravel() for gt, _ in frames])
    p = np.concatenate([semantic_of(pred).ravel() for _, pred in frames])
    valid = g != 255
    ious = [((g == c) & (p == c) & valid).sum() / (((g == c) | (p == c)) & valid).sum()
            for c in range(11) if (((g == c) | (p == c)) & valid).any()]
    assert report["miou"] == pytest.approx(np.mean(ious), abs=1e-12)
    assert report["pixel_accuracy"] == pytest.approx((g[valid] == p[valid]).mean(), abs=1e-12)


def _accumulate(frames, remap):
    from panoptic_node.evaluation.pq import PQAccumulator, SegmentInfo
    acc = PQAccumulator()
    for gt, gt_segs, pred, pred_segs in frames:
        acc.add(remap(gt), {int(remap(np.int64(k))): SegmentInfo(c, bool(cr)) for k, (c, cr) in gt_segs.items()},
                remap(pred), {int(remap(np.int64(k))): SegmentInfo(c) for k, (c, _) in pred_segs.items()})
    return acc


def test_small_and_24bit_ids_count_the_same():
    """Small ids are counted in id space, COCO's 24-bit colour ids through a compaction: same PQ."""
    rng = np.random.default_rng(3)
    frames = [make_frame(rng) for _ in range(6)]
    small = _accumulate(frames, lambda a: a)
    large = _accumulate(frames, lambda a: np.where(a > 0, a * 65537 + 7, 0))
    assert small.per_class() == large.per_class() and len(small.per_class()) == 5


@pytest.mark.parametrize("remap", [lambda a: a, lambda a: np.where(a > 0, a * 65537 + 7, 0)], ids=["small", "24bit"])
def test_segment_without_info_is_named(remap):
    from panoptic_node.evaluation.pq import PQAccumulator, SegmentInfo
    gt, gt_segs, pred, pred_segs = make_frame(np.random.default_rng(0))
    known = {int(remap(np.int64(k))): SegmentInfo(c) for k, (c, _) in pred_segs.items()}
    missing = max(pred_segs)
    del known[int(remap(np.int64(missing)))]
    with pytest.raises(ValueError, match=f"prediction segment id {int(remap(np.int64(missing)))} has no segment info"):
        PQAccumulator().add(remap(gt), {int(remap(np.int64(k))): SegmentInfo(c, bool(cr)) for k, (c, cr) in gt_segs.items()},
                            remap(pred), known)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16])
def test_negative_segment_id_is_named(dtype):
    # a negative id would otherwise shift into another segment's row of the joint count
    from panoptic_node.evaluation.pq import PQAccumulator, SegmentInfo
    gt, gt_segs, pred, pred_segs = make_frame(np.random.default_rng(0))
    pred = pred.astype(dtype)
    pred[5, 5] = -3
    with pytest.raises(ValueError, match="prediction segment id -3 has no segment info"):
        PQAccumulator().add(gt.astype(dtype), {k: SegmentInfo(c, bool(cr)) for k, (c, cr) in gt_segs.items()},
                            pred, {k: SegmentInfo(c) for k, (c, _) in pred_segs.items()})


@pytest.mark.parametrize("layout", ["blocks", "noise", "one pixel"])
@pytest.mark.parametrize("ids", ["small", "24bit"])
def test_joint_areas_equal_a_direct_count(layout, ids):
    """Counting runs of equal pairs (piecewise-constant maps) or pixels (noise, where runs would not be
    shorter) gives np.unique's pair counts, keys without pixels included as zero rows / columns."""
    from panoptic_node.evaluation.pq import _joint_areas
    from panoptic_node.evaluation.runs import runs
    rng = np.random.default_rng(7)
    shape = {"blocks": (6, 8), "noise": (48, 64), "one pixel": (1, 1)}[layout]
    gt, pred = rng.integers(0, 5, shape), rng.integers(0, 9, shape)
    if layout == "blocks":
        gt, pred = np.kron(gt, np.ones((8, 8), np.int64)), np.kron(pred, np.ones((8, 8), np.int64))
    if ids == "24bit":
        gt, pred = np.where(gt > 0, gt * 65537 + 7, 0), np.where(pred > 0, pred * 65537 + 7, 0)
    gt_keys = np.unique(np.append(gt, gt.max() + 3))      # one key with no pixels beyond the largest id
    pred_keys = np.unique(np.append(pred, pred.max() + 5))
    (g, p), lengths = runs(gt.ravel(), pred.ravel())
    assert (lengths is None) == (layout != "blocks")  # noise and one pixel are counted per pixel
    table = _joint_areas(g, gt_keys, p, pred_keys, lengths)
    pairs, counts = np.unique(np.stack([gt.ravel(), pred.ravel()]), axis=1, return_counts=True)
    want = np.zeros((len(gt_keys), len(pred_keys)), np.int64)
    want[np.searchsorted(gt_keys, pairs[0]), np.searchsorted(pred_keys, pairs[1])] = counts
    np.testing.assert_array_equal(table, want)
    assert table.dtype.kind == "i" and table.sum() == gt.size


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
def test_panoptic_png_ids_equal_rgb_to_id(tmp_path, mode):
    """COCO panoptic PNGs read as R + 256 G + 256² B, whatever mode PIL opens them in."""
    from PIL import Image
    from panoptic_node.coco_format import id_to_rgb, rgb_to_id
    from panoptic_node.evaluation.coco_folders import _read_ids
    rng = np.random.default_rng(1)
    ids = rng.choice([0, 1, 255, 256, 65536, 5 * 65537 + 3, (1 << 24) - 1], (12, 9))
    rgb = id_to_rgb(ids)
    img = Image.fromarray(rgb)
    maxcoverage = getattr(Image, "Quantize", Image).MAXCOVERAGE   # Image.Quantize from Pillow 9.1 on
    img = img.convert("RGBA") if mode == "RGBA" else img.quantize(colors=8, method=maxcoverage) \
        if mode == "P" else img
    img.save(tmp_path / "x.png")
    want = rgb_to_id(np.asarray(Image.open(tmp_path / "x.png").convert("RGB")))
    got = _read_ids(tmp_path / "x.png")
    np.testing.assert_array_equal(got, want)
    if mode != "P":  # a palette keeps the colours exactly only when it has room for all of them
        np.testing.assert_array_equal(got, ids)


def test_evaluator_refuses_maps_of_different_sizes():
    ev = Evaluator(get_taxonomy("camvid"))
    gt, pred = our_frame(np.random.default_rng(0), "blocks")
    with pytest.raises(ValueError, match=r"prediction \(48, 64\) / \(48, 63\) .* differ in size"):
        ev.add(gt, semantic_of(gt), pred, semantic_of(pred)[:, :63])
    assert ev.frames == 0


@pytest.mark.parametrize("damage, says", [
    ("missing gt.json", "--gt-json '{gt_json}' does not exist"),
    ("gt.json not JSON", "--gt-json '{gt_json}' is not readable JSON"),
    ("gt.json without categories", "--gt-json '{gt_json}' has no list 'categories'"),
    ("pred.json a list", "--pred-json '{pred_json}' has no list 'annotations'"),
    ("pred annotation without segments_info", "--pred-json '{pred_json}' has an annotation without"),
    ("gt segment without category_id", "a segment of image '1' lacks id or category_id"),
    ("pred segment missing from its JSON", "image '4' ({pred_png} against "),
    ("pred segment missing from its JSON", "has no segment info; expected a PNG and its JSON's segments_info to "
                                           "name the same segments"),
    ("pred PNG missing", "cannot read image '{pred_png}'"),
    ("pred PNG truncated", "cannot read image '{pred_png}'"),
    ("pred PNG grey", "'{pred_png}' has image mode L; expected a colour (RGB) PNG of segment ids"),
    ("pred PNG smaller", "expected a prediction PNG the size of its ground truth"),
    ("gt segment listed but not drawn",
     "ground-truth segment id 987654 has segment info but no pixels (1 such); expected a PNG and its JSON's"),
    ("pred segment listed but not drawn",
     "prediction segment id 987654 has segment info but no pixels (1 such); expected a PNG and its JSON's"),
    ("pred segment id a string", "a segment of image '4' has id \"three\"; expected a whole number")])
def test_evaluate_folders_with_damaged_inputs_is_one_line_and_writes_nothing(folders, tmp_path, capsys, damage, says):
    import shutil
    from panoptic_node.cli import main
    work = tmp_path / "copy"
    shutil.copytree(folders, work)
    gt_json, pred_json, pred_png = work / "gt.json", work / "pred.json", work / "pred" / "frame3.png"
    gt, pred = json.loads(gt_json.read_text()), json.loads(pred_json.read_text())
    if damage == "missing gt.json":
        gt_json.unlink()
    elif damage == "gt.json not JSON":
        gt_json.write_text("{ not json")
    elif damage == "gt.json without categories":
        gt_json.write_text(json.dumps({k: v for k, v in gt.items() if k != "categories"}))
    elif damage == "pred.json a list":
        pred_json.write_text(json.dumps(pred["annotations"]))
    elif damage == "pred annotation without segments_info":
        del pred["annotations"][2]["segments_info"]
        pred_json.write_text(json.dumps(pred))
    elif damage == "gt segment without category_id":
        del gt["annotations"][0]["segments_info"][0]["category_id"]
        gt_json.write_text(json.dumps(gt))
    elif damage == "pred segment missing from its JSON":
        frame3 = next(a for a in pred["annotations"] if a["file_name"] == "frame3.png")
        frame3["segments_info"] = frame3["segments_info"][1:]
        pred_json.write_text(json.dumps(pred))
    elif damage == "gt segment listed but not drawn":
        gt["annotations"][3]["segments_info"].append({"id": 987654, "category_id": CATEGORIES[0]["id"]})
        gt_json.write_text(json.dumps(gt))
    elif damage in ("pred segment listed but not drawn", "pred segment id a string"):
        frame3 = next(a for a in pred["annotations"] if a["file_name"] == "frame3.png")
        if damage == "pred segment id a string":
            frame3["segments_info"][0]["id"] = "three"
        else:
            frame3["segments_info"].append({"id": 987654, "category_id": frame3["segments_info"][0]["category_id"]})
        pred_json.write_text(json.dumps(pred))
    elif damage in ("pred PNG grey", "pred PNG smaller"):
        from PIL import Image
        width, height = Image.open(pred_png).size
        grey = damage == "pred PNG grey"
        Image.new("L" if grey else "RGB", (width, height) if grey else (width - 1, height)).save(pred_png)
    elif damage == "pred PNG missing":
        pred_png.unlink()
    else:
        pred_png.write_bytes(pred_png.read_bytes()[:50])
    before = {p: p.read_bytes() for p in work.rglob("*") if p.is_file()}
    assert main(["evaluate", "--gt-json", str(gt_json), "--gt-folder", str(work / "gt"), "--pred-json",
                 str(pred_json), "--pred-folder", str(work / "pred"), "--json", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after tqdm's bar
    assert err.startswith("panoptic-node evaluate: error:") and "(an unexpected error" not in err
    assert says.format(gt_json=gt_json, pred_json=pred_json, pred_png=pred_png) in err
    assert not (tmp_path / "r.json").exists()
    assert {p: p.read_bytes() for p in work.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("left_out", ["--pred-json", "--pred-folder", "--gt-folder"])
def test_evaluate_folders_missing_one_of_the_four_says_which(folders, tmp_path, capsys, left_out):
    from panoptic_node.cli import main
    given = {"--gt-json": folders / "gt.json", "--gt-folder": folders / "gt", "--pred-json": folders / "pred.json",
             "--pred-folder": folders / "pred"}
    del given[left_out]
    args = [str(x) for pair in given.items() for x in pair]
    assert main(["evaluate", *args, "--json", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"panoptic-node evaluate: error: {left_out} is missing; expected all four of --gt-json, "
                   f"--gt-folder, --pred-json and --pred-folder to score COCO-panoptic folders")
    assert not (tmp_path / "r.json").exists()


def test_evaluate_folders_writes_json_and_a_chart(folders, tmp_path, capsys):
    """From COCO-panoptic folders: the same report as from bags (PQ, and mIoU / pixel accuracy with
    each pixel's class its segment's), the JSON and the per-class chart."""
    from panoptic_node.cli import main
    assert main(["evaluate", "--gt-json", str(folders / "gt.json"), "--gt-folder", str(folders / "gt"),
                 "--pred-json", str(folders / "pred.json"), "--pred-folder", str(folders / "pred"),
                 "--json", str(tmp_path / "r.json"), "--chart", str(tmp_path / "c.png"),
                 "--confusion", str(tmp_path / "m.png")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pq"]["pq"] == pytest.approx(ours(folders)[0]["All"]["pq"], abs=1e-12)
    # each pixel's class is its segment's: mIoU and pixel accuracy equal a direct count over the PNGs
    from panoptic_node.coco_format import rgb_to_id
    classes = {}
    for part in ("gt", "pred"):
        anns = json.loads((folders / f"{part}.json").read_text())["annotations"]
        maps = []
        for a in anns:
            ids = rgb_to_id(np.asarray(Image.open(folders / part / a["file_name"]).convert("RGB")))
            lut = {s["id"]: s["category_id"] for s in a["segments_info"]}
            maps.append(np.vectorize(lambda i: lut.get(int(i), 255))(ids))
        classes[part] = np.concatenate([m.ravel() for m in maps])
    g, p = classes["gt"], classes["pred"]
    valid = g != 255
    ious = [((g == c) & (p == c) & valid).sum() / (((g == c) | (p == c)) & valid).sum()
            for c in range(1, 6) if (((g == c) | (p == c)) & valid).any()]
    assert report["miou"] == pytest.approx(np.mean(ious), abs=1e-12)
    assert report["pixel_accuracy"] == pytest.approx((g[valid] == p[valid]).mean(), abs=1e-12)
    assert report["frames"] == 8 and report["per_class"]["4"]["name"] == "car"
    said = capsys.readouterr().out
    chart = Image.open(tmp_path / "c.png")
    assert chart.width > 400 and f"per-class chart: {tmp_path / 'c.png'}" in said
    pixels = np.asarray(chart.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 10  # bars drawn, not a blank canvas
    heat = Image.open(tmp_path / "m.png")
    assert heat.width > 400 and f"confusion matrix: {tmp_path / 'm.png'}" in said
    assert len(np.unique(np.asarray(heat.convert("RGB")).reshape(-1, 3), axis=0)) > 20  # shades, not blank
    assert len(report["confusion"]["matrix"]) == len(report["confusion"]["classes"]) == len(report["per_class"])


def test_the_per_class_table_puts_each_runs_iou_under_its_name_class_by_class():
    from panoptic_node.evaluation.report import per_class_iou_table
    a = {0: {"name": "sky", "iou": 0.8029, "pq": 0.5}, 1: {"name": "road", "iou": 0.9454}}
    b = {0: {"name": "sky", "iou": 0.285}, 1: {"name": "road", "iou": 0.7834}}
    assert per_class_iou_table({"unadapted": a, "plain": b}).split("\n") == [
        "| class (IoU) | unadapted | plain |", "|---|---|---|", "| sky | 80.3 | 28.5 |", "| road | 94.5 | 78.3 |"]
