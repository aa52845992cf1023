"""MixStyle (Zhou et al., ICLR 2021): mix feature statistics between samples during training."""

from __future__ import annotations

import torch
from torch import nn


class MixStyle(nn.Module):
    """Replace each sample's channel mean/std by a mix with those of another sample.

    With probability ``p`` per batch, ``out = norm(x) * (l * s + (1 - l) * s[perm]) +
    (l * m + (1 - l) * m[perm])`` with ``l ~ Beta(alpha, alpha)`` per sample and the statistics
    ``m, s`` detached. Identity in evaluation mode and for batches of one sample. No parameters,
    so checkpoints of models with and without MixStyle are interchangeable.

    Args:
        p: Probability of mixing a batch.
        alpha: Beta distribution parameter.
        eps: Added to the variance.

    Example:
        >>> ms = MixStyle(p=1.0).train()
        >>> ms(torch.rand(4, 3, 8, 8)).shape
        torch.Size([4, 3, 8, 8])
    """

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6):
        super().__init__()
        if not 0 <= p <= 1 or alpha <= 0:
            raise ValueError("MixStyle needs p in [0, 1] and alpha > 0")
        self.p, self.alpha, self.eps = p, alpha, eps
        self._beta = torch.distributions.Beta(alpha, alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] < 2 or torch.rand(1).item() > self.p:
            return x
        b = x.shape[0]
        mu = x.mean(dim=(2, 3), keepdim=True).detach()
        sig = (x.var(dim=(2, 3), keepdim=True) + self.eps).sqrt().detach()
        lam = self._beta.sample((b, 1, 1, 1)).to(x.device, x.dtype)
        perm = torch.randperm(b, device=x.device)
        mu2 = lam * mu + (1 - lam) * mu[perm]
        sig2 = lam * sig + (1 - lam) * sig[perm]
        return (x - mu) / sig * sig2 + mu2


def attach_mixstyle(
    blocks: list[nn.Module], p: float = 0.5, alpha: float = 0.1
) -> list[torch.utils.hooks.RemovableHandle]:
    """Apply MixStyle to the outputs of ``blocks`` while they are in training mode.

    Uses forward hooks, so the model's parameters and state-dict keys do not change.

    Returns:
        The hook handles (``handle.remove()`` detaches MixStyle again).
    """
    handles = []
    for block in blocks:
        mix = MixStyle(p, alpha)

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor, mix=mix) -> torch.Tensor:
            return mix.train(module.training)(output)

        handles.append(block.register_forward_hook(hook))
    return handles
