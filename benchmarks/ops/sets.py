"""Induced-point attention (the Set Transformer): fastdl's fused kernels against the
pure-PyTorch compositions that materialise the (L, S) score matrix.

- ``induced_attention``: the op alone at ISAB's two attention shapes, m inducing points over n
  elements ("inds<-set": few queries, many keys) and n elements over m ("set<-inds"), against
  ``fastdl.reference.induced_attention_reference`` (matmul, softmax, matmul).
- ``isab``: ``fastdl.nn.ISAB(variant="reference")`` against the same block in the reference
  code's formulation (juho-lee/set_transformer, ``fastdl.reference.reference_code_mab``: heads
  split with torch.cat, bmm, softmax, bmm), the docs/ANCHORS.md ISAB row, same parameters, all of
  them differentiated.
- ``set_transformer_step``: a SetTransformer training step (forward and backward to the input
  and every parameter): fastdl's model against the same model computed by
  ``fastdl.reference.set_transformer_reference`` (torch's matmul/softmax/layer_norm).

Shapes: docs/ANCHORS.md's ISAB B16 n10000 d128 h4 m32 (CPU and CUDA); ``--quick`` on CPU: B4 n2500.
Bytes count the attention's unavoidable traffic (q, k, v read, output written; the backward
also reads dO and writes dq, dk, dv), not the score matrix the reference moves.
"""

from __future__ import annotations

import torch
from torch import nn

import fastdl
from fastdl.reference import (
    induced_attention_reference,
    reference_code_mab,
    set_transformer_reference,
)
from harness import Case

TOLERANCE = dict(atol=2e-3, rtol=2e-3)  # float32 sums over up to 10^4 keys / 1.6 10^5 rows
BF16_TOLERANCE = dict(atol=5e-2, rtol=5e-2)


def _shape(device: str, quick: bool) -> tuple[int, int, int, int, int]:
    """(batch, n, d, heads, m)."""
    return (4, 2500, 128, 4, 32) if device == "cpu" and quick else (16, 10000, 128, 4, 32)


def attention_case(
    device: str,
    batch: int,
    heads: int,
    queries: int,
    keys: int,
    head_dim: int,
    label: str,
    dtype: torch.dtype = torch.float32,
) -> Case:
    def make_inputs():
        shapes = [
            (batch, heads, queries, head_dim),
            (batch, heads, keys, head_dim),
            (batch, heads, keys, head_dim),
        ]
        return tuple(torch.randn(s, device=device, dtype=dtype, requires_grad=True) for s in shapes)

    io = batch * heads * (2 * queries + 2 * keys) * head_dim * dtype.itemsize
    flops = 4 * batch * heads * queries * keys * head_dim
    return Case(
        "induced_attention",
        f"{label} B{batch} h{heads} L{queries} S{keys} E{head_dim}",
        dtype,
        device,
        make_inputs,
        fastdl.functional.induced_attention,
        induced_attention_reference,
        bytes_fwd=io,
        bytes_fwd_bwd=3 * io,
        flops_fwd=flops,
        flops_fwd_bwd=3.5 * flops,
        **(TOLERANCE if dtype == torch.float32 else BF16_TOLERANCE),
    )


class _ReferenceCodeISAB(nn.Module):
    """An ISAB's parameters run through the reference code's formulation."""

    def __init__(self, isab: nn.Module) -> None:
        super().__init__()
        self.isab = isab

    def forward(self, X):
        H = reference_code_mab(self.isab.mab0, self.isab.I.repeat(X.size(0), 1, 1), X)
        return reference_code_mab(self.isab.mab1, X, H)


class _ReferenceSetTransformer(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, X):
        return set_transformer_reference(self.model, X)


def _module_case(
    op: str,
    label: str,
    device: str,
    module: nn.Module,
    reference: nn.Module,
    x_shape,
    io_bytes: int,
) -> Case:
    """fastdl's ``module`` against ``reference`` (a wrapper holding it as its first child), with
    the input and every parameter as arguments (torch.func.functional_call), so both sides
    differentiate and the harness compares all of them."""
    names = [name for name, _ in module.named_parameters()]
    prefix = next(iter(dict(reference.named_children())))

    def with_fastdl(x, *params):
        return torch.func.functional_call(module, dict(zip(names, params)), (x,))

    def with_reference(x, *params):
        return torch.func.functional_call(
            reference, {f"{prefix}.{n}": p for n, p in zip(names, params)}, (x,)
        )

    def make_inputs():
        x = torch.randn(*x_shape, device=device).requires_grad_()
        return (x, *[p.detach().clone().requires_grad_() for p in module.parameters()])

    return Case(
        op,
        label,
        torch.float32,
        device,
        make_inputs,
        with_fastdl,
        with_reference,
        bytes_fwd=io_bytes,
        bytes_fwd_bwd=3 * io_bytes,
        **TOLERANCE,
    )


def isab_case(device: str, batch: int, n: int, d: int, heads: int, m: int) -> Case:
    torch.manual_seed(0)
    isab = fastdl.nn.ISAB(d, d, heads, m, ln=False, variant="reference").to(device)
    return _module_case(
        "isab",
        f"B{batch} n{n} d{d} h{heads} m{m}",
        device,
        isab,
        _ReferenceCodeISAB(isab),
        (batch, n, d),
        2 * batch * n * d * 4,
    )


def set_transformer_step_case(device: str, batch: int, n: int, dim_input: int = 32) -> Case:
    torch.manual_seed(0)
    model = fastdl.models.SetTransformer(
        dim_input, 1, 4, num_inds=32, dim_hidden=128, num_heads=4, variant="reference"
    ).to(device)
    case = _module_case(
        "set_transformer_step",
        f"B{batch} n{n} in{dim_input} hidden128 h4 m32",
        device,
        model,
        _ReferenceSetTransformer(model),
        (batch, n, dim_input),
        batch * n * dim_input * 4,
    )
    case.modes = ("fwd+bwd",)
    return case


def cases(device: str, quick: bool) -> list[Case]:
    batch, n, d, heads, m = _shape(device, quick)
    head_dim = d // heads
    out = [
        attention_case(device, batch, heads, m, n, head_dim, "inds<-set"),
        attention_case(device, batch, heads, n, m, head_dim, "set<-inds"),
        isab_case(device, batch, n, d, heads, m),
    ]
    step = (8, 500) if device == "cpu" and quick else (16, 1000 if device == "cpu" else 10000)
    out.append(set_transformer_step_case(device, *step))
    if device == "cpu":  # bfloat16 (issue 13): the first shape
        out.append(
            attention_case(device, batch, heads, m, n, head_dim, "inds<-set", torch.bfloat16)
        )
    return out
