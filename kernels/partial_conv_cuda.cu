// CUDA kernels of mat_fast_native::partial_conv_mask and partial_conv_epilogue: one thread
// per output element, math in fp32 (fp64 for double).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common.h"

namespace mat_fast {
namespace cuda {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>((n + kThreads - 1) / kThreads);
}

template <typename scalar_t>
__global__ void partial_conv_mask_kernel(const scalar_t* __restrict__ mask, int64_t B, int64_t H,
                                         int64_t W, int64_t Ho, int64_t Wo, int64_t kernel,
                                         int64_t stride, int64_t padding,
                                         scalar_t* __restrict__ update,
                                         scalar_t* __restrict__ ratio) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= B * Ho * Wo) return;
  const int64_t b = idx / (Ho * Wo), oy = (idx / Wo) % Ho, ox = idx % Wo;
  const int64_t y0 = oy * stride - padding, x0 = ox * stride - padding;
  acc_t sum = 0;
  for (int64_t y = y0 < 0 ? 0 : y0; y < y0 + kernel && y < H; ++y)
    for (int64_t x = x0 < 0 ? 0 : x0; x < x0 + kernel && x < W; ++x)
      sum += static_cast<acc_t>(mask[(b * H + y) * W + x]);
  const acc_t u = sum < acc_t(0) ? acc_t(0) : (sum > acc_t(1) ? acc_t(1) : sum);
  update[idx] = static_cast<scalar_t>(u);
  ratio[idx] = static_cast<scalar_t>(static_cast<acc_t>(kernel * kernel) / (sum + acc_t(1e-8)) * u);
}

// NCHW (kChannelsLast false) or channels_last x and out, in memory order; ratio (B, 1, H, W).
template <typename scalar_t, bool kChannelsLast>
__global__ void partial_conv_epilogue_kernel(const scalar_t* __restrict__ x,
                                             const at::opmath_type<scalar_t>* __restrict__ bias,
                                             const at::opmath_type<scalar_t>* __restrict__ ratio,
                                             int64_t total, int64_t C, int64_t HW,
                                             at::opmath_type<scalar_t> gain,
                                             at::opmath_type<scalar_t> alpha,
                                             scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= total) return;
  int64_t c, pixel;  // pixel = b * HW + h * W + w, the ratio's index
  if (kChannelsLast) {
    c = idx % C;
    pixel = idx / C;
  } else {
    const int64_t plane = idx / HW;
    c = plane % C;
    pixel = (plane / C) * HW + idx % HW;
  }
  acc_t y = static_cast<acc_t>(x[idx]) + (bias != nullptr ? bias[c] : acc_t(0));
  y = y > acc_t(0) ? y : y * alpha;
  out[idx] = static_cast<scalar_t>(y * gain * ratio[pixel]);
}

inline at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

std::tuple<at::Tensor, at::Tensor> partial_conv_mask_cuda(const at::Tensor& mask, int64_t kernel,
                                                          int64_t stride, int64_t padding) {
  check_partial_conv_args(mask, kernel, stride, padding);
  const c10::cuda::CUDAGuard guard(mask.device());
  const at::Tensor mc = mask.contiguous();
  const int64_t B = mask.size(0), H = mask.size(2), W = mask.size(3);
  const int64_t Ho = conv_out_size(H, kernel, stride, padding);
  const int64_t Wo = conv_out_size(W, kernel, stride, padding);
  at::Tensor update = new_output({B, 1, Ho, Wo}, mask.options());
  at::Tensor ratio = new_output({B, 1, Ho, Wo}, mask.options());
  const int64_t total = B * Ho * Wo;
  if (total == 0) return {update, ratio};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, mask.scalar_type(),
                                  "mat_fast_native::partial_conv_mask (CUDA)", [&] {
    partial_conv_mask_kernel<scalar_t><<<blocks_for(total), kThreads, 0,
                                         c10::cuda::getCurrentCUDAStream()>>>(
        mc.data_ptr<scalar_t>(), B, H, W, Ho, Wo, kernel, stride, padding,
        update.data_ptr<scalar_t>(), ratio.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {update, ratio};
}

// The output keeps a channels_last x channels_last (as the CPU kernel and the op's fake
// promise: no layout change of a 100-200 MB activation); anything else comes out NCHW.
at::Tensor partial_conv_epilogue_cuda(const at::Tensor& x, const std::optional<at::Tensor>& bias,
                                      const at::Tensor& ratio, double gain, double alpha) {
  check_epilogue_args(x, bias, ratio);
  const c10::cuda::CUDAGuard guard(x.device());
  const bool nhwc = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  const at::MemoryFormat format = nhwc ? at::MemoryFormat::ChannelsLast
                                       : at::MemoryFormat::Contiguous;
  const at::Tensor xc = x.contiguous(format);
  const at::ScalarType acc = acc_type(x.scalar_type());
  const at::Tensor rc = ratio.to(acc).contiguous();
  const at::Tensor bc = bias.has_value() ? bias->to(acc).contiguous() : at::Tensor();
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(format));
  if (poison_outputs()) out.fill_(NAN);
  const int64_t total = x.numel();
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(),
                                  "mat_fast_native::partial_conv_epilogue (CUDA)", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto launch = [&](auto kernel) {
      kernel<<<blocks_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          xc.data_ptr<scalar_t>(), bc.defined() ? bc.data_ptr<acc_t>() : nullptr,
          rc.data_ptr<acc_t>(), total, x.size(1), x.size(2) * x.size(3),
          static_cast<acc_t>(gain), static_cast<acc_t>(alpha), out.data_ptr<scalar_t>());
    };
    if (nhwc) {
      launch(partial_conv_epilogue_kernel<scalar_t, true>);
    } else {
      launch(partial_conv_epilogue_kernel<scalar_t, false>);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace cuda
}  // namespace mat_fast

TORCH_LIBRARY_IMPL(mat_fast_native, CUDA, m) {
  m.impl("partial_conv_mask", &mat_fast::cuda::partial_conv_mask_cuda);
  m.impl("partial_conv_epilogue", &mat_fast::cuda::partial_conv_epilogue_cuda);
}
