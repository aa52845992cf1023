"""Training: YAML-driven config, slice dataset, trainer with resume and k-fold splits."""

from cardioseg.training.config import (
    DataConfig,
    TrainConfig,
    TrainingConfig,
    config_from_dict,
    load_config,
)

__all__ = ["DataConfig", "TrainConfig", "TrainingConfig", "config_from_dict", "load_config"]
