"""Network factory and checkpoint I/O."""

from cardioseg.models.checkpoint import (
    PACKAGED_ENSEMBLES,
    PACKAGED_MODELS,
    checkpoint_members,
    default_checkpoint_path,
    describe_checkpoint,
    export_checkpoint,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from cardioseg.models.factory import ModelConfig, build_model

__all__ = [
    "PACKAGED_ENSEMBLES",
    "PACKAGED_MODELS",
    "ModelConfig",
    "build_model",
    "checkpoint_members",
    "default_checkpoint_path",
    "describe_checkpoint",
    "export_checkpoint",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]
