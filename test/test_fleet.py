"""Fleet validation on a local Ray: merged fleet numbers equal one process scoring every frame, a damaged
bag is reported while the others are scored, a rerun skips finished bags, changed weights score again,
and the baseline gate passes the same model and fails a worse one."""
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from panoptic_node.bag.convert import DatasetFrame, write_bag
from panoptic_node.bag.reader import BagReader
from panoptic_node.cli import main
from panoptic_node.evaluation.evaluator import Evaluator
from panoptic_node.evaluation.gt import panoptic_from_labels
from panoptic_node.inference.pipeline import Pipeline
from panoptic_node.messages import image_array
from panoptic_node.model.config import load_config
from panoptic_node.model.checkpoint import save_checkpoint
from panoptic_node.model.detr import build_model
from panoptic_node.replay import replay
from panoptic_node.taxonomy import get_taxonomy


ray = pytest.importorskip("ray", reason="the fleet extra (ray) is not installed: make test installs it")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


# CamVid class -> the Cityscapes trainId it comes from (the inverse of the Cityscapes -> CamVid grouping)
TO_CITYSCAPES = np.array([10, 2, 5, 0, 1, 8, 7, 4, 13, 11, 18] + [255] * 245, np.uint8)


@pytest.fixture(scope="module")
def fleet_bags(tmp_path_factory):
    """Three drives of CamVid val frames in two groups, both storages, one with its ground truth in
    Cityscapes labels (mapped back to CamVid's when scored); the shipped street model scores them."""
    from conftest import camvid_or_skip
    from panoptic_node.bag.convert import camvid_frames
    camvid = camvid_or_skip()
    root = tmp_path_factory.mktemp("fleet")
    frames = list(itertools.islice(camvid_frames(camvid, "val"), 0, 60, 6))  # ten frames across the drive
    write_bag(iter(frames[:4]), root / "day" / "drive_a", "mcap", labels="camvid")
    write_bag(iter(frames[4:7]), root / "day" / "drive_b", "sqlite3", labels="camvid")
    city = get_taxonomy("cityscapes")
    as_cityscapes = []
    for f in frames[7:]:
        sem = TO_CITYSCAPES[f.semantic]
        inst = np.where(f.panoptic >= 1000, f.panoptic % 1000, 0).astype(np.uint16)
        as_cityscapes.append(DatasetFrame(f.stamp_ns, f.rgb, sem, panoptic_from_labels(sem, inst, city.thing_lut)))
    write_bag(iter(as_cityscapes), root / "dusk" / "drive_c", "mcap", labels="cityscapes")
    return root, "street_lite0"


def one_process(bags, model) -> Evaluator:
    """The bags' frames replayed in this process, in sequence, into one evaluator: what a fleet must equal."""
    pipeline = Pipeline.from_config(model)
    one = Evaluator(get_taxonomy("camvid"))
    for bag in bags:
        one.merge_state(replay(pipeline, bag, log=lambda m: None).evaluator.state())
    return one


def test_merged_fleet_numbers_equal_one_process(local_ray, fleet_bags, tmp_path):
    from panoptic_node.fleet.bags import find_bags
    from panoptic_node.fleet.report import build_report, merged
    from panoptic_node.fleet.run import run_fleet
    root, model = fleet_bags
    bags = find_bags([str(root)])
    assert [b.name for b in bags] == ["drive_a", "drive_b", "drive_c"]
    report = run_fleet(bags, tmp_path / "out", model, backend="torch", workers=2, cpus=2, log=lambda m: None)
    assert report["headline"]["pq"] > 0.2  # the street model on street frames: numbers that mean something
    one = one_process(bags, model)
    expected = one.report()
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "out" / "bags").glob("*.json"))]
    ours = merged(results, "camvid")
    assert np.array_equal(ours.confusion.matrix, one.confusion.matrix) and ours.frames == one.frames == 10
    # the same report, to the last bit, whichever order the workers finished in (a rerun that keeps every bag
    # merges them in another order: once, sums in another order differed in SQ's last digit)
    for order in itertools.permutations(results):
        assert build_report(list(order), report["settings"]) == report
    for part in ("pq", "pq_things", "pq_stuff"):
        for k in ("pq", "sq", "rq"):
            assert report["fleet"][part][k] == pytest.approx(expected[part][k], abs=1e-12)
    assert report["fleet"]["miou"] == pytest.approx(expected["miou"], abs=1e-12)
    assert set(report["groups"]) == {"day", "dusk"} and report["groups"]["dusk"]["frames"] == 3
    html = (tmp_path / "out" / "report.html").read_text()
    assert "drive_c" in html and "<table id=\"bags\">" in html and "Slowest stages" in html
    # the confusion table: a row per class, each cell the share of that ground-truth class's pixels
    confusion = report["fleet"]["confusion"]
    table = html.split('<table id="confusion">')[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + len(confusion["classes"])
    road = confusion["matrix"][confusion["classes"].index("road")]
    road_row = table.split("<tr><td>road</td>")[1].split("</tr>")[0]
    assert f">{100 * road[3] / sum(road):.0f}</td>" in road_row.split("<td")[4]  # its diagonal, 4th cell
    # the gallery: per class the fleet's lowest-IoU frames, lowest first, each with its picture
    road = report["worst_frames"]["road"]
    assert len(road) == 3 and [f["iou"] for f in road] == sorted(f["iou"] for f in road)
    assert all(f["thumbnail"] and f["thumbnail"] in html for f in road)


def test_damaged_bag_rerun_and_changed_weights(local_ray, fleet_bags, tmp_path, capsys):
    from panoptic_node.fleet.bags import find_bags
    from panoptic_node.fleet.run import run_fleet
    root, model = fleet_bags
    broken = tmp_path / "broken"
    broken.mkdir()
    data = next((root / "day" / "drive_a").glob("*.mcap")).read_bytes()
    (broken / "cut.mcap").write_bytes(data[: len(data) // 2])  # a recording cut short, no metadata.yaml
    bags = find_bags([str(root), str(broken)])
    out = tmp_path / "out"
    lines = []
    report = run_fleet(bags, out, model, backend="torch", workers=2, cpus=2, log=lines.append)
    assert report["bags_scored"] == 3 and len(report["failed"]) == 1
    assert "cut.mcap" in report["failed"][0]["bag"] and "panoptic-node recover" in report["failed"][0]["error"]
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "bags").glob("drive_*.json")}
    # a rerun keeps the three finished bags as they are (the damaged one is tried again)
    report2 = run_fleet(bags, out, model, backend="torch", workers=2, cpus=2, log=lines.append)
    assert "3 bags already scored" in lines[-1]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "bags").glob("drive_*.json")} == kept
    assert report2["headline"] == report["headline"]
    # results scored running the network otherwise (on another machine: 8-bit int8 weights; or by a release that
    # did not record how) are scored again as this run's workers run it; the third is kept as it is
    results = sorted((out / "bags").glob("drive_*.json"))
    elsewhere, older = (json.loads(p.read_text()) for p in results[:2])
    elsewhere["ran_as"] = "openvino int8, 8-bit weights"
    del older["ran_as"]
    for path, result in zip(results, (elsewhere, older)):
        path.write_text(json.dumps(result))
    lines.clear()
    report3 = run_fleet(bags, out, model, backend="torch", workers=2, cpus=2, log=lines.append)
    assert ("2 bags were scored with the network run otherwise (by an older release, not recorded: 1 bag; "
            "openvino int8, 8-bit weights: 1 bag) than this run's workers run it (torch fp32): scored again") in lines
    assert "1 bag already scored" in " ".join(lines)
    assert [json.loads(p.read_text())["ran_as"] for p in results] == ["torch fp32"] * 3
    assert results[2].stat().st_mtime_ns == kept[results[2].name]
    assert report3["headline"] == report["headline"]
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "bags").glob("drive_*.json")}
    # other weights for the same config: every bag is scored again
    torch.manual_seed(1)
    save_checkpoint(build_model(load_config(model)), tmp_path / "other.pth")
    lines.clear()
    run_fleet(bags, out, model, weights=str(tmp_path / "other.pth"), backend="torch", workers=2, cpus=2,
              log=lines.append)
    assert not any("already scored" in line for line in lines)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "bags").glob("drive_*.json")} != kept
    # a fleet of which no bag could be replayed exits 1, saying so: nothing ran, nothing passed
    capsys.readouterr()
    assert main(["fleet", str(broken), "--model", model, "--backend", "torch", "--workers", "1", "--cpus", "2",
                 "--out", str(tmp_path / "none")]) == 1
    assert "fleet: the bag could not be replayed: " in capsys.readouterr().err


def test_a_worker_that_cannot_load_the_model_is_one_line_when_asked_how_it_runs(local_ray, tiny_model_yaml,
                                                                                 tmp_path):
    """Before a rerun keeps a result it asks a worker how it runs the network; a worker that cannot load the model
    (weights that are no checkpoint) is said in one line naming the model's trouble, before anything is written."""
    from panoptic_node.fleet.run import workers_deployment
    assert workers_deployment(ray, tiny_model_yaml, None, "torch", "cpu", None, None, None, "auto") == "torch fp32"
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError) as e:
        workers_deployment(ray, tiny_model_yaml, str(bad), "torch", "cpu", None, None, None, "auto")
    line = str(e.value)
    assert "\n" not in line and line.startswith("a fleet worker cannot load the model to run it (")
    assert "bad.pth" in line and line.endswith("the results in its --out folder are left as they are")


def test_ego_masks_reach_every_bag_and_other_masks_score_again(local_ray, fleet_bags, tmp_path, capsys):
    from panoptic_node.fleet.bags import find_bags
    from PIL import Image

    from panoptic_node.fleet.report import merged
    from panoptic_node.fleet.run import run_fleet, settings_of
    root, model = fleet_bags
    bags = find_bags([str(root / "day")])
    masks = tmp_path / "masks"
    masks.mkdir()
    keep = np.full((360, 480), 255, np.uint8)
    keep[240:] = 0                                       # the lower third: the car's own bonnet
    Image.fromarray(keep).save(masks / "camera.png")     # the converted bags' camera, /camera
    lines = []
    run_fleet(bags, tmp_path / "out", model, backend="torch", workers=1, cpus=2, ego_masks=masks, log=lines.append)
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "out" / "bags").glob("*.json"))]
    matrix = merged(results, "camvid").confusion.matrix
    one = Evaluator(get_taxonomy("camvid"))              # the same bags in one process, with the same masks
    for bag in bags:
        one.merge_state(replay(Pipeline.from_config(model), bag, log=lambda m: None, ego_masks=masks).evaluator.state())
    assert np.array_equal(matrix, one.confusion.matrix)
    labelled = 0                                         # and only the street above the bonnet was scored
    for bag in bags:
        with BagReader(bag) as r:
            labelled += sum(int((image_array(m.msg)[:240] != 255).sum()) for m in r.messages(["/ground_truth/semantic"]))
    assert matrix.sum() == labelled
    before = settings_of(model, None, "torch", "cpu", None, None, None, ego_masks=masks)
    keep[200:] = 0
    Image.fromarray(keep).save(masks / "camera.png")     # another mask: another key, the bags scored again
    assert settings_of(model, None, "torch", "cpu", None, None, None, ego_masks=masks) != before
    (masks / "broken.png").write_text("not a picture")
    assert main(["fleet", str(root / "day"), "--model", model, "--out", str(tmp_path / "o2"), "--ego-masks",
                 str(masks)]) == 2
    assert "ego mask: cannot read image '" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_the_baseline_gate(local_ray, fleet_bags, tmp_path, capsys):
    root, model = fleet_bags
    args = ["fleet", str(root), "--model", model, "--backend", "torch", "--workers", "1", "--cpus", "2"]
    assert main(args + ["--out", str(tmp_path / "base")]) == 0
    baseline = tmp_path / "baseline.json"
    baseline.write_bytes((tmp_path / "base" / "report.json").read_bytes())
    baseline = str(baseline)
    # the same model against itself passes (a rerun in its folder: its bags already scored, the gate on top)
    assert main(args + ["--out", str(tmp_path / "base"), "--baseline", baseline]) == 0
    out = capsys.readouterr().out
    assert "3 bags already scored" in out and "no loss over 1.0 PQ points" in out
    # a worse deployment of it (a threshold that keeps only its surest queries) fails, naming what lost
    assert main(args + ["--out", str(tmp_path / "worse"), "--threshold", "0.995", "--baseline", baseline]) == 1
    err = capsys.readouterr().err
    assert "worse than the baseline: fleet: PQ" in err and "group day" in err


def test_fleet_output_is_never_an_input_or_someone_elses_folder(fleet_bags, tmp_path, monkeypatch):
    import panoptic_node.fleet.run as fleet_run
    root, model = fleet_bags
    base = ["fleet", str(root), "--model", model, "--backend", "torch"]
    assert main(base + ["--out", str(root / "day")]) == 2  # inside the bags it reads
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    assert main(base + ["--out", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "x"
    # its own results folder is taken again (a rerun resumes there)
    runs = []

    def fake_run(bags, out, *a, **k):
        runs.append(out)
        (out / "bags").mkdir(parents=True, exist_ok=True)
        return {"headline": None, "groups": {}, "failed": []}

    monkeypatch.setattr(fleet_run, "run_fleet", fake_run)
    assert main(base + ["--out", str(tmp_path / "fleet")]) == 0
    assert main(base + ["--out", str(tmp_path / "fleet")]) == 0 and len(runs) == 2


def test_the_report_opens_in_a_real_browser(tmp_path):
    """report.html in headless Chromium (Debian's package): the DOM after its script ran has the bag table,
    the groups and the gallery's pictures, and the screenshot is not blank."""
    import os
    import shutil
    import subprocess

    from PIL import Image

    from panoptic_node.evaluation.evaluator import Evaluator
    from panoptic_node.fleet.report import build_report, write_report
    from panoptic_node.fleet.worker import WorstFrames
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("no chromium here (Debian: apt-get install chromium)")
    camvid = get_taxonomy("camvid")
    rng = np.random.default_rng(0)
    results = []
    for i, tag in enumerate(["day", "day", "rain"]):
        worst, ev = WorstFrames(camvid), Evaluator(camvid)
        for k in range(3):
            gt = np.full((36, 48), 3, np.uint8)
            gt[:12] = 0
            pred = gt.copy()
            pred[rng.integers(0, 36, 40), rng.integers(0, 48, 40)] = 8
            ev.add(gt.astype(np.int32), gt, pred.astype(np.int32), pred)
            worst(1000 + k, gt, pred, rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
        results.append({"ok": True, "bag": f"/fleet/{tag}/drive_{i}", "tag": tag, "frames": 3, "evaluated": 3,
                        "seconds": 1.0, "stage_ms": {"detect": [30.0, 31.0], "postprocess": [8.0]},
                        "scores": ev.state(), "metrics": ev.report(),
                        "worst_frames": {str(c): e for c, e in worst.worst.items()}})
    results.append({"ok": False, "bag": "/fleet/rain/cut.mcap", "tag": "rain", "error": "cut short"})
    write_report(build_report(results, {"model": "x"}), tmp_path)
    page = (tmp_path / "report.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<tr>") >= 3 + 2 + 1  # bags, groups, classes (after each header row)
    assert 'id="gallery"' in dom and dom.count("<img ") >= 3 and "cut short" in dom
    subprocess.run([browser, *flags, "--window-size=1200,1600", f"--screenshot={tmp_path / 'shot.png'}", page],
                   capture_output=True, timeout=120)
    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("L"))
    assert shot.shape == (1600, 1200) and shot.std() > 10  # text, tables and pictures, not a blank page


def test_a_worker_that_dies_is_restarted_and_its_bag_scored(local_ray, fleet_bags, tmp_path):
    """A worker killed while it works (out of memory, a node lost): Ray restarts it, the bag is retried, the
    fleet's numbers are those of every frame scored once (one process, as in the test above)."""
    import threading
    import time
    from panoptic_node.fleet.bags import find_bags
    from panoptic_node.fleet.run import run_fleet
    root, model = fleet_bags
    bags = find_bags([str(root)])
    done = {}
    worker = threading.Thread(target=lambda: done.update(report=run_fleet(
        bags, tmp_path / "out", model, backend="torch", workers=1, cpus=2, log=lambda m: None)))
    worker.start()
    killed, end = False, time.time() + 60
    while not killed and time.time() < end and worker.is_alive():
        for name in ray.util.list_named_actors():
            if name.startswith("panoptic_fleet_"):
                ray.kill(ray.get_actor(name), no_restart=False)  # as a crash would: Ray may restart it
                killed = True
        time.sleep(0.05)
    worker.join(300)
    assert killed and not worker.is_alive()
    report = done["report"]
    assert report["bags_scored"] == 3 and not report["failed"]
    expected = one_process(bags, model).report()
    for part in ("pq", "pq_things", "pq_stuff"):
        assert report["fleet"][part]["pq"] == pytest.approx(expected[part]["pq"], abs=1e-12)
    assert report["fleet"]["miou"] == pytest.approx(expected["miou"], abs=1e-12)


def test_tags_are_read_from_bag_tag_rows_and_anything_else_is_refused(tmp_path):
    from panoptic_node.fleet.run import read_tags, tag_of
    good = tmp_path / "tags.csv"
    good.write_text("bag,tag\n\ndrive_a, dusk\n/data/drive_b,rain\n")
    tags = read_tags(good)
    assert tags == {"drive_a": "dusk", "/data/drive_b": "rain"}
    assert tag_of(Path("/x/drive_a"), tags) == "dusk" and tag_of(Path("/data/drive_b"), tags) == "rain"
    assert tag_of(Path("/x/day/drive_c"), tags) == "day"  # not listed: its folder
    for text, says in [("", "holds no rows"), ("bag,tag\n", "holds no rows"), ("nonsense: [\n", "line 1 is"),
                       ("drive_a,dusk\ndrive_b,rain,extra\n", "line 2 is"), ("drive_a,\n", "line 1 is")]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(ValueError, match=f"--tags '{bad}' {says}.*expected a CSV of bag,tag rows"):
            read_tags(bad)
    with pytest.raises(ValueError, match="cannot be read"):
        read_tags(tmp_path / "missing.csv")


@pytest.mark.parametrize("extra, says", [
    (["--workers", "0"], "--workers 0: expected >= 1"), (["--cpus", "0"], "--cpus 0: expected >= 1"),
    (["--tags", "TAGS"], "holds no rows"), (["--baseline", "EMPTY_REPORT"], "holds no fleet PQ"),
    (["--threshold", "2"], "--threshold 2.0: expected a class probability"),
    (["--max-pq-drop", "nan"], "--max-pq-drop nan: expected a finite number of points >= 0"),  # a gate never shut
    (["--params", "NOWHERE"], "does not exist; expected a ROS 2 parameters YAML"),
    (["--params", "BAD_PARAMS"], "parameter 'track_min_iou' = 0.0 is invalid")])
def test_fleet_settings_are_refused_before_ray_starts(fleet_bags, tmp_path, monkeypatch, capsys, extra, says):
    """--cpus 0 had Ray wait forever for a CPU; a baseline without scores let every run pass the gate."""
    import panoptic_node.fleet.run as fleet_run
    monkeypatch.setattr(fleet_run, "run_fleet", lambda *a, **k: pytest.fail("the fleet started"))
    root, model = fleet_bags
    (tmp_path / "tags.csv").write_text("bag,tag\n")
    (tmp_path / "report.json").write_text(json.dumps({"headline": None, "groups": {}}))
    (tmp_path / "bad.yaml").write_text("/**:\n  ros__parameters: {track_min_iou: 0.0}\n")
    files = {"TAGS": str(tmp_path / "tags.csv"), "EMPTY_REPORT": str(tmp_path / "report.json"),
             "NOWHERE": str(tmp_path / "nowhere.yaml"), "BAD_PARAMS": str(tmp_path / "bad.yaml")}
    assert main(["fleet", str(root), "--model", model, "--out", str(tmp_path / "out"),
                 *[files.get(a, a) for a in extra]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err
    assert not (tmp_path / "out").exists()


def test_a_ray_address_where_nothing_answers_is_one_line_within_seconds(tmp_path):
    """Ray itself retried for minutes on a wrong --address; a listening socket is accepted."""
    import socket
    from panoptic_node.fleet.run import check_ray_address
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        for ok in (None, "auto", f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}/"):
            check_ray_address(ok, timeout=2)
        server.close()  # now nothing answers there
        with pytest.raises(ConnectionError, match=f"--address 'ray://127.0.0.1:{port}': nothing answers at "
                                                  f"127.0.0.1:{port}"):
            check_ray_address(f"ray://127.0.0.1:{port}", timeout=2)
        for bad in ("ray://head:port", "ray://:10001"):
            with pytest.raises(ValueError, match="is not HOST:PORT"):
                check_ray_address(bad, timeout=2)
        for bad in ("::1:6379", "ray://fe80::1"):  # which colon starts the port?
            with pytest.raises(ValueError, match=r"an IPv6 address goes in brackets, \[ADDRESS\]:PORT"):
                check_ray_address(bad, timeout=2)
    finally:
        server.close()


def test_a_bag_left_unscored_says_why_in_the_report(tiny_pipeline, tmp_path):
    """A bag whose ground truth cannot be scored (here: COCO labels, which map to no CamVid class) is
    replayed, not scored, and the report's bag row carries the line the replay said, instead of an
    empty row that looks like a bag without ground truth."""
    from panoptic_node.fleet.report import build_report, render_html
    from panoptic_node.fleet.worker import score_bag
    rng = np.random.default_rng(0)
    pan = np.full((24, 32), 7, np.int32)  # a COCO stuff id
    frames = [DatasetFrame(1_700_000_000_000_000_000 + i, rng.integers(0, 255, (24, 32, 3), dtype=np.uint8),
                           pan.astype(np.uint8), pan) for i in range(2)]
    write_bag(iter(frames), tmp_path / "drive_coco", "mcap", labels="coco")
    result = score_bag(tiny_pipeline, tmp_path / "drive_coco", gallery=0)
    assert result["ok"] and result["frames"] == 2 and result["evaluated"] == 0
    assert len(result["notes"]) == 1 and result["notes"][0].startswith(
        "not scored: the ground truth in") and "coco label set" in result["notes"][0]
    report = build_report([{**result, "bag": str(tmp_path / "drive_coco"), "tag": "day"}], {"model": "tiny"})
    assert report["bags"][0]["notes"] == result["notes"][0] and report["bags_scored"] == 0
    row = render_html(report).split('<table id="bags">')[1].split("</table>")[0]
    assert "coco label set" in row and "<th onclick=\"sortBy('bags', 3)\">scored</th>" in row
    # all-void ground truth: its frames gave no scores, so none count as scored and nothing is merged
    void = -np.ones((24, 32), np.int32)
    write_bag(iter([DatasetFrame(f.stamp_ns, f.rgb, np.full((24, 32), 255, np.uint8), void) for f in frames]),
              tmp_path / "drive_void", "mcap", labels="camvid")
    result = score_bag(tiny_pipeline, tmp_path / "drive_void", gallery=0)
    assert (result["evaluated"], result["scores"], result["metrics"]) == (0, None, None)
    assert result["notes"] == ["not scored: the ground truth of the 2 frames matched labels no pixel (all void)"]
    # a driver that left its stamps unset: no ground truth can be told to be a frame's
    from panoptic_node.bag.writer import BagWriter, header, image_msg
    from panoptic_node.messages import image_fields
    with BagWriter(tmp_path / "drive_unstamped") as w:
        for i, f in enumerate(frames):
            w.write("/camera/image_raw", image_msg(header(0, "cam"), image_fields(f.rgb, "rgb8")), 10 + i)
            w.write("/ground_truth/panoptic", image_msg(header(0, "cam"), image_fields(pan, "32SC1")), 10 + i)
    result = score_bag(tiny_pipeline, tmp_path / "drive_unstamped", gallery=0)
    assert result["evaluated"] == 0 and "2 frames not scored: stamped 0 or with another frame's stamp" in result["notes"]


def test_a_file_that_is_no_bag_is_refused_before_ray_starts(tmp_path, capsys):
    """A picture given among the bags was scored as a damaged recording, with advice to recover it; a loose
    .mcap is still taken (scored, or reported as cut short), and a .txt lists bags."""
    from panoptic_node.fleet.bags import find_bags
    (tmp_path / "frame.png").write_bytes(b"\x89PNG")
    (tmp_path / "drive.mcap").write_bytes(b"")
    (tmp_path / "bags.txt").write_text(f"# ours\n{tmp_path / 'drive.mcap'}\n")
    assert find_bags([str(tmp_path / "drive.mcap")]) == find_bags([str(tmp_path / "bags.txt")]) == [tmp_path / "drive.mcap"]
    assert main(["fleet", str(tmp_path / "frame.png"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"panoptic-node fleet: error: '{tmp_path / 'frame.png'}' is a file that is not a bag; expected a bag folder, a "
        f"folder of bags, a glob, a .txt list of them, or a loose .mcap / .db3 recording")
    assert not (tmp_path / "out").exists()


def test_a_folder_without_bags_is_refused_saying_what_a_bag_is(tmp_path, capsys):
    """An empty folder (or one of pictures) said only "no bags found": the line now says what was looked for."""
    (tmp_path / "drives").mkdir()
    (tmp_path / "drives" / "frame.png").write_bytes(b"\x89PNG")
    assert main(["fleet", str(tmp_path / "drives"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"panoptic-node fleet: error: no bags found in {tmp_path / 'drives'}; expected rosbag2 folders")
    assert "\n" not in err and ".mcap" in err
    assert not (tmp_path / "out").exists() and [p.name for p in (tmp_path / "drives").iterdir()] == ["frame.png"]


def test_the_progress_bar_ends_at_the_frames_really_run(local_ray, tmp_path, monkeypatch, rng):
    """The bar's total comes from metadata.yaml, where a depth camera's topics count; replay leaves them
    out, so each bag corrects the total as it reports: the bar ends full, at the frames that ran."""
    import panoptic_node.fleet.run as fleet_run
    from conftest import write_rgbd_bag
    bag = write_rgbd_bag(tmp_path / "rgbd", rng, frames=3)
    assert fleet_run.frames_in(bag) > 3  # the estimate counts the depth topics
    bars = []

    class Bar(fleet_run.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(fleet_run, "tqdm", Bar)
    report = fleet_run.run_fleet([bag], tmp_path / "fleet", "street_lite0", backend="torch", workers=1)
    assert report["frames"] == 3
    assert len(bars) == 1 and bars[0].total == bars[0].n == 3


def test_a_worker_runs_on_its_share_of_the_cores(tmp_path, monkeypatch):
    """run.py gives each worker --cpus / --workers threads; the worker's runtime takes that many (it set
    torch's alone before, and OpenVINO took every core in every worker)."""
    from panoptic_node.fleet.worker import BagScorer
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    try:
        scorer = BagScorer("street_lite0", None, "onnxruntime", "cpu", None, None, None, 1)
        (graph,) = scorer.pipeline.backend._by_shape.values()
        assert graph.detect_session.get_session_options().intra_op_num_threads == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_fleet_of_kitti_step_sequences_scores_tracking_over_every_track(local_ray, tiny_model_yaml, tmp_path,
                                                                          capsys):
    """fleet --stq: each bag's AQ as replay --stq gives it, and the fleet's taken over every labelled track
    of every bag (a track-weighted mean), STQ with the fleet's mIoU; report.html shows both."""
    from test_tracking import kitti_step_fixture
    from panoptic_node.bag.convert import convert
    from panoptic_node.fleet.report import merged_tracking
    src = kitti_step_fixture(tmp_path / "step", sequences=("0002", "0006"))
    for seq in ("0002", "0006"):
        convert("kitti-step", src, tmp_path / "bags" / f"step_{seq}", sequence=seq,
                max_frames=4 if seq == "0002" else 6)
    out = tmp_path / "out"
    assert main(["fleet", str(tmp_path / "bags"), "--model", str(tiny_model_yaml), "--backend", "torch",
                 "--threshold", "0", "--workers", "1", "--out", str(out), "--stq"]) == 0
    report = json.loads((out / "report.json").read_text())
    h = report["headline"]
    one = [replay(Pipeline.from_config(tiny_model_yaml, threshold=0.0), tmp_path / "bags" / f"step_{seq}", stq=True,
                  log=lambda m: None).metrics["tracking"] for seq in ("0002", "0006")]
    assert [b["aq"] for b in sorted(report["bags"], key=lambda b: b["bag"])] == pytest.approx([t["aq"] for t in one])
    assert h["tracks"] == 4 and h["aq"] == pytest.approx((one[0]["aq"] * 2 + one[1]["aq"] * 2) / 4)
    assert h["stq"] == pytest.approx(np.sqrt(h["aq"] * h["miou"]))
    assert f"fleet: STQ {100 * h['stq']:.1f} (AQ {100 * h['aq']:.1f} over 4 labelled tracks)" in capsys.readouterr().out
    assert ">STQ</th>" in (out / "report.html").read_text()
    assert merged_tracking([{"metrics": {}}], 0.5) is None  # bags scored without --stq: no tracking scores


def test_fleet_tracking_merges_by_tracks():
    from panoptic_node.fleet.report import merged_tracking
    bags = [{"metrics": {"tracking": {"aq": 1.0, "tracks": 3}}}, {"metrics": {"tracking": {"aq": 0.2, "tracks": 1}}}]
    assert merged_tracking(bags, 0.64) == pytest.approx({"aq": 0.8, "stq": np.sqrt(0.8 * 0.64), "tracks": 4})


def test_bags_run_in_different_arithmetic_on_a_mixed_cluster_are_said(tiny_pipeline, tmp_path):
    """Workers on other machines may run the network otherwise (a node without OpenVINO runs torch fp32; a CPU
    without VNNI gets 7-bit int8 weights): the fleet's one score then merges two arithmetics, close but not
    one model's. Each bag's row says how its worker ran; the report, report.html and the command say when
    they differed."""
    from panoptic_node.fleet.report import build_report, mixed_arithmetic, render_html
    from panoptic_node.fleet.worker import ran_as, score_bag
    rng = np.random.default_rng(0)
    pan = np.full((24, 32), 3 * 1000, np.int32)  # road
    frames = [DatasetFrame(1_700_000_000_000_000_000 + i, rng.integers(0, 255, (24, 32, 3), dtype=np.uint8),
                           np.full((24, 32), 3, np.uint8), pan) for i in range(2)]
    write_bag(iter(frames), tmp_path / "drive", "mcap", labels="camvid")
    result = {**score_bag(tiny_pipeline, tmp_path / "drive", gallery=0), "tag": "day"}
    assert result["ran_as"] == "torch fp32"
    assert ran_as("openvino", "int8", 7) == "openvino int8, 7-bit weights"
    # float matrix products (x86 without VNNI) are another arithmetic, said; int8 ones are what every int8 graph
    # had before the choice existed, so a result kept from then still reads as scored the same way
    assert ran_as("openvino", "int8", 7, "float") == "openvino int8, 7-bit weights, float matrix products"
    assert ran_as("openvino", "int8", 7, "int8") == ran_as("openvino", "int8", 7)
    backend = tiny_pipeline.backend  # as the graph of such a CPU reports itself (Backend.int8_matrix_products)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("name", "openvino"), ("precision", "int8"), ("int8_weight_bits", 7),
                            ("int8_matrix_products", "float")):
            patch.setattr(backend, name, value, raising=False)
        assert score_bag(tiny_pipeline, tmp_path / "drive", gallery=0)["ran_as"] == \
            "openvino int8, 7-bit weights, float matrix products"
    same = build_report([{**result, "bag": "a"}, {**result, "bag": "b"}], {"model": "tiny"})
    assert same["ran_as"] == {"torch fp32": 2} and mixed_arithmetic(same) == ""
    assert 'id="mixed"' not in render_html(same)
    old = {k: v for k, v in result.items() if k != "ran_as"}  # a result kept from an older release
    seven, eight = (dict(result, ran_as=ran_as("openvino", "int8", bits)) for bits in (7, 8))
    mixed = build_report([{**seven, "bag": "a"}, {**seven, "bag": "b"}, {**eight, "bag": "c"},
                          {**old, "bag": "d"}], {"model": "tiny"})
    assert mixed["ran_as"] == {"openvino int8, 7-bit weights": 2, "openvino int8, 8-bit weights": 1,
                               "torch fp32": 1}
    line = mixed_arithmetic(mixed)
    assert line.startswith("the bags ran the network in 3 ways: openvino int8, 7-bit weights (2 bags), "
                           "openvino int8, 8-bit weights (1 bag), torch fp32 (1 bag);") and "--backend" in line
    page = render_html(mixed)
    assert 'id="mixed"' in page and "7-bit weights (2 bags)" in page
    assert "openvino int8, 8-bit weights" in page.split('<table id="bags">')[1].split("</table>")[0]


def test_the_baseline_gate_holds_stq_too_where_both_reports_scored_tracking():
    from panoptic_node.fleet.report import compare

    def report(pq, stq=None):
        head = {"pq": pq, **({"stq": stq} if stq is not None else {})}
        return {"headline": head, "groups": {"day": dict(head)}, "fleet": {"per_class": {}}}

    assert compare(report(0.50, 0.40), report(0.50, 0.40), 1.0) == []
    # ids that no longer follow the objects: PQ the same, STQ 5 points lower
    assert compare(report(0.50, 0.35), report(0.50, 0.40), 1.0) == [
        "fleet: STQ 40.0 -> 35.0 (-5.0)", "group day: STQ 40.0 -> 35.0 (-5.0)"]
    assert compare(report(0.50, 0.35), report(0.50), 1.0) == []  # the baseline did not score tracking
    assert compare(report(0.45), report(0.50), 1.0) == ["fleet: PQ 50.0 -> 45.0 (-5.0)",
                                                         "group day: PQ 50.0 -> 45.0 (-5.0)"]


def test_the_baseline_gate_fails_on_missing_evidence_not_only_on_lower_scores(tmp_path, monkeypatch):
    """A gate that passes because nothing was scored is worse than none: a bag the baseline scored and this
    run could not (a new model that fails on it, frames no longer matched) is a loss, with its reason; a
    bag this run was not given is not judged."""
    from panoptic_node.fleet.report import compare

    def report(bags, failed=()):
        scored = [b for b, n in bags.items() if n]
        head = {"pq": 0.5} if scored else None
        return {"headline": head, "frames_scored": sum(bags.values()), "groups": {}, "fleet": {"per_class": {}},
                "bags": [{"bag": b, "scored": n} for b, n in bags.items()],
                "failed": [{"bag": b, "error": e} for b, e in failed]}

    baseline = report({"/bags/mon": 10, "/bags/tue": 12, "/bags/wed": 0})
    assert compare(baseline, baseline, 1.0) == []
    assert compare(report({"/bags/mon": 10}), baseline, 1.0) == []  # part of the fleet, judged on what it ran
    assert compare(report({"/bags/mon": 10, "/bags/wed": 0}, [("/bags/tue", "worker failed: out of memory")]),
                   baseline, 1.0) == ["bag /bags/tue: scored on 12 frames in the baseline, failed now "
                                      "(worker failed: out of memory)"]
    assert compare(report({"/bags/mon": 10, "/bags/tue": 0}), baseline, 1.0) == [
        "bag /bags/tue: scored on 12 frames in the baseline, on none now"]
    nothing = report({}, [("/bags/mon", "cannot be opened"), ("/bags/tue", "cannot be opened")])
    losses = compare(nothing, baseline, 1.0)
    assert losses[0] == "fleet: no frame scored (the baseline scored 22, PQ 50.0)" and len(losses) == 3
    # the same bag given relative in this run, absolute in the baseline's
    monkeypatch.chdir(tmp_path)
    absolute = report({f"{tmp_path}/bags/mon": 10})
    assert f"bag {tmp_path}/bags/mon: scored on 10 frames in the baseline, on none now" in compare(
        report({"bags/mon": 0}), absolute, 1.0)


def test_fleet_with_the_cars_parameters_replays_each_bag_as_replay_params_does(local_ray, tiny_model_yaml, tmp_path,
                                                                                capsys, rng):
    """Recordings of two cameras with ground truth for the front one: a fleet alone replays both and cannot
    score (ground truth belongs to one camera); with the node's parameters file it replays the node's camera,
    scores each bag as `replay --params` does, and a changed file scores every bag again."""
    from test_replay_params import car_recording, write_params
    from panoptic_node.bag.writer import BagWriter, header, image_msg
    from panoptic_node.messages import image_fields
    for name in ("drive_a", "drive_b"):
        bag = car_recording(tmp_path / "tmp" / name, rng)
        with BagReader(bag) as r, BagWriter(tmp_path / "bags" / name, "mcap") as w:  # plus the front's ground truth
            for m in r.messages(list(r.topics)):
                w.write(m.topic, m.msg, m.stamp_ns)
                if m.topic == "/camera/front/image":
                    pan = np.where(np.arange(64) < 32, 3, 0)[None].repeat(48, 0).astype(np.int32)  # road | sky
                    w.write("/ground_truth/panoptic", image_msg(header(m.stamp_ns, "front"),
                                                                image_fields(pan, "32SC1")), m.stamp_ns)
    out = tmp_path / "out"
    assert main(["fleet", str(tmp_path / "bags"), "--model", str(tiny_model_yaml), "--backend", "torch",
                 "--workers", "1", "--out", str(tmp_path / "plain")]) == 0
    assert json.loads((tmp_path / "plain" / "report.json").read_text())["bags_scored"] == 0
    params = write_params(tmp_path / "car.param.yaml", tiny_model_yaml, threshold=0.2, max_rate_hz=15.0)
    capsys.readouterr()
    assert main(["fleet", str(tmp_path / "bags"), "--params", str(params), "--workers", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "threshold 0.2" in printed and "not applied offline, where every frame is replayed: max_rate_hz 15.0" \
        in printed
    report = json.loads((out / "report.json").read_text())
    assert report["bags_scored"] == 2 and report["frames"] == 6 and report["frames_scored"] == 6
    assert main(["replay", str(tmp_path / "bags" / "drive_a"), "--params", str(params),
                 "--metrics", str(tmp_path / "a.json")]) == 0
    alone = json.loads((tmp_path / "a.json").read_text())["metrics"]
    bag_a = next(b for b in report["bags"] if b["bag"].endswith("drive_a"))
    assert bag_a["pq"] == pytest.approx(alone["pq"]["pq"]) and bag_a["miou"] == pytest.approx(alone["miou"])
    # the same file again: kept; another threshold in it: every bag scored again
    assert main(["fleet", str(tmp_path / "bags"), "--params", str(params), "--workers", "1", "--out", str(out)]) == 0
    assert "2 bags already scored with these settings: kept" in capsys.readouterr().out
    write_params(params, tiny_model_yaml, threshold=0.4)
    assert main(["fleet", str(tmp_path / "bags"), "--params", str(params), "--workers", "1", "--out", str(out)]) == 0
    assert "already scored" not in capsys.readouterr().out


def test_a_fleet_of_car_recordings_scores_a_model_against_what_the_cars_node_said(local_ray, tiny_model_yaml,
                                                                                     tiny_pipeline, tmp_path, rng,
                                                                                     capsys):
    """`fleet --gt-topic .../semantic/compressed` over record:= bags (frames and the node's PNG twins): each bag
    is scored against its car's own maps, as replay --gt-topic scores it (the model that made them agrees
    exactly); a bag without that topic is a failed bag that says so, and the others still score."""
    from test_recorded_maps import _car_recording
    bags = [_car_recording(tmp_path / name, rng, tiny_pipeline) for name in ("mon", "tue")]
    frames_only = tmp_path / "mon" / "camera"  # the same drive's frames, without the node's maps
    twin = "/car/panoptic/semantic/compressed"
    assert main(["fleet", *map(str, bags), str(frames_only), "--model", str(tiny_model_yaml), "--backend", "torch",
                 "--workers", "1", "--gt-topic", twin, "--out", str(tmp_path / "out")]) == 0
    assert "on 8 frames of 2 bags, against /car/panoptic/semantic/compressed\n" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["bags_scored"] == 2 and report["frames_scored"] == 8
    # the same network in a Ray worker of one thread: a pixel where two of its queries tie may go either way
    assert report["headline"]["miou"] > 0.99 and report["headline"]["pq"] > 0.99
    (failed,) = report["failed"]
    assert failed["bag"].endswith("mon/camera") and f"has no topic '{twin}' (--gt-topic)" in failed["error"]
    assert f"frames scored &middot; against {twin}</p>" in (tmp_path / "out" / "report.html").read_text()


def test_each_bag_says_how_the_node_on_its_car_fared(local_ray, tiny_model_yaml, tmp_path, rng):
    """record:= bags keep the node's /diagnostics: the report's bag table names the statuses that were not
    always ok (replay's lines), 'ok' for a drive without trouble, nothing for a bag without them."""
    from test_recorded_health import _drive
    _drive(tmp_path / "bags" / "monday", rng)
    assert main(["fleet", str(tmp_path / "bags"), "--model", str(tiny_model_yaml), "--backend", "torch",
                 "--workers", "1", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (bag,) = report["bags"]
    assert bag["node"] == ("/car/panoptic_node: inference: ok 88 % of 24 s; WARN 3.0 s (first at +5.0 s: one inference "
                           "call has run for 2.0 s); /car/panoptic_node: camera /car: ok 92 % of 24 s; ERROR 2.0 s "
                           "(first at +12.0 s: no frame on /car/image for 2.1 s)")
    # and which weights it ran, each change in order (the node restarted with other weights in the drive's gap)
    from test_recorded_health import CAR_WEIGHTS
    assert bag["node_ran"] == "; then ".join(f"street_lite0 ({w}) on openvino int8, panoptic_node 0.1.0"
                                             for w in CAR_WEIGHTS)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<th onclick=\"sortBy('bags', " in html and ">node on the car</th>" in html and ">it ran</th>" in html


def test_a_bags_node_health_in_its_row():
    from panoptic_node.bag.recorded_health import StatusHealth, troubles
    calm = StatusHealth("/n: inference", {"ok": 60.0}, {"ok": (0.0, "ok")})
    silent = StatusHealth("/n: camera /c", {"ok": 57.0, "ERROR": 3.0}, {"ok": (0.0, "ok"), "ERROR": (1.0, "no frame")})
    assert troubles([]) == "" and troubles([calm]) == "ok"
    assert troubles([calm, silent]) == "/n: camera /c: ok 95 % of 60 s; ERROR 3.0 s (first at +1.0 s: no frame)"
