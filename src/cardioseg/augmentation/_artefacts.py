"""Run MRI artefact simulators from TorchIO / MONAI on one 2D sample at a time.

TorchIO works on ``(C, W, H, D)`` volumes and MONAI on channel-first arrays; the helpers here turn
a ``(H, W)`` slice of a ``(B, 1, H, W)`` batch into what the library expects and back. Artefacts
are simulated on a magnitude-like image: each sample is shifted to a minimum of 0 (the project's
z-scored inputs are centred on 0) and shifted back afterwards, so k-space effects relate to the
image content as they would on scanner data.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch


def require_torchio() -> ModuleType:
    """Import TorchIO lazily (it is slow to import and only some transforms need it).

    Raises:
        ImportError: With the install command when TorchIO is missing.
    """
    try:
        import torchio
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "this MRI artefact transform needs TorchIO: pip install torchio"
        ) from None
    return torchio


def per_sample(
    image: torch.Tensor,
    active: torch.Tensor,
    fn: Callable[[int, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Apply ``fn(index, slice)`` to the active samples of a ``(B, 1, H, W)`` batch.

    Args:
        image: Batch of images.
        active: ``(B,)`` booleans; inactive samples are returned unchanged.
        fn: Receives the sample index and a non-negative ``(H, W)`` float32 slice and returns a
            ``(H, W)`` slice.

    Returns:
        A new batch (the input is not modified).
    """
    out = image.clone()
    for i in range(image.shape[0]):
        if not bool(active[i]):
            continue
        x = image[i, 0].float()
        lo = x.min()
        y = fn(i, (x - lo).contiguous())
        out[i, 0] = (torch.as_tensor(y).float().reshape(x.shape) + lo).to(image.dtype)
    return out
