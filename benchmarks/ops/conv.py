"""Convolution: fastdl.functional.conv2d against torch.nn.functional.conv2d, dense 3x3
(padding 1, with bias) and depthwise 3x3 (groups = channels), forward and forward+backward.

FLOPs count the multiply-adds of the convolution (2 per MAC): forward 2 N K OH OW (C/groups)
kh kw; a backward computes the input and the weight gradient, each as many, so fwd+bwd is 3x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fastdl
from harness import Case

TOLERANCE = {
    torch.float32: dict(atol=1e-3, rtol=1e-4),
    torch.bfloat16: dict(atol=5e-2, rtol=5e-2),
}


def conv_case(
    device: str,
    dtype: torch.dtype,
    n: int,
    c: int,
    hw: int,
    k: int,
    groups: int,
    channels_last: bool,
) -> Case:
    kh = kw = 3
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def make_inputs():
        x = torch.randn(n, c, hw, hw, device=device, dtype=dtype).contiguous(
            memory_format=memory_format
        )
        w = (
            torch.randn(k, c // groups, kh, kw, device=device, dtype=dtype)
            / (c // groups * kh * kw) ** 0.5
        )
        b = torch.randn(k, device=device, dtype=dtype)
        return (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), 1, 1, 1, groups)

    flops = 2.0 * n * k * hw * hw * (c // groups) * kh * kw
    op = "conv2d" if groups == 1 else "conv2d_depthwise"
    label = f"N{n} C{c} {hw}x{hw} K{k} 3x3" + " channels_last" * channels_last
    return Case(
        op,
        label,
        dtype,
        device,
        make_inputs,
        fastdl.functional.conv2d,
        F.conv2d,
        flops_fwd=flops,
        flops_fwd_bwd=3 * flops,
        **TOLERANCE[dtype],
    )


def model_step_case(
    device: str, name: str, model, x_shape: tuple[int, ...], flops_fwd: float
) -> Case:
    """A training step of ``model`` (forward, and backward to every parameter and the input):
    the fastdl model against its ``torch_twin()`` (the same architecture from torch.nn layers,
    same weights). The parameters are passed as arguments (torch.func's functional_call), so
    the harness differentiates and compares all of them."""
    model = model.to(device)
    twin = model.torch_twin()
    names = [n for n, _ in model.named_parameters()]

    def run(module):
        return lambda x, *params: torch.func.functional_call(module, dict(zip(names, params)), (x,))

    def make_inputs():
        x = torch.randn(*x_shape, device=device).requires_grad_()
        return (x, *[p.detach().clone().requires_grad_() for p in model.parameters()])

    label = "N{} C{} {}x{}".format(*x_shape)
    return Case(
        name,
        label,
        torch.float32,
        device,
        make_inputs,
        run(model),
        run(twin),
        flops_fwd=flops_fwd,
        flops_fwd_bwd=3 * flops_fwd,
        **TOLERANCE[torch.float32],
    )


def lenet5_step_case(device: str, n: int) -> Case:
    """LeNet-5 (tanh, average pooling) on (n, 1, 32, 32): its two convolutions' FLOPs."""
    torch.manual_seed(0)
    flops = 2.0 * n * (6 * 28 * 28 * 25 + 16 * 10 * 10 * 6 * 25)
    return model_step_case(device, "lenet5_step", fastdl.models.LeNet5(), (n, 1, 32, 32), flops)


def resnet_block_step_case(device: str, n: int, c: int, hw: int) -> Case:
    """A ResNet basic block (two 3x3 convs, BatchNorm, identity shortcut), training mode."""
    torch.manual_seed(0)
    flops = 2 * 2.0 * n * c * hw * hw * c * 9
    return model_step_case(
        device, "resnet_block_step", fastdl.models.ResNetBlock(c, c), (n, c, hw, hw), flops
    )


def cases(device: str, quick: bool) -> list[Case]:
    """CPU fp32: N8 C32 32x32 K64 3x3 (the ANCHORS row; N4 with ``quick``) and depthwise
    N8 C64 32x32, a LeNet-5 training step (N64) and a ResNet-block training step (N8 C32
    32x32). CUDA (ANCHORS): channels-last bf16 N32 C64 56x56 K64 3x3 and depthwise N32 C256
    56x56, plus the fp32 NCHW dense case. CPU bf16: the two fp32 convolution shapes."""
    if device == "cpu":
        n = 4 if quick else 8
        return [
            conv_case("cpu", torch.float32, n, 32, 32, 64, 1, False),
            conv_case("cpu", torch.float32, n, 64, 32, 64, 64, False),
            lenet5_step_case("cpu", 8 * n),
            resnet_block_step_case("cpu", n, 32, 32),
            conv_case("cpu", torch.bfloat16, n, 32, 32, 64, 1, False),
            conv_case("cpu", torch.bfloat16, n, 64, 32, 64, 64, False),
        ]
    return [
        conv_case("cuda", torch.bfloat16, 32, 64, 56, 64, 1, True),
        conv_case("cuda", torch.float32, 32, 64, 56, 64, 1, False),
        conv_case("cuda", torch.bfloat16, 32, 256, 56, 256, 256, True),
    ]
