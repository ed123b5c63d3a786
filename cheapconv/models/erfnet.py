"""ERFNet (Romera et al., "ERFNet: Efficient Residual Factorized ConvNet for Real-time Semantic Segmentation",
T-ITS 2018), the teacher of the Moonshine paper's segmentation study (Section 5.2, Table 4).

Written from the paper's Table 1; its layers are numbered as the paper numbers them (``layers.1`` ..
``layers.23``), so attention-transfer taps can name the paper's layers 7, 12, 16, 19 and 22::

    layer  type                              out channels  resolution (of an H×W input)
    1      downsampler                       16            H/2
    2      downsampler                       64            H/4
    3-7    5 × non-bottleneck-1D             64            H/4
    8      downsampler                       128           H/8
    9-16   8 × non-bottleneck-1D, dilated    128           H/8   (dilations 2, 4, 8, 16, 2, 4, 8, 16)
    17     deconvolution (upsampling)        64            H/4
    18-19  2 × non-bottleneck-1D             64            H/4
    20     deconvolution (upsampling)        16            H/2
    21-22  2 × non-bottleneck-1D             16            H/2
    23     deconvolution (2×2, output)       C             H

* downsampler: concat(conv 3×3 stride 2 to C_out − C_in channels, max-pool 2×2 of the input) → BN → ReLU;
* non-bottleneck-1D: 3×1 → ReLU → 1×3 → BN → ReLU → 3×1 (dilated) → ReLU → 1×3 (dilated) → BN → dropout,
  added to the input, → ReLU (dropout 0.03 in layers 3-7, 0.3 in layers 9-16, none in the decoder);
* deconvolution: transposed conv 3×3 stride 2 (padding 1, output padding 1) → BN → ReLU; the output layer is a
  2×2 transposed conv stride 2;
* the encoder's own output conv (1×1, 128 → C), which ERFNet's encoder-first training reads on layer 16's
  output, is :attr:`encoder_head` (a :class:`~cheapconv.blocks.SideHead`: forward never computes it; inside
  :func:`~cheapconv.blocks.side_outputs` it yields ``"encoder"`` logits at H/8).

Every conv has a bias and BatchNorm's eps is 1e-3, as in the authors' code. With 20 classes the network has
2,073,428 parameters in the paper convention (BN running statistics counted; both output convs included), the
figure of Moonshine's Table 4. The input's height and width must be multiples of 8.
"""

from __future__ import annotations

import torch
from torch import nn

from ..blocks import SideHead

__all__ = ["ERFNet"]

_EPS = 1e-3   # the authors' BatchNorm eps


class Downsampler(nn.Module):
    """concat(conv 3×3 stride 2, max-pool 2×2) → BN → ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out - c_in, 3, stride=2, padding=1, bias=True)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(c_out, eps=_EPS)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class NonBottleneck1D(nn.Module):
    """Two factorised 3×3 convs (3×1 then 1×3; the second pair dilated) on a residual branch."""

    def __init__(self, channels: int, dropout: float, dilation: int):
        super().__init__()
        c, d = channels, dilation
        self.conv3x1_1 = nn.Conv2d(c, c, (3, 1), padding=(1, 0), bias=True)
        self.relu1 = nn.ReLU()
        self.conv1x3_1 = nn.Conv2d(c, c, (1, 3), padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(c, eps=_EPS)
        self.relu2 = nn.ReLU()
        self.conv3x1_2 = nn.Conv2d(c, c, (3, 1), padding=(d, 0), dilation=(d, 1), bias=True)
        self.relu3 = nn.ReLU()
        self.conv1x3_2 = nn.Conv2d(c, c, (1, 3), padding=(0, d), dilation=(1, d), bias=True)
        self.bn2 = nn.BatchNorm2d(c, eps=_EPS)
        # a module either way, so the dropout follows the train/eval flag in a traced student
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu2(self.bn1(self.conv1x3_1(self.relu1(self.conv3x1_1(x)))))
        y = self.dropout(self.bn2(self.conv1x3_2(self.relu3(self.conv3x1_2(y)))))
        return self.relu(y + x)


class Upsampler(nn.Module):
    """Transposed conv 3×3 stride 2 → BN → ReLU (doubles the resolution)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=True)
        self.bn = nn.BatchNorm2d(c_out, eps=_EPS)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def _layers(num_classes: int, in_chans: int) -> list[nn.Module]:
    layers: list[nn.Module] = [Downsampler(in_chans, 16), Downsampler(16, 64)]
    layers += [NonBottleneck1D(64, 0.03, 1) for _ in range(5)]
    layers.append(Downsampler(64, 128))
    layers += [NonBottleneck1D(128, 0.3, d) for d in (2, 4, 8, 16, 2, 4, 8, 16)]
    layers += [Upsampler(128, 64), NonBottleneck1D(64, 0, 1), NonBottleneck1D(64, 0, 1)]
    layers += [Upsampler(64, 16), NonBottleneck1D(16, 0, 1), NonBottleneck1D(16, 0, 1)]
    layers.append(nn.ConvTranspose2d(16, num_classes, 2, stride=2, bias=True))
    return layers


class ERFNet(nn.Module):
    """ERFNet for ``num_classes`` classes; see the module docstring. Returns logits N×C×H×W.

    ``layers`` is a ModuleDict keyed ``"1"`` .. ``"23"`` (the paper's numbering): ``model.layers["16"]`` is the
    encoder's last block. ``encoder_layers`` names layers 1-16 and :attr:`encoder_head` (what encoder-first
    training trains).

    >>> m = ERFNet(num_classes=20)
    >>> m(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 20, 64, 64])
    """

    #: the paper's attention-transfer layers: encoder training (7, 12, 16), decoder training adds 19 and 22
    ENCODER_TAPS = ("layers.7", "layers.12", "layers.16")
    DECODER_TAPS = ("layers.7", "layers.12", "layers.16", "layers.19", "layers.22")

    def __init__(self, num_classes: int = 20, in_chans: int = 3):
        super().__init__()
        if not 1 <= in_chans < 16:
            raise ValueError(f"ERFNet's first downsampler takes 1 to 15 input channels, got in_chans={in_chans}")
        self.num_classes = num_classes
        self.layers = nn.ModuleDict({str(i): m for i, m in enumerate(_layers(num_classes, in_chans), start=1)})
        self.encoder_head = SideHead("encoder", 128, num_classes)
        # MACs and taps are worked out at this size by default (fashion-mnist-seg's canvas, 8× downsampled to
        # 8×8); the network is fully convolutional and the paper's Cityscapes size is 512×1024
        self.default_input_size = (in_chans, 64, 64)
        self.encoder_layers = tuple(f"layers.{i}" for i in range(1, 17)) + ("encoder_head",)
        # the paper keeps the downsamplers' convs and replaces the factorised pairs only (Table 4's count): default
        # policy rules leave these as they leave a stem
        self.cheapconv_stems = ("layers.1.conv", "layers.2.conv", "layers.8.conv")
        self.feature_info = [dict(module=f"layers.{i}", num_chs=c, reduction=r) for i, c, r in (
            (7, 64, 4), (12, 128, 8), (16, 128, 8), (19, 64, 4), (22, 16, 2))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 17):
            x = self.layers[str(i)](x)
        x = self.encoder_head(x)
        for i in range(17, 24):
            x = self.layers[str(i)](x)
        return x
