"""Room in /dev/shm for Fast DDS's shared-memory segment, and the segments killed processes left there.

Every Fast DDS participant (the node, each camera driver, RViz) makes one segment in /dev/shm when it
starts: 512 KiB with Fast DDS's defaults, 32 MiB with the shipped profiles (35 MB on disk with Fast DDS's
own overhead). A process that ends normally removes it; one killed with SIGKILL, or that crashed, leaves it,
and on a machine that is not rebooted they accumulate (this project's test machine had 23 of 24 GB).

When a segment no longer fits, Fast DDS prints "Failed to create segment ...: No such file or directory" and
"SHM Transport is not supported in the current platform", and goes on over UDP alone. Measured with
bench/bench_node.py in a 20 MB /dev/shm: with the shipped UDP profile nothing is lost on one machine; with
large_images_shm (the choice when net.core.rmem_max is small) two 30 Hz cameras reached the node at 12.8 and
8.4 Hz (14.8 frames/s out in all against 24.2 with room). So the node and doctor say what fills /dev/shm.

Stale segments are found as Fast DDS's own `fastdds shm clean` finds them: each segment has a lock file
`<segment>_el` that its living owner holds locked. Nothing here removes anything. No ROS import here.
"""
import fcntl
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional

SHM_DIR = Path("/dev/shm")
FASTDDS_DEFAULT_SEGMENT = 512 * 1024  # the builtin shared-memory transport's segment_size
SEGMENT_OVERHEAD = 1.05  # a segment on disk is 4.7-4.8 % above its segment_size (35127840 for 32 MiB, measured)
SEGMENT_NAME = re.compile(r"^(fastrtps|fastdds)_[0-9a-f]{16}$")  # Jazzy's Fast DDS 2.x: fastrtps_, 3.x: fastdds_
CLEAN_ADVICE = "`fastdds shm clean` removes them (a reboot does too)"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # the profiles' XML namespace is optional


def segment_size(profile: Optional[Path]) -> Optional[int]:
    """Bytes of the shared-memory segment a participant with this Fast DDS profile makes, or None when the
    profile uses no shared memory (its own transports, none of them SHM). No profile: Fast DDS's default."""
    if profile is None:
        return FASTDDS_DEFAULT_SEGMENT
    root = ET.parse(profile).getroot()
    sizes = [int(next((c.text for c in d.iter() if _local(c.tag) == "segment_size"), FASTDDS_DEFAULT_SEGMENT))
             for d in root.iter() if _local(d.tag) == "transport_descriptor"
             and any(_local(c.tag) == "type" and (c.text or "").strip() == "SHM" for c in d)]
    if sizes:
        return max(sizes)
    builtin_off = any(_local(e.tag) == "useBuiltinTransports" and (e.text or "").strip().lower() == "false"
                      for e in root.iter())
    return None if builtin_off else FASTDDS_DEFAULT_SEGMENT


def _owner_alive(lock_file: Path) -> bool:
    """Whether a process holds the segment's lock file (a lock we can take means its owner is gone)."""
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return True  # unreadable (another user's): not ours to call stale
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)  # releases the lock if we took it


@dataclass
class SharedMemory:
    free: int  # bytes free in the folder
    stale: List[Path]  # segments whose owner is gone
    stale_bytes: int


def scan(shm_dir: Path = SHM_DIR) -> Optional[SharedMemory]:
    """None where there is no such folder (not Linux)."""
    try:
        names = os.listdir(shm_dir)
        stat = os.statvfs(shm_dir)
    except OSError:
        return None
    stale = [Path(shm_dir) / n for n in sorted(names)
             if SEGMENT_NAME.match(n) and n + "_el" in names and not _owner_alive(Path(shm_dir) / (n + "_el"))]
    size = 0
    for p in stale:
        try:
            size += p.stat().st_blocks * 512  # what it holds in memory (a segment is sparse until written)
        except OSError:
            pass
    return SharedMemory(stat.f_bavail * stat.f_frsize, stale, size)


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def shared_memory_problem(profile: Optional[Path], environ: Mapping[str, str] = os.environ,
                          shm_dir: Path = SHM_DIR, seen: Optional[SharedMemory] = None) -> Optional[str]:
    """One line when a participant with this profile will not get its segment (None: it will, or it uses no
    shared memory, or another RMW runs). Call it before the process's own segment exists. seen: `shm_dir`
    scanned already (scan() test-locks every segment's lock file; doctor scans once for all its lines)."""
    if environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp":
        return None
    need = segment_size(profile)
    seen = seen or scan(shm_dir)
    if need is None or seen is None or seen.free >= need * SEGMENT_OVERHEAD:
        return None
    stale = f"; {_left(seen)}" if seen.stale else ""
    return (f"{shm_dir} has {_mb(seen.free)} free and each Fast DDS process's shared-memory segment needs "
            f"{_mb(int(need * SEGMENT_OVERHEAD))}: Fast DDS will report 'SHM Transport is not supported' and fall back "
            f"to UDP (under large_images_shm two 30 Hz cameras then reached the node at 13 and 8 Hz){stale}")


def _left(seen: SharedMemory) -> str:
    n = len(seen.stale)
    return (f"{n} segment{'s' if n > 1 else ''} left by killed or crashed Fast DDS processes "
            f"hold{'' if n > 1 else 's'} {_mb(seen.stale_bytes)}: {CLEAN_ADVICE}")


def stale_segments_note(shm_dir: Path = SHM_DIR, seen: Optional[SharedMemory] = None) -> Optional[str]:
    """One line about segments killed or crashed processes left, or None. seen: as for shared_memory_problem."""
    seen = seen or scan(shm_dir)
    if seen is None or not seen.stale:
        return None
    return f"{shm_dir} ({_mb(seen.free)} free): {_left(seen)}"
