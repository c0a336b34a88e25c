"""MobileNetV2 for CIFAR (32x32 inputs), with the key names of the ``mobilenetv2-jpeg`` checkpoint."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (expansion t, output channels c, repeats n, stride of the first repeat s)
CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> project (1x1); residual only when stride is 1.

    Args:
        cin: input channels.
        cout: output channels.
        expansion: hidden = cin * expansion.
        stride: stride of the depthwise conv (1 or 2).
    """

    def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        hidden = cin * expansion
        self.conv1 = nn.Conv2d(cin, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.relu1 = nn.ReLU6(inplace=True)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.relu2 = nn.ReLU6(inplace=True)
        self.conv3 = nn.Conv2d(hidden, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride == 1 and cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        # self.stride is a Python int fixed at construction, so this branch is trace-safe.
        if self.stride == 1:
            out = out + self.shortcut(x)
        return out


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 with a stride-1 stem for 32x32 inputs (2.26 M parameters for 10 classes).

    Args:
        num_classes: classifier outputs.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU6(inplace=True)
        blocks = []
        cin = 32
        for t, c, n, s in CFG:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, t, s if i == 0 else 1))
                cin = c
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(320, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.relu2 = nn.ReLU6(inplace=True)
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))  # (N, 32, 32, 32)
        out = self.layers(out)  # (N, 320, 4, 4)
        out = self.relu2(self.bn2(self.conv2(out)))  # (N, 1280, 4, 4)
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)  # (N, 1280)
        return self.linear(out)


def mobilenetv2_cifar(num_classes: int = 10) -> MobileNetV2Cifar:
    """Build an untrained MobileNetV2-CIFAR.

    Args:
        num_classes: classifier outputs.

    Returns:
        The model.
    """
    return MobileNetV2Cifar(num_classes)
