"""The Pipeline end to end: result maps agree with each other, bad frames are refused with a clear
ValueError, the CLI writes the COCO panoptic format that panopticapi reads (PQ = 1 against itself)."""
import json
import re
from dataclasses import asdict

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from panoptic_node.cli import main
from panoptic_node.coco_format import CocoPanopticWriter, rgb_to_id
from panoptic_node.inference.result import result_from_segments
from panoptic_node.taxonomy import get_taxonomy
from panoptic_node.inference.pipeline import Pipeline
from panoptic_node.model.checkpoint import save_checkpoint
from panoptic_node.model.detr import build_model

from conftest import compact_config, panopticapi_pq_compute


@pytest.fixture(scope="module")
def model_yaml(tmp_path_factory):
    """A tiny compact model on disk: YAML config + our checkpoint, as a user's own model would be."""
    d = tmp_path_factory.mktemp("model")
    torch.manual_seed(3)
    cfg = compact_config()
    model = build_model(cfg, pretrained_backbone=True)  # a random trunk gives constant features
    save_checkpoint(model, d / "tiny.pth")
    data = asdict(cfg)
    data["weights"] = "tiny.pth"
    (d / "tiny.yaml").write_text(yaml.safe_dump(data))
    return d / "tiny.yaml"


@pytest.fixture(scope="module")
def pipeline(model_yaml):
    return Pipeline.from_config(str(model_yaml))


def test_result_maps_are_consistent(pipeline, rng):
    frame = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    r = pipeline(frame)
    assert r.semantic.shape == r.instance.shape == r.panoptic.shape == (70, 90)
    assert r.semantic.dtype == np.uint8 and r.instance.dtype == np.uint16 and r.panoptic.dtype == np.int32
    assert len(r.segments) > 0  # threshold 0: every query is kept
    assert sum(s.area for s in r.segments) == (r.segment_ids > 0).sum()
    assert set(r.timings) == {"preprocess", "detect", "mask_head", "postprocess"}
    ids = sorted(s.id for s in r.segments)
    assert ids == list(range(1, len(ids) + 1))


def test_frame_larger_than_the_network_view_is_decided_there_and_upsampled(pipeline, rng):
    # a 1080p-like case: the tiny model sees 96 x 128; the frame is 300 x 400
    big = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    small = np.asarray(Image.fromarray(big).resize((128, 96), Image.BILINEAR))  # what the network is given
    r, s = pipeline(big), pipeline(small)
    assert r.shape == (300, 400) and s.shape == (96, 128) and r.segments
    # the id map is the network-resolution decision, nearest-resized (DETR's published rule);
    # test_postprocess checks every map, area and box of the upsampling on many segments
    ry, rx = (np.arange(300) * 2 + 1) * 96 // 600, (np.arange(400) * 2 + 1) * 128 // 800
    np.testing.assert_array_equal(r.segment_ids, s.segment_ids[ry][:, rx])
    assert [(a.label, a.score) for a in r.segments] == [(b.label, b.score) for b in s.segments]


def test_full_resolution_option_decides_every_input_pixel(model_yaml, rng):
    import dataclasses
    from panoptic_node.model.config import load_config
    cfg = load_config(str(model_yaml))
    exact = Pipeline.from_config(dataclasses.replace(cfg, postprocess=dataclasses.replace(cfg.postprocess,
                                                                                          full_resolution=True)))
    fast = Pipeline.from_config(cfg)
    big = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    a, b = exact(big), fast(big)
    assert a.shape == b.shape == (300, 400)
    # the same decision up to where boundaries fall inside one network pixel
    assert (a.semantic == b.semantic).mean() > 0.9


def test_batch_equals_single(pipeline, rng):
    a = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    b = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    batch = pipeline.run_batch([a, b])
    for frame, res in zip((a, b), batch):
        np.testing.assert_array_equal(pipeline(frame).panoptic, res.panoptic)


@pytest.mark.parametrize("frame,expected", [
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    (np.zeros((10, 10, 4), np.uint8), "H x W x 3"),
    (np.zeros((10, 10), np.uint8), "H x W x 3"),
    (np.zeros((0, 10, 3), np.uint8), "non-empty"),
    ([[1, 2, 3]], "numpy array"),
])
def test_bad_frames_raise_value_error(pipeline, frame, expected):
    with pytest.raises(ValueError, match=expected):
        pipeline(frame)


def test_bad_threshold(model_yaml, tmp_path, capsys, monkeypatch):
    with pytest.raises(ValueError, match="threshold"):
        Pipeline.from_config(str(model_yaml), threshold=1.5)
    # on the command line: one line naming the option, before any graph is exported for it
    from panoptic_node.inference import graph_cache
    monkeypatch.setattr(graph_cache, "export_onnx", lambda *a, **k: pytest.fail("exported"))
    for bad in ("1.5", "-0.1", "nan"):
        assert main(["infer", "x.png", "--model", str(model_yaml), "--threshold", bad, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"--threshold {bad}: expected a class probability in [0, 1]" in err
    assert not (tmp_path / "o").exists()


def test_missing_weights_names_the_file(model_yaml, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth' does not exist"):
        Pipeline.from_config(str(model_yaml), weights=str(tmp_path / "nothing.pth"))
    with pytest.raises(FileNotFoundError, match=f"weights file '{tmp_path}' is a folder; expected"):
        Pipeline.from_config(str(model_yaml), weights=str(tmp_path))


def test_coco_panoptic_output_is_scored_by_panopticapi(tmp_path, rng):
    """Frames with things and stuff through the writer the CLI uses: panopticapi reads them and
    finds PQ = 1 against themselves."""
    camvid = get_taxonomy("camvid")
    writer = CocoPanopticWriter(tmp_path, camvid)
    for i in range(3):
        ids = np.zeros((40, 60), np.int64)
        ids[:20] = 1                      # sky (stuff)
        ids[20:] = 2                      # road (stuff)
        ids[25:35, 5 + i:20 + i] = 3      # car (thing)
        ids[22:38, 40:44] = 4             # pedestrian (thing)
        ids[0:3, 0:3] = 0                 # void
        result = result_from_segments(ids, np.array([0, 3, 8, 9]), np.array([.9, .8, .7, .6]), camvid.thing_lut,
                                      "camvid")
        writer.add(f"f{i}", f"f{i}.png", result)
    path = writer.close()
    results = panopticapi_pq_compute(path, path, tmp_path, tmp_path)
    for part, classes in (("All", 4), ("Things", 2), ("Stuff", 2)):
        assert results[part]["pq"] == pytest.approx(1.0) and results[part]["n"] == classes


def test_infer_cli_writes_consistent_outputs(model_yaml, tmp_path, rng, capsys):
    images = []
    for i, shape in enumerate([(60, 80, 3), (50, 50, 3)]):
        p = tmp_path / f"frame{i}.png"
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(p)
        images.append(str(p))
    out = tmp_path / "out"
    assert main(["infer", *images, "--model", str(model_yaml), "--out", str(out)]) == 0
    data = json.loads((out / "panoptic.json").read_text())
    assert len(data["annotations"]) == 2 and len(data["categories"]) == 11
    for ann in data["annotations"]:
        ids = rgb_to_id(np.asarray(Image.open(out / ann["file_name"])))
        assert sorted(set(np.unique(ids)) - {0}) == sorted(s["id"] for s in ann["segments_info"])
        sem = np.asarray(Image.open(out / ann["file_name"].replace("_panoptic", "_semantic")))
        inst = np.asarray(Image.open(out / ann["file_name"].replace("_panoptic", "_instances")))
        assert sem.dtype == np.uint8 and inst.dtype in (np.uint16, np.int32)
        for s in ann["segments_info"]:
            assert (sem[ids == s["id"]] == s["category_id"]).all()
            assert s["area"] == (ids == s["id"]).sum()
    assert (out / "frame0_overlay.png").is_file()


def test_infer_with_two_inference_workers_writes_what_one_writes(tmp_path, capsys):
    """Two pipelines infer images at once; the results are tracked and written in the images' order, so every
    file, panoptic.json's order and the tracked instance ids are those of one pipeline (the street model on a
    CamVid clip: objects to track)."""
    from conftest import camvid_or_skip
    frames = sorted((camvid_or_skip() / "val").glob("*.png"))[:6]
    written = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        assert main(["infer", *map(str, frames), "--backend", "torch", "--out", str(out), "--track",
                     "--inference-workers", str(workers)]) == 0
        written[workers] = {p.name: p.read_bytes() for p in out.iterdir()}
        said = [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if ": " in line]
        assert said == [f.name for f in frames]  # each image's line, in order
    assert len(written[1]) == 6 * 4 + 1 and written[1] == written[2]
    data = json.loads(written[2]["panoptic.json"])
    assert [im["file_name"] for im in data["images"]] == [f.name for f in frames]
    things = [s for a in data["annotations"] for s in a["segments_info"] if s["category_id"] >= 8]
    assert len(things) > 6  # cars and pedestrians, tracked from frame to frame


def test_infer_on_one_image_loads_one_pipeline(model_yaml, tmp_path, rng, monkeypatch):
    """A second pipeline is loaded for a second image only (by default): one image needs no second model."""
    import panoptic_node.cli as cli
    loaded = []
    real = cli._pipeline
    monkeypatch.setattr(cli, "_pipeline", lambda *a, **k: loaded.append(1) or real(*a, **k))
    image = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(image)
    assert cli.main(["infer", str(image), "--model", str(model_yaml), "--out", str(tmp_path / "o1")]) == 0
    assert len(loaded) == 1
    loaded.clear()
    assert cli.main(["infer", str(image), str(image), "--model", str(model_yaml), "--out", str(tmp_path / "o2"),
                     "--threads", "2"]) == 0
    assert len(loaded) == 2


def test_frame_normalization_is_each_frames_own_mean_and_spread():
    """`frame`: (x - the frame's mean) / its std x 0.6 over every channel, so a frame half as bright (or with
    twice the contrast) reaches the network unchanged; padding stays zero and out of the statistics."""
    from panoptic_node.inference.preprocess import FRAME_STD, normalize, preprocess
    from panoptic_node.model.config import InputConfig
    rgb = (np.random.default_rng(8).integers(0, 128, (32, 40, 3)) * 2).astype(np.uint8)
    x = rgb.astype(np.float64)
    want = (x - x.mean()) / x.std() * FRAME_STD
    assert np.allclose(normalize(rgb, "frame"), want, atol=1e-5)
    assert np.allclose(normalize(rgb // 2, "frame"), want, atol=1e-5)  # dusk: the same frame, half the light
    flat = np.full((8, 8, 3), 90, np.uint8)
    assert np.array_equal(normalize(flat, "frame"), np.zeros((8, 8, 3), np.float32))  # no division by zero
    padded = np.zeros((40, 40, 3), np.uint8)
    padded[:32] = rgb
    valid = np.zeros((40, 40), bool)
    valid[:32] = True
    assert np.allclose(normalize(padded, "frame", valid)[:32], want, atol=1e-5)
    t, pad, geom = preprocess(rgb, InputConfig(32, 40, 32, "frame"))  # 40 wide, padded to 64
    assert t.shape == (1, 3, 32, 64) and pad[0, :, 40:].all()
    assert np.allclose(t[0, :, :, :40].permute(1, 2, 0).numpy(), want, atol=1e-5)
    assert not t[0, :, :, 40:].any()


def test_white_balanced_frame_normalization_takes_a_colour_cast_out():
    """`frame_wb`: each channel times the frame's grey mean over its own (grey world), then `frame`; checked
    against that computed directly, a dusk-blue cast of the same street normalises to the same frame, the gains
    stop at 1.5 either way on a frame of one colour, and training's padding is left out of the statistics."""
    from panoptic_node.inference.preprocess import FRAME_STD, WB_LIMIT, normalize
    rgb = np.random.default_rng(5).integers(20, 200, (24, 30, 3)).astype(np.uint8)
    x = rgb.astype(np.float64)
    balanced = x * (x.mean() / x.reshape(-1, 3).mean(0))
    want = (balanced - balanced.mean()) / balanced.std() * FRAME_STD
    assert np.allclose(normalize(rgb, "frame_wb"), want, atol=1e-5)
    assert not np.allclose(normalize(rgb, "frame"), want, atol=1e-2)  # `frame` keeps the frame's colours
    blue = rgb.copy()
    blue[..., 0] = rgb[..., 0].astype(int) * 3 // 4  # the red channel at 3/4: the cast of a dusk street (0.88), and rounded
    assert np.abs(normalize(blue, "frame_wb") - want).max() < 0.05
    assert np.abs(normalize(blue, "frame") - normalize(rgb, "frame")).max() > 0.3
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0], red[..., 1:] = 200, 40  # a red bus filling the view: the gains stop at the limit
    r = red.astype(np.float64) * np.array([1 / WB_LIMIT, WB_LIMIT, WB_LIMIT])
    assert np.allclose(normalize(red, "frame_wb"), (r - r.mean()) / r.std() * FRAME_STD, atol=1e-5)
    padded = np.zeros((30, 30, 3), np.uint8)
    padded[:24] = rgb
    valid = np.zeros((30, 30), bool)
    valid[:24] = True
    assert np.allclose(normalize(padded, "frame_wb", valid)[:24], want, atol=1e-5)


def test_frames_far_from_the_learned_scale_are_named_once_per_size():
    from panoptic_node.inference.preprocess import OffScaleNotes, off_scale
    from panoptic_node.model.config import InputConfig
    cfg = InputConfig(short_side=360, max_size=480)
    assert off_scale(360, 480, cfg) == off_scale(1080, 1920, cfg) == off_scale(90, 120, cfg) == ""
    # a panorama: max_size leaves its short side at 43 px; a thumbnail blown up 360x
    assert off_scale(360, 4000, cfg).startswith("a 4000x360 frame runs at 480x43: max_size 480 leaves its short "
                                               "side at 43 px, under half the 360")
    assert off_scale(1, 1, cfg).startswith("a 1x1 frame is blown up 360x to 360x360")
    notes = OffScaleNotes(cfg)
    assert notes.first(360, 4000) and not notes.first(360, 4000) and not notes.first(360, 480)


def test_infer_cli_names_a_panorama_and_still_runs_it(model_yaml, tmp_path, rng, capsys):
    wide = tmp_path / "wide.png"  # 8:1, the tiny model's max_size 128 leaves it 16 px high
    Image.fromarray(rng.integers(0, 255, (40, 320, 3), dtype=np.uint8)).save(wide)
    normal = tmp_path / "normal.png"
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(normal)
    out = tmp_path / "out"
    assert main(["infer", str(wide), str(normal), "--model", str(model_yaml), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert said.count("warning") == 1
    assert "wide.png: warning: a 320x40 frame runs at 128x16: max_size 128 leaves its short side at 16 px" in said
    assert np.asarray(Image.open(out / "wide_semantic.png")).shape == (40, 320)


def test_infer_cli_bad_image_is_one_line_and_others_still_run(model_yaml, tmp_path, rng, capsys):
    good = tmp_path / "good.png"
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    assert main(["infer", str(bad), str(good), "--model", str(model_yaml), "--out", str(out)]) == 1
    err = capsys.readouterr()
    assert "cannot read image" in err.out + err.err and "bad.png" in err.out + err.err
    assert (out / "good_panoptic.png").is_file()
    assert len(json.loads((out / "panoptic.json").read_text())["annotations"]) == 1


def test_infer_cli_takes_a_folder_in_name_order_and_refuses_one_without_images(model_yaml, tmp_path, rng, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("b.png", "a.JPG", "c.jpeg"):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(frames / name,
                                                                              format="PNG" if name.endswith("png") else "JPEG")
    (frames / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main(["infer", str(frames), "--model", str(model_yaml), "--out", str(out)]) == 0
    data = json.loads((out / "panoptic.json").read_text())
    assert [im["file_name"] for im in data["images"]] == ["a.JPG", "b.png", "c.jpeg"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    capsys.readouterr()
    assert main(["infer", str(empty), "--model", str(model_yaml), "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"folder '{empty}' holds no .png / .jpg / .jpeg images" in err
    assert not (tmp_path / "out2").exists()
    # results among the images would be taken for images by the next run over the folder
    before = sorted(p.name for p in frames.iterdir())
    assert main(["infer", str(frames), "--model", str(model_yaml), "--out", str(frames)]) == 2
    assert "is (or holds, or lies inside) the input" in capsys.readouterr().err
    assert sorted(p.name for p in frames.iterdir()) == before


def test_infer_cli_writes_no_panoptic_json_when_no_frame_could_be_read(model_yaml, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    assert main(["infer", str(bad), str(tmp_path / "missing.png"), "--model", str(model_yaml), "--out", str(out)]) == 1
    assert "wrote nothing to" in capsys.readouterr().err
    assert not out.exists()  # made for the run, removed empty: nothing there looks like a result
    kept = tmp_path / "kept"  # a results folder the user had keeps what it held, and gets no panoptic.json
    kept.mkdir()
    (kept / "earlier_semantic.png").write_text("an earlier run's")
    assert main(["infer", str(bad), "--model", str(model_yaml), "--out", str(kept)]) == 2  # not asked to replace it
    assert "holds an earlier run's results; pass --overwrite" in capsys.readouterr().err
    assert main(["infer", str(bad), "--model", str(model_yaml), "--out", str(kept), "--overwrite"]) == 1
    assert sorted(p.name for p in kept.iterdir()) == ["earlier_semantic.png"]  # nothing to replace them with
    assert (kept / "earlier_semantic.png").read_text() == "an earlier run's"
    assert not (tmp_path / "kept.partial").exists()


def test_infer_overwrite_replaces_an_earlier_runs_results_whole_and_only_when_done(model_yaml, tmp_path, rng,
                                                                                   monkeypatch):
    """--overwrite rewrote in place: killed half-way, the earlier panoptic.json (complete-looking) stood beside
    the new run's PNGs, and an earlier run's PNGs of other images stayed beside the new panoptic.json."""
    from PIL import Image
    import panoptic_node.cli as cli
    images = []
    for name in ("a", "b", "c"):
        images.append(tmp_path / f"{name}.png")
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(images[-1])
    out = tmp_path / "out"
    assert main(["infer", str(images[0]), str(images[1]), "--model", str(model_yaml), "--out", str(out)]) == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    # a run over b and c killed after its first frame: the earlier results stand as they were
    from panoptic_node import atomic

    def dies_on_the_second_frame(array, path, *level):
        if path.name.startswith("c_"):  # b's results written, then Ctrl-C
            raise KeyboardInterrupt
        return real(array, path, *level)

    real = atomic.write_png
    monkeypatch.setattr(atomic, "write_png", dies_on_the_second_frame)
    assert cli.main(["infer", str(images[1]), str(images[2]), "--model", str(model_yaml), "--out", str(out),
                     "--overwrite", "--threshold", "0.9"]) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    assert (tmp_path / "out.partial").is_dir() and not (tmp_path / "out.partial" / "panoptic.json").exists()
    monkeypatch.setattr(atomic, "write_png", real)
    # run to the end: b and c replace a and b as a whole (a's PNGs no longer beside a JSON that omits them)
    assert main(["infer", str(images[1]), str(images[2]), "--model", str(model_yaml), "--out", str(out),
                 "--overwrite"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["panoptic.json"] + [f"{s}{x}" for s in "bc" for x in
                                                ("_panoptic.png", "_semantic.png", "_instances.png", "_overlay.png")])
    assert not (tmp_path / "out.partial").exists()


def test_a_disk_that_fills_is_named_with_what_was_left_on_it(model_yaml, tmp_path, rng, monkeypatch, capsys):
    """'[Errno 28] No space left on device' was all a full disk gave (replay, infer and convert, measured in a
    4 MB tmpfs): it names neither the disk nor the unfinished output that now holds its space."""
    import errno
    from PIL import Image
    import panoptic_node.cli as cli
    from panoptic_node import atomic
    from panoptic_node.errors import no_space
    images = []
    for name in ("a", "b"):
        images.append(tmp_path / f"{name}.png")
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(images[-1])
    out = tmp_path / "out"
    assert main(["infer", str(images[0]), "--model", str(model_yaml), "--out", str(out)]) == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    real = atomic.write_png

    def disk_fills_on_the_second_frame(array, path, *level):
        if path.name.startswith("b_"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(array, path, *level)

    monkeypatch.setattr(atomic, "write_png", disk_fills_on_the_second_frame)
    capsys.readouterr()
    assert cli.main(["infer", str(images[0]), str(images[1]), "--model", str(model_yaml), "--out", str(out),
                     "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(rf"panoptic-node infer: error: no space left on the disk holding '{re.escape(str(out))}' "
                        rf"\([0-9.]+ [MG]B free of [0-9.]+ [MG]B\): free space there or write the outputs elsewhere; "
                        rf"unfinished, left under their \.partial names: {re.escape(str(out))}\.partial \([0-9.]+ MB\) "
                        rf"\(remove them to get their space back\)", err), err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # the earlier results stand
    # the file the error names, when it names one; a file output's .partial name keeps its suffix
    video = tmp_path / "v.mp4"
    (tmp_path / "v.partial.mp4").write_bytes(b"x" * 2_000_000)
    line = no_space(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "v.partial.mp4")),
                    [None, str(video), True])
    assert line.startswith(f"no space left on the disk holding '{tmp_path / 'v.partial.mp4'}' (")
    assert line.endswith(f"left under their .partial names: {tmp_path / 'v.partial.mp4'} (2.0 MB) (remove them to get "
                         f"their space back)")


def test_cli_missing_model_is_one_line(capsys):
    assert main(["infer", "x.png", "--model", "no_such_model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no_such_model" in err
