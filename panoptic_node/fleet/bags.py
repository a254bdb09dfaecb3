"""Which bags a fleet run scores: folders, globs and list files, in a stable order."""
import glob
from pathlib import Path
from typing import Iterable, List


def is_bag(path: Path) -> bool:
    return path.is_dir() and (path / "metadata.yaml").is_file()


def _under(folder: Path) -> List[Path]:
    """Bag folders below `folder` (a bag's own files are not searched further), and loose .mcap / .db3
    recordings without metadata.yaml, which are reported as damaged (recover them first)."""
    if is_bag(folder):
        return [folder]
    found = []
    for child in sorted(folder.iterdir()):
        if child.is_dir():
            found += _under(child)
        elif child.suffix in (".mcap", ".db3"):
            found.append(child)
    return found


def find_bags(specs: Iterable[str]) -> List[Path]:
    """Each spec: a bag folder, a folder of bags (searched recursively), a glob, or a text file listing
    one of those per line (# comments). Duplicates are scored once."""
    out: List[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_file() and path.suffix in (".txt", ".list"):
            lines = [ln.strip() for ln in path.read_text().splitlines()]
            out += find_bags([ln for ln in lines if ln and not ln.startswith("#")])
        elif path.is_file() and path.suffix not in (".mcap", ".db3"):  # a loose recording is scored or reported
            raise ValueError(f"'{spec}' is a file that is not a bag; expected a bag folder, a folder of bags, a "
                             f"glob, a .txt list of them, or a loose .mcap / .db3 recording")
        elif path.exists():
            out += _under(path) if path.is_dir() else [path]
        else:
            matches = sorted(glob.glob(spec))
            if not matches:
                raise FileNotFoundError(f"no bag at '{spec}'; expected a bag folder, a folder of bags, a glob or "
                                        f"a .txt list of them")
            out += find_bags(matches)
    seen, unique = set(), []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique
