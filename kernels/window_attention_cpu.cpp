// CPU kernels of mat_fast_native::window_attention{,_backward} and window_mask_update.
//
// One task per (window, head), spread over threads with at::parallel_for, heads innermost.
// A thread copies each window it meets once - whole token rows of q, k, v (and the output
// gradient), converted to fp32 (fp64 for double inputs) - straight from the (B, H*W, C)
// tensors through WindowGeometry::token(): the roll and the partition are index
// arithmetic, nothing is copied whole. Whole rows stream through the caches (per-head
// slices of scattered rows do not: 3x slower); the forward transposes the window's keys
// once, for all heads. Per head, the tile math of window_attention_cpu_core.inc works on
// the window buffers and small tiles that stay in L1/L2; results collect in a window output
// buffer written back row by row. The tile math is compiled three times (AVX-512,
// AVX2+FMA, baseline) and picked from the CPU's features at run time;
// MAT_FAST_CPU_ISA=avx2|base caps the choice.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "common.h"

#if defined(__GNUC__) || defined(__clang__)
#define MAT_FAST_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define MAT_FAST_ALWAYS_INLINE inline
#endif

namespace mat_fast {
namespace cpu {

// Tiles are padded to multiples of this many tokens / channels (a multiple of every
// register block below), so the inner loops have no remainders.
constexpr int64_t kTilePad = 32;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// One window and head. q, k, v, dout (inputs) and out / dq, dk, dv (outputs) point at the
// head's first channel inside per-thread buffers that hold the whole window, one token per
// row, leading dimension ld = C + dp; kt, vt, s* are per-head tiles. Operands span dp >= d
// channels: the extra ones belong to the next head (or to the row's padding) and only feed
// or receive columns that the next head overwrites or nobody reads. Padding rows are zero
// (inputs) and key_bias is -inf past n, so padded keys get probability 0.
template <typename T>
struct AttentionTile {
  int64_t n = 0, np = 0;  // tokens of the window, padded
  int64_t d = 0, dp = 0;  // head_dim, padded
  int64_t ld = 0;         // row stride of the window buffers
  T scale = 0;
  bool shifted = false;
  const int32_t* region = nullptr;  // [np] shift region of each token
  const T* key_bias = nullptr;      // [np] mask bias of each key (-inf past n)
  const T* q = nullptr;             // [np, ld]
  const T* k = nullptr;             // [np, ld]
  const T* v = nullptr;             // [np, ld]
  const T* dout = nullptr;          // [np, ld]  (backward)
  T* kt = nullptr;                  // [d, np]   k transposed (forward: rows of the window's
                                    //           transposed keys, backward: per-head scratch)
  T* vt = nullptr;                  // [dp, np]  v transposed (backward)
  T* s = nullptr;                   // [np, np]  logits / probabilities
  T* s2 = nullptr;                  // [np, np]  (backward)
  T* s3 = nullptr;                  // [np, np]  (backward)
  T* row_scale = nullptr;           // [np]      forward: 1 / softmax sum of each row
  T* out = nullptr;                 // [np, ld]  out (forward) or dq
  T* dk = nullptr;                  // [np, ld]  (backward)
  T* dv = nullptr;                  // [np, ld]  (backward)
};

// ---------------------------------------------------------------------------------------
// The tile math, once per instruction set.

#if defined(__GNUC__) && !defined(__clang__)
// 64-byte vector types by value in the baseline variant: internal (inlined) functions only.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define MAT_FAST_X86_MULTIVERSION 1
#else
#define MAT_FAST_X86_MULTIVERSION 0
#endif

#if MAT_FAST_X86_MULTIVERSION
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")
#endif
namespace avx512 {
#define MAT_FAST_RB 8
#define MAT_FAST_CB 32
#include "window_attention_cpu_core.inc"
#undef MAT_FAST_RB
#undef MAT_FAST_CB
}  // namespace avx512
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,prefer-vector-width=256")
#endif
namespace avx2 {
#define MAT_FAST_RB 4
#define MAT_FAST_CB 16
#include "window_attention_cpu_core.inc"
#undef MAT_FAST_RB
#undef MAT_FAST_CB
}  // namespace avx2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // MAT_FAST_X86_MULTIVERSION

namespace base {
#define MAT_FAST_RB 2
#define MAT_FAST_CB 16
#include "window_attention_cpu_core.inc"
#undef MAT_FAST_RB
#undef MAT_FAST_CB
}  // namespace base

enum class Isa { kBase = 0, kAvx2 = 1, kAvx512 = 2 };

inline Isa detected_isa() {
#if MAT_FAST_X86_MULTIVERSION
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
      return Isa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
    return Isa::kBase;
  }();
  return isa;
#else
  return Isa::kBase;
#endif
}

// The instruction set to run: what the CPU has, capped by MAT_FAST_CPU_ISA (read per call,
// so tests can exercise every variant on one machine).
inline Isa current_isa() {
  Isa isa = detected_isa();
  if (const char* env = std::getenv("MAT_FAST_CPU_ISA")) {
    Isa cap = isa;
    if (std::strcmp(env, "base") == 0) cap = Isa::kBase;
    else if (std::strcmp(env, "avx2") == 0) cap = Isa::kAvx2;
    else if (std::strcmp(env, "avx512") == 0) cap = Isa::kAvx512;
    isa = static_cast<Isa>(std::min(static_cast<int>(isa), static_cast<int>(cap)));
  }
  return isa;
}

template <typename T>
using TileFn = void (*)(const AttentionTile<T>&);

template <typename T>
TileFn<T> tile_fn(bool backward) {
#if MAT_FAST_X86_MULTIVERSION
  switch (current_isa()) {
    case Isa::kAvx512:
      return backward ? static_cast<TileFn<T>>(&avx512::tile_backward)
                      : static_cast<TileFn<T>>(&avx512::tile_forward);
    case Isa::kAvx2:
      return backward ? static_cast<TileFn<T>>(&avx2::tile_backward)
                      : static_cast<TileFn<T>>(&avx2::tile_forward);
    default:
      break;
  }
#endif
  return backward ? static_cast<TileFn<T>>(&base::tile_backward)
                  : static_cast<TileFn<T>>(&base::tile_forward);
}

template <typename T>
using TransposeFn = void (*)(const T*, int64_t, int64_t, int64_t, T*, int64_t);

template <typename T>
TransposeFn<T> transpose_keys_fn() {
#if MAT_FAST_X86_MULTIVERSION
  switch (current_isa()) {
    case Isa::kAvx512:
      return static_cast<TransposeFn<T>>(&avx512::transpose_keys);
    case Isa::kAvx2:
      return static_cast<TransposeFn<T>>(&avx2::transpose_keys);
    default:
      break;
  }
#endif
  return static_cast<TransposeFn<T>>(&base::transpose_keys);
}

// dst[0, count) = src[0, count) for fp32 output rows, with streaming stores where it can:
// the output is written once and not read back by this op, and ordinary stores would first
// read every line of it from memory (a tenth of the forward at the 512 stage-1 shape, where
// the output buffer is rarely in cache). Whole rows only: a window's rows of one grid row
// are contiguous, so whole lines get written. Pair with stream_fence() before other
// threads read the output.
inline void copy_row_streaming(float* dst, const float* src, int64_t count) {
#if defined(__SSE2__)
  if (reinterpret_cast<uintptr_t>(dst) % 16 == 0 && count % 4 == 0) {
    for (int64_t c = 0; c < count; c += 4) _mm_stream_ps(dst + c, _mm_loadu_ps(src + c));
    return;
  }
#endif
  std::memcpy(dst, src, count * sizeof(float));
}

// Orders this thread's streaming stores before what follows (the parallel region's end).
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// ---------------------------------------------------------------------------------------
// Per-thread scratch: one window's tokens (whole rows, all heads) in and out, and the
// tiles of one head. Whole-row copies stream through the caches; per-head slices of
// scattered rows would not.

template <typename T>
struct Scratch {
  AttentionTile<T> tile;
  std::unique_ptr<T[]> buffer;
  std::vector<T> key_bias;
  std::vector<int32_t> region;
  std::vector<int64_t> token;   // b * L + token of each window position
  std::vector<T*> inputs;       // window buffers: q, k, v (forward) / q, k, v, dout
  std::vector<T*> outputs;      // window buffers: out (forward) / dq, dk, dv
  T* keys_transposed = nullptr;  // forward: [round_up(C, 16), np]; backward: kt, vt tiles
  int64_t window = -1;          // window (b * nW + wi) held in the buffers
  int64_t head_lo = 0, head_hi = -1;  // heads of it computed so far

  const int64_t tokens, head_dim, channels;
  const bool backward;

  Scratch(const WindowGeometry& g, bool backward_)
      : tokens(g.tokens), head_dim(g.head_dim), channels(g.channels), backward(backward_) {
    auto& t = tile;
    t.n = g.tokens;
    t.np = round_up(g.tokens, kTilePad);
    t.d = g.head_dim;
    t.dp = round_up(g.head_dim, kTilePad);
    t.ld = g.channels + t.dp;
    t.scale = T(1) / std::sqrt(T(g.head_dim));
    t.shifted = g.shift > 0;
    const int64_t n_in = backward ? 4 : 3, n_out = backward ? 3 : 1, n_square = backward ? 3 : 1;
    const int64_t win = t.np * t.ld, nd = t.np * t.dp, nn = t.np * t.np;
    // Forward: the whole window's keys transposed, channel rows rounded up to 16 (whole
    // 16x16 blocks; ld > that, and the extra columns are zero). Backward: k and v of a head.
    const int64_t n_transposed = backward ? 2 * nd : round_up(g.channels, 16) * t.np;
    buffer.reset(new T[(n_in + n_out) * win + n_transposed + n_square * nn + t.np]);
    T* p = buffer.get();  // uninitialised
    auto take = [&p](int64_t count) { T* r = p; p += count; return r; };
    for (int64_t i = 0; i < n_in; ++i) inputs.push_back(take(win));
    for (int64_t i = 0; i < n_out; ++i) outputs.push_back(take(win));
    keys_transposed = take(n_transposed);
    t.kt = keys_transposed;
    t.vt = backward ? keys_transposed + nd : nullptr;
    t.s = take(nn);
    if (backward) {
      t.s2 = take(nn);
      t.s3 = take(nn);
    }
    t.row_scale = take(t.np);
    // The padding the tile math reads must be zero: input rows past n and columns past C,
    // transposed-tile columns past n. Everything else is written before it is read.
    for (T* in : inputs) {
      for (int64_t r = 0; r < t.n; ++r) {
        std::fill(in + r * t.ld + g.channels, in + (r + 1) * t.ld, T(0));
      }
      std::fill(in + t.n * t.ld, in + win, T(0));
    }
    std::fill(keys_transposed, keys_transposed + n_transposed, T(0));
    key_bias.assign(t.np, -std::numeric_limits<T>::infinity());
    region.assign(t.np, 0);
    token.assign(t.n, 0);
    t.key_bias = key_bias.data();
    t.region = region.data();
  }


  // Indices, key bias and input rows of window `win` (the previous one is flushed first).
  template <typename scalar_t, size_t kInputs>
  void load_window(const WindowGeometry& g, int64_t win, const T* mask,
                   const std::array<const scalar_t*, kInputs>& x) {
    const int64_t b = win / g.windows_per_image(), wi = win % g.windows_per_image();
    const int64_t L = g.height * g.width, C = g.channels;
    for (int64_t n = 0; n < g.tokens; ++n) {
      token[n] = b * L + g.token(wi, n);
      region[n] = g.region(wi, n);
      key_bias[n] = mask != nullptr ? key_mask_bias(mask[token[n]]) : T(0);
    }
    for (size_t i = 0; i < kInputs; ++i) {
      for (int64_t n = 0; n < g.tokens; ++n) {
        const scalar_t* src = x[i] + token[n] * C;
        T* dst = inputs[i] + n * tile.ld;
        if constexpr (std::is_same_v<scalar_t, T>) {
          std::memcpy(dst, src, C * sizeof(T));
        } else {
          for (int64_t c = 0; c < C; ++c) dst[c] = to_acc<T>(src[c]);
        }
      }
    }
    window = win;
    head_lo = -1;
    head_hi = -1;
  }

  // Ask for part `part` of `parts` of the next window's rows (into L2), one part before
  // each head is computed, so the loads from memory overlap the tile math (a few percent
  // faster than asking for the whole window at once, and than not asking: after the
  // window's pause the hardware prefetchers have lost the streams). Always inlined: GCC
  // deems a function that only prefetches pure and drops its calls.
  template <typename scalar_t, size_t kInputs>
  MAT_FAST_ALWAYS_INLINE void prefetch_next(const WindowGeometry& g, int64_t part, int64_t parts,
                                            const std::array<const scalar_t*, kInputs>& x) {
#if defined(__GNUC__) || defined(__clang__)
    const int64_t next = window + 1;
    if (next >= g.num_windows()) return;
    const int64_t b = next / g.windows_per_image(), wi = next % g.windows_per_image();
    const int64_t L = g.height * g.width, C = g.channels;
    constexpr int64_t kLine = 64 / sizeof(scalar_t);
    const int64_t n0 = g.tokens * part / parts, n1 = g.tokens * (part + 1) / parts;
    for (int64_t n = n0; n < n1; ++n) {
      const int64_t row = (b * L + g.token(wi, n)) * C;
      for (size_t i = 0; i < kInputs; ++i)
        for (int64_t c = 0; c < C; c += kLine) __builtin_prefetch(x[i] + row + c, 0, 2);
    }
#endif
  }

  // Write the computed heads' channels of the output buffers to y (B*L, C).
  template <typename scalar_t, size_t kOutputs>
  void flush(const WindowGeometry& g, const std::array<scalar_t*, kOutputs>& y) {
    if (head_hi < head_lo || head_lo < 0) return;
    const int64_t c_lo = head_lo * g.head_dim, c_hi = (head_hi + 1) * g.head_dim;
    for (size_t i = 0; i < kOutputs; ++i) {
      for (int64_t n = 0; n < g.tokens; ++n) {
        const T* src = outputs[i] + n * tile.ld;
        scalar_t* dst = y[i] + token[n] * g.channels;
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (c_lo == 0 && c_hi == g.channels) copy_row_streaming(dst, src, c_hi);
          else std::memcpy(dst + c_lo, src + c_lo, (c_hi - c_lo) * sizeof(T));
        } else if constexpr (std::is_same_v<scalar_t, T>) {
          std::memcpy(dst + c_lo, src + c_lo, (c_hi - c_lo) * sizeof(T));
        } else {
          for (int64_t c = c_lo; c < c_hi; ++c) dst[c] = from_acc<scalar_t>(src[c]);
        }
      }
    }
    head_hi = -1;
  }

  // Point the tile at head h's channels.
  void select_head(int64_t h, bool backward) {
    auto& t = tile;
    const int64_t c0 = h * t.d;
    t.q = inputs[0] + c0;
    t.k = inputs[1] + c0;
    t.v = inputs[2] + c0;
    t.out = outputs[0] + c0;
    if (!backward) t.kt = keys_transposed + c0 * t.np;
    if (backward) {
      t.dout = inputs[3] + c0;
      t.dk = outputs[1] + c0;
      t.dv = outputs[2] + c0;
    }
    if (head_lo < 0) head_lo = h;
    head_hi = h;
  }
};

// Tasks are (window, head) pairs, heads innermost; each thread takes a contiguous range
// and loads each window it meets once.
// This thread's scratch for g, ready for a call: kept across calls (a few per thread, for
// the few window shapes a network has), so a call neither allocates nor faults in fresh
// pages; that cost the 512 stage-1 forward a fifth of its time when other ops had
// churned the heap. Everything a call relies on stays valid between calls: the padding
// is never written, the rest is written before it is read.
template <typename T>
Scratch<T>& thread_scratch(const WindowGeometry& g, bool backward) {
  constexpr size_t kKept = 4;
  thread_local std::vector<std::unique_ptr<Scratch<T>>> kept;  // most recently used last
  auto it = std::find_if(kept.begin(), kept.end(), [&](const std::unique_ptr<Scratch<T>>& s) {
    return s->tokens == g.tokens && s->head_dim == g.head_dim && s->channels == g.channels &&
           s->backward == backward;
  });
  std::unique_ptr<Scratch<T>> scratch;
  if (it != kept.end()) {
    scratch = std::move(*it);
    kept.erase(it);
  } else {
    scratch = std::make_unique<Scratch<T>>(g, backward);
    if (kept.size() >= kKept) kept.erase(kept.begin());
  }
  scratch->tile.shifted = g.shift > 0;
  scratch->window = -1;
  scratch->head_lo = 0;
  scratch->head_hi = -1;
  kept.push_back(std::move(scratch));
  return *kept.back();
}

template <typename scalar_t>
void forward_kernel(const WindowGeometry& g, const scalar_t* q, const scalar_t* k,
                    const scalar_t* v, const at::opmath_type<scalar_t>* mask, scalar_t* out) {
  using T = at::opmath_type<scalar_t>;
  const TileFn<T> fn = tile_fn<T>(/*backward=*/false);
  const TransposeFn<T> transpose_keys = transpose_keys_fn<T>();
  at::parallel_for(0, g.num_windows() * g.heads, 1, [&](int64_t begin, int64_t end) {
    Scratch<T>& sc = thread_scratch<T>(g, /*backward=*/false);
    const std::array<scalar_t*, 1> outputs{out};
    for (int64_t task = begin; task < end; ++task) {
      const int64_t win = task / g.heads;
      if (win != sc.window) {
        sc.flush(g, outputs);
        sc.load_window(g, win, mask, std::array<const scalar_t*, 3>{q, k, v});
        // All heads' keys at once, in 16x16 register blocks (per head, with strided
        // loads, this took a tenth of the forward).
        transpose_keys(sc.inputs[1], sc.tile.np, round_up(g.channels, 16), sc.tile.ld,
                       sc.keys_transposed, sc.tile.np);
      }
      sc.select_head(task % g.heads, /*backward=*/false);
      sc.prefetch_next(g, task % g.heads, g.heads, std::array<const scalar_t*, 3>{q, k, v});
      fn(sc.tile);
    }
    sc.flush(g, outputs);
    stream_fence();
  });
}

template <typename scalar_t>
void backward_kernel(const WindowGeometry& g, const scalar_t* grad, const scalar_t* q,
                     const scalar_t* k, const scalar_t* v, const at::opmath_type<scalar_t>* mask,
                     scalar_t* dq, scalar_t* dk, scalar_t* dv) {
  using T = at::opmath_type<scalar_t>;
  const TileFn<T> fn = tile_fn<T>(/*backward=*/true);
  at::parallel_for(0, g.num_windows() * g.heads, 1, [&](int64_t begin, int64_t end) {
    Scratch<T>& sc = thread_scratch<T>(g, /*backward=*/true);
    const std::array<scalar_t*, 3> outputs{dq, dk, dv};
    for (int64_t task = begin; task < end; ++task) {
      const int64_t win = task / g.heads;
      if (win != sc.window) {
        sc.flush(g, outputs);
        sc.load_window(g, win, mask, std::array<const scalar_t*, 4>{q, k, v, grad});
      }
      sc.select_head(task % g.heads, /*backward=*/true);
      sc.prefetch_next(g, task % g.heads, g.heads, std::array<const scalar_t*, 4>{q, k, v, grad});
      fn(sc.tile);
    }
    sc.flush(g, outputs);
    stream_fence();
  });
}

// mask in the kernels' accumulation type, contiguous, or an undefined tensor.
inline at::Tensor mask_as(const std::optional<at::Tensor>& mask, at::ScalarType acc) {
  if (!mask.has_value()) return at::Tensor();
  return mask->to(acc).contiguous();
}

inline at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor window_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const std::optional<at::Tensor>& mask, int64_t height,
                                int64_t width, int64_t window, int64_t shift, int64_t heads) {
  const WindowGeometry g = check_window_args(q, k, v, mask, height, width, window, shift, heads);
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const at::Tensor m = mask_as(mask, acc_type(q.scalar_type()));
  at::Tensor out = new_output(q.sizes(), q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(),
                                  "mat_fast_native::window_attention", [&] {
    using T = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t>(g, qc.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(),
                             vc.data_ptr<scalar_t>(), m.defined() ? m.data_ptr<T>() : nullptr,
                             out.data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> window_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& mask, int64_t height, int64_t width, int64_t window,
    int64_t shift, int64_t heads) {
  const WindowGeometry g = check_window_args(q, k, v, mask, height, width, window, shift, heads);
  TORCH_CHECK(grad_out.sizes() == q.sizes(),
              "mat_fast_native::window_attention_backward: grad_out must have the shape of q");
  const at::Tensor gc = grad_out.to(q.scalar_type()).contiguous();
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const at::Tensor m = mask_as(mask, acc_type(q.scalar_type()));
  at::Tensor dq = new_output(q.sizes(), q.options());
  at::Tensor dk = new_output(q.sizes(), q.options());
  at::Tensor dv = new_output(q.sizes(), q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(),
                                  "mat_fast_native::window_attention_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    backward_kernel<scalar_t>(g, gc.data_ptr<scalar_t>(), qc.data_ptr<scalar_t>(),
                              kc.data_ptr<scalar_t>(), vc.data_ptr<scalar_t>(),
                              m.defined() ? m.data_ptr<T>() : nullptr, dq.data_ptr<scalar_t>(),
                              dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>());
  });
  return {dq, dk, dv};
}

at::Tensor window_mask_update_cpu(const at::Tensor& mask, int64_t height, int64_t width,
                                  int64_t window, int64_t shift) {
  const WindowGeometry g = check_mask_update_args(mask, height, width, window, shift);
  const at::Tensor mc = mask.contiguous();
  at::Tensor out = new_output(mask.sizes(), mask.options());
  const int64_t L = height * width, nwi = g.windows_per_image();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, mask.scalar_type(),
                                  "mat_fast_native::window_mask_update", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* src = mc.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, g.num_windows(), 16, [&](int64_t begin, int64_t end) {
      for (int64_t win = begin; win < end; ++win) {
        const int64_t base = (win / nwi) * L, wi = win % nwi;
        T sum = 0;
        for (int64_t n = 0; n < g.tokens; ++n) sum += static_cast<T>(src[base + g.token(wi, n)]);
        const scalar_t valid = static_cast<scalar_t>(std::min(std::max(sum, T(0)), T(1)));
        for (int64_t n = 0; n < g.tokens; ++n) dst[base + g.token(wi, n)] = valid;
      }
    });
  });
  return out;
}

}  // namespace cpu
}  // namespace mat_fast

TORCH_LIBRARY_IMPL(mat_fast_native, CPU, m) {
  m.impl("window_attention", &mat_fast::cpu::window_attention_cpu);
  m.impl("window_attention_backward", &mat_fast::cpu::window_attention_backward_cpu);
  m.impl("window_mask_update", &mat_fast::cpu::window_mask_update_cpu);
}
