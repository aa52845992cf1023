"""Configuration as plain values (dataclasses ↔ YAML), saved with every checkpoint."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from cardioseg.errors import CardiosegError, read_text
from cardioseg.models.factory import ModelConfig

#: Roles of a dataset in a training config.
ROLES = ("source", "target_labeled", "target_unlabeled")
#: Case attributes that ``include`` / ``exclude`` filters and ``domain_key`` may name.
RECORD_KEYS = ("dataset", "subject", "phase", "vendor", "centre", "group")
AMP_MODES = ("auto", "bf16", "true", "false")
PRECISIONS = ("auto", "float32", "bfloat16")
HARMONIZATIONS = ("none", "histogram")
ADAPTATIONS = ("none", "tent")


def _check_filter(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"'{where}' must be a mapping of case attribute -> list of values")
    for key, vals in value.items():
        if key not in RECORD_KEYS:
            raise ValueError(f"'{where}': unknown case attribute {key!r}; use {RECORD_KEYS}")
        if not isinstance(vals, list):
            raise ValueError(f"'{where}.{key}' must be a list")


@dataclass
class DatasetSpec:
    """A dataset folder and its layout (``auto`` detects it).

    Attributes:
        path: Dataset folder.
        layout: Reader (``acdc``, ``mnms``, ``mnms2``, ``mscmr``, ``folder`` or ``auto``).
        role: ``source`` (labelled training data), ``target_labeled`` (labelled target-domain
            training data: ``finetune.k_subjects`` then draws only among these, and every
            ``source`` case is kept, e.g. fine-tuning with the source data replayed) or
            ``target_unlabeled`` (images only, for domain adaptation such as DANN; labels are
            never read).
        include: Keep only cases whose attribute is in the list, e.g. ``{vendor: [GE]}`` or
            ``{subject: [subject1, subject3]}``.
        exclude: Drop cases whose attribute is in the list.
        domain: Domain name of all its cases (default: from ``data.domain_key``).
    """

    path: str
    layout: str = "auto"
    role: str = "source"
    include: dict[str, list[str]] = field(default_factory=dict)
    exclude: dict[str, list[str]] = field(default_factory=dict)
    domain: str = ""

    def __post_init__(self) -> None:
        from cardioseg.data.datasets import READERS

        if self.role not in ROLES:
            raise ValueError(f"dataset role must be one of {ROLES}, got {self.role!r}")
        if self.layout != "auto" and self.layout not in READERS:  # said before the data are read
            raise ValueError(
                f"dataset layout must be 'auto' or one of {sorted(READERS)}, got {self.layout!r}"
            )
        _check_filter(self.include, "include")
        _check_filter(self.exclude, "exclude")


@dataclass
class DataConfig:
    """Datasets and sampling.

    Attributes:
        domain_key: Case attribute(s) naming a case's domain (``dataset``, ``vendor``,
            ``centre``, or several joined by ``+``); used by balanced sampling.
        sampling: ``uniform`` (every slice equally likely) or ``balanced`` (every domain equally
            likely: multi-domain training).
        canonical_handedness: Flip stacks whose affine shows them mirrored against the
            canonical short-axis view, in training and (saved with the checkpoint) at inference.
    """

    datasets: list[DatasetSpec] = field(default_factory=list)
    cache_dir: str = "cache"
    target_spacing: float = 1.25
    domain_key: str = "dataset"
    sampling: str = "uniform"
    canonical_handedness: bool = True

    def __post_init__(self) -> None:
        if not self.target_spacing > 0:
            raise ValueError(f"data.target_spacing must be > 0 (mm), got {self.target_spacing}")
        if self.sampling not in ("uniform", "balanced"):
            raise ValueError(f"sampling must be 'uniform' or 'balanced', got {self.sampling!r}")
        bad = [k for k in self.domain_key.split("+") if k not in RECORD_KEYS]
        if bad:
            raise ValueError(f"domain_key: unknown case attribute(s) {bad}; use {RECORD_KEYS}")


@dataclass
class TrainConfig:
    """Optimisation schedule.

    ``fold`` = -1 trains on all subjects (validation then uses ``n_val_monitor`` training subjects
    only to monitor; the last checkpoint is kept). ``fold`` in 0..folds-1 holds that fold out and
    keeps the best checkpoint by validation Dice.

    ``augmentation`` is the base pipeline (``none``, ``spatial``, ``light``, ``strong``);
    ``extra_augmentation`` appends named stages (``mri_artefacts``, ``intensity_curve``,
    ``randconv``, ``appearance``; a name or ``{name: ..., p: ...}``), see
    :mod:`cardioseg.augmentation.presets`. ``orientation_augmentation`` adds random 90° turns and
    flips to the base pipeline.

    ``amp`` is the mixed precision: ``auto`` (float16 with loss scaling on a CUDA GPU, float32 on
    the CPU), ``bf16`` (bfloat16 autocast on the CPU or GPU; no loss scaling needed; about 1.6×
    faster training steps on a CPU with AVX-512 BF16, see ``benchmarks/train_step_benchmark.py``),
    ``true`` (as ``auto``) or ``false`` (float32 everywhere). Weights and optimiser state stay
    float32 in every mode.

    ``num_workers`` > 0 draws and augments the batches in that many ``DataLoader`` worker
    processes (for a GPU, whose steps are faster than one CPU core's augmentation); each epoch's
    workers are seeded from ``(seed, rank, epoch, worker)``, so a resumed run draws the same
    batches. 0 (the default) draws them in the training process, which suits a 2-core CPU.

    ``swa_start`` > 0 turns on stochastic weight averaging (Izmailov et al., 2018; for domain
    generalisation, SWAD, Cha et al., 2021): the weights after every epoch from then on are
    averaged (``torch.optim.swa_utils.AveragedModel``), validation and the saved model use the
    average, and the learning rate is held at ``swa_lr`` (``0`` keeps the cosine schedule).
    ``swa_start`` is the number of epochs trained before averaging starts (a whole number below
    ``epochs``) or, below 1, a fraction of ``epochs`` (``0.75``: average the last quarter), which
    keeps its meaning when a benchmark profile changes ``epochs``. 0 (the default) trains without
    averaging.
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
    extra_augmentation: list[Any] = field(default_factory=list)
    orientation_augmentation: bool = True
    amp: str = "auto"
    num_threads: int = 0
    num_workers: int = 0
    val_interval: int = 1
    n_val_monitor: int = 6
    max_minutes: float = 0.0
    swa_start: float = 0
    swa_lr: float = 0.0

    @property
    def swa_epochs_before(self) -> int:
        """Epochs trained before weight averaging starts (see ``swa_start``)."""
        if self.swa_start < 1:  # at least the last epoch is kept
            return min(int(round(self.swa_start * self.epochs)), max(0, self.epochs - 1))
        return int(self.swa_start)

    def __post_init__(self) -> None:
        from cardioseg.augmentation.presets import STRENGTHS, extra_transforms

        if self.augmentation not in STRENGTHS:
            raise ValueError(f"augmentation must be one of {STRENGTHS}, got {self.augmentation!r}")
        if not isinstance(self.extra_augmentation, list):
            raise ValueError("extra_augmentation must be a list")
        if isinstance(self.amp, bool):  # YAML reads true/false as booleans
            self.amp = "true" if self.amp else "false"
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        for spec in self.extra_augmentation:
            extra_transforms(spec)  # validates names and arguments
        if self.fold >= 0 and (self.folds < 2 or self.fold >= self.folds):
            raise ValueError(
                f"train.fold must be -1 (all data) or 0..folds-1 with folds >= 2, got fold "
                f"{self.fold} of {self.folds}"
            )
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        for name, low in (
            ("epochs", 1),
            ("iterations_per_epoch", 1),
            ("batch_size", 1),
            ("patch_size", 16),
            ("warmup_epochs", 0),
            ("val_interval", 1),
        ):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if not self.lr >= 0 or self.weight_decay < 0:  # lr 0: the initial weights kept
            raise ValueError(
                f"lr and weight_decay must be >= 0, got {self.lr} and {self.weight_decay}"
            )
        if self.swa_start < 0 or (
            self.swa_start >= 1
            and (self.swa_start != int(self.swa_start) or self.swa_start >= self.epochs)
        ):
            raise ValueError(
                f"swa_start must be 0 (off), a fraction below 1 or a whole number of epochs "
                f"below epochs ({self.epochs}), got {self.swa_start}"
            )
        if self.swa_lr < 0:
            raise ValueError(f"swa_lr must be >= 0, got {self.swa_lr}")


@dataclass
class DannConfig:
    """Domain-adversarial training (needs datasets with ``role: target_unlabeled``).

    Attributes:
        enabled: Add the DANN component.
        weight: Weight of the domain loss.
        gamma: Steepness of the gradient-reversal schedule ``2/(1+exp(-gamma p))-1``.
        hidden: Hidden channels of the domain classifier.
        target_batch_size: Unlabelled patches per step (0 = ``train.batch_size``).
    """

    enabled: bool = False
    weight: float = 0.3
    gamma: float = 10.0
    hidden: int = 64
    target_batch_size: int = 0

    def __post_init__(self) -> None:
        if self.weight < 0 or self.hidden < 1 or self.target_batch_size < 0:
            raise ValueError("dann needs weight >= 0, hidden >= 1, target_batch_size >= 0")


@dataclass
class FinetuneConfig:
    """Fine-tuning from ``init_checkpoint``.

    Attributes:
        trainable: ``all``, ``encoder`` or ``decoder``: the part left trainable.
        n_blocks: Trainable blocks of that part (first encoder / last decoder blocks; 0 = all).
        k_subjects: Train on this many labelled subjects drawn with ``seed`` (0 = all).
        seed: Seed of the subject draw (nested: the subjects for k are among those for 2k).
    """

    trainable: str = "all"
    n_blocks: int = 0
    k_subjects: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        from cardioseg.adaptation.finetune import TRAINABLE

        if self.trainable not in TRAINABLE:
            raise ValueError(f"finetune.trainable must be one of {TRAINABLE}")
        if self.n_blocks < 0 or self.k_subjects < 0:
            raise ValueError("finetune.n_blocks and finetune.k_subjects must be >= 0")


@dataclass
class InferenceConfig:
    """Test-time options stored with the model (the Segmenter's defaults).

    Attributes:
        harmonization: ``none`` or ``histogram`` (match test intensities to the training
            reference in the checkpoint fingerprint).
        adaptation: ``none`` or ``tent`` (entropy minimisation per volume).
        tent_steps, tent_lr: TENT steps and learning rate.
        tta: Average test-time augmented predictions (see ``Segmenter(tta=...)``).
        precision: ``float32``, ``bfloat16`` or ``auto`` (bfloat16 where the device has native
            bfloat16 kernels), the precision of the network's forward pass; see
            ``Segmenter(precision=...)``.
        roi: Segment a heart-centred window found on the middle slice rather than the whole
            field of view (``None``: the Segmenter's ``DEFAULT_ROI``); see
            ``Segmenter(roi=...)``.
    """

    harmonization: str = "none"
    adaptation: str = "none"
    tent_steps: int = 10
    tent_lr: float = 1e-3
    tta: bool = False
    precision: str = "auto"
    roi: bool | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"inference.precision must be one of {PRECISIONS}")
        if self.harmonization not in HARMONIZATIONS:
            raise ValueError("inference.harmonization must be 'none' or 'histogram'")
        if self.adaptation not in ADAPTATIONS:
            raise ValueError("inference.adaptation must be 'none' or 'tent'")


@dataclass
class TrainingConfig:
    """Everything one training run needs; all sections default to the plain baseline.

    ``init_checkpoint`` initialises the network from a checkpoint (fine-tuning, see
    ``finetune``).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dann: DannConfig = field(default_factory=DannConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    init_checkpoint: str = ""
    output_dir: str = "runs/default"

    def __post_init__(self) -> None:
        # the network halves the patch once per stride level: a size it cannot divide fails
        # deep inside the first forward pass with a raw tensor-size error
        step = math.prod(int(s) for s in self.model.strides)
        if step > 0 and self.train.patch_size % step:
            raise ValueError(
                f"train.patch_size {self.train.patch_size} must be a multiple of {step} (the "
                f"product of model.strides {list(self.model.strides)})"
            )

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
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            if close:
                hints.append(f"{key!r}: did you mean {close[0]!r}?")
            elif key == "device":  # as other trainers have: the device is chosen here
                hints.append("'device': no such setting, a CUDA GPU is used when there is one")
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise ValueError(f"unknown key(s) in '{where}': {unknown}{hint}")
    hints = get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        sub_where = name if cls is TrainingConfig else f"{where}.{name}"
        args = get_args(hint)
        if is_dataclass(hint):
            kwargs[name] = _build(hint, value, sub_where)  # type: ignore[arg-type]
        elif get_origin(hint) is list and args and is_dataclass(args[0]):
            if not isinstance(value, list):
                raise ValueError(f"'{sub_where}' must be a list")
            kwargs[name] = [_build(args[0], v, sub_where) for v in value]  # type: ignore[arg-type]
        else:
            _check_type(value, hint, sub_where)
            kwargs[name] = value
    return cls(**kwargs)


_SCALARS: dict[type, tuple[type, ...]] = {
    bool: (bool,),
    int: (int,),
    float: (int, float),
    str: (str,),
}


def _check_type(value: Any, hint: Any, where: str) -> None:
    """Refuse a scalar of the wrong type (``lr: fast``, ``epochs: '3'``, ``tta: 'false'``)
    and a list of scalars that is not a list of them (``channels: 16``, ``strides: [2, a]``);
    ``X | None`` also takes ``None``. Other containers and types are left to the consumers.

    Example:
        >>> _check_type("fast", float, "train.lr")
        Traceback (most recent call last):
        ...
        ValueError: 'train.lr' must be a number, got 'fast'
        >>> _check_type([16, "a"], list[int], "model.channels")
        Traceback (most recent call last):
        ...
        ValueError: 'model.channels' must be a list of whole numbers, got [16, 'a']
    """
    item = get_args(hint)[0] if get_origin(hint) is list and get_args(hint) else None
    if item in _SCALARS:
        try:
            if not isinstance(value, list):
                raise ValueError
            for v in value:
                _check_type(v, item, where)
        except ValueError:
            names = {bool: "true or false", int: "whole numbers", float: "numbers", str: "text"}
            raise ValueError(f"'{where}' must be a list of {names[item]}, got {value!r}") from None
        return
    options = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    if value is None and type(None) in options:
        return
    if str in options and isinstance(value, bool):  # YAML's true/false for a text switch (amp)
        return
    scalars = [t for t in options if t in _SCALARS]
    if not scalars or len(scalars) != len([t for t in options if t is not type(None)]):
        return
    allowed = tuple(a for t in scalars for a in _SCALARS[t])
    if isinstance(value, bool) and bool not in scalars:  # True is an int in Python
        allowed = ()
    if not isinstance(value, allowed):
        names = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
        raise ValueError(
            f"'{where}' must be {' or '.join(names[t] for t in scalars)}, got {value!r}"
        )


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
    if not path.is_file():
        raise CardiosegError(path, "is not a config file (a folder?)")
    try:
        values = yaml.safe_load(read_text(path))
    except yaml.YAMLError as exc:
        raise CardiosegError(path, f"invalid YAML ({exc.__class__.__name__})") from None
    if values is None and not overrides:  # nothing to train on: said here, naming the file
        raise CardiosegError(path, "the config file is empty (no settings)")
    values = {} if values is None else values
    if not isinstance(values, dict):  # a text or a list: said for what it is, not as 'config'
        raise CardiosegError(
            path, "not a training config (a YAML mapping of sections: data, model, train, ...)"
        )
    for item in overrides or []:
        if "=" not in item:
            raise CardiosegError(path, f"override '{item}' is not key=value")
        key, raw = item.split("=", 1)
        node = values
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {}) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise CardiosegError(
                    path, f"override '{item}': '{p}' is not a section that holds keys"
                )
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = f"override '{item}': invalid value ({type(exc).__name__})"
            raise CardiosegError(path, problem) from None
    try:
        cfg = config_from_dict(values)
    except (ValueError, TypeError) as exc:
        raise CardiosegError(path, str(exc)) from None
    for ds in cfg.data.datasets:
        ds.path = _resolve(ds.path, path.parent)
    if cfg.init_checkpoint:
        cfg.init_checkpoint = _resolve(cfg.init_checkpoint, path.parent)
    return cfg


def _resolve(value: str, base: Path) -> str:
    """A relative path that does not exist from the working directory is tried from ``base``."""
    p = Path(value)
    if not p.is_absolute() and not p.exists():
        cand = base / p
        if cand.exists():
            return str(cand.resolve())
    return value


def asdict_any(obj: Any) -> Any:
    return asdict(obj) if is_dataclass(obj) else obj


def changed_settings(
    before: Mapping[str, Any], now: Mapping[str, Any], ignore: Iterable[str] = ()
) -> list[tuple[str, Any, Any]]:
    """The settings (dotted keys) two configuration dicts differ in, as ``(key, before, now)``
    in key order; ``ignore`` names keys to leave out, or groups of them by a prefix ending in
    a dot (``"inference."``).

    Example:
        >>> old = {"train": {"lr": 0.1, "epochs": 4}, "inference": {"tta": False}}
        >>> new = {"train": {"lr": 0.2, "epochs": 8}, "inference": {"tta": True}}
        >>> changed_settings(old, new, ignore=["train.epochs", "inference."])
        [('train.lr', 0.1, 0.2)]
    """
    a, b = flat_config(before), flat_config(now)
    skip = set(ignore)
    prefixes = tuple(k for k in skip if k.endswith("."))
    return [
        (k, a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and k not in skip and not k.startswith(prefixes)
    ]


def flat_config(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A configuration dict with dotted keys, to compare two of them.

    Example:
        >>> flat_config({"train": {"lr": 0.1, "seed": 1}, "output_dir": "runs/a"})
        {'train.lr': 0.1, 'train.seed': 1, 'output_dir': 'runs/a'}
    """
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
