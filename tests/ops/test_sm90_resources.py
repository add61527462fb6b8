"""What the sm_90 compile of the Triton kernels shows that no interpreter run can.

* The attention kernels fit sm_90's registers: no spills, in every configuration the
  launcher picks (fp32 'ieee' and 'tf32', fp16, bf16; MAT's windows 8 and 16, head_dim 30).
* Feature-map offsets are int64 where they can pass 2^31 at 4096x4096 input (partial conv's
  [C, P] tiles, bias_act's flat offsets), read from the kernels' Triton IR.

A spilled kernel still runs and gives the right numbers, so no parity test sees it; the
fp32 'ieee' kernels at the 4-warp 64-token tiles had 255 registers and up to 7.4 KB of stack
per thread (window-16 dk/dv backward). The tiles come from the launcher's own ``_config``,
so a retile is checked as it will run. Compiled for sm_90 without a GPU (tests/helpers/sm90_compile.py);
the stack frame is read from the cubin.

The attention kernels' tensor offsets stay int32 on purpose: they are offsets within one
image (token * C + channel < H * W / 64 * C, 47M at 4096 input), added to an int64 image
base; the native .cu kernels index in int64 throughout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ..helpers.sm90_compile import compile_for_sm90
from ..helpers.triton_interpreter import import_kernels

wat = import_kernels("mat_fast.ops.window_attention.triton")
pct = import_kernels("mat_fast.ops.partial_conv.triton")
bat = import_kernels("mat_fast.ops.bias_act.triton")

#: (dtype, DOT_PRECISION): fp32 runs 'ieee' (the default: no TF32) or 'tf32' (allow_tf32).
PRECISIONS = [("fp32", "ieee"), ("fp32", "tf32"), ("fp16", "ieee"), ("bf16", "ieee")]
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: MAT's stages: window 8 shifted (64x64 grid at 512), window 16 shifted and unshifted.
WINDOWS = [(8, 4), (16, 8), (16, 0)]
HEAD_DIM = 30

_BUILD_LOOP = r"""
import json
for case in json.loads(CASES):
    dtype, window, shift, precision = case["dtype"], case["window"], case["shift"], case["precision"]
    types = {n: "*fp32" for n in ("mask", "new_mask", "lse", "delta", "inv_norm")}
    types.update({n: f"*{dtype}" for n in ("q", "k", "v", "o", "do", "dq", "dk", "dv", "bias")}, scale="fp32")
    base = dict(HEAD_DIM=case["head_dim"], WINDOW=window, SHIFT=shift, HAS_MASK=True, DOT_PRECISION=precision)
    builds = []
    fwd, bwd = case["forward"], case["backward"]
    tiles = dict(BLOCK_M=fwd["BLOCK_M"], BLOCK_N=fwd["BLOCK_N"], BLOCK_D=fwd["BLOCK_D"])
    for packed in (False, True):
        builds.append((f"fwd{'+qkv' if packed else ''}", kernels.window_attention_fwd_kernel,
                       dict(base, **tiles, PACKED=packed, HAS_BIAS=packed), fwd["num_warps"]))
    tiles = dict(BLOCK_M=bwd["BLOCK_M"], BLOCK_N=bwd["BLOCK_N"], BLOCK_D=bwd["BLOCK_D"])
    one_tile = bwd["BLOCK_N"] >= window * window
    builds.append(("bwd_dkdv", kernels.window_attention_bwd_dkdv_kernel,
                   dict(base, **tiles, WITH_DQ=one_tile), bwd["num_warps"]))
    if not one_tile:
        builds.append(("bwd_dq", kernels.window_attention_bwd_dq_kernel, dict(base, **tiles),
                       bwd["num_warps"]))
    for name, fn, consts, warps in builds:
        used = resources(build(fn, types, consts, warps))
        print("RESOURCES", json.dumps(dict(case=case["id"], kernel=name, **used)))
"""


def _cases():
    cases = []
    for dtype, precision in PRECISIONS:
        for window, shift in WINDOWS:
            if (dtype, precision) != ("fp32", "ieee") and shift == 0:
                continue  # FMA-unit dots are the tight ones; elsewhere shift 0 adds nothing
            if dtype == "bf16" and window == 8:
                continue  # the same tensor-core tiles as fp16
            torch_dtype = TORCH_DTYPES[dtype]
            cases.append(
                dict(
                    id=f"{dtype}-{precision}-w{window}s{shift}",
                    dtype=dtype,
                    precision=precision,
                    window=window,
                    shift=shift,
                    head_dim=HEAD_DIM,
                    forward=wat._config(
                        window, HEAD_DIM, precision, torch_dtype, backward=False, interpreted=False
                    ),
                    backward=wat._config(
                        window, HEAD_DIM, precision, torch_dtype, backward=True, interpreted=False
                    ),
                )
            )
    return cases


def test_attention_kernels_do_not_spill_on_sm90():
    cases = _cases()
    loop = f"CASES = {json.dumps(json.dumps(cases))}\n" + _BUILD_LOOP
    printed = compile_for_sm90(Path(wat.__file__).with_name("triton_kernels.py"), loop)
    reports = [
        json.loads(line.split(" ", 1)[1])
        for line in printed.splitlines()
        if line.startswith("RESOURCES ")
    ]
    # every configuration compiled: 2 forwards + dk/dv (+ dq when a window spans tiles)
    assert len(reports) >= 3 * len(cases), printed
    assert {r["case"] for r in reports} == {c["id"] for c in cases}
    spilling = [r for r in reports if r["stack"] > 0 or r["local"] > 0]
    assert not spilling, "stack (register spills) on sm_90:\n" + "\n".join(map(str, spilling))
    # a block of one program must fit the SM's 228 KB of shared memory
    assert all(r["shared"] <= 228 * 1024 for r in reports), reports


# Pointer arithmetic in the Triton IR: "tt.addptr %p, %o : tensor<16x256x!tt.ptr<f16>>,
# tensor<16x256xi64>". A 2-D (feature-map tile) pointer offset by i32 is the overflow risk.
_OFFSETS_LOOP = r"""
import re
def int32_tile_offsets(compiled, min_rank):
    bad = []
    for line in compiled.asm["ttir"].splitlines():
        found = re.search(r"tt\.addptr .*: tensor<((?:\d+x)+)!tt\.ptr<\w+>>, tensor<[\dx]+i32>", line)
        if found and found.group(1).count("x") >= min_rank:
            bad.append(line.strip()[:160])
    return bad
types = {n: "*fp16" for n in ("x", "y", "dy", "dx", "bias")}
types.update({n: "*fp32" for n in ("mask", "update", "ratio")})
types.update({n: "fp32" for n in ("gain", "alpha", "clamp")})
act = dict(HAS_BIAS=True, HAS_CLAMP=False, BLOCK_C=16, BLOCK_P=256)
if KERNELS == "partial_conv":
    builds = [
        ("epilogue_fwd", kernels.partial_conv_epilogue_fwd_kernel, act, 2),
        ("epilogue_bwd", kernels.partial_conv_epilogue_bwd_kernel, act, 2),
        ("fused_fwd", kernels.partial_conv_fused_fwd_kernel,
         dict(act, K=3, STRIDE=1, PAD=1, ACC=tl.float32, C_SPLIT=2), 2),
    ]
else:
    types["n_elements"] = "i64"  # the launcher passes numel, which can pass 2^31
    flat = dict(ACT=1, HAS_BIAS=True, HAS_CLAMP=True, BLOCK=1024)
    builds = [("fwd", kernels.bias_act_fwd_kernel, flat, 1), ("bwd", kernels.bias_act_bwd_kernel, flat, 1)]
for name, fn, consts, rank in builds:
    compiled = build(fn, types, consts)
    print("KERNEL", name)
    for line in int32_tile_offsets(compiled, rank):
        print("INT32", name, line)
"""


@pytest.mark.parametrize("module", [pct, bat], ids=["partial_conv", "bias_act"])
def test_feature_map_offsets_are_int64(module):
    kind = "partial_conv" if module is pct else "bias_act"
    loop = f"KERNELS = {kind!r}\n" + _OFFSETS_LOOP
    printed = compile_for_sm90(Path(module.__file__).with_name("triton_kernels.py"), loop)
    assert printed.count("KERNEL ") >= 2, printed
    int32 = [line for line in printed.splitlines() if line.startswith("INT32 ")]
    assert not int32, "int32 offsets on feature-map pointers:\n" + "\n".join(int32)
