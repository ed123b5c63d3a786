"""Pre-activation Wide ResNets WRN-d-k for 32×32 input, exactly as ``moonshine.md`` section 4 defines them.

Layout (names matter: policies select layers by them)::

    conv1                        stem Conv3x3 3→16, no BN after it
    block1, block2, block3       stages of n = (d-4)/6 WideBasic blocks, widths 16k, 32k, 64k, strides 1, 2, 2
      .<i>.bn1 relu1 conv1       BN→ReLU→Conv3x3(C_in→C_out, stride)
      .<i>.bn2 relu2 conv2       BN→ReLU→Conv3x3(C_out→C_out)
      .<i>.shortcut              Conv1x1(stride) on the pre-activated input where C_in ≠ C_out
    bn, relu, pool, fc           head: BN→ReLU→global average pool→Linear (with bias)

No conv has a bias. The stage outputs ``block1..3`` are the attention-transfer taps (``feature_info``).
"""

from __future__ import annotations

import torch
from torch import nn


class WideBasic(nn.Module):
    """One pre-activation block. The shortcut reads the pre-activated input only when it is a conv."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()  # not in-place: the identity shortcut still needs the raw input
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if in_channels != out_channels or stride != 1:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu1(self.bn1(x))
        y = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(o)))))
        if self.shortcut is not None:
            return y + self.shortcut(o)
        return y + x


class WideResNet(nn.Module):
    """WRN-depth-width for 32×32 images. ``depth`` must be 6n+4.

    >>> m = WideResNet(40, 2)
    >>> m(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 10])
    """

    default_input_size = (3, 32, 32)

    def __init__(self, depth: int, width: int, num_classes: int = 10, in_chans: int = 3, dropout: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        if width < 1:
            raise ValueError(f"WRN width must be at least 1, got {width}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.depth, self.width, self.num_classes = depth, width, num_classes
        self.default_input_size = (in_chans, 32, 32)
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        for stage, stride in enumerate((1, 2, 2), start=1):
            blocks = [WideBasic(widths[stage - 1] if i == 0 else widths[stage], widths[stage],
                                stride if i == 0 else 1, dropout) for i in range(n)]
            self.add_module(f"block{stage}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        # Same description of the stage outputs as timm models carry; cheapconv's taps read it.
        self.feature_info = [
            dict(module=f"block{s}", num_chs=widths[s], reduction=r) for s, r in ((1, 1), (2, 2), (3, 4))
        ]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.block3(self.block2(self.block1(x)))
        x = self.pool(self.relu(self.bn(x)))
        return self.fc(torch.flatten(x, 1))
