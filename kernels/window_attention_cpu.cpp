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
// buffer written back row by row (the buffers: window_attention_cpu_window.h). The tile
// math is compiled three times (AVX-512, AVX2+FMA, baseline) and picked from the CPU's
// features at run time; MAT_FAST_CPU_ISA=avx512|avx2|base caps the choice.

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

#include "common.h"
#include "window_attention_cpu_window.h"

namespace mat_fast {
namespace cpu {

// ---------------------------------------------------------------------------------------
// The tile math, once per instruction set.

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
#define MAT_FAST_VL 16
#include "window_attention_cpu_core.inc"
#undef MAT_FAST_RB
#undef MAT_FAST_CB
#undef MAT_FAST_VL
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
#define MAT_FAST_VL 8
#include "window_attention_cpu_core.inc"
#undef MAT_FAST_RB
#undef MAT_FAST_CB
#undef MAT_FAST_VL
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
#define MAT_FAST_VL 4
#include "window_attention_cpu_core.inc"
#undef MAT_FAST_RB
#undef MAT_FAST_CB
#undef MAT_FAST_VL
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
using TransposeFn = void (*)(const T*, int64_t, int64_t, int64_t, T*, int64_t);

// One instruction set's compiled variant of the tile math.
template <typename T>
struct TileKernels {
  TileFn<T> forward, backward;
  TransposeFn<T> transpose_keys;
};

#define MAT_FAST_TILE_KERNELS(ns)                                    \
  TileKernels<T> {                                                   \
    static_cast<TileFn<T>>(&ns::tile_forward),                       \
        static_cast<TileFn<T>>(&ns::tile_backward),                  \
        static_cast<TransposeFn<T>>(&ns::transpose_keys)             \
  }

template <typename T>
TileKernels<T> tile_kernels() {
#if MAT_FAST_X86_MULTIVERSION
  switch (current_isa()) {
    case Isa::kAvx512:
      return MAT_FAST_TILE_KERNELS(avx512);
    case Isa::kAvx2:
      return MAT_FAST_TILE_KERNELS(avx2);
    default:
      break;
  }
#endif
  return MAT_FAST_TILE_KERNELS(base);
}
#undef MAT_FAST_TILE_KERNELS

// Tasks are (window, head) pairs, heads innermost; each thread takes a contiguous range
// and loads each window it meets once. The forward then transposes the window's keys for
// all heads (transpose_keys; the backward transposes per head in its tile math).
template <typename scalar_t, size_t kIn, size_t kOut>
void run_tasks(const WindowGeometry& g, bool backward, const at::opmath_type<scalar_t>* mask,
               const std::array<const scalar_t*, kIn>& inputs,
               const std::array<scalar_t*, kOut>& outputs) {
  using T = at::opmath_type<scalar_t>;
  const TileKernels<T> kernels = tile_kernels<T>();
  const TileFn<T> fn = backward ? kernels.backward : kernels.forward;
  const TransposeFn<T> transpose_keys = kernels.transpose_keys;
  at::parallel_for(0, g.num_windows() * g.heads, 1, [&](int64_t begin, int64_t end) {
    Scratch<T>& sc = thread_scratch<T>(g, backward);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t win = task / g.heads;
      if (win != sc.window) {
        sc.flush(g, outputs);
        sc.load_window(g, win, mask, inputs);
        if (!backward) {  // all heads' keys at once (per head, strided: a tenth of the forward)
          transpose_keys(sc.inputs[1], sc.tile.np, round_up(g.channels, 16), sc.tile.ld,
                         sc.keys_transposed, sc.tile.np);
        }
      }
      sc.select_head(task % g.heads);
      sc.prefetch_next(g, task % g.heads, g.heads, inputs);
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
    run_tasks<scalar_t, 3, 1>(
        g, /*backward=*/false, m.defined() ? m.data_ptr<T>() : nullptr,
        {qc.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(), vc.data_ptr<scalar_t>()},
        {out.data_ptr<scalar_t>()});
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
    run_tasks<scalar_t, 4, 3>(
        g, /*backward=*/true, m.defined() ? m.data_ptr<T>() : nullptr,
        {qc.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(), vc.data_ptr<scalar_t>(),
         gc.data_ptr<scalar_t>()},
        {dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>()});
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
