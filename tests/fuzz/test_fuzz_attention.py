"""Differential fuzzing of scaled_dot_product_attention and MultiheadAttention against torch,
and of induced attention, the Set Transformer blocks and the histograms against fastdl's
pure-PyTorch references (fastdl.reference).

Two deliberate differences shape the attention cases' special values:
- no ±1e30 (``huge=False, infinite=False``): scores of ~1e29 and more exceed what the saved row log-sum-exp
  resolves (its ulp passes 1), and the backward, which recomputes P = exp(s - lse) as every
  flash attention does, loses the normalisation; torch's math path keeps it.
- NaN only in the queries (and in keys when nothing is masked), ±inf nowhere: a key whose
  weight is exactly 0 (masked, or an exp that underflowed) is never read by fastdl, while
  torch multiplies it in (0 * inf = NaN, and its additive mask gives NaN + -inf = NaN), so a
  NaN or an infinity in such a key or value is NaN in torch only (as fastdl's histogram
  ignores padding). The finite special values (±0, subnormals, ±1e-30) go everywhere.
- inputs up to 10 in scale, not 100: float32 probabilities recomputed from the saved row
  log-sum-exp carry about |lse| * 2^-24 relative error, so scores of 1e4 cost 3 digits there
  (torch's math path normalises by the row maximum instead).
- torch returns 0 for a NaN row on some paths and NaN on others (torch_may_drop_nan); a
  query whose keys are all masked is 0 in fastdl (sdpa's convention) and NaN in torch's
  MultiheadAttention, so every query keeps key 0 there; no NaN queries over S = 0 keys (0).
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

import fastdl.functional as FF
import fastdl.nn as fnn
from fastdl.reference import histogram_reference
from fastdl.reference.sets import (
    induced_attention_reference,
    isab_reference,
    mab_reference,
    pma_reference,
)
from fuzzlib import Case, Problem, check, mask_tensor, module_pair, tensor


def test_sdpa(case_index, fuzz_long):
    case = Case("sdpa", case_index, fuzz_long)
    lead = [case.size(f"batch{i}", 3) for i in range(case.randint("batch_dims", 0, 2))]
    heads = case.randint("heads", 1, 3)
    gqa = bool(lead) and case.flag("enable_gqa", 0.2)
    kv_heads = heads
    if gqa:
        heads = kv_heads * case.randint("gqa_groups", 1, 3)
    L, S = case.size("L", 9, large=300), case.size("S", 9, large=300)
    E, Ev = case.size("E", 8, zero=0.03), case.size("Ev", 8, zero=0.03)
    q_shape = lead + ([heads] if lead else []) + [L, E]
    kv_lead = lead + [kv_heads] if lead else []
    if lead and not gqa and case.flag("broadcast_kv_heads", 0.1):
        kv_lead = lead + [1]
    mask_kind = case.choice("attn_mask", [None, None, "bool", "float"])
    causal = mask_kind is None and case.flag("is_causal", 0.4)
    unmasked = mask_kind is None and not causal
    t = {
        "q": tensor(case, "q", q_shape, huge=False, infinite=False, nan=S > 0),
        "k": tensor(case, "k", kv_lead + [S, E], huge=False, infinite=False, nan=unmasked),
        "v": tensor(case, "v", kv_lead + [S, Ev], huge=False, infinite=False, nan=False),
    }
    if mask_kind:
        full = lead + ([heads] if lead else []) + [L, S]
        # a broadcastable shape: some leading dims 1, or only (L, S)
        mshape = [d if case.rng.random() < 0.6 else 1 for d in full[:-2]] + full[-2:]
        if case.flag("mask_2d", 0.4):
            mshape = full[-2:]
        # A query whose keys are all masked is 0 in fastdl and torch alike, but torch's is NaN
        # if the query holds a NaN (its scores are computed before the mask; case 1020): such
        # queries keep key 0.
        nan_query = bool(t["q"].base.isnan().any())
        t["mask"] = (
            mask_tensor(case, "mask", mshape, 0.75, first=True if nan_query else None)
            if mask_kind == "bool"
            else tensor(case, "mask", mshape, huge=False, infinite=False, specials=False)
        )
    scale = case.choice("scale", [None, None, 0.3, 2.0, -1.0])
    dropout = case.choice("dropout_p", [0.0, 0.0, 0.0, 1.0])
    grad = ["q", "k", "v"] + (["mask"] if mask_kind == "float" else [])

    def run(side, dtype, v):
        if side != "fastdl" and causal and scale is not None and scale < 0:
            # torch's is_causal with a negative scale gives NaN rows (its -inf fill times the
            # scale is +inf); the same causal limit as an explicit mask is right in torch.
            limit = torch.ones(L, S, dtype=torch.bool, device=v["q"].device).tril()
            return F.scaled_dot_product_attention(
                v["q"], v["k"], v["v"], limit, dropout, False, scale=scale, enable_gqa=gqa
            ), {}
        fn = FF.scaled_dot_product_attention if side == "fastdl" else F.scaled_dot_product_attention
        return fn(
            v["q"], v["k"], v["v"], v.get("mask"), dropout, causal, scale=scale, enable_gqa=gqa
        ), {}

    # E = 0 has no default scale 1/sqrt(E) (torch divides by zero): fastdl asks for one.
    raises = "E must be positive" if E == 0 and scale is None else None
    check(case, Problem(t, run, grad=grad, fastdl_raises=raises, torch_may_drop_nan=True))


def _mha_masks(case, t, kpm, am, batched, N, L, S, extra_keys, heads):
    """Adds the key padding and attention masks chosen (None, "bool", "float") to t: the padding
    mask over the S keys, the attention mask over those and the extra_keys (bias_k, zero
    attention) the module appends. Returns the attention mask's kind, made the padding mask's
    where both are given."""
    total_s = S + extra_keys
    if kpm:
        shape = [N, S] if batched else [S]
        t["kpm"] = (
            mask_tensor(case, "kpm", shape, 0.3, first=False)
            if kpm == "bool"
            else tensor(case, "kpm", shape, specials=False)
        )
    if am:
        shape = (
            [L, total_s]
            if case.flag("attn_mask_2d", 0.6)
            else [N * heads if batched else heads, L, total_s]
        )
        if kpm and kpm != am:  # mixed mask types: torch warns; keep them alike
            am = kpm
        t["am"] = (
            mask_tensor(case, "am", shape, 0.3, first=False)
            if am == "bool"
            else tensor(case, "am", shape, specials=False)
        )
    return am


def test_multihead_attention(case_index, fuzz_long):
    case = Case("MultiheadAttention", case_index, fuzz_long)
    heads = case.randint("num_heads", 1, 3)
    embed = heads * case.randint("head_dim", 1, 4)
    kdim = case.choice("kdim", [None, None, 3, 5])
    vdim = kdim if kdim is None else case.choice("vdim", [kdim, 2, 6])
    bias, bias_kv, zero_attn = (
        case.flag("bias", 0.8),
        case.flag("add_bias_kv", 0.25),
        case.flag("add_zero_attn", 0.25),
    )
    batch_first = case.flag("batch_first")
    batched = case.flag("batched", 0.85)
    N, L, S = case.size("N", 3), case.size("L", 7, zero=0.03), case.size("S", 7, zero=0.03)
    need_weights = case.flag("need_weights")
    average = case.flag("average_attn_weights", 0.7)
    training = case.flag("training", 0.3)
    torch.manual_seed(case.seed)
    ref = nn.MultiheadAttention(
        embed,
        heads,
        dropout=0.0,
        bias=bias,
        add_bias_kv=bias_kv,
        add_zero_attn=zero_attn,
        kdim=kdim,
        vdim=vdim,
        batch_first=batch_first,
    )
    if bias_kv:
        with torch.no_grad():
            ref.bias_k.normal_()
            ref.bias_v.normal_()
    ref.train(training)

    def seq(n, d):
        if not batched:
            return [n, d]
        return [N, n, d] if batch_first else [n, N, d]

    self_attention = kdim is None and case.flag("self_attention", 0.3)
    kpm = case.choice("key_padding_mask", [None, None, "bool", "float"])
    am = case.choice("attn_mask", [None, None, "bool", "float"])
    masked = bool(kpm or am)
    if self_attention:
        S = L
    t = {
        "q": tensor(
            case,
            "q",
            seq(L, embed),
            huge=False,
            infinite=False,
            nan=not (masked and self_attention),
        ),
        "k": tensor(case, "k", seq(S, kdim or embed), huge=False, infinite=False, nan=not masked),
        "v": tensor(case, "v", seq(S, vdim or embed), huge=False, infinite=False, nan=False),
    }
    am = _mha_masks(case, t, kpm, am, batched, N, L, S, int(bias_kv) + int(zero_attn), heads)
    causal = bool(am) and case.flag("is_causal", 0.2)

    def run(side, dtype, v):
        m, params = module_pair(ref, fnn.MultiheadAttention, dtype, side)
        k = v["q"] if self_attention else v["k"]
        val = v["q"] if self_attention else v["v"]
        out, weights = m(
            v["q"],
            k,
            val,
            key_padding_mask=v.get("kpm"),
            need_weights=need_weights,
            attn_mask=v.get("am"),
            average_attn_weights=average,
            is_causal=causal,
        )
        return (out, weights), params

    check(
        case,
        Problem(t, run, grad=["q"] if self_attention else ["q", "k", "v"], torch_may_drop_nan=True),
    )


def test_induced_attention(case_index, fuzz_long):
    case = Case("induced_attention", case_index, fuzz_long)
    B, H = case.size("batch", 3), case.randint("heads", 1, 3)
    L, S = case.size("L", 9, large=500), case.size("S", 9, large=500)
    E, Ev = case.randint("E", 1, 8), case.randint("Ev", 1, 8)
    masked = case.flag("key_padding_mask", 0.5)
    # A padded key gets no gradient, even in a NaN row (the reference's softmax gives it NaN).
    t = {
        "q": tensor(case, "q", [B, H, L, E], huge=False, infinite=False, nan=not masked),
        "k": tensor(case, "k", [B, H, S, E], huge=False, infinite=False, nan=not masked),
        "v": tensor(case, "v", [B, H, S, Ev], huge=False, infinite=False, nan=False),
    }
    if masked:
        t["kpm"] = mask_tensor(case, "kpm", [B, S], 0.3)
    scale = case.choice("scale", [None, None, 0.5, 3.0])

    def run(side, dtype, v):
        fn = FF.induced_attention if side == "fastdl" else induced_attention_reference
        return fn(v["q"], v["k"], v["v"], v.get("kpm"), scale), {}

    check(case, Problem(t, run, grad=["q", "k", "v"]))


def test_set_blocks(case_index, fuzz_long):
    case = Case("set_blocks", case_index, fuzz_long)
    kind = case.choice("block", ["MAB", "SAB", "ISAB", "PMA"])
    heads = case.randint("num_heads", 1, 3)
    dim_v = heads * case.randint("head_dim", 1, 3)
    dim_in = case.randint("dim_in", 1, 5)
    ln = case.flag("ln")
    variant = case.choice("variant", ["paper", "reference"])
    B, n, m = case.size("batch", 3), case.size("n", 9, large=200), case.size("m", 5)
    torch.manual_seed(case.seed)
    if kind == "MAB":
        block = fnn.MAB(dim_in, dim_in + 1, dim_v, heads, ln=ln, variant=variant)
    elif kind == "SAB":
        block = fnn.SAB(dim_in, dim_v, heads, ln=ln, variant=variant)
    elif kind == "ISAB":
        block = fnn.ISAB(dim_in, dim_v, heads, max(m, 1), ln=ln, variant=variant)
    else:
        block = fnn.PMA(dim_in, 1, max(m, 1), ln=ln, variant=variant)
    masked = case.flag("key_padding_mask", 0.4)
    # x is (also) the keys and values, except in MAB: NaN only where no key is masked.
    t = {
        "x": tensor(
            case, "x", [B, n, dim_in], huge=False, infinite=False, nan=not masked or kind == "MAB"
        )
    }
    if kind == "MAB":
        t["y"] = tensor(case, "y", [B, m, dim_in + 1], huge=False, infinite=False, nan=False)
    if masked:
        t["kpm"] = mask_tensor(case, "kpm", [B, m if kind == "MAB" else n], 0.3)

    def run(side, dtype, v):
        b = copy.deepcopy(block).to(dtype)
        params = dict(b.named_parameters())
        kpm = v.get("kpm")
        if side == "fastdl":
            out = b(v["x"], v["y"], kpm) if kind == "MAB" else b(v["x"], kpm)
        elif kind == "MAB":
            out = mab_reference(b, v["x"], v["y"], kpm)
        elif kind == "SAB":
            out = mab_reference(b.mab, v["x"], v["x"], kpm)
        elif kind == "ISAB":
            out = isab_reference(b, v["x"], kpm)
        else:
            out = pma_reference(b, v["x"], kpm)
        return out, params

    # A padded key gets no gradient; the reference's is 0 * NaN = NaN when the queries hold NaN.
    check(
        case,
        Problem(
            t,
            run,
            grad=list(k for k in t if k != "kpm"),
            torch_may_drop_nan=True,
            reference_grad_nan_artifact=masked and case.nans,
        ),
    )


def test_histogram(case_index, fuzz_long):
    case = Case("histogram", case_index, fuzz_long)
    kernel = case.choice("kernel", ["sigmoid", "soft", "rbf", "hard"])
    batched = case.flag("batched", 0.85)
    bags, N, Fe = case.size("bags", 3), case.size("N", 9, large=800), case.size("F", 5)
    B = case.choice("bins", [1, 2, 3, 5, 8, 16, 17, 33])
    shared = case.flag("shared_params", 0.2)
    pshape = [B] if shared else [Fe, B]
    low, high = {
        "sigmoid": (0.05, 0.3),
        "soft": (2.0, 12.0),
        "rbf": (2.0, 12.0),
        "hard": (0.05, 0.3),
    }[kernel]
    t = {
        "x": tensor(case, "x", ([bags] if batched else []) + [N, Fe], low=-0.2, high=1.2),
        "c": tensor(
            case, "c", pshape, low=0.0, high=1.0, layouts=["contiguous", "sliced", "transposed"]
        ),
        "w": tensor(
            case,
            "w",
            pshape,
            low=low,
            high=high,
            specials=False,
            layouts=["contiguous", "sliced", "expanded"],
        ),
    }
    if case.flag("mask", 0.4):
        t["mask"] = mask_tensor(case, "mask", ([bags] if batched else []) + [N], 0.7)
    normalize = case.flag("normalize", 0.8)
    sharpness = case.choice("sharpness", [1000.0, 1000.0, 30.0])
    module = not shared and Fe > 0 and case.flag("module", 0.3)  # modules need n_features > 0

    def run(side, dtype, v):
        mask = v.get("mask")
        if side == "fastdl":
            if module:
                cls = {
                    "sigmoid": fnn.SigmoidHistogram,
                    "soft": fnn.SoftHistogram,
                    "rbf": fnn.RBFHistogram,
                    "hard": fnn.HardHistogram,
                }[kernel]
                extra = {"sharpness": sharpness} if kernel == "sigmoid" else {}
                m = cls(
                    Fe, B, learnable=False, flatten=False, normalize=normalize, dtype=dtype, **extra
                )
                m.centers, m.widths = v["c"], v["w"]  # the generated tensors, as plain attributes
                return m(v["x"], mask), {}
            return FF.histogram(v["x"], v["c"], v["w"], kernel, mask, normalize, sharpness), {}
        x = (
            v["x"] if mask is None else v["x"].masked_fill(~mask[..., None], 0.0)
        )  # absent: never read
        return histogram_reference(x, v["c"], v["w"], kernel, mask, normalize, sharpness), {}

    # The reference's gradient is NaN where fastdl's is a number by design: the hard kernel's
    # torch.where (0 * NaN of the branch not taken), and 0 * inf in autograd's chain rule where
    # an input is infinite (an inactive relu times d|d|/dw = inf).
    check(
        case,
        Problem(
            t,
            run,
            grad=["x", "c", "w"],
            reference_grad_nan_artifact=kernel == "hard" or case.infinities,
        ),
    )
