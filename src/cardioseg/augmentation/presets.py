"""Named augmentation pipelines selected from the training config.

``train.augmentation`` picks the base pipeline (``none``, ``spatial``, ``light``, ``strong``) and
``train.extra_augmentation`` appends named stages after it:

* ``mri_artefacts``: ghosting, motion, spikes, Gibbs ringing, anisotropic resolution and a
  stronger bias field (TorchIO / MONAI artefact models);
* ``intensity_curve``: random monotonic/non-monotonic intensity remapping curves;
* ``randconv``: random convolutions;
* ``appearance``: ``intensity_curve`` followed by ``randconv``.

An extra stage is a name or a mapping ``{name: ..., p: ..., <keyword arguments>}``; ``p`` scales
nothing else than the per-sample probability of each transform in the stage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cardioseg.augmentation.affine import RandomAffine
from cardioseg.augmentation.anisotropy import RandomAnisotropy
from cardioseg.augmentation.base import Compose, RandomTransform
from cardioseg.augmentation.bias_field import RandomBiasField
from cardioseg.augmentation.blur import RandomBlur
from cardioseg.augmentation.contrast import RandomContrast
from cardioseg.augmentation.elastic import RandomElasticDeformation
from cardioseg.augmentation.gamma import RandomGamma
from cardioseg.augmentation.ghosting import RandomGhosting
from cardioseg.augmentation.gibbs import RandomGibbs
from cardioseg.augmentation.intensity_curve import RandomIntensityCurve
from cardioseg.augmentation.low_resolution import RandomLowResolution
from cardioseg.augmentation.motion import RandomMotion
from cardioseg.augmentation.noise import RandomNoise
from cardioseg.augmentation.orientation import RandomOrientation
from cardioseg.augmentation.random_convolution import RandomConvolution
from cardioseg.augmentation.spike import RandomSpike

#: Base pipelines for ``train.augmentation``.
STRENGTHS = ("none", "spatial", "light", "strong")


def base_transforms(strength: str = "strong", orientation: bool = True) -> list[RandomTransform]:
    """The transforms of a base pipeline (spatial first, then MR intensity).

    Args:
        strength: One of :data:`STRENGTHS`; ``spatial`` is the spatial part of ``strong``.
        orientation: Include random 90° turns and flips. Turn off when the training and test
            images share the in-plane convention (the model then needs no capacity to tell the
            ventricles apart in every orientation).

    Raises:
        ValueError: For an unknown strength.
    """
    if strength not in STRENGTHS:
        raise ValueError(f"augmentation must be one of {STRENGTHS}, got {strength!r}")
    if strength == "none":
        return []
    light = strength == "light"
    spatial: list[RandomTransform] = (
        [RandomOrientation(p=0.5 if light else 0.75)] if orientation else []
    )
    spatial += [
        RandomAffine(degrees=15 if light else 30, scales=(0.85, 1.2) if light else (0.75, 1.3)),
        RandomElasticDeformation(p=0.2),
    ]
    if strength == "spatial":
        return spatial
    return spatial + [
        RandomBiasField(magnitude=0.3 if light else 0.5, p=0.2 if light else 0.5),
        RandomGamma(log_gamma=(-0.3, 0.3) if light else (-0.6, 0.6), p=0.3 if light else 0.6),
        RandomContrast(p=0.3 if light else 0.5),
        RandomLowResolution(p=0.15 if light else 0.3),
        RandomBlur(p=0.15 if light else 0.25),
        RandomNoise(p=0.2 if light else 0.4),
    ]


def mri_artefact_transforms(p: float = 0.15) -> list[RandomTransform]:
    """MR acquisition artefacts, each applied to a sample with probability ``p``."""
    return [
        RandomBiasField(magnitude=0.8, p=p),
        RandomGhosting(p=p),
        RandomMotion(p=p),
        RandomSpike(p=p / 2),
        RandomGibbs(p=p),
        RandomAnisotropy(p=p),
    ]


def intensity_curve_transforms(p: float = 0.5, **kwargs: Any) -> list[RandomTransform]:
    """Random intensity remapping curves (see :class:`RandomIntensityCurve`)."""
    return [RandomIntensityCurve(p=p, **kwargs)]


def randconv_transforms(p: float = 0.5, **kwargs: Any) -> list[RandomTransform]:
    """Random convolutions (see :class:`RandomConvolution`)."""
    return [RandomConvolution(p=p, **kwargs)]


def appearance_transforms(p: float = 0.5) -> list[RandomTransform]:
    """Intensity curves, then random convolutions."""
    return intensity_curve_transforms(p) + randconv_transforms(p)


#: Extra stages for ``train.extra_augmentation``.
EXTRA_STAGES: dict[str, Callable[..., list[RandomTransform]]] = {
    "mri_artefacts": mri_artefact_transforms,
    "intensity_curve": intensity_curve_transforms,
    "randconv": randconv_transforms,
    "appearance": appearance_transforms,
}


def extra_transforms(spec: str | dict[str, Any]) -> list[RandomTransform]:
    """Build one extra stage from a name or a ``{name: ..., **kwargs}`` mapping.

    Raises:
        ValueError: Unknown stage name or invalid arguments.

    Example:
        >>> [type(t).__name__ for t in extra_transforms({"name": "randconv", "p": 0.3})]
        ['RandomConvolution']
    """
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, dict) and isinstance(spec.get("name"), str):
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items()}
        name = kwargs.pop("name")
    else:
        raise ValueError(f"extra augmentation must be a name or a {{name: ...}} mapping: {spec!r}")
    if name not in EXTRA_STAGES:
        raise ValueError(f"unknown extra augmentation {name!r}; choose from {sorted(EXTRA_STAGES)}")
    try:
        return EXTRA_STAGES[name](**kwargs)
    except TypeError as exc:
        raise ValueError(f"extra augmentation {name!r}: {exc}") from None


def build_augmentation(
    strength: str = "strong",
    extra: list[str | dict[str, Any]] | None = None,
    seed: int | None = None,
    orientation: bool = True,
) -> Compose:
    """The training augmentation: a base pipeline plus extra stages, with one seeded generator.

    Args:
        strength: Base pipeline, one of :data:`STRENGTHS`.
        extra: Extra stages (names or mappings), appended in order.
        seed: Seed of the augmentation generator.
        orientation: Include random 90° turns and flips in the base pipeline.

    Example:
        >>> aug = build_augmentation("spatial", ["intensity_curve"], seed=0)
        >>> [type(t).__name__ for t in aug.transforms][-1]
        'RandomIntensityCurve'
    """
    transforms = base_transforms(strength, orientation)
    for spec in extra or []:
        transforms += extra_transforms(spec)
    return Compose(transforms, seed=seed)
