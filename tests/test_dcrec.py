"""DCRec: exact transition and co-interaction graphs on hand-made rows, the graphs the model builds from a
RecBole training split, the removed edges and conformity weights, runs on both protocols, learning, bad keys."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from recbole_denoise.errors import ConfigError
from recbole_denoise.model import item_graphs
from tests.conftest import FIXTURES, build_model


def padded(histories, width=4):
    return np.array([h + [0] * (width - len(h)) for h in histories])


# leave-one-out rows of user 1 (training sequence 1 2 3 2) and user 2 (3 4)
LOO = dict(uids=np.array([1, 1, 1, 2]), item_seq=padded([[1], [1, 2], [1, 2, 3], [3]]),
           item_len=np.array([1, 2, 3, 1]), targets=np.array([2, 3, 2, 4]), times=np.array([2, 3, 4, 2]))


def rows_of(d):
    order = np.lexsort((d["item_len"], d["times"], d["uids"]))
    return d["uids"], d["item_seq"], d["item_len"], d["targets"], order


def test_transition_pairs_cover_each_training_transition_once():
    src, dst = item_graphs.transition_pairs(*rows_of(LOO))
    assert sorted(zip(src.tolist(), dst.tolist())) == [(1, 2), (2, 3), (3, 2), (3, 4)]
    # stride-1 windows of user 3's sequence 1 3 4 2 1 (history 3, target 1), listed out of time order
    windows = dict(uids=np.array([3, 3]), item_seq=padded([[3, 4, 2], [1, 3, 4]]), item_len=np.array([3, 3]),
                   targets=np.array([1, 2]), times=np.array([9, 8]))
    src, dst = item_graphs.transition_pairs(*rows_of(windows))
    assert sorted(zip(src.tolist(), dst.tolist())) == [(1, 3), (2, 1), (3, 4), (4, 2)]


def test_transition_graph_is_exact():
    src, dst = item_graphs.transition_pairs(*rows_of(LOO))
    adj = item_graphs.transition_graph(src, dst, 5).toarray()
    counts = np.array([[1, 0, 0, 0, 0],
                       [0, 1, 1, 0, 0],
                       [0, 1, 1, 2, 0],
                       [0, 0, 2, 1, 1],
                       [0, 0, 0, 1, 1]], dtype=float)
    d = counts.sum(1)
    assert np.allclose(adj, counts / np.sqrt(np.outer(d, d)))


def test_similarity_graph_is_exact():
    users = item_graphs.user_item_matrix(LOO["uids"], LOO["item_seq"], LOO["item_len"], LOO["targets"], 5)
    assert users.toarray().tolist() == [[0, 1, 1, 1, 0], [0, 0, 0, 1, 1]]
    sim = item_graphs.similarity_graph(users, k=1).toarray()
    r = 1 / math.sqrt(2)
    expected = np.zeros((5, 5))
    expected[1, [1, 2]] = 0.5                        # item 1: itself and item 2 (cos 1)
    expected[2, [1, 2]] = 0.5                        # item 2: item 1 (cos 1, lower id first) and itself
    expected[3, [1, 3]] = [r / (1 + r), 1 / (1 + r)]  # item 3: itself, then items 1, 2, 4 tie at 1/sqrt 2
    expected[4, [3, 4]] = [r / (1 + r), 1 / (1 + r)]
    assert np.allclose(sim, expected)


def test_model_graph_is_the_training_transitions(tiny_cfg):
    net, train, _, dataset = build_model("DCRec", tiny_cfg())
    inter = pd.read_csv(f"{FIXTURES}/tiny/tiny.inter", sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    ids = dict(zip(dataset.field2id_token["item_id"], range(len(dataset.field2id_token["item_id"]))))
    src, dst = [], []
    for _, g in inter.sort_values(["user_id", "timestamp"], kind="mergesort").groupby("user_id"):
        items = [ids[i] for i in g["item_id"]][:-2]  # validation and test targets excluded
        src += items[:-1]
        dst += items[1:]
    expected = item_graphs.transition_graph(np.array(src), np.array(dst), net.n_items).tocoo()
    got = torch.sparse_coo_tensor(net.adj_indices, net.adj_values, (net.n_items,) * 2,
                                  check_invariants=False).to_dense().numpy()
    assert np.allclose(got, expected.toarray(), atol=1e-6)


def test_removed_edges_and_conformity_weights(tiny_cfg):
    net, train, _, _ = build_model("DCRec", tiny_cfg(weight_mean=0.3))
    batch = next(iter(train))
    seq, lengths = batch["item_id_list"], batch["item_length"]
    removed = net.history_edges(seq)
    edges = set(zip(net.adj_indices[0][removed].tolist(), net.adj_indices[1][removed].tolist()))
    expected = set()
    for s, n in zip(seq.tolist(), lengths.tolist()):
        for a, b in zip(s[:n - 1], s[1:n]):
            if a != b:
                expected |= {(a, b), (b, a)}
    assert edges == expected and expected

    last = net.last_items(seq, lengths)
    with torch.no_grad():
        w = net.conformity_weights(seq, lengths, last, net.graph_view("adj"))
    assert (w[lengths == 1] == 0.5).all() and (lengths == 1).any()
    longer = lengths > 1
    with torch.no_grad():
        w2 = net.conformity_weights(seq[longer], lengths[longer], last[longer], net.graph_view("adj"))
    assert w2.min().item() == pytest.approx(0.0, abs=1e-6)
    assert w2.mean().item() == pytest.approx(0.3, abs=1e-5)


def test_losses_and_scores(tiny_cfg):
    net, train, _, _ = build_model("DCRec", tiny_cfg())
    batch = next(iter(train))
    ce, cl, kl = net.calculate_loss(batch)
    (ce + cl + kl).backward()
    assert all(torch.isfinite(x) for x in (ce, cl, kl)) and cl > 0
    assert net.fusion_weight.grad is not None and net.item_embedding.weight.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        full = net.full_sort_predict(batch)
        picked = net.predict(batch)
    assert full.shape == (len(batch), net.n_items)
    assert torch.allclose(full.gather(1, batch["item_id"].unsqueeze(1)).squeeze(1), picked, atol=1e-5)



@pytest.mark.parametrize("overrides,key", [({"loss_type": "BPR", "train_neg_sample_args": {"distribution": "uniform",
                                                                                            "sample_num": 1}},
                                             "loss_type"), ({"sim_group": 0}, "sim_group")])
def test_bad_keys_are_named(tiny_cfg, overrides, key):
    with pytest.raises(ConfigError, match=key):
        build_model("DCRec", tiny_cfg(**overrides))


# -- the official code's choices, behind keys ------------------------------------------------------------
def test_graphconv_step_is_dgl_graphconv_norm_both_by_hand():
    """One official propagation step (DGL GraphConv(norm='both', weight=False, bias=False) with edge weights,
    after dgl.add_self_loop): degrees are edge *counts* of the self-looped graph, messages flow src -> dst."""
    from recbole_denoise.model.sequential_recommender.dcrec import propagate_step
    # stored edges (row -> col, weight): 0->0 1.0 (a stored self loop), 0->1 0.5, 1->0 0.5, 1->2 0.25
    indices = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 2]])
    values = torch.tensor([1.0, 0.5, 0.5, 0.25])
    x = torch.tensor([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0]])
    # with the added loops: out-degrees 3, 3, 1; in-degrees 3, 2, 2
    r3, r2 = math.sqrt(3), math.sqrt(2)
    expected = torch.tensor([[1.0], [2.5 / (r3 * r2)], [(0.5 / r3 + 4) / r2]]) * torch.tensor([[1.0, 10.0]])
    got = propagate_step(indices, values, x, "graphconv")
    assert torch.allclose(got, expected, atol=1e-6)
    # a removed edge leaves the degrees (DGL remove_edges); a dropped one (weight 0) stays in them
    present = torch.tensor([True, True, True, False])
    got = propagate_step(indices, values.masked_fill(~present, 0), x, "graphconv", present=present)
    assert torch.allclose(got[2], x[2], atol=1e-6)  # node 2: only its added loop, degrees 1 and 1
    got = propagate_step(indices, values.masked_fill(~present, 0), x, "graphconv")
    assert torch.allclose(got[2], x[2] / r2, atol=1e-6)  # dropped: in-degree still 2
    # our default: one product with the stored (already normalised) matrix, row i reads its neighbours
    assert torch.allclose(propagate_step(indices, values, x, "normalized"),
                          torch.tensor([[2.0, 20.0], [0.5 + 1.0, 5.0 + 10.0], [0.0, 0.0]]), atol=1e-6)


def test_graphconv_key_drives_the_graph_views(tiny_cfg):
    from recbole_denoise.model.sequential_recommender.dcrec import propagate_step
    net, _, _, _ = build_model("DCRec", tiny_cfg(gcn_propagation="graphconv"))
    net.eval()
    with torch.no_grad():
        emb = net.item_embedding.weight
        for name in ("adj", "sim"):
            indices, values = getattr(net, f"{name}_indices"), getattr(net, f"{name}_values")
            layers = [emb]
            for _ in range(net.gcn_layers):
                layers.append(propagate_step(indices, values, layers[-1], "graphconv"))
            expected = net.graph_layer_norm(torch.stack(layers).mean(0) + emb)
            assert torch.allclose(net.graph_view(name), expected, atol=1e-5)
        default, _, _, _ = build_model("DCRec", tiny_cfg())
        default.load_state_dict(net.state_dict())
        default.eval()
        assert not torch.allclose(default.graph_view("adj"), net.graph_view("adj"), atol=1e-4)


def test_user_item_counts_and_their_cosine():
    users = item_graphs.user_item_matrix(*rows_of(LOO)[:4], 5, order=rows_of(LOO)[4], counts=True)
    assert users.toarray().tolist() == [[0, 1, 2, 1, 0], [0, 0, 0, 1, 1]]  # user 1: 1 2 3 2
    sim = item_graphs.similarity_graph(users, k=1).toarray()
    # item 2's column (2, 0) vs item 3's (1, 1): cos 2 / (2 sqrt 2); item 4 (0, 1) vs item 3: 1 / sqrt 2
    r = 1 / math.sqrt(2)
    expected = np.zeros((5, 5))
    expected[1, [1, 2]] = 0.5                        # items 1 and 2 are parallel (1, 0) and (2, 0)
    expected[2, [1, 2]] = 0.5
    expected[3, [1, 3]] = [r / (1 + r), 1 / (1 + r)]  # items 1, 2, 4 tie at 1/sqrt 2: lower id first
    expected[4, [3, 4]] = [r / (1 + r), 1 / (1 + r)]
    assert np.allclose(sim, expected)
    with pytest.raises(ValueError, match="order"):
        item_graphs.user_item_matrix(*rows_of(LOO)[:4], 5, counts=True)


def test_sim_graph_counts_key_on_a_dataset_with_repeats(tiny):
    data, cfg = tiny
    path = data / "tiny" / "tiny.inter"
    inter = pd.read_csv(path, sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    first = inter[inter["user_id"] == "u1"].sort_values("timestamp")
    repeats = first.iloc[:3].copy()  # u1 consumes its first three items again, early in its sequence
    repeats["timestamp"] = first["timestamp"].iloc[3] + 0.1 * np.arange(1, 4)
    inter = pd.concat([inter, repeats])
    inter.to_csv(path, sep="\t", index=False, header=["user_id:token", "item_id:token", "rating:float",
                                                      "timestamp:float"])
    net, _, _, dataset = build_model("DCRec", cfg(sim_graph_weights="counts"))
    binary, _, _, _ = build_model("DCRec", cfg())
    ids = dict(zip(dataset.field2id_token["item_id"], range(len(dataset.field2id_token["item_id"]))))
    rows = []
    for u, g in inter.sort_values(["user_id", "timestamp"], kind="mergesort").groupby("user_id"):
        rows += [(u, ids[i]) for i in g["item_id"]][:-2]  # validation and test targets excluded
    users = pd.factorize(pd.Series([u for u, _ in rows]))[0]
    import scipy.sparse as sp
    counts = sp.csr_matrix((np.ones(len(rows)), (users, [i for _, i in rows])), shape=(users.max() + 1, net.n_items))
    assert counts.max() == 2
    expected = item_graphs.similarity_graph(counts, 4).toarray()  # sim_group 4 (yaml default)
    dense = lambda m: torch.sparse_coo_tensor(m.sim_indices, m.sim_values, (m.n_items,) * 2,
                                              check_invariants=False).to_dense().numpy()
    assert np.allclose(dense(net), expected, atol=1e-6)
    assert not np.allclose(dense(binary), expected, atol=1e-6)


def test_user_sequence_removal_drops_each_batch_users_whole_training_sequence(tiny_cfg):
    net, train, _, dataset = build_model("DCRec", tiny_cfg(conformity_edges="user_sequence"))
    inter = pd.read_csv(f"{FIXTURES}/tiny/tiny.inter", sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    items = dict(zip(dataset.field2id_token["item_id"], range(len(dataset.field2id_token["item_id"]))))
    users = dict(zip(dataset.field2id_token["user_id"], range(len(dataset.field2id_token["user_id"]))))
    sequences = {users[u]: [items[i] for i in g["item_id"]][:-2]
                 for u, g in inter.sort_values(["user_id", "timestamp"], kind="mergesort").groupby("user_id")}
    batch = next(iter(train))
    batch = batch[torch.nonzero(batch["item_length"] <= 2).squeeze(1)]  # short prefixes: few history edges
    removed = net.removed_edges(batch)
    got = set(zip(net.adj_indices[0][removed].tolist(), net.adj_indices[1][removed].tolist()))
    expected = set()
    for u in set(batch["user_id"].tolist()):
        s = sequences[u]
        expected |= set(zip(s[:-1], s[1:])) | set(zip(s[1:], s[:-1]))
    history = set(zip(net.adj_indices[0][net.history_edges(batch["item_id_list"])].tolist(),
                      net.adj_indices[1][net.history_edges(batch["item_id_list"])].tolist()))
    assert got == expected and history < expected  # the batch's prefixes hold fewer edges
    ce, cl, kl = net.calculate_loss(batch)
    assert all(torch.isfinite(x) for x in (ce, cl, kl))


@pytest.mark.parametrize("overrides,key", [({"gcn_propagation": "dgl"}, "gcn_propagation"),
                                           ({"sim_graph_weights": "weighted"}, "sim_graph_weights"),
                                           ({"conformity_edges": "all"}, "conformity_edges")])
def test_bad_official_keys_are_named(tiny_cfg, overrides, key):
    with pytest.raises(ConfigError, match=key):
        build_model("DCRec", tiny_cfg(**overrides))
