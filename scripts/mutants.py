"""The mutants of scripts/mutate.py: small bugs planted one at a time in the CPU kernels.

Each mutant names a file under csrc/fastdl, an exact snippet of it (which must occur exactly
once), its replacement, and the test files that must catch it (the family's path tests
first, so a caught mutant fails fast under ``-x``, then the family's op tests). ``quick``
marks the subset CI runs (the bugs of issue 18 that once passed the whole suite). A mutant
whose file moved is found by its snippet (scripts/mutate.py --check lists every mutant that
no longer applies).

Kinds: flipped signs, off-by-one bounds, dropped terms, wrong offsets, accumulator resets,
wrong tail handling, wrong thread partitions.
"""

from __future__ import annotations

from dataclasses import dataclass

NORM = [
    "tests/test_paths_norm.py",
    "tests/test_layer_norm.py",
    "tests/test_batch_norm.py",
    "tests/test_batch_norm_errors.py",
]
POOL = [
    "tests/test_paths_pooling.py",
    "tests/test_pooling.py",
    "tests/test_pooling_half.py",
    "tests/test_pooling_errors.py",
]
CONV = [
    "tests/test_paths_conv.py",
    "tests/test_conv.py",
    "tests/test_conv_gemm.py",
    "tests/test_models_cnn.py",
]
ATTN = [
    "tests/test_paths_attention.py",
    "tests/test_attention.py",
    "tests/test_multihead_attention.py",
]
INDUCED = [
    "tests/test_paths_sets.py",
    "tests/test_induced_attention.py",
    "tests/test_set_transformer.py",
]
RNN = [
    "tests/test_paths_rnn.py",
    "tests/test_rnn.py",
    "tests/test_rnn_cells.py",
    "tests/test_rnn_errors.py",
]
HIST = [
    "tests/test_paths_histogram.py",
    "tests/test_histogram.py",
    "tests/test_histogram_masks.py",
]


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    original: str
    replacement: str
    tests: tuple
    quick: bool = False


def _family(file, tests, *mutants):
    """The mutants of one file, from (name, original, replacement[, QUICK]) tuples."""
    return [
        Mutant(name, file, original, replacement, tuple(tests), bool(quick))
        for name, original, replacement, *quick in mutants
    ]


QUICK = True

MUTANTS = [
    # ---- common/cpu/vec.h (row reductions, per-thread column sums, dot, exp rows) ----
    *_family(
        "csrc/fastdl/common/cpu/vec.h",
        NORM + ATTN[:1],
        (
            "reduce_sum: fourth accumulator reads the third vector",
            "a3 += f(Vec<T>::loadu(x + i + 3 * L));",
            "a3 += f(Vec<T>::loadu(x + i + 2 * L));",
        ),
        (
            "mean_var: exact second pass never taken",
            "if (!(d * d <= 64.0 * var)) {",
            "if (false) {",
        ),
        (
            "ThreadColumnSums: only the first thread's row summed",
            "for (int64_t t = 0; t < threads; ++t) s += data_[t * columns_ + c];",
            "for (int64_t t = 0; t < 1; ++t) s += data_[t * columns_ + c];",
        ),
    ),
    *_family(
        # A row maximum short of the true one changes no softmax on paper (exp(s - m) / sum
        # is the same for any m), only its overflow: caught by the dominant-key tests. (A
        # loop bound one vector short is no mutant here: the scalar tail takes the vector.)
        "csrc/fastdl/common/cpu/vec.h",
        [ATTN[0], INDUCED[0], ATTN[1], INDUCED[1]],
        (
            "max_of: running vector maximum overwritten by each vector",
            "acc = at::vec::maximum(acc, Vec<T>::loadu(x + i));",
            "acc = Vec<T>::loadu(x + i);",
        ),
    ),
    *_family(
        "csrc/fastdl/common/cpu/vec.h",
        CONV[:1] + INDUCED[:1] + CONV[1:],
        (
            "dot: second accumulator reads the first vector of b",
            "s1 = at::vec::fmadd(Vec<T>::loadu(a + i + L), Vec<T>::loadu(b + i + L), s1);",
            "s1 = at::vec::fmadd(Vec<T>::loadu(a + i + L), Vec<T>::loadu(b + i), s1);",
        ),
    ),
    *_family(
        "csrc/fastdl/common/cpu/vec.h",
        [ATTN[0], INDUCED[0], ATTN[1], INDUCED[1]],
        (
            "exp_shifted_row: vector exp not shifted (sdpa weights, induced probabilities)",
            "const auto e = (Vec<T>::loadu(x + j) - Vec<T>(shift)).exp();",
            "const auto e = Vec<T>::loadu(x + j).exp();",
        ),
        (
            "exp_shifted_row: scalar exp tail not shifted",
            "x[j] = std::exp(x[j] - shift);",
            "x[j] = std::exp(x[j]);",
        ),
    ),
    # ---- common/cpu/small_gemm.h (register-tiled small GEMM) ----
    *_family(
        "csrc/fastdl/common/cpu/small_gemm.h",
        ATTN[:1] + INDUCED[:1] + RNN[:1],
        (
            "small_gemm: tiles ignore accumulate",
            "acc[r][v] = accumulate ? Vec<T>::loadu(c + r * ldc + v * L) : Vec<T>(T(0));",
            "acc[r][v] = Vec<T>(T(0));",
        ),
        (
            "small_gemm: scalar column tail ignores accumulate",
            "T s = accumulate ? c[i * ldc + j] : T(0);",
            "T s = T(0);",
        ),
        (
            "small_gemm: 4-row tile advances 2 rows",
            "accumulate);\n    i += 4;",
            "accumulate);\n    i += 2;",
        ),
        (
            "parallel_gemm: each thread's panel range loses its last column",
            "j1 = std::min(n, end * panel);",
            "j1 = std::min(n, end * panel - 1);",
        ),
    ),
    # ---- norm ----
    *_family(
        "csrc/fastdl/norm/cpu/layer_norm.cpp",
        NORM[:2],
        (
            "layer_norm: fused weight+bias loop adds the weight as bias",
            "Vec<T>::loadu(weight + i), Vec<T>::loadu(bias + i)).store(yr + i);",
            "Vec<T>::loadu(weight + i), Vec<T>::loadu(weight + i)).store(yr + i);",
        ),
        (
            "layer_norm backward: vector sum of g * xhat drops xhat",
            "sum_gx += g * xhat;",
            "sum_gx += g;",
        ),
        (
            "layer_norm backward: weight-gradient vector accumulator reset",
            "if (dw_acc) (Vec<T>::loadu(dw_acc + i) + d * xhat).store(dw_acc + i);",
            "if (dw_acc) (d * xhat).store(dw_acc + i);",
        ),
        (
            "layer_norm backward: bias-gradient tail overwrites",
            "if (db_acc) db_acc[i] += dyr[i];",
            "if (db_acc) db_acc[i] = dyr[i];",
        ),
    ),
    *_family(
        "csrc/fastdl/norm/cpu/batch_norm.cpp",
        [NORM[0], NORM[2]],
        (
            "batch_norm: row-wise block not reset after a flush",
            "std::fill(blk1.begin(), blk1.end(), T(0));",
            ";",
        ),
        (
            "batch_norm: planar tail one short",
            "for (; i < inner; ++i) {",
            "for (; i < inner - 1; ++i) {",
        ),
        (
            "batch_norm: running variance biased",
            "const double unbiased = n > 1 ? var * n / (n - 1) : var;",
            "const double unbiased = var;",
        ),
        (
            "batch_norm: row-wise affine drops the x term",
            "r2[j] = b ? k2[c] : T(0);",
            "r2[j] = T(0);",
        ),
        (
            "batch_norm: vector affine adds k1 for k3",
            "coef(k2, i), coef(k3, i));",
            "coef(k2, i), coef(k1, i));",
        ),
        (
            "batch_norm: thread partial overwritten per flush",
            "acc1[j] += blk1[j];",
            "acc1[j] = blk1[j];",
        ),
    ),
    # ---- pooling ----
    *_family(
        "csrc/fastdl/pooling/cpu/pooling.cpp",
        POOL,
        (
            "pooling: channels-last 4-vector block reads p + 2 L for the fourth (issue 18)",
            "a3 = at::vec::fmadd(w, load_as<T>(p + 3 * L), a3);",
            "a3 = at::vec::fmadd(w, load_as<T>(p + 2 * L), a3);",
            QUICK,
        ),
        (
            "max_pool channels-last: ties take the later tap",
            "const auto take = (val > best[v]) | val.isnan();",
            "const auto take = (val >= best[v]) | val.isnan();",
        ),
        (
            "max_pool channels-last: argmax blend reversed",
            "arg[v] = Vec<T>::blendv(arg[v], here, take);",
            "arg[v] = Vec<T>::blendv(here, arg[v], take);",
        ),
        (
            "avg_pool channels-last: divisor off by one",
            "const T inv = win.divisor == 0 ? T(0) : T(1) / T(win.divisor);",
            "const T inv = win.divisor == 0 ? T(0) : T(1) / T(win.divisor + 1);",
        ),
        (
            "max_pool backward channels-last: overlapping windows overwrite",
            "if (i >= 0 && i < HW) dxp[i * C + c] += static_cast<T>(dyp[o * C + c]);",
            "if (i >= 0 && i < HW) dxp[i * C + c] = static_cast<T>(dyp[o * C + c]);",
        ),
        (
            "pooling: single-vector channel sum reads one channel off",
            "a = at::vec::fmadd(V(weight), load_as<T>(src + c), a);",
            "a = at::vec::fmadd(V(weight), load_as<T>(src + c + 1), a);",
        ),
        (
            "avg_pool backward NCHW: last column of each window dropped",
            "for (int64_t iw = win.w0; iw < win.w1; ++iw) dxp[ih * W + iw] += g;",
            "for (int64_t iw = win.w0; iw < win.w1 - 1; ++iw) dxp[ih * W + iw] += g;",
        ),
    ),
    # ---- conv ----
    *_family(
        "csrc/fastdl/conv/cpu/conv.cpp",
        CONV,
        (
            "conv whole images: weight-gradient chunks not accumulated (issue 18)",
            "/*accumulate=*/n0 > begin, inputs);",
            "/*accumulate=*/false);",
            QUICK,
        ),
        (
            "conv chunked: weight-gradient chunks not accumulated",
            "/*accumulate=*/n0 > 0, inputs);",
            "/*accumulate=*/false);",
        ),
        (
            "conv whole images: thread partials overwrite",
            "for (int64_t i = 0; i < K * rows_g; ++i) gw[i] += part[i];",
            "for (int64_t i = 0; i < K * rows_g; ++i) gw[i] = part[i];",
        ),
        (
            "conv im2col strided: reads one column off",
            "d[ow] = row[ow * s.sw];",
            "d[ow] = row[ow * s.sw + 1];",
        ),
        (
            "conv col2im strided: overlapping taps overwrite",
            "for (int64_t ow = wr.begin; ow < wr.end; ++ow) row[ow * s.sw] += g[ow];",
            "for (int64_t ow = wr.begin; ow < wr.end; ++ow) row[ow * s.sw] = g[ow];",
        ),
        (
            "conv chunked forward: partial last chunk written through the full chunk's view",
            "if (nb != chunk) cols = at::empty({rows, nb * L}, x.options());",
            ";",
        ),
        (
            "conv bias gradient: images overwrite",
            "total += cpu::reduce_sum(row, L, [](auto v) { return v; });",
            "total = cpu::reduce_sum(row, L, [](auto v) { return v; });",
        ),
    ),
    *_family(
        "csrc/fastdl/conv/cpu/depthwise.cpp",
        CONV,
        (
            "depthwise forward vector: column dilation ignored",
            "V::loadu(xr + kj * s.dw), acc);",
            "V::loadu(xr + kj), acc);",
        ),
        (
            "depthwise grad_input: channel multiplier terms not accumulated",
            "V acc = j == 0 ? V(T(0)) : V::loadu(xr + iw);",
            "V acc = V(T(0));",
        ),
        (
            "depthwise grad_weight: last column of each row dropped",
            "partial += dot(gr + wr.begin, xr + wr.begin, wr.end - wr.begin);",
            "partial += dot(gr + wr.begin, xr + wr.begin, wr.end - wr.begin - 1);",
        ),
    ),
    *_family(
        "csrc/fastdl/common/cpu/gemm.cpp",
        CONV,
        (
            "gemm: B transposes land one column off",
            "panel + k * NR + j_done, NR);",
            "panel + k * NR + j_done + 1, NR);",
        ),
        (
            "gemm: A transposes read one step off",
            "transpose_8x8(src + koff[k_done], A.row_stride,",
            "transpose_8x8(src + koff[k_done] + 1, A.row_stride,",
        ),
        (
            "gemm AVX2 kernel: accumulate reads the wrong half",
            "acc1[i] = _mm256_add_ps(acc1[i], _mm256_loadu_ps(row + 8));",
            "acc1[i] = _mm256_add_ps(acc1[i], _mm256_loadu_ps(row));",
        ),
    ),
    *_family(
        "csrc/fastdl/common/cpu/gemm_blocking.h",
        CONV,
        (
            "gemm: later reduction blocks overwrite",
            "const bool acc = accumulate || k0 > 0;",
            "const bool acc = accumulate;",
        ),
        (
            "gemm: edge tiles ignore accumulate",
            "out = (acc ? out : 0.f) + c_tile[ii * NR + jj];",
            "out = c_tile[ii * NR + jj];",
        ),
        # (One column short is no mutant: the panel is padded to NR columns and its edge
        # tile's width comes from N, so the column is still computed.)
        (
            "gemm: each task's column range loses its last tile",
            "tn1 = std::min(N, tn0 + nc_task);",
            "tn1 = std::min(N, tn0 + nc_task - NR);",
        ),
        (
            "gemm: column blocks past kNc skip a column",
            "for (int64_t n0 = tn0; n0 < tn1; n0 += nc_most) {",
            "for (int64_t n0 = tn0; n0 < tn1; n0 += nc_most + 1) {",
        ),
        (
            "gemm: row blocks past kMc skip a tile",
            "for (int64_t m0 = tm0; m0 < tm1; m0 += mc_most) {",
            "for (int64_t m0 = tm0; m0 < tm1; m0 += mc_most + 8) {",
        ),
    ),
    # ---- attention ----
    *_family(
        "csrc/fastdl/attention/cpu/sdpa.cpp",
        ATTN,
        (
            "sdpa: vector part of the rescale dropped",
            "(Vec<T>::loadu(a + e) * Vec<T>(correction)).store(a + e);",
            "(Vec<T>::loadu(a + e) * Vec<T>(T(1))).store(a + e);",
        ),
        (
            "sdpa causal: a block's last visible key skipped",
            "std::min(shape.kv_len, q0 + rows)",
            "std::min(shape.kv_len, q0 + rows - 1)",
        ),
        (
            "sdpa causal backward: first query block after the key block skipped",
            "(k0 / kQueryBlock) * kQueryBlock : 0;",
            "(k0 / kQueryBlock) * kQueryBlock + kQueryBlock : 0;",
        ),
        (
            "sdpa backward: dS vector drops delta",
            "(Vec<T>::loadu(pr + c) * (Vec<T>::loadu(d + c) - dl)).store(d + c);",
            "(Vec<T>::loadu(pr + c) * Vec<T>::loadu(d + c)).store(d + c);",
        ),
        (
            "sdpa: row sum drops the scalar tail",
            "cpu::horizontal_sum(block_sum) + tail;",
            "cpu::horizontal_sum(block_sum);",
        ),
        ("sdpa backward: dK not scaled", "gk[n] = dk[n] * scale;", "gk[n] = dk[n];"),
        (
            "sdpa GQA backward: only the first head of a group",
            "h < (kv_h + 1) * shape.group(); ++h) {",
            "h < kv_h * shape.group() + 1; ++h) {",
        ),
    ),
    *_family(
        "csrc/fastdl/attention/cpu/sdpa_rows.h",
        ATTN,
        (
            "sdpa causal: the key after the diagonal visible",
            "c = std::max<int64_t>(0, i + 1 - k0);",
            "c = std::max<int64_t>(0, i + 2 - k0);",
        ),
    ),
    *_family(
        "csrc/fastdl/attention/cpu/sdpa_weights.cpp",
        ATTN,
        (
            "sdpa weights backward: tail drops delta",
            "for (; c < S; ++c) dp[c] = pr[c] * (dp[c] - delta);",
            "for (; c < S; ++c) dp[c] = pr[c] * dp[c];",
        ),
        (
            "sdpa weights backward: vector part drops delta",
            "(Vec<T>::loadu(pr + c) * (Vec<T>::loadu(dp + c) - Vec<T>(delta))).store(dp + c);",
            "(Vec<T>::loadu(pr + c) * Vec<T>::loadu(dp + c)).store(dp + c);",
        ),
    ),
    # ---- induced attention ----
    *_family(
        "csrc/fastdl/sets/cpu/induced_attention.cpp",
        INDUCED,
        (
            "induced add_weighted_rows: fourth vector reads r + 2 W (issue 18)",
            "a3 = at::vec::fmadd(wj, Vec<T>::loadu(r + 3 * W), a3);",
            "a3 = at::vec::fmadd(wj, Vec<T>::loadu(r + 2 * W), a3);",
            QUICK,
        ),
        (
            "induced key splits: total of the split weights overwritten",
            "total += softmax::exp_shifted(part_lse[j * BH * p.L + row], mx);",
            "total = softmax::exp_shifted(part_lse[j * BH * p.L + row], mx);",
        ),
        (
            "induced key splits: weights against the maximum, not the lse",
            "softmax::exp_shifted(part_lse[j * BH * p.L + row], row_lse);",
            "softmax::exp_shifted(part_lse[j * BH * p.L + row], mx);",
        ),
        (
            "induced backward: only the first thread's buffer summed",
            "for (int64_t th = 0; th < threads; ++th) {",
            "for (int64_t th = 0; th < 1; ++th) {",
        ),
        (
            "induced: padded keys not masked",
            "for (int64_t j : c.padded) scores[j] = softmax::neg_inf<T>();",
            "for (int64_t j : c.padded) (void)j;",
        ),
        (
            "induced backward: each 32-row block drops its last row",
            "i < std::min(l1, r0 + kBackwardRows); ++i) {",
            "i < std::min(l1, r0 + kBackwardRows - 1); ++i) {",
        ),
        (
            "induced backward: dS not scaled",
            "prob_r[j] * (ds_r[j] - d_i) * p.scale;",
            "prob_r[j] * (ds_r[j] - d_i);",
        ),
        ("induced: running sum not rescaled", "l[r] = l[r] * alpha + sum;", "l[r] = l[r] + sum;"),
        (
            "induced: key chunks one key short",
            "chunk.load(p, bh, c0, std::min(kKeyChunk, s1 - c0), /*with_values=*/false);",
            "chunk.load(p, bh, c0, std::min(kKeyChunk - 1, s1 - c0), /*with_values=*/false);",
        ),
    ),
    # ---- recurrent ----
    *_family(
        "csrc/fastdl/rnn/cpu/rnn.cpp",
        RNN,
        (
            "rnn column sums: block accumulator zeroed once, not per block (issue 18)",
            "    T acc[kBlock];\n    for (int64_t blk = begin; blk < end; ++blk) {\n"
            "      const int64_t c0 = blk * kBlock, width = std::min(kBlock, cols - c0);\n"
            "      std::fill_n(acc, width, T(0));\n",
            "    T acc[kBlock];\n    std::fill_n(acc, kBlock, T(0));\n"
            "    for (int64_t blk = begin; blk < end; ++blk) {\n"
            "      const int64_t c0 = blk * kBlock, width = std::min(kBlock, cols - c0);\n",
            QUICK,
        ),
        (
            "peephole gradient: straddling vectors take the wrong cell",
            "(kk == 2 ? c : c_prev)[n * H + jj];",
            "(kk == 2 ? c_prev : c)[n * H + jj];",
        ),
        (
            "lstm inactive step: cell not carried",
            "std::copy_n(c_prev + r, n, c + r);",
            "std::fill_n(c + r, n, T(0));",
        ),
        (
            "gru backward: dgh_n stored as dn",
            "L::store(dgh + g3 + 2 * H + j, d.dgh_n);",
            "L::store(dgh + g3 + 2 * H + j, d.dn);",
        ),
        (
            "lstm projection: state gradient drops the output gradient",
            "if (gy) v = v + L::load(gy + b * P + j);",
            ";",
        ),
        (
            "lstm projection: inactive step state not carried",
            "std::copy_n(prev + b * P, P, state + b * P);",
            "std::fill_n(state + b * P, P, T(0));",
        ),
        (
            "lstm forward: b_hh replaced by b_ih",
            "bias_at<L>(b_ih, o) +\n                 bias_at<L>(b_hh, o);",
            "bias_at<L>(b_ih, o) +\n                 bias_at<L>(b_ih, o);",
        ),
        (
            "rnn over_lanes: last scalar lane skipped",
            "for (; j < n; ++j) body.template operator()<Scalar<T>>(j);",
            "for (; j + 1 < n; ++j) body.template operator()<Scalar<T>>(j);",
        ),
        (
            "lstm backward: output gradient dropped",
            "if (gy) d_h = d_h + L::load(gy + r + j);\n        const auto d = rnn_math::lstm_backward",
            "const auto d = rnn_math::lstm_backward",
        ),
    ),
    *_family(
        "csrc/fastdl/rnn/lstm.cpp",
        RNN,
        (
            "lstm driver: recurrent state gradient not accumulated",
            "w_hh.multiply(dgates[t], dh, true);",
            "w_hh.multiply(dgates[t], dh, false);",
        ),
    ),
    *_family(
        "csrc/fastdl/rnn/rnn_common.h",
        RNN,
        (
            "rnn drivers: reverse dW_hh reads unshifted hiddens",
            "auto hp = reverse ? hiddens.narrow(0, 1, T - 1)",
            "auto hp = reverse ? hiddens.narrow(0, 0, T - 1)",
        ),
    ),
    # ---- histogram ----
    *_family(
        "csrc/fastdl/histogram/cpu/histogram.cpp",
        HIST,
        (
            "histogram vector path: width-gradient sign flipped (issue 18)",
            "gw_acc[j] += gv[j] * dw;",
            "gw_acc[j] -= gv[j] * dw;",
            QUICK,
        ),
        (
            "histogram single-vector bins: mask ignored",
            "forward_bins<T, K, 1>(xcol, N, F, bag_mask,",
            "forward_bins<T, K, 1>(xcol, N, F, nullptr,",
        ),
        (
            "histogram sigmoid one-exp: lower sigmoid uses exp(-s w / 2)",
            "lower = one / (one + e * b.exp_plus);",
            "lower = one / (one + e * b.exp_minus);",
        ),
        (
            "histogram soft derivative: sign flipped",
            "((d > zero) & (zero - w)) | ((d < zero) & w);",
            "((d > zero) & w) | ((d < zero) & (zero - w));",
        ),
        (
            "histogram scalar bins: centre-gradient sign flipped",
            "gcf[k] -= g[k] * dd;",
            "gcf[k] += g[k] * dd;",
        ),
        (
            "histogram backward: input gradient overwritten per vector block",
            "if (gxcol) gxcol[i * gx_stride] += cpu::horizontal_sum(gx);",
            "if (gxcol) gxcol[i * gx_stride] = cpu::horizontal_sum(gx);",
        ),
        (
            "histogram rbf: width derivative drops d",
            "dv_dw = nonzero & (Vec<T>(T(-2)) * z * dv);",
            "dv_dw = nonzero & (Vec<T>(T(-2)) * z * v);",
        ),
        (
            "histogram forward: last bin not scaled",
            "for (k = 0; k < B; ++k) o[k] *= scale[bag];",
            "for (k = 0; k < B - 1; ++k) o[k] *= scale[bag];",
        ),
        (
            "histogram hard derivative: sign flipped",
            "dv_dd = zero - g * vec_sign<T>(d);",
            "dv_dd = g * vec_sign<T>(d);",
        ),
    ),
]
