"""Batched, seedable data augmentation for 2D short-axis slices (spatial and MR intensity)."""

from cardioseg.augmentation.affine import Affine, RandomAffine
from cardioseg.augmentation.base import Compose, RandomTransform, Transform
from cardioseg.augmentation.bias_field import BiasField, RandomBiasField
from cardioseg.augmentation.blur import Blur, RandomBlur
from cardioseg.augmentation.contrast import Contrast, RandomContrast
from cardioseg.augmentation.elastic import ElasticDeformation, RandomElasticDeformation
from cardioseg.augmentation.gamma import Gamma, RandomGamma
from cardioseg.augmentation.low_resolution import LowResolution, RandomLowResolution
from cardioseg.augmentation.noise import Noise, RandomNoise
from cardioseg.augmentation.orientation import Orientation, RandomOrientation


def baseline_augmentation(seed: int | None = None, strength: str = "strong") -> Compose:
    """The default training augmentation: spatial, then MR intensity transforms.

    Args:
        seed: Seed of the augmentation generator.
        strength: ``strong`` (default, for cross-vendor generalisation), ``light`` or ``none``.
    """
    if strength == "none":
        return Compose([], seed=seed)
    light = strength == "light"
    return Compose(
        [
            RandomOrientation(p=0.5 if light else 0.75),
            RandomAffine(degrees=15 if light else 30, scales=(0.85, 1.2) if light else (0.75, 1.3)),
            RandomElasticDeformation(p=0.2),
            RandomBiasField(magnitude=0.3 if light else 0.5, p=0.2 if light else 0.5),
            RandomGamma(log_gamma=(-0.3, 0.3) if light else (-0.6, 0.6), p=0.3 if light else 0.6),
            RandomContrast(p=0.3 if light else 0.5),
            RandomLowResolution(p=0.15 if light else 0.3),
            RandomBlur(p=0.15 if light else 0.25),
            RandomNoise(p=0.2 if light else 0.4),
        ],
        seed=seed,
    )


__all__ = [
    "Affine",
    "BiasField",
    "Blur",
    "Compose",
    "Contrast",
    "ElasticDeformation",
    "Gamma",
    "LowResolution",
    "Noise",
    "Orientation",
    "RandomAffine",
    "RandomBiasField",
    "RandomBlur",
    "RandomContrast",
    "RandomElasticDeformation",
    "RandomGamma",
    "RandomLowResolution",
    "RandomNoise",
    "RandomOrientation",
    "RandomTransform",
    "Transform",
    "baseline_augmentation",
]
