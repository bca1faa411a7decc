// The LSTM and GRU gate formulas of one time step, shared by the CPU kernels (scalar and
// at::vec::Vectorized types) and the CUDA kernels (float or double accumulation types).
//
// `V` is the value type; `Act` supplies the activations for it (Act::sigmoid, Act::tanh), so
// the same formula runs on vectors on the CPU and on scalars on the GPU. Backward formulas
// take the activated gates saved by forward.
#pragma once

#if defined(__CUDACC__)
#define FASTDL_RNN_HD __host__ __device__ __forceinline__
#else
#define FASTDL_RNN_HD inline
#endif

namespace fastdl::rnn_math {

// ---------------------------------------------------------------------------------------
// LSTM (torch gate order i, f, g, o), optionally with diagonal peepholes (Gers & Schmidhuber):
//   i = σ(pre_i + p_i ⊙ c(t-1)),  f = σ(pre_f + p_f ⊙ c(t-1)),  g = tanh(pre_g),
//   c(t) = f ⊙ c(t-1) + i ⊙ g,    o = σ(pre_o + p_o ⊙ c(t)),    h(t) = o ⊙ tanh(c(t)).
// pre_* = W_i* x + b_i* + W_h* h(t-1) + b_h*. Without peepholes p_* are not read.
// ---------------------------------------------------------------------------------------
template <typename V>
struct LstmGates {
  V i, f, g, o;  // activated gates
  V c;           // new cell state
  V h;           // o ⊙ tanh(c): the hidden state (before any projection)
};

template <typename Act, bool kPeephole, typename V>
FASTDL_RNN_HD LstmGates<V> lstm_forward(V pre_i, V pre_f, V pre_g, V pre_o, V c_prev, V p_i, V p_f,
                                        V p_o) {
  LstmGates<V> s;
  if constexpr (kPeephole) {
    pre_i = pre_i + p_i * c_prev;
    pre_f = pre_f + p_f * c_prev;
  }
  s.i = Act::sigmoid(pre_i);
  s.f = Act::sigmoid(pre_f);
  s.g = Act::tanh(pre_g);
  s.c = s.f * c_prev + s.i * s.g;
  if constexpr (kPeephole) pre_o = pre_o + p_o * s.c;
  s.o = Act::sigmoid(pre_o);
  s.h = s.o * Act::tanh(s.c);
  return s;
}

template <typename V>
struct LstmGrads {
  V di, df, dg, do_;  // gradients of the gate pre-activations
  V dc_prev;          // gradient of c(t-1)
};

// dh: gradient of h(t) = o ⊙ tanh(c(t)) (before projection); dc: gradient of c(t) from step t+1.
template <typename Act, bool kPeephole, typename V>
FASTDL_RNN_HD LstmGrads<V> lstm_backward(V i, V f, V g, V o, V c, V c_prev, V dh, V dc, V p_i,
                                         V p_f, V p_o) {
  const V one(1);
  const V tc = Act::tanh(c);
  LstmGrads<V> d;
  d.do_ = dh * tc * o * (one - o);
  V dc_total = dc + dh * o * (one - tc * tc);
  if constexpr (kPeephole) dc_total = dc_total + d.do_ * p_o;
  d.di = dc_total * g * i * (one - i);
  d.df = dc_total * c_prev * f * (one - f);
  d.dg = dc_total * i * (one - g * g);
  d.dc_prev = dc_total * f;
  if constexpr (kPeephole) d.dc_prev = d.dc_prev + d.di * p_i + d.df * p_f;
  return d;
}

// ---------------------------------------------------------------------------------------
// GRU (torch gate order r, z, n; torch's exact form, b_hn inside the reset product):
//   r = σ(gi_r + gh_r),  z = σ(gi_z + gh_z),  n = tanh(gi_n + r ⊙ gh_n),
//   h(t) = n + z ⊙ (h(t-1) - n)        [= (1 - z) ⊙ n + z ⊙ h(t-1)]
// gi_* = W_i* x + b_i*, gh_* = W_h* h(t-1) + b_h*.
// ---------------------------------------------------------------------------------------
template <typename V>
struct GruGates {
  V r, z, n;  // activated gates
  V h;        // new hidden state
};

template <typename Act, typename V>
FASTDL_RNN_HD GruGates<V> gru_forward(V gi_r, V gi_z, V gi_n, V gh_r, V gh_z, V gh_n, V h_prev) {
  GruGates<V> s;
  s.r = Act::sigmoid(gi_r + gh_r);
  s.z = Act::sigmoid(gi_z + gh_z);
  s.n = Act::tanh(gi_n + s.r * gh_n);
  s.h = s.n + s.z * (h_prev - s.n);
  return s;
}

template <typename V>
struct GruGrads {
  V dr, dz, dn;  // gradients of the pre-activations r, z and of gi_n (= of the tanh input)
  V dgh_n;       // gradient of gh_n (= dn ⊙ r)
  V dh_prev;     // the direct part of the gradient of h(t-1) (z ⊙ dh); W_hh's part is a GEMM
};

// dh: gradient of h(t); gh_n: W_hn h(t-1) + b_hn saved by forward.
template <typename V>
FASTDL_RNN_HD GruGrads<V> gru_backward(V r, V z, V n, V gh_n, V h_prev, V dh) {
  const V one(1);
  GruGrads<V> d;
  d.dn = dh * (one - z) * (one - n * n);
  d.dz = dh * (h_prev - n) * z * (one - z);
  d.dr = d.dn * gh_n * r * (one - r);
  d.dgh_n = d.dn * r;
  d.dh_prev = dh * z;
  return d;
}

}  // namespace fastdl::rnn_math
