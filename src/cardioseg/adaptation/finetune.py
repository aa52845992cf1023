"""Fine-tuning: initialise from a checkpoint, freeze blocks, pick k labelled target subjects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from cardioseg.data.datasets import CaseRecord
from cardioseg.errors import CardiosegError
from cardioseg.models.checkpoint import load_checkpoint
from cardioseg.models.unet_parts import unet_parts

#: Values of ``finetune.trainable``.
TRAINABLE = ("all", "encoder", "decoder")


def load_init_weights(model: nn.Module, path: str | Path) -> dict:
    """Copy the weights of checkpoint ``path`` into ``model`` (architectures must match).

    Returns:
        The checkpoint's fingerprint.

    Raises:
        CardiosegError: Missing/unreadable checkpoint or a different architecture.
    """
    ckpt = load_checkpoint(path)
    state = {k: v.float() for k, v in ckpt["model_state"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise CardiosegError(
            path, "init_checkpoint does not match the configured model (channels, strides, ...)"
        ) from None
    return ckpt.get("fingerprint", {})


def trainable_modules(model: nn.Module, trainable: str = "all", n_blocks: int = 0) -> list:
    """The modules left trainable.

    Args:
        model: A MONAI U-Net.
        trainable: ``all`` (everything), ``encoder`` (the first ``n_blocks`` encoder blocks, on
            the image side) or ``decoder`` (the last ``n_blocks`` decoder blocks, on the output
            side).
        n_blocks: Number of blocks; 0 = all blocks of that part.
    """
    if trainable not in TRAINABLE:
        raise ValueError(f"finetune.trainable must be one of {TRAINABLE}, got {trainable!r}")
    if trainable == "all":
        return [model]
    parts = unet_parts(model)
    blocks = parts.encoder if trainable == "encoder" else parts.decoder
    n = len(blocks) if n_blocks <= 0 else min(n_blocks, len(blocks))
    return blocks[:n] if trainable == "encoder" else blocks[len(blocks) - n :]


def freeze(model: nn.Module, trainable: str = "all", n_blocks: int = 0) -> list[nn.Parameter]:
    """Freeze everything except :func:`trainable_modules`; return the trainable parameters.

    Frozen BatchNorm layers also stop updating their running statistics.

    Example:
        >>> from cardioseg.models.factory import ModelConfig, build_model
        >>> net = build_model(ModelConfig(channels=[4, 8, 16], strides=[2, 2]))
        >>> n_all = len(list(net.parameters()))
        >>> 0 < len(freeze(net, "decoder", 1)) < n_all
        True
    """
    keep = trainable_modules(model, trainable, n_blocks)
    keep_ids = {id(p) for m in keep for p in m.parameters()}
    kept_modules = {id(sub) for m in keep for sub in m.modules()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep_ids)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in kept_modules:
            m.momentum = 0.0
    return [p for p in model.parameters() if p.requires_grad]


def select_subjects(records: list[CaseRecord], k: int, seed: int = 0) -> list[CaseRecord]:
    """Keep all records of ``k`` subjects drawn with ``seed``.

    The draw is a seeded permutation of the sorted subjects, so for one seed the subjects chosen
    for ``k`` are a subset of those chosen for any larger ``k`` (nested learning curves).

    Raises:
        CardiosegError: Fewer than ``k`` subjects.
    """
    subjects = sorted({f"{r.dataset}/{r.subject}" for r in records})
    if k > len(subjects):
        raise CardiosegError(
            None, f"finetune.k_subjects={k} but only {len(subjects)} labelled subjects"
        )
    order = np.random.default_rng(seed).permutation(len(subjects))
    chosen = {subjects[i] for i in order[:k]}
    return [r for r in records if f"{r.dataset}/{r.subject}" in chosen]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of all parameters (for checking what changed)."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}
