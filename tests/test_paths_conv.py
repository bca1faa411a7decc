"""Every code path of the conv2d CPU kernels (conv/cpu/conv.cpp) and of the packed float32
GEMM under them (common/cpu/gemm.cpp), with shapes on both sides of each threshold, in float32
and float64, with 1 thread and with several.

conv.cpp: with at least 2 threads and a batch divisible by the thread count or at least 4
times it, float32 runs whole images per thread (``images_in_parallel``), else the batch is
chunked; either way images go through im2col a chunk at a time (``chunk_images``: at most
``kColumnBudget`` = 2^18 column elements), the weight gradient accumulating over chunks.
float64 runs at::mm. Stride 1 and strided im2col/col2im; groups; bias or none; only some
gradients wanted. Depthwise: direct loops, vectorised along output rows (stride 1) of ``L``
lanes, the weight gradient a two-vector dot product.

gemm.cpp: ``kKc`` = 320 reduction steps per packed block, ``kMc`` = 192 rows, ``kNc`` = 2048
columns per block; 8 x 32 (AVX-512) or 6 x 16 (AVX2) tiles with partial edge tiles and tiles
crossing an image boundary; one task per thread once ``2 M N K >= 4e6`` outside a parallel
region (the split of the output between threads, or the fallback when too few panels); the
packs of transposed and strided operands. The AVX2 micro-kernel (the AVX2 copy of the kernels,
``FASTDL_CPU_ISA=avx2``) and the BLAS fallback (``FASTDL_CPU_GEMM=blas``) are chosen when the
library loads: a subprocess runs the GEMM cases under each.
"""

import math
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import fastdl.functional as FF
from helpers import compare_with_torch
from thresholds import DTYPES, around, threads, vec_width  # noqa: F401  (threads: a fixture)

KCOLUMN_BUDGET = 1 << 18


def _conv(
    dtype, x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, bias=True, grads="xwb"
):
    """fastdl's conv2d vs torch's, forward and the gradients of the arguments in ``grads``
    (x, w, b), the others not requiring grad (so the backward op gets a partial mask)."""
    x = torch.randn(x_shape, dtype=dtype).requires_grad_("x" in grads)
    fan_in = math.prod(w_shape[1:])
    w = (torch.randn(w_shape, dtype=dtype) / math.sqrt(fan_in)).requires_grad_("w" in grads)
    b = torch.randn(w_shape[0], dtype=dtype).requires_grad_("b" in grads) if bias else None
    compare_with_torch(
        lambda x, w, b: FF.conv2d(x, w, b, stride, padding, dilation, groups),
        lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups),
        [x, w, b],
        dtype,
    )


def _batches(threads, chunk):
    """Batches on both sides of images_in_parallel for ``threads`` and of ``chunk`` images:
    1; threads + 1 (neither a multiple of the threads nor 4 times them: chunked); a multiple
    of the threads with more than ``chunk`` images per thread (whole images, several chunks a
    thread); 4 threads + 1 (whole images, uneven); 2 chunk + 1 (a partial last chunk)."""
    return sorted({1, threads + 1, threads * (chunk + 1), 4 * threads + 1, 2 * chunk + 1})


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grads", ["xwb", "x", "w", "b"])
def test_conv_chunks_and_image_partition(dtype, grads, threads):
    # C * kh * kw * OH * OW = 4 * 9 * 16 * 16 = 9216 column elements an image: chunks of 28.
    C, k, out = 4, 3, 16
    chunk = KCOLUMN_BUDGET // (C * k * k * out * out)
    assert chunk == 28
    # 18 x 18 images, 5 x 5 output channels (stride 1): small, while a chunk is 28 images.
    for n in _batches(threads, chunk):
        _conv(dtype, (n, C, out + 2, out + 2), (5, C, k, k), grads=grads)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_strides_dilation_groups(dtype, threads):
    # Strided im2col/col2im (stride 2, and 2 x 1 where rows are strided but columns are not),
    # dilation, padding, groups with Kg = 3, no bias; batches chunked and whole-image.
    for n in [2, 3]:
        _conv(dtype, (n, 4, 11, 10), (6, 4, 3, 3), stride=2, padding=1)
        _conv(dtype, (n, 4, 11, 10), (6, 4, 3, 2), stride=(2, 1), dilation=(1, 2))
        _conv(dtype, (n, 6, 9, 8), (6, 3, 3, 3), padding=(2, 1), dilation=2, groups=2, bias=False)


# GEMM shapes (M = output channels per group, N = images * OH * OW, K = C * kh * kw / groups):
# the packed blocks, edge tiles and thread splits. Batch 1 and 3 (chunked on 2 threads, so
# the GEMM itself is parallel), float32 the packed GEMM, float64 at::mm.
GEMM_CASES = {
    # K = 360 > kKc = 320: two reduction blocks (the second accumulates)
    "k_blocks": ((1, 40, 6, 6), (8, 40, 3, 3)),
    # K = 648: three blocks of 216
    "k_blocks3": ((1, 72, 5, 5), (9, 72, 3, 3)),
    # M = 200 > kMc = 192 rows (and 200 % 8 != 0: a partial row tile)
    "m_blocks": ((1, 2, 6, 6), (200, 2, 3, 3)),
    # N = 50 x 50 = 2500 > kNc = 2048 columns
    "n_blocks": ((1, 1, 52, 52), (4, 1, 3, 3)),
    # 2 M N K = 2 * 64 * 576 * 144 >= 4e6: split between threads (columns), K not a multiple
    "thread_split": ((1, 16, 26, 26), (64, 16, 3, 3)),
    # 256 rows and 900 columns, large enough to split: tm x tn chosen by packing cost
    "thread_split_rows": ((1, 8, 32, 32), (256, 8, 3, 3)),
    # 2 M N K >= 4e6 with one row panel and one column panel: the fallback split
    "thread_fallback": ((1, 890, 6, 10), (8, 890, 3, 3)),
    # 3 images of 5 x 5: column tiles crossing image boundaries (25 % 32 != 0), M = 5 < 8
    "cross_images": ((3, 7, 7, 7), (5, 7, 3, 3)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", GEMM_CASES)
def test_conv_gemm_blocks(dtype, case, threads):
    x_shape, w_shape = GEMM_CASES[case]
    _conv(dtype, x_shape, w_shape)


@pytest.mark.parametrize("isa", ["avx2", "blas"])
def test_conv_gemm_kernel_choice(isa):
    # FASTDL_CPU_ISA and FASTDL_CPU_GEMM are read when the library loads: rerun the GEMM and
    # partition cases in a fresh interpreter with the AVX2 copy of the kernels (its 6 x 16
    # micro-kernel) forced, or BLAS instead of the packed GEMM (float32 convolution through
    # at::mm). Skipped where the CPU lacks AVX2.
    if isa == "avx2" and "avx2" not in open("/proc/cpuinfo").read():
        pytest.skip("this CPU has no AVX2")
    env = dict(os.environ, FASTDL_TEST_THREADS="1,2")
    env["FASTDL_CPU_ISA" if isa == "avx2" else "FASTDL_CPU_GEMM"] = isa
    here = os.path.dirname(__file__)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            os.path.join(here, "test_paths_conv.py"),
            os.path.join(here, "test_paths_rnn.py"),
            "-k",
            "float32 and (gemm_blocks or image_partition and xwb or matmul_paths)",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


# bfloat16 convolutions on the CPU's bfloat16 units (common/cpu/gemm_bf16.cpp; the widest ISA
# where the CPU has them: FASTDL_CPU_ISA=amx or avx512_bf16, else these run the float32
# kernels): 32 x 32 blocks of C, K in 32-step blocks (zero-padded) and packed blocks of at most
# kKc = 512 steps, kMc = 192 rows, kNc = 2048 columns. The forward reads its columns from the
# images while packing (ImageColumns): a panel's 32 columns as runs of one output row (masked
# loads, at most 8 runs), else gathers (strided, or many short runs). The backward packs
# im2col's columns: grouped and transposed operands, partial blocks.
BF16_UNIT_CASES = {
    # K = 576 > kKc: two packed blocks of 288 steps, the second accumulating
    "k_blocks": ((1, 64, 6, 6), (8, 64, 3, 3), {}),
    # K = 45: a partial 32-step block; M = 7 and N = 98: partial C blocks
    "k_partial": ((2, 5, 9, 9), (7, 5, 3, 3), {"padding": 1}),
    # M = 200 > kMc (200 % 32 != 0)
    "m_blocks": ((1, 2, 6, 6), (200, 2, 3, 3), {}),
    # N = 2500 > kNc
    "n_blocks": ((1, 1, 52, 52), (4, 1, 3, 3), {}),
    # output rows of 40 >= 32 columns: one run a panel, masked at the padding
    "one_run": ((2, 3, 12, 40), (33, 3, 3, 3), {"padding": 1}),
    # output rows of 3: more than 8 runs a panel (gathers)
    "many_runs": ((2, 4, 5, 3), (16, 4, 3, 3), {"padding": 1}),
    # 5 x 5 outputs: runs across rows and images
    "runs_across_images": ((3, 6, 5, 5), (9, 6, 3, 3), {"padding": 1}),
    # stride 2: gathers, masked in the padding
    "strided": ((2, 8, 13, 13), (16, 8, 3, 3), {"stride": 2, "padding": 1}),
    # dilation and groups: each group's channels from its first one
    "dilated_groups": ((2, 8, 10, 10), (12, 4, 3, 3), {"dilation": 2, "padding": 2, "groups": 2}),
    # 2 M N K >= 4e6: the output split between threads
    "thread_split": ((1, 16, 26, 26), (64, 16, 3, 3), {"padding": 1}),
    # 4 images: whole images per thread in the backward
    "whole_images": ((4, 8, 16, 16), (40, 8, 3, 3), {"padding": 1}),
}


@pytest.mark.parametrize("case", BF16_UNIT_CASES)
def test_conv_bf16_units(case, threads):
    x_shape, w_shape, options = BF16_UNIT_CASES[case]
    _conv(
        torch.bfloat16,
        x_shape,
        w_shape,
        options.get("stride", 1),
        options.get("padding", 0),
        options.get("dilation", 1),
        options.get("groups", 1),
    )


@pytest.mark.parametrize("isa", ["avx512_bf16", "amx", "avx512"])
def test_conv_bf16_units_choice(isa):
    # The bfloat16 cases under each ISA with or without bfloat16 units (FASTDL_CPU_ISA is read
    # when the library loads: a fresh interpreter), where this CPU has it.
    flags = open("/proc/cpuinfo").read()
    needs = {"avx512": ["avx512f"], "avx512_bf16": ["avx512_bf16"], "amx": ["amx_bf16", "amx_tile"]}
    if not all(f in flags for f in needs[isa]):
        pytest.skip(f"this CPU has no {isa}")
    env = dict(os.environ, FASTDL_TEST_THREADS="1,2", FASTDL_CPU_ISA=isa)
    code = "import fastdl; print(fastdl.build_info()['cpu_isa'])"
    chosen = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert chosen.stdout.split() == [isa], chosen.stdout + chosen.stderr[-2000:]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "test_conv_bf16_units and not choice",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"\b22 passed", result.stdout), result.stdout[-2000:]


def _depthwise_widths(L):
    """Output row lengths around the vector width and the dot product's two vectors."""
    return sorted(set(around(L) + around(2 * L) + [2 * L + 3]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_row_lengths(dtype, multiplier, threads):
    # Stride 1: rows of OW outputs in L-lane vectors plus a tail, forward and grad_input; the
    # weight gradient a dot product over OW values (2 L at a time).
    for ow in _depthwise_widths(vec_width(dtype)):
        _conv(dtype, (2, 3, 5, ow + 2), (3 * multiplier, 1, 3, 3), groups=3)
        _conv(
            dtype,
            (2, 3, 6, ow + 2),
            (3 * multiplier, 1, 3, 3),
            padding=1,
            dilation=(2, 1),
            groups=3,
            bias=False,
        )


@pytest.mark.parametrize("dtype", DTYPES)
def test_depthwise_strided(dtype, threads):
    # grad_input of strided depthwise convolutions: the scatter with unit column stride (an
    # axpy over the row, 2 x 1 strides) and with column strides; padding and dilation.
    L = vec_width(dtype)
    _conv(dtype, (2, 4, 9, 2 * L + 5), (4, 1, 3, 3), stride=(2, 1), padding=1, groups=4)
    _conv(dtype, (2, 4, 9, 2 * L + 5), (8, 1, 3, 2), stride=2, padding=(1, 0), dilation=2, groups=4)
