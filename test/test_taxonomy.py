"""Class sets and the COCO -> Cityscapes mapping (MSeg's), including thing -> stuff merging."""
import numpy as np
import pytest

from panoptic_node.inference.remap import remap_result
from panoptic_node.inference.result import result_from_segments
from panoptic_node.taxonomy import get_mapping, get_taxonomy


def test_class_counts():
    coco = get_taxonomy("coco")
    assert len(coco) == 133 and len(coco.thing_ids) == 80 and len(coco.stuff_ids) == 53
    assert coco.name_of(1) == "person" and coco.name_of(187) == "sky-other-merged"
    city = get_taxonomy("cityscapes")
    assert len(city) == 19 and len(city.stuff_ids) == 11 and len(city.thing_ids) == 8
    camvid = get_taxonomy("camvid")
    assert len(camvid) == 11 and camvid.thing_ids == [8, 9, 10]


def test_unknown_taxonomy():
    with pytest.raises(ValueError, match="expected one of coco, cityscapes, camvid"):
        get_taxonomy("kitti360")


def test_mapping_table():
    m = get_mapping("coco", "cityscapes")
    assert m.lut[3] == 13 and m.lut[13] == 7 and m.lut[149] == 0 and m.lut[187] == 10
    assert m.lut[197] == m.lut[128] == m.lut[151] == 2
    assert m.lut[5] == 255  # airplane: void in Cityscapes


def test_remap_merges_traffic_lights_and_drops_void():
    coco = get_taxonomy("coco")
    ids = np.zeros((10, 12), np.int64)
    ids[:5] = 1          # road
    ids[5:, :4] = 2      # traffic light (thing in COCO)
    ids[5:, 4:8] = 3     # another traffic light
    ids[5:, 8:] = 4      # airplane -> void
    ids[9, :2] = 5       # car
    r = result_from_segments(ids, np.array([149, 10, 10, 5, 3]), np.array([.9, .8, .7, .95, .6]), coco.thing_lut,
                             "coco")
    assert sum(s.is_thing for s in r.segments) == 4
    out = remap_result(r, get_mapping("coco", "cityscapes"))
    labels = sorted(s.label for s in out.segments)
    assert labels == [0, 6, 13]  # road, one merged traffic-light stuff segment, car
    light = next(s for s in out.segments if s.label == 6)
    assert not light.is_thing and light.area == 5 * 8 - 2 and light.score == pytest.approx(0.8)
    assert (out.semantic[5:9, 8:] == 255).all() and (out.panoptic[5:9, 8:] == -1).all()
    car = next(s for s in out.segments if s.label == 13)
    assert car.is_thing and car.instance == 1 and (out.panoptic[9, :2] == 13001).all()
