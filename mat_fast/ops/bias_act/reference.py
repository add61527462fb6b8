"""Bias + activation + gain + clamp in plain PyTorch (upstream semantics).

MAT uses leaky ReLU (slope 0.2) scaled by sqrt(2) so that activations keep unit variance
(He-style gain), and plain 'linear' (bias only) elsewhere.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

#: name -> (function(x, alpha), default alpha, default gain)
ACTIVATIONS = {
    "linear": (lambda x, alpha: x, 0.0, 1.0),
    "relu": (lambda x, alpha: F.relu(x), 0.0, math.sqrt(2)),
    "lrelu": (lambda x, alpha: F.leaky_relu(x, alpha), 0.2, math.sqrt(2)),
    "tanh": (lambda x, alpha: torch.tanh(x), 0.0, 1.0),
    "sigmoid": (lambda x, alpha: torch.sigmoid(x), 0.0, 1.0),
}


def default_gain(act: str) -> float:
    """The gain upstream applies by default after ``act`` (sqrt(2) for (l)relu)."""
    return _spec(act)[2]


def _spec(act: str):
    try:
        return ACTIVATIONS[act]
    except KeyError:
        raise ValueError(
            f"unknown activation {act!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None


def resolve_defaults(
    act: str, alpha: Optional[float], gain: Optional[float], clamp: Optional[float]
):
    """(alpha, gain, clamp) with the activation's defaults filled in; clamp None when off
    (None or negative)."""
    _, def_alpha, def_gain = _spec(act)
    alpha = float(def_alpha if alpha is None else alpha)
    gain = float(def_gain if gain is None else gain)
    return alpha, gain, (float(clamp) if clamp is not None and clamp >= 0 else None)


def bias_act_reference(
    x: torch.Tensor,
    b: Optional[torch.Tensor] = None,
    dim: int = 1,
    act: str = "linear",
    alpha: Optional[float] = None,
    gain: Optional[float] = None,
    clamp: Optional[float] = None,
) -> torch.Tensor:
    """``clamp(act(x + b, alpha) * gain, -clamp, clamp)``; ``b`` runs along ``dim`` of ``x``."""
    func = _spec(act)[0]
    alpha, gain, clamp = resolve_defaults(act, alpha, gain, clamp)
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x
