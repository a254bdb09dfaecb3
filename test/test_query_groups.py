"""Group DETR's training-only query groups (`--query-groups K`): each group reads only itself, so the model's
own queries give what they give without the groups; the training loss is each group's set loss, matched on its
own, averaged; the saved model is the model alone; resume reproduces; a bad K is one line."""
import copy

import numpy as np
import pytest
import torch

from panoptic_node.model.detr import build_model
from panoptic_node.model.losses import SetCriterion
from panoptic_node.taxonomy import get_taxonomy
from panoptic_node.training.data import CamVid
from panoptic_node.training.query_groups import QueryGroups
from panoptic_node.training.train import freeze_batchnorm, make_batch, train, training_loss

from conftest import compact_config
from test_training import TINY_TRAIN_ARGS, make_dataset, whole_and_resumed, write_tiny_config

Q = 12  # compact_config's queries


@pytest.fixture
def tiny_setup(tmp_path, rng):
    make_dataset(tmp_path / "data", rng)
    write_tiny_config(tmp_path)
    return tmp_path


def model_and_groups(k=3, seed=0):
    cfg = compact_config()
    torch.manual_seed(seed)
    model = build_model(cfg, pretrained_backbone=True).train()
    freeze_batchnorm(model)
    return cfg, model, QueryGroups(k, cfg.num_queries, cfg.hidden_dim)


def test_the_mask_keeps_each_group_to_itself():
    _, model, groups = model_and_groups(k=3)
    queries, mask = groups.queries(model.query_embed.weight)
    assert queries.shape == (3 * Q, 64) and torch.equal(queries[:Q], model.query_embed.weight)
    assert torch.equal(queries[Q:], groups.extra.weight)
    for i in range(3 * Q):
        for j in range(3 * Q):
            assert float(mask[i, j]) == (0.0 if i // Q == j // Q else float("-inf")), (i, j)


def test_the_models_own_queries_answer_as_without_the_groups_and_each_group_reads_only_itself(rng):
    _, model, groups = model_and_groups(k=3)
    model.eval()
    images = torch.from_numpy(rng.standard_normal((2, 3, 64, 96)).astype(np.float32))
    pad = torch.zeros(2, 64, 96, dtype=torch.bool)
    with torch.no_grad():
        alone = model.detect(images, pad)
        grouped = model.detect(images, pad, groups)
        assert grouped.aux_hs.shape[2] == 3 * Q
        for a, b in ((alone.aux_hs, grouped.aux_hs[:, :, :Q]), (alone.aux_logits, grouped.aux_logits[:, :, :Q]),
                     (alone.aux_boxes, grouped.aux_boxes[:, :, :Q])):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        # other queries for the third group: the first two answer exactly as before, the third otherwise
        groups.extra.weight[Q:] += 1.0
        moved = model.detect(images, pad, groups)
    torch.testing.assert_close(moved.aux_hs[:, :, :2 * Q], grouped.aux_hs[:, :, :2 * Q], rtol=1e-4, atol=1e-5)
    assert (moved.aux_hs[:, :, 2 * Q:] - grouped.aux_hs[:, :, 2 * Q:]).abs().max() > 1e-2
    # and the second group is the model with its queries in place of its own
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.query_embed.weight.copy_(groups.extra.weight[:Q])
        torch.testing.assert_close(other.detect(images, pad).aux_hs, moved.aux_hs[:, :, Q:2 * Q], rtol=1e-4,
                                   atol=1e-5)


def _batch(tiny_setup):
    samples = CamVid(tiny_setup / "data", "train").load_all()
    return make_batch(samples[:2], np.random.default_rng(0), (64, 96), "tf", get_taxonomy("camvid").thing_lut)


def test_the_loss_is_the_mean_of_each_groups_own_set_loss(tiny_setup):
    """Each group matched on its own: its loss is the loss of the model with that group's queries as its own."""
    cfg, model, groups = model_and_groups(k=3)
    images, pad, targets = _batch(tiny_setup)
    crit = SetCriterion(cfg.num_classes)
    with torch.no_grad():
        grouped, parts = training_loss(model, crit, images, pad, targets, query_groups=groups)
        each = []
        for g in range(3):
            alone = copy.deepcopy(model)
            if g:
                alone.query_embed.weight.copy_(groups.extra.weight[(g - 1) * Q:g * Q])
            each.append(training_loss(alone, crit, images, pad, targets))
    assert float(grouped) == pytest.approx(float(sum(loss for loss, _ in each)) / 3, rel=1e-4)
    assert parts["dice"] == pytest.approx(sum(p["dice"] for _, p in each) / 3, rel=1e-4)
    assert len({round(float(loss), 4) for loss, _ in each}) == 3  # three different groups, not one counted thrice


def test_one_step_with_query_groups_lowers_the_loss_and_teaches_the_extra_queries(tiny_setup):
    cfg, model, groups = model_and_groups(k=3)
    images, pad, targets = _batch(tiny_setup)
    crit = SetCriterion(cfg.num_classes)
    opt = torch.optim.AdamW(list(model.parameters()) + list(groups.parameters()), lr=1e-4)
    before, _ = training_loss(model, crit, images, pad, targets, query_groups=groups)
    opt.zero_grad()
    before.backward()
    assert groups.extra.weight.grad.abs().sum() > 0 and model.query_embed.weight.grad.abs().sum() > 0
    opt.step()
    with torch.no_grad():
        after, _ = training_loss(model, crit, images, pad, targets, query_groups=groups)
    assert float(after) < float(before.detach())


def test_resume_with_query_groups_reproduces_an_uninterrupted_run_and_ships_the_model_alone(tiny_setup):
    a, b = whole_and_resumed(tiny_setup, query_groups=2)
    for part in ("model", "query_groups"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert a["settings"]["query_groups"] == 2 and a["query_groups"]["extra.weight"].shape == (Q, 64)
    last = torch.load(tiny_setup / "a" / "last.pth", weights_only=False)["model"]
    assert set(last) == set(a["model"]) and last["query_embed.weight"].shape == (Q, 64)
    with pytest.raises(ValueError, match="query_groups 2 -> 1"):
        train(str(tiny_setup / "tiny.yaml"), str(tiny_setup / "data"), str(tiny_setup / "b"), epochs=3,
              batch_size=2, crop=(64, 96), val_every=0, resume=True, log=lambda *_: None)


@pytest.mark.parametrize("value", ["0", "12", "-1"])
def test_a_query_group_count_out_of_range_is_one_line_before_anything_is_written(tiny_setup, capsys, value):
    from panoptic_node.cli import main
    threads = torch.get_num_threads()
    out = tiny_setup / "run"
    try:
        rc = main(["train", "--config", str(tiny_setup / "tiny.yaml"), "--data", str(tiny_setup / "data"),
                   "--out", str(out), *TINY_TRAIN_ARGS, "--query-groups", value])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"--query-groups {value}: expected a whole number from 1" in err
    assert not out.exists()


def test_query_groups_with_the_masked_decoder_are_refused_before_anything_is_written(tiny_setup):
    import yaml
    cfg = yaml.safe_load((tiny_setup / "tiny.yaml").read_text())
    (tiny_setup / "masked.yaml").write_text(yaml.safe_dump({**cfg, "decoder": "masked"}))
    with pytest.raises(ValueError, match="--query-groups is built for DETR's decoder; .* has decoder masked"):
        train(str(tiny_setup / "masked.yaml"), str(tiny_setup / "data"), str(tiny_setup / "run"), epochs=1,
              query_groups=2, log=lambda *_: None)
    assert not (tiny_setup / "run").exists()
