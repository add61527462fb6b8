#!/usr/bin/env python
"""Record golden outputs of upstream MAT for ``tests/test_upstream_parity.py``.

What it records
---------------
For every case, one file ``<out>/<case>.pt`` written with ``torch.save`` holding a plain
dict of tensors and Python scalars/strings/lists/tuples (never a pickled upstream object,
so ``torch.load(..., weights_only=True)`` reads it and no upstream code is embedded):

* ``kind``/``module``/``kwargs`` - which upstream class was built and with what constructor
  arguments (our classes share the names and arguments); ``submodules`` for modules that
  are built first and passed in (``BasicLayer(downsample=PatchMerging(...))``);
* ``weight_seed`` - ``torch.manual_seed(weight_seed)`` right before the constructor(s);
* ``state_checksums`` - per state-dict key: shape, float64 sum and float64 sum of |.| of the
  freshly drawn weights (tells "different initial draws" apart from "different maths");
* ``state_overrides_seed``/``state_overrides_checksums`` - values loaded over the fresh
  weights before the forward: every bias, ``noise_strength`` and ``w_avg`` gets a seeded
  random value (``make_overrides``: one ``torch.Generator`` walking the sorted state-dict
  keys), because upstream initialises them to constants (0, 1) under which the bias paths,
  the noise (and the order of its random draws) and truncation would go untested. Only the
  seed and per-key checksums are stored; the test redraws them;
* ``inputs`` - small inputs, stored. Floating inputs are drawn fp16-exact and stored as
  float16 (half the bytes, no loss); the test casts them back to float32;
* ``regen_inputs`` - large inputs, not stored but regenerated from a spec:
  ``{"dist": "randn"|"rand_pm1", "seed", "shape"}`` -> ``torch.randn(shape,
  generator=torch.Generator().manual_seed(seed))`` (``rand_pm1``: ``2 * torch.rand(...) - 1``),
  or ``{"dist": "rect_holes", "shape", "rects"[, "cells", "cell"]}``: ones with zeroed
  ``[y0, y1, x0, x1)`` rectangles per sample and, optionally, zeroed ``cell`` x ``cell``
  blocks where the stored uint8 grid ``cells`` is 1 (no RNG). ``input_checksums`` holds the
  float64 sum and sum of |.| of every input, so that a change in torch's CPU RNG is reported
  as such by the test instead of as a confusing output mismatch;
* ``call`` - the non-tensor forward arguments; ``forward_seed`` - ``torch.manual_seed`` right
  before the forward (upstream draws dropout maps and noise from the global RNG);
* ``outputs`` - float32 outputs; ``output_strides[name]`` (if present) gives the per-dim step
  with which a large output was subsampled (``out[::s0, ::s1, ...]``);
  ``output_holes_only[name]`` (generator images) means only the values at hole pixels
  (``masks_in == 0``, after the same subsampling) are stored, flattened in (B, C, H, W)
  order: at known pixels upstream returns ``images_in`` exactly, which the test checks;
  ``output_checksums[name]`` = (float64 sum, float64 sum of |.|) of the full output;
* ``meta`` - torch version, sha256 of the upstream sources used, generation date.

All modules run in eval mode (except the MappingNet case that tests the training-time
``w_avg`` update) under ``torch.no_grad()``, float32, CPU.

How to regenerate
-----------------
    python tools/make_golden.py --upstream /path/to/MAT --out tests/golden

``--upstream`` is a checkout of https://github.com/fenglinglwb/MAT (CC BY-NC; it is only
imported, nothing of it is copied). If ``timm`` is not installed, a three-name placeholder
(``to_2tuple``, ``DropPath``, ``trunc_normal_``; none is used by inference) is written to a
temporary directory so upstream imports. ``--only SUBSTRING`` regenerates a subset. The whole
run takes a few minutes on a laptop CPU (the 1024x1024 generator forward dominates).
Regenerating on another machine/torch version should reproduce the files up to float
rounding (the tests' tolerance is 1e-4 relative).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import math
import os
import sys
import tempfile
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tests.helpers.golden_recipes import (  # noqa: E402
    FORMAT,
    checksum,
    fp16_exact,
    make_overrides,
    regen,
    subsample,
)

_ONLY = None  # --only: build and run only the cases whose name contains this


def _skip(name: str) -> bool:
    return bool(_ONLY) and _ONLY not in name


# ----------------------------------------------------------------------------------------
# Importing upstream.

_TIMM_STUB = '''\
"""Placeholder for the three timm names MAT imports (unused at inference)."""
import torch.nn as nn


def to_2tuple(x):
    return tuple(x) if isinstance(x, (list, tuple)) else (x, x)


class DropPath(nn.Identity):
    def __init__(self, *args, **kwargs):
        super().__init__()


def trunc_normal_(tensor, *args, **kwargs):
    raise RuntimeError("timm placeholder: trunc_normal_ is not available")
'''


def import_upstream(path: str) -> SimpleNamespace:
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "networks", "mat.py")):
        raise SystemExit(f"{path} does not look like a MAT checkout (no networks/mat.py)")
    try:
        importlib.import_module("timm.models.layers")
    except ImportError:
        stub_root = tempfile.mkdtemp(prefix="mat_golden_timm_")
        os.makedirs(os.path.join(stub_root, "timm", "models"))
        for rel, text in (
            ("timm/__init__.py", ""),
            ("timm/models/__init__.py", ""),
            ("timm/models/layers.py", _TIMM_STUB),
        ):
            with open(os.path.join(stub_root, rel), "w") as fh:
                fh.write(text)
        sys.path.insert(0, stub_root)
    sys.path.insert(0, path)
    mat = importlib.import_module("networks.mat")
    bm = importlib.import_module("networks.basic_module")
    ops = SimpleNamespace(
        upfirdn2d=importlib.import_module("torch_utils.ops.upfirdn2d"),
        conv2d_resample=importlib.import_module("torch_utils.ops.conv2d_resample"),
        bias_act=importlib.import_module("torch_utils.ops.bias_act"),
    )
    classes = {
        "FullyConnectedLayer": bm.FullyConnectedLayer,
        "Conv2dLayer": bm.Conv2dLayer,
        "ModulatedConv2d": bm.ModulatedConv2d,
        "StyleConv": bm.StyleConv,
        "ToRGB": bm.ToRGB,
        "MappingNet": bm.MappingNet,
        "Conv2dLayerPartial": mat.Conv2dLayerPartial,
        "SwinTransformerBlock": mat.SwinTransformerBlock,
        "BasicLayer": mat.BasicLayer,
        "PatchMerging": mat.PatchMerging,
        "PatchUpsampling": mat.PatchUpsampling,
        "Generator": mat.Generator,
        "Discriminator": mat.Discriminator,
    }
    digest = hashlib.sha256()
    for rel in (
        "networks/mat.py",
        "networks/basic_module.py",
        "torch_utils/ops/upfirdn2d.py",
        "torch_utils/ops/conv2d_resample.py",
        "torch_utils/ops/bias_act.py",
    ):
        with open(os.path.join(path, rel), "rb") as fh:
            digest.update(fh.read())
    return SimpleNamespace(classes=classes, ops=ops, sha256=digest.hexdigest())


# ----------------------------------------------------------------------------------------
# Inputs.


class Inputs:
    """Collects a case's inputs: stored (fp16-exact, saved as float16) or regenerated."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)
        self.stored, self.regen, self.values = {}, {}, {}

    def randn(self, name, shape, scale=1.0):
        t = fp16_exact(torch.randn(shape, generator=self.gen) * scale)
        return self.store(name, t)

    def rand_pm1(self, name, shape):
        return self.store(name, fp16_exact(torch.rand(shape, generator=self.gen) * 2 - 1))

    def store(self, name, t):
        if t is None:
            self.values[name] = None
            self.stored[name] = None
            return None
        if t.is_floating_point():
            assert torch.equal(t.half().float(), t), f"{name} is not fp16-exact"
            self.stored[name] = t.half()
        else:
            self.stored[name] = t
        self.values[name] = t
        return t

    def regenerate(self, name, spec):
        t = regen(spec)
        self.regen[name] = spec
        self.values[name] = t
        return t

    def record(self):
        sums = {k: checksum(v) for k, v in self.values.items() if v is not None}
        return dict(inputs=self.stored, regen_inputs=self.regen, input_checksums=sums)


# ----------------------------------------------------------------------------------------
# Building upstream modules.


def build(U, module: str, kwargs: dict, weight_seed: int, submodules=None):
    torch.manual_seed(weight_seed)
    kwargs = dict(kwargs)
    for arg, sub in (submodules or {}).items():  # built first, as upstream's FirstStage does
        kwargs[arg] = U.classes[sub["module"]](**sub["kwargs"])
    return U.classes[module](**kwargs)


def state_checksums(m) -> dict:
    return {k: (list(v.shape),) + checksum(v) for k, v in m.state_dict().items()}


def apply_overrides(m, overrides: dict):
    missing, unexpected = m.load_state_dict(overrides, strict=False)
    assert not unexpected, unexpected


def override_checksums(overrides: dict) -> dict:
    return {k: checksum(v) for k, v in overrides.items()}


# ----------------------------------------------------------------------------------------
# Case plumbing.


def base_case(name, kind, module=None, kwargs=None, weight_seed=None, submodules=None):
    return dict(
        format=FORMAT,
        name=name,
        kind=kind,
        module=module,
        kwargs=kwargs or {},
        submodules=submodules or {},
        weight_seed=weight_seed,
        forward_seed=None,
        state_checksums={},
        state_overrides_seed=None,
        state_overrides_checksums={},
        train=False,
        inputs={},
        regen_inputs={},
        input_checksums={},
        call={},
        outputs={},
        output_strides={},
        output_holes_only={},
        output_checksums={},
        meta={},
    )


def set_outputs(case, outputs: dict, strides: dict | None = None, holes_of=None):
    """Store outputs (float32), optionally subsampled by ``strides[name]``. With ``holes_of``
    (the (B, 1, H, W) input mask), image outputs keep only their hole pixels: elsewhere
    upstream's output is ``images_in`` exactly, which the test checks without data."""
    strides = strides or {}
    for name, t in outputs.items():
        if t is None:
            case["outputs"][name] = None
            continue
        t = t.detach().float()
        case["output_checksums"][name] = checksum(t)
        stride = strides.get(name, [1] * t.ndim)
        if name in strides:
            case["output_strides"][name] = list(stride)
        t = subsample(t, stride)
        if holes_of is not None:
            holes = (subsample(holes_of, stride) == 0).expand_as(t)
            case["output_holes_only"][name] = True
            t = t[holes]
        case["outputs"][name] = t.contiguous().clone()


def module_case(
    U,
    name,
    kind,
    module,
    kwargs,
    weight_seed,
    inputs: Inputs,
    call,
    run,
    forward_seed,
    submodules=None,
    overrides=True,
    train=False,
    strides=None,
):
    """Build, override, run ``run(m, values, call) -> outputs`` under ``forward_seed``."""
    if _skip(name):
        return None
    case = base_case(name, kind, module, kwargs, weight_seed, submodules)
    m = build(U, module, kwargs, weight_seed, submodules)
    case["state_checksums"] = state_checksums(m)
    if overrides:
        case["state_overrides_seed"] = weight_seed + 100_000
        ov = make_overrides(m, case["state_overrides_seed"])
        apply_overrides(m, ov)
        case["state_overrides_checksums"] = override_checksums(ov)
    m.train(train)
    case["train"] = train
    case.update(inputs.record())
    case["call"] = call
    case["forward_seed"] = forward_seed
    torch.manual_seed(forward_seed)
    with torch.no_grad():
        outs = run(m, inputs.values, call)
    set_outputs(case, outs, strides)
    return case


# ----------------------------------------------------------------------------------------
# Masks.


def token_mask(kind, gen, B, H, W, w=8):
    """(B, H*W, 1) token masks of the block-level cases (values are fp16-exact)."""
    if kind == "none":
        return None
    if kind == "zeros":
        return torch.zeros(B, H * W, 1)
    m = (torch.rand(B, H, W, generator=gen) < 0.6).float()
    s = w // 2
    if kind == "binary":
        pass
    elif kind == "windows":
        # Whole w x w windows invalid, both of the plain partition and of the partition of
        # the grid rolled by w/2 (the window at rows/cols s..s+w-1), different per sample.
        for b in range(B):
            if b % 2 == 0:
                m[b, 0:w, 0:w] = 0
                m[b, s : s + w, s : s + w] = 0
            else:
                m[b, H - w : H, W - w : W] = 0
                m[b, s : s + w, W - w - s : W - s] = 0
            if W >= 4 * w:
                m[b, H - w : H, 2 * w : 3 * w] = 0
    elif kind == "nonbinary":
        levels = torch.tensor([0.0, 0.25, 0.5, 1.0])
        idx = torch.randint(0, 4, (B, H, W), generator=gen)
        m = levels[idx]
        for b in range(B):
            m[b, 0:8, 8:16] = 0  # window with a single 0.25 token -> new mask 0.25
            m[b, 3 + b, 10] = 0.25
            m[b, 8:16, 0:8] = 0.5  # all-0.5 window
            m[b, 4:12, 4:12] = 0  # rolled-partition window with one 0.5 token
            m[b, 7, 6 + b] = 0.5
    else:
        raise ValueError(kind)
    return m.reshape(B, H * W, 1)


def pixel_mask(kind, gen, B, H, W):
    """(B, 1, H, W) masks for the partial convolution cases."""
    m = (torch.rand(B, 1, H, W, generator=gen) < 0.7).float()
    m[:, :, 2:9, 3:12] = 0  # a hole wider than the kernel: outputs with no valid input
    m[1:, :, H - 6 :, :5] = 0
    if kind == "nonbinary":
        levels = torch.tensor([0.0, 0.25, 0.5, 1.0])
        m = m * levels[torch.randint(1, 4, (B, 1, H, W), generator=gen)]
    return m


def rect_spec(B, H, W, fracs_per_sample):
    rects = []
    for fracs in fracs_per_sample:
        rects.append(
            [
                [int(round(y0 * H)), int(round(y1 * H)), int(round(x0 * W)), int(round(x1 * W))]
                for y0, y1, x0, x1 in fracs
            ]
        )
    return dict(dist="rect_holes", shape=[B, 1, H, W], rects=rects)


HOLES = [
    [(0.20, 0.70, 0.25, 0.80), (0.75, 0.95, 0.05, 0.30), (0.05, 0.15, 0.60, 0.95)],
    [(0.00, 0.45, 0.00, 0.55), (0.55, 0.90, 0.40, 0.97)],
    [(0.30, 0.60, 0.10, 0.90)],
    [(0.10, 0.90, 0.45, 0.55), (0.45, 0.55, 0.10, 0.90)],
]


# ----------------------------------------------------------------------------------------
# Case definitions.


def swin_cases(U):
    # (name, dim, input_resolution, x_size, window, shift, mask kind, B, store x?)
    specs = [
        ("swin_d180_16x16_w8_s0_nomask_b1", 180, (16, 16), (16, 16), 8, 0, "none", 1),
        ("swin_d180_16x16_w8_s4_binary_b2", 180, (16, 16), (16, 16), 8, 4, "binary", 2),
        ("swin_d180_16x32_w8_s4_windows_b1", 180, (16, 32), (16, 32), 8, 4, "windows", 1),
        ("swin_d180_32x32_w16_s8_binary_b1", 180, (32, 32), (32, 32), 16, 8, "binary", 1),
        ("swin_d12_16x16_w8_s4_nomask_b2", 12, (16, 16), (16, 16), 8, 4, "none", 2),
        ("swin_d12_16x16_w8_s0_binary_b1", 12, (16, 16), (16, 16), 8, 0, "binary", 1),
        ("swin_d12_16x16_w8_s0_windows_b2", 12, (16, 16), (16, 16), 8, 0, "windows", 2),
        ("swin_d12_16x16_w8_s4_windows_b2", 12, (16, 16), (16, 16), 8, 4, "windows", 2),
        ("swin_d12_16x16_w8_s0_nonbinary_b2", 12, (16, 16), (16, 16), 8, 0, "nonbinary", 2),
        ("swin_d12_16x16_w8_s4_nonbinary_b1", 12, (16, 16), (16, 16), 8, 4, "nonbinary", 1),
        ("swin_d12_16x16_w8_s4_zeros_b1", 12, (16, 16), (16, 16), 8, 4, "zeros", 1),
        ("swin_d12_16x16_w8_s0_zeros_b2", 12, (16, 16), (16, 16), 8, 0, "zeros", 2),
        # input_resolution == x_size: upstream uses its registered shift mask buffer.
        ("swin_d12_16x32_w8_s4_inres_eq_binary_b2", 12, (16, 32), (16, 32), 8, 4, "binary", 2),
        # input_resolution != x_size: upstream recomputes the shift mask for x_size.
        ("swin_d12_16x32_w8_s4_inres64_windows_b2", 12, (64, 64), (16, 32), 8, 4, "windows", 2),
        ("swin_d12_32x32_w16_s8_windows_b1", 12, (32, 32), (32, 32), 16, 8, "windows", 1),
        # input_resolution 16 <= window 16: upstream drops the shift and keeps window 16,
        # then runs on a 32x32 grid (what the 512 network's bottleneck does on 1024 input).
        (
            "swin_d12_inres16_32x32_w16_s8_nonbinary_b1",
            12,
            (16, 16),
            (32, 32),
            16,
            8,
            "nonbinary",
            1,
        ),
    ]
    cases = []
    for i, (name, dim, in_res, x_size, window, shift, mkind, B) in enumerate(specs):
        H, W = x_size
        inp = Inputs(1000 + i)
        if dim == 180:  # big: regenerated from a seeded generator, checksum stored
            inp.regenerate("x", dict(dist="randn", seed=5000 + i, shape=[B, H * W, dim]))
        else:
            inp.randn("x", (B, H * W, dim))
        inp.store("mask", token_mask(mkind, inp.gen, B, H, W, window))
        kwargs = dict(
            dim=dim,
            input_resolution=tuple(in_res),
            num_heads=6 if dim == 180 else 3,
            window_size=window,
            shift_size=shift,
            mlp_ratio=2.0,
        )

        def run(m, v, call):
            x, mask = m(v["x"], tuple(call["x_size"]), v["mask"])
            return {"x": x, "mask": mask}

        strides = {"x": [1, 1, 9]} if dim == 180 else None
        cases.append(
            module_case(
                U,
                name,
                "swin_block",
                "SwinTransformerBlock",
                kwargs,
                10 + i,
                inp,
                dict(x_size=tuple(x_size)),
                run,
                20 + i,
                strides=strides,
            )
        )
    return cases


def transformer_layer_cases(U):
    cases = []
    # BasicLayer(downsample=PatchMerging), as FirstStage's second stage (dim 180, depth 2).
    inp = Inputs(2000)
    B, H, W, dim = 2, 32, 32, 180
    inp.regenerate("x", dict(dist="randn", seed=6000, shape=[B, H * W, dim]))
    m = token_mask("windows", inp.gen, B, H, W).reshape(B, H, W)
    m[:, 16:32, 0:16] = 0  # after 2x merging, a whole 8x8 window of the 16x16 grid is a hole
    inp.store("mask", m.reshape(B, H * W, 1))

    def run_basic(m, v, call):
        x, x_size, mask = m(v["x"], tuple(call["x_size"]), v["mask"])
        return {"x": x, "mask": mask}

    cases.append(
        module_case(
            U,
            "basic_layer_patchmerging_d180_32x32_b2",
            "basic_layer",
            "BasicLayer",
            dict(dim=dim, input_resolution=[16, 16], depth=2, num_heads=6, window_size=8),
            30,
            inp,
            dict(x_size=(H, W), out_x_size=(H // 2, W // 2)),
            run_basic,
            31,
            submodules={
                "downsample": dict(
                    module="PatchMerging", kwargs=dict(in_channels=dim, out_channels=dim, down=2)
                )
            },
            strides={"x": [1, 1, 9]},
        )
    )

    # PatchUpsampling without mask on a rectangular grid.
    inp = Inputs(2001)
    inp.randn("x", (2, 8 * 12, 12))

    def run_up(m, v, call):
        x, x_size, mask = m(v["x"], tuple(call["x_size"]), None)
        assert tuple(x_size) == tuple(call["out_x_size"]) and mask is None
        return {"x": x}

    cases.append(
        module_case(
            U,
            "patch_upsampling_d12_8x12_nomask_b2",
            "patch_upsampling",
            "PatchUpsampling",
            dict(in_channels=12, out_channels=12, up=2),
            32,
            inp,
            dict(x_size=(8, 12), out_x_size=(16, 24)),
            run_up,
            33,
        )
    )
    return cases


def conv_cases(U):
    cases = []

    def run_partial(m, v, call):
        x, mask = m(v["x"], v["mask"])
        return {"x": x, "mask": mask}

    partial = [
        ("conv_partial_k3_down1_binary", dict(kernel_size=3, down=1), "binary"),
        ("conv_partial_k3_down2_binary", dict(kernel_size=3, down=2), "binary"),
        ("conv_partial_k3_down1_nonbinary", dict(kernel_size=3, down=1), "nonbinary"),
        ("conv_partial_k3_down2_nonbinary", dict(kernel_size=3, down=2), "nonbinary"),
        ("conv_partial_k5_down1_binary", dict(kernel_size=5, down=1), "binary"),
        ("conv_partial_k3_down2_nomask", dict(kernel_size=3, down=2), "none"),
    ]
    for i, (name, kw, mkind) in enumerate(partial):
        inp = Inputs(3000 + i)
        inp.randn("x", (2, 4, 16, 20))
        inp.store("mask", None if mkind == "none" else pixel_mask(mkind, inp.gen, 2, 16, 20))
        kwargs = dict(in_channels=4, out_channels=6, activation="lrelu", **kw)
        cases.append(
            module_case(
                U,
                name,
                "conv_partial",
                "Conv2dLayerPartial",
                kwargs,
                40 + i,
                inp,
                dict(),
                run_partial,
                50 + i,
            )
        )

    def run_conv(m, v, call):
        return {"x": m(v["x"], gain=call["gain"])}

    plain = [
        (
            "conv2d_layer_k3_down2_lrelu_clamp",
            dict(kernel_size=3, down=2, activation="lrelu", conv_clamp=0.5),
            math.sqrt(0.5),
        ),
        ("conv2d_layer_k1_down2_nobias", dict(kernel_size=1, down=2, bias=False), math.sqrt(0.5)),
        ("conv2d_layer_k3_up2_lrelu", dict(kernel_size=3, up=2, activation="lrelu"), 1.0),
        ("conv2d_layer_k3_lrelu", dict(kernel_size=3, activation="lrelu"), 1.0),
    ]
    for i, (name, kw, gain) in enumerate(plain):
        inp = Inputs(3100 + i)
        inp.randn("x", (2, 4, 8, 10))
        cases.append(
            module_case(
                U,
                name,
                "conv2d_layer",
                "Conv2dLayer",
                dict(in_channels=4, out_channels=6, **kw),
                60 + i,
                inp,
                dict(gain=gain),
                run_conv,
                70 + i,
            )
        )

    def run_fc(m, v, call):
        return {"x": m(v["x"])}

    fcs = [
        ("fc_lrelu_lrmul0.01_3d", dict(activation="lrelu", lr_multiplier=0.01, bias_init=0.5)),
        ("fc_linear_3d", dict()),
        ("fc_linear_nobias", dict(bias=False)),
    ]
    for i, (name, kw) in enumerate(fcs):
        inp = Inputs(3200 + i)
        inp.randn("x", (2, 5, 40))
        cases.append(
            module_case(
                U,
                name,
                "fc",
                "FullyConnectedLayer",
                dict(in_features=40, out_features=24, **kw),
                80 + i,
                inp,
                dict(),
                run_fc,
                90 + i,
            )
        )
    return cases


def style_cases(U):
    cases = []

    def run_modconv(m, v, call):
        return {"x": m(v["x"], v["style"])}

    mods = [
        ("modconv_k3_up2_demod", dict(kernel_size=3, up=2, demodulate=True), 8),
        ("modconv_k3_nodemod", dict(kernel_size=3, demodulate=False), 10),
        ("modconv_k1_demod", dict(kernel_size=1, demodulate=True), 10),
    ]
    for i, (name, kw, res) in enumerate(mods):
        inp = Inputs(4000 + i)
        inp.randn("x", (2, 16, res, res))
        inp.randn("style", (2, 20))
        cases.append(
            module_case(
                U,
                name,
                "modconv",
                "ModulatedConv2d",
                dict(in_channels=16, out_channels=8, style_dim=20, **kw),
                100 + i,
                inp,
                dict(),
                run_modconv,
                110 + i,
            )
        )

    def run_styleconv(m, v, call):
        return {"x": m(v["x"], v["style"], noise_mode=call["noise_mode"], gain=call["gain"])}

    styles = [
        ("styleconv_random", dict(up=1), 16, "random", 1.0),
        ("styleconv_const", dict(up=1), 16, "const", 1.0),
        ("styleconv_random_gain", dict(up=1), 16, "random", math.sqrt(0.5)),
        ("styleconv_up2_random", dict(up=2), 8, "random", 1.0),
        ("styleconv_up2_const", dict(up=2), 8, "const", 1.0),
    ]
    for i, (name, kw, res, noise_mode, gain) in enumerate(styles):
        inp = Inputs(4100 + i)
        inp.randn("x", (2, 8, res, res))
        inp.randn("style", (2, 20))
        cases.append(
            module_case(
                U,
                name,
                "styleconv",
                "StyleConv",
                dict(
                    in_channels=8, out_channels=8, style_dim=20, resolution=16, kernel_size=3, **kw
                ),
                120 + i,
                inp,
                dict(noise_mode=noise_mode, gain=gain),
                run_styleconv,
                130 + i,
            )
        )

    def run_torgb(m, v, call):
        return {"x": m(v["x"], v["style"], skip=v["skip"])}

    rgbs = [("torgb_skip_upsampled", 6), ("torgb_skip_same_size", 12), ("torgb_no_skip", None)]
    for i, (name, skip_res) in enumerate(rgbs):
        inp = Inputs(4200 + i)
        inp.randn("x", (2, 16, 12, 12))
        inp.randn("style", (2, 20))
        if skip_res is None:
            inp.store("skip", None)
        else:
            inp.randn("skip", (2, 3, skip_res, skip_res))
        cases.append(
            module_case(
                U,
                name,
                "torgb",
                "ToRGB",
                dict(in_channels=16, out_channels=3, style_dim=20),
                140 + i,
                inp,
                dict(),
                run_torgb,
                150 + i,
            )
        )

    def run_mapping(m, v, call):
        ws = m(
            v["z"],
            v["c"],
            truncation_psi=call["truncation_psi"],
            truncation_cutoff=call["truncation_cutoff"],
            skip_w_avg_update=call["skip_w_avg_update"],
        )
        return {"ws": ws, "w_avg": m.w_avg.clone()}

    maps = [
        # training mode: w_avg is updated by the forward, then used for truncation
        ("mapping_train_wavg_update_psi0.7_cutoff4", 0, True, 0.7, 4, False),
        ("mapping_eval_psi0.7_cutoff4", 0, False, 0.7, 4, False),
        ("mapping_eval_psi0.7_nocutoff", 0, False, 0.7, None, False),
        ("mapping_train_skip_update_psi0.5", 0, True, 0.5, None, True),
        ("mapping_cdim6_eval_psi1", 6, False, 1, None, False),
    ]
    for i, (name, c_dim, train, psi, cutoff, skip) in enumerate(maps):
        inp = Inputs(4300 + i)
        inp.randn("z", (3, 64))
        if c_dim:
            inp.randn("c", (3, c_dim))
        else:
            inp.store("c", None)
        cases.append(
            module_case(
                U,
                name,
                "mapping",
                "MappingNet",
                dict(z_dim=64, c_dim=c_dim, w_dim=48, num_ws=10),
                160 + i,
                inp,
                dict(truncation_psi=psi, truncation_cutoff=cutoff, skip_w_avg_update=skip),
                run_mapping,
                170 + i,
                train=train,
            )
        )
    return cases


def op_cases(U):
    cases = []
    up = U.ops
    filt = up.upfirdn2d.setup_filter([1, 3, 3, 1])

    def add(name, kind, inp, call, out):
        if _skip(name):
            return
        case = base_case(name, kind)
        case.update(inp.record())
        case["call"] = call
        set_outputs(case, {"y": out})
        cases.append(case)

    # upfirdn2d: padding is [x0, x1, y0, y1]; filters are 2-D float32.
    asym = fp16_exact(torch.rand(3, 2, generator=torch.Generator().manual_seed(77)))
    ufd = [
        (
            "upfirdn2d_up2_pad",
            dict(up=2, down=1, padding=[2, 1, 2, 1], flip_filter=False, gain=4.0),
            filt,
        ),
        (
            "upfirdn2d_down2_pad",
            dict(up=1, down=2, padding=[1, 1, 1, 1], flip_filter=False, gain=1.0),
            filt,
        ),
        (
            "upfirdn2d_negative_pad",
            dict(up=1, down=1, padding=[-1, -2, 1, -3], flip_filter=False, gain=1.0),
            filt,
        ),
        (
            "upfirdn2d_down2_negative_pad",
            dict(up=1, down=2, padding=[-2, 1, 0, -1], flip_filter=False, gain=1.0),
            filt,
        ),
        (
            "upfirdn2d_up2_down2_asym_filter",
            dict(up=2, down=2, padding=[1, 2, 0, 1], flip_filter=False, gain=2.0),
            asym,
        ),
        (
            "upfirdn2d_asym_filter_flip",
            dict(up=1, down=1, padding=[1, 1, 2, 0], flip_filter=True, gain=1.0),
            asym,
        ),
        (
            "upfirdn2d_asym_filter_noflip",
            dict(up=1, down=1, padding=[1, 1, 2, 0], flip_filter=False, gain=1.0),
            asym,
        ),
    ]
    for i, (name, call, f) in enumerate(ufd):
        inp = Inputs(7000 + i)
        x = inp.randn("x", (2, 3, 11, 9))
        inp.store("f", f)
        y = up.upfirdn2d._upfirdn2d_ref(x, f, **call)
        add(name, "op_upfirdn2d", inp, call, y)

    inp = Inputs(7100)
    x = inp.randn("x", (2, 3, 7, 10))
    inp.store("f", filt)
    add(
        "upsample2d_2x",
        "op_upsample2d",
        inp,
        dict(up=2),
        up.upfirdn2d.upsample2d(x, filt, up=2, impl="ref"),
    )

    # conv2d_resample: (name, Cin, Cout, k, up, down, padding, groups)
    crs = [
        ("conv2d_resample_k1_down2", 4, 6, 1, 1, 2, 0, 1),
        ("conv2d_resample_k3_down2", 4, 6, 3, 1, 2, 1, 1),
        ("conv2d_resample_k3_up2", 4, 6, 3, 2, 1, 1, 1),
        ("conv2d_resample_k3_up2_groups2", 4, 6, 3, 2, 1, 1, 2),
        ("conv2d_resample_k3_up2_groups3_pad0", 6, 9, 3, 2, 1, 0, 3),
        ("conv2d_resample_k1_up2", 4, 6, 1, 2, 1, 0, 1),
        ("conv2d_resample_k3_down2_groups2", 4, 6, 3, 1, 2, 1, 2),
        ("conv2d_resample_k3_plain_pad1", 4, 6, 3, 1, 1, 1, 1),
        ("conv2d_resample_k3_plain_pad0_groups2", 4, 6, 3, 1, 1, 0, 2),
    ]
    for i, (name, cin, cout, k, u, d, p, g) in enumerate(crs):
        inp = Inputs(7200 + i)
        x = inp.randn("x", (2, cin, 10, 12))
        w = inp.randn("w", (cout, cin // g, k, k), scale=0.3)
        inp.store("f", filt)
        call = dict(up=u, down=d, padding=p, groups=g)
        y = up.conv2d_resample.conv2d_resample(x, w, f=filt, **call)
        add(name, "op_conv2d_resample", inp, call, y)

    bas = [
        (
            "bias_act_lrelu_dim1",
            (2, 5, 6, 7),
            1,
            dict(act="lrelu", alpha=None, gain=None, clamp=None),
        ),
        (
            "bias_act_lrelu_alpha_gain_clamp",
            (2, 5, 6, 7),
            1,
            dict(act="lrelu", alpha=0.1, gain=1.5, clamp=0.5),
        ),
        (
            "bias_act_linear_dim2",
            (3, 4, 5),
            2,
            dict(act="linear", alpha=None, gain=None, clamp=None),
        ),
        (
            "bias_act_relu_clamp",
            (2, 5, 6, 7),
            1,
            dict(act="relu", alpha=None, gain=None, clamp=0.8),
        ),
        ("bias_act_tanh", (2, 5, 6, 7), 1, dict(act="tanh", alpha=None, gain=None, clamp=None)),
        (
            "bias_act_sigmoid_gain",
            (2, 5, 6, 7),
            1,
            dict(act="sigmoid", alpha=None, gain=2.0, clamp=None),
        ),
        (
            "bias_act_nobias_clamp",
            (2, 5, 6, 7),
            None,
            dict(act="lrelu", alpha=None, gain=None, clamp=0.3),
        ),
    ]
    for i, (name, shape, dim, call) in enumerate(bas):
        inp = Inputs(7300 + i)
        x = inp.randn("x", shape)
        b = inp.randn("b", (shape[dim],)) if dim is not None else inp.store("b", None)
        call = dict(call, dim=1 if dim is None else dim)
        y = up.bias_act._bias_act_ref(x, b, **call)
        add(name, "op_bias_act", inp, call, y)
    return cases


def discriminator_cases(U):
    cases = []

    def run_d(m, v, call):
        score, score_stg1 = m(v["images_in"], v["masks_in"], v["images_stg1"], v["c"])
        return {"score": score, "score_stg1": score_stg1}

    specs = [
        # (name, c_dim, res, B, regenerate?)
        ("discriminator_512_b4", 0, 512, 4, True),
        ("discriminator_256_b2", 0, 256, 2, True),
        ("discriminator_32_b2_mbstd_group2", 0, 32, 2, False),
        ("discriminator_16_b8_mbstd_2groups", 0, 16, 8, False),
        ("discriminator_16_cdim4_b4", 4, 16, 4, False),
    ]
    for i, (name, c_dim, res, B, big) in enumerate(specs):
        inp = Inputs(8000 + i)
        if big:
            inp.regenerate(
                "images_in", dict(dist="rand_pm1", seed=8100 + i, shape=[B, 3, res, res])
            )
            inp.regenerate(
                "images_stg1", dict(dist="rand_pm1", seed=8200 + i, shape=[B, 3, res, res])
            )
            inp.regenerate("masks_in", rect_spec(B, res, res, HOLES[:B]))
        else:
            inp.rand_pm1("images_in", (B, 3, res, res))
            inp.rand_pm1("images_stg1", (B, 3, res, res))
            inp.store("masks_in", regen(rect_spec(B, res, res, (HOLES * 2)[:B])))
        if c_dim:
            inp.randn("c", (B, c_dim))
        else:
            inp.store("c", None)
        cases.append(
            module_case(
                U,
                name,
                "discriminator",
                "Discriminator",
                dict(c_dim=c_dim, img_resolution=res, img_channels=3),
                200 + i,
                inp,
                dict(),
                run_d,
                210 + i,
            )
        )
    return cases


def generator_cases(U):
    cases = []

    def run_g(m, v, call):
        img, stg1 = m(
            v["images_in"],
            v["masks_in"],
            v["z"],
            v["c"],
            truncation_psi=call["truncation_psi"],
            truncation_cutoff=call["truncation_cutoff"],
            noise_mode=call["noise_mode"],
            return_stg1=True,
        )
        return {"img": img, "img_stg1": stg1}

    nets = {}

    def net(res, seed):
        key = (res, seed)
        if key not in nets:
            kwargs = dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=res, img_channels=3)
            G = build(U, "Generator", kwargs, seed)
            sums = state_checksums(G)
            ov = make_overrides(G, seed + 100_000)
            apply_overrides(G, ov)
            G.eval()
            nets[key] = (G, kwargs, sums, seed + 100_000, override_checksums(ov))
        return nets[key]

    specs = [
        # name, res, seed, B, (H, W), psi, cutoff, noise, blob holes?, strides img/stg1
        (
            "generator256_b2_random_stg1",
            256,
            300,
            2,
            (256, 256),
            1,
            None,
            "random",
            True,
            None,
            [1, 1, 2, 2],
        ),
        (
            "generator256_b1_psi0.5_const",
            256,
            300,
            1,
            (256, 256),
            0.5,
            None,
            "const",
            False,
            [1, 1, 2, 2],
            [1, 1, 4, 4],
        ),
        (
            "generator256_b1_psi0.7_cutoff4_random",
            256,
            300,
            1,
            (256, 256),
            0.7,
            4,
            "random",
            False,
            [1, 1, 4, 4],
            [1, 1, 8, 8],
        ),
        (
            "generator512_512x512_random",
            512,
            400,
            1,
            (512, 512),
            1,
            None,
            "random",
            False,
            [1, 1, 4, 4],
            [1, 1, 16, 16],
        ),
        (
            "generator512_1024x1024_random",
            512,
            400,
            1,
            (1024, 1024),
            1,
            None,
            "random",
            False,
            [1, 1, 8, 8],
            [1, 1, 16, 16],
        ),
        (
            "generator512_512x1024_random",
            512,
            400,
            1,
            (512, 1024),
            1,
            None,
            "random",
            False,
            [1, 1, 8, 8],
            [1, 1, 16, 16],
        ),
        (
            "generator512_1024x512_random",
            512,
            400,
            1,
            (1024, 512),
            1,
            None,
            "random",
            False,
            [1, 1, 8, 8],
            [1, 1, 16, 16],
        ),
    ]
    for i, (name, res, seed, B, (H, W), psi, cutoff, noise, blobs, s_img, s_stg1) in enumerate(
        specs
    ):
        if _skip(name):
            continue
        t0 = time.time()
        G, kwargs, sums, ov_seed, ov_sums = net(res, seed)
        inp = Inputs(9000 + i)
        inp.regenerate("images_in", dict(dist="rand_pm1", seed=9100 + i, shape=[B, 3, H, W]))
        spec = rect_spec(B, H, W, HOLES[i % 4 : i % 4 + B])
        if blobs:
            # the last sample also loses random 16x16 cells (stored as a small cell grid)
            cells = torch.rand(B, 1, H // 16, W // 16, generator=inp.gen) < 0.3
            cells[:-1] = False
            spec.update(cells=cells.to(torch.uint8), cell=16)
        inp.regenerate("masks_in", spec)
        inp.randn("z", (B, 512))
        inp.store("c", None)
        case = base_case(name, "generator", "Generator", kwargs, seed)
        case["state_checksums"] = sums
        case["state_overrides_seed"] = ov_seed
        case["state_overrides_checksums"] = ov_sums
        case.update(inp.record())
        case["call"] = dict(truncation_psi=psi, truncation_cutoff=cutoff, noise_mode=noise)
        case["forward_seed"] = 500 + i
        torch.manual_seed(case["forward_seed"])
        with torch.no_grad():
            outs = run_g(G, inp.values, case["call"])
        strides = {}
        if s_img:
            strides["img"] = s_img
        if s_stg1:
            strides["img_stg1"] = s_stg1
        set_outputs(case, outs, strides, holes_of=inp.values["masks_in"])
        case["meta"]["upstream_forward_seconds"] = round(time.time() - t0, 1)
        print(f"  {name}: {time.time() - t0:.1f}s", flush=True)
        cases.append(case)
    return cases


# ----------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="path of an upstream MAT checkout")
    ap.add_argument("--out", default="tests/golden", help="output folder (default tests/golden)")
    ap.add_argument("--only", default=None, help="only cases whose name contains this")
    args = ap.parse_args(argv)
    global _ONLY
    _ONLY = args.only

    torch.set_grad_enabled(False)
    U = import_upstream(args.upstream)
    os.makedirs(args.out, exist_ok=True)
    meta = dict(
        torch_version=str(torch.__version__),
        upstream_sha256=U.sha256,
        generated=datetime.date.today().isoformat(),
        generator="tools/make_golden.py",
    )

    groups = [
        swin_cases,
        transformer_layer_cases,
        conv_cases,
        style_cases,
        op_cases,
        discriminator_cases,
    ]
    t0 = time.time()
    cases = []
    for group in groups:
        cases += [c for c in group(U) if c is not None]
        print(f"{group.__name__}: done ({time.time() - t0:.1f}s)", flush=True)
    cases += generator_cases(U)
    for case in cases:
        case["meta"] = dict(meta, **case["meta"])
        torch.save(case, os.path.join(args.out, case["name"] + ".pt"))
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(
        f"wrote {len(cases)} cases to {args.out} ({total / 2**20:.2f} MiB in the folder, "
        f"{time.time() - t0:.0f}s)"
    )


if __name__ == "__main__":
    main()
