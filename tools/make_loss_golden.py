#!/usr/bin/env python
"""Record golden gradients of upstream MAT's training loss for ``tests/test_training_loss.py``.

Upstream's ``losses.loss.TwoStageLoss`` runs every phase (Gmain, Greg, Gboth, Dmain, Dreg,
Dboth) on a seeded Generator/Discriminator (the weight seeds and seeded bias/noise/w_avg
overrides of ``tests/helpers/golden_recipes.py``, as ``tools/make_golden.py``) and a seeded random
VGG19 (``make_vgg_weights``: upstream's perceptual loss would download torchvision's
ImageNet weights), fp32, CPU, each phase from the same initial weights under its own seed.
The networks are the 256 configuration (``--resolution``; 128 is the smallest upstream's
Generator builds), batch 2 (the minibatch-stddev groups of two).

One numerical plumbing change is made to upstream's code while it runs, and only to how a
result is computed: upstream's ``upfirdn2d`` reference path filters every channel with the
same FIR kernel through a grouped convolution (groups = channels), and PyTorch's double
backward of a grouped convolution on a CPU runs one convolution per group: R1's double
backward through the discriminator then took 264-434 s per D phase at 128. The tool runs
that filtering as one single-channel convolution over a batch of ``N * C`` images instead
(``batch_the_depthwise_filters``): each output element is the same sum of the same products,
and its double backward is one convolution. ``--grouped`` keeps upstream's grouped call. The
two agree to fp32 rounding: on the 128 networks, Dreg's gradients came out bit-identical and
Dmain's within 7.4e-4 of a signed gradient sum (its largest difference). With the batched
filtering the 256 golden takes about 5 minutes on a 2-core CPU.
The file stores only tensors and plain values, never upstream code or objects:

* ``G_kwargs``/``D_kwargs``, ``G_seed``/``D_seed`` (``torch.manual_seed`` before each
  constructor), ``*_override_seed``, ``vgg_seed``, ``*_state_checksums`` (shape, sum, sum|.|);
* ``inputs``: ``gen_z`` (fp16-exact, stored as float16), ``regen_inputs``: ``real_img`` and
  ``mask`` recipes, ``input_checksums``;
* ``phases``: per phase its ``gain``, ``seed`` (``torch.manual_seed`` right before
  ``accumulate_gradients``), ``module`` ("G" or "D": the one whose parameters require
  gradients, as upstream's training loop does), ``stats`` (every value the loss reported to
  ``training_stats``, float32), ``grads`` (per parameter: None, or ``(sum, sum|.|)`` of the
  gradient and ``grad_sample`` of it) and the mapping's ``w_avg`` afterwards.

Usage: ``python tools/make_loss_golden.py --upstream /path/to/MAT`` (a checkout of
github.com/fenglinglwb/MAT; it is imported, nothing is copied). torchvision is replaced by a
placeholder that builds VGG19's feature layers (their weights are overwritten anyway), and
timm as in make_golden.py.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
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
    grad_sample,
    make_overrides,
    make_vgg_weights,
    regen,
)
from tools.make_golden import import_upstream, rect_spec, state_checksums  # noqa: E402

BATCH = 2
PHASES = [  # (phase, module, gain as upstream's loop gives it, seed)
    ("Gmain", "G", 1, 31),
    ("Greg", "G", 4, 32),
    ("Gboth", "G", 1, 33),
    ("Dmain", "D", 1, 34),
    ("Dreg", "D", 16, 35),
    ("Dboth", "D", 1, 36),
]

_TORCHVISION_STUB = '''\
"""Placeholder for torchvision.models.vgg: VGG19's feature layers, random weights."""
import torch.nn as nn

_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
           512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


class _VGG(nn.Module):
    def __init__(self):
        super().__init__()
        layers, channels = [], 3
        for item in _CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)


def vgg19(pretrained=False, **kwargs):
    return _VGG()
'''


def install_torchvision_stub() -> None:
    root = tempfile.mkdtemp(prefix="mat_golden_torchvision_")
    os.makedirs(os.path.join(root, "torchvision", "models"))
    for rel, text in (
        ("torchvision/__init__.py", ""),
        ("torchvision/models/__init__.py", ""),
        ("torchvision/models/vgg.py", _TORCHVISION_STUB),
    ):
        with open(os.path.join(root, rel), "w") as fh:
            fh.write(text)
    sys.path.insert(0, root)


class Reports:
    """Stands in for upstream's ``training_stats`` module: keeps what the loss reports."""

    def __init__(self):
        self.values = {}

    def report(self, name, value):
        self.values[name] = torch.as_tensor(value).detach().float().clone()
        return value


def batch_the_depthwise_filters(upfirdn2d_module) -> None:
    """Make upstream's upfirdn2d run its per-channel FIR filtering (a grouped convolution
    whose filter is the same for every channel) as one single-channel convolution over a
    batch of N * C images: the same products summed per output element, and a double
    backward of one convolution instead of one per channel (see the module docstring)."""
    grouped = upfirdn2d_module.conv2d_gradfix.conv2d

    def conv2d(input, weight, groups=1, **kwargs):
        n, c, h, w = input.shape
        same_filter = (
            groups == c and weight.shape[:2] == (c, 1) and bool((weight == weight[:1]).all())
        )
        if not same_filter or kwargs:
            return grouped(input=input, weight=weight, groups=groups, **kwargs)
        out = torch.nn.functional.conv2d(input.reshape(n * c, 1, h, w), weight[:1])
        return out.reshape(n, c, *out.shape[2:])

    upfirdn2d_module.conv2d_gradfix = SimpleNamespace(conv2d=conv2d)


def grads_of(module) -> dict:
    out = {}
    for name, p in module.named_parameters():
        out[name] = (
            None if p.grad is None else dict(sums=checksum(p.grad), sample=grad_sample(p.grad))
        )
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="path of an upstream MAT checkout")
    ap.add_argument("--out", default="tests/golden/loss", help="output folder")
    ap.add_argument("--resolution", type=int, default=256, help="networks' resolution")
    ap.add_argument(
        "--grouped", action="store_true", help="keep upstream's grouped FIR convolutions (slow)"
    )
    ap.add_argument("--phases", default=",".join(p[0] for p in PHASES), help="e.g. Dreg,Gmain")
    args = ap.parse_args(argv)
    RES, NAME = args.resolution, f"two_stage_loss_{args.resolution}_b2"
    if set(args.phases.split(",")) != {p[0] for p in PHASES}:
        NAME += "_" + args.phases.replace(",", "_")  # a partial run never replaces the golden

    U = import_upstream(args.upstream)
    if not args.grouped:
        batch_the_depthwise_filters(U.ops.upfirdn2d)
    install_torchvision_stub()
    loss_module = importlib.import_module("losses.loss")
    reports = Reports()
    loss_module.training_stats = reports  # upstream's loss calls training_stats.report

    G_kwargs = dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=RES, img_channels=3)
    D_kwargs = dict(c_dim=0, img_resolution=RES, img_channels=3)
    case = dict(format=FORMAT, name=NAME, kind="two_stage_loss", G_kwargs=G_kwargs)
    case.update(D_kwargs=D_kwargs, G_seed=700, D_seed=701, vgg_seed=702)
    case.update(G_override_seed=100_700, D_override_seed=100_701)
    torch.manual_seed(case["G_seed"])
    G = U.classes["Generator"](**G_kwargs)
    case["G_state_checksums"] = state_checksums(G)
    G.load_state_dict(make_overrides(G, case["G_override_seed"]), strict=False)
    torch.manual_seed(case["D_seed"])
    D = U.classes["Discriminator"](**D_kwargs)
    case["D_state_checksums"] = state_checksums(D)
    D.load_state_dict(make_overrides(D, case["D_override_seed"]), strict=False)
    G_init = {k: v.clone() for k, v in G.state_dict().items()}
    D_init = {k: v.clone() for k, v in D.state_dict().items()}

    loss = loss_module.TwoStageLoss(
        device=torch.device("cpu"), G_mapping=G.mapping, G_synthesis=G.synthesis, D=D
    )
    missing, unexpected = loss.pcp.load_state_dict(
        make_vgg_weights(loss.pcp, case["vgg_seed"]), strict=False
    )
    assert not unexpected and all(k.startswith("vgg.m") or k.startswith("vgg.s") for k in missing)
    case["pcp_keys"] = sorted(loss.pcp.state_dict())

    gen = torch.Generator().manual_seed(703)
    gen_z = fp16_exact(torch.randn(BATCH, 512, generator=gen))
    specs = dict(
        real_img=dict(dist="rand_pm1", seed=704, shape=[BATCH, 3, RES, RES]),
        mask=rect_spec(BATCH, RES, RES, [[(0.2, 0.7, 0.25, 0.8)], [(0.0, 0.45, 0.1, 0.6)]]),
    )
    real_img, mask = regen(specs["real_img"]), regen(specs["mask"])
    case.update(inputs=dict(gen_z=gen_z.half()), regen_inputs=specs)
    case["input_checksums"] = {k: checksum(regen(s)) for k, s in specs.items()}
    c = torch.zeros(BATCH, 0)

    case["phases"] = {}
    for phase, which, gain, seed in [p for p in PHASES if p[0] in args.phases.split(",")]:
        t0 = time.time()
        G.load_state_dict(G_init)
        D.load_state_dict(D_init)
        G.train().requires_grad_(False)
        D.train().requires_grad_(False)
        module = G if which == "G" else D
        module.requires_grad_(True)
        reports.values = {}
        torch.manual_seed(seed)
        loss.accumulate_gradients(phase, real_img, mask, c, gen_z, c, sync=True, gain=gain)
        case["phases"][phase] = dict(
            module=which,
            gain=gain,
            seed=seed,
            stats=dict(reports.values),
            grads=grads_of(module),
            w_avg=G.mapping.w_avg.detach().clone(),
        )
        module.requires_grad_(False)
        for p in module.parameters():
            p.grad = None
        print(f"  {phase}: {time.time() - t0:.1f}s", flush=True)

    digest = hashlib.sha256(U.sha256.encode())
    for rel in ("losses/loss.py", "losses/pcp.py", "losses/vggNet.py"):
        with open(os.path.join(args.upstream, rel), "rb") as fh:
            digest.update(fh.read())
    case["meta"] = dict(
        fir_filtering="grouped" if args.grouped else "batched single-channel",
        torch_version=str(torch.__version__),
        upstream_sha256=digest.hexdigest(),
        generated=datetime.date.today().isoformat(),
        generator="tools/make_loss_golden.py",
    )
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, NAME + ".pt")
    torch.save(case, path)
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
