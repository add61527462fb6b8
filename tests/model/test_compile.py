"""torch.compile captures the whole generator in one graph, with each backend.

``fullgraph=True`` turns any graph break into an error, so these tests fail if an op's
dispatch, a kernel wrapper or the model does something Dynamo cannot trace. The backend is
resolved while tracing and baked into the graph (see :func:`mat_fast.backend.resolve`), so
Dynamo's caches are reset between backends.

On CPU the graph is compiled with ``aot_eager`` (Dynamo + AOTAutograd with fake tensors,
no code generation): it runs the same ATen ops as eager and checks every custom op's fake
implementation. Inductor is too slow on a 2-core CPU for the whole generator (11 minutes to
compile the 256 generator with the 'reference' backend), so it only runs on a GPU here,
with ``fallback_random`` so that its dropout map is eager's (inductor's own random numbers
differ from ATen's, which changes MAT's output).
"""

from __future__ import annotations

import pytest
import torch

import mat_fast
from mat_fast import backend

from ..helpers.asserts import assert_close_verbose


def _inputs(device, B=1, size=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(B, 3, size, size, generator=g) * 2 - 1
    masks = torch.ones(B, 1, size, size)
    masks[..., size // 4 : 3 * size // 4, size // 8 : size // 2] = 0
    z = torch.randn(B, 512, generator=g)
    return images.to(device), masks.to(device), z.to(device)


def compiled_vs_eager(G, backend_name, device, compile_backend, **compile_kwargs):
    reason = backend.available_backends(device)[backend_name]
    if reason is not None:
        pytest.skip(f"backend {backend_name!r} cannot run on {device}: {reason}")
    images, masks, z = _inputs(device)
    torch._dynamo.reset()
    try:
        with torch.no_grad(), mat_fast.use_backend(backend_name):
            compiled = torch.compile(G, fullgraph=True, backend=compile_backend, **compile_kwargs)
            torch.manual_seed(0)  # the generator draws a dropout map
            out = compiled(images, masks, z, None, noise_mode="const")
            torch.manual_seed(0)
            eager = G(images, masks, z, None, noise_mode="const")
    finally:
        torch._dynamo.reset()
    return out, eager


@pytest.mark.parametrize(
    "backend_name",
    [
        # Tracing the whole network takes minutes on 2 cores: the default run traces the
        # backend with custom ops (their fakes are what can break a graph); the reference
        # (plain torch ops) is traced with the slow tests.
        pytest.param("reference", marks=pytest.mark.slow),
        pytest.param("cpu", marks=pytest.mark.slow),  # a whole-network compile: ~25 s
    ],
)
def test_generator_compiles_in_one_graph_and_matches_eager_cpu(generator_128, backend_name):
    out, eager = compiled_vs_eager(generator_128, backend_name, "cpu", "aot_eager")
    assert_close_verbose(out, eager, rtol=1e-5, what=f"compiled vs eager ({backend_name})")


@pytest.mark.gpu
@pytest.mark.parametrize("backend_name", ["reference", "triton", "cuda"])
def test_generator_compiles_with_inductor_and_matches_eager_gpu(backend_name):
    import torch._inductor.config as inductor_config

    from mat_fast.inpaint import random_generator

    G = random_generator(seed=3, resolution=128).cuda()
    # inductor draws random numbers its own way unless told to call ATen's: the dropout map
    with inductor_config.patch(fallback_random=True):
        out, eager = compiled_vs_eager(G, backend_name, "cuda", "inductor")
    # inductor fuses and reorders fp32 arithmetic: close, not bit-equal
    assert_close_verbose(out, eager, rtol=1e-3, what=f"inductor vs eager ({backend_name})")
