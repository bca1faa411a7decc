"""PyTorch's own test inputs for our ops in float16 and bfloat16 on the CPU: every OpInfo sample
input of torch.testing._internal.common_methods_invocations for conv1d/2d, layer_norm,
batch_norm, max/avg_pool1d/2d and scaled_dot_product_attention, run through fastdl.functional
with the sample's arguments. Each must run (torch runs them all), give torch's output dtypes
and shapes, and match a float64 run of torch's op on the same values with at most twice
torch's own half-precision error (``assert_close_to_reference``), for the output and for the
gradient of every floating input."""

import pytest
import torch

import fastdl.functional as FF
from helpers import HALF_DTYPES, assert_close_to_reference

try:
    from torch.testing._internal.common_methods_invocations import op_db
except ImportError:  # pragma: no cover - torch built without its test modules
    op_db = []

FAMILY = "opinfo"

# torch.nn.functional name -> fastdl.functional's function of the same signature.
OPS = {
    "nn.functional.conv1d": FF.conv1d,
    "nn.functional.conv2d": FF.conv2d,
    "nn.functional.layer_norm": FF.layer_norm,
    "nn.functional.batch_norm": FF.batch_norm,
    "nn.functional.max_pool1d": FF.max_pool1d,
    "nn.functional.max_pool2d": FF.max_pool2d,
    "nn.functional.avg_pool1d": FF.avg_pool1d,
    "nn.functional.avg_pool2d": FF.avg_pool2d,
    "nn.functional.scaled_dot_product_attention": FF.scaled_dot_product_attention,
}
OPINFOS = [op for op in op_db if op.name in OPS]


def _call(fn, sample, tensors):
    """fn on the sample's arguments with its tensors replaced, in order, by `tensors`."""
    it = iter(tensors)
    swap = lambda a: next(it) if isinstance(a, torch.Tensor) else a  # noqa: E731
    inp = swap(sample.input)
    args = [swap(a) for a in sample.args]
    kwargs = {k: swap(v) for k, v in sample.kwargs.items()}
    return fn(inp, *args, **kwargs)


def _tensors(sample):
    return [
        t
        for t in [sample.input, *sample.args, *sample.kwargs.values()]
        if isinstance(t, torch.Tensor)
    ]


def _outputs(result):
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _copies(tensors, dtype=None):
    """Fresh leaves: floating tensors require grad as the sample's do (in `dtype` if given)."""
    out = []
    for t in tensors:
        c = t.detach().clone()
        if dtype is not None and c.is_floating_point():
            c = c.to(dtype)
        out.append(c.requires_grad_(t.requires_grad))
    return out


def test_all_ops_have_samples():
    assert {op.name for op in OPINFOS} == set(OPS), "torch's OpInfo database lacks some of our ops"


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize(
    "opinfo",
    OPINFOS,
    ids=lambda op: "-".join(filter(None, [op.name.split(".")[-1], op.variant_test_name])),
)
def test_opinfo_samples_in_half_on_cpu(opinfo, dtype):
    fastdl_fn = OPS[opinfo.name]
    samples = list(opinfo.sample_inputs("cpu", dtype, requires_grad=True))
    assert samples
    for n, sample in enumerate(samples):
        where = f"{opinfo.name} sample {n} ({sample.summary() if hasattr(sample, 'summary') else sample})"
        tensors = _tensors(sample)
        torch.manual_seed(n)
        theirs_args = _copies(tensors)
        theirs = _outputs(_call(opinfo.op, sample, theirs_args))
        torch.manual_seed(n)
        ours_args = _copies(tensors)
        ours = _outputs(_call(fastdl_fn, sample, ours_args))
        ref_args = _copies(tensors, torch.float64)
        ref = _outputs(_call(opinfo.op, sample, ref_args))
        assert len(ours) == len(theirs), where
        dropout = sample.kwargs.get("dropout_p", 0.0) > 0  # random masks: torch's are other
        for o, t, r in zip(ours, theirs, ref):
            assert (o.shape, o.dtype) == (t.shape, t.dtype), where
            if not o.is_floating_point():  # max pooling's indices
                assert torch.equal(o, t), f"{where}: indices"
            elif not dropout:
                assert_close_to_reference(o, r, dtype, baseline=t, name=f"{where}: output")
        if dropout or not ours[0].requires_grad:
            continue
        grad = torch.randn(ref[0].shape, dtype=torch.float64)
        for outs, args in ((ours, ours_args), (theirs, theirs_args), (ref, ref_args)):
            outs[0].backward(grad.to(outs[0].dtype))
        for i, (o, t, r) in enumerate(zip(ours_args, theirs_args, ref_args)):
            if r.grad is not None:
                assert o.grad is not None and o.grad.dtype == t.grad.dtype, f"{where}: grad {i}"
                assert_close_to_reference(
                    o.grad, r.grad, dtype, baseline=t.grad, name=f"{where}: grad {i}"
                )
