"""mat_fast: a drop-in, faster MAT (Mask-Aware Transformer for Large Hole Image Inpainting).

``Generator``/``Discriminator`` have upstream's signatures and state-dict keys;
``load_generator`` reads upstream pickles (without running their code), state dicts and
safetensors; ``Inpainter`` fills holes in real images of any size.
"""

__version__ = "0.1.0"

from .backend import (
    BackendUnavailableError,
    available_backends,
    get_backend,
    set_backend,
    use_backend,
)
from .checkpoints import CheckpointError, CheckpointNotFoundError, load_generator, save_generator
from .devices import DeviceError
from .image_io import InputError
from .inpaint import Inpainter
from .memory import MemoryBudgetError
from .model import Discriminator, Generator

__all__ = [
    "BackendUnavailableError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "DeviceError",
    "MemoryBudgetError",
    "Inpainter",
    "InputError",
    "load_generator",
    "save_generator",
    "Discriminator",
    "Generator",
    "available_backends",
    "get_backend",
    "set_backend",
    "use_backend",
    "__version__",
]
