"""The 'cpu' backend's half-precision convolutions on CPUs without oneDNN's bf16/fp16
kernels: operands widened to fp32, one rounding back (mat_fast/ops/resample/cpu.py).

Both answers of the CPU probe are forced here, so the tests mean the same on every CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mat_fast.ops.resample import cpu as resample_cpu
from mat_fast.ops.resample import setup_filter

HALF = [torch.bfloat16, torch.float16]
PROBES = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}


@pytest.fixture
def cpu_has_half_kernels(monkeypatch):
    """Set what the CPU probe answers (cached answers cleared before and after)."""

    def answer(dtype, supported: bool) -> None:
        resample_cpu.half_convolutions_in_fp32.cache_clear()
        monkeypatch.setattr(torch.ops.mkldnn, PROBES[dtype], lambda: supported, raising=False)

    yield answer
    resample_cpu.half_convolutions_in_fp32.cache_clear()


def _inputs(dtype, channels=6, size=11):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, channels, size, size, generator=gen).to(dtype)
    w = (torch.randn(5, channels, 3, 3, generator=gen) / 4).to(dtype)
    return x, w, setup_filter([1, 3, 3, 1])


def test_only_half_dtypes_are_ever_widened(cpu_has_half_kernels):
    for dtype in HALF:
        cpu_has_half_kernels(dtype, False)
    for dtype in (torch.float32, torch.float64):
        assert not resample_cpu.half_convolutions_in_fp32(dtype)
    for dtype in HALF:
        assert resample_cpu.half_convolutions_in_fp32(dtype)


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2)])
def test_widened_conv_is_the_fp32_result_rounded_once(cpu_has_half_kernels, dtype, up, down):
    cpu_has_half_kernels(dtype, False)
    x, w, f = _inputs(dtype)
    out = resample_cpu.conv2d_resample_cpu(x, w, f, up=up, down=down, padding=1)
    wide = resample_cpu.conv2d_resample_cpu(x.float(), w.float(), f, up=up, down=down, padding=1)
    assert out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, wide.to(dtype))
    fir = resample_cpu.upfirdn2d_cpu(x, f, down=2, padding=1)
    assert fir.dtype == dtype
    assert torch.equal(fir, resample_cpu.upfirdn2d_cpu(x.float(), f, down=2, padding=1).to(dtype))


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_widened_conv_gradients_keep_the_half_dtype(cpu_has_half_kernels, dtype):
    cpu_has_half_kernels(dtype, False)
    x, w, f = _inputs(dtype)
    x.requires_grad_(True), w.requires_grad_(True)
    out = resample_cpu.conv2d_resample_cpu(x, w, f, up=2, padding=1)
    gx, gw = torch.autograd.grad(out.float().square().sum(), [x, w])
    assert gx.dtype == gw.dtype == dtype
    x32, w32 = x.detach().float().requires_grad_(True), w.detach().float().requires_grad_(True)
    out32 = resample_cpu.conv2d_resample_cpu(x32, w32, f, up=2, padding=1)
    gx32, gw32 = torch.autograd.grad(out32.to(dtype).float().square().sum(), [x32, w32])
    assert torch.equal(gx, gx32.to(dtype)) and torch.equal(gw, gw32.to(dtype))


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_cpus_with_half_kernels_keep_them(cpu_has_half_kernels, monkeypatch, dtype):
    cpu_has_half_kernels(dtype, True)
    seen = []
    conv2d = F.conv2d

    def spy(inp, *args, **kwargs):
        seen.append(inp.dtype)
        return conv2d(inp, *args, **kwargs)

    monkeypatch.setattr(F, "conv2d", spy)
    x, w, f = _inputs(dtype)
    out = resample_cpu.conv2d_resample_cpu(x, w, f, down=2, padding=1)
    assert out.dtype == dtype
    assert seen and set(seen) == {dtype}, seen


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2)])
def test_autocast_convs_are_widened_with_autocasts_rounding(
    cpu_has_half_kernels, monkeypatch, dtype, up, down
):
    """Under CPU autocast (bf16 training) the operands are rounded to the autocast dtype as
    autocast would, the convolutions run in fp32 and the result comes back in that dtype;
    gradients reach the fp32 tensors."""
    cpu_has_half_kernels(dtype, False)
    seen = []
    conv2d = F.conv2d

    def spy(inp, *args, **kwargs):
        seen.append((inp.dtype, torch.is_autocast_enabled("cpu")))
        return conv2d(inp, *args, **kwargs)

    monkeypatch.setattr(F, "conv2d", spy)
    x, w, f = _inputs(torch.float32)
    x.requires_grad_(True), w.requires_grad_(True)
    args = dict(up=up, down=down, padding=1)
    with torch.autocast("cpu", dtype=dtype):
        out = resample_cpu.conv2d_resample_cpu(x, w, f, **args)
    assert out.dtype == dtype
    assert seen and set(seen) == {(torch.float32, False)}, seen  # fp32, autocast off
    rounded = [t.detach().to(dtype).float() for t in (x, w)]
    assert torch.equal(out, resample_cpu.conv2d_resample_cpu(*rounded, f, **args).to(dtype))
    gx, gw = torch.autograd.grad(out.float().square().sum(), [x, w])
    assert gx.dtype == gw.dtype == torch.float32 and gx.abs().sum() > 0 and gw.abs().sum() > 0
    with torch.autocast("cpu", dtype=dtype):
        fir = resample_cpu.upfirdn2d_cpu(x, f, down=2, padding=1)
    assert fir.dtype == dtype
    expected = resample_cpu.upfirdn2d_cpu(rounded[0], f, down=2, padding=1).to(dtype)
    assert torch.equal(fir, expected)


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_autocast_keeps_its_own_kernels_where_the_cpu_has_them(cpu_has_half_kernels, dtype):
    cpu_has_half_kernels(dtype, True)
    with torch.autocast("cpu", dtype=dtype):
        assert resample_cpu._autocast_widened_dtype() is None
    cpu_has_half_kernels(dtype, False)
    with torch.autocast("cpu", dtype=dtype):
        assert resample_cpu._autocast_widened_dtype() == dtype
    assert resample_cpu._autocast_widened_dtype() is None  # no autocast, nothing to widen
