"""`decoder_layer: mask2former`: each decoder layer attends to the memory before the queries, which start from
learned features instead of zeros (Mask2Former's order). The layer against a direct computation in that order, the
queries' starting content, the one new parameter, a training step, the pipeline, and the configs it refuses."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from panoptic_node.inference.backend import TorchBackend
from panoptic_node.inference.pipeline import Pipeline
from panoptic_node.model.config import ModelConfig
from panoptic_node.model.detr import build_model
from panoptic_node.model.transformer import TransformerDecoderLayer
from panoptic_node.training.train import train

from conftest import compact_config
from test_training import make_dataset, one_training_step, write_tiny_config


def attend(mha, query, key, value, key_padding=None):
    """nn.MultiheadAttention's computation written out: per-head scaled dot products over its own projections."""
    d, h = mha.embed_dim, mha.num_heads
    wq, wk, wv = mha.in_proj_weight.split(d)
    bq, bk, bv = mha.in_proj_bias.split(d)
    q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)  # L x B x D

    def heads(t):
        return t.reshape(t.shape[0], t.shape[1] * h, d // h).transpose(0, 1)       # (B * h) x L x D/h
    scores = heads(q) @ heads(k).transpose(1, 2) / (d // h) ** 0.5
    if key_padding is not None:
        scores = scores.masked_fill(key_padding.repeat_interleave(h, 0)[:, None, :], float("-inf"))
    out = (scores.softmax(-1) @ heads(v)).transpose(0, 1).reshape(query.shape)
    return mha.out_proj(out)


def direct(layer, tgt, memory, padding, pos, query_pos, cross_first):
    def among(t):
        return layer.norm1(t + attend(layer.self_attn, t + query_pos, t + query_pos, t))

    def to_memory(t):
        return layer.norm2(t + attend(layer.multihead_attn, t + query_pos, memory + pos, memory, padding))
    t = among(to_memory(tgt)) if cross_first else to_memory(among(tgt))
    return layer.norm3(t + layer.linear2(F.relu(layer.linear1(t))))


@pytest.mark.parametrize("cross_first", [True, False])
def test_a_layer_computes_its_order(cross_first):
    torch.manual_seed(0)
    layer = TransformerDecoderLayer(32, 4, 64, 0.0, cross_first=cross_first).eval()
    tgt, query_pos = torch.randn(5, 2, 32), torch.randn(5, 2, 32)
    memory, pos = torch.randn(7, 2, 32), torch.randn(7, 2, 32)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 5:] = True
    with torch.no_grad():
        got = layer(tgt, memory, padding, pos, query_pos)
        torch.testing.assert_close(got, direct(layer, tgt, memory, padding, pos, query_pos, cross_first))
        # the other order gives another answer, so the comparison above tells the two apart
        other = direct(layer, tgt, memory, padding, pos, query_pos, not cross_first)
    assert (got - other).abs().max() > 1e-2


def decoder_start(model, images, pad):
    """The queries' content the decoder starts from (its first argument)."""
    seen = {}

    def keep(_, args):  # returns None: a hook's return value would replace the arguments
        seen["tgt"] = args[0]
    hook = model.transformer.decoder.register_forward_pre_hook(keep)
    with torch.no_grad():
        model.detect(images, pad)
    hook.remove()
    return seen["tgt"]


def test_the_queries_start_from_learned_features_and_the_default_from_zero():
    torch.manual_seed(0)
    images, pad = torch.randn(2, 3, 64, 96), torch.zeros(2, 64, 96, dtype=torch.bool)
    model = build_model(compact_config(decoder_layer="mask2former")).eval()
    start = decoder_start(model, images, pad)                      # Q x B x D
    assert start.shape == (model.cfg.num_queries, 2, model.cfg.hidden_dim)
    for b in range(2):
        torch.testing.assert_close(start[:, b], model.query_feat.weight)
    assert all(layer.cross_first for layer in model.transformer.decoder.layers)
    plain = build_model(compact_config()).eval()
    assert not decoder_start(plain, images, pad).any()
    assert not any(layer.cross_first for layer in plain.transformer.decoder.layers)


def test_the_only_new_parameter_is_the_query_features():
    m2f = build_model(compact_config(decoder_layer="mask2former")).state_dict()
    plain = build_model(compact_config()).state_dict()
    assert set(m2f) - set(plain) == {"query_feat.weight"}
    assert set(plain) <= set(m2f)
    assert all(m2f[k].shape == plain[k].shape for k in plain)


def test_one_training_step_lowers_the_loss_and_reaches_the_query_features(tmp_path, rng):
    model, before, after = one_training_step(tmp_path, rng, compact_config(decoder_layer="mask2former"))
    assert model.query_feat.weight.grad.abs().sum() > 0 and model.query_embed.weight.grad.abs().sum() > 0
    assert after < before


def test_the_pipeline_runs_it(rng):
    torch.manual_seed(0)
    cfg = compact_config(decoder_layer="mask2former")
    result = Pipeline(cfg, TorchBackend(build_model(cfg).eval()))(rng.integers(0, 255, (72, 100, 3), dtype=np.uint8))
    assert result.panoptic.shape == (72, 100) and len(result.segments) > 0


def test_the_masked_decoder_is_refused_in_one_line():
    with pytest.raises(ValueError) as err:
        compact_config(decoder_layer="mask2former", decoder="masked").validate("model config test")
    message = str(err.value)
    assert "\n" not in message and "decoder_layer mask2former" in message and "decoder detr" in message


def test_the_schema_allows_detr_and_mask2former_only():
    base = compact_config().to_dict()
    for good in ("detr", "mask2former"):
        assert ModelConfig.from_dict({**base, "decoder_layer": good}).decoder_layer == good
    with pytest.raises(ValueError, match="decoder_layer"):
        ModelConfig.from_dict({**base, "decoder_layer": "pre_norm"})


def test_query_groups_are_refused_before_anything_is_written(tmp_path, rng):
    import yaml
    make_dataset(tmp_path / "data", rng)
    write_tiny_config(tmp_path)
    cfg = yaml.safe_load((tmp_path / "tiny.yaml").read_text())
    (tmp_path / "m2f.yaml").write_text(yaml.safe_dump({**cfg, "decoder_layer": "mask2former"}))
    with pytest.raises(ValueError, match="--query-groups is built for DETR's decoder layers; .* has decoder_layer "
                                         "mask2former"):
        train(str(tmp_path / "m2f.yaml"), str(tmp_path / "data"), str(tmp_path / "run"), epochs=1, query_groups=2,
              log=lambda *_: None)
    assert not (tmp_path / "run").exists()
