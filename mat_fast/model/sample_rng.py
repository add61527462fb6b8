"""Per-sample random draws for the generator's forward.

By default the forward draws its dropout maps and random noise from torch's global
generator, in upstream's order and shapes (so seeds reproduce upstream's numbers); a
sample's draws then depend on its place in the batch. Inside ``per_sample(generators)``
each sample of the batch draws from its own ``torch.Generator`` instead, so its draws
depend only on that generator's seed: the same whatever the batch, its order or the
process it runs in (what folder-mode inference needs for reproducible per-image results).
A forward compiled with ``torch.compile`` always draws upstream's way.
"""

from __future__ import annotations

import contextlib
import hashlib
from contextvars import ContextVar
from typing import Iterator, List, Optional, Sequence

import torch

__all__ = ["derive_seed", "half_map", "per_sample", "randn"]

_GENERATORS: ContextVar[Optional[List[torch.Generator]]] = ContextVar(
    "mat_fast_sample_generators", default=None
)


def derive_seed(*parts) -> int:
    """A seed in [0, 2**63) from ``parts`` (ints, strings): stable across processes,
    machines and Python versions (not ``hash()``, which is salted per process)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


@contextlib.contextmanager
def per_sample(generators: Sequence[torch.Generator]) -> Iterator[None]:
    """Draw sample i's random numbers from ``generators[i]`` inside this block."""
    token = _GENERATORS.set(list(generators))
    try:
        yield
    finally:
        _GENERATORS.reset(token)


def _generators(batch: int) -> Optional[List[torch.Generator]]:
    if torch.compiler.is_compiling():
        # Dynamo cannot trace a ContextVar, and a traced graph would not see which generators
        # a later call sets: a compiled forward draws upstream's way (torch's global RNG).
        return None
    generators = _GENERATORS.get()
    if generators is not None and len(generators) != batch:
        raise ValueError(f"{len(generators)} per-sample generators for a batch of {batch}")
    return generators


def randn(shape: Sequence[int], device) -> torch.Tensor:
    """Standard normal fp32 draws of ``shape`` (batch first)."""
    generators = _generators(shape[0])
    if generators is None:
        return torch.randn(list(shape), device=device)
    one = [1, *shape[1:]]
    return torch.cat([torch.randn(one, generator=g, device=device) for g in generators])


def half_map(shape: Sequence[int], device) -> Optional[torch.Tensor]:
    """A fp32 0/1 map of ``shape`` (batch first), each value 1 with probability 1/2, drawn
    per sample; None outside :func:`per_sample` (the caller draws upstream's way)."""
    generators = _generators(shape[0])
    if generators is None:
        return None
    one = [1, *shape[1:]]
    return torch.cat(
        [torch.empty(one, device=device).bernoulli_(0.5, generator=g) for g in generators]
    )
