"""A few small CUDA cases of every op family, forward and backward, for compute-sanitizer
(memcheck, racecheck) on a lent GPU: scripts/gpu_check.sh runs this under it. Shapes are odd
and small (tile tails, partial warps) so the checks run in seconds; every result is compared
with torch so a silent wrong answer fails too."""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

import fastdl.functional as FF
import fastdl.nn as fnn


DEVICE = "cuda"  # the tensors' device ("cpu" with --device cpu and under the emulator)
HALF = True  # run the bfloat16 cases (not on the CPU kernels)


def close(name: str, ours: torch.Tensor, ref: torch.Tensor, tol: float) -> bool:
    err = (ours.double() - ref.double()).abs().max().item() if ours.numel() else 0.0
    ok = err <= tol * max(1.0, ref.double().abs().max().item() if ref.numel() else 1.0)
    print(f"{name}: max error {err:.3g} {'ok' if ok else 'MISMATCH'}")
    return ok


def grads(fn, *inputs):
    """fn's output and the gradients of its inputs for one fixed output gradient."""
    out = fn(*inputs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    return out, torch.autograd.grad(out, [t for t in inputs if t.requires_grad], g)


def leaf(*shape, dtype, channels_last=False):
    t = torch.randn(*shape, device=DEVICE, dtype=dtype)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_()


def main() -> int:
    ok = True
    dtypes = ((torch.float32, 1e-4), (torch.bfloat16, 5e-2))
    for dtype, tol in dtypes if HALF else dtypes[:1]:
        tag = str(dtype).removeprefix("torch.")
        x = leaf(5, 37, dtype=dtype)
        ok &= close(f"layer_norm {tag}", FF.layer_norm(x, (37,)), F.layer_norm(x, (37,)), tol)
        x = leaf(3, 5, 7, 9, dtype=dtype, channels_last=True)
        ok &= close(
            f"batch_norm {tag}",
            FF.batch_norm(x, None, None, training=True),
            F.batch_norm(x, None, None, training=True),
            tol,
        )
        w = leaf(6, 5, 3, 3, dtype=dtype)
        for name, f, r in (("conv2d", FF.conv2d, F.conv2d),):
            (o, go), (ro, gro) = (
                grads(lambda a, b: f(a, b, padding=1), x, w),
                grads(lambda a, b: r(a, b, padding=1), x, w),
            )
            ok &= close(f"{name} {tag}", o, ro, tol)
            ok &= all(
                close(f"{name} grad {i} {tag}", a, b, tol) for i, (a, b) in enumerate(zip(go, gro))
            )
        ok &= close(f"max_pool2d {tag}", FF.max_pool2d(x, 3, 2, 1), F.max_pool2d(x, 3, 2, 1), tol)
        ok &= close(f"avg_pool2d {tag}", FF.avg_pool2d(x, 2), F.avg_pool2d(x, 2), tol)
        for d in (40, 64):
            q, k, v = (
                leaf(2, 3, 37, d, dtype=dtype),
                leaf(2, 3, 45, d, dtype=dtype),
                leaf(2, 3, 45, d, dtype=dtype),
            )
            (o, g), (ro, rg) = (
                grads(FF.scaled_dot_product_attention, q, k, v),
                grads(F.scaled_dot_product_attention, q, k, v),
            )
            ok &= close(f"sdpa E={d} {tag}", o, ro, tol)
            ok &= all(
                close(f"sdpa E={d} grad {i} {tag}", a, b, tol)
                for i, (a, b) in enumerate(zip(g, rg))
            )
        q, k, v = (
            leaf(2, 2, 5, 40, dtype=dtype),
            leaf(2, 2, 300, 40, dtype=dtype),
            leaf(2, 2, 300, 24, dtype=dtype),
        )
        ref = torch.softmax(q.float() @ k.float().transpose(-1, -2) / 40**0.5, -1) @ v.float()
        ok &= close(f"induced_attention {tag}", FF.induced_attention(q, k, v), ref, tol)
        bags = torch.rand(3, 41, 5, device=DEVICE, dtype=dtype)
        centers = ((torch.arange(7, device=DEVICE) + 0.5) / 7).expand(5, 7).contiguous()
        widths = torch.full((5, 7), 7.0, device=DEVICE)
        hist = FF.histogram(bags, centers, widths, kernel="soft")
        ref = torch.relu(1 - widths * (bags.float().unsqueeze(-1) - centers).abs()).mean(1)
        ok &= close(f"histogram {tag}", hist, ref, tol)
        lstm = torch.nn.LSTM(11, 13).to(DEVICE, dtype)
        ours = fnn.LSTM(11, 13).to(DEVICE, dtype)
        ours.load_state_dict(lstm.state_dict())
        seq = torch.randn(6, 3, 11, device=DEVICE, dtype=dtype)
        ok &= close(f"lstm {tag}", ours(seq)[0], lstm(seq)[0], tol)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        default="cuda",
        choices=("cuda", "cuda_sim", "cpu"),
        help="cuda (default); cuda_sim runs the same CUDA code in the emulator",
    )
    choice = parser.parse_args().device
    DEVICE, HALF = ("cuda", True) if choice == "cuda" else ("cpu", choice == "cuda_sim")
    if choice == "cuda_sim":
        import fastdl.testing

        with fastdl.testing.cuda_sim():
            sys.exit(main())
    sys.exit(main())
