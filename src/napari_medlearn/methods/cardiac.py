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

    @property
    def frames(self) -> int:
        return 1 if self.labels.ndim == 3 else self.labels.shape[0]


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
                   cancelled: Callable[[], bool] | None = None) -> np.ndarray:
    """Class probabilities for normalised 2D slices ``(N, H, W)`` -> ``(N, K, H, W)`` float32.

    Slices are resampled to the card's in-plane spacing, padded to the network's size multiple
    (zeros: the normalised background), run in batches, and resampled back.
    """
    import torch
    import torch.nn.functional as F

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
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            if cancelled is not None and cancelled():
                raise InterruptedError("cancelled")
            x = torch.from_numpy(np.ascontiguousarray(slices[i:i + batch_size]))[:, None].to(dev)
            x = _resize(x, size)
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
            p = torch.softmax(model(x), dim=1)
            p = p[..., ph // 2: ph // 2 + size[0], pw // 2: pw // 2 + size[1]]
            p = _resize(p, (h, w))
            chunks.append(p.float().cpu().numpy())
    return np.concatenate(chunks, axis=0) if chunks else out


def quality_flags(labels4: np.ndarray, measures: dict) -> list[dict]:
    """Flags for results that should not be trusted as they are."""
    flags = []
    if not np.any(labels4 == M.LV):
        flags.append({"flag": "no_heart", "reason": "no heart found: no LV cavity in any frame"})
        return flags
    if labels4.shape[0] == 1:
        flags.append({"flag": "single_frame",
                      "reason": "a single frame: ES volumes and ejection fractions need a cine"})
    lv_curve = np.asarray(measures["LV_volume_mL"])
    if labels4.shape[0] > 1 and lv_curve.min() <= 0:
        flags.append({"flag": "lv_lost", "reason": "the LV cavity disappears in some frames"})
    return flags


def segment_heart_steps(
    cine: np.ndarray,
    spacing,
    model=None,
    device: str = "auto",
    batch_size: int = 8,
    cancelled: Callable[[], bool] | None = None,
) -> Generator[tuple[int, int, str], None, CardiacResult]:
    """Segment a cine, yielding ``(frames_done, frames_total, message)``; returns the result."""
    from .. import zoo

    arr, sp = validate_cine(cine, spacing)
    single = np.ndim(cine) == 3
    net = model if hasattr(model, "forward") else zoo.load(model or zoo.default_model(TASK), device=device)
    n_classes = int(getattr(net, "card", {}).get("n_classes", 4))
    T, Z, H, W = arr.shape
    probs = np.zeros((n_classes, T, Z, H, W), dtype=np.float16)
    labels = np.zeros((T, Z, H, W), dtype=np.uint8)
    yield 0, T, "segmenting"
    for t in range(T):
        vol = rescale_percentiles(arr[t])
        p = predict_slices(net, vol, sp[1:], batch_size=batch_size, cancelled=cancelled)  # (Z,K,H,W)
        probs[:, t] = p.transpose(1, 0, 2, 3)
        labels[t] = clean_labels(np.argmax(p, axis=1).astype(np.uint8), values=(1, 2, 3))
        yield t + 1, T, f"frame {t + 1}/{T}"
    meas = M.cardiac_measures(labels[0] if single else labels, sp)
    qc = quality_flags(labels, meas)
    if any(f["flag"] == "no_heart" for f in qc):
        for k in M.CARDIAC_MEASURES:
            meas[k] = float("nan")
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
    )


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
                  progress: Progress | None = None, batch_size: int = 8) -> CardiacResult:
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
    """
    return drain(segment_heart_steps(cine, spacing, model, device, batch_size), progress)


def cardiac_measures(labels: np.ndarray, spacing) -> dict:
    """Clinical measures of a labelled cine or frame; see :func:`imaging.measures.cardiac_measures`."""
    return M.cardiac_measures(labels, tuple(float(s) for s in spacing))
