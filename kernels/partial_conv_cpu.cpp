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
template <typename scalar_t, typename T>
inline void epilogue_plane(const scalar_t* __restrict x, T bias, const T* __restrict ratio, T gain,
                           T alpha, int64_t n, scalar_t* __restrict out) {
  // leaky_relu(y) = max(y, 0) + alpha * min(y, 0): branch-free, so it vectorises.
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T y = to_acc<T>(x[i]) + bias;
    const T act = std::max(y, T(0)) + alpha * std::min(y, T(0));
    out[i] = from_acc<scalar_t>(act * gain * ratio[i]);
  }
}

// out = leaky_relu(x + bias[c], alpha) * gain * ratio[b, 0, y, x]; one task per (b, c) plane.
at::Tensor partial_conv_epilogue_cpu(const at::Tensor& x, const std::optional<at::Tensor>& bias,
                                     const at::Tensor& ratio, double gain, double alpha) {
  check_epilogue_args(x, bias, ratio);
  const at::Tensor xc = x.contiguous();
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  at::Tensor out = new_output(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(),
                                  "mat_fast_native::partial_conv_epilogue", [&] {
    using T = at::opmath_type<scalar_t>;
    const at::ScalarType acc = std::is_same<T, double>::value ? at::kDouble : at::kFloat;
    const at::Tensor rc = ratio.to(acc).contiguous();
    const at::Tensor bc = bias.has_value() ? bias->to(acc).contiguous()
                                           : at::zeros({C}, x.options().dtype(acc));
    const scalar_t* src = xc.data_ptr<scalar_t>();
    const T* r = rc.data_ptr<T>();
    const T* bs = bc.data_ptr<T>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const T g = static_cast<T>(gain), a = static_cast<T>(alpha);
    at::parallel_for(0, B * C, 4, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        epilogue_plane(src + plane * HW, bs[plane % C], r + (plane / C) * HW, g, a, HW,
                       dst + plane * HW);
      }
    });
  });
  return out;
}

}  // namespace cpu
}  // namespace mat_fast

TORCH_LIBRARY_IMPL(mat_fast_native, CPU, m) {
  m.impl("partial_conv_mask", &mat_fast::cpu::partial_conv_mask_cpu);
  m.impl("partial_conv_epilogue", &mat_fast::cpu::partial_conv_epilogue_cpu);
}
