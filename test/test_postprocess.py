"""The fast postprocess equals a slow, obviously correct per-pixel reference, on inputs with
overlapping masks, duplicate stuff, tiny segments and padding."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from panoptic_node.inference.cell_decision import CellDecision
from panoptic_node.inference.postprocess import bilinear_matrix, merge_panoptic, resize_masks, select_queries
from panoptic_node.inference.preprocess import Geometry
from panoptic_node.taxonomy import get_taxonomy

CAMVID = get_taxonomy("camvid")


def reference_sample(grid, y, x, geom, stride):
    """Bilinear value of `grid` (h x w) at the point input pixel (y, x) lands on, after cropping
    the grid to the cells the unpadded image covers."""
    grid = grid[: -(-geom.resized_h // stride), : -(-geom.resized_w // stride)]
    sy = max((y + 0.5) * geom.resized_h / geom.height / stride - 0.5, 0.0)
    sx = max((x + 0.5) * geom.resized_w / geom.width / stride - 0.5, 0.0)
    y0, x0 = min(int(np.floor(sy)), grid.shape[0] - 1), min(int(np.floor(sx)), grid.shape[1] - 1)
    y1, x1 = min(y0 + 1, grid.shape[0] - 1), min(x0 + 1, grid.shape[1] - 1)
    fy, fx = sy - y0, sx - x0
    return ((1 - fy) * (1 - fx) * grid[y0, x0] + (1 - fy) * fx * grid[y0, x1]
            + fy * (1 - fx) * grid[y1, x0] + fy * fx * grid[y1, x1])


def reference_postprocess(masks, labels, scores, geom, stride, merge, min_area):
    """Pixel by pixel: argmax over alive queries; stuff of one class is one segment; segments under
    min_area die and the argmax is redone; segments numbered 1.. by their first query."""
    k = len(labels)
    full = np.array([[[reference_sample(masks[q], y, x, geom, stride) for x in range(geom.width)]
                      for y in range(geom.height)] for q in range(k)])
    if merge == "score_prob":
        full = scores[:, None, None] * (1 / (1 + np.exp(-full)))
    owner = {}
    for q in range(k):
        if CAMVID.is_thing(labels[q]):
            owner[q] = q
        else:
            owner[q] = min(p for p in range(k) if labels[p] == labels[q])
    alive = set(range(k))
    while True:
        seg = np.zeros((geom.height, geom.width), int)
        for y in range(geom.height):
            for x in range(geom.width):
                best = max(sorted(alive), key=lambda q: full[q, y, x])
                seg[y, x] = owner[best]
        small = [q for q in alive if (seg == owner[q]).sum() < min_area]
        if not small:
            break
        alive -= set(small)
        if not alive:
            return None
    order = sorted(set(seg.ravel()))
    ids = np.zeros_like(seg)
    for i, g in enumerate(order):
        ids[seg == g] = i + 1
    return ids, [labels[g] for g in order]


@pytest.mark.parametrize("merge", ["logits", "score_prob"])
@pytest.mark.parametrize("stride,geom", [
    (8, Geometry(height=19, width=23, resized_h=38, resized_w=46, padded_h=64, padded_w=64)),  # upscaled + padded
    (4, Geometry(height=30, width=17, resized_h=15, resized_w=9, padded_h=32, padded_w=32)),  # downscaled + padded
])
@pytest.mark.parametrize("path", ["cells", "dense-running-max", "dense-argmax"])
def test_fast_equals_reference(merge, stride, geom, path):
    rng = np.random.default_rng(stride)
    h, w = geom.padded_h // stride, geom.padded_w // stride
    # overlapping blobs, two queries of one stuff class (road), one tiny thing
    labels = np.array([3, 3, 8, 8, 0, 9, 1])
    masks = rng.normal(0, 1, (len(labels), h, w)).astype(np.float32)
    masks[2, : h // 2] += 3
    masks[3, h // 3:] += 2.5
    vis_h, vis_w = -(-geom.resized_h // stride), -(-geom.resized_w // stride)  # the unpadded part of the grid
    masks[0, :, : vis_w // 3] += 4  # two road queries on either side: one road segment
    masks[1, :, vis_w * 2 // 3: vis_w] += 4
    masks[4, vis_h - 1] += 6        # sky along the bottom row
    masks[6] -= 6.0                # wins only around one cell: a tiny segment to drop and reassign
    masks[6, 0, 0] += 12
    scores = rng.uniform(0.5, 1, len(labels)).astype(np.float32)
    min_area = 30
    winners = np.bincount(resize_masks(torch.from_numpy(masks), geom, stride).argmax(0).numpy().ravel(), minlength=7)
    assert 0 < winners[6] < min_area and winners[0] > 0 and winners[1] > 0  # the cases this test is about
    if path == "cells":  # the CPU pipeline's: from the low-resolution logits
        decision = CellDecision(torch.from_numpy(masks), geom, stride, torch.from_numpy(scores), merge)
    else:  # masks resized to the frame first (the GPU pipeline's is the argmax)
        decision = resize_masks(torch.from_numpy(masks), geom, stride)
    fast = merge_panoptic(decision, torch.from_numpy(labels), torch.from_numpy(scores), CAMVID.thing_lut, merge,
                          min_area, "camvid", vectorized=path == "dense-argmax")
    ref_ids, ref_labels = reference_postprocess(masks, labels, scores, geom, stride, merge, min_area)
    np.testing.assert_array_equal(fast.segment_ids, ref_ids)
    assert [s.label for s in fast.segments] == ref_labels
    # the derived maps agree with the segment list
    for s in fast.segments:
        region = fast.segment_ids == s.id
        assert s.area == region.sum()
        assert (fast.semantic[region] == s.label).all()
        ys, xs = np.nonzero(region)
        assert s.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        if s.is_thing:
            assert (fast.instance[region] == s.instance).all() and s.instance > 0
            assert (fast.panoptic[region] == s.label * 1000 + s.instance).all()
        else:
            assert (fast.instance[region] == 0).all() and (fast.panoptic[region] == s.label).all()
    assert len({s.label for s in fast.segments if not s.is_thing}) == sum(not s.is_thing for s in fast.segments)
    assert 1 not in [s.label for s in fast.segments]  # the tiny building segment is gone


@pytest.mark.parametrize("geom", [
    Geometry(height=90, width=120, resized_h=48, resized_w=64, padded_h=64, padded_w=96),   # divisible: interpolate
    Geometry(height=90, width=120, resized_h=45, resized_w=60, padded_h=64, padded_w=64),   # not: matrices
])
def test_resize_equals_crop_then_interpolate(geom):
    """The padding is cropped off first; both code paths sample like F.interpolate on the crop."""
    masks = torch.randn(3, 8, 12)
    fast = resize_masks(masks, geom, 8)
    rows, cols = -(-geom.resized_h // 8), -(-geom.resized_w // 8)
    crop = masks[:, :rows, :cols]
    ref = F.interpolate(crop[None], scale_factor=(8 * geom.height / geom.resized_h, 8 * geom.width / geom.resized_w),
                        mode="bilinear", align_corners=False, recompute_scale_factor=False)[0]
    torch.testing.assert_close(fast, ref[:, :geom.height, :geom.width], atol=1e-5, rtol=1e-5)


def test_bilinear_matrix_rows_sum_to_one():
    m = bilinear_matrix(37, 5, 37 / 5 * 0.9)
    torch.testing.assert_close(m.sum(1), torch.ones(37))


def test_select_queries_threshold_and_no_object():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 9.0], [0.0, 3.0, 0.0]])  # last column: no object
    keep, labels, scores = select_queries(logits, 0.8)
    assert keep.tolist() == [0, 2] and labels.tolist() == [0, 1]
    assert (scores > 0.8).all()


def test_no_kept_queries_gives_void_frame():
    r = merge_panoptic(torch.zeros(0, 5, 7), torch.zeros(0, dtype=torch.long), torch.zeros(0), CAMVID.thing_lut,
                       "logits", 4, "camvid")
    assert r.semantic.shape == (5, 7) and (r.semantic == 255).all() and (r.panoptic == -1).all()
    assert r.segments == []


def test_overlap_rule_drops_fragments_of_explained_objects():
    """A car query whose own mask is mostly taken by a stronger car query is a fragment: with
    overlap 0.5 it is dropped and its pixels go to the next best query; stuff is never dropped."""
    h, w = 10, 20
    masks = torch.full((3, h, w), -5.0)
    masks[0, :, :10] = 5.0          # car A: left half
    masks[1, :, 6:12] = 4.0         # car B: own mask 6 columns, wins only columns 10-11 (1/3)
    masks[2, :, 10:] = 3.0          # road (stuff): right half
    labels = torch.tensor([8, 8, 3])
    scores = torch.tensor([0.9, 0.9, 0.9])
    for vectorized in (False, True):  # the CPU path and the one a GPU takes
        kept = merge_panoptic(masks.clone(), labels, scores, CAMVID.thing_lut, "logits", 1, "camvid", overlap=0.0,
                              vectorized=vectorized)
        assert sorted(s.label for s in kept.segments) == [3, 8, 8]
        dropped = merge_panoptic(masks.clone(), labels, scores, CAMVID.thing_lut, "logits", 1, "camvid", overlap=0.5,
                                 vectorized=vectorized)
        assert sorted(s.label for s in dropped.segments) == [3, 8]
        assert (dropped.semantic[:, 10:12] == 3).all()  # the fragment's pixels went to the road


def test_reassign_equals_full_argmax_over_alive_queries():
    """Re-deciding only the pixels of dead queries gives the full argmax, ties to the first query."""
    from panoptic_node.inference.postprocess import argmax_alive, reassign_pixels

    rng = np.random.default_rng(3)
    values = torch.from_numpy(rng.integers(0, 4, (6, 9, 11)).astype(np.float32))  # many ties
    alive = torch.ones(6, dtype=torch.bool)
    best = argmax_alive(values, alive).numpy()
    for dead in ([2], [0, 5], [1, 3]):
        alive[dead] = False
        best = reassign_pixels(values, alive, best)
        np.testing.assert_array_equal(best, argmax_alive(values, alive).numpy())
        assert alive.numpy()[best].all()


def test_plane_by_plane_equals_one_argmax():
    """The CPU path (one pass per query plane: own area, score x sigmoid, running best) and the GPU
    path's single argmax pick the same query, ties included, and count the same own areas."""
    from panoptic_node.inference.postprocess import argmax_alive, decide_plane_by_plane

    rng = np.random.default_rng(5)
    logits = torch.from_numpy(rng.integers(-2, 3, (7, 8, 10)).astype(np.float32))  # many ties
    scores = torch.from_numpy(rng.uniform(0.5, 1, 7).astype(np.float32))
    for merge in ("logits", "score_prob"):
        values, best, own = decide_plane_by_plane(logits.clone(), scores, merge, True)
        want = logits.clone() if merge == "logits" else logits.clone().sigmoid_().mul_(scores[:, None, None])
        torch.testing.assert_close(values, want, rtol=0, atol=0)
        np.testing.assert_array_equal(best, argmax_alive(want, torch.ones(7, dtype=torch.bool)).numpy())
        np.testing.assert_array_equal(own, (logits > 0).flatten(1).sum(1).numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_postprocess_equals_cpu():  # pragma: no cover - GPU only
    rng = np.random.default_rng(2)
    masks = torch.from_numpy(rng.normal(0, 2, (5, 30, 40)).astype(np.float32))
    labels, scores = torch.tensor([3, 3, 8, 8, 0]), torch.tensor([0.9, 0.8, 0.7, 0.95, 0.6])
    cpu = merge_panoptic(masks.clone(), labels, scores, CAMVID.thing_lut, "score_prob", 8, "camvid", overlap=0.5)
    gpu = merge_panoptic(masks.cuda(), labels, scores, CAMVID.thing_lut, "score_prob", 8, "camvid", overlap=0.5)
    np.testing.assert_array_equal(gpu.segment_ids, cpu.segment_ids)


def test_nearest_indices_pick_the_cell_holding_each_output_centre():
    from panoptic_node.inference.result import nearest_indices
    for src, dst in [(128, 412), (96, 300), (96, 97), (270, 1080), (480, 1920), (5, 5)]:
        j = nearest_indices(src, dst)
        centre2 = (2 * np.arange(dst) + 1) * src  # 2 * dst * (output centre in source units)
        assert ((2 * dst * j <= centre2) & (centre2 < 2 * dst * (j + 1))).all(), (src, dst)


@pytest.mark.parametrize("out_size", [(300, 412), (97, 130), (96, 128)])
def test_upsampled_result_is_the_nearest_resize_of_every_map(out_size):
    """A result decided at the network's resolution, brought to the input frame: every map the nearest
    resize of the decided one (as PIL's NEAREST, up to its fixed-point rounding on a few columns), the
    maps consistent with each other, areas and boxes exactly those of the upsampled maps."""
    from PIL import Image
    from panoptic_node.inference.result import upsample_result
    geom = Geometry(height=96, width=128, resized_h=96, resized_w=128, padded_h=96, padded_w=128)
    rng = np.random.default_rng(1)
    labels = np.array([3, 0, 8, 8, 9, 5])
    masks = rng.normal(0, 1, (len(labels), 12, 16)).astype(np.float32)
    for q in range(len(labels)):  # one blob each, so there are several segments of several kinds
        masks[q, rng.integers(0, 9):, rng.integers(0, 12):][:4, :5] += 6
    low = merge_panoptic(resize_masks(torch.from_numpy(masks), geom, 8), torch.from_numpy(labels),
                         torch.from_numpy(rng.uniform(0.5, 1, len(labels)).astype(np.float32)), CAMVID.thing_lut,
                         "score_prob", 4, "camvid")
    assert len(low.segments) >= 4 and any(s.is_thing for s in low.segments)
    h, w = out_size
    up = upsample_result(low, h, w)
    pil = np.asarray(Image.fromarray(low.segment_ids).resize((w, h), Image.NEAREST))
    assert (up.segment_ids == pil).mean() > 0.99
    assert up.segment_ids.shape == (h, w) and up.segment_ids.dtype == low.segment_ids.dtype
    lookup = {s.id: s for s in low.segments}
    for s in up.segments:
        region = up.segment_ids == s.id
        ys, xs = np.nonzero(region)
        assert s.area == region.sum() and s.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert (s.label, s.instance) == (lookup[s.id].label, lookup[s.id].instance)
        assert (up.semantic[region] == s.label).all() and (up.instance[region] == s.instance).all()
        assert (up.panoptic[region] == (s.label * 1000 + s.instance if s.is_thing else s.label)).all()
    assert (up.semantic[up.segment_ids == 0] == 255).all() and (up.panoptic[up.segment_ids == 0] == -1).all()
    for name in ("semantic", "instance", "panoptic"):
        assert getattr(up, name).dtype == getattr(low, name).dtype


@pytest.mark.parametrize("geom,stride", [
    (Geometry(height=48, width=64, resized_h=48, resized_w=64, padded_h=48, padded_w=64), 4),     # exact grid
    (Geometry(height=30, width=41, resized_h=60, resized_w=82, padded_h=64, padded_w=96), 8),     # decided smaller
    (Geometry(height=135, width=240, resized_h=60, resized_w=107, padded_h=64, padded_w=112), 8),  # HD, full res
])
def test_cells_equal_the_dense_argmax_ties_and_deaths_included(geom, stride):
    """The cell decision against resizing every mask and taking the per-pixel argmax: with integer
    logits on a grid whose weights are exact in float (stride 4, exact grid) ties are exact and must
    go to the first query; queries then die in steps (the merge's reassignments) and the answer must
    stay the dense argmax over the alive ones. Own areas equal the dense count of logit > 0."""
    rng = np.random.default_rng(stride + geom.width)
    k = 9
    h, w = geom.padded_h // stride, geom.padded_w // stride
    logits = torch.from_numpy(rng.integers(-3, 4, (k, h, w)).astype(np.float32))
    scores = torch.from_numpy(rng.uniform(0.5, 1, k).astype(np.float32))
    exact = geom.resized_h == geom.height and stride == 4
    for merge in ("logits", "score_prob"):
        cells = CellDecision(logits, geom, stride, scores, merge)
        dense = resize_masks(logits, geom, stride)
        np.testing.assert_array_equal(cells.own_areas(), (dense > 0).flatten(1).sum(1).numpy())
        some = np.arange(k) % 3 == 1  # the overlap rule asks for the thing queries' only
        np.testing.assert_array_equal(cells.own_areas(some), np.where(some, (dense > 0).flatten(1).sum(1).numpy(), 0))
        values = dense if merge == "logits" else dense.sigmoid() * scores[:, None, None]
        alive = np.ones(k, dtype=bool)
        for dead in ([], [3], [0, 7], [1, 2, 8]):
            alive[dead] = False
            got = cells.winners(alive)
            assert alive[got].all()
            want = values.masked_fill(~torch.from_numpy(alive)[:, None, None], -np.inf).argmax(0).numpy()
            if exact:
                np.testing.assert_array_equal(got, want)
            else:  # float rounding of the mixes may differ from the matrix products' on near-ties only
                top2 = values[torch.from_numpy(alive)].topk(2, 0).values
                near_tie = (top2[0] - top2[1]).numpy() <= 1e-5 * np.maximum(1, np.abs(top2[0].numpy()))
                assert ((got == want) | near_tie).all()
                assert (got == want).mean() > 0.95


def test_cells_after_a_query_comes_back_decide_afresh():
    geom = Geometry(height=16, width=16, resized_h=16, resized_w=16, padded_h=16, padded_w=16)
    logits = torch.randn(4, 4, 4)
    cells = CellDecision(logits, geom, 4, torch.ones(4), "logits")
    alive = np.array([True, False, True, True])
    cells.winners(alive)
    full = cells.winners(np.ones(4, dtype=bool))
    np.testing.assert_array_equal(full, resize_masks(logits, geom, 4).argmax(0).numpy())


def test_noisy_masks_take_the_dense_path(monkeypatch):
    """Cells pay off on smooth masks (few open cells); on noise nearly every cell is open and the
    pipeline resizes the masks instead (same answer, less time)."""
    from panoptic_node.inference import pipeline as pipeline_module
    geom = Geometry(height=192, width=192, resized_h=192, resized_w=192, padded_h=192, padded_w=192)
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.normal(0, 1, (20, 48, 48)).astype(np.float32))
    blocks = torch.full((4, 48, 48), -5.0)  # four quadrants
    for q, (ys, xs) in enumerate([(slice(0, 24), slice(0, 24)), (slice(0, 24), slice(24, 48)),
                                  (slice(24, 48), slice(0, 24)), (slice(24, 48), slice(24, 48))]):
        blocks[q, ys, xs] = 5.0
    share = {name: CellDecision(m, geom, 4, torch.ones(len(m)), "score_prob").resample_share(True)
             for name, m in (("noise", noise), ("blocks", blocks))}
    assert share["noise"] > pipeline_module.DENSE_ABOVE > 0.1 > share["blocks"]
    # and the pipeline follows it
    resized = []
    real_resize = pipeline_module.resize_masks
    monkeypatch.setattr(pipeline_module, "resize_masks", lambda *a: resized.append(1) or real_resize(*a))

    from panoptic_node.inference.backend import Backend

    class Fixed(Backend):  # a backend whose mask head returns the given masks for every kept query
        size, mask_stride, name, precision = (192, 192), 4, "fixed", "fp32"

        def __init__(self, masks):
            self.m = masks

        def detect(self, images, pad_mask):
            k = len(self.m)
            logits = torch.full((1, k, 12), -9.0)
            logits[0, torch.arange(k), torch.arange(k) % 11] = 9.0
            return logits, torch.zeros(1, k, 4), torch.zeros(1, k, 8), None

        def masks(self, feats, index, hs):
            return self.m

    from panoptic_node.model.config import load_config
    cfg = load_config("street_lite0")
    frame = rng.integers(0, 255, (192, 192, 3), dtype=np.uint8)
    pipeline_module.Pipeline(cfg, Fixed(blocks))(frame)
    assert not resized
    pipeline_module.Pipeline(cfg, Fixed(noise))(frame)
    assert resized


def test_a_thing_segment_in_separate_pieces_becomes_one_instance_per_large_piece():
    """Two cars under one query with road between them, a 3-pixel speck of the same query, and sky in
    two pieces: with split_things 10 the cars are two instances (class and score of the query), the
    speck stays with the larger car, stuff is never split; with 0 nothing changes. Checked against the
    8-connected components of each segment computed here directly."""
    from scipy import ndimage
    h, w = 12, 30
    masks = torch.full((3, h, w), -5.0)
    masks[0, 6:, 0:10] = 5.0       # car, piece 1: 60 px
    masks[0, 8:, 20:26] = 5.0      # car, piece 2: 24 px
    masks[0, 0, 28:] = 5.0         # car, a 2-px speck far away
    masks[0, 1, 29] = 5.0          # (3 px with this one, 8-connected to it)
    masks[1, :6, :] = 4.0          # sky above, split in two by nothing: one piece ...
    masks[1, 0:2, 27:] = -5.0      # ... except where the speck sits
    masks[2] = 3.0                 # road everywhere else
    labels = torch.tensor([8, 0, 3])
    scores = torch.tensor([0.8, 0.9, 0.7])
    plain = merge_panoptic(masks.clone(), labels, scores, CAMVID.thing_lut, "logits", 1, "camvid")
    assert sorted(s.label for s in plain.segments) == [0, 3, 8]
    split = merge_panoptic(masks.clone(), labels, scores, CAMVID.thing_lut, "logits", 1, "camvid", split_things=10)
    cars = sorted((s for s in split.segments if s.label == 8), key=lambda s: -s.area)
    assert [s.area for s in cars] == [63, 24]  # the speck stayed with the larger piece
    assert all(s.score == pytest.approx(0.8) and s.is_thing for s in cars)
    assert len({s.instance for s in cars}) == 2
    # each car instance is exactly one large 8-connected piece of the unsplit car segment (plus the speck)
    car_mask = plain.semantic == 8
    pieces, n = ndimage.label(car_mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(pieces.ravel())[1:]
    assert sorted(sizes.tolist()) == [3, 24, 60]
    small_car = split.segment_ids == cars[1].id
    assert (small_car == (pieces == 1 + int(np.argmax(sizes == 24)))).all()
    # stuff and the semantic map are untouched
    np.testing.assert_array_equal(split.semantic, plain.semantic)
    assert [s.area for s in split.segments if not s.is_thing] == [s.area for s in plain.segments if not s.is_thing]
    # pieces below the threshold are not split
    none = merge_panoptic(masks.clone(), labels, scores, CAMVID.thing_lut, "logits", 1, "camvid", split_things=25)
    assert sorted(s.label for s in none.segments) == [0, 3, 8]


def test_touching_thing_segments_of_one_class_become_one_instance_with_merge_things():
    """Four car queries: two touch only at a corner (a row of parked cars, one instance in CamVid's
    labels), one stands apart, one is a speck under split_things' size far from the others; a pedestrian
    touches the row. With merge_things (and split_things) the cars' instances are exactly the 8-connected
    components of the car pixels, computed here directly: the speck stays an instance of its own instead
    of joining the largest car. The pedestrian, stuff and the semantic map are as without it; the merged
    instance keeps its best query's score."""
    from scipy import ndimage
    h, w = 12, 44
    masks = torch.full((6, h, w), -5.0)
    masks[0, 4:8, 0:10] = 5.0      # car A
    masks[1, 8:, 10:18] = 5.0      # car B, touching A at one corner only (8-neighbours)
    masks[2, 6:, 26:34] = 5.0      # car C, road between it and B
    masks[3, 0:3, 40:43] = 5.0     # a 9-pixel car speck, far from every other car
    masks[4, 2:8, 18:21] = 5.0     # a pedestrian touching B
    masks[5] = 3.0                 # road everywhere else
    labels = torch.tensor([8, 8, 8, 8, 9, 3])
    scores = torch.tensor([0.7, 0.9, 0.8, 0.6, 0.6, 0.95])
    args = (labels, scores, CAMVID.thing_lut, "logits", 1, "camvid")
    plain = merge_panoptic(masks.clone(), *args, split_things=16)
    merged = merge_panoptic(masks.clone(), *args, split_things=16, merge_things=True)
    assert sum(s.label == 8 for s in plain.segments) == 4
    np.testing.assert_array_equal(merged.semantic, plain.semantic)
    pieces, n = ndimage.label(plain.semantic == 8, structure=np.ones((3, 3), bool))
    cars = [s for s in merged.segments if s.label == 8]
    assert n == 3 and len(cars) == 3 and len({s.instance for s in cars}) == 3
    for car in cars:  # each instance is one whole component of the class
        mask = merged.segment_ids == car.id
        component = pieces == pieces[mask][0]
        np.testing.assert_array_equal(mask, component)
    row = max(cars, key=lambda s: s.area)
    assert row.area == 4 * 10 + 4 * 8 and row.score == pytest.approx(0.9)
    assert sorted(s.area for s in cars) == [9, 48, 72]
    # what is not a car is as without merge_things
    for label in (9, 3):
        np.testing.assert_array_equal(merged.segment_ids == next(s.id for s in merged.segments if s.label == label),
                                      plain.segment_ids == next(s.id for s in plain.segments if s.label == label))


@pytest.mark.parametrize("seed", range(4))
def test_merged_then_split_instances_are_the_connected_pieces_of_each_class(seed):
    """Many small segments of two thing classes and a stuff class on a random map (chains of touching
    segments, segments in several pieces): with merge_touching then split_disconnected (pieces of any size),
    each thing instance is exactly one 8-connected component of its class, computed here directly; stuff
    keeps its segments; an instance's score is the best of every segment merged with it (segments that
    share a piece, transitively, through a segment in several pieces too)."""
    from scipy import ndimage
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from panoptic_node.inference.split_instances import merge_touching, split_disconnected
    rng = np.random.default_rng(seed)
    n = 40
    labels = rng.choice([8, 9, 3], n)  # car, pedestrian (things), road (stuff)
    scores = rng.uniform(0.5, 1.0, n)
    ids = rng.integers(0, n + 1, (6, 8)).repeat(4, 0).repeat(4, 1)  # blocks of 4x4 pixels, 0 = void
    ids[rng.random(ids.shape) < 0.05] = 0  # void specks cut some blocks into pieces
    merged, m_labels, m_scores = merge_touching(ids, labels, scores, CAMVID.thing_lut)
    out, o_labels, o_scores, boxes = split_disconnected(merged, m_labels, m_scores, CAMVID.thing_lut, 1)
    from scipy import ndimage as nd
    assert boxes == nd.find_objects(out, max_label=len(o_labels))  # the boxes it hands on: those of its own segments
    label_map = np.where(ids > 0, np.concatenate([[255], labels])[ids], 255)
    for cls in (8, 9):
        pieces, count = ndimage.label(label_map == cls, structure=np.ones((3, 3), bool))
        # segments and pieces as one graph: a segment is linked to every piece it has pixels in
        inside = pieces > 0
        graph = coo_matrix((np.ones(inside.sum()), (ids[inside], n + 1 + pieces[inside])), shape=(n + count + 2,) * 2)
        _, group = connected_components(graph, directed=False)
        for p in range(1, count + 1):
            piece = pieces == p
            got = np.unique(out[piece])
            assert len(got) == 1 and o_labels[got[0] - 1] == cls  # one instance covers the piece ...
            np.testing.assert_array_equal(out == got[0], piece)  # ... and nothing else
            members = [s for s in range(1, n + 1) if group[s] == group[n + 1 + p]]
            assert o_scores[got[0] - 1] == pytest.approx(scores[np.array(members) - 1].max())
    for s in np.unique(ids[label_map == 3]):  # stuff segments are untouched, only renumbered
        assert len(np.unique(out[ids == s])) == 1 and o_labels[out[ids == s][0] - 1] == 3
