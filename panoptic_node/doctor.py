"""`panoptic-node doctor`: what this machine will run, and what keeps it from running well.

Each check gives a verdict: ok, note (works, but slower or without a feature, and how to change that) or
problem (the default deployment cannot run). It decides nothing on its own: every answer comes from the
function the commands and the node use (resolve for the backend, int8_scales_for for the precision,
cache_dir for the graphs, choose_profile for Fast DDS), so it says what they will do.
"""
import importlib.util
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

OK, NOTE, PROBLEM = "ok", "note", "problem"


@dataclass
class Check:
    name: str
    verdict: str
    finding: str


def _version(module: str, find_spec: Callable) -> Optional[str]:
    if find_spec(module) is None:
        return None
    try:
        from importlib.metadata import version
        return version(module.replace("_", "-"))  # the distribution's name (imageio_ffmpeg: imageio-ffmpeg)
    except Exception:
        return "installed"


def machine_checks(find_spec=importlib.util.find_spec) -> List[Check]:
    out = [Check("python", OK, f"{platform.python_version()} ({sys.executable})")]
    try:
        import torch
    except ModuleNotFoundError as e:  # the rest needs it: say what provides it, and check what does not
        from .errors import missing_module
        return out + [Check("torch", PROBLEM, missing_module(e))]
    from .inference.cpu_features import cpu_flags, int8_saturates
    flags = cpu_flags()
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags) or "none known"
    saturate = int8_saturates(platform.machine(), flags)
    out.append(Check("cpu", NOTE if saturate else OK, f"{platform.machine()}, {os.cpu_count()} cores, {isa}"
                     + ("; no VNNI: OpenVINO's and ONNX Runtime's int8 kernels saturate on 8-bit weights here, "
                        "so the graph cache makes int8 graphs with 7-bit ones (export int8 graphs with "
                        "--reduce-range for this CPU)" if saturate else "")))
    cuda = torch.cuda.is_available()
    out.append(Check("torch", OK, f"{torch.__version__}, {torch.get_num_threads()} threads, CUDA "
                                  f"{'available' if cuda else 'not available'}"))
    ov = _version("openvino", find_spec)
    out.append(Check("openvino", OK if ov else NOTE,
                     ov or "not installed: on a CPU, auto runs torch, about 1.6x slower than the int8 default "
                           "(pip install 'panoptic_node[cpu]')"))
    ort = _version("onnxruntime", find_spec)
    out.append(Check("onnxruntime", OK if ort else NOTE, ort or "not installed: --backend onnxruntime unavailable"))
    trt = find_spec("tensorrt") is not None
    out.append(Check("tensorrt", OK if trt and cuda else NOTE,
                     "available with CUDA: auto runs TensorRT" if trt and cuda else
                     "not available (a CUDA GPU with TensorRT runs it; CPU backends otherwise)"))
    return out


def model_checks(model: str, weights: Optional[str], node: Optional[dict] = None, heard=()) -> List[Check]:
    """node: the node's validated parameters (doctor --params): their backend and precision are what is
    checked, and the speed measured is the pipeline the node builds from them, shared by its cameras;
    heard: (frame, rate) of the cameras doctor --listen heard, on whose frames the speed is timed."""
    from .inference.backends import _open_graph, int8_scales_for, resolve
    from .inference.cache_key import short_sha256
    from .inference.graph_cache import cache_dir, cached_graph_path, is_cached
    from .model.checkpoint import load_model, weights_of
    from .model.config import load_config
    out = []
    try:
        cfg = load_config(model)
        source = weights_of(cfg, weights)
        net = load_model(cfg, weights)
    except Exception as e:  # the loaders' own one-line errors
        return [Check("model", PROBLEM, f"{model}: {str(e).splitlines()[0]}")]
    params = sum(p.numel() for p in net.parameters()) / 1e6
    out.append(Check("model", OK, f"{cfg.name}: {source} (sha256 {short_sha256(source)}, {params:.1f} M "
                                  f"parameters, {cfg.labels} labels)"))  # the sha256 as the node's /diagnostics give it
    asked, asked_precision = (node["backend"], node["precision"]) if node else ("auto", "auto")
    chosen = resolve(asked, cfg, onnx=node["onnx"] or None if node else None)
    notes = []
    int8 = int8_scales_for(cfg, weights, chosen, asked_precision, log=notes.append)
    precision = "int8" if int8 is not None else "fp32"
    fine = int8 is not None or chosen != "openvino" or asked_precision == "fp32"
    out.append(Check("int8 scales", OK if fine else NOTE,
                     f"found, for these weights: auto runs the int8 graph, with {int8['int8_weight_bits']}-bit "
                     f"weights" + ("" if int8.get("int8_matmuls", True) else " and matrix products in float")
                     if int8 is not None else
                     "not used: the parameters ask for fp32" if asked_precision == "fp32" else
                     (notes[0] if notes else
                      f"none beside {source}: auto runs fp32 on {chosen} (panoptic-node calibrate --weights "
                      f"{source} --calib FRAMES writes them)" if chosen == "openvino" else
                      f"not used by the {chosen} backend")))
    folder = cache_dir()
    graph_opens = False  # the speed check runs only on what is already there: doctor writes nothing
    if chosen in ("openvino", "onnxruntime") and not (node and node["onnx"]):
        graph = cached_graph_path(cfg, source, folder, int8=int8)
        writable = _could_write(folder)
        if graph.is_file() and not is_cached(graph):
            finding, verdict = f"{graph.name} is damaged or incomplete: the next run exports it again", OK
        elif graph.is_file():
            try:  # opened as the commands open it: a graph that is there but does not open is no help
                _open_graph(chosen, graph, cfg, "cpu", log=lambda m: None)
                finding, verdict, graph_opens = f"{graph.name} ready ({folder})", OK, True
            except Exception as e:
                finding, verdict = (f"{graph.name} does not open ({str(e).splitlines()[0]}): auto falls back to "
                                    f"fp32 or torch; delete it to have it made again"), NOTE
        elif writable:
            finding, verdict = (f"{folder}: the {precision} graph is made on the first frame of each size "
                                f"(seconds; once per model, size and precision)"), OK
        else:
            finding, verdict = (f"{folder} is not writable: auto would run torch; set PANOPTIC_NODE_GRAPH_CACHE "
                                f"to a writable folder or pass --onnx"), NOTE
        out.append(Check("graph cache", verdict, finding))
        chosen = chosen if graph.is_file() or writable or asked != "auto" else "torch"
    elif node and node["onnx"]:
        graph_opens = True  # the user's own graph: opened by the speed check
    out.append(Check("auto backend" if asked == "auto" else "backend", OK,
                     f"{chosen} ({precision if chosen in ('openvino', 'onnxruntime') else 'fp32'}) for {cfg.name} "
                     f"on the CPU" + ("" if asked == "auto" else ", as the parameters ask")))
    ready = chosen not in ("openvino", "onnxruntime") or graph_opens
    out.append(speed_check(model, weights, node=node, heard=heard) if ready else
               Check("speed", NOTE, "not measured: the graph is made on the first run (then run doctor again)"))
    return out


SPEED_FRAMES = 20


def speed_check(model: str, weights: Optional[str], camera_hz: float = 30.0, node: Optional[dict] = None,
                heard=()) -> Check:
    """The default deployment's frames per second end to end (decoded frame in, every map out) on CamVid
    val frames where CamVid is found, else on one grey frame (network time, few segments), as the node
    would run it: whether a 30 Hz camera is served at its rate. node: the node's parameters, whose pipeline
    is measured instead, its rate shared by its cameras. heard: (frame, rate in Hz or None) of the cameras
    doctor --listen heard: timed on their own frames (their size is the node's cost), judged by their rates."""
    import numpy as np
    from .inference.backends import make_pipeline
    from .training.data import find_camvid
    try:
        from PIL import Image
        val = sorted((find_camvid() / "val").glob("*.png"))[:SPEED_FRAMES]
        frames, what = [np.asarray(Image.open(p).convert("RGB")) for p in val], f"{len(val)} CamVid val frames"
    except (FileNotFoundError, OSError):
        val = []
    if not val:
        frames, what = [np.full((360, 480, 3), 128, np.uint8)] * SPEED_FRAMES, "a grey 480x360 frame (no CamVid found)"
    if heard:
        frames = [heard[i % len(heard)][0] for i in range(SPEED_FRAMES)]
        what = f"the frames the cameras sent ({', '.join(f'{f.shape[1]}x{f.shape[0]}' for f, _ in heard)})"
    overlap = False
    try:
        if node:
            from .params import make_node_pipelines, overlaps_postprocessing
            pipelines = make_node_pipelines(node, log=lambda m: None, warn=lambda m: None)
            overlap = overlaps_postprocessing(node, pipelines[0].backend.name)
        else:
            pipelines = [make_pipeline(model, weights, log=lambda m: None)]
        fps = _frames_per_second(pipelines, frames, overlap)
    except Exception as e:
        return Check("speed", PROBLEM, f"the pipeline failed: {str(e).splitlines()[0]}")
    pipeline = pipelines[0]
    workers = f", {len(pipelines)} inference workers" if len(pipelines) > 1 else ""
    workers += ", post-processing beside the network's next frame" if overlap else ""
    where = (f"{fps:.1f} frames/s end to end on {what} ({pipeline.backend.name} {pipeline.backend.precision}"
             f"{workers})")
    n = len(heard) if heard else len(node["cameras"]) if node else 1
    rates = [rate or camera_hz for _, rate in heard] or [camera_hz] * n
    if heard:
        cameras = f"the camera{'s' if n > 1 else ''} heard ({' + '.join(f'{r:.0f}' for r in rates)} Hz)"
    else:
        cameras = f"a {camera_hz:g} Hz camera" if n == 1 else f"{n} cameras at {camera_hz:g} Hz"
    if fps >= sum(rates):
        return Check("speed", OK, f"{where}: keeps up with {cameras}")
    each = "" if n == 1 else " each" + (", one frame at a time (batch_cameras may do better)"
                                        if (node or {}).get("batch_cameras") else "")
    more = ("; inference_workers: 2 infers two frames at once, more of them, each later (README)"
            if len(pipelines) == 1 and (os.cpu_count() or 1) >= 2 else "")
    return Check("speed", NOTE, f"{where}: {cameras} {'is' if n == 1 else 'are'} served at about {fps / n:.0f} Hz"
                                f"{each} (the node takes each camera's newest frame{more})")


def _frames_per_second(pipelines, frames, overlap: bool = False) -> float:
    """Frames/s of the pipelines on `frames` after a warm-up, as the node's workers run them: at once
    (in_order.PipelinesInOrder, as replay runs them), over the wall clock; with `overlap`
    (overlap_postprocessing), each worker post-processing one frame while its network runs the next. A
    pipeline's failure raises."""
    import time

    from .in_order import PipelinesInOrder
    for pipeline in pipelines:
        for rgb in frames[:3]:  # warm-up: first calls allocate
            pipeline(rgb)
    if overlap:
        return _overlapped_frames_per_second(pipelines, frames)
    pool = PipelinesInOrder(pipelines)
    try:
        t0 = time.perf_counter()
        for rgb in frames:
            pool.submit(rgb, None)
            for _ in pool.ready():
                pass
        for _ in pool.drain():
            pass
        return len(frames) / (time.perf_counter() - t0)
    finally:
        pool.close()


def _overlapped_frames_per_second(pipelines, frames) -> float:
    """As the node runs overlap_postprocessing: each worker runs the network on its frames (Pipeline.detect_batch;
    the workers take turns, frame by frame) and hands each to a post-processing thread of its own
    (Pipeline.decide), at most one frame behind, as the node's hand-over of one."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    def worker(pipeline, own):
        with ThreadPoolExecutor(1, thread_name_prefix="panoptic_postprocess") as post:
            behind = None
            for rgb in own:
                detected = pipeline.detect_batch([rgb])[0]
                if behind is not None:
                    behind.result()  # raises what the post-processing raised
                behind = post.submit(pipeline.decide, detected)
            if behind is not None:
                behind.result()

    t0 = time.perf_counter()
    n = len(pipelines)
    with ThreadPoolExecutor(n, thread_name_prefix="panoptic_infer") as network:
        for done in [network.submit(worker, p, frames[i::n]) for i, p in enumerate(pipelines)]:
            done.result()
    return len(frames) / (time.perf_counter() - t0)


def _could_write(folder: Path) -> bool:
    """Whether the graph cache can be written: the folder, or the nearest existing parent that would hold it."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


def ros_checks(find_spec=importlib.util.find_spec, environ=os.environ) -> List[Check]:
    from .dds_profile import choose_profile, profile_env
    from .model.config import share_dir
    out = []
    if find_spec("rclpy") is None:
        return [Check("ROS 2", NOTE, "rclpy not importable: the node cannot run here (source a ROS 2 install, or "
                                     "`make install-test` for PyPI's Jazzy wheels); replay, evaluate and fleet need no ROS")]
    missing = [m for m in ("sensor_msgs", "diagnostic_msgs", "vision_msgs") if find_spec(m) is None]
    distro = environ.get("ROS_DISTRO", "")
    out.append(Check("ROS 2", PROBLEM if missing else OK,
                     f"rclpy{' (' + distro + ')' if distro else ''}, RMW "
                     f"{environ.get('RMW_IMPLEMENTATION') or 'default'}"
                     + (f"; missing message packages the node needs: {', '.join(missing)} "
                        f"({_how_to_get(missing, distro)})" if missing else "")))
    path, why = choose_profile("auto", share_dir("config"), environ=environ)  # auto refuses nothing
    # what car.launch.py's dds_profile:=auto chooses; the shared-memory fallback loses frames of cameras
    # published together by a driver with Fast DDS's defaults (README, the node on the wire)
    out.append(Check("Fast DDS", OK if path is None or path.name == "fastdds_large_images.xml" else NOTE, why))
    out.append(shared_memory_check({**environ, **profile_env(path)}))
    return out


def _how_to_get(packages: List[str], distro: str) -> str:
    apt = " ".join(f"ros-{distro or 'jazzy'}-{m.replace('_', '-')}" for m in packages)
    if distro:
        return f"e.g. apt install {apt}"
    # no ROS 2 install sourced (its setup script sets ROS_DISTRO): rclpy came from PyPI's wheels (no vision_msgs)
    return (f"no ROS 2 install is sourced and PyPI's ROS 2 wheels do not have them: source one that does, e.g. after "
            f"apt install {apt}; `make install-test`'s build/test_msgs is a test-only build")


def shared_memory_check(environ=os.environ, shm_dir=None) -> Check:
    """Room in /dev/shm for the node's Fast DDS segment, and the segments killed processes left there."""
    from .dds_profile import profile_in_effect
    from .shared_memory import SHM_DIR, scan, shared_memory_problem, stale_segments_note
    shm_dir = shm_dir or SHM_DIR
    seen = scan(shm_dir)  # once: each scan test-locks every segment's lock file
    try:
        problem = shared_memory_problem(profile_in_effect(environ), environ, shm_dir, seen)
    except (OSError, ValueError, SyntaxError) as e:  # the profile is the Fast DDS check's to judge
        return Check("shared memory", NOTE, f"not checked: the Fast DDS profile does not read ({e})")
    if problem:
        return Check("shared memory", NOTE, problem)
    stale = stale_segments_note(shm_dir, seen)
    if stale:
        return Check("shared memory", NOTE, stale)
    return Check("shared memory", OK, f"{shm_dir}: {seen.free / 1e6:.0f} MB free, no segment left by a killed process"
                 if seen else f"{shm_dir} not found: Fast DDS's shared memory is not checked here")


def tool_checks(find_spec=importlib.util.find_spec) -> List[Check]:
    from .training.data import find_camvid
    out = []
    ffmpeg = _version("imageio_ffmpeg", find_spec)
    out.append(Check("video", OK if ffmpeg else NOTE, f"imageio-ffmpeg {ffmpeg}" if ffmpeg else
                     "imageio-ffmpeg not installed: replay --video and convert video unavailable"))
    ray = _version("ray", find_spec)
    out.append(Check("fleet", OK if ray else NOTE, f"ray {ray}" if ray else
                     "ray not installed: `fleet` unavailable (pip install 'panoptic_node[fleet]')"))
    try:
        out.append(Check("CamVid", OK, f"{find_camvid()} (make demo, training)"))
    except FileNotFoundError as e:
        out.append(Check("CamVid", NOTE, str(e).splitlines()[0]))
    return out


def parameter_checks(path, node_name: str) -> Tuple[List[Check], Optional[dict]]:
    """The node's parameters file read as the node reads it (params.from_file), and the ego masks it names
    read as the node reads them at start-up: (checks, the parameters or None when the file is refused)."""
    from .params import ParameterError, file_parameters, from_file, parameters_files, replay_options
    try:
        node = from_file(path, node_name)
    except ParameterError as e:
        return [Check("parameters", PROBLEM, str(e))], None
    cameras = node["cameras"]
    topics = replay_options(node, node_name)["image_topic"]  # where that node subscribes: relative names resolved
    out = [Check("parameters", OK, f"{', '.join(parameters_files(path))} for /{node_name.strip('/')}: model "
                                   f"{node['model']}, backend "
                                   f"{node['backend']} ({node['precision']}), {len(cameras)} camera(s) "
                                   f"{', '.join(cameras)} ({node['input_transport']}: {', '.join(topics)})")]
    if file_parameters(path, node_name).get("use_sim_time") is True:  # a bag-replay setting copied to the car
        out.append(Check("clock", NOTE, "use_sim_time is true: the node's clock is /clock's (a bag played with "
                                        "--clock); with live cameras and no /clock it reads 0 and every frame is "
                                        "judged decades ahead: set it false on the car"))
    folder = node["ego_mask_dir"]
    if folder:
        from .inference.ego_mask import check_folder, describe, masks_for
        try:
            check_folder(folder)
            masks = masks_for(folder, [c.rstrip("/") for c in cameras])
        except (OSError, ValueError) as e:  # the node stops at start-up on the same
            out.append(Check("ego masks", PROBLEM, str(e).splitlines()[0]))
        else:
            out.append(Check("ego masks", NOTE if any(keep is None for keep in masks.values()) else OK,
                             "; ".join(describe(folder, ns, keep) for ns, keep in masks.items())))
    return out, node


def camera_checks(node: dict, node_name: str, seconds: float, image_topics: Optional[List[str]] = None,
                  find_spec=importlib.util.find_spec, sim_time: bool = False) -> Tuple[List[Check], list]:
    """doctor --listen: each camera the node would read, heard on the live ROS 2 graph for `seconds` (who
    publishes, type, QoS, rate, frame size and encoding, the stamps' age) as the node hears it, with the
    Fast DDS profile it takes: one check per camera, and (one frame, rate in Hz or None) of each camera that
    sent frames the node can read. image_topics: car.launch.py's image_topics (one driver topic per camera):
    each camera and its camera_info heard where the launch remaps them."""
    from .params import absolute_namespace, image_remaps, replay_options
    namespace = ("/" + node_name.strip("/")).rsplit("/", 1)[0] or "/"
    remap = dict(image_remaps(node["cameras"], image_topics, namespace, node["input_transport"])
                 if image_topics else [])  # a wrong count or name is refused before the graph is joined
    if find_spec("rclpy") is None or find_spec("sensor_msgs") is None:
        return [Check("cameras", PROBLEM, "--listen joins the ROS 2 graph, and rclpy or sensor_msgs is not "
                                          "importable here (source a ROS 2 install)")], []
    from .ros.camera_check import listen
    resolved = [absolute_namespace(c, namespace) for c in node["cameras"]]
    cameras = {c: remap.get(t, t) for c, t in zip(resolved, replay_options(node, node_name)["image_topic"])}
    infos = {c: remap.get(f"{c}/camera_info", f"{c}/camera_info") for c in resolved}
    # heard through the Fast DDS profile the node takes (car.launch.py's auto, or PANOPTIC_NODE_DDS_PROFILE's
    # choice): with Fast DDS's defaults a 1280x720 camera at 30 Hz arrived here at 0.7 Hz, with the profile at 27.8
    from .dds_profile import node_environment
    from .model.config import share_dir
    env, _ = node_environment(share_dir("config"))
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        heard, running = listen(cameras, node["input_transport"], node["qos_reliability"], node["max_age_ms"],
                                seconds, infos, sim_time)
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    checks = [Check(f"camera {camera}", PROBLEM if problem else OK, finding)
              for camera, problem, finding, _, _ in heard]
    checks += running_node_checks(running, node, node_name)
    return checks, [(rgb, rate) for _, _, _, rgb, rate in heard if rgb is not None]


def _weights_named(node: dict) -> Tuple[Optional[str], Optional[str]]:
    """The weights (or graph) these parameters run and the int8 scales beside them, as the node's /diagnostics
    names them; None for what does not load or is not there (the model check says why)."""
    try:
        from .inference.cache_key import weights_identity
        from .int8_scales import default_scales_path
        from .model.checkpoint import weights_of
        from .model.config import load_config
        path = node["onnx"] or weights_of(load_config(node["model"]), node["weights"] or None)
        weights = weights_identity(path)
    except Exception:
        return None, None
    scales = default_scales_path(path)
    return weights, weights_identity(scales) if not node["onnx"] and scales.is_file() else None


def running_node_checks(running: dict, node: dict, node_name: str) -> List[Check]:
    """The panoptic nodes doctor --listen heard on /diagnostics (name -> level, message and values of their
    inference status): what each runs and how it fares. The node these parameters are for (`node_name`)
    running other weights, or another release, than the ones here is a problem: a node loaded its weights when
    it was configured, so new weights copied in place (or a package upgraded) reach the car only when it restarts
    (weights: or is configured again)."""
    from . import __version__
    from .bag.recorded_health import LEVELS, ran_line
    named, scales = _weights_named(node) if running else (None, None)
    out = []
    for name, (level, message, values) in sorted(running.items()):
        state = LEVELS.get(level, str(level))
        finding = f"{ran_line(values)}; its inference: {state}" + ("" if message == state else f", {message}")
        stale = []
        if "/" + name.lstrip("/") == "/" + node_name.strip("/"):
            if named and values.get("weights") and values["weights"] != named:
                stale.append(f"the weights here are {named}: a node loads its weights when configured; restart it "
                             f"(or lifecycle deactivate, cleanup, configure, activate) to run these")
            if scales and values.get("int8 scales") and values["int8 scales"] != scales:
                stale.append(f"the int8 scales here are {scales}: restart it (or configure it again) to run them")
            if values.get("version") and values["version"] != __version__:
                stale.append(f"the package here is panoptic_node {__version__}: restart it to run this release")
        if stale:
            finding += "; " + "; ".join(stale)
        out.append(Check(f"running {name}", PROBLEM if stale else OK, finding))
    return out


def run_checks(model: str = "street_lite0", weights: Optional[str] = None, params=None,
               node_name: str = "/panoptic_node", listen_s: Optional[float] = None,
               image_topics: Optional[List[str]] = None) -> List[Check]:
    """params: the node's parameters file (doctor --params): its model, backend and cameras are checked;
    listen_s: its cameras (the shipped ones without params) are also heard on the live graph that long, where
    car.launch.py's `image_topics` would remap them."""
    machine = machine_checks()
    torch_here = not any(c.name == "torch" and c.verdict == PROBLEM for c in machine)
    checks, node = parameter_checks(params, node_name) if params is not None else ([], None)
    if node is not None:
        model, weights = node["model"], node["weights"] or None
    cameras, heard = [], []
    if listen_s is not None and (params is None or node is not None):  # first: the speed is timed on their frames
        from .params import defaults, file_parameters
        sim_time = params is not None and file_parameters(params, node_name).get("use_sim_time") is True
        cameras, heard = camera_checks(node or defaults(), node_name, listen_s, image_topics, sim_time=sim_time)
    if params is None or node is not None:
        checks += model_checks(model, weights, node, heard) if torch_here else [
            Check("model", NOTE, f"{model} not checked: it needs torch (above)")]
    return machine + checks + ros_checks() + cameras + tool_checks()


def format_checks(checks: List[Check]) -> str:
    width = max(len(c.name) for c in checks)
    return "\n".join(f"{c.verdict:<8} {c.name:<{width}}  {c.finding}" for c in checks)
