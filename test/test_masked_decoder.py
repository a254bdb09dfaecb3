"""`decoder: masked` (Mask2Former's masked attention over the mask head's pyramid): the cells a query may read
against a direct computation, pooling against block means, what each decoder layer can and cannot see, and the
model end to end."""
import numpy as np
import pytest
import torch

from panoptic_node.inference.backend import TorchBackend
from panoptic_node.inference.pipeline import Pipeline
from panoptic_node.model.detr import build_model
from panoptic_node.model.masked_decoder import MaskedPyramidDecoder, additive_mask, allowed_cells, pooled_to
from panoptic_node.model.transformer import TransformerDecoderLayer

from conftest import compact_config


def test_allowed_cells_equal_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, 4, generator=g) - 1.0
    logits[0, 2] = -5.0                      # a mask on nowhere
    logits[1, 3] = -5.0
    logits[1, 3, 2, 3] = 5.0                 # ... on only in the padding
    pad = torch.zeros(2, 3, 4, dtype=torch.bool)
    pad[1, 2:] = True
    got = allowed_cells(logits, pad)
    for b in range(2):
        real = [not bool(pad[b].flatten()[i]) for i in range(12)]
        for q in range(5):
            on = [bool(logits[b, q].flatten()[i] > 0) and real[i] for i in range(12)]
            want = on if any(on) else real
            assert got[b, q].tolist() == want, (b, q)
    assert got[0, 2].all() and got[1, 3].tolist() == [True] * 8 + [False] * 4


def test_additive_mask_is_zero_where_allowed_and_minus_infinity_elsewhere_for_every_head():
    allowed = torch.tensor([[[True, False, True]], [[False, False, True]]])
    m = additive_mask(allowed, nheads=3, dtype=torch.float32)
    assert m.shape == (6, 1, 3)
    for b in range(2):
        for h in range(3):
            row = m[b * 3 + h, 0]  # MultiheadAttention's order: batch-major, then head
            assert torch.equal(row == 0, allowed[b, 0]) and torch.isinf(row[~allowed[b, 0]]).all()


def test_pooled_logits_are_the_means_of_their_blocks():
    x = torch.randn(1, 2, 8, 12)
    got = pooled_to(x, (2, 3))
    want = torch.stack([torch.stack([x[..., 4 * i:4 * i + 4, 4 * j:4 * j + 4].mean((-2, -1)) for j in range(3)], -1)
                        for i in range(2)], -2)
    torch.testing.assert_close(got, want)
    assert pooled_to(x, (8, 12)) is x


@pytest.fixture
def two_layer_decoder():
    torch.manual_seed(0)
    d, heads, q = 16, 4, 3
    layers = torch.nn.ModuleList(TransformerDecoderLayer(d, heads, 32, 0.0) for _ in range(2))
    decoder = MaskedPyramidDecoder(d, mask_dim=8, finer_levels=1).eval()
    memory = torch.randn(1, d, 2, 3)
    finer = torch.randn(1, 8, 4, 6)
    pad = torch.zeros(1, 8, 12, dtype=torch.bool)
    pad[:, :, 8:] = True                     # a third of the frame: the memory's last column, the finer level's last two
    query_pos = torch.randn(q, 1, d)
    # the mask the second layer steers by, fixed: query 0 on the finer level's top-left 2 x 2 cells only
    logits = torch.full((1, q, 4, 6), -1.0)
    logits[0, 0, :2, :2] = 1.0

    def run(memory, finer):
        pos = torch.zeros(1, d, 2, 3)
        levels = decoder.levels(memory, pos, [finer], pad)
        with torch.no_grad():
            return decoder(layers, torch.nn.LayerNorm(d), query_pos, levels, lambda h: logits, heads)
    return run, memory, finer


def test_the_second_layer_reads_only_where_the_first_layer_s_mask_is_on(two_layer_decoder):
    run, memory, finer = two_layer_decoder
    base = run(memory, finer)
    assert base.shape == (2, 3, 1, 16)
    outside = finer.clone()
    outside[..., 2:, :] += 3.0               # every finer cell but query 0's
    outside[..., :2, 2:] += 3.0
    moved = run(memory, outside)
    torch.testing.assert_close(moved[1, 0], base[1, 0])          # query 0 cannot see them
    assert not torch.allclose(moved[1, 1], base[1, 1])           # query 1 (mask on nowhere) reads them all
    inside = finer.clone()
    inside[..., 1, 1] += 3.0
    assert not torch.allclose(run(memory, inside)[1, 0], base[1, 0])


def test_the_first_layer_reads_its_whole_level_but_not_the_padding(two_layer_decoder):
    run, memory, finer = two_layer_decoder
    base = run(memory, finer)
    real, padded = memory.clone(), memory.clone()
    real[..., 0, 0] += 3.0
    padded[..., :, 2] += 3.0                 # the memory's padded column
    assert not torch.allclose(run(real, finer)[0], base[0])
    torch.testing.assert_close(run(padded, finer)[0], base[0])


def test_masked_model_detects_through_the_pipeline(rng):
    torch.manual_seed(0)
    cfg = compact_config(decoder="masked")
    model = build_model(cfg).eval()
    plain = build_model(compact_config()).eval()
    extra = {k for k in model.state_dict()} - {k for k in plain.state_dict()}
    assert extra and all(k.startswith("masked_decoder.") for k in extra)  # DETR's own names stay where they are
    with torch.no_grad():
        out = model.detect(torch.randn(2, 3, 64, 96), torch.zeros(2, 64, 96, dtype=torch.bool))
    assert out.aux_hs.shape == (cfg.dec_layers, 2, cfg.num_queries, cfg.hidden_dim)
    result = Pipeline(cfg, TorchBackend(model))(rng.integers(0, 255, (72, 100, 3), dtype=np.uint8))
    assert result.panoptic.shape == (72, 100) and len(result.segments) > 0
