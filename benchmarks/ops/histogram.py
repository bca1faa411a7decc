"""Differentiable histograms: fastdl.functional.histogram against the pure-PyTorch composition
fastdl.reference.histogram_reference, which materialises (bags, N, F, B) kernel values (what
HistNetQ's layers do; ``ANCHORS.md`` times the "soft" one).

Inputs as in ``anchors/measure_*.py``: x uniform on [0, 1] (HistNetQ feeds sigmoid outputs),
centres HistNetQ's (k + 0.5)/B for every feature, widths for bins that tile [0, 1] ("soft"
and "rbf": slope 2B, i.e. half-width 1/(2B); "hard": half-width 1/(2B); "sigmoid": bin width
1/B, sharpness 1000). x, centres and widths all require grad (fwd+bwd differentiates all three).
x is kept 1e-3 of a half-width (bfloat16: 1e-2) away from the bin centres and edges, where the
kernels have kinks (|d| == 0, |d| == 1/(2B)): there the two sides may round onto different
sides and pick different one-sided gradients, which would make the agreement check flaky.

Bytes moved count what any implementation must touch at least, each once: the forward reads
x (and the mask, when given) and writes the (bags, F, B) output; the backward reads the output
gradient and x again (a fused backward recomputes kernel values from x rather than storing
(bags, N, F, B) of them) and writes grad x. Centres, widths and their gradients (F*B each,
under 0.1% here) are not counted. So fwd = x + out (+ mask), fwd+bwd = 3 x + 2 out (+ 2 mask).
The reference moves far more: several (bags, N, F, B) temporaries. On CUDA the harness also
reports peak memory (the target is <= 2x the input for fastdl; torch needs ~160x).
"""

from __future__ import annotations

import torch

import fastdl
from fastdl.reference import histogram_reference
from harness import Case

SHARPNESS = 1000.0
# float32: sums over N of O(1) terms, in another order. bfloat16: the reference computes every
# (bags, N, F, B) kernel value in bfloat16 (fastdl: in float32, rounding only the results).
TOLERANCE = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def _near_kinks(x: torch.Tensor, bins: int, margin: float) -> torch.Tensor:
    """Where x is within ``margin`` half-widths of a multiple of 1/(2B) (a centre or edge)."""
    t = x * (2 * bins)
    return (t - t.round()).abs() < margin


def _away_from_kinks(x: torch.Tensor, bins: int, dtype: torch.dtype) -> torch.Tensor:
    """x (float32) with no element near a kink once in ``dtype``. float32: every element within
    1e-3 half-widths moves 2e-3 half-widths up. bfloat16: its grid is coarser than that, and
    the reference's bfloat16 d = x - c rounds by up to 2e-3 half-widths (turning a bin on or
    off at its edge), so elements within 1e-2 half-widths of a kink after rounding are drawn
    again (the same stream of random numbers every run)."""
    if dtype == torch.float32:
        return torch.where(_near_kinks(x, bins, 1e-3), x + 2e-3 / (2 * bins), x)
    for _ in range(20):
        near = _near_kinks(x.to(dtype).float(), bins, 1e-2)
        if not near.any():
            break
        x = torch.where(near, torch.rand(x.shape), x)
    return x


def histogram_case(
    device: str,
    kernel: str,
    bags: int,
    n: int,
    features: int,
    bins: int,
    masked: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Case:
    """One kernel at (bags, N, F, B); ``masked``: bags of different sizes, bag i holding
    N - i * N / (2 bags) present elements (from N down to about N/2)."""

    def make_inputs():
        x = _away_from_kinks(torch.rand(bags, n, features), bins, dtype)
        centers = ((torch.arange(bins) + 0.5) / bins).repeat(features, 1)
        half_width = 1 / (2 * bins)
        width = {
            "soft": 1 / half_width,
            "rbf": 1 / half_width,
            "hard": half_width,
            "sigmoid": 2 * half_width,
        }[kernel]
        widths = torch.full((features, bins), width)
        mask = None
        if masked:
            sizes = n - torch.arange(bags) * n // (2 * bags)
            mask = (torch.arange(n)[None, :] < sizes[:, None]).to(device)
        x, centers, widths = (t.to(device, dtype).requires_grad_() for t in (x, centers, widths))
        return (x, centers, widths, kernel, mask, True, SHARPNESS)

    itemsize = dtype.itemsize
    x_bytes = bags * n * features * itemsize
    out_bytes = bags * features * bins * itemsize
    mask_bytes = bags * n if masked else 0
    label = f"{kernel} bags{bags} N{n} F{features} B{bins}" + (" masked" if masked else "")
    return Case(
        "histogram",
        label,
        dtype,
        device,
        make_inputs,
        fastdl.functional.histogram,
        histogram_reference,
        bytes_fwd=x_bytes + out_bytes + mask_bytes,
        bytes_fwd_bwd=3 * x_bytes + 2 * out_bytes + 2 * mask_bytes,
        **TOLERANCE[dtype],
    )


def histnetq_step_case(
    device: str,
    bags: int,
    n: int,
    in_features: int,
    n_classes: int = 4,
    n_features: int = 64,
    bins: int = 32,
) -> Case:
    """A HistNetQ training step (forward, and backward to every parameter and the input):
    fastdl's model against the same model, same weights, whose histogram layer is the
    pure-PyTorch composition. The parameters are passed as arguments (torch.func's
    functional_call), so the harness differentiates and compares all of them."""
    torch.manual_seed(0)
    model = fastdl.models.HistNetQ(
        in_features, n_classes, n_bins=bins, histogram="soft", n_features=n_features
    ).to(device)
    names = [name for name, _ in model.named_parameters()]
    layer = model.histogram

    def with_reference_histogram(x, *params):
        # The model with its histogram layer's op swapped for the reference, same parameters.
        def reference_forward(h, mask=None):
            out = histogram_reference(
                h, layer.centers, layer.widths, layer.kernel, mask, layer.normalize, layer.sharpness
            )
            return out.flatten(-2)

        original = layer.forward
        layer.forward = reference_forward
        try:
            return torch.func.functional_call(model, dict(zip(names, params)), (x,))
        finally:
            layer.forward = original

    def with_fastdl(x, *params):
        return torch.func.functional_call(model, dict(zip(names, params)), (x,))

    def make_inputs():
        x = torch.rand(bags, n, in_features, device=device).requires_grad_()
        params = [p.detach().clone().requires_grad_() for p in model.parameters()]
        return (x, *params)

    x_bytes = bags * n * in_features * 4
    return Case(
        "histnetq_step",
        f"bags{bags} N{n} in{in_features} F{n_features} B{bins}",
        torch.float32,
        device,
        make_inputs,
        with_fastdl,
        with_reference_histogram,
        bytes_fwd=x_bytes,
        bytes_fwd_bwd=3 * x_bytes,
        **TOLERANCE[torch.float32],
    )


def cases(device: str, quick: bool) -> list[Case]:
    """Every kernel at the ANCHORS.md shape, and "soft" with a mask. CPU: bags16 N500 F64 B32
    fp32 (``quick``: bags8 N250, a quarter of it), and "soft" in bf16 at the same shape;
    CUDA: bags64 N1000 F300 B32 fp32 (the reference needs ~12 GiB there; ``quick`` changes
    nothing)."""
    if device == "cpu":
        shape = (8, 250, 64, 32) if quick else (16, 500, 64, 32)
    else:
        shape = (64, 1000, 300, 32)
    out = [histogram_case(device, kernel, *shape) for kernel in ("soft", "sigmoid", "rbf", "hard")]
    out.append(histogram_case(device, "soft", *shape, masked=True))
    if device == "cpu":  # the CPU kernels take bf16 (computed in float32): the same shape
        out.append(histogram_case(device, "soft", *shape, dtype=torch.bfloat16))
    bags, n = shape[:2]
    out.append(histnetq_step_case(device, bags, n, in_features=64))
    return out
