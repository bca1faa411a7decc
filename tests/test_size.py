"""Sizes past 32-bit index math, on the CPU, compared with torch on slices.

- sdpa with L * S > 2**31 (the flattened (row, key) index of the dropout hash and of the
  scores) and histograms with N * F * B > 2**31 (the never materialised (bags, N, F, B)
  tensor): small tensors, always run.
- conv2d's im2col path, max/avg pooling, layer_norm and batch_norm on one float32 tensor of
  2**31 + 2**22 elements (8 GiB), whose last images sit past 2**31: run when the machine has
  the memory (``MemAvailable``), else skipped saying how much is missing. The conv and
  pooling cases need the input and a small output (~9 GiB); layer_norm and batch_norm also
  need an output as large as the input (~17 GiB).

All are marked ``slow`` (about two minutes together on the 2-core CI machine with the memory).
"""

import math

import pytest
import torch
import torch.nn.functional as F

import fastdl.functional as FF
from fastdl.reference import histogram_reference

pytestmark = pytest.mark.slow

GiB = 2**30
BIG_SHAPE = (513, 4, 1024, 1024)  # 2**31 + 2**22 float32 elements; image 512 starts at 2**31


def _available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _need(nbytes: float, what: str) -> None:
    have = _available()
    margin = 1.5 * GiB
    if have < nbytes + margin:
        pytest.skip(
            f"{what} needs {(nbytes + margin) / GiB:.1f} GiB of free memory, the machine has "
            f"{have / GiB:.1f} GiB available"
        )


def test_sdpa_rows_times_keys_past_2_31():
    L = S = 46400  # L * S = 2.15e9
    assert L * S > 2**31
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, L, 2, generator=g, requires_grad=True)
    k = torch.randn(1, 1, S, 2, generator=g, requires_grad=True)
    v = torch.randn(1, 1, S, 2, generator=g, requires_grad=True)
    out = FF.scaled_dot_product_attention(q, k, v, is_causal=True)
    dout = torch.randn(out.shape, generator=g)
    dq, dk, dv = torch.autograd.grad(out, [q, k, v], dout)
    rows = torch.tensor([0, 1, 777, L // 2, L - 2, L - 1])
    # Causal rows see keys 0..i: torch on those rows alone (one (rows, S) score matrix).
    qs = q.detach()[:, :, rows].double().requires_grad_()
    scores = qs @ k.detach().double().transpose(-1, -2) / math.sqrt(2)
    scores = scores.masked_fill(torch.arange(S)[None, :] > rows[:, None], float("-inf"))
    ref = torch.softmax(scores, -1) @ v.detach().double()
    torch.testing.assert_close(out[:, :, rows].double(), ref, rtol=1e-4, atol=1e-5)
    (ref_dq,) = torch.autograd.grad(ref, qs, dout[:, :, rows].double())
    torch.testing.assert_close(dq[:, :, rows].double(), ref_dq, rtol=1e-3, atol=1e-4)
    # Every row's probabilities sum to 1 over its keys: sum_j dV_j = sum_i dO_i, and
    # sum_j dS_ij = 0 gives sum_j dK_j = 0 (identities over all L * S pairs).
    torch.testing.assert_close(dv.double().sum(2), dout.double().sum(2), rtol=1e-3, atol=1e-2)
    assert dk.double().sum(2).abs().max() < 1e-2 * dk.abs().sum().item() / S + 1e-2


def test_histogram_virtual_elements_past_2_31():
    N, Fe, B = 2**19, 64, 65  # N * F * B = 2.18e9 kernel values, x only 128 MiB
    assert N * Fe * B > 2**31
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, N, Fe, generator=g).requires_grad_()
    centers = ((torch.arange(B) + 0.5) / B).expand(Fe, B).contiguous()
    widths = torch.full((Fe, B), float(B))
    out = FF.histogram(x, centers, widths, "soft")
    go = torch.randn(out.shape, generator=g)
    (dx,) = torch.autograd.grad(out, x, go)
    for f in (0, Fe - 1):  # the reference, one feature at a time, in chunks of elements
        ref = torch.zeros(B, dtype=torch.float64)
        for n0 in range(0, N, 2**16):
            ref += histogram_reference(
                x.detach()[:, n0 : n0 + 2**16, f : f + 1].double(),
                centers[f : f + 1].double(),
                widths[f : f + 1].double(),
                "soft",
                normalize=False,
            )[0, 0]
        torch.testing.assert_close(out[0, f].double(), ref / N, rtol=1e-4, atol=1e-6)
    idx = torch.tensor([0, 1, N // 3, N - 1])
    xs = x.detach()[:, idx].double().requires_grad_()
    ref = histogram_reference(xs, centers.double(), widths.double(), "soft", normalize=False) / N
    (ref_dx,) = torch.autograd.grad(ref, xs, go.double())
    torch.testing.assert_close(dx[:, idx].double(), ref_dx, rtol=1e-4, atol=1e-9)


@pytest.fixture(scope="module")
def big():
    """(x, checked images): x of BIG_SHAPE, 0.5 + 0.1 * channel everywhere except random values
    in the images compared with torch (the first two and the last two, past 2**31)."""
    _need(math.prod(BIG_SHAPE) * 4 + 0.5 * GiB, "the 2**31-element input")
    x = torch.empty(BIG_SHAPE)
    for c in range(BIG_SHAPE[1]):
        x[:, c].fill_(0.5 + 0.1 * c)
    g = torch.Generator().manual_seed(0)
    images = [0, 1, BIG_SHAPE[0] - 2, BIG_SHAPE[0] - 1]
    for n in images:
        x[n] = torch.randn(BIG_SHAPE[1:], generator=g)
    yield x, images
    del x


def test_conv2d_im2col_past_2_31(big):
    x, images = big
    w = torch.randn(3, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    out = FF.conv2d(x, w, stride=(61, 67), padding=1)  # the im2col + GEMM path, small output
    ref = F.conv2d(x[images], w, stride=(61, 67), padding=1)
    torch.testing.assert_close(out[images], ref, rtol=1e-5, atol=1e-4)
    middle = F.conv2d(x[200:201], w, stride=(61, 67), padding=1)
    torch.testing.assert_close(out[200:201], middle, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling_past_2_31(big, kind):
    x, images = big
    fn, ref_fn = (FF.max_pool2d, F.max_pool2d) if kind == "max" else (FF.avg_pool2d, F.avg_pool2d)
    out = fn(x, 3, stride=(64, 48), padding=1)
    torch.testing.assert_close(out[images], ref_fn(x[images], 3, stride=(64, 48), padding=1))
    torch.testing.assert_close(out[300], ref_fn(x[300:301], 3, stride=(64, 48), padding=1)[0])


def test_layer_norm_past_2_31(big):
    x, images = big
    _need(x.numel() * 4, "layer_norm's output")
    w = torch.randn(1024, generator=torch.Generator().manual_seed(2))
    out = FF.layer_norm(x, (1024,), w)
    torch.testing.assert_close(
        out[images], F.layer_norm(x[images], (1024,), w), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(out[100], F.layer_norm(x[100], (1024,), w), rtol=1e-5, atol=1e-5)
    del out
    out = FF.layer_norm(x, (1024, 1024))  # rows of a million values
    ref = F.layer_norm(x[images].double(), (1024, 1024))
    torch.testing.assert_close(out[images].double(), ref, rtol=1e-5, atol=1e-5)


def test_batch_norm_past_2_31(big):
    x, images = big
    _need(x.numel() * 4, "batch_norm's output")
    rm, rv = torch.zeros(4), torch.ones(4)
    out = FF.batch_norm(x, rm, rv, training=True, momentum=1.0)
    # The statistics in float64 from the pattern: constant channels but the checked images.
    n_const = (BIG_SHAPE[0] - len(images)) * 1024 * 1024
    count = BIG_SHAPE[0] * 1024 * 1024
    rand = x[images].double().transpose(0, 1).reshape(4, -1)
    const = torch.tensor([0.5 + 0.1 * c for c in range(4)], dtype=torch.float32).double()
    mean = (n_const * const + rand.sum(1)) / count
    var = (n_const * (const - mean) ** 2 + ((rand - mean[:, None]) ** 2).sum(1)) / count
    torch.testing.assert_close(rm.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rv.double(), var * count / (count - 1), rtol=1e-4, atol=1e-6)
    expected = (x[images].double() - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
    torch.testing.assert_close(out[images].double(), expected, rtol=1e-4, atol=1e-4)
