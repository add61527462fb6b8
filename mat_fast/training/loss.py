"""MAT's training objective (upstream ``losses/loss.py: TwoStageLoss``), drop-in.

Semantics kept from upstream, on purpose:

* non-saturating logistic losses on both discriminator heads (the final image and the first
  stage's output), the perceptual loss (VGG19 conv4_4 and conv5_4, weighted 1/4 and 1/2) on
  the generator, R1 on both heads of the discriminator for real images;
* style mixing with upstream's random draws, in upstream's order (a cutoff, a coin, a second
  latent), so a seed gives the gradients upstream's loss gives on the same weights;
* ``Greg`` does nothing: MAT disables StyleGAN2's path-length regulariser (the arguments
  ``pl_*`` are accepted and kept for compatibility), so ``Gboth`` equals ``Gmain``;
* ``augment_pipe`` is accepted and not applied (MAT's loss has it commented out).

R1 differentiates the discriminator's input gradient again (``create_graph``). Every op has a
second derivative on every backend (a fused kernel without one falls back to its reference
twin for that gradient, see :mod:`mat_fast.ops.double_backward`), so every pass runs on the
current backend unless ``r1_backend`` names one for the R1 pass.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from .. import backend
from .vgg import PerceptualLoss
from .vgg_weights import TORCHVISION_VGG19, VggWeights, load_vgg_weights

log = logging.getLogger("mat_fast")

PHASES = ("Gmain", "Greg", "Gboth", "Dmain", "Dreg", "Dboth")

_logged: set = set()


def _log_once(key, msg, *args) -> None:
    if key not in _logged:
        _logged.add(key)
        log.info(msg, *args)


def _ddp_sync(module, sync: bool):
    """Skip DDP's gradient all-reduce for a backward that another one will sync."""
    if isinstance(module, DistributedDataParallel) and not sync:
        return module.no_sync()
    return contextlib.nullcontext()


class TwoStageLoss:
    """``accumulate_gradients(phase, ...)`` adds ``gain`` x the phase's loss gradients to the
    parameters that require gradients (the training loop enables only the phase's module).

    ``vgg_weights``: :data:`TORCHVISION_VGG19` (default: torchvision's ImageNet VGG19,
    downloaded once into ``~/.cache/mat_fast/vgg`` or ``$MAT_FAST_CACHE/vgg`` and checked),
    a path or state dict (torchvision's or upstream's PerceptualLoss layout), or ``None`` for
    a random VGG (tests, offline smoke runs). ``r1_backend``: a backend for the R1 pass
    only (``None``: the current one, as every other pass).
    ``report(name, tensor)``, if given, receives every value upstream reports to
    ``training_stats`` (also kept in ``stats`` for the last call).
    """

    def __init__(
        self,
        device,
        G_mapping,
        G_synthesis,
        D,
        augment_pipe=None,
        style_mixing_prob=0.9,
        r1_gamma=10,
        pl_batch_shrink=2,
        pl_decay=0.01,
        pl_weight=2,
        truncation_psi=1,
        pcp_ratio=1.0,
        *,
        vgg_weights: VggWeights = TORCHVISION_VGG19,
        r1_backend: Optional[str] = None,
        report: Optional[Callable[[str, torch.Tensor], None]] = None,
    ):
        self.device = torch.device(device)
        self.G_mapping = G_mapping
        self.G_synthesis = G_synthesis
        self.D = D
        self.augment_pipe = augment_pipe
        if augment_pipe is not None:
            _log_once(
                "augment",
                "mat_fast: TwoStageLoss keeps augment_pipe but does not apply it (as MAT's loss)",
            )
        self.style_mixing_prob = style_mixing_prob
        self.r1_gamma = r1_gamma
        self.pl_batch_shrink = pl_batch_shrink
        self.pl_decay = pl_decay
        self.pl_weight = pl_weight
        self.pl_mean = torch.zeros([], device=self.device)
        self.truncation_psi = truncation_psi
        self.pcp_ratio = pcp_ratio
        if r1_backend is not None:
            backend.resolve(self.device, r1_backend)  # fail now, not in the first Dreg
        self.r1_backend = r1_backend
        self.report = report
        self.stats: dict = {}
        self.pcp = PerceptualLoss()
        load_vgg_weights(self.pcp, vgg_weights)
        self.pcp.to(self.device)

    # ------------------------------------------------------------------------------------

    def _report(self, name: str, value) -> None:
        value = value.detach()
        self.stats[name] = value
        if self.report is not None:
            self.report(name, value)

    def r1_backend_name(self) -> str:
        """The backend the R1 pass runs on: ``r1_backend``, else the current one."""
        if self.r1_backend is not None:
            return self.r1_backend
        return backend.resolve(self.device)

    def run_G(self, img_in, mask_in, z, c, sync):
        with _ddp_sync(self.G_mapping, sync):
            ws = self.G_mapping(z, c, truncation_psi=self.truncation_psi)
            if self.style_mixing_prob > 0:
                # Upstream's draws, in its order: the cutoff, the coin, the second latent
                # (drawn and mapped even when the coin says "no mixing").
                num_ws = ws.shape[1]
                cutoff = torch.empty([], dtype=torch.int64, device=ws.device).random_(1, num_ws)
                mix = torch.rand([], device=ws.device) < self.style_mixing_prob
                cutoff = torch.where(mix, cutoff, torch.full_like(cutoff, num_ws))
                ws_mix = self.G_mapping(
                    torch.randn_like(z),
                    c,
                    truncation_psi=self.truncation_psi,
                    skip_w_avg_update=True,
                )
                cut = int(cutoff)
                ws[:, cut:] = ws_mix[:, cut:]
        with _ddp_sync(self.G_synthesis, sync):
            img, img_stg1 = self.G_synthesis(img_in, mask_in, ws, return_stg1=True)
        return img, ws, img_stg1

    def run_D(self, img, mask, img_stg1, c, sync):
        with _ddp_sync(self.D, sync):
            return self.D(img, mask, img_stg1, c)

    # ------------------------------------------------------------------------------------

    def accumulate_gradients(self, phase, real_img, mask, real_c, gen_z, gen_c, sync, gain):
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; choose one of {', '.join(PHASES)}")
        self.stats = {}
        do_Gmain = phase in ("Gmain", "Gboth")
        do_Dmain = phase in ("Dmain", "Dboth")
        do_Gpl = phase in ("Greg", "Gboth") and self.pl_weight != 0
        do_Dr1 = phase in ("Dreg", "Dboth") and self.r1_gamma != 0
        # (do_Gpl only delays Gmain's DDP sync: MAT has no path-length penalty.)

        if do_Gmain:
            gen_img, _, gen_img_stg1 = self.run_G(
                real_img, mask, gen_z, gen_c, sync=sync and not do_Gpl
            )
            logits, logits_stg1 = self.run_D(gen_img, mask, gen_img_stg1, gen_c, sync=False)
            self._report_scores("fake", logits, logits_stg1)
            loss_G = F.softplus(-logits)  # -log(sigmoid(logits))
            loss_G_stg1 = F.softplus(-logits_stg1)
            self._report("Loss/G/loss", loss_G)
            self._report("Loss/G/loss_s1", loss_G_stg1)
            self._report("Loss/G/l1_loss", (gen_img - real_img).abs().mean())  # shown only
            pcp_loss = self.pcp(gen_img, real_img)
            self._report("Loss/G/pcp_loss", pcp_loss)
            total = loss_G + loss_G_stg1 + pcp_loss * self.pcp_ratio
            total.mean().mul(gain).backward()

        loss_Dgen, loss_Dgen_stg1 = 0, 0
        if do_Dmain:
            gen_img, _, gen_img_stg1 = self.run_G(real_img, mask, gen_z, gen_c, sync=False)
            logits, logits_stg1 = self.run_D(gen_img, mask, gen_img_stg1, gen_c, sync=False)
            self._report_scores("fake", logits, logits_stg1)
            loss_Dgen = F.softplus(logits)  # -log(1 - sigmoid(logits))
            loss_Dgen_stg1 = F.softplus(logits_stg1)
            (loss_Dgen + loss_Dgen_stg1).mean().mul(gain).backward()

        if do_Dmain or do_Dr1:
            self._real_pass(
                real_img, mask, real_c, sync, gain, do_Dmain, do_Dr1, loss_Dgen, loss_Dgen_stg1
            )

    def _report_scores(self, kind, logits, logits_stg1):
        self._report(f"Loss/scores/{kind}", logits)
        self._report(f"Loss/signs/{kind}", logits.sign())
        self._report(f"Loss/scores/{kind}_s1", logits_stg1)
        self._report(f"Loss/signs/{kind}_s1", logits_stg1.sign())

    def _real_pass(self, real_img, mask, real_c, sync, gain, do_Dmain, do_Dr1, Dgen, Dgen_s1):
        """Real images: the logistic loss (Dmain) and/or R1 on both heads (Dreg)."""
        # Two leaves for the same pixels: each head's R1 gradient is taken on its own input.
        real = real_img.detach().requires_grad_(do_Dr1)
        real_stg1 = real_img.detach().requires_grad_(do_Dr1)
        scope = (
            backend.use_backend(self.r1_backend)
            if do_Dr1 and self.r1_backend is not None
            else contextlib.nullcontext()
        )
        with scope:
            logits, logits_stg1 = self.run_D(real, mask.detach(), real_stg1, real_c, sync=sync)
            self._report_scores("real", logits, logits_stg1)
            # (logits * 0 keeps both heads in the graph when a term is missing, so DDP
            # always sees every parameter used.)
            total = (logits + logits_stg1).mul(0).mean()
            if do_Dmain:
                loss_real = F.softplus(-logits)  # -log(sigmoid(logits))
                loss_real_stg1 = F.softplus(-logits_stg1)
                self._report("Loss/D/loss", Dgen + loss_real)
                self._report("Loss/D/loss_s1", Dgen_s1 + loss_real_stg1)
                total = total + loss_real.mean() + loss_real_stg1.mean()
            if do_Dr1:
                for suffix, out, inp in (("", logits, real), ("_s1", logits_stg1, real_stg1)):
                    (grad,) = torch.autograd.grad(
                        outputs=[out.sum()], inputs=[inp], create_graph=True, only_inputs=True
                    )
                    penalty = grad.square().sum([1, 2, 3])
                    loss_r1 = penalty * (self.r1_gamma / 2)
                    self._report(f"Loss/r1_penalty{suffix}", penalty)
                    self._report(f"Loss/D/reg{suffix}", loss_r1)
                    total = total + loss_r1.mean()
            total.mul(gain).backward()
