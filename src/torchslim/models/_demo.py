"""The built-in demo model: a small residual CNN for 28x28 (or any size) single-channel images."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchslim.models._zoo import register_zoo_model

__all__ = ["BasicBlock", "DemoResNet"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual add; a 1x1 projection when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class DemoResNet(nn.Module):
    """A ResNet for small images: a 3x3 stem, stages of basic blocks, global pooling, a classifier.

    Args:
        in_channels: Image channels (1 for MNIST-style digits).
        num_classes: Outputs of the classifier.
        widths: Channels of each stage; every stage after the first halves the resolution.
        depths: Basic blocks per stage.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: tuple[int, ...] = (16, 32, 64),
        depths: tuple[int, ...] = (2, 2, 2),
    ) -> None:
        super().__init__()
        if len(widths) != len(depths) or not widths:
            raise ValueError(f"widths {widths} and depths {depths} must be non-empty, same length")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        channels = widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _digit_images(batch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch)
    return torch.rand(batch, 1, 28, 28, generator=generator)


@register_zoo_model(
    "demo_resnet",
    tags=["conv", "bn", "residual", "linear"],
    inputs=_digit_images,
    description="the demo model: a small residual CNN for 28x28 digits",
)
def demo_resnet(**kwargs: Any) -> DemoResNet:
    """The demo model: a small residual CNN for 28x28 digits."""
    return DemoResNet(**kwargs)
