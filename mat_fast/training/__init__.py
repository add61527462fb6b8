"""Training MAT with mat_fast: upstream's objective (``TwoStageLoss``) and its perceptual
loss, with the VGG19 layers defined here (no torchvision dependency), and upstream's
training loop (``run_training(TrainOptions(...))``, the ``mat-fast train`` command)."""

from .config import TrainOptions
from .loop import Trainer, run_training
from .loss import PHASES, TwoStageLoss
from .vgg import PerceptualLoss, VGGFeatureExtractor, vgg19_layer_names
from .vgg_weights import (
    TORCHVISION_VGG19,
    VGG19_URL,
    VGGWeightsError,
    cached_vgg19_file,
    load_vgg_weights,
    vgg_cache_dir,
)

__all__ = [
    "PHASES",
    "PerceptualLoss",
    "TORCHVISION_VGG19",
    "TrainOptions",
    "Trainer",
    "TwoStageLoss",
    "VGG19_URL",
    "VGGFeatureExtractor",
    "VGGWeightsError",
    "cached_vgg19_file",
    "load_vgg_weights",
    "run_training",
    "vgg19_layer_names",
    "vgg_cache_dir",
]
