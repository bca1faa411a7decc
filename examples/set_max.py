"""The Set Transformer paper's first toy task: the maximum of a set of reals.

Each training batch holds sets of 5 to 30 numbers drawn uniformly from [0, 10) (a different
size each step, padded to the batch's largest set and masked in ``--padded`` mode); the target
is each set's largest element, learned with an L1 loss. The model is
:class:`fastdl.models.SetTransformer` (ISAB encoder, PMA + SAB decoder) on fastdl's fused
induced attention.

Run::

    python examples/set_max.py               # 1000 steps, a minute or so on a 2-core CPU
    python examples/set_max.py --steps 200 --padded

``train(...)`` does the same and returns the losses (the tests call it).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

from fastdl.models import SetTransformer


def max_value_batch(
    batch: int, generator: torch.Generator, padded: bool = False, sizes: tuple[int, int] = (5, 30)
):
    """``(x (batch, n, 1), mask (batch, n) or None, target (batch, 1))``: sets of reals in
    [0, 10) and their maxima; with ``padded`` every set has its own size (mask True where an
    element is present), else all have the same size."""
    lo, hi = sizes
    n = int(torch.randint(lo, hi + 1, (1,), generator=generator))
    x = torch.rand(batch, n, 1, generator=generator) * 10
    if not padded:
        return x, None, x.amax(dim=1)
    lengths = torch.randint(1, n + 1, (batch,), generator=generator)
    mask = torch.arange(n)[None, :] < lengths[:, None]
    target = x.masked_fill(~mask[..., None], float("-inf")).amax(dim=1)
    return x, mask, target


def train(
    steps: int = 1000,
    batch: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
    padded: bool = False,
    dim_hidden: int = 32,
    num_inds: int = 8,
    verbose: bool = True,
) -> list[float]:
    """Train a SetTransformer on the maximum-value task; returns the per-step L1 losses."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = SetTransformer(1, 1, 1, num_inds=num_inds, dim_hidden=dim_hidden, num_heads=4)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        x, mask, target = max_value_batch(batch, generator, padded)
        loss = nn.functional.l1_loss(model(x, mask)[:, 0], target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if verbose and (step % max(1, steps // 10) == 0 or step == steps):
            recent = sum(losses[-50:]) / len(losses[-50:])
            print(
                f"step {step:>5}/{steps}  L1 {recent:.4f}  ({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
    return losses


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--padded", action="store_true", help="sets of different sizes in a batch, masked"
    )
    args = parser.parse_args(argv)
    train(args.steps, args.batch, args.lr, args.seed, args.padded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
