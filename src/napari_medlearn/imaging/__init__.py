"""Images as data: volumes with geometry, file I/O, k-space and measures. numpy only (no torch, no Qt)."""

from .volume import Volume, affine_from_spacing, spacing_from_affine

__all__ = ["Volume", "affine_from_spacing", "spacing_from_affine"]
