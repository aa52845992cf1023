"""Random convolution (RandConv, Xu et al., ICLR 2021): random local texture/contrast filters."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cardioseg.augmentation.base import Batch, RandomTransform, Transform


class Convolution(Transform):
    """Filter each sample with its kernel, restore its mean/std, blend with the original.

    ``out = (1 - mix) * x + mix * standardise(k * x)``, where the filtered image is rescaled to
    the mean and standard deviation of ``x``.

    Args:
        kernel: ``(B, K, K)`` kernels (odd ``K``; smaller kernels are zero-padded).
        mix: ``(B,)`` blending weights in [0, 1] (0 = unchanged).

    Example:
        >>> k = torch.zeros(1, 3, 3); k[0, 1, 1] = 1.0
        >>> x = torch.rand(1, 1, 8, 8)
        >>> torch.allclose(Convolution(k, torch.tensor([1.0]))(x)[0], x, atol=1e-5)
        True
    """

    def __init__(self, kernel: torch.Tensor, mix: torch.Tensor):
        super().__init__(kernel=kernel, mix=mix)

    def apply(self, image: torch.Tensor, label: torch.Tensor | None) -> Batch:
        mix = self.params["mix"].to(image.dtype)
        if float(mix.abs().max()) == 0:
            return image, label
        k = self.params["kernel"].to(image.dtype)
        b, c, h, w = image.shape
        r = k.shape[-1] // 2
        x = image.reshape(1, b * c, h, w)
        x = F.pad(x, (r, r, r, r), mode="reflect" if min(h, w) > r else "replicate")
        y = F.conv2d(x, k.repeat_interleave(c, 0)[:, None], groups=b * c).view(b, c, h, w)
        mean_x = image.mean((1, 2, 3), keepdim=True)
        std_x = image.std((1, 2, 3), keepdim=True)
        mean_y = y.mean((1, 2, 3), keepdim=True)
        std_y = y.std((1, 2, 3), keepdim=True).clamp(min=1e-6)
        y = (y - mean_y) / std_y * std_x + mean_x
        m = mix.view(-1, 1, 1, 1)
        return (1 - m) * image + m * y, label


class RandomConvolution(RandomTransform):
    """Random kernels (size from ``kernel_sizes``, He-normal weights) and blending weights.

    Args:
        kernel_sizes: Odd kernel sizes to choose from (1 only rescales or inverts contrast).
        mix: Range of the blending weight (1 = the filtered image only).
        p: Probability per sample.

    Example:
        >>> t = RandomConvolution(p=1.0).sample(2, torch.Generator().manual_seed(0))
        >>> tuple(t.params["kernel"].shape)
        (2, 7, 7)
    """

    def __init__(
        self,
        kernel_sizes: tuple[int, ...] = (1, 3, 5, 7),
        mix: tuple[float, float] = (0.0, 1.0),
        p: float = 0.5,
    ):
        super().__init__(p)
        if not kernel_sizes or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel sizes must be odd and positive, got {kernel_sizes}")
        if not 0 <= mix[0] <= mix[1] <= 1:
            raise ValueError(f"mix must be a range in [0, 1], got {mix}")
        self.kernel_sizes, self.mix = tuple(kernel_sizes), mix

    def sample(self, batch_size: int, generator: torch.Generator) -> Convolution:
        m = self._mask(batch_size, generator).float()
        size_max = max(self.kernel_sizes)
        choice = torch.randint(0, len(self.kernel_sizes), (batch_size,), generator=generator)
        w = torch.randn(batch_size, size_max, size_max, generator=generator)
        kernel = torch.zeros(batch_size, size_max, size_max)
        for i, ci in enumerate(choice.tolist()):
            k = self.kernel_sizes[ci]
            o = (size_max - k) // 2
            kernel[i, o : o + k, o : o + k] = w[i, :k, :k] * (2.0 / (k * k)) ** 0.5
        mix = self._uniform(batch_size, *self.mix, generator)
        return Convolution(kernel, mix * m)
