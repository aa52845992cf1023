"""Batched, seedable data augmentation for 2D short-axis slices (spatial and MR intensity).

Each ``RandomX`` samples per-slice parameters from a generator and delegates to its
deterministic twin ``X``, whose ``params`` record what was applied and which replays it. They
take a batch of slices, ``image`` ``(B, 1, H, W)`` float and ``label`` ``(B, H, W)`` or ``None``;
a 3D volume is a batch of its slices.

Example:
    >>> import numpy as np, torch
    >>> volume = np.random.default_rng(0).random((32, 32, 4), dtype=np.float32)  # (X, Y, Z)
    >>> x = torch.from_numpy(volume).permute(2, 0, 1)[:, None]  # (Z, 1, X, Y)
    >>> det = RandomGhosting(p=1.0).sample(len(x), torch.Generator().manual_seed(0))
    >>> sorted(det.params)
    ['axis', 'intensity', 'num_ghosts', 'restore']
    >>> y, _ = det(x)
    >>> torch.equal(y, Ghosting(**det.params)(x)[0])  # the deterministic twin replays it
    True
    >>> y[:, 0].permute(1, 2, 0).numpy().shape  # back to (X, Y, Z)
    (32, 32, 4)
"""

from cardioseg.augmentation.affine import Affine, RandomAffine
from cardioseg.augmentation.anisotropy import Anisotropy, RandomAnisotropy
from cardioseg.augmentation.base import Compose, RandomTransform, Transform
from cardioseg.augmentation.bias_field import BiasField, RandomBiasField
from cardioseg.augmentation.blur import Blur, RandomBlur
from cardioseg.augmentation.contrast import Contrast, RandomContrast
from cardioseg.augmentation.elastic import ElasticDeformation, RandomElasticDeformation
from cardioseg.augmentation.gamma import Gamma, RandomGamma
from cardioseg.augmentation.ghosting import Ghosting, RandomGhosting
from cardioseg.augmentation.gibbs import Gibbs, RandomGibbs
from cardioseg.augmentation.intensity_curve import IntensityCurve, RandomIntensityCurve
from cardioseg.augmentation.low_resolution import LowResolution, RandomLowResolution
from cardioseg.augmentation.motion import Motion, RandomMotion
from cardioseg.augmentation.noise import Noise, RandomNoise
from cardioseg.augmentation.orientation import Orientation, RandomOrientation
from cardioseg.augmentation.presets import (
    EXTRA_STAGES,
    STRENGTHS,
    base_transforms,
    build_augmentation,
    extra_transforms,
)
from cardioseg.augmentation.random_convolution import Convolution, RandomConvolution
from cardioseg.augmentation.spike import RandomSpike, Spike


def baseline_augmentation(seed: int | None = None, strength: str = "strong") -> Compose:
    """The default training augmentation: spatial, then MR intensity transforms.

    Args:
        seed: Seed of the augmentation generator.
        strength: ``strong`` (default, for cross-vendor generalisation), ``light``, ``spatial``
            (spatial transforms only) or ``none``.
    """
    return Compose(base_transforms(strength), seed=seed)


__all__ = [
    "Affine",
    "Anisotropy",
    "BiasField",
    "Blur",
    "Compose",
    "Contrast",
    "Convolution",
    "EXTRA_STAGES",
    "ElasticDeformation",
    "Gamma",
    "Ghosting",
    "Gibbs",
    "IntensityCurve",
    "LowResolution",
    "Motion",
    "Noise",
    "Orientation",
    "RandomAffine",
    "RandomAnisotropy",
    "RandomBiasField",
    "RandomBlur",
    "RandomContrast",
    "RandomConvolution",
    "RandomElasticDeformation",
    "RandomGamma",
    "RandomGhosting",
    "RandomGibbs",
    "RandomIntensityCurve",
    "RandomLowResolution",
    "RandomMotion",
    "RandomNoise",
    "RandomOrientation",
    "RandomSpike",
    "RandomTransform",
    "STRENGTHS",
    "Spike",
    "Transform",
    "base_transforms",
    "baseline_augmentation",
    "build_augmentation",
    "extra_transforms",
]
