"""The double-backward rule that every kernel's autograd formula follows.

A fused kernel's backward is another kernel, which has no derivative of its own. Most
training differentiates once, but R1 regularisation takes the discriminator's input gradient
with ``create_graph=True`` and differentiates it again. Autograd runs a formula with grad
mode on exactly when its gradient is taken with ``create_graph=True``
(:func:`creating_graph`); the formula then returns :func:`reference_grads` instead: the
gradients of the op's reference twin, recomputed from the saved inputs, which carry their
own graph (a correct second derivative, at the twin's speed and memory for that backward).
Each op logs this once. Plain backward passes, and ``torch.compile``'s traced backward
(traced without ``create_graph``), keep the kernels.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence, Tuple

import torch

__all__ = ["creating_graph", "reference_grads"]

log = logging.getLogger("mat_fast")
_logged: set = set()


def creating_graph() -> bool:
    """Inside an autograd formula: whether its results must be differentiable themselves
    (the gradient is being taken with ``create_graph=True``)."""
    return torch.is_grad_enabled()


def reference_grads(
    op: str,
    twin: Callable,
    inputs: Sequence[Optional[torch.Tensor]],
    needs_grad: Sequence[bool],
    grad_outputs: Sequence[Optional[torch.Tensor]],
) -> Tuple[Optional[torch.Tensor], ...]:
    """The gradients of ``twin(*inputs)`` with a graph (``create_graph=True``): one entry
    per input, ``None`` where ``needs_grad`` is false.

    Args:
        op: the op's name, for the log line.
        twin: the reference composition; returns a tensor or a tuple whose leading
            outputs pair with ``grad_outputs``.
        inputs: the op's tensor inputs as saved for backward (still attached to the graph
            that made them) and any other arguments ``twin`` takes, in its order.
        needs_grad: per input, whether its gradient is wanted (``ctx.needs_input_grad``).
        grad_outputs: the incoming gradient of each differentiable output (None: none).
    """
    if op not in _logged:
        _logged.add(op)
        log.info(
            "mat_fast: %s has no second derivative of its own; gradients taken with "
            "create_graph=True run through its reference composition",
            op,
        )
    wanted = [
        i
        for i, (t, need) in enumerate(zip(inputs, needs_grad))
        if need and isinstance(t, torch.Tensor)
    ]
    result: list = [None] * len(inputs)
    if not wanted:
        return tuple(result)
    with torch.enable_grad():
        outputs = twin(*inputs)
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    pairs = [
        (out, grad)
        for out, grad in zip(outputs, grad_outputs)
        if grad is not None and out is not None and out.requires_grad
    ]
    grads = (None,) * len(wanted)
    if pairs:
        grads = torch.autograd.grad(
            [out for out, _ in pairs],
            [inputs[i] for i in wanted],
            [grad for _, grad in pairs],
            create_graph=True,
            allow_unused=True,
        )
    for i, grad in zip(wanted, grads):
        result[i] = grad if grad is not None else torch.zeros_like(inputs[i])
    return tuple(result)
