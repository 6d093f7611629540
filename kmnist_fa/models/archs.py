"""The built-in architectures: the report's LeNet5 / AlexNet5 / AlexNet7, a fast VGG-style net and fastai's xresnet.

Each is an `nn.Sequential(body, head)`, registered by name in `registry` (which imports
this module only when a model is built).
"""
from __future__ import annotations

import torch
from fastai.torch_core import params
from fastai.vision.models.xresnet import xresnet18
from torch import nn

from ..core.errors import OptionError


def splitter(model: nn.Module) -> list:
    """Parameter groups [body, head] for fastai's freeze and discriminative LRs."""
    return [params(model[0]), params(model[1])]


def conv(c_in: int, c_out: int, k: int, pad: int = 0, bn: bool = False) -> list[nn.Module]:
    # Batch norm after the activation, as in the report's notebooks.
    return [nn.Conv2d(c_in, c_out, k, padding=pad), nn.ReLU(inplace=True)] + ([nn.BatchNorm2d(c_out)] if bn else [])


def classifier(sizes: list[int], dropout: float) -> nn.Sequential:
    """Flatten -> FC layers with ReLU (and dropout before each hidden FC's successor)."""
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def lenet5(n_classes: int = 10, bn: bool = False, dropout: float = 0.0) -> nn.Sequential:
    """LeNet-5 (LeCun 1998) with ReLU and max-pooling, as in the report."""
    body = nn.Sequential(*conv(1, 6, 5, 2, bn), nn.MaxPool2d(2), *conv(6, 16, 5, 0, bn), nn.MaxPool2d(2))
    return nn.Sequential(body, classifier([400, 120, 84, n_classes], dropout))


def alexnet5(n_classes: int = 10, bn: bool = True, dropout: float = 0.5) -> nn.Sequential:
    """Reduced AlexNet with 5 convs; BN after the first two (the report's best row)."""
    body = nn.Sequential(
        *conv(1, 24, 4, 1, bn), *conv(24, 64, 5, 2, bn), nn.MaxPool2d(3, 2),
        *conv(64, 96, 5, 2), *conv(96, 96, 3, 1), *conv(96, 64, 3, 1), nn.MaxPool2d(3, 2),
    )
    return nn.Sequential(body, classifier([2304, 256, 256, n_classes], dropout))


def alexnet7(n_classes: int = 10, bn: bool = False, dropout: float = 0.5) -> nn.Sequential:
    """Reduced AlexNet with 7 convs; `bn` adds BN after every conv."""
    body = nn.Sequential(
        *conv(1, 24, 4, 1, bn), *conv(24, 64, 5, 2, bn), *conv(64, 64, 5, 2, bn), *conv(64, 96, 4, 0, bn),
        nn.MaxPool2d(4, 2, padding=2),
        *conv(96, 96, 5, 2, bn), *conv(96, 96, 3, 1, bn), *conv(96, 64, 3, 1, bn), nn.MaxPool2d(3, 2),
    )
    return nn.Sequential(body, classifier([2304, 512, 256, n_classes], dropout))


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def vgg5(n_classes: int = 10, bn: bool = True, dropout: float = 0.0) -> nn.Sequential:
    """VGG-style, 5 conv-BN-ReLU (32-64-64-128-128): the `fast` recipe's net: AlexNet7's CV accuracy in 1/16 of its CPU time.

    One conv at 28x28, two at 14x14, two at 7x7, so most work is on small maps; the head
    keeps the 3x3 layout (no global pooling: where a stroke is matters for kana). Its
    weights are channels-last, which oneDNN runs ~10% faster on the CPU (`fast` recipe
    timing, docs/benchmarks.md) and tensor cores prefer on a GPU; state_dicts load either way.
    """
    if not bn:
        raise OptionError("vgg5 is built around batch norm: --no-bn is not available for it")
    body = nn.Sequential(*conv_bn(1, 32), nn.MaxPool2d(2), *conv_bn(32, 64), *conv_bn(64, 64), nn.MaxPool2d(2),
                         *conv_bn(64, 128), *conv_bn(128, 128), nn.MaxPool2d(2))
    head = nn.Sequential(nn.Flatten(), *([nn.Dropout(dropout)] if dropout else []), nn.Linear(128 * 9, n_classes))
    return nn.Sequential(body, head).to(memory_format=torch.channels_last)


def xresnet18_gray(n_classes: int = 10, bn: bool = True, dropout: float = 0.0) -> nn.Sequential:
    """fastai's xresnet18 (bag-of-tricks ResNet) for 1-channel input: a modern baseline."""
    if not bn:
        raise OptionError("xresnet18 is built around batch norm: --no-bn is not available for it")
    m = xresnet18(c_in=1, n_out=n_classes, p=dropout)
    # xresnet ends AdaptiveAvgPool, Flatten, Dropout, Linear: those four are the head.
    return nn.Sequential(nn.Sequential(*list(m.children())[:-4]), nn.Sequential(*list(m.children())[-4:]))
