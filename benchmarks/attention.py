"""Benchmark MAT's windowed contextual attention at every transformer stage shape.

    python benchmarks/attention.py              # all stage shapes, 512 and 1024 input, batch 1 and 8
    python benchmarks/attention.py --quick      # 512 input, batch 1: a smoke run
    python benchmarks/attention.py --device cpu --dtype float32 --out /tmp/results

Stage grids for 512 input are 64x64 (w8), 32x32 (w16), 16x16 (w16, the grid is one window,
so shift 0 only), 32x32 (w16), 64x64 (w8); 1024 input doubles them. Blocks alternate shift
0 and w/2, so each distinct (grid, window, shift) is timed once, with and without a mask,
C = 180 in 6 heads.

Timed, per shape:

* ``eager``: upstream's op chain from the block input x: normalise, roll, partition, q/k/v
  projections per window (upstream projects after partitioning), logits, shift-region and
  mask biases, softmax, @ v, reverse, roll back, mask update. It is the baseline.
* ``proj``: normalise + the three q/k/v projections on whole token tensors, which every
  fused path needs in front of it (shown so ``speedup`` compares the same work).
* every backend that ``mat_fast.available_backends(device)`` reports (``reference``,
  ``cpu``, ``triton`` ...), on projected q, k, v;
* ``<backend>+qkv``: the same backend from x (``window_attention_qkv``: normalisation and
  projections included; Triton fuses them into one GEMM + the kernel, others compose);
* ``sdpa``: partition + ``F.scaled_dot_product_attention`` with an additive mask
  (head_dim padded to 32) + reverse;
* ``flex`` (opt-in, ``--flex``: one compile per shape): the same with FlexAttention and a
  score_mod (compiled), where it runs.

``speedup`` = eager / (proj + op), or eager / op for the ``+qkv`` rows. Times are median with p20 / p80, from
``triton.testing.do_bench`` on GPU (after a warm-up call that also JIT-compiles), or a
timer loop after warm-up on CPU. ``GB/s`` counts the op's compulsory traffic (read q, k, v
and the mask once, write out and the new mask once); ``% peak`` compares it with the
device's DRAM bandwidth from a small table (GPU only). Output: a table on stdout and
``<out>/attention_<device>.json`` (benchmarks/results_io.py's schema: meta with device,
versions, commit, command, times and skipped items with reasons; one row per measurement),
both written row by row as measured, so a run cut short keeps what it measured; then a PNG
bar chart drawn with PIL. An implementation that fails at one shape is recorded as skipped
(with the error) and not tried again.

Sample: ``benchmarks/results/attention_cpu.{json,png}`` (--quick, fp32, 2 CPU cores shared
with other jobs, so p20..p80 spans are wide; the Triton rows need a GPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mat_fast  # noqa: E402
from benchmarks.common import (
    add_malloc_option,
    apply_malloc,
    device_name,
    time_group,
)
from benchmarks.results_io import ResultsFile, draw
from mat_fast.ops.window_attention import window_attention, window_attention_qkv  # noqa: E402
from mat_fast.ops.window_attention.reference import (
    shift_region_mask,
    window_attention_reference,  # noqa: E402
    window_partition,
    window_reverse,
)

C, HEADS = 180, 6
# DRAM bandwidth in TB/s by substring of torch.cuda.get_device_name(), most specific first.
PEAK_TBPS = [
    ("H200", 4.8),
    ("H100 PCIe", 2.0),
    ("H100", 3.35),
    ("A100-SXM4-80GB", 2.04),
    ("A100 80GB PCIe", 1.94),
    ("A100", 1.56),
    ("L40S", 0.864),
    ("L4", 0.3),
    ("A10G", 0.6),
    ("RTX 4090", 1.008),
    ("RTX 3090", 0.936),
    ("V100", 0.9),
    ("T4", 0.32),
]


# ----------------------------------------------------------------------------------------
# Shapes


def stage_shapes(resolution: int) -> List[dict]:
    """Distinct (grid, window, shift) of the five transformer stages for one input size."""
    base = resolution // 8  # 64 for 512 input
    shapes = []
    for grid, window in ((base, 8), (base // 2, 16), (base // 4, 16)):
        window = min(window, grid)
        for shift in (0,) if grid <= window else (0, window // 2):
            shapes.append(dict(resolution=resolution, H=grid, W=grid, window=window, shift=shift))
    return shapes


# ----------------------------------------------------------------------------------------
# Implementations


def upstream_eager(x, wq, wk, wv, mask, H, W, window, shift, region):
    """Upstream MAT's SwinTransformerBlock + WindowAttention chain (minus the output projection)."""
    B, L, Cx = x.shape
    N, d = window * window, Cx // HEADS
    x = x.view(B, H, W, Cx)
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    xw = window_partition(x, window)  # (B_, N, C)
    mask_windows = None
    if mask is not None:
        m = mask.view(B, H, W, 1)
        if shift:
            m = torch.roll(m, shifts=(-shift, -shift), dims=(1, 2))
        mask_windows = window_partition(m, window)
    B_ = xw.shape[0]
    norm_x = F.normalize(xw, p=2.0, dim=-1)
    q = F.linear(norm_x, wq).reshape(B_, N, HEADS, d).permute(0, 2, 1, 3)
    k = F.linear(norm_x, wk).view(B_, -1, HEADS, d).permute(0, 2, 3, 1)
    v = F.linear(xw, wv).view(B_, -1, HEADS, d).permute(0, 2, 1, 3)
    attn = (q @ k) * d**-0.5
    if region is not None:
        nW = region.shape[0]
        attn = attn.view(B_ // nW, nW, HEADS, N, N) + region.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, HEADS, N, N)
    if mask_windows is not None:
        bias = mask_windows.squeeze(-1).unsqueeze(1).unsqueeze(1)
        attn = attn + bias.masked_fill(bias == 0, -100.0).masked_fill(bias == 1, 0.0)
        with torch.no_grad():
            mask_windows = torch.clamp(torch.sum(mask_windows, dim=1, keepdim=True), 0, 1).repeat(
                1, N, 1
            )
    attn = attn.softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(B_, N, Cx)
    out = window_reverse(out, window, H, W)
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    if mask_windows is not None:
        mask_windows = window_reverse(mask_windows, window, H, W)
        if shift:
            mask_windows = torch.roll(mask_windows, shifts=(shift, shift), dims=(1, 2))
        mask_windows = mask_windows.reshape(B, L, 1)
    return out.reshape(B, L, Cx), mask_windows


def projections(x, wq, wk, wv):
    norm_x = F.normalize(x, p=2.0, dim=-1)
    return F.linear(norm_x, wq), F.linear(norm_x, wk), F.linear(x, wv)


def _windows_and_bias(q, k, v, mask, H, W, window, shift, region, pad_to=32):
    """Rolled, partitioned (B*nW, heads, N, pad_to) q, k, v and the key-bias pieces."""
    B, L, Cx = q.shape
    N, d = window * window, Cx // HEADS

    def part(t, ch):
        t = t.view(B, H, W, ch)
        if shift:
            t = torch.roll(t, shifts=(-shift, -shift), dims=(1, 2))
        return window_partition(t, window)

    def heads(t):
        t = part(t, Cx).view(-1, N, HEADS, d).transpose(1, 2)
        return F.pad(t, (0, pad_to - d))

    mw = part(mask, 1).squeeze(-1) if mask is not None else None  # (B_, N)
    key_bias = None
    if mw is not None:
        key_bias = mw.masked_fill(mw == 0, -100.0).masked_fill(mw == 1, 0.0)
    return heads(q), heads(k), heads(v), mw, key_bias


def _finish(o, mw, B, H, W, window, shift, d):
    B_, h, N, _ = o.shape
    o = o[..., :d].transpose(1, 2).reshape(B_, N, h * d)

    def unpart(t):
        t = window_reverse(t, window, H, W)
        if shift:
            t = torch.roll(t, shifts=(shift, shift), dims=(1, 2))
        return t.reshape(B, H * W, t.shape[-1])

    new_mask = None
    if mw is not None:
        new_mask = unpart(mw.sum(1, keepdim=True).clamp(0, 1).expand(-1, N).unsqueeze(-1))
    return unpart(o), new_mask


def sdpa_op(q, k, v, mask, H, W, window, shift, region):
    B, L, Cx = q.shape
    d = Cx // HEADS
    qw, kw, vw, mw, key_bias = _windows_and_bias(q, k, v, mask, H, W, window, shift, region)
    B_, N = qw.shape[0], qw.shape[2]
    bias = torch.zeros(B_, 1, N, N, device=q.device, dtype=q.dtype)
    if region is not None:
        bias = bias + region.repeat(B, 1, 1).unsqueeze(1)
    if key_bias is not None:
        bias = bias + key_bias[:, None, None, :]
    o = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=bias, scale=d**-0.5)
    return _finish(o, mw, B, H, W, window, shift, d)


_FLEX = {}


def flex_op(q, k, v, mask, H, W, window, shift, region):
    from torch.nn.attention.flex_attention import flex_attention

    if "fn" not in _FLEX:
        import torch._dynamo.config as dynamo_config

        for knob in ("recompile_limit", "cache_size_limit"):  # one compile per stage shape
            if hasattr(dynamo_config, knob):
                setattr(dynamo_config, knob, 64)
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    B, L, Cx = q.shape
    d = Cx // HEADS
    qw, kw, vw, mw, key_bias = _windows_and_bias(q, k, v, mask, H, W, window, shift, region)
    N = window * window
    nW = (H // window) * (W // window)
    # shift-region label per (window, token) from rolled coordinates
    t = torch.arange(N, device=q.device)
    wi = torch.arange(nW, device=q.device)
    r = (wi // (W // window))[:, None] * window + t // window
    c = (wi % (W // window))[:, None] * window + t % window

    def band(x, n):
        return (
            ((x >= n - window).long() + (x >= n - shift).long()) if shift else torch.zeros_like(x)
        )

    labels = band(r, H) * 3 + band(c, W)  # (nW, N)
    kb = (
        key_bias
        if key_bias is not None
        else torch.zeros(qw.shape[0], N, device=q.device, dtype=q.dtype)
    )

    def score_mod(score, b, h, q_idx, kv_idx):
        w = b % nW
        same = labels[w, q_idx] == labels[w, kv_idx]
        return score + torch.where(same, 0.0, -100.0) + kb[b, kv_idx]

    o = _FLEX["fn"](qw, kw, vw, score_mod=score_mod, scale=d**-0.5)
    return _finish(o, mw, B, H, W, window, shift, d)


# ----------------------------------------------------------------------------------------
# Timing


def max_error(result, ref) -> float:
    """Largest |difference| of out and new mask against the reference op."""
    err = float((result[0].float() - ref[0].float()).abs().max())
    if ref[1] is not None:
        err = max(err, float((result[1].float() - ref[1].float()).abs().max()))
    return err


def op_bytes(B, L, dtype, mask_dtype) -> int:
    es = torch.empty(0, dtype=dtype).element_size()
    total = 4 * B * L * C * es  # q, k, v read, out written
    if mask_dtype is not None:
        total += 2 * B * L * torch.empty(0, dtype=mask_dtype).element_size()
    return total


def peak_tbps(name: str) -> Optional[float]:
    for key, tbps in PEAK_TBPS:
        if key.lower() in name.lower():
            return tbps
    return None


# ----------------------------------------------------------------------------------------
# Chart (PIL, so it exists wherever Pillow does)


# ----------------------------------------------------------------------------------------
# Main


def _int_list(text: str) -> List[int]:
    return [int(t) for t in text.split(",") if t]


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="512-input shapes, batch 1 (smoke run)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float16", "bfloat16", "float32"],
        help="default: float16 on GPU, float32 on CPU",
    )
    parser.add_argument("--resolutions", help="comma list of input sizes (default 512,1024)")
    parser.add_argument("--batches", help="comma list (default 1,8)")
    parser.add_argument(
        "--masks",
        default="nomask,mask",
        help="comma list of nomask,mask (MAT's blocks always have a mask)",
    )
    parser.add_argument(
        "--flex",
        action="store_true",
        help="also FlexAttention (torch.compile: one compile per shape, minutes on a GPU)",
    )
    parser.add_argument(
        "--interpreted-triton",
        action="store_true",
        help="time the triton backend on CPU too (Triton's interpreter: exercises the path "
        "in dry runs; the timings mean nothing)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument(
        "--budget",
        type=float,
        default=1.0,
        help="CPU seconds per implementation and shape (after warm-up)",
    )
    add_malloc_option(parser)
    return parser.parse_args(argv)


def _implementations(device, args, results):
    """(ops on projected q, k, v; '+qkv' ops from the block input x) that run here."""
    ops: Dict[str, Callable] = {}
    fused_ops: Dict[str, Callable] = {}
    for b, why in mat_fast.available_backends(device).items():
        if why is not None:
            results.skip(f"backend {b}", why)
            continue
        if b == "triton" and device.type == "cpu" and not args.interpreted_triton:
            results.skip(
                "backend triton",
                "runs on CPU only in Triton's interpreter; its timings mean nothing",
            )
            continue
        ops[b] = (
            lambda b: (
                lambda q, k, v, m, H, W, w, s, region: window_attention(
                    q, k, v, m, (H, W), w, s, HEADS, backend_name=b
                )
            )
        )(b)
        # the same backend from the block input: normalise + q/k/v projections + attention
        # (fused into one GEMM + the kernel where the backend has that fusion)
        fused_ops[f"{b}+qkv"] = (
            lambda b: (
                lambda x, w_qkv, m, H, W, w, s: window_attention_qkv(
                    x, w_qkv, None, m, (H, W), w, s, HEADS, backend_name=b
                )
            )
        )(b)
    ops["sdpa"] = sdpa_op
    if args.flex:
        ops["flex"] = flex_op
    else:
        results.skip("flex", "opt-in (--flex): one torch.compile per shape")
    return ops, fused_ops


def _try(results, impl, config, fn):
    """fn's result, or None after recording why ``impl`` failed (it is not tried again)."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - report and keep going
        results.skip(
            impl,
            f"failed at {config} (not tried on later shapes): "
            f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}",
        )
        return None


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    resolutions = _int_list(args.resolutions or ("512" if args.quick else "512,1024"))
    batches = _int_list(args.batches or ("1" if args.quick else "1,8"))
    mask_kinds = [m == "mask" for m in args.masks.split(",")]
    name = device_name(device)
    peak = peak_tbps(name) if device.type == "cuda" else None
    malloc = apply_malloc(device, args.malloc)
    slug = (
        "cpu"
        if device.type == "cpu"
        else "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")
    )
    results = ResultsFile(
        Path(args.out) / f"attention_{slug}.json",
        "attention",
        device,
        dtype=str(dtype).replace("torch.", ""),
        peak_tbps=peak,
        cpu_threads=torch.get_num_threads() if device.type == "cpu" else None,
        malloc=malloc,
        quick=args.quick,
        timer="triton.testing.do_bench" if device.type == "cuda" else "perf_counter loop",
        note=(
            "speedup_vs_eager = eager / (proj + op) for ops on projected q, k, v, and eager / op for "
            "'<backend>+qkv' rows (from x: normalisation and projections included); gbps (op rows) "
            "counts q, k, v, mask read + out, new mask written once"
        ),
    )
    with results:
        _measure(args, device, dtype, resolutions, batches, mask_kinds, peak, malloc, results)
    if device.type != "cuda":
        results.skip("% of peak bandwidth", "n/a on CPU (no DRAM peak table for CPUs)")
    print("\nskipped:")
    for what, why in results.skipped.items():
        print(f"  {what}: {why}")
    print(f"\nwrote {results.path}")
    if not results.interrupted and results.rows:
        try:
            print(f"wrote {draw(results.path)}")
        except ImportError:
            print("Pillow is missing, so no chart")
    return 130 if results.interrupted else 0


def _measure(args, device, dtype, resolutions, batches, mask_kinds, peak, malloc, results):
    ops, fused_ops = _implementations(device, args, results)
    torch.manual_seed(0)
    weights = [torch.randn(C, C, device=device, dtype=dtype) / C**0.5 for _ in range(3)]
    w_qkv = torch.cat(weights)
    print(
        f"device: {results.meta['device']} ({device}), dtype {results.meta['dtype']}, "
        f"torch {torch.__version__}, "
        f"threads {torch.get_num_threads() if device.type == 'cpu' else '-'}"
        + (f", malloc: {malloc}" if malloc else "")
    )
    header = (
        f"{'config':<34} {'impl':<14} {'median ms':>10} {'p20':>9} {'p80':>9} "
        f"{'speedup':>8} {'GB/s':>8} {'%peak':>6}"
    )
    print(header)
    print("-" * len(header), flush=True)
    for resolution in resolutions:
        for shape in stage_shapes(resolution):
            for B in batches:
                for with_mask in mask_kinds:
                    _measure_config(
                        shape, B, with_mask, device, dtype, weights, w_qkv, ops, fused_ops,
                        peak, args.budget, results,
                    )  # fmt: skip


def _measure_config(
    shape, B, with_mask, device, dtype, weights, w_qkv, ops, fused_ops, peak, budget, results
):
    resolution = shape["resolution"]
    H, W, window, shift = shape["H"], shape["W"], shape["window"], shape["shift"]
    region = shift_region_mask(H, W, window, shift, device, dtype) if shift else None
    L = H * W
    x = torch.randn(B, L, C, device=device, dtype=dtype)
    mask = None
    if with_mask:
        mask = (torch.rand(B, L, 1, device=device) > 0.3).to(dtype)
        mask.view(B, H, W)[:, : H // 2, : W // 2] = 0  # a hole spanning windows
    config = f"{resolution}in {H}x{W} w{window} s{shift} B{B} {'mask' if with_mask else 'nomask'}"
    base = dict(
        config=config,
        resolution=resolution,
        H=H,
        W=W,
        window=window,
        shift=shift,
        batch=B,
        mask=with_mask,
        dtype=str(dtype).replace("torch.", ""),
    )
    with torch.no_grad():
        q, k, v = projections(x, *weights)
        ref = window_attention_reference(q, k, v, mask, (H, W), window, shift, HEADS)
        errors = {
            "eager": max_error(upstream_eager(x, *weights, mask, H, W, window, shift, region), ref)
        }
        fns = {
            "eager": lambda: upstream_eager(x, *weights, mask, H, W, window, shift, region),
            "proj": lambda: projections(x, *weights),
        }
        for impl, fn in ops.items():
            if impl in results.skipped:
                continue
            result = _try(
                results, impl, config, lambda: fn(q, k, v, mask, H, W, window, shift, region)
            )
            if result is None:
                continue
            errors[impl] = max_error(result, ref)
            fns[impl] = (lambda fn: lambda: fn(q, k, v, mask, H, W, window, shift, region))(fn)
        for impl, fn in fused_ops.items():
            if impl in results.skipped:
                continue
            result = _try(results, impl, config, lambda: fn(x, w_qkv, mask, H, W, window, shift))
            if result is None:
                continue
            errors[impl] = max_error(result, ref)
            fns[impl] = (lambda fn: lambda: fn(x, w_qkv, mask, H, W, window, shift))(fn)
        # eager and proj first (the baselines), then one implementation at a time on GPU so
        # every row is written as soon as it is measured; CPU times them round-robin
        groups = [fns] if device.type == "cpu" else [{n: f} for n, f in fns.items()]
        timings = {}
        for group in groups:
            timings.update(time_group(group, device, budget))
            for impl in group:
                _emit(impl, timings, base, errors, fused_ops, B, L, dtype, with_mask, peak, results)


def _emit(impl, timings, base, errors, fused_ops, B, L, dtype, with_mask, peak, results):
    t = timings[impl]
    eager_ms = timings["eager"]["median_ms"]
    row = dict(base, impl=impl, **t)
    if impl in errors:
        row["max_abs_err_vs_reference"] = errors[impl]
    if impl == "eager":
        row["speedup_vs_eager"] = 1.0
    elif impl in fused_ops:  # from x: the same work as eager
        row["speedup_vs_eager"] = eager_ms / t["median_ms"]
    elif impl != "proj":
        row["speedup_vs_eager"] = eager_ms / (timings["proj"]["median_ms"] + t["median_ms"])
        nbytes = op_bytes(B, L, dtype, dtype if with_mask else None)
        row["gbps"] = nbytes / (t["median_ms"] * 1e-3) / 1e9
        if peak:
            row["pct_peak"] = 100 * row["gbps"] / (peak * 1e3)
    results.add(row)
    print(
        f"{base['config']:<34} {impl:<14} {t['median_ms']:>10.3f} {t['p20_ms']:>9.3f} "
        f"{t['p80_ms']:>9.3f} {row.get('speedup_vs_eager', float('nan')):>8.2f} "
        f"{row.get('gbps', float('nan')):>8.1f} {row.get('pct_peak', float('nan')):>6.1f}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
