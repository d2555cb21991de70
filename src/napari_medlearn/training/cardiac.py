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


class SlicePool:
    """Normalised, resampled 2D slices with labels, held in memory, sampled as crops."""

    def __init__(self, crop: int = 128, heart_fraction: float = 0.85):
        self.images: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.crop = crop
        self.heart_fraction = heart_fraction

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
        y0, x0 = int(round(cy - size / 2)), int(round(cx - size / 2))
        out_i = np.zeros((size, size), np.float32)
        out_l = np.zeros((size, size), np.uint8)
        ys, xs = max(0, y0), max(0, x0)
        ye, xe = min(h, y0 + size), min(w, x0 + size)
        if ye > ys and xe > xs:
            out_i[ys - y0:ye - y0, xs - x0:xe - x0] = img[ys:ye, xs:xe]
            out_l[ys - y0:ye - y0, xs - x0:xe - x0] = lab[ys:ye, xs:xe]
        return out_i, out_l

    def batch(self, rng: np.random.Generator, device, batch_size: int = 8, augment: bool = True):
        """A batch ``(B, 1, crop, crop)`` float32 images and ``(B, 1, crop, crop)`` long labels."""
        pad = int(self.crop * 0.25)
        idx = rng.integers(0, len(self), size=batch_size)
        pairs = [self._crop(rng, int(i), self.crop + 2 * pad) for i in idx]
        x = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
        y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.float32))[:, None]
        if augment:
            x, y = augment_batch(rng, x, y)
        x = x[..., pad:pad + self.crop, pad:pad + self.crop]
        y = y[..., pad:pad + self.crop, pad:pad + self.crop]
        return x.to(device), y.round().long().to(device)


def augment_batch(rng: np.random.Generator, x: torch.Tensor, y: torch.Tensor,
                  max_rot: float = np.pi, scale=(0.8, 1.25), shift: float = 0.1,
                  gamma=(0.7, 1.5)) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rotation, scale, translation, flip and gamma for ``(B, 1, H, W)`` image/label pairs."""
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
    return x, y


def evaluate_cases(model, cases, progress: bool = False) -> dict:
    """Segment each ``(image (t,z,y,x), labels, spacing, name)`` case; Dice and volume errors.

    Returns per-case rows and the means, as written into model cards.
    """
    from ..methods.cardiac import segment_heart

    rows = []
    for image, truth, spacing, name in cases:
        res = segment_heart(image, spacing, model=model)
        pred = res.labels if truth.ndim == res.labels.ndim else res.labels
        d = M.dice_per_label(pred, truth)
        mt = M.cardiac_measures(truth, spacing)
        mp = res.measures
        row = {"case": name, "dice_LV": d[1], "dice_Myo": d[2], "dice_RV": d[3]}
        for k in ("LVEDV_mL", "LVESV_mL", "LVEF_pct", "LVM_g", "RVEDV_mL", "RVEF_pct"):
            row[f"{k}_true"] = mt[k]
            row[f"{k}_pred"] = mp[k]
            row[f"{k}_error"] = mp[k] - mt[k]
        rows.append(row)
        if progress:
            print(f"  {name}: Dice LV {d[1]:.3f} Myo {d[2]:.3f} RV {d[3]:.3f}  "
                  f"LVEF {mp['LVEF_pct']:.1f} vs {mt['LVEF_pct']:.1f}", flush=True)
    summary = {
        "n_cases": len(rows),
        "dice_LV_mean": float(np.mean([r["dice_LV"] for r in rows])),
        "dice_Myo_mean": float(np.mean([r["dice_Myo"] for r in rows])),
        "dice_RV_mean": float(np.mean([r["dice_RV"] for r in rows])),
    }
    for k in ("LVEDV_mL", "LVESV_mL", "LVEF_pct", "LVM_g", "RVEDV_mL", "RVEF_pct"):
        err = np.array([r[f"{k}_error"] for r in rows], dtype=float)
        summary[f"{k}_mean_abs_error"] = float(np.nanmean(np.abs(err)))
        summary[f"{k}_bias"] = float(np.nanmean(err))
        summary[f"{k}_loa_1.96sd"] = float(1.96 * np.nanstd(err, ddof=1)) if len(err) > 1 else float("nan")
    return {"summary": summary, "cases": rows}
