"""Intensity normalisation shared by training and inference (one place, one definition)."""

from __future__ import annotations

import numpy as np


def rescale_percentiles(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Map the ``low``/``high`` percentiles of ``image`` to 0/1 and clip (Bai et al. 2018).

    A constant image maps to zeros. Returns float32.
    """
    x = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(x, [low, high])
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def zscore(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Zero mean, unit variance (within ``mask`` when given). Returns float32."""
    x = np.asarray(image, dtype=np.float32)
    v = x[mask.astype(bool)] if mask is not None else x
    sd = float(v.std()) if v.size else 0.0
    return ((x - float(v.mean() if v.size else 0.0)) / (sd if sd > 0 else 1.0)).astype(np.float32)
