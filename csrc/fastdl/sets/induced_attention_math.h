// The work partition shared by the CPU and CUDA kernels of induced attention, so the two
// cannot drift apart; the online softmax is common/online_softmax.h's.
#pragma once

#include "fastdl/common/online_softmax.h"

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace fastdl::induced {

// How the (batch * heads, L, S) problem is cut into parallel tasks.
struct Partition {
  bool few_queries;        // L <= S: split the key axis (flash-decoding); else block the queries
  int64_t query_block;     // query rows per task
  int64_t query_blocks;    // ceil(L / query_block)
  int64_t key_splits;      // key chunks processed in parallel per (batch, head, query block)
  int64_t keys_per_split;  // ceil(S / key_splits)
};

// tasks_wanted: how many parallel tasks fill the machine (CPU threads or CUDA warps times a
// few); min_keys_per_split: the smallest key chunk worth a task of its own.
inline Partition partition(int64_t batch_heads, int64_t queries, int64_t keys, int64_t query_block,
                           int64_t tasks_wanted, int64_t min_keys_per_split) {
  Partition p{};
  p.few_queries = queries <= keys;
  p.query_block = std::max<int64_t>(1, std::min(query_block, queries));
  p.query_blocks = queries > 0 ? (queries + p.query_block - 1) / p.query_block : 0;
  p.key_splits = 1;
  const int64_t base = std::max<int64_t>(1, batch_heads * p.query_blocks);
  if (p.few_queries && keys > 0 && base < tasks_wanted) {
    const int64_t most = std::max<int64_t>(1, keys / std::max<int64_t>(1, min_keys_per_split));
    p.key_splits = std::min(most, (tasks_wanted + base - 1) / base);
  }
  p.keys_per_split = keys > 0 ? (keys + p.key_splits - 1) / p.key_splits : 0;
  if (keys > 0) p.key_splits = (keys + p.keys_per_split - 1) / p.keys_per_split;  // no empty split
  return p;
}

}  // namespace fastdl::induced

namespace fastdl::induced {

// The rows of a (batch, heads, n, d) tensor whose last dim is contiguous (any other strides:
// the (batch, n, heads, d) views that splitting heads makes are read in place).
template <typename T>
struct Rows {
  T* data;
  int64_t stride_b, stride_h, stride_n, heads;

  C10_HOST_DEVICE T* row(int64_t bh, int64_t i) const {
    return data + (bh / heads) * stride_b + (bh % heads) * stride_h + i * stride_n;
  }

  // The rows of one slice, without the divisions of row() (for inner loops).
  struct Slice {
    T* base;
    int64_t stride;
    C10_HOST_DEVICE T* row(int64_t i) const { return base + i * stride; }
  };
  C10_HOST_DEVICE Slice slice(int64_t bh) const { return {row(bh, 0), stride_n}; }
};

// The Rows of a (batch, heads, n, d) tensor (host); no rows (data null) for an undefined one.
template <typename T>
inline Rows<T> rows_of(const at::Tensor& t) {
  if (!t.defined()) return {nullptr, 0, 0, 0, 1};
  return {t.data_ptr<std::remove_const_t<T>>(), t.stride(0), t.stride(1), t.stride(2), t.size(1)};
}

}  // namespace fastdl::induced
