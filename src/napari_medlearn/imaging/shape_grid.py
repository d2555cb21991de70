"""The canonical grid of the cardiac shape prior, and the way there and back.

A label map ``(z, y, x)`` of any spacing and matrix is brought to a fixed box (``grid`` voxels
of ``grid_spacing`` mm, default 12 x 48 x 48 voxels of 10 x 3 x 3 mm = 120 x 144 x 144 mm)
centred on the median foreground position, as one-hot channels resampled trilinearly (so the
result is a partial-volume class map, not a nearest-neighbour copy). :func:`from_canonical`
is the exact inverse mapping of positions: class probabilities on the canonical grid come back
to every voxel of the input's grid (outside the box: background). Only positions move; no
rotation, so a mask's in-plane orientation is kept (the prior is trained with all rotations
and flips). Optionally an in-plane rotation/flip/scale/shift is composed in, which is how the
training augmentation draws its samples from the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

CANONICAL_GRID = (12, 48, 48)
CANONICAL_SPACING = (10.0, 3.0, 3.0)


@dataclass(frozen=True)
class GridMap:
    """Canonical index ``c`` -> input index ``matrix @ c + offset`` (both ``(z, y, x)``)."""

    matrix: np.ndarray
    offset: np.ndarray
    grid: tuple[int, int, int]
    input_shape: tuple[int, int, int]


def foreground_centre(labels: np.ndarray, spacing) -> np.ndarray:
    """Median foreground position in mm (robust to far islands); the volume centre if empty."""
    fg = np.argwhere(np.asarray(labels) > 0)
    sp = np.asarray(spacing, float)
    if len(fg) == 0:
        return (np.asarray(labels.shape, float) - 1) / 2 * sp
    return np.median(fg, axis=0) * sp


def grid_map(input_shape, spacing, centre_mm, grid=CANONICAL_GRID, grid_spacing=CANONICAL_SPACING,
             rotation: float = 0.0, flip: bool = False, scale: float = 1.0) -> GridMap:
    """The voxel map from the canonical grid into an input of ``input_shape``/``spacing``.

    ``rotation`` (radians), ``flip`` and ``scale`` act in-plane about ``centre_mm``
    (augmentation); the defaults give a pure resampling.
    """
    sp = np.asarray(spacing, float)
    gs = np.asarray(grid_spacing, float) * np.array([1.0, scale, scale])
    c, s = np.cos(rotation), np.sin(rotation)
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], float)
    if flip:
        rot = rot @ np.diag([1.0, 1.0, -1.0])
    # mm offset from the centre of canonical voxel i is (i - (G-1)/2) * gs; rotate; add centre
    A = np.diag(1 / sp) @ rot @ np.diag(gs)
    half = (np.asarray(grid, float) - 1) / 2
    offset = np.asarray(centre_mm, float) / sp - A @ half
    return GridMap(A, offset, tuple(int(g) for g in grid), tuple(int(v) for v in input_shape))


def onehot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``(K,) + labels.shape`` float32 one-hot of integer labels in ``0..K-1``."""
    lab = np.asarray(labels)
    return (lab[None] == np.arange(n_classes).reshape((-1,) + (1,) * lab.ndim)).astype(np.float32)


def to_canonical(labels: np.ndarray, gmap: GridMap, n_classes: int) -> np.ndarray:
    """One-hot ``(K, D, H, W)`` float32 of ``labels`` on the canonical grid (trilinear).

    Channels are resampled separately; outside the input, the background channel is 1.
    """
    oh = onehot(labels, n_classes)
    out = np.empty((n_classes,) + gmap.grid, np.float32)
    for k in range(n_classes):
        out[k] = ndi.affine_transform(oh[k], gmap.matrix, gmap.offset, output_shape=gmap.grid, order=1,
                                      mode="constant", cval=1.0 if k == 0 else 0.0)
    return out


def from_canonical(prob: np.ndarray, gmap: GridMap) -> np.ndarray:
    """Class probabilities ``(K, D, H, W)`` on the canonical grid -> ``(K, z, y, x)`` on the input grid.

    Trilinear; input voxels outside the canonical box get background probability 1. Only the
    bounding box of the canonical region inside the input is interpolated.
    """
    K = prob.shape[0]
    inv = np.linalg.inv(gmap.matrix)
    out = np.zeros((K,) + gmap.input_shape, np.float32)
    out[0] = 1.0
    corners = np.array(np.meshgrid(*[[-0.5, g - 0.5] for g in gmap.grid], indexing="ij")).reshape(3, -1)
    pos = gmap.matrix @ corners + gmap.offset[:, None]
    lo = np.clip(np.floor(pos.min(axis=1)).astype(int), 0, gmap.input_shape)
    hi = np.clip(np.ceil(pos.max(axis=1)).astype(int) + 1, 0, gmap.input_shape)
    if np.any(hi <= lo):
        return out
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    # input index j = A c + o  =>  c = inv (j - o); for the box, j = j' + lo
    off = inv @ (lo - gmap.offset)
    for k in range(K):
        out[(k,) + box] = ndi.affine_transform(prob[k], inv, off, output_shape=tuple(hi - lo), order=1,
                                               mode="constant", cval=1.0 if k == 0 else 0.0)
    return out
