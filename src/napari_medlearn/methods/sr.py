"""Super-resolution of thick-slice MR stacks: one stack (learned z-upsampling) or several fused.

O. Oktay et al., "Multi-input Cardiac Image Super-Resolution Using Convolutional Neural
Networks", MICCAI 2016 (:mod:`napari_medlearn.nets.sr`).

Geometry (:mod:`napari_medlearn.imaging.slices`): a stack is ``(z, y, x)``, thick along z;
thick slice ``i`` covers output slices ``i*f .. i*f+f-1``, so the output has ``N*f`` slices over
the same extent and its affine moves the slice centres accordingly. A cine ``(t, z, y, x)`` is
done frame by frame. Several stacks of the same anatomy in any orientations are put onto one
grid (the first stack's frame and field of view, ``spacing`` mm) from their affines alone, by
cubic B-spline, and fused by the Siamese network; where a stack does not reach, the first
stack's interpolation stands in for it.

Baselines, on the same grids: cubic B-spline interpolation of the stack (``model="spline"``) and
the average of the interpolated stacks (``model="average"``). Intensities are divided by the
first stack's 99.5th percentile before the network and scaled back after. The networks learnt
MR magnitudes (>= 0, background 0): an image with negative values (z-scored, e.g. BraTS's
``*_subtrMeanDivStd`` files, whose background is their minimum) is first shifted so that its
minimum is 0 and shifted back after (:func:`intensity_offset`). Without the shift a z-scored
BraTS FLAIR came out 9 dB below the spline.

``super_resolve_steps`` / ``super_resolve_stacks_steps`` yield ``(done, total, message)`` and
return an :class:`SRResult` (GUI workers); ``super_resolve`` / ``super_resolve_stacks`` drain them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Generator, Sequence

import numpy as np

from ..imaging import slices as S
from ..imaging.volume import affine_from_spacing, spacing_from_affine
from .cardiac import drain

TASK_SINGLE = "mr-super-resolution"
TASK_MULTI = "mr-super-resolution-multi"
BASELINES = {"spline": TASK_SINGLE, "average": TASK_MULTI}
Progress = Callable[[int, int, str], Any]
TILE, HALO = 96, 8


@dataclass(frozen=True, eq=False)
class SRResult:
    """What :func:`super_resolve` / :func:`super_resolve_stacks` produced.

    Attributes
    ----------
    image
        float32 ``(Z, Y, X)`` (or ``(t, Z, Y, X)`` for a cine): the super-resolved volume.
    spacing
        mm per spatial axis of ``image``, ``(dz, dy, dx)``.
    affine
        4x4 voxel ``(z, y, x)`` -> RAS mm of ``image``.
    baseline
        float32, ``image``'s shape: cubic B-spline interpolation (one stack) or the average of the
        interpolated stacks (several).
    factor
        Through-plane factor (one stack), or None (several).
    model_name, model_sha256, seconds
        Which weights produced this (``"spline"``/``"average"`` for the baselines) and the wall
        time without model loading.
    backend
        What ran the network (:mod:`napari_medlearn.inference`; "" for the baselines).
    """

    image: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    baseline: np.ndarray
    factor: int | None = None
    model_name: str = ""
    model_sha256: str = ""
    seconds: float = 0.0
    backend: str = ""


def _finite_array(a, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.size == 0:
        raise ValueError(f"{what} is empty")
    if np.iscomplexobj(arr) or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{what} must hold real numbers, got {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or Inf values")
    return arr


def _spacing3(spacing, what: str = "spacing") -> tuple[float, float, float]:
    try:
        sp = tuple(float(s) for s in spacing)
    except TypeError:
        raise ValueError(f"{what} needs three values (dz, dy, dx) in mm, got {spacing!r}") from None
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"{what} needs three positive values (dz, dy, dx) in mm, got {spacing!r}")
    return sp


def validate_stack(stack, spacing, factor) -> tuple[np.ndarray, tuple[float, float, float], int]:
    """``(float32 stack, spacing, factor)``; ``ValueError`` naming the problem otherwise."""
    arr = np.asarray(stack)
    if arr.ndim not in (3, 4):
        raise ValueError(f"expected a stack (z, y, x) or a cine (t, z, y, x), got a {arr.ndim}-D array "
                         f"{arr.shape}" + (" (a single 2D image has no slices to add)" if arr.ndim == 2 else ""))
    arr = _finite_array(arr, "the stack")
    if arr.shape[-3] < 2:
        raise ValueError(f"the stack has {arr.shape[-3]} slice; super-resolution along z needs at least 2")
    if min(arr.shape[-2:]) < 4:
        raise ValueError(f"in-plane size {arr.shape[-2:]} is too small (need at least 4x4)")
    f = S._check_factor(factor)
    return arr, _spacing3(spacing), f


def intensity_scale(stack: np.ndarray) -> float:
    """The value divided out before the network: the 99.5th percentile (else the peak, else 1)."""
    a = np.abs(np.asarray(stack, np.float32))
    s = float(np.percentile(a, 99.5)) if a.size else 0.0
    if not s > 0:
        s = float(a.max()) if a.size else 0.0
    return s if s > 0 else 1.0


def intensity_offset(*stacks: np.ndarray) -> float:
    """The value subtracted before the network: the stacks' minimum when negative, else 0."""
    lo = min(float(np.min(a)) for a in stacks) if stacks else 0.0
    return lo if lo < 0 else 0.0


def resolve_model(model, task: str, device: str = "auto"):
    """A loaded module for ``model`` (module, zoo name, checkpoint path, or None = best shipped)."""
    from .. import zoo

    if hasattr(model, "forward"):
        return model
    if model:
        return zoo.load(model, device=device, task="mr-super-resolution")
    if not zoo.available(task):
        cmd = "sr-brain"
        raise zoo.ModelError(f"no super-resolution model for {task} available: train one "
                             f"(medlearn train {cmd} --ship), or use model='{'spline' if task == TASK_SINGLE else 'average'}'")
    return zoo.load(zoo.default_model(task), device=device)


def _tiles(n: int, tile: int, halo: int) -> list[tuple[int, int, int, int]]:
    """``(read_start, read_stop, keep_start, keep_stop)`` covering ``0..n`` along one axis."""
    out = []
    for s in range(0, n, tile):
        e = min(s + tile, n)
        rs, re_ = max(0, s - halo), min(n, e + halo)
        out.append((rs, re_, s - rs, s - rs + (e - s)))
    return out


def _run_tiled(net, x: np.ndarray, z_out: int, dev, cancelled=None, backend: str = "auto",
               used: list | None = None) -> Generator[int, None, np.ndarray]:
    """Network over ``(C, Z, Y, X)`` in in-plane tiles with a halo, each through
    :func:`inference.engine` (one export per tile shape: at most four per stack); yields after
    each tile. What ran is appended to ``used``."""
    import torch

    from ..inference import engine

    _, _, ny, nx = x.shape
    out = np.empty((z_out, ny, nx), np.float32)
    for ys in _tiles(ny, TILE, HALO):
        for xs in _tiles(nx, TILE, HALO):
            if cancelled is not None and cancelled():
                raise InterruptedError("cancelled")
            patch = torch.from_numpy(np.ascontiguousarray(x[:, :, ys[0]:ys[1], xs[0]:xs[1]]))[None].to(dev)
            run = engine(net, [patch], backend=backend)
            if used is not None:
                used.append(run.backend)
            with torch.inference_mode():
                pred = run(patch)[0, 0].float().cpu().numpy()
            out[:, ys[0] + ys[2]:ys[0] + ys[3], xs[0] + xs[2]:xs[0] + xs[3]] = \
                pred[:, ys[2]:ys[3], xs[2]:xs[3]]
            yield 1
    return out


def _n_tiles(ny: int, nx: int) -> int:
    return len(_tiles(ny, TILE, HALO)) * len(_tiles(nx, TILE, HALO))


def _card_of(net) -> dict:
    return getattr(net, "card", {}) or {}


def super_resolve_steps(stack, spacing, factor, model=None, device: str = "auto",
                        affine: np.ndarray | None = None, cancelled: Callable[[], bool] | None = None,
                        backend: str = "auto") -> Generator[tuple[int, int, str], None, SRResult]:
    """Super-resolve, yielding ``(done, total, message)``; returns the :class:`SRResult`."""
    from ..inference import check_backend

    arr, sp, f = validate_stack(stack, spacing, factor)
    backend, used = check_backend(backend), []
    if affine is None:
        affine = affine_from_spacing(sp)
    affine = np.asarray(affine, float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ValueError("the affine must be a finite, invertible 4x4 matrix")
    frames = arr[None] if arr.ndim == 3 else arr
    baseline_only = isinstance(model, str) and model == "spline"
    net = None if baseline_only else resolve_model(model, TASK_SINGLE, device)
    if net is not None:
        net_f = int(getattr(net, "factor", 0) or _card_of(net).get("arch_args", {}).get("factor", 0))
        if net_f != f:
            name = getattr(net, "zoo_name", "this model")
            raise ValueError(f"{name} upsamples by {net_f}; asked for a factor of {f} (choose a model trained "
                             f"for x{f}, or model='spline')")
        dev = next(net.parameters()).device
    # a planar network (2D kernels in (z, y), trained SMORE-style) runs on the (z, y) planes and
    # on the (z, x) planes; the two estimates are averaged
    planar = net is not None and bool(getattr(net, "planar", False))
    passes = 2 if planar else 1
    total = len(frames) * (1 + (0 if net is None else passes * _n_tiles(*arr.shape[-2:])))
    done = 0
    t0 = time.perf_counter()
    yield done, total, "interpolating"
    images, bases = [], []
    fine_aff = None
    for t, frame in enumerate(frames):
        if cancelled is not None and cancelled():
            raise InterruptedError("cancelled")
        base, fine_aff = S.spline_upsample(frame, affine, f)
        bases.append(base)
        done += 1
        yield done, total, f"frame {t + 1}/{len(frames)}: spline"
        if net is None:
            images.append(base)
            continue
        lo = intensity_offset(frame)
        s = intensity_scale(frame - lo)
        xs = (frame - lo) / s
        estimates = []
        for k in range(passes):
            x = xs[None] if k == 0 else np.ascontiguousarray(xs.swapaxes(-1, -2))[None]
            gen = _run_tiled(net, x, frame.shape[0] * f, dev, cancelled, backend, used)
            while True:
                try:
                    next(gen)
                except StopIteration as stop:
                    estimates.append(stop.value if k == 0 else stop.value.swapaxes(-1, -2))
                    break
                done += 1
                yield done, total, f"frame {t + 1}/{len(frames)}: network"
        images.append(np.mean(estimates, axis=0) * s + lo)
    image = np.stack(images) if arr.ndim == 4 else images[0]
    baseline = np.stack(bases) if arr.ndim == 4 else bases[0]
    card = {} if net is None else _card_of(net)
    return SRResult(image=image.astype(np.float32, copy=False), spacing=spacing_from_affine(fine_aff),
                    affine=fine_aff, baseline=baseline.astype(np.float32, copy=False), factor=f,
                    model_name="spline" if net is None else str(getattr(net, "zoo_name", card.get("name", ""))),
                    model_sha256=str(card.get("sha256", "")), seconds=time.perf_counter() - t0,
                    backend="+".join(dict.fromkeys(used)))


def super_resolve(stack, spacing, factor, model=None, progress: Progress | None = None,
                  device: str = "auto", affine: np.ndarray | None = None, backend: str = "auto") -> SRResult:
    """Super-resolve a thick-slice stack ``(z, y, x)`` (or a cine ``(t, z, y, x)``) along z.

    Parameters
    ----------
    stack
        Real array, thick along z (axis -3).
    spacing
        ``(dz, dy, dx)`` mm of the stack.
    factor
        Integer >= 2: the output has ``N*factor`` slices over the same extent.
    model
        Zoo name, checkpoint path, loaded module, None (best shipped model) or ``"spline"``
        (cubic B-spline interpolation only).
    affine
        The stack's voxel -> world affine (default: axis-aligned from ``spacing``); the result's
        affine is derived from it.
    progress
        Called with ``(done, total, message)``.
    backend
        ``"auto"``, ``"torch"`` or ``"onnx"`` (:mod:`napari_medlearn.inference`); the result's
        ``backend`` says which ran.
    """
    return drain(super_resolve_steps(stack, spacing, factor, model, device, affine, backend=backend), progress)


def common_grid(shape: Sequence[int], affine: np.ndarray, spacing) -> tuple[tuple[int, int, int], np.ndarray]:
    """A grid of ``spacing`` mm in the frame and field of view of a stack (``shape``, ``affine``).

    The field of view is the stack's voxel extent (half a voxel beyond the first and last centres
    along each axis); the new voxels tile it, so a thick stack and ``spacing = (dz/f, dy, dx)``
    give exactly :func:`napari_medlearn.imaging.slices.fine_grid`.
    """
    sp = np.asarray(_spacing3(spacing))
    a = np.asarray(affine, float)
    src_sp = np.asarray(spacing_from_affine(a))
    extent = np.asarray(shape[-3:], float) * src_sp
    n = np.maximum(1, np.round(extent / sp)).astype(int)
    direction = a[:3, :3] / src_sp
    out = np.eye(4)
    out[:3, :3] = direction * sp
    first = -0.5 + sp / (2.0 * src_sp)              # first new centre, in source voxel units
    out[:3, 3] = (a @ np.r_[first, 1.0])[:3]
    return tuple(int(v) for v in n), out


def validate_stacks(stacks) -> list[tuple[np.ndarray, np.ndarray]]:
    """Check ``[(array, affine), ...]``; ``ValueError`` naming the stack and the problem."""
    try:
        items = list(stacks)
    except TypeError:
        raise ValueError("stacks must be a list of (array, affine) pairs") from None
    if len(items) < 2:
        raise ValueError(f"fusion needs at least 2 stacks, got {len(items)} (use super_resolve for one)")
    out = []
    for i, item in enumerate(items):
        try:
            arr, aff = item
        except (TypeError, ValueError):
            raise ValueError(f"stack {i}: expected an (array, affine) pair") from None
        a = np.asarray(arr)
        if a.ndim != 3:
            raise ValueError(f"stack {i}: expected a 3-D stack (z, y, x), got {a.ndim}-D {a.shape}")
        a = _finite_array(a, f"stack {i}")
        m = np.asarray(aff, dtype=float)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:3, :3])) < 1e-9:
            raise ValueError(f"stack {i}: the affine must be a finite, invertible 4x4 matrix")
        out.append((a, m))
    return out


def super_resolve_stacks_steps(stacks, spacing, model=None, device: str = "auto",
                               cancelled: Callable[[], bool] | None = None, backend: str = "auto",
                               ) -> Generator[tuple[int, int, str], None, SRResult]:
    """Fuse stacks, yielding ``(done, total, message)``; returns the :class:`SRResult`."""
    from ..inference import check_backend

    items = validate_stacks(stacks)
    backend, used = check_backend(backend), []
    shape, grid = common_grid(items[0][0].shape, items[0][1], spacing)
    if int(np.prod(shape)) > 512 ** 3:
        raise ValueError(f"the output grid {shape} is too large; choose a coarser spacing")
    baseline_only = isinstance(model, str) and model == "average"
    net = None if baseline_only else resolve_model(model, TASK_MULTI, device)
    if net is not None:
        n_in = int(getattr(net, "n_inputs", 0) or _card_of(net).get("arch_args", {}).get("n_inputs", 0))
        if n_in != len(items):
            name = getattr(net, "zoo_name", "this model")
            raise ValueError(f"{name} fuses {n_in} stacks; got {len(items)}")
    total = len(items) + (0 if net is None else _n_tiles(*shape[1:]))
    t0 = time.perf_counter()
    yield 0, total, "resampling stacks"
    # shifted to a minimum of 0 (when negative) before the resampling too, so that where a stack
    # does not reach, its 0 is the background, as for magnitude images
    lo = intensity_offset(*[a for a, _ in items])
    resampled = []
    for i, (a, aff) in enumerate(items):
        a = a - lo if lo else a
        if cancelled is not None and cancelled():
            raise InterruptedError("cancelled")
        cov = S.coverage(a.shape, aff, shape, grid)
        if i > 0 and not cov.any():
            raise ValueError(f"stack {i} does not overlap stack 0: their affines put them in different places")
        r = S.resample(a, aff, shape, grid, order=3)
        if i > 0:
            r = np.where(cov, r, resampled[0])
        resampled.append(r)
        yield i + 1, total, f"stack {i + 1}/{len(items)} resampled"
    x = np.stack(resampled)
    baseline = x.mean(0) + lo
    if net is None:
        image = baseline
    else:
        s = intensity_scale(items[0][0] - lo)
        dev = next(net.parameters()).device
        gen = _run_tiled(net, x / s, shape[0], dev, cancelled, backend, used)
        done = len(items)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                image = stop.value * s + lo
                break
            done += 1
            yield done, total, "fusing"
    card = {} if net is None else _card_of(net)
    return SRResult(image=image.astype(np.float32, copy=False), spacing=spacing_from_affine(grid), affine=grid,
                    baseline=baseline.astype(np.float32, copy=False), factor=None,
                    model_name="average" if net is None else str(getattr(net, "zoo_name", card.get("name", ""))),
                    model_sha256=str(card.get("sha256", "")), seconds=time.perf_counter() - t0,
                    backend="+".join(dict.fromkeys(used)))


def super_resolve_stacks(stacks, spacing, model=None, progress: Progress | None = None,
                         device: str = "auto", backend: str = "auto") -> SRResult:
    """Fuse several thick-slice stacks of the same anatomy into one volume.

    Parameters
    ----------
    stacks
        ``[(array, affine), ...]``: 3-D ``(z, y, x)`` arrays with their voxel -> world (RAS mm)
        affines, in any orientations; the first is the reference (output frame and field of view).
    spacing
        ``(dz, dy, dx)`` mm of the output grid, in the first stack's frame.
    model
        Zoo name, checkpoint path, loaded module, None (best shipped fusion model) or
        ``"average"`` (the average of the interpolated stacks only).
    """
    return drain(super_resolve_stacks_steps(stacks, spacing, model, device, backend=backend), progress)


def sr_quality(reference: np.ndarray, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """PSNR (dB) inside ``mask`` (whole volume when None; peak = the reference's maximum there) and
    SSIM of the slices (:func:`napari_medlearn.imaging.measures.image_quality`)."""
    from ..imaging.measures import image_quality

    ref = np.asarray(reference, np.float64)
    est = np.asarray(image, np.float64)
    q = image_quality(ref, est)
    if mask is not None:
        m = np.asarray(mask, bool)
        if not m.any():
            raise ValueError("the mask is empty")
        peak = float(ref[m].max())
        mse = float(np.mean((ref[m] - est[m]) ** 2))
        q["psnr_db"] = float(10 * np.log10(peak ** 2 / mse)) if mse > 0 else float("inf")
    return q
