"""fold_pads_into_convs: a zero constant Pad before a Conv becomes the Conv's asymmetric pads, with
identical outputs; pads it cannot fold (reflect mode, a non-zero value, amounts from a graph input,
padded channels) are left as they are."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from panoptic_node.onnx_passes import fold_pads_into_convs  # noqa: E402


def pad_conv_model(amounts, mode="constant", value=None, amounts_from_input=False):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = []
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 10])]
    if amounts_from_input:
        inputs.append(helper.make_tensor_value_info("amounts", TensorProto.INT64, [8]))
    else:
        # the exporter's shape: amounts computed by ops from constants, not an initializer
        nodes.append(helper.make_node("Constant", [], ["a32"], value=numpy_helper.from_array(np.array(amounts, np.int32))))
        nodes.append(helper.make_node("Cast", ["a32"], ["amounts"], to=TensorProto.INT64))
    pad_inputs = ["x", "amounts"]
    inits = [w]
    if value is not None:
        inits.append(numpy_helper.from_array(np.array(value, np.float32), "value"))
        pad_inputs.append("value")
    nodes.append(helper.make_node("Pad", pad_inputs, ["xp"], mode=mode))
    nodes.append(helper.make_node("Conv", ["xp", "w"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1]))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    # IR version 8 (the one opset 17 came with), not onnx's newest: ONNX Runtime 1.23, the last for Python
    # 3.10, loads models up to IR 11
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_pad_folds_into_asymmetric_conv_pads_with_identical_output():
    model = pad_conv_model([0, 0, 0, 0, 0, 0, 1, 1])
    x = {"x": np.random.default_rng(1).standard_normal((1, 3, 9, 10)).astype(np.float32)}
    before = run(model, x)
    assert fold_pads_into_convs(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    conv = model.graph.node[0]
    assert list(next(a.ints for a in conv.attribute if a.name == "pads")) == [1, 1, 2, 2]
    np.testing.assert_allclose(run(model, x), before, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs", [
    dict(amounts=[0, 0, 0, 0, 0, 0, 1, 1], mode="reflect"),
    dict(amounts=[0, 0, 0, 0, 0, 0, 1, 1], value=1.0),
    dict(amounts=[0, 1, 0, 0, 0, 0, 1, 1]),
    dict(amounts=None, amounts_from_input=True),
], ids=["reflect", "nonzero-value", "channels", "dynamic"])
def test_pads_that_cannot_fold_are_kept(kwargs):
    model = pad_conv_model(**kwargs)
    assert fold_pads_into_convs(model) == 0
    assert "Pad" in [n.op_type for n in model.graph.node]


def test_exported_street_backbone_has_no_pad(tmp_path):
    import torch
    from panoptic_node.export import export_onnx
    from panoptic_node.model.detr import build_model
    from conftest import compact_config
    torch.manual_seed(0)
    path, _ = export_onnx(build_model(compact_config()).eval(), (64, 96), tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    assert not [n for n in graph.node if n.op_type == "Pad"]
    pads = [list(a.ints) for n in graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "pads"]
    assert any(p[:2] != p[2:] for p in pads)  # the stride-2 SAME convolutions, now asymmetric
