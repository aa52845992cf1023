"""Training: YAML-driven config, slice dataset, trainer with resume and k-fold splits."""

from cardioseg.training.config import DataConfig, TrainConfig, TrainingConfig, load_config

__all__ = ["DataConfig", "TrainConfig", "TrainingConfig", "load_config"]
