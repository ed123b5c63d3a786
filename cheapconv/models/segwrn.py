"""A small segmentation network: the built-in pre-activation WRN as encoder under a two-step decoder.

``segwrn_<depth>_<width>`` (e.g. ``segwrn_10_1``) is small enough to train in minutes on a laptop CPU on
``fashion-mnist-seg``, and built from the same :class:`~cheapconv.models.wrn.WideBasic` blocks as the
classifier WRN, so every cheap block (``G(g)``, ``B(b)``, ...) applies to its encoder exactly as to a WRN.

Structure (S = input size, which must be a multiple of 4)::

    stem   conv3x3 C_in -> 16                                    S
    block1 n WideBasic blocks, 16·w channels                     S       (encoder stage, tap)
    block2 n WideBasic blocks, 32·w channels, first stride 2     S/2     (encoder stage, tap)
    block3 n WideBasic blocks, 64·w channels, first stride 2     S/4     (encoder stage, tap)
    bn, relu                                                     S/4
    up2    upsample ×2, concat block2 -> conv3x3 -> BN -> ReLU   S/2     (decoder stage, tap)
    up1    upsample ×2, concat block1 -> conv3x3 -> BN -> ReLU   S       (decoder stage, tap)
    classifier conv1x1 -> num_classes (with bias)                S

a U-Net-style decoder (skip connections by concatenation), bilinear upsampling. With ``aux_loss=True`` an
auxiliary FCN head on ``block2`` is added and the model returns ``{"out": ..., "aux": ...}`` as torchvision's
segmentation models do (the auxiliary logits upsampled to S); otherwise it returns the logits tensor
B×num_classes×S×S. ``feature_info`` lists the encoder and decoder stages, which are cheapconv's
attention-transfer taps (the paper's "AT on several encoder and decoder feature maps", ``moonshine.md`` §6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .wrn import WideBasic

__all__ = ["SegWRN"]


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SegWRN(nn.Module):
    """WRN-``depth``-``width`` encoder with a U-Net-style decoder; see the module docstring.

    >>> m = SegWRN(10, 1, num_classes=11)
    >>> m(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 11, 32, 32])
    """

    def __init__(self, depth: int, width: int, num_classes: int = 11, in_chans: int = 3, aux_loss: bool = False):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        if width < 1:
            raise ValueError(f"WRN width must be at least 1, got {width}")
        n = (depth - 4) // 6
        w = [16, 16 * width, 32 * width, 64 * width]
        self.depth, self.width, self.num_classes, self.aux_loss = depth, width, num_classes, aux_loss
        # the size MACs and taps are worked out at by default (fashion-mnist-seg's default canvas); the model is
        # fully convolutional and takes any multiple of 4, and segmentation data keeps its own size
        self.default_input_size = (in_chans, 64, 64)
        self.stem = nn.Conv2d(in_chans, w[0], 3, padding=1, bias=False)
        for stage, stride in enumerate((1, 2, 2), start=1):
            blocks = [WideBasic(w[stage - 1] if i == 0 else w[stage], w[stage], stride if i == 0 else 1)
                      for i in range(n)]
            self.add_module(f"block{stage}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(w[3])
        self.relu = nn.ReLU()
        self.up2 = _conv_bn_relu(w[3] + w[2], w[2])
        self.up1 = _conv_bn_relu(w[2] + w[1], w[1])
        self.classifier = nn.Conv2d(w[1], num_classes, 1)
        self.aux_classifier = (nn.Sequential(_conv_bn_relu(w[2], w[2]), nn.Conv2d(w[2], num_classes, 1))
                               if aux_loss else None)
        self.feature_info = [dict(module=name, num_chs=c, reduction=r) for name, c, r in (
            ("block1", w[1], 1), ("block2", w[2], 2), ("block3", w[3], 4), ("up2", w[2], 2), ("up1", w[1], 1))]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        f1 = self.block1(self.stem(x))
        f2 = self.block2(f1)
        f3 = self.relu(self.bn(self.block3(f2)))
        d2 = self.up2(torch.cat([_up(f3), f2], dim=1))
        d1 = self.up1(torch.cat([_up(d2), f1], dim=1))
        out = self.classifier(d1)
        if self.aux_classifier is None:
            return out
        return {"out": out, "aux": _up(self.aux_classifier(f2))}


def _up(x: torch.Tensor) -> torch.Tensor:
    # a fixed factor rather than a size read from another tensor: the traced graph then holds no shape
    # arithmetic, which the safe graph format does not need to allow
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
