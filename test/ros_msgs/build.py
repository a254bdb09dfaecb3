"""Builds the test-only vision_msgs (test/ros_msgs/vision_msgs) against the ROS 2 Jazzy wheels from
PyPI, into build/test_msgs/install (Python modules in lib/python, libraries in lib: `make test` puts
them on PYTHONPATH and LD_LIBRARY_PATH), so the node's tests run on a real rclpy graph here and in CI.

Run by `make install-test` when rclpy comes from the wheels (a ROS machine has its own vision_msgs and
skips this). Needs cmake and a C/C++ compiler. Idempotent: an up-to-date build is left alone.

The wheels' exported CMake files name the wheel builder's Python and numpy include folders
(/opt/python/cp311-cp311/...); they are pointed at this Python's before building.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PACKAGE = HERE / "vision_msgs"
BUILD = ROOT / "build" / "test_msgs"
INSTALL = BUILD / "install"
STAMP = INSTALL / ".source_sha256"
BUILDER_INCLUDE = "/opt/python/cp311-cp311/include/python3.11"


def source_sha256() -> str:
    """Of the messages, this script and the Python they are built for: any change builds again."""
    h = hashlib.sha256(sys.prefix.encode() + Path(__file__).read_bytes())
    for p in sorted(PACKAGE.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(PACKAGE).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def fix_wheel_cmake_paths(prefix: Path) -> int:
    """Point the wheels' exported include paths at this machine's; returns the files changed."""
    import numpy
    python_include = sysconfig.get_paths()["include"]
    numpy_include = numpy.get_include()
    changed = 0
    for path in (prefix / "share").rglob("*.cmake"):
        text = path.read_text(errors="surrogateescape")
        if "/opt/python/cp311-cp311" not in text:
            continue
        new = text
        # numpy's folder first: it lives under the builder's site-packages, not under include/
        for old in sorted({part for part in text.replace(";", '"').split('"') if "numpy" in part
                           and part.startswith("/opt/python/")}, key=len, reverse=True):
            new = new.replace(old, numpy_include)
        new = new.replace(BUILDER_INCLUDE, python_include)
        if new != text:
            path.write_text(new, errors="surrogateescape")
            changed += 1
    return changed


def main() -> int:
    prefix = Path(sys.prefix)
    if not (prefix / "share" / "rosidl_default_generators").is_dir():
        print(f"ROS 2 message generators not installed in {prefix}; nothing to build", file=sys.stderr)
        return 1
    digest = source_sha256()
    if STAMP.is_file() and STAMP.read_text() == digest and (INSTALL / "lib").is_dir():
        print(f"test vision_msgs up to date in {INSTALL}")
        return 0
    fix_wheel_cmake_paths(prefix)
    if BUILD.exists():
        shutil.rmtree(BUILD)  # ours: build/test_msgs is written only by this script
    work = BUILD / "work"
    env = {**os.environ, "AMENT_PREFIX_PATH": str(prefix), "CMAKE_PREFIX_PATH": str(prefix)}
    configure = ["cmake", "-S", str(PACKAGE), "-B", str(work), f"-DCMAKE_PREFIX_PATH={prefix}",
                 f"-DCMAKE_INSTALL_PREFIX={INSTALL}", f"-DPython3_EXECUTABLE={sys.executable}",
                 "-DBUILD_TESTING=OFF", "-DPYTHON_INSTALL_DIR=lib/python",  # a fixed path for PYTHONPATH
                 # the libraries find each other and the wheels' without LD_LIBRARY_PATH
                 f"-DCMAKE_INSTALL_RPATH={INSTALL / 'lib'};{prefix / 'lib'}", "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON"]
    for cmd in (configure, ["cmake", "--build", str(work), "-j2"], ["cmake", "--install", str(work)]):
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL if "--build" not in cmd else None)
    STAMP.write_text(digest)
    print(f"built test vision_msgs into {INSTALL}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
