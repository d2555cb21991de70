"""Thick-slice geometry: slice-profile simulation, the super-resolved grid, resampling by affines.

A 2D multi-slice MR stack samples the anatomy with a slice profile much wider than the in-plane
pixel: each thick slice is a weighted average of the thin slices it covers (box profile: plain
average; Gaussian: a Gaussian of the same FWHM). :func:`thick_slices` simulates that from a thin
volume, never by decimation. Field-of-view convention (Oktay et al., MICCAI 2016; this package's
``methods.super_resolve``): thick slice ``i`` covers thin slices ``i*f .. i*f+f-1``, so its centre
sits at thin index ``i*f + (f-1)/2`` and its affine says so. :func:`fine_grid` is the reverse:
``N*f`` slices over the same extent. :func:`resample` puts any stack into any other grid from the
two affines only (voxel ``(z, y, x)`` -> RAS mm, :mod:`napari_medlearn.imaging.volume`), with
cubic B-splines (scipy.ndimage), which is also the interpolation baseline.
"""

from __future__ import annotations

import numpy as np

PROFILES = ("box", "gaussian")


def _check_factor(factor) -> int:
    """``factor`` as an int; ``ValueError`` unless it is a whole number >= 2."""
    ok = (isinstance(factor, (int, float, np.integer, np.floating)) and not isinstance(factor, bool)
          and np.isfinite(factor) and float(factor).is_integer() and factor >= 2)
    if not ok:
        raise ValueError(f"the factor must be an integer >= 2, got {factor!r}")
    return int(factor)


def profile_weights(n_fine: int, factor: int, profile: str = "box") -> np.ndarray:
    """``(n_fine // factor, n_fine)`` matrix: row ``i`` is thick slice ``i``'s profile over thin slices.

    ``box``: ``1/f`` on thin slices ``i*f .. i*f+f-1``; ``gaussian``: FWHM ``f`` thin slices centred
    on ``i*f + (f-1)/2``, truncated at 3 sigma and renormalised (at the ends of the volume too).
    Thin slices past the last whole thick slice are not covered.
    """
    f = _check_factor(factor)
    if profile not in PROFILES:
        raise ValueError(f"slice profile {profile!r} not supported; known: {', '.join(PROFILES)}")
    n_thick = n_fine // f
    if n_thick < 1:
        raise ValueError(f"{n_fine} thin slices are fewer than the factor {f}")
    w = np.zeros((n_thick, n_fine))
    if profile == "box":
        for i in range(n_thick):
            w[i, i * f:(i + 1) * f] = 1.0 / f
    else:
        sigma = f / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        k = np.arange(n_fine)
        for i in range(n_thick):
            d = k - (i * f + (f - 1) / 2.0)
            row = np.where(np.abs(d) <= 3 * sigma, np.exp(-0.5 * (d / sigma) ** 2), 0.0)
            w[i] = row / row.sum()
    return w


def thick_affine(affine: np.ndarray, factor: int, axis: int = 0) -> np.ndarray:
    """Affine of the thick stack simulated from a thin volume with ``affine`` (``axis`` thickened)."""
    f = _check_factor(factor)
    a = np.asarray(affine, float).copy()
    centre = np.zeros(4)
    centre[axis] = (f - 1) / 2.0
    centre[3] = 1.0
    origin = a @ centre
    a[:3, axis] *= f
    a[:3, 3] = origin[:3]
    return a


def thick_slices(volume: np.ndarray, affine: np.ndarray, factor: int, profile: str = "box",
                 axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Simulate a thick-slice acquisition of a thin ``(z, y, x)`` volume along ``axis``.

    Returns ``(stack, stack_affine)``: ``stack`` has ``n // factor`` slices along ``axis``
    (float32), each the ``profile``-weighted average of the thin slices it covers, and
    ``stack_affine`` puts every thick slice at the centre of those slices.
    """
    v = np.asarray(volume, np.float32)
    if v.ndim != 3:
        raise ValueError(f"expected a 3-D volume (z, y, x), got {v.ndim}-D {v.shape}")
    w = profile_weights(v.shape[axis], factor, profile).astype(np.float32)
    moved = np.moveaxis(v, axis, 0)
    out = np.tensordot(w, moved, axes=(1, 0))
    return np.ascontiguousarray(np.moveaxis(out, 0, axis), np.float32), thick_affine(affine, factor, axis)


def fine_grid(shape: tuple[int, ...], affine: np.ndarray, factor: int, axis: int = 0
              ) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of the super-resolved grid of a thick stack: ``N*factor`` slices along
    ``axis`` over the same extent (thin slice ``k`` of thick slice ``i`` is ``i*factor + k``)."""
    f = _check_factor(factor)
    a = np.asarray(affine, float).copy()
    start = np.zeros(4)
    start[axis] = -(f - 1) / (2.0 * f)
    start[3] = 1.0
    origin = a @ start
    a[:3, axis] /= f
    a[:3, 3] = origin[:3]
    out = list(shape[-3:])
    out[axis] *= f
    return tuple(int(s) for s in out), a


def _source_matrix(affine: np.ndarray, target_affine: np.ndarray) -> np.ndarray:
    m = np.linalg.inv(np.asarray(affine, float)) @ np.asarray(target_affine, float)
    return m


def resample(array: np.ndarray, affine: np.ndarray, shape: tuple[int, int, int],
             target_affine: np.ndarray, order: int = 3, mode: str = "nearest",
             cval: float = 0.0) -> np.ndarray:
    """``array`` (voxel -> world ``affine``) sampled on the grid ``shape`` / ``target_affine``.

    Cubic B-spline (``order=3``) by default; ``mode`` says what lies outside the source
    (``"nearest"`` repeats the edge; see :func:`coverage` for where the source really is).
    """
    a = np.asarray(array, np.float32)
    if a.ndim != 3:
        raise ValueError(f"expected a 3-D array, got {a.shape}")
    m = _source_matrix(affine, target_affine)
    lin = m[:3, :3]
    matrix = np.diag(lin) if np.allclose(lin, np.diag(np.diag(lin))) else lin
    from scipy import ndimage as ndi

    out = ndi.affine_transform(a, matrix, offset=m[:3, 3], output_shape=tuple(int(s) for s in shape),
                               order=order, mode=mode, cval=cval, prefilter=order > 1)
    return out.astype(np.float32, copy=False)


def coverage(source_shape: tuple[int, int, int], source_affine: np.ndarray,
             shape: tuple[int, int, int], target_affine: np.ndarray) -> np.ndarray:
    """Boolean ``shape`` mask: target voxels whose centre lies inside the source stack's extent
    (within half a voxel of its first and last voxel centres along every axis)."""
    m = _source_matrix(source_affine, target_affine)
    ny, nx = shape[1], shape[2]
    jj, ii = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    out = np.zeros(shape, bool)
    lim = np.asarray(source_shape, float)
    for k in range(shape[0]):
        pts = np.stack([np.full(jj.size, k), jj.ravel(), ii.ravel()]).astype(float)
        src = m[:3, :3] @ pts + m[:3, 3:4]
        inside = np.all((src >= -0.5) & (src <= lim[:, None] - 0.5), axis=0)
        out[k] = inside.reshape(ny, nx)
    return out


def spline_upsample(stack: np.ndarray, affine: np.ndarray, factor: int, axis: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Cubic B-spline interpolation of a thick stack onto its :func:`fine_grid` (the baseline)."""
    shape, fine = fine_grid(np.shape(stack), affine, factor, axis)
    return resample(stack, affine, shape, fine, order=3), fine
