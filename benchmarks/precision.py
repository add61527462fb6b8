"""Half precision vs fp32, and the floor any half-precision run of the network has.

    python benchmarks/precision.py                           # CPU: bf16 and fp16, 256 (both layouts) and 512
    python benchmarks/precision.py --dtypes bfloat16 --seeds 1,2,3,4

The cases are the precision tests' (tests/model/test_precision.py): the shared test images, a
random-weight generator per configuration, the fp32 'reference' backend as ground truth.
For each half dtype it reports the relative RMS error of the unclamped output and the PSNR
after clamping to [-1, 1] (the issue's bar: <= 1e-2 and >= 40 dB), for

* ``model``: the model cast to the dtype (style path in fp32, see StyleCanStayFp32), run
  by ``--backend``;
* ``floor``: fp32 everywhere except the operands of the convolutions and linear layers
  (inputs and weights rounded to the dtype): the rounding a tensor-core run cannot avoid.
  The attention's own matrix products are left exact, so this is a lower bound.

If the floor misses the bar, no implementation that multiplies in that dtype can meet it
on that network. Output: a table and ``<out>/precision_<device>.json``
(benchmarks/results_io.py's schema), both written row by row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mat_fast  # noqa: E402
from benchmarks.results_io import ResultsFile  # noqa: E402
from mat_fast.inpaint import random_generator  # noqa: E402
from mat_fast.model.layers import (
    Conv2dLayer,
    Conv2dLayerPartial,
    FullyConnectedLayer,
    ModulatedConv2d,
)  # noqa: E402
from mat_fast.model.transformer import WindowAttention  # noqa: E402
from tests.helpers.paths import TEST_SETS  # noqa: E402  (../shared, or $MAT_FAST_SHARED)
from tests.model.test_precision import (
    CONFIGS,
    PSNR_MIN,
    REL_RMS_MAX,
    errors,
    load_test_set,
    run_generator,
)  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
GEMM_LAYERS = (
    Conv2dLayer,
    Conv2dLayerPartial,
    FullyConnectedLayer,
    ModulatedConv2d,
    WindowAttention,
)


def with_operands_rounded(G: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """G (fp32, modified in place) with every conv/linear layer outside the style path
    rounding its input and weight to ``dtype``; everything else stays fp32."""
    style = [name for name, m in G.named_modules() if getattr(m, "keep_fp32", False)]

    def round_input(module, args):
        return (args[0].to(dtype).float(),) + tuple(args[1:])

    with torch.no_grad():
        for name, m in G.named_modules():
            if not isinstance(m, GEMM_LAYERS) or any(
                name == s or name.startswith(s + ".") for s in style
            ):
                continue
            if isinstance(getattr(m, "weight", None), torch.Tensor):
                m.weight.copy_(m.weight.to(dtype).float())
            m.register_forward_pre_hook(round_input)
    return G


def measure(
    test_sets: Path,
    resolution: int,
    use_noise: bool,
    seed: int,
    dtype_names: List[str],
    device: torch.device,
    backend: str,
) -> List[dict]:
    """One row per dtype for one configuration and generator seed."""
    name = CONFIGS[resolution][0]
    images, masks = (t.to(device) for t in load_test_set(test_sets, name, resolution))
    z = torch.randn(len(images), 512, generator=torch.Generator().manual_seed(seed)).to(device)

    def make():
        return random_generator(seed=seed, resolution=resolution, use_noise=use_noise).to(device)

    ref = run_generator(make(), images, masks, z, "reference")
    rows = []
    for dtype_name in dtype_names:
        dtype = DTYPES[dtype_name]
        half_images, half_masks = images, masks
        if (
            device.type == "cpu" and dtype == torch.float16
        ):  # oneDNN's fp16 convs need channels_last
            half_images, half_masks = (
                t.contiguous(memory_format=torch.channels_last) for t in (images, masks)
            )
        model = run_generator(
            make().to(dtype), half_images, half_masks, z, backend, check_finite=True
        )
        floor = run_generator(with_operands_rounded(make(), dtype), images, masks, z, "reference")
        (rel, psnr), (floor_rel, floor_psnr) = errors(model, ref), errors(floor, ref)
        rows.append(
            dict(
                resolution=resolution,
                layout="noise" if use_noise else "no-noise",
                seed=seed,
                dtype=dtype_name,
                backend=backend,
                rel_rms=rel,
                psnr_db=psnr,
                floor_rel_rms=floor_rel,
                floor_psnr_db=floor_psnr,
                meets_bar=rel <= REL_RMS_MAX and psnr >= PSNR_MIN,
                floor_meets_bar=floor_rel <= REL_RMS_MAX and floor_psnr >= PSNR_MIN,
            )
        )
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backend", help="backend of the half-precision model (default: 'auto')")
    parser.add_argument(
        "--dtypes", default="bfloat16,float16", help="comma list of bfloat16,float16"
    )
    parser.add_argument(
        "--configs",
        default="256,256-no-noise,512",
        help="comma list of 256, 256-no-noise, 512, 512-no-noise",
    )
    parser.add_argument(
        "--seeds", help="comma list of generator seeds (default: the tests' seed per size)"
    )
    parser.add_argument("--test-sets", default=str(TEST_SETS), help="upstream's test_sets folder")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    test_sets = Path(args.test_sets)
    if not test_sets.is_dir():
        parser.error(
            f"no test images at {test_sets}: pass --test-sets PATH (upstream's test_sets folder)"
        )
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    backend = args.backend or mat_fast.backend.resolve(device)
    results = ResultsFile(
        Path(args.out) / f"precision_{device.type}.json",
        "precision",
        device,
        backend=backend,
        bar=dict(rel_rms_max=REL_RMS_MAX, psnr_min_db=PSNR_MIN),
    )
    print(
        f"device: {results.meta['device']}; half-precision backend: {backend}; "
        f"bar: rel RMS <= {REL_RMS_MAX:g}, PSNR >= {PSNR_MIN:g} dB"
    )
    print(
        f"{'config':>14} {'seed':>4} {'dtype':>9} | {'rel RMS':>9} {'PSNR':>7} | "
        f"{'floor rel':>9} {'PSNR':>7}",
        flush=True,
    )
    with results:
        for config in args.configs.split(","):
            resolution, use_noise = int(config.split("-")[0]), not config.endswith("no-noise")
            seeds = (
                [int(s) for s in args.seeds.split(",")] if args.seeds else [CONFIGS[resolution][1]]
            )
            for seed in seeds:
                for r in measure(
                    test_sets, resolution, use_noise, seed, args.dtypes.split(","), device, backend
                ):
                    results.add(r)
                    print(
                        f"{config:>14} {seed:>4} {r['dtype']:>9} | {r['rel_rms']:9.2e} "
                        f"{r['psnr_db']:6.1f}{' ' if r['meets_bar'] else '*'}| "
                        f"{r['floor_rel_rms']:9.2e} {r['floor_psnr_db']:6.1f}"
                        f"{' ' if r['floor_meets_bar'] else '*'}",
                        flush=True,
                    )
    print("(* misses the bar)")
    print(f"wrote {results.path}")
    return 130 if results.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
