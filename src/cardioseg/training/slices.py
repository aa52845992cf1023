"""Preprocessed volumes in memory, cached on disk, and a heart-centred 2D patch sampler."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cardioseg.data.datasets import CaseRecord, load_case
from cardioseg.preprocessing.geometry import (
    crop_or_pad,
    inplane_size,
    is_mirrored_view,
    resample_inplane,
    resample_labels,
    slice_axis,
    to_slices,
)
from cardioseg.preprocessing.intensity import intensity_fingerprint, normalize_intensity


@dataclass
class PreparedCase:
    """One case at the network's in-plane spacing: ``image``/``label`` are ``(Z, H, W)``."""

    record: CaseRecord
    image: np.ndarray
    label: np.ndarray
    center: tuple[float, float]
    fingerprint: dict


def prepare_case(
    record: CaseRecord,
    target_spacing: float,
    require_label: bool = True,
    canonical_handedness: bool = True,
) -> PreparedCase:
    """Normalise and resample one case; without a label (``require_label=False``) the label is
    all background and the centre is the image centre. With ``canonical_handedness`` stacks
    stored as mirror images of the canonical short-axis view are flipped, exactly as
    :class:`~cardioseg.preprocessing.pipeline.Preprocessor` does at inference."""
    image, label, props = load_case(record, with_label=require_label)
    if label is None:
        if require_label:
            raise ValueError(f"{record.image}: no label for training")
        label = np.zeros(image.shape, np.uint8)
    axis = slice_axis(props.spacing, image.shape)
    fp = intensity_fingerprint(image)
    fp["spacing"] = list(props.spacing)
    img = to_slices(normalize_intensity(image), axis)
    lab = to_slices(label, axis)
    if canonical_handedness and is_mirrored_view(props.affine, axis):
        img, lab = img[..., ::-1], lab[..., ::-1]
    sp = tuple(s for i, s in enumerate(props.spacing) if i != axis)
    size = inplane_size(img.shape[1:], sp, target_spacing)  # type: ignore[arg-type]
    img_r = resample_inplane(torch.from_numpy(np.ascontiguousarray(img))[:, None], size)[:, 0]
    lab_r = resample_labels(np.ascontiguousarray(lab), size)
    fg = np.argwhere(lab_r.max(0) > 0)
    center = tuple(fg.mean(0)) if len(fg) else (size[0] / 2, size[1] / 2)
    return PreparedCase(record, img_r.numpy().astype(np.float16), lab_r, center, fp)  # type: ignore[arg-type]


def load_prepared(
    records: list[CaseRecord],
    target_spacing: float,
    cache_dir: str | Path | None,
    require_label: bool = True,
    canonical_handedness: bool = True,
) -> list[PreparedCase]:
    """Prepare all records, reusing ``cache_dir/<hash>.npz`` files when present.

    With ``require_label=False`` (unlabelled target data) labels are never read.
    """
    out = []
    cache = Path(cache_dir) if cache_dir else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    for r in records:
        # the label convention too: the same file read with another layout's is another label
        lab = f"{r.label}|{r.label_map}" if require_label else ""
        key = hashlib.sha1(
            f"{Path(r.image).resolve()}|{r.frame}|{lab}|"
            f"{target_spacing}|{'v2h' if canonical_handedness else 'v1'}".encode()
        ).hexdigest()[:16]
        f = cache / f"{key}.npz" if cache else None
        if f is not None and f.exists():
            z = np.load(f, allow_pickle=True)
            out.append(
                PreparedCase(r, z["image"], z["label"], tuple(z["center"]), z["fingerprint"].item())
            )
            continue
        pc = prepare_case(r, target_spacing, require_label, canonical_handedness)
        if f is not None:
            tmp = f.with_suffix(".tmp.npz")
            np.savez(
                tmp,
                image=pc.image,
                label=pc.label,
                center=np.array(pc.center),
                fingerprint=np.array(pc.fingerprint, dtype=object),
            )
            tmp.replace(f)
        out.append(pc)
    return out


class PatchSampler:
    """Draw random 2D patches centred near the heart (with jitter and some random centres).

    Args:
        cases: Prepared training cases.
        patch_size: Square patch side in pixels.
        seed: Seed of the sampler's generator.
        jitter: Std (pixels) of the random offset from the heart centre.
        p_random_center: Probability of a uniformly random centre (teaches background).
        domains: Domain name per case; when given, every domain is drawn equally often (then
            every slice within it), for multi-domain training.
    """

    def __init__(
        self,
        cases: list[PreparedCase],
        patch_size: int = 160,
        seed: int = 0,
        jitter: float = 20.0,
        p_random_center: float = 0.1,
        domains: list[str] | None = None,
    ):
        if not cases:
            raise ValueError("no training cases")
        self.cases, self.patch_size = cases, patch_size
        self.jitter, self.p_random_center = jitter, p_random_center
        self.index = [(ci, z) for ci, c in enumerate(cases) for z in range(c.image.shape[0])]
        self.rng = np.random.default_rng(seed)
        self.weights: np.ndarray | None = None
        if domains is not None:
            if len(domains) != len(cases):
                raise ValueError("need one domain per case")
            per_slice = [domains[ci] for ci, _ in self.index]
            counts = {d: per_slice.count(d) for d in set(per_slice)}
            w = np.array([1.0 / (len(counts) * counts[d]) for d in per_slice])
            self.weights = w / w.sum()

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        ps = (self.patch_size, self.patch_size)
        imgs, labs = [], []
        if self.weights is None:
            draws = self.rng.integers(0, len(self.index), batch_size)
        else:
            draws = self.rng.choice(len(self.index), size=batch_size, p=self.weights)
        for k in draws:
            ci, z = self.index[k]
            c = self.cases[ci]
            h, w = c.image.shape[1:]
            if self.rng.random() < self.p_random_center:
                center = (self.rng.uniform(0, h), self.rng.uniform(0, w))
            else:
                center = (
                    c.center[0] + self.rng.normal(0, self.jitter),
                    c.center[1] + self.rng.normal(0, self.jitter),
                )
            im = c.image[z].astype(np.float32)
            imgs.append(crop_or_pad(im, center, ps, value=float(im.min())))
            labs.append(crop_or_pad(c.label[z], center, ps, value=0))
        return (
            torch.from_numpy(np.stack(imgs))[:, None],
            torch.from_numpy(np.stack(labs).astype(np.int64)),
        )
