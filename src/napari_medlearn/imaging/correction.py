"""Hand-correction tools for label maps, the ones a Slicer Segment Editor user reaches for.

Each tool takes a label array of one volume (``(z, y, x)``, or ``(y, x)`` where it makes
sense), the voxel spacing in mm, and returns a **new** array; the input is never modified, so
the caller (the correction dock) can turn the difference into one undo step. Every tool works
on one label value and leaves the voxels of other labels alone: growing the myocardium never
eats the LV cavity, filling a hole of the RV never overwrites the myocardium.

Bad requests raise :class:`ValueError` with one line saying what is wrong (interpolation with a
single drawn slice, a margin larger than the volume, an empty label), before anything changes.

- :func:`interpolate_slices`: shape-based interpolation (Raya & Udupa 1990; Herman et al. 1992):
  the signed distance maps of the two drawn slices around each gap are blended linearly along
  the slice axis and thresholded at zero, after moving both to the in-between centroid (so a
  structure that shifts across slices, such as the heart from base to apex, does not vanish in
  the gap as it would in plain shape-based interpolation). Between two concentric discs of
  radius 10 and 20 mm, the middle slice gets a disc of radius 15 mm. SimpleITK's wrapping has no morphological contour
  interpolator, and the signed-distance form is what the literature compares against.
- :func:`remove_islands`: connected components (full connectivity) smaller than a volume in mL
  go, or all but the largest.
- :func:`fill_holes`: background enclosed by the label (in-plane, slice by slice, or in 3D).
- :func:`smooth`: Gaussian smoothing of the label's indicator (sigma in mm per axis), thresholded
  at one half: jagged edges and one-voxel spurs go, a convex shape keeps its volume.
- :func:`grow_shrink`: a margin in mm, measured with the Euclidean distance transform on the
  real voxel spacing (a 2 mm margin on 1 x 1 x 8 mm voxels grows two voxels in-plane, none
  through-plane).
- :func:`restrict_to_window`: voxels of the label (optionally only those of a region, such as a
  brush stroke) whose intensity lies outside ``[low, high]`` return to their previous value:
  threshold-constrained paint.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi


def _check(labels: np.ndarray, label: int, spacing: Sequence[float] | None = None,
           need: bool = True) -> tuple[np.ndarray, np.ndarray]:
    lab = np.asarray(labels)
    if lab.ndim not in (2, 3):
        raise ValueError(f"correction tools work on one 2-D or 3-D label volume; got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be integers; got {lab.dtype}")
    label = int(label)
    if label <= 0:
        raise ValueError(f"choose a label to correct (1 or more); got {label}")
    if spacing is not None and (len(spacing) != lab.ndim or min(spacing) <= 0):
        raise ValueError(f"voxel spacing {tuple(spacing)} does not fit labels of shape {lab.shape}")
    mask = lab == label
    if need and not mask.any():
        raise ValueError(f"label {label} is not drawn anywhere in this volume: nothing to correct")
    return lab, mask


def _signed_distance(mask2d: np.ndarray, spacing2d: Sequence[float]) -> np.ndarray:
    """Negative inside, positive outside, in mm (distance to the nearest voxel of the other side)."""
    inside = ndi.distance_transform_edt(mask2d, sampling=spacing2d)
    outside = ndi.distance_transform_edt(~mask2d, sampling=spacing2d)
    return np.where(mask2d, -inside, outside)


def interpolate_slices(labels: np.ndarray, label: int, spacing: Sequence[float], axis: int = 0) -> np.ndarray:
    """Fill the empty slices between drawn slices of ``label`` along ``axis`` by shape interpolation.

    Only background voxels of the empty slices change; drawn slices are kept as they are. The
    slice positions along ``axis`` weight the blend (slices are equally spaced in a volume).
    """
    lab, mask = _check(labels, label, spacing)
    if lab.ndim != 3:
        raise ValueError(f"interpolation between slices needs a 3-D volume; got shape {lab.shape}")
    axis = int(axis) % 3
    m = np.moveaxis(mask, axis, 0)
    drawn = np.flatnonzero(m.reshape(m.shape[0], -1).any(axis=1))
    if drawn.size < 2:
        raise ValueError(f"interpolation needs label {label} drawn on at least two slices; "
                         f"it is on slice {int(drawn[0])} only")
    gaps = [(int(a), int(b)) for a, b in zip(drawn[:-1], drawn[1:]) if b - a > 1]
    if not gaps:
        raise ValueError(f"label {label} is drawn on every slice from {int(drawn[0])} to {int(drawn[-1])}: "
                         "no empty slice between them to fill")
    plane_spacing = [s for i, s in enumerate(spacing) if i != axis]
    out = np.moveaxis(lab.copy(), axis, 0)
    for a, b in gaps:
        da, db = _signed_distance(m[a], plane_spacing), _signed_distance(m[b], plane_spacing)
        ca, cb = np.array(ndi.center_of_mass(m[a])), np.array(ndi.center_of_mass(m[b]))
        for k in range(a + 1, b):
            w = (k - a) / (b - a)
            ck = (1 - w) * ca + w * cb
            # each end's distance map moved to the in-between centroid, then blended
            sa = ndi.shift(da, ck - ca, order=1, mode="nearest")
            sb = ndi.shift(db, ck - cb, order=1, mode="nearest")
            shape = (1 - w) * sa + w * sb < 0
            out[k][shape & (out[k] == 0)] = label
    return np.moveaxis(out, 0, axis)


def remove_islands(labels: np.ndarray, label: int, spacing: Sequence[float], min_volume_ml: float = 0.0,
                   keep_largest: bool = False) -> np.ndarray:
    """Remove the connected pieces of ``label`` smaller than ``min_volume_ml`` (or all but the largest).

    Removed voxels become background. Connectivity is full (26 neighbours in 3-D).
    """
    lab, mask = _check(labels, label, spacing)
    if not keep_largest and min_volume_ml <= 0:
        raise ValueError("give a smallest island volume above 0 mL, or keep the largest island only")
    comp, n = ndi.label(mask, structure=np.ones((3,) * lab.ndim))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    sizes = np.bincount(comp.ravel())[1:] * voxel_ml
    if keep_largest:
        drop = np.ones(n, bool)
        drop[int(np.argmax(sizes))] = False
    else:
        drop = sizes < min_volume_ml
    out = lab.copy()
    out[np.isin(comp, np.flatnonzero(drop) + 1)] = 0
    return out


def fill_holes(labels: np.ndarray, label: int, planar: bool = True) -> np.ndarray:
    """Background voxels enclosed by ``label`` become ``label`` (slice by slice along axis 0 when
    ``planar``, else in 3-D). Voxels of other labels inside are kept (the LV cavity inside the
    myocardial ring is no hole of the myocardium)."""
    lab, mask = _check(labels, label)
    if planar and lab.ndim == 3:
        filled = np.stack([ndi.binary_fill_holes(s) for s in mask])
    else:
        filled = ndi.binary_fill_holes(mask)
    out = lab.copy()
    out[filled & (lab == 0)] = label
    return out


def smooth(labels: np.ndarray, label: int, spacing: Sequence[float], sigma_mm: float = 1.0) -> np.ndarray:
    """Gaussian-smooth the outline of ``label`` (sigma in mm on every axis, so thick slices are
    smoothed less in voxels); voxels leave the label or join it from the background only."""
    lab, mask = _check(labels, label, spacing)
    if sigma_mm <= 0:
        raise ValueError(f"smoothing needs a sigma above 0 mm; got {sigma_mm}")
    sigma = [sigma_mm / s for s in spacing]
    soft = ndi.gaussian_filter(mask.astype(np.float32), sigma=sigma, mode="nearest")
    out = lab.copy()
    out[mask & (soft < 0.5)] = 0
    out[(lab == 0) & (soft >= 0.5)] = label
    return out


def grow_shrink(labels: np.ndarray, label: int, spacing: Sequence[float], margin_mm: float) -> np.ndarray:
    """Grow ``label`` into the background by ``margin_mm`` (or shrink it, for a negative margin),
    measured as Euclidean distance on the real voxel spacing."""
    lab, mask = _check(labels, label, spacing)
    extent = [n * s for n, s in zip(lab.shape, spacing)]
    if abs(margin_mm) > max(extent):
        dims = " x ".join(f"{e:g}" for e in extent)
        raise ValueError(f"a margin of {margin_mm:g} mm is larger than the volume ({dims} mm)")
    if abs(margin_mm) < min(spacing):
        raise ValueError(f"a margin of {margin_mm:g} mm is smaller than the smallest voxel side "
                         f"({min(spacing):g} mm): nothing would change")
    out = lab.copy()
    if margin_mm > 0:
        near = ndi.distance_transform_edt(~mask, sampling=spacing) <= margin_mm
        out[near & (lab == 0)] = label
    else:
        # distance from each label voxel to the nearest voxel outside the label
        depth = ndi.distance_transform_edt(mask, sampling=spacing)
        out[mask & (depth <= -margin_mm)] = 0
    return out


def restrict_to_window(labels: np.ndarray, label: int, image: np.ndarray, low: float, high: float,
                       region: np.ndarray | None = None, previous: np.ndarray | None = None) -> np.ndarray:
    """Voxels of ``label`` (inside ``region``, when given) whose ``image`` intensity lies outside
    ``[low, high]`` go back to ``previous`` (their values before the stroke) or to background."""
    lab, mask = _check(labels, label, need=False)
    img = np.asarray(image)
    if img.shape != lab.shape:
        raise ValueError(f"the image {img.shape} and the labels {lab.shape} are not on one grid")
    if not low <= high:
        raise ValueError(f"the intensity window's low end {low:g} is above its high end {high:g}")
    outside = mask & ((img < low) | (img > high))
    if region is not None:
        outside &= np.asarray(region, bool)
    out = lab.copy()
    out[outside] = 0 if previous is None else np.asarray(previous)[outside]
    return out
