// induced_attention CPU kernels: at::parallel_for over (batch*head, query block, key split)
// tasks, each streaming its keys in chunks of kKeyChunk through an online softmax. A chunk's
// keys (and values, in backward) are transposed into a small buffer so that the scores of a
// query row against the whole chunk are vector FMAs along the chunk; the probabilities then
// update the row's output with vector FMAs along the value features. Memory per task is
// O(query block * Ev + chunk * (E + Ev)), never O(L * S).
//
// Backward recomputes p = exp(scale q.k - lse) and uses D = rowsum(dO * O):
//   dV_j += p_ij dO_i,  dS_ij = p_ij (dO_i . v_j - D_i),  dQ_i += scale dS_ij k_j,
//   dK_j += scale dS_ij q_i.
// Few queries (L <= S): tasks own key chunks and write dK, dV directly; dQ goes to per-thread
// buffers. Many queries: tasks own query blocks and write dQ directly; dK, dV go to per-thread
// buffers. Either way the buffers hold the smaller side's gradient once per thread (tiny for
// ISAB's m inducing points), summed at the end: no atomics, deterministic for a thread count.
#include "fastdl/common/cpu/half.h"
#include "fastdl/common/cpu/small_gemm.h"
#include "fastdl/common/cpu/vec.h"
#include "fastdl/common/cpu_isa.h"
#include "fastdl/common/tensors.h"
#include "fastdl/sets/induced_attention.h"
#include "fastdl/sets/induced_attention_math.h"

#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <array>
#include <vector>

// Compiled once per ISA (common/cpu_isa.h): everything here is in that ISA's namespace.
namespace fastdl::CPU_CAPABILITY {
namespace {

using cpu::Vec;

constexpr int64_t kKeyChunk = 256;   // keys per transposed chunk (fits L1/L2 with E, Ev <= 128)
constexpr int64_t kQueryBlock = 64;  // query rows per task (many-queries partition)
constexpr int64_t kMinKeysPerSplit = 512;

// One problem: rows of q (B, H, L, E), k (B, H, S, E), v (B, H, S, Ev), any strides but a
// contiguous last dim; slices are numbered bh = b * heads + h.
template <typename T>
struct Problem {
  induced::Rows<const T> q, k, v;
  const bool* mask;  // (B, S) contiguous or null; True = padded
  int64_t heads, L, S, E, Ev;
  T scale;

  const bool* mask_of(int64_t bh) const { return mask ? mask + (bh / heads) * S : nullptr; }
};

using cpu::axpy;
using cpu::dot;
using cpu::scale_inplace;

// y[0..d) += sum_j w[j] * row(j)[0..d) over the j < n with w[j] != 0. Register blocked: four
// vectors of y accumulate over all j before one store.
template <typename T, typename RowOf>
inline void add_weighted_rows(T* y, const T* w, int64_t n, int64_t d, const RowOf& row) {
  constexpr int64_t W = Vec<T>::size();
  int64_t e = 0;
  for (; e + 4 * W <= d; e += 4 * W) {
    Vec<T> a0 = Vec<T>::loadu(y + e), a1 = Vec<T>::loadu(y + e + W);
    Vec<T> a2 = Vec<T>::loadu(y + e + 2 * W), a3 = Vec<T>::loadu(y + e + 3 * W);
    for (int64_t j = 0; j < n; ++j) {
      if (w[j] == T(0)) continue;
      const Vec<T> wj(w[j]);
      const T* r = row(j) + e;
      a0 = at::vec::fmadd(wj, Vec<T>::loadu(r), a0);
      a1 = at::vec::fmadd(wj, Vec<T>::loadu(r + W), a1);
      a2 = at::vec::fmadd(wj, Vec<T>::loadu(r + 2 * W), a2);
      a3 = at::vec::fmadd(wj, Vec<T>::loadu(r + 3 * W), a3);
    }
    a0.store(y + e);
    a1.store(y + e + W);
    a2.store(y + e + 2 * W);
    a3.store(y + e + 3 * W);
  }
  for (; e + W <= d; e += W) {
    Vec<T> a = Vec<T>::loadu(y + e);
    for (int64_t j = 0; j < n; ++j) {
      if (w[j] != T(0)) a = at::vec::fmadd(Vec<T>(w[j]), Vec<T>::loadu(row(j) + e), a);
    }
    a.store(y + e);
  }
  for (; e < d; ++e) {
    T a = y[e];
    for (int64_t j = 0; j < n; ++j) {
      if (w[j] != T(0)) a += w[j] * row(j)[e];
    }
    y[e] = a;
  }
}

// A chunk of keys [s0, s0 + n) of slice bh, transposed, with -inf bias for padded keys.
template <typename T>
struct KeyChunk {
  std::vector<T> kt;            // E x n
  std::vector<T> vt;            // Ev x n (backward only)
  std::vector<int64_t> padded;  // chunk positions of the padded keys
  int64_t n = 0;

  void load(const Problem<T>& p, int64_t bh, int64_t s0, int64_t count, bool with_values) {
    n = count;
    kt.resize(static_cast<size_t>(p.E * n));
    const auto keys = p.k.slice(bh);
    cpu::transpose_rows(keys.row(s0), keys.stride, n, p.E, kt.data(), n);
    if (with_values) {
      vt.resize(static_cast<size_t>(p.Ev * n));
      const auto values = p.v.slice(bh);
      cpu::transpose_rows(values.row(s0), values.stride, n, p.Ev, vt.data(), n);
    }
    padded.clear();
    if (const bool* m = p.mask_of(bh)) {
      for (int64_t j = 0; j < n; ++j) {
        if (m[s0 + j]) padded.push_back(j);
      }
    }
  }
};

// scores[j] = scale * q_row . k_j, -inf for padded keys (whatever they hold, even NaN);
// returns the largest.
template <typename T>
inline T chunk_scores(const Problem<T>& p, const KeyChunk<T>& c, const T* q_row, T* scores) {
  // scores = q_row times the transposed chunk (E x n).
  cpu::small_gemm<T>(1, c.n, p.E, q_row, 0, 1, c.kt.data(), c.n, scores, c.n, false);
  scale_inplace(scores, p.scale, c.n);
  for (int64_t j : c.padded) scores[j] = softmax::neg_inf<T>();
  return cpu::max_of(scores, c.n);
}

// Online softmax of rows [l0, l1) of slice bh over keys [s0, s1): fills the running states
// (m, l, acc) of the rows (acc: rows x Ev).
template <typename T>
void attend(const Problem<T>& p, int64_t bh, int64_t l0, int64_t l1, int64_t s0, int64_t s1, T* m,
            T* l, T* acc, KeyChunk<T>& chunk, std::vector<T>& scores) {
  const int64_t rows = l1 - l0;
  std::fill(m, m + rows, softmax::neg_inf<T>());
  std::fill(l, l + rows, T(0));
  std::fill(acc, acc + rows * p.Ev, T(0));
  scores.resize(static_cast<size_t>(std::min(kKeyChunk, std::max<int64_t>(s1 - s0, 1))));
  const auto q_rows = p.q.slice(bh);
  const auto v_rows = p.v.slice(bh);
  for (int64_t c0 = s0; c0 < s1; c0 += kKeyChunk) {
    chunk.load(p, bh, c0, std::min(kKeyChunk, s1 - c0), /*with_values=*/false);
    const int64_t n = chunk.n;
    for (int64_t r = 0; r < rows; ++r) {
      const T chunk_max = chunk_scores(p, chunk, q_rows.row(l0 + r), scores.data());
      if (chunk_max == softmax::neg_inf<T>()) continue;  // every key of the chunk is padded
      const T m_new = softmax::max_nan(m[r], chunk_max);
      const T alpha = softmax::exp_shifted(m[r], m_new);
      T* acc_r = acc + r * p.Ev;
      if (alpha != T(1)) scale_inplace(acc_r, alpha, p.Ev);
      // p_j = exp(s_j - m_new) (padded keys: exp(-inf) = 0), summed, then acc += p_j v_j.
      const T sum = cpu::exp_shifted_row(scores.data(), n, m_new);
      add_weighted_rows(acc_r, scores.data(), n, p.Ev,
                        [&](int64_t j) { return v_rows.row(c0 + j); });
      l[r] = l[r] * alpha + sum;
      m[r] = m_new;
    }
  }
}

template <typename T>
void forward_kernel(const Problem<T>& p, int64_t BH, const induced::Rows<T>& out, T* lse) {
  const auto part =
      induced::partition(BH, p.L, p.S, kQueryBlock, 4 * at::get_num_threads(), kMinKeysPerSplit);
  const int64_t splits = part.key_splits;
  // Partial results of each key split (only when the key axis is split).
  std::vector<T> part_out(splits > 1 ? static_cast<size_t>(splits * BH * p.L * p.Ev) : 0);
  std::vector<T> part_lse(splits > 1 ? static_cast<size_t>(splits * BH * p.L) : 0);
  const int64_t tasks = BH * part.query_blocks * splits;
  const int64_t work = part.query_block * part.keys_per_split * (p.E + p.Ev);
  at::parallel_for(
      0, tasks, std::max<int64_t>(1, cpu::grain(work)), [&](int64_t begin, int64_t end) {
        std::vector<T> m(part.query_block), l(part.query_block), acc(part.query_block * p.Ev),
            scores;
        KeyChunk<T> chunk;
        for (int64_t t = begin; t < end; ++t) {
          const int64_t split = t % splits;
          const int64_t qb = (t / splits) % part.query_blocks;
          const int64_t bh = t / (splits * part.query_blocks);
          const int64_t l0 = qb * part.query_block, l1 = std::min(p.L, l0 + part.query_block);
          const int64_t s0 = split * part.keys_per_split,
                        s1 = std::min(p.S, s0 + part.keys_per_split);
          attend(p, bh, l0, l1, s0, s1, m.data(), l.data(), acc.data(), chunk, scores);
          for (int64_t r = 0; r < l1 - l0; ++r) {
            const int64_t row = bh * p.L + l0 + r;
            T* dst = splits > 1 ? part_out.data() + (split * BH * p.L + row) * p.Ev
                                : out.row(bh, l0 + r);
            const T inv = softmax::inverse_or_zero(l[r]);
            for (int64_t e = 0; e < p.Ev; ++e) dst[e] = acc[r * p.Ev + e] * inv;
            (splits > 1 ? part_lse[split * BH * p.L + row] : lse[row]) =
                softmax::log_sum_exp(m[r], l[r]);
          }
        }
      });
  if (splits == 1) return;
  // Combine the splits: lse = logsumexp_j lse_j, out = sum_j exp(lse_j - lse) out_j.
  at::parallel_for(0, BH * p.L, cpu::grain(splits * p.Ev), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      T mx = softmax::neg_inf<T>();
      for (int64_t j = 0; j < splits; ++j) mx = softmax::max_nan(mx, part_lse[j * BH * p.L + row]);
      T total = 0;
      for (int64_t j = 0; j < splits; ++j)
        total += softmax::exp_shifted(part_lse[j * BH * p.L + row], mx);
      const T row_lse = softmax::log_sum_exp(mx, total);
      lse[row] = row_lse;
      T* dst = out.row(row / p.L, row % p.L);
      std::fill(dst, dst + p.Ev, T(0));
      for (int64_t j = 0; j < splits; ++j) {
        const T w = softmax::exp_shifted(part_lse[j * BH * p.L + row], row_lse);
        if (w != T(0)) axpy(dst, part_out.data() + (j * BH * p.L + row) * p.Ev, w, p.Ev);
      }
    }
  });
}

constexpr int64_t kBackwardRows = 32;  // query rows whose probabilities a chunk keeps at once

// Gradient contributions of rows [l0, l1) and keys [s0, s1) of slice bh, added into the rows
// of dq, dk and dv (each absent when its data is null). For each chunk of keys and block of
// query rows, P and dS (scaled) are computed for the block, then dQ rows take the dS-weighted
// sums of key rows, and dK, dV rows the dS- and P-weighted sums of query and dO rows.
template <typename T>
void backward_tile(const Problem<T>& p, int64_t bh, int64_t l0, int64_t l1, int64_t s0, int64_t s1,
                   const induced::Rows<const T>& dout, const T* lse, const T* delta,
                   const induced::Rows<T>& dq, const induced::Rows<T>& dk,
                   const induced::Rows<T>& dv, KeyChunk<T>& chunk, std::vector<T>& prob,
                   std::vector<T>& dscore) {
  const bool need_ds = dq.data || dk.data;
  const auto q_rows = p.q.slice(bh), k_rows = p.k.slice(bh);
  const auto do_rows = dout.slice(bh);
  const auto dq_rows = dq.slice(bh), dk_rows = dk.slice(bh), dv_rows = dv.slice(bh);
  std::array<int64_t, kBackwardRows> rows{};
  std::array<T, kBackwardRows> weights{};
  for (int64_t c0 = s0; c0 < s1; c0 += kKeyChunk) {
    chunk.load(p, bh, c0, std::min(kKeyChunk, s1 - c0), /*with_values=*/need_ds);
    const int64_t n = chunk.n;
    prob.resize(static_cast<size_t>(kBackwardRows * n));
    dscore.resize(static_cast<size_t>(kBackwardRows * n));
    for (int64_t r0 = l0; r0 < l1; r0 += kBackwardRows) {
      // The block's rows that have keys (a fully padded row, lse = -inf, has no gradient).
      int64_t count = 0;
      for (int64_t i = r0; i < std::min(l1, r0 + kBackwardRows); ++i) {
        if (lse[bh * p.L + i] != softmax::neg_inf<T>()) rows[count++] = i;
      }
      for (int64_t r = 0; r < count; ++r) {
        const int64_t i = rows[r];
        T* prob_r = prob.data() + r * n;
        chunk_scores(p, chunk, q_rows.row(i), prob_r);
        cpu::exp_shifted_row(prob_r, n, lse[bh * p.L + i]);  // p = exp(s - lse); padded keys: 0
        // ... also when the row's lse is NaN: a padded key gets no gradient (as on CUDA).
        for (int64_t j : chunk.padded) prob_r[j] = T(0);
        if (need_ds) {  // dS_ij = p_ij (dO_i . v_j - D_i), times scale for dQ and dK
          T* ds_r = dscore.data() + r * n;
          cpu::small_gemm<T>(1, n, p.Ev, do_rows.row(i), 0, 1, chunk.vt.data(), n, ds_r, n, false);
          const T d_i = delta[bh * p.L + i];
          for (int64_t j = 0; j < n; ++j)
            ds_r[j] = prob_r[j] == T(0) ? T(0) : prob_r[j] * (ds_r[j] - d_i) * p.scale;
        }
        if (dq.data) {
          add_weighted_rows(dq_rows.row(i), dscore.data() + r * n, n, p.E,
                            [&](int64_t j) { return k_rows.row(c0 + j); });
        }
      }
      if (count == 0 || !(dk.data || dv.data)) continue;
      for (int64_t j = 0; j < n; ++j) {
        if (dv.data) {
          for (int64_t r = 0; r < count; ++r) weights[r] = prob[r * n + j];
          add_weighted_rows(dv_rows.row(c0 + j), weights.data(), count, p.Ev,
                            [&](int64_t r) { return do_rows.row(rows[r]); });
        }
        if (dk.data) {
          for (int64_t r = 0; r < count; ++r) weights[r] = dscore[r * n + j];
          add_weighted_rows(dk_rows.row(c0 + j), weights.data(), count, p.E,
                            [&](int64_t r) { return q_rows.row(rows[r]); });
        }
      }
    }
  }
}

// Rows over a contiguous (BH, n, d) buffer.
template <typename T>
induced::Rows<T> buffer_rows(T* data, int64_t heads, int64_t n, int64_t d) {
  return {data, heads * n * d, n * d, d, heads};
}

template <typename T>
void backward_kernel(const Problem<T>& p, int64_t BH, const induced::Rows<const T>& dout,
                     const induced::Rows<const T>& out, const T* lse, const induced::Rows<T>& dq,
                     const induced::Rows<T>& dk, const induced::Rows<T>& dv) {
  // D_i = dO_i . O_i
  std::vector<T> delta(static_cast<size_t>(BH * p.L));
  at::parallel_for(0, BH * p.L, cpu::grain(p.Ev), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      delta[r] = dot(dout.row(r / p.L, r % p.L), out.row(r / p.L, r % p.L), p.Ev);
    }
  });
  const bool few_queries = p.L <= p.S;
  const int64_t threads = at::get_num_threads();
  // The gradients the tasks do not own go to per-thread (BH, n, d) buffers, summed at the end:
  // dQ with few queries; dK and dV with many.
  const int64_t dq_size = few_queries && dq.data ? BH * p.L * p.E : 0;
  const int64_t dk_size = !few_queries && dk.data ? BH * p.S * p.E : 0;
  const int64_t dv_size = !few_queries && dv.data ? BH * p.S * p.Ev : 0;
  const int64_t per_thread = dq_size + dk_size + dv_size;
  std::vector<T> buffers(static_cast<size_t>(threads * per_thread), T(0));
  const auto thread_rows = [&](int64_t thread) {
    T* base = buffers.data() + thread * per_thread;
    const induced::Rows<T> none{nullptr, 0, 0, 0, 1};
    return std::array<induced::Rows<T>, 3>{
        dq_size ? buffer_rows(base, p.heads, p.L, p.E) : none,
        dk_size ? buffer_rows(base + dq_size, p.heads, p.S, p.E) : none,
        dv_size ? buffer_rows(base + dq_size + dk_size, p.heads, p.S, p.Ev) : none};
  };
  const int64_t block = few_queries ? kKeyChunk : kQueryBlock;
  const int64_t blocks = few_queries ? (p.S + block - 1) / block : (p.L + block - 1) / block;
  const int64_t work = block * (few_queries ? p.L : p.S) * (2 * p.E + 2 * p.Ev);
  at::parallel_for(0, BH * blocks, std::max<int64_t>(1, cpu::grain(work)),
                   [&](int64_t begin, int64_t end) {
                     const auto mine = thread_rows(at::get_thread_num());
                     KeyChunk<T> chunk;
                     std::vector<T> prob, dscore;
                     for (int64_t t = begin; t < end; ++t) {
                       const int64_t bh = t / blocks, b0 = (t % blocks) * block;
                       if (few_queries) {  // this task owns keys [b0, b0 + block): dK, dV directly
                         backward_tile(p, bh, 0, p.L, b0, std::min(p.S, b0 + block), dout, lse,
                                       delta.data(), mine[0], dk, dv, chunk, prob, dscore);
                       } else {  // this task owns query rows [b0, b0 + block): dQ directly
                         backward_tile(p, bh, b0, std::min(p.L, b0 + block), 0, p.S, dout, lse,
                                       delta.data(), dq, mine[1], mine[2], chunk, prob, dscore);
                       }
                     }
                   });
  // Sum the per-thread buffers into the gradients they stand for, row by row.
  const std::array<const induced::Rows<T>*, 3> targets = {&dq, &dk, &dv};
  const std::array<int64_t, 3> lengths = {p.L, p.S, p.S}, widths = {p.E, p.E, p.Ev};
  std::vector<std::array<induced::Rows<T>, 3>> all_rows;
  for (int64_t th = 0; th < threads; ++th) all_rows.push_back(thread_rows(th));
  for (int w = 0; w < 3; ++w) {
    if (!all_rows.empty() && !all_rows[0][w].data) continue;
    const auto& target = *targets[w];
    const int64_t n = lengths[w], d = widths[w];
    at::parallel_for(0, BH * n, cpu::grain(threads * d), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        T* dst = target.row(r / n, r % n);
        for (int64_t th = 0; th < threads; ++th) {
          const T* src = all_rows[th][w].row(r / n, r % n);
          for (int64_t e = 0; e < d; ++e) dst[e] += src[e];
        }
      }
    });
  }
}

using induced::rows_of;

template <typename T>
Problem<T> make_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& mask, const detail::InducedShape& s, double scale) {
  return {rows_of<const T>(q),
          rows_of<const T>(k),
          rows_of<const T>(v),
          mask.defined() ? mask.const_data_ptr<bool>() : nullptr,
          s.heads,
          s.queries,
          s.keys,
          s.head_dim,
          s.value_dim,
          static_cast<T>(scale)};
}

std::tuple<at::Tensor, at::Tensor> induced_attention_forward_cpu(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& key_padding_mask, std::optional<double> scale) {
  if (cpu::is_half(query.scalar_type())) {
    // float16/bfloat16: the float32 kernel on converted copies, the output rounded once to
    // the input's dtype, the log-sum-exp kept in float32 (as the CUDA kernels keep it).
    detail::check_induced_attention_forward(query, key, value, key_padding_mask, scale);
    auto [output, lse] =
        induced_attention_forward_cpu(cpu::to_compute_dtype(query), cpu::to_compute_dtype(key),
                                      cpu::to_compute_dtype(value), key_padding_mask, scale);
    return {cpu::converted(output, query.scalar_type()), lse};
  }
  auto f = detail::prepare_induced_attention_forward(query, key, value, key_padding_mask, scale);
  const auto& s = f.shape;
  if (s.batch * s.heads * s.queries == 0) return {f.output, f.lse};
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "induced_attention_forward_cpu", [&] {
    forward_kernel<scalar_t>(make_problem<scalar_t>(f.query, f.key, f.value, f.mask, s, f.scale),
                             s.batch * s.heads, rows_of<scalar_t>(f.output),
                             f.lse.mutable_data_ptr<scalar_t>());
  });
  return {f.output, f.lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> induced_attention_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const std::optional<at::Tensor>& key_padding_mask,
    const at::Tensor& output, const at::Tensor& lse, double scale,
    std::array<bool, 3> output_mask) {
  if (cpu::is_half(query.scalar_type())) {  // as the forward: in float32, rounded once
    detail::check_induced_attention_backward(grad_output, query, key, value, key_padding_mask,
                                             output, lse, scale);
    const auto dtype = query.scalar_type();
    const auto [gq, gk, gv] = induced_attention_backward_cpu(
        cpu::to_compute_dtype(grad_output), cpu::to_compute_dtype(query),
        cpu::to_compute_dtype(key), cpu::to_compute_dtype(value), key_padding_mask,
        cpu::to_compute_dtype(output), lse, scale, output_mask);
    return {cpu::converted(gq, dtype), cpu::converted(gk, dtype), cpu::converted(gv, dtype)};
  }
  auto b = detail::prepare_induced_attention_backward(
      grad_output, query, key, value, key_padding_mask, output, lse, scale, output_mask);
  const auto& s = b.shape;
  if (s.batch * s.heads * s.queries * s.keys > 0) {
    AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "induced_attention_backward_cpu", [&] {
      backward_kernel<scalar_t>(make_problem<scalar_t>(b.query, b.key, b.value, b.mask, s, scale),
                                s.batch * s.heads, rows_of<const scalar_t>(b.grad_output),
                                rows_of<const scalar_t>(b.output), b.lse.const_data_ptr<scalar_t>(),
                                rows_of<scalar_t>(b.grad_query), rows_of<scalar_t>(b.grad_key),
                                rows_of<scalar_t>(b.grad_value));
    });
  }
  return {b.grad_query, b.grad_key, b.grad_value};
}

}  // namespace

FASTDL_CPU_KERNELS(induced_attention, m) {
  m.impl("induced_attention_forward", &induced_attention_forward_cpu);
  m.impl("induced_attention_backward", &induced_attention_backward_cpu);
}

}  // namespace fastdl::CPU_CAPABILITY
