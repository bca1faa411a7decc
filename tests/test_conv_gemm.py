"""The convolution's GEMM kernels: the CPU variants (the AVX-512 and AVX2 micro-kernels, BLAS),
each chosen at load time and checked in a fresh process, and CUDA's tensor-core implicit GEMM
for float16/bfloat16 channels-last convolutions. The op against torch: test_conv.py."""

import pytest
import torch
import torch.nn.functional as F

import fastdl  # noqa: F401  (registers torch.ops.fastdl)
import fastdl.functional as FF
from helpers import (
    cuda_devices,
    assert_close_to_reference,
    assert_unchanged,
)

FAMILY = "conv"  # the emulator summary counts test cases per op family


GEMM_SHAPES = [
    # (input, weight, stride, padding, groups): tiles with edges in both dims, a tile crossing
    # images (L = 25 columns per image), a reduction longer than one packed block (C kh kw > 256),
    # grouped, and a large output plane
    ((3, 5, 7, 9), (13, 5, 3, 3), 1, 1, 1),
    ((4, 6, 5, 5), (7, 6, 3, 3), 1, 1, 1),
    ((2, 40, 9, 8), (33, 40, 3, 3), 1, 1, 1),
    ((2, 12, 9, 10), (18, 4, 3, 3), 2, 1, 3),
    ((2, 8, 40, 36), (20, 8, 3, 3), 1, 1, 1),
]


@pytest.mark.parametrize("gemm", ["default", "avx2", "blas"])
def test_cpu_gemm_kernels(gemm):
    """The CPU GEMM variants (AVX-512 / AVX2 micro-kernels, BLAS), chosen at load time by
    FASTDL_CPU_ISA (the kernels' copy) and FASTDL_CPU_GEMM=blas, each checked in a fresh
    interpreter against torch: forward and all gradients."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import torch, torch.nn.functional as F, fastdl.functional as FF
        torch.manual_seed(0)
        for xs, ws, s, p, g in {GEMM_SHAPES!r}:
            x = torch.randn(xs, requires_grad=True)
            w = torch.randn(ws, requires_grad=True)
            b = torch.randn(ws[0], requires_grad=True)
            y, ref = FF.conv2d(x, w, b, s, p, 1, g), F.conv2d(x, w, b, s, p, 1, g)
            torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
            go = torch.randn_like(ref)
            for name, a, e in zip("xwb", torch.autograd.grad(y, (x, w, b), go), torch.autograd.grad(ref, (x, w, b), go)):
                torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-3, msg=lambda m: name + ": " + m)
        print("ok")
    """)
    env = dict(os.environ)
    if gemm == "avx2":
        env["FASTDL_CPU_ISA"] = "avx2"
    elif gemm == "blas":
        env["FASTDL_CPU_GEMM"] = "blas"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


IMPLICIT_GEMM_CASES = [
    # (input, weight, stride, padding, dilation): the ANCHORS-like 3x3, sizes that are not
    # multiples of the 64 x 64 x 16 tiles, strided, dilated, 1x1, a kernel as large as the input
    ((2, 16, 9, 11), (32, 16, 3, 3), 1, 1, 1),
    ((3, 5, 7, 6), (7, 5, 3, 3), 1, 1, 1),
    ((2, 24, 13, 12), (70, 24, 3, 3), 2, 1, 1),
    ((2, 8, 10, 10), (20, 8, 3, 3), 1, 2, 2),
    ((2, 40, 5, 5), (9, 40, 1, 1), 1, 0, 1),
    ((1, 3, 5, 5), (4, 3, 5, 5), 1, 0, 1),
]


@pytest.mark.parametrize("device", cuda_devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", IMPLICIT_GEMM_CASES)
def test_cuda_implicit_gemm_forward(device, case, bias, dtype):
    """float16/bfloat16 channels-last dense convolutions take the tensor-core implicit GEMM on
    CUDA (compute capability >= 8): forward against a float64 reference with torch's own
    error as the baseline, output channels-last; gradients (the im2col path) against torch."""
    if device == "cuda" and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("the implicit GEMM needs compute capability 8.0")
    xs, ws, stride, padding, dilation = case
    x = (
        torch.randn(xs, device=device, dtype=dtype)
        .contiguous(memory_format=torch.channels_last)
        .requires_grad_()
    )
    w = (
        torch.randn(ws, device=device, dtype=dtype) / (ws[1] * ws[2] * ws[3]) ** 0.5
    ).requires_grad_()
    b = torch.randn(ws[0], device=device, dtype=dtype).requires_grad_() if bias else None
    ours = assert_unchanged((x, w), lambda: FF.conv2d(x, w, b, stride, padding, dilation))
    theirs = F.conv2d(x, w, b, stride, padding, dilation)
    assert ours.is_contiguous(memory_format=torch.channels_last) and ours.dtype == dtype
    inputs = (x, w, b) if bias else (x, w)
    doubles = [t.detach().double().requires_grad_() for t in inputs]
    ref = F.conv2d(doubles[0], doubles[1], doubles[2] if bias else None, stride, padding, dilation)
    assert_close_to_reference(ours, ref, dtype, baseline=theirs)
    go = torch.randn_like(theirs)
    ours_g = torch.autograd.grad(ours, inputs, go)
    theirs_g = torch.autograd.grad(theirs, inputs, go)
    ref_g = torch.autograd.grad(ref, doubles, go.double())
    for name, a, e, base in zip("xwb", ours_g, ref_g, theirs_g):
        assert_close_to_reference(a, e, dtype, baseline=base, name=name)
