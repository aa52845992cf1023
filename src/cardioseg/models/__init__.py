"""Network factory and checkpoint I/O."""

from cardioseg.models.factory import ModelConfig, build_model
from cardioseg.models.checkpoint import default_checkpoint_path, load_checkpoint, save_checkpoint

__all__ = [
    "ModelConfig", "build_model", "default_checkpoint_path", "load_checkpoint", "save_checkpoint",
]
