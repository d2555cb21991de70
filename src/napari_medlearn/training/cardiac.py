"""Training data and evaluation for the cardiac FCN (Bai et al., JCMR 2018).

2D short-axis slices, normalised and resampled exactly as at inference
(:func:`napari_medlearn.imaging.intensity.rescale_percentiles`, in-plane spacing from the card),
cropped around the heart with jitter (and sometimes anywhere), then augmented on the fly by
rotation, scaling, translation, flips and intensity gamma (Bai: shift/rotate/scale).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..imaging import measures as M
from ..imaging.intensity import rescale_percentiles


def resample_in_plane(vol: np.ndarray, in_plane: tuple[float, float], target: float, order: int) -> np.ndarray:
    """Resample ``(z, y, x)`` in-plane to ``target`` mm, keeping the field of view."""
    zoom = (1.0, in_plane[0] / target, in_plane[1] / target)
    return ndi.zoom(vol, zoom, order=order, grid_mode=True, mode="grid-constant" if order else "nearest")


def crop_square(a: np.ndarray, cy: float, cx: float, size: int, dtype) -> np.ndarray:
    """A ``size`` x ``size`` window of the last two axes of ``a`` centred at ``(cy, cx)``,
    zero-padded where it leaves the array."""
    h, w = a.shape[-2:]
    y0, x0 = int(round(cy - size / 2)), int(round(cx - size / 2))
    out = np.zeros(a.shape[:-2] + (size, size), dtype)
    ys, xs, ye, xe = max(0, y0), max(0, x0), min(h, y0 + size), min(w, x0 + size)
    if ye > ys and xe > xs:
        out[..., ys - y0:ye - y0, xs - x0:xe - x0] = a[..., ys:ye, xs:xe]
    return out


class SlicePool:
    """Normalised, resampled 2D slices with labels, held in memory, sampled as crops."""

    def __init__(self, crop: int = 128, heart_fraction: float = 0.85, augment: dict | None = None):
        self.images: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.crop = crop
        self.heart_fraction = heart_fraction
        self.augment = dict(augment or {})

    def add_volume(self, image: np.ndarray, labels: np.ndarray, spacing, target: float) -> None:
        """Add the slices of one ``(z, y, x)`` frame and its labels."""
        img = resample_in_plane(rescale_percentiles(image), spacing[1:], target, order=1)
        lab = resample_in_plane(labels, spacing[1:], target, order=0)
        for k in range(img.shape[0]):
            self.images.append(img[k].astype(np.float16))
            self.labels.append(lab[k].astype(np.uint8))

    def __len__(self) -> int:
        return len(self.images)

    def _crop(self, rng: np.random.Generator, i: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        img, lab = self.images[i], self.labels[i]
        h, w = img.shape
        fg = np.argwhere(lab > 0)
        if len(fg) and rng.random() < self.heart_fraction:
            cy, cx = fg.mean(axis=0) + rng.normal(0, size / 10, size=2)
        else:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        return crop_square(img, cy, cx, size, np.float32), crop_square(lab, cy, cx, size, np.uint8)

    def batch(self, rng: np.random.Generator, device, batch_size: int = 8, augment: bool = True):
        """A batch ``(B, 1, crop, crop)`` float32 images and ``(B, 1, crop, crop)`` long labels."""
        pad = int(self.crop * 0.25)
        idx = rng.integers(0, len(self), size=batch_size)
        pairs = [self._crop(rng, int(i), self.crop + 2 * pad) for i in idx]
        x = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
        y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.float32))[:, None]
        if augment:
            x, y = augment_batch(rng, x, y, **self.augment)
        x = x[..., pad:pad + self.crop, pad:pad + self.crop]
        y = y[..., pad:pad + self.crop, pad:pad + self.crop]
        return x.to(device), y.round().long().to(device)


def augment_batch(rng: np.random.Generator, x: torch.Tensor, y: torch.Tensor,
                  max_rot: float = np.pi, scale=(0.8, 1.25), shift: float = 0.1,
                  gamma=(0.7, 1.5), bias: float = 0.0, noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rotation, scale, translation, flip, gamma, bias field and noise.

    ``x`` and ``y`` are ``(B, 1, H, W)`` image/label pairs; labels are resampled nearest.
    ``bias`` is the largest amplitude of a smooth multiplicative field, ``noise`` the largest
    Gaussian noise sigma (images are in 0..1).
    """
    b = x.shape[0]
    ang = rng.uniform(-max_rot, max_rot, size=b)
    sc = np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]), size=b))
    flip = np.where(rng.random(b) < 0.5, -1.0, 1.0)
    tx, ty = rng.uniform(-shift, shift, size=(2, b))
    theta = np.zeros((b, 2, 3), np.float32)
    theta[:, 0, 0] = np.cos(ang) / sc * flip
    theta[:, 0, 1] = -np.sin(ang) / sc
    theta[:, 1, 0] = np.sin(ang) / sc * flip
    theta[:, 1, 1] = np.cos(ang) / sc
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    grid = F.affine_grid(torch.from_numpy(theta), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = F.grid_sample(y, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    g = torch.from_numpy(np.exp(rng.uniform(np.log(gamma[0]), np.log(gamma[1]), size=(b, 1, 1, 1))).astype(np.float32))
    x = x.clamp(0, 1) ** g
    x = x * torch.from_numpy(rng.uniform(0.9, 1.1, size=(b, 1, 1, 1)).astype(np.float32))
    if bias > 0:   # a smooth field: bilinear upsampling of a random 3x3 grid
        coarse = torch.from_numpy(rng.uniform(-bias, bias, size=(b, 1, 3, 3)).astype(np.float32))
        x = x * (1 + F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=True))
    if noise > 0:
        sd = torch.from_numpy(rng.uniform(0, noise, size=(b, 1, 1, 1)).astype(np.float32))
        x = x + sd * torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
    return x, y


MEASURE_KEYS = ("LVEDV_mL", "LVESV_mL", "LVEF_pct", "LVM_g", "RVEDV_mL", "RVESV_mL", "RVEF_pct")


def evaluate_cases(model, cases, progress: bool = False, groups: dict | None = None) -> dict:
    """Segment each ``(image (t,z,y,x), labels, spacing, name)`` case; Dice and measure errors.

    Dice is reported over all frames and at the truth's ED and ES frames; measures (from the
    predicted labels with ED/ES found on the predicted LV curve) against the truth's. With
    ``groups`` (case name -> group) the mean Dice per group is added. Returns per-case rows and
    a summary (means, bias and 1.96 SD limits of agreement), as written into model cards.
    """
    from ..methods.cardiac import segment_heart

    rows = []
    for image, truth, spacing, name in cases:
        res = segment_heart(image, spacing, model=model)
        mt = M.cardiac_measures(truth, spacing)
        mp = res.measures
        row = {"case": name}
        if groups:
            row["group"] = groups.get(name, "")
        for k, v in M.dice_per_label(res.labels, truth).items():
            row[f"dice_{STRUCT[k]}"] = v
        for phase, f in (("ED", mt["ED_frame"]), ("ES", mt["ES_frame"])):
            for k, v in M.dice_per_label(res.labels[f], truth[f]).items():
                row[f"dice_{STRUCT[k]}_{phase}"] = v
        for k in MEASURE_KEYS:
            row[f"{k}_true"] = mt[k]
            row[f"{k}_pred"] = mp[k]
            row[f"{k}_error"] = mp[k] - mt[k]
        row["qc"] = ";".join(q["flag"] for q in res.qc)
        rows.append(row)
        if progress:
            print(f"  {name}: Dice LV {row['dice_LV']:.3f} Myo {row['dice_Myo']:.3f} RV {row['dice_RV']:.3f}  "
                  f"LVEF {mp['LVEF_pct']:.1f} vs {mt['LVEF_pct']:.1f}", flush=True)
    summary: dict = {"n_cases": len(rows)}
    for s_ in STRUCT.values():
        for suffix in ("", "_ED", "_ES"):
            summary[f"dice_{s_}{suffix}_mean"] = float(np.mean([r[f"dice_{s_}{suffix}"] for r in rows]))
    for k in MEASURE_KEYS:
        err = np.array([r[f"{k}_error"] for r in rows], dtype=float)
        summary[f"{k}_mean_abs_error"] = float(np.nanmean(np.abs(err)))
        summary[f"{k}_bias"] = float(np.nanmean(err))
        summary[f"{k}_loa_1.96sd"] = float(1.96 * np.nanstd(err, ddof=1)) if len(err) > 1 else float("nan")
    if groups:
        summary["dice_by_group"] = {
            g: {s_: float(np.mean([r[f"dice_{s_}"] for r in rows if r["group"] == g])) for s_ in STRUCT.values()}
            for g in sorted({r["group"] for r in rows})
        }
    return {"summary": summary, "cases": rows}


STRUCT = {1: "LV", 2: "Myo", 3: "RV"}


def bland_altman_figure(rows: list[dict], path, keys=("LVEDV_mL", "LVESV_mL", "LVEF_pct", "LVM_g", "RVEDV_mL", "RVEF_pct"),
                        title: str = "") -> None:
    """Bland-Altman plots (difference vs mean of predicted and true) for each measure, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(2, 3, figsize=(13, 7.5))
    for ax, k in zip(axs.flat, keys):
        t = np.array([r[f"{k}_true"] for r in rows], float)
        p = np.array([r[f"{k}_pred"] for r in rows], float)
        ok = np.isfinite(t) & np.isfinite(p)
        mean, diff = (t[ok] + p[ok]) / 2, p[ok] - t[ok]
        bias, sd = (diff.mean(), diff.std(ddof=1)) if diff.size > 1 else (np.nan, np.nan)
        ax.scatter(mean, diff, s=14)
        for v, ls in ((bias, "-"), (bias + 1.96 * sd, "--"), (bias - 1.96 * sd, "--")):
            ax.axhline(v, color="gray", ls=ls, lw=1)
        ax.set_title(f"{M.display_name(k)}: bias {bias:.1f}, LoA +-{1.96 * sd:.1f}")
        ax.set_xlabel("mean of predicted and expert")
        ax.set_ylabel("predicted - expert")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
