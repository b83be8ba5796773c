"""Models used by the course: a small CNN, CIFAR-style ResNet-18, WideResNet, and a small U-Net.

All use BatchNorm (so SAM's perturbed pass should run under ``frozen_bn_stats``) and take the number
of input channels and classes as arguments.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["SmallCNN", "ResNet18", "WideResNet", "UNet", "build_model", "MODELS", "count_parameters"]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_bn(c_in, c_out, stride=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks (two with 2x max-pooling), global average pooling, a linear head.

    With ``width=32`` it has about 95k parameters: the course's default model on Fashion-MNIST.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(in_channels, w), nn.MaxPool2d(2),
            _conv_bn(w, 2 * w), nn.MaxPool2d(2),
            _conv_bn(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool). ``width=64`` is the standard 11M-parameter net."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 64):
        super().__init__()
        self.stem = _conv_bn(in_channels, width)
        layers, c = [], width
        for i, mult in enumerate((1, 2, 4, 8)):
            stride = 1 if i == 0 else 2
            layers += [_BasicBlock(c, width * mult, stride), _BasicBlock(width * mult, width * mult, 1)]
            c = width * mult
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class _WideBlock(nn.Module):
    """Pre-activation wide block (Zagoruyko & Komodakis, 2016)."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WideResNet-depth-k, e.g. ``WideResNet(depth=28, widen=10)`` (WRN-28-10) or depth 16, widen 8."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, depth: int = 16, widen: int = 4):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"Invalid depth: {depth}. WideResNet depth must be 6n + 4 (16, 22, 28, 40).")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks, c = [], widths[0]
        for i, w in enumerate(widths[1:]):
            for j in range(n):
                blocks.append(_WideBlock(c, w, (1 if i == 0 else 2) if j == 0 else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class UNet(nn.Module):
    """A small U-Net (Ronneberger et al., 2015) for per-pixel classification; input sides divisible by 4."""

    def __init__(self, in_channels: int = 1, num_classes: int = 11, width: int = 16):
        super().__init__()
        w = width
        self.down1 = nn.Sequential(_conv_bn(in_channels, w), _conv_bn(w, w))
        self.down2 = nn.Sequential(_conv_bn(w, 2 * w), _conv_bn(2 * w, 2 * w))
        self.bottom = nn.Sequential(_conv_bn(2 * w, 4 * w), _conv_bn(4 * w, 4 * w))
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2)
        self.dec2 = nn.Sequential(_conv_bn(4 * w, 2 * w), _conv_bn(2 * w, 2 * w))
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, 2)
        self.dec1 = nn.Sequential(_conv_bn(2 * w, w), _conv_bn(w, w))
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x):
        d1 = self.down1(x)
        d2 = self.down2(F.max_pool2d(d1, 2))
        b = self.bottom(F.max_pool2d(d2, 2))
        u2 = self.dec2(torch.cat([self.up2(b), d2], 1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], 1))
        return self.head(u1)


MODELS = {"small_cnn": SmallCNN, "resnet18": ResNet18, "wrn": WideResNet, "unet": UNet}


def build_model(name: str, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    """Build a model by name (``small_cnn``, ``resnet18``, ``wrn``, ``unet``)."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Choose one of: {', '.join(MODELS)}.")
    return MODELS[name](in_channels=in_channels, num_classes=num_classes, **kwargs)
