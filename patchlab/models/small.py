"""Small classifiers that train on a CPU in under a minute: the embedded world's zoo.

Registered in :mod:`patchlab.models.registry`, so model cards with
``"framework": "patchlab"`` build them by name:

* ``lenet``: the LeNet-5-style network of seed 004 (two 5x5 convolutions with
  instance normalisation and max pooling, three fully connected layers), taking
  RGB (seed 004 used grey) at 32 x 32.
* ``small_resnet``: a ResNet (He et al., CVPR 2016) with BatchNorm, projection
  shortcuts (option B, 1x1 convolution) where the shape changes, a configurable
  number of blocks and widths per stage, global average pooling.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model


class LeNet(nn.Module):
    """LeNet-5 as in seed 004: conv5x5(32)-IN-ReLU-pool, conv5x5(64)-IN-ReLU-pool,
    FC 256-128-classes.

    Args:
        num_classes: outputs.
        in_chans: input channels (3: RGB).
        input_size: side of the (square) input; sets the first FC layer's size.
        affine: learnable instance-norm scale and shift (seed 004's ``affine``).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, input_size: int = 32, affine: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 32, 5)
        self.in1 = nn.InstanceNorm2d(32, affine=affine)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.in2 = nn.InstanceNorm2d(64, affine=affine)
        side = ((input_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"LeNet needs inputs of at least 16 x 16, got {input_size}")
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(64 * side * side, 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(F.relu(self.in1(self.conv1(x))), 2)
        out = F.max_pool2d(F.relu(self.in2(self.conv2(out))), 2)
        out = F.relu(self.fc1(self.flatten(out)))
        out = F.relu(self.fc2(out))
        return self.fc3(out)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A small ResNet: 3x3 stem, stages of BasicBlocks (first block of each later
    stage strides by 2), global average pooling, linear classifier.

    Args:
        num_classes: outputs.
        widths: channels per stage.
        blocks: BasicBlocks per stage (same length as ``widths``).
        in_chans: input channels.
        stem_stride: stride of the stem convolution; at 2 a 64 x 64 input costs
            what 32 x 32 does at stride 1, while the stem still sees every pixel.
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = (16, 32, 64),
        blocks: Sequence[int] = (1, 1, 1),
        in_chans: int = 3,
        stem_stride: int = 1,
    ):
        super().__init__()
        widths, blocks = list(widths), list(blocks)
        if not widths or len(widths) != len(blocks) or min(blocks) < 1:
            raise ValueError(f"widths and blocks must be equally long and blocks >= 1, got {widths} / {blocks}")
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = []
            for j in range(n):
                layers.append(_Block(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return self.linear(self.flatten(self.pool(self.layers(out))))


@register_model("lenet")
def lenet(num_classes: int = 10, in_chans: int = 3, input_size: int = 32, affine: bool = True) -> LeNet:
    """LeNet-5 of seed 004 (RGB input)."""
    return LeNet(num_classes=num_classes, in_chans=in_chans, input_size=input_size, affine=affine)


@register_model("small_resnet")
def small_resnet(
    num_classes: int = 10,
    widths: Sequence[int] = (16, 32, 64),
    blocks: Sequence[int] = (1, 1, 1),
    in_chans: int = 3,
    stem_stride: int = 1,
) -> SmallResNet:
    """A small ResNet (He et al. 2016) with projection shortcuts."""
    return SmallResNet(
        num_classes=num_classes, widths=widths, blocks=blocks, in_chans=in_chans, stem_stride=stem_stride
    )
