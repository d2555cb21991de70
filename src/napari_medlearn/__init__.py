"""napari-medlearn: deep-learning methods for medical images, usable in napari and headless.

``zoo`` and ``methods`` are imported lazily so that ``import napari_medlearn`` (which napari
does at start-up through the manifest) stays cheap and does not pull torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["zoo", "methods", "imaging", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from . import imaging, methods, zoo


def __getattr__(name: str):
    if name in ("zoo", "methods", "imaging", "samples", "nets", "training"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
