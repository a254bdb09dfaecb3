"""Ego masks: the car's own bonnet made void in every output (inference/ego_mask.py)."""
import numpy as np
import pytest
from PIL import Image

from panoptic_node.inference.ego_mask import apply_ego_mask, fit_note, load_ego_mask, mask_file, masks_for
from panoptic_node.inference.result import result_from_segments
from panoptic_node.taxonomy import get_taxonomy

from conftest import png_declaring

CAMVID = get_taxonomy("camvid")


def test_masked_pixels_go_void_and_segments_are_counted_again():
    ids = np.zeros((10, 12), np.int64)
    ids[:5], ids[5:] = 1, 2                   # sky above, road below
    ids[6:9, 1:4] = 3                          # a car wholly on the bonnet
    ids[3:8, 7:10] = 4                         # a car partly on it
    result = result_from_segments(ids, np.array([0, 3, 8, 8]), np.array([.9, .8, .7, .6]), CAMVID.thing_lut, "camvid")
    result.timings = {"detect": 0.01}
    keep = np.ones((10, 12), bool)
    keep[6:] = False
    masked = apply_ego_mask(result, keep, CAMVID.thing_lut)
    assert (masked.semantic[6:] == 255).all() and (masked.panoptic[6:] == -1).all() and (masked.instance[6:] == 0).all()
    assert np.array_equal(masked.semantic[:6], result.semantic[:6])        # the rest untouched
    assert [(s.label, s.instance, s.box, s.area, s.score) for s in masked.segments] == [
        (0, 0, (0, 0, 12, 5), 54, pytest.approx(.9)),                     # sky as it was, but for the car in it
        (3, 0, (0, 5, 12, 6), 9, pytest.approx(.8)),                       # road: one row left
        (8, 1, (7, 3, 10, 6), 9, pytest.approx(.6))]                       # the clipped car, instance 1 now
    assert np.array_equal(np.unique(masked.instance), [0, 1]) and masked.timings == {"detect": 0.01}


def test_a_mask_drawn_at_another_size_is_fitted_to_the_frame():
    ids = np.ones((20, 24), np.int64)
    result = result_from_segments(ids, np.array([3]), np.array([1.0]), CAMVID.thing_lut, "camvid")
    keep = np.ones((10, 12), bool)
    keep[5:] = False                           # the lower half, at half the size
    assert (apply_ego_mask(result, keep, CAMVID.thing_lut).semantic[10:] == 255).all()
    assert (apply_ego_mask(result, keep, CAMVID.thing_lut).semantic[:10] == 3).all()
    # what the node and replay say of it: scaled at the same shape; stretched, with the likely cause, otherwise
    assert fit_note("/camera/front", keep, 10, 12) == ""
    assert fit_note("/camera/front", keep, 20, 24) == ("camera /camera/front: ego mask is 12x10, its frames 24x20: "
                                                       "the mask is scaled to them")
    assert fit_note("/camera/front", keep, 720, 1280) == (
        "camera /camera/front: ego mask is 12x10, its frames 1280x720: the mask is scaled to them, stretched from a "
        "1.20 to a 1.78 aspect ratio (drawn for another camera mode? draw it on one of these frames)")


def test_mask_files_and_their_refusals(tmp_path):
    assert mask_file(tmp_path, "/camera/front") == tmp_path / "camera_front.png"
    assert mask_file(tmp_path, "") == tmp_path / "camera.png"
    keep = np.full((4, 6), 255, np.uint8)
    keep[3:] = 0
    Image.fromarray(keep).save(tmp_path / "camera_front.png")
    masks = masks_for(tmp_path, ["/camera/front", "/camera/rear"])
    assert masks["/camera/rear"] is None and masks["/camera/front"].sum() == 18
    with pytest.raises(FileNotFoundError, match="ego mask folder '.*nowhere' is not a folder"):
        masks_for(tmp_path / "nowhere", ["/camera/front"])
    (tmp_path / "text.png").write_text("not a picture")
    with pytest.raises(ValueError, match="ego mask: cannot read image '.*text.png'"):
        load_ego_mask(tmp_path / "text.png")
    (tmp_path / "bomb.png").write_bytes(png_declaring(30000, 30000).tobytes())
    with pytest.raises(ValueError, match="ego mask: image '.*bomb.png' is larger than PIL's safety limit"):
        load_ego_mask(tmp_path / "bomb.png")
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / "all.png")
    with pytest.raises(ValueError, match="masks every pixel"):
        load_ego_mask(tmp_path / "all.png")
