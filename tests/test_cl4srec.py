"""CL4SRec: each augmentation against its definition, two different operators per history, the batch left
untouched (purity), NT-Xent against a hand computation, runs on both protocols, learning, bad keys."""
import math

import pytest
import torch

from recbole_denoise.errors import ConfigError
from recbole_denoise.model.sequential_recommender.cl4srec import crop, mask, nt_xent, reorder, two_operators
from tests.conftest import build_model

MASK = 99
SEQ = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
                    [11, 12, 13, 14, 0, 0, 0, 0, 0, 0],
                    [21, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
LEN = torch.tensor([10, 4, 1])


def rows(seq, length):
    return [s[:n].tolist() for s, n in zip(seq, length)]


def test_crop_keeps_a_contiguous_run():
    torch.manual_seed(0)
    for _ in range(20):
        out, n = crop(SEQ, LEN, 0.6)
        assert n.tolist() == [6, 2, 1]
        for orig, new, k, full in zip(rows(SEQ, LEN), rows(out, n), n.tolist(), out):
            assert any(orig[s:s + k] == new for s in range(len(orig) - k + 1))
            assert (full[k:] == 0).all()


def test_mask_hides_exactly_floor_gamma_n_items():
    torch.manual_seed(0)
    for _ in range(20):
        out, n = mask(SEQ, LEN, 0.3, MASK)
        assert n.tolist() == LEN.tolist()
        hidden = (out == MASK).sum(1).tolist()
        assert hidden == [math.floor(0.3 * k) for k in LEN.tolist()]
        assert ((out == SEQ) | (out == MASK)).all() and (out[SEQ == 0] == 0).all()


def test_reorder_shuffles_one_contiguous_span():
    torch.manual_seed(0)
    changed_any = False
    for _ in range(20):
        out, n = reorder(SEQ, LEN, 0.6)
        for orig, new in zip(rows(SEQ, LEN), rows(out, n)):
            assert sorted(orig) == sorted(new)
            diff = [i for i, (a, b) in enumerate(zip(orig, new)) if a != b]
            if diff:
                changed_any = True
                assert diff[-1] - diff[0] + 1 <= math.floor(0.6 * len(orig))
        assert (out[SEQ == 0] == 0).all()
    assert changed_any


def test_two_different_operators_per_history():
    torch.manual_seed(0)
    first, second = two_operators(3000)
    assert (first != second).all()
    pairs = {(a, b) for a, b in zip(first.tolist(), second.tolist())}
    assert len(pairs) == 6


def test_nt_xent_matches_a_hand_computation():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    z = torch.cat([z1, z2])
    sim = (z @ z.T) / 0.5
    expected = 0.0
    for i, j in [(0, 2), (1, 3), (2, 0), (3, 1)]:
        others = [sim[i, k] for k in range(4) if k != i]
        expected += -(sim[i, j] - torch.logsumexp(torch.stack(others), 0))
    assert torch.isclose(nt_xent(z1, z2, 0.5), expected / 4)


def test_augmentation_leaves_the_batch_untouched(tiny_cfg):
    net, train, _, _ = build_model("CL4SRec", tiny_cfg())
    batch = next(iter(train))
    before = {k: v.clone() for k, v in batch.interaction.items()}
    seen = []
    forward = net.forward

    def recording(seq, length):
        seen.append(seq.clone())
        return forward(seq, length)

    net.forward = recording
    rec, cl = net.calculate_loss(batch)
    (rec + cl).backward()
    for k, v in batch.interaction.items():
        assert torch.equal(v, before[k]), k
    assert len(seen) == 3 and torch.equal(seen[0], before["item_id_list"])  # the next-item loss saw the original
    assert not torch.equal(seen[1], before["item_id_list"]) and not torch.equal(seen[2], before["item_id_list"])
    assert (seen[1] == net.mask_token).any() or (seen[2] == net.mask_token).any()


def test_full_sort_scores_every_item_but_not_the_mask(tiny_cfg):
    net, train, _, _ = build_model("CL4SRec", tiny_cfg())
    batch = next(iter(train))
    assert net.item_embedding.num_embeddings == net.n_items + 1
    assert net.full_sort_predict(batch).shape == (len(batch), net.n_items)



@pytest.mark.parametrize("key,value", [("crop_eta", 1.5), ("mask_gamma", -0.1), ("cl_similarity", "l2")])
def test_bad_keys_are_named(tiny_cfg, key, value):
    with pytest.raises(ConfigError, match=key):
        build_model("CL4SRec", tiny_cfg(**{key: value}))
