// LSTM/GRU CUDA kernels: the fused pointwise step kernels (one thread per batch element and
// hidden unit, grid-stride, 64-bit indices), the projection-path helpers, and column sums for
// the bias and peephole gradients (a block per 32 columns, rows split over the block's warps
// and merged in shared memory: no atomics). The GEMMs (cuBLAS via at::mm) and the time loop
// are in the drivers (lstm.cpp, gru.cpp); the formulas in rnn_math.h. Half types are read and
// written as such and computed in float.
#include "fastdl/common/cuda_utils.cuh"
#include "fastdl/common/tensors.h"
#include "fastdl/rnn/rnn.h"
#include "fastdl/rnn/rnn_math.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/mm.h>

#include <type_traits>

namespace fastdl {
namespace {

using cuda::acc_t;
constexpr int kThreads = 256;

// Activations in the accumulation type: the float versions for float (half types compute in
// float), never a silent promotion to double.
template <typename A>
struct DeviceAct {
  static __device__ __forceinline__ A exp_(A x) {
    if constexpr (std::is_same_v<A, float>)
      return expf(x);
    else
      return exp(x);
  }
  static __device__ __forceinline__ A sigmoid(A x) { return A(1) / (A(1) + exp_(-x)); }
  static __device__ __forceinline__ A tanh(A x) {
    if constexpr (std::is_same_v<A, float>)
      return tanhf(x);
    else
      return ::tanh(x);
  }
};

template <typename T>
__device__ __forceinline__ acc_t<T> ld(const T* p, int64_t i) {
  return static_cast<acc_t<T>>(p[i]);
}
template <typename T>
__device__ __forceinline__ acc_t<T> ld_or_zero(const T* p, int64_t i) {
  return p ? static_cast<acc_t<T>>(p[i]) : acc_t<T>(0);
}
__device__ __forceinline__ bool is_active(const int64_t* lengths, int64_t b, int64_t t) {
  return !lengths || t < lengths[b];
}

template <typename T>
const T* ptr(const at::Tensor& t) {
  return data_or_null<T>(t);
}
template <typename T>
T* mptr(const at::Tensor& t) {
  return mutable_data_or_null<T>(t);
}

// ------------------------------------------------------------------------------- LSTM
template <typename T, bool kPeephole>
__global__ void lstm_step_forward_kernel(
    const T* __restrict__ xg, const T* __restrict__ hg, const T* __restrict__ b_ih,
    const T* __restrict__ b_hh, const T* __restrict__ peep, const acc_t<T>* __restrict__ c_prev,
    const T* __restrict__ h_prev, const int64_t* __restrict__ len, int64_t t,
    acc_t<T>* __restrict__ gates, acc_t<T>* __restrict__ c, T* __restrict__ h, T* __restrict__ out,
    int64_t B, int64_t H) {
  using A = acc_t<T>;
  FASTDL_GRID_STRIDE(e, B * H) {
    const int64_t b = e / H, j = e % H, g4 = b * 4 * H;
    if (!is_active(len, b, t)) {  // carry the state, output zero
      for (int k = 0; k < 4; ++k) gates[g4 + k * H + j] = A(0);
      c[e] = c_prev[e];
      if (out) {
        h[e] = h_prev[e];
        out[e] = T(0);
      } else {
        h[e] = T(0);
      }
      continue;
    }
    A pre[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t o = k * H + j;
      pre[k] = ld(xg, g4 + o) + ld(hg, g4 + o) + ld_or_zero(b_ih, o) + ld_or_zero(b_hh, o);
    }
    const auto s = rnn_math::lstm_forward<DeviceAct<A>, kPeephole>(
        pre[0], pre[1], pre[2], pre[3], ld(c_prev, e), kPeephole ? ld(peep, j) : A(0),
        kPeephole ? ld(peep, H + j) : A(0), kPeephole ? ld(peep, 2 * H + j) : A(0));
    gates[g4 + j] = s.i;
    gates[g4 + H + j] = s.f;
    gates[g4 + 2 * H + j] = s.g;
    gates[g4 + 3 * H + j] = s.o;
    c[e] = s.c;
    h[e] = static_cast<T>(s.h);
    if (out) out[e] = static_cast<T>(s.h);
  }
}

template <typename T, bool kPeephole>
__global__ void lstm_step_backward_kernel(
    const acc_t<T>* __restrict__ gates, const acc_t<T>* __restrict__ c,
    const acc_t<T>* __restrict__ c_prev, const T* __restrict__ peep, acc_t<T>* __restrict__ dh,
    const T* __restrict__ gy, bool dh_is_state, acc_t<T>* __restrict__ dc,
    const int64_t* __restrict__ len, int64_t t, T* __restrict__ dgates, int64_t B, int64_t H) {
  using A = acc_t<T>;
  FASTDL_GRID_STRIDE(e, B * H) {
    const int64_t b = e / H, j = e % H, g4 = b * 4 * H;
    if (!is_active(len, b, t)) {  // the state passed through: dh and dc pass back unchanged
      for (int k = 0; k < 4; ++k) dgates[g4 + k * H + j] = T(0);
      continue;
    }
    A d_h = ld(dh, e);
    if (gy) d_h += ld(gy, e);
    const auto d = rnn_math::lstm_backward<DeviceAct<A>, kPeephole>(
        ld(gates, g4 + j), ld(gates, g4 + H + j), ld(gates, g4 + 2 * H + j),
        ld(gates, g4 + 3 * H + j), ld(c, e), ld(c_prev, e), d_h, ld(dc, e),
        kPeephole ? ld(peep, j) : A(0), kPeephole ? ld(peep, H + j) : A(0),
        kPeephole ? ld(peep, 2 * H + j) : A(0));
    dgates[g4 + j] = static_cast<T>(d.di);
    dgates[g4 + H + j] = static_cast<T>(d.df);
    dgates[g4 + 2 * H + j] = static_cast<T>(d.dg);
    dgates[g4 + 3 * H + j] = static_cast<T>(d.do_);
    dc[e] = d.dc_prev;
    if (dh_is_state) dh[e] = A(0);  // the GEMM adds dgates W_hh next
  }
}

// ------------------------------------------------------------------------------- GRU
template <typename T>
__global__ void gru_step_forward_kernel(const T* __restrict__ xg, const T* __restrict__ hg,
                                        const T* __restrict__ b_ih, const T* __restrict__ b_hh,
                                        const T* __restrict__ h_prev,
                                        const int64_t* __restrict__ len, int64_t t,
                                        acc_t<T>* __restrict__ work, T* __restrict__ h,
                                        T* __restrict__ out, int64_t B, int64_t H) {
  using A = acc_t<T>;
  FASTDL_GRID_STRIDE(e, B * H) {
    const int64_t b = e / H, j = e % H, g3 = b * 3 * H, w4 = b * 4 * H;
    if (!is_active(len, b, t)) {
      for (int k = 0; k < 4; ++k) work[w4 + k * H + j] = A(0);
      h[e] = h_prev[e];
      out[e] = T(0);
      continue;
    }
    A gi[3], gh[3];
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      const int64_t o = k * H + j;
      gi[k] = ld(xg, g3 + o) + ld_or_zero(b_ih, o);
      gh[k] = ld(hg, g3 + o) + ld_or_zero(b_hh, o);
    }
    const auto s = rnn_math::gru_forward<DeviceAct<A>>(gi[0], gi[1], gi[2], gh[0], gh[1], gh[2],
                                                       ld(h_prev, e));
    work[w4 + j] = s.r;
    work[w4 + H + j] = s.z;
    work[w4 + 2 * H + j] = s.n;
    work[w4 + 3 * H + j] = gh[2];
    h[e] = static_cast<T>(s.h);
    out[e] = static_cast<T>(s.h);
  }
}

template <typename T>
__global__ void gru_step_backward_kernel(const acc_t<T>* __restrict__ work,
                                         const T* __restrict__ h_prev, acc_t<T>* __restrict__ dh,
                                         const T* __restrict__ gy, const int64_t* __restrict__ len,
                                         int64_t t, T* __restrict__ dgi, T* __restrict__ dgh,
                                         int64_t B, int64_t H) {
  using A = acc_t<T>;
  FASTDL_GRID_STRIDE(e, B * H) {
    const int64_t b = e / H, j = e % H, g3 = b * 3 * H, w4 = b * 4 * H;
    if (!is_active(len, b, t)) {
      for (int k = 0; k < 3; ++k) dgi[g3 + k * H + j] = dgh[g3 + k * H + j] = T(0);
      continue;
    }
    A d_h = ld(dh, e);
    if (gy) d_h += ld(gy, e);
    const auto d =
        rnn_math::gru_backward(ld(work, w4 + j), ld(work, w4 + H + j), ld(work, w4 + 2 * H + j),
                               ld(work, w4 + 3 * H + j), ld(h_prev, e), d_h);
    dgi[g3 + j] = dgh[g3 + j] = static_cast<T>(d.dr);
    dgi[g3 + H + j] = dgh[g3 + H + j] = static_cast<T>(d.dz);
    dgi[g3 + 2 * H + j] = static_cast<T>(d.dn);
    dgh[g3 + 2 * H + j] = static_cast<T>(d.dgh_n);
    dh[e] = d.dh_prev;
  }
}

// ------------------------------------------------------------------ projection and reductions
template <typename T>
__global__ void carry_state_kernel(T* __restrict__ state, const T* __restrict__ prev,
                                   T* __restrict__ out, const int64_t* __restrict__ len, int64_t t,
                                   int64_t B, int64_t P) {
  FASTDL_GRID_STRIDE(e, B * P) {
    if (is_active(len, e / P, t)) {
      out[e] = state[e];
    } else {
      state[e] = prev[e];
      out[e] = T(0);
    }
  }
}

template <typename T>
__global__ void split_state_grad_kernel(acc_t<T>* __restrict__ dh, const T* __restrict__ gy,
                                        T* __restrict__ total, const int64_t* __restrict__ len,
                                        int64_t t, int64_t B, int64_t P) {
  FASTDL_GRID_STRIDE(e, B * P) {
    if (is_active(len, e / P, t)) {
      total[e] = static_cast<T>(ld(dh, e) + ld_or_zero(gy, e));
      dh[e] = acc_t<T>(0);
    } else {
      total[e] = T(0);
    }
  }
}

// A block of 32 x 8 threads owns 32 columns; threadIdx.y strides the rows; the 8 partial sums
// of each column are merged in shared memory. Term(n, col) gives the summand.
constexpr int kColumnTile = 32;
constexpr int kRowThreads = 8;

template <typename T, typename Term>
__global__ void column_sums_kernel(int64_t rows, int64_t cols, T* __restrict__ out, Term term) {
  using A = acc_t<T>;
  FASTDL_SHARED(A, partial, [kRowThreads][kColumnTile]);
  for (int64_t tile = blockIdx.x; tile * kColumnTile < cols; tile += gridDim.x) {
    const int64_t col = tile * kColumnTile + threadIdx.x;
    A sum = 0;
    if (col < cols) {
      for (int64_t n = threadIdx.y; n < rows; n += kRowThreads) sum += term(n, col);
    }
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
      A total = 0;
      for (int k = 0; k < kRowThreads; ++k) total += partial[k][threadIdx.x];
      out[col] = static_cast<T>(total);
    }
    __syncthreads();
  }
}

template <typename T>
struct RowsTerm {
  const T* x;
  int64_t cols;
  __device__ acc_t<T> operator()(int64_t n, int64_t c) const { return ld(x, n * cols + c); }
};

// Columns [0, H): dgates_i ⊙ c(t-1); [H, 2H): dgates_f ⊙ c(t-1); [2H, 3H): dgates_o ⊙ c(t).
template <typename T>
struct PeepholeTerm {
  const T* dgates;
  const acc_t<T>*c_prev, *c;  // [state]
  int64_t H;
  __device__ acc_t<T> operator()(int64_t n, int64_t col) const {
    const int64_t k = col / H, j = col % H;
    const int64_t gate = k == 2 ? 3 : k;
    return ld(dgates, n * 4 * H + gate * H + j) * ld(k == 2 ? c : c_prev, n * H + j);
  }
};

template <typename T, typename Term>
void launch_column_sums(int64_t rows, int64_t cols, T* out, Term term) {
  if (cols == 0) return;
  const auto blocks = static_cast<unsigned>(
      std::min<int64_t>(cuda::ceil_div(cols, kColumnTile), cuda::max_grid_yz() * 16));
  cuda::launch(column_sums_kernel<T, Term>, {blocks, dim3(kColumnTile, kRowThreads), 0}, rows, cols,
               out, term);
}

// ------------------------------------------------------------------ launchers and registration
#define FASTDL_RNN_DISPATCH(type, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, name, __VA_ARGS__)

inline unsigned blocks_for(int64_t n) { return cuda::grid_stride_blocks(n, kThreads); }

void lstm_step_forward(const detail::LstmStepForward& p) {
  const int64_t B = p.gates.size(0), H = p.c.size(1);
  if (B * H == 0) return;
  cuda::DeviceGuard guard(p.gates.device());
  FASTDL_RNN_DISPATCH(p.x_gates.scalar_type(), "lstm_step_forward_cuda", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    auto launch = [&](auto kernel) {
      cuda::launch(kernel, {blocks_for(B * H), kThreads, 0}, ptr<T>(p.x_gates), ptr<T>(p.h_gates),
                   ptr<T>(p.bias_ih), ptr<T>(p.bias_hh), ptr<T>(p.peephole), ptr<A>(p.c_prev),
                   ptr<T>(p.h_prev), data_or_null<int64_t>(p.lengths), p.t, mptr<A>(p.gates),
                   mptr<A>(p.c), mptr<T>(p.h), mptr<T>(p.output), B, H);
    };
    if (p.peephole.defined())
      launch(lstm_step_forward_kernel<T, true>);
    else
      launch(lstm_step_forward_kernel<T, false>);
  });
}

void lstm_step_backward(const detail::LstmStepBackward& p) {
  const int64_t B = p.gates.size(0), H = p.c.size(1);
  if (B * H == 0) return;
  cuda::DeviceGuard guard(p.gates.device());
  FASTDL_RNN_DISPATCH(p.dgates.scalar_type(), "lstm_step_backward_cuda", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    auto launch = [&](auto kernel) {
      cuda::launch(kernel, {blocks_for(B * H), kThreads, 0}, ptr<A>(p.gates), ptr<A>(p.c),
                   ptr<A>(p.c_prev), ptr<T>(p.peephole), mptr<A>(p.dh), ptr<T>(p.grad_output),
                   p.dh_is_state, mptr<A>(p.dc), data_or_null<int64_t>(p.lengths), p.t,
                   mptr<T>(p.dgates), B, H);
    };
    if (p.peephole.defined())
      launch(lstm_step_backward_kernel<T, true>);
    else
      launch(lstm_step_backward_kernel<T, false>);
  });
}

void gru_step_forward(const detail::GruStepForward& p) {
  const int64_t B = p.h.size(0), H = p.h.size(1);
  if (B * H == 0) return;
  cuda::DeviceGuard guard(p.h.device());
  FASTDL_RNN_DISPATCH(p.h.scalar_type(), "gru_step_forward_cuda", [&] {
    using T = scalar_t;
    cuda::launch(gru_step_forward_kernel<T>, {blocks_for(B * H), kThreads, 0}, ptr<T>(p.x_gates),
                 ptr<T>(p.h_gates), ptr<T>(p.bias_ih), ptr<T>(p.bias_hh), ptr<T>(p.h_prev),
                 data_or_null<int64_t>(p.lengths), p.t, mptr<acc_t<T>>(p.work), mptr<T>(p.h),
                 mptr<T>(p.output), B, H);
  });
}

void gru_step_backward(const detail::GruStepBackward& p) {
  const int64_t B = p.dh.size(0), H = p.dh.size(1);
  if (B * H == 0) return;
  cuda::DeviceGuard guard(p.dh.device());
  FASTDL_RNN_DISPATCH(p.dx_gates.scalar_type(), "gru_step_backward_cuda", [&] {
    using T = scalar_t;
    cuda::launch(gru_step_backward_kernel<T>, {blocks_for(B * H), kThreads, 0},
                 ptr<acc_t<T>>(p.work), ptr<T>(p.h_prev), mptr<acc_t<T>>(p.dh),
                 ptr<T>(p.grad_output), data_or_null<int64_t>(p.lengths), p.t, mptr<T>(p.dx_gates),
                 mptr<T>(p.dh_gates), B, H);
  });
}

void carry_state(const at::Tensor& state, const at::Tensor& prev, const at::Tensor& output,
                 const at::Tensor& lengths, int64_t t) {
  const int64_t B = state.size(0), P = state.size(1);
  if (B * P == 0) return;
  cuda::DeviceGuard guard(state.device());
  FASTDL_RNN_DISPATCH(state.scalar_type(), "carry_state_cuda", [&] {
    using T = scalar_t;
    cuda::launch(carry_state_kernel<T>, {blocks_for(B * P), kThreads, 0}, mptr<T>(state),
                 ptr<T>(prev), mptr<T>(output), data_or_null<int64_t>(lengths), t, B, P);
  });
}

void split_state_grad(const at::Tensor& dh, const at::Tensor& gy, const at::Tensor& total,
                      const at::Tensor& lengths, int64_t t) {
  const int64_t B = dh.size(0), P = dh.size(1);
  if (B * P == 0) return;
  cuda::DeviceGuard guard(dh.device());
  FASTDL_RNN_DISPATCH(total.scalar_type(), "split_state_grad_cuda", [&] {
    using T = scalar_t;
    cuda::launch(split_state_grad_kernel<T>, {blocks_for(B * P), kThreads, 0}, mptr<acc_t<T>>(dh),
                 ptr<T>(gy), mptr<T>(total), data_or_null<int64_t>(lengths), t, B, P);
  });
}

void column_sums(const at::Tensor& rows, const at::Tensor& out) {
  cuda::DeviceGuard guard(out.device());
  FASTDL_RNN_DISPATCH(rows.scalar_type(), "column_sums_cuda", [&] {
    using T = scalar_t;
    launch_column_sums<T>(rows.size(0), rows.size(1), mptr<T>(out),
                          RowsTerm<T>{ptr<T>(rows), rows.size(1)});
  });
}

void peephole_grad(const at::Tensor& dgates, const at::Tensor& c_prev, const at::Tensor& c,
                   const at::Tensor& out) {
  cuda::DeviceGuard guard(out.device());
  FASTDL_RNN_DISPATCH(dgates.scalar_type(), "peephole_grad_cuda", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    launch_column_sums<T>(c.size(0), 3 * c.size(1), mptr<T>(out),
                          PeepholeTerm<T>{ptr<T>(dgates), ptr<A>(c_prev), ptr<A>(c), c.size(1)});
  });
}

void matmul(const at::Tensor& a, const at::Tensor& b, at::Tensor& out, bool accumulate) {
  if (out.scalar_type() != a.scalar_type()) {
    cuda::mm_into_float(a, b, out, accumulate);  // half operands into a float32 [state] tensor
  } else if (accumulate) {
    out.addmm_(a, b);
  } else {
    at::mm_out(out, a, b);
  }
}

const detail::RnnKernels& cuda_kernels() {
  static const detail::RnnKernels k{&matmul,           &lstm_step_forward, &lstm_step_backward,
                                    &gru_step_forward, &gru_step_backward, &carry_state,
                                    &split_state_grad, &column_sums,       &peephole_grad};
  return k;
}

}  // namespace

FASTDL_CUDA_KERNELS(m) { FASTDL_RNN_KERNELS(m, cuda_kernels); }

}  // namespace fastdl
