// Convolution geometry shared by the CPU and CUDA kernels (host and device).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FASTDL_HD __host__ __device__ __forceinline__
#else
#define FASTDL_HD inline
#endif

namespace fastdl::detail {

// Output size along one dim: floor((in + 2 pad - dilation (k - 1) - 1) / stride) + 1.
FASTDL_HD int64_t conv_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad,
                                   int64_t dilation) {
  return (in + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1;
}

// Half-open range [begin, end) of output positions o whose tap at input position
// o * stride - pad + offset (offset = tap * dilation) lies inside [0, in): the loops over
// output positions run branch-free inside it.
struct OutRange {
  int64_t begin, end;
};
FASTDL_HD OutRange conv_valid_outputs(int64_t in, int64_t out, int64_t stride, int64_t pad,
                                      int64_t offset) {
  // o * stride >= pad - offset  and  o * stride <= in - 1 + pad - offset
  const int64_t lo_num = pad - offset;
  int64_t begin = lo_num <= 0 ? 0 : (lo_num + stride - 1) / stride;
  const int64_t hi_num = in - 1 + pad - offset;
  int64_t end = hi_num < 0 ? 0 : hi_num / stride + 1;
  if (end > out) end = out;
  if (begin > end) begin = end;
  return {begin, end};
}

// The output position o that tap `offset` of input position i comes from, if any:
// o * stride = i + pad - offset, o in [0, out). Returns -1 when there is none.
FASTDL_HD int64_t conv_source_output(int64_t i, int64_t out, int64_t stride, int64_t pad,
                                     int64_t offset) {
  const int64_t num = i + pad - offset;
  if (num < 0 || num % stride != 0) return -1;
  const int64_t o = num / stride;
  return o < out ? o : -1;
}

}  // namespace fastdl::detail
