// LSTM/GRU CPU kernels: the fused pointwise step kernels (parallel over the batch, vectorised
// along the hidden units with at::vec::Vectorized, the scalar tail by the same formula), the
// bfloat16 LSTM step fused with its recurrent product, and the column reductions for the bias
// and peephole gradients. The GEMMs and the time loop are in the drivers (lstm.cpp, gru.cpp),
// the formulas in rnn_math.h, the per-dtype kernel tables and the registration in rnn_ops.cpp.
#include "fastdl/rnn/cpu/rnn_kernels.h"

#include "fastdl/common/cpu/gemm.h"
#include "fastdl/common/cpu/matmul.h"
#include "fastdl/common/cpu/vec.h"
#include "fastdl/common/cpu_isa.h"
#include "fastdl/common/tensors.h"
#include "fastdl/rnn/rnn.h"
#include "fastdl/rnn/rnn_common.h"
#include "fastdl/rnn/rnn_math.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

// Compiled once per ISA (common/cpu_isa.h): everything here is in that ISA's namespace.
namespace fastdl::CPU_CAPABILITY {
namespace {

using cpu::Vec;

// Loads, stores and activations of one lane width: Lanes<T> for whole vectors, Scalar<T> for
// the tail. The row functions below are written once over these.
template <typename T>
struct Lanes {
  using V = Vec<T>;
  static constexpr int64_t kWidth = V::size();
  static V load(const T* p) { return V::loadu(p); }
  static void store(T* p, const V& v) { v.store(p); }
  struct Act {
    static V sigmoid(const V& x) { return V(T(1)) / (V(T(1)) + x.neg().exp()); }
    static V tanh(const V& x) { return x.tanh(); }
  };
  // For bfloat16 data: exp to ~20 float32 ulp (at::vec's exp_u20), far below bfloat16's
  // rounding, at a fraction of the cost; tanh(x) = 1 - 2 / (exp(2x) + 1) saturates to +-1.
  // exp_u20 clamps its argument, NaN included, so a NaN input is put back.
  struct FastAct {
    static V nan_of(const V& x, const V& y) { return V::blendv(y, x, x.isnan()); }
    static V sigmoid(const V& x) { return nan_of(x, V(T(1)) / (V(T(1)) + x.neg().exp_u20())); }
    static V tanh(const V& x) {
      return nan_of(x, V(T(1)) - V(T(2)) / ((x + x).exp_u20() + V(T(1))));
    }
  };
};

template <typename T>
struct Scalar {
  using V = T;
  static constexpr int64_t kWidth = 1;
  static V load(const T* p) { return *p; }
  static void store(T* p, V v) { *p = v; }
  struct Act {
    static T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }
    static T tanh(T x) { return std::tanh(x); }
  };
  using FastAct = Act;
};

// Runs body.template operator()<Lanes<T>>(j) over whole vectors of [0, n), then the
// Scalar<T> version over the tail.
template <typename T, typename Body>
inline void over_lanes(int64_t n, const Body& body) {
  constexpr int64_t L = Vec<T>::size();
  int64_t j = 0;
  for (; j + L <= n; j += L) body.template operator()<Lanes<T>>(j);
  for (; j < n; ++j) body.template operator()<Scalar<T>>(j);
}

template <typename T>
const T* ptr(const at::Tensor& t) {
  return data_or_null<T>(t);
}
template <typename T>
T* mptr(const at::Tensor& t) {
  return mutable_data_or_null<T>(t);
}

inline bool is_active(const int64_t* lengths, int64_t b, int64_t t) {
  return !lengths || t < lengths[b];
}

// Rows of (4H) work per batch element: enough rows per task to pay for scheduling.
inline int64_t rows_grain(int64_t row_work) { return cpu::grain(8 * row_work); }

// Bias value at o, or zero when there is no bias.
template <typename L, typename T>
inline typename L::V bias_at(const T* bias, int64_t o) {
  return bias ? L::load(bias + o) : typename L::V(T(0));
}

// ------------------------------------------------------------------------------- LSTM
// The step's pointwise work for batch row b and hidden units [j0, j1), on LstmStepForward's
// tensors; hg: the row's recurrent products, gate k of unit j at hg[k * gate_stride + j - j0].
// kFastAct: the activations of FastAct (bfloat16 data).
template <typename T, bool kPeephole, bool kFastAct = false>
struct LstmForwardRows {
  explicit LstmForwardRows(const detail::LstmStepForward& p)
      : H(p.c.size(1)),
        t(p.t),
        xg(ptr<T>(p.x_gates)),
        b_ih(ptr<T>(p.bias_ih)),
        b_hh(ptr<T>(p.bias_hh)),
        peep(ptr<T>(p.peephole)),
        c_prev(ptr<T>(p.c_prev)),
        h_prev(ptr<T>(p.h_prev)),
        gates(mptr<T>(p.gates)),
        c(mptr<T>(p.c)),
        h(mptr<T>(p.h)),
        out(mptr<T>(p.output)),
        len(data_or_null<int64_t>(p.lengths)) {}

  void operator()(int64_t b, int64_t j0, int64_t j1, const T* hg, int64_t gate_stride) const {
    const int64_t g4 = b * 4 * H, r = b * H + j0, n = j1 - j0;
    if (!is_active(len, b, t)) {  // carry the state, output zero
      for (int k = 0; k < 4; ++k) std::fill_n(gates + g4 + k * H + j0, n, T(0));
      std::copy_n(c_prev + r, n, c + r);
      if (out) {
        std::copy_n(h_prev + r, n, h + r);
        std::fill_n(out + r, n, T(0));
      } else {
        std::fill_n(h + r, n, T(0));
      }
      return;
    }
    over_lanes<T>(n, [&]<typename L>(int64_t jj) {
      using V = typename L::V;
      const int64_t j = j0 + jj;
      V pre[4];
      for (int k = 0; k < 4; ++k) {
        const int64_t o = k * H + j;
        pre[k] = L::load(xg + g4 + o) + L::load(hg + k * gate_stride + jj) + bias_at<L>(b_ih, o) +
                 bias_at<L>(b_hh, o);
      }
      const V zero(T(0));
      using Act = std::conditional_t<kFastAct, typename L::FastAct, typename L::Act>;
      const auto s = rnn_math::lstm_forward<Act, kPeephole>(
          pre[0], pre[1], pre[2], pre[3], L::load(c_prev + r + jj),
          kPeephole ? L::load(peep + j) : zero, kPeephole ? L::load(peep + H + j) : zero,
          kPeephole ? L::load(peep + 2 * H + j) : zero);
      L::store(gates + g4 + j, s.i);
      L::store(gates + g4 + H + j, s.f);
      L::store(gates + g4 + 2 * H + j, s.g);
      L::store(gates + g4 + 3 * H + j, s.o);
      L::store(c + r + jj, s.c);
      L::store(h + r + jj, s.h);
      if (out) L::store(out + r + jj, s.h);
    });
  }

  int64_t H, t;
  const T *xg, *b_ih, *b_hh, *peep, *c_prev, *h_prev;
  T *gates, *c, *h, *out;
  const int64_t* len;
};

template <typename T, bool kPeephole>
void lstm_step_forward_kernel(const detail::LstmStepForward& p) {
  const int64_t B = p.gates.size(0), H = p.c.size(1);
  const LstmForwardRows<T, kPeephole> rows(p);
  const T* hg = ptr<T>(p.h_gates);
  at::parallel_for(0, B, rows_grain(4 * H), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) rows(b, 0, H, hg + b * 4 * H, H);
  });
}

// bfloat16 on the units (float32 tensors holding bfloat16 values, W_hh^T prepacked): the step's
// recurrent product fused with its pointwise work in one parallel region. A task takes 32
// hidden units of up to 32 batch rows: the four gates' column panels of W_hh^T for those units
// against the rows' hidden states (packed once per step), then the cell on those units, while
// the products are in L1 (H a multiple of 32: a gate's units fill whole panels).
constexpr int64_t kFusedUnits = 32;

template <bool kPeephole>
void lstm_step_forward_fused_bf16(const detail::LstmStepForward& p, const at::Tensor& w_packed) {
  const int64_t B = p.gates.size(0), H = p.c.size(1), P = p.h_prev.size(1);
  const LstmForwardRows<float, kPeephole, /*kFastAct=*/true> rows_of(p);
  std::vector<uint16_t> h_packed(cpu::packed_rows_bf16_size(B, P));
  cpu::pack_rows_bf16(B, P, cpu::MatrixRef{const_cast<float*>(ptr<float>(p.h_prev)), P, 1},
                      h_packed.data());
  const auto* w = reinterpret_cast<const uint16_t*>(w_packed.const_data_ptr<int16_t>());
  const int64_t unit_blocks = H / kFusedUnits, row_panels = (B + 31) / 32;
  at::parallel_for(0, row_panels * unit_blocks, 1, [&](int64_t begin, int64_t end) {
    const cpu::Bf16UnitsScope units;
    constexpr int64_t ld = 4 * kFusedUnits;  // a row's products: gates i, f, g, o of the units
    alignas(64) float products[32 * ld];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t panel = task / unit_blocks, j0 = (task % unit_blocks) * kFusedUnits;
      const int64_t rows = std::min<int64_t>(32, B - panel * 32);
      for (int64_t k = 0; k < 4; ++k) {
        cpu::prepacked_block_bf16(P, h_packed.data(), panel, w, (k * H + j0) / 32, rows,
                                  products + k * kFusedUnits, ld);
      }
      for (int64_t i = 0; i < rows; ++i) {
        rows_of(panel * 32 + i, j0, j0 + kFusedUnits, products + i * ld, kFusedUnits);
      }
    }
  });
}

template <typename T, bool kPeephole>
void lstm_step_backward_kernel(const detail::LstmStepBackward& p) {
  const int64_t B = p.gates.size(0), H = p.c.size(1);
  const T *gates = ptr<T>(p.gates), *c = ptr<T>(p.c), *c_prev = ptr<T>(p.c_prev),
          *peep = ptr<T>(p.peephole), *gy = ptr<T>(p.grad_output);
  T *dh = mptr<T>(p.dh), *dc = mptr<T>(p.dc), *dgates = mptr<T>(p.dgates);
  const int64_t* len = data_or_null<int64_t>(p.lengths);
  at::parallel_for(0, B, rows_grain(4 * H), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t g4 = b * 4 * H, r = b * H;
      if (!is_active(len, b, p.t)) {  // the state passed through: dh and dc pass back unchanged
        std::fill_n(dgates + g4, 4 * H, T(0));
        continue;
      }
      over_lanes<T>(H, [&]<typename L>(int64_t j) {
        using V = typename L::V;
        const V zero(T(0));
        V d_h = L::load(dh + r + j);
        if (gy) d_h = d_h + L::load(gy + r + j);
        const auto d = rnn_math::lstm_backward<typename L::Act, kPeephole>(
            L::load(gates + g4 + j), L::load(gates + g4 + H + j), L::load(gates + g4 + 2 * H + j),
            L::load(gates + g4 + 3 * H + j), L::load(c + r + j), L::load(c_prev + r + j), d_h,
            L::load(dc + r + j), kPeephole ? L::load(peep + j) : zero,
            kPeephole ? L::load(peep + H + j) : zero, kPeephole ? L::load(peep + 2 * H + j) : zero);
        L::store(dgates + g4 + j, d.di);
        L::store(dgates + g4 + H + j, d.df);
        L::store(dgates + g4 + 2 * H + j, d.dg);
        L::store(dgates + g4 + 3 * H + j, d.do_);
        L::store(dc + r + j, d.dc_prev);
        if (p.dh_is_state) L::store(dh + r + j, zero);  // the GEMM adds dgates W_hh next
      });
    }
  });
}

// ------------------------------------------------------------------------------- GRU
template <typename T>
void gru_step_forward_kernel(const detail::GruStepForward& p) {
  const int64_t B = p.h.size(0), H = p.h.size(1);
  const T *xg = ptr<T>(p.x_gates), *hg = ptr<T>(p.h_gates), *b_ih = ptr<T>(p.bias_ih),
          *b_hh = ptr<T>(p.bias_hh), *h_prev = ptr<T>(p.h_prev);
  T *work = mptr<T>(p.work), *h = mptr<T>(p.h), *out = mptr<T>(p.output);
  const int64_t* len = data_or_null<int64_t>(p.lengths);
  at::parallel_for(0, B, rows_grain(4 * H), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t g3 = b * 3 * H, w4 = b * 4 * H, r = b * H;
      if (!is_active(len, b, p.t)) {
        std::fill_n(work + w4, 4 * H, T(0));
        std::copy_n(h_prev + r, H, h + r);
        std::fill_n(out + r, H, T(0));
        continue;
      }
      over_lanes<T>(H, [&]<typename L>(int64_t j) {
        using V = typename L::V;
        V gi[3], gh[3];
        for (int k = 0; k < 3; ++k) {
          const int64_t o = k * H + j;
          gi[k] = L::load(xg + g3 + o) + bias_at<L>(b_ih, o);
          gh[k] = L::load(hg + g3 + o) + bias_at<L>(b_hh, o);
        }
        const auto s = rnn_math::gru_forward<typename L::Act>(gi[0], gi[1], gi[2], gh[0], gh[1],
                                                              gh[2], L::load(h_prev + r + j));
        L::store(work + w4 + j, s.r);
        L::store(work + w4 + H + j, s.z);
        L::store(work + w4 + 2 * H + j, s.n);
        L::store(work + w4 + 3 * H + j, gh[2]);
        L::store(h + r + j, s.h);
        L::store(out + r + j, s.h);
      });
    }
  });
}

template <typename T>
void gru_step_backward_kernel(const detail::GruStepBackward& p) {
  const int64_t B = p.dh.size(0), H = p.dh.size(1);
  const T *work = ptr<T>(p.work), *h_prev = ptr<T>(p.h_prev), *gy = ptr<T>(p.grad_output);
  T *dh = mptr<T>(p.dh), *dgi = mptr<T>(p.dx_gates), *dgh = mptr<T>(p.dh_gates);
  const int64_t* len = data_or_null<int64_t>(p.lengths);
  at::parallel_for(0, B, rows_grain(4 * H), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t g3 = b * 3 * H, w4 = b * 4 * H, r = b * H;
      if (!is_active(len, b, p.t)) {
        std::fill_n(dgi + g3, 3 * H, T(0));
        std::fill_n(dgh + g3, 3 * H, T(0));
        continue;
      }
      over_lanes<T>(H, [&]<typename L>(int64_t j) {
        using V = typename L::V;
        V d_h = L::load(dh + r + j);
        if (gy) d_h = d_h + L::load(gy + r + j);
        const auto d = rnn_math::gru_backward(
            L::load(work + w4 + j), L::load(work + w4 + H + j), L::load(work + w4 + 2 * H + j),
            L::load(work + w4 + 3 * H + j), L::load(h_prev + r + j), d_h);
        L::store(dgi + g3 + j, d.dr);
        L::store(dgi + g3 + H + j, d.dz);
        L::store(dgi + g3 + 2 * H + j, d.dn);
        L::store(dgh + g3 + j, d.dr);
        L::store(dgh + g3 + H + j, d.dz);
        L::store(dgh + g3 + 2 * H + j, d.dgh_n);
        L::store(dh + r + j, d.dh_prev);
      });
    }
  });
}

// ------------------------------------------------------------------ projection and reductions
template <typename T>
void carry_state_kernel(const at::Tensor& state_t, const at::Tensor& prev_t,
                        const at::Tensor& output_t, const at::Tensor& lengths, int64_t t) {
  const int64_t B = state_t.size(0), P = state_t.size(1);
  T *state = mptr<T>(state_t), *out = mptr<T>(output_t);
  const T* prev = ptr<T>(prev_t);
  const int64_t* len = data_or_null<int64_t>(lengths);
  at::parallel_for(0, B, rows_grain(P), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      if (is_active(len, b, t)) {
        std::copy_n(state + b * P, P, out + b * P);
      } else {
        std::copy_n(prev + b * P, P, state + b * P);
        std::fill_n(out + b * P, P, T(0));
      }
    }
  });
}

template <typename T>
void split_state_grad_kernel(const at::Tensor& dh_t, const at::Tensor& gy_t,
                             const at::Tensor& total_t, const at::Tensor& lengths, int64_t t) {
  const int64_t B = dh_t.size(0), P = dh_t.size(1);
  T *dh = mptr<T>(dh_t), *total = mptr<T>(total_t);
  const T* gy = ptr<T>(gy_t);
  const int64_t* len = data_or_null<int64_t>(lengths);
  at::parallel_for(0, B, rows_grain(P), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      T* row = dh + b * P;
      T* tot = total + b * P;
      if (!is_active(len, b, t)) {
        std::fill_n(tot, P, T(0));
        continue;
      }
      over_lanes<T>(P, [&]<typename L>(int64_t j) {
        auto v = L::load(row + j);
        if (gy) v = v + L::load(gy + b * P + j);
        L::store(tot + j, v);
        L::store(row + j, typename L::V(T(0)));
      });
    }
  });
}

// Column sums over N rows, parallel over blocks of columns; each block accumulates row by row
// into a local buffer (contiguous, vectorised).
template <typename T, typename RowTerm>
void column_block_sums(int64_t rows, int64_t cols, T* out, const RowTerm& term) {
  constexpr int64_t kBlock = 256;
  at::parallel_for(0, (cols + kBlock - 1) / kBlock, 1, [&](int64_t begin, int64_t end) {
    T acc[kBlock];
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * kBlock, width = std::min(kBlock, cols - c0);
      std::fill_n(acc, width, T(0));
      for (int64_t n = 0; n < rows; ++n) {
        over_lanes<T>(width, [&]<typename L>(int64_t j) {
          L::store(acc + j, L::load(acc + j) + term.template operator()<L>(n, c0 + j));
        });
      }
      std::copy_n(acc, width, out + c0);
    }
  });
}

template <typename T>
void column_sums_kernel(const at::Tensor& rows_t, const at::Tensor& out) {
  const int64_t N = rows_t.size(0), C = rows_t.size(1);
  const T* x = ptr<T>(rows_t);
  column_block_sums<T>(N, C, mptr<T>(out),
                       [&]<typename L>(int64_t n, int64_t c) { return L::load(x + n * C + c); });
}

template <typename T>
void peephole_grad_kernel(const at::Tensor& dgates_t, const at::Tensor& c_prev_t,
                          const at::Tensor& c_t, const at::Tensor& out) {
  const int64_t N = c_t.size(0), H = c_t.size(1);
  const T *dg = ptr<T>(dgates_t), *c_prev = ptr<T>(c_prev_t), *c = ptr<T>(c_t);
  T* o = mptr<T>(out);
  // Columns [0, H): i with c(t-1); [H, 2H): f with c(t-1); [2H, 3H): o with c(t).
  column_block_sums<T>(N, 3 * H, o, [&]<typename L>(int64_t n, int64_t col) {
    const int64_t k = col / H, j = col % H;
    if constexpr (L::kWidth > 1) {
      if (j + L::kWidth > H) {  // a vector straddling two gates: assemble it lane by lane
        T tmp[L::kWidth];
        for (int64_t l = 0; l < L::kWidth; ++l) {
          const int64_t kk = (col + l) / H, jj = (col + l) % H;
          tmp[l] = dg[n * 4 * H + (kk == 2 ? 3 : kk) * H + jj] * (kk == 2 ? c : c_prev)[n * H + jj];
        }
        return L::load(tmp);
      }
    }
    const int64_t gate = k == 2 ? 3 : k;
    return L::load(dg + n * 4 * H + gate * H + j) * L::load((k == 2 ? c : c_prev) + n * H + j);
  });
}

// ------------------------------------------------------------------ dispatch and registration
template <template <typename, bool> class Kernel, typename Params>
void dispatch_peephole(const Params& p, const at::Tensor& like) {
  AT_DISPATCH_FLOATING_TYPES(like.scalar_type(), "lstm_step_cpu", [&] {
    if (p.peephole.defined())
      Kernel<scalar_t, true>::run(p);
    else
      Kernel<scalar_t, false>::run(p);
  });
}

template <typename T, bool kPeephole>
struct LstmForwardRun {
  static void run(const detail::LstmStepForward& p) { lstm_step_forward_kernel<T, kPeephole>(p); }
};
template <typename T, bool kPeephole>
struct LstmBackwardRun {
  static void run(const detail::LstmStepBackward& p) { lstm_step_backward_kernel<T, kPeephole>(p); }
};

}  // namespace

// The step kernels above, for the dtype tables of rnn_ops.cpp (each adds its matmuls).
detail::RnnKernels step_kernels() {
  return {
      &cpu::matmul,
      [](const detail::LstmStepForward& p) { dispatch_peephole<LstmForwardRun>(p, p.gates); },
      [](const detail::LstmStepBackward& p) { dispatch_peephole<LstmBackwardRun>(p, p.gates); },
      [](const detail::GruStepForward& p) {
        AT_DISPATCH_FLOATING_TYPES(p.h.scalar_type(), "gru_step_forward_cpu",
                                   [&] { gru_step_forward_kernel<scalar_t>(p); });
      },
      [](const detail::GruStepBackward& p) {
        AT_DISPATCH_FLOATING_TYPES(p.dh.scalar_type(), "gru_step_backward_cpu",
                                   [&] { gru_step_backward_kernel<scalar_t>(p); });
      },
      [](const at::Tensor& state, const at::Tensor& prev, const at::Tensor& output,
         const at::Tensor& lengths, int64_t t) {
        AT_DISPATCH_FLOATING_TYPES(state.scalar_type(), "carry_state_cpu", [&] {
          carry_state_kernel<scalar_t>(state, prev, output, lengths, t);
        });
      },
      [](const at::Tensor& dh, const at::Tensor& gy, const at::Tensor& total,
         const at::Tensor& lengths, int64_t t) {
        AT_DISPATCH_FLOATING_TYPES(dh.scalar_type(), "split_state_grad_cpu", [&] {
          split_state_grad_kernel<scalar_t>(dh, gy, total, lengths, t);
        });
      },
      [](const at::Tensor& rows, const at::Tensor& out) {
        AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "column_sums_cpu",
                                   [&] { column_sums_kernel<scalar_t>(rows, out); });
      },
      [](const at::Tensor& dgates, const at::Tensor& c_prev, const at::Tensor& c,
         const at::Tensor& out) {
        AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "peephole_grad_cpu",
                                   [&] { peephole_grad_kernel<scalar_t>(dgates, c_prev, c, out); });
      },
  };
}

bool lstm_step_forward_fused(const detail::LstmStepForward& p, const at::Tensor& prepared) {
  const bool applies = prepared.scalar_type() == at::kShort && p.c.size(1) % kFusedUnits == 0 &&
                       p.h_prev.scalar_type() == at::kFloat && p.h_prev.is_contiguous() &&
                       p.gates.scalar_type() == at::kFloat;
  if (!applies) return false;
  if (p.peephole.defined()) {
    lstm_step_forward_fused_bf16<true>(p, prepared);
  } else {
    lstm_step_forward_fused_bf16<false>(p, prepared);
  }
  return true;
}

}  // namespace fastdl::CPU_CAPABILITY
