"""The `panoptic-node` command: one entry point, one sub-command per job."""
import argparse
import errno
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Optional


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .model.config import DEFAULT_MODEL
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name under models/, a YAML config path, or a "
                   f"checkpoint panoptic-node wrote (runs/x/last.pth: its own config and weights; default: {DEFAULT_MODEL})")
    p.add_argument("--weights", help="weights file (default: the model config's own)")
    p.add_argument("--threshold", type=float, help="keep queries above this class probability")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    # the same names as inference.backends.BACKENDS (not imported here: it would load torch for --help)
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "openvino", "tensorrt"],
                   help="auto: TensorRT with CUDA; else OpenVINO on x86 CPUs (the fastest measured) on the "
                   "--onnx graph or one exported once into ~/.cache/panoptic_node/graphs; else ONNX Runtime "
                   "when a graph is given; else torch")
    p.add_argument("--onnx", help="exported graph for the onnxruntime / openvino / tensorrt backends (default: "
                   "the model's, exported once into the cache)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "int8"],
                   help="of the graphs the cache makes: auto = int8 on OpenVINO when the weights have int8 "
                        "scales beside them (<weights>.int8.json, panoptic-node calibrate), else fp32")
    p.add_argument("--labels", help="publish labels in this label set (e.g. cityscapes for a COCO model)")


def _add_params_args(p: argparse.ArgumentParser, what: str) -> None:
    """--params / --node: the node's ROS 2 parameters file, read as rclpy reads it (params.from_file)."""
    p.add_argument("--params", action="append", help=f"the node's ROS 2 parameters file (e.g. the car's "
                   f"config/car.param.yaml): {what}; given again, files are read in order, a later one's values "
                   f"over an earlier one's (a fleet's shared file, then a car's own), as launch's parameters=[a, b]")
    p.add_argument("--node", default="/panoptic_node", help="with --params: the node whose entry in the file applies, "
                   "on top of /** (default /panoptic_node, as car.launch.py names it)")


def _add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=0, help="CPU threads for the network and post-processing "
                                                           "(default 0: each runtime's own choice, every core)")


def _pipeline(args, threads=None, log=None):
    from .inference.backends import make_pipeline
    return make_pipeline(args.model, weights=args.weights, backend=args.backend, device=args.device,
                         threshold=args.threshold, labels=args.labels, onnx=args.onnx, precision=args.precision,
                         threads=args.threads if threads is None else threads,
                         log=log or (lambda m: print(m, file=sys.stderr)))


def _offline_workers(args) -> int:
    """replay's, demo's and infer's inference workers: --inference-workers, else two where the network runs on a
    CPU with two threads or more to share. Offline only the rate counts, and one pipeline leaves a core idle while
    it post-processes; the node's default stays one, as each frame waits longer with two (README)."""
    if args.inference_workers is not None:
        return args.inference_workers
    return 2 if args.device == "cpu" and (args.threads or os.cpu_count() or 1) >= 2 else 1


def _pipelines(args, frames: Optional[int] = None):
    """One pipeline per inference worker (_offline_workers; by default no more than the `frames` there are to
    infer), each on its share of --threads (the first says what it loads)."""
    from .params import worker_threads
    workers = _offline_workers(args)
    if args.inference_workers is None and frames is not None:
        workers = max(1, min(workers, frames))  # one image needs no second model in memory
    share = worker_threads({"num_threads": args.threads, "inference_workers": workers},
                           "--inference-workers", "--threads")
    return [_pipeline(args, share)] + [_pipeline(args, share, log=lambda m: None) for _ in range(workers - 1)]


def _add_inference_workers_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inference-workers", type=int, help="frames inferred at once, each by its own pipeline on its "
                   "share of --threads, every frame handled in order (the node's inference_workers; "
                   "default: 2 where the network runs on a CPU with 2 threads or more, else 1; the outputs and "
                   "scores are the same)")


def output_stems(paths):
    """One output name per input image: its stem, or stem + extension (then + a number) where two
    inputs share a stem (a.png and a.jpg, or two folders' 0001.png), so no result overwrites another."""
    from collections import Counter
    stems = [p.stem for p in paths]
    shared = Counter(stems)  # not stems.count per image: a folder of thousands of frames
    out, used = [], set()
    for p, stem in zip(paths, stems):
        name = stem if shared[stem] == 1 else f"{stem}_{p.suffix.lstrip('.').lower() or 'noext'}"
        candidate, k = name, 2
        while candidate in used:
            candidate, k = f"{name}_{k}", k + 1
        used.add(candidate)
        out.append(candidate)
    return out


INFER_OUTPUTS = ("_panoptic.png", "_semantic.png", "_instances.png", "_overlay.png")


def is_infer_output(name: str) -> bool:
    """A file `infer` writes into its --out folder (an earlier run's results may share the folder)."""
    return name == "panoptic.json" or name.endswith(INFER_OUTPUTS)


def cmd_infer(args) -> int:
    from .output_safety import OutputLock, check_outputs, refuse_foreign_folder, refuse_inputs
    from .taxonomy import get_taxonomy

    paths = image_paths(args.images)
    stems = output_stems(paths)
    out = Path(args.out)
    outputs = {"panoptic.json": out / "panoptic.json"}
    outputs.update({f"{stem}{suffix}": out / f"{stem}{suffix}" for stem in stems for suffix in INFER_OUTPUTS})
    # before the model loads; the folder too: results written among the images would be read as images next time
    refuse_inputs("--out", out, paths)
    refuse_foreign_folder("--out", out, is_infer_output, "infer's results")
    check_outputs(outputs, inputs=paths + [args.weights], overwrite=args.overwrite)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"--out '{out}' holds an earlier run's results; pass --overwrite to replace them "
                              f"(the folder's results as a whole)")
    pipelines = _pipelines(args, frames=len(paths))
    taxonomy = get_taxonomy(pipelines[0].labels)
    with OutputLock(out):
        return _infer_into(out, paths, stems, pipelines, taxonomy, args)


def _infer_into(out: Path, paths, stems, pipelines, taxonomy, args) -> int:
    """The run's results are made in `<out>.partial/` and take the place of `out` (an earlier run's results
    as a whole) only when complete: rewritten in place, a run killed half-way left the earlier panoptic.json,
    which looks complete, beside PNGs of the new run, and an earlier run's PNGs of other images stayed.
    Several pipelines infer images at once (in_order.PipelinesInOrder), and each image's results are tracked
    and written in the images' order, while the next ones are inferred."""
    from tqdm import tqdm

    from .atomic import OVERLAY_PNG_LEVEL, write_png
    from .coco_format import CocoPanopticWriter
    from .images import read_rgb
    from .in_order import PipelinesInOrder
    from .inference.preprocess import OffScaleNotes
    from .output_safety import refuse_foreign_folder
    from .render import overlay

    work = out.with_name(out.name + ".partial")
    if work.exists():  # a killed run's leftover (the lock says none runs now), if it holds nothing else
        refuse_foreign_folder("--out", work, is_infer_output, "infer's results")
        shutil.rmtree(work)
    writer = CocoPanopticWriter(work, taxonomy)
    off_scale = OffScaleNotes(pipelines[0].cfg.input)
    tracker = None
    if args.track:  # frames of one camera in time order (a clip's frames, numbered): ids kept as the node keeps them
        from .inference.tracking import InstanceTracker
        tracker = InstanceTracker()
    failed = 0
    bar = tqdm(total=len(paths), desc="infer", unit="frame")

    def write(path, stem, rgb, result):
        if tracker:
            result = tracker.update(result)
        writer.add(stem, path.name, result)
        write_png(result.semantic, work / f"{stem}_semantic.png")
        write_png(result.instance, work / f"{stem}_instances.png")
        write_png(overlay(rgb, result, taxonomy), work / f"{stem}_overlay.png", OVERLAY_PNG_LEVEL)
        bar.write(f"{path.name}: {len(result.segments)} segments, "
                  + ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in result.timings.items()))
        bar.update()

    workers = PipelinesInOrder(pipelines) if len(pipelines) > 1 else None  # None: one pipeline, called in the loop
    try:
        for path, stem in zip(paths, stems):
            try:
                rgb = read_rgb(path)
            except ValueError as e:
                bar.write(f"error: {e}")
                bar.update()
                failed += 1
                continue
            note = off_scale.first(*rgb.shape[:2])
            if note:
                bar.write(f"{path.name}: warning: {note}")
            if workers is None:
                write(path, stem, rgb, pipelines[0](rgb))
                continue
            workers.submit(rgb, (path, stem, rgb))
            for (done, done_stem, done_rgb), result in workers.ready():
                write(done, done_stem, done_rgb, result)
        for (done, done_stem, done_rgb), result in workers.drain() if workers else ():
            write(done, done_stem, done_rgb, result)
    finally:
        if workers:
            workers.close()
        bar.close()
    if not writer.annotations:  # a panoptic.json of no frames would look like a finished run
        shutil.rmtree(work)  # made for this run and still empty; an earlier run's results stay
        print(f"wrote nothing to {out}: none of the {failed} frames could be read", file=sys.stderr)
        return 1
    writer.close()
    if out.is_dir() and not any(out.iterdir()):  # a folder made for them: kept, filled, panoptic.json last
        for f in sorted(work.iterdir(), key=lambda f: f.name == "panoptic.json"):
            f.rename(out / f.name)
        work.rmdir()
    else:
        if out.exists():  # an earlier run's results, and --overwrite was given (checked before the model loaded)
            shutil.rmtree(out)
        work.rename(out)
    print(f"wrote {len(writer.annotations)} frames to {out}" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def image_paths(args):
    """The images to infer on: files as given, a folder as its PNG / JPEG files in name order
    (frames are usually numbered). A folder without any is refused before the model loads."""
    paths = []
    for arg in map(Path, args):
        if arg.is_dir():
            found = sorted(p for p in arg.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise ValueError(f"folder '{arg}' holds no .png / .jpg / .jpeg images; expected image files or a "
                                 f"folder of them")
            paths += found
        else:
            paths.append(arg)  # a file that cannot be read fails alone, and the others still run
    return paths


def cmd_train(args) -> int:
    import torch

    from .training.train import train
    at_least_one(args.threads, "--threads", "CPU threads")
    from .inference.backends import check_threads
    check_threads(args.threads, "--threads")  # 100000 would crash torch's thread pool at the first step
    torch.set_num_threads(args.threads)
    crop = number_pair(args.crop, "x", int, "--crop", "WxH in pixels (e.g. 480x352)")[::-1]  # HxW from here on
    from .training.data import find_camvid
    data = str(find_camvid(args.data)) if args.dataset == "camvid" else args.data
    if not data:
        raise ValueError(f"--data PATH is needed for dataset '{args.dataset}'")
    scale = number_pair(args.scale, ",", float, "--scale", "LOW,HIGH (e.g. 0.75,1.5)")
    train(args.config, data, args.out, epochs=args.epochs, batch_size=args.batch_size, crop=crop,
          lr=args.lr, lr_backbone=args.lr_backbone, resume=args.resume, val_every=args.val_every,
          dataset=args.dataset, train_drives=drive_list(args.train_drives), val_drives=drive_list(args.val_drives),
          scale=scale, colour=args.photometric, ema=args.ema, semantic_aux=args.semantic_aux, seed=args.seed,
          copy_paste=args.copy_paste, init=args.init, overwrite=args.overwrite, weight_decay=args.weight_decay,
          mixstyle=args.mixstyle, freeze_backbone_to=args.freeze_backbone, class_balance=args.class_balance,
          train_every=args.train_every, head_first=args.head_first, drive_balance=args.drive_balance,
          stop_below=args.stop_below, stop_from=args.stop_from, stop_when=args.stop_when,
          stop_after_epoch=args.stop_after, rotate=args.rotate,
          class_mix=args.class_mix, mask_loss=args.mask_loss, query_groups=args.query_groups,
          no_object_weight=args.no_object_weight, stuff_queries=args.stuff_queries,
          semantic_aux_balance=args.semantic_aux_balance, semantic_map=args.semantic_map,
          semantic_map_balance=args.semantic_map_balance)
    return 0


def cmd_compare_runs(args) -> int:
    from .output_safety import check_outputs
    from .training.compare import curves_chart, load_run, per_class_table, pool_seeds, table
    folders = list(dict.fromkeys([args.baseline] + args.runs))  # the baseline first, each run once
    check_outputs({"--chart": args.chart}, inputs=folders, overwrite=args.overwrite)
    if args.last is not None:
        at_least_one(args.last, "--last", "evaluations")
    at_least_one(args.from_epoch, "--from-epoch", "(an epoch number)")
    points(args.min_miou_gain, "--min-miou-gain")
    points(args.max_pq_drop, "--max-pq-drop", at_least=0)
    runs = [load_run(f) for f in folders]
    if args.pool_seeds:  # the baseline's recipe comes first, with every run of it
        runs = pool_seeds(runs)
    print(table(runs, runs[0], args.from_epoch, args.min_miou_gain, args.max_pq_drop, args.last))
    if args.per_class:
        print()
        print(per_class_table(runs, runs[0], args.from_epoch, args.last))
    if args.chart:
        curves_chart(runs, args.chart, args.from_epoch, baseline=runs[0], last=args.last)
        print(f"curves: {args.chart}")
    return 0


def at_least_one(value: int, option: str, unit: str) -> None:
    """A count that must be 1 or more, refused in one line naming the option."""
    if value < 1:
        raise ValueError(f"{option} {value}: expected >= 1 {unit}")


def points(value: float, option: str, at_least: Optional[float] = None) -> None:
    """A rule's threshold in points, refused in one line when NaN or infinite (NaN compares false with
    everything: a NaN rule passed every run) or under `at_least`."""
    if not math.isfinite(value) or (at_least is not None and value < at_least):
        bound = f" >= {at_least:g}" if at_least is not None else ""
        raise ValueError(f"{option} {value}: expected a finite number of points{bound}")


def number_pair(text, sep, kind, option, expected):
    """'480x352' -> (480, 352); anything else is refused with what the option expects."""
    parts = text.lower().split(sep)
    try:
        if len(parts) == 2:
            return tuple(kind(v) for v in parts)
    except ValueError:
        pass
    raise ValueError(f"{option} '{text}': expected {expected}")


def drive_list(text):
    """'0016E5,0001TP' -> the drives; 'none' -> [] (no validation); absent -> None (CamVid's split)."""
    if text is None:
        return None
    return [] if text.strip().lower() == "none" else [d.strip() for d in text.split(",") if d.strip()]


def cmd_recover(args) -> int:
    from .bag.recover import recover
    recover(args.src, args.out, overwrite=args.overwrite, log=print)
    return 0


def cmd_convert(args) -> int:
    from .bag.convert import convert
    n = convert(args.dataset, args.src, args.out, split=args.split, storage=args.storage, max_frames=args.max_frames,
                overwrite=args.overwrite, sequence=args.sequence)
    print(f"wrote {n} frames to {args.out}")
    return 0


def _replay(args, pipelines, node=None):
    """pipelines: one per inference worker (the first says what ran); node: the node's validated parameters
    when the replay runs them (replay --params)."""
    pipeline, *more = pipelines
    from .params import replay_options
    from .replay import replay
    extra = {} if node is None else {k: v for k, v in replay_options(node, args.node).items()
                                     if k not in ("image_topic", "track")}
    if node is not None:  # what produced the numbers, in --metrics' JSON
        extra["parameters"] = {"file": ", ".join(args.params), "node": "/" + args.node.strip("/"), "values": node}
    summary = replay(pipeline, args.bag, out_bag=args.out, image_topic=args.image_topic, gt_topic=args.gt_topic,
                     video=args.video, metrics_path=args.metrics, max_frames=args.max_frames,
                     overwrite=args.overwrite, storage=args.storage, start_s=getattr(args, "start", None),
                     duration_s=getattr(args, "duration", None), per_frame_path=getattr(args, "per_frame", None),
                     timeline_path=getattr(args, "timeline", None), ego_masks=getattr(args, "ego_masks", None),
                     track=not getattr(args, "no_tracking", False), stq=getattr(args, "stq", False),
                     more_pipelines=more, **extra)
    print(summary.format())
    if summary.metrics:
        _charts(summary.metrics, args)
    return summary


def _check_replay_outputs(args, inputs) -> None:
    """Every output of a replay checked before the model loads or a frame is read."""
    from .output_safety import check_outputs
    check_outputs({"--out": args.out, "--video": args.video, "--metrics": args.metrics, "--chart": args.chart,
                   "--confusion": args.confusion, "--per-frame": getattr(args, "per_frame", None),
                   "--timeline": getattr(args, "timeline", None)}, inputs,
                  args.overwrite, bags={"--out"})


# the options of replay and fleet that set one of the node's parameters (option's dest -> parameter); with
# --params a given option wins over the file, as a launch argument wins over car.param.yaml
NODE_OPTIONS = {"model": "model", "weights": "weights", "backend": "backend", "onnx": "onnx", "precision": "precision",
                "device": "device", "threshold": "threshold", "labels": "label_set", "threads": "num_threads",
                "ego_masks": "ego_mask_dir", "inference_workers": "inference_workers"}
# their defaults (None in the parsers of replay and fleet, so that --params knows what was given)
OPTION_DEFAULTS = {"device": "cpu", "backend": "auto", "precision": "auto", "threads": 0}
# the node's parameters that govern the live graph, not what a frame gives: a replay runs every frame of the bag
LIVE_ONLY = ("qos_reliability", "qos_depth", "max_age_ms", "max_rate_hz", "diagnostics_period", "camera_timeout_s",
             "batch_cameras", "warmup_sizes", "autostart", "overlap_postprocessing", "overlay_max_rate_hz")


def _fill_option_defaults(args) -> None:
    from .model.config import DEFAULT_MODEL
    args.model = args.model or DEFAULT_MODEL
    for dest, value in OPTION_DEFAULTS.items():
        if getattr(args, dest, value) is None:
            setattr(args, dest, value)


def _node_parameters(args) -> dict:
    """--params FILE (replay, fleet): the parameters the node named --node takes from FILE (as rclpy gives them
    to it), the options given on the command line on top, checked as the node checks them. args then holds
    the model settings they make (model, weights, backend, threshold, labels, ego masks, ...)."""
    from .params import ParameterError, defaults, from_file, validate
    node = from_file(args.params, args.node)
    given = {param: getattr(args, dest) for dest, param in NODE_OPTIONS.items()
             if getattr(args, dest, None) is not None}
    if getattr(args, "no_tracking", False):
        given["track_instances"] = False
    try:
        node = validate({**node, **given})
    except ParameterError as e:
        raise ParameterError(f"{e} (given on the command line, over {', '.join(args.params)})") from None
    args.model, args.weights, args.onnx = node["model"], node["weights"] or None, node["onnx"] or None
    args.backend, args.precision, args.device = node["backend"], node["precision"], node["device"]
    args.threshold = node["threshold"] if node["threshold"] >= 0 else None
    args.labels = None if node["label_set"] == "native" else node["label_set"]
    args.ego_masks = node["ego_mask_dir"] or None
    # a fleet shares the machine's cores among its workers itself
    not_applied = LIVE_ONLY + (() if hasattr(args, "threads") else ("num_threads", "inference_workers"))
    if hasattr(args, "threads"):
        args.threads = node["num_threads"]
        args.inference_workers = node["inference_workers"]
    default = defaults()
    live = [f"{name} {node[name]!r}" for name in not_applied if node[name] != default[name]]
    threshold = node["threshold"] if node["threshold"] >= 0 else "the model config's"
    print(f"node parameters of {'/' + args.node.strip('/')} from {', '.join(args.params)}: model {node['model']}, "
          f"backend {node['backend']}, precision {node['precision']}, threshold {threshold}, "
          f"labels {node['label_set']}, cameras {', '.join(node['cameras'])} ({node['input_transport']}), instance "
          f"ids " + (f"tracked (IoU >= {node['track_min_iou']:g}, unseen <= {node['track_max_lost']} frames)"
                     if node["track_instances"] else "per frame")
          + (f"; not applied offline, where every frame is replayed: {', '.join(live)}" if live else ""))
    return node


def cmd_replay(args) -> int:
    from .bag.reader import BagReader
    from .replay import check_window
    check_window(args.start, args.duration)
    node, cameras_from = None, None
    if args.params:
        from .params import replay_options
        node = _node_parameters(args)
        args.no_tracking = not node["track_instances"]
        if args.image_topic is None:
            args.image_topic = replay_options(node, args.node)["image_topic"]
            cameras_from = f"the cameras of {', '.join(args.params)}: {', '.join(node['cameras'])}, input_transport " \
                           f"{node['input_transport']}"
    else:
        _fill_option_defaults(args)
    _check_replay_outputs(args, [args.bag, args.weights, args.onnx, args.ego_masks, *(args.params or [])])
    reader = BagReader(args.bag)  # a missing or unreadable bag is said before the model loads
    try:
        missing = [t for t in args.image_topic if t not in reader.topics] if cameras_from else []
        if missing:
            raise ValueError(f"bag '{args.bag}' has no topic {', '.join(missing)} ({cameras_from}); its image "
                             f"topics: {', '.join(reader.image_topics()) or 'none'}; --image-topic T replays one "
                             f"of them" + "".join(reader.why_unreadable(t) for t in missing))
    finally:
        reader.close()
    from .params import make_node_pipelines
    if node is None:
        _replay(args, _pipelines(args))
    else:
        _replay(args, make_node_pipelines(node, log=lambda m: print(m, file=sys.stderr)), node)
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def cmd_fleet(args) -> int:
    from .fleet.bags import find_bags
    from .fleet.report import compare, load_report, mixed_arithmetic
    from .fleet.run import check_ray_address, read_tags, run_fleet
    from .output_safety import refuse_inputs
    out = Path(args.out)
    at_least_one(args.workers, "--workers", "Ray actors")
    points(args.max_pq_drop, "--max-pq-drop", at_least=0)
    if args.cpus is not None:  # 0: Ray would wait forever for a CPU to run on
        at_least_one(args.cpus, "--cpus", "CPUs (leave it out for all)")
    options = None  # what --params asks of each bag's replay (its cameras, tracking, topics)
    if args.params:
        from .params import replay_options
        options = replay_options(_node_parameters(args), args.node)
    else:
        _fill_option_defaults(args)
    if args.gt_topic:  # each bag scored against this topic (the car's own maps in a record:= bag, say)
        options = {**(options or {}), "gt_topic": args.gt_topic}
    bags = find_bags(args.bags)
    if not bags:
        raise FileNotFoundError(f"no bags found in {', '.join(args.bags)}; expected rosbag2 folders (a metadata.yaml "
                                f"beside .db3 / .mcap files) or loose .mcap / .db3 recordings there")
    # the fleet folder is ours to fill and refill (a rerun resumes in it); it must not be or hold an input,
    # nor be a folder of something else
    refuse_inputs("--out", out, bags + [args.weights, args.onnx, args.baseline, args.tags, args.ego_masks,
                                        *(args.params or [])])
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out '{out}' is a file; expected a folder for the fleet's results")
    if out.exists() and any(out.iterdir()) and not (out / "bags").is_dir():
        raise FileExistsError(f"--out '{out}' holds files of something else (no bags/ of an earlier fleet run); "
                              f"choose an empty or new folder")
    from .inference.backends import check_threshold
    from .model.config import load_config
    check_threshold(args.threshold, load_config(args.model))  # here, not in every worker
    baseline = load_report(args.baseline) if args.baseline else None
    tags = read_tags(args.tags) if args.tags else None
    check_ray_address(args.address)
    if args.ego_masks:
        from .inference.ego_mask import check_folder
        check_folder(args.ego_masks)  # every mask read now: a bad one is one line, not a failure per bag
    report = run_fleet(bags, out, args.model, weights=args.weights, backend=args.backend, device=args.device,
                       threshold=args.threshold, labels=args.labels, onnx=args.onnx, workers=args.workers,
                       cpus=args.cpus, address=args.address, tags=tags, write_bags=args.write_bags,
                       video=args.video, precision=args.precision, ego_masks=args.ego_masks, stq=args.stq,
                       replay_options=options)
    h = report["headline"]
    if h:
        print(f"fleet: PQ {100 * h['pq']:.1f} (things {100 * h['pq_things']:.1f}, stuff {100 * h['pq_stuff']:.1f}), "
              f"mIoU {100 * h['miou']:.1f} on {report['frames_scored']} frames of "
              f"{_count(report['bags_scored'], 'bag')}"
              + (f", against {args.gt_topic}" if args.gt_topic else ""))
        if "stq" in h:
            print(f"fleet: STQ {100 * h['stq']:.1f} (AQ {100 * h['aq']:.1f} over {h['tracks']} labelled tracks)")
    for tag, g in report["groups"].items():
        print(f"  {tag}: PQ {100 * g['pq']:.1f}, mIoU {100 * g['miou']:.1f} ({_count(g['bags'], 'bag')}, "
              f"{g['frames']} frames)")
    mixed = mixed_arithmetic(report)
    if mixed:
        print(f"fleet: {mixed}", file=sys.stderr)
    if report["failed"]:
        print(f"{_count(len(report['failed']), 'bag')} not scored (see report.html)", file=sys.stderr)
    print(f"report: {out / 'report.html'}, {out / 'report.json'}")
    if report["failed"] and len(report["failed"]) == report.get("bags_total"):
        n, first = len(report["failed"]), report["failed"][0]["error"]
        print(f"fleet: none of the {n} bags could be replayed (first: {first})" if n > 1 else
              f"fleet: the bag could not be replayed: {first}", file=sys.stderr)
        return 1  # nothing ran: a script must not take this for a fleet that passed
    if baseline is not None:
        losses = compare(report, baseline, args.max_pq_drop)
        for line in losses:
            print(f"worse than the baseline: {line}", file=sys.stderr)
        if losses:
            return 1
        print(f"no loss over {args.max_pq_drop} PQ points against {args.baseline}")
    return 0


def cmd_evaluate(args) -> int:
    from .atomic import write_json
    from .evaluation.evaluator import format_report
    from .output_safety import check_outputs
    check_outputs({"--json": args.json, "--chart": args.chart, "--confusion": args.confusion,
                   "--per-frame": args.per_frame, "--timeline": args.timeline},
                  [args.bag, args.pred_bag, args.gt_json, args.gt_folder, args.pred_json, args.pred_folder],
                  args.overwrite)
    if (args.per_frame or args.timeline or args.stq) and args.gt_json:
        option = "--per-frame" if args.per_frame else "--timeline" if args.timeline else "--stq"
        raise ValueError(f"{option} scores the frames of bags (--bag / --pred-bag); COCO-panoptic folders are scored "
                         f"as one set")
    if args.gt_json:
        from .evaluation.coco_folders import evaluate_folders
        report = evaluate_folders(args.gt_json, args.gt_folder, args.pred_json, args.pred_folder).report()
    else:
        report = _evaluate_bags(args)
    print(format_report(report))
    if args.json:
        write_json(report, args.json, indent=1)
    _charts(report, args)
    return 0


def _charts(report: dict, args) -> None:
    """The pictures replay and evaluate draw of a report, where asked for."""
    from .evaluation.report import bar_chart, confusion_chart
    if args.chart:
        bar_chart(report, args.chart)
        print(f"per-class chart: {args.chart}")
    if args.confusion:
        confusion_chart(report, args.confusion)
        print(f"confusion matrix: {args.confusion}")


def _evaluate_bags(args) -> dict:
    from .bag.reader import BagReader, label_set_phrase, pairs_by_stamp
    from .bag.recorded_maps import (LABEL_MAPS, found_predictions, label_info_topic, map_messages, named_maps,
                                    panoptic_of_labels, MapTopics)
    from .evaluation.association import AssociationQuality
    from .evaluation.evaluator import Evaluator
    from .evaluation.per_frame import PerFrameScores
    from .messages import FrameError
    from .replay import _semantic_of, map_array, ground_truth_mapping, require_map_topic, write_per_frame
    from .taxonomy import NAMES, get_taxonomy

    if not args.bag:
        raise ValueError("give --bag (with --gt-topic / --pred-topic) or the four COCO-panoptic folder arguments")
    pred_bag = args.pred_bag or args.bag

    def maps_named(reader, topic, option):  # a panoptic topic, or a semantic map scored with its instances twin
        maps = named_maps(reader, topic, option)
        if maps is None:
            require_map_topic(reader, topic, option)
            maps = MapTopics(panoptic=topic)
        return maps

    # the bags' LabelInfo topics say which label set each side is in (when they have them)
    with BagReader(args.bag) as r:
        gt_maps = maps_named(r, args.gt_topic, "--gt-topic")
        gt_label_topic = label_info_topic(gt_maps)  # /ground_truth/label_info, or another run's beside its maps
        gt_labels = r.label_set(gt_label_topic)
    with BagReader(pred_bag) as r:
        pred_maps = maps_named(r, args.pred_topic, "--pred-topic") if args.pred_topic else found_predictions(r)
        pred_label_topic = label_info_topic(pred_maps)  # the node's topic beside the maps
        pred_labels = r.label_set(pred_label_topic)
    # the predictions' label set is the one to score in; ground truth in another is mapped where it can be
    labels, why = next((name, why) for name, why in (
        (args.labels, "--labels"), (pred_labels, pred_label_topic), (gt_labels, gt_label_topic),
        ("camvid", "the default")) if name and (name in NAMES or why == "--labels"))
    if pred_labels and pred_labels != labels:
        raise ValueError(f"the predictions in '{pred_bag}' are in {label_set_phrase(pred_labels)} ({pred_label_topic}), "
                         f"not in the {labels} label set ({why})")
    gt_map = ground_truth_mapping(gt_labels, labels, f"the ground truth in '{args.bag}'", f"the scores ({why}) are in")
    evaluator = Evaluator(get_taxonomy(labels))
    # label maps become panoptic maps in their own label set, before the ground truth's is mapped
    gt_things = get_taxonomy(gt_labels if gt_labels in NAMES else labels).thing_lut

    def panoptic(m, things):
        return panoptic_of_labels(m, things) if m.msgtype == LABEL_MAPS else map_array(m, "pan")

    per_frame = PerFrameScores(evaluator.taxonomy) if args.per_frame or args.timeline else None
    association = AssociationQuality(evaluator.taxonomy.thing_lut) if args.stq else None
    unmatched, unpaired, unscored, first_reason = [0, 0], [0], 0, None
    # both bags are read side by side in stamp order: memory stays flat however long they are
    for g, p in pairs_by_stamp(map_messages(args.bag, gt_maps, unpaired), map_messages(pred_bag, pred_maps, unpaired),
                               unmatched=unmatched):
        stamp = g.stamp_ns
        try:  # a frame that cannot be scored is counted, with the first reason, not scored as if valid
            g, p = panoptic(g, gt_things), panoptic(p, evaluator.taxonomy.thing_lut)  # both must be panoptic maps
            g = gt_map.map_panoptic(g) if gt_map else g
            evaluator.add(g, _semantic_of(g), p, _semantic_of(p))
            if association:
                association.add(g, p)
            if per_frame:
                per_frame.add(stamp, g, _semantic_of(g), p, _semantic_of(p))
        except (FrameError, ValueError) as e:
            unscored += 1
            first_reason = first_reason or f"at {stamp}: {e}"
    if unpaired[0]:
        print(f"{unpaired[0]} semantic or instances maps had no twin of the same header stamp and were not scored",
              file=sys.stderr)
    if unmatched[0] or unmatched[1]:
        print(f"{unmatched[0]} ground-truth frames ({gt_maps.name}) matched no prediction and {unmatched[1]} "
              f"predictions ({pred_maps.name}) matched no ground truth: frames are paired by header stamp, exactly "
              f"(a stamp of 0, or one two frames of a topic share, pairs nothing)",
              file=sys.stderr)
    if unscored:
        print(f"{unscored} frame pairs not scored (first {first_reason})", file=sys.stderr)
    if not evaluator.frames:
        raise ValueError("no frame scored: " + (
            f"none of the {unscored} frame pairs of {gt_maps.name} and {pred_maps.name} could be scored (first "
            f"{first_reason})" if unscored else
            f"{gt_maps.name} in '{args.bag}' and {pred_maps.name} in '{pred_bag}' share no header stamp"))
    if not evaluator.labelled_pixels:  # scores of 0 that would read as a model that sees nothing
        raise ValueError(f"no frame scored: the ground truth ({gt_maps.name}) of the {evaluator.frames} frame pairs "
                         f"labels no pixel (all void)")
    report = evaluator.report()
    if association:
        report["tracking"] = association.result(report["miou"])
    if per_frame:
        write_per_frame(per_frame, args.per_frame, args.timeline, report, print)
    return report


def cmd_demo(args) -> int:
    """Convert CamVid val to a bag, replay it with the default model, print PQ / mIoU / fps."""
    from .bag.convert import convert
    from .training.data import find_camvid

    camvid = find_camvid(args.camvid)
    out = Path(args.out)
    bag = out / "camvid_val"
    args.bag, args.out, args.image_topic, args.gt_topic = str(bag), str(out / "camvid_val_panoptic"), None, None
    args.video, args.metrics, args.chart = str(out / "overlay.mp4"), str(out / "metrics.json"), str(out / "per_class.png")
    args.confusion = str(out / "confusion.png")
    args.timeline = str(out / "timeline.png")
    args.storage = "mcap"
    # all seven outputs are checked before anything is written: an earlier demo's are replaced only
    # with --overwrite (and its bags only if they are ours), never reused as they are
    from .output_safety import check_outputs, refuse_foreign_folder
    ours = {Path(p).name for p in (bag, args.out, args.video, args.metrics, args.chart, args.confusion, args.timeline)}
    refuse_foreign_folder("--out", out, lambda name: name.removesuffix(".lock") in ours, "the demo's outputs")
    check_outputs({"the demo's input bag": bag}, [camvid], args.overwrite, bags={"the demo's input bag"})
    _check_replay_outputs(args, [camvid, bag, args.weights, args.onnx])
    convert("camvid", camvid, bag, split="val", storage="mcap", max_frames=args.max_frames, overwrite=args.overwrite)
    _replay(args, _pipelines(args))
    print(f"outputs in {out}: output bag camvid_val_panoptic/, overlay.mp4, metrics.json, per_class.png, confusion.png, "
          f"timeline.png")
    return 0


def _export_size(cfg, size: str):
    if not size:
        return cfg.input.canvas
    # width first, as --crop, bench_first_frame's --size and camera modes (640x480) write a frame size
    w, h = number_pair(size, "x", int, "--size", "WxH in pixels (e.g. 480x384)")
    d = max(1, cfg.input.size_divisibility)
    if min(h, w) < d or h % d or w % d:  # frames are padded to such a canvas, so no other can be fed
        raise ValueError(f"--size {size}: expected WxH with sides that are positive multiples of {d} (model "
                         f"{cfg.name} pads frames to them; its default canvas is {cfg.input.canvas[1]}x"
                         f"{cfg.input.canvas[0]})")
    largest = cfg.input.canvas[1]  # no side of a resized frame exceeds max_size (padded): a larger canvas is padding
    if max(h, w) > largest:
        raise ValueError(f"--size {size}: expected sides of at most {largest} (model {cfg.name} resizes every frame "
                         f"to at most {cfg.input.max_size} pixels a side and pads it to multiples of {d}; a larger "
                         f"canvas would only be padding)")
    return h, w


def cmd_export(args) -> int:
    from .export import export_onnx, mask_graph_path
    from .model.checkpoint import load_model
    from .model.config import load_config

    from .output_safety import check_outputs
    out = Path(args.out)
    if out.suffix.lower() != ".onnx":  # a graph named otherwise is not found as one (models/<name>.onnx, --onnx)
        raise ValueError(f"--out '{out}': expected a file name ending in .onnx (its mask graph is written beside it "
                         f"as <name>.masks.onnx)")
    check_outputs({"--out": out, "its mask graph": mask_graph_path(out)}, [args.weights, args.calib], args.overwrite)
    if args.precision == "int8":
        if not args.calib:
            raise ValueError("--precision int8 needs --calib BAG_OR_IMAGE_DIR (real frames to calibrate on)")
        at_least_one(args.calib_frames, "--calib-frames", "frames to calibrate on (32 is the default)")
    cfg = load_config(args.model)
    size = _export_size(cfg, args.size)
    model = load_model(cfg, args.weights)
    if args.precision == "fp32":
        detect, masks = export_onnx(model, size, out)
    else:
        import shutil
        import tempfile

        from .atomic import atomic_path
        from .quantize import quantize_int8
        with tempfile.TemporaryDirectory() as d:  # the fp32 graphs are only a step towards the int8 one
            fp32 = Path(d) / "fp32.onnx"
            export_onnx(model, size, fp32)
            # into the scratch folder first: calibration that fails leaves no graph behind
            # a graph for an x86 CPU without VNNI is what the graph cache makes there: 7-bit weights,
            # matrix products in float
            int8 = quantize_int8(fp32, Path(d) / "int8.onnx", cfg, size, args.calib, args.calib_frames,
                                 args.calib_method, args.reduce_range, float_matmuls=args.reduce_range)
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(mask_graph_path(out)) as tmp:  # the mask head stays fp32
                shutil.copyfile(mask_graph_path(fp32), tmp)
            # last: the detect graph, so a complete-looking int8 graph always has its mask graph
            with atomic_path(out) as tmp:
                shutil.copyfile(int8, tmp)
        detect, masks = out, mask_graph_path(out)
    print(f"wrote {detect} and {masks} ({args.precision}, input {size[1]}x{size[0]} WxH)")
    return 0


def cmd_calibrate(args) -> int:
    import tempfile

    import onnx

    from .export import export_onnx
    from .int8_scales import activation_scales, default_scales_path, save_scales
    from .model.checkpoint import load_model, require_weights_file, weights_of
    from .model.config import load_config
    from .output_safety import check_outputs
    from .quantize import float_nodes_of, quantize_int8

    cfg = load_config(args.model)
    source = weights_of(cfg, args.weights)
    out = Path(args.out) if args.out else default_scales_path(source)
    check_outputs({"--out": out}, [source, args.calib], args.overwrite)
    at_least_one(args.calib_frames, "--calib-frames", "frames to calibrate on (32 is the default)")
    model = load_model(cfg, require_weights_file(source))
    size = cfg.input.canvas
    with tempfile.TemporaryDirectory() as d:  # the graphs are only a step towards the scales
        fp32, _ = export_onnx(model, size, Path(d) / "fp32.onnx")
        # every activation quantized, matrix products too: the scales serve any CPU's graphs
        float_nodes_of(onnx.load(str(fp32)), args.keep_float)  # a prefix naming no node: refused before calibrating
        int8 = quantize_int8(fp32, Path(d) / "int8.onnx", cfg, size, args.calib, args.calib_frames,
                             args.calib_method, args.reduce_range)
        scales = activation_scales(onnx.load(str(int8)))
    save_scales(out, scales, source, 7 if args.reduce_range else 8,
                {"source": str(args.calib), "max_frames": args.calib_frames, "method": args.calib_method,
                 "canvas": list(size)}, float_nodes=args.keep_float)
    print(f"wrote {out}: {len(scales)} activation scales for {source}; with them `--backend auto` runs int8 graphs "
          f"on OpenVINO, made for each input size")
    return 0


def cmd_ship(args) -> int:
    from .model.checkpoint import load_model, require_weights_file, save_checkpoint, weights_of
    from .model.config import load_config
    from .output_safety import check_outputs

    cfg = load_config(args.model)
    source = require_weights_file(weights_of(cfg, args.weights))
    out = Path(args.out)
    if out.suffix != ".pth":
        raise ValueError(f"--out '{out}': expected a file name ending in .pth (a panoptic_node checkpoint)")
    check_outputs({"--out": out}, [source], args.overwrite)
    model = load_model(cfg, source)  # through the normal loader: a file it refuses is never shipped
    save_checkpoint(model, out, half=True)
    print(f"wrote {out}: model '{cfg.name}' in float16 ({out.stat().st_size / 1e6:.1f} MB, from "
          f"{source.stat().st_size / 1e6:.1f} MB), widened to float32 on load; {scales_state(out)}")
    return 0


def scales_state(weights: Path) -> str:
    """What --backend auto will make of the int8 scales beside freshly written weights."""
    from .int8_scales import (ScalesForOtherWeights, calibrate_command, default_scales_path, load_scales,
                              recalibrate_command)
    scales = default_scales_path(weights)
    if not scales.exists():
        return f"int8 needs its scales: {calibrate_command(weights)}"
    recalibrate = recalibrate_command(weights)
    try:
        load_scales(scales, weights)  # the same weights shipped again keep their scales
    except ScalesForOtherWeights:
        return f"{scales} belongs to other weights and --backend auto runs fp32 until {recalibrate}"
    except (OSError, ValueError) as e:  # as --backend auto takes them (backends.int8_scales_for): unusable, so fp32
        return f"{str(e).split(';')[0]}, so --backend auto runs fp32 until {recalibrate}"  # e names the file
    return f"{scales} belongs to these weights: --backend auto runs int8"


def cmd_build_engine(args) -> int:
    from .model.config import load_config
    log = lambda m: print(m, file=sys.stderr)
    if args.onnx:
        from .inference.tensorrt_backend import TensorRTBackend
        TensorRTBackend(args.onnx, load_config(args.model), precision=args.precision, log=log)
    else:
        from .inference.backends import compile_torch_tensorrt
        compile_torch_tensorrt(load_config(args.model), args.weights, precision=args.precision, log=log)
    print("engine ready")
    return 0


def cmd_doctor(args) -> int:
    from .doctor import PROBLEM, format_checks, run_checks
    if args.params and (args.model or args.weights):
        raise ValueError("doctor: --params names the model and weights the node runs; leave out --model / --weights")
    if args.listen is not None and not args.listen > 0:
        raise ValueError(f"--listen {args.listen:g}: expected the seconds to listen to the cameras, more than 0")
    if args.image_topics and args.listen is None:
        raise ValueError("doctor: --image-topics says where --listen hears the cameras; give --listen too")
    checks = run_checks(args.model or "street_lite0", args.weights, params=args.params, node_name=args.node,
                        listen_s=args.listen, image_topics=args.image_topics)
    print(format_checks(checks))
    problems = [c.name for c in checks if c.verdict == PROBLEM]
    if problems:
        print(f"{len(problems)} problem(s): {', '.join(problems)}", file=sys.stderr)
    return 1 if problems else 0


def cmd_bench(args) -> int:
    import runpy
    bench = Path(__file__).resolve().parents[1] / "bench" / f"bench_{args.which}.py"
    if not bench.is_file():
        raise FileNotFoundError(f"benchmark script '{bench}' not found (benchmarks run from a source checkout)")
    sys.argv = [str(bench)] + args.rest
    sys.path.insert(0, str(bench.parent))  # as `python bench/bench_x.py` has it: a script imports its neighbours
    runpy.run_path(str(bench), run_name="__main__")
    return 0


def _add_replay_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-frames", type=int, help="stop after N frames (a replay counts every camera's)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


PER_FRAME_HELP = ("CSV of each scored frame's own scores (stamp, PQ, PQ things / stuff, mIoU, pixel accuracy in "
                  "percent; segments in the ground truth, predicted ones PQ counts, i.e. not lying on void, and "
                  "matched): sort it to find the worst frames")


TIMELINE_HELP = ("picture (PNG) of each scored frame's PQ and mIoU along the drive, the drive's own as dashed "
                 "lines, the three frames of lowest PQ marked with their stamps")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(prog="panoptic-node", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("infer", help="run the pipeline on image files")
    p.add_argument("images", nargs="+", help="PNG / JPEG files, or folders of them (taken in name order)")
    p.add_argument("--out", default="out/infer", help="folder of the results: per image <stem>_panoptic.png, "
                   "_semantic.png, _instances.png, _overlay.png, and panoptic.json (default: out/infer)")
    p.add_argument("--overwrite", action="store_true", help="replace results an earlier run wrote in --out")
    p.add_argument("--track", action="store_true", help="the images are one camera's frames in time order (as "
                   "given, a folder's in name order): each object keeps its instance id from image to image, as "
                   "the node keeps it (by default each image's things are numbered 1..N)")
    _add_model_args(p)
    _add_threads_arg(p)
    _add_inference_workers_arg(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("convert", help="dataset folder -> rosbag2 with camera and ground-truth topics; a camera "
                                       "clip (video) -> rosbag2 with its frames")
    p.add_argument("dataset", choices=["camvid", "cityscapes", "kitti", "kitti-step", "video"])
    p.add_argument("src", help="the dataset folder, or the video file (mp4, mov, mkv, avi)")
    p.add_argument("--out", required=True)
    p.add_argument("--split")
    p.add_argument("--sequence", help="kitti-step: the sequence to convert (e.g. 0002); one bag per sequence")
    p.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"])
    _add_replay_args(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("recover", help="the complete messages of a recording cut short (an .mcap without footer "
                                       "or metadata.yaml, a .db3 without metadata.yaml, a split recording missing "
                                       "a file) -> a new, valid bag")
    p.add_argument("src", help="the .mcap / .db3 file, or the bag folder holding it (every file of a split "
                               "recording, <name>_0, <name>_1, ..., in order)")
    p.add_argument("--out", required=True, help="the new bag folder")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("replay", help="run the pipeline over a bag: output bag, summary, video, metrics")
    p.add_argument("bag")
    p.add_argument("--out", help="output bag (the node's topics)")
    p.add_argument("--image-topic", action="append",
                   help="a camera topic to replay (repeat for several; default: every camera image topic in the bag, "
                        "each with its outputs under its own namespace)")
    p.add_argument("--gt-topic", help="ground truth panoptic topic (default /ground_truth/panoptic if present; scored "
                                      "when one camera is replayed), or a recorded run's <camera>/panoptic/semantic"
                                      "[/compressed], scored with its instances twin")
    p.add_argument("--video", help="overlay video (.mp4); several cameras side by side")
    p.add_argument("--metrics", help="summary + metrics JSON")
    p.add_argument("--chart", help="per-class bar chart PNG")
    p.add_argument("--confusion", help="confusion matrix PNG (where each class's pixels went)")
    p.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"])
    p.add_argument("--per-frame", help=PER_FRAME_HELP)
    p.add_argument("--timeline", help=TIMELINE_HELP)
    p.add_argument("--start", type=float, help="replay from this many seconds after the bag's first message (as "
                                               "ros2 bag play --start-offset counts)")
    p.add_argument("--duration", type=float, help="replay this many seconds of the bag (from --start)")
    p.add_argument("--ego-masks", help="folder of ego masks, one 8-bit PNG per camera named after its namespace "
                                       "(/camera/front -> camera_front.png), 0 where the car itself is: void in "
                                       "every output and left out of the scores, as the node's ego_mask_dir")
    p.add_argument("--no-tracking", action="store_true",
                   help="number each frame's things 1..N anew (the node's track_instances: false); by default an "
                        "object keeps its instance id from frame to frame, as the node keeps it")
    p.add_argument("--stq", action="store_true",
                   help="the ground truth's instance ids are track ids (a KITTI-STEP bag from `convert kitti-step`): "
                        "also score tracking, STEP's AQ and STQ")
    _add_params_args(p, "replay what the node runs with it, its model, backend, threshold, labels, ego masks, "
                        "tracking, the topics it publishes and its cameras' topics; options given here win over "
                        "the file")
    _add_model_args(p)
    _add_replay_args(p)
    _add_threads_arg(p)
    _add_inference_workers_arg(p)
    # None: not given (--params then takes the file's value); the defaults are filled in cmd_replay
    p.set_defaults(func=cmd_replay, **{dest: None for dest in OPTION_DEFAULTS}, model=None)

    p = sub.add_parser("evaluate", help="PQ / mIoU from two bag topics or COCO-panoptic folders")
    p.add_argument("--bag")
    p.add_argument("--pred-bag", help="bag with the prediction topic (default: --bag)")
    p.add_argument("--gt-topic", default="/ground_truth/panoptic")
    p.add_argument("--pred-topic", help="the predictions' panoptic maps (default: the bag's one "
                                        "<camera>/panoptic/panoptic topic)")
    p.add_argument("--labels", help="label set of the bag topics (default: what their label_info topics say, "
                                    "else camvid)")
    p.add_argument("--gt-json")
    p.add_argument("--gt-folder")
    p.add_argument("--pred-json")
    p.add_argument("--pred-folder")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--chart", help="per-class bar chart PNG")
    p.add_argument("--confusion", help="confusion matrix PNG (where each class's pixels went)")
    p.add_argument("--per-frame", help=PER_FRAME_HELP)
    p.add_argument("--timeline", help=TIMELINE_HELP)
    p.add_argument("--stq", action="store_true", help="the ground truth's instance ids are track ids (KITTI-STEP): "
                                                      "also score how the predicted ids follow them (AQ, STQ)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json / --chart / --confusion / "
                                                            "--per-frame / --timeline")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("fleet", help="replay and score many bags on Ray (local or a cluster): one exact fleet "
                                     "score, per bag and per group, report.html / report.json, a baseline gate")
    p.add_argument("bags", nargs="+", help="bag folders, folders of bags, globs, or .txt lists of them")
    p.add_argument("--out", required=True, help="results folder (a rerun resumes in it)")
    p.add_argument("--workers", type=int, default=2, help="Ray actors, each with the model loaded once")
    p.add_argument("--cpus", type=int, help="CPUs for a local Ray (default: all)")
    p.add_argument("--address", help="an existing Ray cluster (Ray's address forms, e.g. ray://head:10001 or auto)")
    p.add_argument("--tags", help="CSV of bag,tag to group bags by (default: the folder a bag lies in)")
    p.add_argument("--baseline", help="an earlier report.json: exit 1 when the fleet, a group or a class loses more "
                                      "than --max-pq-drop PQ points")
    p.add_argument("--max-pq-drop", type=float, default=1.0,
                   help="PQ points the fleet, a group or a class may lose against --baseline (with --stq, the STQ "
                        "points the fleet or a group may lose too)")
    p.add_argument("--write-bags", action="store_true", help="also write each bag's output bag (out/bags_out)")
    p.add_argument("--video", action="store_true", help="also write each bag's overlay video (out/videos)")
    p.add_argument("--ego-masks", help="folder of ego masks (as replay --ego-masks) applied to every bag's cameras; "
                                       "other masks score every bag again")
    p.add_argument("--gt-topic", help="score every bag against this topic instead of /ground_truth/panoptic: a "
                                      "panoptic map, or a recorded run's <camera>/panoptic/semantic[/compressed] "
                                      "with its instances twin (car.launch.py record:= bags: a new model against "
                                      "what the car's node said, drive by drive)")
    p.add_argument("--stq", action="store_true", help="the bags' ground-truth ids are track ids (KITTI-STEP, one "
                                                      "sequence per bag): also score tracking, AQ and STQ")
    _add_params_args(p, "every bag replayed as replay --params replays it, its cameras' topics among them; options "
                        "given here win over the file; a change to what the replay runs scores every bag again")
    _add_model_args(p)
    p.set_defaults(func=cmd_fleet, **{dest: None for dest in OPTION_DEFAULTS if dest != "threads"}, model=None)

    p = sub.add_parser("demo", help="CamVid val -> bag -> replay with the default model -> PQ, mIoU, fps, video")
    p.add_argument("--camvid", help="CamVid folder (default ../shared/data/camvid)")
    p.add_argument("--out", default="out/demo")
    _add_model_args(p)
    _add_replay_args(p)
    _add_threads_arg(p)
    _add_inference_workers_arg(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("export", help="ONNX export (detect graph + kept-query mask graph), fp32 or int8 QDQ")
    p.add_argument("--model", default="street_lite0")
    p.add_argument("--weights")
    p.add_argument("--out", required=True)
    p.add_argument("--size", help="static input canvas WxH, e.g. 480x384 (default from the model config)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8"])
    p.add_argument("--calib", help="bag or image folder with frames to calibrate int8 on")
    p.add_argument("--calib-frames", type=int, default=32)
    p.add_argument("--overwrite", action="store_true", help="replace an existing graph")
    p.add_argument("--calib-method", default="minmax", choices=["minmax", "entropy", "percentile"])
    p.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=False,
                   help="the graph for x86 CPUs without VNNI: 7-bit int8 weights (OpenVINO's and ONNX Runtime's "
                        "int8 kernels saturate on 8-bit weights there) and matrix products left in float (faster "
                        "there than int8 ones); the default, 8-bit weights and int8 matrix products, suits "
                        "TensorRT, VNNI and ARM")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("calibrate", help="int8 activation scales of a model's weights, calibrated on real frames: "
                                         "the file beside the weights that makes the CPU default int8")
    p.add_argument("--model", default="street_lite0")
    p.add_argument("--weights", help="weights to calibrate (default: the model config's own)")
    p.add_argument("--calib", required=True, help="bag or image folder with frames to calibrate on")
    p.add_argument("--calib-frames", type=int, default=32)
    p.add_argument("--calib-method", default="minmax", choices=["minmax", "entropy", "percentile"])
    p.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=False,
                   help="7-bit int8 weights on every CPU (the graph cache takes 7 bits anyway on x86 CPUs "
                        "without VNNI, whose int8 kernels saturate on 8-bit weights)")
    p.add_argument("--keep-float", action="append", default=[], metavar="NODE_PREFIX",
                   help="leave this part of the graph float in every int8 graph made from the scales (a module "
                        "path such as /transformer/decoder; repeatable; bench/bench_int8_layers.py says which "
                        "part's int8 costs accuracy)")
    p.add_argument("--out", help="scales file (default: <weights>.int8.json beside the weights, where "
                                 "--backend auto finds it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing scales file")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("ship", help="a training run's weights -> the file to ship: float16 storage (half the size), "
                                    "the model's config inside; refused when a weight does not fit float16")
    p.add_argument("--model", default="street_lite0", help="a model name, YAML config, or the checkpoint train wrote "
                                                           "(runs/NAME/last.pth: its config and weights)")
    p.add_argument("--weights", help="weights to ship (default: the model's own)")
    p.add_argument("--out", required=True, help="the float16 checkpoint to write (.pth)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    p.set_defaults(func=cmd_ship)

    p = sub.add_parser("build-engine", help="build (or check) the cached TensorRT engines: from an exported graph, "
                                            "or without one from the PyTorch weights via torch_tensorrt")
    p.add_argument("onnx", nargs="?", help="exported graph (omit to compile the PyTorch model with torch_tensorrt)")
    p.add_argument("--model", default="street_lite0")
    p.add_argument("--weights", help="PyTorch weights for the torch_tensorrt path (default: the model's own)")
    p.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "int8"])
    p.set_defaults(func=cmd_build_engine)

    benches = ["pipeline", "evaluation", "backends", "resolution", "street_ablation", "node", "fleet", "shapes",
               "int8", "int8_layers", "things", "semantic_head", "semantic_network", "restyle", "run_ensemble",
               "first_frame", "lifecycle", "tracking", "map_compression", "training_frames", "drive_adaptation",
               "drive_self_training"]
    p = sub.add_parser("doctor", help="what this machine will run (backend, precision, graphs, ROS 2, Fast DDS) "
                                      "and what keeps it from running well; exit 1 when the model cannot run")
    p.add_argument("--model", help="model name, YAML or checkpoint (default: street_lite0)")
    p.add_argument("--weights", help="weights file (default: the model config's own)")
    _add_params_args(p, "checked as the node reads it, with its model, backend, ego masks and cameras (the speed "
                        "measured is the node's pipeline, shared by its cameras)")
    p.add_argument("--listen", type=float, nargs="?", const=3.0, metavar="SECONDS",
                   help="also hear the node's cameras on the live ROS 2 graph (default 3 s), before it starts: who "
                        "publishes each input topic, type, QoS, rate, frame size and encoding, the stamps' age by "
                        "this machine's clock, and what would leave the node with no frame")
    p.add_argument("--image-topics", nargs="+", metavar="TOPIC",
                   help="with --listen: each camera heard on the topic its driver publishes, one per camera in the "
                        "cameras' order, as car.launch.py's image_topics:= remaps it (its camera_info beside it)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("bench", help=f"run a benchmark from bench/ ({', '.join(benches)})")
    p.add_argument("which", choices=benches)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("train", help="train a model on CamVid (or another dataset folder)")
    p.add_argument("--config", default="street_lite0")
    p.add_argument("--data", help="dataset folder (CamVid default: ../shared/data/camvid)")
    p.add_argument("--dataset", default="camvid", choices=["camvid", "cityscapes", "kitti"],
                   help="folder layout (cityscapes / kitti: the layouts `convert` reads; their labels become the "
                        "config's, e.g. CamVid's classes for street_lite0, and frames are read as batches need them)")
    p.add_argument("--out", default="runs/street_lite0")
    p.add_argument("--epochs", type=int, default=36)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--crop", default="480x352", help="training crop WxH")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--lr-backbone", type=float, default=9e-5)
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW's decoupled weight decay (DETR's 1e-4)")
    p.add_argument("--val-every", type=int, default=3)
    p.add_argument("--stop-below", type=float, default=0.0, metavar="MIOU",
                   help="end the run once the mean held-out mIoU (percent) of the evaluations from --stop-from on is "
                        "under MIOU (an experiment's rule, applied as each evaluation lands; 0: never)")
    p.add_argument("--stop-from", type=int, default=1, metavar="EPOCH",
                   help="the first epoch whose evaluation --stop-below judges (default 1)")
    p.add_argument("--stop-when", default="under",
                   help="under: stop once that mean is under MIOU; unreachable: only once it could not reach MIOU even "
                        "with every evaluation still to come at the run's best so far (one evaluation moves by a point)")
    p.add_argument("--stop-after", type=int, default=0, metavar="EPOCH",
                   help="end this run after that epoch, the schedule still spanning --epochs (a recipe that keeps a "
                        "mid-schedule epoch's weights, or a long run split across sittings: --resume continues it; "
                        "0: run to --epochs)")
    p.add_argument("--train-drives", help="CamVid drives that train, from both splits (e.g. 0016E5,0001TP); "
                   "default: CamVid's train split")
    p.add_argument("--val-drives", help="CamVid drives held out for validation (e.g. 0006R0), or 'none' "
                   "(a release trained on every labelled frame); default: CamVid's val split")
    p.add_argument("--scale", default="0.75,1.5", help="random scale range LOW,HIGH before the crop (Cityscapes' "
                   "2048x1024 frames: e.g. 0.25,0.5 to show streets near the size CamVid's 480x360 frames do)")
    # the names of training.augment.PHOTOMETRIC (not imported here: scipy and the data code would load for --help)
    p.add_argument("--photometric", default="basic", choices=["none", "basic", "strong", "lighting", "dusk"],
                   help="colour augmentation: basic = +-20%% brightness / contrast / saturation; strong adds "
                   "gamma, colour temperature, blur and noise, with wider ranges (for new drives, dusk, glare); "
                   "lighting = strong's brightness, contrast and gamma only (dusk light, true colours); dusk = basic, "
                   "a third of the frames darkened first as dusk darkens a street")
    p.add_argument("--ema", type=float, default=0.0,
                   help="evaluate and save a moving average of the weights with this decay (0 = off; e.g. 0.998)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, the order and the augmentation "
                   "(another seed of the same recipe shows how much of a difference is noise)")
    p.add_argument("--copy-paste", type=float, default=0.0,
                   help="probability that a training frame first gets the objects (cars, pedestrians, cyclists) of "
                        "another training frame pasted in, each with probability 1/2 (0 = off)")
    p.add_argument("--rotate", type=float, default=0.0, metavar="DEG",
                   help="turn each training frame about its centre by an angle drawn from [-DEG, DEG] degrees, as a "
                        "camera's roll would (0 = off)")
    p.add_argument("--mask-loss", default="focal", metavar="{focal,bce}",
                   help="the masks' per-pixel loss beside dice: focal (DETR's, weight 20) or bce (Mask2Former's binary "
                        "cross-entropy, weight 5)")
    p.add_argument("--no-object-weight", type=float, default=0.1, metavar="W",
                   help="the class loss's weight of 'no object' for queries matched to no segment (DETR's eos_coef, "
                        "0.1; a labelled class weighs 1): lower lets the queries claim more")
    p.add_argument("--query-groups", type=int, default=1, metavar="K",
                   help="train K groups of object queries, each matched to the labels on its own and attending only "
                        "to itself (Group DETR); the saved model keeps its own group alone, inference is unchanged "
                        "(1 = off)")
    p.add_argument("--stuff-queries", action="store_true",
                   help="match each stuff class's segment always to a query of its own (the first queries, one a "
                        "class) and the things to the others, instead of every pair by cost; inference is unchanged")
    p.add_argument("--class-mix", type=float, default=0.0, metavar="P",
                   help="probability that a training frame then gets half the classes of a frame of another training "
                        "drive pasted in, every pixel of them (ClassMix across drives; 0 = off)")
    p.add_argument("--semantic-aux", type=float, default=0.0,
                   help="weight of a training-only per-pixel class loss on the pixel embeddings (0 = off)")
    p.add_argument("--semantic-aux-balance", type=float, default=0.0, metavar="POWER",
                   help="weigh the --semantic-aux loss's pixels by (median class frequency / their class's pixel "
                        "frequency in the training frames) ** POWER, the set losses unchanged (0 = off; 1 = SegNet's "
                        "median frequency balancing)")
    p.add_argument("--semantic-map", type=float, default=0.0, metavar="WEIGHT",
                   help="weight of a per-pixel class loss on the queries' own semantic map (MaskFormer's semantic "
                        "inference: each class's probability times each query's mask, summed over the queries), "
                        "which reaches the queries' classes and masks; nothing is added to the model (0 = off)")
    p.add_argument("--semantic-map-balance", type=float, default=0.0, metavar="POWER",
                   help="weigh the --semantic-map loss's pixels as --semantic-aux-balance weighs the auxiliary "
                        "loss's (0 = off; 1 = SegNet's median frequency balancing)")
    p.add_argument("--mixstyle", type=float, default=0.0,
                   help="probability per batch of MixStyle: the frames' feature statistics (style) mixed in the "
                        "backbone's stride-4 and stride-8 features, for new drives (0 = off; 0.5 is the paper's)")
    p.add_argument("--freeze-backbone", type=int, default=0, metavar="STRIDE",
                   help="keep the backbone's ImageNet weights up to this stride (4, 8 or 16: the stem and every block "
                        "through it), training only what lies deeper; 0 (default) trains it all")
    p.add_argument("--class-balance", type=float, default=0.0, metavar="POWER",
                   help="weigh each class's losses by (median class frequency / its pixel frequency in the training "
                        "frames) ** POWER, so rare classes (pole, sign, pedestrian) count more (0 = off; 1 = SegNet's "
                        "median frequency balancing, 0.5 a softer one)")
    p.add_argument("--train-every", type=int, default=1, metavar="N",
                   help="train on every N-th frame of each training drive only (1, default: every frame): a smaller "
                        "training set of the same streets, to measure what more frames are worth")
    p.add_argument("--drive-balance", type=float, default=0.0, metavar="POWER",
                   help="give each CamVid training drive a share of every epoch's frames in proportion to its frame "
                        "count ** (1 - POWER): 0 (default) draws frames uniformly, 1 gives every drive the same share, "
                        "so a street seen in few frames is not drowned by one seen in many")
    p.add_argument("--head-first", type=int, default=0, metavar="N",
                   help="the first N epochs train the head alone on the backbone's starting (ImageNet) weights, then "
                        "the whole network, the backbone's rate warmed up again (LP-FT; 0, default: all from the "
                        "start)")
    p.add_argument("--init", help="start from these weights instead of ImageNet's backbone: a checkpoint of the same "
                   "network, e.g. trained on Cityscapes (--dataset cityscapes); a class head for another label set "
                   "starts fresh")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pth, "
                   "with the same settings")
    p.add_argument("--overwrite", action="store_true", help="replace the training run already in --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare-runs", help="training runs side by side on their held-out evaluations, each judged "
                       "against a baseline run by a rule fixed beforehand")
    p.add_argument("runs", nargs="+", help="run folders (what train --out wrote)")
    p.add_argument("--baseline", required=True, help="the run folder of the recipe to beat")
    p.add_argument("--from-epoch", type=int, default=24, help="mean mIoU over the evaluations from this epoch on "
                   "(one evaluation is noisy by a point or more)")
    p.add_argument("--last", type=int, help="mean mIoU over each run's last N evaluations instead (runs of "
                   "different schedules, each judged on its own end)")
    p.add_argument("--min-miou-gain", type=float, default=1.0, help="mean mIoU points a change must gain")
    p.add_argument("--max-pq-drop", type=float, default=0.3, help="PQ points the last evaluation may lose")
    p.add_argument("--pool-seeds", action="store_true", help="judge each recipe on the mean of its runs "
                   "(settings equal but for --seed), shown with their lowest and highest; one run on a new "
                   "drive moves by points from seed to seed")
    p.add_argument("--per-class", action="store_true", help="also each class's IoU over the same evaluations, "
                   "with its difference from the baseline's")
    p.add_argument("--chart", help="PNG of the held-out mIoU and PQ curves")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --chart")
    p.set_defaults(func=cmd_compare_runs)
    for p in sub.choices.values():  # after the sub-command too: panoptic-node replay ... --debug
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    return parser


# options naming ROS names, where a leading ~ is the node's private namespace, not a home folder
ROS_NAME_OPTIONS = {"image_topic", "image_topics", "gt_topic", "pred_topic", "node"}


def expand_home(args) -> None:
    """`~` at the start of a path, expanded as the shell would have: it leaves `--out=~/x` (one word with
    `=`) alone, and the run then wrote into a folder named `~` in the current one."""
    for name, value in vars(args).items():
        if name in ROS_NAME_OPTIONS:
            continue
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, name, os.path.expanduser(value))
        elif isinstance(value, list) and any(isinstance(v, str) and v.startswith("~") for v in value):
            setattr(args, name, [os.path.expanduser(v) if isinstance(v, str) else v for v in value])


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a scheduler ending the job) or SIGHUP (the terminal or ssh session the job ran in
    closed): unwound as Ctrl-C is, so what was half-written stays under its .partial name and the output's
    lock goes; Python's default would end the process where it stood."""

    def __init__(self, signum: int):
        super().__init__()
        self.signum = signum


def _terminate(signum, frame):
    raise Terminated(signum)


# the options that name an output, in the order a disk-full line names them
OUTPUT_OPTIONS = ("out", "video", "metrics", "chart", "confusion", "per_frame", "timeline")


def main(argv=None) -> int:
    import signal
    import threading
    from .ending_signals import ending_signals
    args = build_parser().parse_args(argv)
    expand_home(args)
    in_main_thread = threading.current_thread() is threading.main_thread()  # where signal handlers may be set
    previous = {sig: signal.signal(sig, _terminate) for sig in ending_signals()} if in_main_thread else {}
    try:
        if args.command in ("infer", "replay", "demo"):  # before anything is read or written (demo converts first)
            from .inference.backends import check_threads
            if args.threads is not None:  # replay: None when not given (--params may set num_threads)
                check_threads(args.threads, "--threads")
            if getattr(args, "inference_workers", None) is not None:
                at_least_one(args.inference_workers, "--inference-workers", "pipeline(s)")
        return args.func(args)
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Terminated) else signal.SIGINT
        how = f"terminated ({signal.Signals(signum).name})" if isinstance(e, Terminated) else "interrupted"
        print(f"panoptic-node {args.command}: {how}; outputs not finished are left under .partial names",
              file=sys.stderr)
        return 128 + signum  # as a shell reports a process ended by the signal: 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP
    except Exception as e:
        if args.debug:
            raise
        # bad input or configuration: one line that says what was wrong, no traceback. Anything else
        # (a bug of ours) also gets one line, with where to look
        expected = isinstance(e, (ValueError, OSError, RuntimeError, ImportError))
        what = f"{e}" if expected and str(e) else f"{type(e).__name__}: {e}"
        if isinstance(e, ModuleNotFoundError) and e.name:  # a dependency this Python lacks: say what provides it
            from .errors import missing_module
            what = missing_module(e)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:  # "[Errno 28] No space left" names no disk
            from .errors import no_space
            what = no_space(e, [getattr(args, name, None) for name in OUTPUT_OPTIONS])
        hint = "" if expected else " (an unexpected error: rerun with --debug for the traceback and report it)"
        print(f"panoptic-node {args.command}: error: {what}{hint}", file=sys.stderr)
        return 2 if expected else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
