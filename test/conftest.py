"""Shared fixtures: small model configs with random weights, and where the CamVid data lives."""
import atexit
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from panoptic_node.model.config import InputConfig, ModelConfig, PostprocessConfig

ROOT = Path(__file__).resolve().parents[1]
CAMVID = Path(os.environ.get("PANOPTIC_NODE_CAMVID", ROOT.parent / "shared" / "data" / "camvid"))

# `make test` runs the suite in two pytest-xdist workers, one a core (most of a test's time is a node or a
# worker process starting, or a subprocess waited for, where one process alone leaves a core idle): each
# worker's torch gets one thread, and its ROS 2 graph a domain of its own, so that one worker's nodes and
# topics never reach the other's tests (which assert what the graph holds). Alone, pytest keeps two threads
# and the user's domain; set PANOPTIC_TEST_THREADS=1 while something else trains.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if XDIST_WORKER:
    os.environ["ROS_DOMAIN_ID"] = str(100 + int(XDIST_WORKER.removeprefix("gw")))
torch.set_num_threads(int(os.environ.get("PANOPTIC_TEST_THREADS", "1" if XDIST_WORKER else "2")))

# the files that take longest (`--durations` in CI's log: the node on a live graph about 4 minutes, each of the
# others 1.5-2), first: with a file to a worker at a time, one of them started last would run on alone at the end
SLOWEST_FILES = ("test_node_graph.py", "test_int8_scales.py", "test_fleet.py", "test_graph_cache.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return SLOWEST_FILES.index(name) if name in SLOWEST_FILES else len(SLOWEST_FILES)
    items.sort(key=rank)  # stable: every file's own order, and the other files', unchanged


@pytest.fixture(autouse=True)
def _torch_threads_kept():
    """A pipeline whose network runs outside torch leaves torch one thread (backends._set_torch_threads): a
    training test after it must not run on one core."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# graphs that `--backend auto` exports go to a folder of this test session, not the user's cache
# (removed when the session ends: about 100 MB of graphs a run)
os.environ["PANOPTIC_NODE_GRAPH_CACHE"] = tempfile.mkdtemp(prefix="panoptic_node_test_graphs_")
atexit.register(shutil.rmtree, os.environ["PANOPTIC_NODE_GRAPH_CACHE"], ignore_errors=True)


def from_test_extra(module: str):
    """A module of the package's `test` extra. `colcon test` on a ROS 2 install where only the package itself
    was pip-installed must still run the rest (a failed import at collection ran no test at all); CI installs
    the extra (make install-test), so there a missing one fails instead of hiding."""
    if os.environ.get("CI"):
        import importlib
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"no {module}: pip install -e '.[test]' (make test installs it)")


@contextlib.contextmanager
def spawned_pools(module):
    """`module`'s multiprocessing pools started with spawn rather than fork, while inside: panopticapi and
    cityscapesscripts fork a Pool from the test process, which by then holds Fast DDS, OpenVINO and torch
    threads, and a worker forked from it once died holding the pool's queue lock, which hung the whole suite
    (CI, 2026-12-01). A spawned worker starts clean."""
    import multiprocessing
    from types import SimpleNamespace
    spawned = SimpleNamespace(Pool=multiprocessing.get_context("spawn").Pool, cpu_count=multiprocessing.cpu_count)
    real, module.multiprocessing = module.multiprocessing, spawned
    try:
        yield module
    finally:
        module.multiprocessing = real


def panopticapi_pq_compute(*args):
    """panopticapi's pq_compute (gt json, pred json, gt folder, pred folder), its workers spawned."""
    with spawned_pools(pytest.importorskip("panopticapi.evaluation")) as evaluation:
        return evaluation.pq_compute(*map(str, args))


def run_without(modules, code: str, cwd, all_but: bool = False, env=None):
    """Python `code` run in a process where these modules (and what is inside them) cannot be imported, as on
    a machine without them; with all_but, every module outside the standard library but these (a bare
    Python); the finished process."""
    import subprocess
    import sys
    hidden = "top not in sys.stdlib_module_names and top not in" if all_but else "top in"
    blocker = (f"import importlib.abc, sys\n"
               f"class Without(importlib.abc.MetaPathFinder):\n"
               f"    def find_spec(self, name, path=None, target=None):\n"
               f"        top = name.split('.')[0]\n"
               f"        if {hidden} {tuple(modules)!r}:\n"
               f"            raise ModuleNotFoundError(f'No module named {{name!r}}', name=name)\n"
               f"sys.meta_path.insert(0, Without())\n")
    return subprocess.run([sys.executable, "-c", blocker + code], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


def small_config(**overrides) -> ModelConfig:
    """An R50 DETR with a thin transformer: the published architecture, quick to run on CPU."""
    base = dict(name="tiny_r50", backbone="resnet50", hidden_dim=128, nheads=8, enc_layers=1, dec_layers=2,
                dim_feedforward=256, dropout=0.0, num_queries=10, num_classes=250, labels="coco",
                mask_head="detr_conv",
                input=InputConfig(short_side=96, max_size=128, size_divisibility=32),
                postprocess=PostprocessConfig(threshold=0.0, min_area=4, merge="logits"))
    base.update(overrides)
    return ModelConfig(**base)


def compact_config(**overrides) -> ModelConfig:
    base = dict(name="tiny_lite0", backbone="efficientnet_lite0", hidden_dim=64, nheads=4, enc_layers=1,
                dec_layers=2, dim_feedforward=128, dropout=0.0, num_queries=12, num_classes=11, labels="camvid",
                mask_head="dot_product", mask_dim=32,
                input=InputConfig(short_side=96, max_size=128, size_divisibility=32, normalization="tf"),
                postprocess=PostprocessConfig(threshold=0.0, min_area=4, merge="score_prob"))
    base.update(overrides)
    return ModelConfig(**base)


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial frozen BatchNorm statistics, so a loader that drops them would be caught."""
    g = torch.Generator().manual_seed(seed)
    for name, buf in model.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
        elif name.endswith("running_var"):
            buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
        elif name.endswith(".weight") and buf.dim() == 1:
            buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
        elif name.endswith(".bias") and buf.dim() == 1:
            buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)


@pytest.fixture(scope="module")
def tiny_model_yaml(tmp_path_factory):
    """The compact architecture with random weights, as a YAML config + checkpoint on disk."""
    from launch_helpers import tiny_model_yaml as make
    return make(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_model_yaml):
    """That model loaded through its YAML config, as users' models are."""
    from panoptic_node.inference.pipeline import Pipeline
    return Pipeline.from_config(tiny_model_yaml)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def bench_module(name: str):
    """bench/NAME.py as a module, for tests of a benchmark's own arithmetic (bench/ holds scripts, not a package)."""
    import importlib.util
    bench = Path(__file__).resolve().parents[1] / "bench"
    if str(bench) not in sys.path:  # as a script has its own folder there: the benchmarks import their neighbours
        sys.path.append(str(bench))
    spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def camvid_or_skip() -> Path:
    if not (CAMVID / "val.txt").is_file():
        pytest.skip(f"CamVid not found at {CAMVID} (expected ../shared/data/camvid beside the repo, "
                    f"or set PANOPTIC_NODE_CAMVID)")
    return CAMVID


def write_frames(folder: Path, count: int, shape=(48, 64), seed: int = 0) -> Path:
    """`count` random RGB frames as 0.png, 1.png, ... in `folder` (calibration and image-folder inputs)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)


def png_with_a_broken_chunk() -> np.ndarray:
    """An 8 x 8 PNG whose image data is split over two chunks, the second with a damaged type."""
    import struct
    import zlib
    data = zlib.compress(b"".join(b"\x00" + bytes(range(24)) for _ in range(8)))
    png = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
           + png_chunk(b"IDAT", data[:10]) + png_chunk(b"\x1f\xc3\x7f\xad", data[10:]) + png_chunk(b"IEND", b""))
    return np.frombuffer(png, np.uint8)


def png_declaring(width, height) -> np.ndarray:
    """A few dozen bytes of PNG whose header declares a frame of width x height (a decompression bomb)."""
    import struct
    import zlib
    png = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + png_chunk(b"IEND", b""))
    return np.frombuffer(png, np.uint8)


def write_rgbd_bag(path: Path, rng, with_colour: bool = True, frames: int = 2) -> Path:
    """An RGB-D recording: colour frames (rgb8, 64x48), 16UC1 depth images and their compressedDepth twin,
    as a depth camera's driver records them."""
    from panoptic_node.bag.writer import BagWriter, compressed_msg, header, image_msg
    from panoptic_node.messages import image_fields
    with BagWriter(path, "mcap") as w:
        for i in range(frames):
            stamp = 1_700_000_000_000_000_000 + i
            if with_colour:
                w.write("/cam/color/image_raw", image_msg(header(stamp, "c"), image_fields(
                    rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "rgb8")), stamp)
            depth = rng.integers(0, 5000, (48, 64), dtype=np.uint16)
            w.write("/cam/depth/image_raw", image_msg(header(stamp, "d"), {
                "height": 48, "width": 64, "encoding": "16UC1", "is_bigendian": 0, "step": 128,
                "data": depth.view(np.uint8).ravel()}), stamp)
            w.write("/cam/depth/image_raw/compressedDepth", compressed_msg(
                header(stamp, "d"), "16UC1; compressedDepth png", b"\0" * 12 + b"png bytes"), stamp)
    return path
