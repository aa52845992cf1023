"""Configuration as plain values (dataclasses ↔ YAML), saved with every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from cardioseg.errors import CardiosegError
from cardioseg.models.factory import ModelConfig


@dataclass
class DatasetSpec:
    """A dataset folder and its layout (``auto`` detects it)."""

    path: str
    layout: str = "auto"


@dataclass
class DataConfig:
    datasets: list[DatasetSpec] = field(default_factory=list)
    cache_dir: str = "cache"
    target_spacing: float = 1.25


@dataclass
class TrainConfig:
    """Optimisation schedule.

    ``fold`` = -1 trains on all subjects (validation then uses ``n_val_monitor`` training subjects
    only to monitor; the last checkpoint is kept). ``fold`` in 0..folds-1 holds that fold out and
    keeps the best checkpoint by validation Dice.
    """

    epochs: int = 60
    iterations_per_epoch: int = 100
    batch_size: int = 16
    patch_size: int = 160
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 2
    folds: int = 5
    fold: int = -1
    seed: int = 12345
    augmentation: str = "strong"
    amp: str = "auto"
    num_threads: int = 0
    val_interval: int = 1
    n_val_monitor: int = 6
    max_minutes: float = 0.0


@dataclass
class TrainingConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs/default"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"'{where}' must be a mapping")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) in '{where}': {unknown}")
    kwargs = {}
    for name, value in values.items():
        sub = {DataConfig: {"datasets": DatasetSpec}}.get(cls, {}).get(name)
        if sub is not None:
            kwargs[name] = [_build(sub, v, f"{where}.{name}") for v in value]
        elif name in ("data", "model", "train") and cls is TrainingConfig:
            kwargs[name] = _build(
                {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}[name], value, name
            )
        else:
            kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> TrainingConfig:
    """Build a validated :class:`TrainingConfig` from a (YAML) mapping."""
    return _build(TrainingConfig, values, "config")


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainingConfig:
    """Load YAML and apply ``section.key=value`` overrides.

    Relative dataset paths are resolved against the config file's folder.
    """
    path = Path(path)
    if not path.exists():
        raise CardiosegError(path, "config file not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CardiosegError(path, f"invalid YAML ({exc.__class__.__name__})") from None
    for item in overrides or []:
        if "=" not in item:
            raise CardiosegError(path, f"override '{item}' is not key=value")
        key, raw = item.split("=", 1)
        node = values
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw)
    try:
        cfg = config_from_dict(values)
    except (ValueError, TypeError) as exc:
        raise CardiosegError(path, str(exc)) from None
    for ds in cfg.data.datasets:
        p = Path(ds.path)
        if not p.is_absolute() and not p.exists():
            cand = path.parent / p
            if cand.exists():
                ds.path = str(cand.resolve())
    return cfg


def asdict_any(obj: Any) -> Any:
    return asdict(obj) if is_dataclass(obj) else obj
