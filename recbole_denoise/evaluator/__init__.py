"""Metrics beyond RecBole's: noise detection against ground-truth labels."""
from recbole_denoise.evaluator.noise_detection import noise_detection_metrics  # noqa: F401
