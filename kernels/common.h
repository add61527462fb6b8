// Shared by the CPU (.cpp) and CUDA (.cu) kernels of mat_fast_native: argument checks,
// output allocation, and the index arithmetic of shifted windows (host and device).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>

#if defined(__CUDACC__)
#define MAT_FAST_HD __host__ __device__ __forceinline__
#else
#define MAT_FAST_HD inline
#endif

namespace mat_fast {

//! Additive logit penalty for tokens of another shift region and for invalid keys.
constexpr float kMaskPenalty = -100.0f;

// Outputs are allocated uninitialised; with MAT_FAST_POISON_OUTPUTS=1 (read on every call)
// they are NaN-filled first, so a test catches any element a kernel forgets to write.
inline bool poison_outputs() {
  const char* env = std::getenv("MAT_FAST_POISON_OUTPUTS");
  return env != nullptr && env[0] == '1' && env[1] == '\0';
}

inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return poison_outputs() ? at::full(sizes, NAN, options) : at::empty(sizes, options);
}

// Element conversions to and from the accumulation type. bf16 uses plain integer
// arithmetic (round to nearest even, NaN stays NaN) so that loops of it vectorise; c10's
// own conversion is branchy. Everything else is a static_cast.
template <typename T, typename S>
MAT_FAST_HD T to_acc(S x) {
  return static_cast<T>(x);
}
template <typename S, typename T>
MAT_FAST_HD S from_acc(T x) {
  return static_cast<S>(x);
}
#if !defined(__CUDACC__)
template <>
inline float to_acc<float, c10::BFloat16>(c10::BFloat16 x) {
  const uint32_t bits = static_cast<uint32_t>(x.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
template <>
inline c10::BFloat16 from_acc<c10::BFloat16, float>(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return c10::BFloat16(static_cast<uint16_t>(f != f ? 0x7FC0u : rounded),
                       c10::BFloat16::from_bits());
}
#endif

// Geometry of MAT's (shifted) window attention on a B x (H*W) x C token tensor.
//
// The op rolls the H x W grid by -shift and cuts w x w windows. Window (wy, wx) holds, at
// local position n = r * w + c, the rolled-grid cell (wy*w + r, wx*w + c), which is the
// original cell ((wy*w + r + shift) % H, (wx*w + c + shift) % W). Nothing is copied: the
// kernels read and write tokens through token() directly.
struct WindowGeometry {
  int64_t batch, height, width, channels, heads, head_dim;
  int64_t window, shift, windows_y, windows_x, tokens;  // tokens = window * window

  MAT_FAST_HD int64_t windows_per_image() const { return windows_y * windows_x; }
  MAT_FAST_HD int64_t num_windows() const { return batch * windows_y * windows_x; }

  // Row-major index in the original grid of local position n in window wi (of its image).
  MAT_FAST_HD int64_t token(int64_t wi, int64_t n) const {
    const int64_t wy = wi / windows_x, wx = wi % windows_x;
    const int64_t r = n / window, c = n % window;
    int64_t y = wy * window + r + shift, x = wx * window + c + shift;
    if (y >= height) y -= height;
    if (x >= width) x -= width;
    return y * width + x;
  }

  // Shift region (0..8) of local position n of window wi; regions are cut in ROLLED
  // coordinates: bands [0, S-w), [S-w, S-s), [S-s, S) of rows and of columns. Tokens of
  // different regions get kMaskPenalty between them. Always 0 without a shift.
  MAT_FAST_HD int region(int64_t wi, int64_t n) const {
    if (shift == 0) return 0;
    const int64_t ry = (wi / windows_x) * window + n / window;
    const int64_t rx = (wi % windows_x) * window + n % window;
    const int by = (ry >= height - window) + (ry >= height - shift);
    const int bx = (rx >= width - window) + (rx >= width - shift);
    return 3 * by + bx;
  }
};

// Key bias of a token mask value, upstream's masked_fill semantics: exactly 0 -> -100,
// exactly 1 -> 0, anything else is added as is.
template <typename T>
MAT_FAST_HD T key_mask_bias(T m) {
  return m == T(0) ? T(kMaskPenalty) : (m == T(1) ? T(0) : m);
}

inline WindowGeometry check_window_args(const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v,
                                        const std::optional<at::Tensor>& mask, int64_t height,
                                        int64_t width, int64_t window, int64_t shift,
                                        int64_t heads) {
  TORCH_CHECK(q.dim() == 3, "mat_fast_native::window_attention: q must be (B, H*W, C), got ",
              q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "mat_fast_native::window_attention: q, k, v must share one shape; got ", q.sizes(),
              ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "mat_fast_native::window_attention: q, k, v must share one dtype");
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(),
              "mat_fast_native::window_attention: q, k, v must be on one device");
  TORCH_CHECK(window > 0 && height > 0 && width > 0 && height % window == 0 &&
                  width % window == 0,
              "mat_fast_native::window_attention: grid ", height, "x", width,
              " is not a multiple of the window ", window);
  TORCH_CHECK(shift >= 0 && shift < window,
              "mat_fast_native::window_attention: shift must be in [0, window), got ", shift);
  TORCH_CHECK(heads > 0 && q.size(2) % heads == 0, "mat_fast_native::window_attention: ",
              q.size(2), " channels do not split into ", heads, " heads");
  TORCH_CHECK(q.size(1) == height * width, "mat_fast_native::window_attention: ", q.size(1),
              " tokens do not form the grid ", height, "x", width);
  if (mask.has_value()) {
    TORCH_CHECK(mask->dim() == 3 && mask->size(0) == q.size(0) && mask->size(1) == q.size(1) &&
                    mask->size(2) == 1,
                "mat_fast_native::window_attention: mask must be (B, H*W, 1), got ",
                mask->sizes());
    TORCH_CHECK(mask->device() == q.device(),
                "mat_fast_native::window_attention: mask must be on the device of q");
    TORCH_CHECK(at::isFloatingType(mask->scalar_type()),
                "mat_fast_native::window_attention: mask must be a floating tensor");
  }
  WindowGeometry g;
  g.batch = q.size(0);
  g.height = height;
  g.width = width;
  g.channels = q.size(2);
  g.heads = heads;
  g.head_dim = q.size(2) / heads;
  g.window = window;
  g.shift = shift;
  g.windows_y = height / window;
  g.windows_x = width / window;
  g.tokens = window * window;
  return g;
}

inline WindowGeometry check_mask_update_args(const at::Tensor& mask, int64_t height,
                                             int64_t width, int64_t window, int64_t shift) {
  TORCH_CHECK(mask.dim() == 3 && mask.size(1) == height * width && mask.size(2) == 1,
              "mat_fast_native::window_mask_update: mask must be (B, H*W, 1), got ",
              mask.sizes());
  TORCH_CHECK(at::isFloatingType(mask.scalar_type()),
              "mat_fast_native::window_mask_update: mask must be a floating tensor");
  // height and width checked positive too: a negative grid passes the products and
  // divisibility checks and would index before the tensor.
  TORCH_CHECK(window > 0 && height > 0 && width > 0 && height % window == 0 &&
                  width % window == 0 && shift >= 0 && shift < window,
              "mat_fast_native::window_mask_update: bad window ", window, " / shift ", shift,
              " for the grid ", height, "x", width);
  WindowGeometry g;
  g.batch = mask.size(0);
  g.height = height;
  g.width = width;
  g.channels = 1;
  g.heads = 1;
  g.head_dim = 1;
  g.window = window;
  g.shift = shift;
  g.windows_y = height / window;
  g.windows_x = width / window;
  g.tokens = window * window;
  return g;
}

inline int64_t conv_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding) {
  return (in + 2 * padding - kernel) / stride + 1;
}

inline void check_partial_conv_args(const at::Tensor& mask, int64_t kernel, int64_t stride,
                                    int64_t padding) {
  TORCH_CHECK(mask.dim() == 4 && mask.size(1) == 1,
              "mat_fast_native::partial_conv_mask: mask must be (B, 1, H, W), got ",
              mask.sizes());
  TORCH_CHECK(at::isFloatingType(mask.scalar_type()),
              "mat_fast_native::partial_conv_mask: mask must be a floating tensor");
  TORCH_CHECK(kernel > 0 && stride > 0 && padding >= 0,
              "mat_fast_native::partial_conv_mask: bad kernel/stride/padding ", kernel, "/",
              stride, "/", padding);
  TORCH_CHECK(conv_out_size(mask.size(2), kernel, stride, padding) > 0 &&
                  conv_out_size(mask.size(3), kernel, stride, padding) > 0,
              "mat_fast_native::partial_conv_mask: kernel ", kernel, " does not fit the padded ",
              mask.size(2), "x", mask.size(3), " mask");
}

inline void check_epilogue_args(const at::Tensor& x, const std::optional<at::Tensor>& bias,
                                const at::Tensor& ratio) {
  TORCH_CHECK(x.dim() == 4, "mat_fast_native::partial_conv_epilogue: x must be (B, C, H, W), got ",
              x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "mat_fast_native::partial_conv_epilogue: x must be a floating tensor");
  TORCH_CHECK(ratio.dim() == 4 && ratio.size(0) == x.size(0) && ratio.size(1) == 1 &&
                  ratio.size(2) == x.size(2) && ratio.size(3) == x.size(3),
              "mat_fast_native::partial_conv_epilogue: ratio must be (B, 1, H, W) = (",
              x.size(0), ", 1, ", x.size(2), ", ", x.size(3), "), got ", ratio.sizes());
  TORCH_CHECK(ratio.device() == x.device(),
              "mat_fast_native::partial_conv_epilogue: ratio must be on the device of x");
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == x.size(1),
                "mat_fast_native::partial_conv_epilogue: bias must be (C,) = (", x.size(1),
                ",), got ", bias->sizes());
    TORCH_CHECK(bias->device() == x.device(),
                "mat_fast_native::partial_conv_epilogue: bias must be on the device of x");
  }
}

}  // namespace mat_fast
