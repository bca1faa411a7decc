"""fastdl.models DeepSets and HistNetQ: permutation invariance, masks, prevalences and bad
arguments (the quantification example and the QuaPy quantifiers: test_quantification.py)."""

import pytest
import torch
from torch import nn

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.nn as fnn
from fastdl.models import DeepSets, HistNetQ
from fastdl.models.sets import masked_pool
from helpers import assert_raises_naming

FAMILY = "sets"  # the emulator summary counts test cases per op family

POOLINGS = ["sum", "mean", "max", "median"]
HISTOGRAMS = ["soft", "sigmoid", "rbf", "hard"]


def _padded(sizes, F, N=None, fill=float("nan")):
    """Bags of the given sizes, padded to N with ``fill`` (garbage), and their mask."""
    N = N or max(sizes)
    bags = [torch.randn(n, F) for n in sizes]
    x = torch.full((len(sizes), N, F), fill)
    mask = torch.zeros(len(sizes), N, dtype=torch.bool)
    for i, b in enumerate(bags):
        x[i, : len(b)] = b
        mask[i, : len(b)] = True
    return bags, x, mask


# ---------------------------------------------------------------------------------------------
# Masked pooling
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", POOLINGS)
def test_masked_pool_matches_per_bag_pooling(pooling):
    bags, x, mask = _padded([5, 1, 8, 4], 3, N=9)
    out = masked_pool(x, mask, pooling)
    for i, b in enumerate(bags):
        expected = {
            "sum": b.sum(0),
            "mean": b.mean(0),
            "max": b.amax(0),
            "median": b.median(0).values,
        }[pooling]
        torch.testing.assert_close(out[i], expected)
    full = torch.randn(2, 6, 3)
    torch.testing.assert_close(
        masked_pool(full, torch.ones(2, 6, dtype=torch.bool), pooling),
        masked_pool(full, None, pooling),
    )


def test_masked_median_is_lower_median():
    h = torch.tensor([[[4.0], [1.0], [3.0], [2.0], [100.0]]])
    mask = torch.tensor([[True, True, True, True, False]])
    assert masked_pool(h, mask, "median").item() == 2.0


@pytest.mark.parametrize("pooling", POOLINGS)
def test_masked_pool_empty_bag_is_zero(pooling):
    h = torch.randn(2, 4, 3)
    mask = torch.tensor([[False] * 4, [True] * 4])
    out = masked_pool(h, mask, pooling)
    assert torch.equal(out[0], torch.zeros(3)) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# DeepSets
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", POOLINGS)
def test_deepsets_permutation_invariant(pooling):
    m = DeepSets(5, 3, hidden=16, pooling=pooling)
    x = torch.randn(4, 13, 5)
    out = m(x)
    assert out.shape == (4, 3)
    for _ in range(3):
        perm = torch.randperm(13)
        torch.testing.assert_close(m(x[:, perm]), out, rtol=1e-5, atol=1e-6)
    # Not trivially constant: different bags give different outputs.
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("pooling", POOLINGS)
def test_deepsets_mask_equals_unpadded(pooling):
    m = DeepSets(4, 2, hidden=[16, 8], pooling=pooling)
    bags, x, mask = _padded([6, 2, 9], 4, N=11)  # NaN padding must not leak
    out = m(x, mask)
    assert torch.isfinite(out).all()
    for i, b in enumerate(bags):
        torch.testing.assert_close(out[i], m(b), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out[i], m(b.unsqueeze(0))[0], rtol=1e-5, atol=1e-6)
    perm = torch.randperm(11)
    torch.testing.assert_close(m(x[:, perm], mask[:, perm]), out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_deepsets_gradients(pooling):
    m = DeepSets(4, 2, hidden=8, pooling=pooling)
    _, x, mask = _padded([5, 3], 4, fill=0.0)
    x.requires_grad_()
    m(x, mask).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    assert torch.all(x.grad[1, 3:] == 0)


def test_deepsets_custom_phi_rho():
    phi = nn.Sequential(nn.Linear(3, 6), nn.Tanh())
    rho = nn.Linear(6, 2)
    m = DeepSets(3, 2, hidden=6, pooling="sum", phi=phi, rho=rho)
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(m(x), rho(phi(x).sum(1)))
    assert "pooling='sum'" in repr(m)


def test_deepsets_bad_arguments():
    assert_raises_naming(ValueError, lambda: DeepSets(3, 2, pooling="min"), "pooling", "min")
    assert_raises_naming(ValueError, lambda: DeepSets(0, 2), "in_features")
    assert_raises_naming(ValueError, lambda: DeepSets(3, 2, hidden=0), "hidden")
    m = DeepSets(3, 2)
    assert_raises_naming(ValueError, lambda: m(torch.randn(2, 5, 4)), "x", "in_features=3")
    assert_raises_naming(ValueError, lambda: m(torch.randn(5)), "x")
    assert_raises_naming(
        ValueError,
        lambda: m(torch.randn(2, 5, 3), torch.ones(2, 4, dtype=torch.bool)),
        "mask",
        "(2, 5)",
    )
    assert_raises_naming(
        ValueError, lambda: m(torch.randn(2, 5, 3), torch.ones(2, 5)), "mask", "bool"
    )


# ---------------------------------------------------------------------------------------------
# HistNetQ
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("histogram", HISTOGRAMS)
def test_histnetq_prevalences_and_invariance(histogram):
    m = HistNetQ(6, 4, n_bins=5, histogram=histogram, n_features=7, hidden=16).eval()
    x = torch.randn(3, 20, 6)
    p = m(x)
    assert p.shape == (3, 4)
    assert torch.all(p >= 0)
    torch.testing.assert_close(p.sum(-1), torch.ones(3))
    for _ in range(3):
        perm = torch.randperm(20)
        torch.testing.assert_close(m(x[:, perm]), p, rtol=1e-5, atol=1e-6)
    # One bag as (N, F).
    torch.testing.assert_close(m(x[1]), p[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("histogram", HISTOGRAMS)
def test_histnetq_mask_equals_unpadded(histogram):
    m = HistNetQ(4, 3, n_bins=6, histogram=histogram, n_features=5, hidden=8).eval()
    bags, x, mask = _padded([7, 1, 12], 4, N=12)  # NaN padding
    p = m(x, mask)
    assert torch.isfinite(p).all()
    for i, b in enumerate(bags):
        torch.testing.assert_close(p[i], m(b), rtol=1e-5, atol=1e-6)
    perm = torch.randperm(12)
    torch.testing.assert_close(m(x[:, perm], mask[:, perm]), p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("histogram", HISTOGRAMS)
def test_histnetq_structure_and_gradients(histogram):
    m = HistNetQ(6, 3, n_bins=4, histogram=histogram, n_features=5)
    layer = {
        "soft": fnn.SoftHistogram,
        "sigmoid": fnn.SigmoidHistogram,
        "rbf": fnn.RBFHistogram,
        "hard": fnn.HardHistogram,
    }[histogram]
    assert type(m.histogram) is layer and m.histogram.n_features == 5 and m.histogram.n_bins == 4
    assert m.histogram.learnable == (histogram != "sigmoid")
    x = torch.randn(4, 30, 6)
    target = torch.softmax(torch.randn(4, 3), -1)
    ((m(x) - target) ** 2).sum().backward()
    fe_grads = [p.grad for p in m.feature_extractor.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in fe_grads)
    assert sum(g.abs().sum() for g in fe_grads) > 0  # the histogram passes gradients back
    assert all(p.grad is not None for p in m.parameters())


def test_histnetq_options():
    fe = nn.Linear(6, 4)
    m = HistNetQ(6, 2, n_bins=3, feature_extractor=fe, n_features=4, hidden=(), learnable=False)
    assert m.feature_extractor is fe
    assert {"histogram.centers", "histogram.widths"} <= set(dict(m.named_buffers()))
    x = torch.randn(2, 10, 6)
    expected = torch.softmax(m.quantifier(m.histogram(torch.sigmoid(fe(x)))), -1)
    torch.testing.assert_close(m(x), expected)
    assert len([l for l in m.quantifier if isinstance(l, nn.Linear)]) == 1
    m2 = HistNetQ(6, 2, extractor_hidden=[8, 8], hidden=[16, 8], dropout=0.1)
    assert len([l for l in m2.feature_extractor if isinstance(l, nn.Linear)]) == 3
    assert "histogram='soft'" in repr(m2)
    # state_dict round trip
    m3 = HistNetQ(6, 2, extractor_hidden=[8, 8], hidden=[16, 8], dropout=0.1)
    m3.load_state_dict(m2.state_dict())
    m2.eval(), m3.eval()
    torch.testing.assert_close(m3(x), m2(x))


def test_histnetq_bad_arguments():
    assert_raises_naming(
        ValueError, lambda: HistNetQ(4, 2, histogram="softrbf"), "histogram", "softrbf"
    )
    assert_raises_naming(ValueError, lambda: HistNetQ(4, 0), "n_classes")
    assert_raises_naming(ValueError, lambda: HistNetQ(4, 2, n_bins=0), "n_bins")
    assert_raises_naming(ValueError, lambda: HistNetQ(4, 2, n_features=0), "n_features")
    m = HistNetQ(4, 2)
    assert_raises_naming(ValueError, lambda: m(torch.randn(3, 5, 6)), "x", "in_features=4")
    # A feature extractor whose output is not n_features wide: the histogram layer says so.
    bad = HistNetQ(4, 2, feature_extractor=nn.Linear(4, 3), n_features=5)
    assert_raises_naming(ValueError, lambda: bad(torch.randn(2, 5, 4)), "n_features=5")
