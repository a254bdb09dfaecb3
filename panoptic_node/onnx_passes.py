"""Clean-ups of an exported ONNX graph that ONNX Runtime's own optimiser does not do.

TF-style SAME padding of a stride-2 convolution pads one extra row / column on the bottom / right.
PyTorch convolutions only pad symmetrically, so the model runs an explicit F.pad first, and the
exporter writes it as a Pad whose amounts come out of a chain of ~40 small shape ops. ONNX Runtime
does not fold that chain into the Conv, so the Pad copies the whole tensor at run time (~7% of the
street model's network time). ONNX Conv takes asymmetric `pads`: fold it there.
"""
from typing import Dict, List, Optional

import numpy as np


def _producers(model) -> Dict[str, object]:
    return {out: n for n in model.graph.node for out in n.output}


def _constant_value(model, name: str, producers) -> Optional[np.ndarray]:
    """Evaluate `name` when it depends on constants only (None when it needs a graph input)."""
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    inits = {i.name: i for i in model.graph.initializer}
    if name in inits:
        from onnx import numpy_helper
        return numpy_helper.to_array(inits[name])
    graph_inputs = {i.name for i in model.graph.input}
    order, seen = [], set()

    def visit(tensor) -> bool:
        if tensor in inits or not tensor:
            return True
        if tensor in graph_inputs or tensor not in producers:
            return False
        node = producers[tensor]
        if id(node) not in seen:
            seen.add(id(node))
            if not all(visit(i) for i in node.input):
                return False
            order.append(node)
        return True

    if not visit(name):
        return None
    needed = {i for n in order for i in n.input}
    graph = helper.make_graph(order, "constant", [], [helper.make_tensor_value_info(name, TensorProto.INT64, None)],
                              [inits[i] for i in needed if i in inits])
    sub = helper.make_model(graph, opset_imports=model.opset_import)
    return np.asarray(ReferenceEvaluator(sub).run(None, {})[0])


def _prune(model) -> None:
    """Drop nodes whose outputs reach no graph output (the dead pad-amount chains)."""
    live = {o.name for o in model.graph.output}
    keep: List[object] = []
    for node in reversed(list(model.graph.node)):
        if any(o in live for o in node.output):
            keep.append(node)
            live.update(i for i in node.input if i)
    keep.reverse()
    del model.graph.node[:]
    model.graph.node.extend(keep)
    used = {i for n in model.graph.node for i in n.input}
    kept_inits = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept_inits)


def fold_pads_into_convs(model) -> int:
    """Zero constant Pads on H / W that feed only a Conv become that Conv's `pads`. Returns how many."""
    from onnx import helper

    producers = _producers(model)
    consumers: Dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    folded = 0
    for pad in [n for n in model.graph.node if n.op_type == "Pad"]:
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        users = consumers.get(pad.output[0], [])
        if mode != b"constant" or len(users) != 1 or users[0].op_type != "Conv" or len(pad.input) < 2:
            continue
        if len(pad.input) > 2 and pad.input[2]:
            value = _constant_value(model, pad.input[2], producers)
            if value is None or np.any(value != 0):
                continue
        amounts = _constant_value(model, pad.input[1], producers)
        if amounts is None or amounts.size != 8 or np.any(amounts[[0, 1, 4, 5]] != 0) or np.any(amounts < 0):
            continue
        conv = users[0]
        if any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for a in conv.attribute):
            continue
        old = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
        new = [old[0] + int(amounts[2]), old[1] + int(amounts[3]), old[2] + int(amounts[6]), old[3] + int(amounts[7])]
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend(kept + [helper.make_attribute("pads", new)])
        conv.input[0] = pad.input[0]
        folded += 1
    if folded:
        _prune(model)
    return folded
