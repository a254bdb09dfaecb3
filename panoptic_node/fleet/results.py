"""One bag's result, as the fleet keeps it: a JSON file per bag, written atomically when the bag is
done, with the key of what produced it (model config, weights, settings, the bag's own files), so a rerun
skips bags already scored the same way and scores again after any change."""
import hashlib
import json
from pathlib import Path
from typing import Optional

from ..atomic import write_json


def bag_identity(bag: Path) -> str:
    """The bag's files by name, size and modification time (not their bytes: a fleet's bags are large)."""
    files = sorted(bag.iterdir()) if bag.is_dir() else [bag]
    return json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.is_file()])


def run_key(settings: dict, bag: Path) -> str:
    return hashlib.sha256(json.dumps({"settings": settings, "bag": bag_identity(bag)},
                                     sort_keys=True).encode()).hexdigest()


def result_path(out: Path, bag: Path) -> Path:
    """A file per bag, named after it and the hash of its full path (two drives' `bag_0` differ)."""
    digest = hashlib.sha256(str(bag.resolve()).encode()).hexdigest()[:12]
    return Path(out) / "bags" / f"{bag.name}-{digest}.json"


def load_done(out: Path, bag: Path, key: str) -> Optional[dict]:
    """The bag's kept result when it was made with the same key (a damaged bag is tried again)."""
    path = result_path(out, bag)
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if result.get("key") == key and result.get("ok") else None


def save(out: Path, bag: Path, result: dict) -> Path:
    return write_json(result, result_path(out, bag))
