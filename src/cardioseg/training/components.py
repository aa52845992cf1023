"""Auxiliary training components: the trainer's one hook for methods beyond plain supervision.

A component may add unlabelled images to a batch (they go through the same forward pass as the
labelled ones; the segmentation loss only sees the labelled part) and returns an extra loss per
step. The trainer optimises the component's own parameters together with the network's and saves
its state for resuming. Components are built from config sections by :func:`build_components`.

Example:
    >>> class L2(AuxiliaryComponent):
    ...     name = "l2"
    ...     def step(self, batch, logits, progress):
    ...         return 1e-4 * logits.pow(2).mean(), {}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from cardioseg.training.config import TrainingConfig
    from cardioseg.training.slices import PreparedCase


class AuxiliaryComponent:
    """Base class: no extra inputs, no parameters, no loss."""

    name = "component"

    def parameters(self) -> list[nn.Parameter]:
        """Extra trainable parameters (optimised with the network's)."""
        return []

    def extend_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Add inputs before the forward pass; unlabelled images go to ``batch["unlabeled"]``."""
        return batch

    def step(
        self, batch: dict[str, Any], logits: torch.Tensor, progress: float
    ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Extra loss after the forward pass.

        Args:
            batch: ``image`` (labelled), ``label``, optionally ``unlabeled``.
            logits: Network output for ``cat([image, unlabeled])``.
            progress: Fraction of the schedule done, in [0, 1].

        Returns:
            The loss to add (or ``None``) and scalars to log.
        """
        return None, {}

    def train(self, mode: bool = True) -> None:
        """Switch the component's modules between training and evaluation."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def build_components(
    cfg: TrainingConfig,
    model: nn.Module,
    unlabeled: list[PreparedCase],
    device: torch.device,
    seed: int,
) -> list[AuxiliaryComponent]:
    """The components enabled in ``cfg`` (currently: ``dann``).

    Args:
        cfg: Training configuration.
        model: The segmentation network (components may hook into it).
        unlabeled: Prepared cases of the ``target_unlabeled`` datasets.
        device: Training device.
        seed: Base seed for the components' samplers.
    """
    components: list[AuxiliaryComponent] = []
    if cfg.dann.enabled:
        from cardioseg.adaptation.dann import DannComponent

        components.append(DannComponent(model, cfg, unlabeled, device, seed))
    return components
