"""Cardiac cine MR segmentation and clinical measures (Bai et al., JCMR 2018).

Short-axis slices are segmented one by one by a 2D FCN after the same preprocessing the model
was trained with (percentile rescaling of each frame's volume, in-plane resampling to the
spacing in the model card, padding to the network's size multiple); probabilities are brought
back to the input grid, so labels have the input's shape and geometry whatever its spacing,
matrix or field of view. Each structure keeps its largest 3D component with holes filled.
Measures (volumes, EF, mass) follow :mod:`napari_medlearn.imaging.measures`; ED/ES are the
frames of largest/smallest LV volume over the whole cine.

``segment_heart_steps`` is a generator that yields ``(done, total, message)`` and returns the
result (for a GUI worker); ``segment_heart`` drains it (CLI, batch, tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generator

import numpy as np

from ..imaging import measures as M
from ..imaging.intensity import rescale_percentiles
from ..imaging.labels import clean_labels

TASK = "cardiac-segmentation"
Progress = Callable[[int, int, str], Any]


@dataclass(frozen=True, eq=False)
class CardiacResult:
    """What :func:`segment_heart` found.

    Attributes
    ----------
    labels
        uint8, same shape as the input (``(t, z, y, x)`` or ``(z, y, x)``): 0 background,
        1 LV cavity, 2 myocardium, 3 RV cavity.
    probabilities
        float16 ``(4,) + labels.shape``, class posteriors (index 0 background).
    measures
        :func:`napari_medlearn.imaging.measures.cardiac_measures` of ``labels``.
    ed, es
        End-diastolic and end-systolic frame indices (``es`` is None for a single frame).
    qc
        Quality-control flags, each ``{"flag": ..., "reason": ...}``; empty when nothing is off.
    model_name, model_sha256
        Which weights produced this.
    backend
        What ran the network (``"torch"`` or the CPU runtime, :mod:`napari_medlearn.inference`).
    """

    labels: np.ndarray
    probabilities: np.ndarray
    measures: dict
    ed: int
    es: int | None
    qc: list = field(default_factory=list)
    spacing: tuple = ()
    model_name: str = ""
    model_sha256: str = ""
    backend: str = ""

    @property
    def frames(self) -> int:
        return 1 if self.labels.ndim == 3 else self.labels.shape[0]


# The in-plane field of view of any heart image, from a cropped small heart to a whole body (mm);
# outside it the spacing is not in mm (metres, microns) or is wrong, and the networks' resampling
# would make slices of one pixel or of tens of thousands.
HEART_FOV_MM = (10.0, 1000.0)


def check_field_of_view(shape_yx, spacing_yx, what: str = "the image") -> None:
    """``ValueError`` when ``shape_yx`` pixels of ``spacing_yx`` mm cannot be a heart image's plane."""
    fov = [int(n) * float(s) for n, s in zip(shape_yx, spacing_yx)]
    lo, hi = HEART_FOV_MM
    if min(fov) < lo or max(fov) > hi:
        raise ValueError(
            f"{what}: {shape_yx[0]}x{shape_yx[1]} pixels of {spacing_yx[0]:g} x {spacing_yx[1]:g} mm make an "
            f"in-plane field of view of {fov[0]:.4g} x {fov[1]:.4g} mm, which no heart scan has (expected "
            f"{lo:g} to {hi:g} mm); check the pixel spacing, which must be in mm")


def validate_cine(cine: np.ndarray, spacing) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Check a cine or stack and its spacing; return ``(t, z, y, x)`` float32 and ``(dz, dy, dx)``."""
    arr = np.asarray(cine)
    if arr.size == 0:
        raise ValueError("the image is empty")
    if arr.ndim == 2:
        raise ValueError(
            f"a 2D image {arr.shape} is not enough: cardiac segmentation needs a short-axis stack "
            "(z, y, x) or a cine (t, z, y, x)"
        )
    if arr.ndim not in (3, 4):
        raise ValueError(f"expected (z, y, x) or (t, z, y, x), got a {arr.ndim}-D array {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise ValueError(f"the image must be real-valued numbers, got {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError("the image contains NaN or Inf values")
    if arr.shape[-1] < 16 or arr.shape[-2] < 16:
        raise ValueError(f"in-plane size {arr.shape[-2:]} is too small (need at least 16x16)")
    sp = tuple(float(s) for s in np.ravel(spacing)) if spacing is not None else ()
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be three positive numbers (dz, dy, dx) in mm, got {spacing}")
    check_field_of_view(arr.shape[-2:], sp[1:])
    if arr.ndim == 3:
        arr = arr[None]
    return arr, sp


def _resize(x, size):
    """Bilinear resize of ``(B, C, H, W)`` keeping the field of view (pixel edges align)."""
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == tuple(size):
        return x
    down = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=down)


def predict_slices(model, slices: np.ndarray, in_plane: tuple[float, float], batch_size: int = 8,
                   cancelled: Callable[[], bool] | None = None, backend: str = "auto") -> np.ndarray:
    """Class probabilities for normalised 2D slices ``(N, H, W)`` -> ``(N, K, H, W)`` float32.

    Slices are resampled to the card's in-plane spacing, padded to the network's size multiple
    (zeros: the normalised background), run in batches through :func:`inference.engine`
    (``backend``), and resampled back.
    """
    import torch
    import torch.nn.functional as F

    from ..inference import engine

    card = getattr(model, "card", {}) or {}
    target = float(card.get("input", {}).get("in_plane_spacing_mm", 0) or 0)
    n, h, w = slices.shape
    if target > 0:
        size = (max(16, int(round(h * in_plane[0] / target))), max(16, int(round(w * in_plane[1] / target))))
    else:
        size = (h, w)
    mult = int(getattr(model, "size_multiple", 1))
    ph, pw = (-size[0]) % mult, (-size[1]) % mult
    dev = next(model.parameters()).device
    out = np.empty((n, 0, h, w), dtype=np.float32)
    chunks = []
    example = torch.zeros((1, 1, size[0] + ph, size[1] + pw), device=dev)
    run = engine(model, [example], backend=backend, dynamic=[(0, 2, 3)])
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            if cancelled is not None and cancelled():
                raise InterruptedError("cancelled")
            x = torch.from_numpy(np.ascontiguousarray(slices[i:i + batch_size]))[:, None].to(dev)
            x = _resize(x, size)
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
            p = torch.softmax(run(x), dim=1)
            p = p[..., ph // 2: ph // 2 + size[0], pw // 2: pw // 2 + size[1]]
            p = _resize(p, (h, w))
            chunks.append(p.float().cpu().numpy())
    return np.concatenate(chunks, axis=0) if chunks else out


#: plausible adult ranges, wide on purpose (Petersen et al., JCMR 2017 reference ranges +- margin)
QC_LIMITS = {"LVEDV_mL": (30.0, 450.0), "RVEDV_mL": (30.0, 450.0), "LVEF_pct": (5.0, 85.0),
             "RVEF_pct": (5.0, 85.0), "LV_RV_ratio": (0.4, 2.5)}
MIN_HEART_ML = 5.0


def _flag(flags: list, flag: str, reason: str) -> None:
    flags.append({"flag": flag, "reason": reason})


def quality_flags(labels4: np.ndarray, measures: dict, spacing) -> list[dict]:
    """Automatic quality control of a cardiac segmentation.

    ``labels4`` is ``(t, z, y, x)``. Flags: no heart found; basal or apical coverage missing;
    LV cavity without myocardium around it; implausible volumes, EF or LV:RV ratio; jumps in
    the LV volume curve; in-plane shifts of the LV between neighbouring slices.
    """
    flags: list[dict] = []
    lv_curve = np.asarray(measures["LV_volume_mL"], float)
    if lv_curve.max(initial=0) < MIN_HEART_ML or not np.any(labels4 == M.MYO):
        _flag(flags, "no_heart", "no heart found: no LV cavity with myocardium of a plausible size")
        return flags
    T = labels4.shape[0]
    ed = int(measures["ED_frame"])
    if T == 1:
        _flag(flags, "single_frame", "a single frame: ES volumes and ejection fractions need a cine")
    lv_ed = labels4[ed] == M.LV
    areas = lv_ed.reshape(lv_ed.shape[0], -1).sum(axis=1).astype(float)
    if lv_ed.shape[0] > 1 and areas.max() > 0:
        present = np.flatnonzero(areas > 0)
        first, last = present[0], present[-1]
        base_end = first if areas[first] >= areas[last] else last
        apex_end = last if base_end == first else first
        if base_end in (0, lv_ed.shape[0] - 1) and areas[base_end] > 0.6 * areas.max():
            _flag(flags, "base_missing", "basal slices may be missing: the LV is still large in the end slice")
        if apex_end in (0, lv_ed.shape[0] - 1) and areas[apex_end] > 0.5 * areas.max():
            _flag(flags, "apex_missing", "apical slices may be missing: the LV is still large in the end slice")
    # myocardium around the LV: the share of LV border pixels touching myocardium (mid slices)
    from scipy import ndimage as ndi

    myo_ed = labels4[ed] == M.MYO
    covered = []
    for k in np.flatnonzero(areas > 0.3 * areas.max()) if areas.max() > 0 else []:
        border = lv_ed[k] & ~ndi.binary_erosion(lv_ed[k])
        near_myo = ndi.binary_dilation(myo_ed[k], iterations=2)
        if border.sum():
            covered.append((border & near_myo).sum() / border.sum())
    if covered and float(np.median(covered)) < 0.6:
        _flag(flags, "lv_without_myocardium",
              f"LV cavity without myocardium around it (only {100 * np.median(covered):.0f}% of its border)")
    for key in ("LVEDV_mL", "RVEDV_mL", "LVEF_pct", "RVEF_pct"):
        v = measures.get(key)
        lo, hi = QC_LIMITS[key]
        if v is not None and np.isfinite(v) and not lo <= v <= hi:
            _flag(flags, f"implausible_{key}", f"{M.display_name(key)} = {v:.1f} outside {lo:g}-{hi:g}")
    if measures.get("RVEDV_mL", 0) > 0:
        ratio = measures["LVEDV_mL"] / measures["RVEDV_mL"]
        lo, hi = QC_LIMITS["LV_RV_ratio"]
        if not lo <= ratio <= hi:
            _flag(flags, "implausible_LV_RV_ratio", f"LVEDV:RVEDV = {ratio:.2f} outside {lo:g}-{hi:g}")
    if T >= 10:   # a cine curve is smooth: each frame close to the mean of its (cyclic) neighbours
        resid = np.abs(lv_curve - 0.5 * (np.roll(lv_curve, 1) + np.roll(lv_curve, -1)))
        if resid.max() > 0.15 * lv_curve.max():
            _flag(flags, "volume_curve_jump",
                  f"the LV volume jumps by {resid.max():.1f} mL at frame {int(np.argmax(resid))}")
    centroids = [ndi.center_of_mass(lv_ed[k]) for k in range(lv_ed.shape[0]) if areas[k] > 0.2 * areas.max()]
    if len(centroids) >= 2:
        c = np.asarray(centroids) * np.asarray(spacing[1:])
        shift = float(np.linalg.norm(np.diff(c, axis=0), axis=1).max())
        if shift > 10.0:
            _flag(flags, "slice_shift", f"the LV centre moves {shift:.1f} mm between neighbouring slices "
                                        "(breath-hold mismatch?)")
    return flags


def measure_with_qc(labels: np.ndarray, spacing) -> tuple[dict, list[dict]]:
    """Measures and QC flags of a labelled cine or frame (after hand edits too).

    When no heart is found the clinical measures are NaN rather than numbers made from noise.
    """
    sp = tuple(float(s) for s in spacing)
    meas = M.cardiac_measures(labels, sp)
    qc = quality_flags(labels if np.ndim(labels) == 4 else np.asarray(labels)[None], meas, sp)
    if any(f["flag"] == "no_heart" for f in qc):
        for k in M.CARDIAC_MEASURES:
            meas[k] = float("nan")
    return meas, qc


def segment_heart_steps(
    cine: np.ndarray,
    spacing,
    model=None,
    device: str = "auto",
    batch_size: int = 8,
    cancelled: Callable[[], bool] | None = None,
    transpose_tta: bool = True,
    backend: str = "auto",
) -> Generator[tuple[int, int, str], None, CardiacResult]:
    """Segment a cine, yielding ``(frames_done, frames_total, message)``; returns the result.

    With ``transpose_tta`` the posteriors are averaged with those of the in-plane transposed
    slices, so an input with rows and columns swapped gets exactly the transposed answer.
    ``backend`` runs the network (:func:`napari_medlearn.inference.engine`).
    """
    from .. import zoo
    from ..inference import check_backend, engine

    arr, sp = validate_cine(cine, spacing)
    backend = check_backend(backend)
    single = np.ndim(cine) == 3
    net = model if hasattr(model, "forward") else zoo.load(model or zoo.default_model(TASK), device=device, task=TASK)
    n_classes = int(getattr(net, "card", {}).get("n_classes", 4))
    run = engine(net, [_example(net)], backend=backend, dynamic=[(0, 2, 3)])   # export once, up front
    T, Z, H, W = arr.shape
    probs = np.zeros((n_classes, T, Z, H, W), dtype=np.float16)
    labels = np.zeros((T, Z, H, W), dtype=np.uint8)
    yield 0, T, "segmenting"
    for t in range(T):
        vol = rescale_percentiles(arr[t])
        p = predict_slices(net, vol, sp[1:], batch_size=batch_size, cancelled=cancelled,
                           backend=backend)  # (Z,K,H,W)
        if transpose_tta:
            pt = predict_slices(net, np.ascontiguousarray(vol.transpose(0, 2, 1)), sp[1:][::-1],
                                batch_size=batch_size, cancelled=cancelled, backend=backend)
            p = 0.5 * (p + pt.transpose(0, 1, 3, 2))
        probs[:, t] = p.transpose(1, 0, 2, 3)
        labels[t] = clean_labels(np.argmax(p, axis=1).astype(np.uint8), values=(1, 2, 3))
        yield t + 1, T, f"frame {t + 1}/{T}"
    meas, qc = measure_with_qc(labels[0] if single else labels, sp)
    card = getattr(net, "card", {}) or {}
    return CardiacResult(
        labels=labels[0] if single else labels,
        probabilities=probs[:, 0] if single else probs,
        measures=meas,
        ed=int(meas["ED_frame"]),
        es=meas["ES_frame"],
        qc=qc,
        spacing=sp,
        model_name=str(getattr(net, "zoo_name", card.get("name", ""))),
        model_sha256=str(card.get("sha256", "")),
        backend=run.backend,
    )


def _example(net):
    """A slice like those :func:`predict_slices` feeds ``net`` (batch and size are dynamic axes,
    so this finds the same engine)."""
    import torch

    m = int(getattr(net, "size_multiple", 1))
    return torch.zeros((1, 1, 4 * m, 4 * m),
                       device=next(net.parameters()).device)


def drain(gen: Generator, progress: Progress | None = None):
    """Run a steps generator to the end, passing each yield to ``progress``; return its value."""
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(*step)


def segment_heart(cine: np.ndarray, spacing, model=None, device: str = "auto",
                  progress: Progress | None = None, batch_size: int = 8,
                  transpose_tta: bool = True, backend: str = "auto") -> CardiacResult:
    """Segment LV cavity, myocardium and RV in a short-axis cine and measure them.

    Parameters
    ----------
    cine
        ``(t, z, y, x)`` cine or ``(z, y, x)`` single frame, any spacing and matrix.
    spacing
        ``(dz, dy, dx)`` in mm.
    model
        Zoo name, checkpoint path, a loaded module, or None for the default cardiac model.
    device
        ``"auto"`` (CUDA, MPS, else CPU), ``"cpu"``, ``"cuda"``, ...
    progress
        Called with ``(frames_done, frames_total, message)``.
    backend
        ``"auto"`` (the CPU runtime on CPU, torch on CUDA/MPS), ``"torch"`` or ``"onnx"``; see
        :mod:`napari_medlearn.inference`. The result's ``backend`` says which ran.
    """
    return drain(segment_heart_steps(cine, spacing, model, device, batch_size,
                                     transpose_tta=transpose_tta, backend=backend), progress)


def cardiac_measures(labels: np.ndarray, spacing) -> dict:
    """Clinical measures of a labelled cine or frame; see :func:`imaging.measures.cardiac_measures`."""
    return M.cardiac_measures(labels, tuple(float(s) for s in spacing))
