"""Explicit denoisers (dataset transforms): the interface, the registry and the built-in ones."""
from recbole_denoise.denoisers.base import (  # noqa: F401
    DENOISERS, Denoiser, Sequences, decide, decide_units, get_denoiser, register_denoiser,
)
from recbole_denoise.denoisers import cooccurrence  # noqa: F401  (registers CoocOutlier)
from recbole_denoise.denoisers import llm4dsr  # noqa: F401,E402  (registers LLM4DSR)
