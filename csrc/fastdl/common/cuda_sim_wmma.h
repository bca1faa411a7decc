// cuda-sim's nvcuda::wmma: warp-level matrix fragments with the documented semantics.
// load/store/mma are warp collectives (every lane, the same arguments); a fragment's elements
// are spread over the lanes in a scrambled order, as code may only rely on the documented
// (unspecified) mapping: elementwise ops on x[] that treat every element alike. Products are
// exact in float, accumulated in float, as on the tensor cores. Included by cuda_sim.h.
#pragma once

#include <cstdint>

namespace fastdl::cuda_sim::wmma_detail {

// Element g = r * cols + c of an R x C fragment (R * C a power of two, a multiple of 32) is
// element e of lane l where e * 32 + l = (g * kMul + kAdd) mod (R * C).
constexpr uint32_t kMul = 167, kAdd = 89;

// kMul's inverse modulo 2^32 (Newton's iteration), hence modulo every power of two.
constexpr uint32_t inverse_of_mul() {
  uint32_t x = kMul;
  for (int i = 0; i < 5; ++i) x *= 2u - kMul * x;
  return x;
}

// (row, column) of element e of `lane` in an R x C fragment.
template <int R, int C>
constexpr void position(int lane, int e, int& row, int& col) {
  constexpr uint32_t n = R * C;
  const uint32_t p = static_cast<uint32_t>(e) * 32u + static_cast<uint32_t>(lane);
  const uint32_t g = ((p + n - kAdd % n) * inverse_of_mul()) & (n - 1);
  row = static_cast<int>(g / C);
  col = static_cast<int>(g % C);
}

}  // namespace fastdl::cuda_sim::wmma_detail

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K>
struct fragment_shape;
template <int M, int N, int K>
struct fragment_shape<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct fragment_shape<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct fragment_shape<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = fragment_shape<Use, M, N, K>::rows;
  static constexpr int cols = fragment_shape<Use, M, N, K>::cols;
  static_assert((rows * cols) % 32 == 0 && ((rows * cols) & (rows * cols - 1)) == 0,
                "cuda-sim fragments: rows * cols must be a power of two and a multiple of 32");
  static constexpr int num_elements = rows * cols / 32;
  using element_type = T;
  T x[num_elements];
};

namespace detail {

namespace sim = ::fastdl::cuda_sim;

struct MemoryArgs {
  const void* ptr;
  unsigned ldm;
  int layout;  // 0 row-major, 1 column-major
};

struct MemoryInfo {
  const char* what;
  sim::Where where;
};

// Every lane must pass the same pointer, leading dimension and layout.
inline void complete_memory(void* const* lanes, unsigned mask, const void* info) {
  const auto* first = static_cast<const MemoryArgs*>(lanes[__builtin_ctz(mask)]);
  for (int l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    const auto* a = static_cast<const MemoryArgs*>(lanes[l]);
    if (a->ptr != first->ptr || a->ldm != first->ldm || a->layout != first->layout) {
      sim::device_error(
          "lanes of a warp passed different pointers, leading dimensions or layouts "
          "to a WMMA load/store",
          static_cast<const MemoryInfo*>(info)->where);
    }
  }
}

template <typename T>
inline void check_memory(const char* what, const void* ptr, unsigned ldm, int layout,
                         sim::Where where) {
  // The CUDA documentation: a 256-bit aligned pointer, ldm a multiple of 16 bytes.
  if (reinterpret_cast<uintptr_t>(ptr) % 32 != 0) {
    sim::device_error("WMMA load/store pointer is not 256-bit (32-byte) aligned", where);
  }
  if ((ldm * sizeof(T)) % 16 != 0) {
    sim::device_error("WMMA load/store leading dimension is not a multiple of 16 bytes", where);
  }
  MemoryArgs args{ptr, ldm, layout};
  const MemoryInfo info{what, where};
  sim::warp_collective(what, where, 0xffffffffu, &args, &complete_memory, &info, false);
}

template <typename F>
inline int fragment_layout() {
  return 0;
}

template <typename Frag>
struct MmaLane {
  Frag* d;
  const void* a;
  const void* b;
  const Frag* c;
};

template <typename FragD, typename FragA, typename FragB>
inline void complete_mma(void* const* lanes, unsigned, const void*) {
  constexpr int M = FragD::rows, N = FragD::cols, K = FragA::cols;
  float a[M][K], b[K][N], c[M][N];
  for (int l = 0; l < 32; ++l) {
    const auto* lane = static_cast<const MmaLane<FragD>*>(lanes[l]);
    const auto* fa = static_cast<const FragA*>(lane->a);
    const auto* fb = static_cast<const FragB*>(lane->b);
    for (int e = 0; e < FragA::num_elements; ++e) {
      int r, k;
      sim::wmma_detail::position<M, K>(l, e, r, k);
      a[r][k] = static_cast<float>(fa->x[e]);
    }
    for (int e = 0; e < FragB::num_elements; ++e) {
      int k, n;
      sim::wmma_detail::position<K, N>(l, e, k, n);
      b[k][n] = static_cast<float>(fb->x[e]);
    }
    for (int e = 0; e < FragD::num_elements; ++e) {
      int r, n;
      sim::wmma_detail::position<M, N>(l, e, r, n);
      c[r][n] = static_cast<float>(lane->c->x[e]);
    }
  }
  for (int l = 0; l < 32; ++l) {
    auto* lane = static_cast<MmaLane<FragD>*>(lanes[l]);
    for (int e = 0; e < FragD::num_elements; ++e) {
      int r, n;
      sim::wmma_detail::position<M, N>(l, e, r, n);
      float acc = c[r][n];
      for (int k = 0; k < K; ++k) acc += a[r][k] * b[k][n];
      lane->d->x[e] = static_cast<typename FragD::element_type>(acc);
    }
  }
}

}  // namespace detail

// Fragments of matrix_a / matrix_b: the layout is part of the type.
template <typename Use, int M, int N, int K, typename T, typename Layout, typename U>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const U* ptr, unsigned ldm,
                             std::source_location where = std::source_location::current()) {
  static_assert(!std::is_same_v<Use, accumulator>, "accumulators take a layout_t argument");
  constexpr int layout = std::is_same_v<Layout, col_major> ? 1 : 0;
  detail::check_memory<U>("wmma::load_matrix_sync", ptr, ldm, layout, where);
  using F = fragment<Use, M, N, K, T, Layout>;
  const int lane = ::fastdl::cuda_sim::lane_id();
  for (int e = 0; e < F::num_elements; ++e) {
    int r, c;
    ::fastdl::cuda_sim::wmma_detail::position<F::rows, F::cols>(lane, e, r, c);
    f.x[e] = static_cast<T>(layout == 0 ? ptr[static_cast<size_t>(r) * ldm + c]
                                        : ptr[static_cast<size_t>(c) * ldm + r]);
  }
}

template <int M, int N, int K, typename T, typename U>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const U* ptr, unsigned ldm,
                             layout_t layout,
                             std::source_location where = std::source_location::current()) {
  detail::check_memory<U>("wmma::load_matrix_sync", ptr, ldm, layout, where);
  using F = fragment<accumulator, M, N, K, T>;
  const int lane = ::fastdl::cuda_sim::lane_id();
  for (int e = 0; e < F::num_elements; ++e) {
    int r, c;
    ::fastdl::cuda_sim::wmma_detail::position<F::rows, F::cols>(lane, e, r, c);
    f.x[e] = static_cast<T>(layout == mem_row_major ? ptr[static_cast<size_t>(r) * ldm + c]
                                                    : ptr[static_cast<size_t>(c) * ldm + r]);
  }
}

template <int M, int N, int K, typename T, typename U>
inline void store_matrix_sync(U* ptr, const fragment<accumulator, M, N, K, T>& f, unsigned ldm,
                              layout_t layout,
                              std::source_location where = std::source_location::current()) {
  detail::check_memory<U>("wmma::store_matrix_sync", ptr, ldm, layout, where);
  using F = fragment<accumulator, M, N, K, T>;
  const int lane = ::fastdl::cuda_sim::lane_id();
  for (int e = 0; e < F::num_elements; ++e) {
    int r, c;
    ::fastdl::cuda_sim::wmma_detail::position<F::rows, F::cols>(lane, e, r, c);
    const size_t i = layout == mem_row_major ? static_cast<size_t>(r) * ldm + c
                                             : static_cast<size_t>(c) * ldm + r;
    ptr[i] = static_cast<U>(f.x[e]);
  }
}

template <typename Use, int M, int N, int K, typename T, typename Layout, typename V>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, const V& value) {
  for (int e = 0; e < fragment<Use, M, N, K, T, Layout>::num_elements; ++e)
    f.x[e] = static_cast<T>(value);
}

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB, typename TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC>& d,
                     const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b,
                     const fragment<accumulator, M, N, K, TC>& c,
                     std::source_location where = std::source_location::current()) {
  using FD = fragment<accumulator, M, N, K, TC>;
  detail::MmaLane<FD> lane{&d, &a, &b, &c};
  ::fastdl::cuda_sim::warp_collective("wmma::mma_sync", where, 0xffffffffu, &lane,
                                      &detail::complete_mma<FD, fragment<matrix_a, M, N, K, TA, LA>,
                                                            fragment<matrix_b, M, N, K, TB, LB>>,
                                      nullptr, false);
}

}  // namespace nvcuda::wmma
