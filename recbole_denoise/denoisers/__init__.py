"""Explicit denoisers (dataset transforms): the interface, the registry and the built-in ones.

``base`` (the :class:`Denoiser` interface and the registry), ``decision`` (which scores become edits),
``stage`` (the denoising stage and its score cache); the sequences a denoiser sees and the writer of its
edits are ``recbole_denoise.data.edits``. The names below are the API a new denoiser uses.
"""
from recbole_denoise.data.edits import Sequences  # noqa: F401
from recbole_denoise.denoisers.base import DENOISERS, Denoiser, get_denoiser, register_denoiser  # noqa: F401
from recbole_denoise.denoisers.decision import decide, decide_units  # noqa: F401
from recbole_denoise.denoisers import cooccurrence  # noqa: F401  (registers CoocOutlier)
from recbole_denoise.denoisers import llm4dsr  # noqa: F401,E402  (registers LLM4DSR)
