"""fastdl.nn.convert: swapping the torch norms and convolutions of a model for fastdl's, in place."""

import copy

import pytest
import torch
from torch import nn

import fastdl.nn as fnn
from helpers import DEVICES


class MyBatchNorm(nn.BatchNorm1d):
    """A user subclass (it may have changed forward): convert must leave it alone."""

    def forward(self, x):
        return super().forward(x) * 2


class Net(nn.Module):
    """LayerNorm and BatchNorm1d/2d/3d, nested in Sequentials inside a custom module."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, momentum=None)),
        )
        self.volume = nn.Sequential(nn.Conv3d(1, 3, 1), nn.BatchNorm3d(3, affine=False))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(4 * 3 * 3, 8), nn.BatchNorm1d(8), nn.Linear(8, 6)
        )
        self.norm = nn.LayerNorm(6)
        self.seq = nn.Sequential(
            nn.Linear(6, 6),
            nn.LayerNorm((5, 6), bias=False),
            nn.LayerNorm(6, elementwise_affine=False),
        )
        self.custom = MyBatchNorm(5)
        self.untracked = nn.BatchNorm1d(5, track_running_stats=False)

    def forward(self, x, v, s):
        a = self.norm(self.head(self.features(x)))
        b = self.volume(v).mean(dim=(1, 2, 3, 4))
        c = self.untracked(self.custom(self.seq(s)[..., 0]))
        return a.sum(-1) + b + c.sum(-1)


EXPECTED_SWAPS = {
    "features.1": "BatchNorm2d",
    "features.3.1": "BatchNorm2d",
    "volume.1": "BatchNorm3d",
    "head.2": "BatchNorm1d",
    "norm": "LayerNorm",
    "seq.1": "LayerNorm",
    "seq.2": "LayerNorm",
    "untracked": "BatchNorm1d",
    "features.0": "Conv2d",
    "features.3.0": "Conv2d",
}
FASTDL_TYPES = {
    "LayerNorm": fnn.LayerNorm,
    "BatchNorm1d": fnn.BatchNorm1d,
    "BatchNorm2d": fnn.BatchNorm2d,
    "BatchNorm3d": fnn.BatchNorm3d,
    "Conv2d": fnn.Conv2d,
}


def _inputs(device="cpu", n=4):
    return (
        torch.randn(n, 2, 3, 3, device=device),
        torch.randn(n, 1, 2, 2, 2, device=device),
        torch.randn(n, 5, 6, device=device),
    )


def _randomised_net(device="cpu"):
    net = Net().to(device)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    net(*_inputs(device))  # move running statistics away from their init
    return net


def test_types_swapped_and_report():
    net = _randomised_net()
    convs = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv3d))]
    report = fnn.convert(net)
    modules = dict(net.named_modules())
    for name, kind in EXPECTED_SWAPS.items():
        assert type(modules[name]) is FASTDL_TYPES[kind], name
        assert isinstance(modules[name], getattr(nn, kind))  # still its torch type
    assert type(modules["custom"]) is MyBatchNorm
    assert all(any(m is c for m in net.modules()) for c in convs)  # other layers untouched
    assert len(report) == len(EXPECTED_SWAPS)
    assert {name: (old, new) for name, old, new in report.swapped} == {
        name: (kind, kind) for name, kind in EXPECTED_SWAPS.items()
    }
    assert ("custom", "MyBatchNorm", "subclass of BatchNorm1d") in report.skipped
    assert len(report.skipped) == 1
    text = str(report)
    assert "swapped 10" in text and "features.3.1" in text and "custom" in text


def test_hyperparameters_and_mode_kept():
    net = _randomised_net().eval()
    ref = copy.deepcopy(net)
    fnn.convert(net)
    new, old = dict(net.named_modules()), dict(ref.named_modules())
    for name in EXPECTED_SWAPS:
        assert not new[name].training
        assert new[name].extra_repr() == old[name].extra_repr(), name
        for attr in (
            "eps",
            "momentum",
            "affine",
            "track_running_stats",
            "num_features",
            "normalized_shape",
            "elementwise_affine",
        ):
            assert getattr(new[name], attr, None) == getattr(old[name], attr, None), (name, attr)


def test_state_dict_unchanged():
    net = _randomised_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fnn.convert(net)
    after = net.state_dict()
    assert list(after) == list(before)
    for k in before:
        assert torch.equal(after[k], before[k]), k
    fresh = Net()
    fresh.load_state_dict(after, strict=True)  # and back into a torch model


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_equal_in_train_and_eval(device):
    ref = _randomised_net(device)
    net = copy.deepcopy(ref)
    fnn.convert(net)
    for step in range(3):  # training: outputs, gradients and running statistics
        inputs = _inputs(device)
        out, out_ref = net(*inputs), ref(*inputs)
        torch.testing.assert_close(out, out_ref)
        out.sum().backward()
        out_ref.sum().backward()
        for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=lambda m: f"grad of {name}: {m}")
        for (name, b), (_, c) in zip(net.named_buffers(), ref.named_buffers()):
            torch.testing.assert_close(b, c, msg=lambda m: f"buffer {name} after step {step}: {m}")
    net.eval()
    ref.eval()
    inputs = _inputs(device, n=3)
    torch.testing.assert_close(net(*inputs), ref(*inputs))
    with pytest.raises(ValueError, match="value per channel"):  # `untracked` uses batch stats
        net(*_inputs(device, n=1))


def test_parameters_are_the_same_objects_and_optimizer_trains_them():
    ref = _randomised_net()
    net = copy.deepcopy(ref)
    params_before = list(net.parameters())
    buffers_before = list(net.buffers())
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    fnn.convert(net)
    assert all(a is b for a, b in zip(net.parameters(), params_before))
    assert len(list(net.parameters())) == len(params_before)
    assert all(a is b for a, b in zip(net.buffers(), buffers_before))
    norm_weight_before = net.norm.weight.detach().clone()
    for _ in range(3):
        inputs = _inputs()
        for model, optimizer in ((net, opt), (ref, opt_ref)):
            optimizer.zero_grad()
            model(*inputs).pow(2).mean().backward()
            optimizer.step()
    assert not torch.equal(net.norm.weight, norm_weight_before)  # the optimizer moved it
    for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p, q, msg=lambda m: f"{name} after training: {m}")


@pytest.mark.parametrize("include", [["LayerNorm"], [nn.LayerNorm], "LayerNorm", nn.LayerNorm])
def test_include(include):
    net = _randomised_net()
    report = fnn.convert(net, include=include)
    swapped = {name for name, _, _ in report.swapped}
    assert swapped == {n for n, k in EXPECTED_SWAPS.items() if k == "LayerNorm"}
    modules = dict(net.named_modules())
    assert type(modules["features.1"]) is nn.BatchNorm2d
    assert ("features.1", "BatchNorm2d", "not in include") in report.skipped


def test_exclude():
    net = _randomised_net()
    report = fnn.convert(net, exclude=[nn.BatchNorm2d, "BatchNorm3d"])
    swapped = {name for name, _, _ in report.swapped}
    assert swapped == {
        n for n, k in EXPECTED_SWAPS.items() if k in ("LayerNorm", "BatchNorm1d", "Conv2d")
    }
    assert ("volume.1", "BatchNorm3d", "in exclude") in report.skipped
    assert type(dict(net.named_modules())["features.3.1"]) is nn.BatchNorm2d


def test_include_and_exclude():
    net = _randomised_net()
    report = fnn.convert(net, include=["BatchNorm1d", "BatchNorm2d"], exclude=["BatchNorm2d"])
    assert {name for name, _, _ in report.swapped} == {"head.2", "untracked"}


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(include=["Conv3d"]),
        dict(exclude=["Foo"]),
        dict(include=[nn.Linear]),
        dict(exclude="BatchNorm4d"),
    ],
)
def test_unknown_names_raise(kwargs):
    net = _randomised_net()
    before = [type(m) for m in net.modules()]
    with pytest.raises(ValueError) as err:
        fnn.convert(net, **kwargs)
    bad = next(iter(kwargs.values()))
    bad = bad if isinstance(bad, str) else getattr(bad[0], "__name__", bad[0])
    assert bad in str(err.value) and next(iter(kwargs)) in str(err.value)
    assert [type(m) for m in net.modules()] == before  # nothing changed


def test_not_a_module_raises():
    with pytest.raises(TypeError):
        fnn.convert([nn.LayerNorm(3)])


def test_convert_twice_is_a_no_op():
    net = _randomised_net()
    fnn.convert(net)
    report = fnn.convert(net)
    assert report.swapped == [] and report.skipped == [
        ("custom", "MyBatchNorm", "subclass of BatchNorm1d")
    ]


def test_subclass_of_torch_norm_skipped_everywhere():
    class MyLayerNorm(nn.LayerNorm):
        pass

    net = nn.Sequential(MyLayerNorm(4), nn.Sequential(MyBatchNorm(3)), nn.LayerNorm(4))
    report = fnn.convert(net)
    assert type(net[0]) is MyLayerNorm and type(net[1][0]) is MyBatchNorm
    assert type(net[2]) is fnn.LayerNorm
    assert ("0", "MyLayerNorm", "subclass of LayerNorm") in report.skipped
    assert ("1.0", "MyBatchNorm", "subclass of BatchNorm1d") in report.skipped


def test_root_norm_is_left_alone():
    """A model that is itself a norm cannot be replaced in place (documented)."""
    ln = nn.LayerNorm(4)
    report = fnn.convert(ln)
    assert type(ln) is nn.LayerNorm and report.swapped == []


def test_model_without_norms():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    report = fnn.convert(net)
    assert len(report) == 0 and report.skipped == []
    assert "swapped 0" in str(report)


def test_compiles_after_convert():
    net = _randomised_net().eval()
    fnn.convert(net)
    inputs = _inputs()
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*inputs), net(*inputs))


def test_hooks_carried_over():
    """Forward hooks and pre-hooks registered on a torch layer keep firing after the swap
    (an in-place swap must not silently drop a user's feature-extraction or debug hooks)."""
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.LayerNorm(4))
    calls = []
    net[1].register_forward_hook(lambda m, i, o: calls.append("bn"))
    net[2].register_forward_pre_hook(lambda m, i: calls.append("ln-pre"))
    fnn.convert(net)
    assert type(net[1]) is fnn.BatchNorm1d and type(net[2]) is fnn.LayerNorm
    net(torch.randn(5, 3))
    assert calls == ["bn", "ln-pre"]


def test_frozen_parameters_stay_frozen():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    net[1].weight.requires_grad_(False)
    fnn.convert(net)
    assert not net[1].weight.requires_grad and net[1].bias.requires_grad


def test_conversion_table_is_every_module_with_a_twin():
    """convert's table is what the modules registered (fastdl.nn._base.TWINS): every public
    fastdl.nn module naming a torch twin, and nothing else."""
    from fastdl.nn._base import TWINS, FastdlModule

    modules = [getattr(fnn, n) for n in fnn.__all__ if isinstance(getattr(fnn, n), type)]
    with_twin = {
        m.torch_type: m
        for m in modules
        if issubclass(m, FastdlModule) and m.__dict__.get("torch_type") is not None
    }
    assert TWINS == with_twin
    assert {nn.LayerNorm, nn.Conv2d, nn.LSTM, nn.MultiheadAttention} <= set(TWINS)
    assert all(issubclass(ours, twin) for twin, ours in TWINS.items())


def test_twin_registration_rejects_mistakes():
    """A module naming a twin it does not subclass, or a second module for a registered twin,
    fails when the class is defined."""
    from fastdl.nn._base import TWINS, FastdlModule

    before = dict(TWINS)
    with pytest.raises(TypeError, match="must subclass its torch twin"):
        type("NotATwin", (FastdlModule, nn.Module), {"torch_type": nn.GELU})
    with pytest.raises(TypeError, match="two fastdl twins"):
        type("SecondLayerNorm", (FastdlModule, nn.LayerNorm), {"torch_type": nn.LayerNorm})
    assert TWINS == before
