"""The shipped street model: loads through the normal loader and, on a few CamVid val frames,
stays far above chance (a regression guard, not a benchmark)."""
import numpy as np
import pytest

from panoptic_node.evaluation.semantic import ConfusionMatrix
from panoptic_node.inference.pipeline import Pipeline
from panoptic_node.model.config import load_config
from panoptic_node.training.data import CamVid

from conftest import camvid_or_skip


def test_shipped_weights_exist_and_are_small():
    cfg = load_config("street_lite0")
    from pathlib import Path
    path = Path(cfg.weights)
    assert path.is_file(), f"{path} is missing"
    assert path.stat().st_size < 25 * 1024 * 1024


def test_shipped_model_on_camvid_val():
    root = camvid_or_skip()
    pipeline = Pipeline.from_config("street_lite0")
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
