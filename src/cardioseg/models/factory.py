"""2D U-Net family built from MONAI networks."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ModelConfig:
    """Plain values describing the network.

    Attributes:
        channels: Feature channels per resolution level.
        strides: Down-sampling stride between levels (``len(channels) - 1`` entries).
        num_res_units: Residual units per block (0 = plain convolutions).
        norm: ``instance`` or ``batch`` normalisation.
        dropout: Dropout probability.
        in_channels, out_channels: Input channels and number of classes (incl. background).
        mixstyle_layers: Encoder blocks (0 = the first) whose outputs get MixStyle during
            training (feature-statistics mixing; empty = off).
        mixstyle_p, mixstyle_alpha: MixStyle probability and Beta parameter.
    """

    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    strides: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    num_res_units: int = 1
    norm: str = "instance"
    dropout: float = 0.0
    in_channels: int = 1
    out_channels: int = 4
    mixstyle_layers: list[int] = field(default_factory=list)
    mixstyle_p: float = 0.5
    mixstyle_alpha: float = 0.1

    def __post_init__(self) -> None:
        if len(self.channels) < 2:
            raise ValueError("channels needs at least two levels")
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"strides must have {len(self.channels) - 1} entries, got {len(self.strides)}"
            )
        for name in ("channels", "strides"):
            if any(v < 1 for v in getattr(self, name)):
                raise ValueError(f"'model.{name}' must be positive, got {getattr(self, name)}")
        if self.norm not in ("instance", "batch"):
            raise ValueError(f"norm must be 'instance' or 'batch', got {self.norm!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.out_channels < 2 or self.in_channels < 1:
            raise ValueError("need in_channels >= 1 and out_channels >= 2")
        bad = [i for i in self.mixstyle_layers if not 0 <= i < len(self.strides)]
        if bad:
            raise ValueError(
                f"mixstyle_layers must be encoder block indices in 0..{len(self.strides) - 1}"
            )

    @property
    def stride_product(self) -> int:
        p = 1
        for s in self.strides:
            p *= s
        return p


def build_model(config: ModelConfig | None = None) -> torch.nn.Module:
    """Build the segmentation network.

    Example:
        >>> net = build_model(ModelConfig(channels=[4, 8, 16], strides=[2, 2]))
        >>> net(torch.zeros(1, 1, 32, 32)).shape
        torch.Size([1, 4, 32, 32])
    """
    from monai.networks.nets import UNet  # imported here: loading MONAI takes ~2 s

    c = config or ModelConfig()
    net = UNet(
        spatial_dims=2,
        in_channels=c.in_channels,
        out_channels=c.out_channels,
        channels=tuple(c.channels),
        strides=tuple(c.strides),
        num_res_units=c.num_res_units,
        norm=c.norm.upper(),
        dropout=c.dropout,
    )
    if c.mixstyle_layers:
        from cardioseg.models.mixstyle import attach_mixstyle
        from cardioseg.models.unet_parts import unet_parts

        encoder = unet_parts(net).encoder
        attach_mixstyle(
            [encoder[i] for i in sorted(set(c.mixstyle_layers))], c.mixstyle_p, c.mixstyle_alpha
        )
    return net
