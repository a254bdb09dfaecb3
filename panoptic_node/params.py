"""Node parameters: defaults and validation from config/panoptic_node.schema.json (ROS-free)."""
import json
from functools import lru_cache
from typing import Any, Dict, List, Tuple

from .json_schema import allowed, non_finite
from .model.config import share_dir


class ParameterError(ValueError):
    """One line: the parameter, its value and what is allowed."""


@lru_cache(maxsize=1)
def schema() -> Dict[str, Any]:
    return json.loads((share_dir("config") / "panoptic_node.schema.json").read_text())


def node_schema() -> Dict[str, Any]:
    return schema()["definitions"]["panoptic_node"]


def node_properties() -> Dict[str, Any]:
    """The node's own parameters (each with a default); the schema also describes ROS 2's qos_overrides,
    which rclpy declares per topic and check_qos_overrides checks."""
    return {k: v for k, v in node_schema()["properties"].items() if "default" in v}


def defaults() -> Dict[str, Any]:
    return {k: v["default"] for k, v in node_properties().items()}


# parameters rclpy / rclcpp declare on every node, and QoS override parameters: not ours to check
ROS_BUILTIN_PARAMETERS = ("use_sim_time", "start_type_description_service")
ROS_BUILTIN_PREFIXES = ("qos_overrides.",)


def user_parameters(declared: Dict[str, Any]) -> Dict[str, Any]:
    """All parameters a node holds -> the ones the user gave for this node (built-ins left out),
    so a misspelt name in a YAML or on the command line is reported instead of silently ignored."""
    return {k: v for k, v in declared.items()
            if k not in ROS_BUILTIN_PARAMETERS and not k.startswith(ROS_BUILTIN_PREFIXES)}


def validate(params: Dict[str, Any]) -> Dict[str, Any]:
    """Complete `params` with defaults and check them; raises ParameterError on the first problem."""
    import jsonschema

    props = node_properties()
    for name in params:
        if name not in props:
            raise ParameterError(f"unknown parameter '{name}'; allowed: {', '.join(sorted(props))}")
    full = {**defaults(), **params}
    nan_at = non_finite(full)  # JSON schema bounds let NaN through (every comparison with it is false)
    if nan_at:
        name = nan_at[0]
        raise ParameterError(f"parameter '{name}' = {full[name]!r} is invalid: allowed a finite "
                             f"{allowed(props.get(name, {}))}")
    validator = jsonschema.Draft7Validator(node_schema())
    for error in sorted(validator.iter_errors(full), key=lambda e: list(e.path)):
        name = str(error.path[0]) if error.path else "?"
        value = full.get(name)
        raise ParameterError(f"parameter '{name}' = {value!r} is invalid: allowed {allowed(props.get(name, {}))}")
    frame_sizes(full["warmup_sizes"])
    return full


def frame_sizes(text: str) -> List[Tuple[int, int]]:
    """warmup_sizes ('1920x1080,640x480', schema-checked) -> [(width, height), ...]; a size beyond what the
    decoders take (MAX_FRAME_PIXELS) is refused, as its black frame alone would take gigabytes."""
    from .messages import MAX_FRAME_PIXELS
    sizes = [tuple(int(v) for v in size.split("x")) for size in text.split(",")] if text else []
    for w, h in sizes:
        if w * h > MAX_FRAME_PIXELS:
            raise ParameterError(f"parameter 'warmup_sizes' holds {w}x{h}: expected frames of at most "
                                 f"{MAX_FRAME_PIXELS // 1_000_000} megapixels, as the node decodes")
    return sizes


# what the node applies while it runs (`ros2 param set`). The others choose the model, the graph, the
# topics or the QoS: they are read once at start-up, and a change to them is refused (a value that reads
# back changed while the node still runs the old one would be worse than a refusal)
LIVE_PARAMETERS = ("threshold", "publish_semantic", "publish_instances", "publish_panoptic", "publish_detections",
                   "publish_overlay", "overlay_labels", "max_age_ms", "max_rate_hz", "batch_cameras",
                   "camera_timeout_s", "track_instances", "track_min_iou", "track_max_lost")


def updated(current: Dict[str, Any], changes: Dict[str, Any]) -> Dict[str, Any]:
    """The node's validated parameters with `changes` asked at run time; ParameterError names the first
    one that cannot be made (unknown, read only at start-up, or invalid) and then nothing is changed."""
    props = node_properties()
    for name, value in changes.items():
        if name not in props:
            raise ParameterError(f"unknown parameter '{name}'; allowed: {', '.join(sorted(props))}")
        if name not in LIVE_PARAMETERS and value != current[name]:
            raise ParameterError(f"parameter '{name}' is read at start-up only; restart the node to change it, or "
                                 f"deactivate and clean it up (`ros2 lifecycle set`), set it, configure and activate "
                                 f"again (changed while it runs: {', '.join(LIVE_PARAMETERS)})")
    return validate({**current, **changes})


def descriptions() -> Dict[str, Dict[str, str]]:
    """Per parameter, what `ros2 param describe` shows: the schema's description, and as constraints what
    it allows and whether it changes while the node runs."""
    out = {}
    for name, prop in node_properties().items():
        when = "changes while the node runs" if name in LIVE_PARAMETERS else "read at start-up only"
        out[name] = {"description": prop.get("description", ""), "constraints": f"{allowed(prop)}; {when}",
                     "type": prop.get("type")}
    return out


QOS_OVERRIDE_VALUES = {"reliability": ("reliable", "best_effort", "system_default", "best_available"),
                       "history": ("keep_last", "keep_all", "system_default")}


def check_qos_overrides(declared: Dict[str, Any], topics: Dict[str, str]) -> None:
    """ROS 2's `qos_overrides.<topic>.<publisher|subscription>.<policy>` parameters, checked before rclpy
    reads them (it would raise four kinds of error, or ignore a topic or policy it does not know).
    `topics`: the node's resolved topic names -> 'publisher' or 'subscription'."""
    prefix = "qos_overrides."
    for name, value in declared.items():
        if not name.startswith(prefix):
            continue
        head, entity, policy = (name[len(prefix):].rsplit(".", 2) + ["", ""])[:3]
        if topics.get(head) != entity:
            raise ParameterError(f"parameter '{name}' overrides no topic of this node; expected "
                                 f"qos_overrides.<topic>.<publisher|subscription>.<policy> with one of "
                                 + ", ".join(f"{t} ({e})" for t, e in sorted(topics.items())))
        if policy == "depth":
            ok, allowed_values = isinstance(value, int) and not isinstance(value, bool) and value >= 1, "an integer >= 1"
        elif policy in QOS_OVERRIDE_VALUES:
            ok, allowed_values = value in QOS_OVERRIDE_VALUES[policy], "one of " + ", ".join(QOS_OVERRIDE_VALUES[policy])
        else:
            raise ParameterError(f"parameter '{name}': this node lets history, depth and reliability be overridden, "
                                 f"not '{policy}'")
        if not ok:
            raise ParameterError(f"parameter '{name}' = {value!r} is invalid: allowed {allowed_values}")


def make_node_pipeline(p: Dict[str, Any], log=None):
    """The pipeline validated node parameters ask for (the node, and bench_node.py's baseline, build it
    here, so the two never differ)."""
    from .inference.backends import check_threads, make_pipeline
    check_threads(p["num_threads"], "parameter 'num_threads' =")  # named as the user wrote it
    return make_pipeline(p["model"], weights=p["weights"] or None, backend=p["backend"], onnx=p["onnx"] or None,
                         precision=p["precision"], device=p["device"],
                         threshold=None if p["threshold"] < 0 else p["threshold"],
                         labels=None if p["label_set"] == "native" else p["label_set"], threads=p["num_threads"],
                         log=log)


def validate_file(data: Dict[str, Any]) -> None:
    """A whole *.param.yaml document (with /** and ros__parameters)."""
    import jsonschema
    try:
        jsonschema.validate(data, schema())
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.path)
        raise ParameterError(f"{where or 'document'}: {e.message}") from None
