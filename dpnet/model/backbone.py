"""The frozen, dilated ResNet-50 trunk (conv1..layer3) and its two features.

* ``features``: CANet-style ``concat(layer2, layer3) -> 1x1 conv -> ReLU -> dropout``, C channels
  (trainable reduction on top of the frozen trunk).
* ``cos_features``: layer3's output *before its last ReLU* (1024 channels), which keeps the
  negative part for the CCM's cosine similarity (paper section 4.2).

Output stride 8: layer2 strides, layer3 is dilated (``replace_stride_with_dilation=[False, True,
True]``), so both taps share the feature size h x w (41 x 41 at 321 x 321).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, ResNet

from dpnet_runtime.contract import COS_CHANNELS
from dpnet_runtime.errors import ModelFileError

__all__ = [
    "Backbone",
    "BackboneFeatures",
    "find_hub_resnet50",
    "load_resnet50_state_dict",
]

logger = logging.getLogger(__name__)

_LAYER2_CHANNELS = 512


class BackboneFeatures(NamedTuple):
    """Features of N images: ``features [N, C, h, w]``, ``cos_features [N, 1024, h, w]``."""

    features: Tensor
    cos_features: Tensor


def _bottleneck_pre_relu(block: Bottleneck, x: Tensor) -> Tensor:
    """A torchvision Bottleneck's output before its final ReLU."""
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    out = block.relu(block.bn2(block.conv2(out)))
    return block.bn3(block.conv3(out)) + identity


class Backbone(nn.Module):
    """Frozen dilated ResNet trunk plus the trainable 1x1 reduction.

    Args:
        blocks: bottlenecks in layer1..layer3; ``(3, 4, 6)`` is ResNet-50.
        out_channels: C of the reduced feature.
        dropout: dropout probability after the reduction (CANet uses 0.5).
    """

    def __init__(self, blocks: tuple[int, int, int], out_channels: int, dropout: float) -> None:
        super().__init__()
        # layer4 is built with one block and dropped: torchvision's ResNet wants four stages.
        resnet = ResNet(Bottleneck, [*blocks, 1], replace_stride_with_dilation=[False, True, True])
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        for parameter in self.trunk_parameters():
            parameter.requires_grad_(False)
        self.reduce = nn.Sequential(
            nn.Conv2d(_LAYER2_CHANNELS + COS_CHANNELS, out_channels, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        )

    def trunk_parameters(self) -> list[nn.Parameter]:
        """Parameters of the frozen ResNet stages (everything but ``reduce``)."""
        return [p for name, p in self.named_parameters() if not name.startswith("reduce.")]

    def train(self, mode: bool = True) -> Backbone:
        """Train the reduction only: the trunk stays in eval mode so BatchNorm never drifts."""
        super().train(mode)
        for module in (self.conv1, self.bn1, self.layer1, self.layer2, self.layer3):
            module.eval()
        return self

    def forward(self, images: Tensor) -> BackboneFeatures:
        """Args: ``images [N, 3, H, W]`` normalised RGB. Returns :class:`BackboneFeatures`."""
        with torch.no_grad():
            x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
            layer2 = self.layer2(self.layer1(x))
            x = self.layer3[:-1](layer2)
            cos_features = _bottleneck_pre_relu(self.layer3[-1], x)
            layer3 = torch.relu(cos_features)
        features = self.reduce(torch.cat([layer2, layer3], dim=1))
        return BackboneFeatures(features, cos_features)

    def load_trunk(self, state_dict: dict[str, Tensor], source: str) -> None:
        """Load torchvision ResNet-50 weights into the trunk (layer4 and fc are ignored).

        A shallower trunk (``tiny``) takes the first blocks of each stage.

        Raises:
            ModelFileError: the file holds no ResNet weights or shapes do not match.
        """
        trunk = {k: v for k, v in state_dict.items() if not k.startswith(("layer4.", "fc."))}
        own = {k for k in self.state_dict() if not k.startswith("reduce.")}
        missing = sorted(own - set(trunk))
        if missing:
            raise ModelFileError(
                f"{source} is not a torchvision ResNet-50 state dict: missing {missing[:3]} "
                f"({len(missing)} keys); pass resnet50-*.pth from torchvision"
            )
        try:
            self.load_state_dict({k: trunk[k] for k in own}, strict=False)
        except RuntimeError as exc:
            raise ModelFileError(f"{source} does not fit the ResNet-50 trunk: {exc}") from exc
        logger.info("loaded ImageNet trunk weights from %s", source)


def find_hub_resnet50() -> Path | None:
    """A torchvision ``resnet50-*.pth`` in the torch hub cache, if one is there."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(folder.glob("resnet50-*.pth"))
    return found[-1] if found else None


def load_resnet50_state_dict(path: Path | None) -> tuple[dict[str, Tensor], str] | None:
    """Read ResNet-50 ImageNet weights from ``path`` or, if ``None``, the torch hub cache.

    Returns ``None`` (after a loud warning) when no weights exist: the trunk stays random.

    Raises:
        ModelFileError: ``path`` is missing or not a readable state dict.
    """
    source = path if path is not None else find_hub_resnet50()
    if source is None:
        warnings.warn(
            "no ResNet-50 ImageNet weights given (--backbone-weights) or found in the torch hub "
            "cache: the frozen backbone is RANDOM; results on real data will be poor",
            stacklevel=2,
        )
        return None
    if not source.is_file():
        raise ModelFileError(f"backbone weights {source} do not exist")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"cannot read backbone weights {source}: {exc}") from exc
    if not isinstance(state, dict):
        raise ModelFileError(f"{source} is not a state dict (got {type(state).__name__})")
    return state, str(source)
