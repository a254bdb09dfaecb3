"""DETR's published panoptic post-processing: a reference written here from the rule's description
(facebookresearch/detr's PostProcessPanoptic, as the faithful-DETR issue spells it out), independent of
inference/published.py, on outputs built to exercise the stuff merge and the refilter after it, ties
and the 4-pixel boundary; then the DETR configs' pipeline on a checkpoint in the official layout."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from panoptic_node.inference.preprocess import Geometry
from panoptic_node.inference.published import published_panoptic, select_queries_published
from panoptic_node.taxonomy import get_taxonomy

CAMVID = get_taxonomy("camvid")  # stuff 0..7, things 8..10
STRIDE = 4


def nearest(ids, out_h, out_w):
    """As the original code resizes its id map: ids as RGB colours (id = R + 256 G + 256^2 B), PIL's
    NEAREST on that image, colours back to ids. (PIL's nearest is not floor((x + .5) * in / out) at
    every exact half: the library decides, as it did for the published numbers.)"""
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    out = np.asarray(Image.fromarray(rgb).resize((out_w, out_h), Image.NEAREST)).astype(np.int64)
    return out[..., 0] + 256 * out[..., 1] + 65536 * out[..., 2]


def reference(logits, masks, threshold, geom, is_thing):
    """-> list of (category, area, set of pixel indices) per surviving query."""
    probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), -1).numpy()
    labels, scores = probs.argmax(-1), probs.max(-1)
    keep = [q for q in range(len(logits)) if labels[q] != logits.shape[1] - 1 and scores[q] > threshold]
    if not keep:
        return []
    rows, cols = -(-geom.resized_h // STRIDE), -(-geom.resized_w // STRIDE)
    m = torch.as_tensor(masks[keep][:, :rows, :cols], dtype=torch.float32)
    m = F.interpolate(m[None], size=(geom.resized_h, geom.resized_w), mode="bilinear", align_corners=False)[0].numpy()
    cats = [int(labels[q]) for q in keep]
    queries = list(range(len(keep)))

    def decide(alive, merge):
        stack = m[alive]
        winner = np.array(alive)[np.argmax(stack, axis=0)]  # numpy's argmax: first on ties
        if merge:
            for q in alive:
                if not is_thing(cats[q]):
                    first = next(p for p in alive if cats[p] == cats[q])
                    winner[winner == q] = first
        full = nearest(winner, geom.height, geom.width)
        return full, {q: int((full == q).sum()) for q in alive}

    alive = queries
    full, area = decide(alive, merge=True)
    while any(area[q] <= 4 for q in alive):
        alive = [q for q in alive if area[q] > 4]
        if not alive:
            return []
        full, area = decide(alive, merge=False)
    return [(cats[q], area[q], frozenset(np.flatnonzero(full.ravel() == q).tolist())) for q in alive]


def ours(logits, masks, threshold, geom):
    keep, labels, scores = select_queries_published(torch.as_tensor(logits, dtype=torch.float32), threshold)
    result = published_panoptic(torch.as_tensor(masks, dtype=torch.float32)[keep], labels, scores, geom, STRIDE,
                                CAMVID.thing_lut, "camvid")
    ids = result.segment_ids.ravel()
    return [(s.label, s.area, frozenset(np.flatnonzero(ids == s.id).tolist())) for s in result.segments]


def confident(classes, n_classes=11, strength=8.0):
    """Logits whose most probable class is `classes[q]` (-1: no-object) with probability ~0.99."""
    logits = np.zeros((len(classes), n_classes + 1))
    for q, c in enumerate(classes):
        logits[q, c] = strength
    return logits


GEOM = Geometry(height=30, width=41, resized_h=24, resized_w=32, padded_h=32, padded_w=32)


def built_case():
    """q0 road (stuff), q1 road again (the merge empties it), q2 a car, q3 a car that only ties the road
    (the first query, the road, takes the tie), q4 no-object, q5 sky under the threshold. After the first
    pass q1 and q3 (0 pixels each) go; the second pass has no merge, and q1's pixels fall to the car,
    whose logit is next there."""
    h, w = GEOM.padded_h // STRIDE, GEOM.padded_w // STRIDE
    masks = np.full((6, h, w), -10.0)
    masks[0, :, :] = 1.0                 # road everywhere, weakly
    masks[1, 3:, :4] = 5.0               # the second road query wins the lower left...
    masks[2, 3:, :4] = 4.0               # ...where the car is next best
    masks[2, 1:3, 5:7] = 6.0             # the car's own block
    masks[3, 0, :] = 1.0                 # a car exactly as strong as the road along the top
    logits = confident([3, 3, 8, 8, -1, 0])
    logits[5] = np.log(np.r_[np.full(11, 0.5 / 11), 0.5])  # sky at 4.5 %: under any threshold here
    return logits, masks


def test_the_stuff_merge_and_the_refilter_path():
    logits, masks = built_case()
    ref = reference(logits, masks, 0.5, GEOM, lambda c: bool(CAMVID.thing_lut[c]))
    got = ours(logits, masks, 0.5, GEOM)
    assert sorted(ref, key=lambda s: sorted(s[2])) == sorted(got, key=lambda s: sorted(s[2]))
    cats = sorted(c for c, _, _ in got)
    assert cats == [3, 8]  # the road and the big car survive; the merged road and the tiny car do not
    road = next(s for s in got if s[0] == 3)
    car = next(s for s in got if s[0] == 8)
    assert road[1] + car[1] == GEOM.height * GEOM.width  # every pixel has a segment
    # the lower left, where the emptied road query won, went to the car in the second pass
    lower_left = {y * GEOM.width + x for y in range(GEOM.height - 2, GEOM.height) for x in range(2)}
    assert lower_left <= car[2]


def test_ties_go_to_the_first_query():
    h, w = GEOM.padded_h // STRIDE, GEOM.padded_w // STRIDE
    masks = np.zeros((3, h, w))
    masks[2, :2, :] = 1.0  # a clear winner on top; below, q0 and q1 tie exactly
    logits = confident([8, 9, 0])
    ref = reference(logits, masks, 0.5, GEOM, lambda c: bool(CAMVID.thing_lut[c]))
    got = ours(logits, masks, 0.5, GEOM)
    assert sorted(ref, key=lambda s: s[0]) == sorted(got, key=lambda s: s[0])
    assert {c for c, _, _ in got} == {8, 0}  # q1 never wins a pixel: dropped


@pytest.mark.parametrize("pixels, kept", [(4, False), (5, True)])
def test_four_pixels_are_dropped_five_are_kept(pixels, kept):
    """At the frame's size: a network-size region of `pixels` pixels stays `pixels` pixels (no resize)."""
    geom = Geometry(height=16, width=16, resized_h=16, resized_w=16, padded_h=16, padded_w=16)
    masks = np.zeros((2, 4, 4))
    masks[0] = 1.0
    logits = confident([0, 9])
    lowres = torch.zeros(2, 16, 16)
    lowres[0] = 1.0
    lowres[1].view(-1)[:pixels] = 2.0
    # masks given at stride 1 here: the resize is the identity and the area is exact
    keep, labels, scores = select_queries_published(torch.as_tensor(logits, dtype=torch.float32), 0.5)
    result = published_panoptic(lowres[keep], labels, scores, geom, 1, CAMVID.thing_lut, "camvid")
    assert any(s.label == 9 for s in result.segments) == kept
    if kept:
        assert next(s for s in result.segments if s.label == 9).area == pixels


@pytest.mark.parametrize("seed", range(12))
def test_random_outputs_match_the_reference(seed):
    rng = np.random.default_rng(seed)
    k = 12
    h, w = GEOM.padded_h // STRIDE, GEOM.padded_w // STRIDE
    masks = rng.normal(0, 2, (k, h, w)).round(1)  # rounding makes exact ties common
    classes = rng.choice([-1, 0, 1, 3, 3, 5, 8, 8, 9, 10], size=k)
    logits = confident(classes, strength=rng.uniform(1.5, 8.0))
    ref = reference(logits, masks, 0.5, GEOM, lambda c: bool(CAMVID.thing_lut[c]))
    got = ours(logits, masks, 0.5, GEOM)
    assert sorted(ref, key=lambda s: (s[0], s[1], sorted(s[2]))) == sorted(got, key=lambda s: (s[0], s[1], sorted(s[2])))


def test_the_detr_configs_run_the_published_rule():
    from panoptic_node.model.config import load_config
    for name in ("detr_r50_panoptic", "detr_r101_panoptic"):
        assert load_config(name).postprocess.rule == "published"
    assert load_config("street_lite0").postprocess.rule == "ours"
