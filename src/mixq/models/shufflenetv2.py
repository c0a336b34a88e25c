"""ShuffleNetV2 for CIFAR (32x32 inputs) in torchvision's module layout and key names."""

from __future__ import annotations

import torch
from torch import nn


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups (shape-based, so fx-traceable).

    Args:
        x: (N, C, H, W) tensor, C divisible by ``groups``.
        groups: number of groups.

    Returns:
        The (N, C, H, W) tensor with channels shuffled.
    """
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)  # (N, g, C/g, H, W)
    x = torch.transpose(x, 1, 2).contiguous()  # (N, C/g, g, H, W)
    return x.view(n, c, h, w)


def _depthwise(ch: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(ch, ch, 3, stride=stride, padding=1, groups=ch, bias=False)


class InvertedResidual(nn.Module):
    """ShuffleNetV2 unit: split (stride 1) or duplicate (stride 2), two branches, concat, shuffle.

    Args:
        inp: input channels.
        oup: output channels.
        stride: 1 or 2.
    """

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                _depthwise(inp, stride),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch, 1, bias=False),
                nn.BatchNorm2d(branch),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
            _depthwise(branch, stride),
            nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # self.stride is a Python int fixed at construction, so this branch is trace-safe.
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2Cifar(nn.Module):
    """ShuffleNetV2 with a 3x3 stride-1 stem and no max-pool, for 32x32 inputs.

    Args:
        stages_repeats: units per stage (stage2..stage4).
        stages_out_channels: channels of conv1, stage2..stage4, conv5.
        num_classes: classifier outputs.
    """

    def __init__(
        self,
        stages_repeats: tuple[int, int, int] = (4, 8, 4),
        stages_out_channels: tuple[int, int, int, int, int] = (24, 48, 96, 192, 1024),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        cin = stages_out_channels[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, cin, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
        )
        stages = []
        for repeats, cout in zip(stages_repeats, stages_out_channels[1:4], strict=True):
            units = [InvertedResidual(cin, cout, 2)]
            units += [InvertedResidual(cout, cout, 1) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.stage2, self.stage3, self.stage4 = stages
        cout = stages_out_channels[-1]
        self.conv5 = nn.Sequential(
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(cout, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (N, 24, 32, 32)
        x = self.stage4(self.stage3(self.stage2(x)))  # (N, 192, 4, 4)
        x = self.conv5(x)  # (N, 1024, 4, 4)
        x = x.mean([2, 3])  # (N, 1024)
        return self.fc(x)


def shufflenetv2_x0_5_cifar(num_classes: int = 10) -> ShuffleNetV2Cifar:
    """Build an untrained ShuffleNetV2 x0.5 for CIFAR.

    Args:
        num_classes: classifier outputs.

    Returns:
        The model.
    """
    return ShuffleNetV2Cifar((4, 8, 4), (24, 48, 96, 192, 1024), num_classes)
