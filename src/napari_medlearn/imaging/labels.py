"""Label-map clean-up: largest connected component and hole filling ("plain morphology")."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a boolean mask (full connectivity)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    lab, n = ndi.label(mask, structure=np.ones((3,) * mask.ndim))
    if n <= 1:
        return mask
    sizes = ndi.sum_labels(mask, lab, index=np.arange(1, n + 1))
    return lab == (int(np.argmax(sizes)) + 1)


def clean_labels(labels: np.ndarray, values=None) -> np.ndarray:
    """Keep the largest 3D component of each label and fill its in-plane holes.

    ``labels`` is ``(z, y, x)`` (or ``(y, x)``). Voxels dropped from a label become background;
    background holes inside a label's slice become that label; holes filled by other labels
    (the LV cavity inside the myocardial ring) are left alone.
    """
    lab = np.asarray(labels)
    out = np.zeros_like(lab)
    values = [v for v in (np.unique(lab) if values is None else values) if v != 0]
    for v in values:
        out[largest_component(lab == v)] = v
    for v in values:
        m = out == v
        if m.ndim == 2:
            filled = ndi.binary_fill_holes(m)
        else:
            filled = np.stack([ndi.binary_fill_holes(s) for s in m])
        out[filled & (out == 0)] = v
    return out
