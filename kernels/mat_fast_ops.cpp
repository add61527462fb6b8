// Operator schemas of the mat_fast_native library. Kernels register per device:
// window_attention_cpu.cpp / partial_conv_cpu.cpp (CPU), *_cuda.cu (CUDA, when built with
// CUDA). Fake (meta) implementations and autograd formulas are registered from Python in
// mat_fast/ops/{window_attention,partial_conv}/native.py.

#include <torch/library.h>

TORCH_LIBRARY(mat_fast_native, m) {
  // Shifted-window masked attention over projected tokens (B, H*W, C) -> (B, H*W, C).
  m.def(
      "window_attention(Tensor q, Tensor k, Tensor v, Tensor? mask, int height, int width, "
      "int window, int shift, int heads) -> Tensor");
  // Its gradients w.r.t. q, k, v (softmax recomputed per window; the mask gets none).
  m.def(
      "window_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor? mask, "
      "int height, int width, int window, int shift, int heads) -> (Tensor, Tensor, Tensor)");
  // New token mask (B, H*W, 1): clamp(sum of the window's mask, 0, 1) on every token.
  m.def(
      "window_mask_update(Tensor mask, int height, int width, int window, int shift) -> Tensor");
  // Partial-convolution mask update: (update, ratio), both (B, 1, H_out, W_out).
  m.def(
      "partial_conv_mask(Tensor mask, int kernel_size, int stride, int padding) -> "
      "(Tensor, Tensor)");
  // leaky_relu(x + bias, alpha) * gain * ratio, ratio (B, 1, H, W) broadcast over channels.
  m.def(
      "partial_conv_epilogue(Tensor x, Tensor? bias, Tensor ratio, float gain, float alpha) -> "
      "Tensor");
  // The same written into x (contiguous or channels_last; CPU kernel only).
  m.def(
      "partial_conv_epilogue_(Tensor(a!) x, Tensor? bias, Tensor ratio, float gain, "
      "float alpha) -> ()");
}

#ifdef MAT_FAST_PYTHON_MODULE
// Ahead-of-time builds (setup.py, MAT_FAST_BUILD_EXT=1) produce the importable module
// mat_fast._C; importing it loads this library, which registers the operators above.
#include <Python.h>

static struct PyModuleDef mat_fast_c_module = {PyModuleDef_HEAD_INIT, "_C",
                                               "mat_fast_native operators (torch.ops)", -1,
                                               nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&mat_fast_c_module); }
#endif
