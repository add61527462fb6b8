"""mat_fast: a drop-in, faster MAT (Mask-Aware Transformer for Large Hole Image Inpainting).

``Generator``/``Discriminator`` have upstream's signatures and state-dict keys;
``load_generator`` reads upstream pickles (without running their code), state dicts and
safetensors; ``Inpainter`` fills holes in real images of any size.
"""

from .backend import (
    available_backends,
    get_backend,
    set_backend,
    use_backend,
)
from .checkpoints import load_generator, save_generator
from .errors import (
    BackendUnavailableError,
    CheckpointError,
    CheckpointNotFoundError,
    DeviceError,
    InputError,
    MemoryBudgetError,
)
from .image16 import RGB16Image
from .inpaint import Inpainter
from .model import Discriminator, Generator
from .version import __version__

__all__ = [
    "BackendUnavailableError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "DeviceError",
    "MemoryBudgetError",
    "Inpainter",
    "RGB16Image",
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
