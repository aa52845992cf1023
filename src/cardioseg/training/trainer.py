"""The trainer: k-fold or all-data training with validation, best checkpoint, resume, logs.

Runs on CPU (2 cores are enough for the default schedule) or GPU; under ``torchrun`` it uses DDP
(each rank samples its own patches; rank 0 validates, logs and saves).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss

from cardioseg.adaptation.finetune import freeze, load_init_weights, select_subjects
from cardioseg.adaptation.harmonization import HistogramReference
from cardioseg.augmentation import build_augmentation
from cardioseg.data.datasets import CaseRecord, discover, filter_records, record_domain
from cardioseg.data.splits import kfold_split
from cardioseg.errors import CardiosegError
from cardioseg.io.locking import LOCK_NAME, lock_folder
from cardioseg.io.nifti import atomic_write
from cardioseg.models.checkpoint import save_checkpoint
from cardioseg.models.factory import build_model
from cardioseg.preprocessing.geometry import pad_to_multiple
from cardioseg.training.components import build_components
from cardioseg.training.config import TrainingConfig, changed_settings
from cardioseg.training.slices import PatchSampler, PreparedCase, load_prepared

log = logging.getLogger("cardioseg.train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def collect_records(cfg: TrainingConfig, role: str = "source") -> list[CaseRecord]:
    """Cases of the datasets with ``role`` after their include/exclude filters.

    ``source``: labelled cases of the ``source`` and ``target_labeled`` datasets (then
    ``finetune.k_subjects`` applies: to the ``target_labeled`` cases where there are any, to all
    otherwise); error when none.
    ``target_unlabeled``: every case, with its label path dropped (never read).
    """
    records: list[CaseRecord] = []
    targets: list[CaseRecord] = []
    roles = ("source", "target_labeled") if role == "source" else (role,)
    for i, ds in enumerate(cfg.data.datasets):
        if ds.role not in roles:
            continue
        try:
            found = filter_records(discover(ds.path, ds.layout), ds.include, ds.exclude)
        except CardiosegError as exc:  # named as the config names it: the CLI adds the file
            problem = f"{exc.path}: {exc.problem}" if exc.path else exc.problem
            raise CardiosegError(None, f"data.datasets[{i}]: {problem}") from None
        if role == "source":
            found = [r for r in found if r.label]
        else:
            found = [replace(r, label="", extra=dict(r.extra)) for r in found]
        for r in found:
            if ds.domain:
                r.extra["domain"] = ds.domain
        if ds.role == "target_labeled":
            targets += found
        else:
            records += found
    if role == "source":
        if not records and not targets:
            raise CardiosegError(
                None, "no labelled training cases found in the configured datasets"
            )
        if cfg.finetune.k_subjects:
            if targets:
                targets = select_subjects(targets, cfg.finetune.k_subjects, cfg.finetune.seed)
            else:
                records = select_subjects(records, cfg.finetune.k_subjects, cfg.finetune.seed)
    return records + targets


def train_subjects(records: list[CaseRecord]) -> list[str]:
    """The sorted ``dataset/subject`` names of ``records``, as a checkpoint's fingerprint
    lists the subjects the model was trained on (``cardioseg evaluate`` compares them with the
    cases it evaluates).

    Example:
        >>> train_subjects([CaseRecord("acdc", "patient002", "ES", "b"),
        ...                 CaseRecord("acdc", "patient001", "ED", "a"),
        ...                 CaseRecord("acdc", "patient002", "ED", "c")])
        ['acdc/patient001', 'acdc/patient002']
    """
    return sorted({f"{r.dataset}/{r.subject}" for r in records})


def split_records(
    records: list[CaseRecord], cfg: TrainingConfig
) -> tuple[list[CaseRecord], list[CaseRecord]]:
    """Patient-level split for ``cfg.train.fold`` (stratified by pathology group)."""
    subjects = [f"{r.dataset}/{r.subject}" for r in records]
    strata = {f"{r.dataset}/{r.subject}": f"{r.dataset}:{r.group}" for r in records}
    t = cfg.train
    if t.fold < 0:
        rng = np.random.default_rng(t.seed)
        uniq = sorted(set(subjects))
        monitor = set(rng.choice(uniq, size=min(t.n_val_monitor, len(uniq)), replace=False))
        return records, [r for r in records if f"{r.dataset}/{r.subject}" in monitor]
    n = len(set(subjects))
    if n < t.folds:
        raise CardiosegError(
            None, f"train.folds {t.folds} needs at least {t.folds} subjects, the datasets have {n}"
        )
    folds = kfold_split(subjects, t.folds, t.seed, strata)
    if t.fold >= len(folds):
        raise CardiosegError(None, f"fold {t.fold} out of range for {t.folds} folds")
    _, val = folds[t.fold]
    vs = set(val)
    return (
        [r for r in records if f"{r.dataset}/{r.subject}" not in vs],
        [r for r in records if f"{r.dataset}/{r.subject}" in vs],
    )


@torch.inference_mode()
def predict_slices(
    model: torch.nn.Module, image: torch.Tensor, multiple: int, batch: int = 32
) -> torch.Tensor:
    """Logits for a ``(Z, 1, H, W)`` stack (padded internally to ``multiple``)."""
    x, pad = pad_to_multiple(image, multiple, value=float(image.min()))
    outs = [model(x[i : i + batch]) for i in range(0, x.shape[0], batch)]
    out = torch.cat(outs)
    left, right, top, bottom = pad
    return out[..., top : out.shape[-2] - bottom, left : out.shape[-1] - right]


def dice_per_class(pred: np.ndarray, ref: np.ndarray, classes=(1, 2, 3)) -> list[float]:
    out = []
    for c in classes:
        p, r = pred == c, ref == c
        denom = p.sum() + r.sum()
        out.append(1.0 if denom == 0 else 2.0 * (p & r).sum() / denom)
    return out


def validate(
    model: torch.nn.Module, cases: list[PreparedCase], multiple: int, device: torch.device
) -> dict[str, float]:
    model.eval()
    scores = []
    for c in cases:
        x = torch.from_numpy(c.image.astype(np.float32))[:, None].to(device)
        pred = predict_slices(model, x, multiple).argmax(1).cpu().numpy()
        scores.append(dice_per_class(pred, c.label))
    model.train()
    s = np.array(scores) if scores else np.zeros((1, 3))
    return {
        "dice_lv": float(s[:, 0].mean()),
        "dice_myo": float(s[:, 1].mean()),
        "dice_rv": float(s[:, 2].mean()),
        "dice_mean": float(s.mean()),
    }


class BatchStream(torch.utils.data.IterableDataset):
    """Augmented training batches for one epoch, made in ``DataLoader`` worker processes.

    Each worker draws its share of ``n_batches`` with its own sampler and augmentation seeds,
    derived from ``seed`` (a list such as ``[train_seed, rank, epoch]``) and the worker's index,
    so the same ``seed`` and number of workers give the same batches (a resumed run repeats them).

    Example:
        >>> stream = BatchStream(sampler, aug, 16, 100, [12345, 0, epoch])  # doctest: +SKIP
        >>> from torch.utils.data import DataLoader
        >>> loader = DataLoader(stream, batch_size=None, num_workers=3)  # doctest: +SKIP
    """

    def __init__(
        self, sampler: PatchSampler, aug: Any, batch_size: int, n_batches: int, seed: list[int]
    ):
        self.sampler, self.aug = sampler, aug
        self.batch_size, self.n_batches, self.seed = batch_size, n_batches, list(seed)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        seq = np.random.SeedSequence([*self.seed, wid])
        self.sampler.rng = np.random.default_rng(seq)
        self.aug.generator.manual_seed(int(seq.generate_state(1, np.uint64)[0] >> 1))
        for _ in range(self.n_batches // nw + int(wid < self.n_batches % nw)):
            yield self.aug(*self.sampler.sample(self.batch_size))


def epoch_batches(
    sampler: PatchSampler, aug: Any, t: Any, epoch: int, rank: int, pin_memory: bool = False
) -> Any:
    """The batches of one epoch: drawn here (``t.num_workers`` = 0, the sampler's and the
    augmentation's generators carry over between epochs) or by worker processes
    (:class:`BatchStream`)."""
    if t.num_workers == 0:
        return (aug(*sampler.sample(t.batch_size)) for _ in range(t.iterations_per_epoch))
    stream = BatchStream(sampler, aug, t.batch_size, t.iterations_per_epoch, [t.seed, rank, epoch])
    return torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=t.num_workers, pin_memory=pin_memory
    )


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype that the ``train.amp`` setting gives on ``device`` (``None`` = float32).

    Example:
        >>> autocast_dtype("auto", torch.device("cpu")) is None
        True
        >>> autocast_dtype("bf16", torch.device("cpu"))
        torch.bfloat16
    """
    if amp == "bf16":
        return torch.bfloat16
    if amp in ("auto", "true") and device.type == "cuda":
        return torch.float16
    return None


def _remove_created(folders: list[Path]) -> None:
    """Remove ``folders`` (innermost first: an output folder and the parents made for it) where
    they hold nothing but the run's lock file, as a run that failed to start leaves them."""
    for folder in folders:
        try:
            if {p.name for p in folder.iterdir()} <= {LOCK_NAME}:
                (folder / LOCK_NAME).unlink(missing_ok=True)  # while held: no one else takes it
            folder.rmdir()
        except OSError:  # not empty, or gone: leave it, and the folders above it
            return


def step_memory_estimate(
    batch: int, patch: int, channels: list[int], strides: list[int], half: bool
) -> float:
    """Bytes a U-Net training step needs at least: the activations kept for the backward pass,
    about 5 float32 (2.5 with mixed precision) maps of each level's channels at its
    resolution (measured: 5 to 8 times, and 2.7 in bfloat16, for the shipped and tiny networks).

    Example:
        >>> shipped = ([24, 48, 96, 192, 384], [2, 2, 2, 2])
        >>> round(step_memory_estimate(16, 160, *shipped, half=False) / 2**20)  # MB
        371
    """
    level, scale = 1.0, 1
    for i, ch in enumerate(channels):
        level += ch / scale**2
        if i < len(strides):
            scale *= strides[i]
    return (2.5 if half else 5.0) * 4.0 * batch * patch * patch * level


def available_memory() -> int | None:
    """The memory available to a new allocation on this machine (Linux ``MemAvailable``), in
    bytes; ``None`` where it is not known."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_patch_size(cases: list[PreparedCase], patch_size: int, spacing: float) -> None:
    """Refuse a patch larger than every training image (at ``data.target_spacing``): each
    patch would be mostly padding, and every step would be slower for it."""
    if not cases:
        return
    largest = max(max(c.image.shape[1:]) for c in cases)
    if patch_size > largest:
        raise CardiosegError(
            None,
            f"train.patch_size {patch_size} is larger than every training image (the largest "
            f"side is {largest} pixels at data.target_spacing {spacing} mm); the patches would "
            f"be mostly padding: use at most {largest}",
        )


def myo_contact(label: np.ndarray, cls: int) -> tuple[int, int]:
    """Of the in-plane border pixels of class ``cls`` in a ``(Z, H, W)`` label stack, how many
    there are and how many touch the myocardium (2): the LV blood pool lies inside the
    myocardium (nearly all), the RV beside it (a part).

    Example:
        >>> lab = np.zeros((1, 7, 9), np.uint8)
        >>> lab[0, 1:6, 1:6] = 2; lab[0, 2:5, 2:5] = 1; lab[0, 2:5, 6:8] = 3
        >>> myo_contact(lab, 1), myo_contact(lab, 3)
        ((8, 8), (6, 3))
    """
    m = label == cls
    p = np.pad(label, ((0, 0), (1, 1), (1, 1)), constant_values=0)
    nbrs = [p[:, :-2, 1:-1], p[:, 2:, 1:-1], p[:, 1:-1, :-2], p[:, 1:-1, 2:]]
    border = m & np.logical_or.reduce([n != cls for n in nbrs])
    touch = border & np.logical_or.reduce([n == 2 for n in nbrs])
    return int(border.sum()), int(touch.sum())


def check_label_convention(cases: list[PreparedCase], margin: float = 0.2) -> None:
    """Refuse a dataset whose labels look like another convention's: its class 3 lies inside
    the myocardium and its class 1 beside it, as where RV = 1 and LV = 3 (ACDC, MS-CMRSeg) are
    read as canonical (LV = 1, RV = 3, e.g. such files in a ``folder`` layout): the model would
    learn the ventricles swapped."""
    by_folder: dict[str, list[PreparedCase]] = {}
    for c in cases:
        if c.label is not None:
            by_folder.setdefault(str(Path(c.record.image).parent), []).append(c)
    for folder, group in sorted(by_folder.items()):
        counts = np.array([[*myo_contact(c.label, 1), *myo_contact(c.label, 3)] for c in group])
        lv_border, lv_touch, rv_border, rv_touch = counts.sum(0)
        if min(lv_border, rv_border) < 20:  # too little of either ventricle to judge
            continue
        lv, rv = lv_touch / lv_border, rv_touch / rv_border
        if rv > lv + margin:
            raise CardiosegError(
                folder,
                f"the labels look swapped: class 3 lies inside the myocardium ({rv:.0%} of its "
                f"border touches it) and class 1 beside it ({lv:.0%}), as in the ACDC and "
                "MS-CMRSeg convention (1 = RV, 3 = LV); these data are read as 1 = LV, 3 = RV: "
                "give the dataset's own layout (acdc, mscmr) or remap the label files",
            )


#: Settings a resumed run may change: where it is written, how long it trains, how its data
#: are loaded and with how many threads (and the ``inference.*`` evaluation settings).
#: Everything else must equal the interrupted run's.
RESUME_MAY_CHANGE = frozenset(
    {
        "output_dir",
        "train.epochs",  # training on for longer
        "train.max_minutes",
        "train.num_workers",
        "train.num_threads",
        "data.cache_dir",
    }
)


class Trainer:
    """Train one configuration; ``run()`` resumes from ``output_dir/last.pt`` when present.

    Example:
        >>> Trainer(cfg).run()  # doctest: +SKIP
    """

    def __init__(self, cfg: TrainingConfig, progress: bool = True):
        self.cfg = cfg
        self.progress = progress
        self.out = Path(cfg.output_dir)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            self.device = torch.device("cuda", local)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if cfg.train.num_threads > 0:
            torch.set_num_threads(cfg.train.num_threads)
        self.amp_dtype = autocast_dtype(cfg.train.amp, self.device)
        self.amp = self.amp_dtype is not None

    def _log(self, msg: str) -> None:
        if self.rank == 0:
            log.info(msg)

    def run(self) -> dict[str, Any]:
        """Train, or resume the run in ``output_dir``.

        Only rank 0 writes ``output_dir``: it creates the folder and holds a lock on it
        (:func:`~cardioseg.io.locking.lock_folder`) while it runs, so a second run on the same
        folder stops at once. A run that fails before writing ``config.yaml`` (which it writes
        once its data are found and loaded) removes the folders it created.

        Raises:
            CardiosegError: Another process is running in ``output_dir``, it holds a run of
                another configuration, or the data cannot be used.
        """
        if self.rank != 0:
            return self._train()
        created = [p for p in (self.out, *self.out.parents) if not p.exists()]
        self.out.mkdir(parents=True, exist_ok=True)
        lock = lock_folder(
            self.out, "output folder in use by another cardioseg train; give another output_dir"
        )
        try:
            return self._train()
        except BaseException:
            if not (self.out / "config.yaml").exists():
                _remove_created(created)
            raise
        finally:
            lock.close()

    def _train(self) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.train
        seed_everything(t.seed + self.rank)
        resumed = self._check_resumable()  # before anything but the lock file is written
        init_state = None
        if cfg.init_checkpoint:  # a wrong path or network is said before the data are read
            with torch.random.fork_rng(devices=[]):  # the run's own model is drawn as before
                init_model = build_model(cfg.model)
                load_init_weights(init_model, cfg.init_checkpoint)
                init_state = init_model.state_dict()  # read once, copied into the model below
                del init_model
        self._check_memory()
        records = collect_records(cfg)
        train_recs, val_recs = split_records(records, cfg)
        self._log(f"{len(train_recs)} training and {len(val_recs)} validation volumes")
        d = cfg.data
        train_cases = load_prepared(
            train_recs, d.target_spacing, d.cache_dir, canonical_handedness=d.canonical_handedness
        )
        val_cases = load_prepared(
            val_recs, d.target_spacing, d.cache_dir, canonical_handedness=d.canonical_handedness
        )
        check_patch_size(train_cases, t.patch_size, d.target_spacing)
        check_label_convention(train_cases + val_cases)
        target_recs = collect_records(cfg, "target_unlabeled")
        target_cases = load_prepared(
            target_recs,
            d.target_spacing,
            d.cache_dir,
            require_label=False,
            canonical_handedness=d.canonical_handedness,
        )
        if target_cases:
            self._log(f"{len(target_cases)} unlabelled target volumes")
        if self.rank == 0:  # the data are there: a run, resumable with this configuration
            cfg.save(self.out / "config.yaml")
        fingerprint = {
            "target_spacing": cfg.data.target_spacing,
            "n_train_volumes": len(train_cases),
            "train_subjects": train_subjects([c.record for c in train_cases]),
            "spacing_median": np.median(
                [c.fingerprint["spacing"] for c in train_cases], 0
            ).tolist(),
            "intensity_p99_5_median": float(
                np.median([c.fingerprint["p99_5"] for c in train_cases])
            ),
            "intensity_reference": HistogramReference.from_volumes(
                [c.image for c in train_cases]
            ).to_dict(),
        }
        domains = None
        if cfg.data.sampling == "balanced":
            domains = [record_domain(c.record, cfg.data.domain_key) for c in train_cases]
            self._log(f"balanced sampling over domains {sorted(set(domains))}")
        sampler = PatchSampler(
            train_cases, t.patch_size, seed=t.seed + 1000 * self.rank, domains=domains
        )
        aug = build_augmentation(
            t.augmentation,
            t.extra_augmentation,
            seed=t.seed + 7 * self.rank,
            orientation=t.orientation_augmentation,
        )

        model = build_model(cfg.model).to(self.device)
        if init_state is not None:
            model.load_state_dict(init_state)
            self._log(f"initialised from {cfg.init_checkpoint}")
        params = freeze(model, cfg.finetune.trainable, cfg.finetune.n_blocks)
        components = build_components(
            cfg, model, target_cases, self.device, t.seed + 2000 + 1000 * self.rank
        )
        if target_cases and not components:
            self._log("warning: target_unlabeled datasets are not used by any enabled method")
        params += [p for c in components for p in c.parameters()]
        opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        total = t.epochs * t.iterations_per_epoch
        warm = t.warmup_epochs * t.iterations_per_epoch

        swa_before = t.swa_epochs_before
        swa_from = swa_before * t.iterations_per_epoch

        def lr_lambda(step: int) -> float:
            if t.swa_start > 0 and t.swa_lr > 0 and step >= swa_from:
                return t.swa_lr / t.lr
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
        # Loss scaling only for float16; bfloat16 has float32's exponent range.
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
        swa = None
        if t.swa_start > 0:
            from torch.optim.swa_utils import AveragedModel

            swa = AveragedModel(model)
            self._log(f"averaging the weights after every epoch from epoch {swa_before + 1}")

        def kept() -> torch.nn.Module:
            """What is validated and saved: the weight average once it has started."""
            return swa.module if swa is not None and int(swa.n_averaged) > 0 else model

        start_epoch, best, history = 0, -1.0, []
        last = self.out / "last.pt"
        if last.exists():
            ck = resumed or torch.load(last, map_location="cpu", weights_only=False)
            model.load_state_dict(ck["model_state"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            aug.load_state_dict(ck["augmentation"])
            sampler.rng.bit_generator.state = ck["sampler_rng"]
            torch.set_rng_state(ck["torch_rng"])
            start_epoch, best = ck["epoch"] + 1, ck["best"]
            history = ck.get("history", [])
            for c, state in zip(components, ck.get("components", []), strict=False):
                c.load_state_dict(state)
            if swa is not None and "swa_state" in ck:
                swa.load_state_dict(ck["swa_state"])
            self._log(f"resumed from {last} at epoch {start_epoch}")
        if self.rank == 0:
            self._trim_metrics(start_epoch)
        net = model
        if self.world > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        writer = None
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out / "tensorboard"))
        t0 = time.time()
        elapsed_before = history[-1]["elapsed_s"] if history else 0.0
        multiple = cfg.model.stride_product
        total_steps = max(1, t.epochs * t.iterations_per_epoch)
        for epoch in range(start_epoch, t.epochs):
            net.train()
            for c in components:
                c.train(True)
            losses = []
            aux_logs: dict[str, list[float]] = {}
            it = epoch_batches(
                sampler, aug, t, epoch, self.rank, pin_memory=self.device.type == "cuda"
            )
            if self.progress and self.rank == 0:
                from tqdm import tqdm

                it = tqdm(
                    it,
                    desc=f"epoch {epoch + 1}/{t.epochs}",
                    total=t.iterations_per_epoch,
                    leave=False,
                )
            for i, (x, y) in enumerate(it):
                batch: dict[str, Any] = {"image": x, "label": y}
                for c in components:
                    batch = c.extend_batch(batch)
                if "unlabeled" in batch:
                    x = torch.cat([x, batch["unlabeled"]])
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                progress = (epoch * t.iterations_per_epoch + i) / total_steps
                with torch.autocast(
                    self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp
                ):
                    logits = net(x)
                    loss = loss_fn(logits[: y.shape[0]].float(), y[:, None])
                    for c in components:
                        extra, info = c.step(batch, logits, progress)
                        if extra is not None:
                            loss = loss + extra
                        for k, v in info.items():
                            aux_logs.setdefault(k, []).append(v)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, 12.0)
                scaler.step(opt)
                scaler.update()
                sched.step()
                losses.append(loss.item())
            if swa is not None and epoch + 1 > swa_before:
                swa.update_parameters(model)
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)),
                "lr": sched.get_last_lr()[0],
                **{k: float(np.mean(v)) for k, v in aux_logs.items()},
            }
            if (
                self.rank == 0
                and val_cases
                and ((epoch + 1) % t.val_interval == 0 or epoch + 1 == t.epochs)
            ):
                row.update(validate(kept(), val_cases, multiple, self.device))
            row["elapsed_s"] = elapsed_before + time.time() - t0
            history.append(row)
            if self.rank == 0:
                self._write_epoch(row, writer)
                payload = self._payload(kept(), fingerprint, row)
                score = row.get("dice_mean", -1.0)
                if t.fold >= 0 and score > best:
                    best = score
                    save_checkpoint(self.out / "best.pt", payload)
                payload.update(
                    {
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "augmentation": aug.state_dict(),
                        "sampler_rng": sampler.rng.bit_generator.state,
                        "torch_rng": torch.get_rng_state(),
                        "epoch": epoch,
                        "best": best,
                        "history": history,
                        "components": [c.state_dict() for c in components],
                    }
                )
                if swa is not None:  # resume needs the raw weights and the running average
                    payload["model_state"] = {
                        k: v.detach().cpu() for k, v in model.state_dict().items()
                    }
                    payload["swa_state"] = swa.state_dict()
                save_checkpoint(last, payload)
                self._log(
                    " ".join(
                        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in row.items()
                    )
                )
            if t.max_minutes and (time.time() - t0) / 60 > t.max_minutes:
                self._log("stopping: max_minutes reached (resume to continue)")
                break
        if writer:
            writer.close()
        if self.rank == 0:
            final = self._payload(kept(), fingerprint, history[-1] if history else {})
            if t.fold < 0 or not (self.out / "best.pt").exists():
                save_checkpoint(self.out / "final.pt", final)
            (self.out / "summary.json").write_text(
                json.dumps(
                    {
                        # all-data training (fold -1) keeps no best: null, not -1
                        "best_val_dice": best if best >= 0 else None,
                        "epochs_done": len(history),
                        "train_time_s": history[-1]["elapsed_s"] if history else 0.0,
                        "weights_averaged": int(swa.n_averaged) if swa is not None else 0,
                        "last": history[-1] if history else {},
                    },
                    indent=2,
                )
            )
        return {"best": best, "history": history}

    def _check_memory(self) -> None:
        """Refuse, before the data are read, a batch whose training step cannot fit in the
        memory free on the device (a CPU's is shared by the ranks of a ``torchrun`` on it):
        otherwise the step fails after the data are loaded or the system kills the process
        without a word. See :func:`step_memory_estimate`."""
        t, m = self.cfg.train, self.cfg.model
        need = step_memory_estimate(
            t.batch_size, t.patch_size, list(m.channels), list(m.strides), self.amp
        )
        if self.device.type == "cuda":
            free = torch.cuda.mem_get_info(self.device)[0]
        else:
            free = available_memory()
            need *= int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if free is not None and need > free:
            raise CardiosegError(
                None,
                f"train.batch_size {t.batch_size} with train.patch_size {t.patch_size} needs "
                f"about {need / 2**30:.1f} GB for a training step, more than the "
                f"{free / 2**30:.1f} GB free on {self.device}; lower train.batch_size or "
                "train.patch_size",
            )

    def _check_resumable(self) -> dict[str, Any] | None:
        """Refuse to resume ``output_dir/last.pt`` with another configuration: the run would go
        on with the old weights under the new settings, and ``config.yaml`` would describe
        neither. Only where the run is written and how it is computed may change
        (:data:`RESUME_MAY_CHANGE`). Returns the checkpoint read (the resume uses it), or
        ``None`` when there is none or it cannot be read (the resume then says why)."""
        last = self.out / "last.pt"
        if not last.is_file():
            return None
        try:
            ck = torch.load(last, map_location="cpu", weights_only=False)
        except Exception:  # a damaged last.pt: the resume itself says so
            return None
        old = ck.get("config") or {}
        # the inference.* settings say how the model is evaluated, not how it is trained
        changed = changed_settings(old, self.cfg.to_dict(), [*RESUME_MAY_CHANGE, "inference."])
        if changed:
            shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changed[:4])
            more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
            raise CardiosegError(
                self.out,
                f"holds a run trained with another configuration ({shown}{more}); resume it "
                "with its own config.yaml, or give another output_dir",
            )
        return ck

    def _payload(self, model: torch.nn.Module, fingerprint: dict, row: dict) -> dict[str, Any]:
        return {
            "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "config": self.cfg.to_dict(),
            "fingerprint": fingerprint,
            "metrics": row,
            "format": "cardioseg-checkpoint-v1",
        }

    def _trim_metrics(self, epochs_done: int) -> None:
        """Drop the rows of ``metrics.csv`` after the epochs the checkpoint holds: a run stopped
        between writing an epoch's row and its ``last.pt`` trains that epoch again, and its row
        would be there twice."""
        f = self.out / "metrics.csv"
        if not f.exists():
            return
        with open(f, newline="") as fh:
            rows = list(csv.reader(fh))
        kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= epochs_done]
        if len(kept) < len(rows):
            with atomic_write(f) as tmp, open(tmp, "w", newline="") as fh:
                csv.writer(fh).writerows(kept)

    def _write_epoch(self, row: dict, writer: Any) -> None:
        f = self.out / "metrics.csv"
        new = not f.exists()
        keys = ["epoch", "loss", "lr", "dice_lv", "dice_myo", "dice_rv", "dice_mean", "elapsed_s"]
        if new:  # auxiliary components' scalars (e.g. dann_loss) get their own columns
            keys += [k for k in row if k not in keys]
        else:
            with open(f, newline="") as fh:
                keys = next(csv.reader(fh), keys)
        with open(f, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        if writer is not None:
            for k, v in row.items():
                if k != "epoch":
                    writer.add_scalar(k, v, row["epoch"])
