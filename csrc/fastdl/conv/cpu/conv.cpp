// conv2d CPU kernels, NCHW (channels-last inputs are made contiguous and the result turned
// back). Dense and grouped: our im2col into a (C * kh * kw, images * OH * OW) column matrix,
// then the GEMMs. float32 uses our packed AVX-512/AVX2 GEMM (gemm.h), which reads the images
// in place through strided views: forward W_g @ columns_g, grad_input W_g^T @ grad_output_g
// then our col2im, grad_weight grad_output_g @ columns_g^T. With at least as many images as
// threads, each thread takes whole images (im2col, GEMMs, col2im on its own column buffer,
// its own partial grad_weight summed at the end): one parallel region per op. Otherwise
// (and for float64, or a CPU without AVX2) the batch is chunked and each step runs in
// parallel, the GEMMs being ours or at::mm (BLAS). col2im is parallel over (image, channel)
// planes, so no two threads write one element; grad_bias is our vectorised reduction. The
// chunked column buffer is bounded (kColumnBudget elements). Depthwise (one input channel
// per group, any channel multiplier): direct loops, forward and both gradients
// (cpu/depthwise.cpp).
#include "fastdl/common/cpu/half.h"
#include "fastdl/common/cpu/vec.h"
#include "fastdl/common/cpu_isa.h"
#include "fastdl/conv/conv.h"
#include "fastdl/conv/conv_math.h"
#include "fastdl/conv/cpu/depthwise.h"
#include "fastdl/common/cpu/gemm.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <vector>

// Compiled once per ISA (common/cpu_isa.h): everything here is in that ISA's namespace.
namespace fastdl::CPU_CAPABILITY {
namespace {

using detail::Conv2dShape;

// Elements of the column buffer: about an L2 (1 MiB of fp32), reused image after image, so
// the columns are written and read while cached and no large buffer is faulted in per call.
constexpr int64_t kColumnBudget = int64_t(1) << 18;

using cpu::axpy;
using cpu::grain;

// Images per chunk so that the (C * kh * kw, chunk * OH * OW) columns stay within budget.
int64_t chunk_images(const Conv2dShape& s) {
  const int64_t per_image = s.in_channels * s.kh * s.kw * s.out_h * s.out_w;
  return std::clamp<int64_t>(kColumnBudget / std::max<int64_t>(per_image, 1), 1,
                             std::max<int64_t>(s.batch, 1));
}

// col[(c, ki, kj), (n, oh, ow)] = x[n0 + n, c, oh * sh - ph + ki * dh, ow * sw - pw + kj * dw]
// (0 outside).
template <typename T>
void im2col(const T* x, T* col, const Conv2dShape& s, int64_t nb) {
  const int64_t H = s.in_h, W = s.in_w, OH = s.out_h, OW = s.out_w, L = OH * OW, kk = s.kh * s.kw;
  // Parallel over the rows r = (c, ki, kj) of the column matrix, decoded once per row.
  at::parallel_for(0, s.in_channels * kk, grain(nb * L), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t c = r / kk, ki = (r % kk) / s.kw, kj = r % s.kw;
      const auto wr = detail::conv_valid_outputs(W, OW, s.sw, s.pw, kj * s.dw);
      const int64_t off = kj * s.dw - s.pw;
      for (int64_t n = 0; n < nb; ++n) {
        const T* src = x + (n * s.in_channels + c) * H * W;
        T* dst = col + r * nb * L + n * L;
        for (int64_t oh = 0; oh < OH; ++oh) {
          T* d = dst + oh * OW;
          const int64_t ih = oh * s.sh - s.ph + ki * s.dh;
          if (ih < 0 || ih >= H) {
            std::fill(d, d + OW, T(0));
            continue;
          }
          // plain loops, not std::copy/fill: the rows are often short (small images), where a
          // memmove/memset call per row costs more than the copy
          const T* row = src + ih * W + off;
          for (int64_t ow = 0; ow < wr.begin; ++ow) d[ow] = T(0);
          if (s.sw == 1) {
            for (int64_t ow = wr.begin; ow < wr.end; ++ow) d[ow] = row[ow];
          } else {
            for (int64_t ow = wr.begin; ow < wr.end; ++ow) d[ow] = row[ow * s.sw];
          }
          for (int64_t ow = wr.end; ow < OW; ++ow) d[ow] = T(0);
        }
      }
    }
  });
}

// The adjoint of im2col: gx[n, c] = sum of the columns' entries that read it.
template <typename T>
void col2im(const T* col, T* gx, const Conv2dShape& s, int64_t nb) {
  const int64_t H = s.in_h, W = s.in_w, OH = s.out_h, OW = s.out_w, L = OH * OW, kk = s.kh * s.kw;
  at::parallel_for(0, nb * s.in_channels, grain(kk * L), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / s.in_channels, c = p % s.in_channels;
      T* dst = gx + p * H * W;
      std::fill(dst, dst + H * W, T(0));
      for (int64_t ki = 0; ki < s.kh; ++ki) {
        for (int64_t kj = 0; kj < s.kw; ++kj) {
          const T* src = col + (c * kk + ki * s.kw + kj) * nb * L + n * L;
          const auto wr = detail::conv_valid_outputs(W, OW, s.sw, s.pw, kj * s.dw);
          const int64_t off = kj * s.dw - s.pw;
          for (int64_t oh = 0; oh < OH; ++oh) {
            const int64_t ih = oh * s.sh - s.ph + ki * s.dh;
            if (ih < 0 || ih >= H) continue;
            T* row = dst + ih * W + off;
            const T* g = src + oh * OW;
            if (s.sw == 1) {
              axpy(row + wr.begin, g + wr.begin, T(1), wr.end - wr.begin);
            } else {
              for (int64_t ow = wr.begin; ow < wr.end; ++ow) row[ow * s.sw] += g[ow];
            }
          }
        }
      }
    }
  });
}

template <typename T>
void add_bias(T* y, const T* bias, const Conv2dShape& s) {
  const int64_t K = s.out_channels, L = s.out_h * s.out_w;
  at::parallel_for(0, s.batch * K, grain(L), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const T b = bias[p % K];
      T* row = y + p * L;
      for (int64_t i = 0; i < L; ++i) row[i] += b;
    }
  });
}

// grad_bias[k] = sum over images and positions of grad_output[n, k].
template <typename T>
void bias_grad(const T* gy, T* gb, const Conv2dShape& s) {
  const int64_t K = s.out_channels, L = s.out_h * s.out_w;
  at::parallel_for(0, K, grain(s.batch * L), [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      double total = 0;
      for (int64_t n = 0; n < s.batch; ++n) {
        const T* row = gy + (n * K + k) * L;
        total += cpu::reduce_sum(row, L, [](auto v) { return v; });
      }
      gb[k] = static_cast<T>(total);
    }
  });
}

// ---- dense / grouped: im2col + GEMM ----

// float32 with our packed GEMM (gemm.h): the three products read the images of a chunk in
// place through grouped column strides, so nothing is transposed or copied around them.
// Column j = (n, l) of a chunk's output / grad_output lives at n * K * L + l.
bool use_own_gemm(const at::Tensor& x) {
  return x.scalar_type() == at::kFloat && cpu::gemm_available();
}

cpu::MatrixRef matrix(const float* data, int64_t row_stride, int64_t col_stride = 1) {
  return {const_cast<float*>(data), row_stride, col_stride};
}
// A chunk of nb images of (rows, L) planes, planes image_stride apart, as a (rows, nb * L) matrix.
cpu::MatrixRef image_columns(const float* data, int64_t L, int64_t image_stride) {
  return {const_cast<float*>(data), L, 1, L, image_stride};
}

// With enough images for every thread, whole images go to the threads: one parallel region
// per op call, in which each thread runs im2col, the GEMMs (single-threaded inside a parallel
// region) and col2im on its own images with its own column buffer, so threads never wait on
// each other mid-op. Otherwise (a batch smaller than the threads) the chunked path below runs
// each step in parallel.
bool images_in_parallel(const Conv2dShape& s) {
  const int64_t threads = at::get_num_threads();
  return threads > 1 && (s.batch % threads == 0 || s.batch >= 4 * threads);
}

// The column buffer of one image in the whole-images path: a per-thread buffer kept between
// calls when it is at most kCachedColumns floats (no allocation, zeroing and page faults per
// call), else allocated for this call. One live ColumnBuffer per thread at a time.
constexpr int64_t kCachedColumns = int64_t(1) << 22;  // 16 MiB of float32

struct ColumnBuffer {
  std::unique_ptr<float[]> owned;
  float* data;
  explicit ColumnBuffer(int64_t n) {
    thread_local std::vector<float> cached;
    if (n <= kCachedColumns) {
      if (static_cast<int64_t>(cached.size()) < n) cached.resize(n);
      data = cached.data();
    } else {
      owned.reset(new float[n]);
      data = owned.get();
    }
  }
};

// Each thread's images go through im2col and the GEMMs a few at a time (chunk_images: small
// images share one GEMM, whose columns run across them, so tiles are not cut at every image).
void forward_images(const float* x, const float* w, const float* bias, float* y,
                    const Conv2dShape& s, cpu::GemmInputs inputs) {
  const int64_t K = s.out_channels, G = s.groups, Kg = s.out_per_group(), L = s.out_h * s.out_w;
  const int64_t rows = s.in_channels * s.kh * s.kw, rows_g = rows / G,
                image = s.in_channels * s.in_h * s.in_w;
  const int64_t chunk = chunk_images(s);
  at::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
    ColumnBuffer col(rows * std::min(chunk, end - begin) * L);
    for (int64_t n0 = begin; n0 < end; n0 += chunk) {
      const int64_t nb = std::min(chunk, end - n0);
      im2col<float>(x + n0 * image, col.data, s, nb);
      float* yn = y + n0 * K * L;
      for (int64_t g = 0; g < G; ++g) {
        cpu::gemm(Kg, nb * L, rows_g, matrix(w + g * Kg * rows_g, rows_g),
                  matrix(col.data + g * rows_g * nb * L, nb * L),
                  image_columns(yn + g * Kg * L, L, K * L), /*accumulate=*/false, inputs);
      }
      if (bias) {
        for (int64_t p = 0; p < nb * K; ++p) {
          float* row = yn + p * L;
          const float b = bias[p % K];
          for (int64_t i = 0; i < L; ++i) row[i] += b;
        }
      }
    }
  });
}

// gx and gw (either may be null): each thread sums its images' weight gradients into its own
// partial, and the partials are added at the end (in thread order: deterministic).
void backward_images(const float* gy, const float* x, const float* w, float* gx, float* gw,
                     const Conv2dShape& s, cpu::GemmInputs inputs) {
  const int64_t K = s.out_channels, G = s.groups, Kg = s.out_per_group(), L = s.out_h * s.out_w;
  const int64_t rows = s.in_channels * s.kh * s.kw, rows_g = rows / G,
                image = s.in_channels * s.in_h * s.in_w;
  const int64_t chunk = chunk_images(s);
  std::vector<std::vector<float>> partials(at::get_num_threads());
  at::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
    const int tid = at::get_thread_num();
    TORCH_INTERNAL_ASSERT(tid >= 0 && tid < static_cast<int>(partials.size()));
    ColumnBuffer col(rows * std::min(chunk, end - begin) * L);
    float* gw_part = nullptr;
    if (gw) {
      partials[tid].resize(K * rows_g);
      gw_part = partials[tid].data();
    }
    for (int64_t n0 = begin; n0 < end; n0 += chunk) {
      const int64_t nb = std::min(chunk, end - n0);
      const float* gyn = gy + n0 * K * L;
      if (gw) {
        // gw_g (Kg, rows_g) += gy_g (Kg, nb * L) @ columns_g^T
        im2col<float>(x + n0 * image, col.data, s, nb);
        for (int64_t g = 0; g < G; ++g) {
          cpu::gemm(Kg, rows_g, nb * L, image_columns(gyn + g * Kg * L, L, K * L),
                    matrix(col.data + g * rows_g * nb * L, 1, nb * L),
                    matrix(gw_part + g * Kg * rows_g, rows_g),
                    /*accumulate=*/n0 > begin, inputs);
        }
      }
      if (gx) {
        // columns_g (rows_g, nb * L) = W_g^T @ gy_g, then col2im
        for (int64_t g = 0; g < G; ++g) {
          cpu::gemm(rows_g, nb * L, Kg, matrix(w + g * Kg * rows_g, 1, rows_g),
                    image_columns(gyn + g * Kg * L, L, K * L),
                    matrix(col.data + g * rows_g * nb * L, nb * L), /*accumulate=*/false, inputs);
        }
        col2im<float>(col.data, gx + n0 * image, s, nb);
      }
    }
  });
  if (gw) {
    std::fill(gw, gw + K * rows_g, 0.f);
    for (const auto& part : partials) {
      if (part.empty()) continue;
      for (int64_t i = 0; i < K * rows_g; ++i) gw[i] += part[i];
    }
  }
}

at::Tensor forward_gemm(const at::Tensor& x, const at::Tensor& w, const Conv2dShape& s,
                        cpu::GemmInputs inputs) {
  const int64_t N = s.batch, K = s.out_channels, G = s.groups, Kg = s.out_per_group(),
                L = s.out_h * s.out_w;
  const int64_t rows = s.in_channels * s.kh * s.kw, rows_g = rows / G;
  auto y = at::empty({N, K, s.out_h, s.out_w}, x.options());
  const auto wg = w.view({G, Kg, rows_g});
  const auto yv = y.view({N, G, Kg, L});
  const bool own = use_own_gemm(x);
  const int64_t chunk = chunk_images(s);
  auto col = at::empty({rows, std::min(chunk, N) * L}, x.options());
  for (int64_t n0 = 0; n0 < N; n0 += chunk) {
    const int64_t nb = std::min(chunk, N - n0);
    auto cols = col.narrow(1, 0, nb * L);
    if (nb != chunk) cols = at::empty({rows, nb * L}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastdl.conv2d im2col", [&] {
      im2col<scalar_t>(x.const_data_ptr<scalar_t>() + n0 * s.in_channels * s.in_h * s.in_w,
                       cols.mutable_data_ptr<scalar_t>(), s, nb);
    });
    if (own) {
      // One GEMM per group over the whole chunk: (Kg, nb * L) = W_g @ columns_g.
      const float* wp = w.const_data_ptr<float>();
      const float* cp = cols.const_data_ptr<float>();
      float* yp = y.mutable_data_ptr<float>() + n0 * K * L;
      for (int64_t g = 0; g < G; ++g) {
        cpu::gemm(Kg, nb * L, rows_g, matrix(wp + g * Kg * rows_g, rows_g),
                  matrix(cp + g * rows_g * nb * L, nb * L),
                  image_columns(yp + g * Kg * L, L, K * L), /*accumulate=*/false, inputs);
      }
      continue;
    }
    // One GEMM per (image, group) straight into the output: (Kg, L) = W_g @ columns of the
    // image (a strided view of the chunk's columns), no transposing copy.
    for (int64_t n = 0; n < nb; ++n) {
      for (int64_t g = 0; g < G; ++g) {
        auto out = yv.select(0, n0 + n).select(0, g);  // (Kg, L), contiguous
        at::mm_out(out, wg.select(0, g), cols.narrow(0, g * rows_g, rows_g).narrow(1, n * L, L));
      }
    }
  }
  return y;
}

void backward_gemm(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& w,
                   const Conv2dShape& s, at::Tensor* gx, at::Tensor* gw, cpu::GemmInputs inputs) {
  const int64_t N = s.batch, K = s.out_channels, G = s.groups, Kg = s.out_per_group(),
                L = s.out_h * s.out_w;
  const int64_t rows = s.in_channels * s.kh * s.kw, rows_g = rows / G;
  const auto wg = w.view({G, Kg, rows_g});
  const bool own = use_own_gemm(x);
  at::Tensor gwg;
  if (gw) {
    *gw = own ? at::empty(w.sizes(), w.options()) : at::zeros(w.sizes(), w.options());
    gwg = gw->view({G, Kg, rows_g});
  }
  if (gx) *gx = at::empty({N, s.in_channels, s.in_h, s.in_w}, x.options());
  const int64_t chunk = chunk_images(s);
  for (int64_t n0 = 0; n0 < N; n0 += chunk) {
    const int64_t nb = std::min(chunk, N - n0);
    auto cols = at::empty({rows, nb * L}, x.options());
    if (gw) {
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastdl.conv2d im2col", [&] {
        im2col<scalar_t>(x.const_data_ptr<scalar_t>() + n0 * s.in_channels * s.in_h * s.in_w,
                         cols.mutable_data_ptr<scalar_t>(), s, nb);
      });
      if (own) {
        // grad_weight_g (Kg, rows_g) += grad_output_g (Kg, nb * L) @ columns_g^T, the chunk's
        // images read in place; the first chunk writes, the others accumulate.
        const float* gyp = gy.const_data_ptr<float>() + n0 * K * L;
        const float* cp = cols.const_data_ptr<float>();
        for (int64_t g = 0; g < G; ++g) {
          cpu::gemm(Kg, rows_g, nb * L, image_columns(gyp + g * Kg * L, L, K * L),
                    matrix(cp + g * rows_g * nb * L, 1, nb * L),
                    matrix(gw->mutable_data_ptr<float>() + g * Kg * rows_g, rows_g),
                    /*accumulate=*/n0 > 0, inputs);
        }
      } else {
        // grad_output of the chunk as (K, nb * L): one GEMM per group over the whole chunk.
        const auto gyc =
            gy.narrow(0, n0, nb).view({nb, K, L}).transpose(0, 1).contiguous().view({K, nb * L});
        for (int64_t g = 0; g < G; ++g) {
          auto gw_g = gwg.select(0, g);
          gw_g.addmm_(gyc.narrow(0, g * Kg, Kg), cols.narrow(0, g * rows_g, rows_g).t());
        }
      }
    }
    if (gx) {
      if (own) {
        // columns_g (rows_g, nb * L) = W_g^T @ grad_output_g, W_g read transposed in place.
        const float* wp = w.const_data_ptr<float>();
        const float* gyp = gy.const_data_ptr<float>() + n0 * K * L;
        float* cp = cols.mutable_data_ptr<float>();
        for (int64_t g = 0; g < G; ++g) {
          cpu::gemm(rows_g, nb * L, Kg, matrix(wp + g * Kg * rows_g, 1, rows_g),
                    image_columns(gyp + g * Kg * L, L, K * L),
                    matrix(cp + g * rows_g * nb * L, nb * L),
                    /*accumulate=*/false, inputs);
        }
      } else {
        // Columns of each (image, group) = W_g^T @ grad_output[n, g], read in place.
        const auto gyv = gy.view({N, G, Kg, L});
        for (int64_t n = 0; n < nb; ++n) {
          for (int64_t g = 0; g < G; ++g) {
            auto out = cols.narrow(0, g * rows_g, rows_g).narrow(1, n * L, L);
            at::mm_out(out, wg.select(0, g).t(), gyv.select(0, n0 + n).select(0, g));
          }
        }
      }
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastdl.conv2d col2im", [&] {
        col2im<scalar_t>(cols.const_data_ptr<scalar_t>(),
                         gx->mutable_data_ptr<scalar_t>() + n0 * s.in_channels * s.in_h * s.in_w, s,
                         nb);
      });
    }
  }
}

// ---- op kernels ----

// The bfloat16 forward on the bfloat16 units: one product per group over the whole batch, its
// columns read from the bfloat16 images while packed (cpu::ImageColumns), parallel inside;
// the bias added while the float32 sums are rounded to bfloat16, in one pass.
cpu::ImageColumns group_columns(const at::Tensor& x, const Conv2dShape& s, int64_t g) {
  return {x.const_data_ptr(),
          x.scalar_type() == at::kBFloat16,
          s.batch,
          s.in_channels,
          s.in_h,
          s.in_w,
          g * s.in_per_group(),
          s.out_h,
          s.out_w,
          s.kh,
          s.kw,
          s.sh,
          s.sw,
          s.ph,
          s.pw,
          s.dh,
          s.dw};
}

bool image_columns_available(const at::Tensor& x, const Conv2dShape& s) {
  return !s.depthwise() && cpu::gemm_image_columns_available(group_columns(x, s, 0));
}

// x: NCHW contiguous bfloat16; w: contiguous float32 (bfloat16 values). The float32 sums.
at::Tensor forward_image_columns(const at::Tensor& x, const at::Tensor& w, const Conv2dShape& s) {
  const int64_t K = s.out_channels, Kg = s.out_per_group(), L = s.out_h * s.out_w;
  const int64_t rows_g = s.in_per_group() * s.kh * s.kw;
  auto y = at::empty({s.batch, K, s.out_h, s.out_w}, x.options().dtype(at::kFloat));
  const float* wp = w.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  for (int64_t g = 0; g < s.groups; ++g) {
    cpu::gemm_image_columns(Kg, s.batch * L, rows_g, matrix(wp + g * Kg * rows_g, rows_g),
                            group_columns(x, s, g), image_columns(yp + g * Kg * L, L, K * L),
                            /*accumulate=*/false);
  }
  return y;
}

// (y + bias) rounded to dtype (a half type), NCHW.
at::Tensor with_bias_rounded(const at::Tensor& y, const std::optional<at::Tensor>& bias,
                             const Conv2dShape& s, at::ScalarType dtype) {
  const int64_t K = s.out_channels, L = s.out_h * s.out_w;
  std::vector<float> storage;
  const float* b = cpu::compute_values<float>(bias.has_value() ? *bias : at::Tensor(), storage);
  auto out = at::empty(y.sizes(), y.options().dtype(dtype));
  AT_DISPATCH_REDUCED_FLOATING_TYPES(dtype, "fastdl.conv2d bias and rounding", [&] {
    const float* src = y.const_data_ptr<float>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    constexpr int64_t V = cpu::Vec<float>::size();
    at::parallel_for(0, s.batch * K, grain(L), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const float bk = b ? b[p % K] : 0.f;
        const float* row = src + p * L;
        scalar_t* row_out = dst + p * L;
        int64_t i = 0;
        for (; i + V <= L; i += V) {
          cpu::store_as<float>(cpu::Vec<float>::loadu(row + i) + cpu::Vec<float>(bk), row_out + i);
        }
        for (; i < L; ++i) row_out[i] = static_cast<scalar_t>(row[i] + bk);
      }
    });
  });
  return out;
}

// float32 and float64 (a half conv2d runs here on float32 copies: `inputs` says whether they
// hold bfloat16 values, whose products may then run on the CPU's bfloat16 units).
at::Tensor conv2d_forward_float(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, const Conv2dShape& s,
                                cpu::GemmInputs inputs) {
  const auto x = detail::conv2d_kernel_layout(input, s);
  const auto w = weight.contiguous();
  const auto b = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  at::Tensor y;
  if (s.depthwise()) {
    y = at::empty({s.batch, s.out_channels, s.out_h, s.out_w}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastdl.conv2d depthwise", [&] {
      conv_cpu::depthwise_forward<scalar_t>(
          x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
          b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, y.mutable_data_ptr<scalar_t>(), s);
    });
  } else if (use_own_gemm(x) && images_in_parallel(s)) {
    y = at::empty({s.batch, s.out_channels, s.out_h, s.out_w}, x.options());
    forward_images(x.const_data_ptr<float>(), w.const_data_ptr<float>(),
                   b.defined() ? b.const_data_ptr<float>() : nullptr, y.mutable_data_ptr<float>(),
                   s, inputs);
  } else {
    y = forward_gemm(x, w, s, inputs);
    if (b.defined()) {
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastdl.conv2d bias", [&] {
        add_bias<scalar_t>(y.mutable_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), s);
      });
    }
  }
  return detail::conv2d_result(y, s);
}

// bfloat16 values may be multiplied as such; float16 ones not (they have more mantissa bits).
cpu::GemmInputs gemm_inputs(at::ScalarType dtype) {
  return dtype == at::kBFloat16 ? cpu::GemmInputs::bfloat16 : cpu::GemmInputs::float32;
}

at::Tensor conv2d_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto s =
      detail::check_conv2d_forward(input, weight, bias, stride, padding, dilation, groups);
  if (input.scalar_type() == at::kBFloat16) {
    const auto x = detail::conv2d_kernel_layout(input, s);
    if (image_columns_available(x, s)) {
      const auto y = forward_image_columns(x, cpu::to_compute_dtype(weight).contiguous(), s);
      return detail::conv2d_result(with_bias_rounded(y, bias, s, at::kBFloat16), s);
    }
  }
  if (cpu::is_half(input.scalar_type())) {
    // float16/bfloat16: the float32 kernels on converted copies, the output rounded once to
    // the input's dtype (torch's CPU convolution accumulates half inputs in float32 too).
    const auto y =
        conv2d_forward_float(cpu::to_compute_dtype(input), cpu::to_compute_dtype(weight),
                             cpu::to_compute_dtype(bias), s, gemm_inputs(input.scalar_type()));
    return cpu::converted(y, input.scalar_type());
  }
  return conv2d_forward_float(input, weight, bias, s, cpu::GemmInputs::float32);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_float(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const Conv2dShape& s, std::array<bool, 3> output_mask, cpu::GemmInputs inputs) {
  const auto x = detail::conv2d_kernel_layout(input, s);
  const auto gy = detail::conv2d_kernel_layout(grad_output, s);
  const auto w = weight.contiguous();
  at::Tensor gx, gw, gb;
  if (s.depthwise()) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastdl.conv2d depthwise backward", [&] {
      if (output_mask[0]) {
        gx = at::empty({s.batch, s.in_channels, s.in_h, s.in_w}, x.options());
        conv_cpu::depthwise_grad_input<scalar_t>(gy.const_data_ptr<scalar_t>(),
                                                 w.const_data_ptr<scalar_t>(),
                                                 gx.mutable_data_ptr<scalar_t>(), s);
      }
      if (output_mask[1]) {
        gw = at::empty(w.sizes(), w.options());
        conv_cpu::depthwise_grad_weight<scalar_t>(gy.const_data_ptr<scalar_t>(),
                                                  x.const_data_ptr<scalar_t>(),
                                                  gw.mutable_data_ptr<scalar_t>(), s);
      }
    });
  } else if ((output_mask[0] || output_mask[1]) && use_own_gemm(x) && images_in_parallel(s)) {
    if (output_mask[0]) gx = at::empty({s.batch, s.in_channels, s.in_h, s.in_w}, x.options());
    if (output_mask[1]) gw = at::empty(w.sizes(), w.options());
    backward_images(gy.const_data_ptr<float>(), x.const_data_ptr<float>(),
                    w.const_data_ptr<float>(),
                    gx.defined() ? gx.mutable_data_ptr<float>() : nullptr,
                    gw.defined() ? gw.mutable_data_ptr<float>() : nullptr, s, inputs);
  } else if (output_mask[0] || output_mask[1]) {
    backward_gemm(gy, x, w, s, output_mask[0] ? &gx : nullptr, output_mask[1] ? &gw : nullptr,
                  inputs);
  }
  if (output_mask[2]) {
    gb = at::empty({s.out_channels}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastdl.conv2d grad_bias", [&] {
      bias_grad<scalar_t>(gy.const_data_ptr<scalar_t>(), gb.mutable_data_ptr<scalar_t>(), s);
    });
  }
  if (gx.defined()) gx = detail::conv2d_result(gx, s);
  return {gx, gw, gb};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask) {
  const auto s =
      detail::check_conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups);
  if (cpu::is_half(input.scalar_type())) {  // as the forward: in float32, rounded once
    const auto dtype = input.scalar_type();
    const auto [gx, gw, gb] =
        conv2d_backward_float(cpu::to_compute_dtype(grad_output), cpu::to_compute_dtype(input),
                              cpu::to_compute_dtype(weight), s, output_mask, gemm_inputs(dtype));
    return {cpu::converted(gx, dtype), cpu::converted(gw, dtype), cpu::converted(gb, dtype)};
  }
  return conv2d_backward_float(grad_output, input, weight, s, output_mask,
                               cpu::GemmInputs::float32);
}

}  // namespace

FASTDL_CPU_KERNELS(conv, m) {
  m.impl("conv2d_forward", &conv2d_forward_cpu);
  m.impl("conv2d_backward", &conv2d_backward_cpu);
}

}  // namespace fastdl::CPU_CAPABILITY
