"""Exported graphs made on demand for the CPU runtimes: exported once per weights / config / exporter,
reused after, never half-written; `--backend auto` runs OpenVINO on them on x86 and falls back to
torch (in one line) when no graph can be made."""
import importlib.util
import os
import platform
import re
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from panoptic_node.export import mask_graph_path
from panoptic_node.inference import graph_cache
from panoptic_node.inference.backends import make_pipeline
from panoptic_node.inference.graph_cache import cached_graph, cached_graph_path
from panoptic_node.model.checkpoint import CheckpointError, save_checkpoint
from panoptic_node.model.config import load_config
from panoptic_node.model.detr import build_model

from conftest import compact_config

openvino_here = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64") or not importlib.util.find_spec("openvino"),
    reason="auto picks OpenVINO on x86 CPUs where it is installed")


def _model(d, seed=3, **overrides):
    torch.manual_seed(seed)
    cfg = compact_config(**overrides)
    save_checkpoint(build_model(cfg, pretrained_backbone=True), d / f"w{seed}.pth")
    data = asdict(cfg)
    data["weights"] = f"w{seed}.pth"
    (d / f"m{seed}.yaml").write_text(yaml.safe_dump(data))
    return d / f"m{seed}.yaml"


def test_exported_once_then_reused(tmp_path):
    cfg = load_config(str(_model(tmp_path)))
    cache = tmp_path / "cache"
    lines = []
    path = cached_graph(cfg, log=lines.append, directory=cache)
    assert path.is_file() and mask_graph_path(path).is_file() and len(lines) == 1 and "exporting" in lines[0]
    inode = path.stat().st_ino
    assert cached_graph(cfg, log=lines.append, directory=cache) == path and len(lines) == 1
    assert path.stat().st_ino == inode  # the same file, not written again
    assert sorted(p.name for p in cache.iterdir()) == sorted([path.name, mask_graph_path(path).name,
                                                              path.name + ".sha256"])  # no leftovers


def test_new_weights_or_config_export_again(tmp_path):
    cfg = load_config(str(_model(tmp_path)))
    base = cached_graph_path(cfg, cfg.weights, tmp_path)
    assert cached_graph_path(cfg, cfg.weights, tmp_path) == base
    other_weights = load_config(str(_model(tmp_path, seed=4)))
    other_config = load_config(str(_model(tmp_path, seed=5)))
    other_config.dec_layers += 1
    paths = {cached_graph_path(other_weights, other_weights.weights, tmp_path),
             cached_graph_path(other_config, cfg.weights, tmp_path)}
    assert base not in paths and len(paths) == 2
    # post-processing runs on the graph's outputs: changing it keeps the graph
    other_post = load_config(str(_model(tmp_path, seed=5)))
    other_post.postprocess.threshold, other_post.postprocess.split_things = 0.3, 64
    assert cached_graph_path(other_post, cfg.weights, tmp_path) == base


@pytest.fixture
def stand_in_exporter(monkeypatch):
    """The cache's exporter writing small stand-in graphs (named by what they are for) instead of exporting:
    for the tests of what the cache does with files (checksums, keeping), where a real export only costs
    seconds (what it really writes: the tests of the graphs themselves)."""
    from panoptic_node.inference import graph_cache

    def stand_in_export(model, canvas, out):
        out.write_bytes(f"detect graph for {canvas} of {out.name}".encode() * 20)  # a few KB, to cut
        mask_graph_path(out).write_bytes(f"mask graph for {canvas} of {out.name}".encode() * 20)
        return out, mask_graph_path(out)
    monkeypatch.setattr(graph_cache, "export_onnx", stand_in_export)


def test_a_graph_without_its_mask_graph_is_exported_again(tmp_path, stand_in_exporter):
    cfg = load_config(str(_model(tmp_path)))
    path = cached_graph(cfg, log=lambda m: None, directory=tmp_path / "c")
    mask_graph_path(path).unlink()  # as if a crash came between the two renames
    lines = []
    assert cached_graph(cfg, log=lines.append, directory=tmp_path / "c") == path
    assert mask_graph_path(path).is_file() and len(lines) == 1


@pytest.mark.parametrize("damage", ["truncated", "empty", "mask_graph_cut", "checksum_gone"])
def test_a_damaged_cached_graph_is_exported_again(tmp_path, damage, stand_in_exporter):
    """A cached graph that does not match the checksum written with it is made again, instead of every
    default run failing until someone deletes the file by hand."""
    cfg = load_config(str(_model(tmp_path)))
    path = cached_graph(cfg, log=lambda m: None, directory=tmp_path / "c")
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "mask_graph_cut":
        mask = mask_graph_path(path)
        mask.write_bytes(mask.read_bytes()[:100])
    else:
        Path(str(path) + ".sha256").unlink()
    lines = []
    assert cached_graph(cfg, log=lines.append, directory=tmp_path / "c") == path
    assert "does not match its checksum" in lines[0] and path.read_bytes() == good
    assert cached_graph(cfg, log=lines.append, directory=tmp_path / "c") == path and len(lines) == 2  # trusted now


def test_missing_weights_are_named(tmp_path):
    cfg = load_config(str(_model(tmp_path)))
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        cached_graph(cfg, str(tmp_path / "nothing.pth"), directory=tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        make_pipeline(str(_model(tmp_path)), weights=str(tmp_path / "nothing.pth"))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint"], ids=["empty", "garbage"])
def test_bad_weights_are_one_error_not_an_export_failure_and_a_fallback(tmp_path, monkeypatch, content):
    """The weights' own problem, said once: no "exporting ..." line before it, no "running on torch"
    that then fails on the same file."""
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(content)
    for backend in ("auto", "onnxruntime"):
        lines = []
        with pytest.raises(CheckpointError, match="weights file '.*bad.pth' is"):
            make_pipeline(str(_model(tmp_path)), weights=str(bad), backend=backend, log=lines.append)
        assert lines == [], lines
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@openvino_here
def test_auto_runs_openvino_on_the_cached_graph(tmp_path):
    model = str(_model(tmp_path))
    lines = []
    auto = make_pipeline(model, log=lines.append)
    assert auto.backend.name == "openvino" and lines[-1] == "backend: openvino (auto)"
    assert any(line.startswith("exporting tiny_lite0") for line in lines)
    torch_pipeline = make_pipeline(model, backend="torch")
    frame = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    a, b = auto(frame), torch_pipeline(frame)
    assert a.semantic.shape == b.semantic.shape == (96, 128)
    assert (a.semantic == b.semantic).mean() > 0.99  # the same model, up to float rounding at ties
    lines = []
    make_pipeline(model, log=lines.append)
    assert lines == ["backend: openvino (auto)"]  # the second time from the cache


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("openvino", marks=openvino_here)])
def test_a_cached_graph_opens_whatever_post_processing_first_exported_it(tmp_path, monkeypatch, backend):
    """Post-processing is not in a graph nor in a cached graph's name, yet the graph records the config that
    first exported it. One exported by a probe with `threshold: .nan` (refused by configs since) made every
    later run read that back, fail, and fall back to fp32 without saying why in terms a user could act on."""
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", str(tmp_path / "cache"))
    model = str(_model(tmp_path))
    probe = load_config(model)
    probe.postprocess.threshold = float("nan")  # what a config file can no longer say
    cached_graph(probe, log=lambda m: None)
    lines = []
    pipeline = make_pipeline(model, backend=backend, log=lines.append)
    assert lines == [f"backend: {backend}"] and pipeline.backend.name == backend  # opened, not exported again
    frame = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    assert pipeline(frame).semantic.shape == (96, 128)


@openvino_here
def test_auto_falls_back_to_torch_when_no_graph_can_be_made(tmp_path, monkeypatch):
    """Said as a warning (the node's WARN: it now runs slower) naming the cache, and for a full disk its free
    space ('[Errno 28] No space left on device' named neither)."""
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def broken(*args, **kwargs):
        raise RuntimeError("the exporter failed")
    monkeypatch.setattr(graph_cache, "export_onnx", full)
    cache = tmp_path / "cache"
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", str(cache))
    model = str(_model(tmp_path))
    lines, warned = [], []
    p = make_pipeline(model, log=lines.append, warn=warned.append)
    assert p.backend.name == "torch" and lines[-1] == "backend: torch (auto)"
    assert len(warned) == 1 and re.fullmatch(
        rf"no exported graph for openvino \(no space left on the disk holding '{re.escape(str(cache))}' \([0-9.]+ [MG]B "
        rf"free of [0-9.]+ [MG]B\): free space there or write the outputs elsewhere; PANOPTIC_NODE_GRAPH_CACHE chooses "
        rf"another folder\); running on torch, slower \(bench/bench_backends.py\)", warned[0]), warned
    assert not any(cache.iterdir())  # nothing half-written left behind
    with pytest.raises(OSError, match="No space left"):
        make_pipeline(model, backend="openvino")  # asked for by name: the error itself
    monkeypatch.setattr(graph_cache, "export_onnx", broken)
    lines = []
    assert make_pipeline(model, log=lines.append).backend.name == "torch"  # no warn given: said with the rest
    assert lines[-2:] == [f"no exported graph for openvino (the exporter failed; graph cache {cache}); running on "
                          f"torch, slower (bench/bench_backends.py)", "backend: torch (auto)"]


def test_cuda_with_openvino_is_refused_before_any_export(tmp_path, monkeypatch):
    monkeypatch.setattr(graph_cache, "export_onnx", lambda *a, **k: pytest.fail("exported"))
    with pytest.raises(ValueError, match="backend 'openvino' runs on the CPU"):
        make_pipeline(str(_model(tmp_path)), backend="openvino", device="cuda")


def test_the_cache_folder_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", str(tmp_path / "g"))
    assert graph_cache.cache_dir() == tmp_path / "g"
    monkeypatch.delenv("PANOPTIC_NODE_GRAPH_CACHE")
    assert graph_cache.cache_dir() == Path.home() / ".cache" / "panoptic_node" / "graphs"


@openvino_here
def test_the_graph_beside_the_configs_weights_is_not_used_for_other_weights(tmp_path):
    model = _model(tmp_path)
    other = load_config(str(_model(tmp_path, seed=4))).weights
    (tmp_path / "w3.onnx").write_bytes(b"the graph of w3.pth, not of w4.pth")  # models/<name>.onnx beside w3.pth
    p = make_pipeline(str(model), weights=other, backend="openvino", log=lambda m: None)
    assert p.backend.name == "openvino"
    with pytest.raises(ValueError, match="w3.onnx"):  # with the config's own weights that graph is the one
        make_pipeline(str(model), backend="openvino", log=lambda m: None)


def test_only_the_graphs_used_last_are_kept(tmp_path, stand_in_exporter):
    """Keeping is by name and last use, whatever a graph holds (stand-in graphs: five weights files, no five
    exports)."""
    cache = tmp_path / "cache"
    cfgs = [load_config(str(_model(tmp_path, seed=s))) for s in range(5)]
    paths = []
    for i, cfg in enumerate(cfgs[:3]):
        paths.append(cached_graph(cfg, log=lambda m: None, directory=cache))
        os.utime(paths[-1], (1000 + i, 1000 + i))  # used in this order
    cached_graph(cfgs[0], log=lambda m: None, directory=cache)  # used again: now the newest
    paths.append(cached_graph(cfgs[3], log=lambda m: None, directory=cache))  # a fourth: the oldest goes
    kept = sorted(p.name for p in cache.iterdir())
    assert kept == sorted(n for p in (paths[0], paths[2], paths[3])
                          for n in (p.name, mask_graph_path(p).name, p.name + ".sha256"))
    other = cache / "tiny_lite0-v2-0123456789abcdef01234567.onnx"  # another model whose name starts alike
    other.write_bytes(b"x")
    os.utime(other, (1, 1))
    cached_graph(cfgs[4], log=lambda m: None, directory=cache)
    assert other.is_file() and len(list(cache.glob("*.masks.onnx"))) == 3


@openvino_here
def test_a_frame_a_given_graph_scales_down_is_warned_about_once(tmp_path):
    """A graph the user gives (an int8 graph, say) has one canvas; a frame it can hold only smaller is said."""
    model = str(_model(tmp_path))
    graph = cached_graph(load_config(model), log=lambda m: None, directory=tmp_path / "given")
    p = make_pipeline(model, backend="openvino", onnx=str(graph), log=lambda m: None)
    h, w = p.backend.size
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        p(np.zeros((h, w, 3), np.uint8))  # landscape, the canvas's own shape: nothing to say
        assert not seen
        p(np.zeros((w, h, 3), np.uint8))  # portrait: scaled down to fit
        p(np.zeros((w, h, 3), np.uint8))
    assert len(seen) == 1 and f"a {h}x{w} frame is scaled to" in str(seen[0].message)
    assert "leave --onnx out" in str(seen[0].message)


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("openvino", marks=openvino_here)])
def test_exported_graphs_give_torch_s_answer_on_every_frame_shape(tmp_path, monkeypatch, backend):
    """Graphs the cache makes are made per input size: a portrait, square or 16:9 frame is neither padded
    into nor scaled down to one landscape canvas, so the runtime gives torch's labels on every shape. (The
    DETR architecture on the same shapes and runtimes: the official-checkpoint test below.)"""
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", str(tmp_path / "cache"))
    model = str(_model(tmp_path))
    torch_pipeline = make_pipeline(model, backend="torch")
    runtime = make_pipeline(model, backend=backend, log=lambda m: None)
    rng = np.random.default_rng(0)
    shapes = [(72, 96), (54, 96), (80, 60), (70, 70), (75, 100)]  # 4:3, 16:9, portrait 3:4, square, 4:3 again
    for h, w in shapes:
        rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        a, b = torch_pipeline(rgb), runtime(rgb)
        assert a.semantic.shape == b.semantic.shape == (h, w)
        assert (a.semantic == b.semantic).mean() >= 0.995, (h, w)
    made = sorted(p.name.split("-")[-2] for p in (tmp_path / "cache").glob("*.onnx") if ".masks" not in p.name)
    # one graph per padded size, as torch pads (multiples of 32): 4:3 and 16:9 share the config's 96x128
    assert made == ["128x96", "96x128", "96x96"]


def test_infer_with_an_official_checkpoint_agrees_across_backends_on_every_shape(tmp_path, monkeypatch):
    """A checkpoint in the published facebookresearch/detr layout ({'model': ...}, detr. prefixes) through
    `infer`, as a DETR user runs it: torch, onnxruntime, openvino and auto give the same category on
    >= 99.5 % of the pixels of frames of five shapes."""
    from PIL import Image

    from conftest import small_config
    from panoptic_node.cli import main
    from panoptic_node.model.checkpoint import save_official
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(5)
    cfg = small_config(postprocess={"threshold": 0.0, "min_area": 4, "merge": "logits", "rule": "published"})
    save_official(build_model(cfg), tmp_path / "official.pth")
    data = asdict(cfg)
    (tmp_path / "detr.yaml").write_text(yaml.safe_dump(data))
    rng = np.random.default_rng(1)
    images = []
    for i, (h, w) in enumerate([(72, 96), (54, 96), (80, 60), (70, 70), (75, 100)]):
        images.append(tmp_path / f"f{i}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images[-1])
    backends = ["torch", "onnxruntime"] + (["openvino", "auto"] if importlib.util.find_spec("openvino") else [])
    semantic = {}
    for backend in backends:
        out = tmp_path / backend
        assert main(["infer", *map(str, images), "--model", str(tmp_path / "detr.yaml"), "--weights",
                     str(tmp_path / "official.pth"), "--backend", backend, "--out", str(out)]) == 0
        semantic[backend] = [np.asarray(Image.open(out / f"f{i}_semantic.png")) for i in range(len(images))]
    for backend in backends[1:]:
        for i, (a, b) in enumerate(zip(semantic["torch"], semantic[backend])):
            assert a.shape == b.shape and (a == b).mean() >= 0.995, (backend, i)


def _runtime_threads(backend) -> int:
    """The threads the runtime itself says it was given (not what we asked of it)."""
    if backend.name == "openvino":
        return int(backend.detect_request.get_compiled_model().get_property("INFERENCE_NUM_THREADS"))
    return backend.detect_session.get_session_options().intra_op_num_threads


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("openvino", marks=openvino_here)])
def test_threads_reach_every_runtime_and_every_frame_size(tmp_path, monkeypatch, backend):
    """`threads` (fleet workers' share of the cores, the node's num_threads, --threads): the runtime of
    every graph the pipeline opens, one per frame size, and torch's post-processing, take that many.
    Fleet workers used to set torch's alone, so each worker's OpenVINO took every core."""
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    try:
        pipeline = make_pipeline(str(_model(tmp_path)), backend=backend, threads=1, log=lambda m: None)
        rng = np.random.default_rng(0)
        for h, w in ((96, 128), (128, 96)):  # a second size: a second graph
            pipeline(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        graphs = list(pipeline.backend._by_shape.values())
        assert len(graphs) == 2 and [_runtime_threads(g) for g in graphs] == [1, 1]
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_torch_keeps_one_thread_beside_another_runtime_and_its_own_count_for_its_network(tmp_path, monkeypatch):
    """Where ONNX Runtime or OpenVINO runs the network, torch runs only the post-processing, on one thread
    (with more, its OpenMP workers spin between operations and slow the runtime's next frame); a torch
    pipeline made after it gets torch's own count back, or the threads asked for."""
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", str(tmp_path / "cache"))
    from panoptic_node.inference import backends
    monkeypatch.setattr(backends, "_TORCH_OWN_THREADS", [])
    torch.set_num_threads(2)
    model = str(_model(tmp_path))
    make_pipeline(model, backend="onnxruntime", log=lambda m: None)
    assert torch.get_num_threads() == 1
    make_pipeline(model, backend="torch", log=lambda m: None)
    assert torch.get_num_threads() == 2
    make_pipeline(model, backend="onnxruntime", threads=os.cpu_count() or 1, log=lambda m: None)  # the runtime's
    assert torch.get_num_threads() == 1
    make_pipeline(model, backend="torch", threads=1, log=lambda m: None)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("threads", [-1, 1.5, True, (os.cpu_count() or 1) + 1, 100000])
def test_a_bad_thread_count_is_refused_in_one_line(threads):
    """100000 threads segfaulted torch's thread pool at the first frame (the node died without a word)."""
    cpus = os.cpu_count() or 1
    with pytest.raises(ValueError, match=rf"^threads .*: expected a whole number from 0 \(every core\) to {cpus} "
                                         rf"\(this machine's CPUs\)$"):
        make_pipeline("street_lite0", threads=threads)


def test_inference_workers_meeting_a_new_frame_size_make_its_graph_one_at_a_time(tiny_model_yaml, tmp_path,
                                                                                   monkeypatch, rng):
    """Two pipelines (inference workers, a thread each) given frames of a size new to both at once: the graphs
    are made one after the other (torch's ONNX export is not safe to run twice at once: it failed with
    "GLOBALS.in_onnx_export must be False"), the second from the cache, and both answer as one pipeline does."""
    import threading
    if not importlib.util.find_spec("openvino"):
        pytest.skip("needs OpenVINO (the graphs are made for a CPU runtime)")
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", str(tmp_path / "graphs"))
    made, running, overlapped = [], [0], []
    real_export = graph_cache.export_onnx

    def export(*args, **kwargs):
        running[0] += 1
        overlapped.append(running[0] > 1)
        try:
            made.append(args[1])
            return real_export(*args, **kwargs)
        finally:
            running[0] -= 1

    monkeypatch.setattr(graph_cache, "export_onnx", export)
    workers = [make_pipeline(str(tiny_model_yaml), backend="openvino", threads=1, log=lambda m: None)
               for _ in range(2)]
    frame = rng.integers(0, 255, (128, 96, 3), dtype=np.uint8)  # portrait: not the config's canvas, a new graph
    results, errors = [None, None], []

    def infer(i):
        try:
            results[i] = workers[i](frame)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=infer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not any(overlapped)
    assert len(made) == 2 and made[0] != made[1]  # the config's canvas at start, then the new size once
    assert np.array_equal(results[0].panoptic, results[1].panoptic)


@openvino_here
def test_each_openvino_requests_first_call_runs_alone_and_later_calls_in_parallel():
    """OpenVINO 2026.4's bindings can deadlock when two threads make their first numpy input at once (a replay
    with two inference workers hung for good at its first frames): each request's first call waits for any
    other first call; once past it, two workers' calls run side by side (they meet inside infer)."""
    import threading
    import time
    from panoptic_node.inference.openvino_backend import OpenVinoBackend
    inside, most, meet = [0], [0], threading.Barrier(2, timeout=10)
    lock = threading.Lock()

    class Request:  # stands in for an openvino InferRequest: counts the calls inside it at once
        def __init__(self):
            self.calls = 0

        def infer(self, feeds, share_inputs, share_outputs):
            self.calls += 1
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            if self.calls == 1:
                time.sleep(0.3)  # a first call that takes a while: the other one must not start meanwhile
            else:
                meet.wait()  # both later calls inside at once, or a BrokenBarrierError after 10 s
            with lock:
                inside[0] -= 1
            return feeds

    backends = []
    for _ in range(2):  # two workers' backends, built without a graph: only the calls are under test here
        b = OpenVinoBackend.__new__(OpenVinoBackend)
        b._called = set()
        backends.append((b, Request()))
    errors = []

    def one_call_each():  # the two workers call their own backend at the same moment
        def call(b, request):
            try:
                assert b._infer(request, {"frame": 1}) == {"frame": 1}
            except Exception as e:
                errors.append(e)
        threads = [threading.Thread(target=call, args=pair) for pair in backends]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    one_call_each()
    assert not errors and most[0] == 1  # the two first calls, one after the other
    one_call_each()
    assert not errors and most[0] == 2  # later calls side by side


@openvino_here
def test_openvino_keeps_what_it_compiled_beside_the_cache_s_graph_and_it_goes_with_the_graph(tmp_path, monkeypatch):
    """The second start compiles the cache's graph from OpenVINO's model cache kept beside it (the same outputs);
    a folder it cannot write leaves the graph compiled afresh; the compiled folder goes when its graph is pruned
    or made again, and a graph given by path is never compiled into a cache (it may be replaced in place)."""
    from panoptic_node.inference.graph_cache import compiled_dir
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", str(tmp_path / "cache"))
    model = str(_model(tmp_path))
    frame = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    first = make_pipeline(model, backend="openvino", log=lambda m: None)
    graph = cached_graph_path(load_config(model), load_config(model).weights, tmp_path / "cache")
    compiled = compiled_dir(graph)
    assert not first.backend._current.loaded_from_cache and any(compiled.iterdir())
    again = make_pipeline(model, backend="openvino", log=lambda m: None)
    assert again.backend._current.loaded_from_cache
    a, b = first(frame), again(frame)
    assert np.array_equal(a.semantic, b.semantic) and np.array_equal(a.instance, b.instance)
    # what it kept there damaged: compiled afresh, the same answer, and kept anew for the next start
    for p in compiled.rglob("*"):
        if p.is_file():
            p.write_bytes(b"not a compiled model")
    damaged = make_pipeline(model, backend="openvino", log=lambda m: None)
    assert np.array_equal(damaged(frame).semantic, a.semantic) and not damaged.backend._current.loaded_from_cache
    make_pipeline(model, backend="openvino", log=lambda m: None)
    assert make_pipeline(model, backend="openvino", log=lambda m: None).backend._current.loaded_from_cache
    # a folder it cannot write in: not used
    shutil.rmtree(compiled)
    compiled.write_bytes(b"a file where the folder goes")
    blocked = make_pipeline(model, backend="openvino", log=lambda m: None)
    assert np.array_equal(blocked(frame).semantic, a.semantic) and not blocked.backend._current.loaded_from_cache
    compiled.unlink()
    # a graph given by path: compiled afresh, nothing written beside it
    given = tmp_path / "given"
    given.mkdir()
    for p in (graph, mask_graph_path(graph)):
        shutil.copy(p, given / p.name)
    opened = make_pipeline(model, backend="openvino", onnx=str(given / graph.name), log=lambda m: None)
    assert not opened.backend.loaded_from_cache and np.array_equal(opened(frame).semantic, a.semantic)
    assert sorted(p.name for p in given.iterdir()) == sorted([graph.name, mask_graph_path(graph).name])
    # made again (its checksum gone): the compiled folder of the old pair goes with it
    graph.with_name(graph.name + ".sha256").unlink()
    compiled.mkdir()
    stale = compiled / "stale.blob"
    stale.write_bytes(b"x")
    make_pipeline(model, backend="openvino", log=lambda m: None)
    assert not stale.exists()
    # pruned with its graph
    graph_cache._prune(graph.parent, "tiny_lite0", load_config(model).input.canvas, keep=0)
    assert not graph.exists() and not compiled.exists()
