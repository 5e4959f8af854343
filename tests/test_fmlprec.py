"""FMLPRec: the filter layer's maths, left alignment, equivalence with SASRec under no_filters, a run through
run_recbole_denoise on both protocols, learning on the cyclic dataset, bad keys."""
import pytest
import torch

from recbole_denoise.errors import ConfigError
from recbole_denoise.model.sequential_recommender.fmlprec import FilterLayer, left_align
from tests.conftest import build_model


def test_left_align_moves_histories_to_the_end():
    seq = torch.tensor([[1, 2, 3, 0, 0], [4, 0, 0, 0, 0], [5, 6, 7, 8, 9]])
    out = left_align(seq, torch.tensor([3, 1, 5]))
    assert out.tolist() == [[0, 0, 1, 2, 3], [0, 0, 0, 0, 4], [5, 6, 7, 8, 9]]
    assert seq[0].tolist() == [1, 2, 3, 0, 0]  # input untouched


def test_filter_layer_is_a_frequency_filter():
    torch.manual_seed(0)
    layer = FilterLayer(max_seq_length=8, hidden_size=4, dropout_prob=0.0, layer_norm_eps=1e-12).eval()
    x = torch.randn(2, 8, 4)
    with torch.no_grad():
        layer.complex_weight.zero_()
        layer.complex_weight[0, :, :, 0] = 1.0  # all-pass filter: F~ = F
        assert torch.allclose(layer(x), layer.LayerNorm(2 * x), atol=1e-5)
        layer.complex_weight.zero_()
        layer.complex_weight[0, 0, :, 0] = 1.0  # only the zero frequency: F~ = the time mean of F
        expected = layer.LayerNorm(x + x.mean(dim=1, keepdim=True).expand_as(x))
        assert torch.allclose(layer(x), expected, atol=1e-5)


def test_no_filters_is_sasrec(tiny_cfg):
    cfg = tiny_cfg(no_filters=True, fmlp_padding="right", n_layers=2, n_heads=2)
    sasrec, _, test, _ = build_model("SASRec", cfg)
    fmlp = build_model("FMLPRec", cfg)[0]
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(fmlp) == count(sasrec)
    assert set(fmlp.state_dict()) == set(sasrec.state_dict())
    fmlp.load_state_dict(sasrec.state_dict())
    fmlp.eval()
    sasrec.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        assert torch.allclose(fmlp.full_sort_predict(batch), sasrec.full_sort_predict(batch), atol=1e-6)
    filtered = build_model("FMLPRec", tiny_cfg(n_layers=2))[0]
    assert not hasattr(filtered, "trm_encoder") and len(filtered.filter_encoder.filters) == 2
    assert count(filtered) != count(sasrec)


@pytest.mark.parametrize("padding", ["left", "right"])
def test_padding_sides(tiny_cfg, padding):
    """Left padding reads only the history (anything after it is dropped); right padding lets the global
    filter see the padded tail, so a token there changes the output."""
    net, _, test, _ = build_model("FMLPRec", tiny_cfg(fmlp_padding=padding, MAX_ITEM_LIST_LENGTH=40))
    net.eval()
    batch = next(iter(test))[0]
    seq, lengths = batch["item_id_list"], batch["item_length"]
    short = lengths < seq.size(1)
    assert short.any()
    tail = seq.clone()
    tail[short, -1] = 1
    with torch.no_grad():
        same = torch.isclose(net.forward(tail, lengths), net.forward(seq, lengths), atol=1e-6).all(dim=1)
    assert same.all() if padding == "left" else not same[short].any()



def test_bad_padding_is_named(tiny_cfg):
    with pytest.raises(ConfigError, match="fmlp_padding"):
        build_model("FMLPRec", tiny_cfg(fmlp_padding="middle"))


# -- the official loss: BCE against one sampled negative, read at the last position ------------------------------
def test_bce_loss_is_the_official_binary_cross_entropy(tiny_cfg):
    """loss_type BCE = mean over rows of -log sigmoid(<s, e_pos>) - log(1 - sigmoid(<s, e_neg>)), with the
    negative drawn by RecBole's sampler (one uniform item per row, never the target)."""
    net, train, _, _ = build_model("FMLPRec", tiny_cfg(loss_type="BCE"))
    assert net.loss_type == "BCE"
    batch = next(iter(train))
    pos, neg = batch[net.POS_ITEM_ID], batch[net.NEG_ITEM_ID]
    assert neg.shape == pos.shape and not (neg == pos).any()
    net.eval()  # no dropout, so forward is the same in both computations
    with torch.no_grad():
        s = net.forward(batch[net.ITEM_SEQ], batch[net.ITEM_SEQ_LEN])
        pos_logit = (s * net.item_embedding.weight[pos]).sum(-1)
        neg_logit = (s * net.item_embedding.weight[neg]).sum(-1)
        expected = (-torch.log(torch.sigmoid(pos_logit)) - torch.log(1 - torch.sigmoid(neg_logit))).mean()
        assert torch.allclose(net.calculate_loss(batch), expected, atol=1e-6)
        # and it is not RecBole's BPR on the same pair, -log sigmoid(pos - neg)
        assert not torch.allclose(expected, -torch.nn.functional.logsigmoid(pos_logit - neg_logit).mean())


def test_bce_one_epoch_through_run_recbole_denoise(tiny_cfg, tmp_path):
    """Only ``loss_type: BCE`` is needed: the pairwise input and one uniform negative per row come with it."""
    import json

    from recbole_denoise import run_recbole_denoise

    out = tmp_path / "r.json"
    r = run_recbole_denoise("FMLPRec", "tiny", config_dict=tiny_cfg(loss_type="BCE", result_file=str(out)))
    assert 0.0 <= r["test_result"]["ndcg@10"] <= 1.0
    neg = json.loads(out.read_text())["config"]["train_neg_sample_args"]
    assert neg["distribution"] == "uniform" and neg["sample_num"] == 1


def test_bad_loss_type_is_named(tiny_cfg):
    with pytest.raises(ConfigError, match="loss_type"):
        build_model("FMLPRec", tiny_cfg(loss_type="MSE"))


def test_bce_without_negatives_is_named(tiny_cfg):
    with pytest.raises(ConfigError, match="train_neg_sample_args"):
        build_model("FMLPRec", tiny_cfg(loss_type="BCE", train_neg_sample_args={"distribution": None}))
