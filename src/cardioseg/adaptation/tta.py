"""Test-time adaptation by entropy minimisation (TENT, Wang et al., ICLR 2021).

For each test volume, the affine parameters of the normalisation layers are optimised for a few
steps to make the predictions on that volume confident (low entropy); the volume is then
predicted with the adapted parameters and the model is restored (episodic adaptation, so one odd
volume never degrades the next).

The default network uses InstanceNorm *without* affine parameters. For such layers, TENT attaches
an identity-initialised per-channel scale and shift after the normalisation (through forward
hooks, so the checkpoint is untouched) and adapts those: the same parameterisation TENT adapts in
affine normalisation layers. BatchNorm layers additionally normalise with the statistics of the
test volume, as in TENT.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
)


def _channels(m: nn.Module) -> int:
    if isinstance(m, nn.GroupNorm):
        return m.num_channels
    if isinstance(m, nn.LayerNorm):
        return 0
    return m.num_features  # type: ignore[return-value]


class _Modulation(nn.Module):
    """Per-channel ``x * weight + bias`` applied to a norm layer's output by a forward hook."""

    def __init__(self, channels: int, device: torch.device):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, device=device))
        self.bias = nn.Parameter(torch.zeros(channels, device=device))

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (output.ndim - 2)
        return output * self.weight.view(shape) + self.bias.view(shape)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy of the softmax over the class axis (axis 1)."""
    logp = torch.log_softmax(logits.float(), 1)
    return -(logp.exp() * logp).sum(1).mean()


class Tent:
    """Entropy minimisation on normalisation parameters, episodic per test volume.

    Args:
        steps: Gradient steps per volume.
        lr: Adam learning rate.
        batch_size: Slices per step (a random subset when the volume has more).
        seed: Seed of the slice subsets.

    Example:
        >>> from cardioseg.models.factory import ModelConfig, build_model
        >>> net = build_model(ModelConfig(channels=[4, 8], strides=[2], num_res_units=0)).eval()
        >>> x = torch.rand(3, 1, 16, 16)
        >>> with Tent(steps=2).adapted(net, x):
        ...     y = net(x)
        >>> y.shape
        torch.Size([3, 4, 16, 16])
    """

    def __init__(self, steps: int = 10, lr: float = 1e-3, batch_size: int = 16, seed: int = 0):
        if steps < 0 or lr <= 0 or batch_size < 1:
            raise ValueError("Tent needs steps >= 0, lr > 0 and batch_size >= 1")
        self.steps, self.lr, self.batch_size, self.seed = steps, lr, batch_size, seed
        self.losses: list[float] = []

    @staticmethod
    def norm_parameters(
        model: nn.Module,
    ) -> tuple[list[nn.Parameter], list[torch.utils.hooks.RemovableHandle]]:
        """The affine parameters of all normalisation layers (attaching identity ones where a
        layer has none); returns the parameters and the handles of the attached hooks."""
        params: list[nn.Parameter] = []
        handles = []
        device = next(model.parameters()).device
        for m in model.modules():
            if not isinstance(m, _NORMS):
                continue
            w, b = getattr(m, "weight", None), getattr(m, "bias", None)
            if isinstance(w, nn.Parameter):
                params += [p for p in (w, b) if isinstance(p, nn.Parameter)]
            elif _channels(m) > 0:
                mod = _Modulation(_channels(m), device)
                handles.append(m.register_forward_hook(mod))
                params += [mod.weight, mod.bias]
        return params, handles

    @contextmanager
    def adapted(self, model: nn.Module, x: torch.Tensor) -> Iterator[nn.Module]:
        """Adapt ``model`` to the slices ``x`` (``(N, C, H, W)``); restored on exit."""
        state = copy.deepcopy(model.state_dict())
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        modes = {m: m.training for m in model.modules()}
        for p in model.parameters():
            p.requires_grad_(False)
        params, handles = self.norm_parameters(model)
        try:
            for p in params:
                p.requires_grad_(True)
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()  # normalise with the test volume's statistics
            self.losses = []
            if params and self.steps:
                g = torch.Generator().manual_seed(self.seed)
                opt = torch.optim.Adam(params, lr=self.lr)
                with torch.inference_mode(False), torch.enable_grad():
                    for _ in range(self.steps):
                        idx = torch.randperm(x.shape[0], generator=g)[: self.batch_size]
                        loss = entropy(model(x[idx.to(x.device)].clone()))
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        self.losses.append(float(loss.detach()))
            for p in params:
                p.requires_grad_(False)
            yield model
        finally:
            for h in handles:
                h.remove()
            model.load_state_dict(state)
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])
            for m, training in modes.items():
                m.train(training)


#: Test-time adapters selectable by name (``Segmenter(adaptation=...)``).
ADAPTERS: dict[str, type] = {"tent": Tent}


def build_adapter(name: str | None, **options: Any) -> Tent | None:
    """An adapter by name (``None``/``"none"`` → no adaptation).

    Raises:
        ValueError: Unknown name.
    """
    if name in (None, "", "none"):
        return None
    if name not in ADAPTERS:
        raise ValueError(f"unknown test-time adaptation {name!r}; choose from {sorted(ADAPTERS)}")
    return ADAPTERS[name](**options)
