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
// Where layer options plug in (issue 13: layer norm, recurrent dropout, zoneout, weight drop,
// peepholes, other activations): the time loop (for_partitions + the per-step code of each
// *_forward_impl / *_backward_impl) is shared, and the per-row work is the *_row functions.
// An option is a field of CellOptions (a flag or a pointer to an extra tensor, e.g. a (N, H)
// dropout mask or the (3, H) peephole weights), read inside the row function (per element)
// or around the step GEMM (e.g. a masked copy of h before it); add the argument to the op
// schema at the bottom and fill CellOptions in the *_impl function. Do not copy a loop.

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
// Cell options (issue 13 adds fields here; see the header comment). Today: none.
// ------------------------------------------------------------------------------------------

struct CellOptions {};

// ------------------------------------------------------------------------------------------
// Row kernels: one batch row of one step, j over the hidden units (vectorised).
// ------------------------------------------------------------------------------------------

// LSTM forward. a: the gate pre-activations (4H: i, f, g, o) without the bias b, overwritten
// with the activations; c, h: the state rows, updated; y: the output row; cs: where c_t is saved.
template <typename T>
inline void lstm_forward_row(int64_t H, T* __restrict__ a, const T* __restrict__ b, T* __restrict__ c,
                             T* __restrict__ h, T* __restrict__ y, T* __restrict__ cs, const CellOptions&) {
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
                              T* __restrict__ dc, T* __restrict__ d, const CellOptions&) {
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
                            const CellOptions&) {
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
                             T* __restrict__ d, const CellOptions&) {
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
                            const CellOptions&) {
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
                             T* __restrict__ d, const CellOptions&) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T slope = Relu ? (y[j] > T(0) ? T(1) : T(0)) : T(1) - y[j] * y[j];
    d[j] = (go[j] + dh[j]) * slope;
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

// Returns (out, h_n, c_n, gates, c_all); gates: the activations i, f, g, o of every step
// (L, N, 4H) and c_all: c_t (L, N, H) when `save`, else empty.
template <typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_impl(const Tensor& x, const Tensor& h0,
                                                                     const Tensor& c0, const Tensor& w_ih,
                                                                     const Tensor& w_hh,
                                                                     const std::optional<Tensor>& bias,
                                                                     c10::IntArrayRef batch_sizes, bool reverse,
                                                                     bool save, int64_t max_parts,
                                                                     int64_t single_max_macs) {
  const int64_t L = x.size(0), N = x.size(1), H = h0.size(1), G4 = 4 * H;
  const Loop loop(L, N, reverse, batch_sizes, max_parts, N * G4 * H, single_max_macs);
  Tensor h = h0.clone(at::MemoryFormat::Contiguous);  // state rows; end as h_n
  Tensor c = c0.clone(at::MemoryFormat::Contiguous);  // end as c_n
  Tensor out = at::empty({L, N, H}, x.options());
  const Tensor w_hh_t = w_hh.t().contiguous();  // (H, 4H)
  const Tensor w_ih_t = w_ih.t().contiguous();  // (H_in, 4H)
  const Tensor b = bias_or_zeros(bias, G4, x);
  // Training keeps the gates (pre-activations, then activations) and c_t of every step.
  Tensor gates = save ? pooled_empty({L, N, G4}, x.options()) : empty_like_none(x);
  Tensor c_all = pooled_empty({save ? L : 1, N, H}, x.options());  // no grad: c_t lands here, not kept
  const Projection<T> proj(loop, x, w_ih_t, G4, save ? gates.data_ptr<T>() : nullptr);
  const T *wh = w_hh_t.const_data_ptr<T>(), *bp = b.const_data_ptr<T>();
  T *hp = h.data_ptr<T>(), *cp = c.data_ptr<T>(), *yp = out.data_ptr<T>(), *csp = c_all.data_ptr<T>();
  const CellOptions opts;
  for_partitions(loop, [&](int64_t, Span s) {
    int64_t t0 = -1;
    for (int64_t k = 0; k < L; ++k) {
      const int64_t t = loop.forward_step(k);
      const int64_t re = std::min(s.r1, loop.bs[t]);
      const int64_t m = re - s.r0;
      T* y = yp + t * N * H;
      if (m > 0) {
        T* a = proj.step(t, s, m, t0);  // (m, 4H): x_t W_ih^T
        T* cs = csp + ((save ? t * N : 0) + s.r0) * H;
        gemm<T>(m, G4, H, hp + s.r0 * H, H, wh, G4, T(1), a, G4);  // += h_{t-1} W_hh^T
        for (int64_t i = 0; i < m; ++i) {
          const int64_t n = s.r0 + i;
          lstm_forward_row<T>(H, a + i * G4, bp, cp + n * H, hp + n * H, y + n * H, cs + i * H, opts);
        }
      }
      zero_rows(y, H, std::max(s.r0, re), s.r1);
    }
  });
  if (!save) {
    c_all = empty_like_none(x);
  }
  return {out, h, c, gates, c_all};
}

// Returns (dA, dh0, dc0, db): dA the gate gradients (L, N, 4H, zero at padded steps), db = the
// column sums of dA (the bias gradient).
template <typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_backward_impl(const Tensor& grad_out, const Tensor& grad_hn,
                                                              const Tensor& grad_cn, const Tensor& c0,
                                                              const Tensor& w_hh, const Tensor& gates,
                                                              const Tensor& c_all, c10::IntArrayRef batch_sizes,
                                                              bool reverse, int64_t max_parts,
                                                              int64_t single_max_macs) {
  const int64_t L = gates.size(0), N = gates.size(1), H = c0.size(1), G4 = 4 * H;
  const Loop loop(L, N, reverse, batch_sizes, max_parts, N * G4 * H, single_max_macs);
  Tensor dA = pooled_empty({L, N, G4}, gates.options());
  Tensor dh = grad_hn.clone(at::MemoryFormat::Contiguous);  // running dLoss/dh; ends as dLoss/dh0
  Tensor dc = grad_cn.clone(at::MemoryFormat::Contiguous);  // running dLoss/dc; ends as dLoss/dc0
  const Tensor go_c = grad_out.contiguous();
  const Tensor w = w_hh.contiguous();
  const T *go = go_c.const_data_ptr<T>(), *g = gates.const_data_ptr<T>(), *cs = c_all.const_data_ptr<T>();
  const T *c0p = c0.const_data_ptr<T>(), *wp = w.const_data_ptr<T>();
  T *dap = dA.data_ptr<T>(), *dhp = dh.data_ptr<T>(), *dcp = dc.data_ptr<T>();
  ColumnSums<T> sums(loop, G4);
  const CellOptions opts;
  for_partitions(loop, [&](int64_t part, Span s) {
    for (int64_t k = 0; k < L; ++k) {
      const int64_t t = loop.backward_step(k);
      const int64_t tp = loop.prev_step(t);
      const int64_t re = std::min(s.r1, loop.bs[t]);
      T* d = dap + t * N * G4;
      for (int64_t n = s.r0; n < re; ++n) {
        const T* c_prev = loop.ran(tp, n) ? cs + (tp * N + n) * H : c0p + n * H;
        const int64_t row = t * N + n;
        lstm_backward_row<T>(H, g + row * G4, cs + row * H, c_prev, go + row * H, dhp + n * H, dcp + n * H,
                             d + n * G4, opts);
        sums.add(part, d + n * G4);
      }
      if (re > s.r0) {
        gemm<T>(re - s.r0, H, G4, d + s.r0 * G4, G4, wp, H, T(0), dhp + s.r0 * H, H);  // dh_{t-1} = dA_t W_hh
      }
      zero_rows(d, G4, std::max(s.r0, re), s.r1);
    }
  });
  return {dA, dh, dc, sums.result(gates.options())};
}

// ------------------------------------------------------------------------------------------
// GRU
// ------------------------------------------------------------------------------------------

// Returns (out, h_n, gates, hn_all); gates: r, z, n of every step (L, N, 3H) and hn_all:
// W_hn h_{t-1} + b_hn (L, N, H) when `save`, else empty.
template <typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward_impl(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                                                            const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                                            const std::optional<Tensor>& b_hh,
                                                            c10::IntArrayRef batch_sizes, bool reverse, bool save,
                                                            int64_t max_parts, int64_t single_max_macs) {
  const int64_t L = x.size(0), N = x.size(1), H = h0.size(1), G3 = 3 * H;
  const Loop loop(L, N, reverse, batch_sizes, max_parts, N * G3 * H, single_max_macs);
  Tensor h = h0.clone(at::MemoryFormat::Contiguous);
  Tensor out = at::empty({L, N, H}, x.options());
  const Tensor w_hh_t = w_hh.t().contiguous();  // (H, 3H)
  const Tensor w_ih_t = w_ih.t().contiguous();  // (H_in, 3H)
  Tensor gh = at::empty({N, G3}, x.options());  // h W_hh^T of the current step
  const Tensor bx = bias_or_zeros(b_ih, G3, x), bh = bias_or_zeros(b_hh, G3, x);
  Tensor gates = save ? pooled_empty({L, N, G3}, x.options()) : empty_like_none(x);
  Tensor hn_all = pooled_empty({save ? L : 1, N, H}, x.options());
  const Projection<T> proj(loop, x, w_ih_t, G3, save ? gates.data_ptr<T>() : nullptr);
  const T *wh = w_hh_t.const_data_ptr<T>(), *bxp = bx.const_data_ptr<T>(), *bhp = bh.const_data_ptr<T>();
  T *hp = h.data_ptr<T>(), *yp = out.data_ptr<T>(), *ghp = gh.data_ptr<T>(), *hnp = hn_all.data_ptr<T>();
  const CellOptions opts;
  for_partitions(loop, [&](int64_t, Span s) {
    int64_t t0 = -1;
    for (int64_t k = 0; k < L; ++k) {
      const int64_t t = loop.forward_step(k);
      const int64_t re = std::min(s.r1, loop.bs[t]);
      const int64_t m = re - s.r0;
      T* y = yp + t * N * H;
      if (m > 0) {
        T* a = proj.step(t, s, m, t0);  // (m, 3H): x_t W_ih^T
        T* hn = hnp + ((save ? t * N : 0) + s.r0) * H;
        T* g = ghp + s.r0 * G3;
        gemm<T>(m, G3, H, hp + s.r0 * H, H, wh, G3, T(0), g, G3);  // h_{t-1} W_hh^T
        for (int64_t i = 0; i < m; ++i) {
          const int64_t n = s.r0 + i;
          gru_forward_row<T>(H, a + i * G3, bxp, g + i * G3, bhp, hp + n * H, y + n * H, hn + i * H, opts);
        }
      }
      zero_rows(y, H, std::max(s.r0, re), s.r1);
    }
  });
  if (!save) {
    hn_all = empty_like_none(x);
  }
  return {out, h, gates, hn_all};
}

// Returns (dA, dh0, col_sums): dA (L, N, 4H) = [dn, dz, dr, dhn] (zero at padded steps) and
// its column sums (4H).
template <typename T>
std::tuple<Tensor, Tensor, Tensor> gru_backward_impl(const Tensor& grad_out, const Tensor& grad_hn, const Tensor& h0,
                                                     const Tensor& w_zrn, const Tensor& out, const Tensor& gates,
                                                     const Tensor& hn_all, c10::IntArrayRef batch_sizes, bool reverse,
                                                     int64_t max_parts, int64_t single_max_macs) {
  const int64_t L = gates.size(0), N = gates.size(1), H = h0.size(1), G3 = 3 * H, G4 = 4 * H;
  const Loop loop(L, N, reverse, batch_sizes, max_parts, N * G3 * H, single_max_macs);
  Tensor dA = pooled_empty({L, N, G4}, gates.options());
  Tensor dh = grad_hn.clone(at::MemoryFormat::Contiguous);
  const Tensor go_c = grad_out.contiguous();
  const Tensor w = w_zrn.contiguous();  // (3H, H) rows z, r, n
  const T *go = go_c.const_data_ptr<T>(), *g = gates.const_data_ptr<T>(), *hn = hn_all.const_data_ptr<T>();
  const T *yp = out.const_data_ptr<T>(), *h0p = h0.const_data_ptr<T>(), *wp = w.const_data_ptr<T>();
  T *dap = dA.data_ptr<T>(), *dhp = dh.data_ptr<T>();
  ColumnSums<T> sums(loop, G4);
  const CellOptions opts;
  for_partitions(loop, [&](int64_t part, Span s) {
    for (int64_t k = 0; k < L; ++k) {
      const int64_t t = loop.backward_step(k);
      const int64_t tp = loop.prev_step(t);
      const int64_t re = std::min(s.r1, loop.bs[t]);
      T* d = dap + t * N * G4;
      for (int64_t n = s.r0; n < re; ++n) {
        const T* h_prev = loop.ran(tp, n) ? yp + (tp * N + n) * H : h0p + n * H;
        const int64_t row = t * N + n;
        gru_backward_row<T>(H, g + row * G3, hn + row * H, h_prev, go + row * H, dhp + n * H, d + n * G4, opts);
        sums.add(part, d + n * G4);
      }
      if (re > s.r0) {  // dh_{t-1} = dh_t z + [dz, dr, dhn] W_hh[z, r, n]
        gemm<T>(re - s.r0, H, G3, d + s.r0 * G4 + H, G4, wp, H, T(1), dhp + s.r0 * H, H);
      }
      zero_rows(d, G4, std::max(s.r0, re), s.r1);
    }
  });
  return {dA, dh, sums.result(gates.options())};
}

// ------------------------------------------------------------------------------------------
// RNN (tanh, relu)
// ------------------------------------------------------------------------------------------

// Returns (out, h_n). The input projections are computed into `out` and activated in place.
template <typename T, bool Relu>
std::tuple<Tensor, Tensor> rnn_forward_impl(const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                                            const std::optional<Tensor>& bias, c10::IntArrayRef batch_sizes,
                                            bool reverse, int64_t max_parts, int64_t single_max_macs) {
  const int64_t L = x.size(0), N = x.size(1), H = h0.size(1);
  const Loop loop(L, N, reverse, batch_sizes, max_parts, N * H * H, single_max_macs);
  Tensor h = h0.clone(at::MemoryFormat::Contiguous);
  Tensor out = at::empty({L, N, H}, x.options());
  const Tensor w_hh_t = w_hh.t().contiguous();
  const Tensor w_ih_t = w_ih.t().contiguous();
  const Tensor b = bias_or_zeros(bias, H, x);
  const Projection<T> proj(loop, x, w_ih_t, H, out.data_ptr<T>());
  const T *wh = w_hh_t.const_data_ptr<T>(), *bp = b.const_data_ptr<T>();
  T *hp = h.data_ptr<T>(), *yp = out.data_ptr<T>();
  const CellOptions opts;
  for_partitions(loop, [&](int64_t, Span s) {
    int64_t t0 = -1;
    for (int64_t k = 0; k < L; ++k) {
      const int64_t t = loop.forward_step(k);
      const int64_t re = std::min(s.r1, loop.bs[t]);
      T* y = yp + t * N * H;
      if (re > s.r0) {
        T* a = proj.step(t, s, re - s.r0, t0);  // rows of out[t]: x_t W_ih^T
        gemm<T>(re - s.r0, H, H, hp + s.r0 * H, H, wh, H, T(1), a, H);
        for (int64_t n = s.r0; n < re; ++n) {
          rnn_forward_row<T, Relu>(H, y + n * H, bp, hp + n * H, opts);
        }
      }
      zero_rows(y, H, std::max(s.r0, re), s.r1);
    }
  });
  return {out, h};
}

// Returns (dA, dh0, db): dA (L, N, H) zero at padded steps, db its column sums.
template <typename T, bool Relu>
std::tuple<Tensor, Tensor, Tensor> rnn_backward_impl(const Tensor& grad_out, const Tensor& grad_hn,
                                                     const Tensor& w_hh, const Tensor& out,
                                                     c10::IntArrayRef batch_sizes, bool reverse, int64_t max_parts,
                                                     int64_t single_max_macs) {
  const int64_t L = out.size(0), N = out.size(1), H = out.size(2);
  const Loop loop(L, N, reverse, batch_sizes, max_parts, N * H * H, single_max_macs);
  Tensor dA = pooled_empty({L, N, H}, out.options());
  Tensor dh = grad_hn.clone(at::MemoryFormat::Contiguous);
  const Tensor go_c = grad_out.contiguous();
  const Tensor w = w_hh.contiguous();
  const T *go = go_c.const_data_ptr<T>(), *yp = out.const_data_ptr<T>(), *wp = w.const_data_ptr<T>();
  T *dap = dA.data_ptr<T>(), *dhp = dh.data_ptr<T>();
  ColumnSums<T> sums(loop, H);
  const CellOptions opts;
  for_partitions(loop, [&](int64_t part, Span s) {
    for (int64_t k = 0; k < L; ++k) {
      const int64_t t = loop.backward_step(k);
      const int64_t re = std::min(s.r1, loop.bs[t]);
      T* d = dap + t * N * H;
      for (int64_t n = s.r0; n < re; ++n) {
        const int64_t row = t * N + n;
        rnn_backward_row<T, Relu>(H, yp + row * H, go + row * H, dhp + n * H, d + n * H, opts);
        sums.add(part, d + n * H);
      }
      if (re > s.r0) {
        gemm<T>(re - s.r0, H, H, d + s.r0 * H, H, wp, H, T(0), dhp + s.r0 * H, H);
      }
      zero_rows(d, H, std::max(s.r0, re), s.r1);
    }
  });
  return {dA, dh, sums.result(out.options())};
}

// ------------------------------------------------------------------------------------------
// The ops (dtype dispatch and checks)
// ------------------------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(const Tensor& x, const Tensor& h0, const Tensor& c0,
                                                                const Tensor& w_ih, const Tensor& w_hh,
                                                                const std::optional<Tensor>& bias,
                                                                c10::IntArrayRef batch_sizes, bool reverse, bool save,
                                                                int64_t max_parts, int64_t single_max_macs) {
  check_inputs(x, h0, w_ih, w_hh, 4);
  TORCH_CHECK(c0.sizes() == h0.sizes() && c0.scalar_type() == x.scalar_type(), "rnnlab_cpu: c0 must be like h0");
  const Tensor xc = x.contiguous(), wi = w_ih.contiguous();
  if (x.scalar_type() == at::kDouble) {
    return lstm_forward_impl<double>(xc, h0, c0, wi, w_hh, bias, batch_sizes, reverse, save, max_parts,
                                     single_max_macs);
  }
  return lstm_forward_impl<float>(xc, h0, c0, wi, w_hh, bias, batch_sizes, reverse, save, max_parts,
                                  single_max_macs);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_backward(const Tensor& grad_out, const Tensor& grad_hn, const Tensor& grad_cn,
                                                 const Tensor& c0, const Tensor& w_hh, const Tensor& gates,
                                                 const Tensor& c_all, c10::IntArrayRef batch_sizes, bool reverse,
                                                 int64_t max_parts, int64_t single_max_macs) {
  TORCH_CHECK(gates.is_contiguous() && c_all.is_contiguous(), "rnnlab_cpu: saved tensors must be contiguous");
  if (gates.scalar_type() == at::kDouble) {
    return lstm_backward_impl<double>(grad_out, grad_hn, grad_cn, c0.contiguous(), w_hh, gates, c_all, batch_sizes,
                                      reverse, max_parts, single_max_macs);
  }
  return lstm_backward_impl<float>(grad_out, grad_hn, grad_cn, c0.contiguous(), w_hh, gates, c_all, batch_sizes,
                                   reverse, max_parts, single_max_macs);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                                                       const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                                       const std::optional<Tensor>& b_hh,
                                                       c10::IntArrayRef batch_sizes, bool reverse, bool save,
                                                       int64_t max_parts, int64_t single_max_macs) {
  check_inputs(x, h0, w_ih, w_hh, 3);
  const Tensor xc = x.contiguous(), wi = w_ih.contiguous();
  if (x.scalar_type() == at::kDouble) {
    return gru_forward_impl<double>(xc, h0, wi, w_hh, b_ih, b_hh, batch_sizes, reverse, save, max_parts,
                                    single_max_macs);
  }
  return gru_forward_impl<float>(xc, h0, wi, w_hh, b_ih, b_hh, batch_sizes, reverse, save, max_parts,
                                 single_max_macs);
}

std::tuple<Tensor, Tensor, Tensor> gru_backward(const Tensor& grad_out, const Tensor& grad_hn, const Tensor& h0,
                                        const Tensor& w_zrn, const Tensor& out, const Tensor& gates,
                                        const Tensor& hn_all, c10::IntArrayRef batch_sizes, bool reverse,
                                        int64_t max_parts, int64_t single_max_macs) {
  TORCH_CHECK(gates.is_contiguous() && hn_all.is_contiguous() && out.is_contiguous(),
              "rnnlab_cpu: saved tensors must be contiguous");
  if (gates.scalar_type() == at::kDouble) {
    return gru_backward_impl<double>(grad_out, grad_hn, h0.contiguous(), w_zrn, out, gates, hn_all, batch_sizes,
                                     reverse, max_parts, single_max_macs);
  }
  return gru_backward_impl<float>(grad_out, grad_hn, h0.contiguous(), w_zrn, out, gates, hn_all, batch_sizes,
                                  reverse, max_parts, single_max_macs);
}

std::tuple<Tensor, Tensor> rnn_forward(const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                                       const std::optional<Tensor>& bias, bool relu, c10::IntArrayRef batch_sizes,
                                       bool reverse, int64_t max_parts, int64_t single_max_macs) {
  check_inputs(x, h0, w_ih, w_hh, 1);
  const Tensor xc = x.contiguous(), wi = w_ih.contiguous();
  if (x.scalar_type() == at::kDouble) {
    return relu ? rnn_forward_impl<double, true>(xc, h0, wi, w_hh, bias, batch_sizes, reverse, max_parts,
                                                 single_max_macs)
                : rnn_forward_impl<double, false>(xc, h0, wi, w_hh, bias, batch_sizes, reverse, max_parts,
                                                  single_max_macs);
  }
  return relu ? rnn_forward_impl<float, true>(xc, h0, wi, w_hh, bias, batch_sizes, reverse, max_parts,
                                              single_max_macs)
              : rnn_forward_impl<float, false>(xc, h0, wi, w_hh, bias, batch_sizes, reverse, max_parts,
                                               single_max_macs);
}

std::tuple<Tensor, Tensor, Tensor> rnn_backward(const Tensor& grad_out, const Tensor& grad_hn, const Tensor& w_hh,
                                        const Tensor& out, bool relu, c10::IntArrayRef batch_sizes, bool reverse,
                                        int64_t max_parts, int64_t single_max_macs) {
  TORCH_CHECK(out.is_contiguous(), "rnnlab_cpu: saved tensors must be contiguous");
  if (out.scalar_type() == at::kDouble) {
    return relu ? rnn_backward_impl<double, true>(grad_out, grad_hn, w_hh, out, batch_sizes, reverse, max_parts,
                                                  single_max_macs)
                : rnn_backward_impl<double, false>(grad_out, grad_hn, w_hh, out, batch_sizes, reverse, max_parts,
                                                   single_max_macs);
  }
  return relu ? rnn_backward_impl<float, true>(grad_out, grad_hn, w_hh, out, batch_sizes, reverse, max_parts,
                                               single_max_macs)
              : rnn_backward_impl<float, false>(grad_out, grad_hn, w_hh, out, batch_sizes, reverse, max_parts,
                                                single_max_macs);
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
  m.def("build_info() -> str", &rnnlab::build_info);
}
