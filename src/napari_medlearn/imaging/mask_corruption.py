"""Damage a cardiac label map the way real segmentations fail.

One module for the shape prior's denoising training, its model-card evaluation and the tests,
so all three mean the same thing by "a hole" or "a bitten ring". Each corruption takes integer
labels ``(z, y, x)`` (0 background, 1 LV cavity, 2 myocardium, 3 RV cavity), the spacing in mm
and a ``numpy.random.Generator``, and returns a new array (the input is never modified); sizes
are in mm so the damage looks alike on any grid.

* ``holes``: 1-3 round holes (5-11 mm radius) punched into the cavities or the myocardium,
  through one or two slices;
* ``islands``: 1-4 blobs (4-10 mm) of a random structure 10-45 mm outside the heart;
* ``lost_slice``: one slice through the heart (not the first or last of the heart) emptied;
* ``bitten_ring``: a 50-130 degree sector of the myocardial ring removed in 1-3 slices;
* ``ragged``: boundaries roughened by re-drawing each boundary voxel from a random neighbour
  up to 2 voxels away;
* ``combined``: two or three of the above, in random order.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage as ndi

LV, MYO, RV = 1, 2, 3


def _heart_slices(lab: np.ndarray) -> np.ndarray:
    return np.flatnonzero((lab > 0).reshape(lab.shape[0], -1).any(axis=1))


def _disc(shape2d, centre, radius_px) -> np.ndarray:
    yy, xx = np.ogrid[:shape2d[0], :shape2d[1]]
    return ((yy - centre[0]) / radius_px[0]) ** 2 + ((xx - centre[1]) / radius_px[1]) ** 2 <= 1.0


def holes(labels: np.ndarray, spacing, rng: np.random.Generator) -> np.ndarray:
    out = np.array(labels, copy=True)
    for _ in range(int(rng.integers(1, 4))):
        v = int(rng.choice([LV, RV, MYO], p=[0.45, 0.3, 0.25]))
        pts = np.argwhere(out == v)
        if len(pts) == 0:
            continue
        z, y, x = pts[rng.integers(len(pts))]
        r = rng.uniform(5, 11)
        disc = _disc(out.shape[1:], (y, x), (r / spacing[1], r / spacing[2]))
        for zz in range(z, min(out.shape[0], z + int(rng.integers(1, 3)))):
            sl = out[zz]
            sl[disc & (sl == v)] = 0
    return out


def islands(labels: np.ndarray, spacing, rng: np.random.Generator) -> np.ndarray:
    out = np.array(labels, copy=True)
    heart = (out > 0).any(axis=0)
    if not heart.any():
        return out
    zs = _heart_slices(out)
    dist = ndi.distance_transform_edt(~heart, sampling=spacing[1:])
    cand = np.argwhere((dist >= 10) & (dist <= 45))
    if len(cand) == 0:
        return out
    Z, H, W = out.shape
    for _ in range(int(rng.integers(1, 5))):
        y, x = cand[rng.integers(len(cand))]
        z = int(rng.integers(zs[0], zs[-1] + 1))
        r = rng.uniform(4, 10)
        disc = _disc((H, W), (y, x), (r / spacing[1], r / spacing[2]))
        v = int(rng.integers(1, 4))
        for zz in range(z, min(Z, z + int(rng.integers(1, 3)))):
            out[zz][disc & (out[zz] == 0)] = v
    return out


def lost_slice(labels: np.ndarray, spacing, rng: np.random.Generator) -> np.ndarray:
    out = np.array(labels, copy=True)
    zs = _heart_slices(out)
    inner = zs[1:-1] if len(zs) > 2 else zs
    if len(inner):
        out[int(rng.choice(inner))] = 0
    return out


def bitten_ring(labels: np.ndarray, spacing, rng: np.random.Generator) -> np.ndarray:
    out = np.array(labels, copy=True)
    zs = np.flatnonzero(((out == MYO) & True).reshape(out.shape[0], -1).sum(axis=1) > 0)
    if len(zs) == 0:
        return out
    z0 = int(rng.choice(zs))
    width = np.deg2rad(rng.uniform(50, 130))
    start = rng.uniform(0, 2 * np.pi)
    for z in range(z0, min(out.shape[0], z0 + int(rng.integers(1, 4)))):
        sl = out[z]
        ref = sl == LV if np.any(sl == LV) else sl == MYO
        if not ref.any():
            continue
        cy, cx = np.argwhere(ref).mean(axis=0)
        yy, xx = np.mgrid[:sl.shape[0], :sl.shape[1]]
        ang = np.mod(np.arctan2((yy - cy) * spacing[1], (xx - cx) * spacing[2]) - start, 2 * np.pi)
        sl[(ang < width) & (sl == MYO)] = 0
    return out


def ragged(labels: np.ndarray, spacing, rng: np.random.Generator) -> np.ndarray:
    lab = np.asarray(labels)
    out = lab.copy()
    edge = np.zeros(lab.shape, bool)
    for v in np.unique(lab):
        m = lab == v
        edge |= m ^ ndi.binary_erosion(m, structure=np.ones((1, 3, 3)))
    pts = np.argwhere(edge)
    if len(pts) == 0:
        return out
    dy, dx = rng.integers(-2, 3, size=(2, len(pts)))
    y = np.clip(pts[:, 1] + dy, 0, lab.shape[1] - 1)
    x = np.clip(pts[:, 2] + dx, 0, lab.shape[2] - 1)
    out[pts[:, 0], pts[:, 1], pts[:, 2]] = lab[pts[:, 0], y, x]
    # a second pass makes spikes rather than salt-and-pepper
    grow = ndi.binary_dilation(out != lab, structure=np.ones((1, 3, 3))) & edge
    pts2 = np.argwhere(grow & (rng.random(lab.shape) < 0.5))
    if len(pts2):
        dy, dx = rng.integers(-2, 3, size=(2, len(pts2)))
        out[pts2[:, 0], pts2[:, 1], pts2[:, 2]] = out[pts2[:, 0], np.clip(pts2[:, 1] + dy, 0, lab.shape[1] - 1),
                                                      np.clip(pts2[:, 2] + dx, 0, lab.shape[2] - 1)]
    return out


SINGLE: dict[str, Callable] = {"holes": holes, "islands": islands, "lost_slice": lost_slice,
                               "bitten_ring": bitten_ring, "ragged": ragged}


def combined(labels: np.ndarray, spacing, rng: np.random.Generator) -> np.ndarray:
    names = list(SINGLE)
    pick = rng.choice(len(names), size=int(rng.integers(2, 4)), replace=False)
    out = np.asarray(labels)
    for i in pick:
        out = SINGLE[names[int(i)]](out, spacing, rng)
    return out


CORRUPTIONS: dict[str, Callable] = {**SINGLE, "combined": combined}


def corrupt(labels: np.ndarray, spacing, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Apply corruption ``kind`` (a key of :data:`CORRUPTIONS`) to ``(z, y, x)`` labels."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"corruption {kind!r} not supported; known: {', '.join(CORRUPTIONS)}")
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"expected (z, y, x) labels, got shape {lab.shape}")
    return CORRUPTIONS[kind](lab, tuple(float(s) for s in spacing), rng)
