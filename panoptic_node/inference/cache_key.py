"""What a cached artefact (a TensorRT engine, an exported graph) was made from, as sha256 digests: a
new weights file or a changed model config makes a new artefact instead of reusing a stale one."""
import hashlib
import json


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_source_sha256(weights, cfg, part: str) -> str:
    """Identity of one part made from a model: the weights file's bytes, the model config, the part name."""
    h = hashlib.sha256()
    h.update(file_sha256(weights).encode())
    h.update(json.dumps({k: v for k, v in cfg.to_dict().items() if k != "weights"}, sort_keys=True).encode())
    h.update(part.encode())
    return h.hexdigest()
