"""HSD: packing, flags, the curriculum and the loss filter, runs over each sub-model on both protocols, and the
export of its decisions (trained on by another backbone)."""
import math
import os

import pytest
import torch

from recbole_denoise.data.atomic import read_atomic
from recbole_denoise.errors import ConfigError
from recbole_denoise.model.sequential_recommender.hsd import pack
from recbole_denoise.quick_start import run_recbole_denoise
from tests.conftest import CYCLIC_LEARN, build_model


def test_pack_moves_kept_items_to_the_front_and_passes_gradients():
    seq = torch.tensor([[5, 6, 7, 8, 0], [1, 2, 0, 0, 0]])
    x = torch.randn(2, 5, 3)
    keep = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]], requires_grad=True)
    ids, emb, lengths = pack(seq, x, keep)
    assert ids.tolist() == [[5, 7, 8, 0, 0], [2, 0, 0, 0, 0]]
    assert lengths.tolist() == [3, 1]
    assert torch.allclose(emb[0, :3], x[0, [0, 2, 3]]) and (emb[0, 3:] == 0).all()
    emb.sum().backward()
    assert keep.grad[0, 0] == pytest.approx(x[0, 0].sum().item(), abs=1e-5)  # straight-through reaches keep
    assert keep.grad[0, 1] == 0


def test_flags_keep_the_last_item_of_an_emptied_row(tiny_cfg):
    net = build_model("HSD", tiny_cfg())[0].eval()
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    noisy = torch.tensor([0.2, 0.8]).expand(2, 4, 2)  # class 1 (noisy) wins everywhere, at both levels
    keep = net.flags(noisy, noisy, mask, sample=False)
    assert keep.tolist() == [[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
    clean = torch.tensor([0.8, 0.2]).expand(2, 4, 2)
    assert net.flags(noisy, clean, mask, sample=False).tolist() == mask.tolist()  # one level is not enough


def test_curriculum_and_temperature_schedules(tiny_cfg):
    net = build_model("HSD", tiny_cfg(hsd_drop_start=0.2, hsd_drop_epochs=4, gumbel_anneal_every=2))[0]
    rates = []
    for epoch in range(6):
        net.on_epoch_start(epoch)
        rates.append(round(net.drop_rate(), 6))
    assert rates == [0.2, 0.15, 0.1, 0.05, 0.0, 0.0]
    tau = net.tau
    net.anneal()
    assert net.tau == tau
    net.anneal()
    assert net.tau == pytest.approx(max(0.001, tau * math.exp(-0.001 * 2)))


def test_default_curriculum_is_the_official_linspace(tiny_cfg):
    """The official trainer's drop rates: np.linspace(0.2, 0, 10) over epochs 0..9, then 0."""
    net = build_model("HSD", tiny_cfg())[0]
    rates = []
    for epoch in range(11):
        net.on_epoch_start(epoch)
        rates.append(net.drop_rate())
    assert rates == pytest.approx([0.2 * (1 - e / 9) for e in range(10)] + [0.0])


def test_loss_filter_leaves_out_the_largest_terms_only(tiny_cfg):
    net, train, _, _ = build_model("HSD", tiny_cfg())
    batch = next(iter(train))
    x = net.adapter.item_embedding(batch["item_id_list"])
    mask = (batch["item_id_list"] > 0).float()
    torch.manual_seed(0)
    full = net.preference_loss(batch, x, mask, 0.0)
    torch.manual_seed(0)
    tiny_rate = net.preference_loss(batch, x, mask, 0.01)  # floor(0.01 * |S|) = 0: nothing left out
    torch.manual_seed(0)
    cut = net.preference_loss(batch, x, mask, 0.5)
    assert tiny_rate.item() == pytest.approx(full.item()) and cut.item() < full.item()


def test_evaluation_is_deterministic_unless_asked(tiny_cfg):
    net, _, test, _ = build_model("HSD", tiny_cfg())
    net.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        full = net.full_sort_predict(batch)
        assert torch.equal(full, net.full_sort_predict(batch))
        picked = full.gather(1, batch["item_id"].unsqueeze(1)).squeeze(1)
        assert torch.allclose(net.predict(batch), picked, atol=1e-5)
    net.stochastic_eval = True  # the official behaviour: Gumbel noise at evaluation too
    with torch.no_grad():
        assert not torch.equal(net.decide(batch)[2], net.decide(batch)[2])


@pytest.mark.parametrize("sub_model", ["SASRec", "GRU4Rec", "BERT4Rec", "Caser"])
def test_one_epoch_over_each_sub_model_exports_its_decisions(tiny_cfg, sub_model):
    result = run_recbole_denoise("HSD", "tiny", config_dict=tiny_cfg(hsd_sub_model=sub_model, noise_ratio=0.1))
    assert result["timings"]["epochs"] == 1 and 0.0 <= result["test_result"]["ndcg@10"] <= 1.0
    d = result["model_denoise"]
    assert {"precision", "recall", "f1", "auc"} <= set(d) and d["n_noise"] > 0
    scores = read_atomic(os.path.join(d["dataset_path"], d["dataset_name"] + ".denoise_scores"))
    assert len(scores) == d["editable"] and int(scores["flagged"].sum()) == d["edited"]


def test_window_protocol_exports_each_windows_decisions(tiny_cfg):
    """Under the window protocol every history of the splits ``denoise_split`` names is decided on as one
    evaluation row; targets never are; the noise labels give the detection metrics; the edited windows train
    another backbone."""
    cfg = tiny_cfg(protocol="window", noise_ratio=0.2, denoise_split="all")
    result = run_recbole_denoise("HSD", "tiny", config_dict=cfg, saved=False)
    d = result["model_denoise"]
    assert result["timings"]["epochs"] == 1 and d["n_noise"] > 0 and 0 <= d["auc"] <= 1
    scores = read_atomic(os.path.join(d["dataset_path"], d["dataset_name"] + ".denoise_scores"))
    root, parent = os.path.dirname(d["dataset_path"]), d["dataset_name"].rsplit("-HSD-", 1)[0]

    def windows(name):
        return [read_atomic(os.path.join(root, name, f"{name}.{split}.inter")) for split in ("train", "valid", "test")]

    histories = sum(len(h) for t in windows(parent) for h in t["item_id_list"])
    assert len(scores) == d["editable"] == histories  # every history position, no target
    assert set(scores["split"]) == {"train", "valid", "test"} and int(scores["flagged"].sum()) == d["edited"]
    kept = sum(len(h) for t in windows(d["dataset_name"]) for h in t["item_id_list"])
    assert kept == histories - d["edited"]
    again = run_recbole_denoise("SASRec", d["dataset_name"], saved=False,
                                config_dict={**cfg, "noise_ratio": 0, "data_path": root})
    assert "ndcg@10" in again["test_result"]
    train_only = run_recbole_denoise("HSD", "tiny", config_dict={**cfg, "denoise_split": "train"}, saved=False)
    kept_splits = read_atomic(os.path.join(train_only["model_denoise"]["dataset_path"],
                                           train_only["model_denoise"]["dataset_name"] + ".denoise_scores"))["split"]
    assert set(kept_splits) == {"train"}


def test_exported_dataset_trains_another_backbone(tiny_cfg):
    cfg = tiny_cfg(noise_ratio=0.2, epochs=2)
    first = run_recbole_denoise("HSD", "tiny", config_dict=cfg, saved=False)
    d = first["model_denoise"]
    second = run_recbole_denoise("SASRec", d["dataset_name"],
                                 config_dict={**cfg, "data_path": os.path.dirname(d["dataset_path"])}, saved=False)
    kept = read_atomic(os.path.join(d["dataset_path"], d["dataset_name"] + ".inter"))
    assert second["dataset"] == d["dataset_name"] and "ndcg@10" in second["test_result"]
    assert len(kept) == 480 - d["edited"]  # tiny.inter has 480 interactions


def test_exported_flags_beat_random_flags_on_synthetic_noise(clustered_cfg):
    """Users draw from one item group; noise brings items of other groups. After training, HSD's flags beat
    random flags at the same rate (expected F1 of random flags: 2 p f / (p + f))."""
    cfg = clustered_cfg(**{**CYCLIC_LEARN, "epochs": 15})
    d = run_recbole_denoise("HSD", "clustered", config_dict=cfg, saved=False)["model_denoise"]
    p, f = d["n_noise"] / d["n"], d["n_flagged"] / d["n"]
    assert f > 0.02 and d["f1"] > 1.1 * (2 * p * f / (p + f))
    assert d["precision"] > p


def test_bad_keys_are_named(tiny_cfg):
    with pytest.raises(ConfigError, match="hsd_item_query"):
        build_model("HSD", tiny_cfg(hsd_item_query="item"))
    with pytest.raises(ConfigError, match="hsd_sub_model"):
        build_model("HSD", tiny_cfg(hsd_sub_model="FMLPRec"))
