"""compare-runs: training runs judged against a baseline on their held-out evaluations."""
import json

import numpy as np
import pytest
import torch

from panoptic_node.cli import main
from panoptic_node.training.compare import (load_run, per_class_table, pool_seeds, recipe_difference, table, verdict,
                                            y_range)

SETTINGS = {"config": "street_lite0", "epochs": 36, "lr_backbone": 3e-5, "seed": 0, "val_drives": ["0006R0"],
            "train_drives": ["0016E5", "0001TP"], "semantic_aux": 0.0, "copy_paste": 0.0}
POST = {"threshold": 0.5, "min_area": 16, "merge": "score_prob", "overlap": 0.5, "split_things": 256}


def make_run(folder, miou, pq, settings=None, postprocess=POST, epochs=36, every=3, iou=None):
    """A run folder as train writes it: history.json (held-out scores every `every` epochs) and a
    checkpoint.pth with the run's settings. `miou` / `pq`: a value per evaluation, or one for all;
    `iou`: per evaluation, {class: IoU} (then recorded as train records it)."""
    folder.mkdir(parents=True)
    history = []
    evals = [e for e in range(1, epochs + 1) if e % every == 0]
    miou = miou if isinstance(miou, list) else [miou] * len(evals)
    for epoch in range(1, epochs + 1):
        entry = {"epoch": epoch, "loss": 10.0 - epoch / 10}
        if epoch in evals:
            i = evals.index(epoch)
            entry["val"] = {"pq": pq, "pq_things": pq / 3, "pq_stuff": pq * 1.2, "miou": miou[i],
                            **({"postprocess": postprocess} if postprocess else {}),
                            **({"iou": iou[i]} if iou else {})}
        history.append(entry)
    (folder / "history.json").write_text(json.dumps(history))
    if settings is not False:
        torch.save({"settings": {**SETTINGS, **(settings or {})}, "epoch": epochs}, folder / "checkpoint.pth")
    return folder


def test_late_mean_equals_direct_computation(tmp_path):
    values = list(np.linspace(0.40, 0.50, 12))
    run = load_run(make_run(tmp_path / "r", values, 0.3))
    late = [v for e, v in zip(range(3, 37, 3), values) if e >= 24]
    assert run.late_mean("miou", 24) == pytest.approx(np.mean(late))
    assert len(late) == 5


@pytest.mark.parametrize("miou, pq, expected", [
    (0.495, 0.300, "adopt"),                        # +1.5 mIoU, PQ level
    (0.487, 0.300, "not adopted: mean mIoU +0.7"),  # under the gain asked for
    (0.495, 0.290, "not adopted: PQ -1.0"),         # gains mIoU, loses PQ beyond 0.3
    (0.495, 0.298, "adopt"),                        # PQ -0.2 is allowed
])
def test_the_rule(tmp_path, miou, pq, expected):
    base = load_run(make_run(tmp_path / "base", 0.48, 0.300))
    run = load_run(make_run(tmp_path / "new", miou, pq, {"copy_paste": 0.5}))
    assert verdict(run, base, 24, 1.0, 0.3).startswith(expected)
    assert verdict(base, base, 24, 1.0, 0.3) == "baseline"


def test_runs_of_different_schedules_are_judged_on_their_own_last_evaluations(tmp_path, capsys):
    """--last N: the mean over each run's last N evaluations, so a 60-epoch run is judged on 48-60
    against a 36-epoch baseline's 24-36 (from-epoch would compare 24-60 with 24-36)."""
    base_values = list(np.linspace(0.40, 0.48, 12))
    long_values = list(np.linspace(0.40, 0.60, 20))
    base = load_run(make_run(tmp_path / "base", base_values, 0.3))
    long = load_run(make_run(tmp_path / "long", long_values, 0.3, {"epochs": 60}, epochs=60))
    assert long.late_mean("miou", 24, last=5) == pytest.approx(np.mean(long_values[-5:]))
    assert base.late_mean("miou", 24, last=5) == pytest.approx(np.mean(base_values[-5:]))
    gain = 100 * (np.mean(long_values[-5:]) - np.mean(base_values[-5:]))
    assert verdict(long, base, 24, 1.0, 0.3, last=5) == "adopt" and gain > 1.0
    assert verdict(long, base, 24, 1.0, 0.3, last=13) == (
        "no evaluations for the mean over the last 13 evaluations: base (12 evaluations, the last at epoch 36); "
        "--last N judges each run on its own last N evaluations")
    # a window past the baseline's end names the baseline, not the run that has evaluations there
    assert verdict(long, base, 48, 1.0, 0.3).startswith(
        "no evaluations for the mean over epoch 48 on: base (12 evaluations, the last at epoch 36);")
    assert main(["compare-runs", str(tmp_path / "long"), "--baseline", str(tmp_path / "base"), "--last", "5"]) == 0
    out = capsys.readouterr().out
    assert "mean mIoU over the last 5 evaluations" in out and f"| {100 * np.mean(long_values[-5:]):.1f} | adopt |" in out


def test_what_is_not_judged(tmp_path):
    base = load_run(make_run(tmp_path / "base", 0.48, 0.3))
    other_drive = load_run(make_run(tmp_path / "fold1TP", 0.60, 0.4, {"val_drives": ["0001TP"]}))
    assert verdict(other_drive, base, 24, 1.0, 0.3) == "not comparable: held out 0001TP, the baseline 0006R0"
    other_post = load_run(make_run(tmp_path / "nosplit", 0.60, 0.4, postprocess={**POST, "split_things": 0}))
    assert verdict(other_post, base, 24, 1.0, 0.3).startswith("not comparable: scored with other post-processing")
    merged = load_run(make_run(tmp_path / "merged", 0.60, 0.4, postprocess={**POST, "merge_things": True}))
    assert verdict(merged, base, 24, 1.0, 0.3).startswith("not comparable: scored with other post-processing")
    # a setting added after the baseline was written, recorded at its default: the same post-processing
    later = load_run(make_run(tmp_path / "later", 0.50, 0.3, postprocess={**POST, "merge_things": False}))
    assert verdict(later, base, 24, 1.0, 0.3) == "adopt"
    running = make_run(tmp_path / "running", 0.60, 0.4)
    history = json.loads((running / "history.json").read_text())[:20]
    (running / "history.json").write_text(json.dumps(history))
    assert verdict(load_run(running), base, 24, 1.0, 0.3) == "unfinished (epoch 20 of 36)"
    assert verdict(base, load_run(running), 24, 1.0, 0.3) == "the baseline is unfinished (epoch 20 of 36)"
    # one that train --stop-below ended says so, alone and pooled with a seed that ran on
    stopped = make_run(tmp_path / "stopped", 0.47, 0.3, {"seed": 1})
    history = json.loads((stopped / "history.json").read_text())[:24]
    history[-1]["stopped"] = {"stop_below": 49.0, "stop_from": 24, "mean_miou": 47.0}
    (stopped / "history.json").write_text(json.dumps(history))
    expected = "not adopted: stopped by its rule at epoch 24 (mean mIoU 47.0 from epoch 24, under 49.0)"
    assert verdict(load_run(stopped), base, 24, 1.0, 0.3) == expected
    pooled = pool_seeds([load_run(make_run(tmp_path / "seed0", 0.47, 0.3)), load_run(stopped)])
    assert len(pooled) == 1 and verdict(pooled[0], base, 24, 1.0, 0.3) == expected
    # a history from before the post-processing was recorded is judged, with the caveat
    old = load_run(make_run(tmp_path / "old", 0.50, 0.3, postprocess=None))
    assert verdict(old, base, 24, 1.0, 0.3) == "adopt (post-processing not recorded: PQ may not compare)"


def test_the_recipe_column_names_what_differs(tmp_path):
    base = load_run(make_run(tmp_path / "base", 0.48, 0.3))
    run = load_run(make_run(tmp_path / "new", 0.48, 0.3, {"copy_paste": 0.5, "scale": [1.0, 2.0]}))
    assert recipe_difference(run, base) == "copy_paste 0.5, scale 1.0,2.0"
    # a run saved before a setting existed had it off: no difference there
    older = make_run(tmp_path / "older", 0.48, 0.3)
    state = torch.load(older / "checkpoint.pth", weights_only=True)
    del state["settings"]["copy_paste"]
    torch.save(state, older / "checkpoint.pth")
    assert recipe_difference(load_run(older), base) == "same recipe"
    assert recipe_difference(load_run(make_run(tmp_path / "nockpt", 0.48, 0.3, settings=False)), base) \
        == "settings unknown (no settings.json or checkpoint.pth)"


def test_an_archived_run_keeps_its_recipe_in_settings_json(tmp_path):
    """history.json + settings.json, checkpoints deleted (models/experiments/runs/): the recipe is still known,
    so the run is judged and pooled as it was with its checkpoint."""
    base = load_run(make_run(tmp_path / "base", 0.48, 0.30))
    kept = make_run(tmp_path / "seed1", 0.50, 0.31, {"seed": 1})
    settings = torch.load(kept / "checkpoint.pth", weights_only=True)["settings"]
    with_checkpoint = load_run(kept)
    (kept / "checkpoint.pth").unlink()
    (kept / "settings.json").write_text(json.dumps(settings))
    archived = load_run(kept)
    assert archived.settings == with_checkpoint.settings == settings
    assert recipe_difference(archived, base) == "seed 1"
    assert verdict(archived, base, 24, 1.0, 0.3) == verdict(with_checkpoint, base, 24, 1.0, 0.3) == "adopt"
    pooled, = pool_seeds([base, archived])  # the same recipe but for the seed: one pool
    assert len(pooled.members) == 2
    for text, says in (('{"seed": ', "is not readable JSON"), ('[1, 2]', "is not a run's settings")):
        (kept / "settings.json").write_text(text)
        with pytest.raises(ValueError, match=says):
            load_run(kept)


def archived_with_network(folder, normalization):
    """An archived run as train writes it since runs record their network (settings.json, no checkpoint)."""
    from panoptic_node.model.config import load_config
    from panoptic_node.training.train import run_record
    cfg = load_config("street_lite0")
    cfg.input.normalization = normalization
    settings = torch.load(folder / "checkpoint.pth", weights_only=True)["settings"]
    (folder / "checkpoint.pth").unlink()
    (folder / "settings.json").write_text(json.dumps(run_record(settings, cfg)))
    return load_run(folder)


def test_runs_of_one_config_name_but_other_networks_are_other_recipes(tmp_path):
    """`street_lite0` named the fixed input until 2026-12-04 and the frame normalisation since: runs record
    their network, so two such runs are not pooled as seeds of one recipe, and the recipe column says why."""
    fixed = archived_with_network(make_run(tmp_path / "fixed", 0.48, 0.30), "tf")
    frame = archived_with_network(make_run(tmp_path / "frame", 0.50, 0.33, {"seed": 1}), "frame")
    assert recipe_difference(frame, fixed) == "network.input.normalization frame, seed 1"
    assert [len(p.members) for p in pool_seeds([fixed, frame])] == [1, 1]
    # one of the same network is a seed of the first recipe
    again = archived_with_network(make_run(tmp_path / "fixed_s1", 0.47, 0.29, {"seed": 1}), "tf")
    assert recipe_difference(again, fixed) == "seed 1"
    assert [len(p.members) for p in pool_seeds([fixed, again])] == [2]
    # a run from before networks were recorded is not taken for either
    older = load_run(make_run(tmp_path / "older", 0.48, 0.30))
    assert recipe_difference(older, fixed) == "network unrecorded"
    assert recipe_difference(fixed, older) == "network unrecorded in the baseline"
    assert [len(p.members) for p in pool_seeds([older, fixed])] == [1, 1]


def test_a_network_key_added_since_a_run_takes_the_default_the_run_trained(tmp_path):
    """`drop_connect` and `decoder` came after runs began recording their network: a run recorded without them
    trained their defaults, so it pools with a new run of `decoder: detr` and not with one of `decoder: masked`."""
    older = archived_with_network(make_run(tmp_path / "older", 0.48, 0.30), "frame")
    settings = json.loads((tmp_path / "older" / "settings.json").read_text())
    for key in ("drop_connect", "decoder"):
        settings["network"].pop(key)
    (tmp_path / "older" / "settings.json").write_text(json.dumps(settings))
    older = load_run(tmp_path / "older")
    assert "decoder" not in older.settings["network"]
    detr = archived_with_network(make_run(tmp_path / "detr", 0.47, 0.29, {"seed": 1}), "frame")
    assert recipe_difference(detr, older) == "seed 1"
    assert [len(p.members) for p in pool_seeds([older, detr])] == [2]
    masked = load_run(tmp_path / "detr")
    masked.settings["network"]["decoder"] = "masked"
    assert recipe_difference(masked, older) == "network.decoder masked, seed 1"


def test_a_checkpoint_with_its_config_gives_the_network(tmp_path):
    """Runs whose settings.json is gone still know their network from the checkpoint's model config."""
    from panoptic_node.model.config import load_config
    folder = make_run(tmp_path / "r", 0.48, 0.30)
    state = torch.load(folder / "checkpoint.pth", weights_only=True)
    state["model_config"] = load_config("street_lite0").to_dict()
    torch.save(state, folder / "checkpoint.pth")
    run = load_run(folder)
    assert run.settings["network"]["input"]["normalization"] == "frame"
    assert run.full_settings()["network.mask_dim"] == 128 and "network.name" not in run.full_settings()


def test_table_rows_hold_the_last_evaluation(tmp_path):
    base = load_run(make_run(tmp_path / "base", 0.482, 0.302))
    run = load_run(make_run(tmp_path / "ema", [0.40] * 11 + [0.497], 0.305, {"ema": 0.998}))
    rows = table([base, run], base, 24, 1.0, 0.3).splitlines()
    assert rows[0].startswith("| run | recipe vs base |")
    assert rows[3] == ("| ema | ema 0.998 | 36 | 30.5 | 10.2 | 36.6 | 49.7 | 41.9 "
                       "| not adopted: mean mIoU -6.3 (needs +1.0) |")


def test_command_prints_the_table_and_draws_the_curves(tmp_path, capsys):
    base = make_run(tmp_path / "base", 0.48, 0.30)
    new = make_run(tmp_path / "new", 0.50, 0.31, {"seed": 1})
    chart = tmp_path / "curves.png"
    assert main(["compare-runs", str(new), "--baseline", str(base), "--chart", str(chart)]) == 0
    out = capsys.readouterr().out
    assert "| new | seed 1 | 36 | 31.0 |" in out and "| adopt |" in out
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def per_class_run(folder, rng, settings=None):
    """A run whose mIoU is the mean of its classes' IoU, as train records both."""
    iou = [{c: float(v) for c, v in zip(("road", "car", "bicyclist"), rng.uniform(0, 1, 3))} for _ in range(12)]
    return make_run(folder, [float(np.mean(list(d.values()))) for d in iou], 0.3, settings, iou=iou), iou


def test_per_class_means_are_taken_over_the_rules_window(tmp_path, capsys):
    rng = np.random.default_rng(0)
    base_folder, base_iou = per_class_run(tmp_path / "base", rng)
    new_folder, new_iou = per_class_run(tmp_path / "new", rng, {"seed": 1})
    base, new = load_run(base_folder), load_run(new_folder)
    window = [i for i, e in enumerate(range(3, 37, 3)) if e >= 24]  # epochs 24, 27, ..., 36
    car = np.mean([new_iou[i]["car"] for i in window])
    assert new.late_class_means(24)["car"] == pytest.approx(car)
    # the classes' means average to the rule's mean mIoU, as the mIoU is their mean
    assert np.mean(list(new.late_class_means(24).values())) == pytest.approx(new.late_mean("miou", 24))
    assert new.late_class_means(24, last=2)["road"] == pytest.approx(np.mean([d["road"] for d in new_iou[-2:]]))
    base_car = np.mean([base_iou[i]["car"] for i in window])
    rows = per_class_table([base, new], base, 24).splitlines()
    assert rows[0] == "| class (IoU, mean over epoch 24 on) | base | new |"
    assert rows[3] == f"| car | {100 * base_car:.1f} | {100 * car:.1f} ({100 * car - 100 * base_car:+.1f}) |"
    # seeds pooled: each class the mean of the members, as their mIoU is
    again, again_iou = per_class_run(tmp_path / "new_s2", rng, {"seed": 2})
    pooled = pool_seeds([new, load_run(again)])[0]
    both = np.mean([[new_iou[i]["bicyclist"], again_iou[i]["bicyclist"]] for i in window])
    assert pooled.late_class_means(24)["bicyclist"] == pytest.approx(both)
    assert main(["compare-runs", str(new_folder), "--baseline", str(base_folder), "--per-class"]) == 0
    assert "| car | " in capsys.readouterr().out.split("| class (IoU")[1]
    # a window past the baseline's end: its column is dashes, and a line under the table says why
    longer_iou = [{c: float(v) for c, v in zip(("road", "car", "bicyclist"), rng.uniform(0, 1, 3))} for _ in range(20)]
    longer = load_run(make_run(tmp_path / "longer", [float(np.mean(list(d.values()))) for d in longer_iou], 0.3,
                               {"epochs": 60}, epochs=60, iou=longer_iou))
    later = per_class_table([base, longer], base, 48).splitlines()
    longer_car = np.mean([d["car"] for d in longer_iou[-5:]])  # epochs 48, 51, ..., 60
    assert later[3] == f"| car | - | {100 * longer_car:.1f} |"
    assert later[-1] == ("no evaluations over epoch 48 on: base (12 evaluations, the last at epoch 36); --last N judges "
                         "each run on its own last N evaluations")
    assert per_class_table([base, new], base, 37).startswith("no evaluations over epoch 37 on: base (12 evaluations, "
                                                             "the last at epoch 36), new (12 evaluations")
    assert per_class_table([base, new], base, 24).splitlines()[-1].startswith("| bicyclist |")  # none when all have
    # histories from before per-class IoU was recorded say so instead of a table of dashes
    old = load_run(make_run(tmp_path / "old", 0.48, 0.3))
    assert per_class_table([old], old, 24).startswith("no per-class IoU over epoch 24 on")


def test_command_refuses_bad_input_in_one_line_and_changes_nothing(tmp_path, capsys):
    base = make_run(tmp_path / "base", 0.48, 0.30)
    chart = tmp_path / "curves.png"
    chart.write_bytes(b"the user's picture")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def refused(*argv, says):
        assert main(["compare-runs", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err, err

    refused(str(base), "--baseline", str(base), "--chart", str(chart), says="exists; pass --overwrite")
    refused(str(tmp_path / "nowhere"), "--baseline", str(base), says="is not a folder")
    (tmp_path / "empty").mkdir()
    refused(str(tmp_path / "empty"), "--baseline", str(base), says="has no history.json")
    broken = make_run(tmp_path / "broken", 0.5, 0.3)
    (broken / "history.json").write_text('[{"epoch": 1, "val"')
    refused(str(broken), "--baseline", str(base), says="is not readable JSON")
    novalidation = make_run(tmp_path / "release", 0.5, 0.3, {"val_drives": []}, every=100)
    refused(str(novalidation), "--baseline", str(base), says="has no held-out evaluation")
    badckpt = make_run(tmp_path / "badckpt", 0.5, 0.3)
    (badckpt / "checkpoint.pth").write_bytes(b"not a zip")
    refused(str(badckpt), "--baseline", str(base), says="is not a training checkpoint")
    # a NaN rule compared false with every gain: it adopted every run
    refused(str(base), "--baseline", str(base), "--min-miou-gain", "nan",
            says="--min-miou-gain nan: expected a finite number of points")
    refused(str(base), "--baseline", str(base), "--max-pq-drop", "-0.5", says="expected a finite number of points >= 0")
    refused(str(base), "--baseline", str(base), "--from-epoch", "0", says="--from-epoch 0: expected >= 1")
    for p, data in before.items():
        assert p.read_bytes() == data, p


def test_seeds_of_one_recipe_are_judged_on_their_mean(tmp_path):
    """--pool-seeds: a lucky run of the new recipe (seed 0) no longer carries it; the mean of its seeds
    does, computed here directly from the members' numbers."""
    base0 = load_run(make_run(tmp_path / "base_s0", 0.481, 0.287))
    base1 = load_run(make_run(tmp_path / "base_s1", 0.485, 0.290, {"seed": 1}))
    lucky = load_run(make_run(tmp_path / "dusk_s0", 0.520, 0.344, {"colour": "dusk"}))
    plain = load_run(make_run(tmp_path / "dusk_s1", 0.480, 0.282, {"colour": "dusk", "seed": 1}))
    other = load_run(make_run(tmp_path / "ema", 0.50, 0.30, {"ema": 0.998}))
    assert verdict(lucky, base0, 24, 2.0, 0.3) == "adopt"          # one run each: the lucky one wins
    base, dusk, ema = pool_seeds([base0, lucky, other, base1, plain])
    assert [m.name for m in base.members] == ["base_s0", "base_s1"] and [m.name for m in dusk.members] == \
        ["dusk_s0", "dusk_s1"] and ema.members == [other]
    last = dusk.evaluations[-1]["val"]
    assert last["pq"] == pytest.approx((0.344 + 0.282) / 2) and last["miou"] == pytest.approx((0.520 + 0.480) / 2)
    assert last["pq_things"] == pytest.approx((0.344 + 0.282) / 6) and last["postprocess"] == POST
    assert dusk.late_mean("miou", 24) == pytest.approx(0.500)
    assert verdict(dusk, base, 24, 2.0, 0.3) == "not adopted: mean mIoU +1.7 (needs +2.0)"
    assert recipe_difference(dusk, base) == "colour dusk"         # the seeds are not a difference any more
    rows = table([base, dusk, ema], base, 24, 2.0, 0.3).splitlines()
    assert rows[3].startswith("| dusk_s0 + dusk_s1 (2 runs) | colour dusk | 36 | 31.3 (28.2-34.4) | 10.4 | 37.6 "
                              "| 50.0 (48.0-52.0) | 50.0 (48.0-52.0) | not adopted")
    assert rows[4].startswith("| ema (1 run) | ema 0.998 | 36 | 30.0 | 10.0 | 36.0 | 50.0 | 50.0 |")


def test_pooling_keeps_apart_what_measures_differently(tmp_path):
    """Runs that differ in more than the seed, in post-processing, or whose recipe is unknown are not
    pooled; an unfinished member leaves its pool unfinished, judged on the epochs every member has."""
    a = load_run(make_run(tmp_path / "a", 0.48, 0.30))
    b = load_run(make_run(tmp_path / "b", 0.48, 0.30, {"seed": 1, "lr_backbone": 1e-5}))
    c = load_run(make_run(tmp_path / "c", 0.48, 0.30, {"seed": 2}, postprocess={**POST, "split_things": 0}))
    d = load_run(make_run(tmp_path / "d", 0.48, 0.30, settings=False))
    e = load_run(make_run(tmp_path / "e", 0.48, 0.30, settings=False))
    assert [len(p.members) for p in pool_seeds([a, b, c, d, e])] == [1, 1, 1, 1, 1]
    running = make_run(tmp_path / "running", 0.50, 0.30, {"seed": 3})
    history = json.loads((running / "history.json").read_text())[:20]
    (running / "history.json").write_text(json.dumps(history))
    pooled, = pool_seeds([a, load_run(running)])
    assert not pooled.finished and pooled.last_epoch == 20
    assert [e["epoch"] for e in pooled.evaluations] == [3, 6, 9, 12, 15, 18]
    assert pooled.evaluations[-1]["val"]["miou"] == pytest.approx(0.49)


def test_command_pools_seeds(tmp_path, capsys):
    base = make_run(tmp_path / "base", 0.48, 0.30)
    again = make_run(tmp_path / "base_s1", 0.50, 0.30, {"seed": 1})
    new = make_run(tmp_path / "new", 0.51, 0.31, {"copy_paste": 0.5})
    assert main(["compare-runs", str(new), str(again), "--baseline", str(base), "--pool-seeds"]) == 0
    out = capsys.readouterr().out
    assert "| base + base_s1 (2 runs) | - | 36 | 30.0 (30.0-30.0) | " in out and "| 49.0 (48.0-50.0) |" in out
    # judged against the pool's 49.0 (+2.0), not the first run's 48.0 (+3.0): a 2.5 rule tells them apart
    assert "| new (1 run) | copy_paste 0.5 | 36 | 31.0 |" in out and "| adopt |" in out
    assert main(["compare-runs", str(new), str(again), "--baseline", str(base), "--pool-seeds",
                 "--min-miou-gain", "2.5"]) == 0
    assert "not adopted: mean mIoU +2.0 (needs +2.5)" in capsys.readouterr().out


class WritesAFile:
    """A pickle that would create a file when unpickled with the full unpickler."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_checkpoint_cannot_run_code_when_its_settings_are_read(tmp_path, capsys):
    base = make_run(tmp_path / "base", 0.48, 0.30)
    evil = make_run(tmp_path / "evil", 0.5, 0.3)
    witness = tmp_path / "ran"
    torch.save({"settings": SETTINGS, "payload": WritesAFile(witness)}, evil / "checkpoint.pth")
    assert main(["compare-runs", str(evil), "--baseline", str(base)]) == 2
    assert "is not a training checkpoint" in capsys.readouterr().err
    assert not witness.exists()


def test_the_charts_y_range_follows_the_late_evaluations(tmp_path):
    """A run that starts slowly (0.1 % at epoch 3) does not set the bottom of the chart: the range covers
    every evaluation from half-way to the rule's window on, with 2 points below and 1 above."""
    late = [0.001, 0.07, 0.32] + [0.45] * 9   # epochs 3..36; values from epoch 12 on: 0.45
    base = load_run(make_run(tmp_path / "base", list(np.linspace(0.40, 0.48, 12)), 0.3))
    slow = load_run(make_run(tmp_path / "slow", late, 0.3))
    low, high = y_range([base, slow], "miou", 24)
    from_twelve = [v for e, v in zip(range(3, 37, 3), np.linspace(0.40, 0.48, 12)) if e >= 12] + [0.45]
    assert low == pytest.approx(100 * min(from_twelve) - 2.0)
    assert high == pytest.approx(100 * 0.48 + 1.0)
    # with no evaluation that late, every value counts
    assert y_range([slow], "miou", 200)[0] == pytest.approx(0.1 - 2.0)


def test_every_archived_run_loads_with_its_recipe():
    """models/experiments/runs/ keeps the runs the records cite: each must load, know its recipe and be
    finished, or `compare-runs` on it would print an unknown recipe instead of the recorded verdict; a run its
    rule stopped early says so in its README row, at the epoch its history ends."""
    from pathlib import Path
    archive = Path(__file__).resolve().parents[1] / "models" / "experiments" / "runs"
    folders = sorted(p for p in archive.iterdir() if p.is_dir())
    assert folders, f"no archived runs in {archive}"
    rows = {line.split("|")[1].strip(): line for line in (archive / "README.md").read_text().splitlines()
            if line.startswith("| ")}
    for folder in folders:
        run = load_run(folder)
        assert folder.name in rows, f"{folder.name} is not listed in the README"
        assert run.settings is not None, folder.name
        assert run.finished or f"stopped at epoch {run.last_epoch}" in rows[folder.name], folder.name
        assert run.settings["val_drives"] and run.evaluations, folder.name
