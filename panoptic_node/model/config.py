"""Model configuration: one YAML file per model under models/ (or a user's own path)."""
import json
import os
import sys
from dataclasses import dataclass, field, asdict
from functools import lru_cache
from pathlib import Path
from typing import Optional

import yaml

from ..json_schema import first_problem



def share_dir(name: str) -> Path:
    """A data folder shipped with the package (models/, config/, launch/).

    Source checkouts and editable installs find it beside the package; pip and colcon installs
    put data_files under <prefix>/share/panoptic_node.
    """
    candidates = [Path(__file__).resolve().parents[2] / name, Path(sys.prefix) / "share" / "panoptic_node" / name]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / "share" / "panoptic_node" / name)
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


MODELS_DIR = share_dir("models")


@lru_cache(maxsize=1)
def model_schema() -> dict:
    return json.loads((share_dir("config") / "model_config.schema.json").read_text())
DEFAULT_MODEL = "street_lite0"


@dataclass
class InputConfig:
    short_side: int = 800            # resize so the short side is this ...
    max_size: int = 1333             # ... unless the long side would exceed this
    size_divisibility: int = 32      # pad to a multiple of this (a fixed size keeps exports static)
    # imagenet (mean/std) | tf ((x - 127) / 128, EfficientNet-Lite) | frame (each frame's own mean and spread)
    # | frame_wb (frame, after a grey-world white balance: each channel given the frame's grey mean)
    normalization: str = "imagenet"

    @property
    def canvas(self):
        """(H, W) of the padded canvas a landscape frame at the configured size fills: the static input
        of exported graphs and compiled engines."""
        d = max(1, self.size_divisibility)
        return -(-self.short_side // d) * d, -(-self.max_size // d) * d


@dataclass
class PostprocessConfig:
    threshold: float = 0.85          # keep queries whose best class probability is above this
    min_area: int = 4                # segments with fewer pixels are dropped and their pixels reassigned
    merge: str = "logits"            # per-pixel argmax over mask logits (published) | score_prob
    overlap: float = 0.0             # drop a segment keeping less than this share of its own mask (0 = off)
    full_resolution: bool = False    # decide every pixel of a frame larger than the network's view too (slow for HD)
    rule: str = "ours"               # ours (postprocess.py) | published (DETR's own, inference/published.py)
    split_things: int = 0            # ours: thing pieces of >= this many pixels become instances (0 = off)
    merge_things: bool = False       # ours: touching thing segments of one class first become one (needs split_things)


@dataclass
class ModelConfig:
    name: str = "detr_r50_panoptic"
    backbone: str = "resnet50"
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    drop_connect: float = 0.0        # EfficientNet-Lite only, training only: stochastic depth of its residual blocks
    num_queries: int = 100
    num_classes: int = 250           # logits = num_classes + 1 (the last is "no object")
    labels: str = "coco"             # taxonomy the class indices belong to
    mask_head: str = "detr_conv"     # detr_conv | dot_product
    mask_dim: int = 128              # dot_product only
    mask_stride: int = 8             # dot_product only: pixel embeddings at stride 8 or 4 (finer masks)
    fpn_smooth: str = "full"         # dot_product only: its 3x3 smoothings full, or separable (depthwise + 1x1)
    # detr: every decoder layer reads the whole encoder memory | masked: Mask2Former's, each layer reads one level
    # of the mask head's pyramid (strides 32, 16, 8) where the previous layer's mask is on (masked_decoder.py)
    decoder: str = "detr"
    # 32: the transformer reads the backbone's last level (15 x 12 cells at 480x384) | 16: that level upsampled and
    # added to the stride-16 level (an FPN top-down step, as DETR-DC5 reads stride 16): 4x the tokens, finer queries
    memory_stride: int = 32
    # detr: each decoder layer attends among the queries, then to the memory, the queries starting at zero |
    # mask2former: to the memory first, then among the queries, starting from learned query features (Mask2Former's
    # order: the first layer's self-attention otherwise mixes queries that hold nothing but their positions)
    decoder_layer: str = "detr"
    weights: Optional[str] = None    # default weights file, relative to the config file
    input: InputConfig = field(default_factory=InputConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "ModelConfig":
        """A config document checked against config/model_config.schema.json first (types, ranges,
        required keys): every problem is one line naming the key, the value and what is allowed."""
        problem = first_problem(model_schema(), data)
        if problem:
            raise ValueError(f"model config {source}: {problem}")
        data = dict(data)
        for key, sub in (("input", InputConfig), ("postprocess", PostprocessConfig)):
            if key in data:
                data[key] = sub(**data[key])
        cfg = cls(**data)
        cfg.validate(f"model config {source}")  # worded as the schema's problems above
        return cfg

    def validate(self, source: str = "config") -> None:
        """What the schema cannot say: relations between keys."""
        if self.hidden_dim % self.nheads:
            raise ValueError(f"{source}: hidden_dim {self.hidden_dim} is not a multiple of nheads {self.nheads}")
        if self.input.max_size < self.input.short_side:
            raise ValueError(f"{source}: input.max_size {self.input.max_size} is smaller than input.short_side "
                             f"{self.input.short_side}; expected max_size >= short_side")
        if self.postprocess.merge_things and not self.postprocess.split_things:
            raise ValueError(f"{source}: postprocess.merge_things needs split_things > 0 (merged segments can hold "
                             f"pieces far apart, which split_things cuts); expected e.g. split_things: 256")
        if self.mask_head == "detr_conv" and self.fpn_smooth != "full":
            raise ValueError(f"{source}: fpn_smooth {self.fpn_smooth} is not allowed with mask_head detr_conv; "
                             "expected full (separable only with mask_head dot_product)")
        if self.decoder == "masked" and self.mask_head != "dot_product":
            raise ValueError(f"{source}: decoder masked needs mask_head dot_product (its pyramid and masks steer the "
                             f"decoder), not {self.mask_head}; expected mask_head: dot_product or decoder: detr")
        if self.memory_stride == 16 and (self.mask_head != "dot_product" or self.decoder != "detr"):
            raise ValueError(f"{source}: memory_stride 16 needs mask_head dot_product and decoder detr, not "
                             f"{self.mask_head} and {self.decoder}; expected those, or memory_stride: 32")
        if self.decoder_layer == "mask2former" and self.decoder != "detr":
            raise ValueError(f"{source}: decoder_layer mask2former needs decoder detr, not {self.decoder}; expected "
                             f"decoder: detr or decoder_layer: detr")
        if self.mask_head == "detr_conv" and self.mask_stride != 8:
            raise ValueError(f"{source}: mask_stride {self.mask_stride} is not allowed with mask_head detr_conv; "
                             "expected 8 (4 only with mask_head dot_product; detr_conv is always stride 4)")

    @property
    def output_mask_stride(self) -> int:
        """Stride of the mask logits the mask head returns (the published head: always 4)."""
        return 4 if self.mask_head == "detr_conv" else self.mask_stride

    def to_dict(self) -> dict:
        """Plain types for checkpoints and ONNX metadata; the weights path is kept as a bare file name
        so files written here do not carry this machine's directories."""
        d = asdict(self)
        if d["weights"]:
            d["weights"] = Path(d["weights"]).name
        return d


# the parts of a config that are not the network and its input: the file its weights are in, and the
# post-processing, which runs after the network (a graph or a run can change it without being made again)
NOT_IN_NETWORK = ("weights", "postprocess")


def network_config(stored: dict) -> ModelConfig:
    """The network and input a config stored with weights or a graph describes: a key added since takes its
    default, which is what they were made with; the post-processing is left out, so that a value refused today
    (a NaN threshold from a probe) does not make the file unusable."""
    return ModelConfig.from_dict({k: v for k, v in stored.items() if k not in NOT_IN_NETWORK})


def network_record(cfg: ModelConfig) -> dict:
    """The network and its input as plain types, without the config's name: what a training run records of
    the model it trained (a name alone does not say it: `street_lite0` changed its input on 2026-12-04)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in NOT_IN_NETWORK + ("name",)}


def network_changes(before: ModelConfig, now: ModelConfig) -> list:
    """Where `now`'s network and input differ from `before`'s, as 'key old -> new' (a nested key by its path:
    'input.normalization tf -> frame'); [] when they are the same network."""
    old_dict, new_dict = before.to_dict(), now.to_dict()
    changes = []
    for key in (k for k in new_dict if k not in NOT_IN_NETWORK and old_dict.get(k) != new_dict[k]):
        old, new = old_dict.get(key), new_dict[key]
        if isinstance(old, dict) and isinstance(new, dict):
            changes += [f"{key}.{k} {old.get(k)} -> {new.get(k)}" for k in new if old.get(k) != new.get(k)]
        else:
            changes.append(f"{key} {old} -> {new}")
    return changes


def config_of_checkpoint(path: Path) -> ModelConfig:
    """The config our checkpoints carry (train / save_checkpoint write it), with the checkpoint as its
    weights: `--model runs/x/last.pth` runs a model trained from any config, its YAML not needed."""
    from .checkpoint import read_state_dict
    _, kind, data = read_state_dict(path)
    if not data:
        raise ValueError(f"weights file '{path}' carries no model config ({kind} checkpoint); expected a "
                         f"checkpoint panoptic-node wrote, or pass a model name / YAML as --model and the file as --weights")
    return ModelConfig.from_dict({**data, "weights": str(path.resolve())}, source=f"carried by {path}")


def load_config(name_or_path: str = DEFAULT_MODEL) -> ModelConfig:
    """A model name from models/ (e.g. 'detr_r50_panoptic'), a path to a YAML file, or a checkpoint
    panoptic-node wrote (.pth: the config it carries, with itself as the weights)."""
    path = Path(name_or_path)
    if path.suffix == ".pth":
        return config_of_checkpoint(path)
    if path.suffix not in (".yaml", ".yml"):
        path = MODELS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))
        what = "is not a .yaml config or a .pth checkpoint" if Path(name_or_path).exists() else "not found"
        raise FileNotFoundError(f"model config '{name_or_path}' {what}; expected one of {available}, a YAML path or a "
                                f"checkpoint panoptic-node wrote (.pth)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"model config {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        raise ValueError(f"model config {path} is empty; expected a model's keys (see models/street_lite0.yaml)")
    cfg = ModelConfig.from_dict(data, source=str(path))
    if cfg.weights and not Path(cfg.weights).is_absolute():
        cfg.weights = str((path.parent / cfg.weights).resolve())
    return cfg
