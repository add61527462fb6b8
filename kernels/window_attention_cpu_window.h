// Per-thread window buffers of the CPU window attention (window_attention_cpu.cpp): the
// tile a (window, head) task works on, the scratch that holds one window's tokens in and
// out, and the scratch kept per thread across calls.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
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
// register block of window_attention_cpu_core.inc), so the inner loops have no remainders.
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

// dst[0, count) = src[0, count) for fp32 output rows, with streaming stores where it can:
// the output is written once and not read back by this op, and ordinary stores would first
// read every line of it from memory (10-15% of the forward at the 512 stage-1 shape). The
// next op then reads it from memory rather than cache, the same traffic once instead of
// twice. Whole rows only: a window's rows of one grid row are contiguous, so whole lines
// get written. Pair with stream_fence() before other threads read the output.
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
  int64_t bytes = 0;  // of the buffers

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
    const int64_t count = (n_in + n_out) * win + n_transposed + n_square * nn + t.np;
    buffer.reset(new T[count]);
    bytes = count * static_cast<int64_t>(sizeof(T));
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

  // Ready for a call with geometry g (same window shape; shift and grid may differ).
  void begin_call(const WindowGeometry& g) {
    tile.shifted = g.shift > 0;
    window = -1;
    head_lo = 0;
    head_hi = -1;
  }

  // Point the tile at head h's channels.
  void select_head(int64_t h) {
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

// This thread's scratch for g, ready for a call. Kept across calls, so a call neither
// allocates nor zero-fills nor faults in fresh pages (measured right after other ops:
// 40% of the 512 input's 16x16-token forward, 5% of the 64x64 one). Up to 4 window
// shapes (a network has a few) and 4 MB per thread (MAT's forward and backward shapes
// fit); the one in use is kept even if larger. Everything a call relies on stays valid
// between calls: the padding is never written, the rest is written before it is read.
template <typename T>
Scratch<T>& thread_scratch(const WindowGeometry& g, bool backward) {
  constexpr size_t kKeptShapes = 4;
  constexpr int64_t kKeptBytes = int64_t(4) << 20;
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
  }
  int64_t bytes = scratch->bytes;
  for (const auto& s : kept) bytes += s->bytes;
  while (!kept.empty() && (kept.size() + 1 > kKeptShapes || bytes > kKeptBytes)) {
    bytes -= kept.front()->bytes;
    kept.erase(kept.begin());
  }
  scratch->begin_call(g);
  kept.push_back(std::move(scratch));
  return *kept.back();
}

}  // namespace cpu
}  // namespace mat_fast
