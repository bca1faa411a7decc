"""Fake (meta) kernels: output shapes and dtypes of every fastdl op without running it, so
the ops trace under torch.compile(fullgraph=True), torch.export and FakeTensor."""

from __future__ import annotations

import torch
from torch.library import register_fake


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    """Statistics are float32 for half inputs, else the input's dtype (as the kernels)."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


@register_fake("fastdl::layer_norm_forward")
def _layer_norm_forward(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    nd = len(normalized_shape)
    torch._check(
        tuple(input.shape[input.dim() - nd:]) == tuple(normalized_shape),
        lambda: f"fastdl.layer_norm: normalized_shape {list(normalized_shape)} must match the "
        f"trailing dimensions of input, got input of shape {list(input.shape)}",
    )
    stats_shape = list(input.shape[: input.dim() - nd]) + [1] * nd
    out = torch.empty_like(input, memory_format=torch.contiguous_format)
    dtype = _stats_dtype(input)
    return out, input.new_empty(stats_shape, dtype=dtype), input.new_empty(stats_shape, dtype=dtype)


def _bias_grad_dtype(input: torch.Tensor, weight) -> torch.dtype:
    """A norm's bias gradient: the weight's dtype, or the accumulation dtype without a weight
    (csrc/fastdl/norm/norm_params.h)."""
    return weight.dtype if weight is not None else _stats_dtype(input)


@register_fake("fastdl::layer_norm_backward")
def _layer_norm_backward(grad_output, input, normalized_shape, mean, rstd, weight, output_mask):
    param = weight if weight is not None else input
    grad_input = torch.empty_like(input, memory_format=torch.contiguous_format) if output_mask[0] else None
    grad_weight = param.new_empty(normalized_shape) if output_mask[1] and weight is not None else None
    grad_bias = (input.new_empty(normalized_shape, dtype=_bias_grad_dtype(input, weight))
                 if output_mask[2] else None)
    return grad_input, grad_weight, grad_bias


def _batch_norm_memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


def _batch_norm_empty_1d_channels(*per_channel):
    """C of a 1-d input with no elements, read as (0, C) (as batch_norm.cpp's channels_of)."""
    return next((t.shape[0] for t in per_channel if t is not None and t.dim() == 1), 0)


@register_fake("fastdl::batch_norm_forward")
def _batch_norm_forward(input, weight, bias, running_mean, running_var, training, momentum, eps):
    torch._check(input.dim() >= 2 or (input.dim() == 1 and input.numel() == 0),
                 lambda: f"fastdl.batch_norm: input must have shape (N, C) or (N, C, *), got {list(input.shape)}")
    channels = input.shape[1] if input.dim() >= 2 else _batch_norm_empty_1d_channels(
        weight, bias, running_mean, running_var)
    out = torch.empty_like(input, memory_format=_batch_norm_memory_format(input))
    dtype = _stats_dtype(input)
    return out, input.new_empty((channels,), dtype=dtype), input.new_empty((channels,), dtype=dtype)


@register_fake("fastdl::batch_norm_backward")
def _batch_norm_backward(grad_output, input, weight, save_mean, save_invstd, training, output_mask):
    channels = input.shape[1] if input.dim() >= 2 else save_mean.shape[0]
    param = weight if weight is not None else input
    grad_input = (torch.empty_like(input, memory_format=_batch_norm_memory_format(input))
                  if output_mask[0] else None)
    grad_weight = param.new_empty((channels,)) if output_mask[1] and weight is not None else None
    grad_bias = (input.new_empty((channels,), dtype=_bias_grad_dtype(input, weight))
                 if output_mask[2] else None)
    return grad_input, grad_weight, grad_bias


@register_fake("fastdl::histogram_forward")
def _histogram_forward(x, centers, widths, kernel="soft", mask=None, normalize=True, sharpness=1000.0):
    bins = centers.shape[-1]
    if x.dim() == 2:
        return x.new_empty((x.shape[1], bins))
    return x.new_empty((x.shape[0], x.shape[2], bins))


@register_fake("fastdl::histogram_backward")
def _histogram_backward(grad_output, x, centers, widths, kernel, mask, normalize, sharpness, output_mask):
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format) if output_mask[0] else None,
        torch.empty_like(centers, memory_format=torch.contiguous_format) if output_mask[1] else None,
        torch.empty_like(widths, memory_format=torch.contiguous_format) if output_mask[2] else None,
    )


def _pair(v):
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _pool_output_size(size, kernel, stride, pad, dilation, ceil_mode):
    """torch's pooling_output_shape (as detail::pool_output_size in pooling.cpp)."""
    out = (size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out = out - 1
    return out


def _pool2d_output(input, kernel_size, stride, padding, dilation, ceil_mode):
    """An empty (output-shaped) tensor of the pooling kernels, in the input's memory format."""
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride) if len(stride) else (kh, kw)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    torch._check(input.dim() in (3, 4), lambda: f"fastdl pooling: input must be 3-d or 4-d, got {list(input.shape)}")
    oh = _pool_output_size(input.shape[-2], kh, sh, ph, dh, ceil_mode)
    ow = _pool_output_size(input.shape[-1], kw, sw, pw, dw, ceil_mode)
    shape = list(input.shape[:-2]) + [oh, ow]
    return _pool2d_like(input, shape)


def _pool2d_like(input, shape, dtype=None):
    fmt = torch.contiguous_format
    if input.dim() == 4 and torch._prims_common.suggest_memory_format(input) == torch.channels_last:
        fmt = torch.channels_last
    return input.new_empty(shape, dtype=dtype).contiguous(memory_format=fmt)


@register_fake("fastdl::max_pool2d_forward")
def _max_pool2d_forward(input, kernel_size, stride=(), padding=(0,), dilation=(1,), ceil_mode=False):
    out = _pool2d_output(input, kernel_size, stride, padding, dilation, ceil_mode)
    return out, _pool2d_like(input, out.shape, torch.int64)


@register_fake("fastdl::max_pool2d_backward")
def _max_pool2d_backward(grad_output, input, indices, kernel_size, stride, padding, dilation, ceil_mode):
    return _pool2d_like(input, input.shape)


@register_fake("fastdl::avg_pool2d_forward")
def _avg_pool2d_forward(input, kernel_size, stride=(), padding=(0,), ceil_mode=False, count_include_pad=True,
                        divisor_override=None):
    return _pool2d_output(input, kernel_size, stride, padding, (1,), ceil_mode)


@register_fake("fastdl::avg_pool2d_backward")
def _avg_pool2d_backward(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                         divisor_override):
    return _pool2d_like(input, input.shape)


def _conv_size(size, kernel, stride, pad, dilation):
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


@register_fake("fastdl::conv2d_forward")
def _conv2d_forward(input, weight, bias=None, stride=(1,), padding=(0,), dilation=(1,), groups=1):
    torch._check(input.dim() in (3, 4), lambda: f"fastdl.conv2d: input must be 3-d or 4-d, got {list(input.shape)}")
    torch._check(weight.dim() == 4, lambda: f"fastdl.conv2d: weight must be 4-d, got {list(weight.shape)}")
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    oh = _conv_size(input.shape[-2], weight.shape[2], sh, ph, dh)
    ow = _conv_size(input.shape[-1], weight.shape[3], sw, pw, dw)
    shape = list(input.shape[:-3]) + [weight.shape[0], oh, ow]
    return _pool2d_like(input, shape)


@register_fake("fastdl::conv2d_backward")
def _conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups, output_mask):
    grad_input = _pool2d_like(input, input.shape) if output_mask[0] else None
    grad_weight = weight.new_empty(weight.shape) if output_mask[1] else None
    grad_bias = weight.new_empty((weight.shape[0],)) if output_mask[2] else None
    return grad_input, grad_weight, grad_bias


@register_fake("fastdl::sdpa_forward")
def _sdpa_forward(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                  dropout_seed=None):
    torch._check(query.dim() == 4 and key.dim() == 4 and value.dim() == 4,
                 lambda: "fastdl.scaled_dot_product_attention: query, key and value must be 4-d")
    B, Hq, L, _ = query.shape
    output = query.new_empty((B, Hq, L, value.shape[-1]))
    return output, query.new_empty((B, Hq, L), dtype=_stats_dtype(query))


@register_fake("fastdl::sdpa_backward")
def _sdpa_backward(grad_output, query, key, value, attn_mask, output, logsumexp, dropout_p,
                   is_causal, scale, dropout_seed, output_mask):
    grads = [t.new_empty(t.shape) if wanted else None
             for t, wanted in zip((query, key, value), output_mask[:3])]
    B, Hq, L, _ = query.shape
    grad_mask = query.new_empty((B, Hq, L, key.shape[2])) if output_mask[3] else None
    return (*grads, grad_mask)


@register_fake("fastdl::sdpa_weights")
def _sdpa_weights(query, key, attn_mask, dropout_p, is_causal, scale, dropout_seed, logsumexp):
    B, Hq, L, _ = query.shape
    return query.new_empty((B, Hq, L, key.shape[2]))


@register_fake("fastdl::sdpa_weights_backward")
def _sdpa_weights_backward(grad_weights, query, key, attn_mask, dropout_p, is_causal, scale,
                           dropout_seed, logsumexp, output_mask):
    return (query.new_empty(query.shape) if output_mask[0] else None,
            key.new_empty(key.shape) if output_mask[1] else None,
            grad_weights.new_empty(grad_weights.shape) if output_mask[2] else None)
# ---- recurrent (lstm, gru) ----------------------------------------------------------------

def _rnn_check_input(op, input, weight_ih, gates):
    torch._check(input.dim() == 3, lambda: f"{op}: input must have 3 dimensions (seq_len, batch, input_size), got {list(input.shape)}")
    torch._check(weight_ih.dim() == 2 and weight_ih.shape[1] == input.shape[2],
                 lambda: f"{op}: weight_ih must have shape [{gates} * hidden_size, input_size] with input_size = {input.shape[2]}, got {list(weight_ih.shape)}")
    return input.shape[0], input.shape[1], weight_ih.shape[0] // gates


@register_fake("fastdl::lstm_forward")
def _lstm_forward(input, hx, cx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, weight_hr=None,
                  peephole=None, lengths=None, reverse=False):
    T, B, H = _rnn_check_input("fastdl.lstm", input, weight_ih, 4)
    P = weight_hr.shape[0] if weight_hr is not None else H
    new = input.new_empty
    state = _stats_dtype(input)  # gates and cells stay float32 for half inputs (rnn.h)
    return (new((T, B, P)), new((B, P)), new((B, H)), new((T, B, 4 * H), dtype=state),
            new((T, B, H), dtype=state), new((T, B, P)),
            new((T if weight_hr is not None else 0, B, H)))


@register_fake("fastdl::lstm_backward")
def _lstm_backward(grad_output, grad_hy, grad_cy, input, hx, cx, weight_ih, weight_hh, weight_hr,
                   peephole, lengths, reverse, gates, cells, hiddens, hidden_pre, output_mask):
    like = [input, hx, cx, weight_ih, weight_hh, weight_ih.new_empty(weight_ih.shape[0]),
            weight_ih.new_empty(weight_ih.shape[0]), weight_hr, peephole]
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) if m and t is not None else None
                 for m, t in zip(output_mask, like))


@register_fake("fastdl::gru_forward")
def _gru_forward(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, lengths=None, reverse=False):
    T, B, H = _rnn_check_input("fastdl.gru", input, weight_ih, 3)
    new = input.new_empty
    return new((T, B, H)), new((B, H)), new((T, B, 4 * H), dtype=_stats_dtype(input)), new((T, B, H))


@register_fake("fastdl::gru_backward")
def _gru_backward(grad_output, grad_hy, input, hx, weight_ih, weight_hh, lengths, reverse, work,
                  hiddens, output_mask):
    like = [input, hx, weight_ih, weight_hh, weight_ih.new_empty(weight_ih.shape[0]),
            weight_ih.new_empty(weight_ih.shape[0])]
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) if m else None
                 for m, t in zip(output_mask, like))
# --- induced attention (Set Transformer) ---------------------------------------------------

@register_fake("fastdl::induced_attention_forward")
def _induced_attention_forward(query, key, value, key_padding_mask=None, scale=None):
    torch._check(query.dim() == 4 and key.dim() == 4 and value.dim() == 4,
                 lambda: "fastdl.induced_attention: query, key and value must be 4-d (batch, heads, L|S, E)")
    b, h, l, _ = query.shape
    # The output is laid out as (batch, L, heads, Ev), so merging the heads is free.
    out = query.new_empty((b, l, h, value.shape[3])).transpose(1, 2)
    return out, query.new_empty((b, h, l), dtype=_stats_dtype(query))


def _induced_rows_ready(t):
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


@register_fake("fastdl::induced_attention_backward")
def _induced_attention_backward(grad_output, query, key, value, key_padding_mask, output, lse, scale,
                                output_mask):
    return tuple(_induced_rows_ready(torch.empty_like(_induced_rows_ready(t))) if need else None
                 for t, need in zip((query, key, value), output_mask))
