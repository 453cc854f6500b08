"""llmcourse: the helper package of the open LLM course.

Submodules (imported lazily, so ``import llmcourse`` stays fast and never loads transformers):
``utils``, ``attention``, ``positional``, ``transformer``, ``params``, ``data``, ``train``, ``models``,
``plots``. Importing the package switches Hugging Face libraries to offline mode
(see :func:`llmcourse.utils.configure_offline`).
"""
import importlib as _importlib

from . import utils
from .utils import get_device, seed_everything

__all__ = ["get_device", "seed_everything", "utils"]  # the eager names; submodules load on first use
__version__ = "0.1.0"

utils.configure_offline()


def __getattr__(name: str):
    """Import submodules on first use: ``llmcourse.attention`` works without an explicit import."""
    if name.startswith("_"):
        raise AttributeError(name)
    try:
        return _importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"{__name__}.{name}":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        raise
