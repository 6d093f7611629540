import pytest
import torch
from torch import nn

from kmnist_fa.core.errors import OptionError
from kmnist_fa.models.archs import splitter
from kmnist_fa.models.registry import ARCHS, create_model, get_arch, n_params, register_arch


@pytest.mark.parametrize("arch,bn,expected", [
    ("lenet5", None, 61_706),
    ("alexnet5", True, 989_586),
    ("alexnet5", False, 989_410),
    ("alexnet7", None, 1_922_690),
    ("vgg5", None, 289_130),
])
def test_parameter_counts_match_the_report(arch, bn, expected):
    m = create_model(arch, 10, bn=bn)
    assert n_params(m) == expected
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_dropout_option():
    m = create_model("alexnet5", dropout=0.0)
    assert not any(isinstance(x, nn.Dropout) for x in m.modules())
    m = create_model("alexnet7", dropout=0.3)
    assert [x.p for x in m.modules() if isinstance(x, nn.Dropout)] == [0.3, 0.3]
    with pytest.raises(OptionError, match="--dropout must be in"):
        create_model("alexnet5", dropout=1.0)


def test_xresnet_baseline_registered():
    m = create_model("xresnet18", 49)
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 49)


def test_register_new_arch_with_one_decorator():
    @register_arch("tiny-test", bn=False, dropout=0.0)
    def tiny(n_classes=10, bn=False, dropout=0.0):
        """A two-layer toy."""
        return nn.Sequential(nn.Sequential(nn.Flatten()), nn.Sequential(nn.Linear(784, n_classes)))

    try:
        assert get_arch("tiny-test").description == "A two-layer toy."
        assert n_params(create_model("tiny-test")) == 7850
        assert get_arch("tiny-test").params is None and get_arch("tiny-test").param_count() == 7850  # counted
    finally:
        ARCHS.pop("tiny-test")


def test_vgg5_is_channels_last_and_loads_a_plain_state_dict():
    m = create_model("vgg5")
    conv = m[0][4].weight  # 32 -> 64: the first conv has one input channel, contiguous either way
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    plain = {k: v.contiguous() for k, v in m.state_dict().items()}
    fresh = create_model("vgg5")
    fresh.load_state_dict(plain)
    assert fresh[0][4].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(fresh.eval()(x), m.eval()(x), atol=1e-5)
    with pytest.raises(OptionError, match="--no-bn is not available"):
        create_model("vgg5", bn=False)


def test_a_factory_without_docstring_is_described_by_its_name():
    register_arch("bare-test")(lambda n_classes=10, bn=False, dropout=0.0: nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))
    try:
        assert get_arch("bare-test").description == "bare-test"
    finally:
        ARCHS.pop("bare-test")


def test_splitter_body_head():
    m = create_model("lenet5")
    body, head = splitter(m)
    assert sum(p.numel() for p in body) == 156 + 2416
    assert sum(p.numel() for p in head) == 48120 + 10164 + 850


def test_unknown_arch():
    with pytest.raises(OptionError, match="unknown architecture 'resnet9000'"):
        get_arch("resnet9000")


def test_builtin_registry_entries_match_their_factories():
    """The registry names built-in factories by dotted path (so it loads no torch); each entry's description is
    its factory's first docstring line, and its defaults are the factory's own."""
    import importlib
    import inspect

    for spec in ARCHS.values():
        if not isinstance(spec.factory, str):
            continue
        module, _, name = spec.factory.partition(":")
        fn = getattr(importlib.import_module(module), name)
        assert spec.description == inspect.getdoc(fn).splitlines()[0], spec.name
        defaults = inspect.signature(fn).parameters
        assert (spec.default_bn, spec.default_dropout) == (defaults["bn"].default, defaults["dropout"].default)


def test_builtin_parameter_counts_are_recorded_and_true():
    """`kmnist-fa archs` lists the recorded counts without torch; building each default model proves them."""
    builtins = [spec for spec in ARCHS.values() if isinstance(spec.factory, str)]
    assert {"lenet5", "alexnet5", "alexnet7", "vgg5", "xresnet18"} <= {spec.name for spec in builtins}
    for spec in builtins:
        assert spec.params == n_params(spec.build()) == spec.param_count(), spec.name
