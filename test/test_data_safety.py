"""Nothing a user owns is ever lost, and every mistake gets one line: one regression test per class of
finding (data loss, silently wrong, traceback). Every refused or failed run leaves every file that was
there before byte-identical."""
import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from panoptic_node.bag.convert import convert
from panoptic_node.bag.reader import BagReader
from panoptic_node.bag.writer import BagWriter, header, image_msg
from panoptic_node.cli import main, output_stems
from panoptic_node.messages import image_fields
from panoptic_node.model.checkpoint import CheckpointError, load_weights, save_checkpoint
from panoptic_node.model.detr import build_model
from panoptic_node.output_safety import OutputLock, not_our_bag
from panoptic_node.replay import replay

from conftest import compact_config
from test_bag import camera_bag
from test_training import TINY_TRAIN_ARGS, make_dataset, write_tiny_config


def snapshot(*roots) -> dict:
    """Every file under the roots -> sha256 of its bytes (and every folder, as a marker)."""
    out = {}
    for root in roots:
        root = Path(root)
        for p in sorted([root, *root.rglob("*")]) if root.exists() else []:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.fixture
def camvid_copy(tmp_path, rng):
    """A small dataset folder of the user's, in CamVid's layout."""
    root = tmp_path / "camvid"
    make_dataset(root, rng, names={"train": ["A1_001", "A1_002"], "val": ["B2_001", "B2_002"]})
    return root


@pytest.fixture
def tiny_model(tiny_model_yaml):
    return tiny_model_yaml


# --- data loss -------------------------------------------------------------------------------------

def test_convert_overwrite_never_replaces_a_folder_that_is_not_our_bag(camvid_copy, tmp_path):
    before = snapshot(camvid_copy)
    # the dataset being converted, as its own output
    assert main(["convert", "camvid", str(camvid_copy), "--out", str(camvid_copy), "--overwrite"]) == 2
    # a folder inside it
    assert main(["convert", "camvid", str(camvid_copy), "--out", str(camvid_copy / "val"), "--overwrite"]) == 2
    # any other folder of the user's
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    assert main(["convert", "camvid", str(camvid_copy), "--out", str(other), "--overwrite"]) == 2
    assert snapshot(camvid_copy) == before and (other / "todo.txt").read_text() == "mine"
    # a bag we wrote is replaced
    assert main(["convert", "camvid", str(camvid_copy), "--out", str(tmp_path / "bag")]) == 0
    assert main(["convert", "camvid", str(camvid_copy), "--out", str(tmp_path / "bag")]) == 2  # no --overwrite
    assert main(["convert", "camvid", str(camvid_copy), "--out", str(tmp_path / "bag"), "--overwrite",
                 "--max-frames", "1"]) == 0
    with BagReader(tmp_path / "bag") as r:
        assert len(list(r.messages(["/camera/image_raw"]))) == 1


def test_a_recording_that_is_not_ours_is_never_replaced(tmp_path, rng):
    """A bag recorded by someone else (no panoptic_node mark in its metadata) is the user's data."""
    from rosbags.rosbag2 import Writer
    from panoptic_node.bag.types import typestore
    rec = tmp_path / "recording"
    store = typestore()
    with Writer(rec, version=8) as w:
        conn = w.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=store)
        msg = image_msg(header(1, "cam"), image_fields(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "rgb8"))
        w.write(conn, 1, store.serialize_cdr(msg, msg.__msgtype__))
    assert "does not say panoptic_node wrote it" in not_our_bag(rec)
    before = snapshot(rec)
    with pytest.raises(FileExistsError, match="not a bag panoptic_node wrote"):
        BagWriter(rec, overwrite=True)
    assert snapshot(rec) == before


def test_replay_never_writes_over_its_own_input(tiny_pipeline, tmp_path, rng):
    bag = camera_bag(tmp_path / "in", "mcap", [(1, rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))])
    before = snapshot(bag)
    for out in (bag, bag / "inside", tmp_path):  # the input, a folder inside it, a folder holding it
        with pytest.raises(ValueError, match="input"):
            replay(tiny_pipeline, bag, out, overwrite=True)
    with pytest.raises(ValueError, match="input"):
        replay(tiny_pipeline, bag, tmp_path / "out", metrics_path=bag / "metadata.yaml", overwrite=True)
    assert snapshot(bag) == before


def test_a_second_writer_of_the_same_output_is_refused(tiny_pipeline, tmp_path, rng):
    bag = camera_bag(tmp_path / "in", "mcap", [(1, rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))])
    out = tmp_path / "out"
    with OutputLock(out):  # a first replay writing `out`, as another process holds it
        (tmp_path / "out.partial").mkdir()
        (tmp_path / "out.partial" / "out").write_bytes(b"the first run's frames")
        before = snapshot(tmp_path / "out.partial")
        with pytest.raises(FileExistsError, match="another panoptic-node is writing"):
            replay(tiny_pipeline, bag, out, overwrite=True)
        assert snapshot(tmp_path / "out.partial") == before
    # once the first has gone (however it ended) the leftover is an interrupted run's and is replaced
    assert replay(tiny_pipeline, bag, out).frames == 1 and not (tmp_path / "out.lock").exists()


def test_the_lock_is_held_across_processes(tmp_path):
    out = tmp_path / "out"
    code = f"from panoptic_node.output_safety import OutputLock; import time; OutputLock({str(out)!r}).acquire(); " \
           f"print('locked', flush=True); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(FileExistsError, match="another panoptic-node"):
            OutputLock(out).acquire()
    finally:
        proc.kill()
        proc.wait()
    OutputLock(out).acquire().release()  # a killed holder leaves nothing that blocks


def test_a_run_that_writes_nothing_leaves_no_folder_it_made(tiny_model, tmp_path, capsys):
    """`--out a/b/c` makes a/ and a/b/ for its lock; a run that fails leaves neither, one that writes keeps them,
    and a folder that was there before (or was written into meanwhile) is never removed."""
    bad = tmp_path / "truncated.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    assert main(["infer", str(bad), "--model", str(tiny_model), "--out", str(tmp_path / "a" / "b" / "c")]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truncated.png"]
    with OutputLock(tmp_path / "x" / "y" / "out"):
        (tmp_path / "x" / "mine.txt").write_text("written while the lock was held")
    assert (tmp_path / "x" / "mine.txt").read_text() == "written while the lock was held"
    assert not (tmp_path / "x" / "y").exists()  # empty, made by the lock
    with OutputLock(tmp_path / "x" / "out"):  # x/ was there: kept, even if empty after
        (tmp_path / "x" / "mine.txt").unlink()
    assert (tmp_path / "x").is_dir()


def test_demo_into_an_earlier_demo_asks_first(camvid_copy, tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "metrics.json").write_text('{"mine": 1}')
    before = snapshot(out, camvid_copy)
    assert main(["demo", "--camvid", str(camvid_copy), "--out", str(out), "--model", "no_such_model"]) == 2
    assert snapshot(out, camvid_copy) == before
    # --overwrite still never takes a folder that is not our bag as the demo's bag
    (out / "camvid_val").mkdir()
    (out / "camvid_val" / "x.txt").write_text("mine")
    before = snapshot(out, camvid_copy)
    assert main(["demo", "--camvid", str(camvid_copy), "--out", str(out), "--overwrite"]) == 2
    assert snapshot(out, camvid_copy) == before


def test_train_never_replaces_a_run_or_writes_into_its_data_unasked(camvid_copy, tmp_path, capsys):
    """A run folder holds hours of training: only --resume (same settings) or --overwrite touches it."""
    cfg = write_tiny_config(tmp_path)
    args = ["train", "--config", str(cfg), "--data", str(camvid_copy), *TINY_TRAIN_ARGS, "--out"]
    run = tmp_path / "run"
    assert main(args + [str(run)]) == 0
    (run / "best.pth").write_bytes(b"an older run's best weights")
    capsys.readouterr()

    def refused(out, *extra, says):
        before = snapshot(tmp_path)
        assert main(args + [str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err, err
        assert snapshot(tmp_path) == before

    refused(run, says="already holds a training run: checkpoint.pth, last.pth, best.pth")
    refused(camvid_copy / "runs", says="lies inside) the input")
    (tmp_path / "afile").write_text("mine")
    refused(tmp_path / "afile", says="is a file")
    weights_only = tmp_path / "release"
    weights_only.mkdir()
    (weights_only / "last.pth").write_bytes(b"the user's weights")
    refused(weights_only, "--resume", says="has no checkpoint.pth to resume from, but holds last.pth")
    # --overwrite of the run whose weights it starts from: they would be gone before they were read
    refused(run, "--overwrite", "--init", str(run / "last.pth"), says="lies inside) the input")
    with OutputLock(run):  # another trainer writing this run now
        refused(run, "--resume", says="another panoptic-node is writing")
    import panoptic_node.output_safety as output_safety
    real_access = output_safety.os.access
    with pytest.MonkeyPatch.context() as mp:  # a read-only disk (root passes permission checks, not EROFS)
        mp.setattr(output_safety.os, "access", lambda path, mode: Path(path) != run and real_access(path, mode))
        refused(run, "--resume", says=f"--out '{run}': folder '{run}' is not writable")
    # asked to replace: the new run, with none of the old one's files left to pass for its own
    assert main(args + [str(run), "--overwrite"]) == 0
    assert not (run / "best.pth").exists()
    assert [e["epoch"] for e in json.loads((run / "history.json").read_text())] == [1]


@pytest.mark.parametrize("script, option", [("bench_things.py", "--csv"), ("bench_backends.py", "--chart")])
def test_a_benchmark_refuses_an_existing_output_before_it_measures(tmp_path, script, option):
    mine = tmp_path / ("mine.csv" if option == "--csv" else "mine.png")
    mine.write_text("the user's table")
    bench = Path(__file__).resolve().parents[1] / "bench" / script
    done = subprocess.run([sys.executable, str(bench), option, str(mine)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"{option} '{mine}' exists; pass --overwrite" in done.stderr.splitlines()[-1]
    assert mine.read_text() == "the user's table"


def test_infer_gives_each_image_its_own_outputs(tiny_model, tmp_path, rng):
    a_png, a_jpg = tmp_path / "a.png", tmp_path / "a.jpg"
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(a_png)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(a_jpg)
    (tmp_path / "sub").mkdir()
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "sub" / "a.png")
    out = tmp_path / "out"
    assert main(["infer", str(a_png), str(a_jpg), str(tmp_path / "sub" / "a.png"), "--model", str(tiny_model),
                 "--out", str(out)]) == 0
    files = [a["file_name"] for a in json.loads((out / "panoptic.json").read_text())["annotations"]]
    assert len(set(files)) == 3 and all((out / f).is_file() for f in files)
    assert output_stems([Path("a.png"), Path("a.jpg"), Path("x/a.png")]) == ["a_png", "a_jpg", "a_png_2"]
    # a second run into the same folder asks first, and leaves the first run's results as they were
    before = snapshot(out)
    assert main(["infer", str(a_png), "--model", str(tiny_model), "--out", str(out)]) == 2
    assert snapshot(out) == before


def test_results_are_never_mixed_into_a_folder_of_something_else(camvid_copy, tiny_model, tmp_path, rng, capsys):
    """infer, train and demo fill their --out file by file: a bag, a dataset or a folder of the user's given as
    --out is refused, --overwrite or not, never written into; a folder of their own earlier results (or
    the log the user's shell opened there) is theirs to replace when asked."""
    image = tmp_path / "frame.png"
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(image)
    recording = camera_bag(tmp_path / "monday", "mcap", [(1, rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's notes")
    cfg = write_tiny_config(tmp_path)
    train = ["train", "--config", str(cfg), "--data", str(camvid_copy), *TINY_TRAIN_ARGS, "--out"]
    demo = ["demo", "--camvid", str(camvid_copy), "--model", str(tiny_model), "--out"]
    for command in (["infer", str(image), "--model", str(tiny_model), "--out"], train, demo):
        for folder, named in ((recording, "metadata.yaml"), (mine, "notes.txt")):
            capsys.readouterr()
            before = snapshot(tmp_path)
            assert main(command + [str(folder), "--overwrite"]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "holds files that are not" in err and named in err, err
            assert snapshot(tmp_path) == before
    # its own results, replaced when asked; a run beside the log nohup opened for it
    results = tmp_path / "results"
    assert main(["infer", str(image), "--model", str(tiny_model), "--out", str(results)]) == 0
    other = tmp_path / "other.png"
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(other)
    assert main(["infer", str(other), "--model", str(tiny_model), "--out", str(results), "--overwrite"]) == 0
    names = [a["file_name"] for a in json.loads((results / "panoptic.json").read_text())["annotations"]]
    assert names == ["other_panoptic.png"] and (results / "other_semantic.png").is_file()
    assert not list(results.glob("*.partial*"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("started\n")
    assert main(train + [str(run)]) == 0
    assert (run / "train.log").read_text() == "started\n" and (run / "last.pth").is_file()


def test_a_path_given_with_equals_starts_from_home_as_the_shell_would_expand_it(tiny_model, tmp_path, rng,
                                                                                  monkeypatch):
    """The shell leaves `--out=~/x` alone (one word): the run wrote into a folder named `~` in the current
    one. Paths are expanded; ROS names, where `~` is a node's private namespace, are not."""
    from panoptic_node.cli import build_parser, expand_home
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "frame.png")
    assert main(["infer", "~/frame.png", f"--model={tiny_model}", "--out=~/results"]) == 0
    assert (tmp_path / "results" / "panoptic.json").is_file() and not any((tmp_path / "work").iterdir())
    args = build_parser().parse_args(["replay", "~/bags/monday", "--out=~/out", "--gt-topic=~/maps",
                                      "--image-topic=~/image", "--params=~/car.yaml", "--node=~/x"])
    expand_home(args)
    assert (args.bag, args.out, args.params) == (f"{tmp_path}/bags/monday", f"{tmp_path}/out", [f"{tmp_path}/car.yaml"])
    assert (args.gt_topic, args.image_topic, args.node) == ("~/maps", ["~/image"], "~/x")


def test_outputs_are_checked_before_any_frame_is_processed(tiny_pipeline, tmp_path, rng, capsys):
    bag = camera_bag(tmp_path / "in", "mcap", [(1, rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))])
    (tmp_path / "taken").mkdir()
    with pytest.raises(IsADirectoryError, match="--metrics .* is a folder"):
        replay(tiny_pipeline, bag, tmp_path / "out", metrics_path=tmp_path / "taken", overwrite=True)
    assert not (tmp_path / "out").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        replay(tiny_pipeline, bag, tmp_path / "out", metrics_path=tmp_path / "file" / "m.json")
    # a folder that does not exist yet is made when the metrics are written
    s = replay(tiny_pipeline, bag, tmp_path / "out", metrics_path=tmp_path / "new" / "deeper" / "m.json")
    assert s.frames == 1 and json.loads((tmp_path / "new" / "deeper" / "m.json").read_text())["frames"] == 1


@pytest.mark.parametrize("option, name", [("--video", "v.txt"), ("--video", "v"), ("--chart", "c.txt"),
                                          ("--confusion", "m.mp4")])
def test_a_video_or_chart_its_writer_cannot_make_is_refused_before_the_replay(tiny_model, tmp_path, rng, capsys,
                                                                               option, name):
    """imageio and matplotlib pick the format from the suffix: a .txt video used to fail at the first
    frame, leaving the output bag under its .partial name."""
    bag = camera_bag(tmp_path / "in", "mcap", [(1, rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))])
    assert main(["replay", str(bag), "--model", str(tiny_model), "--out", str(tmp_path / "out"), option,
                 str(tmp_path / name)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{option} '{tmp_path / name}': expected a file name ending in" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


@pytest.mark.parametrize("threads", ["-1", "100000"])
def test_a_bad_thread_count_is_refused_before_the_demo_writes_its_bag(camvid_copy, tmp_path, capsys, threads):
    """The demo converts CamVid before it loads the model: --threads is checked before both, so a refused
    run leaves an --overwrite run's earlier outputs as they were."""
    out = tmp_path / "demo"
    out.mkdir()
    (out / "metrics.json").write_text('{"mine": 1}')
    before = snapshot(out, camvid_copy)
    assert main(["demo", "--camvid", str(camvid_copy), "--out", str(out), "--overwrite", "--threads", threads]) == 2
    assert snapshot(out, camvid_copy) == before
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--threads {threads}: expected a whole number from 0 (every core) to" in err[0]


def test_max_frames_must_be_positive(camvid_copy, tmp_path):
    for n in ("0", "-1"):
        assert main(["convert", "camvid", str(camvid_copy), "--out", str(tmp_path / "b"), "--max-frames", n]) == 2
    assert not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="--max-frames 0"):
        convert("camvid", camvid_copy, tmp_path / "b", max_frames=0)


# --- silently wrong --------------------------------------------------------------------------------

def _gt_bag(path, rng, stamps_gt, stamps_img, pan=None, encoding="32SC1"):
    """Frames at stamps_img and ground truth (panoptic only) at stamps_gt."""
    with BagWriter(path) as w:
        for stamp in sorted(set(stamps_gt) | set(stamps_img)):
            hdr = header(stamp, "cam")
            if stamp in stamps_img:
                w.write("/camera/image_raw", image_msg(hdr, image_fields(rng.integers(0, 255, (24, 32, 3), np.uint8),
                                                                         "rgb8")), stamp)
            if stamp in stamps_gt:
                gt = pan if pan is not None else np.full((24, 32), 3, np.int32)
                w.write("/ground_truth/panoptic", image_msg(hdr, image_fields(gt.astype(
                    np.uint8 if encoding == "mono8" else np.int32), encoding)), stamp)
    return path


def test_ground_truth_that_matches_no_frame_is_said(tiny_pipeline, tmp_path, rng):
    base = 1_700_000_000_000_000_000
    imgs = [base + i * 100_000_000 for i in range(3)]
    bag = _gt_bag(tmp_path / "off", rng, [s + 1_000_000 for s in imgs], imgs)  # 1 ms off
    s = replay(tiny_pipeline, bag, log=lambda *_: None)
    assert s.metrics is None and (s.gt_unmatched, s.frames_without_gt) == (3, 3)
    assert "3 ground-truth frames matched no replayed frame" in s.format() and "not scored" in s.format()
    # twenty ground-truth frames, three of them with a frame: scored on three, the rest said
    gts = [base + i * 100_000_000 for i in range(20)]
    bag = _gt_bag(tmp_path / "some", rng, gts, gts[:3])
    s = replay(tiny_pipeline, bag, log=lambda *_: None)
    assert s.evaluated == 3 and s.gt_unmatched == 17 and "17 ground-truth frames matched no" in s.format()


def test_evaluate_with_no_pair_fails_with_the_reason(tiny_pipeline, tmp_path, rng, capsys):
    base = 1_700_000_000_000_000_000
    imgs = [base + i * 100_000_000 for i in range(3)]
    bag = _gt_bag(tmp_path / "gt", rng, imgs, imgs)
    replay(tiny_pipeline, bag, tmp_path / "pred", log=lambda *_: None)
    shifted = _gt_bag(tmp_path / "gt_off", rng, [s + 1_000_000 for s in imgs], [])
    assert main(["evaluate", "--bag", str(shifted), "--pred-bag", str(tmp_path / "pred")]) == 2
    err = capsys.readouterr().err
    assert "no frame scored" in err and "3 ground-truth frames" in err
    assert main(["evaluate", "--bag", str(bag), "--pred-bag", str(tmp_path / "pred")]) == 0
    assert "(3 frames)" in capsys.readouterr().out


def test_topics_that_are_not_panoptic_maps_are_refused_in_one_line(tiny_pipeline, tmp_path, rng, capsys):
    """A topic named to be scored that carries no images (diagnostics, detections) is refused before a
    frame is read (it used to pair with nothing and be reported as "no header stamp in common"); an
    image topic of another encoding (the overlay, bgr8) costs each pair its score with the reason (it
    escaped as an OverflowError on the prediction side); the camera itself as ground truth is refused."""
    base = 1_700_000_000_000_000_000
    imgs = [base + i * 100_000_000 for i in range(3)]
    bag = _gt_bag(tmp_path / "gt", rng, imgs, imgs)
    replay(tiny_pipeline, bag, tmp_path / "pred", log=lambda *_: None)
    capsys.readouterr()  # the replay's progress bar
    pred = ["--pred-bag", str(tmp_path / "pred")]
    assert main(["evaluate", "--bag", str(bag), *pred, "--pred-topic", "/camera/panoptic/detections"]) == 2
    assert capsys.readouterr().err == (
        f"panoptic-node evaluate: error: --pred-topic '/camera/panoptic/detections' in bag '{tmp_path / 'pred'}' is a "
        f"vision_msgs/msg/Detection2DArray; expected a sensor_msgs/Image topic of panoptic maps (32SC1, label*1000 + "
        f"instance)\n")
    assert main(["evaluate", "--bag", str(tmp_path / "pred"), *pred, "--gt-topic", "/diagnostics"]) == 2
    assert "--gt-topic '/diagnostics' in bag" in capsys.readouterr().err
    assert main(["evaluate", "--bag", str(bag), *pred, "--pred-topic", "/camera/panoptic/overlay"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("panoptic-node evaluate: error: no frame scored: none of the 3 frame pairs of "
                              "/ground_truth/panoptic and /camera/panoptic/overlay could be scored (first at ")
    assert "'/camera/panoptic/overlay' at 1700000000000000000 is bgr8; expected a 32SC1 sensor_msgs/Image" in err[-1]
    with pytest.raises(ValueError, match="^--gt-topic '/camera/image_raw' is a camera this replay runs; expected "
                                         "the ground-truth panoptic topic"):
        replay(tiny_pipeline, bag, tmp_path / "again", gt_topic="/camera/image_raw")
    assert not (tmp_path / "again").exists()


def test_ground_truth_that_labels_no_pixel_gives_no_scores(tiny_pipeline, tmp_path, rng, capsys):
    """All-void ground truth made every score 0 (mIoU 0.0, pixel accuracy 0.0), which reads as a model that
    sees nothing: replay says it and reports no metrics; evaluate fails with the reason."""
    base = 1_700_000_000_000_000_000
    imgs = [base + i * 100_000_000 for i in range(2)]
    bag = _gt_bag(tmp_path / "gt", rng, imgs, imgs, np.full((24, 32), -1, np.int32))
    lines = []
    s = replay(tiny_pipeline, bag, tmp_path / "pred", log=lines.append)
    assert s.evaluated == 2 and s.metrics is None and "not scored" in s.format()
    assert lines == ["not scored: the ground truth of the 2 frames matched labels no pixel (all void)"]
    capsys.readouterr()
    assert main(["evaluate", "--bag", str(bag), "--pred-bag", str(tmp_path / "pred")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "no frame scored: the ground truth (/ground_truth/panoptic) of the 2 frame pairs labels no pixel (all void)")


@pytest.mark.parametrize("value", [-5, 2**31 - 1, 13001])
def test_ground_truth_outside_the_label_set_is_not_scored(tiny_pipeline, tmp_path, rng, value):
    base = 1_700_000_000_000_000_000
    pan = np.full((24, 32), 3, np.int32)
    pan[:4, :4] = value
    bag = _gt_bag(tmp_path / "gt", rng, [base], [base], pan)
    s = replay(tiny_pipeline, bag, log=lambda *_: None)
    assert (s.evaluated, s.unscored) == (0, 1) and f"holds value {value}" in s.format()


def test_a_class_map_on_the_panoptic_topic_is_not_scored(tiny_pipeline, tmp_path, rng):
    base = 1_700_000_000_000_000_000
    bag = _gt_bag(tmp_path / "gt", rng, [base], [base], encoding="mono8")
    s = replay(tiny_pipeline, bag, log=lambda *_: None)
    assert (s.evaluated, s.unscored) == (0, 1) and "is mono8; expected a 32SC1" in s.format()


def test_label_maps_of_another_size_or_depth_are_refused(camvid_copy, tmp_path):
    lab = camvid_copy / "valannot" / "B2_001.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(lab)  # smaller than its image
    before = snapshot(camvid_copy)
    assert main(["convert", "camvid", str(camvid_copy), "--out", str(tmp_path / "b")]) == 2
    assert not (tmp_path / "b").exists() and snapshot(camvid_copy) == before
    Image.fromarray(np.full((64, 96), 3000, np.uint16)).save(lab)  # 16-bit values where 8-bit ids belong
    with pytest.raises(ValueError, match="expected 8-bit ids"):
        from panoptic_node.training.data import CamVid
        CamVid(camvid_copy, "val")[0]


def test_a_16_bit_grey_image_is_read_as_its_values_not_white(tmp_path):
    from panoptic_node.images import read_rgb
    a = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (4, 1))
    Image.fromarray(a).save(tmp_path / "g16.png")
    rgb = read_rgb(tmp_path / "g16.png")
    assert rgb.shape == (4, 16, 3) and rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255
    assert np.all(np.diff(rgb[0, :, 0].astype(int)) >= 0) and len(np.unique(rgb)) == 16


@pytest.mark.parametrize("orientation, turn", [(1, lambda a: a), (3, lambda a: a[::-1, ::-1]),
                                               (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1))])
def test_a_jpeg_is_read_upright_by_its_exif_orientation(tmp_path, rng, orientation, turn):
    """A phone or dash-cam JPEG stores its pixels sideways and says how to turn them: the maps must
    line up with the picture a viewer shows. 6: turn 90 degrees clockwise; 8: anticlockwise; 3: 180."""
    from panoptic_node.images import read_rgb
    im = Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8))
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(tmp_path / "f.jpg", exif=exif)
    stored = np.asarray(Image.open(tmp_path / "f.jpg").convert("RGB"))  # decoded, not turned
    assert np.array_equal(read_rgb(tmp_path / "f.jpg"), turn(stored))


def test_nan_weights_are_refused(tmp_path):
    cfg = compact_config()
    model = build_model(cfg)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    save_checkpoint(model, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_weights(build_model(cfg), tmp_path / "nan.pth")


def test_an_empty_graph_cache_variable_is_not_the_current_folder(monkeypatch):
    from panoptic_node.inference.graph_cache import cache_dir
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", "")
    assert cache_dir() == Path.home() / ".cache" / "panoptic_node" / "graphs"


@pytest.mark.parametrize("doc, expected", [
    ("", "is empty"),
    ("name: x\n", "'backbone' is missing"),
    ("input: {max_size: -1}", "'input.max_size' = -1 is invalid: allowed integer >= 32"),
    ("input: {short_side: 0}", "'input.short_side' = 0 is invalid"),
    ("postprocess: {overlap: 2}", "'postprocess.overlap' = 2 is invalid: allowed number >= 0 < 1"),
    # YAML's .nan passes every bound (comparisons with NaN are false): it reached the pipeline unnamed
    ("postprocess: {threshold: .nan}", "'postprocess.threshold' = nan is invalid: allowed a finite number >= 0 <= 1"),
    ("postprocess: {overlap: .inf}", "'postprocess.overlap' = inf is invalid: allowed a finite number >= 0 < 1"),
    ("hidden_dim: abc", "'hidden_dim' = 'abc' is invalid"),
    ("hidden_dim: 1.5", "'hidden_dim' = 1.5 is invalid"),
    ("num_queries: true", "'num_queries' = True is invalid"),
    ("postprocess: {threshold: '0.5'}", "'postprocess.threshold' = '0.5' is invalid"),
    ("input: 5", "'input' = 5 is invalid"),
    ("labels: mapillary", "'labels' = 'mapillary' is invalid: allowed one of coco, cityscapes, camvid"),
    ("mask_stride: 2", "'mask_stride' = 2 is invalid"),
    ("weights: [a]", "'weights' = ['a'] is invalid"),
    ("foo: 1", "'foo' was unexpected"),
    ("hidden_dim: 100", "not a multiple of nheads"),
])
def test_model_configs_are_validated_in_one_line(tmp_path, doc, expected, capsys):
    base = "name: x\nbackbone: efficientnet_lite0\nnum_classes: 11\nlabels: camvid\n" if doc not in ("", "name: x\n") else ""
    path = tmp_path / "m.yaml"
    path.write_text(base + doc)
    assert main(["infer", "x.png", "--model", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


# --- one line, never a traceback -------------------------------------------------------------------

def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    import panoptic_node.cli as cli

    def broken(args):
        raise IndexError("index 300 is out of bounds")

    monkeypatch.setattr(cli, "cmd_convert", broken)  # a bug of ours, as a flipped byte once found one
    assert main(["convert", "camvid", "x", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "IndexError: index 300" in err and "--debug" in err
    with pytest.raises(IndexError):
        main(["convert", "camvid", "x", "--out", str(tmp_path / "o"), "--debug"])
    with pytest.raises(IndexError):
        main(["--debug", "convert", "camvid", "x", "--out", str(tmp_path / "o")])


def test_a_json_output_that_is_a_folder_is_one_line(tiny_pipeline, tmp_path, rng, capsys):
    base = 1_700_000_000_000_000_000
    bag = _gt_bag(tmp_path / "gt", rng, [base], [base])
    replay(tiny_pipeline, bag, tmp_path / "pred", log=lambda *_: None)
    (tmp_path / "report").mkdir()
    assert main(["evaluate", "--bag", str(bag), "--pred-bag", str(tmp_path / "pred"), "--json",
                 str(tmp_path / "report"), "--overwrite"]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_an_image_over_pils_limit_is_one_line_and_the_batch_goes_on(tiny_model, tmp_path, rng, monkeypatch, capsys):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 2x is the hard limit: 48x48 = 2304 pixels is over it
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(big)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(small)
    assert main(["infer", str(big), str(small), "--model", str(tiny_model), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr()
    assert "larger than PIL's safety limit" in out.out + out.err
    assert len(json.loads((tmp_path / "out" / "panoptic.json").read_text())["annotations"]) == 1


def test_ctrl_c_during_convert_is_one_line_and_leaves_only_a_partial(camvid_copy, tmp_path, monkeypatch, capsys):
    import panoptic_node.bag.convert as conv
    real = conv.camvid_frames

    def interrupted(*a, **k):
        for i, f in enumerate(real(*a, **k)):
            if i == 1:
                raise KeyboardInterrupt
            yield f

    monkeypatch.setitem(conv.CONVERTERS, "camvid", (interrupted, "val", "camvid"))
    assert main(["convert", "camvid", str(camvid_copy), "--out", str(tmp_path / "b")]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and (tmp_path / "b.partial").is_dir()
    monkeypatch.undo()
    assert main(["convert", "camvid", str(camvid_copy), "--out", str(tmp_path / "b")]) == 0  # the leftover goes


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_sigterm_during_convert_unwinds_as_ctrl_c_does(camvid_copy, tmp_path, sig):
    """`kill` (or a scheduler) sends SIGTERM, and a closing terminal or ssh session SIGHUP, whose defaults end
    Python where it stands: the output's lock file stayed, and nothing said why the run stopped. Each now
    unwinds as Ctrl-C: one line, exit 128 + the signal, what was half-written under its .partial name, the
    lock gone, the handlers as they were. (In a
    process of its own: in pytest's, after `infer` ran the test model on OpenVINO, a Python-handled SIGTERM
    or SIGINT ended in a segfault inside kill(); the cause, a dangling alternate signal stack OpenVINO left,
    is now undone by inference/signal_stack.py and tested in test_signal_stack.py.)"""
    script = f"""
import os, signal, sys
import panoptic_node.bag.convert as conv
from panoptic_node.cli import main
real = conv.camvid_frames

def terminated(*a, **k):
    for i, f in enumerate(real(*a, **k)):
        if i == 1:
            os.kill(os.getpid(), signal.{sig})
        yield f

conv.CONVERTERS["camvid"] = (terminated, "val", "camvid")
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as a terminal's job has it (this suite may run under nohup)
before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
code = main(["convert", "camvid", {str(camvid_copy)!r}, "--out", {str(tmp_path / "b")!r}])
assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before
sys.exit(code)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 128 + getattr(signal, sig), done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"panoptic-node convert: terminated ({sig}); outputs not finished are left under .partial names")
    assert not (tmp_path / "b").exists() and (tmp_path / "b.partial").is_dir()
    assert not (tmp_path / "b.lock").exists()


def test_a_job_started_with_nohup_still_ignores_sighup(camvid_copy, tmp_path):
    """nohup starts a long job (a training, a fleet replay) with SIGHUP ignored so that it outlives its
    terminal: the command keeps it ignored and runs to the end."""
    script = f"""
import os, signal, sys
import panoptic_node.bag.convert as conv
from panoptic_node.cli import main
real = conv.camvid_frames

def hung_up(*a, **k):
    for i, f in enumerate(real(*a, **k)):
        if i == 1:
            os.kill(os.getpid(), signal.SIGHUP)
        yield f

conv.CONVERTERS["camvid"] = (hung_up, "val", "camvid")
signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup leaves it
code = main(["convert", "camvid", {str(camvid_copy)!r}, "--out", {str(tmp_path / "b")!r}])
assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
sys.exit(code)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "b" / "metadata.yaml").is_file() and not (tmp_path / "b.partial").exists()


def test_a_full_disk_is_one_line(camvid_copy, tmp_path, monkeypatch, capsys):
    import errno
    import panoptic_node.bag.writer as writer

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.BagWriter, "write_raw", full)
    assert main(["convert", "camvid", str(camvid_copy), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after tqdm's bar
    assert err.startswith(f"panoptic-node convert: error: no space left on the disk holding '{tmp_path / 'b'}' (")
    assert err.endswith(f"unfinished, left under their .partial names: {tmp_path / 'b'}.partial (0.0 MB) (remove "
                        f"them to get their space back)")
    assert not (tmp_path / "b").exists()


def test_truncated_image_during_convert_is_one_line(camvid_copy, tmp_path, capsys):
    img = camvid_copy / "val" / "B2_002.png"
    img.write_bytes(img.read_bytes()[:60])
    assert main(["convert", "camvid", str(camvid_copy), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cannot read image" in err and "B2_002.png" in err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("command", ["convert", "train"])
def test_a_camvid_label_outside_the_11_classes_is_one_line_naming_the_file(camvid_copy, tmp_path, capsys, command):
    """The 32-class CamVid originals, or any other numbering, would be read as wrong classes and void without a
    word; 11 (CamVid's void) and 255 are void, 12 is refused, and nothing is written for a run that refuses."""
    label = camvid_copy / "valannot" / "B2_002.png"
    ids = np.asarray(Image.open(label)).copy()
    ids[:2, :2] = 255
    Image.fromarray(ids).save(camvid_copy / "valannot" / "B2_001.png")  # void as 255: read, not refused
    ids[5, 7] = 12
    Image.fromarray(ids).save(label)
    before = snapshot(camvid_copy)
    out = tmp_path / "out"
    args = (["convert", "camvid", str(camvid_copy), "--split", "val", "--out", str(out)] if command == "convert" else
            ["train", "--config", str(write_tiny_config(tmp_path)), "--data", str(camvid_copy), "--out", str(out),
             *TINY_TRAIN_ARGS, "--train-drives", "A1,B2"])
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f"error: label map '{label}' holds class id 12; expected CamVid's 11-class ids (0-10, and 11 "
                        f"or 255 for void) as in the SegNet split")
    assert snapshot(camvid_copy) == before
    assert not out.exists()


@pytest.mark.parametrize("kind, layout", [("camvid", None), ("camvid", "split"), ("cityscapes", None),
                                          ("kitti", None), ("kitti", "training/image_2")])
def test_convert_from_a_source_without_frames_writes_nothing(tmp_path, capsys, kind, layout):
    src = tmp_path / "src"
    src.mkdir()
    if layout == "split":  # a CamVid split list that names no frames
        (src / "val.txt").write_text("")
    elif layout:
        (src / layout).mkdir(parents=True)
    assert main(["convert", kind, str(src), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("panoptic-node convert: error:") and str(src) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no bag, no .partial, no lock


def test_existing_outputs_of_evaluate_and_export_are_refused_without_overwrite(tmp_path, capsys):
    (tmp_path / "g.onnx").write_bytes(b"mine")
    assert main(["export", "--model", "street_lite0", "--out", str(tmp_path / "g.onnx")]) == 2
    assert (tmp_path / "g.onnx").read_bytes() == b"mine"
    assert "--overwrite" in capsys.readouterr().err
    # a graph named otherwise would not be found as one: refused before anything is written
    assert main(["export", "--model", "street_lite0", "--out", str(tmp_path / "g.txt")]) == 2
    assert "expected a file name ending in .onnx" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx"]


def test_a_sqlite_bag_killed_mid_write_is_recoverable(tmp_path):
    """SIGKILL while writing a .db3 (a replay killed): recover gets back every committed message, from
    a copy: the killed file and its journal stay as they were."""
    import signal
    from panoptic_node.bag.recover import recover
    code = f"""
import os, signal, numpy as np
from panoptic_node.bag.writer import BagWriter, header, image_msg
from panoptic_node.messages import image_fields
w = BagWriter({str(tmp_path / 'out')!r}, 'sqlite3')
for i in range(150):
    w.write('/camera/panoptic/semantic', image_msg(header(i + 1, 'f'), image_fields(np.full((4, 4), i % 11, np.uint8), 'mono8')), i + 1)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    killed = tmp_path / "out.partial" / "out" / "out.db3"
    before = snapshot(tmp_path / "out.partial")
    got = recover(killed, tmp_path / "recovered", log=lambda *_: None)
    assert got.messages == 128  # two commits of 64; the 22 after the last were never committed
    with BagReader(tmp_path / "recovered") as r:
        assert len(list(r.messages(["/camera/panoptic/semantic"]))) == 128
    assert snapshot(tmp_path / "out.partial") == before


def test_a_graph_cache_that_cannot_be_written_is_one_line(tiny_model, tmp_path, monkeypatch, capsys):
    """--backend openvino / onnxruntime asked for by name with a cache that cannot take a graph (here a
    path under a file: root ignores read-only folders): one line naming the problem, no traceback."""
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("PANOPTIC_NODE_GRAPH_CACHE", str(tmp_path / "file" / "graphs"))
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(img)
    assert main(["infer", str(img), "--model", str(tiny_model), "--backend", "onnxruntime",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("panoptic-node infer: error:") and "Traceback" not in "\n".join(err)
    assert (tmp_path / "file").read_text() == "x"


def test_an_output_that_is_holds_or_lies_inside_an_input_or_another_output_is_refused_and_a_neighbour_is_not(
        tmp_path):
    """check_outputs' rule, path by path: the same path (also through a symlink), one inside the other and one
    holding the other are refused, naming both; a neighbour whose name only begins the same is not. Checked as
    infer checks a folder of many images: a thousand inputs against four thousand outputs."""
    from panoptic_node.output_safety import check_outputs
    frames = tmp_path / "data" / "frames"
    frames.mkdir(parents=True)
    inputs = [frames / f"{i:04d}.png" for i in range(1000)]
    for p in inputs[:3]:
        p.write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "data")
    outputs = {f"{i:04d}{kind}": tmp_path / "out" / f"{i:04d}{kind}.png" for i in range(1000)
               for kind in ("_semantic", "_instances", "_overlay", "_panoptic")}
    outputs["--near"] = tmp_path / "data2" / "0000.png"           # data2 begins as data does: no relation
    outputs["--beside"] = frames / "0000.png.out"                 # beside an input file, not inside it
    before = sorted(p for p in tmp_path.rglob("*"))
    check_outputs(outputs, inputs=inputs + [None, ""])
    refusals = [({"--out": frames / "0002.png"}, "is (or holds, or lies inside) the input"),             # the same
                ({"--out": tmp_path / "link" / "frames" / "0001.png"}, "the input"),                   # by a link
                ({"--out": tmp_path / "data"}, "the input"),                                           # holds one
                ({"--out": tmp_path / "data" / "x.png"}, None),                                        # a sibling
                ({"--a": tmp_path / "o" / "x", "--b": tmp_path / "o"}, "--b '{o}' and --a '{o}/x' are the same "
                                                                      "path or one holds the other"),
                ({"--a": tmp_path / "o", "--b": tmp_path / "o" / "x"}, "--b '{o}/x' and --a '{o}' are the same"),
                ({"--a": tmp_path / "o", "--b": tmp_path / "link" / ".." / "o"}, "are the same path")]
    for outs, says in refusals:
        if says is None:
            check_outputs(outs, inputs=inputs)
            continue
        with pytest.raises(ValueError) as e:
            check_outputs(outs, inputs=inputs)
        assert says.format(o=tmp_path / "o") in str(e.value), str(e.value)
    # inside an input folder
    with pytest.raises(ValueError, match="the input '.*frames'"):
        check_outputs({"--out": frames / "sub" / "new.png"}, inputs=[frames])
    assert sorted(p for p in tmp_path.rglob("*")) == before  # a check makes nothing


def test_the_semantic_network_benchmark_refuses_an_existing_out_folder(tmp_path):
    # it trains for half an hour and writes history.json into --out: a folder already there (another run, the
    # user's files) is refused before any frame is read
    out = tmp_path / "mine"
    out.mkdir()
    (out / "history.json").write_text("the user's history")
    bench = Path(__file__).resolve().parents[1] / "bench" / "bench_semantic_network.py"
    done = subprocess.run([sys.executable, str(bench), "--camvid", str(tmp_path / "no_camvid"), "--train-drives",
                           "0001TP", "--val-drives", "0016E5", "--out", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and f"--out '{out}' exists; expected a new folder" in done.stderr.splitlines()[-1]
    assert sorted(p.name for p in out.iterdir()) == ["history.json"]
    assert (out / "history.json").read_text() == "the user's history"
