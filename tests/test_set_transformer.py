"""fastdl.nn MAB, SAB, ISAB, PMA and fastdl.models.SetTransformer against float64
compositions of the paper's equations (fastdl.reference.sets) and the reference code's MAB;
permutation invariance/equivariance; masks; gradcheck; torch.compile; bad input; and a short
training run on the paper's maximum-value toy task."""

from __future__ import annotations

import copy

import pytest
import torch

from fastdl.models import SetTransformer
from fastdl.nn import ISAB, MAB, PMA, SAB
from fastdl.reference import (
    isab_reference,
    mab_reference,
    pma_reference,
    reference_code_mab,
    set_transformer_reference,
)
from helpers import DEVICES, assert_raises_naming, check_compile_module, check_gradcheck

FAMILY = "sets"  # the emulator summary counts test cases per op family

VARIANTS = ["paper", "reference"]


def _padding(batch, n, device="cpu"):
    """(batch, n) True = padded, each set keeping 1..n elements."""
    lengths = torch.randint(1, n + 1, (batch,))
    lengths[0] = n
    return (torch.arange(n)[None, :] >= lengths[:, None]).to(device)


def _params_and_grads(module, fn):
    module.zero_grad(set_to_none=True)
    out = fn()
    # The same fixed, varied output gradient on both sides.
    grad = torch.sin(torch.arange(out.numel(), device=out.device, dtype=out.dtype)).reshape(
        out.shape
    )
    out.backward(grad)
    return out.detach(), {
        n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None
    }


def _check_module_against(module, fn_fastdl, fn_reference, rtol=1e-5, atol=1e-5):
    """Output and every parameter gradient of the float32 module vs the float64 reference (on
    float64 copies of the parameters)."""
    out, grads = _params_and_grads(module, fn_fastdl)
    ref_module = copy.deepcopy(module).double()
    out_ref, grads_ref = _params_and_grads(ref_module, lambda: fn_reference(ref_module))
    torch.testing.assert_close(out.double(), out_ref, rtol=rtol, atol=atol)
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        torch.testing.assert_close(
            grads[name].double(),
            grads_ref[name],
            rtol=rtol,
            atol=atol,
            msg=lambda m: f"gradient of {name}: {m}",
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ln", [False, True])
@pytest.mark.parametrize(
    "dims, n, m", [((6, 5, 8), 7, 11), ((8, 8, 8), 9, 1), ((4, 6, 12), 1, 5), ((8, 3, 8), 40, 3)]
)
def test_mab_matches_equations(device, variant, ln, dims, n, m):
    dim_Q, dim_K, dim_V = dims
    mab = MAB(dim_Q, dim_K, dim_V, num_heads=2 if dim_V % 4 else 4, ln=ln, variant=variant).to(
        device
    )
    X, Y = torch.randn(3, n, dim_Q, device=device), torch.randn(3, m, dim_K, device=device)
    mask = _padding(3, m, device)
    for kpm in (None, mask):
        _check_module_against(
            mab, lambda: mab(X, Y, kpm), lambda ref: mab_reference(ref, X.double(), Y.double(), kpm)
        )


@pytest.mark.parametrize("ln", [False, True])
def test_reference_variant_is_the_reference_code(ln):
    """variant="reference" computes the reference code's MAB, so its weights port as they are."""
    mab = MAB(6, 5, 8, num_heads=4, ln=ln, variant="reference").double()
    X, Y = torch.randn(2, 7, 6, dtype=torch.float64), torch.randn(2, 13, 5, dtype=torch.float64)
    torch.testing.assert_close(mab(X, Y), reference_code_mab(mab, X, Y))
    names = {n for n, _ in mab.named_parameters()}
    expected = {
        "fc_q.weight",
        "fc_q.bias",
        "fc_k.weight",
        "fc_k.bias",
        "fc_v.weight",
        "fc_v.bias",
        "fc_o.weight",
        "fc_o.bias",
    } | ({"ln0.weight", "ln0.bias", "ln1.weight", "ln1.bias"} if ln else set())
    assert names == expected
    # The paper variant adds only W^O (fc_mh) and changes the scale.
    paper = MAB(6, 5, 8, num_heads=4, ln=ln)
    assert {n for n, _ in paper.named_parameters()} == expected | {"fc_mh.weight", "fc_mh.bias"}
    assert paper.scale == pytest.approx(1 / 2**0.5) and mab.scale == pytest.approx(1 / 8**0.5)


def test_set_transformer_state_dict_names_are_the_reference_codes():
    model = SetTransformer(3, 2, 5, num_inds=4, dim_hidden=8, num_heads=2, variant="reference")
    keys = set(model.state_dict())
    for key in [
        "enc.0.I",
        "enc.0.mab0.fc_q.weight",
        "enc.1.mab1.fc_o.bias",
        "dec.0.S",
        "dec.0.mab.fc_k.weight",
        "dec.1.mab.fc_v.bias",
        "dec.2.mab.fc_o.weight",
        "dec.3.weight",
    ]:
        assert key in keys, key
    assert model.enc[0].I.shape == (1, 4, 8) and model.dec[0].S.shape == (1, 2, 8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_blocks_match_equations(device, variant):
    X = torch.randn(3, 37, 6, device=device)
    mask = _padding(3, 37, device)
    isab = ISAB(6, 8, num_heads=2, num_inds=5, ln=True, variant=variant).to(device)
    pma = PMA(6, num_heads=3, num_seeds=2, variant=variant).to(device)
    sab = SAB(6, 8, num_heads=4, ln=True, variant=variant).to(device)
    for kpm in (None, mask):
        _check_module_against(
            isab, lambda: isab(X, kpm), lambda ref: isab_reference(ref, X.double(), kpm)
        )
        _check_module_against(
            pma, lambda: pma(X, kpm), lambda ref: pma_reference(ref, X.double(), kpm)
        )
        _check_module_against(
            sab,
            lambda: sab(X, kpm),
            lambda ref: mab_reference(ref.mab, X.double(), X.double(), kpm),
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_set_transformer_matches_equations(device, variant):
    model = SetTransformer(
        5, 2, 3, num_inds=6, dim_hidden=16, num_heads=4, ln=True, variant=variant
    ).to(device)
    X = torch.randn(4, 29, 5, device=device)
    present = ~_padding(4, 29, device)
    for mask in (None, present):
        _check_module_against(
            model,
            lambda: model(X, mask),
            lambda ref: set_transformer_reference(ref, X.double(), mask),
            rtol=2e-5,
            atol=2e-5,
        )


@pytest.mark.parametrize("device", DEVICES)
def test_equivariance_and_invariance(device):
    X = torch.randn(2, 23, 6, device=device, dtype=torch.float64)
    perm = torch.randperm(23, device=device)
    sab = SAB(6, 8, 2, ln=True).to(device).double()
    isab = ISAB(6, 8, 2, num_inds=4, ln=True).to(device).double()
    pma = PMA(6, 2, num_seeds=3).to(device).double()
    model = SetTransformer(6, 2, 3, num_inds=4, dim_hidden=8, num_heads=2).to(device).double()
    for block in (sab, isab):  # equivariant: permuting the elements permutes the outputs
        torch.testing.assert_close(block(X[:, perm]), block(X)[:, perm])
    torch.testing.assert_close(pma(X[:, perm]), pma(X))  # invariant
    torch.testing.assert_close(model(X[:, perm]), model(X))
    mask = _padding(2, 23, device)  # with padding, permuting elements and mask together
    torch.testing.assert_close(model(X[:, perm], ~mask[:, perm]), model(X, ~mask))


@pytest.mark.parametrize("device", DEVICES)
def test_mask_equals_unpadded_sets(device):
    model = (
        SetTransformer(4, 1, 2, num_inds=3, dim_hidden=8, num_heads=2, ln=True).to(device).double()
    )
    sizes = [5, 11, 1]
    sets = [torch.randn(s, 4, device=device, dtype=torch.float64) for s in sizes]
    X = torch.full(
        (3, 11, 4), float("nan"), device=device, dtype=torch.float64
    )  # padding holds NaN
    mask = torch.zeros(3, 11, dtype=torch.bool, device=device)
    for i, s in enumerate(sets):
        X[i, : len(s)] = s
        mask[i, : len(s)] = True
    out = model(X, mask)
    for i, s in enumerate(sets):
        torch.testing.assert_close(out[i], model(s))
    # An empty bag is finite (the attention over nothing is 0): the documented behaviour.
    mask[2] = False
    assert torch.isfinite(model(X, mask)).all()


def test_gradcheck_blocks():
    X = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[False] * 5, [False, False, True, True, True]])
    isab = ISAB(3, 4, 2, num_inds=3, ln=True).double()
    check_gradcheck(lambda x: isab(x, mask), [X])
    pma = PMA(3, 3, num_seeds=2, variant="reference").double()
    check_gradcheck(lambda x: pma(x, mask), [X])


def test_compile_module():
    model = SetTransformer(4, 2, 3, num_inds=3, dim_hidden=8, num_heads=2, ln=True)
    X = torch.randn(2, 9, 4)
    check_compile_module(model, X, rtol=1e-4, atol=1e-5)


def test_bad_arguments():
    assert_raises_naming(
        ValueError, lambda: MAB(4, 4, 6, num_heads=4), "dim_V", "6", "num_heads", "4"
    )
    assert_raises_naming(
        ValueError, lambda: SetTransformer(3, 1, 1, dim_hidden=10, num_heads=4), "dim_V", "10"
    )
    assert_raises_naming(ValueError, lambda: MAB(4, 4, 8, 2, variant="torch"), "variant", "torch")
    assert_raises_naming(ValueError, lambda: ISAB(4, 8, 2, num_inds=0), "num_inds")
    mab = MAB(4, 3, 8, 2)
    X, Y = torch.randn(2, 5, 4), torch.randn(2, 7, 3)
    assert_raises_naming(
        ValueError,
        lambda: mab(X, Y, torch.zeros(2, 5, dtype=torch.bool)),
        "key_padding_mask",
        "(2, 7)",
    )
    assert_raises_naming(
        ValueError, lambda: mab(X, Y, torch.zeros(2, 7)), "key_padding_mask", "bool"
    )
    assert_raises_naming(ValueError, lambda: mab(torch.randn(2, 5, 3), Y), "X", "4")
    assert_raises_naming(ValueError, lambda: mab(X, torch.randn(3, 7, 3)), "batch size")
    model = SetTransformer(3, 1, 2, num_inds=2, dim_hidden=8, num_heads=2)
    assert_raises_naming(
        ValueError,
        lambda: model(torch.randn(2, 5, 3), torch.ones(2, 4, dtype=torch.bool)),
        "mask",
        "(2, 5)",
    )


def test_unbatched_inputs():
    model = SetTransformer(3, 2, 4, num_inds=2, dim_hidden=8, num_heads=2)
    X = torch.randn(6, 3)
    torch.testing.assert_close(model(X), model(X[None])[0])
    isab, pma = ISAB(3, 8, 2, 2), PMA(3, 3, 2)
    mask = torch.tensor([False, False, True, False, True, False])
    torch.testing.assert_close(isab(X, mask), isab(X[None], mask[None])[0])
    torch.testing.assert_close(pma(X, mask), pma(X[None], mask[None])[0])


def _example(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_training_max_value_regression():
    """examples/set_max.py: the paper's maximum-value task on padded, masked sets of different
    sizes; the L1 loss at least halves."""
    losses = _example("set_max").train(steps=150, batch=16, seed=0, padded=True, verbose=False)
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:15]) / 15, sum(losses[-15:]) / 15
    assert last < 0.5 * first, f"loss went from {first:.3f} to only {last:.3f}"
