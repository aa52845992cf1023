"""Self-contained checkpoints: weights + the config and data fingerprint needed for inference."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from cardioseg.errors import CardiosegError
from cardioseg.io.nifti import atomic_write

DEFAULT_WEIGHTS = "cardioseg_unet2d_acdc_v4.pt"

#: Models shipped inside the package, selectable by name wherever a checkpoint path is accepted
#: (``--model contrast``). See ``models/README.md`` for their cards.
PACKAGED_MODELS: dict[str, str] = {
    # all-round default (v4, 1.5x wider U-Net): best on unseen cine vendors (M&Ms)
    "default": DEFAULT_WEIGHTS,
    # trained with random intensity curves as well: better on other contrasts (LGE), worse on
    # cine vendors
    "contrast": "cardioseg_unet2d_acdc_contrast.pt",
    # the previous default (v3, the narrower U-Net), kept so that the results measured with it
    # (e.g. the LGE fine-tuning protocol's "shipped" runs) can be reproduced
    "v3": "cardioseg_unet2d_acdc_v3.pt",
}

#: Packaged ensembles: names standing for several packaged models whose softmax outputs are
#: averaged (``--model ensemble``); slower (one network pass per member). Measured: level with
#: ``default`` on unseen cine vendors, between ``default`` and ``contrast`` on LGE
#: (``models/README.md``).
PACKAGED_ENSEMBLES: dict[str, tuple[str, ...]] = {
    "ensemble": ("default", "contrast"),
}


def _packaged_path(filename: str) -> Path:
    return Path(str(resources.files("cardioseg") / "weights" / filename))


def default_checkpoint_path() -> Path:
    """Path of the shipped default model inside the installed package."""
    return _packaged_path(DEFAULT_WEIGHTS)


def resolve_checkpoint(path: str | Path | None) -> Path:
    """A checkpoint path, or the packaged model of that name (``None``: the default model).

    An existing file always wins over a packaged model's name.

    Example:
        >>> resolve_checkpoint("contrast").name
        'cardioseg_unet2d_acdc_contrast.pt'
    """
    if not path:
        return default_checkpoint_path()
    p = Path(path)
    if not p.exists() and str(path) in PACKAGED_MODELS:
        return _packaged_path(PACKAGED_MODELS[str(path)])
    return p


def checkpoint_members(
    checkpoint: str | Path | Sequence[str | Path] | None,
) -> list[Path]:
    """The checkpoint files behind a model argument, in order.

    Args:
        checkpoint: A path, a packaged model's name, a packaged ensemble's name, ``None`` (the
            default model), or a sequence of these (an ensemble of all their members).

    Example:
        >>> [p.name for p in checkpoint_members("ensemble")]
        ['cardioseg_unet2d_acdc_v4.pt', 'cardioseg_unet2d_acdc_contrast.pt']
    """
    items = (
        [checkpoint] if checkpoint is None or isinstance(checkpoint, (str, Path)) else checkpoint
    )
    members: list[Path] = []
    for item in items:
        if item and not Path(item).exists() and str(item) in PACKAGED_ENSEMBLES:
            members += [resolve_checkpoint(name) for name in PACKAGED_ENSEMBLES[str(item)]]
        else:
            members.append(resolve_checkpoint(item))
    return members


def model_description(paths: Sequence[str | Path] | None) -> str:
    """File names and short SHA-256 digests of a model's checkpoint files, for the record of
    which model produced a result (``"unknown"`` without files).

    Example:
        >>> model_description([default_checkpoint_path()])  # doctest: +ELLIPSIS
        'cardioseg_unet2d_acdc_v4.pt (sha256 ...)'
    """
    import hashlib

    parts = []
    for path in paths or []:
        p = Path(path)
        try:
            digest = hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        except OSError:
            digest = "unreadable"
        parts.append(f"{p.name} (sha256 {digest})")
    return " + ".join(parts) or "unknown"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Save atomically (a crash never leaves a truncated checkpoint)."""
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | Path | None = None) -> dict[str, Any]:
    """Load a checkpoint on the CPU: a path, a packaged model's name or ``None`` (the default).

    Returns:
        A dict: ``model_state`` (the weights), ``config`` (the training configuration as a
        plain mapping; :func:`cardioseg.training.config_from_dict` makes it a validated
        :class:`~cardioseg.training.TrainingConfig`), ``fingerprint`` (the training data:
        ``target_spacing``, ``n_train_volumes``, ``train_subjects``, ``spacing_median``,
        ``intensity_p99_5_median``, ``intensity_reference``), ``metrics`` and ``format``
        (an exported checkpoint also has ``export``). :func:`describe_checkpoint` summarises it.

    Raises:
        CardiosegError: Missing, unreadable or not a cardioseg checkpoint.

    Example:
        >>> ckpt = load_checkpoint("default")
        >>> ckpt["config"]["data"]["target_spacing"], ckpt["fingerprint"]["n_train_volumes"]
        (1.25, 160)
    """
    return read_checkpoint(path)[0]


def read_checkpoint(path: str | Path | None = None) -> tuple[dict[str, Any], str]:
    """:func:`load_checkpoint`, with the SHA-256 of the bytes it was loaded from (the file is
    read once, so the digest always belongs to the weights returned)."""
    import hashlib
    import io

    path = resolve_checkpoint(path)
    if not path.exists():
        if str(path) in PACKAGED_ENSEMBLES:
            raise CardiosegError(path, "an ensemble is not a single checkpoint; give one model")
        names = ", ".join(sorted(PACKAGED_MODELS))
        ensembles = ", ".join(sorted(PACKAGED_ENSEMBLES))
        raise CardiosegError(
            path,
            f"model checkpoint not found (packaged models: {names}; packaged ensembles, "
            f"where several models are accepted: {ensembles})",
        )
    try:
        data = path.read_bytes()
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CardiosegError(path, f"cannot read model checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or "model_state" not in ckpt or "config" not in ckpt:
        raise CardiosegError(path, "not a cardioseg checkpoint")
    return ckpt, hashlib.sha256(data).hexdigest()


def export_checkpoint(
    source: str | Path,
    destination: str | Path,
    half: bool = True,
    notes: dict | None = None,
    fingerprint: dict | None = None,
) -> Path:
    """Write an inference-only copy of a training checkpoint (for shipping).

    Keeps the weights, the configuration, the data fingerprint and the last metrics; drops the
    optimizer, scheduler and random-generator states. With ``half`` the floating-point weights are
    stored as float16 (half the size; :class:`~cardioseg.inference.Segmenter` computes in float32).

    Args:
        source: A checkpoint written by the trainer (``final.pt``, ``best.pt`` or ``last.pt``).
        destination: Output path (written atomically).
        half: Store floating-point tensors as float16.
        notes: Extra JSON-able provenance stored under ``"export"``.
        fingerprint: Replaces the checkpoint's data fingerprint (e.g. with an added
            harmonization reference); ``None`` keeps it.

    Returns:
        The destination path.
    """
    ckpt = load_checkpoint(source)
    state = {
        k: (v.half() if half and v.is_floating_point() else v)
        for k, v in ckpt["model_state"].items()
    }
    payload = {
        "model_state": state,
        "config": ckpt["config"],
        "fingerprint": fingerprint if fingerprint is not None else ckpt.get("fingerprint", {}),
        "metrics": ckpt.get("metrics", {}),
        "format": ckpt.get("format", "cardioseg-checkpoint-v1"),
        "export": {"source": Path(source).name, "float16": half, **(notes or {})},
    }
    return save_checkpoint(destination, payload)


def describe_checkpoint(path: str | Path | None = None) -> dict[str, Any]:
    """What a checkpoint is: network, training data and recipe, validation metrics.

    Args:
        path: A checkpoint file or a packaged model's name (``None``: the default model).

    Returns:
        Plain values: ``file``, ``size_mb``, ``parameters``, ``channels``, ``datasets``,
        ``iterations``, ``augmentation``, ``extra_augmentation``, ``init_checkpoint``,
        ``target_spacing``, ``n_train_volumes``, ``val_dice`` (the last mean Dice the trainer
        logged on its monitored volumes, ``None`` when absent) and ``val_on`` (what those were:
        a held-out fold, or training subjects for a model trained on all the data).

    Raises:
        CardiosegError: Missing or unreadable checkpoint.

    Example:
        >>> info = describe_checkpoint("default")
        >>> info["channels"], info["parameters"] > 1_000_000
        ([24, 48, 96, 192, 384], True)
    """
    file = resolve_checkpoint(path)
    ckpt = load_checkpoint(file)
    cfg, fp = ckpt.get("config", {}), ckpt.get("fingerprint", {})
    train, data = cfg.get("train", {}), cfg.get("data", {})
    extra = [
        f"{a.get('name')} p {a.get('p')}" if isinstance(a, dict) else str(a)
        for a in train.get("extra_augmentation", [])
    ]
    val = ckpt.get("metrics", {}).get("dice_mean")
    return {
        "file": str(file),
        "size_mb": round(file.stat().st_size / 1e6, 2),  # MB (10^6 bytes), as export prints
        "parameters": int(sum(v.numel() for v in ckpt["model_state"].values() if v.ndim)),
        "channels": list(cfg.get("model", {}).get("channels", [])),
        "datasets": [Path(str(d.get("path", ""))).name for d in data.get("datasets", [])],
        "iterations": int(train.get("epochs", 0)) * int(train.get("iterations_per_epoch", 0)),
        "augmentation": train.get("augmentation", ""),
        "extra_augmentation": extra,
        "init_checkpoint": cfg.get("init_checkpoint", "") or "",
        "target_spacing": fp.get("target_spacing", data.get("target_spacing")),
        "n_train_volumes": fp.get("n_train_volumes"),
        "val_dice": float(val) if val is not None else None,
        "val_on": "training subjects"
        if int(train.get("fold", -1)) < 0
        else f"held-out fold {train.get('fold')}",
    }
