"""Named parts of the MONAI 2D U-Net: encoder blocks, bottleneck and decoder blocks.

MONAI builds its ``UNet`` recursively: ``Sequential(down, SkipConnection(inner), up)`` where
``inner`` is the same structure one level deeper and the deepest ``inner`` is the bottom layer.
Methods that act on parts of the network (freezing for fine-tuning, feature hooks for DANN,
MixStyle) find them here instead of relying on parameter names.
"""

from __future__ import annotations

from dataclasses import dataclass

from monai.networks.layers.simplelayers import SkipConnection
from torch import nn


@dataclass
class UNetParts:
    """Blocks of a U-Net, from the input side to the output side.

    Attributes:
        encoder: Down-sampling blocks, ``encoder[0]`` sees the image.
        bottleneck: The bottom layer (deepest features).
        decoder: Up-sampling blocks, ``decoder[-1]`` produces the logits.
    """

    encoder: list[nn.Module]
    bottleneck: nn.Module
    decoder: list[nn.Module]


def unet_parts(model: nn.Module) -> UNetParts:
    """Locate the blocks of a MONAI ``UNet`` (as built by :func:`build_model`).

    Raises:
        TypeError: If ``model`` does not have the MONAI U-Net structure.

    Example:
        >>> from cardioseg.models.factory import ModelConfig, build_model
        >>> parts = unet_parts(build_model(ModelConfig(channels=[4, 8, 16], strides=[2, 2])))
        >>> len(parts.encoder), len(parts.decoder)
        (2, 2)
    """
    node = getattr(model, "model", None)
    encoder: list[nn.Module] = []
    decoder: list[nn.Module] = []
    while (
        isinstance(node, nn.Sequential) and len(node) == 3 and isinstance(node[1], SkipConnection)
    ):
        encoder.append(node[0])
        decoder.insert(0, node[2])
        node = node[1].submodule
    if not encoder or node is None:
        raise TypeError("not a MONAI UNet: cannot find its encoder/decoder blocks")
    return UNetParts(encoder, node, decoder)
