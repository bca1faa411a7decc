// sdpa's tensor-core forward (float16/bfloat16, E == Ev in {64, 128}, sm_80+): see
// sdpa_kernels.cuh and the comment below.
#include "fastdl/attention/cuda/sdpa_kernels.cuh"

namespace fastdl::sdpa_cuda {
namespace {

// ---- Tensor-core forward (float16/bfloat16, E == Ev in {64, 128}) --------------------------
//
// 4 warps own 64 query rows (16 each) of one (batch, head). Per 64-key tile: each warp computes
// its 16 x 64 scores with WMMA (Q from shared memory row-major, K read as a column-major
// K^T), stores them (float) to shared memory, runs the online softmax on them row by row
// (mask, causal, dropout as the CUDA-core kernel), writes P in the input type, rescales its
// float output rows and adds P V with WMMA, the accumulators living in shared memory so rows can
// be rescaled (WMMA fragments do not expose their row mapping).

constexpr int kTcRows = 64;  // query rows per block
constexpr int kTcKeys = 64;  // keys per tile
constexpr int kTcWarps = 4;
static_assert(kTcRows == kTcKeys,
              "stage_tile16 stages K and V tiles with the query tile's row count");
static_assert(kTcRows == 16 * kTcWarps, "each warp owns 16 query rows");
static_assert(kTcKeys == 64, "the softmax step gives each lane two keys of a tile");

// The WMMA element type of a torch half type.
template <typename T>
struct WmmaType;
template <>
struct WmmaType<at::Half> {
  using type = __half;
};
template <>
struct WmmaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

// Shared-memory pitches (elements): multiples of 8 (16-bit) / 4 (float) as WMMA requires,
// padded to spread banks.
template <int D>
struct TcLayout {
  static constexpr int qk_pitch = D + 8;       // q and k tiles, 16-bit
  static constexpr int v_pitch = D + 8;        // v tile, 16-bit
  static constexpr int s_pitch = kTcKeys + 4;  // scores, float
  static constexpr int p_pitch = kTcKeys + 8;  // probabilities, 16-bit
  static constexpr int o_pitch = D + 4;        // output accumulators, float
  static constexpr size_t bytes =
      2 * (2 * kTcRows * qk_pitch + kTcKeys * v_pitch + kTcRows * p_pitch) +
      4 * (kTcRows * s_pitch + kTcRows * o_pitch);
};

// Copies rows [r0, r0 + 64) x D of a strided 16-bit tensor to shared memory (zeros past `valid`).
template <typename T, int D, typename RowPtr>
__device__ void stage_tile16(T* dst, int pitch, int64_t valid, const RowPtr& src) {
  for (int idx = threadIdx.x; idx < kTcRows * D; idx += blockDim.x) {
    const int r = idx / D, e = idx % D;
    dst[r * pitch + e] = r < valid ? src(r)[e] : T(0.0f);
  }
}

// acc += A (16 x 16*steps, row-major, lda) * B, B's k-th 16-row block at b + kk * b_step; B is
// row- or column-major (BLayout) with leading dimension ldb.
template <typename W, typename BLayout>
__device__ __forceinline__ void mma_accumulate(
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>& acc, const W* a, int lda,
    const W* b, int ldb, int b_step, int steps) {
  namespace wmma = nvcuda::wmma;
  for (int kk = 0; kk < steps; ++kk) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, W, wmma::row_major> a_frag;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, W, BLayout> b_frag;
    wmma::load_matrix_sync(a_frag, a + kk * 16, lda);
    wmma::load_matrix_sync(b_frag, b + kk * b_step, ldb);
    wmma::mma_sync(acc, a_frag, b_frag, acc);
  }
}

// A warp's 16 rows of scores: ss[wr .. wr + 16) x kTcKeys = Q_w K^T (K row-major is K^T
// column-major).
template <typename T, int D>
__device__ __forceinline__ void warp_scores(const T* qs, const T* ks, float* ss, int wr) {
  namespace wmma = nvcuda::wmma;
  using W = typename WmmaType<T>::type;
  using L = TcLayout<D>;
  const W* q_w = reinterpret_cast<const W*>(qs + wr * L::qk_pitch);
  for (int n = 0; n < kTcKeys / 16; ++n) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    mma_accumulate<W, wmma::col_major>(acc, q_w, L::qk_pitch,
                                       reinterpret_cast<const W*>(ks + n * 16 * L::qk_pitch),
                                       L::qk_pitch, 16, D / 16);
    wmma::store_matrix_sync(ss + wr * L::s_pitch + n * 16, acc, L::s_pitch, wmma::mem_row_major);
  }
}

// A warp's 16 output rows: os[wr .. wr + 16) += P_w V.
template <typename T, int D>
__device__ __forceinline__ void warp_add_pv(const T* ps, const T* vs, float* os, int wr) {
  namespace wmma = nvcuda::wmma;
  using W = typename WmmaType<T>::type;
  using L = TcLayout<D>;
  const W* p_w = reinterpret_cast<const W*>(ps + wr * L::p_pitch);
  for (int n = 0; n < D / 16; ++n) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::load_matrix_sync(acc, os + wr * L::o_pitch + n * 16, L::o_pitch, wmma::mem_row_major);
    mma_accumulate<W, wmma::row_major>(acc, p_w, L::p_pitch,
                                       reinterpret_cast<const W*>(vs + n * 16), L::v_pitch,
                                       16 * L::v_pitch, kTcKeys / 16);
    wmma::store_matrix_sync(os + wr * L::o_pitch + n * 16, acc, L::o_pitch, wmma::mem_row_major);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kTcWarps * 32)
    forward_tensor_core_kernel(Params<T> p, T* out, float* lse, int64_t row_blocks) {
// WMMA on 16-bit types needs sm_80 (bfloat16); older architectures compile an empty body (the
// launcher only takes this kernel on sm_80+).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using L = TcLayout<D>;
  // WMMA loads and stores want 256-bit aligned addresses: every offset below is a multiple of
  // 32 bytes (the pitches times 16 rows, 16-column steps), from a 128-byte aligned base.
  FASTDL_DYNAMIC_SHARED(unsigned char, tc_smem);
  T* qs = reinterpret_cast<T*>(tc_smem);
  T* ks = qs + kTcRows * L::qk_pitch;
  T* vs = ks + kTcKeys * L::qk_pitch;
  T* ps = vs + kTcKeys * L::v_pitch;
  float* ss = reinterpret_cast<float*>(ps + kTcRows * L::p_pitch);
  float* os = ss + kTcRows * L::s_pitch;
  const BlockIndex at(blockIdx.x, p.q_heads, row_blocks);
  const int64_t b = at.b, h = at.h, kv_h = at.h / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row0 = at.block * kTcRows;
  const int64_t rows = imin(kTcRows, p.q_len - row0);
  stage_tile16<T, D>(qs, L::qk_pitch, rows, [&](int r) { return p.q_row(b, h, row0 + r); });
  for (int idx = threadIdx.x; idx < kTcRows * L::o_pitch; idx += blockDim.x) os[idx] = 0.0f;
  float m[16], l[16];  // this warp's rows' running max and sum (the same in every lane)
#pragma unroll         // m and l stay in registers: every loop over r is unrolled
  for (int r = 0; r < 16; ++r) {
    m[r] = softmax::neg_inf<float>();
    l[r] = 0.0f;
  }
  const int wr = warp * 16;  // this warp's first row in the block
  const int64_t keys = p.visible_keys(row0 + rows - 1);
  for (int64_t k0 = 0; k0 < keys; k0 += kTcKeys) {
    __syncthreads();  // everyone is done with the previous K/V tile
    const int64_t tile = imin(kTcKeys, p.kv_len - k0);
    stage_tile16<T, D>(ks, L::qk_pitch, tile, [&](int r) { return p.k_row(b, kv_h, k0 + r); });
    stage_tile16<T, D>(vs, L::v_pitch, tile, [&](int r) { return p.v_row(b, kv_h, k0 + r); });
    __syncthreads();
    warp_scores<T, D>(qs, ks, ss, wr);
    __syncwarp();
    // Online softmax, one row at a time, two keys per lane.
#pragma unroll
    for (int r = 0; r < 16; ++r) {
      const int64_t i = row0 + wr + r;
      float s2[2];
      for (int t = 0; t < 2; ++t) {
        const int c = lane + 32 * t;
        s2[t] = i < p.q_len ? p.score(ss[(wr + r) * L::s_pitch + c], b, h, i, k0 + c)
                            : softmax::neg_inf<float>();
      }
      const float new_m = softmax::max_nan(m[r], warp_max(softmax::max_nan(s2[0], s2[1])));
      const float correction = softmax::exp_shifted(m[r], new_m);
      float sum = 0.0f;
      for (int t = 0; t < 2; ++t) {
        const int c = lane + 32 * t;
        float prob = softmax::exp_shifted(s2[t], new_m);
        sum += prob;
        if (i < p.q_len) prob *= p.template keep_factor<float>(b, h, i, k0 + c);
        ps[(wr + r) * L::p_pitch + c] = static_cast<T>(prob);
      }
      m[r] = new_m;
      l[r] = l[r] * correction + warp_sum(sum);
      for (int e = lane; e < D; e += 32) os[(wr + r) * L::o_pitch + e] *= correction;
    }
    __syncwarp();
    warp_add_pv<T, D>(ps, vs, os, wr);
    __syncwarp();
  }
  __syncthreads();  // with no keys at all, the zeroed accumulators come from other warps
#pragma unroll
  for (int r = 0; r < 16; ++r) {
    const int64_t i = row0 + wr + r;
    if (i < p.q_len) {
      // A NaN score left m and l NaN: the output row and its saved log-sum-exp stay NaN (so
      // backward gives the row NaN gradients, as torch; -inf would mean "no key" and zero
      // them); a row that saw no key gives 0 and -inf.
      const float inv = softmax::inverse_or_zero(l[r]);
      T* out_row = out + ((b * p.q_heads + h) * p.q_len + i) * D;
      for (int e = lane; e < D; e += 32)
        out_row[e] = static_cast<T>(os[(wr + r) * L::o_pitch + e] * inv);
      if (lane == 0) {
        lse[(b * p.q_heads + h) * p.q_len + i] = softmax::log_sum_exp(m[r], l[r]);
      }
    }
  }
#endif
}

// Launches the tensor-core forward when it applies (half types, E == Ev in {64, 128});
// returns false otherwise.
template <typename T>
bool launch_tensor_core(const detail::SdpaShape& shape, const Params<T>& params, at::Tensor& output,
                        at::Tensor& logsumexp) {
  {
    if (shape.head_dim != shape.value_dim || (shape.head_dim != 64 && shape.head_dim != 128))
      return false;
    // WMMA on half types needs sm_80+; D = 128 needs 110 KiB of shared memory, more than
    // sm_86/89 allow: those take the CUDA-core kernel.
    const auto& props = cuda::device_properties();
    const size_t bytes = shape.head_dim == 64 ? TcLayout<64>::bytes : TcLayout<128>::bytes;
    if (props.major < 8 || bytes > props.sharedMemPerBlockOptin) return false;
    const int64_t row_blocks = cuda::ceil_div(shape.q_len, kTcRows);
    const auto launch = [&](auto head_dim) {
      constexpr int D = decltype(head_dim)::value;
      auto kernel = forward_tensor_core_kernel<T, D>;
      allow_shared_memory(kernel, TcLayout<D>::bytes);
      cuda::launch(kernel,
                   {grid_blocks(shape.batch * shape.q_heads * row_blocks), kTcWarps * 32,
                    TcLayout<D>::bytes},
                   params, output.mutable_data_ptr<T>(), logsumexp.mutable_data_ptr<float>(),
                   row_blocks);
    };
    static_switch<64, 128>(static_cast<int>(shape.head_dim), launch);
    return true;
  }
}

}  // namespace

bool launch_forward_tensor_core(const detail::SdpaShape& shape, const Params<at::Half>& params,
                                at::Tensor& output, at::Tensor& logsumexp) {
  return launch_tensor_core(shape, params, output, logsumexp);
}

bool launch_forward_tensor_core(const detail::SdpaShape& shape, const Params<at::BFloat16>& params,
                                at::Tensor& output, at::Tensor& logsumexp) {
  return launch_tensor_core(shape, params, output, logsumexp);
}

}  // namespace fastdl::sdpa_cuda
