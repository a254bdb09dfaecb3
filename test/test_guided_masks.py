"""Mask logits fitted to the frame's grey level (inference/guided_masks.py), against direct computations."""
import numpy as np
import pytest
import torch

from panoptic_node.inference.guided_masks import (GuideSettings, GuidedCellDecision, box_mean, dense_logits,
                                                  fitted_lines, grey_guide)
from panoptic_node.inference.preprocess import Geometry


def windows(h, w, r):
    for y in range(h):
        for x in range(w):
            yield y, x, (slice(max(y - r, 0), y + r + 1), slice(max(x - r, 0), x + r + 1))


def test_fitted_lines_are_he_and_suns_fit_window_by_window():
    """On a frame the grid divides exactly: the logits resampled to the grid `step` pixels apart, the grey level
    averaged over each grid point's step x step pixels, a least-squares line of logit on grey in every window
    (slope shrunk by eps), and each grid point the mean of its windows' lines."""
    rng = np.random.default_rng(0)
    geom = Geometry(height=24, width=32, resized_h=24, resized_w=32, padded_h=32, padded_w=32)
    settings = GuideSettings(step=4, radius=1, eps=0.02)
    logits = torch.from_numpy(rng.normal(size=(2, 4, 4)).astype(np.float64) * 3)  # stride 8, padded
    guide = torch.from_numpy(rng.random((24, 32)))
    a, b = fitted_lines(logits, geom, 8, guide, settings)
    assert a.shape == b.shape == (2, 6, 8)
    # by hand: the stride-8 grid's 3 x 4 cropped points, bilinear at the grid points (j + .5) 4 / 8 - .5
    crop = logits[:, :3, :4].numpy()

    def bilinear(plane, y, x):
        y, x = min(max(y, 0), plane.shape[0] - 1), min(max(x, 0), plane.shape[1] - 1)
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        y1, x1 = min(y0 + 1, plane.shape[0] - 1), min(x0 + 1, plane.shape[1] - 1)
        fy, fx = y - y0, x - x0
        return ((1 - fy) * ((1 - fx) * plane[y0, x0] + fx * plane[y0, x1])
                + fy * ((1 - fx) * plane[y1, x0] + fx * plane[y1, x1]))
    fine = np.array([[[bilinear(crop[k], (j + .5) / 2 - .5, (i + .5) / 2 - .5) for i in range(8)] for j in range(6)]
                     for k in range(2)])
    small = guide.numpy().reshape(6, 4, 8, 4).mean((1, 3))
    for k in range(2):
        lines = np.zeros((6, 8, 2))
        for y, x, win in windows(6, 8, 1):
            g, p = small[win], fine[k][win]
            slope = ((g * p).mean() - g.mean() * p.mean()) / (g.var() + settings.eps)
            lines[y, x] = slope, p.mean() - slope * g.mean()
        want = np.array([[lines[win].reshape(-1, 2).mean(0) for _, _, win in windows(6, 8, 1)]]).reshape(6, 8, 2)
        np.testing.assert_allclose(a[k].numpy(), want[..., 0], rtol=1e-4, atol=1e-5)  # float32 maps
        np.testing.assert_allclose(b[k].numpy(), want[..., 1], rtol=1e-4, atol=1e-5)


def test_a_border_one_cell_off_moves_onto_the_frames_edge():
    """A mask whose bilinear border falls between columns 7 and 8, on a frame whose edge is between 8 and 9:
    the guided logits change sign exactly at the frame's edge, in every row."""
    geom = Geometry(height=8, width=16, resized_h=8, resized_w=16, padded_h=8, padded_w=16)
    logits = torch.tensor([[-3.0, -3.0, 3.0, 3.0]]).repeat(2, 1)[None]  # one mask at stride 4
    guide = torch.zeros(8, 16)
    guide[:, 9:] = 1.0
    plain = dense_logits(logits, torch.zeros_like(logits), torch.ones(8, 16), geom, 4)
    assert (plain[0, :, 8] > 0).all()  # without the guide, column 8 is inside the mask
    a, b = fitted_lines(logits, geom, 4, guide, GuideSettings(step=4, radius=1, eps=1e-4))
    out = dense_logits(a, b, guide, geom, 4)[0]
    assert (out[:, 8] < 0).all() and (out[:, 9] > 0).all()


def test_box_mean_counts_only_the_pixels_inside():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    got = box_mean(x, 1)[0, 0]
    assert got[0, 0] == pytest.approx(np.mean([0, 1, 4, 5]))
    assert got[1, 1] == pytest.approx(np.mean([0, 1, 2, 4, 5, 6, 8, 9, 10]))


def test_grey_guide_is_the_channel_mean_and_area_averaged_when_smaller():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[:, :3] = (255, 0, 0)
    rgb[:, 3:] = (255, 255, 255)
    g = grey_guide(rgb, 4, 6).numpy()
    np.testing.assert_allclose(g[:, :3], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(g[:, 3:], 1.0, rtol=1e-6)
    half = grey_guide(rgb, 2, 3).numpy()
    np.testing.assert_allclose(half[:, 1], (1 / 3 + 1) / 2, rtol=1e-6)


@pytest.mark.parametrize("geom,stride", [
    (Geometry(height=48, width=64, resized_h=48, resized_w=64, padded_h=64, padded_w=64), 8),     # exact grid
    (Geometry(height=30, width=41, resized_h=60, resized_w=82, padded_h=64, padded_w=96), 8),     # decided smaller
    (Geometry(height=135, width=240, resized_h=60, resized_w=107, padded_h=64, padded_w=112), 8),  # HD, full res
])
def test_guided_cells_equal_the_dense_argmax_and_own_areas(geom, stride):
    """GuidedCellDecision against the dense guided logits' per-pixel argmax, as queries die, and their own areas
    (logit > 0), on smooth random masks and a frame with edges; float rounding may differ on near-ties only."""
    rng = np.random.default_rng(geom.width)
    k = 7
    h, w = geom.padded_h // stride, geom.padded_w // stride
    logits = torch.from_numpy((rng.normal(size=(k, h, w)) * 4).astype(np.float32))
    scores = torch.from_numpy(rng.uniform(0.5, 1, k).astype(np.float32))
    rgb = (rng.random((geom.height, geom.width, 1)) > 0.5).repeat(3, -1).astype(np.uint8) * 200 + 20
    guide = grey_guide(rgb, geom.height, geom.width)
    settings = GuideSettings()
    a, b = fitted_lines(logits, geom, stride, guide, settings)
    dense = dense_logits(a, b, guide, geom, settings.step)
    assert dense.shape == (k, geom.height, geom.width)
    for merge in ("logits", "score_prob"):
        cells = GuidedCellDecision(a, b, guide, geom, settings.step, scores, merge)
        own = cells.own_areas()
        want_own = (dense > 0).flatten(1).sum(1).numpy()
        assert np.abs(own - want_own).max() <= 2  # a pixel with a logit within rounding of 0 may count either way
        values = dense if merge == "logits" else dense.sigmoid() * scores[:, None, None]
        alive = np.ones(k, dtype=bool)
        for dead in ([], [3], [0, 5]):
            alive[dead] = False
            got = cells.winners(alive)
            want = values.masked_fill(~torch.from_numpy(alive)[:, None, None], -np.inf).argmax(0).numpy()
            top2 = values[torch.from_numpy(alive)].topk(2, 0).values
            near_tie = (top2[0] - top2[1]).numpy() <= 1e-5 * np.maximum(1, np.abs(top2[0].numpy()))
            assert ((got == want) | near_tie).all()
            assert (got == want).mean() > 0.99
