"""Folder-mode inference throughput vs the bare generator, same shape, same process.

    python benchmarks/folder.py --device cpu --size 512 --count 8 --batch-size 1 --workers 2

Writes ``--count`` random SIZExSIZE images and masks (a large hole, as
``benchmarks/generator.py``'s inputs) to a temporary folder, then measures, alternately
and ``--rounds`` times each (load from other processes then hits both alike):

- ``generator``: the bare forward at (batch, 3, SIZE, SIZE), as ``benchmarks/generator.py``
  times it (inputs ready on the device, ``noise_mode='random'``), as images/s;
- ``folder``: :func:`mat_fast.folder_inference.run_folder` over the folder: decoding in
  ``--workers`` DataLoader processes, per-image seeds, padding, the forward, compositing
  and atomic PNG writes in writer threads, as images/s (wall time of the whole run).

The ratio folder/generator is what the folder pipeline costs on top of the network.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import apply_malloc  # noqa: E402
from benchmarks.generator import DTYPES, forward_fn, make_inputs  # noqa: E402
from benchmarks.results_io import ResultsFile  # noqa: E402
from mat_fast.folder_inference import FolderPair, run_folder  # noqa: E402
from mat_fast.inpaint import Inpainter, random_generator  # noqa: E402


def write_folder(root: Path, count: int, size: int) -> List[FolderPair]:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(), (root / "masks").mkdir()
    pairs = []
    for i in range(count):
        name = f"img{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            root / "images" / name
        )
        hole = np.zeros((size, size), np.uint8)
        hole[size // 4 : 3 * size // 4, size // 5 : 3 * size // 5] = 255
        Image.fromarray(hole).save(root / "masks" / name)
        pairs.append(FolderPair(str(root / "images" / name), str(root / "masks" / name), "", name))
    return pairs


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--count", type=int, default=8, help="images per folder run")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    malloc = apply_malloc(device, "keep")  # what the Inpainter does at this size
    G = random_generator(0, 512).to(device, dtype).eval()
    inpainter = Inpainter(G, device=device, dtype=dtype, batch_size=args.batch_size)
    forward = forward_fn(G, make_inputs(args.batch_size, args.size, device, dtype), "auto")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    generator_rates, folder_rates = [], []
    results = ResultsFile(
        Path(args.out) / f"folder_{device.type}.json", "folder", device, malloc=malloc,
        threads=torch.get_num_threads(), size=args.size, count=args.count,
        batch=args.batch_size, workers=args.workers, dtype=args.dtype,
    )  # fmt: skip
    with results, tempfile.TemporaryDirectory() as tmp:
        pairs = write_folder(Path(tmp), args.count, args.size)
        forward(), sync()  # warm-up: native kernels, allocator
        for round_ in range(args.rounds):
            calls = max(1, args.count // args.batch_size)
            start = time.perf_counter()
            for _ in range(calls):
                forward()
            sync()
            generator_rates.append(calls * args.batch_size / (time.perf_counter() - start))
            out = Path(tmp) / f"out{round_}"
            out.mkdir()
            todo = [FolderPair(p.image, p.mask, str(out / p.name), p.name) for p in pairs]
            start = time.perf_counter()
            summary = run_folder(
                inpainter,
                todo,
                seed=0,
                options={},
                batch_size=args.batch_size,
                workers=args.workers,
            )
            sync()
            folder_rates.append(summary.written / (time.perf_counter() - start))
            results.add(
                dict(
                    round=round_,
                    generator_images_per_s=generator_rates[-1],
                    folder_images_per_s=folder_rates[-1],
                    ratio=folder_rates[-1] / generator_rates[-1],
                )
            )
            print(
                f"round {round_}: generator {generator_rates[-1]:.3f} img/s, "
                f"folder {folder_rates[-1]:.3f} img/s",
                flush=True,
            )
        generator_ips = statistics.median(generator_rates)
        folder_ips = statistics.median(folder_rates)
        results.meta["ratio_of_medians"] = folder_ips / generator_ips
    print(
        f"{args.size}px B{args.batch_size} {args.dtype}, {args.workers} workers: generator "
        f"{generator_ips:.3f} img/s, folder {folder_ips:.3f} img/s "
        f"(folder/generator = {results.meta['ratio_of_medians']:.2f})"
    )
    print(f"wrote {results.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
