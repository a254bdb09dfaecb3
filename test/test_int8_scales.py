"""INT8 by default on the CPU: a model's calibration ships as activation scales beside its weights
(`panoptic-node calibrate`), and the graph cache makes the int8 graph of every input size from them.

The graph made from the scales is the graph quantizing with the frames makes (same nodes, same bytes
in every initializer); `--backend auto` runs it on OpenVINO; scales of other weights, damaged scales or
scales that miss an activation get one line (auto then runs fp32, an explicit int8 stops)."""
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from onnx import numpy_helper  # noqa: E402

from panoptic_node.cli import main  # noqa: E402
from panoptic_node.export import export_onnx  # noqa: E402
from panoptic_node.inference.backends import make_pipeline  # noqa: E402
from panoptic_node.inference.graph_cache import cached_graph, cached_graph_path  # noqa: E402
from panoptic_node.int8_scales import activation_scales, default_scales_path, load_scales  # noqa: E402
from panoptic_node.model.checkpoint import load_model  # noqa: E402
from panoptic_node.model.config import load_config  # noqa: E402
from panoptic_node.quantize import in_module, quantize_int8, quantize_with_scales  # noqa: E402

from conftest import CAMVID, bench_module, camvid_or_skip, write_frames  # noqa: E402
from launch_helpers import tiny_model_yaml  # noqa: E402


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return write_frames(tmp_path_factory.mktemp("calib"), 5, (48, 64), seed=1)


@pytest.fixture(scope="module")
def calibrated(frames):
    """A model folder (config + weights) with its scales made by `panoptic-node calibrate`."""
    yaml_path = Path(tiny_model_yaml())
    assert main(["calibrate", "--model", str(yaml_path), "--calib", str(frames), "--calib-frames", "4"]) == 0
    cfg = load_config(str(yaml_path))
    return yaml_path, cfg, default_scales_path(cfg.weights)


def graph_content(path):
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    nodes = [(n.op_type, tuple(n.input), tuple(n.output)) for n in m.graph.node]
    return nodes, inits


def test_the_graph_made_from_scales_is_the_graph_made_from_frames(calibrated, frames, tmp_path, caplog):
    _, cfg, scales_path = calibrated
    canvas = cfg.input.canvas
    export_onnx(load_model(cfg, None), canvas, tmp_path / "fp32.onnx")
    with caplog.at_level(logging.WARNING):
        quantize_int8(tmp_path / "fp32.onnx", tmp_path / "frames.onnx", cfg, canvas, frames, frames=4)
        body = load_scales(scales_path, cfg.weights)
        quantize_with_scales(tmp_path / "fp32.onnx", tmp_path / "scales.onnx", cfg, canvas, body["scales"])
        logging.warning("a warning of somebody else's")
    # ONNX Runtime's advice to pre-process is kept from the user, and only while quantizing
    assert "pre-processing" not in caplog.text and "a warning of somebody else's" in caplog.text
    (nodes_a, inits_a), (nodes_b, inits_b) = graph_content(tmp_path / "frames.onnx"), graph_content(tmp_path / "scales.onnx")
    assert nodes_a == nodes_b
    assert inits_a.keys() == inits_b.keys()
    assert all(np.array_equal(inits_a[k], inits_b[k]) for k in inits_a)
    # and the scales are exactly the calibrated graph's
    assert activation_scales(onnx.load(str(tmp_path / "frames.onnx"))) == body["scales"]
    assert body["calibration"]["max_frames"] == 4 and body["int8_weight_bits"] == 8


def test_auto_runs_int8_graphs_of_each_input_size_on_openvino(calibrated, rng, tmp_path, monkeypatch):
    yaml_path, cfg, _ = calibrated
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", str(tmp_path / "cache"))
    lines = []
    pipe = make_pipeline(str(yaml_path), backend="openvino", log=lines.append)
    fp32 = make_pipeline(str(yaml_path), backend="openvino", precision="fp32", log=lines.append)
    assert (pipe.backend.name, pipe.backend.precision) == ("openvino", "int8")
    assert fp32.backend.precision == "fp32"
    # which calibration the int8 graphs came from, for the node's /diagnostics: name and sha256 of the scales
    from panoptic_node.inference.cache_key import weights_identity
    assert pipe.scales_id == weights_identity(default_scales_path(cfg.weights)) and fp32.scales_id == ""
    for h, w in ((48, 64), (64, 48)):  # the config's canvas, and a portrait frame's (each int8 graph costs ~9 s)
        rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        assert pipe(rgb).panoptic.shape == (h, w)
    graphs = sorted(p.name for p in (tmp_path / "cache").glob("*-int8-*.onnx") if ".masks" not in p.name)
    assert len(graphs) == 2, graphs  # one per padded input size
    from panoptic_node.export import read_metadata
    from panoptic_node.inference.cpu_features import int8_saturates
    for g in graphs:  # each of them int8, every activation quantized with a shipped scale
        scales = activation_scales(onnx.load(str(tmp_path / "cache" / g)))
        assert scales and set(scales) <= set(load_scales(default_scales_path(cfg.weights), cfg.weights)["scales"])
        # with the weight width this CPU's int8 kernels take (7 bits where 8 would saturate them)
        # and matrix products in float there, faster than int8 ones without VNNI
        meta = read_metadata(tmp_path / "cache" / g)
        assert (meta["int8_weight_bits"], meta["int8_matmuls"]) == ((7, False) if int8_saturates() else (8, True))
    # and the pipeline says that width (the node's /diagnostics and replay compare it); fp32 says none
    assert (pipe.backend.int8_weight_bits, fp32.backend.int8_weight_bits) == (7 if int8_saturates() else 8, 0)
    # and its matrix products (float where int8 ones run slower); fp32 says none
    assert (pipe.backend.int8_matrix_products, fp32.backend.int8_matrix_products) == (
        "float" if int8_saturates() else "int8", "")
    # ONNX Runtime's int8 kernels are slower than its fp32 ones on x86: auto keeps it fp32, int8 on request
    assert make_pipeline(str(yaml_path), backend="onnxruntime", log=lines.append).backend.precision == "fp32"
    assert make_pipeline(str(yaml_path), backend="onnxruntime", precision="int8",
                         log=lines.append).backend.precision == "int8"


@pytest.mark.parametrize("flags, device, bits", [
    ({"avx2", "fma"}, "cpu", 7),                 # x86 without VNNI: 8-bit weights would saturate its int8 kernels
    ({"avx2", "avx512_vnni"}, "cpu", 8),
    ({"avx2", "avx_vnni"}, "cpu", 8),
    ({"avx2", "fma"}, "cuda", 8),                # ONNX Runtime's CUDA / TensorRT providers have no such limit
])
def test_the_cache_makes_7_bit_int8_graphs_where_8_bit_weights_would_saturate(calibrated, monkeypatch, flags,
                                                                              device, bits):
    """OpenVINO's and ONNX Runtime's int8 kernels on x86 without VNNI add pairs of 8-bit products in 16-bit
    lanes that saturate (the shipped street model fell from PQ 73.7 to 20.9 on CamVid val on an AVX2 EPYC):
    there the graphs come with 7-bit weights from the same activation scales, elsewhere with the file's 8."""
    import platform
    from panoptic_node.inference import cpu_features
    from panoptic_node.inference.backends import int8_scales_for
    _, cfg, scales = calibrated
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: flags)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    body = load_scales(scales, cfg.weights)
    assert body["int8_weight_bits"] == 8
    for precision in ("auto", "int8"):
        made = int8_scales_for(cfg, None, "openvino", precision, log=None, device=device)
        assert made["int8_weight_bits"] == bits and made["scales"] == body["scales"]
        assert made.get("int8_matmuls", True) == (bits == 8)  # float matrix products with the 7-bit weights
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")  # ARM's int8 dot products do not saturate
    assert int8_scales_for(cfg, None, "openvino", "int8", log=None)["int8_weight_bits"] == 8


def _model_copy(calibrated, tmp_path) -> Path:
    yaml_path, _, scales = calibrated
    d = tmp_path / "model"
    shutil.copytree(yaml_path.parent, d)
    return d / yaml_path.name


@pytest.mark.parametrize("damage, message", [
    ("other_weights", "calibrated for other weights"),
    ("truncated", "not readable JSON"),
    ("negative", "not a positive number"),
    ("not_ours", "not in format 1"),
    ("missing_activation", "lack 1 activation"),
    ("float_nodes_not_a_list", "give float_nodes"),
])
def test_bad_scales_auto_runs_fp32_and_int8_stops_with_one_line(calibrated, tmp_path, monkeypatch, capsys, damage,
                                                               message):
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", str(tmp_path / "cache"))
    yaml_path = _model_copy(calibrated, tmp_path)
    cfg = load_config(str(yaml_path))
    scales = default_scales_path(cfg.weights)
    body = json.loads(scales.read_text())
    if damage == "other_weights":
        body["weights_sha256"] = "0" * 64
        scales.write_text(json.dumps(body))
    elif damage == "truncated":
        scales.write_text(scales.read_text()[:100])
    elif damage == "negative":
        body["scales"][next(iter(body["scales"]))] = -0.5
        scales.write_text(json.dumps(body))
    elif damage == "not_ours":
        scales.write_text(json.dumps({"ranges": [1, 2]}))
    elif damage == "float_nodes_not_a_list":
        body["float_nodes"] = "/transformer/decoder"
        scales.write_text(json.dumps(body))
    else:
        del body["scales"][sorted(body["scales"])[-1]]
        scales.write_text(json.dumps(body))
    before = scales.read_bytes()
    lines = []
    pipe = make_pipeline(str(yaml_path), backend="openvino", log=lines.append)
    assert pipe.backend.precision == "fp32"
    said = [line for line in lines if message in line]
    assert len(said) == 1 and said[0].endswith("running fp32") and "\n" not in said[0], lines
    if damage != "float_nodes_not_a_list":  # the whole command that mends them (that one is a hand edit)
        assert f"`panoptic-node calibrate --weights {cfg.weights} --calib FRAMES --overwrite`" in said[0], said
    with pytest.raises(ValueError, match=message):
        make_pipeline(str(yaml_path), backend="openvino", precision="int8", log=lines.append)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "frame.png")
    capsys.readouterr()
    assert main(["infer", "--model", str(yaml_path), "--backend", "openvino", "--precision", "int8",
                 str(tmp_path / "frame.png"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress lines ("exporting ...") and then the error
    assert [line for line in err if message in line] == err[-1:], err
    assert scales.read_bytes() == before  # the user's file is never rewritten


def test_int8_without_scales_names_the_command_that_makes_them(calibrated, tmp_path, monkeypatch):
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", str(tmp_path / "cache"))
    yaml_path = _model_copy(calibrated, tmp_path)
    cfg = load_config(str(yaml_path))
    default_scales_path(cfg.weights).unlink()
    assert make_pipeline(str(yaml_path), backend="openvino", log=lambda m: None).backend.precision == "fp32"
    with pytest.raises(FileNotFoundError) as refused:
        make_pipeline(str(yaml_path), backend="openvino", precision="int8", log=lambda m: None)
    assert str(refused.value).endswith(f"`panoptic-node calibrate --weights {cfg.weights} --calib FRAMES`")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*int8*"))


def test_int8_where_it_cannot_run_is_one_line(calibrated, tmp_path):
    yaml_path, cfg, _ = calibrated
    with pytest.raises(ValueError, match="precision int8 runs on the openvino or onnxruntime backend"):
        make_pipeline(str(yaml_path), backend="torch", precision="int8")
    export_onnx(load_model(cfg, None), cfg.input.canvas, tmp_path / "fp32.onnx")
    with pytest.raises(ValueError, match="is fp32, not the int8 asked for"):
        make_pipeline(str(yaml_path), backend="openvino", precision="int8", onnx=str(tmp_path / "fp32.onnx"))
    with pytest.raises(ValueError, match="precision 'int4' is not one of"):
        make_pipeline(str(yaml_path), backend="openvino", precision="int4")


def test_calibrate_refuses_to_replace_without_overwrite(calibrated, frames, tmp_path):
    yaml_path = _model_copy(calibrated, tmp_path)
    scales = default_scales_path(load_config(str(yaml_path)).weights)
    before = scales.read_bytes()
    assert main(["calibrate", "--model", str(yaml_path), "--calib", str(frames)]) == 2
    assert scales.read_bytes() == before
    assert main(["calibrate", "--model", str(yaml_path), "--calib", str(tmp_path / "nowhere"), "--overwrite"]) != 0
    assert scales.read_bytes() == before  # a failed calibration leaves the old file as it was
    assert not list(scales.parent.glob("*.partial*"))
    assert main(["calibrate", "--model", str(yaml_path), "--calib", str(frames), "--calib-frames", "2",
                 "--overwrite"]) == 0
    assert json.loads(scales.read_text())["calibration"]["max_frames"] == 2


def test_the_shipped_scales_belong_to_the_shipped_weights():
    """Fails when the street model's weights change without `panoptic-node calibrate` being rerun."""
    cfg = load_config("street_lite0")
    body = load_scales(default_scales_path(cfg.weights), cfg.weights)
    assert body["int8_weight_bits"] == 8 and len(body["scales"]) > 100


def test_the_shipped_int8_default_scores_within_one_pq_point_of_fp32():
    """The street model as users get it (auto: int8 on OpenVINO) against its fp32 graphs, on every
    fourth CamVid val frame."""
    camvid_or_skip()
    from panoptic_node.evaluation.evaluator import Evaluator
    from panoptic_node.taxonomy import get_taxonomy
    from panoptic_node.training.data import CamVid

    val = CamVid(CAMVID, "val")
    scores = {}
    for precision in ("auto", "fp32"):
        pipe = make_pipeline("street_lite0", backend="auto", precision=precision, log=lambda m: None)
        if precision == "auto":
            assert (pipe.backend.name, pipe.backend.precision) == ("openvino", "int8")
        ev = Evaluator(get_taxonomy("camvid"))
        for i in range(0, len(val), 4):
            s = val[i]
            r = pipe(s.rgb)
            ev.add_labelled(s.semantic, s.instance, r)
        rep = ev.report()
        scores[precision] = (100 * rep["pq"]["pq"], 100 * rep["miou"])
    assert abs(scores["auto"][0] - scores["fp32"][0]) <= 1.0, scores
    assert abs(scores["auto"][1] - scores["fp32"][1]) <= 1.0, scores


def test_cached_int8_graphs_are_named_apart_from_fp32_ones(calibrated, tmp_path):
    """fp32, int8, int8 from other scales, int8 with 7-bit weights (x86 without VNNI): each its own graph in
    the cache (by name: the graphs themselves are made in the tests above), and the same scales the same."""
    _, cfg, scales = calibrated
    body = load_scales(scales, cfg.weights)
    other = dict(body, scales={k: 2 * v for k, v in body["scales"].items()})
    seven = dict(body, int8_weight_bits=7)
    fp32, *int8 = (cached_graph_path(cfg, cfg.weights, tmp_path, int8=i) for i in (None, body, other, seven))
    assert len({fp32, *int8}) == 4 and "-int8-" not in fp32.name and all("-int8-" in p.name for p in int8)
    assert cached_graph_path(cfg, cfg.weights, tmp_path, int8=dict(body)) == int8[0]


def _quantized_nodes(path):
    """Names of the Conv / MatMul / Gemm nodes of a QDQ graph that take a dequantized input."""
    m = onnx.load(str(path))
    dequantized = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in m.graph.node
            if n.op_type in ("Conv", "MatMul", "Gemm") and any(i in dequantized for i in n.input)}


def test_keep_float_leaves_that_part_of_every_int8_graph_float(calibrated, frames, tmp_path, monkeypatch, capsys):
    """`calibrate --keep-float PREFIX` records the prefix with the scales; the graphs made from them leave
    that part float and quantize the rest as before; a prefix that names no node is refused before calibrating."""
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", str(tmp_path / "cache"))
    yaml_path = _model_copy(calibrated, tmp_path)
    cfg = load_config(str(yaml_path))
    scales = default_scales_path(cfg.weights)
    graph = lambda: cached_graph(cfg, None, log=lambda m: None, int8=load_scales(scales, cfg.weights))
    all_int8 = _quantized_nodes(graph())
    assert any(n.startswith("/transformer/decoder") for n in all_int8)

    before = scales.read_bytes()
    assert main(["calibrate", "--model", str(yaml_path), "--calib", str(frames), "--calib-frames", "2",
                 "--keep-float", "/transformer/dekoder", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "'/transformer/dekoder' names no node" in err[-1] and "expected a module path" in err[-1], err
    assert scales.read_bytes() == before  # refused: the scales file is as it was

    assert main(["calibrate", "--model", str(yaml_path), "--calib", str(frames), "--calib-frames", "2",
                 "--keep-float", "/transformer/decoder", "--overwrite"]) == 0
    assert load_scales(scales, cfg.weights)["float_nodes"] == ["/transformer/decoder"]
    kept = _quantized_nodes(graph())
    assert kept == {n for n in all_int8 if not n.startswith("/transformer/decoder/")}
    # whole path parts only: '/backbone/_blocks.1' is not '/backbone/_blocks.10'
    assert in_module("/backbone/_blocks.1/Conv", "/backbone/_blocks.1")
    assert not in_module("/backbone/_blocks.10/Conv", "/backbone/_blocks.1")


def test_the_layer_benchmarks_parts_cover_every_quantizable_node_once_and_its_dusk_is_trainings(calibrated,
                                                                                                 tmp_path):
    """bench_int8_layers keeps one part float at a time: together its parts must name every Conv / MatMul /
    Gemm of the graph exactly once, or a part's row would not say what it claims."""
    bench = bench_module("bench_int8_layers")
    # its dusk frames: each value v becomes 255 * (v / 255) ** gamma * gain, cut to whole levels; labels kept
    from panoptic_node.training.data import Sample
    rgb = np.array([[[0, 51, 255], [128, 200, 10]]], np.uint8)
    sample = Sample("f", rgb, np.ones((1, 2), np.uint8), np.zeros((1, 2), np.int32))
    dark = bench.darkened(sample, 2.0, 0.5)
    expected = [[[0, 5, 127], [32, 78, 0]]]  # 255 * 0.2 ** 2 / 2 = 5.1, 255 / 2, 255 * (128 / 255) ** 2 / 2 = 32.1, ...
    assert dark.rgb.tolist() == expected and dark.semantic is sample.semantic and sample.rgb.tolist() == rgb.tolist()
    _, cfg, _ = calibrated
    detect, _ = export_onnx(load_model(cfg, None), cfg.input.canvas, tmp_path / "fp32.onnx")
    model = onnx.load(str(detect))
    quantizable = [n.name for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    backbone_modules = {"/".join(n.split("/")[:3]) for n in quantizable if n.startswith("/backbone/")}
    for runs in (4, len(backbone_modules)):  # the default four runs, and one row per stem / block
        parts = bench.parts_of(model, backbone_runs=runs)
        owners = {n: [name for name, prefixes in parts.items() if any(in_module(n, p) for p in prefixes)]
                  for n in quantizable}
        assert all(len(o) == 1 for o in owners.values()), {n: o for n, o in owners.items() if len(o) != 1}
        assert "transformer/decoder" in parts
        assert len([name for name in parts if name.startswith("backbone ")]) == runs
    assert "backbone _blocks.1" in parts and parts["backbone _blocks.1"] == ["/backbone/_blocks.1"]


def test_the_layer_benchmark_refuses_a_float_prefix_naming_no_module_before_reading_any_frame(calibrated, tmp_path,
                                                                                              monkeypatch, capsys):
    """A mistyped --float prefix is one line at once, not after the frames are read (seconds to minutes)."""
    import panoptic_node.training.data as data
    bench = bench_module("bench_int8_layers")

    class FramesMustNotBeRead:
        def __init__(self, *args, **kwargs):
            pass

        def load_all(self):
            raise AssertionError("frames were read before the --float prefixes were checked")

    monkeypatch.setattr(data, "find_camvid", lambda path=None: tmp_path)
    monkeypatch.setattr(data, "CamVid", FramesMustNotBeRead)
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", str(tmp_path / "cache"))  # main() sets it; restored after
    yaml_path, _, _ = calibrated
    monkeypatch.setattr(sys, "argv", ["bench_int8_layers.py", "--model", str(yaml_path), "--threads", "1",
                                      "--float", "/backbone/_blocks.0,/backbone/_blocks.99"])
    with pytest.raises(SystemExit) as stop:
        bench.main()
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--float /backbone/_blocks.0,/backbone/_blocks.99" in err and "/backbone/_blocks.99" in err.split(":", 2)[-1]
