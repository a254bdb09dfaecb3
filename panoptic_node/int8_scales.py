"""INT8 calibration shipped as numbers, not as a graph.

Calibrating needs real frames, and a user's machine has none of ours. What calibration produces is one
scale per quantized activation (symmetric, zero point 0); the weights' scales follow from the weights.
So a model ships `<weights>.int8.json` beside its weights (made by `panoptic-node calibrate`), and the
graph cache makes the int8 graph of any input size from it: the same QDQ graph, bit for bit, as
quantizing with the frames themselves (test_int8_scales.py), with no frame at hand. The file names the
weights it was calibrated for by their sha256: scales of other weights are refused.
"""
import json
from pathlib import Path
from typing import Dict, Optional, Sequence

from .atomic import atomic_path
from .inference.cache_key import file_sha256

FORMAT = 1


def default_scales_path(weights) -> Optional[Path]:
    """The scales beside a weights file (models/street_lite0.pth -> models/street_lite0.int8.json)."""
    return Path(weights).with_suffix(".int8.json") if weights else None


def calibrate_command(weights, overwrite: bool = False) -> str:
    """The whole command that writes the scales beside `weights` (calibrate needs frames, and refuses to
    replace existing scales without --overwrite)."""
    return f"`panoptic-node calibrate --weights {weights} --calib FRAMES{' --overwrite' if overwrite else ''}`"


def recalibrate_command(weights) -> str:
    """The whole command that replaces the scales beside `weights`."""
    return calibrate_command(weights, overwrite=True)


def activation_scales(model) -> Dict[str, float]:
    """{activation tensor: its scale} of a QDQ graph (onnx.ModelProto): every QuantizeLinear whose input
    is not a stored weight."""
    from onnx import numpy_helper

    stored = {i.name: i for i in model.graph.initializer}
    scales = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in stored:
            scale = numpy_helper.to_array(stored[n.input[1]])
            zero = numpy_helper.to_array(stored[n.input[2]]) if len(n.input) > 2 and n.input[2] in stored else 0
            if scale.size != 1 or int(zero) != 0:
                raise ValueError(f"activation '{n.input[0]}' is not quantized per tensor and symmetrically; "
                                 f"expected a graph from panoptic-node's int8 export")
            scales[n.input[0]] = float(scale)
    return scales


def save_scales(path, scales: Dict[str, float], weights, weight_bits: int, calibration: dict,
                float_nodes: Sequence[str] = ()) -> Path:
    """float_nodes: node-name prefixes whose convolutions and matrix products every int8 graph made from
    these scales leaves float (quantize.float_nodes_of); the scales themselves cover every activation."""
    body = {"format": FORMAT, "weights_sha256": file_sha256(weights), "int8_weight_bits": weight_bits,
            "calibration": calibration, "scales": scales}
    if float_nodes:  # only when asked: files without it read as before, and hash to the same graphs
        body["float_nodes"] = list(float_nodes)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    return path


class ScalesForOtherWeights(ValueError):
    """A readable scales file made for other weights: stale rather than damaged, and said so."""


def load_scales(path, weights) -> dict:
    """The scales file's content, checked: our format, positive finite scales, made for `weights`."""
    path = Path(path)
    what = f"int8 scales '{path}'"
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} do not exist; make them with {calibrate_command(weights)}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} are not readable JSON ({e}); recalibrate with "
                         f"{recalibrate_command(weights)}") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT or not isinstance(body.get("scales"), dict):
        raise ValueError(f"{what} are not in format {FORMAT} of `panoptic-node calibrate` (a JSON object with "
                         f"'format' and 'scales'); recalibrate with {recalibrate_command(weights)}")
    bad = [k for k, v in body["scales"].items()
           if not isinstance(v, (int, float)) or isinstance(v, bool) or not (0 < v < float("inf"))]
    if bad or not body["scales"]:
        raise ValueError(f"{what} hold {'no scales' if not bad else f'a scale that is not a positive number ({bad[0]})'}; "
                         f"recalibrate with {recalibrate_command(weights)}")
    if body.get("int8_weight_bits") not in (7, 8):
        raise ValueError(f"{what} give int8_weight_bits {body.get('int8_weight_bits')!r}; expected 7 or 8")
    float_nodes = body.get("float_nodes", [])
    if not isinstance(float_nodes, list) or not all(isinstance(p, str) and p.startswith("/") for p in float_nodes):
        raise ValueError(f"{what} give float_nodes {float_nodes!r}; expected a list of node-name prefixes such as "
                         f"'/transformer/decoder'")
    if body.get("weights_sha256") != file_sha256(weights):
        raise ScalesForOtherWeights(f"{what} were calibrated for other weights than '{weights}'; recalibrate "
                                    f"with {recalibrate_command(weights)}")
    return body
