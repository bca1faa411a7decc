// sdpa CPU kernels: the flash-attention algorithm on cache-sized blocks.
//
// Forward: at::parallel_for over (batch, query head, block of kQueryBlock query rows); each
// task walks the key blocks, computes the scores S = scale * Q K^T + mask with a register-tiled
// product, keeps a running row maximum m and sum l (online softmax), rescales its output
// accumulator and adds P V. Memory per task: O(rows * (block + Ev)), never L x S.
// Backward: parallel over (batch, key/value head), so the gradients of a key/value head (shared
// by its group of query heads under GQA) are accumulated by one task without atomics. For each
// key block and query block it recomputes P = exp(S - logsumexp), then
// dV += P^T dO, dP = dO V^T, dS = P (dP - rowsum(dO O)), dK += scale dS^T Q, dQ += scale dS K.
// bfloat16 forward where the CPU has AMX (and head dims are multiples of 32): the same loop
// with its two products on the tiles (TileProducts: keys and values packed once per head,
// probabilities rounded to bfloat16 as torch's CPU flash attention does, 512-key blocks);
// otherwise half inputs run the float32 kernel on converted copies.
#include "fastdl/attention/cpu/sdpa_rows.h"
#include "fastdl/attention/sdpa.h"
#include "fastdl/attention/sdpa_math.h"
#include "fastdl/common/cpu/half.h"
#include "fastdl/common/cpu/small_gemm.h"
#include "fastdl/common/cpu/tiles_bf16.h"
#include "fastdl/common/cpu/vec.h"
#include "fastdl/common/cpu_isa.h"
#include "fastdl/common/tensors.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

// Compiled once per ISA (common/cpu_isa.h): everything here is in that ISA's namespace.
namespace fastdl::CPU_CAPABILITY {
namespace {

using cpu::Vec;
using sdpa_cpu::apply_dropout;
using sdpa_cpu::finish_scores;
using sdpa_cpu::MaskView;
using sdpa_cpu::Operand;
using sdpa_cpu::operand;

constexpr int64_t kQueryBlock = 32;  // query rows per task / per backward block
constexpr int64_t kKeyBlock = 128;   // keys per block: the score tile is 32 x 128

// The number of keys a causal query block [q0, q0 + rows) can see: keys after its last row
// are masked for every row, so their blocks are skipped rather than masked.
inline int64_t visible_keys(const detail::SdpaShape& shape, int64_t q0, int64_t rows) {
  return shape.is_causal ? std::min(shape.kv_len, q0 + rows) : shape.kv_len;
}

// The forward's two block products, per task: S = Q K^T for a key block, and acc += P V.
// FloatProducts: float32/float64 operands through small_gemm, each key block transposed.
template <typename T>
class FloatProducts {
 public:
  static constexpr bool kFastExp = false;
  static constexpr int64_t kBlock = kKeyBlock;  // keys per block

  FloatProducts(const detail::SdpaShape& shape, const Operand<T>& q, const Operand<T>& k,
                const Operand<T>& v)
      : shape_(shape), q_(q), k_(k), v_(v), kt_(shape.head_dim * kKeyBlock) {}

  void start(int64_t b, int64_t h, int64_t q0, int64_t rows) {
    const int64_t kv_h = h / shape_.group();
    q_rows_ = q_.rows(b, h) + q0 * q_.row_stride;
    k_rows_ = k_.rows(b, kv_h);
    v_rows_ = v_.rows(b, kv_h);
    rows_ = rows;
  }

  // s (rows x cols, ld kKeyBlock) = Q_rows K[k0, k0 + cols)^T
  void scores(int64_t k0, int64_t cols, T* s) {
    const int64_t E = shape_.head_dim;
    cpu::transpose_rows(k_rows_ + k0 * k_.row_stride, k_.row_stride, cols, E, kt_.data(),
                        kKeyBlock);
    cpu::small_gemm<T>(rows_, cols, E, q_rows_, q_.row_stride, 1, kt_.data(), kKeyBlock, s,
                       kKeyBlock, false);
  }

  // acc (rows x Ev) += p (rows x cols, ld kKeyBlock) V[k0, k0 + cols)
  void add_values(int64_t k0, int64_t cols, const T* p, T* acc) {
    cpu::small_gemm<T>(rows_, shape_.value_dim, cols, p, kKeyBlock, 1, v_rows_ + k0 * v_.row_stride,
                       v_.row_stride, acc, shape_.value_dim, true);
  }

 private:
  const detail::SdpaShape& shape_;
  const Operand<T>& q_;
  const Operand<T>& k_;
  const Operand<T>& v_;
  std::vector<T> kt_;
  const T *q_rows_ = nullptr, *k_rows_ = nullptr, *v_rows_ = nullptr;
  int64_t rows_ = 0;
};

// TileProducts: bfloat16 q, k, v on the AMX tiles (cpu/tiles_bf16.h), float32 sums. The keys
// and values of every (batch, key/value head) are packed once, before the tasks
// (PackedKeysValues); each task copies its query rows into a 32-row block, and rounds the
// probabilities to bfloat16 for P V, as torch's CPU flash attention does for half inputs. A
// key block's last cols % 32 keys are added in float32 (padding them would multiply a zero
// probability by a value that may be infinite).
struct PackedKeysValues {
  std::vector<uint16_t> keys, values;
  int64_t keys_per_head = 0, values_per_head = 0;  // values of one (batch, head)

  PackedKeysValues(const detail::SdpaShape& shape, const Operand<c10::BFloat16>& k,
                   const Operand<c10::BFloat16>& v) {
    const int64_t S = cpu::tile_padded(shape.kv_len);
    keys_per_head = S * shape.head_dim;
    values_per_head = S * shape.value_dim;
    const int64_t heads = shape.batch * shape.kv_heads;
    keys.resize(heads * keys_per_head);
    values.resize(heads * values_per_head);
    at::parallel_for(0, heads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / shape.kv_heads, h = i % shape.kv_heads;
        cpu::pack_rows_as_columns(k.rows(b, h), k.row_stride, shape.kv_len, shape.head_dim,
                                  keys.data() + i * keys_per_head);
        cpu::pack_rows_as_steps(v.rows(b, h), v.row_stride, shape.kv_len, shape.value_dim,
                                values.data() + i * values_per_head);
      }
    });
  }
};

// Whether the forward of these bfloat16 inputs runs on the tiles.
bool tile_forward_available(const detail::SdpaShape& shape) {
  return cpu::tile_products_available() && shape.head_dim % 32 == 0 && shape.value_dim % 32 == 0 &&
         shape.head_dim > 0 && shape.value_dim > 0 && kQueryBlock == 32;
}

class TileProducts {
 public:
  // The probabilities are rounded to bfloat16: exp to 20 ulp of float32 is exact enough.
  static constexpr bool kFastExp = true;
  // Keys per block: longer rows than the float32 kernel's, as the products are cheap and each
  // block costs every row a few horizontal reductions.
  static constexpr int64_t kBlock = 512;

  TileProducts(const detail::SdpaShape& shape, const Operand<c10::BFloat16>& q,
               const Operand<c10::BFloat16>& v, const PackedKeysValues& packed)
      : shape_(shape),
        q_(q),
        v_(v),
        packed_(packed),
        q_block_(kQueryBlock * shape.head_dim),
        p_block_(kQueryBlock * kBlock) {}

  void start(int64_t b, int64_t h, int64_t q0, int64_t rows) {
    const int64_t E = shape_.head_dim, kv_index = b * shape_.kv_heads + h / shape_.group();
    const c10::BFloat16* q_rows = q_.rows(b, h) + q0 * q_.row_stride;
    for (int64_t r = 0; r < kQueryBlock; ++r) {
      c10::BFloat16* dst = q_block_.data() + r * E;
      if (r < rows) {
        std::copy(q_rows + r * q_.row_stride, q_rows + r * q_.row_stride + E, dst);
      } else {
        std::fill(dst, dst + E, c10::BFloat16(0.f));
      }
    }
    keys_ = packed_.keys.data() + kv_index * packed_.keys_per_head;
    values_ = packed_.values.data() + kv_index * packed_.values_per_head;
    v_rows_ = v_.rows(b, h / shape_.group());
    rows_ = rows;
  }

  void scores(int64_t k0, int64_t cols, float* s) {
    const int64_t E = shape_.head_dim;
    cpu::tile_product(cpu::tile_padded(cols), E, q_block_.data(), E, keys_ + k0 * E, 32 * E, s,
                      kBlock, false);
  }

  void add_values(int64_t k0, int64_t cols, const float* p, float* acc) {
    const int64_t Ev = shape_.value_dim, whole = cols / 32 * 32;
    if (whole > 0) {
      for (int64_t r = 0; r < kQueryBlock; ++r) {
        c10::BFloat16* dst = p_block_.data() + r * kBlock;
        if (r < rows_) {
          cpu::convert_values(p + r * kBlock, dst, whole);
        } else {
          std::fill(dst, dst + whole, c10::BFloat16(0.f));
        }
      }
      cpu::tile_product(Ev, whole, p_block_.data(), kBlock, values_ + k0 * 32,
                        32 * cpu::tile_padded(shape_.kv_len), acc, Ev, true);
    }
    for (int64_t r = 0; r < rows_; ++r) {  // the last keys, in float32
      float* a = acc + r * Ev;
      for (int64_t c = whole; c < cols; ++c) {
        const float pc = static_cast<float>(c10::BFloat16(p[r * kBlock + c]));
        const c10::BFloat16* v_row = v_rows_ + (k0 + c) * v_.row_stride;
        for (int64_t e = 0; e < Ev; ++e) a[e] += pc * static_cast<float>(v_row[e]);
      }
    }
  }

 private:
  const detail::SdpaShape& shape_;
  const Operand<c10::BFloat16>& q_;
  const Operand<c10::BFloat16>& v_;
  const PackedKeysValues& packed_;
  cpu::Bf16UnitsScope tiles_;  // this task's tile configuration
  std::vector<c10::BFloat16> q_block_, p_block_;
  const uint16_t *keys_ = nullptr, *values_ = nullptr;
  const c10::BFloat16* v_rows_ = nullptr;
  int64_t rows_ = 0;
};

// The forward, with the products of make_products() (one per parallel chunk of tasks).
template <typename T, typename MakeProducts>
void forward_kernel(const detail::SdpaShape& shape, const MakeProducts& make_products,
                    const MaskView<T>& mask, T* out, T* lse) {
  constexpr int64_t L = Vec<T>::size();
  const int64_t Ev = shape.value_dim;
  const int64_t q_blocks = (shape.q_len + kQueryBlock - 1) / kQueryBlock;
  const int64_t tasks = shape.batch * shape.q_heads * q_blocks;
  const T scale = static_cast<T>(shape.scale);
  const bool masked = mask.bool_data || mask.float_data;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    auto products = make_products();
    using Products = decltype(products);
    constexpr int64_t block = Products::kBlock;  // keys per block, the scores' row stride
    std::vector<T> scores(kQueryBlock * block), acc(kQueryBlock * Ev);
    std::vector<T> row_max(kQueryBlock), row_sum(kQueryBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t qb = task % q_blocks;
      const int64_t h = (task / q_blocks) % shape.q_heads;
      const int64_t b = task / (q_blocks * shape.q_heads);
      const int64_t q0 = qb * kQueryBlock;
      const int64_t rows = std::min(kQueryBlock, shape.q_len - q0);
      products.start(b, h, q0, rows);
      std::fill(acc.begin(), acc.end(), T(0));
      std::fill(row_max.begin(), row_max.end(), softmax::neg_inf<T>());
      std::fill(row_sum.begin(), row_sum.end(), T(0));
      const int64_t keys = visible_keys(shape, q0, rows);
      for (int64_t k0 = 0; k0 < keys; k0 += block) {
        const int64_t cols = std::min(block, keys - k0);
        products.scores(k0, cols, scores.data());
        // A block no mask or causal limit touches, with a positive scale, keeps the raw
        // products: their maximum times the scale is the scores' maximum, and the scale is
        // applied inside the exp (one pass over the block fewer).
        const bool raw = !masked && scale > T(0) && (!shape.is_causal || k0 + cols <= q0 + 1);
        if (!raw) {
          finish_scores(scores.data(), block, rows, cols, q0, k0, scale, mask, b, h,
                        shape.is_causal);
        }
        const T factor = raw ? scale : T(1);
        // Online softmax: new maximum, rescale what was accumulated, add this block.
        for (int64_t r = 0; r < rows; ++r) {
          T* s = scores.data() + r * block;
          const T new_max = softmax::max_nan(row_max[r], factor * cpu::max_of(s, cols));
          const T correction = softmax::exp_shifted(row_max[r], new_max);
          row_max[r] = new_max;
          if (new_max == softmax::neg_inf<T>()) {
            std::fill(s, s + cols, T(0));
            continue;
          }
          int64_t c = 0;
          Vec<T> block_sum(T(0));
          for (; c + L <= cols; c += L) {
            const auto shifted =
                at::vec::fmadd(Vec<T>::loadu(s + c), Vec<T>(factor), Vec<T>(-new_max));
            const auto p = Products::kFastExp ? shifted.exp_u20() : shifted.exp();
            p.store(s + c);
            block_sum += p;
          }
          T tail = 0;
          for (; c < cols; ++c) {
            s[c] = std::exp(std::fma(s[c], factor, -new_max));
            tail += s[c];
          }
          row_sum[r] = row_sum[r] * correction + cpu::horizontal_sum(block_sum) + tail;
          if (correction != T(1)) {
            T* a = acc.data() + r * Ev;
            int64_t e = 0;
            for (; e + L <= Ev; e += L) (Vec<T>::loadu(a + e) * Vec<T>(correction)).store(a + e);
            for (; e < Ev; ++e) a[e] *= correction;
          }
        }
        if (shape.dropout_p > 0) {
          apply_dropout(scores.data(), block, rows, cols, shape, b, h, q0, k0);
        }
        products.add_values(k0, cols, scores.data(), acc.data());
      }
      T* out_rows = out + ((b * shape.q_heads + h) * shape.q_len + q0) * Ev;
      T* lse_rows = lse + (b * shape.q_heads + h) * shape.q_len + q0;
      for (int64_t r = 0; r < rows; ++r) {
        const bool empty = row_sum[r] == T(0);
        const T inv = empty ? T(0) : T(1) / row_sum[r];
        for (int64_t e = 0; e < Ev; ++e) out_rows[r * Ev + e] = acc[r * Ev + e] * inv;
        lse_rows[r] = empty ? softmax::neg_inf<T>() : row_max[r] + std::log(row_sum[r]);
      }
    }
  });
}

template <typename T>
struct Gradients {
  T* query = nullptr;  // (B, Hq, L, E) contiguous, or null when not wanted
  T* key = nullptr;    // (B, Hk, S, E)
  T* value = nullptr;  // (B, Hk, S, Ev)
  T* mask = nullptr;   // (B, Hq, L, S)
};

// delta_i = rowsum(dO_i * O_i) = sum_j P_ij dP_ij, the softmax backward's row term, for the
// n rows of dO (row stride do_stride) and O (contiguous, Ev wide).
template <typename T>
void row_deltas(const T* do_rows, int64_t do_stride, const T* o_rows, int64_t n, int64_t Ev,
                T* delta) {
  for (int64_t i = 0; i < n; ++i) {
    const T* d = do_rows + i * do_stride;
    const T* o = o_rows + i * Ev;
    T sum = 0;
    for (int64_t e = 0; e < Ev; ++e) sum += d[e] * o[e];
    delta[i] = sum;
  }
}

// The probabilities P = exp(S - lse) of a tile of finished scores (rows x cols, row stride ld),
// in place; a row whose lse is -inf (every key masked) is all zeros.
template <typename T>
void recompute_probs(T* p, int64_t ld, int64_t rows, int64_t cols, const T* lse) {
  constexpr int64_t L = Vec<T>::size();
  for (int64_t r = 0; r < rows; ++r) {
    T* row = p + r * ld;
    const T m = lse[r];
    if (m == softmax::neg_inf<T>()) {
      std::fill(row, row + cols, T(0));
      continue;
    }
    int64_t c = 0;
    for (; c + L <= cols; c += L) (Vec<T>::loadu(row + c) - Vec<T>(m)).exp().store(row + c);
    for (; c < cols; ++c) row[c] = std::exp(row[c] - m);
  }
}

// dS = P (dP - delta), in place over dP: the gradient of the scores (scale * QK^T + mask).
template <typename T>
void score_grads(T* ds, const T* p, int64_t ld, int64_t rows, int64_t cols, const T* delta) {
  constexpr int64_t L = Vec<T>::size();
  for (int64_t r = 0; r < rows; ++r) {
    T* d = ds + r * ld;
    const T* pr = p + r * ld;
    const Vec<T> dl(delta[r]);
    int64_t c = 0;
    for (; c + L <= cols; c += L) {
      (Vec<T>::loadu(pr + c) * (Vec<T>::loadu(d + c) - dl)).store(d + c);
    }
    for (; c < cols; ++c) d[c] = pr[c] * (d[c] - delta[r]);
  }
}

template <typename T>
void backward_kernel(const detail::SdpaShape& shape, const Operand<T>& q, const Operand<T>& k,
                     const Operand<T>& v, const MaskView<T>& mask, const Operand<T>& grad_out,
                     const T* out, const T* lse, const Gradients<T>& grads) {
  const int64_t E = shape.head_dim, Ev = shape.value_dim;
  const int64_t Lq = shape.q_len, S = shape.kv_len;
  const T scale = static_cast<T>(shape.scale);
  at::parallel_for(0, shape.batch * shape.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> kt(E * kKeyBlock), vt(Ev * kKeyBlock);
    std::vector<T> probs(kQueryBlock * kKeyBlock), dscores(kQueryBlock * kKeyBlock);
    std::vector<T> dropped_probs(shape.dropout_p > 0 ? kQueryBlock * kKeyBlock : 0);
    std::vector<T> dq(Lq * E), dk(S * E), dv(S * Ev), delta(Lq);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / shape.kv_heads;
      const int64_t kv_h = task % shape.kv_heads;
      const T* k_rows = k.rows(b, kv_h);
      const T* v_rows = v.rows(b, kv_h);
      std::fill(dk.begin(), dk.end(), T(0));
      std::fill(dv.begin(), dv.end(), T(0));
      for (int64_t h = kv_h * shape.group(); h < (kv_h + 1) * shape.group(); ++h) {
        const T* q_rows = q.rows(b, h);
        const T* do_rows = grad_out.rows(b, h);
        const T* o_rows = out + (b * shape.q_heads + h) * Lq * Ev;
        const T* lse_rows = lse + (b * shape.q_heads + h) * Lq;
        row_deltas(do_rows, grad_out.row_stride, o_rows, Lq, Ev, delta.data());
        std::fill(dq.begin(), dq.end(), T(0));
        for (int64_t k0 = 0; k0 < S; k0 += kKeyBlock) {
          const int64_t cols = std::min(kKeyBlock, S - k0);
          cpu::transpose_rows(k_rows + k0 * k.row_stride, k.row_stride, cols, E, kt.data(),
                              kKeyBlock);
          cpu::transpose_rows(v_rows + k0 * v.row_stride, v.row_stride, cols, Ev, vt.data(),
                              kKeyBlock);
          // Under is_causal, query rows before k0 see none of these keys.
          const int64_t first_q = shape.is_causal ? (k0 / kQueryBlock) * kQueryBlock : 0;
          for (int64_t q0 = first_q; q0 < Lq; q0 += kQueryBlock) {
            const int64_t rows = std::min(kQueryBlock, Lq - q0);
            const T* q_blk = q_rows + q0 * q.row_stride;
            const T* do_blk = do_rows + q0 * grad_out.row_stride;
            T* p = probs.data();
            T* ds = dscores.data();
            cpu::small_gemm<T>(rows, cols, E, q_blk, q.row_stride, 1, kt.data(), kKeyBlock, p,
                               kKeyBlock, false);
            finish_scores(p, kKeyBlock, rows, cols, q0, k0, scale, mask, b, h, shape.is_causal);
            recompute_probs(p, kKeyBlock, rows, cols, lse_rows + q0);
            // dP (before dropout's mask) = dO V^T.
            cpu::small_gemm<T>(rows, cols, Ev, do_blk, grad_out.row_stride, 1, vt.data(), kKeyBlock,
                               ds, kKeyBlock, false);
            const T* dropped = p;  // the probabilities after dropout, which dV uses
            if (shape.dropout_p > 0) {
              apply_dropout(ds, kKeyBlock, rows, cols, shape, b, h, q0, k0);  // dP's keep mask
              if (grads.value) {
                std::copy(p, p + rows * kKeyBlock, dropped_probs.begin());
                apply_dropout(dropped_probs.data(), kKeyBlock, rows, cols, shape, b, h, q0, k0);
                dropped = dropped_probs.data();
              }
            }
            if (grads.value) {
              cpu::small_gemm<T>(cols, Ev, rows, dropped, 1, kKeyBlock, do_blk, grad_out.row_stride,
                                 dv.data() + k0 * Ev, Ev, true);
            }
            score_grads(ds, p, kKeyBlock, rows, cols, delta.data() + q0);
            if (grads.mask) {
              for (int64_t r = 0; r < rows; ++r) {
                T* gm = grads.mask + ((b * shape.q_heads + h) * Lq + q0 + r) * S + k0;
                std::copy(ds + r * kKeyBlock, ds + r * kKeyBlock + cols, gm);
              }
            }
            if (grads.key) {
              cpu::small_gemm<T>(cols, E, rows, ds, 1, kKeyBlock, q_blk, q.row_stride,
                                 dk.data() + k0 * E, E, true);
            }
            if (grads.query) {
              cpu::small_gemm<T>(rows, E, cols, ds, kKeyBlock, 1, k_rows + k0 * k.row_stride,
                                 k.row_stride, dq.data() + q0 * E, E, true);
            }
          }
        }
        if (grads.query) {
          T* gq = grads.query + (b * shape.q_heads + h) * Lq * E;
          for (int64_t n = 0; n < Lq * E; ++n) gq[n] = dq[n] * scale;
        }
      }
      const int64_t kv_index = b * shape.kv_heads + kv_h;
      if (grads.key) {
        T* gk = grads.key + kv_index * S * E;
        for (int64_t n = 0; n < S * E; ++n) gk[n] = dk[n] * scale;
      }
      if (grads.value) std::copy(dv.begin(), dv.end(), grads.value + kv_index * S * Ev);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> sdpa_forward_cpu(const at::Tensor& query, const at::Tensor& key,
                                                    const at::Tensor& value,
                                                    const std::optional<at::Tensor>& attn_mask,
                                                    double dropout_p, bool is_causal,
                                                    std::optional<double> scale,
                                                    const std::optional<at::Tensor>& dropout_seed) {
  const auto shape = detail::check_sdpa_forward(query, key, value, attn_mask, dropout_p, is_causal,
                                                scale, dropout_seed);
  if (query.scalar_type() == at::kBFloat16 && tile_forward_available(shape)) {
    // bfloat16 on the AMX tiles; the output rounded once, the log-sum-exp in float32.
    const auto q = detail::unit_last_stride(query);
    const auto k = detail::unit_last_stride(key);
    const auto v = detail::unit_last_stride(value);
    const auto mask = cpu::to_compute_dtype(attn_mask);
    const auto options = q.options().dtype(at::kFloat);
    auto output = at::empty({shape.batch, shape.q_heads, shape.q_len, shape.value_dim}, options);
    auto logsumexp = at::empty({shape.batch, shape.q_heads, shape.q_len}, options);
    if (output.numel() == 0) return {cpu::converted(output, at::kBFloat16), logsumexp};
    const auto qo = operand<c10::BFloat16>(q), ko = operand<c10::BFloat16>(k),
               vo = operand<c10::BFloat16>(v);
    const PackedKeysValues packed(shape, ko, vo);
    forward_kernel<float>(
        shape, [&] { return TileProducts(shape, qo, vo, packed); }, MaskView<float>::make(mask),
        output.mutable_data_ptr<float>(), logsumexp.mutable_data_ptr<float>());
    return {cpu::converted(output, at::kBFloat16), logsumexp};
  }
  if (cpu::is_half(query.scalar_type())) {
    // float16/bfloat16: the float32 kernel on converted copies, the output rounded once to
    // the input's dtype and the log-sum-exp kept in float32, as torch's CPU flash attention.
    auto [output, logsumexp] = sdpa_forward_cpu(
        cpu::to_compute_dtype(query), cpu::to_compute_dtype(key), cpu::to_compute_dtype(value),
        cpu::to_compute_dtype(attn_mask), dropout_p, is_causal, scale, dropout_seed);
    return {cpu::converted(output, query.scalar_type()), logsumexp};
  }
  const auto q = detail::unit_last_stride(query);
  const auto k = detail::unit_last_stride(key);
  const auto v = detail::unit_last_stride(value);
  auto output = at::empty({shape.batch, shape.q_heads, shape.q_len, shape.value_dim}, q.options());
  auto logsumexp = at::empty({shape.batch, shape.q_heads, shape.q_len}, q.options());
  if (output.numel() == 0 && logsumexp.numel() == 0) return {output, logsumexp};
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sdpa_forward_cpu", [&] {
    const auto qo = operand<scalar_t>(q), ko = operand<scalar_t>(k), vo = operand<scalar_t>(v);
    forward_kernel<scalar_t>(
        shape, [&] { return FloatProducts<scalar_t>(shape, qo, ko, vo); },
        MaskView<scalar_t>::make(attn_mask), output.mutable_data_ptr<scalar_t>(),
        logsumexp.mutable_data_ptr<scalar_t>());
  });
  return {output, logsumexp};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sdpa_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const std::optional<at::Tensor>& attn_mask, const at::Tensor& output,
    const at::Tensor& logsumexp, double dropout_p, bool is_causal, std::optional<double> scale,
    const std::optional<at::Tensor>& dropout_seed, std::array<bool, 4> output_mask) {
  const auto shape =
      detail::check_sdpa_backward(grad_output, query, key, value, attn_mask, output, logsumexp,
                                  dropout_p, is_causal, scale, dropout_seed);
  if (cpu::is_half(query.scalar_type())) {
    // As the forward: in float32, the gradients rounded once. The row terms delta = dO . O
    // take the float32 output, recomputed, not the rounded one saved: with the rounded one a
    // row whose softmax is exact (one visible key, probability 1) would get a gradient.
    const auto dtype = query.scalar_type();
    const auto q = cpu::to_compute_dtype(query), k = cpu::to_compute_dtype(key);
    const auto v = cpu::to_compute_dtype(value);
    const auto mask = cpu::to_compute_dtype(attn_mask);
    const auto output_f =
        std::get<0>(sdpa_forward_cpu(q, k, v, mask, dropout_p, is_causal, scale, dropout_seed));
    const auto [gq, gk, gv, gmask] =
        sdpa_backward_cpu(cpu::to_compute_dtype(grad_output), q, k, v, mask, output_f, logsumexp,
                          dropout_p, is_causal, scale, dropout_seed, output_mask);
    return {cpu::converted(gq, dtype), cpu::converted(gk, dtype), cpu::converted(gv, dtype),
            cpu::converted(gmask, dtype)};
  }
  const auto q = detail::unit_last_stride(query);
  const auto k = detail::unit_last_stride(key);
  const auto v = detail::unit_last_stride(value);
  const auto dout = detail::unit_last_stride(grad_output);
  const auto out = output.contiguous();
  const auto lse = logsumexp.contiguous();
  auto [grad_query, grad_key, grad_value, grad_mask] =
      detail::sdpa_gradient_buffers(shape, q, k, v, output_mask);
  // No output element (Ev = 0 included): nothing depends on the inputs, the gradients are zeros
  // (computing them would give NaN * 0 = NaN where a probability is NaN).
  if (shape.batch * shape.kv_heads * shape.value_dim == 0) {
    return {grad_query, grad_key, grad_value, grad_mask};
  }
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sdpa_backward_cpu", [&] {
    Gradients<scalar_t> grads{
        mutable_data_or_null<scalar_t>(grad_query), mutable_data_or_null<scalar_t>(grad_key),
        mutable_data_or_null<scalar_t>(grad_value), mutable_data_or_null<scalar_t>(grad_mask)};
    backward_kernel<scalar_t>(shape, operand<scalar_t>(q), operand<scalar_t>(k),
                              operand<scalar_t>(v), MaskView<scalar_t>::make(attn_mask),
                              operand<scalar_t>(dout), out.const_data_ptr<scalar_t>(),
                              lse.const_data_ptr<scalar_t>(), grads);
  });
  return {grad_query, grad_key, grad_value, grad_mask};
}

}  // namespace

FASTDL_CPU_KERNELS(sdpa, m) {
  m.impl("sdpa_forward", &sdpa_forward_cpu);
  m.impl("sdpa_backward", &sdpa_backward_cpu);
}

}  // namespace fastdl::CPU_CAPABILITY
