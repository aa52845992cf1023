"""Self-contained checkpoints: weights + the config and data fingerprint needed for inference."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch

from cardioseg.errors import CardiosegError
from cardioseg.io.nifti import atomic_write

DEFAULT_WEIGHTS = "cardioseg_unet2d_acdc.pt"


def default_checkpoint_path() -> Path:
    """Path of the shipped default model inside the installed package."""
    return Path(str(resources.files("cardioseg") / "weights" / DEFAULT_WEIGHTS))


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Save atomically (a crash never leaves a truncated checkpoint)."""
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | Path | None = None) -> dict[str, Any]:
    """Load a checkpoint (default: the shipped model) on the CPU."""
    path = Path(path) if path else default_checkpoint_path()
    if not path.exists():
        raise CardiosegError(path, "model checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CardiosegError(path, f"cannot read model checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or "model_state" not in ckpt or "config" not in ckpt:
        raise CardiosegError(path, "not a cardioseg checkpoint")
    return ckpt
