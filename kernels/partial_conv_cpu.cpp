// CPU kernels of mat_fast_native::partial_conv_mask and partial_conv_epilogue.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "common.h"

namespace mat_fast {
namespace cpu {

// update = clamp(S, 0, 1), ratio = k*k / (S + 1e-8) * update, S = k x k box sum of the
// zero-padded mask at the given stride. One task per output row.
std::tuple<at::Tensor, at::Tensor> partial_conv_mask_cpu(const at::Tensor& mask, int64_t kernel,
                                                         int64_t stride, int64_t padding) {
  check_partial_conv_args(mask, kernel, stride, padding);
  const at::Tensor mc = mask.contiguous();
  const int64_t B = mask.size(0), H = mask.size(2), W = mask.size(3);
  const int64_t Ho = conv_out_size(H, kernel, stride, padding);
  const int64_t Wo = conv_out_size(W, kernel, stride, padding);
  at::Tensor update = new_output({B, 1, Ho, Wo}, mask.options());
  at::Tensor ratio = new_output({B, 1, Ho, Wo}, mask.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, mask.scalar_type(),
                                  "mat_fast_native::partial_conv_mask", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* src = mc.data_ptr<scalar_t>();
    scalar_t* upd = update.data_ptr<scalar_t>();
    scalar_t* rat = ratio.data_ptr<scalar_t>();
    const T area = static_cast<T>(kernel * kernel);
    at::parallel_for(0, B * Ho, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / Ho, oy = row % Ho;
        const int64_t y0 = std::max<int64_t>(oy * stride - padding, 0);
        const int64_t y1 = std::min<int64_t>(oy * stride - padding + kernel, H);
        for (int64_t ox = 0; ox < Wo; ++ox) {
          const int64_t x0 = std::max<int64_t>(ox * stride - padding, 0);
          const int64_t x1 = std::min<int64_t>(ox * stride - padding + kernel, W);
          T sum = 0;
          for (int64_t y = y0; y < y1; ++y) {
            const scalar_t* line = src + (b * H + y) * W;
            for (int64_t x = x0; x < x1; ++x) sum += static_cast<T>(line[x]);
          }
          const T u = std::min(std::max(sum, T(0)), T(1));
          const int64_t o = row * Wo + ox;
          upd[o] = static_cast<scalar_t>(u);
          rat[o] = static_cast<scalar_t>(area / (sum + T(1e-8)) * u);
        }
      }
    });
  });
  return {update, ratio};
}

// One (b, c) plane of the epilogue: out = leaky_relu(x + bias, alpha) * gain * ratio.
// out may be x (the in-place op): each element is read before it is written.
template <typename scalar_t, typename T>
inline void epilogue_plane(const scalar_t* x, T bias, const T* __restrict ratio, T gain,
                           T alpha, int64_t n, scalar_t* out) {
  // leaky_relu(y) = max(y, 0) + alpha * min(y, 0): branch-free, so it vectorises.
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T y = to_acc<T>(x[i]) + bias;
    const T act = std::max(y, T(0)) + alpha * std::min(y, T(0));
    out[i] = from_acc<scalar_t>(act * gain * ratio[i]);
  }
}

// The same over a run of channels_last pixels: x and out are (pixels, C), one ratio each.
template <typename scalar_t, typename T>
inline void epilogue_pixels(const scalar_t* x, const T* __restrict bias,
                            const T* __restrict ratio, T gain, T alpha, int64_t C,
                            int64_t pixels, scalar_t* out) {
  for (int64_t p = 0; p < pixels; ++p) {
    const T r = ratio[p];
    const scalar_t* src = x + p * C;
    scalar_t* dst = out + p * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const T y = to_acc<T>(src[c]) + bias[c];
      const T act = std::max(y, T(0)) + alpha * std::min(y, T(0));
      dst[c] = from_acc<scalar_t>(act * gain * r);
    }
  }
}

// Whether x is channels_last and not also NCHW-contiguous (then its planes are not planes).
inline bool is_nhwc(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// out = leaky_relu(x + bias[c], alpha) * gain * ratio[b, 0, y, x], x and out of one layout
// (contiguous or channels_last; out may be x). NCHW: one task per (b, c) plane. Channels-
// last (the fast backends' activations): one task per run of pixels.
void epilogue_into(const at::Tensor& x, const std::optional<at::Tensor>& bias,
                   const at::Tensor& ratio, double gain, double alpha, const at::Tensor& out) {
  const bool nhwc = is_nhwc(x);
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(),
                                  "mat_fast_native::partial_conv_epilogue", [&] {
    using T = at::opmath_type<scalar_t>;
    const at::ScalarType acc = std::is_same<T, double>::value ? at::kDouble : at::kFloat;
    const at::Tensor rc = ratio.to(acc).contiguous();
    const at::Tensor bc = bias.has_value() ? bias->to(acc).contiguous()
                                           : at::zeros({C}, x.options().dtype(acc));
    const scalar_t* src = x.data_ptr<scalar_t>();
    const T* r = rc.data_ptr<T>();
    const T* bs = bc.data_ptr<T>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const T g = static_cast<T>(gain), a = static_cast<T>(alpha);
    if (nhwc) {  // rows of C channels, in the order of ratio's (B*H*W) pixels
      const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1));
      at::parallel_for(0, B * HW, grain, [&](int64_t begin, int64_t end) {
        epilogue_pixels(src + begin * C, bs, r + begin, g, a, C, end - begin, dst + begin * C);
      });
      return;
    }
    at::parallel_for(0, B * C, 4, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        epilogue_plane(src + plane * HW, bs[plane % C], r + (plane / C) * HW, g, a, HW,
                       dst + plane * HW);
      }
    });
  });
}

// The functional op; the output keeps a channels_last x channels_last (no layout change of a
// 100-200 MB activation), anything else comes out contiguous.
at::Tensor partial_conv_epilogue_cpu(const at::Tensor& x, const std::optional<at::Tensor>& bias,
                                     const at::Tensor& ratio, double gain, double alpha) {
  check_epilogue_args(x, bias, ratio);
  const at::MemoryFormat format = is_nhwc(x) ? at::MemoryFormat::ChannelsLast
                                             : at::MemoryFormat::Contiguous;
  const at::Tensor xc = x.contiguous(format);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(format));
  if (poison_outputs()) out.fill_(NAN);
  epilogue_into(xc, bias, ratio, gain, alpha, out);
  return out;
}

// In place: x <- epilogue(x), for a conv output nobody else reads (no new 100-200 MB
// tensor, whose first touch costs more in page faults than the arithmetic).
void partial_conv_epilogue_inplace_cpu(const at::Tensor& x, const std::optional<at::Tensor>& bias,
                                       const at::Tensor& ratio, double gain, double alpha) {
  check_epilogue_args(x, bias, ratio);
  TORCH_CHECK(x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "mat_fast_native::partial_conv_epilogue_: x must be contiguous or channels_last");
  epilogue_into(x, bias, ratio, gain, alpha, x);
}

}  // namespace cpu
}  // namespace mat_fast

TORCH_LIBRARY_IMPL(mat_fast_native, CPU, m) {
  m.impl("partial_conv_mask", &mat_fast::cpu::partial_conv_mask_cpu);
  m.impl("partial_conv_epilogue", &mat_fast::cpu::partial_conv_epilogue_cpu);
  m.impl("partial_conv_epilogue_", &mat_fast::cpu::partial_conv_epilogue_inplace_cpu);
}
