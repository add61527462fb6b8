"""GPU checks of what the other op tests leave out, and the partial-conv epilogue's layout.

* bias_act's Triton kernels at MAT's real shapes (NCHW, channels_last, tokens) in fp32,
  fp16 and bf16 with gradients (its interpreter tests use tiny maps);
* the CUDA extension's partial-conv ops in every dtype and layout (the attention ops are in
  test_window_attention_native.py);
* the epilogue's output layout: the op's fake (what torch.compile plans with) promises
  channels_last for a channels_last input, and the kernels must deliver it (checked on
  CPU here, on CUDA where there is a GPU).

GPU tests compare with fp32 references computed in IEEE fp32 (conftest turns TF32 off).
"""

from __future__ import annotations

import pytest
import torch

from mat_fast.ops import native_build
from mat_fast.ops.partial_conv.reference import (
    partial_conv_epilogue_reference,
    partial_conv_mask_reference,
)

from ..helpers.asserts import DTYPES, LAYOUTS, assert_close_verbose, assert_lowp_close
from ..helpers.asserts import layout as _layout

DTYPE_IDS = [str(d).removeprefix("torch.") for d in DTYPES]


def _epilogue_inputs(device, dtype, layout, B=2, C=16, H=9, W=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g)
    bias = torch.randn(C, generator=g)
    mask = (torch.rand(B, 1, H, W, generator=g) > 0.4).float()
    _, ratio = partial_conv_mask_reference(mask, 3, 1, 1)
    x = _layout(x.to(device=device, dtype=dtype), layout)
    return x, bias.to(device=device, dtype=dtype), ratio.to(device=device, dtype=dtype)


def _fake_output(x, bias, ratio):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fx, fb, fr = (mode.from_tensor(t) for t in (x, bias, ratio))
        return torch.ops.mat_fast_native.partial_conv_epilogue(fx, fb, fr, 2**0.5, 0.2)


def _check_layout_matches_fake(device):
    for layout in LAYOUTS:
        x, bias, ratio = _epilogue_inputs(device, torch.float32, layout)
        real = torch.ops.mat_fast_native.partial_conv_epilogue(x, bias, ratio, 2**0.5, 0.2)
        fake = _fake_output(x, bias, ratio)
        assert real.stride() == fake.stride(), (
            f"{device} {layout}: kernel strides {real.stride()}, fake promises {fake.stride()}"
        )
        assert real.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
        ref = partial_conv_epilogue_reference(x, bias, ratio, 2**0.5, 0.2)
        assert_close_verbose(real, ref, rtol=1e-6, what=f"{device} {layout} epilogue")


def test_cpu_epilogue_layout_matches_its_fake(native_ops):
    _check_layout_matches_fake("cpu")


def _cuda_ops():
    reason = native_build.probe("cuda", "cuda")
    if reason is not None:
        pytest.fail(reason)
    from mat_fast.ops.partial_conv import native

    return native


@pytest.mark.gpu
def test_cuda_epilogue_layout_matches_its_fake():
    _cuda_ops()
    _check_layout_matches_fake("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("stride", [1, 2])
def test_cuda_partial_conv_ops_every_dtype_and_layout(stride, dtype, layout):
    native = _cuda_ops()
    g = torch.Generator().manual_seed(4)
    mask = (torch.rand(2, 1, 64, 64, generator=g) > 0.5).float()
    mask[..., 8:40, 8:40] = 0
    ref_update, ref_ratio = partial_conv_mask_reference(mask, 3, stride, 1)
    update, ratio = native.partial_conv_mask_native(mask.cuda().to(dtype), 3, stride, 1)
    assert torch.equal(update.float().cpu(), ref_update)  # 0 or 1 in every dtype
    assert_lowp_close(ratio.cpu(), ref_ratio.to(dtype), ref_ratio, "ratio", floor=1e-6)
    Ho, Wo = ratio.shape[-2:]
    x = torch.randn(2, 180, Ho, Wo, generator=g)
    bias = torch.randn(180, generator=g)
    args = (x, bias, ref_ratio)
    ref = partial_conv_epilogue_reference(*args, 2**0.5, 0.2)
    low = partial_conv_epilogue_reference(*(t.to(dtype) for t in args), 2**0.5, 0.2)
    x_dev = _layout(x.cuda().to(dtype), layout)
    out = native.partial_conv_epilogue_native(
        x_dev, bias.cuda().to(dtype), ref_ratio.cuda().to(dtype), 2**0.5, 0.2
    )
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    assert_lowp_close(out.cpu(), low, ref, "epilogue", floor=1e-6)


@pytest.mark.gpu
def test_gpu_references_run_in_ieee_fp32():
    # conftest's session fixture: a TF32 conv would be ~1e-3 off, IEEE ~1e-6
    g = torch.Generator().manual_seed(6)
    x, w = torch.randn(1, 64, 32, 32, generator=g), torch.randn(64, 64, 3, 3, generator=g)
    want = torch.nn.functional.conv2d(x.double(), w.double(), padding=1)
    got = torch.nn.functional.conv2d(x.cuda(), w.cuda(), padding=1).cpu()
    assert_close_verbose(got, want, rtol=1e-5, what="cuDNN fp32 conv")
    got = (x.view(64, -1).T.cuda() @ w.view(64, -1).cuda()).cpu()
    want = x.view(64, -1).T.double() @ w.view(64, -1).double()
    assert_close_verbose(got, want, rtol=1e-5, what="fp32 matmul")
