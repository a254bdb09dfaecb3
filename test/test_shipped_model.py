"""The shipped street model: loads through the normal loader and, on a few CamVid val frames,
stays far above chance (a regression guard, not a benchmark)."""
import pytest

from panoptic_node.evaluation.semantic import ConfusionMatrix
from panoptic_node.inference.pipeline import Pipeline
from panoptic_node.model.config import load_config
from panoptic_node.training.data import CamVid

from conftest import bench_module, camvid_or_skip


def test_shipped_weights_exist_and_are_small():
    cfg = load_config("street_lite0")
    from pathlib import Path
    path = Path(cfg.weights)
    assert path.is_file(), f"{path} is missing"
    assert path.stat().st_size < 25 * 1024 * 1024


@pytest.mark.parametrize("deployment", ["torch", "default"])
def test_shipped_model_on_camvid_val(deployment):
    """torch: the weights through the checkpoint loader; default: what users run (auto: on an x86 CPU
    with OpenVINO, the int8 graph made from the shipped scales)."""
    root = camvid_or_skip()
    if deployment == "torch":
        pipeline = Pipeline.from_config("street_lite0")
    else:
        from panoptic_node.inference.backends import make_pipeline
        pipeline = make_pipeline("street_lite0", log=lambda m: None)
    val = CamVid(root, "val")
    cm = ConfusionMatrix(11)
    for i in (0, 25, 50, 75, 100):
        s = val[i]
        result = pipeline(s.rgb)
        assert result.shape == s.semantic.shape
        cm.add(s.semantic, result.semantic)
    scores = cm.scores()
    assert scores["pixel_accuracy"] >= 0.8
    assert scores["miou"] >= 0.4


def test_cell_decision_equals_dense_postprocess_on_real_frames():
    """On the street model's real mask logits (smooth, with many borders) the CPU pipeline's cell
    decision and the dense one (every mask resized, per-pixel argmax) give the same result up to
    pixels where the two best queries are within float rounding of each other."""
    from panoptic_node.inference.cell_decision import CellDecision
    from panoptic_node.inference.postprocess import merge_panoptic, resize_masks, select_queries
    from panoptic_node.inference.preprocess import preprocess

    root = camvid_or_skip()
    pipeline = Pipeline.from_config("street_lite0")
    pp, stride = pipeline.cfg.postprocess, pipeline.backend.mask_stride
    val = CamVid(root, "val")
    for i in (10, 60):
        x, m, geom = preprocess(val[i].rgb, pipeline.cfg.input)
        logits, _, hs, feats = pipeline.backend.detect(x, m)
        keep, labels, scores = select_queries(logits[0], pipeline.threshold)
        masks = pipeline.backend.masks(feats, 0, hs[0, keep]).float()
        assert len(keep) > 5
        args = (labels, scores, pipeline.taxonomy.thing_lut, pp.merge, pp.min_area, pipeline.cfg.labels, pp.overlap)
        cells = merge_panoptic(CellDecision(masks, geom, stride, scores, pp.merge), *args)
        dense_masks = resize_masks(masks, geom, stride)
        dense = merge_panoptic(dense_masks.clone(), *args)
        differ = cells.segment_ids != dense.segment_ids
        values = dense_masks.sigmoid() * scores[:, None, None]
        top2 = values.topk(2, 0).values.numpy()
        assert (top2[0] - top2[1])[differ].max(initial=0) < 1e-5
        assert [(s.label, s.area) for s in cells.segments] == [(s.label, s.area) for s in dense.segments] \
            or differ.sum() < 10


def test_shipped_instances_are_connected_pieces_of_their_class():
    """CamVid's instance is an 8-connected piece of a class; the shipped post-processing (merge_things +
    split_things) gives instances the same way on real frames: no instance has two pieces of
    split_things' size (smaller specks stay with it), and no two instances of a class touch. Checked with scipy on the output maps."""
    import numpy as np
    from scipy import ndimage

    root = camvid_or_skip()
    pipeline = Pipeline.from_config("street_lite0")
    split = pipeline.cfg.postprocess.split_things
    eight = np.ones((3, 3), bool)
    val = CamVid(root, "val")
    instances = 0
    for i in (5, 40, 80):
        result = pipeline(val[i].rgb)
        things = [s for s in result.segments if s.is_thing]
        instances += len(things)
        for s in things:
            pieces, _ = ndimage.label(result.segment_ids == s.id, structure=eight)
            sizes = np.bincount(pieces.ravel())[1:]
            assert (sizes >= split).sum() <= 1, f"frame {i}: instance {s.id} has {(sizes >= split).sum()} large pieces"
        for label in {s.label for s in things}:
            mask = result.semantic == label
            grown = {s.id: ndimage.binary_dilation(result.segment_ids == s.id, structure=eight) & mask
                     for s in things if s.label == label}
            for a in grown:
                for b in grown:
                    assert a >= b or not (grown[a] & (result.segment_ids == b)).any(), \
                        f"frame {i}: instances {a} and {b} of class {label} touch"
    assert instances >= 5  # the frames hold cars and pedestrians


def test_the_benchmarks_flip_augmentation_treats_a_frame_and_its_mirror_alike():
    """bench_street_ablation's flip test-time augmentation runs a frame and its mirror image and flips
    the second pass's masks back: on the mirrored frame it must give the mirrored maps (the two runs
    merge the same masks in another order), which fails if the flip back is wrong or missing."""
    import numpy as np
    bench = bench_module("bench_street_ablation")
    frame = CamVid(camvid_or_skip(), "val")[40].rgb  # a real street: nothing in it is symmetric
    flip = bench.flip_pipeline_class().from_config("street_lite0")
    a, b = flip(frame), flip(np.ascontiguousarray(frame[:, ::-1]))
    ids_a, ids_b = a.segment_ids, b.segment_ids[:, ::-1]
    assert len(np.unique(ids_a)) > 5 and not np.array_equal(a.semantic, a.semantic[:, ::-1])
    # the same classes, the same partition (segment ids may be numbered in another order), up to ties
    assert (a.semantic == b.semantic[:, ::-1]).mean() > 0.999
    pairs = set(zip(ids_a.ravel().tolist(), ids_b.ravel().tolist()))
    assert len(pairs) <= len(np.unique(ids_a)) + 2
    single = Pipeline.from_config("street_lite0")(frame)
    assert (single.semantic != a.semantic).mean() > 0.001  # the second pass changed something


def test_the_benchmarks_guided_filter_equals_fitting_each_window_by_hand():
    """bench_street_ablation's guided filter (models/experiments/guided_masks.md) against He et al.'s definition
    computed window by window: a least-squares line of the plane on the guide in every window that holds a pixel
    (cut at the edges), its slope shrunk by eps, each pixel the mean of those windows' lines at its guide value."""
    import numpy as np
    import torch
    bench = bench_module("bench_street_ablation")
    rng = np.random.default_rng(3)
    h, w, r, eps = 7, 9, 2, 0.05
    guide = rng.random((h, w))
    planes = rng.normal(size=(2, h, w)) * 4
    lines = np.zeros((2, h, w, 2))  # each window's (a, b), by its centre
    for k in range(2):
        for y in range(h):
            for x in range(w):
                win = (slice(max(y - r, 0), y + r + 1), slice(max(x - r, 0), x + r + 1))
                g, p = guide[win], planes[k][win]
                a = ((g * p).mean() - g.mean() * p.mean()) / (g.var() + eps)
                lines[k, y, x] = a, p.mean() - a * g.mean()
    expected = np.zeros((2, h, w))
    for k in range(2):
        for y in range(h):
            for x in range(w):
                win = (slice(max(y - r, 0), y + r + 1), slice(max(x - r, 0), x + r + 1))
                a, b = lines[k][win][..., 0].mean(), lines[k][win][..., 1].mean()
                expected[k, y, x] = a * guide[y, x] + b
    got = bench.guided_filter(torch.from_numpy(planes), torch.from_numpy(guide), r, eps).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    # a step the guide has moves the plane's step onto it: the plane's edge was one pixel off
    guide = np.zeros((5, 12)); guide[:, 6:] = 1.0
    plane = np.where(np.arange(12) >= 5, 3.0, -3.0)[None, None].repeat(5, 1)
    out = bench.guided_filter(torch.from_numpy(plane), torch.from_numpy(guide), 2, 1e-4).numpy()[0]
    assert (out[:, 5] < 0).all() and (out[:, 6] > 0).all()
    # the fast form, planes on a grid of 4 x 4-pixel cells: resampled bilinearly alone, the mask would change sign
    # between pixels 7 and 8; the guide's edge is between 8 and 9, and the filtered mask follows the guide
    guide = np.zeros((8, 16)); guide[:, 9:] = 1.0
    coarse = torch.tensor([[-3.0, -3.0, 3.0, 3.0]]).repeat(2, 1)[None]  # 1 x 2 x 4 grid points
    out = bench.guided_filter(coarse, torch.from_numpy(guide), 1, 1e-4).numpy()[0]
    assert (out[:, 8] < 0).all() and (out[:, 9] > 0).all()


def test_the_benchmarks_row_prior_counts_by_band_and_boosts_each_query_on_its_rows():
    """bench_street_ablation's row prior (models/experiments/row_prior.md) against counting by hand: a 4-row frame
    in 2 bands, class 0 only on top and class 1 everywhere; then the boost of two queries on a mask grid whose
    last row is padding."""
    import numpy as np
    import torch

    from panoptic_node.training.data import Sample
    bench = bench_module("bench_street_ablation")
    semantic = np.array([[0, 0, 1], [0, 1, 1], [1, 1, 11], [1, 1, 1]], np.uint8)  # 11: void, left out
    sample = Sample("x", np.zeros((4, 3, 3), np.uint8), semantic, np.zeros((4, 3), np.int32))
    table = bench.row_log_ratio([sample], 2, 2)
    # counts + 1: top band (rows 0-1) class 0: 3 + 1, class 1: 3 + 1; bottom band (rows 2-3) 0 + 1 and 5 + 1
    top, bottom, overall = np.array([4, 4]) / 8, np.array([1, 6]) / 7, np.array([5, 10]) / 15
    np.testing.assert_allclose(table, np.log([top, bottom]) - np.log(overall), rtol=1e-12)
    # a frame of 24 rows on a grid of stride 8 with 4 rows: row centres at 4, 12, 20 (frame) and 28 (padding)
    table = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])  # 3 bands of 8 frame rows
    boost = bench.row_boost(table, torch.tensor([1, 0]), 4, 8, 24)
    np.testing.assert_array_equal(boost.numpy(), [[10, 20, 30, 0], [1, 2, 3, 0]])


def test_the_ensemble_benchmarks_vote_takes_the_most_given_class_and_the_earliest_among_ties():
    """bench_run_ensemble's majority vote, against counting by hand: three maps, then a tie of two."""
    import numpy as np
    bench = bench_module("bench_run_ensemble")
    a, b, c = np.array([[0, 1, 255, 4]]), np.array([[0, 2, 3, 5]]), np.array([[1, 2, 255, 6]])
    assert bench.majority([a, b, c], 11).tolist() == [[0, 2, 255, 4]]  # last: three-way tie, the first map's
    assert bench.majority([b, a], 11).tolist() == [[0, 2, 3, 5]]  # every disagreement a tie: the first map
    assert bench.majority([a, a, b], 11).dtype == np.uint8


def test_the_benchmarks_aligned_statistics_give_new_frames_the_training_frames_output_statistics():
    """bench_drive_adaptation (models/experiments/drive_adaptation.md), 'aligned 1.0': after adapting on frames of
    another distribution, every BatchNorm's output over those frames has the per-channel mean and spread the training
    frames had there through the unadapted network (each layer estimated with the earlier ones already adapted);
    'aligned 0' leaves every statistic as it was; 'plain' normalises the new frames' inputs to mean 0, spread 1."""
    import copy

    import torch
    bench = bench_module("bench_drive_adaptation")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(),
                              torch.nn.Conv2d(8, 8, 3), torch.nn.BatchNorm2d(8)).eval()
    for bn in (net[1], net[4]):  # statistics of another data set, as ImageNet's are for a street
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_()
    source_frames = [torch.randn(4, 3, 12, 12) for _ in range(3)]
    new_frames = [torch.randn(4, 3, 12, 12) * 2 + 1 for _ in range(3)]
    layers = bench.batchnorm_layers(net, source_frames[0][:1])
    assert layers == [net[1], net[4]]
    source = list(bench.input_statistics(net, source_frames, layers).values())  # in flow order

    def outputs(model, frames, upto):
        with torch.no_grad():
            x = torch.cat([model[:upto + 1](b) for b in frames]).double()
        return x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)

    unchanged = copy.deepcopy(net)
    bench.adapt_statistics(unchanged, new_frames, "aligned", 0.0, source)
    for a, b in zip(unchanged.state_dict().values(), net.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    aligned = copy.deepcopy(net)
    bench.adapt_statistics(aligned, new_frames, "aligned", 1.0, source)
    for upto in (1, 4):
        want, got = outputs(net, source_frames, upto), outputs(aligned, new_frames, upto)
        before = outputs(net, new_frames, upto)
        assert not torch.allclose(before[0], want[0], atol=0.05)  # the new frames did differ there
        assert torch.allclose(got[0], want[0], atol=1e-3) and torch.allclose(got[1], want[1], rtol=1e-3, atol=1e-5)
    plain = copy.deepcopy(net)
    bench.adapt_statistics(plain, new_frames, "plain")
    for upto, bn in ((1, plain[1]), (4, plain[4])):
        mean, var = outputs(plain, new_frames, upto)
        assert torch.allclose(mean, bn.bias.double(), atol=1e-3)
        spread = bn.weight.double() ** 2 * (1 - bn.eps / (bn.running_var.double() + bn.eps))  # eps stays in
        assert torch.allclose(var, spread, rtol=1e-3)


def test_the_benchmarks_pseudo_labels_keep_each_classs_surer_half_and_void_the_rest():
    """bench_drive_self_training (models/experiments/drive_self_training.md): over the frames' results each class's
    median segment score is its bar (a rare class keeps half its segments as a common one does); a label map keeps
    the pixels of segments at or above their class's bar and makes every other pixel CamVid's void (11)."""
    import numpy as np

    from panoptic_node.inference.result import Segment
    bench = bench_module("bench_drive_self_training")

    class Result:  # the two fields the bench reads of a PanopticResult
        def __init__(self, ids, segments):
            self.segment_ids, self.segments = ids, segments

    def seg(i, label, score):
        return Segment(id=i, label=label, is_thing=label >= 8, score=score, box=(0, 0, 1, 1), area=1)

    ids = np.array([[1, 1, 2], [3, 3, 0]])
    a = Result(ids, [seg(1, 3, 0.99), seg(2, 9, 0.6), seg(3, 8, 0.7)])   # road, a pedestrian, a car
    b = Result(ids, [seg(1, 3, 0.95), seg(2, 9, 0.9), seg(3, 8, 0.9)])
    c = Result(ids, [seg(1, 3, 0.90), seg(2, 9, 0.8), seg(3, 8, 0.5)])
    medians = bench.class_medians([a, b, c])
    assert medians == {3: 0.95, 9: 0.8, 8: 0.7}
    assert bench.pseudo_labels(a, medians).tolist() == [[3, 3, 11], [8, 8, 11]]
    assert bench.pseudo_labels(b, medians).tolist() == [[3, 3, 9], [8, 8, 11]]
    assert bench.pseudo_labels(c, medians).tolist() == [[11, 11, 9], [11, 11, 11]]
