"""A tiny random-weight model on disk for the launch tests (CPU, quick to start)."""
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from panoptic_node.model.checkpoint import save_checkpoint
from panoptic_node.model.detr import build_model

from conftest import compact_config


def tiny_model_yaml() -> str:
    d = Path(tempfile.mkdtemp(prefix="panoptic_launch_"))
    cfg = compact_config()
    torch.manual_seed(0)
    save_checkpoint(build_model(cfg, pretrained_backbone=True), d / "tiny.pth")
    data = asdict(cfg)
    data["weights"] = "tiny.pth"
    (d / "tiny.yaml").write_text(yaml.safe_dump(data))
    return str(d / "tiny.yaml")
