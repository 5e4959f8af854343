"""SSDRec: the sparse relation graphs (exact on hand-made sequences, training rows only), the
self-augmentation (two insertions around one position, at most one removal), gradients into the graph
encoder, evaluation without augmentation, runs on both protocols with export."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recbole_denoise.model.relation_graphs import incompatible, top_k_rows, transitions, user_sequences_from_rows
from recbole_denoise.quick_start import run_recbole_denoise
from tests.conftest import CYCLIC_LEARN, build_model


def test_user_sequences_and_transitions():
    rows = (np.array([1, 1, 2]), np.array([[4, 0], [4, 5], [6, 0]]), np.array([1, 2, 1]), np.array([5, 6, 7]),
            np.array([0, 1, 2]))
    seqs = user_sequences_from_rows(*rows)
    assert seqs == {1: [4, 5, 6], 2: [6, 7]}
    counts, trans = transitions(seqs, 8, max_len=10)
    assert sorted(zip(*counts.nonzero())) == [(4, 5), (4, 6), (5, 6), (6, 7)]
    assert trans[4, 5] == pytest.approx(2 / 3) and trans[4, 6] == pytest.approx(1 / 3)
    assert trans[6, 7] == pytest.approx(1 / 2)
    _, short = transitions(seqs, 8, max_len=2)  # only the last two items of each sequence
    assert sorted(zip(*short.nonzero())) == [(5, 6), (6, 7)]


def test_incompatible_pairs_and_top_k():
    g = sp.csr_matrix(np.array([[0, 2, 0, 0], [2, 0, 3, 1], [0, 3, 0, 0], [0, 1, 0, 0]], float))
    hot = np.array([True, True, True, False])
    assert incompatible(g, hot).toarray().tolist() == [[0, 0, 5, 0], [0, 0, 0, 0], [5, 0, 0, 0], [0, 0, 0, 0]]
    m = sp.csr_matrix(np.array([[0, 3, 1, 3], [1, 0, 0, 0]], float))
    assert top_k_rows(m, 2).toarray().tolist() == [[0, 3, 0, 3], [1, 0, 0, 0]]


def is_subsequence(short, long):
    it = iter(long)
    return all(item in it for item in short)


@pytest.fixture
def ssdrec(tiny_cfg):
    return build_model("SSDRec", tiny_cfg(MAX_ITEM_LIST_LENGTH=40, ssdrec_min_cooccurrence=1))


def test_graphs_read_training_rows_only(ssdrec):
    net, train, _, dataset = ssdrec
    ui = torch.sparse_coo_tensor(net.user_item_indices, net.user_item_values, net.graph_sizes["user_item"],
                                 check_invariants=False).to_dense()
    for uid, seq in list(dataset.user_sequences.items())[:10]:
        row = ui[uid]
        assert row.sum().item() == pytest.approx(1.0)
        assert set(row.nonzero().view(-1).tolist()) == set(seq[:-2].tolist())  # no validation / test item
    for name in ("trans_out", "trans_in", "item_neg", "user_pos", "user_neg"):
        assert len(getattr(net, f"{name}_values")) > 0, name


def test_augmentation_inserts_two_items_around_one_position(ssdrec):
    net, train, _, _ = ssdrec
    batch = next(iter(train))
    seq, users = batch["item_id_list"], batch["user_id"]
    torch.manual_seed(0)
    ids, emb = net.augment(seq, users)
    assert net.augmented > 0
    for orig, new, n in zip(seq.tolist(), ids.tolist(), batch["item_length"].tolist()):
        orig, new = orig[:n], [i for i in new if i > 0]
        if n > seq.size(1) - 2:
            continue
        assert n + 1 <= len(new) <= n + 2
        # the original items stay in order, at most one of them removed
        assert any(is_subsequence(orig[:k] + orig[k + 1:], new) for k in range(n + 1))
    assert emb.shape == (*ids.shape, net.adapter.item_embedding.embedding_dim)


def test_training_reaches_the_graph_encoder_and_evaluation_does_not_augment(ssdrec):
    net, train, test, _ = ssdrec
    batch = next(iter(train))
    sum(net.calculate_loss(batch)).backward()
    assert net.user_mix.weight.grad is not None and net.att_in.weight.grad.abs().sum() > 0
    net.eval()
    eval_batch = next(iter(test))[0]
    ids, inputs = net.view(eval_batch)
    assert torch.equal(ids, eval_batch["item_id_list"])
    with torch.no_grad():
        assert torch.equal(net.full_sort_predict(eval_batch), net.full_sort_predict(eval_batch))


def test_one_epoch_on_both_protocols_with_export(tiny_cfg):
    cfg = tiny_cfg(MAX_ITEM_LIST_LENGTH=20, ssdrec_min_cooccurrence=1, noise_ratio=0.1)
    d = run_recbole_denoise("SSDRec", "tiny", config_dict=cfg)["model_denoise"]
    assert {"precision", "recall", "f1", "auc"} <= set(d) and d["n_noise"] > 0
    window = run_recbole_denoise("SSDRec", "tiny", config_dict={**cfg, "protocol": "window"}, saved=False)
    assert window["timings"]["epochs"] == 1 and "model_denoise" not in window


def test_exported_flags_beat_random_flags_on_synthetic_noise(clustered_cfg):
    cfg = clustered_cfg(**{**CYCLIC_LEARN, "epochs": 15}, ssdrec_min_cooccurrence=2)
    d = run_recbole_denoise("SSDRec", "clustered", config_dict=cfg, saved=False)["model_denoise"]
    p, f = d["n_noise"] / d["n"], d["n_flagged"] / d["n"]
    assert f > 0.02 and d["f1"] > 1.1 * (2 * p * f / (p + f)) and d["precision"] > p
