"""Benchmark protocols: datasets, seeded splits, experiments (sources → targets) and methods.

A protocol is a YAML file (see ``configs/protocols/``)::

    name: acdc_to_mnms
    datasets:                     # named dataset folders
      acdc: {path: ../shared/data/acdc, layout: acdc}
      mnms: {path: ../shared/data/mnms, layout: mnms}
    splits:                       # optional seeded subject splits, one per dataset
      lge: {seed: 2019, parts: {pool: 8, test: rest}}
    domain_key: vendor            # how target cases are grouped in the summary
    seeds: [0, 1, 2]
    baseline: baseline            # reference of the paired tests
    base: {train: {...}}          # training config shared by all runs
    profiles: {quick: {...}, full: {...}}   # merged onto the built-in profiles
    methods: [baseline, strong, {name: tent-fast, base: tent, config: {...}}]
    experiments:
      - name: acdc_to_mnms
        sources: [acdc]           # labelled training data
        targets: [mnms]           # test data
        adaptation_pool: []       # unlabelled target data (DANN)
        finetune_pool: []         # labelled target subjects for fine-tuning
      - name: lodo                # expands to one experiment per domain value
        leave_one_out: {datasets: [acdc, mnms], key: vendor}

A dataset reference is a name or ``{dataset: NAME, split: PART, include: {...}, exclude:
{...}}``. :func:`plan` checks everything that can be checked before training (missing datasets,
unknown methods, invalid configs, overlapping training/test subjects, adaptation pools holding
test subjects) and returns the run matrix.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cardioseg.benchmark.methods import (
    BUILTIN_METHODS,
    DEFAULT_PROFILES,
    METHOD_KEYS,
    deep_merge,
)
from cardioseg.data.datasets import CaseRecord, discover, filter_records
from cardioseg.errors import CardiosegError, read_text

PROTOCOL_KEYS = (
    "name",
    "description",
    "datasets",
    "splits",
    "domain_key",
    "seeds",
    "baseline",
    "base",
    "profiles",
    "methods",
    "experiments",
)
EXPERIMENT_KEYS = (
    "name",
    "sources",
    "targets",
    "adaptation_pool",
    "finetune_pool",
    "methods",
    "leave_one_out",
)
REF_KEYS = ("dataset", "split", "include", "exclude")


@dataclass
class DatasetDef:
    """A named dataset folder.

    ``domain`` fixes the domain name of all its cases; ``include`` / ``exclude`` filter its cases
    everywhere (e.g. a subject whose files are unusable), before any split.
    """

    name: str
    path: str
    layout: str = "auto"
    domain: str = ""
    include: dict[str, list] = field(default_factory=dict)
    exclude: dict[str, list] = field(default_factory=dict)


@dataclass
class Ref:
    """A reference to (part of) a dataset."""

    dataset: str
    split: str = ""
    include: dict[str, list] = field(default_factory=dict)
    exclude: dict[str, list] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Readable name (``dataset`` or ``dataset:part``, with filters)."""
        s = self.dataset + (f":{self.split}" if self.split else "")
        for k, v in self.include.items():
            if k != "subject":
                s += f"[{k}={'|'.join(map(str, v))}]"
        for k, v in self.exclude.items():
            if k != "subject":
                s += f"[{k}!={'|'.join(map(str, v))}]"
        return s


#: Values of a method's ``train_on``: the experiment's sources, its labelled fine-tuning pool
#: (``finetune.k_subjects`` drawn from it), or both (the k pool subjects next to every source
#: case, e.g. with ``data.sampling: balanced``).
TRAIN_ON = ("sources", "finetune_pool", "sources+finetune_pool")


@dataclass
class MethodDef:
    """A method of the protocol (see :mod:`cardioseg.benchmark.methods`)."""

    name: str
    description: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    model_from: str = ""
    init_from: str = ""
    checkpoint: str = ""
    train_on: str = "sources"
    adaptation_pool: bool = False
    epochs_scale: float = 1.0
    compare_to: list[str] = field(default_factory=list)

    @property
    def dependency(self) -> str:
        return self.model_from or self.init_from


@dataclass
class Experiment:
    """Sources → targets, with optional pools and a subset of the methods."""

    name: str
    sources: list[Ref]
    targets: list[Ref]
    adaptation_pool: list[Ref] = field(default_factory=list)
    finetune_pool: list[Ref] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)


@dataclass
class RunSpec:
    """One training (or model reuse) + evaluation of the matrix."""

    experiment: str
    method: str
    seed: int
    config: dict[str, Any]
    targets: list[Ref]
    depends_on: str = ""
    reuse_model: bool = False
    checkpoint: str = ""

    @property
    def key(self) -> str:
        return f"{self.experiment}/{self.method}/seed{self.seed}"


@dataclass
class Protocol:
    """A parsed protocol; :meth:`records` resolves dataset references to cases."""

    name: str
    path: Path
    datasets: dict[str, DatasetDef]
    methods: dict[str, MethodDef]
    experiment_specs: list[dict[str, Any]]
    description: str = ""
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    domain_key: str = "dataset"
    seeds: list[int] = field(default_factory=lambda: [0])
    baseline: str = "baseline"
    base: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    _cache: dict[str, list[CaseRecord]] = field(default_factory=dict, repr=False)

    # -- errors ---------------------------------------------------------------------------------

    def error(self, problem: str) -> CardiosegError:
        return CardiosegError(self.path, problem)

    # -- records --------------------------------------------------------------------------------

    def dataset_records(self, name: str) -> list[CaseRecord]:
        """All cases of a named dataset (discovered once), tagged with their domain."""
        if name not in self._cache:
            ds = self.datasets[name]
            if not Path(ds.path).is_dir():
                raise self.error(f"dataset '{name}' not found: {ds.path}")
            try:
                recs = filter_records(discover(ds.path, ds.layout), ds.include, ds.exclude)
            except CardiosegError as exc:
                raise self.error(f"dataset '{name}': {exc.problem}") from None
            for r in recs:
                r.extra = dict(r.extra)
                r.extra["bench_dataset"] = name
                r.extra["domain"] = ds.domain or self.domain_of(r, name)
            self._cache[name] = recs
        return self._cache[name]

    def domain_of(self, record: CaseRecord, dataset_name: str) -> str:
        """Value of ``domain_key`` for a case; blank attributes fall back to the dataset name."""
        parts = [str(getattr(record, k, "") or "") for k in self.domain_key.split("+")]
        parts = [p for p in parts if p]
        return "/".join(parts) if parts else dataset_name

    def split_subjects(self, dataset: str, part: str) -> list[str]:
        """Subjects of one part of a dataset's seeded split."""
        spec = self.splits.get(dataset)
        if spec is None:
            raise self.error(f"no split defined for dataset '{dataset}'")
        parts = spec.get("parts") or {}
        if part not in parts:
            raise self.error(f"split of '{dataset}' has no part '{part}' (has {sorted(parts)})")
        subjects = sorted({r.subject for r in self.dataset_records(dataset)})
        order = [
            subjects[i]
            for i in np.random.default_rng(int(spec.get("seed", 0))).permutation(len(subjects))
        ]
        sizes: dict[str, int] = {}
        for name, size in parts.items():
            if size == "rest":
                continue
            if isinstance(size, float) and 0 < size < 1:
                sizes[name] = int(round(size * len(subjects)))
            elif isinstance(size, int) and size >= 0:
                sizes[name] = size
            else:
                raise self.error(f"split of '{dataset}': part '{name}' has invalid size {size!r}")
        rest = [n for n, s in parts.items() if s == "rest"]
        if len(rest) > 1:
            raise self.error(f"split of '{dataset}': only one part may be 'rest'")
        if sum(sizes.values()) > len(subjects):
            raise self.error(
                f"split of '{dataset}' needs {sum(sizes.values())} subjects, "
                f"the dataset has {len(subjects)}"
            )
        out: dict[str, list[str]] = {}
        i = 0
        for name in parts:
            n = sizes.get(name, len(subjects) - sum(sizes.values()))
            out[name] = order[i : i + n]
            i += n
        return sorted(out[part])

    def ref_filters(self, ref: Ref) -> tuple[dict[str, list], dict[str, list]]:
        """``include`` / ``exclude`` of a reference (with the dataset's own filters), its split
        turned into subjects."""
        ds = self.datasets[ref.dataset]
        include = {k: list(v) for k, v in ds.include.items()}
        for k, v in ref.include.items():
            include[k] = [x for x in include[k] if x in v] if k in include else list(v)
        if ref.split:
            subjects = self.split_subjects(ref.dataset, ref.split)
            if "subject" in include:
                keep = {str(s) for s in include["subject"]}
                subjects = [s for s in subjects if s in keep]
            include["subject"] = subjects
        exclude = {k: list(v) for k, v in ds.exclude.items()}
        for k, v in ref.exclude.items():
            exclude[k] = [*exclude.get(k, []), *v]
        return include, exclude

    def records(self, ref: Ref, labelled: bool = False) -> list[CaseRecord]:
        """Cases of a reference (only those with a label when ``labelled``)."""
        include, exclude = self.ref_filters(ref)
        recs = filter_records(self.dataset_records(ref.dataset), include, exclude)
        return [r for r in recs if r.label] if labelled else recs

    def subject_key(self, record: CaseRecord) -> str:
        ds = self.datasets[record.extra["bench_dataset"]]
        return f"{Path(ds.path).resolve()}::{record.subject}"


# -- parsing --------------------------------------------------------------------------------------


def _resolve_path(value: str, base: Path) -> str:
    p = Path(value).expanduser()
    if not p.is_absolute() and not p.exists() and (base / p).exists():
        return str((base / p).resolve())
    return str(p)


def _check_keys(values: Any, allowed: tuple[str, ...], where: str, proto: Path) -> dict:
    if not isinstance(values, dict):
        raise CardiosegError(proto, f"{where} must be a mapping")
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise CardiosegError(proto, f"unknown key(s) in {where}: {unknown}")
    return values


def _check_filters(values: dict, where: str, proto: Path) -> None:
    """Refuse an ``include`` / ``exclude`` that is not a mapping of a case attribute to a list
    (an unknown attribute would keep or drop every case silently; a plain value would be
    matched character by character)."""
    from cardioseg.training.config import RECORD_KEYS

    for key in ("include", "exclude"):
        spec = values.get(key) or {}
        if not isinstance(spec, dict):
            raise CardiosegError(proto, f"{where}: {key} must be a mapping of attribute -> list")
        for attr, vals in spec.items():
            if attr not in RECORD_KEYS:
                raise CardiosegError(
                    proto,
                    f"{where}: {key} names unknown case attribute {attr!r} "
                    f"(use {', '.join(RECORD_KEYS)})",
                )
            if not isinstance(vals, list):
                raise CardiosegError(proto, f"{where}: {key}.{attr} must be a list, e.g. [{vals}]")


def _as_list(value: Any, where: str, proto: Path) -> list:
    """A list-valued key (``sources``, ``methods``, ...); ``None`` is an empty list."""
    if value is None:
        return []
    if not isinstance(value, list):
        example = f", e.g. [{value}]" if isinstance(value, str | int) else ""
        raise CardiosegError(proto, f"{where} must be a list{example}")
    return value


def _parse_ref(value: Any, proto: Protocol, where: str) -> Ref:
    if isinstance(value, str):
        value = {"dataset": value}
    v = _check_keys(value, REF_KEYS, where, proto.path)
    name = v.get("dataset")
    if name not in proto.datasets:
        raise proto.error(f"{where}: unknown dataset '{name}' (defined: {sorted(proto.datasets)})")
    _check_filters(v, where, proto.path)
    if v.get("split") and name not in proto.splits:
        raise proto.error(f"{where}: dataset '{name}' has no split in 'splits'")
    return Ref(
        name, str(v.get("split") or ""), dict(v.get("include") or {}), dict(v.get("exclude") or {})
    )


def _parse_method(value: Any, proto_path: Path) -> MethodDef:
    if isinstance(value, str):
        if value not in BUILTIN_METHODS:
            raise CardiosegError(
                proto_path,
                f"unknown method '{value}'; built-in methods: {', '.join(BUILTIN_METHODS)}",
            )
        value = {"name": value}
    v = _check_keys(value, METHOD_KEYS, "a method", proto_path)
    name = v.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise CardiosegError(proto_path, f"method without a valid name: {value!r}")
    base_name = v.get("base", name if name in BUILTIN_METHODS else None)
    if base_name is not None and base_name not in BUILTIN_METHODS:
        raise CardiosegError(
            proto_path,
            f"method '{name}': unknown base method '{base_name}'; "
            f"built-in methods: {', '.join(BUILTIN_METHODS)}",
        )
    if base_name is None and "config" not in v and "checkpoint" not in v:
        raise CardiosegError(
            proto_path,
            f"unknown method '{name}': not built-in (built-in: {', '.join(BUILTIN_METHODS)}); "
            "give it a 'base', a 'config' or a 'checkpoint'",
        )
    merged = copy.deepcopy(BUILTIN_METHODS.get(base_name, {})) if base_name else {}
    for k, val in v.items():
        if k in ("name", "base"):
            continue
        merged[k] = deep_merge(merged.get(k, {}), val) if k == "config" else val
    if not isinstance(merged.get("adaptation_pool", False), bool):
        raise CardiosegError(proto_path, f"method '{name}': adaptation_pool must be true or false")
    scale = merged.get("epochs_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
        raise CardiosegError(
            proto_path, f"method '{name}': epochs_scale must be a number > 0, got {scale!r}"
        )
    compare = merged.get("compare_to", [])
    compare = [compare] if isinstance(compare, str) else compare
    if not isinstance(compare, list) or not all(isinstance(c, str) for c in compare):
        raise CardiosegError(
            proto_path, f"method '{name}': compare_to must be a method name or a list of them"
        )
    for key in ("model_from", "init_from", "checkpoint", "train_on"):
        if not isinstance(merged.get(key, ""), str):
            raise CardiosegError(proto_path, f"method '{name}': {key} must be text (a name)")
    if merged.get("train_on", "sources") not in TRAIN_ON:
        raise CardiosegError(
            proto_path, f"method '{name}': train_on must be one of {', '.join(TRAIN_ON)}"
        )
    if merged.get("model_from") and merged.get("init_from"):
        raise CardiosegError(proto_path, f"method '{name}': use model_from or init_from, not both")
    checkpoint = str(merged.get("checkpoint") or "")
    if checkpoint:
        if merged.get("model_from") or merged.get("init_from"):
            raise CardiosegError(
                proto_path,
                f"method '{name}': a checkpoint is evaluated as is; drop model_from/init_from",
            )
        checkpoint = _checkpoint_path(checkpoint, proto_path, name)
    return MethodDef(
        name=name,
        description=str(merged.get("description", "")),
        config=dict(merged.get("config", {})),
        model_from=str(merged.get("model_from") or ""),
        init_from=str(merged.get("init_from") or ""),
        checkpoint=checkpoint,
        train_on=str(merged.get("train_on", "sources")),
        adaptation_pool=bool(merged.get("adaptation_pool", False)),
        epochs_scale=float(merged.get("epochs_scale", 1.0)),
        compare_to=list(compare),
    )


def _checkpoint_path(value: str, proto_path: Path, method: str) -> str:
    """Resolve a method's ``checkpoint`` (a path relative to the protocol's folder, or a packaged
    model's name such as ``default``) to an existing file. As in
    :func:`~cardioseg.models.checkpoint.resolve_checkpoint`, an existing file wins over a
    packaged name."""
    from cardioseg.models.checkpoint import PACKAGED_ENSEMBLES, PACKAGED_MODELS, resolve_checkpoint

    p = Path(_resolve_path(value, Path(proto_path).parent))
    if not p.is_file() and value in PACKAGED_ENSEMBLES:
        raise CardiosegError(
            proto_path, f"method '{method}': checkpoint {value} is an ensemble; name one model"
        )
    if not p.is_file() and value in PACKAGED_MODELS:
        p = resolve_checkpoint(value)
    if not p.is_file():
        raise CardiosegError(proto_path, f"method '{method}': checkpoint {value} not found")
    return str(p.resolve())


def load_protocol(path: str | Path) -> Protocol:
    """Parse a protocol file (static checks only; see :func:`plan` for the rest).

    Raises:
        CardiosegError: One line naming the problem.
    """
    path = Path(path)
    if path.is_dir():  # said to be missing, though it is there
        raise CardiosegError(path, "is a folder, not a protocol file")
    if not path.is_file():
        raise CardiosegError(path, "protocol file not found")
    try:
        values = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as exc:
        raise CardiosegError(path, f"invalid YAML ({exc.__class__.__name__})") from None
    v = _check_keys(values, PROTOCOL_KEYS, "the protocol", path)
    datasets = {}
    for name, spec in _check_keys(
        v.get("datasets") or {}, tuple(v.get("datasets") or {}), "datasets", path
    ).items():
        spec = {"path": spec} if isinstance(spec, str) else spec
        spec = _check_keys(
            spec, ("path", "layout", "domain", "include", "exclude"), f"dataset '{name}'", path
        )
        _check_filters(spec, f"dataset '{name}'", path)
        if "path" not in spec:
            raise CardiosegError(path, f"dataset '{name}' has no path")
        datasets[str(name)] = DatasetDef(
            str(name),
            _resolve_path(str(spec["path"]), path.parent),
            str(spec.get("layout", "auto")),
            str(spec.get("domain", "")),
            dict(spec.get("include") or {}),
            dict(spec.get("exclude") or {}),
        )
    if not datasets:
        raise CardiosegError(path, "the protocol defines no datasets")
    methods: dict[str, MethodDef] = {}
    for m in _as_list(v.get("methods"), "methods", path):
        md = _parse_method(m, path)
        if md.name in methods:
            raise CardiosegError(path, f"method '{md.name}' is defined twice")
        methods[md.name] = md
    if not methods:
        raise CardiosegError(path, "the protocol lists no methods")
    for md in methods.values():
        for dep in [md.model_from, md.init_from, *md.compare_to]:
            if dep and dep not in methods:
                raise CardiosegError(
                    path, f"method '{md.name}' needs method '{dep}', which the protocol lacks"
                )
    seeds = v.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise CardiosegError(path, "seeds must be a non-empty list of integers")
    baseline = str(v.get("baseline", next(iter(methods))))
    if baseline not in methods:
        raise CardiosegError(path, f"baseline method '{baseline}' is not in the methods")
    experiments = _as_list(v.get("experiments"), "experiments", path)
    if not experiments:
        raise CardiosegError(path, "the protocol has no experiments")
    splits = v.get("splits") or {}
    for ds_name, spec in _check_keys(splits, tuple(splits), "splits", path).items():
        if ds_name not in datasets:
            raise CardiosegError(path, f"split for unknown dataset '{ds_name}'")
        _check_keys(spec, ("seed", "parts"), f"split '{ds_name}'", path)
        if not isinstance(spec.get("parts"), dict) or not spec["parts"]:
            raise CardiosegError(path, f"split '{ds_name}' needs parts: {{name: size}}")
    profiles = v.get("profiles") or {}
    for pname, prof in _check_keys(profiles, tuple(profiles), "profiles", path).items():
        _check_keys(prof, ("seeds", "config", "max_subjects_per_target"), f"profile {pname}", path)
        p_seeds = prof.get("seeds")
        if p_seeds is not None and (
            not isinstance(p_seeds, list)
            or not p_seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in p_seeds)
        ):
            raise CardiosegError(
                path, f"profile {pname}: seeds must be a non-empty list of integers"
            )
        limit = prof.get("max_subjects_per_target", 0)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise CardiosegError(
                path,
                f"profile {pname}: max_subjects_per_target must be a whole number >= 0 "
                f"(0: all), got {limit!r}",
            )
        if not isinstance(prof.get("config") or {}, dict):
            raise CardiosegError(path, f"profile {pname}: config must be a mapping")
    if not isinstance(v.get("base") or {}, dict):
        raise CardiosegError(path, "base must be a mapping (a training config's sections)")
    domain_key = str(v.get("domain_key", "dataset"))
    from cardioseg.training.config import RECORD_KEYS

    if any(k not in RECORD_KEYS for k in domain_key.split("+")):
        raise CardiosegError(path, f"domain_key '{domain_key}': use {', '.join(RECORD_KEYS)}")
    return Protocol(
        name=str(v.get("name") or path.stem),
        path=path,
        datasets=datasets,
        methods=methods,
        experiment_specs=experiments,
        description=str(v.get("description", "")),
        splits=splits,
        domain_key=domain_key,
        seeds=seeds,
        baseline=baseline,
        base=dict(v.get("base") or {}),
        profiles=profiles,
    )


def _experiments(proto: Protocol) -> list[Experiment]:
    out: list[Experiment] = []
    for i, spec in enumerate(proto.experiment_specs):
        where = f"experiments[{i}]"
        spec = _check_keys(spec, EXPERIMENT_KEYS, where, proto.path)
        name = str(spec.get("name") or f"exp{i}")
        if "/" in name or "\\" in name or name in (".", ".."):  # a folder name under -o
            raise proto.error(f"{where}: experiment name {name!r} is not a plain folder name")
        methods = [
            str(m)
            for m in _as_list(spec.get("methods"), f"experiment '{name}': methods", proto.path)
            or list(proto.methods)
        ]
        for m in methods:
            if m not in proto.methods:
                raise proto.error(
                    f"experiment '{name}': unknown method '{m}' (protocol methods: "
                    f"{', '.join(proto.methods)})"
                )
            md = proto.methods[m]
            for dep in (md.model_from, md.init_from):
                if dep and dep not in methods:
                    raise proto.error(f"experiment '{name}': method '{m}' needs method '{dep}'")
        pools = {
            k: [
                _parse_ref(r, proto, f"{name}.{k}")
                for r in _as_list(spec.get(k), f"experiment '{name}': {k}", proto.path)
            ]
            for k in ("adaptation_pool", "finetune_pool")
        }
        if "leave_one_out" in spec:
            loo = _check_keys(
                spec["leave_one_out"], ("datasets", "key"), f"{where}.leave_one_out", proto.path
            )
            key = str(loo.get("key", proto.domain_key))
            from cardioseg.training.config import RECORD_KEYS

            if key not in RECORD_KEYS:
                raise proto.error(
                    f"experiment '{name}': leave_one_out key '{key}': use one of "
                    f"{', '.join(RECORD_KEYS)}"
                )
            refs = [
                _parse_ref(r, proto, f"{name}.leave_one_out")
                for r in _as_list(loo.get("datasets"), f"{name}.leave_one_out.datasets", proto.path)
            ]
            if not refs:
                raise proto.error(f"experiment '{name}': leave_one_out needs datasets")
            values = sorted(
                {
                    str(getattr(r, key, "") or "")
                    for ref in refs
                    for r in proto.records(ref, labelled=True)
                }
                - {""}
            )
            if len(values) < 2:
                raise proto.error(
                    f"experiment '{name}': leave_one_out needs >= 2 values of '{key}', "
                    f"found {values}"
                )
            for value in values:
                sources = [
                    Ref(
                        r.dataset,
                        r.split,
                        r.include,
                        {**r.exclude, key: [*r.exclude.get(key, []), value]},
                    )
                    for r in refs
                ]
                targets = [
                    Ref(r.dataset, r.split, {**r.include, key: [value]}, r.exclude) for r in refs
                ]
                sources = [r for r in sources if proto.records(r, labelled=True)]
                targets = [r for r in targets if proto.records(r, labelled=True)]
                safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in value)
                out.append(
                    Experiment(
                        f"{name}-{safe}",
                        sources,
                        targets,
                        pools["adaptation_pool"],
                        pools["finetune_pool"],
                        methods,
                    )
                )
            continue
        for k in ("sources", "targets"):
            if not _as_list(spec.get(k), f"experiment '{name}': {k}", proto.path):
                raise proto.error(f"experiment '{name}' has no {k}")
        out.append(
            Experiment(
                name,
                [_parse_ref(r, proto, f"{name}.sources") for r in spec["sources"]],
                [_parse_ref(r, proto, f"{name}.targets") for r in spec["targets"]],
                pools["adaptation_pool"],
                pools["finetune_pool"],
                methods,
            )
        )
    names = [e.name for e in out]
    if len(set(names)) != len(names):
        raise proto.error(f"experiment names are not unique: {names}")
    return out


def profile_settings(proto: Protocol, profile: str) -> dict[str, Any]:
    """The built-in profile merged with the protocol's (``seeds``, ``config``, ...)."""
    if profile not in DEFAULT_PROFILES and profile not in proto.profiles:
        raise proto.error(
            f"unknown profile '{profile}' (choose from "
            f"{sorted(set(DEFAULT_PROFILES) | set(proto.profiles))})"
        )
    return deep_merge(DEFAULT_PROFILES.get(profile, {}), proto.profiles.get(profile, {}))


def _specs(proto: Protocol, refs: list[Ref], role: str) -> list[dict[str, Any]]:
    out = []
    for ref in refs:
        ds = proto.datasets[ref.dataset]
        include, exclude = proto.ref_filters(ref)
        out.append(
            {
                "path": ds.path,
                "layout": ds.layout,
                "role": role,
                "include": include,
                "exclude": exclude,
                "domain": ds.domain,
            }
        )
    return out


def _names(proto: Protocol, keys: set[str], records: list[CaseRecord]) -> str:
    shown = sorted(
        {f"{r.extra['bench_dataset']}/{r.subject}" for r in records if proto.subject_key(r) in keys}
    )
    return ", ".join(shown[:5]) + (" ..." if len(shown) > 5 else "")


def plan(
    proto: Protocol, profile: str = "quick", out_dir: str | Path = "benchmark"
) -> list[RunSpec]:
    """Check the protocol against the data and return the run matrix (dependencies first).

    Raises:
        CardiosegError: Missing dataset, unknown method or profile, invalid method config,
            overlapping training/test subjects, adaptation or fine-tuning pool holding test
            subjects, empty sources/targets.
    """
    from cardioseg.training.config import config_from_dict

    prof = profile_settings(proto, profile)
    seeds = prof.get("seeds") or proto.seeds
    for name in proto.datasets:  # fail early on any missing dataset
        proto.dataset_records(name)
    experiments = _experiments(proto)
    runs: list[RunSpec] = []
    for exp in experiments:
        train = [r for ref in exp.sources for r in proto.records(ref, labelled=True)]
        test = [r for ref in exp.targets for r in proto.records(ref, labelled=True)]
        pool = [r for ref in exp.adaptation_pool for r in proto.records(ref)]
        ft = [r for ref in exp.finetune_pool for r in proto.records(ref, labelled=True)]
        if not train:
            raise proto.error(f"experiment '{exp.name}': no labelled training cases in its sources")
        if not test:
            raise proto.error(f"experiment '{exp.name}': no labelled test cases in its targets")
        test_keys = {proto.subject_key(r) for r in test}
        for what, recs in (("training", train), ("fine-tuning pool", ft)):
            both = test_keys & {proto.subject_key(r) for r in recs}
            if both:
                raise proto.error(
                    f"experiment '{exp.name}': {what} and test subjects overlap "
                    f"({_names(proto, both, test)})"
                )
        both = test_keys & {proto.subject_key(r) for r in pool}
        if both:
            raise proto.error(
                f"experiment '{exp.name}': the adaptation pool contains test subjects "
                f"({_names(proto, both, test)})"
            )
        order = sorted(exp.methods, key=lambda m: _depth(proto, m))
        for method in order:
            md = proto.methods[method]
            if md.adaptation_pool and not exp.adaptation_pool:
                raise proto.error(
                    f"experiment '{exp.name}': method '{method}' needs an adaptation_pool"
                )
            uses_pool = md.train_on != "sources"
            if uses_pool and not ft:
                raise proto.error(
                    f"experiment '{exp.name}': method '{method}' needs a labelled finetune_pool"
                )
            n_subjects = len({proto.subject_key(r) for r in (ft if uses_pool else train)})
            for seed in seeds:
                cfg = deep_merge(proto.base, prof.get("config", {}))
                cfg = deep_merge(cfg, md.config)
                cfg = deep_merge(
                    cfg, {"train": {"seed": int(seed), "fold": -1}, "finetune": {"seed": int(seed)}}
                )
                cfg.setdefault("data", {}).setdefault("domain_key", proto.domain_key)
                cfg["data"].setdefault("cache_dir", str(Path(out_dir) / "cache"))
                if md.train_on == "finetune_pool":
                    cfg["data"]["datasets"] = _specs(proto, exp.finetune_pool, "source")
                elif md.train_on == "sources+finetune_pool":
                    cfg["data"]["datasets"] = _specs(proto, exp.sources, "source") + _specs(
                        proto, exp.finetune_pool, "target_labeled"
                    )
                else:
                    cfg["data"]["datasets"] = _specs(proto, exp.sources, "source")
                if md.adaptation_pool:
                    cfg["data"]["datasets"] += _specs(
                        proto, exp.adaptation_pool, "target_unlabeled"
                    )
                if md.epochs_scale != 1.0:
                    epochs = int(cfg.get("train", {}).get("epochs", 60))
                    cfg["train"]["epochs"] = max(1, int(round(epochs * md.epochs_scale)))
                cfg["output_dir"] = "(set at run time)"
                try:
                    parsed = config_from_dict(copy.deepcopy(cfg))
                except (ValueError, TypeError) as exc:
                    raise proto.error(f"method '{method}': invalid config: {exc}") from None
                if parsed.finetune.k_subjects > n_subjects:
                    raise proto.error(
                        f"experiment '{exp.name}': method '{method}' asks for "
                        f"k_subjects={parsed.finetune.k_subjects}, only {n_subjects} available"
                    )
                dep = md.dependency
                runs.append(
                    RunSpec(
                        exp.name,
                        method,
                        int(seed),
                        cfg,
                        exp.targets,
                        depends_on=f"{exp.name}/{dep}/seed{seed}" if dep else "",
                        reuse_model=bool(md.model_from),
                        checkpoint=md.checkpoint,
                    )
                )
    return runs


def _depth(proto: Protocol, method: str, seen: tuple[str, ...] = ()) -> int:
    if method in seen:
        raise proto.error(f"methods depend on each other in a cycle: {' -> '.join(seen)}")
    dep = proto.methods[method].dependency
    return 0 if not dep else 1 + _depth(proto, dep, (*seen, method))
