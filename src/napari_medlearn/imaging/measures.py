"""Measures on label maps and images: overlap, surface distance, cardiac volumes and function.

Cardiac conventions (Bai et al., JCMR 2018; Petersen et al., JCMR 2017 for the UK Biobank
reference ranges): labels 1 LV cavity, 2 LV myocardium, 3 RV cavity; volumes in mL from voxel
counts times voxel volume; LV mass = myocardial volume at end-diastole x 1.05 g/mL; ED is the
frame of largest LV cavity volume, ES the frame of smallest.

Measure keys carry their unit (``LVEDV_mL``, ``LVEF_pct``, ``LVM_g``) as in the CSV files;
:func:`display_name` turns them into table headers (``LVEDV (mL)``).
"""

from __future__ import annotations

import numpy as np

LV, MYO, RV = 1, 2, 3
CARDIAC_LABELS = {0: "background", LV: "LV cavity", MYO: "myocardium", RV: "RV cavity"}
MYOCARDIAL_DENSITY_G_PER_ML = 1.05

#: the clinical measures, in reporting order
CARDIAC_MEASURES = (
    "LVEDV_mL", "LVESV_mL", "LVSV_mL", "LVEF_pct", "LVM_g",
    "RVEDV_mL", "RVESV_mL", "RVSV_mL", "RVEF_pct",
)
_UNITS = {"mL": "mL", "pct": "%", "g": "g", "mm": "mm"}


def display_name(key: str) -> str:
    """``'LVEDV_mL'`` -> ``'LVEDV (mL)'``; keys without a unit suffix pass through."""
    base, _, unit = key.rpartition("_")
    if base and unit in _UNITS:
        return f"{base} ({_UNITS[unit]})"
    return key


def voxel_volume_ml(spacing: tuple[float, ...]) -> float:
    """Volume of one voxel in mL from ``(dz, dy, dx)`` spacing in mm."""
    sp = np.asarray(spacing, dtype=float)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be three positive numbers (dz, dy, dx) in mm, got {spacing}")
    return float(np.prod(sp)) / 1000.0


def check_cardiac_labels(labels: np.ndarray) -> np.ndarray:
    """Validate a cardiac label array (integers in {0,1,2,3}); return it as an array."""
    lab = np.asarray(labels)
    if lab.size == 0:
        raise ValueError("labels are empty")
    if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise ValueError(f"labels must be integers, got {lab.dtype} with non-integer values")
    values = np.unique(lab)
    unknown = sorted(set(values.tolist()) - set(CARDIAC_LABELS))
    if unknown:
        raise ValueError(
            f"labels contain unknown values {unknown[:5]}; cardiac labels are "
            "0 background, 1 LV cavity, 2 myocardium, 3 RV cavity"
        )
    return lab


def structure_volumes_ml(labels: np.ndarray, spacing: tuple[float, ...]) -> dict[str, np.ndarray]:
    """Per-frame LV, myocardium and RV volumes in mL.

    ``labels`` is ``(z, y, x)`` or ``(t, z, y, x)``; the result arrays have one value per frame.
    """
    lab = check_cardiac_labels(labels)
    if lab.ndim == 3:
        lab = lab[None]
    if lab.ndim != 4:
        raise ValueError(f"cardiac labels must be (z, y, x) or (t, z, y, x), got shape {np.shape(labels)}")
    vox = voxel_volume_ml(spacing)
    flat = lab.reshape(lab.shape[0], -1)
    counts = np.stack([(flat == k).sum(axis=1) for k in (LV, MYO, RV)], axis=0) * vox
    return {"LV": counts[0], "MYO": counts[1], "RV": counts[2]}


def ejection_fraction(edv: float, esv: float) -> float:
    """Ejection fraction in percent; NaN when the end-diastolic volume is zero."""
    return float(100.0 * (edv - esv) / edv) if edv > 0 else float("nan")


def cardiac_measures(
    labels: np.ndarray,
    spacing: tuple[float, ...],
    ed: int | None = None,
    es: int | None = None,
) -> dict:
    """Clinical measures of LV and RV function from a labelled cine.

    Parameters
    ----------
    labels
        ``(t, z, y, x)`` cine labels, or ``(z, y, x)`` for a single frame (then only the
        end-diastolic values are defined and the rest are NaN).
    spacing
        ``(dz, dy, dx)`` in mm.
    ed, es
        Frame indices; by default ED = largest and ES = smallest LV cavity volume.

    Returns
    -------
    dict
        ``LVEDV_mL, LVESV_mL, LVSV_mL, LVEF_pct, LVM_g, RVEDV_mL, RVESV_mL, RVSV_mL, RVEF_pct``,
        ``ED_frame``, ``ES_frame`` and the per-frame curves ``LV_volume_mL``, ``RV_volume_mL``,
        ``MYO_volume_mL`` (lists).
    """
    vols = structure_volumes_ml(labels, spacing)
    lv, rv, myo = vols["LV"], vols["RV"], vols["MYO"]
    n = lv.shape[0]
    single = np.ndim(labels) == 3
    if ed is None:
        ed = int(np.argmax(lv))
    if es is None:
        es = int(np.argmin(lv)) if not single else None
    for name, f in (("ED", ed), ("ES", es)):
        if f is not None and not 0 <= f < n:
            raise ValueError(f"{name} frame {f} outside the cine's {n} frames")
    nan = float("nan")
    lvedv, rvedv = float(lv[ed]), float(rv[ed])
    lvesv = float(lv[es]) if es is not None else nan
    rvesv = float(rv[es]) if es is not None else nan
    out = {
        "LVEDV_mL": lvedv,
        "LVESV_mL": lvesv,
        "LVSV_mL": lvedv - lvesv,
        "LVEF_pct": ejection_fraction(lvedv, lvesv) if es is not None else nan,
        "LVM_g": float(myo[ed]) * MYOCARDIAL_DENSITY_G_PER_ML,
        "RVEDV_mL": rvedv,
        "RVESV_mL": rvesv,
        "RVSV_mL": rvedv - rvesv,
        "RVEF_pct": ejection_fraction(rvedv, rvesv) if es is not None else nan,
        "ED_frame": int(ed),
        "ES_frame": int(es) if es is not None else None,
        "LV_volume_mL": lv.tolist(),
        "RV_volume_mL": rv.tolist(),
        "MYO_volume_mL": myo.tolist(),
    }
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks; 1.0 when both are empty."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2.0 * np.logical_and(a, b).sum() / s)


def dice_per_label(pred: np.ndarray, truth: np.ndarray, labels=(LV, MYO, RV)) -> dict[int, float]:
    """Dice per label value."""
    return {int(k): dice(pred == k, truth == k) for k in labels}


def hausdorff95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> float:
    """95th-percentile symmetric surface distance (mm) between two boolean masks.

    Surfaces and distance maps come from SimpleITK (``LabelContour`` and
    ``SignedMaurerDistanceMap`` with the image spacing). NaN when either mask is empty.
    """
    import SimpleITK as sitk

    p = np.asarray(pred, dtype=np.uint8)
    t = np.asarray(truth, dtype=np.uint8)
    if p.shape != t.shape:
        raise ValueError(f"masks differ in shape: {p.shape} vs {t.shape}")
    if not p.any() or not t.any():
        return float("nan")
    sp = tuple(float(v) for v in spacing)[::-1]  # SimpleITK orders spacing x, y, z

    def surface_and_distance(mask):
        # surface voxels, and every voxel's distance (mm) to the nearest surface voxel
        img = sitk.GetImageFromArray(mask)
        img.SetSpacing(sp)
        contour_img = sitk.LabelContour(img, fullyConnected=False)
        contour = sitk.GetArrayFromImage(contour_img) > 0
        dist = sitk.SignedMaurerDistanceMap(contour_img, insideIsPositive=False, squaredDistance=False,
                                            useImageSpacing=True)
        return contour, np.abs(sitk.GetArrayFromImage(dist))

    sp_c, sp_d = surface_and_distance(p)
    st_c, st_d = surface_and_distance(t)
    d = np.concatenate([st_d[sp_c], sp_d[st_c]])
    return float(np.percentile(d, 95)) if d.size else 0.0


#: BraTS evaluation regions (Menze et al., IEEE TMI 2015): label values in each region
BRATS_REGIONS = {"whole_tumour": (1, 2, 3, 4), "tumour_core": (1, 3, 4), "enhancing": (4,)}


def brats_region_metrics(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """Dice and Hausdorff-95 (mm, :func:`hausdorff95`) of the BraTS regions.

    Whole tumour = labels > 0, tumour core = 1 + 3 + 4, enhancing = 4. Keys
    ``dice_whole_tumour``, ``hd95_whole_tumour_mm``, ... (HD95 NaN when a region is empty in
    either map).
    """
    p, t = np.asarray(pred), np.asarray(truth)
    if p.shape != t.shape:
        raise ValueError(f"label maps differ in shape: {p.shape} vs {t.shape}")
    out = {}
    for name, values in BRATS_REGIONS.items():
        a, b = np.isin(p, values), np.isin(t, values)
        out[f"dice_{name}"] = dice(a, b)
        out[f"hd95_{name}_mm"] = hausdorff95(a, b, spacing)
    return out


def image_quality(reference: np.ndarray, image: np.ndarray) -> dict[str, float]:
    """PSNR (dB) and SSIM of the magnitude of ``image`` against the magnitude of ``reference``.

    scikit-image metrics with the data range set to the reference's peak magnitude; for stacks
    and cines PSNR is over the whole array and SSIM the mean over its 2D images. Two real
    arrays whose reference has negative values (a z-scored image) are compared as signed values
    with the data range max - min, since magnitudes would fold them.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ref, est = np.asarray(reference), np.asarray(image)
    signed = not (np.iscomplexobj(ref) or np.iscomplexobj(est)) and ref.size > 0 and float(ref.min()) < 0
    if signed:
        ref, est = ref.astype(np.float64), est.astype(np.float64)
    else:
        ref, est = np.abs(ref).astype(np.float64), np.abs(est).astype(np.float64)
    if ref.shape != est.shape:
        raise ValueError(f"reference {ref.shape} and image {est.shape} differ in shape")
    peak = float(ref.max() - ref.min()) if signed else float(ref.max())
    if not peak > 0:
        raise ValueError("the reference image is all zeros")
    with np.errstate(divide="ignore"):      # identical images: inf dB
        psnr = float(peak_signal_noise_ratio(ref, est, data_range=peak))
    r2, e2 = ref.reshape(-1, *ref.shape[-2:]), est.reshape(-1, *est.shape[-2:])
    ssim = float(np.mean([structural_similarity(a, b, data_range=peak) for a, b in zip(r2, e2)]))
    return {"psnr_db": psnr, "ssim": ssim}
