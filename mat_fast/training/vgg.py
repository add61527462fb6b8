"""The VGG19 feature layers and MAT's perceptual loss, defined here rather than taken from
torchvision (its Linux wheels on the package index are built against CUDA torch and do not
load with a CPU torch).

Module and buffer names follow upstream's ``losses.pcp.PerceptualLoss`` (an attribute
``vgg`` holding ``vgg_net`` with layers named ``conv1_1``, ``relu1_1``, ``pool1``, ... and
the ImageNet ``mean``/``std`` buffers), so one state dict loads into both. Only the layers up
to the deepest requested feature exist, as upstream builds them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

# VGG19's feature stack ("E" configuration): output channels per conv, "M" = 2x2 max pool.
_VGG19_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M")
_VGG19_CONFIG += (512, 512, 512, 512, "M", 512, 512, 512, 512, "M")

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # of images in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)

#: MAT's perceptual-loss features (before their ReLU) and weights.
MAT_LAYER_WEIGHTS = {"conv4_4": 1 / 4, "conv5_4": 1 / 2}


def vgg19_layer_names() -> list:
    """``conv1_1, relu1_1, conv1_2, relu1_2, pool1, conv2_1, ...``: one name per entry of
    torchvision's ``vgg19().features`` (its index there is the position in this list)."""
    names, block, index = [], 1, 1
    for item in _VGG19_CONFIG:
        if item == "M":
            names.append(f"pool{block}")
            block, index = block + 1, 1
        else:
            names += [f"conv{block}_{index}", f"relu{block}_{index}"]
            index += 1
    return names


class VGGFeatureExtractor(nn.Module):
    """VGG19 features at ``layer_names`` from images in [0, 1] (normalised with ImageNet's
    statistics first). Frozen: its parameters never require gradients, but gradients flow
    through it to the input."""

    def __init__(self, layer_names, use_input_norm: bool = True):
        super().__init__()
        names = vgg19_layer_names()
        unknown = [n for n in layer_names if n not in names]
        if unknown:
            raise ValueError(f"unknown VGG19 layers {unknown}; known: {', '.join(names)}")
        self.layer_names = list(layer_names)
        self.use_input_norm = use_input_norm
        last = max(names.index(n) for n in layer_names)
        layers, channels = OrderedDict(), 3
        conv_widths = iter(c for c in _VGG19_CONFIG if c != "M")
        for name in names[: last + 1]:
            if name.startswith("conv"):
                out = next(conv_widths)
                layers[name] = nn.Conv2d(channels, out, kernel_size=3, padding=1)
                channels = out
            elif name.startswith("relu"):
                layers[name] = nn.ReLU()  # not in place: the conv output is a feature
            else:
                layers[name] = nn.MaxPool2d(kernel_size=2, stride=2)
        self.vgg_net = nn.Sequential(layers)
        if use_input_norm:
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.reset_parameters()
        self.requires_grad_(False)
        self.eval()

    def reset_parameters(self) -> None:
        """A random VGG drawn like torchvision's initialisation (He normal, fan out)."""
        for m in self.vgg_net:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> dict:
        if self.use_input_norm:
            x = (x - self.mean) / self.std
        features = {}
        for name, layer in self.vgg_net.named_children():
            x = layer(x)
            if name in self.layer_names:
                features[name] = x
        return features


class PerceptualLoss(nn.Module):
    """MAT's perceptual loss: sum over ``layer_weights`` of weight x L1 distance between the
    VGG19 features of ``x`` and of ``gt``, both images in [-1, 1] (mapped to [0, 1] first).
    Returns a scalar; no gradient flows into ``gt``."""

    def __init__(self, layer_weights: Mapping = None):
        super().__init__()
        self.layer_weights = dict(MAT_LAYER_WEIGHTS if layer_weights is None else layer_weights)
        self.vgg = VGGFeatureExtractor(list(self.layer_weights))

    def forward(self, x: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        x_features = self.vgg((x + 1) * 0.5)
        gt_features = self.vgg((gt.detach() + 1) * 0.5)
        loss = 0
        for name in x_features:  # network order, as upstream sums them
            loss = loss + F.l1_loss(x_features[name], gt_features[name]) * self.layer_weights[name]
        return loss


def torchvision_to_pcp_keys(state_dict: Mapping, layer_names) -> dict:
    """Map torchvision's ``features.<index>.weight`` keys to ``vgg.vgg_net.<name>.weight``
    for the convolutions this extractor has (the classifier and deeper layers are dropped)."""
    names = vgg19_layer_names()
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "features" and parts[1].isdigit():
            index = int(parts[1])
            if index < len(names) and names[index] in layer_names:
                out[f"vgg.vgg_net.{names[index]}.{parts[2]}"] = value
    return out
