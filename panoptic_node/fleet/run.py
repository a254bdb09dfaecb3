"""Drives a fleet run on Ray: bags already scored the same way (the same settings, and the network run as
this run's workers run it) are skipped, the rest go to workers (Ray actors that load the model once) one bag
at a time; each bag's result is written as it finishes, a damaged bag is reported and the others go on, a
worker that dies is restarted and its bag retried."""
import csv
import socket
import uuid
from pathlib import Path
from typing import Dict, List, Optional

import yaml
from tqdm import tqdm

from ..bag.reader import is_camera, raw_twin
from ..inference.cache_key import file_sha256
from . import results as store
from .report import build_report, write_report
from .worker import BagScorer


def frames_in(bag: Path) -> int:
    """The camera frames replay will run (every camera's, a compressed twin of a raw topic once), from
    metadata.yaml: the progress bar's estimate. A depth camera's topics, which replay leaves out by their
    first message, count here; the bar is corrected as each bag reports what it ran."""
    try:
        info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        counts = {t["topic_metadata"]["name"]: t["message_count"] for t in info["topics_with_message_count"]
                  if is_camera(t["topic_metadata"]["name"], t["topic_metadata"]["type"])}
        return sum(n for name, n in counts.items() if not raw_twin(name, counts))
    except (OSError, TypeError, KeyError, yaml.YAMLError):
        return 0


def read_tags(path) -> Dict[str, str]:
    """A CSV of `bag,tag` rows (bag: its folder name or path); a header row and blank lines are allowed.
    Anything else is refused: a file of other rows would leave every bag in its folder's group unsaid."""
    expected = "expected a CSV of bag,tag rows"
    tags = {}
    try:
        with open(path, newline="") as f:
            for number, row in enumerate(csv.reader(f), start=1):
                cells = [c.strip() for c in row]
                if not any(cells) or (number == 1 and [c.lower() for c in cells] == ["bag", "tag"]):
                    continue
                if len(cells) != 2 or not all(cells):
                    raise ValueError(f"--tags '{path}' line {number} is {','.join(row)!r}; {expected}")
                tags[cells[0]] = cells[1]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"--tags '{path}' cannot be read ({e}); {expected}") from None
    if not tags:
        raise ValueError(f"--tags '{path}' holds no rows; {expected}")
    return tags


def check_ray_address(address: Optional[str], timeout: float = 5.0) -> None:
    """A cluster address that does not answer is said in one line within seconds (Ray itself retries
    for minutes). 'auto' and 'local' are Ray's to resolve."""
    if not address or address in ("auto", "local"):
        return
    client = address.startswith("ray://")
    hostport = address.split("://", 1)[-1].rstrip("/")
    expected = "expected ray://HOST:10001 (Ray client), HOST:6379 (the head's GCS) or auto"
    if hostport.count(":") > 1 and not hostport.startswith("["):  # fe80::1:6379 has no one reading
        raise ValueError(f"--address '{address}': an IPv6 address goes in brackets, [ADDRESS]:PORT; {expected}")
    host, port = (hostport, "") if hostport.endswith("]") or ":" not in hostport else hostport.rsplit(":", 1)
    port = port or ("10001" if client else "6379")  # Ray's defaults: its client's port, a head's GCS
    host = host.strip("[]")  # an IPv6 literal
    if not host or not port.isdigit():
        raise ValueError(f"--address '{address}' is not HOST:PORT; {expected}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"--address '{address}': nothing answers at {host}:{port} ({e}); {expected}") from None


def tag_of(bag: Path, tags: Optional[Dict[str, str]]) -> str:
    """The CSV's tag (by path, then by name), else the folder the bag lies in (e.g. day / dusk / rain)."""
    if tags:
        for key in (str(bag), str(bag.resolve()), bag.name):
            if key in tags:
                return tags[key]
    return bag.parent.name or "."


def settings_of(model, weights, backend, device, threshold, labels, onnx, precision="auto", ego_masks=None) -> dict:
    """Everything that changes a bag's score: a rerun with other settings scores again (new int8
    scales beside the weights included: auto runs them; so are other ego masks, by their content)."""
    from ..inference.ego_mask import check_folder
    from ..int8_scales import default_scales_path
    from ..model.checkpoint import require_weights_file, weights_of
    from ..model.config import load_config
    cfg = load_config(model)
    w = require_weights_file(weights_of(cfg, weights))
    scales = default_scales_path(w)
    return {"model": cfg.to_dict(), "weights_sha256": file_sha256(w), "backend": backend, "device": device,
            "threshold": threshold, "labels": labels, "onnx_sha256": file_sha256(onnx) if onnx else None,
            "precision": precision, "int8_scales_sha256": file_sha256(scales) if scales.is_file() else None,
            "ego_masks_sha256": check_folder(ego_masks) if ego_masks else None}


def run_fleet(bags: List[Path], out: Path, model: str, weights=None, backend: str = "auto", device: str = "cpu",
              threshold=None, labels=None, onnx=None, workers: int = 2, cpus: Optional[int] = None,
              address: Optional[str] = None, tags: Optional[Dict[str, str]] = None, write_bags: bool = False,
              video: bool = False, precision: str = "auto", ego_masks=None, stq: bool = False,
              replay_options: Optional[dict] = None, log=print) -> dict:
    """ego_masks: a folder of ego masks (inference/ego_mask.py), applied to every bag's cameras as replay
    --ego-masks does; the workers read it by its path, so on a cluster it lies where every node sees it.
    stq: the bags' ground-truth ids are track ids (KITTI-STEP sequences, one per bag): tracking is scored too
    (replay --stq), and the fleet's AQ is taken over every labelled track of every bag. replay_options: more of
    replay()'s arguments for every bag (params.replay_options: the node's cameras, tracking and topics, for
    fleet --params); they are part of the settings a bag was scored with."""
    import ray

    out = Path(out)
    settings = settings_of(model, weights, backend, device, threshold, labels, onnx, precision, ego_masks)
    if stq:  # only then: results scored before this option existed keep their keys
        settings["stq"] = True
    if replay_options:
        settings["replay"] = replay_options
    kept, pending = [], []
    for bag in bags:
        key = store.run_key(settings, bag)
        done = store.load_done(out, bag, key)
        if done:
            done["tag"] = tag_of(bag, tags)  # the grouping may have changed since
            kept.append((bag, key, done))
        else:
            pending.append((bag, key))
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=None if address else cpus, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        if kept:
            # kept results count only when scored as this run's workers run the network (another machine's
            # runtime or int8 weight width gives other numbers): asked of a worker, where they run
            ran = workers_deployment(ray, model, weights, backend, device, threshold, labels, onnx, precision)
            same, other = [], []
            for entry in kept:
                (same if entry[2].get("ran_as") == ran else other).append(entry)
            if other:
                log(f"{_bags(len(other))} were scored with the network run otherwise "
                    f"({_ways(done.get('ran_as') for _, _, done in other)}) than this run's workers run it ({ran}): "
                    f"scored again")
                pending += [(bag, key) for bag, key, _ in other]
            kept = same
        results = [done for _, _, done in kept]
        if results:
            log(f"{_bags(len(results))} already scored with these settings: kept (results in {out / 'bags'})")
        if pending:
            results += _score(ray, pending, out, settings, tags, model, weights, backend, device, threshold, labels,
                              onnx, workers, cpus, write_bags, video, precision, ego_masks, stq, replay_options)
    finally:
        if started:
            ray.shutdown()
    report = build_report(results, settings)
    write_report(report, out)
    return report


def workers_deployment(ray, model, weights, backend, device, threshold, labels, onnx, precision) -> str:
    """How this run's workers run the network (worker.deployment, e.g. 'openvino int8, 7-bit weights'), asked of
    a Ray task where they run. A worker that cannot load the model is one line, and nothing kept is touched."""
    from .worker import deployment
    try:
        return ray.get(ray.remote(num_cpus=1, max_retries=0)(deployment).remote(
            model, weights, backend, device, threshold, labels, onnx, precision))
    except ray.exceptions.RayError as e:
        cause = getattr(e, "cause", None) or e
        raise RuntimeError(f"a fleet worker cannot load the model to run it ({str(cause).splitlines()[0]}); "
                           f"the results in its --out folder are left as they are") from None


def _bags(n: int) -> str:
    return f"{n} bag{'' if n == 1 else 's'}"


def _ways(ran_as) -> str:
    """'by an older release, not recorded: 1 bag; openvino int8, 8-bit weights: 2 bags'."""
    from collections import Counter
    counts = Counter(way or "by an older release, not recorded" for way in ran_as)
    return "; ".join(f"{way}: {_bags(n)}" for way, n in sorted(counts.items()))


def _score(ray, pending, out, settings, tags, model, weights, backend, device, threshold, labels, onnx, workers,
           cpus, write_bags, video, precision, ego_masks=None, stq=False, replay_options=None) -> List[dict]:
    total_cpus = int(ray.available_resources().get("CPU", 1)) if cpus is None else cpus
    n = max(1, min(workers, len(pending)))
    threads = max(1, total_cpus // n)
    # a worker that dies (killed, out of memory) is restarted with the model loaded again, and the bag
    # it held is retried
    scorer = ray.remote(num_cpus=threads, max_restarts=2, max_task_retries=2)(BagScorer)
    run_id = uuid.uuid4().hex[:8]  # named, so an operator (or a test) can find a worker in `ray list actors`
    actors = [scorer.options(name=f"panoptic_fleet_{run_id}_{i}").remote(model, weights, backend, device, threshold,
                                                                          labels, onnx, threads, precision)
              for i in range(n)]
    queue, running, done = list(pending), {}, []
    estimated = {bag: frames_in(bag) for bag, _ in pending}  # read once: the bar's total, corrected per bag
    bar = tqdm(total=sum(estimated.values()), unit="frame", desc="fleet")
    failed = 0

    def submit(actor):
        bag, key = queue.pop(0)
        out_bag = str(out / "bags_out" / bag.name) if write_bags else None
        video_path = str(out / "videos" / f"{bag.name}.mp4") if video else None
        running[actor.score.remote(str(bag), out_bag, video_path, ego_masks and str(ego_masks), stq,
                                   replay_options)] = \
            (actor, bag, key)

    for actor in actors:
        if queue:
            submit(actor)
    try:
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            actor, bag, key = running.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayError as e:  # the worker died more often than it is restarted
                result = {"ok": False, "error": f"worker failed: {str(e).splitlines()[0]}"}
            result.update(bag=str(bag), tag=tag_of(bag, tags), key=key)
            store.save(out, bag, result)  # as it finishes: a run stopped later keeps it
            done.append(result)
            failed += not result["ok"]
            ran = result.get("frames", 0) if result["ok"] else 0  # a bag that failed ran none: no frames/s from it
            bar.total += ran - estimated[bag]  # so the bar ends full, at the frames the fleet really ran
            bar.update(ran)
            bar.set_postfix(bags=f"{len(done)}/{len(pending)}", failed=failed)
            if not result["ok"]:
                bar.write(f"not scored: {bag}: {result['error']}")
            if queue:
                submit(actor)
    finally:
        bar.close()
    return done
