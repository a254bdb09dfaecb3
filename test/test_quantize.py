"""INT8 QDQ export: symmetric (every zero point 0), LayerNorm / Softmax / the head's last
projections really float, calibration from both bag storages and image folders, clear errors."""
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import numpy_helper  # noqa: E402

from panoptic_node.bag.writer import BagWriter, header, image_msg  # noqa: E402
from panoptic_node.export import export_onnx, read_metadata  # noqa: E402
from panoptic_node.inference.cpu_features import int8_saturation_warning  # noqa: E402
from panoptic_node.inference.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from panoptic_node.inference.pipeline import Pipeline  # noqa: E402
from panoptic_node.messages import image_fields  # noqa: E402
from panoptic_node.model.detr import build_model  # noqa: E402
from panoptic_node.quantize import calibration_frames, quantize_int8  # noqa: E402

from conftest import compact_config, write_frames  # noqa: E402


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    cfg = compact_config()
    torch.manual_seed(0)
    model = build_model(cfg, pretrained_backbone=True).eval()
    d = tmp_path_factory.mktemp("q")
    export_onnx(model, (64, 96), d / "m.onnx")
    return cfg, d


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    d = write_frames(tmp_path_factory.mktemp("frames"), 6, (48, 80))
    (d / "notes.txt").write_text("not a frame")
    return d


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_calibration_frames_from_bags(tmp_path, storage):
    with BagWriter(tmp_path / "bag", storage) as w:
        for i in range(5):
            w.write("/cam/image_raw", image_msg(header(i + 1, "c"), image_fields(np.full((8, 8, 3), i, np.uint8), "rgb8")),
                    i + 1)
    frames = list(calibration_frames(tmp_path / "bag", 3))
    assert len(frames) == 3 and frames[2][0, 0, 0] == 2


def test_calibration_frames_from_folder(image_dir):
    assert len(list(calibration_frames(image_dir, 100))) == 6


def test_no_frames_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no frames"):
        list(calibration_frames(tmp_path / "empty", 4))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(calibration_frames(tmp_path / "nowhere", 4))
    (tmp_path / "frame.png").write_bytes(b"one file, not a folder of them")
    with pytest.raises(NotADirectoryError, match="^calibration source '.*frame.png' is a file; expected a bag folder"):
        list(calibration_frames(tmp_path / "frame.png", 4))


def test_int8_qdq_graph(fp32, image_dir, rng, capsys):
    cfg, d = fp32
    out = quantize_int8(d / "m.onnx", d / "m_int8.onnx", cfg, (64, 96), image_dir, frames=4)
    progress = capsys.readouterr().err  # a minute or more on a real model: the calibrator's frames counted
    assert "calibrate: 100%" in progress and "4/4 [" in progress
    model = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    q_nodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(q_nodes) > 50
    for n in q_nodes:
        if len(n.input) > 2 and n.input[2] in inits:
            assert not inits[n.input[2]].any(), f"non-zero zero point in {n.name}"
    # LayerNorm stays one float op (opset 17); the attention scores reach Softmax unquantized
    producers = {o: n for n in model.graph.node for o in n.output}
    fp32_ops = [n.op_type for n in onnx.load(str(d / "m.onnx")).graph.node]
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("LayerNormalization") == fp32_ops.count("LayerNormalization") > 0
    assert ops.count("Softmax") == fp32_ops.count("Softmax") > 0
    for n in model.graph.node:
        if n.op_type == "Softmax":
            src = producers.get(n.input[0])
            assert src is None or src.op_type != "DequantizeLinear", n.name
    # the class head's projection is float: its weight is a plain float initializer
    class_w = [n for n in model.graph.node if "class_embed" in n.name and n.op_type in ("MatMul", "Gemm")]
    assert class_w
    for n in class_w:
        assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in n.input[1:])
    # a convolution feeding ReLU6 is quantized over [-6, 6], not its wider pre-activation range
    into_clip = {producers[n.input[0]].input[0] for n in model.graph.node
                 if n.op_type == "Clip" and producers[n.input[0]].op_type == "DequantizeLinear"}
    conv_q = [n for n in q_nodes if n.op_type == "QuantizeLinear" and n.output[0] in into_clip
              and producers[n.input[0]].op_type == "Conv"]
    assert conv_q
    assert all(float(inits[n.input[1]]) == pytest.approx(6 / 127, rel=1e-6) for n in conv_q)
    # full 8-bit weights by default, and the graph says so
    weights_q = [inits[n.input[0]] for n in q_nodes if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and inits[n.input[0]].dtype == np.int8]
    assert weights_q and max(int(np.abs(w).max()) for w in weights_q) == 127
    meta = read_metadata(out)
    assert meta["precision"] == "int8" and meta["int8_weight_bits"] == 8 and meta["int8_matmuls"] is True
    # the transformer's projections (MatMul by a stored weight) are int8 too by default
    assert any(producers.get(n.input[1]) is not None and producers[n.input[1]].op_type == "DequantizeLinear"
               for n in model.graph.node if n.op_type == "MatMul" and "/transformer/" in n.name)
    # the first decoder layer's self-attention is a constant (its target is zero): no Q/DQ there
    for n in model.graph.node:
        if n.name.startswith("/transformer/decoder/layers.0/self_attn/") and n.op_type in ("MatMul", "Gemm"):
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in n.input), n.name
    # and it still runs, giving maps of the right size
    (d / "m_int8.masks.onnx").write_bytes((d / "m.masks.onnx").read_bytes())
    result = Pipeline(cfg, OnnxRuntimeBackend(out, cfg))(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))
    assert result.shape == (48, 80)


def test_openvino_runs_the_int8_graph_like_onnxruntime(fp32, image_dir, rng, monkeypatch):
    """OpenVINO compiles our QDQ graph and its int8 logits agree with ONNX Runtime's on the same graph
    (the street model's graph failed to compile while the constant first self-attention had Q/DQ pairs)."""
    pytest.importorskip("openvino")
    from panoptic_node.inference.openvino_backend import OpenVinoBackend
    cfg, d = fp32
    out = quantize_int8(d / "m.onnx", d / "m_ov_int8.onnx", cfg, (64, 96), image_dir, frames=4)
    (d / "m_ov_int8.masks.onnx").write_bytes((d / "m.masks.onnx").read_bytes())
    ov, ort = OpenVinoBackend(out, cfg), OnnxRuntimeBackend(out, cfg)
    assert ov.precision == "int8"
    # an 8-bit graph given to OpenVINO where its int8 kernels saturate is said, as ONNX Runtime's is
    from panoptic_node.inference import cpu_features
    for flags, warned in (({"avx2"}, True), ({"avx2", "avx512_vnni"}, False)):
        lines = []
        monkeypatch.setattr(cpu_features, "cpu_flags", lambda: flags)
        monkeypatch.setattr("platform.machine", lambda: "x86_64")
        OpenVinoBackend(out, cfg, log=lines.append)
        assert bool(lines) == warned and all("OpenVINO's int8 kernels saturate" in line for line in lines)
    x = torch.from_numpy(rng.normal(0, 1, (1, 3, 64, 96)).astype(np.float32))
    pad = torch.zeros(1, 64, 96, dtype=torch.bool)
    (a, _, _, _), (b, _, _, _) = ov.detect(x, pad), ort.detect(x, pad)
    # the runtimes round int8 sums differently; the class probabilities stay close
    assert (a.softmax(-1) - b.softmax(-1)).abs().max() < 0.05


def test_the_graph_for_cpus_without_vnni_has_7_bit_weights_and_float_matrix_products(fp32, image_dir, rng):
    """For OpenVINO and ONNX Runtime on x86 CPUs without VNNI: their int8 kernels saturate on 8-bit weights,
    and their int8 matrix products are slower than float ones there. Convolutions stay int8."""
    cfg, d = fp32
    out = quantize_int8(d / "m.onnx", d / "m_int8_7bit.onnx", cfg, (64, 96), image_dir, frames=4, reduce_range=True,
                        float_matmuls=True)
    model = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weights_q = [inits[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear"
                 and n.input[0] in inits and inits[n.input[0]].dtype == np.int8]
    assert weights_q and max(int(np.abs(w).max()) for w in weights_q) <= 64
    producers = {o: n for n in model.graph.node for o in n.output}
    dequantized = [[producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input]
                   for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert dequantized and not any(any(d) for d in dequantized)  # no matrix product reads int8
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(producers[n.input[1]].op_type == "DequantizeLinear" for n in convs)
    meta = read_metadata(out)
    assert meta["int8_weight_bits"] == 7 and meta["int8_matmuls"] is False
    (d / "m_int8_7bit.masks.onnx").write_bytes((d / "m.masks.onnx").read_bytes())
    result = Pipeline(cfg, OnnxRuntimeBackend(out, cfg))(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))
    assert result.shape == (48, 80)


def test_export_reduce_range_makes_the_graph_the_cache_makes_without_vnni(tmp_path, image_dir, monkeypatch, capsys):
    """`export --precision int8 --reduce-range` (a graph for x86 without VNNI) leaves the matrix products in
    float as the graph cache does there; `calibrate` keeps them quantized whatever the width, so its scales
    cover every activation any CPU's graph needs. Checked on the arguments the quantizer gets."""
    from launch_helpers import tiny_model_yaml
    from panoptic_node import quantize
    from panoptic_node.cli import main
    asked = []

    def record(*args, **kwargs):
        asked.append((args[7] if len(args) > 7 else kwargs.get("reduce_range"), kwargs.get("float_matmuls", False)))
        raise RuntimeError("stop here")

    monkeypatch.setattr(quantize, "quantize_int8", record)
    model = tiny_model_yaml()
    for command in (["export", "--out", str(tmp_path / "x.onnx"), "--size", "96x64", "--precision", "int8"],
                    ["calibrate", "--out", str(tmp_path / "x.int8.json")]):
        for width in ("--reduce-range", "--no-reduce-range"):
            assert main(command + ["--model", model, "--calib", str(image_dir), width]) != 0
    assert asked == [(True, True), (False, False), (True, False), (False, False)]
    assert capsys.readouterr().err.count("stop here") == 4 and not list(tmp_path.iterdir())


def test_int8_saturation_warning_only_where_it_applies():
    int8 = {"precision": "int8", "int8_weight_bits": 8}
    for runtime in ("ONNX Runtime", "OpenVINO"):
        warning = int8_saturation_warning(int8, runtime, "x86_64", {"avx2", "fma"})
        assert warning and "--reduce-range" in warning and "VNNI" in warning and f"{runtime}'s" in warning
    assert int8_saturation_warning(int8, "OpenVINO", "x86_64", {"avx2", "avx512_vnni"}) is None
    assert int8_saturation_warning(int8, "OpenVINO", "x86_64", {"avx2", "avx_vnni"}) is None
    assert int8_saturation_warning(int8, "OpenVINO", "aarch64", set()) is None
    assert int8_saturation_warning({"precision": "int8", "int8_weight_bits": 7}, "OpenVINO", "x86_64", {"avx2"}) is None
    assert int8_saturation_warning({"precision": "fp32"}, "OpenVINO", "x86_64", {"avx2"}) is None


def test_export_command_writes_exactly_the_two_int8_graphs(tmp_path, image_dir, rng):
    from launch_helpers import tiny_model_yaml
    from panoptic_node.cli import main
    model = tiny_model_yaml()
    out = tmp_path / "deploy" / "tiny.onnx"
    assert main(["export", "--model", model, "--out", str(out), "--size", "96x64", "--precision", "int8",
                 "--calib", str(image_dir), "--calib-frames", "4"]) == 0
    # the fp32 intermediate is not left beside them looking like a third, usable graph
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.masks.onnx", "tiny.onnx"]
    assert read_metadata(out)["precision"] == "int8" and read_metadata(out.with_name("tiny.masks.onnx"))["precision"] == "fp32"
    # --size is width x height, as --crop and camera modes: 96x64 is a landscape canvas, 64 rows of 96
    import onnx
    dims = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims[-2:] == [64, 96], dims
    from panoptic_node.model.config import load_config
    cfg = load_config(model)
    frame = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)
    result = Pipeline(cfg, OnnxRuntimeBackend(out, cfg))(frame)
    assert result.shape == (48, 80)
    # the infer command runs the pair on OpenVINO too, when asked for by name
    if importlib.util.find_spec("openvino"):
        from panoptic_node.inference.backends import make_pipeline
        ov = make_pipeline(model, backend="openvino", onnx=str(out))
        assert ov.backend.name == "openvino" and ov.backend.precision == "int8"
        with pytest.raises(ValueError, match="runs on the CPU"):
            make_pipeline(model, backend="openvino", onnx=str(out), device="cuda")
        Image.fromarray(frame).save(tmp_path / "frame.png")
        assert main(["infer", "--model", model, "--backend", "openvino", "--onnx", str(out),
                     str(tmp_path / "frame.png"), "--out", str(tmp_path / "maps")]) == 0
        assert any((tmp_path / "maps").iterdir())
    # without calibration frames: one line, exit code 2, nothing written
    assert main(["export", "--model", model, "--out", str(tmp_path / "x.onnx"), "--precision", "int8"]) == 2
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("bad, says", [
    (["--precision", "int8", "--calib", "EMPTY"], "holds no frames"),
    (["--precision", "int8", "--calib", "A_FILE"], "is a file; expected a bag folder or a folder of .png / .jpg"),
    (["--precision", "int8", "--calib", "FRAMES", "--calib-frames", "0"], "--calib-frames 0: expected >= 1"),
    (["--size", "abc"], "--size 'abc': expected WxH"),
    (["--size", "60x90"], "--size 60x90: expected WxH with sides that are positive multiples of 32"),
    (["--size", "0x96"], "--size 0x96: expected WxH with sides that are positive multiples of 32"),
    # torch ended this in its allocator's error; no frame reaches the network larger than max_size a side
    (["--size", "100000x100000"], "--size 100000x100000: expected sides of at most 128 (model tiny_lite0 resizes"),
    (["--size", "96x160"], "--size 96x160: expected sides of at most 128")])
def test_export_refusals_are_one_line_and_leave_no_graph(tmp_path, image_dir, capsys, bad, says):
    """Calibration that fails used to leave the int8 graph's mask graph behind, looking half usable."""
    from launch_helpers import tiny_model_yaml
    from panoptic_node.cli import main
    (tmp_path / "empty").mkdir()
    out = tmp_path / "deploy"
    out.mkdir()
    (out / "mine.txt").write_text("the user's")
    (tmp_path / "frame.png").write_bytes(b"not a folder")
    args = [{"EMPTY": str(tmp_path / "empty"), "FRAMES": str(image_dir), "A_FILE": str(tmp_path / "frame.png")}.get(a, a)
            for a in bad]
    assert main(["export", "--model", tiny_model_yaml(), "--out", str(out / "tiny.onnx"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "the user's"


def test_calibrate_refuses_zero_frames_before_it_exports(tmp_path, image_dir, capsys, monkeypatch):
    from launch_helpers import tiny_model_yaml
    from panoptic_node import export
    from panoptic_node.cli import main
    monkeypatch.setattr(export, "export_onnx", lambda *a, **k: pytest.fail("exported"))
    out = tmp_path / "scales.json"
    assert main(["calibrate", "--model", tiny_model_yaml(), "--calib", str(image_dir), "--calib-frames", "0",
                 "--out", str(out)]) == 2
    assert "--calib-frames 0: expected >= 1" in capsys.readouterr().err and not out.exists()
