"""IADSR: semantic interests, the model over each backbone, progressive masks, the gate, loss weights,
export of decisions, the cold-item view and bad input. Tiny data, a tiny random sentence-transformer."""
import os

import numpy as np
import pytest
import torch
from recbole.data import data_preparation
from recbole.utils import init_seed

from recbole_denoise.config import Config
from recbole_denoise.data.atomic import read_atomic
from recbole_denoise.prepare import prepare_dataset
from recbole_denoise.errors import ConfigError, DatasetError
from recbole_denoise.evaluator.cold_items import popularity_buckets
from recbole_denoise.model.semantic import SemanticInterests, build_encoder
from recbole_denoise.model.sequential_recommender.iadsr import gumbel_sigmoid
from recbole_denoise.pipeline import build_dataset
from recbole_denoise.quick_start import run_recbole_denoise
from tests.conftest import tiny_config


@pytest.fixture
def iadsr_cfg(tmp_path, tiny_st_dir):
    def make(**kw):
        base = dict(encoder="sentence_transformers", encoder_path=tiny_st_dir, dropout_prob=0.0, epochs=1)
        base.update(kw)
        return tiny_config(tmp_path, **base)
    return make


def build(cfg, model="IADSR"):
    config = Config(model, "tiny", config_dict=cfg)
    init_seed(config["seed"], True)
    data, _ = prepare_dataset(config)
    dataset = build_dataset(config, data)
    train, valid, test = data_preparation(config, dataset)
    init_seed(config["seed"], True)
    net = config.model_class(config, train._dataset)
    return config, net, train, test


def train_epoch(net, train, epoch=0):
    """One training epoch as our trainer runs it: the epoch hooks around RecBole's loop."""
    net.on_epoch_start(epoch)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for batch in train:
        opt.zero_grad()
        sum(net.calculate_loss(batch)).backward()
        opt.step()
    net.on_epoch_end(epoch)


class Recorder:
    """Wraps a TextEncoder, recording every text it encodes."""

    def __init__(self, encoder):
        self.encoder, self.texts = encoder, []
        self.identity, self.dim, self.logger = encoder.identity, encoder.dim, None

    def encode(self, texts):
        self.texts += list(texts)
        return self.encoder.encode(texts)


# -- semantic interests -----------------------------------------------------------------------------------
def test_semantic_texts_leave_out_targets_and_are_cached(iadsr_cfg):
    config, net, train, _ = build(iadsr_cfg(semantic_center=False))
    ds = train._dataset
    rec = Recorder(build_encoder(config))
    config["semantic_cache_dir"] = os.path.join(config["derived_data_path"], "emb-test")
    sem = SemanticInterests(config, ds, encoder=rec)
    n_users = len(ds.user_sequences)
    n_prefix = sum(len(s) - 1 for s in ds.user_sequences.values())
    assert len(rec.texts) == n_users + n_prefix
    longs, prefixes = rec.texts[:n_users], rec.texts[n_users:]
    for (uid, seq), long_text in zip(sorted(ds.user_sequences.items()), longs):
        titles = [sem.texts[i] for i in seq]
        parts = long_text.split("; ")
        assert parts == titles[:-2][-20:]              # training items only, in time order
        assert titles[-1] not in parts and titles[-2] not in parts
    start = 0
    for uid, seq in sorted(ds.user_sequences.items()):
        mine = prefixes[start:start + len(seq) - 1]
        start += len(seq) - 1
        titles = [sem.texts[i] for i in seq]
        assert [p.split("; ") for p in mine] == [titles[:t + 1][-20:] for t in range(len(seq) - 1)]
        # the test target is in no text; the validation item only ends the last prefix (test-row history)
        assert all(titles[-1] not in p.split("; ") for p in mine if seq[-1] not in seq[:-1])
        assert all(titles[-2] not in p.split("; ") for p in mine[:-1] if seq[-2] not in seq[:-2])
    uid = sorted(ds.user_sequences)[0]
    row = sem.offsets[uid] + 3
    assert np.allclose(sem.short[row], rec.encoder.encode(["; ".join(sem.texts[i] for i in ds.user_sequences[uid][:4])])[0],
                       atol=1e-5)
    # second build: everything from the cache
    rec2 = Recorder(build_encoder(config))
    sem2 = SemanticInterests(config, ds, encoder=rec2)
    assert rec2.texts == [] and np.array_equal(sem2.short, sem.short)
    # the item mode is a different cache entry: items only
    config["short_term"] = "item"
    rec3 = Recorder(build_encoder(config))
    sem3 = SemanticInterests(config, ds, encoder=rec3)
    assert sem3.short is None and sem3.items.shape == (ds.item_num, sem.dim)
    assert sorted(rec3.texts) == sorted(sem.texts[1:])


def test_semantic_center(iadsr_cfg):
    config, net, train, _ = build(iadsr_cfg())
    ds = train._dataset
    users = sorted(ds.user_sequences)
    long = net.semantic.long[users]
    assert np.allclose(np.linalg.norm(long, axis=1), 1, atol=1e-5)
    raw = SemanticInterests(Config("IADSR", "tiny", config_dict={**iadsr_cfg(), "semantic_center": False}),
                            ds).long[users]
    centred = raw - raw.mean(0)
    assert np.allclose(long, centred / np.linalg.norm(centred, axis=1, keepdims=True), atol=1e-5)
    assert abs((long @ long.T).mean()) < abs((raw @ raw.T).mean())


def test_stale_embedding_cache_is_rebuilt(iadsr_cfg, caplog):
    config, net, train, _ = build(iadsr_cfg())
    cache = os.path.join(config["derived_data_path"], ".embeddings")
    target = [f for f in os.listdir(cache) if "-long-" in f and f.endswith(".npy")][0]
    np.save(os.path.join(cache, target), np.zeros((3, 2), dtype=np.float32))
    rec = Recorder(build_encoder(config))
    with caplog.at_level("WARNING"):
        sem = SemanticInterests(config, train._dataset, encoder=rec)
    assert "stale embedding cache" in caplog.text
    assert len(rec.texts) == len(train._dataset.user_sequences)
    assert np.allclose(np.linalg.norm(sem.long[sorted(train._dataset.user_sequences)], axis=1), 1, atol=1e-5)


# -- the model over each backbone ---------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["GRU4Rec", "SASRec", "Caser"])
def test_each_backbone_trains_evaluates_and_exports(iadsr_cfg, backbone):
    cfg = iadsr_cfg(iadsr_backbone=backbone, noise_ratio=0.2)
    result = run_recbole_denoise("IADSR", "tiny", config_dict=cfg, saved=False)
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0
    d = result["model_denoise"]
    assert result["denoise"] == d
    assert {"precision", "recall", "f1", "auc", "edited_fraction"} <= set(d)
    assert [row["bucket"] for row in result["cold_items"]] == [1, 2, 3, 4, 5]
    assert all("denoise_ratio" in row and "ndcg@5" in row for row in result["cold_items"])
    assert os.path.isfile(os.path.join(d["dataset_path"], d["dataset_name"] + ".inter"))


def test_states_match_the_backbones_own_forward(iadsr_cfg):
    for backbone in ("GRU4Rec", "SASRec"):
        _, net, train, _ = build(iadsr_cfg(iadsr_backbone=backbone))
        net.eval()
        batch = next(iter(train))
        x = net.adapter.item_embedding(batch[net.ITEM_SEQ])
        h, e2 = net.adapter.states(x, batch)
        assert torch.allclose(e2, net.backbone.forward(batch[net.ITEM_SEQ], batch[net.ITEM_SEQ_LEN]), atol=1e-5)
        assert torch.allclose(e2, h[torch.arange(len(h)), batch[net.ITEM_SEQ_LEN] - 1], atol=1e-6)


def test_caser_prefix_states(iadsr_cfg):
    """Caser's adaptation: e2 is Caser.forward; the prefix state of a full window equals it."""
    _, net, train, _ = build(iadsr_cfg(iadsr_backbone="Caser", MAX_ITEM_LIST_LENGTH=6))
    net.eval()
    batch = next(iter(train))
    x = net.adapter.item_embedding(batch[net.ITEM_SEQ])
    h, e2 = net.adapter.states(x, batch)
    assert torch.allclose(e2, net.backbone.forward(batch[net.USER_ID], batch[net.ITEM_SEQ]), atol=1e-5)
    full = batch[net.ITEM_SEQ_LEN] == net.max_seq_length
    assert full.any()
    assert torch.allclose(h[full, -1], e2[full], atol=1e-5)
    # a prefix state only depends on the items up to it
    seq = batch[net.ITEM_SEQ].clone()
    seq[:, 3:] = 0
    h_cut, _ = net.adapter.states(net.adapter.item_embedding(seq), batch)
    assert torch.allclose(h_cut[:, :3], h[:, :3], atol=1e-5)


# -- progressive masks, the gate, loss weights ---------------------------------------------------------------
def test_progressive_mask_changes_next_epoch_input(iadsr_cfg):
    _, net, train, _ = build(iadsr_cfg(gate_theta=-1.0))
    seen = []
    states = net.adapter.states
    net.adapter.states = lambda x, inter: (seen.append(x.detach().clone()), states(x, inter))[1]
    batch = next(iter(train))
    net.train()
    x, x_in, rows, valid = net.input_embeddings(batch)
    assert torch.equal(x, x_in)                                   # epoch 0: the original sequence
    train_epoch(net, train)
    assert net.masked_epochs == 0
    net.eval()
    net.on_epoch_start(1)                                         # what our trainer does at the next epoch
    net.train()
    assert net.masked_epochs == 1
    dropped = net.mask_prev == 0
    assert dropped.any() and (net.mask_prev == 1).any()
    seen.clear()
    net.calculate_loss(batch)
    x = net.adapter.item_embedding(batch[net.ITEM_SEQ]).detach()
    prev = net.mask_prev[rows] * valid + ~valid
    assert torch.allclose(seen[0], x * prev.unsqueeze(-1))        # the backbone really got the masked input
    hit = valid & (net.mask_prev[rows] == 0)
    assert hit.any()
    assert torch.all(seen[0][hit] == 0) and torch.all(x[hit].abs().sum(-1) > 0)


@pytest.mark.parametrize("head", ["linear", "none"])
def test_gate_theta_one_turns_denoising_off(iadsr_cfg, head):
    _, net, train, test = build(iadsr_cfg(gate_theta=1.0, iadsr_head=head))
    train_epoch(net, train)
    net.eval()
    net.on_epoch_start(1)
    net.train()
    assert torch.all(net.mask_prev == 1)
    batch = next(iter(train))
    x, x_in, _, _ = net.input_embeddings(batch)
    assert torch.equal(x, x_in)
    net.eval()
    inter = next(iter(test))[0]
    with torch.no_grad():  # the backbone's own prediction, through the head when there is one
        if head == "none":
            expected = net.backbone.full_sort_predict(inter)
        else:
            seq = net.backbone.forward(inter[net.ITEM_SEQ], inter[net.ITEM_SEQ_LEN])
            expected = net.head(seq) @ net.backbone.item_embedding.weight.T
        assert torch.allclose(net.full_sort_predict(inter), expected, atol=1e-6)


def test_loss_terms_switch_off_by_weight(iadsr_cfg):
    names = ["ce_weight", "info_long_weight", "info_short_weight", "recon_weight"]
    for k, name in enumerate(names):
        _, net, train, _ = build(iadsr_cfg(gate_theta=-1.0, **{name: 0.0}))
        net.train()
        terms = net.calculate_loss(next(iter(train)))
        assert float(terms[k].detach()) == 0.0
        assert all(float(t.detach()) > 0 for j, t in enumerate(terms) if j != k)
    _, net, train, _ = build(iadsr_cfg(gate_theta=-1.0, recon_weight=0.0))
    net.train()
    sum(net.calculate_loss(next(iter(train)))).backward()
    assert net.decoder.weight.grad is None
    # only CE, nothing masked, no head: exactly the backbone's own loss
    _, net, train, _ = build(iadsr_cfg(gate_theta=1.0, info_long_weight=0.0, info_short_weight=0.0,
                                       recon_weight=0.0, iadsr_head="none"))
    net.train()
    batch = next(iter(train))
    assert torch.allclose(sum(net.calculate_loss(batch)), net.backbone.calculate_loss(batch), atol=1e-6)


def test_linear_head_scores_the_items_and_the_alignment_acts_before_it(iadsr_cfg):
    """iadsr_head: linear (default; the official code's fc head): CE and prediction score the items with
    head(e2), while the InfoNCE terms and the mask use e2 and the states themselves."""
    _, net, train, test = build(iadsr_cfg(gate_theta=1.0, info_long_weight=0.0, info_short_weight=0.0,
                                          recon_weight=0.0))
    assert isinstance(net.head, torch.nn.Linear)
    net.train()
    batch = next(iter(train))
    seq = net.backbone.forward(batch[net.ITEM_SEQ], batch[net.ITEM_SEQ_LEN])
    logits = net.head(seq) @ net.backbone.item_embedding.weight.T
    ce = torch.nn.functional.cross_entropy(logits, batch[net.POS_ITEM_ID])
    assert torch.allclose(sum(net.calculate_loss(batch)), ce, atol=1e-6)
    assert not torch.allclose(ce, net.backbone.calculate_loss(batch), atol=1e-4)  # the head is not the identity
    sum(net.calculate_loss(batch)).backward()
    assert net.head.weight.grad is not None and net.head.weight.grad.abs().sum() > 0
    # the alignment's long-term interest is the head's input, not its output
    rows, valid = net._rows(batch)
    x = net.adapter.item_embedding(batch[net.ITEM_SEQ])
    assert torch.allclose(net._encode(x, batch, valid)[1], seq, atol=1e-6)
    with pytest.raises(ConfigError, match="iadsr_head"):
        build(iadsr_cfg(iadsr_head="mlp"))


def test_gumbel_sigmoid_straight_through():
    torch.manual_seed(0)
    logits = torch.randn(200, requires_grad=True)
    m = gumbel_sigmoid(logits, tau=1.0, hard=True)
    assert set(m.detach().unique().tolist()) <= {0.0, 1.0}
    m.sum().backward()
    assert logits.grad.abs().sum() > 0
    soft = gumbel_sigmoid(logits.detach(), tau=1.0, hard=False)
    assert ((soft > 0) & (soft < 1)).all()
    big = torch.full((1000,), 5.0)
    assert gumbel_sigmoid(big, 0.5).mean() > 0.9


# -- export and cold items ----------------------------------------------------------------------------------
def test_export_round_trips(iadsr_cfg):
    cfg = iadsr_cfg(noise_ratio=0.2, gate_theta=-1.0, iadsr_backbone="SASRec")
    result = run_recbole_denoise("IADSR", "tiny", config_dict=cfg, saved=False)
    d = result["model_denoise"]
    name, path = d["dataset_name"], d["dataset_path"]
    src = read_atomic(os.path.join(result["dataset_path"], os.path.basename(result["dataset_path"]) + ".inter"))
    out = read_atomic(os.path.join(path, name + ".inter"))
    scores = read_atomic(os.path.join(path, name + ".denoise_scores"))
    flagged = scores[scores["flagged"] == 1]
    assert d["edited"] == len(flagged) > 0
    assert len(out) == len(src) - len(flagged)
    key = lambda df: sorted(zip(df["user_id"], df["item_id"], df["timestamp"]))  # noqa: E731
    dropped = sorted(set(key(src)) - set(key(out)))
    assert len(dropped) == len(flagged)
    assert sorted(zip(flagged["user_id"], flagged["item_id"])) == sorted((u, i) for u, i, _ in dropped)
    # every user keeps its validation and test targets
    last = lambda df: df.sort_values("timestamp", kind="mergesort").groupby("user_id").tail(2)  # noqa: E731
    assert key(last(src)) == key(last(out))
    labels, flags = scores["noise_label"].to_numpy(), scores["flagged"].to_numpy()
    tp = float(((labels == 1) & (flags == 1)).sum())
    assert d["precision"] == pytest.approx(tp / flags.sum())
    assert d["recall"] == pytest.approx(tp / labels.sum())
    # another backbone trains on exactly these decisions
    other = {**cfg, "data_path": os.path.dirname(path), "noise_ratio": 0.0}
    again = run_recbole_denoise("GRU4Rec", name, config_dict=other, saved=False)
    assert 0.0 <= again["test_result"]["ndcg@10"] <= 1.0


def test_popularity_buckets_equal_frequency():
    counts = {"a": 50, "b": 20, "c": 10, "d": 8, "e": 6, "f": 3, "g": 2, "h": 1}
    b = popularity_buckets(counts, 5)
    assert b["a"] == 1 and b["h"] == 5
    assert [b[i] for i in "abcdefgh"] == sorted(b[i] for i in "abcdefgh")     # hot -> cold
    many = {i: 1 for i in range(100)}
    sizes = np.bincount(list(popularity_buckets(many, 5).values()))[1:]
    assert sizes.tolist() == [20] * 5
    with pytest.raises(ValueError):
        popularity_buckets(counts, 0)


# -- configuration and bad input -----------------------------------------------------------------------------
def test_backbone_defaults_are_loaded(iadsr_cfg):
    config = Config("IADSR", "tiny", config_dict=iadsr_cfg(iadsr_backbone="SASRec"))
    assert config["hidden_dropout_prob"] == 0.5 and config["hidden_act"] == "gelu"
    assert config["gate_theta"] == -0.9 and config["short_term"] == "prefix"


@pytest.mark.parametrize("overrides, message", [
    ({"iadsr_backbone": "NoSuchRec"}, "iadsr_backbone"),
    ({"iadsr_backbone": "BERT4Rec"}, "no per-position hidden states"),
    ({"encoder_path": "/no/such/folder"}, "encoder_path"),
    ({"semantic_dim": 7}, "semantic_dim"),
    ({"short_term": "suffix"}, "short_term"),
    ({"protocol": "window"}, "protocol"),
    ({"iadsr_eval_history": "both"}, "iadsr_eval_history"),
    ({"iadsr_eval_keep": "half"}, "iadsr_eval_keep"),
])
def test_bad_input(iadsr_cfg, overrides, message):
    with pytest.raises((ConfigError, DatasetError), match=message):
        run_recbole_denoise("IADSR", "tiny", config_dict=iadsr_cfg(**overrides), saved=False)


def test_empty_texts(tiny, tiny_st_dir):
    data, make = tiny
    path = data / "tiny" / "tiny.item"
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    col = [k for k, h in enumerate(header) if h.startswith("title:")][0]
    rows = [line.split("\t") for line in lines[1:]]
    for r in rows:
        r[col] = ""
    path.write_text("\n".join([lines[0]] + ["\t".join(r) for r in rows]) + "\n")
    cfg = make(encoder="sentence_transformers", encoder_path=tiny_st_dir)
    with pytest.raises(DatasetError, match="every item has an empty 'title'"):
        run_recbole_denoise("IADSR", "tiny", config_dict=cfg, saved=False)


# -- evaluation: which history, which threshold (issue 15, items 13 and 16) -----------------------------------
def test_eval_history_original_predicts_from_the_unmasked_history(iadsr_cfg):
    _, net, train, test = build(iadsr_cfg(gate_theta=-1.0, iadsr_eval_history="original", iadsr_head="none"))
    train_epoch(net, train)
    net.eval()
    inter = next(iter(test))[0]
    with torch.no_grad():
        assert (net.mask_scores(inter)[2] < 0.5).any()            # the masked history would differ
        own = net.backbone.full_sort_predict(inter)
        assert torch.allclose(net.full_sort_predict(inter), own, atol=1e-6)
        net.eval_history = "masked"
        assert not torch.allclose(net.full_sort_predict(inter), own, atol=1e-4)


def test_eval_keep_is_the_training_keep_probability(iadsr_cfg):
    import math

    # hard Gumbel-sigmoid keeps an item with probability 1 - exp(-e^s), whatever tau
    torch.manual_seed(0)
    s = torch.tensor([-1.0, math.log(math.log(2.0)), 0.0, 0.5])
    freq = gumbel_sigmoid(s.repeat(40000, 1), tau=0.5).mean(0)
    assert torch.allclose(freq, 1 - torch.exp(-torch.exp(s)), atol=0.01)
    _, net, _, _ = build(iadsr_cfg())
    assert net.eval_keep == "probability"
    score = torch.tensor([[-0.5, -0.3, 0.1, -0.2, -0.37]])
    gate, valid = torch.tensor([True]), torch.ones(1, 5, dtype=torch.bool)
    keep = net._mask(score, gate, valid, stochastic=False)
    assert keep.tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0]]           # P(keep) 0.45, 0.52, 0.67, 0.56, 0.49
    assert torch.equal(keep.bool(), 1 - torch.exp(-torch.exp(score)) > 0.5)
    _, old, _, _ = build(iadsr_cfg(iadsr_eval_keep="sign"))
    assert old._mask(score, gate, valid, stochastic=False).tolist() == [[0.0, 0.0, 1.0, 0.0, 0.0]]


def test_long_term_pool_max_changes_only_the_long_term_interest(iadsr_cfg):
    """Official code: max over the states is the long-term interest (InfoNCE, gate, c2); the prediction
    still comes from the last state."""
    _, net, train, test = build(iadsr_cfg(long_term_pool="max", gate_theta=1.0, info_long_weight=0.0,
                                          info_short_weight=0.0, recon_weight=0.0, iadsr_head="none"))
    net.train()
    batch = next(iter(train))
    assert torch.allclose(sum(net.calculate_loss(batch)), net.backbone.calculate_loss(batch), atol=1e-6)
    net.eval()
    inter = next(iter(test))[0]
    with torch.no_grad():
        assert torch.allclose(net.full_sort_predict(inter), net.backbone.full_sort_predict(inter), atol=1e-6)
        rows, valid = net._rows(batch)
        x = net.adapter.item_embedding(batch[net.ITEM_SEQ])
        h, e2, long = net._encode(x, batch, valid)
        expect = torch.stack([h[i, valid[i]].max(0).values for i in range(len(h))])
        assert torch.allclose(long, expect) and not torch.allclose(long, e2)


def test_eval_keys_defaults(iadsr_cfg):
    config = Config("IADSR", "tiny", config_dict=iadsr_cfg())
    assert config["iadsr_eval_history"] == "masked" and config["iadsr_eval_keep"] == "probability"


# -- the encoder keys reach the encoder; e1 can hold the whole training sequence (item 15) ---------------------
def test_encoder_keys_reach_the_encoder(iadsr_cfg, tiny_llm_dir, tmp_path):
    config = Config("IADSR", "tiny", config_dict=iadsr_cfg(encoder="llm2vec", encoder_path=tiny_llm_dir,
                                                           encoder_bidirectional=False, encoder_pooling="last",
                                                           encoder_max_length=300))
    enc = build_encoder(config)
    assert (enc.bidirectional, enc.pooling, enc.max_length, enc.adapters) == (False, "last", 300, [])
    assert "bidirectional=0:pooling=last" in enc.identity
    with pytest.raises(ConfigError, match="encoder_adapter"):
        config["encoder_adapter"] = str(tmp_path)
        build_encoder(config)


def test_whole_training_sequence_and_cut_counted(iadsr_cfg, caplog):
    config, net, train, _ = build(iadsr_cfg(semantic_center=False))
    ds = train._dataset
    config["semantic_max_items"] = 0
    config["semantic_cache_dir"] = os.path.join(config["derived_data_path"], "emb-all")
    rec = Recorder(build_encoder(config))
    SemanticInterests(config, ds, encoder=rec)
    longs = rec.texts[:len(ds.user_sequences)]
    assert [len(t.split("; ")) for t in longs] == [len(s) - 2 for _, s in sorted(ds.user_sequences.items())]
    config["semantic_max_items"] = 3
    longer = sum(len(s) - 2 > 3 for s in ds.user_sequences.values())
    assert longer > 0
    with caplog.at_level("INFO"):
        SemanticInterests(config, ds, encoder=Recorder(build_encoder(config)))
    assert f"{longer} of {len(ds.user_sequences)} users' training sequences have more than 3 items" in caplog.text


def test_score_is_the_sum_of_three_cosines_and_the_gate(iadsr_cfg):
    """Eqs. 11-16 on random vectors: score(t) = cos(e1, h_t) + cos(e2, l_t) + cos(h_t, l_t), gate cos(e1, e2)."""
    _, net, _, _ = build(iadsr_cfg(gate_theta=0.0))
    torch.manual_seed(0)
    h, short = torch.randn(3, 4, 16), torch.randn(3, 4, 16)
    e2, e1 = torch.randn(3, 16), torch.randn(3, 16)
    score, gate = net._scores(h, e2, e1, short)
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    for u in range(3):
        assert bool(gate[u]) == (cos(e1[u], e2[u]) >= 0.0)
        for t in range(4):
            want = cos(e1[u], h[u, t]) + cos(e2[u], short[u, t]) + cos(h[u, t], short[u, t])
            assert float(score[u, t]) == pytest.approx(want, abs=1e-5)


def test_paper_benchmark_has_the_iadsr_settings():
    """§4.1.5 in the paper benchmark: lr 1e-4, batch 32, 2 GRU layers, llm2vec, e1 over the whole sequence
    (tests/test_benchmark.py validates the whole spec)."""
    import yaml

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "benchmarks", "paper.yaml")) as f:
        c = yaml.safe_load(f)["methods"]["IADSR"]
    assert (c["learning_rate"], c["train_batch_size"], c["num_layers"]) == (1e-4, 32, 2)
    assert c["encoder"] == "llm2vec" and "Llama-3.1-8B" in c["encoder_path"]
    assert c["semantic_max_items"] == 0 and c["encoder_max_length"] >= 1024
    assert c["datasets"]["amazon-beauty"]["MAX_ITEM_LIST_LENGTH"] == 32 and "ml-100k" in c["datasets"]


# -- issue 16: encoder_dtype / encoder_batching reach the encoder ---------------------------------------------
def test_encoder_dtype_and_batching_keys(iadsr_cfg, monkeypatch):
    from recbole_denoise.llm import encoders

    config = Config("IADSR", "tiny", config_dict=iadsr_cfg())
    assert config["encoder_dtype"] == "auto" and config["encoder_batching"] == "sorted"
    monkeypatch.setattr(encoders, "cpu_native_bf16", lambda: True)
    enc = build_encoder(config)
    assert (enc.dtype, enc.batching) == ("bfloat16", "sorted") and enc.identity.endswith(":dtype=bfloat16")
    config["encoder_dtype"], config["encoder_batching"] = "float32", "library"
    enc = build_encoder(config)
    assert (enc.dtype, enc.batching) == ("float32", "library") and "dtype" not in enc.identity
    for key, bad in (("encoder_dtype", "fp8"), ("encoder_batching", "chunked")):
        config[key] = bad
        with pytest.raises(ConfigError, match=key):
            build_encoder(config)
        config[key] = "float32" if key == "encoder_dtype" else "sorted"
