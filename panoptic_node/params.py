"""Node parameters: defaults and validation from config/panoptic_node.schema.json (ROS-free)."""
import difflib
import json
import os
import re
from functools import lru_cache
from typing import Any, Dict, List, Optional, Tuple

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


def unknown_parameter(name: str, known) -> str:
    """The line for a name the node does not have: the nearest known one first (a typo is the usual cause),
    then every name it has."""
    near = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    return f"unknown parameter '{name}'{hint}; allowed: {', '.join(sorted(known))}"


def validate(params: Dict[str, Any]) -> Dict[str, Any]:
    """Complete `params` with defaults and check them; raises ParameterError on the first problem."""
    import jsonschema

    props = node_properties()
    for name in params:
        if name not in props:
            raise ParameterError(unknown_parameter(name, props))
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
    return {name: as_read(name, value) for name, value in full.items()}


PATH_PARAMETERS = ("model", "weights", "onnx", "ego_mask_dir")


def as_read(name: str, value: Any) -> Any:
    """A parameter's value as the node uses it: a path's leading `~` expanded (a YAML value is no shell word,
    so onnx: ~/graphs/x.onnx arrives as written)."""
    return os.path.expanduser(value) if name in PATH_PARAMETERS and isinstance(value, str) else value


# the node's publish_* parameters, each named after the output it switches (publish_overlay also its JPEG twin)
PUBLISH_SWITCHES = ("semantic", "instances", "panoptic", "detections", "overlay")


def absolute_namespace(camera: str, node_namespace: str = "/") -> str:
    """A camera namespace as ROS resolves it for a node in `node_namespace`: an absolute one ('/camera/front')
    stays where it is; a relative one ('camera/front', the shipped default) goes under the node's namespace
    ('/car1' -> '/car1/camera/front'; '/' -> '/camera/front'), so one launch per car moves every topic."""
    if camera.startswith("/"):
        return camera.rstrip("/") or "/"
    return f"{node_namespace.rstrip('/')}/{camera.rstrip('/')}"


def node_namespace(text: str) -> str:
    """A launch file's namespace argument, checked and tidied: 'car1' (relative: under any namespace a launch
    file around it pushed), '/car1' (absolute), '' for none; anything that is not a ROS namespace is refused in
    one line naming what is expected."""
    pattern = node_schema()["properties"]["cameras"]["items"]["pattern"]  # the rule camera names follow too
    name = text.strip()
    if name in ("", "/"):
        return name
    if not re.match(pattern, name.rstrip("/")):
        raise ParameterError(f"launch argument namespace {text!r} is not a ROS namespace: expected names of "
                             f"letters, digits and underscores, not starting with a digit, joined by '/' "
                             f"(e.g. car1 or fleet/car1)")
    return name.rstrip("/")


def input_topic(camera: str, transport: str) -> str:
    """The topic a camera namespace's frames come in on (the node subscribes to it, replay --params reads it)."""
    ns = camera.rstrip("/")
    return f"{ns}/image/compressed" if transport == "compressed" else f"{ns}/image"


def camera_namespace(image_topic: str) -> str:
    """The namespace the node would publish a camera's outputs under: '/camera/image_raw' -> '/camera',
    and its image_transport twin '/camera/image_raw/compressed' -> '/camera' too (the node reads
    `<ns>/image` or `<ns>/image/compressed`); 'image' -> ''."""
    if image_topic.endswith("/compressed"):
        image_topic = image_topic[:-len("/compressed")]
    ns = image_topic.rsplit("/", 1)[0] if "/" in image_topic else ""
    return ns.rstrip("/")


def image_remaps(cameras: List[str], topics: List[str], node_namespace: str, transport: str) -> List[Tuple[str, str]]:
    """A launch file's image_topics argument: each camera's input topic remapped onto the topic its driver
    publishes (one per camera, in the cameras' order), and its camera_info onto the driver's beside that
    topic (/usb_cam/image_raw -> /usb_cam/camera_info), all as the node in `node_namespace` resolves them
    (a relative driver topic goes under the node's namespace, as ROS resolves a remapping's target). The
    count and every name are checked and refused in one line naming what is expected."""
    if len(topics) != len(cameras):
        raise ParameterError(f"launch argument image_topics names {len(topics)} topic(s) for {len(cameras)} "
                             f"camera(s) ({', '.join(cameras)}); expected one topic per camera, in the cameras' "
                             f"order")
    pattern = node_schema()["properties"]["cameras"]["items"]["pattern"]  # a topic name follows the same rule
    for topic in topics:
        if not re.match(pattern, topic):
            raise ParameterError(f"launch argument image_topics: {topic!r} is not a ROS topic name: expected names "
                                 f"of letters, digits and underscores, not starting with a digit, joined by '/' "
                                 f"(e.g. /usb_cam/image_raw)")
    rules = []
    for cam, topic in zip(cameras, topics):
        driver = absolute_namespace(topic, node_namespace)
        rules.append((absolute_namespace(input_topic(cam, transport), node_namespace), driver))
        # and the camera's calibration from beside the driver's image, as image_transport pairs them
        rules.append((absolute_namespace(f"{cam}/camera_info", node_namespace),
                      f"{camera_namespace(driver)}/camera_info"))
    return rules


# what a car records of each camera so that a drive can be replayed and scored later: the frames and the
# calibration the node read, and what it said of them (the maps as their lossless PNG twins, 35-113x smaller
# than the raw maps and exactly the same labels and ids; the detections; the label set)
RECORDED_OUTPUTS = ("semantic/compressed", "instances/compressed", "detections", "label_info")


# car.launch.py record_frames:=, which frames a recording keeps: those the node reads (raw 1280x720 at 30 Hz is
# about 83 MB/s), the camera driver's image_transport JPEG twin of them (7-14x smaller at its quality 95; a
# replay then runs on JPEG frames, not on the ones the node saw), or none (what the node said only: a log)
RECORD_FRAMES = ("input", "compressed", "none")


def record_topics(cameras: List[str], transport: str, remaps: List[Tuple[str, str]] = (),
                  frames: str = "input") -> List[str]:
    """car.launch.py record:=PATH: the topics `ros2 bag record` takes for the node's cameras (resolved
    namespaces), each camera's frames (`frames`, one of RECORD_FRAMES) and camera_info where `remaps`
    (image_remaps) point them, then /diagnostics and the car's transforms (/tf, /tf_static: RViz places a
    camera's frames by them, so a recording without them shows no Camera display on replay). Such a recording
    replays with `replay` and is scored against with `replay --gt-topic <camera>/panoptic/semantic/compressed`
    (another model on the car's own frames)."""
    if frames not in RECORD_FRAMES:
        raise ParameterError(f"launch argument record_frames: '{frames}' is not one of {', '.join(RECORD_FRAMES)} "
                             f"(the frames the node reads, their image_transport JPEG twin, or none)")
    remap = dict(remaps)
    topics = []
    for cam in cameras:
        read, info = input_topic(cam, transport), f"{cam}/camera_info"
        read = remap.get(read, read)
        if frames == "compressed" and transport != "compressed":
            topics.append(f"{read}/compressed")  # image_transport's name for a raw topic's JPEG twin
        elif frames != "none":
            topics.append(read)
        topics += [remap.get(info, info)] + [f"{cam}/panoptic/{name}" for name in RECORDED_OUTPUTS]
    return list(dict.fromkeys(topics + ["/diagnostics", "/tf", "/tf_static"]))


def launch_path(argument: str, path: str, expected: str) -> str:
    """A path a launch argument names (bag:=, config:=, onnx:=), as the processes it starts need it: `~`
    expanded (a launch argument is no shell word, so bag:=~/bags/x arrives as typed) and a path that
    exists, else one line at launch (ros2 bag play, say, would fail in its own process, leaving the node
    up with no frames)."""
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise ParameterError(f"launch argument {argument}: '{path}' does not exist; expected {expected}")
    return path


BAG_TO_PLAY = "a rosbag2 folder (or its .mcap / .db3 file) for ros2 bag play"


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


# diagnostic_updater's own parameter; not given, the node takes it true in a namespace (node.py), so it is
# the one parameter car.param.yaml leaves out
DIAGNOSTIC_FQN = "diagnostic_updater.use_fqn"

# what the node applies while it runs (`ros2 param set`). The others choose the model, the graph, the
# topics or the QoS: they are read once at start-up, and a change to them is refused (a value that reads
# back changed while the node still runs the old one would be worse than a refusal)
LIVE_PARAMETERS = ("threshold", "publish_semantic", "publish_instances", "publish_panoptic", "publish_detections",
                   "publish_overlay", "overlay_labels", "overlay_max_rate_hz", "max_age_ms", "max_rate_hz",
                   "batch_cameras", "camera_timeout_s", "track_instances", "track_min_iou", "track_max_lost")


def updated(current: Dict[str, Any], changes: Dict[str, Any]) -> Dict[str, Any]:
    """The node's validated parameters with `changes` asked at run time; ParameterError names the first
    one that cannot be made (unknown, read only at start-up, or invalid) and then nothing is changed."""
    props = node_properties()
    for name, value in changes.items():
        if name not in props:
            raise ParameterError(unknown_parameter(name, props))
        if name not in LIVE_PARAMETERS and as_read(name, value) != current[name]:  # current: validate()'s
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


def worker_threads(p: Dict[str, Any], workers_name: str = "parameter 'inference_workers' =",
                   threads_name: str = "num_threads") -> int:
    """Each inference worker's CPU threads: its equal share of num_threads (every core when 0); 0 (the
    runtimes' own choice) for a single worker on every core. More workers than threads are refused, named as
    the user gave them (the node's parameters, or replay's --inference-workers / --threads)."""
    from .inference.backends import check_threads
    check_threads(p["num_threads"], "parameter 'num_threads' =" if threads_name == "num_threads" else threads_name)
    workers = p["inference_workers"]
    if workers == 1:
        return p["num_threads"]
    threads = p["num_threads"] or os.cpu_count() or 1
    if workers > threads:
        shared = p["num_threads"] or "every core"
        raise ParameterError(f"{workers_name} {workers} is more than the {threads} thread(s) the workers would share "
                             f"({threads_name} {shared}): expected at most {threads}, each worker runs on a "
                             f"thread of its own")
    return threads // workers


def overlaps_postprocessing(p: Dict[str, Any], backend: str) -> bool:
    """Whether each frame is post-processed beside the network's next call (overlap_postprocessing). auto: where
    the network runs on a GPU, whose time the CPU would spend waiting; not on a CPU, where the post-processing's
    thread takes time from the network's (2-core Zen 2, bench_node.py: 18.1-20.1 frames a second out against
    18.2-18.5, each 12-16 ms older) and cores from what num_threads left to the rest of the driving stack."""
    if p["overlap_postprocessing"] != "auto":
        return p["overlap_postprocessing"] == "always"
    return backend == "tensorrt" or p["device"] == "cuda"


def make_node_pipeline(p: Dict[str, Any], log=None, warn=None, threads: Optional[int] = None):
    """The pipeline validated node parameters ask for (the node, and bench_node.py's baseline, build it
    here, so the two never differ); `threads`: one worker's share (worker_threads), else num_threads."""
    from .inference.backends import check_threads, make_pipeline
    check_threads(p["num_threads"], "parameter 'num_threads' =")
    return make_pipeline(p["model"], weights=p["weights"] or None, backend=p["backend"], onnx=p["onnx"] or None,
                         precision=p["precision"], device=p["device"],
                         threshold=None if p["threshold"] < 0 else p["threshold"],
                         labels=None if p["label_set"] == "native" else p["label_set"],
                         threads=p["num_threads"] if threads is None else threads, log=log, warn=warn)


def make_node_pipelines(p: Dict[str, Any], log=None, warn=None) -> list:
    """One pipeline per inference worker, each on its share of the threads (the first says what it loads;
    the others load the same weights and graphs, made by then)."""
    threads = worker_threads(p)
    first = make_node_pipeline(p, log=log, warn=warn, threads=threads)
    quiet = lambda message: None  # noqa: E731
    return [first] + [make_node_pipeline(p, log=quiet, warn=quiet, threads=threads)
                      for _ in range(p["inference_workers"] - 1)]


def validate_file(data: Dict[str, Any]) -> None:
    """A whole *.param.yaml document (with /** and ros__parameters)."""
    import jsonschema
    try:
        jsonschema.validate(data, schema())
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.path)
        raise ParameterError(f"{where or 'document'}: {e.message}") from None


NODE_NAME = "/panoptic_node"  # the node's fully qualified name as car.launch.py starts it


def _yaml_loader():
    """PyYAML's safe loader, except that a key written twice in one mapping (a node's entry, or a namespace)
    is merged into its first place, later values winning, as rcl's parser merges it; PyYAML alone would
    keep only the last of the two."""
    import yaml

    def merged(old, new):
        if isinstance(old, dict) and isinstance(new, dict):
            return {**old, **{k: merged(old.get(k), v) for k, v in new.items()}}
        return new

    def mapping(loader, node):
        loader.flatten_mapping(node)
        out: Dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict)):  # no ROS 2 name; PyYAML would fail with a TypeError
                raise yaml.constructor.ConstructorError(None, None, f"a key that is a {type(key).__name__}, where "
                                                        f"names are expected", key_node.start_mark)
            out[key] = merged(out.get(key), loader.construct_object(value_node, deep=True))
        return out

    class Loader(yaml.SafeLoader):
        pass
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def _entries(tree: Any, prefix: str, out: List[Tuple[str, Dict[str, Any]]], where: str) -> None:
    """Walk a parameters document as rcl's parser does: a key holding `ros__parameters` is a node, a key
    holding other keys a namespace; node and namespace names are joined with '/', in the file's order."""
    if not isinstance(tree, dict):
        raise ParameterError(f"{where}: {prefix or 'the document'} holds {type(tree).__name__}; expected node "
                             f"names with ros__parameters under them (e.g. /**: {{ros__parameters: {{...}}}})")
    for key, value in tree.items():
        name = f"{prefix}/{str(key).strip('/')}" if prefix else "/" + str(key).lstrip("/")
        if isinstance(value, dict) and "ros__parameters" in value:
            params = value["ros__parameters"]
            if not isinstance(params, dict):
                raise ParameterError(f"{where}: {name}'s ros__parameters holds {type(params).__name__}; expected "
                                     f"parameter names and values")
            out.append((name, _flat(params)))
        else:
            _entries(value, name, out, where)


def _flat(params: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested parameter names joined with '.', as ROS 2 names them (qos_overrides./camera/front/...)."""
    out = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def applies_to(entry: str, node: str) -> bool:
    """Whether a file's entry applies to the node of fully qualified name `node`, by rclpy's rule (Jazzy):
    '/*' stands for one name ('/car/*'), '/**' for any number ('/**', '/**/panoptic_node')."""
    return re.fullmatch(entry.replace("/*", r"(/\w+)"), node) is not None


def parameters_files(paths) -> List[str]:
    """One parameters file or several (in the order given, as launch's parameters=[a, b])."""
    return [str(paths)] if isinstance(paths, (str, os.PathLike)) else [str(p) for p in paths]


def files_phrase(paths) -> str:
    """How messages name them: parameters file 'a', or parameters files 'a', 'b'."""
    files = parameters_files(paths)
    return f"parameters file{'s' if len(files) > 1 else ''} " + ", ".join(f"'{f}'" for f in files)


def _file_entries(path: str) -> List[Tuple[str, Dict[str, Any]]]:
    """A parameters file's entries (node name pattern, its parameters), in the file's order; one line naming
    the file when it cannot be read."""
    import yaml
    where = f"parameters file '{path}'"
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.load(f, Loader=_yaml_loader())
    except FileNotFoundError:
        raise ParameterError(f"{where} does not exist; expected a ROS 2 parameters YAML such as "
                             f"config/car.param.yaml") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ParameterError(f"{where} cannot be read ({e}); expected a ROS 2 parameters YAML") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ParameterError(f"{where} is not valid YAML{at} ({getattr(e, 'problem', None) or e}); expected a "
                             f"ROS 2 parameters YAML") from None
    entries: List[Tuple[str, Dict[str, Any]]] = []
    _entries(doc if doc is not None else {}, "", entries, where)
    return entries


def file_parameters(paths, node: str = NODE_NAME) -> Dict[str, Any]:
    """What ROS 2 parameters files give the node `node`, as rclpy gives them: every entry that applies to the
    node (applies_to), in each file's order, a later one's values over an earlier one's, and a later file's
    over an earlier file's (a car's own file after the fleet's shared one); not yet validated. ParameterError
    in one line naming the file."""
    node = "/" + node.strip("/")
    given: Dict[str, Any] = {}
    found, applied, files = [], False, parameters_files(paths)
    for path in files:
        for name, params in _file_entries(path):
            found.append(name)
            if applies_to(name, node):
                given.update(params)
                applied = True
    if not applied:
        several = len(files) > 1
        raise ParameterError(f"{files_phrase(paths)} hold{'' if several else 's'} no parameters for {node} "
                             f"(entries in {'them' if several else 'it'}: {', '.join(found) or 'none'}); expected "
                             f"/** or {node} with ros__parameters under it")
    return given


def from_file(paths, node: str = NODE_NAME) -> Dict[str, Any]:
    """file_parameters, checked and completed with defaults as the node checks its own (built-ins and QoS
    overrides left out)."""
    given = file_parameters(paths, node)  # its own errors name the file already
    try:
        return validate(user_parameters(given))
    except ParameterError as e:
        raise ParameterError(f"{files_phrase(paths)}: {e}") from None


def replay_options(p: Dict[str, Any], node: str = NODE_NAME) -> Dict[str, Any]:
    """What validated node parameters ask of a replay (replay.py's arguments): the cameras' input topics, the
    tracking, the topics published and their overlay. A bag holds resolved names: a relative camera is read
    where the node `node` (its fully qualified name, e.g. /car1/panoptic_node) subscribes to it."""
    namespace = ("/" + node.strip("/")).rsplit("/", 1)[0] or "/"
    return {"image_topic": [input_topic(absolute_namespace(camera, namespace), p["input_transport"])
                            for camera in p["cameras"]],
            "track": p["track_instances"], "track_min_iou": p["track_min_iou"], "track_max_lost": p["track_max_lost"],
            "publish": {name: p[f"publish_{name}"] for name in PUBLISH_SWITCHES},
            "overlay_labels": p["overlay_labels"]}
