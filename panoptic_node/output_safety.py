"""What a command may write, decided before it starts: nothing a user owns is ever lost.

- An output is never an input of the same command, nor inside one, nor holding one.
- An output that exists is refused without --overwrite; with it, a folder is replaced only when it is
  a bag this tool wrote (its metadata.yaml says so in `custom_data`, and the folder holds nothing but
  the files that metadata names): a dataset, a recording of the user's or any other folder never is.
- One writer per output: a lock beside it (`<name>.lock`, flock'ed for the run) makes a second command
  writing the same output stop in one line instead of deleting the first's work.
- A results folder a command fills file by file (infer's, train's, demo's) may already exist only if it holds
  nothing but what that command writes: its files mixed into a bag, a dataset or a folder of the user's
  would change what the user owns.
- Every output's folder exists or can be made, no output is a folder where a file goes, and a video or
  chart has a suffix its writer knows, checked before any frame is processed: a run never fails at its
  end for a path it could have checked at its start. Nothing is made by the check: a refused run leaves
  the disk as it was.
"""
import fcntl
import os
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional

import yaml

WRITTEN_BY_KEY = "written_by"
WRITTEN_BY = "panoptic_node"


def _resolved(path) -> Path:
    return Path(path).expanduser().resolve()


class _Paths:
    """Resolved paths, each with what to call it, and every folder holding one: whether a path is one of them,
    lies inside one or holds one is then a few lookups, not a comparison with each (a folder of a thousand
    images gives infer four thousand outputs to check against a thousand inputs)."""

    def __init__(self):
        self._paths: Dict[Path, object] = {}
        self._holders: Dict[Path, object] = {}  # a folder -> one of the paths inside it

    def add(self, real: Path, label) -> None:
        self._paths.setdefault(real, label)
        for folder in real.parents:
            self._holders.setdefault(folder, label)

    def related(self, real: Path):
        """The label of a path that is `real`, holds it or lies inside it; None when there is none."""
        for path in (real, *real.parents):
            if path in self._paths:
                return self._paths[path]
        return self._holders.get(real)


def not_our_bag(path) -> Optional[str]:
    """None when `path` is a bag folder this tool wrote; else why it is not (for the refusal)."""
    path = Path(path)
    if not path.is_dir():
        return "it is a file, not a bag folder"
    meta = path / "metadata.yaml"
    try:
        info = yaml.safe_load(meta.read_text())["rosbag2_bagfile_information"]
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        return "it has no readable rosbag2 metadata.yaml"
    if (info.get("custom_data") or {}).get(WRITTEN_BY_KEY) != WRITTEN_BY:
        return "its metadata.yaml does not say panoptic_node wrote it (a recording or a dataset of yours?)"
    named = {"metadata.yaml"} | {Path(str(f)).name for f in info.get("relative_file_paths") or ()}
    others = sorted(p.name for p in path.iterdir() if p.name not in named)
    if others:
        return f"it holds files a bag of ours does not ({', '.join(others[:3])})"
    return None


# outputs whose writer picks the format from the suffix (imageio's ffmpeg, matplotlib): another suffix
# would fail only when the output is written, at the end of the run
SUFFIXES = {"--video": (".mp4",), "--chart": (".png", ".svg", ".pdf", ".jpg", ".jpeg")}
SUFFIXES["--confusion"] = SUFFIXES["--chart"]
SUFFIXES["--per-frame"] = (".csv",)
SUFFIXES["--timeline"] = SUFFIXES["--chart"]


def check_outputs(outputs: Dict[str, Optional[object]], inputs: Iterable[object] = (), overwrite: bool = False,
                  bags: Iterable[str] = ()) -> None:
    """Refuse, in one line, any output that would lose something (see the module's rules).

    outputs: what the option is called -> the path (None: not written); bags: the names among them
    that are bag folders; inputs: the paths this command reads."""
    bags = set(bags)
    named = {name: Path(p) for name, p in outputs.items() if p not in (None, "")}
    read = _input_paths(inputs)
    seen = _Paths()
    for name, path in named.items():
        if name in SUFFIXES and path.suffix.lower() not in SUFFIXES[name]:
            raise ValueError(f"{name} '{path}': expected a file name ending in {' / '.join(SUFFIXES[name])}")
        real = _resolved(path)
        _refuse_input(name, path, real, read)
        other = seen.related(real)
        if other is not None:
            raise ValueError(f"{name} '{path}' and {other} '{named[other]}' are the same path or one holds "
                             f"the other; give each output its own")
        seen.add(real, name)
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{name} '{path}' exists; pass --overwrite to replace it")
            if name in bags:
                why = not_our_bag(path)
                if why:
                    raise FileExistsError(f"{name} '{path}' exists and is not a bag panoptic_node wrote ({why}); "
                                          f"--overwrite only replaces our own bags: choose another path")
            elif path.is_dir():
                raise IsADirectoryError(f"{name} '{path}' is a folder; expected a file name")
        refuse_unwritable(name, path)


def refuse_unwritable(name: str, path, is_folder: bool = False) -> None:
    """The folder an output goes in (or the output folder itself) need not exist yet (writers make it), but it
    must be possible to make and write (a read-only disk, another user's folder): refused before any work, not
    at the first write."""
    path = Path(path)
    parent = path.absolute() if is_folder else path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"{name} '{path}': '{parent}' is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"{name} '{path}': folder '{parent}' is not writable")


def refuse_foreign_folder(name: str, folder, is_ours: Callable[[str], bool], what: str) -> None:
    """An existing `folder` a command fills file by file must hold only entries `is_ours` accepts
    (a `.partial` leftover of a killed run counts as its final name); else it is refused in one line,
    naming a few of the others."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{name} '{folder}' is a file; expected a folder for {what}")
    if not folder.is_dir():
        return
    foreign = sorted(p.name for p in folder.iterdir() if not is_ours(p.name.replace(".partial", "")))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise FileExistsError(f"{name} '{folder}' holds files that are not {what} ({shown}); choose an empty or "
                              f"new folder")


def refuse_inputs(name: str, path, inputs: Iterable[object]) -> None:
    """An output is never an input of the same command, nor inside one, nor holding one."""
    _refuse_input(name, path, _resolved(path), _input_paths(inputs))


def _input_paths(inputs: Iterable[object]) -> _Paths:
    read = _Paths()
    for inp in inputs:
        if inp not in (None, ""):
            read.add(_resolved(inp), inp)
    return read


def _refuse_input(name: str, path, real: Path, read: _Paths) -> None:
    inp = read.related(real)
    if inp is not None:
        raise ValueError(f"{name} '{path}' is (or holds, or lies inside) the input '{inp}'; an output "
                         f"never replaces what the command reads: choose another path")


class OutputLock:
    """`<output>.lock` held with flock while an output is written: a second writer of the same
    output is refused instead of deleting the first's work. The kernel drops the lock when the
    process dies however it dies, so a stale lock file never blocks a later run."""

    def __init__(self, output):
        self.output = Path(output)
        self.path = self.output.with_name(self.output.name + ".lock")
        self.fd = None
        self.made = []  # the folders above the lock it had to make, deepest first

    def acquire(self) -> "OutputLock":
        missing, folder = [], self.path.parent
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.made = missing
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FileExistsError(f"another panoptic-node is writing '{self.output}' now (lock {self.path}); "
                                      f"wait for it or choose another output") from None
            try:  # the lock file we hold must still be the one at the path (its holder may just have removed it)
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self.fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return self

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
            # a run that wrote nothing (refused, failed) leaves no empty folders it made for its output;
            # rmdir takes a folder only while it is empty, so nothing written there since is touched
            for folder in self.made:
                try:
                    folder.rmdir()
                except OSError:
                    break
            self.made = []

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
