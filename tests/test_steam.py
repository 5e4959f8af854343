"""STEAM: the corruption walk (its labels undo it exactly), the generator and correction, runs on both
protocols, export of keep/delete/insert decisions, detection on synthetic noise, bad keys."""
import os
import random

import pytest
import torch

from recbole_denoise.data.atomic import read_atomic
from recbole_denoise.errors import ConfigError
from recbole_denoise.model.sequential_recommender.steam import DELETE, INSERT, KEEP, corrupt
from recbole_denoise.quick_start import run_recbole_denoise
from tests.conftest import CYCLIC_LEARN, build_model

EOS = 100


def undo(corrupted, ops, inserts):
    """The original sequence from a corrupted one and its labels."""
    out = []
    for item, op, ins in zip(corrupted, ops, inserts):
        out += [i for i in ins if i != EOS][::-1]
        if op != DELETE:
            out.append(item)
    return out


def test_corruption_labels_undo_the_corruption():
    rng = random.Random(0)
    seen = {KEEP: 0, DELETE: 0, INSERT: 0}
    for _ in range(300):
        seq = rng.sample(range(1, 60), rng.randint(1, 12))
        c, ops, ins = corrupt(seq, 0.4, 0.5, 3, len(seq) + 4, 100, EOS, rng)
        assert undo(c, ops, ins) == seq
        assert c[-1] == seq[-1] and ops[-1] != DELETE  # the last item is never deleted
        assert len(c) <= len(seq) + 4
        for item, op, i in zip(c, ops, ins):
            seen[op] += 1
            assert (op == DELETE) == (item not in seq)
            assert (op == INSERT) == bool(i) and len([x for x in i if x != EOS]) <= 3
            assert not i or len(i) == 3 or i[-1] == EOS
    assert all(seen.values())


def test_keep_only_walk_is_the_identity():
    seq = [5, 3, 9, 1]
    assert corrupt(seq, 1.0, 0.0, 5, 10, 100, EOS, random.Random(1)) == (seq, [KEEP] * 4, [()] * 4)


def test_losses_generator_and_correction(tiny_cfg):
    net, train, _, _ = build_model("STEAM", tiny_cfg())
    batch = next(iter(train))
    losses = net.calculate_loss(batch)
    assert len(losses) == 4 and all(torch.isfinite(x) for x in losses)
    sum(losses).backward()
    assert net.generator.layer[0].multi_head_attention.query.weight.grad.abs().sum() > 0
    assert net.op_head.weight.grad.abs().sum() > 0 and net.training

    net.eval()
    seq = torch.tensor([[3, 4, 5, 6, 0], [7, 8, 0, 0, 0]])
    ops = torch.tensor([[KEEP, DELETE, INSERT, KEEP, KEEP], [DELETE, DELETE, KEEP, KEEP, KEEP]])
    net.corrector_decisions = lambda s, keep_last=None: (ops, torch.zeros(s.shape), {(0, 2): [11, 12]})
    assert net.correct(seq, torch.tensor([4, 2])) == [[3, 11, 12, 5, 6], [8]]  # an emptied row keeps its last
    generated = net.generate(torch.randn(3, net.hidden_size))
    assert generated.shape == (3, net.max_insert)
    assert ((generated >= 0) & (generated < net.n_items)).all()


def test_one_epoch_exports_deletions_and_insertions(tiny_cfg):
    result = run_recbole_denoise("STEAM", "tiny", config_dict=tiny_cfg(noise_ratio=0.1))
    d = result["model_denoise"]
    assert result["timings"]["epochs"] == 1 and {"precision", "recall", "f1", "auc", "inserted"} <= set(d)
    inter = read_atomic(os.path.join(d["dataset_path"], d["dataset_name"] + ".inter"))
    assert len(inter) == 480 - d["deleted"] + d["inserted"]
    scores = read_atomic(os.path.join(d["dataset_path"], d["dataset_name"] + ".denoise_scores"))
    assert sum(len(x) for x in scores["inserted"]) == d["inserted"]
    if d["inserted"]:  # put in with a time between its neighbours, never labelled noise
        assert (inter[inter["item_id"] == inter["clean_item_id"]]["noise_label"] == 0).all()
    again = run_recbole_denoise("SASRec", d["dataset_name"], saved=False,
                                config_dict=tiny_cfg(data_path=os.path.dirname(d["dataset_path"])))
    assert "ndcg@10" in again["test_result"]


def test_window_protocol_trains_and_exports_each_windows_edits(tiny_cfg):
    result = run_recbole_denoise("STEAM", "tiny", config_dict=tiny_cfg(protocol="window", noise_ratio=0.2),
                                 saved=False)
    assert result["timings"]["epochs"] == 1 and 0 <= result["test_result"]["ndcg@10"] <= 1
    d = result["model_denoise"]
    root, parent = os.path.dirname(d["dataset_path"]), d["dataset_name"].rsplit("-STEAM-", 1)[0]

    def history_items(name):
        return sum(len(h) for split in ("train", "valid", "test")
                   for h in read_atomic(os.path.join(root, name, f"{name}.{split}.inter"))["item_id_list"])

    scores = read_atomic(os.path.join(d["dataset_path"], d["dataset_name"] + ".denoise_scores"))
    assert len(scores) == d["editable"] == history_items(parent) and d["n_noise"] > 0 and "auc" in d
    assert history_items(d["dataset_name"]) == d["editable"] - d["edited"] + d["inserted"]


def test_exported_flags_beat_random_flags_on_synthetic_noise(clustered_cfg):
    cfg = clustered_cfg(**{**CYCLIC_LEARN, "epochs": 15})
    d = run_recbole_denoise("STEAM", "clustered", config_dict=cfg, saved=False)["model_denoise"]
    p, f = d["n_noise"] / d["n"], d["n_flagged"] / d["n"]
    # how many argmax-delete flags 15 epochs give varies with the draws (0.2-2.3% over seeds 2020/1/2, either
    # code path); their precision and the P(delete) ranking (AUC 0.70-0.77) do not
    assert f > 0 and d["precision"] > 2 * p and d["auc"] > 0.65


def test_bad_probabilities_are_named(tiny_cfg):
    with pytest.raises(ConfigError, match="steam_keep_prob"):
        build_model("STEAM", tiny_cfg(steam_keep_prob=0.8, steam_delete_prob=0.5))


def _pair(tiny_cfg, path=True, **keys):
    """The ``path`` (steam_fast_path) and the old code path on the same weights (no dropout)."""
    cfg = dict(hidden_dropout_prob=0.0, attn_dropout_prob=0.0, **keys)
    fast, train, test, _ = build_model("STEAM", tiny_cfg(steam_fast_path=path, **cfg))
    old, _, _, _ = build_model("STEAM", tiny_cfg(steam_fast_path=False, **cfg))
    old.load_state_dict(fast.state_dict())
    assert fast.fast_path and fast.packed == (path == "packed") and not old.fast_path and not old.packed
    return fast, old, train, test


@pytest.mark.parametrize("path", [True, "packed"])
def test_fast_path_gives_the_old_losses_generation_and_scores(tiny_cfg, path):
    # mask_ratio 1 masks every item, so the Cloze masks do not depend on the padded width
    fast, old, train, test = _pair(tiny_cfg, path, mask_ratio=1.0, steam_max_insert=4)
    batch = next(iter(train))
    for net in (fast, old):
        torch.manual_seed(3)
        net.losses = [float(x.detach()) for x in net.calculate_loss(batch)]
    assert fast.losses == pytest.approx(old.losses, rel=1e-5, abs=1e-6)

    fast.eval(), old.eval()
    with torch.no_grad():  # make [eos] likely for some rows, so rows leave the fast generation early
        for net in (fast, old):
            net.item_embedding.weight[net.eos] *= 3
    h = torch.randn(64, fast.hidden_size, generator=torch.Generator().manual_seed(0))
    generated = fast.generate(h)
    assert torch.equal(generated, old.generate(h))
    lengths = (generated > 0).sum(1)
    assert lengths.min() < fast.max_insert and lengths.max() > 0

    batch = next(iter(test))[0]
    with torch.no_grad():
        assert torch.allclose(fast.full_sort_predict(batch), old.full_sort_predict(batch), atol=1e-5)


def test_fast_path_key_is_checked(tiny_cfg):
    with pytest.raises(ConfigError, match="steam_fast_path"):
        build_model("STEAM", tiny_cfg(steam_fast_path="yes"))
    assert build_model("STEAM", tiny_cfg())[0].packed  # the default


def _losses_and_gradients(net, batch, seed):
    net.zero_grad()
    torch.manual_seed(seed)
    losses = net.calculate_loss(batch)
    sum(losses).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return [float(x.detach()) for x in losses], grads


@pytest.mark.parametrize("other, mask_ratio, heads", [(False, 1.0, 1), (True, 0.5, 1), (True, 0.5, 2)])
def test_packed_path_gives_the_same_losses_and_gradients(tiny_cfg, other, mask_ratio, heads):
    # against the old path with every item masked (its Cloze masks are drawn at full width) and against the
    # first fast path with the yaml's mask_ratio (the same trimmed width, so the same masks); float32, no dropout
    packed, ref, train, _ = _pair(tiny_cfg, "packed", mask_ratio=mask_ratio, n_heads=heads, steam_max_insert=4)
    if other:
        ref, _, _, _ = build_model("STEAM", tiny_cfg(steam_fast_path=True, mask_ratio=mask_ratio, n_heads=heads,
                                                     steam_max_insert=4, hidden_dropout_prob=0.0,
                                                     attn_dropout_prob=0.0))
        ref.load_state_dict(packed.state_dict())
    for seed, batch in zip((3, 4), train):
        losses, grads = _losses_and_gradients(packed, batch, seed)
        ref_losses, ref_grads = _losses_and_gradients(ref, batch, seed)
        assert losses[1] > 0 and losses == pytest.approx(ref_losses, rel=1e-5, abs=1e-6)
        assert grads.keys() == ref_grads.keys() and "generator.layer.0.feed_forward.dense_1.weight" in grads
        for name, g in grads.items():
            assert torch.allclose(g, ref_grads[name], rtol=1e-4, atol=1e-6), name


def test_fused_item_cross_entropy_equals_the_unfused_one():
    from recbole_denoise.model.sequential_recommender.steam import _ItemCrossEntropy

    g = torch.Generator().manual_seed(0)
    h = torch.randn(11, 8, generator=g, requires_grad=True)
    w = (3 * torch.randn(30, 8, generator=g)).requires_grad_()
    t = torch.randint(30, (11,), generator=g)
    loss = _ItemCrossEntropy.apply(h, w, t, 4)  # blocks of 4 rows: 3 blocks, the last one short
    grads = torch.autograd.grad(2 * loss, (h, w))
    ref = torch.nn.functional.cross_entropy(h @ w.T, t)
    assert torch.allclose(loss, ref, rtol=1e-6)
    for a, b in zip(grads, torch.autograd.grad(2 * ref, (h, w))):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads", [1, 2])
def test_generator_last_position_alone_equals_the_full_pass(tiny_cfg, heads):
    net, _, _, _ = build_model("STEAM", tiny_cfg(n_heads=heads))
    net.eval()
    g = torch.Generator().manual_seed(heads)
    h = torch.randn(9, net.hidden_size, generator=g)
    for k in range(net.max_insert):
        previous = torch.randint(1, net.n_items, (9, k), generator=g)
        with torch.no_grad():
            assert torch.allclose(net.generator_last(h, previous), net.generator_states(h, previous)[:, -1],
                                  atol=1e-5)


def test_mask_dropout_keeps_the_dropout_distribution(tiny_cfg):
    from recbole_denoise.model.sequential_recommender.steam import _MaskDropout

    net, _, _, _ = build_model("STEAM", tiny_cfg(hidden_dropout_prob=0.3))
    drops = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(type(m) is _MaskDropout for m in drops)
    x = torch.ones(200_000)
    drop = _MaskDropout(0.3).train()
    y = drop(x)
    kept = y > 0
    assert abs(kept.float().mean() - 0.7) < 0.01 and torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))
    assert torch.equal(drop.eval()(x), x)


def test_correction_generates_only_what_the_kept_window_uses(tiny_cfg):
    # the packed path stops a slot's generation once the kept items after it fill the window: the windows
    # are those of the full correction (the first fast path's, and the packed one without a window)
    packed, _, train, _ = _pair(tiny_cfg, "packed", steam_max_insert=4)
    packed.eval()
    with torch.no_grad():  # favour "insert" so that windows fill up
        packed.op_head.bias[INSERT] += 2.0
    batch = next(iter(train))
    seq, lengths = batch[packed.ITEM_SEQ], batch[packed.ITEM_SEQ_LEN]
    full = packed.correct(seq, lengths)
    for k in (2, 5, 9):
        cut = packed.correct(seq, lengths, keep_last=k)
        assert [c[-k:] for c in cut] == [c[-k:] for c in full]
    assert sum(map(len, packed.correct(seq, lengths, keep_last=5))) < sum(map(len, full))


def test_packed_pad_equals_the_list_pad(tiny_cfg):
    packed, old, _, _ = _pair(tiny_cfg, "packed")
    rows = [[3, 4, 5], (), (7,), list(range(1, 13))]
    for width, value in ((5, 0), (2, -100), (0, 0), (12, 0)):
        assert torch.equal(packed.pad(rows, width, value), old.pad(rows, width, value))
    assert packed.pad([], 3).shape == (0, 3)
