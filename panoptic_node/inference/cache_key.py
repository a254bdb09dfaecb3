"""What a cached artefact (a TensorRT engine, an exported graph) was made from, as sha256 digests: a
new weights file or a changed model config makes a new artefact instead of reusing a stale one."""
import hashlib
import json
from pathlib import Path

from ..model.config import NOT_IN_NETWORK


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def short_sha256(path) -> str:
    """The first 12 hex digits of a file's sha256: enough to tell weights apart, short enough to compare by eye
    (the node's /diagnostics, doctor's model line)."""
    return file_sha256(path)[:12]


def weights_identity(path) -> str:
    """Which weights (or exported graph) a pipeline runs, in a line a person can compare between machines:
    the file's name and its short sha256 (the node's /diagnostics; replay checks the node that recorded a bag
    ran the same)."""
    return f"{Path(path).name}, sha256 {short_sha256(path)}"


def model_source_sha256(weights, cfg, part: str) -> str:
    """Identity of one part made from a model: the weights file's bytes, the network's config, the part name."""
    h = hashlib.sha256()
    h.update(file_sha256(weights).encode())
    # not the weights' path (their bytes are hashed) nor the post-processing, which runs on the graph's outputs
    # (a new threshold or split_things must not export the graph again)
    h.update(json.dumps({k: v for k, v in cfg.to_dict().items() if k not in NOT_IN_NETWORK}, sort_keys=True).encode())
    h.update(part.encode())
    return h.hexdigest()
