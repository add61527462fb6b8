// CUDA kernels of mat_fast_native::window_attention{,_backward} and window_mask_update.
//
// One thread block per (window, head), one thread per token of the window (w*w <= 256).
// Tokens are addressed through WindowGeometry::token() (roll and partition are index
// arithmetic). Keys/values (forward) and queries/output gradients (backward) are staged
// through shared memory in chunks of kChunk tokens; each thread keeps its own row (head_dim
// <= kMaxDim, a template parameter) in registers. Math in fp32 (fp64 for double inputs).
//
// forward : thread i = query i, online softmax over the keys.
// backward: phase 1, thread i = query i: row statistics (log-sum-exp, D_i = dout_i . out_i)
//           and dq_i; phase 2, thread j = key j: dk_j and dv_j, reading the statistics of
//           every query from shared memory. No atomics; every output element is written
//           by exactly one thread.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "common.h"

namespace mat_fast {
namespace cuda {

constexpr int kChunk = 32;       // tokens staged in shared memory at a time
constexpr int kMaxTokens = 256;  // threads per block = tokens per window (rounded up to 32)

template <typename T>
__device__ __forceinline__ T exp_(T x);
template <>
__device__ __forceinline__ float exp_(float x) { return expf(x); }
template <>
__device__ __forceinline__ double exp_(double x) { return exp(x); }

template <typename T>
__device__ __forceinline__ T log_(T x);
template <>
__device__ __forceinline__ float log_(float x) { return logf(x); }
template <>
__device__ __forceinline__ double log_(double x) { return log(x); }

// Shared memory of a block: per-token index / region / key bias, then staging buffers.
template <typename acc_t>
struct Smem {
  int64_t* token;   // [N] row index b * L + token(wi, n)
  int* region;      // [N]
  acc_t* key_bias;  // [N]
  acc_t* stat0;     // [N] backward: log-sum-exp of each query
  acc_t* stat1;     // [N] backward: D_i = dout_i . out_i
  acc_t* stage0;    // [kChunk, d]
  acc_t* stage1;    // [kChunk, d]

  static size_t bytes(int64_t n, int64_t d) {
    return n * (sizeof(int64_t) + sizeof(int) + 3 * sizeof(acc_t)) +
           2 * kChunk * d * sizeof(acc_t) + 16;
  }

  __device__ Smem(unsigned char* raw, int64_t n, int64_t d) {
    token = reinterpret_cast<int64_t*>(raw);
    key_bias = reinterpret_cast<acc_t*>(token + n);
    stat0 = key_bias + n;
    stat1 = stat0 + n;
    stage0 = stat1 + n;
    stage1 = stage0 + kChunk * d;
    region = reinterpret_cast<int*>(stage1 + kChunk * d);
  }
};

// Fill token / region / key bias of window `win` for all N tokens.
template <typename acc_t>
__device__ void load_window_indices(const WindowGeometry& g, int64_t win, const acc_t* mask,
                                    Smem<acc_t>& sm) {
  const int64_t b = win / g.windows_per_image(), wi = win % g.windows_per_image();
  const int64_t L = g.height * g.width;
  for (int64_t n = threadIdx.x; n < g.tokens; n += blockDim.x) {
    const int64_t t = b * L + g.token(wi, n);
    sm.token[n] = t;
    sm.region[n] = g.region(wi, n);
    sm.key_bias[n] = mask != nullptr ? key_mask_bias(mask[t]) : acc_t(0);
  }
}

// Stage rows [j0, j0 + kChunk) (channels [c0, c0 + d)) of x into dst [kChunk, d].
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void stage_rows(const scalar_t* __restrict__ x, const Smem<acc_t>& sm,
                                           int64_t j0, int64_t n_tokens, int64_t C, int64_t c0,
                                           int64_t d, acc_t* dst) {
  for (int64_t e = threadIdx.x; e < kChunk * d; e += blockDim.x) {
    const int64_t jj = e / d, c = e % d;
    dst[e] = j0 + jj < n_tokens ? static_cast<acc_t>(x[sm.token[j0 + jj] * C + c0 + c]) : acc_t(0);
  }
}

template <int kMaxDim, typename acc_t, typename scalar_t>
__device__ __forceinline__ void load_row(const scalar_t* __restrict__ x, int64_t offset, int64_t d,
                                         acc_t (&row)[kMaxDim]) {
#pragma unroll
  for (int c = 0; c < kMaxDim; ++c) row[c] = c < d ? static_cast<acc_t>(x[offset + c]) : acc_t(0);
}

template <int kMaxDim, typename acc_t>
__device__ __forceinline__ acc_t dot_row(const acc_t (&row)[kMaxDim], const acc_t* other,
                                         int64_t d) {
  acc_t s = 0;
#pragma unroll
  for (int c = 0; c < kMaxDim; ++c)
    if (c < d) s += row[c] * other[c];
  return s;
}

template <typename acc_t>
__device__ __forceinline__ acc_t logit_bias(const Smem<acc_t>& sm, int64_t i, int64_t j,
                                            bool shifted) {
  acc_t b = sm.key_bias[j];
  if (shifted && sm.region[i] != sm.region[j]) b += acc_t(kMaskPenalty);
  return b;
}

template <typename scalar_t, int kMaxDim>
__global__ void __launch_bounds__(kMaxTokens)
    window_attention_fwd_kernel(WindowGeometry g, const scalar_t* __restrict__ q,
                                const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                                const at::opmath_type<scalar_t>* __restrict__ mask,
                                scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t N = g.tokens, d = g.head_dim, C = g.channels;
  Smem<acc_t> sm(smem_raw, N, d);
  const int64_t win = blockIdx.x / g.heads, c0 = (blockIdx.x % g.heads) * d;
  const bool shifted = g.shift > 0;
  const acc_t scale = acc_t(1) / sqrt(acc_t(d));
  load_window_indices(g, win, mask, sm);
  __syncthreads();

  const int64_t i = threadIdx.x;
  const bool active = i < N;
  acc_t q_i[kMaxDim], acc[kMaxDim];
  if (active) load_row<kMaxDim>(q, sm.token[i] * C + c0, d, q_i);
#pragma unroll
  for (int c = 0; c < kMaxDim; ++c) acc[c] = 0;
  acc_t m = -std::numeric_limits<acc_t>::infinity(), l = 0;

  for (int64_t j0 = 0; j0 < N; j0 += kChunk) {
    __syncthreads();  // the previous chunk is consumed
    stage_rows(k, sm, j0, N, C, c0, d, sm.stage0);
    stage_rows(v, sm, j0, N, C, c0, d, sm.stage1);
    __syncthreads();
    if (!active) continue;
    // Online softmax, one key at a time (rolled loops keep the many instantiations small).
    for (int jj = 0; jj < kChunk && j0 + jj < N; ++jj) {
      const acc_t s = dot_row<kMaxDim>(q_i, sm.stage0 + jj * d, d) * scale +
                      logit_bias(sm, i, j0 + jj, shifted);
      if (s > m) {  // rescale what was accumulated under the old maximum
        const acc_t correction = exp_(m - s);  // 0 for the first key (m = -inf)
        l *= correction;
#pragma unroll
        for (int c = 0; c < kMaxDim; ++c) acc[c] *= correction;
        m = s;
      }
      const acc_t p = exp_(s - m);
      l += p;
      const acc_t* v_j = sm.stage1 + jj * d;
#pragma unroll
      for (int c = 0; c < kMaxDim; ++c)
        if (c < d) acc[c] += p * v_j[c];
    }
  }
  if (active) {
    const acc_t inv = acc_t(1) / l;
    scalar_t* o = out + sm.token[i] * C + c0;
#pragma unroll
    for (int c = 0; c < kMaxDim; ++c)
      if (c < d) o[c] = static_cast<scalar_t>(acc[c] * inv);
  }
}

template <typename scalar_t, int kMaxDim>
__global__ void __launch_bounds__(kMaxTokens)
    window_attention_bwd_kernel(WindowGeometry g, const scalar_t* __restrict__ grad,
                                const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                const scalar_t* __restrict__ v,
                                const at::opmath_type<scalar_t>* __restrict__ mask,
                                scalar_t* __restrict__ dq, scalar_t* __restrict__ dk,
                                scalar_t* __restrict__ dv) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t N = g.tokens, d = g.head_dim, C = g.channels;
  Smem<acc_t> sm(smem_raw, N, d);
  const int64_t win = blockIdx.x / g.heads, c0 = (blockIdx.x % g.heads) * d;
  const bool shifted = g.shift > 0;
  const acc_t scale = acc_t(1) / sqrt(acc_t(d));
  load_window_indices(g, win, mask, sm);
  __syncthreads();

  const int64_t t = threadIdx.x;
  const bool active = t < N;

  // ---- phase 1: thread t = query i.
  {
    acc_t q_i[kMaxDim], do_i[kMaxDim], acc[kMaxDim];
    if (active) {
      load_row<kMaxDim>(q, sm.token[t] * C + c0, d, q_i);
      load_row<kMaxDim>(grad, sm.token[t] * C + c0, d, do_i);
    }
#pragma unroll
    for (int c = 0; c < kMaxDim; ++c) acc[c] = 0;
    acc_t m = -std::numeric_limits<acc_t>::infinity(), l = 0;
    // Pass 1: m, l and out_i (unnormalised), as in the forward pass.
    for (int64_t j0 = 0; j0 < N; j0 += kChunk) {
      __syncthreads();
      stage_rows(k, sm, j0, N, C, c0, d, sm.stage0);
      stage_rows(v, sm, j0, N, C, c0, d, sm.stage1);
      __syncthreads();
      if (!active) continue;
      for (int jj = 0; jj < kChunk && j0 + jj < N; ++jj) {
        const acc_t s = dot_row<kMaxDim>(q_i, sm.stage0 + jj * d, d) * scale +
                        logit_bias(sm, t, j0 + jj, shifted);
        if (s > m) {
          const acc_t correction = exp_(m - s);
          l *= correction;
#pragma unroll
          for (int c = 0; c < kMaxDim; ++c) acc[c] *= correction;
          m = s;
        }
        const acc_t p = exp_(s - m);
        l += p;
        const acc_t* v_j = sm.stage1 + jj * d;
#pragma unroll
        for (int c = 0; c < kMaxDim; ++c)
          if (c < d) acc[c] += p * v_j[c];
      }
    }
    acc_t lse = 0, D = 0;
    if (active) {
      lse = m + log_(l);
      const acc_t inv = acc_t(1) / l;
#pragma unroll
      for (int c = 0; c < kMaxDim; ++c)
        if (c < d) D += do_i[c] * acc[c] * inv;
      sm.stat0[t] = lse;
      sm.stat1[t] = D;
    }
    // Pass 2: dq_i = scale * sum_j P_ij (dP_ij - D_i) k_j.
#pragma unroll
    for (int c = 0; c < kMaxDim; ++c) acc[c] = 0;
    for (int64_t j0 = 0; j0 < N; j0 += kChunk) {
      __syncthreads();
      stage_rows(k, sm, j0, N, C, c0, d, sm.stage0);
      stage_rows(v, sm, j0, N, C, c0, d, sm.stage1);
      __syncthreads();
      if (!active) continue;
      for (int jj = 0; jj < kChunk && j0 + jj < N; ++jj) {
        const acc_t* k_j = sm.stage0 + jj * d;
        const acc_t s = dot_row<kMaxDim>(q_i, k_j, d) * scale + logit_bias(sm, t, j0 + jj, shifted);
        const acc_t p = exp_(s - lse);
        const acc_t ds = p * (dot_row<kMaxDim>(do_i, sm.stage1 + jj * d, d) - D);
#pragma unroll
        for (int c = 0; c < kMaxDim; ++c)
          if (c < d) acc[c] += ds * k_j[c];
      }
    }
    if (active) {
      scalar_t* o = dq + sm.token[t] * C + c0;
#pragma unroll
      for (int c = 0; c < kMaxDim; ++c)
        if (c < d) o[c] = static_cast<scalar_t>(acc[c] * scale);
    }
  }

  // ---- phase 2: thread t = key j.
  {
    acc_t k_j[kMaxDim], v_j[kMaxDim], dk_j[kMaxDim], dv_j[kMaxDim];
    if (active) {
      load_row<kMaxDim>(k, sm.token[t] * C + c0, d, k_j);
      load_row<kMaxDim>(v, sm.token[t] * C + c0, d, v_j);
    }
#pragma unroll
    for (int c = 0; c < kMaxDim; ++c) dk_j[c] = dv_j[c] = 0;
    for (int64_t i0 = 0; i0 < N; i0 += kChunk) {
      __syncthreads();  // also publishes stat0 / stat1 of phase 1 on the first chunk
      stage_rows(q, sm, i0, N, C, c0, d, sm.stage0);
      stage_rows(grad, sm, i0, N, C, c0, d, sm.stage1);
      __syncthreads();
      if (!active) continue;
      for (int ii = 0; ii < kChunk && i0 + ii < N; ++ii) {
        const int64_t i = i0 + ii;
        const acc_t* q_i = sm.stage0 + ii * d;
        const acc_t* do_i = sm.stage1 + ii * d;
        const acc_t s = dot_row<kMaxDim>(k_j, q_i, d) * scale + logit_bias(sm, i, t, shifted);
        const acc_t p = exp_(s - sm.stat0[i]);
        const acc_t ds = p * (dot_row<kMaxDim>(v_j, do_i, d) - sm.stat1[i]);
#pragma unroll
        for (int c = 0; c < kMaxDim; ++c) {
          if (c < d) {
            dk_j[c] += ds * q_i[c];
            dv_j[c] += p * do_i[c];
          }
        }
      }
    }
    if (active) {
      scalar_t* ok = dk + sm.token[t] * C + c0;
      scalar_t* ov = dv + sm.token[t] * C + c0;
#pragma unroll
      for (int c = 0; c < kMaxDim; ++c) {
        if (c < d) {
          ok[c] = static_cast<scalar_t>(dk_j[c] * scale);
          ov[c] = static_cast<scalar_t>(dv_j[c]);
        }
      }
    }
  }
}

// One thread per token: the window's mask sum, clamped to [0, 1].
template <typename scalar_t>
__global__ void window_mask_update_kernel(WindowGeometry g, const scalar_t* __restrict__ mask,
                                          scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t L = g.height * g.width;
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= g.batch * L) return;
  const int64_t b = idx / L, t = idx % L;
  int64_t ry = t / g.width - g.shift, rx = t % g.width - g.shift;  // rolled coordinates
  if (ry < 0) ry += g.height;
  if (rx < 0) rx += g.width;
  const int64_t wi = (ry / g.window) * g.windows_x + rx / g.window;
  acc_t sum = 0;
  for (int64_t n = 0; n < g.tokens; ++n) sum += static_cast<acc_t>(mask[b * L + g.token(wi, n)]);
  out[idx] = static_cast<scalar_t>(sum < acc_t(0) ? acc_t(0) : (sum > acc_t(1) ? acc_t(1) : sum));
}

// ---------------------------------------------------------------------------------------
// Launchers.

inline int threads_for(int64_t tokens) {
  TORCH_CHECK(tokens <= kMaxTokens, "mat_fast_native::window_attention (CUDA): windows of at ",
              "most ", kMaxTokens, " tokens (16 x 16, MAT's largest), got ", tokens,
              "; use the 'triton' or 'reference' backend");
  return static_cast<int>((tokens + 31) / 32 * 32);
}

#define MAT_FAST_DISPATCH_HEAD_DIM(head_dim, ...)                                          \
  [&] {                                                                                     \
    if (head_dim <= 32) {                                                                   \
      constexpr int kMaxDim = 32;                                                           \
      __VA_ARGS__();                                                                        \
    } else if (head_dim <= 64) {                                                            \
      constexpr int kMaxDim = 64;                                                           \
      __VA_ARGS__();                                                                        \
    } else if (head_dim <= 128) {                                                           \
      constexpr int kMaxDim = 128;                                                          \
      __VA_ARGS__();                                                                        \
    } else {                                                                                \
      TORCH_CHECK(false, "mat_fast_native::window_attention (CUDA): head_dim <= 128, got ", \
                  head_dim);                                                                \
    }                                                                                       \
  }()

inline at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

template <typename Kernel>
inline void set_smem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  }
}

at::Tensor window_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const std::optional<at::Tensor>& mask, int64_t height,
                                 int64_t width, int64_t window, int64_t shift, int64_t heads) {
  const WindowGeometry g = check_window_args(q, k, v, mask, height, width, window, shift, heads);
  const c10::cuda::CUDAGuard guard(q.device());
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const at::Tensor m =
      mask.has_value() ? mask->to(acc_type(q.scalar_type())).contiguous() : at::Tensor();
  at::Tensor out = new_output(q.sizes(), q.options());
  if (q.numel() == 0) return out;
  const int threads = threads_for(g.tokens);
  const int64_t blocks = g.num_windows() * g.heads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(),
                                  "mat_fast_native::window_attention (CUDA)", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t smem = Smem<acc_t>::bytes(g.tokens, g.head_dim);
    MAT_FAST_DISPATCH_HEAD_DIM(g.head_dim, [&] {
      auto kernel = window_attention_fwd_kernel<scalar_t, kMaxDim>;
      set_smem(kernel, smem);
      kernel<<<static_cast<unsigned>(blocks), threads, smem,
               c10::cuda::getCurrentCUDAStream()>>>(
          g, qc.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(), vc.data_ptr<scalar_t>(),
          m.defined() ? m.data_ptr<acc_t>() : nullptr, out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> window_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& mask, int64_t height, int64_t width, int64_t window,
    int64_t shift, int64_t heads) {
  const WindowGeometry g = check_window_args(q, k, v, mask, height, width, window, shift, heads);
  TORCH_CHECK(grad_out.sizes() == q.sizes(),
              "mat_fast_native::window_attention_backward: grad_out must have the shape of q");
  const c10::cuda::CUDAGuard guard(q.device());
  const at::Tensor gc = grad_out.to(q.scalar_type()).contiguous();
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const at::Tensor m =
      mask.has_value() ? mask->to(acc_type(q.scalar_type())).contiguous() : at::Tensor();
  at::Tensor dq = new_output(q.sizes(), q.options());
  at::Tensor dk = new_output(q.sizes(), q.options());
  at::Tensor dv = new_output(q.sizes(), q.options());
  if (q.numel() == 0) return {dq, dk, dv};
  const int threads = threads_for(g.tokens);
  const int64_t blocks = g.num_windows() * g.heads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(),
                                  "mat_fast_native::window_attention_backward (CUDA)", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t smem = Smem<acc_t>::bytes(g.tokens, g.head_dim);
    MAT_FAST_DISPATCH_HEAD_DIM(g.head_dim, [&] {
      auto kernel = window_attention_bwd_kernel<scalar_t, kMaxDim>;
      set_smem(kernel, smem);
      kernel<<<static_cast<unsigned>(blocks), threads, smem,
               c10::cuda::getCurrentCUDAStream()>>>(
          g, gc.data_ptr<scalar_t>(), qc.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(),
          vc.data_ptr<scalar_t>(), m.defined() ? m.data_ptr<acc_t>() : nullptr,
          dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {dq, dk, dv};
}

at::Tensor window_mask_update_cuda(const at::Tensor& mask, int64_t height, int64_t width,
                                   int64_t window, int64_t shift) {
  const WindowGeometry g = check_mask_update_args(mask, height, width, window, shift);
  const c10::cuda::CUDAGuard guard(mask.device());
  const at::Tensor mc = mask.contiguous();
  at::Tensor out = new_output(mask.sizes(), mask.options());
  const int64_t total = mask.numel();
  if (total == 0) return out;
  constexpr int kThreads = 256;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, mask.scalar_type(),
                                  "mat_fast_native::window_mask_update (CUDA)", [&] {
    window_mask_update_kernel<scalar_t>
        <<<static_cast<unsigned>(blocks), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            g, mc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace cuda
}  // namespace mat_fast

TORCH_LIBRARY_IMPL(mat_fast_native, CUDA, m) {
  m.impl("window_attention", &mat_fast::cuda::window_attention_cuda);
  m.impl("window_attention_backward", &mat_fast::cuda::window_attention_backward_cuda);
  m.impl("window_mask_update", &mat_fast::cuda::window_mask_update_cuda);
}
