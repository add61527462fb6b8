"""On a GPU, the fp32 references the op tests compare with run in IEEE fp32: conftest's
session fixture turns cuDNN's and cuBLAS's TF32 off (a TF32 conv would be ~1e-3 off, IEEE
~1e-6), so the reference is never the inexact side of a parity test."""

from __future__ import annotations

import pytest
import torch

from ..helpers.asserts import assert_close_verbose


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
