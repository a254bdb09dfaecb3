"""`train --semantic-map W [--semantic-map-balance P]`: a per-pixel class loss on the queries' own semantic map
(MaskFormer's semantic inference, normalised per pixel). Checked against a direct computation, with and without
class weights; it reaches the queries' classes and masks and one step lowers it; the run records it and resume
reproduces an uninterrupted run; the saved model is the model alone."""
import numpy as np
import pytest
import torch

from panoptic_node.model.detr import build_model
from panoptic_node.model.losses import SetCriterion
from panoptic_node.taxonomy import VOID, get_taxonomy
from panoptic_node.training.data import CamVid
from panoptic_node.training.semantic_map import query_semantic_map, semantic_map_loss
from panoptic_node.training.train import freeze_batchnorm, make_batch, training_loss

from conftest import compact_config
from test_training import TINY_TRAIN_ARGS, make_dataset, whole_and_resumed, write_tiny_config


@pytest.fixture
def tiny_setup(tmp_path, rng):
    make_dataset(tmp_path / "data", rng)
    write_tiny_config(tmp_path)
    return tmp_path


def direct_map(logits, masks):
    """The same map, pixel by pixel and query by query in plain loops over numpy arrays."""
    logits, masks = logits.double().numpy(), masks.double().numpy()
    b, q, k1 = logits.shape
    out = np.zeros((b, k1 - 1, masks.shape[-1]))
    for i in range(b):
        for j in range(q):
            e = np.exp(logits[i, j] - logits[i, j].max())
            p = (e / e.sum())[:-1]  # the last class is "no object"
            out[i] += p[:, None] * (1 / (1 + np.exp(-masks[i, j])))[None]
    return out / out.sum(1, keepdims=True)


def test_the_map_and_its_loss_equal_a_direct_computation():
    torch.manual_seed(0)
    logits, masks = torch.randn(2, 5, 4 + 1) * 2, torch.randn(2, 5, 12) * 3
    semantic = torch.randint(0, 4, (2, 12))
    semantic[0, :5] = VOID
    expected_map = direct_map(logits, masks)
    got = query_semantic_map(logits, masks)
    assert got.shape == (2, 4, 12) and np.allclose(got.double().numpy(), expected_map, atol=1e-5)
    assert torch.allclose(got.sum(1), torch.ones(2, 12), atol=1e-5)

    labelled = (semantic != VOID).numpy()
    picked = np.take_along_axis(np.log(expected_map), semantic.clamp(max=3).numpy()[:, None], 1)[:, 0]
    assert np.isclose(float(semantic_map_loss(logits, masks, semantic)), -picked[labelled].mean(), atol=1e-4)
    # weighted: each labelled pixel's loss times its class's weight, over the sum of those weights
    weights = torch.tensor([0.2, 1.0, 4.0, 9.0])
    w = weights.numpy()[semantic.clamp(max=3).numpy()][labelled]
    weighted = float(semantic_map_loss(logits, masks, semantic, weights))
    assert np.isclose(weighted, -(w * picked[labelled]).sum() / w.sum(), atol=1e-4)
    assert not np.isclose(weighted, float(semantic_map_loss(logits, masks, semantic)), atol=1e-3)
    # nothing labelled: 0, not NaN, and still in the graph (backward runs, with zero gradients)
    empty = semantic_map_loss(logits.requires_grad_(), masks, torch.full_like(semantic, VOID))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_a_query_that_says_no_object_does_not_colour_the_map():
    """Only the classes' share of a query's probability counts: a query sure of "no object" changes nothing."""
    logits = torch.tensor([[[5.0, 0.0, 0.0], [0.0, 0.0, 30.0]]])  # query 1: class 0; query 2: no object
    masks = torch.tensor([[[4.0, -4.0], [9.0, 9.0]]])
    alone = query_semantic_map(logits[:, :1], masks[:, :1])
    assert torch.allclose(query_semantic_map(logits, masks), alone, atol=1e-4)


def test_one_step_with_the_semantic_map_loss_lowers_it_through_the_queries(tiny_setup):
    from panoptic_node.training.train import loss_layers
    cfg = compact_config()
    torch.manual_seed(0)
    model = build_model(cfg, pretrained_backbone=True).train()
    freeze_batchnorm(model)
    samples = CamVid(tiny_setup / "data", "train").load_all()[:2]
    images, pad, targets = make_batch(samples, np.random.default_rng(0), (64, 96), "tf",
                                      get_taxonomy("camvid").thing_lut)
    semantic = torch.stack([t["semantic"].flatten() for t in targets])
    # alone, the loss reaches the queries, their classes and the pixel features their masks are made from
    logits, _, masks = loss_layers(model, images, pad)[0]  # the last decoder layer, on the loss grid
    semantic_map_loss(logits, masks, semantic).backward()
    for name in ("query_embed.weight", "class_embed.weight", "backbone._conv_stem.weight"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name
    model.zero_grad()

    crit = SetCriterion(cfg.num_classes)
    weights = torch.linspace(0.5, 3.0, cfg.num_classes)
    before, parts = training_loss(model, crit, images, pad, targets, semantic_map=2.0, semantic_map_weights=weights)
    set_only, _ = training_loss(model, crit, images, pad, targets)
    assert torch.allclose(before, set_only + 2.0 * parts["semantic_map"], atol=1e-4)
    assert np.isclose(parts["semantic_map"], float(semantic_map_loss(logits, masks, semantic, weights).detach()), atol=1e-5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    before.backward()
    opt.step()
    with torch.no_grad():
        after, after_parts = training_loss(model, crit, images, pad, targets, semantic_map=2.0,
                                           semantic_map_weights=weights)
    assert float(after) < float(before.detach()) and after_parts["semantic_map"] < parts["semantic_map"]


def test_with_query_groups_the_map_is_the_models_own_queries(tiny_setup):
    """The extra groups are thrown away after training: the map that is trained is the one inference makes."""
    from panoptic_node.training.query_groups import QueryGroups
    from panoptic_node.training.train import loss_layers
    cfg = compact_config()
    torch.manual_seed(0)
    model = build_model(cfg, pretrained_backbone=True).train()
    freeze_batchnorm(model)
    groups = QueryGroups(3, cfg.num_queries, cfg.hidden_dim)
    samples = CamVid(tiny_setup / "data", "train").load_all()[:2]
    images, pad, targets = make_batch(samples, np.random.default_rng(0), (64, 96), "tf",
                                      get_taxonomy("camvid").thing_lut)
    semantic = torch.stack([t["semantic"].flatten() for t in targets])
    _, parts = training_loss(model, SetCriterion(cfg.num_classes), images, pad, targets, query_groups=groups,
                             semantic_map=1.0)
    with torch.no_grad():
        every = loss_layers(model, images, pad, model.detect(images, pad, groups))[0]
        own = semantic_map_loss(every[0][:, :cfg.num_queries], every[2][:, :cfg.num_queries], semantic)
        all_groups = semantic_map_loss(every[0], every[2], semantic)
    assert np.isclose(parts["semantic_map"], float(own), atol=1e-5)
    assert not np.isclose(parts["semantic_map"], float(all_groups), atol=1e-4)


def test_resume_with_the_semantic_map_loss_reproduces_an_uninterrupted_run(tiny_setup):
    """Class-weighted: the weights are not saved, so a resumed run must recompute the same ones."""
    from panoptic_node.training.train import train
    a, b = whole_and_resumed(tiny_setup, semantic_map=1.0, semantic_map_balance=1.0)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["settings"]["semantic_map"] == 1.0 and a["settings"]["semantic_map_balance"] == 1.0
    plain = torch.load(tiny_setup / "a" / "last.pth", weights_only=False)["model"]
    assert set(plain) == set(a["model"])  # nothing added to the model
    with pytest.raises(ValueError, match="semantic_map_balance 1.0 -> 0.5"):
        train(str(tiny_setup / "tiny.yaml"), str(tiny_setup / "data"), str(tiny_setup / "b"), epochs=2,
              batch_size=2, crop=(64, 96), val_every=0, resume=True, semantic_map=1.0, semantic_map_balance=0.5,
              log=lambda *_: None)


def test_the_train_command_passes_the_semantic_map_loss_on(tiny_setup):
    from panoptic_node.cli import main
    out = tiny_setup / "cli_run"
    threads = torch.get_num_threads()
    try:
        rc = main(["train", "--config", str(tiny_setup / "tiny.yaml"), "--data", str(tiny_setup / "data"),
                   "--out", str(out), *TINY_TRAIN_ARGS, "--semantic-map", "1.5", "--semantic-map-balance", "0.5"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    settings = torch.load(out / "checkpoint.pth", weights_only=False)["settings"]
    assert (settings["semantic_map"], settings["semantic_map_balance"], settings["semantic_aux"]) == (1.5, 0.5, 0.0)
