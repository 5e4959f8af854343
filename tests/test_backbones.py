"""Every RecBole backbone trains and evaluates through run_recbole_denoise under both protocols."""
import json

import pytest

from recbole_denoise import run_recbole_denoise

BACKBONES = ["SASRec", "BERT4Rec", "GRU4Rec", "Caser"]


@pytest.mark.parametrize("protocol", ["loo", "window"])
@pytest.mark.parametrize("model", BACKBONES)
def test_backbone_one_epoch_noised(model, protocol, tiny_cfg, tmp_path):
    out = tmp_path / "r.json"
    r = run_recbole_denoise(model, "tiny", config_dict=tiny_cfg(protocol=protocol, noise_ratio=0.2,
                                                                  result_file=str(out)))
    assert 0.0 <= r["test_result"]["ndcg@10"] <= 1.0
    saved = json.loads(out.read_text())
    for key in ("model", "dataset", "denoiser", "config", "best_valid_result", "test_result", "timings", "denoise"):
        assert key in saved
    assert saved["model"] == model and saved["dataset"] == "tiny"
    assert saved["config"]["protocol"] == protocol
    assert saved["noise"]["noisy"] > 0
    assert saved["timings"]["epochs"] == 1 and saved["timings"]["train"] > 0


def test_window_protocol_evaluates_each_window(tiny_cfg):
    # 40 users x 12 items, window 6 -> 7 windows each = 280 windows, split 224 / 28 / 28
    from recbole.data import data_preparation
    from recbole_denoise.config import Config
    from recbole_denoise.prepare import prepare_dataset
    from recbole_denoise.pipeline import build_dataset

    config = Config("GRU4Rec", "tiny", config_dict=tiny_cfg(protocol="window"))
    data, _ = prepare_dataset(config)
    train, valid, test = data_preparation(config, build_dataset(config, data))
    assert len(train.dataset) == 224 and len(valid.dataset) == 28 and len(test.dataset) == 28
    lengths = train.dataset.inter_feat["item_length"]
    assert lengths.max().item() == 5 and lengths.min().item() == 5
    assert train.dataset.inter_feat["item_id_list"].shape[1] == 10  # padded to MAX_ITEM_LIST_LENGTH
