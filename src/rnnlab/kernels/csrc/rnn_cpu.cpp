// rnnlab: the compiled CPU time loops of the recurrent layers (LSTM, GRU, RNN tanh/relu).
//
// Built once per machine by rnnlab/kernels/compiled.py (torch.utils.cpp_extension, into the
// rnnlab cache) and called by rnnlab/kernels/native.py, which holds the autograd Functions,
// the length sorting and the weight gradients (a few large GEMMs after the loop). This file is
// only the part that runs once per time step, where Python's per-op overhead used to be as
// large as the arithmetic:
//
//   forward, per step:  the input projection x_t W_ih^T (computed a chunk of steps ahead, see
//                       Projection), one GEMM  a_t += h_{t-1} W_hh^T  (GRU: gh_t = h_{t-1}
//                       W_hh^T), one fused, vectorised pass over the gate block of every
//                       running row (bias, activations, cell update, output), writing what
//                       backward needs;
//   backward, per step: one fused pass computing the gate gradients dA_t from dh_t (and dc_t)
//                       and adding them into the bias gradient, one GEMM
//                       dh_{t-1} = dA_t W_hh  (GRU: + dh_t z_t).
//
// GEMMs: see gemm() (oneDNN BRGEMM for float, BLAS for double). Large per-call buffers that
// stay inside rnnlab come from BufferPool (fresh pages cost a fault each on first touch).
//
// Shapes: L steps, N batch rows, H hidden, H_in input, G gates (LSTM 4: i, f, g, o; GRU 3:
// r, z, n; RNN 1), all tensors contiguous, torch's gate order throughout.
//
// Threads. The rows of a batch never interact inside the recurrence, so the rows are split
// into P contiguous spans ("partitions", about equal work: the steps each row runs) and each
// thread runs the whole time loop of its span: one fork/join per call, none per step. Inside a
// partition the step GEMMs run on one BLAS thread. P = min(torch threads, max_parts (cores of
// this process), N / MIN_ROWS). With P = 1 the loop runs on the calling thread, and the step
// GEMM may use BLAS threads only when it is larger than single_thread_max_macs.
//
// lengths: the caller sorts the batch by decreasing length, so the rows running at step t are
// the prefix [0, bs[t]) (batch_sizes, as in a PackedSequence; empty = all N at every step).
// A partition computes its running rows only; finished rows keep their state (so the state
// buffers end as h_n and c_n in both directions), padded outputs and gate gradients are zero.
//
// Cell options (issue 13: layer norm, recurrent dropout, zoneout, peepholes, other
// activations; weight drop is only a different w_hh): the *_opt ops run the same time loops
// (for_partitions + the per-step code of each *_forward_impl / *_backward_impl) with an active
// CellOptions. Around the step GEMM: a masked copy of h before it (recurrent dropout), the
// per-block layer norm of its result after it (and in backward, the layer norm's backward
// before the dh GEMM); per row the *_row_opt kernels (a few vectorised passes: activations
// chosen per call, peepholes, the cell's layer norm, zoneout); with layer norm, the input
// product of the step is normalised in place too (and its backward formed beside dA). The plain ops pass an inactive CellOptions and run the plain *_row kernels, so
// the plain layers compute exactly what they did before the options existed.

#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

// BLAS as linked into libtorch_cpu (MKL on x86-64 wheels). Weak: where torch exports no such
// symbol the pointers are null and the step GEMMs go through at::addmm_out instead.
#if defined(__GNUC__) && !defined(_WIN32)
#define RNNLAB_WEAK __attribute__((weak))
#else
#define RNNLAB_WEAK
#define RNNLAB_NO_BLAS_SYMBOLS
#endif

#ifndef RNNLAB_NO_BLAS_SYMBOLS
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) RNNLAB_WEAK;
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) RNNLAB_WEAK;
int MKL_Set_Num_Threads_Local(int nthreads) RNNLAB_WEAK;
}
#endif

namespace rnnlab {
namespace {

using at::Tensor;

//: Rows per partition below which a batch is not split across threads.
constexpr int64_t MIN_ROWS = 8;
//: Rows per partition above which a partition is split anyway (one thread then runs several,
//: one after the other): a smaller working set (gate rows, states) stays in the L2 cache next
//: to the weights.
constexpr int64_t MAX_ROWS = 64;

// ------------------------------------------------------------------------------------------
// Elementwise math: exp, sigmoid, tanh written so that the compiler vectorises the row loops
// (no libm calls). exp: Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, a polynomial
// for e^r, and 2^n built in the exponent bits. float: Cephes' expf polynomial (about 1 ulp);
// double: Taylor to r^13 (truncation below 1e-17). tanh(x) = 2 sigmoid(2x) - 1 (absolute
// error a few ulp of 1, as in the Python fast path).
// ------------------------------------------------------------------------------------------

template <typename T>
struct FloatBits;
template <>
struct FloatBits<float> {
  using U = uint32_t;
  static constexpr int mantissa = 23;
  static constexpr U bias = 127;
};
template <>
struct FloatBits<double> {
  using U = uint64_t;
  static constexpr int mantissa = 52;
  static constexpr U bias = 1023;
};

template <typename T>
inline typename FloatBits<T>::U to_bits(T x) {
  typename FloatBits<T>::U u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

template <typename T>
inline T from_bits(typename FloatBits<T>::U u) {
  T x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

inline float poly_exp(float r) {  // e^r for |r| <= ln2/2 (Cephes expf)
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r + 1.0f;
}

inline double poly_exp(double r) {  // e^r for |r| <= ln2/2 (Taylor, degree 13)
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  return p * r * r + r + 1.0;
}

template <typename T>
struct ExpConst;
template <>
struct ExpConst<float> {
  static constexpr float lo = -87.0f, hi = 88.0f;  // 2^n stays a normal number
  static constexpr float shift = 12582912.0f;       // 1.5 * 2^23: x + shift rounds x to an integer
  static constexpr float log2e = 1.44269504088896341f;
  static constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
};
template <>
struct ExpConst<double> {
  static constexpr double lo = -708.0, hi = 709.0;
  static constexpr double shift = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr double log2e = 1.4426950408889634074;
  static constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
};

template <typename T>
inline T vexp(T x) {
  using C = ExpConst<T>;
  using B = FloatBits<T>;
  x = x > C::hi ? C::hi : x;  // NaN passes through both clamps and gives NaN
  x = x < C::lo ? C::lo : x;
  const T k = x * C::log2e + C::shift;  // the nearest integer n, in the low mantissa bits
  const T n = k - C::shift;
  const typename B::U ni = to_bits(k) - to_bits(C::shift);  // n (two's complement)
  T r = x - n * C::ln2_hi;
  r = r - n * C::ln2_lo;
  return poly_exp(r) * from_bits<T>((ni + B::bias) << B::mantissa);
}

template <typename T>
inline T vsigmoid(T x) {
  return T(1) / (T(1) + vexp(-x));
}

template <typename T>
inline T vtanh(T x) {
  return T(2) / (T(1) + vexp(T(-2) * x)) - T(1);
}

// ------------------------------------------------------------------------------------------
// GEMM: row-major C (m x n) = A (m x k) B (k x n) + beta C, leading dimensions in elements.
// ------------------------------------------------------------------------------------------

template <typename T>
void gemm_aten(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c,
               int64_t ldc) {
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  const Tensor ta = at::from_blob(const_cast<T*>(a), {m, k}, {lda, 1}, opts);
  const Tensor tb = at::from_blob(const_cast<T*>(b), {k, n}, {ldb, 1}, opts);
  Tensor tc = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  if (beta == T(0)) {
    at::mm_out(tc, ta, tb);
  } else {
    at::addmm_out(tc, tc, ta, tb, beta, 1);
  }
}

// float: oneDNN's BRGEMM micro-kernel as torch exposes it (JIT-generated once per shape and
// thread, then cached; it falls back to torch's BLAS gemm where oneDNN cannot run it).
// Measured on the development machine (AMD EPYC, AVX-512), one thread, the LSTM forward loop
// against MKL's sgemm: 10% faster at N = H = 64, 12% at N = H = 128, 27% at N = 1.
// double (and torch builds without it): BLAS ?gemm_, else at::addmm_out.
template <typename T>
void gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c,
          int64_t ldc) {
  if (m <= 0 || n <= 0) {
    return;
  }
#ifdef CPUBLAS_BRGEMM_F32F32F32
  if constexpr (std::is_same_v<T, float>) {
    if (beta == 0.0f || beta == 1.0f) {
      at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, beta == 1.0f, a, b, c, /*is_vnni=*/false);
      return;
    }
  }
#endif
#ifndef RNNLAB_NO_BLAS_SYMBOLS
  // Column-major BLAS sees the row-major product transposed: C^T = B^T A^T.
  const int mi = static_cast<int>(n), ni = static_cast<int>(m), ki = static_cast<int>(k);
  const int la = static_cast<int>(lda), lb = static_cast<int>(ldb), lc = static_cast<int>(ldc);
  const T one = 1;
  if constexpr (std::is_same_v<T, float>) {
    if (sgemm_ != nullptr) {
      sgemm_("N", "N", &mi, &ni, &ki, &one, b, &lb, a, &la, &beta, c, &lc);
      return;
    }
  } else {
    if (dgemm_ != nullptr) {
      dgemm_("N", "N", &mi, &ni, &ki, &one, b, &lb, a, &la, &beta, c, &lc);
      return;
    }
  }
#endif
  gemm_aten(m, n, k, a, lda, b, ldb, beta, c, ldc);
}

bool have_blas() {
#ifndef RNNLAB_NO_BLAS_SYMBOLS
  return sgemm_ != nullptr && dgemm_ != nullptr;
#else
  return false;
#endif
}

// One BLAS thread for the step GEMMs of this OS thread while alive (MKL only; other BLAS
// libraries run a GEMM called from inside an OpenMP region on its calling thread).
class BlasThreadsGuard {
 public:
  explicit BlasThreadsGuard(bool single) {
#ifndef RNNLAB_NO_BLAS_SYMBOLS
    active_ = single && MKL_Set_Num_Threads_Local != nullptr;
    if (active_) {
      previous_ = MKL_Set_Num_Threads_Local(1);
    }
#endif
  }
  ~BlasThreadsGuard() {
#ifndef RNNLAB_NO_BLAS_SYMBOLS
    if (active_) {
      MKL_Set_Num_Threads_Local(previous_);
    }
#endif
  }
  BlasThreadsGuard(const BlasThreadsGuard&) = delete;
  BlasThreadsGuard& operator=(const BlasThreadsGuard&) = delete;

 private:
  bool active_ = false;
  int previous_ = 0;
};

// ------------------------------------------------------------------------------------------
// Large per-call buffers from a small cache instead of fresh pages
// ------------------------------------------------------------------------------------------
// The allocator maps a block of several MiB anew for each call and every 4 KiB page then
// faults on first touch: on the development VM, writing 13 MiB of fresh memory took 36 ms
// against 1 ms for memory written before (52 MiB: 179 vs 23 ms). The buffers that never reach
// the user (the gates and c_t kept for backward, the gate gradients) are taken from this
// cache and go back to it when their tensor is freed. It keeps at most POOL_MAX_BYTES (what
// does not fit is freed), hands out a block only for a request of at least 2/3 of its size,
// and reports every hand-out and return to the profiler as an allocation and a free.

constexpr size_t POOL_MIN_BYTES = size_t(1) << 20;   // smaller: the allocator reuses them
constexpr size_t POOL_MAX_BYTES = size_t(512) << 20;  // kept between calls, at most

class BufferPool {
 public:
  static BufferPool& instance() {
    static BufferPool* pool = new BufferPool();  // never destroyed: deleters may run at exit
    return *pool;
  }

  // A block of at least `bytes`; its size in `size`.
  void* take(size_t bytes, size_t& size) {
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= bytes + bytes / 2) {
        size = it->first;
        p = it->second;
        held_ -= size;
        free_.erase(it);
      }
    }
    if (p == nullptr) {
      size = bytes;
      p = c10::alloc_cpu(bytes);
    }
    c10::reportMemoryUsageToProfiler(p, static_cast<int64_t>(size), 0, 0, c10::Device(c10::DeviceType::CPU));
    return p;
  }

  void give(void* p, size_t size) {
    c10::reportMemoryUsageToProfiler(p, -static_cast<int64_t>(size), 0, 0, c10::Device(c10::DeviceType::CPU));
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (held_ + size <= POOL_MAX_BYTES) {
        free_.emplace(size, p);
        held_ += size;
        return;
      }
    }
    c10::free_cpu(p);
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t held_ = 0;
};

// at::empty for buffers that stay inside rnnlab (never handed to the user).
Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (const int64_t s : sizes) {
    numel *= s;
  }
  const size_t bytes = static_cast<size_t>(numel) * options.dtype().itemsize();
  if (bytes < POOL_MIN_BYTES) {
    return at::empty(sizes, options);
  }
  size_t size = 0;
  void* p = BufferPool::instance().take(bytes, size);
  return at::from_blob(p, sizes, [size](void* q) { BufferPool::instance().give(q, size); }, options);
}

// ------------------------------------------------------------------------------------------
// The time loop: steps in order, rows split into partitions, one thread per partition.
// ------------------------------------------------------------------------------------------

struct Span {
  int64_t r0, r1;  // rows [r0, r1)
};

struct Loop {
  int64_t steps = 0, batch = 0;
  bool reverse = false;
  std::vector<int64_t> bs;  // rows running at each step (all equal to batch without lengths)
  std::vector<Span> parts;
  bool blas_single = true;  // step GEMMs on one BLAS thread

  Loop(int64_t steps_, int64_t batch_, bool reverse_, c10::IntArrayRef batch_sizes, int64_t max_parts,
       int64_t macs_per_step, int64_t single_thread_max_macs)
      : steps(steps_), batch(batch_), reverse(reverse_) {
    if (batch_sizes.empty()) {
      bs.assign(steps, batch);
    } else {
      TORCH_CHECK(static_cast<int64_t>(batch_sizes.size()) == steps, "rnnlab_cpu: batch_sizes must have ", steps,
                  " entries, got ", batch_sizes.size());
      bs.assign(batch_sizes.begin(), batch_sizes.end());
      for (int64_t t = 0; t < steps; ++t) {
        TORCH_CHECK(bs[t] >= 0 && bs[t] <= batch && (t == 0 || bs[t] <= bs[t - 1]),
                    "rnnlab_cpu: batch_sizes must be non-increasing in [0, ", batch, "]");
      }
    }
    int64_t p = std::min<int64_t>(at::get_num_threads(), std::max<int64_t>(max_parts, 1));
    p = std::max<int64_t>(1, std::min<int64_t>(p, batch / MIN_ROWS));
    p = std::max<int64_t>(p, (batch + MAX_ROWS - 1) / MAX_ROWS);  // a thread may run several spans
    split(p);
    blas_single = parts.size() > 1 || macs_per_step <= single_thread_max_macs;
  }

  // The step of position k in forward order, and in backward order.
  int64_t forward_step(int64_t k) const { return reverse ? steps - 1 - k : k; }
  int64_t backward_step(int64_t k) const { return reverse ? k : steps - 1 - k; }
  // The step before t in forward order (-1 when t is the first).
  int64_t prev_step(int64_t t) const { return reverse ? (t + 1 < steps ? t + 1 : -1) : t - 1; }
  // Whether row n ran at step t (t may be -1).
  bool ran(int64_t t, int64_t n) const { return t >= 0 && n < bs[t]; }

 private:
  // Contiguous spans of about equal work (steps run by their rows; rows sorted by length).
  void split(int64_t p) {
    std::vector<int64_t> work(batch + 1, 0);  // work[n] = steps run by rows [0, n)
    std::vector<int64_t> runs(batch + 1, 0);  // runs[k] = steps at which exactly k rows run
    for (int64_t t = 0; t < steps; ++t) {
      runs[bs[t]] += 1;
    }
    int64_t longer = 0;  // steps at which more than n rows run = steps run by row n
    for (int64_t n = batch - 1; n >= 0; --n) {
      longer += runs[n + 1];
      work[n + 1] = longer;  // temporarily: steps of row n
    }
    for (int64_t n = 0; n < batch; ++n) {
      work[n + 1] += work[n];
    }
    int64_t start = 0;
    for (int64_t i = 1; i <= p; ++i) {
      int64_t end = batch;
      if (i < p) {
        const int64_t target = work[batch] * i / p;
        end = std::lower_bound(work.begin(), work.end(), target) - work.begin();
        end = std::max(end, start + 1);
        end = std::min(end, batch - (p - i));
      }
      parts.push_back({start, end});
      start = end;
    }
  }
};

// Runs body(index, span) for every partition, one thread each (inline when there is one).
template <typename F>
void for_partitions(const Loop& loop, const F& body) {
  const int64_t n = static_cast<int64_t>(loop.parts.size());
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    BlasThreadsGuard guard(loop.blas_single);
    for (int64_t i = begin; i < end; ++i) {
      body(i, loop.parts[i]);
    }
  });
}

// Column sums of the gate gradients (the bias gradient), accumulated row by row while the rows
// are in cache: one double accumulator per partition, added up in partition order at the end.
template <typename T>
class ColumnSums {
 public:
  ColumnSums(const Loop& loop, int64_t width) : width_(width), acc_(loop.parts.size(), std::vector<double>(width)) {}

  void add(int64_t part, const T* __restrict__ row) {
    double* __restrict__ acc = acc_[part].data();
#pragma omp simd
    for (int64_t j = 0; j < width_; ++j) {
      acc[j] += static_cast<double>(row[j]);
    }
  }

  Tensor result(const at::TensorOptions& options) const {
    Tensor out = at::empty({width_}, options);
    T* o = out.data_ptr<T>();
    for (int64_t j = 0; j < width_; ++j) {
      double sum = 0;
      for (const auto& acc : acc_) {
        sum += acc[j];
      }
      o[j] = static_cast<T>(sum);
    }
    return out;
  }

 private:
  int64_t width_;
  std::vector<std::vector<double>> acc_;
};

template <typename T>
inline void zero_rows(T* base, int64_t row_elems, int64_t r0, int64_t r1) {
  if (r1 > r0) {
    std::memset(base + r0 * row_elems, 0, sizeof(T) * (r1 - r0) * row_elems);
  }
}

//: In the loop, the input projections are computed a few steps at a time, about this many bytes
//: of gates (they are then used while still in cache), at most CHUNK_MAX_STEPS steps.
constexpr int64_t PROJECTION_CHUNK_BYTES = 256 * 1024;
constexpr int64_t PROJECTION_CHUNK_MAX_STEPS = 16;
//: W_ih larger than this (H_in * G * H elements, in bytes) does not stay in the L2 cache: it is
//: then read once for all steps (training: one GEMM before the loop) or once per
//: CHUNK_MAX_STEPS steps (no grad), instead of once per step (at H = 256 and 512 the per-step
//: form was 5-34% slower than torch.nn's forward).
constexpr int64_t PROJECTION_LARGE_WEIGHT_BYTES = 256 * 1024;

// The input projections x_t W_ih^T (without bias), computed where they are cheapest:
//  - training, large W_ih: all steps in one GEMM before the loop (BLAS threads as the caller
//    set them), into the kept (L, N, G*H) gate buffer `keep`;
//  - one partition: `chunk` steps at a time inside the loop (x[t0:t1] is one (chunk * N, H_in)
//    block, one GEMM), into `keep` or a reused buffer of one chunk;
//  - several partitions, small W_ih: the partition's rows of one step, one GEMM per step;
//  - several partitions, no grad, large W_ih: the partition's rows of `chunk` steps copied
//    into one block first (a partition's rows at several steps are not one block), one GEMM.
template <typename T>
class Projection {
 public:
  Projection(const Loop& loop, const Tensor& x, const Tensor& w_ih_t, int64_t gh, T* keep)
      : loop_(loop), n_(x.size(1)), hin_(x.size(2)), gh_(gh), keep_(keep != nullptr) {
    const int64_t L = loop.steps;
    const bool large = hin_ * gh * static_cast<int64_t>(sizeof(T)) > PROJECTION_LARGE_WEIGHT_BYTES;
    const bool single = loop.parts.size() == 1;
    x_ = x.const_data_ptr<T>();
    w_ = w_ih_t.const_data_ptr<T>();
    if (large && keep_) {
      const Tensor x2 = x.reshape({L * n_, hin_});
      Tensor out = at::from_blob(keep, {L * n_, gh}, x.options());
      at::mm_out(out, x2, w_ih_t);
      base_ = keep;
      mode_ = Mode::Done;
      return;
    }
    if (large) {
      chunk_ = std::min(PROJECTION_CHUNK_MAX_STEPS, L);
    } else if (single) {
      const int64_t step_bytes = std::max<int64_t>(1, n_ * gh * static_cast<int64_t>(sizeof(T)));
      chunk_ = std::max<int64_t>(1, std::min({PROJECTION_CHUNK_BYTES / step_bytes, PROJECTION_CHUNK_MAX_STEPS, L}));
    }
    mode_ = single ? Mode::Block : (large ? Mode::Packed : Mode::Step);
    if (keep_) {
      base_ = keep;
    } else {
      // Block: (chunk, N, G*H); Step: (N, G*H), rows per partition; Packed: per partition
      // (chunk, rows, G*H) gates and (chunk, rows, H_in) inputs, one after the other.
      const int64_t rows = mode_ == Mode::Packed ? n_ * chunk_ * (gh + hin_) : (mode_ == Mode::Block ? chunk_ : 1) * n_ * gh;
      buf_ = at::empty({rows}, x.options());
      base_ = buf_.data_ptr<T>();
    }
  }

  // The (m, G*H) block of rows [s.r0, s.r0 + m) at step t (computed on demand). t0: the first
  // step of the chunk held (per partition, starts at -1).
  T* step(int64_t t, Span s, int64_t m, int64_t& t0) const {
    switch (mode_) {
      case Mode::Done:
        return base_ + (t * n_ + s.r0) * gh_;
      case Mode::Step: {
        T* a = keep_ ? base_ + (t * n_ + s.r0) * gh_ : base_ + s.r0 * gh_;
        gemm<T>(m, gh_, hin_, x_ + (t * n_ + s.r0) * hin_, hin_, w_, gh_, T(0), a, gh_);
        return a;
      }
      case Mode::Block:
        if (refill(t, t0)) {
          const int64_t t1 = chunk_end(t);
          T* a0 = keep_ ? base_ + t0 * n_ * gh_ : base_;
          gemm<T>((t1 - t0) * n_, gh_, hin_, x_ + t0 * n_ * hin_, hin_, w_, gh_, T(0), a0, gh_);
        }
        return keep_ ? base_ + (t * n_ + s.r0) * gh_ : base_ + ((t - t0) * n_ + s.r0) * gh_;
      case Mode::Packed: {
        const int64_t rows = s.r1 - s.r0;  // the partition's rows at every step of the chunk
        T* gates = base_ + s.r0 * chunk_ * (gh_ + hin_);
        T* inputs = gates + chunk_ * rows * gh_;
        if (refill(t, t0)) {
          const int64_t t1 = chunk_end(t);
          for (int64_t u = t0; u < t1; ++u) {
            std::memcpy(inputs + (u - t0) * rows * hin_, x_ + (u * n_ + s.r0) * hin_, sizeof(T) * rows * hin_);
          }
          gemm<T>((t1 - t0) * rows, gh_, hin_, inputs, hin_, w_, gh_, T(0), gates, gh_);
        }
        return gates + (t - t0) * rows * gh_;
      }
    }
    return nullptr;
  }

 private:
  enum class Mode { Done, Step, Block, Packed };

  // Whether step t is outside the chunk held; if so, t0 becomes the first step of the new one.
  bool refill(int64_t t, int64_t& t0) const {
    if (t0 >= 0 && t >= t0 && t < t0 + chunk_) {
      return false;
    }
    t0 = loop_.reverse ? std::max<int64_t>(0, t - chunk_ + 1) : t;  // [t0, t1): t and the steps after it
    return true;
  }
  int64_t chunk_end(int64_t t) const { return loop_.reverse ? t + 1 : std::min(loop_.steps, t + chunk_); }

  const Loop& loop_;
  int64_t n_, hin_, gh_, chunk_ = 1;
  bool keep_;
  Mode mode_ = Mode::Step;
  Tensor buf_;
  T* base_ = nullptr;
  const T* x_ = nullptr;
  const T* w_ = nullptr;
};

// ------------------------------------------------------------------------------------------
// Cell options (issue 13; the equations: rnnlab/nn/options.py, what is saved and the backward
// formulas: docs/PERFORMANCE.md "Cell options"). Plain layers never read them: the *_opt ops
// fill a CellOptions, the plain ops pass an inactive one and run the plain row kernels.
// ------------------------------------------------------------------------------------------

//: The nonlinearities, as rnnlab.kernels.native numbers them (ACTIVATION_CODES).
enum Act : int64_t { kSigmoid = 0, kHardSigmoid = 1, kTanh = 2, kHardTanh = 3, kRelu = 4 };

// v = act(v) over n elements, one vectorised loop per kind.
template <typename T>
inline void activate(int64_t kind, T* __restrict__ v, int64_t n) {
  switch (kind) {
    case kSigmoid:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) v[j] = vsigmoid(v[j]);
      break;
    case kHardSigmoid:  // torch: min(max(x + 3, 0), 6) / 6
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        T u = v[j] + T(3);
        u = u < T(0) ? T(0) : u;
        u = u > T(6) ? T(6) : u;
        v[j] = u / T(6);
      }
      break;
    case kTanh:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) v[j] = vtanh(v[j]);
      break;
    case kHardTanh:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) v[j] = v[j] < T(-1) ? T(-1) : (v[j] > T(1) ? T(1) : v[j]);
      break;
    default:  // kRelu
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) v[j] = v[j] > T(0) ? v[j] : T(0);
  }
}

// d = act'(x) from the output y = act(x) over n elements (the strict inequalities of torch's
// own backward for the piecewise-linear ones).
template <typename T>
inline void derivative(int64_t kind, const T* __restrict__ y, T* __restrict__ d, int64_t n) {
  switch (kind) {
    case kSigmoid:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) d[j] = y[j] * (T(1) - y[j]);
      break;
    case kHardSigmoid: {  // torch's backward multiplies by 1/6 rounded to float, also in float64: so do we
      const T sixth = static_cast<T>(1.0f / 6.0f);
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) d[j] = (y[j] > T(0) && y[j] < T(1)) ? sixth : T(0);
      break;
    }
    case kTanh:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) d[j] = T(1) - y[j] * y[j];
      break;
    case kHardTanh:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) d[j] = (y[j] > T(-1) && y[j] < T(1)) ? T(1) : T(0);
      break;
    default:  // kRelu
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) d[j] = y[j] > T(0) ? T(1) : T(0);
  }
}

//: Epsilon of every layer normalisation (rnnlab.nn.options.LAYER_NORM_EPS).
constexpr double LAYER_NORM_EPS = 1e-5;

// Layer norm of one block of n values: xh = (v - mean) * rstd (xh may be v), returns rstd.
template <typename T>
inline T ln_block(const T* __restrict__ v, T* xh, int64_t n) {
  T mean = 0;
#pragma omp simd reduction(+ : mean)
  for (int64_t j = 0; j < n; ++j) mean += v[j];
  mean /= T(n);
  T var = 0;
#pragma omp simd reduction(+ : var)
  for (int64_t j = 0; j < n; ++j) var += (v[j] - mean) * (v[j] - mean);
  const T rstd = T(1) / std::sqrt(var / T(n) + T(LAYER_NORM_EPS));
  for (int64_t j = 0; j < n; ++j) xh[j] = (v[j] - mean) * rstd;
  return rstd;
}

// The layer norm's backward for one block of n values: dv = rstd (q - mean(q) - xh mean(q xh)),
// q = dy * gain (the gradient of the normalised values).
template <typename T>
inline void ln_block_backward(const T* __restrict__ dy, const T* __restrict__ gain, const T* __restrict__ xh, T rstd,
                              T* __restrict__ dv, int64_t n) {
  T sq = 0, sqx = 0;
#pragma omp simd reduction(+ : sq, sqx)
  for (int64_t j = 0; j < n; ++j) {
    const T q = dy[j] * gain[j];
    sq += q;
    sqx += q * xh[j];
  }
  sq /= T(n);
  sqx /= T(n);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dv[j] = rstd * (dy[j] * gain[j] - sq - xh[j] * sqx);
}

// Rows of an optional per-step tensor (L, N, W): the given one, a constant row (a probability
// in eval, or zeros when there is none), read as at(t, n).
template <typename T>
struct Rows {
  const T* base = nullptr;
  int64_t st = 0, sn = 0;
  const T* at(int64_t t, int64_t n) const { return base + t * st + n * sn; }
};

template <typename T>
struct CellOptions {
  bool active = false;
  int64_t gate_act = kSigmoid, act = kTanh;
  const T* rmask = nullptr;  // (N, H) recurrent dropout, or null
  bool zoneout = false;
  Rows<T> zh, zc;            // zoneout keep weights d (per unit; 0 = none)
  bool peephole = false;
  const T* peep = nullptr;   // (3H) w_ci, w_cf, w_co (zeros without peepholes)
  const T* ln_ih = nullptr;  // (G*H) gains of the input product (layer norm: both or neither)
  const T* ln_hh = nullptr;  // (G*H) gains of the recurrent product, or null (no layer norm)
  const T* ln_c = nullptr;   // (H) LSTM cell-state gain (with layer norm)
  const T* ln_cb = nullptr;  // (H) its bias (zeros when the layer has none)
  std::vector<Tensor> owned;  // the constant rows above

  // rmask, zh, zc, peep, ln_ih, ln_hh, ln_c, ln_cb as the *_opt ops receive them; zoneout: an
  // (L, N, H) keep-mask or a one-element tensor holding p (eval), or none.
  CellOptions(int64_t gate_act_, int64_t act_, const std::optional<Tensor>& rmask_, const std::optional<Tensor>& zh_,
              const std::optional<Tensor>& zc_, const std::optional<Tensor>& peep_, const std::optional<Tensor>& ln_ih_,
              const std::optional<Tensor>& ln_hh_,
              const std::optional<Tensor>& ln_c_, const std::optional<Tensor>& ln_cb_, int64_t L, int64_t N,
              int64_t H, int64_t G, const Tensor& like)
      : active(true), gate_act(gate_act_), act(act_) {
    TORCH_CHECK(gate_act >= kSigmoid && gate_act <= kRelu && act >= kSigmoid && act <= kRelu,
                "rnnlab_cpu: activation codes must lie in [0, 4], got ", gate_act, " and ", act);
    owned.reserve(8);
    const T* zeros = keep(at::zeros({std::max<int64_t>(3 * H, 1)}, like.options())).template const_data_ptr<T>();
    rmask = tensor(rmask_, {N, H}, "recurrent_mask", like);
    zoneout = given(zh_) || given(zc_);
    zh = rows(zh_, L, N, H, zeros, "zoneout_h", like);
    zc = rows(zc_, L, N, H, zeros, "zoneout_c", like);
    peephole = given(peep_);
    peep = peephole ? tensor(peep_, {3 * H}, "weight_peephole", like) : zeros;
    ln_ih = tensor(ln_ih_, {G * H}, "ln_weight_ih", like);
    ln_hh = tensor(ln_hh_, {G * H}, "ln_weight_hh", like);
    TORCH_CHECK((ln_ih == nullptr) == (ln_hh == nullptr), "rnnlab_cpu: ln_ih and ln_hh come together");
    ln_c = tensor(ln_c_, {H}, "ln_weight_c", like);
    ln_cb = given(ln_cb_) ? tensor(ln_cb_, {H}, "ln_bias_c", like) : zeros;
  }
  CellOptions() = default;

 private:
  static bool given(const std::optional<Tensor>& t) { return t.has_value() && t->defined(); }
  const Tensor& keep(Tensor t) {
    owned.push_back(std::move(t));
    return owned.back();
  }
  const T* tensor(const std::optional<Tensor>& t, std::vector<int64_t> shape, const char* name, const Tensor& like) {
    if (!given(t)) {
      return nullptr;
    }
    TORCH_CHECK(t->sizes() == at::IntArrayRef(shape) && t->scalar_type() == like.scalar_type(), "rnnlab_cpu: ", name,
                " must be ", at::IntArrayRef(shape), " of dtype ", like.scalar_type(), ", got ", t->sizes(), " ",
                t->scalar_type());
    return keep(t->contiguous()).template const_data_ptr<T>();
  }
  Rows<T> rows(const std::optional<Tensor>& t, int64_t L, int64_t N, int64_t H, const T* zeros, const char* name,
               const Tensor& like) {
    if (!given(t)) {
      return {zeros, 0, 0};
    }
    if (t->numel() == 1) {
      return {keep(at::empty({H}, like.options()).fill_(t->item())).template const_data_ptr<T>(), 0, 0};
    }
    return {tensor(t, {L, N, H}, name, like), N * H, H};
  }
};

// ------------------------------------------------------------------------------------------
// Row kernels: one batch row of one step, j over the hidden units (vectorised).
// ------------------------------------------------------------------------------------------

// LSTM forward. a: the gate pre-activations (4H: i, f, g, o) without the bias b, overwritten
// with the activations; c, h: the state rows, updated; y: the output row; cs: where c_t is saved.
template <typename T>
inline void lstm_forward_row(int64_t H, T* __restrict__ a, const T* __restrict__ b, T* __restrict__ c,
                             T* __restrict__ h, T* __restrict__ y, T* __restrict__ cs, const CellOptions<T>&) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T i = vsigmoid(a[j] + b[j]);
    const T f = vsigmoid(a[H + j] + b[H + j]);
    const T g = vtanh(a[2 * H + j] + b[2 * H + j]);
    const T o = vsigmoid(a[3 * H + j] + b[3 * H + j]);
    const T cn = f * c[j] + i * g;
    const T hn = o * vtanh(cn);
    a[j] = i;
    a[H + j] = f;
    a[2 * H + j] = g;
    a[3 * H + j] = o;
    c[j] = cn;
    cs[j] = cn;
    h[j] = hn;
    y[j] = hn;
  }
}

// LSTM backward. g4: activations (i, f, g, o); c, cp: c_t and c_{t-1}; go: dLoss/dy_t;
// dh: in dLoss/dh_t from step t+1 (consumed); dc: in dLoss/dc_t from t+1, out dLoss/dc_{t-1};
// d: the gate gradients (4H).
template <typename T>
inline void lstm_backward_row(int64_t H, const T* __restrict__ g4, const T* __restrict__ c,
                              const T* __restrict__ cp, const T* __restrict__ go, const T* __restrict__ dh,
                              T* __restrict__ dc, T* __restrict__ d, const CellOptions<T>&) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T i = g4[j], f = g4[H + j], g = g4[2 * H + j], o = g4[3 * H + j];
    const T tc = vtanh(c[j]);
    const T dhj = go[j] + dh[j];
    const T dcj = dc[j] + dhj * o * (T(1) - tc * tc);
    d[j] = dcj * g * i * (T(1) - i);
    d[H + j] = dcj * cp[j] * f * (T(1) - f);
    d[2 * H + j] = dcj * i * (T(1) - g * g);
    d[3 * H + j] = dhj * tc * o * (T(1) - o);
    dc[j] = dcj * f;
  }
}

// GRU forward. ax: x W_ih^T (3H: r, z, n) without bx, overwritten with r, z, n; gh: h W_hh^T
// (3H) without bh; h: state row, updated; y: output row; hn: where W_hn h + b_hn is saved.
template <typename T>
inline void gru_forward_row(int64_t H, T* __restrict__ ax, const T* __restrict__ bx, const T* __restrict__ gh,
                            const T* __restrict__ bh, T* __restrict__ h, T* __restrict__ y, T* __restrict__ hn,
                            const CellOptions<T>&) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T r = vsigmoid(ax[j] + bx[j] + gh[j] + bh[j]);
    const T z = vsigmoid(ax[H + j] + bx[H + j] + gh[H + j] + bh[H + j]);
    const T hnj = gh[2 * H + j] + bh[2 * H + j];
    const T n = vtanh(ax[2 * H + j] + bx[2 * H + j] + r * hnj);
    const T hj = n + z * (h[j] - n);
    ax[j] = r;
    ax[H + j] = z;
    ax[2 * H + j] = n;
    hn[j] = hnj;
    h[j] = hj;
    y[j] = hj;
  }
}

// GRU backward. g3: r, z, n; hn: W_hn h_{t-1} + b_hn; hp: h_{t-1}; go: dLoss/dy_t;
// dh: in dLoss/dh_t from t+1, out dh_t z (the GEMM then adds [dz, dr, dhn] W_hh[z, r, n]);
// d: (4H) [dn, dz, dr, dhn] (pre-activation gradients; dhn = dLoss/d(W_hn h + b_hn)).
template <typename T>
inline void gru_backward_row(int64_t H, const T* __restrict__ g3, const T* __restrict__ hn,
                             const T* __restrict__ hp, const T* __restrict__ go, T* __restrict__ dh,
                             T* __restrict__ d, const CellOptions<T>&) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T r = g3[j], z = g3[H + j], n = g3[2 * H + j];
    const T dhj = go[j] + dh[j];
    const T dn = dhj * (T(1) - z) * (T(1) - n * n);
    d[j] = dn;
    d[H + j] = dhj * (hp[j] - n) * z * (T(1) - z);
    d[2 * H + j] = dn * hn[j] * r * (T(1) - r);
    d[3 * H + j] = dn * r;
    dh[j] = dhj * z;
  }
}

// RNN forward, in place: a = act(a + b) is the output row; h: the state row.
template <typename T, bool Relu>
inline void rnn_forward_row(int64_t H, T* __restrict__ a, const T* __restrict__ b, T* __restrict__ h,
                            const CellOptions<T>&) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T v = a[j] + b[j];
    const T y = Relu ? (v > T(0) ? v : T(0)) : vtanh(v);
    a[j] = y;
    h[j] = y;
  }
}

// RNN backward: d = (go + dh) act'(y), with act' from the output y.
template <typename T, bool Relu>
inline void rnn_backward_row(int64_t H, const T* __restrict__ y, const T* __restrict__ go, const T* __restrict__ dh,
                             T* __restrict__ d, const CellOptions<T>&) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T slope = Relu ? (y[j] > T(0) ? T(1) : T(0)) : T(1) - y[j] * y[j];
    d[j] = (go[j] + dh[j]) * slope;
  }
}


// ------------------------------------------------------------------------------------------
// Row kernels with cell options: the same per-row work in a few vectorised passes (the
// activations are chosen per call). dk / dck: the zoneout keep weights of h / c for the row
// (zeros without zoneout: then h_t = h~_t exactly).
// ------------------------------------------------------------------------------------------

// LSTM forward with options. As lstm_forward_row, plus: cn: c~_t (H, kept with peepholes, else
// scratch); ph: phi(y_t) (H); chat, rstd_c: the normalised c~_t and its 1/std (cell layer norm).
template <typename T>
inline void lstm_forward_row_opt(int64_t H, T* __restrict__ a, const T* __restrict__ b, T* __restrict__ c,
                                 T* __restrict__ h, T* __restrict__ y, T* __restrict__ cs, const CellOptions<T>& o,
                                 const T* __restrict__ dk, const T* __restrict__ dck, T* __restrict__ cn,
                                 T* __restrict__ ph, T* __restrict__ chat, T* __restrict__ rstd_c) {
  const T *wci = o.peep, *wcf = o.peep + H, *wco = o.peep + 2 * H;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    a[j] += b[j] + wci[j] * c[j];
    a[H + j] += b[H + j] + wcf[j] * c[j];
    a[2 * H + j] += b[2 * H + j];
  }
  activate(o.gate_act, a, 2 * H);
  activate(o.act, a + 2 * H, H);
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T v = a[H + j] * c[j] + a[j] * a[2 * H + j];
    cn[j] = v;
    a[3 * H + j] += b[3 * H + j] + wco[j] * v;
  }
  activate(o.gate_act, a + 3 * H, H);
  if (o.ln_c != nullptr) {  // y = LN(c~) g_c + beta_c
    *rstd_c = ln_block(cn, chat, H);
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) ph[j] = chat[j] * o.ln_c[j] + o.ln_cb[j];
  } else {
    std::memcpy(ph, cn, sizeof(T) * H);
  }
  activate(o.act, ph, H);
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T hn = a[3 * H + j] * ph[j];
    const T hz = dk[j] * h[j] + (T(1) - dk[j]) * hn;
    const T cz = dck[j] * c[j] + (T(1) - dck[j]) * cn[j];
    h[j] = hz;
    y[j] = hz;
    c[j] = cz;
    cs[j] = cz;
  }
}

// LSTM backward with options. g4: i, f, g, o; cp: c_{t-1}; ph: phi(y_t); chat, rstd_c: the cell
// layer norm's saved values; dh: in dLoss/dh_t from t+1, out the zoneout carry dh_t d (the
// step GEMM then adds the recurrent part); dc: in dLoss/dc_t, out dLoss/dc_{t-1}; d: dA (4H);
// dln: (2H) [dy chat, dy] for the cell gain and bias (cell layer norm); s: scratch (7H).
template <typename T>
inline void lstm_backward_row_opt(int64_t H, const T* __restrict__ g4, const T* __restrict__ cp,
                                  const T* __restrict__ ph, const T* __restrict__ chat, T rstd_c,
                                  const T* __restrict__ go, T* __restrict__ dh, T* __restrict__ dc, T* __restrict__ d,
                                  const CellOptions<T>& o, const T* __restrict__ dk, const T* __restrict__ dck,
                                  T* __restrict__ dln, T* __restrict__ s) {
  T *sg = s, *sy = s + 4 * H, *dy = s + 5 * H, *dyl = s + 6 * H;  // s'(i, f), phi'(g), s'(o) | phi'(y)
  derivative(o.gate_act, g4, sg, 2 * H);
  derivative(o.act, g4 + 2 * H, sg + 2 * H, H);
  derivative(o.gate_act, g4 + 3 * H, sg + 3 * H, H);
  derivative(o.act, ph, sy, H);
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T dhj = go[j] + dh[j];
    const T dht = dhj * (T(1) - dk[j]);  // dLoss/dh~_t
    dh[j] = dhj * dk[j];
    d[3 * H + j] = dht * ph[j] * sg[3 * H + j];
    dy[j] = dht * g4[3 * H + j] * sy[j];
  }
  const T* dcl = dy;  // the gradient reaching c~_t through h~_t
  if (o.ln_c != nullptr) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      dln[j] = dy[j] * chat[j];
      dln[H + j] = dy[j];
    }
    ln_block_backward(dy, o.ln_c, chat, rstd_c, dyl, H);
    dcl = dyl;
  }
  const T *wci = o.peep, *wcf = o.peep + H, *wco = o.peep + 2 * H;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T i = g4[j], f = g4[H + j], g = g4[2 * H + j];
    const T dcn = dc[j] * (T(1) - dck[j]) + dcl[j] + d[3 * H + j] * wco[j];  // dLoss/dc~_t
    const T di = dcn * g * sg[j];
    const T df = dcn * cp[j] * sg[H + j];
    d[j] = di;
    d[H + j] = df;
    d[2 * H + j] = dcn * i * sg[2 * H + j];
    dc[j] = dcn * f + di * wci[j] + df * wcf[j] + dc[j] * dck[j];
  }
}

// GRU forward with options (as gru_forward_row; gh may hold the normalised recurrent product).
template <typename T>
inline void gru_forward_row_opt(int64_t H, T* __restrict__ ax, const T* __restrict__ bx, const T* __restrict__ gh,
                                const T* __restrict__ bh, T* __restrict__ h, T* __restrict__ y, T* __restrict__ hn,
                                const CellOptions<T>& o, const T* __restrict__ dk) {
#pragma omp simd
  for (int64_t j = 0; j < 2 * H; ++j) ax[j] += bx[j] + gh[j] + bh[j];
  activate(o.gate_act, ax, 2 * H);
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T hnj = gh[2 * H + j] + bh[2 * H + j];
    hn[j] = hnj;
    ax[2 * H + j] += bx[2 * H + j] + ax[j] * hnj;
  }
  activate(o.act, ax + 2 * H, H);
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T n = ax[2 * H + j], z = ax[H + j];
    const T ht = n + z * (h[j] - n);
    const T hz = dk[j] * h[j] + (T(1) - dk[j]) * ht;
    h[j] = hz;
    y[j] = hz;
  }
}

// GRU backward with options (as gru_backward_row; dh out: dh~ z + the zoneout carry dh d).
template <typename T>
inline void gru_backward_row_opt(int64_t H, const T* __restrict__ g3, const T* __restrict__ hn,
                                 const T* __restrict__ hp, const T* __restrict__ go, T* __restrict__ dh,
                                 T* __restrict__ d, const CellOptions<T>& o, const T* __restrict__ dk,
                                 T* __restrict__ s) {
  derivative(o.gate_act, g3, s, 2 * H);
  derivative(o.act, g3 + 2 * H, s + 2 * H, H);
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T r = g3[j], z = g3[H + j], n = g3[2 * H + j];
    const T dhj = go[j] + dh[j];
    const T dht = dhj * (T(1) - dk[j]);
    const T dn = dht * (T(1) - z) * s[2 * H + j];
    d[j] = dn;
    d[H + j] = dht * (hp[j] - n) * s[H + j];
    d[2 * H + j] = dn * hn[j] * s[j];
    d[3 * H + j] = dn * r;
    dh[j] = dht * z + dhj * dk[j];
  }
}

// RNN forward with options, in place: a (the output row) = h_t; ht: where y~_t = act(a + b) goes.
template <typename T, bool Relu>
inline void rnn_forward_row_opt(int64_t H, T* __restrict__ a, const T* __restrict__ b, T* __restrict__ h,
                                const T* __restrict__ dk, T* __restrict__ ht) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T v = a[j] + b[j];
    const T yt = Relu ? (v > T(0) ? v : T(0)) : vtanh(v);
    const T hz = dk[j] * h[j] + (T(1) - dk[j]) * yt;
    ht[j] = yt;
    a[j] = hz;
    h[j] = hz;
  }
}

// RNN backward with options: yt: y~_t; dh in dLoss/dh_t from t+1, out the zoneout carry.
template <typename T, bool Relu>
inline void rnn_backward_row_opt(int64_t H, const T* __restrict__ yt, const T* __restrict__ go, T* __restrict__ dh,
                                 T* __restrict__ d, const T* __restrict__ dk) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T slope = Relu ? (yt[j] > T(0) ? T(1) : T(0)) : T(1) - yt[j] * yt[j];
    const T dhj = go[j] + dh[j];
    d[j] = dhj * (T(1) - dk[j]) * slope;
    dh[j] = dhj * dk[j];
  }
}

// ------------------------------------------------------------------------------------------
// Step pieces shared by the cells with options
// ------------------------------------------------------------------------------------------

// The state rows entering the step GEMM: h itself, or h * m into `buf` (recurrent dropout).
template <typename T>
inline const T* recurrent_input(const CellOptions<T>& o, const T* hp, T* buf, int64_t H, int64_t r0, int64_t r1) {
  if (o.rmask == nullptr) {
    return hp + r0 * H;
  }
  for (int64_t n = r0; n < r1; ++n) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) buf[n * H + j] = hp[n * H + j] * o.rmask[n * H + j];
  }
  return buf + r0 * H;
}

// Layer norm of m rows of G blocks of H, per block: src (leading dimension lds) the product,
// xh (m rows of G*H) gets the normalised blocks (xh may be src), rs (m rows of G) 1/std; then
// dst (leading dimension ldd) += gain * xh, or (add = false) dst = gain * xh.
template <typename T>
inline void layer_norm_rows(const T* gain, int64_t m, int64_t G, int64_t H, const T* src, int64_t lds, T* xh, T* rs,
                            T* dst, int64_t ldd, bool add) {
  const int64_t GH = G * H;
  for (int64_t i = 0; i < m; ++i) {
    T* row = xh + i * GH;
    for (int64_t k = 0; k < G; ++k) {
      rs[i * G + k] = ln_block(src + i * lds + k * H, row + k * H, H);
    }
    T* di = dst + i * ldd;
    if (add) {
#pragma omp simd
      for (int64_t j = 0; j < GH; ++j) di[j] += gain[j] * row[j];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < GH; ++j) di[j] = gain[j] * row[j];
    }
  }
}

// The layer norm's backward for one row of G blocks: block b of the output dv (H each) from
// the gradient dy + off[b] of the normalised-and-scaled block blk[b] (gain, xh, rs of that
// block, in the forward's order); dg (G*H, forward order) gets dy * xh (the gain's gradient).
template <typename T>
inline void layer_norm_row_backward(int64_t G, int64_t H, const T* dy, const int64_t* off, const int64_t* blk,
                                    const T* gain, const T* xh, const T* rs, T* dv, T* dg) {
  for (int64_t b = 0; b < G; ++b) {
    const int64_t f = blk[b];
    const T* dyb = dy + off[b];
    const T* xb = xh + f * H;
    ln_block_backward(dyb, gain + f * H, xb, rs[f], dv + b * H, H);
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) dg[f * H + j] = dyb[j] * xb[j];
  }
}

//: Block layouts for layer_norm_row_backward: the gate order (LSTM, RNN), and the GRU's dA
//: [dn, dz, dr, dhn] read as the input side's r, z, n and as the recurrent side's z, r, n.
constexpr int64_t IDENTITY_BLOCKS[4] = {0, 1, 2, 3};
constexpr int64_t GRU_BLOCKS_ZRN[3] = {1, 0, 2};

// dh_{t-1} += (src W) * m (recurrent dropout) or src W: the recurrent part of the state gradient
// of rows [r0, r1); src (ld lds) the gradients of the recurrent product, W (K, H).
template <typename T>
inline void recurrent_backward(const CellOptions<T>& o, int64_t r0, int64_t r1, int64_t H, int64_t K, const T* src,
                               int64_t lds, const T* w, T* dhp, T* buf) {
  if (r1 <= r0) {
    return;
  }
  if (o.rmask == nullptr) {
    gemm<T>(r1 - r0, H, K, src, lds, w, H, T(1), dhp + r0 * H, H);
    return;
  }
  gemm<T>(r1 - r0, H, K, src, lds, w, H, T(0), buf + r0 * H, H);
  for (int64_t n = r0; n < r1; ++n) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) dhp[n * H + j] += buf[n * H + j] * o.rmask[n * H + j];
  }
}


// ------------------------------------------------------------------------------------------
// Helpers for the ops
// ------------------------------------------------------------------------------------------

void check_inputs(const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh, int64_t gates) {
  TORCH_CHECK(x.device().is_cpu(), "rnnlab_cpu: CPU tensors expected, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "rnnlab_cpu: float32 or float64 expected, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 3 && h0.dim() == 2, "rnnlab_cpu: x (L, N, H_in) and h0 (N, H) expected");
  const int64_t H = h0.size(1);
  TORCH_CHECK(h0.size(0) == x.size(1), "rnnlab_cpu: h0 has ", h0.size(0), " rows, x has batch ", x.size(1));
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == gates * H && w_ih.size(1) == x.size(2),
              "rnnlab_cpu: w_ih must be (", gates * H, ", ", x.size(2), "), got ", w_ih.sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == gates * H && w_hh.size(1) == H, "rnnlab_cpu: w_hh must be (",
              gates * H, ", ", H, "), got ", w_hh.sizes());
  for (const Tensor* t : {&x, &h0, &w_ih, &w_hh}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), "rnnlab_cpu: all tensors must have dtype ", x.scalar_type());
  }
}

// The bias to add inside the row pass: the given one (contiguous), or zeros.
Tensor bias_or_zeros(const std::optional<Tensor>& bias, int64_t size, const Tensor& like) {
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == size && bias->scalar_type() == like.scalar_type(), "rnnlab_cpu: bias must have ",
                size, " elements of dtype ", like.scalar_type());
    return bias->contiguous();
  }
  return at::zeros({size}, like.options());
}

Tensor empty_like_none(const Tensor& like) { return at::empty({0}, like.options()); }

// ------------------------------------------------------------------------------------------
// LSTM
// ------------------------------------------------------------------------------------------

// Returns (out, h_n, c_n, gates, c_all, extras); gates: the activations i, f, g, o of every step
// (L, N, 4H) and c_all: c_t (L, N, H) when `save`, else empty. With options and `save`,
// extras = [phi(y_t) (L, N, H), c~_t (L, N, H) with peepholes, the normalised c~_t (L, N, H)
// and its 1/std (L, N) with cell layer norm, the normalised recurrent products (L, N, 4H) and
// their 1/std (L, N, 4), the normalised input products and their 1/std, with layer norm]
// (empty tensors for what is not on). Padded rows of what the caller reads after
// the loop (c_all, c~, the normalised products) are zero.
template <typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>> lstm_forward_impl(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& bias, c10::IntArrayRef batch_sizes,
    bool reverse, bool save, int64_t max_parts, int64_t single_max_macs, const CellOptions<T>& o) {
  const int64_t L = x.size(0), N = x.size(1), H = h0.size(1), G4 = 4 * H;
  const Loop loop(L, N, reverse, batch_sizes, max_parts, N * G4 * H, single_max_macs);
  const bool opt = o.active, ln = o.ln_hh != nullptr, lnc = o.ln_c != nullptr;
  Tensor h = h0.clone(at::MemoryFormat::Contiguous);  // state rows; end as h_n
  Tensor c = c0.clone(at::MemoryFormat::Contiguous);  // end as c_n
  Tensor out = at::empty({L, N, H}, x.options());
  const Tensor w_hh_t = w_hh.t().contiguous();  // (H, 4H)
  const Tensor w_ih_t = w_ih.t().contiguous();  // (H_in, 4H)
  const Tensor b = bias_or_zeros(bias, G4, x);
  // Training keeps the gates (pre-activations, then activations) and c_t of every step.
  Tensor gates = save ? pooled_empty({L, N, G4}, x.options()) : empty_like_none(x);
  const int64_t LS = save ? L : 1;                                   // steps kept (1: a scratch step)
  Tensor c_all = pooled_empty({LS, N, H}, x.options());              // no grad: c_t lands here, not kept
  Tensor ph_all = opt ? pooled_empty({LS, N, H}, x.options()) : empty_like_none(x);
  Tensor cn_all = opt ? pooled_empty({o.peephole ? LS : 1, N, H}, x.options()) : empty_like_none(x);
  Tensor chat_all = lnc ? pooled_empty({LS, N, H}, x.options()) : empty_like_none(x);
  Tensor rstdc_all = lnc ? at::empty({LS, N}, x.options()) : empty_like_none(x);
  Tensor xh_all = ln ? pooled_empty({LS, N, G4}, x.options()) : empty_like_none(x);
  Tensor rstdh_all = ln ? at::empty({LS, N, 4}, x.options()) : empty_like_none(x);
  Tensor xhx_all = ln ? pooled_empty({LS, N, G4}, x.options()) : empty_like_none(x);
  Tensor rstdx_all = ln ? at::empty({LS, N, 4}, x.options()) : empty_like_none(x);
  Tensor hm = o.rmask != nullptr ? at::empty({N, H}, x.options()) : empty_like_none(x);
  const Projection<T> proj(loop, x, w_ih_t, G4, save ? gates.data_ptr<T>() : nullptr);
  const T *wh = w_hh_t.const_data_ptr<T>(), *bp = b.const_data_ptr<T>();
  T *hp = h.data_ptr<T>(), *cp = c.data_ptr<T>(), *yp = out.data_ptr<T>(), *csp = c_all.data_ptr<T>();
  T *php = ph_all.data_ptr<T>(), *cnp = cn_all.data_ptr<T>(), *chp = chat_all.data_ptr<T>();
  T *rcp = rstdc_all.data_ptr<T>(), *xhp = xh_all.data_ptr<T>(), *rhp = rstdh_all.data_ptr<T>();
  T *hmp = hm.data_ptr<T>(), *xxp = xhx_all.data_ptr<T>(), *rxp = rstdx_all.data_ptr<T>();
  for_partitions(loop, [&](int64_t, Span s) {
    int64_t t0 = -1;
    for (int64_t k = 0; k < L; ++k) {
      const int64_t t = loop.forward_step(k);
      const int64_t re = std::min(s.r1, loop.bs[t]);
      const int64_t m = re - s.r0;
      const int64_t ts = save ? t * N : 0;  // row offset of step t in the kept buffers
      T* y = yp + t * N * H;
      if (m > 0) {
        T* a = proj.step(t, s, m, t0);  // (m, 4H): x_t W_ih^T
        T* cs = csp + (ts + s.r0) * H;
        const T* hin = opt ? recurrent_input(o, hp, hmp, H, s.r0, re) : hp + s.r0 * H;
        if (ln) {  // a = LN(x_t W_ih^T) g_ih + LN(h^ W_hh^T) g_hh, per gate block
          const int64_t r = ts + s.r0;
          layer_norm_rows(o.ln_ih, m, 4, H, a, G4, xxp + r * G4, rxp + r * 4, a, G4, false);
          T* xh = xhp + r * G4;
          gemm<T>(m, G4, H, hin, H, wh, G4, T(0), xh, G4);
          layer_norm_rows(o.ln_hh, m, 4, H, xh, G4, xh, rhp + r * 4, a, G4, true);
        } else {
          gemm<T>(m, G4, H, hin, H, wh, G4, T(1), a, G4);  // += h_{t-1} W_hh^T
        }
        for (int64_t i = 0; i < m; ++i) {
          const int64_t n = s.r0 + i;
          if (opt) {
            const int64_t slot = ts + n;
            lstm_forward_row_opt<T>(H, a + i * G4, bp, cp + n * H, hp + n * H, y + n * H, cs + i * H, o,
                                    o.zh.at(t, n), o.zc.at(t, n), cnp + (o.peephole ? slot : n) * H, php + slot * H,
                                    lnc ? chp + slot * H : nullptr, lnc ? rcp + slot : nullptr);
          } else {
            lstm_forward_row<T>(H, a + i * G4, bp, cp + n * H, hp + n * H, y + n * H, cs + i * H, o);
          }
        }
      }
      zero_rows(y, H, std::max(s.r0, re), s.r1);
      if (opt && save) {
        zero_rows(csp + ts * H, H, std::max(s.r0, re), s.r1);
        if (o.peephole) {
          zero_rows(cnp + ts * H, H, std::max(s.r0, re), s.r1);
        }
        if (ln) {
          zero_rows(xhp + ts * G4, G4, std::max(s.r0, re), s.r1);
          zero_rows(xxp + ts * G4, G4, std::max(s.r0, re), s.r1);
        }
      }
    }
  });
  std::vector<Tensor> extras;
  if (opt && save) {
    extras = {ph_all, o.peephole ? cn_all : empty_like_none(x), chat_all, rstdc_all, xh_all, rstdh_all, xhx_all,
              rstdx_all};
  }
  if (!save) {
    c_all = empty_like_none(x);
    gates = empty_like_none(x);
  }
  return {out, h, c, gates, c_all, extras};
}

// Returns (dA, dh0, dc0, db, extras): dA the gate gradients (L, N, 4H, zero at padded steps),
// db = the column sums of dA (the bias gradient). saved: the forward's extras (options only).
// With options, extras = [the gradients of the recurrent products before layer norm (L, N, 4H),
// the column sums (2H) of [dy chat, dy] (cell gain and bias; cell layer norm), the gradients of
// the input products before layer norm (L, N, 4H), the gains' gradients ln_ih, ln_hh (4H each)]
// (empty tensors for what is not on).
template <typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>> lstm_backward_impl(
    const Tensor& grad_out, const Tensor& grad_hn, const Tensor& grad_cn, const Tensor& c0, const Tensor& w_hh,
    const Tensor& gates, const Tensor& c_all, at::TensorList saved, c10::IntArrayRef batch_sizes, bool reverse,
    int64_t max_parts, int64_t single_max_macs, const CellOptions<T>& o) {
  const int64_t L = gates.size(0), N = gates.size(1), H = c0.size(1), G4 = 4 * H;
  const Loop loop(L, N, reverse, batch_sizes, max_parts, N * G4 * H, single_max_macs);
  const bool opt = o.active, ln = o.ln_hh != nullptr, lnc = o.ln_c != nullptr;
  TORCH_CHECK(!opt || saved.size() == 8, "rnnlab_cpu: lstm_backward with options needs the 8 saved tensors");
  Tensor dA = pooled_empty({L, N, G4}, gates.options());
  Tensor dh = grad_hn.clone(at::MemoryFormat::Contiguous);  // running dLoss/dh; ends as dLoss/dh0
  Tensor dc = grad_cn.clone(at::MemoryFormat::Contiguous);  // running dLoss/dc; ends as dLoss/dc0
  Tensor dP = ln ? pooled_empty({L, N, G4}, gates.options()) : empty_like_none(gates);
  Tensor dPx = ln ? pooled_empty({L, N, G4}, gates.options()) : empty_like_none(gates);
  Tensor tmp = o.rmask != nullptr ? at::empty({N, H}, gates.options()) : empty_like_none(gates);
  const Tensor go_c = grad_out.contiguous();
  const Tensor w = w_hh.contiguous();
  const T *go = go_c.const_data_ptr<T>(), *g = gates.const_data_ptr<T>(), *cs = c_all.const_data_ptr<T>();
  const T *c0p = c0.const_data_ptr<T>(), *wp = w.const_data_ptr<T>();
  const T *php = nullptr, *chp = nullptr, *rcp = nullptr, *xhp = nullptr, *rhp = nullptr, *xxp = nullptr,
          *rxp = nullptr;
  if (opt) {
    php = saved[0].const_data_ptr<T>();
    chp = lnc ? saved[2].const_data_ptr<T>() : nullptr;
    rcp = lnc ? saved[3].const_data_ptr<T>() : nullptr;
    xhp = ln ? saved[4].const_data_ptr<T>() : nullptr;
    rhp = ln ? saved[5].const_data_ptr<T>() : nullptr;
    xxp = ln ? saved[6].const_data_ptr<T>() : nullptr;
    rxp = ln ? saved[7].const_data_ptr<T>() : nullptr;
  }
  T *dap = dA.data_ptr<T>(), *dhp = dh.data_ptr<T>(), *dcp = dc.data_ptr<T>(), *dpp = dP.data_ptr<T>();
  T *tmpp = tmp.data_ptr<T>(), *dpxp = dPx.data_ptr<T>();
  ColumnSums<T> sums(loop, G4);
  ColumnSums<T> cell_sums(loop, lnc ? 2 * H : 0);
  ColumnSums<T> gain_ih_sums(loop, ln ? G4 : 0), gain_hh_sums(loop, ln ? G4 : 0);
  for_partitions(loop, [&](int64_t part, Span s) {
    std::vector<T> scratch(opt ? 13 * H : 0);  // 7H for the row kernel, 2H for dln, 4H for a gain row
    const int64_t off[4] = {0, H, 2 * H, 3 * H};
    for (int64_t k = 0; k < L; ++k) {
      const int64_t t = loop.backward_step(k);
      const int64_t tp = loop.prev_step(t);
      const int64_t re = std::min(s.r1, loop.bs[t]);
      T* d = dap + t * N * G4;
      for (int64_t n = s.r0; n < re; ++n) {
        const T* c_prev = loop.ran(tp, n) ? cs + (tp * N + n) * H : c0p + n * H;
        const int64_t row = t * N + n;
        if (opt) {
          T* dln = scratch.data() + 7 * H;
          lstm_backward_row_opt<T>(H, g + row * G4, c_prev, php + row * H, lnc ? chp + row * H : nullptr,
                                   lnc ? rcp[row] : T(0), go + row * H, dhp + n * H, dcp + n * H, d + n * G4, o,
                                   o.zh.at(t, n), o.zc.at(t, n), dln, scratch.data());
          if (lnc) {
            cell_sums.add(part, dln);
          }
        } else {
          lstm_backward_row<T>(H, g + row * G4, cs + row * H, c_prev, go + row * H, dhp + n * H, dcp + n * H,
                               d + n * G4, o);
        }
        sums.add(part, d + n * G4);
      }
      if (!opt) {
        if (re > s.r0) {
          gemm<T>(re - s.r0, H, G4, d + s.r0 * G4, G4, wp, H, T(0), dhp + s.r0 * H, H);  // dh_{t-1} = dA_t W_hh
        }
      } else {
        const T* src = d + s.r0 * G4;
        if (ln) {  // through both layer norms: dP_t (the GEMM's input and dW_hh's) and dPx_t (dW_ih's, dX's)
          T *dp = dpp + t * N * G4, *dpx = dpxp + t * N * G4, *dg = scratch.data() + 9 * H;
          for (int64_t n = s.r0; n < re; ++n) {
            const int64_t row = t * N + n;
            layer_norm_row_backward<T>(4, H, d + n * G4, off, IDENTITY_BLOCKS, o.ln_ih, xxp + row * G4,
                                       rxp + row * 4, dpx + n * G4, dg);
            gain_ih_sums.add(part, dg);
            layer_norm_row_backward<T>(4, H, d + n * G4, off, IDENTITY_BLOCKS, o.ln_hh, xhp + row * G4,
                                       rhp + row * 4, dp + n * G4, dg);
            gain_hh_sums.add(part, dg);
          }
          zero_rows(dp, G4, std::max(s.r0, re), s.r1);
          zero_rows(dpx, G4, std::max(s.r0, re), s.r1);
          src = dp + s.r0 * G4;
        }
        recurrent_backward(o, s.r0, re, H, G4, src, G4, wp, dhp, tmpp);  // dh_{t-1} += (dP_t W_hh) m
      }
      zero_rows(d, G4, std::max(s.r0, re), s.r1);
    }
  });
  std::vector<Tensor> extras;
  if (opt) {
    const Tensor none = empty_like_none(gates);
    extras = {dP, lnc ? cell_sums.result(gates.options()) : none, dPx,
              ln ? gain_ih_sums.result(gates.options()) : none, ln ? gain_hh_sums.result(gates.options()) : none};
  }
  return {dA, dh, dc, sums.result(gates.options()), extras};
}

// ------------------------------------------------------------------------------------------
// GRU
// ------------------------------------------------------------------------------------------

// Returns (out, h_n, gates, hn_all, extras); gates: r, z, n of every step (L, N, 3H) and hn_all:
// W_hn h_{t-1} + b_hn (L, N, H) when `save`, else empty. With options and `save`, extras =
// [the normalised recurrent products (L, N, 3H, zero at padded rows) and their 1/std (L, N, 3),
// the same of the input products] with layer norm, else none.
template <typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>> gru_forward_impl(
    const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& b_ih,
    const std::optional<Tensor>& b_hh, c10::IntArrayRef batch_sizes,
    bool reverse, bool save, int64_t max_parts, int64_t single_max_macs, const CellOptions<T>& o) {
  const int64_t L = x.size(0), N = x.size(1), H = h0.size(1), G3 = 3 * H;
  const Loop loop(L, N, reverse, batch_sizes, max_parts, N * G3 * H, single_max_macs);
  const bool opt = o.active, ln = o.ln_hh != nullptr;
  Tensor h = h0.clone(at::MemoryFormat::Contiguous);
  Tensor out = at::empty({L, N, H}, x.options());
  const Tensor w_hh_t = w_hh.t().contiguous();  // (H, 3H)
  const Tensor w_ih_t = w_ih.t().contiguous();  // (H_in, 3H)
  Tensor gh = at::empty({N, G3}, x.options());  // h W_hh^T of the current step
  const Tensor bx = bias_or_zeros(b_ih, G3, x), bh = bias_or_zeros(b_hh, G3, x);
  Tensor gates = save ? pooled_empty({L, N, G3}, x.options()) : empty_like_none(x);
  const int64_t LS = save ? L : 1;
  Tensor hn_all = pooled_empty({LS, N, H}, x.options());
  Tensor xh_all = ln ? pooled_empty({LS, N, G3}, x.options()) : empty_like_none(x);
  Tensor rstdh_all = ln ? at::empty({LS, N, 3}, x.options()) : empty_like_none(x);
  Tensor xhx_all = ln ? pooled_empty({LS, N, G3}, x.options()) : empty_like_none(x);
  Tensor rstdx_all = ln ? at::empty({LS, N, 3}, x.options()) : empty_like_none(x);
  Tensor hm = o.rmask != nullptr ? at::empty({N, H}, x.options()) : empty_like_none(x);
  const Projection<T> proj(loop, x, w_ih_t, G3, save ? gates.data_ptr<T>() : nullptr);
  const T *wh = w_hh_t.const_data_ptr<T>(), *bxp = bx.const_data_ptr<T>(), *bhp = bh.const_data_ptr<T>();
  T *hp = h.data_ptr<T>(), *yp = out.data_ptr<T>(), *ghp = gh.data_ptr<T>(), *hnp = hn_all.data_ptr<T>();
  T *xhp = xh_all.data_ptr<T>(), *rhp = rstdh_all.data_ptr<T>(), *hmp = hm.data_ptr<T>();
  T *xxp = xhx_all.data_ptr<T>(), *rxp = rstdx_all.data_ptr<T>();
  for_partitions(loop, [&](int64_t, Span s) {
    int64_t t0 = -1;
    for (int64_t k = 0; k < L; ++k) {
      const int64_t t = loop.forward_step(k);
      const int64_t re = std::min(s.r1, loop.bs[t]);
      const int64_t m = re - s.r0;
      const int64_t ts = save ? t * N : 0;
      T* y = yp + t * N * H;
      if (m > 0) {
        T* a = proj.step(t, s, m, t0);  // (m, 3H): x_t W_ih^T
        T* hn = hnp + (ts + s.r0) * H;
        T* g = ghp + s.r0 * G3;
        const T* hin = opt ? recurrent_input(o, hp, hmp, H, s.r0, re) : hp + s.r0 * H;
        if (ln) {  // a = LN(x_t W_ih^T) g_ih, g = LN(h^ W_hh^T) g_hh, per gate block
          const int64_t r = ts + s.r0;
          layer_norm_rows(o.ln_ih, m, 3, H, a, G3, xxp + r * G3, rxp + r * 3, a, G3, false);
          T* xh = xhp + r * G3;
          gemm<T>(m, G3, H, hin, H, wh, G3, T(0), xh, G3);
          layer_norm_rows(o.ln_hh, m, 3, H, xh, G3, xh, rhp + r * 3, g, G3, false);
        } else {
          gemm<T>(m, G3, H, hin, H, wh, G3, T(0), g, G3);  // h_{t-1} W_hh^T
        }
        for (int64_t i = 0; i < m; ++i) {
          const int64_t n = s.r0 + i;
          if (opt) {
            gru_forward_row_opt<T>(H, a + i * G3, bxp, g + i * G3, bhp, hp + n * H, y + n * H, hn + i * H, o,
                                   o.zh.at(t, n));
          } else {
            gru_forward_row<T>(H, a + i * G3, bxp, g + i * G3, bhp, hp + n * H, y + n * H, hn + i * H, o);
          }
        }
      }
      zero_rows(y, H, std::max(s.r0, re), s.r1);
      if (ln && save) {
        zero_rows(xhp + ts * G3, G3, std::max(s.r0, re), s.r1);
        zero_rows(xxp + ts * G3, G3, std::max(s.r0, re), s.r1);
      }
    }
  });
  std::vector<Tensor> extras;
  if (opt && save) {
    extras = {xh_all, rstdh_all, xhx_all, rstdx_all};
  }
  if (!save) {
    hn_all = empty_like_none(x);
    gates = empty_like_none(x);
  }
  return {out, h, gates, hn_all, extras};
}

// Returns (dA, dh0, col_sums, extras): dA (L, N, 4H) = [dn, dz, dr, dhn] (zero at padded steps)
// and its column sums (4H). With layer norm, extras = [the gradients of the recurrent products
// before layer norm (L, N, 3H), blocks in the order z, r, n (that of w_zrn); the gradients of the
// input products before layer norm (L, N, 3H, order r, z, n); the gains' gradients ln_ih, ln_hh].
template <typename T>
std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> gru_backward_impl(
    const Tensor& grad_out, const Tensor& grad_hn, const Tensor& h0, const Tensor& w_zrn, const Tensor& out,
    const Tensor& gates, const Tensor& hn_all, at::TensorList saved, c10::IntArrayRef batch_sizes, bool reverse,
    int64_t max_parts, int64_t single_max_macs, const CellOptions<T>& o) {
  const int64_t L = gates.size(0), N = gates.size(1), H = h0.size(1), G3 = 3 * H, G4 = 4 * H;
  const Loop loop(L, N, reverse, batch_sizes, max_parts, N * G3 * H, single_max_macs);
  const bool opt = o.active, ln = o.ln_hh != nullptr;
  TORCH_CHECK(!ln || saved.size() == 4, "rnnlab_cpu: gru_backward with layer norm needs the 4 saved tensors");
  Tensor dA = pooled_empty({L, N, G4}, gates.options());
  Tensor dh = grad_hn.clone(at::MemoryFormat::Contiguous);
  Tensor dP = ln ? pooled_empty({L, N, G3}, gates.options()) : empty_like_none(gates);
  Tensor dPx = ln ? pooled_empty({L, N, G3}, gates.options()) : empty_like_none(gates);
  Tensor tmp = o.rmask != nullptr ? at::empty({N, H}, gates.options()) : empty_like_none(gates);
  const Tensor go_c = grad_out.contiguous();
  const Tensor w = w_zrn.contiguous();  // (3H, H) rows z, r, n
  const T *go = go_c.const_data_ptr<T>(), *g = gates.const_data_ptr<T>(), *hn = hn_all.const_data_ptr<T>();
  const T *yp = out.const_data_ptr<T>(), *h0p = h0.const_data_ptr<T>(), *wp = w.const_data_ptr<T>();
  const T* xhp = ln ? saved[0].const_data_ptr<T>() : nullptr;
  const T* rhp = ln ? saved[1].const_data_ptr<T>() : nullptr;
  const T* xxp = ln ? saved[2].const_data_ptr<T>() : nullptr;
  const T* rxp = ln ? saved[3].const_data_ptr<T>() : nullptr;
  T* dpxp = dPx.data_ptr<T>();
  T *dap = dA.data_ptr<T>(), *dhp = dh.data_ptr<T>(), *dpp = dP.data_ptr<T>(), *tmpp = tmp.data_ptr<T>();
  ColumnSums<T> sums(loop, G4);
  ColumnSums<T> gain_ih_sums(loop, ln ? G3 : 0), gain_hh_sums(loop, ln ? G3 : 0);
  for_partitions(loop, [&](int64_t part, Span s) {
    std::vector<T> scratch(opt ? 6 * H : 0);  // 3H for the row kernel, 3H for a gain row
    const int64_t off_x[3] = {2 * H, H, 0};      // dA [dn, dz, dr, dhn] as r, z, n
    const int64_t off_h[3] = {H, 2 * H, 3 * H};  // and as z, r, hn
    for (int64_t k = 0; k < L; ++k) {
      const int64_t t = loop.backward_step(k);
      const int64_t tp = loop.prev_step(t);
      const int64_t re = std::min(s.r1, loop.bs[t]);
      T* d = dap + t * N * G4;
      for (int64_t n = s.r0; n < re; ++n) {
        const T* h_prev = loop.ran(tp, n) ? yp + (tp * N + n) * H : h0p + n * H;
        const int64_t row = t * N + n;
        if (opt) {
          gru_backward_row_opt<T>(H, g + row * G3, hn + row * H, h_prev, go + row * H, dhp + n * H, d + n * G4, o,
                                  o.zh.at(t, n), scratch.data());
        } else {
          gru_backward_row<T>(H, g + row * G3, hn + row * H, h_prev, go + row * H, dhp + n * H, d + n * G4, o);
        }
        sums.add(part, d + n * G4);
      }
      const T* src = d + s.r0 * G4 + H;  // [dz, dr, dhn]
      int64_t lds = G4;
      if (ln) {
        T *dp = dpp + t * N * G3, *dpx = dpxp + t * N * G3, *dg = scratch.data() + 3 * H;
        for (int64_t n = s.r0; n < re; ++n) {
          const int64_t row = t * N + n;
          layer_norm_row_backward<T>(3, H, d + n * G4, off_x, IDENTITY_BLOCKS, o.ln_ih, xxp + row * G3,
                                     rxp + row * 3, dpx + n * G3, dg);
          gain_ih_sums.add(part, dg);
          layer_norm_row_backward<T>(3, H, d + n * G4, off_h, GRU_BLOCKS_ZRN, o.ln_hh, xhp + row * G3,
                                     rhp + row * 3, dp + n * G3, dg);
          gain_hh_sums.add(part, dg);
        }
        zero_rows(dp, G3, std::max(s.r0, re), s.r1);
        zero_rows(dpx, G3, std::max(s.r0, re), s.r1);
        src = dp + s.r0 * G3;
        lds = G3;
      }
      if (opt) {  // dh_{t-1} = dh~_t z + carry + ([dz, dr, dhn] W_hh[z, r, n]) m
        recurrent_backward(o, s.r0, re, H, G3, src, lds, wp, dhp, tmpp);
      } else if (re > s.r0) {  // dh_{t-1} = dh_t z + [dz, dr, dhn] W_hh[z, r, n]
        gemm<T>(re - s.r0, H, G3, src, lds, wp, H, T(1), dhp + s.r0 * H, H);
      }
      zero_rows(d, G4, std::max(s.r0, re), s.r1);
    }
  });
  std::vector<Tensor> extras;
  if (ln) {
    extras = {dP, dPx, gain_ih_sums.result(gates.options()), gain_hh_sums.result(gates.options())};
  }
  return {dA, dh, sums.result(gates.options()), extras};
}

// ------------------------------------------------------------------------------------------
// RNN (tanh, relu)
// ------------------------------------------------------------------------------------------

// Returns (out, h_n, extras). The input projections are computed into `out` and activated in
// place. With options and `save`, extras = [y~_t = act(A_t) (L, N, H) with a constant zoneout
// (eval; else out is y~ wherever the backward reads it), the normalised recurrent products (L, N, H, zero at padded rows) and their 1/std
// (L, N, 1), the same of the input products, with layer norm].
template <typename T, bool Relu>
std::tuple<Tensor, Tensor, std::vector<Tensor>> rnn_forward_impl(
    const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& bias,
    c10::IntArrayRef batch_sizes, bool reverse, bool save, int64_t max_parts,
    int64_t single_max_macs, const CellOptions<T>& o) {
  const int64_t L = x.size(0), N = x.size(1), H = h0.size(1);
  const Loop loop(L, N, reverse, batch_sizes, max_parts, N * H * H, single_max_macs);
  const bool opt = o.active, ln = o.ln_hh != nullptr;
  Tensor h = h0.clone(at::MemoryFormat::Contiguous);
  Tensor out = at::empty({L, N, H}, x.options());
  const Tensor w_hh_t = w_hh.t().contiguous();
  const Tensor w_ih_t = w_ih.t().contiguous();
  const Tensor b = bias_or_zeros(bias, H, x);
  const int64_t LS = save ? L : 1;
  // y~_t differs from the output h_t only where a unit keeps its value: with 0/1 keep-masks
  // (training) the backward never reads it there, so only a constant zoneout (eval) keeps it.
  const bool keep_ht = o.zoneout && o.zh.st == 0;
  Tensor ht_all = opt ? pooled_empty({keep_ht ? LS : 1, N, H}, x.options()) : empty_like_none(x);
  Tensor xh_all = ln ? pooled_empty({LS, N, H}, x.options()) : empty_like_none(x);
  Tensor rstdh_all = ln ? at::empty({LS, N, 1}, x.options()) : empty_like_none(x);
  Tensor xhx_all = ln ? pooled_empty({LS, N, H}, x.options()) : empty_like_none(x);
  Tensor rstdx_all = ln ? at::empty({LS, N, 1}, x.options()) : empty_like_none(x);
  Tensor hm = o.rmask != nullptr ? at::empty({N, H}, x.options()) : empty_like_none(x);
  const Projection<T> proj(loop, x, w_ih_t, H, out.data_ptr<T>());
  const T *wh = w_hh_t.const_data_ptr<T>(), *bp = b.const_data_ptr<T>();
  T *hp = h.data_ptr<T>(), *yp = out.data_ptr<T>(), *htp = ht_all.data_ptr<T>(), *xhp = xh_all.data_ptr<T>();
  T *rhp = rstdh_all.data_ptr<T>(), *hmp = hm.data_ptr<T>(), *xxp = xhx_all.data_ptr<T>();
  T* rxp = rstdx_all.data_ptr<T>();
  for_partitions(loop, [&](int64_t, Span s) {
    int64_t t0 = -1;
    for (int64_t k = 0; k < L; ++k) {
      const int64_t t = loop.forward_step(k);
      const int64_t re = std::min(s.r1, loop.bs[t]);
      const int64_t m = re - s.r0;
      const int64_t ts = save ? t * N : 0;
      T* y = yp + t * N * H;
      if (m > 0) {
        T* a = proj.step(t, s, m, t0);  // rows of out[t]: x_t W_ih^T
        const T* hin = opt ? recurrent_input(o, hp, hmp, H, s.r0, re) : hp + s.r0 * H;
        if (ln) {  // a = LN(x_t W_ih^T) g_ih + LN(h^ W_hh^T) g_hh
          const int64_t r = ts + s.r0;
          layer_norm_rows(o.ln_ih, m, 1, H, a, H, xxp + r * H, rxp + r, a, H, false);
          T* xh = xhp + r * H;
          gemm<T>(m, H, H, hin, H, wh, H, T(0), xh, H);
          layer_norm_rows(o.ln_hh, m, 1, H, xh, H, xh, rhp + r, a, H, true);
        } else {
          gemm<T>(m, H, H, hin, H, wh, H, T(1), a, H);
        }
        for (int64_t n = s.r0; n < re; ++n) {
          if (opt) {
            T* ht = htp + ((keep_ht ? ts : 0) + n) * H;
            rnn_forward_row_opt<T, Relu>(H, y + n * H, bp, hp + n * H, o.zh.at(t, n), ht);
          } else {
            rnn_forward_row<T, Relu>(H, y + n * H, bp, hp + n * H, o);
          }
        }
      }
      zero_rows(y, H, std::max(s.r0, re), s.r1);
      if (ln && save) {
        zero_rows(xhp + ts * H, H, std::max(s.r0, re), s.r1);
        zero_rows(xxp + ts * H, H, std::max(s.r0, re), s.r1);
      }
    }
  });
  std::vector<Tensor> extras;
  if (opt && save) {
    extras = {keep_ht ? ht_all : empty_like_none(x), xh_all, rstdh_all, xhx_all, rstdx_all};
  }
  return {out, h, extras};
}

// Returns (dA, dh0, db, extras): dA (L, N, H) zero at padded steps, db its column sums; with
// layer norm extras = [the gradients of the recurrent and of the input products before layer
// norm (L, N, H each), the gains' gradients ln_ih, ln_hh (H each)].
template <typename T, bool Relu>
std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> rnn_backward_impl(
    const Tensor& grad_out, const Tensor& grad_hn, const Tensor& w_hh, const Tensor& out, at::TensorList saved,
    c10::IntArrayRef batch_sizes, bool reverse, int64_t max_parts, int64_t single_max_macs, const CellOptions<T>& o) {
  const int64_t L = out.size(0), N = out.size(1), H = out.size(2);
  const Loop loop(L, N, reverse, batch_sizes, max_parts, N * H * H, single_max_macs);
  const bool opt = o.active, ln = o.ln_hh != nullptr;
  TORCH_CHECK(!opt || saved.size() == 5, "rnnlab_cpu: rnn_backward with options needs the 5 saved tensors");
  Tensor dA = pooled_empty({L, N, H}, out.options());
  Tensor dh = grad_hn.clone(at::MemoryFormat::Contiguous);
  Tensor dP = ln ? pooled_empty({L, N, H}, out.options()) : empty_like_none(out);
  Tensor dPx = ln ? pooled_empty({L, N, H}, out.options()) : empty_like_none(out);
  Tensor tmp = o.rmask != nullptr ? at::empty({N, H}, out.options()) : empty_like_none(out);
  const Tensor go_c = grad_out.contiguous();
  const Tensor w = w_hh.contiguous();
  const T *go = go_c.const_data_ptr<T>(), *yp = out.const_data_ptr<T>(), *wp = w.const_data_ptr<T>();
  const T* ytp = (opt && saved[0].numel() > 0) ? saved[0].const_data_ptr<T>() : yp;  // y~_t
  const T* xhp = ln ? saved[1].const_data_ptr<T>() : nullptr;
  const T* rhp = ln ? saved[2].const_data_ptr<T>() : nullptr;
  const T* xxp = ln ? saved[3].const_data_ptr<T>() : nullptr;
  const T* rxp = ln ? saved[4].const_data_ptr<T>() : nullptr;
  T* dpxp = dPx.data_ptr<T>();
  T *dap = dA.data_ptr<T>(), *dhp = dh.data_ptr<T>(), *dpp = dP.data_ptr<T>(), *tmpp = tmp.data_ptr<T>();
  ColumnSums<T> sums(loop, H);
  ColumnSums<T> gain_ih_sums(loop, ln ? H : 0), gain_hh_sums(loop, ln ? H : 0);
  for_partitions(loop, [&](int64_t part, Span s) {
    std::vector<T> dg(ln ? H : 0);
    const int64_t off[1] = {0};
    for (int64_t k = 0; k < L; ++k) {
      const int64_t t = loop.backward_step(k);
      const int64_t re = std::min(s.r1, loop.bs[t]);
      T* d = dap + t * N * H;
      for (int64_t n = s.r0; n < re; ++n) {
        const int64_t row = t * N + n;
        if (opt) {
          rnn_backward_row_opt<T, Relu>(H, ytp + row * H, go + row * H, dhp + n * H, d + n * H, o.zh.at(t, n));
        } else {
          rnn_backward_row<T, Relu>(H, yp + row * H, go + row * H, dhp + n * H, d + n * H, o);
        }
        sums.add(part, d + n * H);
      }
      if (!opt) {
        if (re > s.r0) {
          gemm<T>(re - s.r0, H, H, d + s.r0 * H, H, wp, H, T(0), dhp + s.r0 * H, H);
        }
      } else {
        const T* src = d + s.r0 * H;
        if (ln) {
          T *dp = dpp + t * N * H, *dpx = dpxp + t * N * H;
          for (int64_t n = s.r0; n < re; ++n) {
            const int64_t row = t * N + n;
            layer_norm_row_backward<T>(1, H, d + n * H, off, IDENTITY_BLOCKS, o.ln_ih, xxp + row * H, rxp + row,
                                       dpx + n * H, dg.data());
            gain_ih_sums.add(part, dg.data());
            layer_norm_row_backward<T>(1, H, d + n * H, off, IDENTITY_BLOCKS, o.ln_hh, xhp + row * H, rhp + row,
                                       dp + n * H, dg.data());
            gain_hh_sums.add(part, dg.data());
          }
          zero_rows(dp, H, std::max(s.r0, re), s.r1);
          zero_rows(dpx, H, std::max(s.r0, re), s.r1);
          src = dp + s.r0 * H;
        }
        recurrent_backward(o, s.r0, re, H, H, src, H, wp, dhp, tmpp);
      }
      zero_rows(d, H, std::max(s.r0, re), s.r1);
    }
  });
  std::vector<Tensor> extras;
  if (ln) {
    extras = {dP, dPx, gain_ih_sums.result(out.options()), gain_hh_sums.result(out.options())};
  }
  return {dA, dh, sums.result(out.options()), extras};
}

// ------------------------------------------------------------------------------------------
// The ops (dtype dispatch and checks)
// ------------------------------------------------------------------------------------------

// The cell options of an *_opt op call, as the impls read them.
struct OptionArgs {
  int64_t gate_act, act;
  const std::optional<Tensor>&rmask, &zh, &zc, &peep, &ln_ih, &ln_hh, &ln_c, &ln_cb;

  template <typename T>
  CellOptions<T> make(int64_t L, int64_t N, int64_t H, int64_t G, const Tensor& like) const {
    return CellOptions<T>(gate_act, act, rmask, zh, zc, peep, ln_ih, ln_hh, ln_c, ln_cb, L, N, H, G, like);
  }
};

using LstmForward = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>>;

LstmForward lstm_forward_any(const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                             const Tensor& w_hh, const std::optional<Tensor>& bias,
                             c10::IntArrayRef batch_sizes, bool reverse, bool save, int64_t max_parts,
                             int64_t single_max_macs, const OptionArgs* opt) {
  check_inputs(x, h0, w_ih, w_hh, 4);
  TORCH_CHECK(c0.sizes() == h0.sizes() && c0.scalar_type() == x.scalar_type(), "rnnlab_cpu: c0 must be like h0");
  const Tensor xc = x.contiguous(), wi = w_ih.contiguous();
  const int64_t L = x.size(0), N = x.size(1), H = h0.size(1);
  if (x.scalar_type() == at::kDouble) {
    const auto o = opt ? opt->make<double>(L, N, H, 4, x) : CellOptions<double>();
    return lstm_forward_impl<double>(xc, h0, c0, wi, w_hh, bias, batch_sizes, reverse, save, max_parts,
                                     single_max_macs, o);
  }
  const auto o = opt ? opt->make<float>(L, N, H, 4, x) : CellOptions<float>();
  return lstm_forward_impl<float>(xc, h0, c0, wi, w_hh, bias, batch_sizes, reverse, save, max_parts,
                                  single_max_macs, o);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(const Tensor& x, const Tensor& h0, const Tensor& c0,
                                                                const Tensor& w_ih, const Tensor& w_hh,
                                                                const std::optional<Tensor>& bias,
                                                                c10::IntArrayRef batch_sizes, bool reverse, bool save,
                                                                int64_t max_parts, int64_t single_max_macs) {
  auto r = lstm_forward_any(x, h0, c0, w_ih, w_hh, bias, batch_sizes, reverse, save, max_parts, single_max_macs,
                            nullptr);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r), std::get<4>(r)};
}

LstmForward lstm_forward_opt(const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                             const Tensor& w_hh, const std::optional<Tensor>& bias, c10::IntArrayRef batch_sizes,
                             bool reverse, bool save, int64_t max_parts, int64_t single_max_macs, int64_t gate_act,
                             int64_t act, const std::optional<Tensor>& rmask, const std::optional<Tensor>& zh,
                             const std::optional<Tensor>& zc, const std::optional<Tensor>& peep,
                             const std::optional<Tensor>& ln_ih, const std::optional<Tensor>& ln_hh,
                             const std::optional<Tensor>& ln_c, const std::optional<Tensor>& ln_cb) {
  const OptionArgs opt{gate_act, act, rmask, zh, zc, peep, ln_ih, ln_hh, ln_c, ln_cb};
  return lstm_forward_any(x, h0, c0, w_ih, w_hh, bias, batch_sizes, reverse, save, max_parts, single_max_macs, &opt);
}

using LstmBackward = std::tuple<Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>>;

LstmBackward lstm_backward_any(const Tensor& grad_out, const Tensor& grad_hn, const Tensor& grad_cn, const Tensor& c0,
                               const Tensor& w_hh, const Tensor& gates, const Tensor& c_all, at::TensorList saved,
                               c10::IntArrayRef batch_sizes, bool reverse, int64_t max_parts, int64_t single_max_macs,
                               const OptionArgs* opt) {
  TORCH_CHECK(gates.is_contiguous() && c_all.is_contiguous(), "rnnlab_cpu: saved tensors must be contiguous");
  for (const Tensor& t : saved) {
    TORCH_CHECK(!t.defined() || t.is_contiguous(), "rnnlab_cpu: saved tensors must be contiguous");
  }
  const int64_t L = gates.size(0), N = gates.size(1), H = c0.size(1);
  if (gates.scalar_type() == at::kDouble) {
    const auto o = opt ? opt->make<double>(L, N, H, 4, gates) : CellOptions<double>();
    return lstm_backward_impl<double>(grad_out, grad_hn, grad_cn, c0.contiguous(), w_hh, gates, c_all, saved,
                                      batch_sizes, reverse, max_parts, single_max_macs, o);
  }
  const auto o = opt ? opt->make<float>(L, N, H, 4, gates) : CellOptions<float>();
  return lstm_backward_impl<float>(grad_out, grad_hn, grad_cn, c0.contiguous(), w_hh, gates, c_all, saved,
                                   batch_sizes, reverse, max_parts, single_max_macs, o);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_backward(const Tensor& grad_out, const Tensor& grad_hn,
                                                         const Tensor& grad_cn, const Tensor& c0, const Tensor& w_hh,
                                                         const Tensor& gates, const Tensor& c_all,
                                                         c10::IntArrayRef batch_sizes, bool reverse, int64_t max_parts,
                                                         int64_t single_max_macs) {
  auto r = lstm_backward_any(grad_out, grad_hn, grad_cn, c0, w_hh, gates, c_all, {}, batch_sizes, reverse, max_parts,
                             single_max_macs, nullptr);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r)};
}

LstmBackward lstm_backward_opt(const Tensor& grad_out, const Tensor& grad_hn, const Tensor& grad_cn, const Tensor& c0,
                               const Tensor& w_hh, const Tensor& gates, const Tensor& c_all, at::TensorList saved,
                               c10::IntArrayRef batch_sizes, bool reverse, int64_t max_parts, int64_t single_max_macs,
                               int64_t gate_act, int64_t act, const std::optional<Tensor>& rmask,
                               const std::optional<Tensor>& zh, const std::optional<Tensor>& zc,
                               const std::optional<Tensor>& peep, const std::optional<Tensor>& ln_ih,
                               const std::optional<Tensor>& ln_hh, const std::optional<Tensor>& ln_c,
                               const std::optional<Tensor>& ln_cb) {
  const OptionArgs opt{gate_act, act, rmask, zh, zc, peep, ln_ih, ln_hh, ln_c, ln_cb};
  return lstm_backward_any(grad_out, grad_hn, grad_cn, c0, w_hh, gates, c_all, saved, batch_sizes, reverse, max_parts,
                           single_max_macs, &opt);
}

using GruForward = std::tuple<Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>>;

GruForward gru_forward_any(const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                           const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
                           c10::IntArrayRef batch_sizes, bool reverse, bool save, int64_t max_parts,
                           int64_t single_max_macs, const OptionArgs* opt) {
  check_inputs(x, h0, w_ih, w_hh, 3);
  const Tensor xc = x.contiguous(), wi = w_ih.contiguous();
  const int64_t L = x.size(0), N = x.size(1), H = h0.size(1);
  if (x.scalar_type() == at::kDouble) {
    const auto o = opt ? opt->make<double>(L, N, H, 3, x) : CellOptions<double>();
    return gru_forward_impl<double>(xc, h0, wi, w_hh, b_ih, b_hh, batch_sizes, reverse, save, max_parts,
                                    single_max_macs, o);
  }
  const auto o = opt ? opt->make<float>(L, N, H, 3, x) : CellOptions<float>();
  return gru_forward_impl<float>(xc, h0, wi, w_hh, b_ih, b_hh, batch_sizes, reverse, save, max_parts,
                                 single_max_macs, o);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                                                       const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                                       const std::optional<Tensor>& b_hh,
                                                       c10::IntArrayRef batch_sizes, bool reverse, bool save,
                                                       int64_t max_parts, int64_t single_max_macs) {
  auto r = gru_forward_any(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, save, max_parts, single_max_macs,
                           nullptr);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r)};
}

GruForward gru_forward_opt(const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                           const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
                           c10::IntArrayRef batch_sizes, bool reverse, bool save, int64_t max_parts,
                           int64_t single_max_macs, int64_t gate_act, int64_t act, const std::optional<Tensor>& rmask,
                           const std::optional<Tensor>& zh, const std::optional<Tensor>& ln_ih,
                           const std::optional<Tensor>& ln_hh) {
  const std::optional<Tensor> none;
  const OptionArgs opt{gate_act, act, rmask, zh, none, none, ln_ih, ln_hh, none, none};
  return gru_forward_any(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, save, max_parts, single_max_macs, &opt);
}

using GruBackward = std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>>;

GruBackward gru_backward_any(const Tensor& grad_out, const Tensor& grad_hn, const Tensor& h0, const Tensor& w_zrn,
                             const Tensor& out, const Tensor& gates, const Tensor& hn_all, at::TensorList saved,
                             c10::IntArrayRef batch_sizes, bool reverse, int64_t max_parts, int64_t single_max_macs,
                             const OptionArgs* opt) {
  TORCH_CHECK(gates.is_contiguous() && hn_all.is_contiguous() && out.is_contiguous(),
              "rnnlab_cpu: saved tensors must be contiguous");
  for (const Tensor& t : saved) {
    TORCH_CHECK(!t.defined() || t.is_contiguous(), "rnnlab_cpu: saved tensors must be contiguous");
  }
  const int64_t L = gates.size(0), N = gates.size(1), H = h0.size(1);
  if (gates.scalar_type() == at::kDouble) {
    const auto o = opt ? opt->make<double>(L, N, H, 3, gates) : CellOptions<double>();
    return gru_backward_impl<double>(grad_out, grad_hn, h0.contiguous(), w_zrn, out, gates, hn_all, saved,
                                     batch_sizes, reverse, max_parts, single_max_macs, o);
  }
  const auto o = opt ? opt->make<float>(L, N, H, 3, gates) : CellOptions<float>();
  return gru_backward_impl<float>(grad_out, grad_hn, h0.contiguous(), w_zrn, out, gates, hn_all, saved, batch_sizes,
                                  reverse, max_parts, single_max_macs, o);
}

std::tuple<Tensor, Tensor, Tensor> gru_backward(const Tensor& grad_out, const Tensor& grad_hn, const Tensor& h0,
                                                const Tensor& w_zrn, const Tensor& out, const Tensor& gates,
                                                const Tensor& hn_all, c10::IntArrayRef batch_sizes, bool reverse,
                                                int64_t max_parts, int64_t single_max_macs) {
  auto r = gru_backward_any(grad_out, grad_hn, h0, w_zrn, out, gates, hn_all, {}, batch_sizes, reverse, max_parts,
                            single_max_macs, nullptr);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

GruBackward gru_backward_opt(const Tensor& grad_out, const Tensor& grad_hn, const Tensor& h0, const Tensor& w_zrn,
                             const Tensor& out, const Tensor& gates, const Tensor& hn_all, at::TensorList saved,
                             c10::IntArrayRef batch_sizes, bool reverse, int64_t max_parts, int64_t single_max_macs,
                             int64_t gate_act, int64_t act, const std::optional<Tensor>& rmask,
                             const std::optional<Tensor>& zh, const std::optional<Tensor>& ln_ih,
                             const std::optional<Tensor>& ln_hh) {
  const std::optional<Tensor> none;
  const OptionArgs opt{gate_act, act, rmask, zh, none, none, ln_ih, ln_hh, none, none};
  return gru_backward_any(grad_out, grad_hn, h0, w_zrn, out, gates, hn_all, saved, batch_sizes, reverse, max_parts,
                          single_max_macs, &opt);
}

using RnnForward = std::tuple<Tensor, Tensor, std::vector<Tensor>>;

template <typename T>
RnnForward rnn_forward_t(bool relu, const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                         const std::optional<Tensor>& bias, c10::IntArrayRef batch_sizes, bool reverse, bool save,
                         int64_t max_parts, int64_t single_max_macs, const OptionArgs* opt) {
  const auto o = opt ? opt->make<T>(x.size(0), x.size(1), h0.size(1), 1, x) : CellOptions<T>();
  return relu ? rnn_forward_impl<T, true>(x, h0, w_ih, w_hh, bias, batch_sizes, reverse, save, max_parts,
                                          single_max_macs, o)
              : rnn_forward_impl<T, false>(x, h0, w_ih, w_hh, bias, batch_sizes, reverse, save, max_parts,
                                           single_max_macs, o);
}

RnnForward rnn_forward_any(const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                           const std::optional<Tensor>& bias, bool relu, c10::IntArrayRef batch_sizes, bool reverse,
                           bool save, int64_t max_parts, int64_t single_max_macs, const OptionArgs* opt) {
  check_inputs(x, h0, w_ih, w_hh, 1);
  const Tensor xc = x.contiguous(), wi = w_ih.contiguous();
  if (x.scalar_type() == at::kDouble) {
    return rnn_forward_t<double>(relu, xc, h0, wi, w_hh, bias, batch_sizes, reverse, save, max_parts,
                                 single_max_macs, opt);
  }
  return rnn_forward_t<float>(relu, xc, h0, wi, w_hh, bias, batch_sizes, reverse, save, max_parts, single_max_macs,
                              opt);
}

std::tuple<Tensor, Tensor> rnn_forward(const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                                       const std::optional<Tensor>& bias, bool relu, c10::IntArrayRef batch_sizes,
                                       bool reverse, int64_t max_parts, int64_t single_max_macs) {
  auto r = rnn_forward_any(x, h0, w_ih, w_hh, bias, relu, batch_sizes, reverse, true, max_parts, single_max_macs,
                           nullptr);
  return {std::get<0>(r), std::get<1>(r)};
}

RnnForward rnn_forward_opt(const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                           const std::optional<Tensor>& bias, bool relu, c10::IntArrayRef batch_sizes, bool reverse,
                           bool save, int64_t max_parts, int64_t single_max_macs, const std::optional<Tensor>& rmask,
                           const std::optional<Tensor>& zh, const std::optional<Tensor>& ln_ih,
                           const std::optional<Tensor>& ln_hh) {
  const std::optional<Tensor> none;
  const OptionArgs opt{kSigmoid, kTanh, rmask, zh, none, none, ln_ih, ln_hh, none, none};
  return rnn_forward_any(x, h0, w_ih, w_hh, bias, relu, batch_sizes, reverse, save, max_parts, single_max_macs, &opt);
}

using RnnBackward = std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>>;

template <typename T>
RnnBackward rnn_backward_t(bool relu, const Tensor& grad_out, const Tensor& grad_hn, const Tensor& w_hh,
                           const Tensor& out, at::TensorList saved, c10::IntArrayRef batch_sizes, bool reverse,
                           int64_t max_parts, int64_t single_max_macs, const OptionArgs* opt) {
  const auto o = opt ? opt->make<T>(out.size(0), out.size(1), out.size(2), 1, out) : CellOptions<T>();
  return relu ? rnn_backward_impl<T, true>(grad_out, grad_hn, w_hh, out, saved, batch_sizes, reverse, max_parts,
                                           single_max_macs, o)
              : rnn_backward_impl<T, false>(grad_out, grad_hn, w_hh, out, saved, batch_sizes, reverse, max_parts,
                                            single_max_macs, o);
}

RnnBackward rnn_backward_any(const Tensor& grad_out, const Tensor& grad_hn, const Tensor& w_hh, const Tensor& out,
                             at::TensorList saved, bool relu, c10::IntArrayRef batch_sizes, bool reverse,
                             int64_t max_parts, int64_t single_max_macs, const OptionArgs* opt) {
  TORCH_CHECK(out.is_contiguous(), "rnnlab_cpu: saved tensors must be contiguous");
  for (const Tensor& t : saved) {
    TORCH_CHECK(!t.defined() || t.is_contiguous(), "rnnlab_cpu: saved tensors must be contiguous");
  }
  if (out.scalar_type() == at::kDouble) {
    return rnn_backward_t<double>(relu, grad_out, grad_hn, w_hh, out, saved, batch_sizes, reverse, max_parts,
                                  single_max_macs, opt);
  }
  return rnn_backward_t<float>(relu, grad_out, grad_hn, w_hh, out, saved, batch_sizes, reverse, max_parts,
                               single_max_macs, opt);
}

std::tuple<Tensor, Tensor, Tensor> rnn_backward(const Tensor& grad_out, const Tensor& grad_hn, const Tensor& w_hh,
                                                const Tensor& out, bool relu, c10::IntArrayRef batch_sizes,
                                                bool reverse, int64_t max_parts, int64_t single_max_macs) {
  auto r = rnn_backward_any(grad_out, grad_hn, w_hh, out, {}, relu, batch_sizes, reverse, max_parts, single_max_macs,
                            nullptr);
  return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

RnnBackward rnn_backward_opt(const Tensor& grad_out, const Tensor& grad_hn, const Tensor& w_hh, const Tensor& out,
                             at::TensorList saved, bool relu, c10::IntArrayRef batch_sizes, bool reverse,
                             int64_t max_parts, int64_t single_max_macs, const std::optional<Tensor>& rmask,
                             const std::optional<Tensor>& zh, const std::optional<Tensor>& ln_ih,
                             const std::optional<Tensor>& ln_hh) {
  const std::optional<Tensor> none;
  const OptionArgs opt{kSigmoid, kTanh, rmask, zh, none, none, ln_ih, ln_hh, none, none};
  return rnn_backward_any(grad_out, grad_hn, w_hh, out, saved, relu, batch_sizes, reverse, max_parts, single_max_macs,
                          &opt);
}

// How this build runs: the GEMM routes and whether the loop can use threads.
std::string build_info() {
  std::string info;
#ifdef CPUBLAS_BRGEMM_F32F32F32
  info = "gemm=brgemm(f32)+";
#else
  info = "gemm=";
#endif
  info += have_blas() ? "blas" : "aten";
#ifdef _OPENMP
  info += " threads=openmp";
#else
  info += " threads=none";
#endif
  return info;
}

}  // namespace
}  // namespace rnnlab

TORCH_LIBRARY(rnnlab_cpu, m) {
  m.def(
      "lstm_forward(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? bias, int[] batch_sizes, "
      "bool reverse, bool save, int max_parts, int single_max_macs) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
      &rnnlab::lstm_forward);
  m.def(
      "lstm_backward(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor c0, Tensor w_hh, Tensor gates, "
      "Tensor c_all, int[] batch_sizes, bool reverse, int max_parts, int single_max_macs) -> (Tensor, Tensor, Tensor, "
      "Tensor)",
      &rnnlab::lstm_backward);
  m.def(
      "gru_forward(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, int[] batch_sizes, "
      "bool reverse, bool save, int max_parts, int single_max_macs) -> (Tensor, Tensor, Tensor, Tensor)",
      &rnnlab::gru_forward);
  m.def(
      "gru_backward(Tensor grad_out, Tensor grad_hn, Tensor h0, Tensor w_zrn, Tensor out, Tensor gates, "
      "Tensor hn_all, int[] batch_sizes, bool reverse, int max_parts, int single_max_macs) -> (Tensor, Tensor, Tensor)",
      &rnnlab::gru_backward);
  m.def(
      "rnn_forward(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? bias, bool relu, int[] batch_sizes, "
      "bool reverse, int max_parts, int single_max_macs) -> (Tensor, Tensor)",
      &rnnlab::rnn_forward);
  m.def(
      "rnn_backward(Tensor grad_out, Tensor grad_hn, Tensor w_hh, Tensor out, bool relu, int[] batch_sizes, "
      "bool reverse, int max_parts, int single_max_macs) -> (Tensor, Tensor, Tensor)",
      &rnnlab::rnn_backward);
  // With cell options (issue 13): see the *_impl functions for the extra inputs and outputs.
  m.def(
      "lstm_forward_opt(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? bias, int[] batch_sizes, "
      "bool reverse, bool save, int max_parts, int single_max_macs, int gate_act, int act, Tensor? rmask, "
      "Tensor? zh, Tensor? zc, Tensor? peep, Tensor? ln_ih, Tensor? ln_hh, Tensor? ln_c, Tensor? ln_cb) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor[])",
      &rnnlab::lstm_forward_opt);
  m.def(
      "lstm_backward_opt(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor c0, Tensor w_hh, Tensor gates, "
      "Tensor c_all, Tensor[] saved, int[] batch_sizes, bool reverse, int max_parts, int single_max_macs, "
      "int gate_act, int act, Tensor? rmask, Tensor? zh, Tensor? zc, Tensor? peep, Tensor? ln_ih, Tensor? ln_hh, "
      "Tensor? ln_c, Tensor? ln_cb) -> (Tensor, Tensor, Tensor, Tensor, Tensor[])",
      &rnnlab::lstm_backward_opt);
  m.def(
      "gru_forward_opt(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, int[] batch_sizes, "
      "bool reverse, bool save, int max_parts, int single_max_macs, int gate_act, int act, Tensor? rmask, "
      "Tensor? zh, Tensor? ln_ih, Tensor? ln_hh) -> (Tensor, Tensor, Tensor, Tensor, Tensor[])",
      &rnnlab::gru_forward_opt);
  m.def(
      "gru_backward_opt(Tensor grad_out, Tensor grad_hn, Tensor h0, Tensor w_zrn, Tensor out, Tensor gates, "
      "Tensor hn_all, Tensor[] saved, int[] batch_sizes, bool reverse, int max_parts, int single_max_macs, "
      "int gate_act, int act, Tensor? rmask, Tensor? zh, Tensor? ln_ih, Tensor? ln_hh) -> "
      "(Tensor, Tensor, Tensor, Tensor[])",
      &rnnlab::gru_backward_opt);
  m.def(
      "rnn_forward_opt(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? bias, bool relu, int[] batch_sizes, "
      "bool reverse, bool save, int max_parts, int single_max_macs, Tensor? rmask, Tensor? zh, Tensor? ln_ih, "
      "Tensor? ln_hh) -> (Tensor, Tensor, Tensor[])",
      &rnnlab::rnn_forward_opt);
  m.def(
      "rnn_backward_opt(Tensor grad_out, Tensor grad_hn, Tensor w_hh, Tensor out, Tensor[] saved, bool relu, "
      "int[] batch_sizes, bool reverse, int max_parts, int single_max_macs, Tensor? rmask, Tensor? zh, "
      "Tensor? ln_ih, Tensor? ln_hh) -> (Tensor, Tensor, Tensor, Tensor[])",
      &rnnlab::rnn_backward_opt);
  m.def("build_info() -> str", &rnnlab::build_info);
}
