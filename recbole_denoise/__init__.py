"""recbole-denoise: LLM-based denoising of sequential recommendation as a RecBole extension."""
from recbole_denoise import compat as _compat

_compat.apply()

from recbole_denoise.config import Config  # noqa: E402
from recbole_denoise.denoisers import Denoiser, register_denoiser  # noqa: E402
from recbole_denoise.quick_start import run_recbole_denoise  # noqa: E402
from recbole_denoise.inference import load_data_and_model  # noqa: E402

__all__ = ["Config", "Denoiser", "load_data_and_model", "register_denoiser", "run_recbole_denoise"]
__version__ = "0.1.0"
