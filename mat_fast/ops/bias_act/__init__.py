"""Fused bias + activation: public entry point and dispatch."""

from __future__ import annotations

from typing import Optional

import torch

from ... import backend
from .reference import ACTIVATIONS, bias_act_reference, default_gain

backend.register("bias_act", "reference", bias_act_reference)
backend.register_lazy("bias_act", "cpu", "mat_fast.ops.bias_act.cpu:bias_act_cpu")
backend.register_lazy("bias_act", "triton", "mat_fast.ops.bias_act.triton:bias_act_triton")
# inplace=True: implementations that may overwrite x (the reference never does).
backend.register("bias_act_inplace", "reference", bias_act_reference)
backend.register_lazy("bias_act_inplace", "cpu", "mat_fast.ops.bias_act.cpu:bias_act_cpu_")
# (one Triton pass writes a new tensor: as cheap as in place on a GPU)
backend.register_lazy("bias_act_inplace", "triton", "mat_fast.ops.bias_act.triton:bias_act_triton")


def bias_act(
    x: torch.Tensor,
    b: Optional[torch.Tensor] = None,
    dim: int = 1,
    act: str = "linear",
    alpha: Optional[float] = None,
    gain: Optional[float] = None,
    clamp: Optional[float] = None,
    *,
    inplace: bool = False,
    backend_name: Optional[str] = None,
) -> torch.Tensor:
    """``clamp(act(x + b) * gain)``. ``b`` (1-D, length ``x.shape[dim]``) may be None;
    ``gain`` defaults to the activation's (sqrt(2) for lrelu); ``clamp`` None = off.

    ``inplace=True`` lets the implementation write the result into ``x`` (pass it only for
    a temporary nobody reads again, e.g. a fresh convolution output); use the returned
    tensor either way, since the reference and autograd-tracked inputs never are overwritten.
    """
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; choose one of {sorted(ACTIVATIONS)}")
    if b is not None and (b.ndim != 1 or b.shape[0] != x.shape[dim]):
        raise ValueError(
            f"bias of shape {tuple(b.shape)} does not fit dim {dim} of {tuple(x.shape)}"
        )
    op = "bias_act_inplace" if inplace else "bias_act"
    fn = backend.implementation(op, x.device, backend_name)
    return fn(x, b, dim, act, alpha, gain, clamp)


__all__ = ["bias_act", "bias_act_reference", "default_gain", "ACTIVATIONS"]
