"""Architecture registry: every model the toolkit trains is a named factory.

Like timm, `@register_arch` is all it takes to add one, and the CLI, `load_run` and
the sweeps find it by name. The built-in architectures (`archs.py`) are registered here
by the dotted path of their factory and their recorded parameter count, so looking a
name up, listing the registry with sizes and checking a config import neither torch
nor fastai; the factory's module is imported when a model is built. Every model is an
`nn.Sequential(body, head)` so one splitter (`archs.splitter`) serves fastai's
`freeze`/`unfreeze` and discriminative learning rates, and transfer learning replaces
`head` alone.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ..core.errors import OptionError


@dataclass(frozen=True)
class ArchSpec:
    name: str
    factory: Callable | str  # builds an nn.Sequential(body, head); a callable, or "module:function" imported when first built
    description: str
    default_bn: bool
    default_dropout: float
    params: int | None = None  # the default 10-class model's; recorded for the built-ins (tested): listed without torch

    def param_count(self) -> int:
        """Parameters of the default 10-class model; a callable's module has loaded torch already, so it is built."""
        return n_params(self.build()) if self.params is None else self.params

    def build(self, n_classes: int = 10, bn: bool | None = None, dropout: float | None = None):
        bn = self.default_bn if bn is None else bn
        dropout = self.default_dropout if dropout is None else dropout
        if not 0 <= dropout < 1:
            raise OptionError(f"--dropout must be in [0, 1), got {dropout}")
        factory = self.factory
        if isinstance(factory, str):
            module, _, name = factory.partition(":")
            factory = getattr(importlib.import_module(module), name)
        return factory(n_classes=n_classes, bn=bn, dropout=dropout)


ARCHS: dict[str, ArchSpec] = {}


def register_arch(name: str, description: str = "", bn: bool = False, dropout: float = 0.5):
    """Decorator: make `factory(n_classes, bn, dropout) -> nn.Sequential(body, head)` available by name."""

    def deco(factory):
        doc = (factory.__doc__ or "").strip()
        ARCHS[name] = ArchSpec(name, factory, description or (doc.splitlines()[0] if doc else name), bn, dropout)
        return factory

    return deco


def _builtin(name: str, function: str, description: str, bn: bool, dropout: float, params: int) -> None:
    ARCHS[name] = ArchSpec(name, f"{__package__}.archs:{function}", description, bn, dropout, params)


_builtin("lenet5", "lenet5", "LeNet-5 (LeCun 1998) with ReLU and max-pooling, as in the report.", False, 0.0,
         61_706)
_builtin("alexnet5", "alexnet5", "Reduced AlexNet with 5 convs; BN after the first two (the report's best row).",
         True, 0.5, 989_586)
_builtin("alexnet7", "alexnet7", "Reduced AlexNet with 7 convs; `bn` adds BN after every conv.", False, 0.5,
         1_922_690)
_builtin("vgg5", "vgg5", "VGG-style, 5 conv-BN-ReLU (32-64-64-128-128): the `fast` recipe's net: AlexNet7's CV "
         "accuracy in 1/16 of its CPU time.", True, 0.0, 289_130)
_builtin("xresnet18", "xresnet18_gray", "fastai's xresnet18 (bag-of-tricks ResNet) for 1-channel input: a modern "
         "baseline.", True, 0.0, 11_200_298)


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHS[name]
    except KeyError:
        raise OptionError(f"unknown architecture {name!r} (known: {', '.join(ARCHS)})") from None


def create_model(arch: str, n_classes: int = 10, bn: bool | None = None, dropout: float | None = None):
    """A fresh `nn.Sequential(body, head)` of a registered architecture (torch loads here, with the first model)."""
    return get_arch(arch).build(n_classes, bn, dropout)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
