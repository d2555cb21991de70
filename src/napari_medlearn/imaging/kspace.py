"""k-space: orthonormal centred FFTs, Cartesian sampling masks and undersampling (numpy only).

The conventions every reconstruction in this package shares (Schlemper et al., "A Deep Cascade
of Convolutional Neural Networks for Dynamic MR Image Reconstruction", IEEE TMI 37(2):491-503,
2018, and its code):

- k-space is complex with the image's axis names; the centred FFT puts the DC sample at index
  ``n // 2`` of each transformed axis, and both directions are orthonormal (``norm="ortho"``),
  so energy is preserved (Parseval) and zero-filling is the adjoint of undersampling.
- Cartesian sampling acquires whole lines: a mask varies along the phase-encoding axis ``y``
  (axis -2) and is constant along the readout axis ``x`` (axis -1). Masks are boolean and
  broadcast against the k-space; leading axes (frames of a cine) each get their own draw.
- Acceleration ``R`` means ``round(ny / R)`` acquired lines, a block of ``centre_lines`` around
  the DC line among them.

Patterns: ``"cartesian"`` draws the other lines at random from a Gaussian variable density plus a
uniform floor (the paper's code: sigma ``ny / 10``, floor ``1 / (2 R)``); ``"equispaced"`` spreads
them evenly, shifted from frame to frame (a sheared lattice for dynamic data).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

PATTERNS = ("cartesian", "equispaced")
AXES = (-2, -1)


def _complex_dtype(x: np.ndarray):
    return np.complex128 if x.dtype in (np.float64, np.complex128, np.longdouble, np.clongdouble) else np.complex64


def fft2c(image: np.ndarray, axes: Sequence[int] = AXES) -> np.ndarray:
    """Orthonormal centred 2D FFT over ``axes`` (default the last two): image -> k-space.

    Real input is treated as complex with zero imaginary part. Single-precision input gives
    ``complex64``, double gives ``complex128``.
    """
    x = np.asarray(image)
    out = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(x, axes=axes), axes=axes, norm="ortho"), axes=axes)
    return out.astype(_complex_dtype(x), copy=False)


def ifft2c(kspace: np.ndarray, axes: Sequence[int] = AXES) -> np.ndarray:
    """Orthonormal centred 2D inverse FFT over ``axes``: k-space -> image (the inverse of :func:`fft2c`)."""
    k = np.asarray(kspace)
    out = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(k, axes=axes), axes=axes, norm="ortho"), axes=axes)
    return out.astype(_complex_dtype(k), copy=False)


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def centre_slice(ny: int, centre_lines: int) -> slice:
    """Indices of the ``centre_lines`` lines around the DC line (index ``ny // 2``)."""
    lo = ny // 2 - centre_lines // 2
    return slice(lo, lo + centre_lines)


def n_lines_for(ny: int, acceleration: float) -> int:
    """Number of acquired lines out of ``ny`` at acceleration ``R``: ``round(ny / R)``, at least 1."""
    return max(1, int(round(ny / float(acceleration))))


def _lines_cartesian(ny: int, n_lines: int, centre: slice, acceleration: float,
                     rng: np.random.Generator) -> np.ndarray:
    k = np.arange(ny, dtype=float)
    pdf = np.exp(-0.5 * ((k - ny // 2) / (ny / 10.0)) ** 2) + 1.0 / (2.0 * acceleration)
    pdf[centre] = 0.0
    lines = np.zeros(ny, dtype=bool)
    lines[centre] = True
    n_more = n_lines - int(lines.sum())
    if n_more > 0:
        pick = rng.choice(ny, size=n_more, replace=False, p=pdf / pdf.sum())
        lines[pick] = True
    return lines


def _lines_equispaced(ny: int, n_lines: int, centre: slice, start: float, frame: int) -> np.ndarray:
    lines = np.zeros(ny, dtype=bool)
    lines[centre] = True
    outside = np.flatnonzero(~lines)
    n_more = n_lines - int(lines.sum())
    if n_more > 0:
        step = len(outside) / n_more
        offset = (start * step + frame) % step      # the lattice moves one line per frame
        idx = np.floor(np.arange(n_more) * step + offset).astype(int) % len(outside)
        lines[outside[idx]] = True
    return lines


def sampling_mask(shape: Sequence[int], acceleration: float, pattern: str = "cartesian",
                  centre_lines: int = 8, seed: int | np.random.Generator | None = 0) -> np.ndarray:
    """A boolean Cartesian sampling mask of ``shape`` ``(..., ny, nx)``.

    Parameters
    ----------
    shape
        ``(ny, nx)`` for one image, or ``(n, ny, nx)`` (more leading axes allowed) for a cine
        or stack: every leading index gets its own, independent line pattern.
    acceleration
        ``R >= 1``; ``round(ny / R)`` lines are acquired (``R = 1``: everything).
    pattern
        ``"cartesian"`` (random, Gaussian variable density) or ``"equispaced"``.
    centre_lines
        Fully sampled lines around the DC line, included in the line count.
    seed
        An int, None (fresh entropy) or a ``numpy.random.Generator``; the same seed gives the
        same mask. For ``"equispaced"`` it sets the lattice's offset, which moves by one line
        per frame.

    Returns
    -------
    numpy.ndarray
        bool ``shape``; constant along the last axis (readout).
    """
    shape = tuple(int(s) for s in shape)
    if pattern not in PATTERNS:
        raise ValueError(f"sampling pattern {pattern!r} not supported; known: {', '.join(PATTERNS)}")
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"a mask needs a shape (..., ny, nx) of positive sizes, got {shape}")
    if not np.isfinite(acceleration) or acceleration < 1:
        raise ValueError(f"acceleration must be a number >= 1, got {acceleration}")
    centre_lines = int(centre_lines)
    ny = shape[-2]
    n_lines = n_lines_for(ny, acceleration)
    if centre_lines < 0:
        raise ValueError(f"centre_lines must be >= 0, got {centre_lines}")
    if centre_lines > n_lines:
        raise ValueError(
            f"{centre_lines} centre lines are more than the {n_lines} lines that acceleration "
            f"{acceleration:g} leaves of {ny}; use fewer centre lines or a lower acceleration")
    centre = centre_slice(ny, centre_lines)
    lead = shape[:-2]
    n_frames = int(np.prod(lead)) if lead else 1
    rng = _rng(seed)
    rows = np.empty((n_frames, ny), dtype=bool)
    if pattern == "cartesian":
        for i in range(n_frames):
            rows[i] = _lines_cartesian(ny, n_lines, centre, acceleration, rng)
    else:
        start = rng.uniform(0.0, 1.0)
        for i in range(n_frames):
            rows[i] = _lines_equispaced(ny, n_lines, centre, start, i)
    mask = np.broadcast_to(rows[:, :, None], (n_frames, ny, shape[-1]))
    return np.ascontiguousarray(mask.reshape(shape))


def acceleration_of(mask: np.ndarray) -> float:
    """The acceleration a mask achieves: samples available / samples acquired (inf if none)."""
    m = np.asarray(mask, dtype=bool)
    n = int(m.sum())
    return float("inf") if n == 0 else m.size / n


def undersample(kspace: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Keep the sampled positions of ``kspace`` (``mask`` broadcasts), zeros elsewhere; complex."""
    k = np.asarray(kspace)
    return np.where(np.asarray(mask, dtype=bool), k, 0).astype(_complex_dtype(k), copy=False)


def zero_filled(kspace: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The zero-filled reconstruction: inverse FFT of the (undersampled) k-space."""
    return ifft2c(kspace if mask is None else undersample(kspace, mask))


def smooth_phase(shape: Sequence[int], amplitude: float, seed: int | np.random.Generator | None = 0) -> np.ndarray:
    """A smooth random phase map (radians) of the last two axes of ``shape``, in ``[-a, a]``.

    Low-order 2D cosine terms with random weights: the slowly varying phase of real MR images
    (B0, coil and receiver phase), so that simulated k-space is not Hermitian-symmetric.
    """
    rng = _rng(seed)
    ny, nx = int(shape[-2]), int(shape[-1])
    y = (np.arange(ny) + 0.5) / ny
    x = (np.arange(nx) + 0.5) / nx
    field = np.zeros((ny, nx))
    for p in range(3):
        for q in range(3):
            w, phi_y, phi_x = rng.normal(), rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
            field += w * np.cos(np.pi * p * y + phi_y)[:, None] * np.cos(np.pi * q * x + phi_x)[None, :]
    peak = np.abs(field).max()
    return (amplitude * field / peak if peak > 0 else field).astype(np.float32)


def simulate_kspace(image: np.ndarray, phase: float | np.ndarray = 0.0,
                    seed: int | np.random.Generator | None = 0) -> np.ndarray:
    """Fully sampled k-space of an image (its :func:`fft2c`), complex64.

    Parameters
    ----------
    image
        A magnitude (real) or complex image ``(..., y, x)``.
    phase
        For a real image: a number ``a`` > 0 multiplies it by ``exp(i * smooth_phase(a))``
        (one map for all leading axes); an array is used as the phase map itself (radians).
        0 keeps a real image real.
    """
    x = np.asarray(image)
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"the image must be numbers, got {x.dtype}")
    if not np.iscomplexobj(x):
        x = x.astype(np.float32, copy=False)
        if np.ndim(phase) > 0:
            x = x * np.exp(1j * np.asarray(phase, dtype=np.float32))
        elif float(phase) != 0.0:
            x = x * np.exp(1j * smooth_phase(x.shape, float(phase), seed))
    return fft2c(x.astype(np.complex64, copy=False))


def simulate_acquisition(image: np.ndarray, acceleration: float = 4.0, pattern: str = "cartesian",
                         centre_lines: int = 8, seed: int | np.random.Generator | None = 0,
                         per_frame: bool = False, phase: float | np.ndarray = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Undersampled k-space and its mask for a fully sampled image.

    ``per_frame=False`` draws one ``(ny, nx)`` mask shared by every leading index (slices of a
    stack); ``per_frame=True`` draws one per leading index (frames of a cine). Returns
    ``(kspace complex64 (..., y, x), mask bool)`` with the mask broadcastable to the k-space.
    """
    x = np.asarray(image)
    if x.ndim < 2:
        raise ValueError(f"an image needs at least two axes (y, x), got shape {x.shape}")
    shape = x.shape if per_frame else x.shape[-2:]
    mask = sampling_mask(shape, acceleration, pattern, centre_lines, seed)
    return undersample(simulate_kspace(x, phase, seed), mask), mask


def intensity_scale(image: np.ndarray) -> float:
    """The number reconstructions divide by before a network sees them: the largest magnitude.

    Applied to the zero-filled image (the only image known at inference), in training and at
    inference alike; 1.0 for an all-zero image.
    """
    peak = float(np.abs(np.asarray(image)).max(initial=0.0))
    return peak if np.isfinite(peak) and peak > 0 else 1.0


KSPACE_SUFFIXES = (".npy", ".h5", ".hdf5")


def read_array(path, key: str | None = None) -> np.ndarray:
    """An array from a ``.npy`` file, or dataset ``key`` of an HDF5 file (``.h5``/``.hdf5``)."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    if p.suffix.lower() == ".npy":
        try:
            return np.load(p, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ValueError(f"{p}: not a readable .npy file ({e})") from None
    if p.suffix.lower() not in (".h5", ".hdf5"):
        raise ValueError(f"{p}: k-space and masks are read from .npy or .h5 files")
    import h5py

    try:
        with h5py.File(p, "r") as f:
            if key not in f:
                raise ValueError(f"{p} has no dataset {key!r}; it has: {', '.join(f.keys()) or 'nothing'}")
            return np.asarray(f[key][()])
    except OSError as e:
        raise ValueError(f"{p}: not a readable HDF5 file ({e})") from None


def read_kspace(path, mask_path=None, kspace_key: str = "kspace",
                mask_key: str = "mask") -> tuple[np.ndarray, np.ndarray | None]:
    """k-space and its mask from ``.npy``/``.h5`` files: ``(kspace, mask or None)``.

    The mask comes from ``mask_path`` when given, else from dataset ``mask_key`` of an HDF5
    ``path`` when it has one, else None.
    """
    from pathlib import Path

    k = read_array(path, kspace_key)
    if mask_path is not None:
        return k, read_array(mask_path, mask_key)
    if Path(path).suffix.lower() in (".h5", ".hdf5"):
        try:
            return k, read_array(path, mask_key)
        except ValueError:
            return k, None
    return k, None


def log_magnitude(kspace: np.ndarray) -> np.ndarray:
    """``log(1 + |k| / median)`` as float32: how k-space is looked at."""
    a = np.abs(np.asarray(kspace))
    nz = a[a > 0]
    ref = float(np.median(nz)) if nz.size else 1.0
    return np.log1p(a / ref).astype(np.float32)


__all__ = [
    "KSPACE_SUFFIXES", "log_magnitude", "read_array", "read_kspace",
    "PATTERNS", "acceleration_of", "centre_slice", "fft2c", "ifft2c", "intensity_scale", "n_lines_for",
    "sampling_mask", "simulate_acquisition", "simulate_kspace", "smooth_phase", "undersample", "zero_filled",
]
