"""Official-format and our own checkpoints reload to identical outputs; every broken file gives one
clear line naming the file and the problem."""
import argparse
import pickle

import pytest
import torch

from panoptic_node.model.checkpoint import (CheckpointError, load_weights, read_state_dict, save_checkpoint,
                                            save_official)
from panoptic_node.model.detr import build_model

from conftest import compact_config, randomize_batchnorm, small_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    m = build_model(small_config()).eval()
    with torch.no_grad():
        randomize_batchnorm(m)
    return m


def outputs(m):
    torch.manual_seed(5)
    x = torch.randn(1, 3, 64, 96)
    pad = torch.zeros(1, 64, 96, dtype=torch.bool)
    pad[:, :, 80:] = True
    with torch.no_grad():
        return m(x, pad)


def test_official_format_round_trip(model, tmp_path):
    path = tmp_path / "detr-official.pth"
    save_official(model, path)
    raw = torch.load(path, weights_only=True)["model"]
    # the layout facebookresearch/detr writes
    assert "detr.backbone.0.body.layer1.0.conv1.weight" in raw
    assert "detr.transformer.decoder.norm.weight" in raw and "mask_head.lay1.weight" in raw
    assert "bbox_attention.q_linear.weight" in raw and "detr.class_embed.weight" in raw
    fresh = build_model(small_config()).eval()
    assert load_weights(fresh, path) == "official"
    for a, b in zip(outputs(model), outputs(fresh)):
        assert torch.equal(a, b)


def test_official_training_checkpoint_with_args_loads(model, tmp_path):
    """Training checkpoints pickle argparse args next to the weights: allowed, nothing else is."""
    path = tmp_path / "checkpoint.pth"
    save_official(model, path)
    payload = torch.load(path, weights_only=True)
    payload["args"] = argparse.Namespace(lr=1e-4, masks=True)
    payload["epoch"] = 24
    torch.save(payload, path)
    fresh = build_model(small_config()).eval()
    assert load_weights(fresh, path) == "official"
    assert torch.equal(outputs(model)[0], outputs(fresh)[0])


def test_our_checkpoint_round_trip_compact(tmp_path):
    m = build_model(compact_config()).eval()
    path = tmp_path / "ours.pth"
    save_checkpoint(m, path)
    state, fmt, cfg = read_state_dict(path)
    assert fmt == "panoptic_node" and cfg["mask_head"] == "dot_product"
    fresh = build_model(compact_config()).eval()
    load_weights(fresh, path)
    for a, b in zip(outputs(m), outputs(fresh)):
        assert torch.equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.pth"]  # no partial file left beside it


def one_line(excinfo):
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_truncated_file(model, tmp_path):
    path = tmp_path / "cut.pth"
    save_official(model, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_weights(build_model(small_config()), path)
    assert "cut.pth" in one_line(e) and "truncated" in one_line(e)


def test_wrong_shape_key(model, tmp_path):
    path = tmp_path / "shape.pth"
    save_official(model, path)
    payload = torch.load(path, weights_only=True)
    payload["model"]["detr.class_embed.weight"] = torch.zeros(92, 128)  # a detection model's 91 classes
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as e:
        load_weights(build_model(small_config()), path)
    assert "class_embed.weight (92, 128) != (251, 128)" in one_line(e)


def test_missing_and_unexpected_keys(model, tmp_path):
    path = tmp_path / "keys.pth"
    save_official(model, path)
    payload = torch.load(path, weights_only=True)
    del payload["model"]["mask_head.out_lay.weight"]
    payload["model"]["detr.extra_head.weight"] = torch.zeros(1)
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as e:
        load_weights(build_model(small_config()), path)
    msg = one_line(e)
    assert "1 missing keys (masks.mask_head.out_lay.weight)" in msg
    assert "1 unexpected keys (extra_head.weight)" in msg


def test_our_checkpoint_of_another_model_names_the_model_it_holds(tmp_path):
    """Weights of an experiment (another backbone, saved with its config) given without their --model:
    the line says which model the file holds; a misfit file of the same name does not get the hint."""
    path = tmp_path / "wide.pth"
    save_checkpoint(build_model(compact_config(name="tiny_wide", hidden_dim=96)), path)
    with pytest.raises(CheckpointError) as e:
        load_weights(build_model(compact_config()), path)
    msg = one_line(e)
    assert "does not fit model 'tiny_lite0'" in msg
    assert msg.endswith(f"the file holds a 'tiny_wide' model (backbone efficientnet_lite0): pass --model {path} to "
                        f"run it with the config it carries, or the YAML it was trained with")
    save_checkpoint(build_model(compact_config(hidden_dim=96)), path)
    with pytest.raises(CheckpointError) as e:
        load_weights(build_model(compact_config()), path)
    assert "does not fit" in one_line(e) and "holds a" not in one_line(e)


def test_weights_trained_with_another_input_normalization_are_refused_not_run_on_wrong_input(tmp_path):
    """Weights of the same network that learned frames normalised otherwise (fixed '(x - 127) / 128' against
    each frame's own light) fit every tensor, so only the config they carry tells: one line, not worse maps."""
    from panoptic_node.model.config import InputConfig
    tf_input, frame_input = InputConfig(96, 128, 32, "tf"), InputConfig(96, 128, 32, "frame")
    path = tmp_path / "frame.pth"
    save_checkpoint(build_model(compact_config(input=frame_input)), path)
    with pytest.raises(CheckpointError) as e:
        load_weights(build_model(compact_config(input=tf_input)), path)
    assert one_line(e) == (f"weights file '{path}' was trained with input normalization 'frame' but model "
                           f"'tiny_lite0' normalizes frames 'tf': pass --model {path} to run it with the config "
                           f"it carries, or the YAML it was trained with")
    load_weights(build_model(compact_config(input=frame_input)), path)  # with its own normalization it loads


def test_a_checkpoint_as_model_brings_its_own_config(tmp_path, capsys):
    """--model runs/x/last.pth: the config the file carries, with the file as its weights (no YAML needed)."""
    from panoptic_node.cli import main
    from panoptic_node.model.checkpoint import load_model
    from panoptic_node.model.config import load_config
    torch.manual_seed(0)
    trained = build_model(compact_config(name="tiny_wide", hidden_dim=96))
    path = tmp_path / "run" / "last.pth"
    save_checkpoint(trained, path)
    cfg = load_config(str(path))
    assert cfg.weights == str(path.resolve())
    assert {**cfg.to_dict(), "weights": ""} == {**trained.cfg.to_dict(), "weights": ""}
    loaded = load_model(cfg)
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in loaded.state_dict().items())
    # a checkpoint without a config (the official layout) is one line saying what to pass instead
    official = tmp_path / "detr.pth"
    torch.save({"model": {"detr.class_embed.weight": torch.zeros(3, 4)}}, official)
    assert main(["infer", str(tmp_path / "x.png"), "--model", str(official), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "carries no model config (official checkpoint)" in err
    assert "pass a model name / YAML as --model and the file as --weights" in err
    assert not (tmp_path / "o").exists()
    # a file that is neither, and a name that is nowhere
    with pytest.raises(FileNotFoundError, match="'.*notes.txt' is not a .yaml config or a .pth checkpoint; expected one "
                                                r"of \[.*'street_lite0'\], a YAML path or a checkpoint"):
        (tmp_path / "notes.txt").write_text("hello")
        load_config(str(tmp_path / "notes.txt"))
    with pytest.raises(FileNotFoundError, match="model config 'street_lite9' not found"):
        load_config("street_lite9")


@pytest.mark.parametrize("content", [b"", b"hello, I am a text file\n", pickle.dumps([1, 2, 3])])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        load_weights(build_model(compact_config()), path)
    assert "notes.pth" in one_line(e)
    if content.startswith(b"hello"):  # named for what it is, not with torch's weights_only advice
        assert "not a torch checkpoint" in one_line(e) and "weights_only" not in one_line(e)


class Evil:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_arbitrary_pickle_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"detr.x": torch.zeros(1)}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError) as e:
        load_weights(build_model(compact_config()), path)
    assert "safely" in one_line(e)
    assert "arbitrary code ran" not in capsys.readouterr().out


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(build_model(compact_config()), tmp_path / "nope.pth")


def test_half_precision_checkpoint_loads_close(tmp_path):
    torch.manual_seed(2)
    m = build_model(compact_config()).eval()
    save_checkpoint(m, tmp_path / "full.pth")
    save_checkpoint(m, tmp_path / "half.pth", half=True)
    assert (tmp_path / "half.pth").stat().st_size < 0.6 * (tmp_path / "full.pth").stat().st_size
    fresh = build_model(compact_config()).eval()
    load_weights(fresh, tmp_path / "half.pth")
    assert all(p.dtype == torch.float32 for p in fresh.parameters())
    for a, b in zip(outputs(m), outputs(fresh)):
        torch.testing.assert_close(a, b, atol=0.05, rtol=0.05)


def test_a_weight_beyond_float16_is_refused_before_anything_is_written(tmp_path):
    m = build_model(compact_config()).eval()
    with torch.no_grad():
        next(b for n, b in m.named_buffers() if n.endswith("running_var"))[0] = 1e6  # a BatchNorm variance
    with pytest.raises(CheckpointError, match=r"running_var' holds 1e\+06, beyond float16's 65504"):
        save_checkpoint(m, tmp_path / "half.pth", half=True)
    assert not list(tmp_path.iterdir())
    save_checkpoint(m, tmp_path / "full.pth")  # float32 holds it
    fresh = build_model(compact_config()).eval()
    load_weights(fresh, tmp_path / "full.pth")


def test_ship_stores_a_runs_weights_in_float16_and_refuses_what_it_must(tmp_path, capsys):
    from panoptic_node.cli import main
    torch.manual_seed(3)
    m = build_model(compact_config()).eval()
    run = tmp_path / "run"
    save_checkpoint(m, run / "last.pth", epoch=72)
    out = tmp_path / "models" / "tiny_lite0.pth"
    assert main(["ship", "--model", str(run / "last.pth"), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "float16" in said
    assert f"int8 needs its scales: `panoptic-node calibrate --weights {out} --calib FRAMES`" in said  # none yet
    state, fmt, cfg = read_state_dict(out)
    assert fmt == "panoptic_node" and cfg["name"] == "tiny_lite0" and cfg["mask_head"] == "dot_product"
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    assert out.stat().st_size < 0.6 * (run / "last.pth").stat().st_size
    fresh = build_model(compact_config()).eval()
    load_weights(fresh, out)  # the shipped file through the normal loader: the trained model's outputs
    for a, b in zip(outputs(m), outputs(fresh)):
        torch.testing.assert_close(a, b, atol=0.05, rtol=0.05)

    # the int8 scales beside --out: kept by the same weights shipped again (the same bytes), not by others
    from panoptic_node.int8_scales import save_scales
    save_scales(out.with_suffix(".int8.json"), {"/x": 0.1}, out, 8, {})
    assert main(["ship", "--model", str(run / "last.pth"), "--out", str(out), "--overwrite"]) == 0
    assert "belongs to these weights: --backend auto runs int8" in capsys.readouterr().out
    torch.manual_seed(4)
    save_checkpoint(build_model(compact_config()), run / "other.pth")
    assert main(["ship", "--model", str(run / "other.pth"), "--out", str(out), "--overwrite"]) == 0
    assert "belongs to other weights and --backend auto runs fp32" in capsys.readouterr().out
    out.with_suffix(".int8.json").write_text('{"format": ')  # damaged, not stale: said as such
    assert main(["ship", "--model", str(run / "last.pth"), "--out", str(out), "--overwrite"]) == 0
    said = capsys.readouterr().out
    assert "tiny_lite0.int8.json' are not readable JSON" in said and "runs fp32" in said and "other weights" not in said
    assert len(said.strip().splitlines()) == 1
    assert main(["ship", "--model", str(run / "last.pth"), "--out", str(out), "--overwrite"]) == 0
    capsys.readouterr()

    # refused, each in one line, leaving what is there byte-identical
    shipped, source = out.read_bytes(), (run / "last.pth").read_bytes()
    assert main(["ship", "--model", str(run / "last.pth"), "--out", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["ship", "--model", str(run / "last.pth"), "--out", str(run / "last.pth"), "--overwrite"]) == 2
    assert main(["ship", "--model", str(run / "last.pth"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "expected a file name ending in .pth" in capsys.readouterr().err
    (run / "broken.pth").write_bytes(source[:1000])
    assert main(["ship", "--model", str(run / "last.pth"), "--weights", str(run / "broken.pth"), "--out", str(out),
                 "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "broken.pth" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == shipped and (run / "last.pth").read_bytes() == source
    # nothing half-written beside them
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny_lite0.int8.json", "tiny_lite0.pth"]
