"""Our RecBole models end to end through run_recbole_denoise: one epoch on the tiny fixture with noise on
both protocols (the best checkpoint is saved and reloaded), and learning the cyclic dataset's next-item rule."""
import pytest

from recbole_denoise.quick_start import run_recbole_denoise
from tests.conftest import CYCLIC_LEARN

MODELS = ["FMLPRec", "CL4SRec", "DCRec"]


@pytest.mark.parametrize("protocol", ["loo", "window"])
@pytest.mark.parametrize("model", MODELS)
def test_one_epoch_through_run_recbole_denoise(tiny_cfg, model, protocol):
    result = run_recbole_denoise(model, "tiny", config_dict=tiny_cfg(protocol=protocol, noise_ratio=0.1))
    assert result["model"] == model and result["protocol"] == protocol and result["timings"]["epochs"] == 1
    assert result["noise"]["noisy_fraction"] > 0
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0


@pytest.mark.parametrize("model", MODELS)
def test_learns_the_cyclic_rule(cyclic_cfg, model):
    result = run_recbole_denoise(model, "cyclic", config_dict=cyclic_cfg(**CYCLIC_LEARN), saved=False)
    assert result["test_result"]["hit@10"] >= 0.8  # random ranking: 10 / 60 = 0.17
