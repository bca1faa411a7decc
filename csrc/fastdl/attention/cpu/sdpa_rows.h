// Row-level pieces shared by the sdpa CPU kernels (cpu/sdpa.cpp: the fused flash-attention
// forward and backward) and the attention-weights row kernels (cpu/sdpa_weights.cpp): strided
// operand and mask views, score finishing (scale, mask, causal) and dropout's keep mask.
#pragma once

// Included by CPU kernel files only, which are compiled once per ISA: its contents live in that
// ISA's inline namespace (common/cpu_isa.h).
#ifndef CPU_CAPABILITY
#error \
    "only CPU kernel files (<family>/cpu/, common/cpu/), compiled once per ISA, include this header"
#endif

#include "fastdl/attention/sdpa.h"
#include "fastdl/attention/sdpa_math.h"
#include "fastdl/common/cpu/vec.h"
#include "fastdl/common/online_softmax.h"
#include "fastdl/common/tensors.h"

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <optional>

namespace fastdl::sdpa_cpu::inline CPU_CAPABILITY {

using cpu::Vec;

// Strided views of q, k, v (last stride 1) and of the mask, in elements.
template <typename T>
struct Operand {
  const T* data;
  int64_t batch_stride, head_stride, row_stride;
  const T* rows(int64_t b, int64_t h) const { return data + b * batch_stride + h * head_stride; }
};

template <typename T>
inline Operand<T> operand(const at::Tensor& t) {
  return {t.const_data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2)};
}

// The additive mask of one (batch, head): bool (true = attend) or float, any strides.
template <typename T>
struct MaskView {
  const bool* bool_data = nullptr;
  const T* float_data = nullptr;
  int64_t strides[4] = {0, 0, 0, 0};

  static MaskView make(const std::optional<at::Tensor>& mask) {
    MaskView view;
    if (!present(mask)) return view;
    for (int d = 0; d < 4; ++d) view.strides[d] = mask->stride(d);
    if (mask->scalar_type() == at::kBool) {
      view.bool_data = mask->const_data_ptr<bool>();
    } else {
      view.float_data = mask->const_data_ptr<T>();
    }
    return view;
  }
};

// Turns a block of raw dot products into scores: s = scale * s + mask, -inf where masked (bool
// mask false, or a key after the query under is_causal). rows x cols at ld.
template <typename T>
inline void finish_scores(T* s, int64_t ld, int64_t rows, int64_t cols, int64_t q0, int64_t k0,
                          T scale, const MaskView<T>& mask, int64_t b, int64_t h, bool is_causal) {
  constexpr int64_t L = Vec<T>::size();
  const T neg_inf = softmax::neg_inf<T>();
  const int64_t mask_offset = b * mask.strides[0] + h * mask.strides[1];
  for (int64_t r = 0; r < rows; ++r) {
    T* row = s + r * ld;
    const int64_t i = q0 + r;
    int64_t c = 0;
    for (; c + L <= cols; c += L) (Vec<T>::loadu(row + c) * Vec<T>(scale)).store(row + c);
    for (; c < cols; ++c) row[c] *= scale;
    if (mask.float_data) {
      const T* m = mask.float_data + mask_offset + i * mask.strides[2] + k0 * mask.strides[3];
      for (c = 0; c < cols; ++c) row[c] += m[c * mask.strides[3]];
    } else if (mask.bool_data) {
      const bool* m = mask.bool_data + mask_offset + i * mask.strides[2] + k0 * mask.strides[3];
      for (c = 0; c < cols; ++c) row[c] = m[c * mask.strides[3]] ? row[c] : neg_inf;
    }
    if (is_causal) {
      // Keys j > i are masked (top-left aligned, as torch).
      for (c = std::max<int64_t>(0, i + 1 - k0); c < cols; ++c) row[c] = neg_inf;
    }
  }
}

// Applies dropout's keep mask (scaled by 1/(1-p)) to a block of probabilities, in place.
template <typename T>
inline void apply_dropout(T* p, int64_t ld, int64_t rows, int64_t cols,
                          const detail::SdpaShape& shape, int64_t b, int64_t h, int64_t q0,
                          int64_t k0) {
  const T keep_scale = T(1) / T(1 - shape.dropout_p);
  const float p_drop = static_cast<float>(shape.dropout_p);
  for (int64_t r = 0; r < rows; ++r) {
    const uint64_t base =
        static_cast<uint64_t>(((b * shape.q_heads + h) * shape.q_len + q0 + r) * shape.kv_len + k0);
    for (int64_t c = 0; c < cols; ++c) {
      p[r * ld + c] *= detail::sdpa_dropout_keep(shape.seed, base + c, p_drop) ? keep_scale : T(0);
    }
  }
}

}  // namespace fastdl::sdpa_cpu::inline CPU_CAPABILITY
