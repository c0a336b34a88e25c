"""CIFAR ResNets: ResNet-20/32 with the parameter-free "option A" shortcut, and ResNet-18-CIFAR.

Module and key names follow the checkpoints described in ``shared/models/cifar10/README.md`` so that
``load_state_dict(strict=True)`` succeeds. All forwards are free of data-dependent control flow, so
``torch.fx.symbolic_trace`` works on every model here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the channel dimension (no parameters).

    Args:
        pad: channels of zeros added on each side of the channel dimension.
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, H, W) -> (N, C + 2 * pad, H / 2, W / 2)
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlockA(nn.Module):
    """ResNet basic block with an option-A shortcut (ResNet-20/32 for CIFAR)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = ShortcutA(planes // 4)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetCifarA(nn.Module):
    """ResNet of depth 6n+2 for 32x32 inputs (16/32/64 channels, option-A shortcuts).

    Args:
        num_blocks: blocks per stage (n): 3 for ResNet-20, 5 for ResNet-32.
        num_classes: classifier outputs.
    """

    def __init__(self, num_blocks: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.in_planes = 16
        self.layer1 = self._make_layer(16, num_blocks, 1)
        self.layer2 = self._make_layer(32, num_blocks, 2)
        self.layer3 = self._make_layer(64, num_blocks, 2)
        self.linear = nn.Linear(64, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (num_blocks - 1):
            blocks.append(BasicBlockA(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # (N, 16, 32, 32)
        out = self.layer3(self.layer2(self.layer1(out)))  # (N, 64, 8, 8)
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)  # (N, 64)
        return self.linear(out)


class BasicBlock(nn.Module):
    """ResNet-18 basic block with a 1x1 conv + BN projection shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet18Cifar(nn.Module):
    """ResNet-18 for 32x32 inputs: 3x3 stem, no max-pool, 64/128/256/512 channels.

    Args:
        num_classes: classifier outputs.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.in_planes = 64
        self.layer1 = self._make_layer(64, 1)
        self.layer2 = self._make_layer(128, 2)
        self.layer3 = self._make_layer(256, 2)
        self.layer4 = self._make_layer(512, 2)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(self.in_planes, planes, stride), BasicBlock(planes, planes, 1)]
        self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # (N, 64, 32, 32)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))  # (N, 512, 4, 4)
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)  # (N, 512)
        return self.linear(out)


def resnet20(num_classes: int = 10) -> ResNetCifarA:
    """Build an untrained ResNet-20 (option A) for CIFAR.

    Args:
        num_classes: classifier outputs.

    Returns:
        The model.
    """
    return ResNetCifarA(3, num_classes)


def resnet32(num_classes: int = 10) -> ResNetCifarA:
    """Build an untrained ResNet-32 (option A) for CIFAR.

    Args:
        num_classes: classifier outputs.

    Returns:
        The model.
    """
    return ResNetCifarA(5, num_classes)


def resnet18_cifar(num_classes: int = 10) -> ResNet18Cifar:
    """Build an untrained ResNet-18-CIFAR.

    Args:
        num_classes: classifier outputs.

    Returns:
        The model.
    """
    return ResNet18Cifar(num_classes)
