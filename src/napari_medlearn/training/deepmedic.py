"""Training DeepMedic on multi-modal brain MR (Kamnitsas et al., MedIA 2017).

- **Preprocessing** exactly as at inference (:mod:`napari_medlearn.methods.lesions`): brain mask
  (given or derived), resampling to the card's spacing, per-channel z-score inside the brain,
  0 outside. Labels are mapped to class indices 0 background, 1 necrotic/non-enhancing core
  (BraTS 1 and the older 3), 2 oedema, 3 enhancing (BraTS 4).
- **Class-balanced sampling** of training segments (paper, Sec. 2.2): half of the segments are
  centred on a tumour voxel, half on a background voxel inside the brain. A segment is the
  network's input for an output block of ``out`` voxels per axis; with ``out = 9`` the normal
  pathway sees the paper's 25^3 training segment, the subsampled pathway its wider context.
- **Augmentation**: per channel intensity scale and shift (inside the brain) and left-right flips
  (the reference's ``reflect_per_axis``), with probability 1/2.
- **Loss**: voxel-wise cross-entropy over the output block; Adam with a step schedule and L2
  weight decay (the reference config's RMSProp works too; Adam converges faster in short runs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..imaging import measures as M
from ..imaging.orientation import axis_codes

#: BraTS label value -> class index (3, the non-enhancing core of BraTS 2013-2016, joins 1 as in BraTS 2017+)
BRATS_TO_CLASS = np.array([0, 1, 2, 1, 3], dtype=np.uint8)


#: class index of a voxel without a class (ignored by the samplers' tumour pools and the loss)
IGNORE_CLASS = 255


@dataclass
class LesionTrainingCase:
    """One preprocessed subject: normalised channels, class indices, brain mask.

    ``classes`` may hold :data:`IGNORE_CLASS` where a voxel's class is unknown (unselected
    pseudo-labels): segments are never centred on such voxels, and the self-training loss skips them."""

    image: np.ndarray      # (C, z, y, x) float32, z-scored in the brain, 0 outside
    classes: np.ndarray    # (z, y, x) uint8 class indices 0..3
    mask: np.ndarray       # (z, y, x) bool
    name: str = ""


def labels_to_classes(labels: np.ndarray) -> np.ndarray:
    """BraTS labels {0, 1, 2, 3, 4} -> class indices {0, 1, 2, 3}."""
    lab = np.asarray(labels)
    if lab.size and (lab.min() < 0 or lab.max() > 4 or np.any(lab != np.round(lab))):
        raise ValueError(f"labels must be BraTS values 0-4, got {np.unique(lab)[:6]}")
    return BRATS_TO_CLASS[lab.astype(np.int64)]


def prepare_case(channels: np.ndarray, labels: np.ndarray, spacing, brain_mask=None,
                 target_spacing=None, channel_names: Sequence[str] = ("FLAIR", "T1c"),
                 name: str = "") -> LesionTrainingCase:
    """Preprocess one subject as :func:`~napari_medlearn.methods.lesions.segment_lesions` does."""
    from ..methods.lesions import _check_spacing, _resample, derive_brain_mask, normalise_channels, validate_channels

    arr, sp, mask = validate_channels(channels, spacing, channel_names, brain_mask)
    if mask is None:
        mask = derive_brain_mask(arr)
    lab = np.asarray(labels)
    if lab.shape != arr.shape[1:]:
        raise ValueError(f"labels {lab.shape} do not match the images {arr.shape[1:]}")
    if target_spacing is not None and not np.allclose(_check_spacing(target_spacing), sp, rtol=1e-3):
        tsp = _check_spacing(target_spacing)
        shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(arr.shape[1:], sp, tsp))
        arr = _resample(arr, shape, order=1)
        mask = _resample(mask[None].astype(np.float32), shape, order=0)[0] > 0.5
        lab = _resample(lab[None].astype(np.float32), shape, order=0)[0]
    classes = labels_to_classes(np.rint(lab))
    return LesionTrainingCase(normalise_channels(arr, mask), classes, mask, name)


#: The synthetic source of the ``lesions-synthetic`` and ``lesions-uda`` presets: cases cycling through
#: scanners A, B and C. On the cross-validation fold (BraTS pat0004/pat0006) it raised the source-only
#: model's whole-tumour Dice from 0.686 (scanner A alone) to 0.801.
SOURCE_DOMAINS = "ABC"


def scanner_domains(domain: str) -> tuple[str, ...]:
    """The scanner domains named by a preset's ``domain``: one name (``"A"``) or several in a row
    (``"ABC"``: the cases cycle through A, B, C), each one of :data:`~napari_medlearn.samples.brain_lesions.DOMAINS`."""
    from ..samples.brain_lesions import DOMAINS

    names = tuple(domain) if isinstance(domain, str) and domain not in DOMAINS else (domain,)
    bad = [d for d in names if d not in DOMAINS]
    if not names or bad:
        raise ValueError(f"unknown scanner domain(s) {', '.join(map(repr, bad)) or repr(domain)}; "
                         f"choose among {', '.join(DOMAINS)}")
    return names


def domains_text(domain: str) -> str:
    """How a card names the scanner domain(s) of ``domain``."""
    names = scanner_domains(domain)
    return f"domain {names[0]!r}" if len(names) == 1 else f"domains {', '.join(map(repr, names))} in turn"


def synthetic_training_cases(n_cases: int, spacing_mm: float = 2.0, domains: Sequence = ("A",), seed: int = 0,
                             necrosis_fluid: float | None = 0.0, progress: bool = False,
                             orientation: str | None = None) -> list[LesionTrainingCase]:
    """``n_cases`` synthetic lesion cases (seeds ``seed``.., scanner domains cycling through
    ``domains``: names such as ``"ABC"`` or domain dicts; ``necrosis_fluid`` as
    :func:`~napari_medlearn.samples.brain_lesions.synthetic_lesion_case` takes it), preprocessed as
    training cases on their own grid, turned to ``orientation`` (e.g. the real scans' ``"SPL"``
    when they train beside real scans; None: the generator's own, :func:`synthetic_orientation`)."""
    from ..samples.brain_lesions import synthetic_lesion_case

    out = []
    for k in range(int(n_cases)):
        domain = domains[k % len(domains)]
        c = synthetic_lesion_case(seed=seed + k, domain=domain, spacing_mm=spacing_mm, necrosis_fluid=necrosis_fluid)
        label = domain if isinstance(domain, str) else domain.get("name", "custom")
        ch, lab, sp, mask = turn_case(c.channels, c.labels, c.spacing, c.brain_mask, getattr(c, "affine", None),
                                      orientation)
        out.append(prepare_case(ch, lab, sp, mask, channel_names=tuple(c.channel_names),
                                name=f"synthetic seed {seed + k} ({label})"))
        if progress:
            print(f"synthetic case {k + 1}/{n_cases}", flush=True)
    return out


@dataclass(frozen=True)
class PatchGeometry:
    """Training patch of a same-size network (U-Net, FCN): input and output are the same voxels."""

    segment: int
    out: int
    out_start: int = 0


def sampler_geometry(net, out: int = 9, patch: int | Sequence[int] = 48):
    """Where a training segment's labels sit: DeepMedic's output block of ``out`` voxels inside
    its context (``net.geometry``), or a ``patch``-sized block for same-size networks (rounded up
    to the network's divisor)."""
    if hasattr(net, "geometry"):
        return net.geometry(out)
    div = int(getattr(net, "divisor", 1))
    sizes = [patch] * 3 if isinstance(patch, int) else list(patch)
    return tuple(PatchGeometry(-(-int(p) // div) * div, -(-int(p) // div) * div) for p in sizes)


def unlabelled_case(channels, spacing, brain_mask=None, target_spacing=None,
                    channel_names: Sequence[str] = ("FLAIR", "T1c"), name: str = "") -> LesionTrainingCase:
    """A target-domain case for adaptation: preprocessed like :func:`prepare_case`, no labels
    (class 0 everywhere, so segments are drawn anywhere in the brain)."""
    arr = np.asarray(channels) if not isinstance(channels, (list, tuple)) else channels
    shape = (np.asarray(arr[0]).shape if isinstance(arr, (list, tuple)) else arr.shape[1:])
    return prepare_case(channels, np.zeros(shape, np.uint8), spacing, brain_mask, target_spacing,
                        channel_names, name)


class SegmentSampler:
    """Class-balanced training segments for a :class:`~napari_medlearn.nets.deepmedic.DeepMedic`.

    Parameters
    ----------
    cases
        Preprocessed subjects.
    geometry
        ``net.geometry(out)``: where the output block sits in the segment.
    fg_fraction
        Share of segments centred on tumour (the rest on brain background).
    intensity_shift, intensity_scale
        Standard deviations of the per-channel shift and (multiplicative) scale augmentation.
    flip
        Probability of a left-right (x) flip.
    spatial_p, rotation_deg, scale_range
        Probability of a spatial augmentation of a segment: rotated about its output block's centre
        by angles drawn uniformly within ``+-rotation_deg`` about each axis and scaled
        isotropically by a factor drawn uniformly from ``scale_range``, images resampled
        trilinearly and classes and brain mask by nearest voxel from the whole volume (so the
        context is real anatomy, not padding). 0 (default): none, and no random draw for it.
    """

    def __init__(self, cases: Sequence[LesionTrainingCase], geometry, fg_fraction: float = 0.5,
                 intensity_shift: float = 0.1, intensity_scale: float = 0.1, flip: float = 0.5,
                 spatial_p: float = 0.0, rotation_deg: float = 15.0,
                 scale_range: tuple[float, float] = (0.85, 1.15)) -> None:
        if not cases:
            raise ValueError("no training cases")
        self.geo = geometry
        self.out = tuple(g.out for g in geometry)
        self.lo = tuple(g.out_start for g in geometry)
        self.hi = tuple(g.segment - g.out_start - g.out for g in geometry)
        self.seg = tuple(g.segment for g in geometry)
        self.fg_fraction = fg_fraction
        self.shift, self.scale, self.flip = intensity_shift, intensity_scale, flip
        if not 0.0 <= spatial_p <= 1.0:
            raise ValueError(f"spatial_p must be between 0 and 1, got {spatial_p}")
        if not 0.0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
        self.spatial_p, self.rotation_deg = float(spatial_p), float(rotation_deg)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        # a flip of the segment is a flip of the world only when the context is symmetric
        self.can_flip = self.lo[2] == self.hi[2]
        self.images, self.classes, self.masks, self.fg, self.bg = [], [], [], [], []
        for c in cases:
            # a volume smaller than the output block is padded (background, outside the brain) up to it
            pads = [(a, b + max(0, o - n)) for a, b, o, n in zip(self.lo, self.hi, self.out, c.classes.shape)]
            self.images.append(np.pad(c.image, [(0, 0)] + pads))
            self.classes.append(np.pad(c.classes, pads))
            self.masks.append(np.pad(c.mask, pads))
            self.fg.append(np.flatnonzero((c.classes > 0) & (c.classes != IGNORE_CLASS)))
            self.bg.append(np.flatnonzero(c.mask & (c.classes == 0)))
        self.shapes = [c.classes.shape for c in cases]
        self.n_channels = cases[0].image.shape[0]

    def segment(self, rng: np.random.Generator, i: int, foreground: bool,
                spatial: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pool = self.fg[i] if foreground and self.fg[i].size else self.bg[i]
        if pool.size == 0:
            pool = np.flatnonzero(self.masks[i])
        c = np.unravel_index(pool[rng.integers(pool.size)], self.shapes[i])
        # output block [c - out//2, c - out//2 + out) in the original grid = segment start in the padded one
        s = [int(ci) - o // 2 for ci, o in zip(c, self.out)]
        s = [min(max(si, 0), max(n - o, 0)) for si, n, o in zip(s, self.shapes[i], self.out)]
        if spatial:
            return self._transformed_segment(rng, i, s)
        x = self.images[i][:, s[0]:s[0] + self.seg[0], s[1]:s[1] + self.seg[1], s[2]:s[2] + self.seg[2]]
        m = self.masks[i][s[0]:s[0] + self.seg[0], s[1]:s[1] + self.seg[1], s[2]:s[2] + self.seg[2]]
        o = [si + lo for si, lo in zip(s, self.lo)]
        y = self.classes[i][o[0]:o[0] + self.out[0], o[1]:o[1] + self.out[1], o[2]:o[2] + self.out[2]]
        return x, y, m

    def _transformed_segment(self, rng: np.random.Generator, i: int, s: Sequence[int]):
        """The segment whose output block starts at ``s``, rotated and scaled about the block's
        centre (see the class's ``spatial_p``)."""
        from scipy import ndimage as ndi
        from scipy.spatial.transform import Rotation

        angles = rng.uniform(-self.rotation_deg, self.rotation_deg, 3)
        a = Rotation.from_euler("zyx", angles, degrees=True).as_matrix() * rng.uniform(*self.scale_range)
        centre = np.array([si + lo + (o - 1) / 2.0 for si, lo, o in zip(s, self.lo, self.out)])

        def coords(size, first):         # (3, n) padded-grid positions of a block of ``size`` voxels
            grid = np.meshgrid(*[np.arange(n, dtype=np.float64) - f for n, f in zip(size, first)], indexing="ij")
            off = np.stack([g.ravel() for g in grid])
            return centre[:, None] + a @ off

        first = [lo + (o - 1) / 2.0 for lo, o in zip(self.lo, self.out)]
        cs = coords(self.seg, first)
        x = np.stack([ndi.map_coordinates(ch, cs, order=1, mode="constant", cval=0.0).reshape(self.seg)
                      for ch in self.images[i]]).astype(np.float32)
        m = ndi.map_coordinates(self.masks[i].view(np.uint8), cs, order=0, mode="constant",
                                cval=0).reshape(self.seg).astype(bool)
        co = coords(self.out, [(o - 1) / 2.0 for o in self.out])
        y = ndi.map_coordinates(self.classes[i], co, order=0, mode="constant", cval=0).reshape(self.out)
        return np.where(m[None], x, 0.0).astype(np.float32), y.astype(self.classes[i].dtype), m

    def foreground_count(self, rng: np.random.Generator, batch_size: int) -> int:
        """Segments of a batch centred on tumour: ``batch_size * fg_fraction`` rounded up or down
        at random so that the expected share is ``fg_fraction`` for any batch size (plain rounding
        gives a batch of 2 at 25 % no tumour segment at all). No random draw when it is whole."""
        want = batch_size * self.fg_fraction
        n = int(np.floor(want + 1e-9))
        if want - n > 1e-9 and rng.random() < want - n:
            n += 1
        return n

    def batch(self, rng: np.random.Generator, device, batch_size: int = 10, augment: bool = True):
        """``(B, C, *segment)`` float32 inputs and ``(B, *out)`` long class targets; the first
        :meth:`foreground_count` centred on tumour, the rest on brain background."""
        xs, ys = [], []
        n_fg = self.foreground_count(rng, batch_size)
        for b in range(batch_size):
            i = int(rng.integers(len(self.images)))
            spatial = augment and self.spatial_p > 0 and rng.random() < self.spatial_p
            x, y, m = self.segment(rng, i, foreground=b < n_fg, spatial=spatial)
            x = x.copy()
            if augment:
                sc = 1.0 + self.scale * rng.standard_normal(self.n_channels)
                sh = self.shift * rng.standard_normal(self.n_channels)
                x = np.where(m[None], x * sc[:, None, None, None].astype(np.float32)
                             + sh[:, None, None, None].astype(np.float32), 0.0).astype(np.float32)
                if self.can_flip and rng.random() < self.flip:
                    x, y = x[..., ::-1], y[..., ::-1]
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        x = torch.from_numpy(np.stack(xs))
        y = torch.from_numpy(np.stack(ys).astype(np.int64))
        return x.to(device), y.to(device)

    def output_class_frequency(self, rng: np.random.Generator, n_batches: int, batch_size: int,
                               n_classes: int = 4) -> np.ndarray:
        """Class frequencies inside the brain over the output blocks of ``n_batches`` batches
        drawn as :meth:`batch` draws them (the class prior the network is trained under)."""
        counts = np.zeros(n_classes, np.float64)
        sl = tuple(slice(lo, lo + o) for lo, o in zip(self.lo, self.out))
        for _ in range(int(n_batches)):
            n_fg = self.foreground_count(rng, batch_size)
            for b in range(batch_size):
                i = int(rng.integers(len(self.images)))
                _, y, m = self.segment(rng, i, foreground=b < n_fg)
                counts += np.bincount(y[m[sl]].ravel(), minlength=n_classes)[:n_classes]
        return counts / max(counts.sum(), 1.0)


#: whole-tumour component clean-up rules compared in the BraTS preset (fraction of the largest component)
COMPONENT_FRACTIONS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def evaluate_lesion_cases(model, cases, progress: bool = False, save_dir: Path | None = None,
                          fractions: Sequence[float] = (), fill: bool = False,
                          decisions: Sequence[str] = ("argmax",)) -> dict[str, Any]:
    """Segment each ``(channels, labels, spacing, brain_mask, name[, affine])`` case; BraTS region
    metrics. With its affine, a case is read as a user's scan is (turned to the model's orientation).

    Returns per-case rows (Dice and HD95 for whole tumour, tumour core, enhancing; volumes) and
    the means, as written into model cards, with the whole-tumour calibration pooled over the
    cases inside the brain (``calibration``, ``summary["ece_whole_tumour"]``) and, for an
    ensemble, the uncertainty AUROC for its wrong voxels (:mod:`napari_medlearn.training.emma`).
    The rows are of the model's own output (its card's clean-up, if any). With ``fractions``,
    each row also has ``clean`` metrics of the raw labels (no clean-up) after
    :func:`~napari_medlearn.methods.lesions.remove_small_lesions` at each fraction (keys ``"0.1"``),
    and with ``fill`` also followed by :func:`~napari_medlearn.methods.lesions.fill_lesion_holes`
    (keys ``"0.1+fill"``); each of these for the argmax labels and, when ``decisions`` has
    ``"expected_dice"``, for the expected-Dice labels (:func:`~napari_medlearn.methods.lesions.decide_labels`;
    keys ``"0.1+ed"``, ``"0.1+fill+ed"``; :func:`postprocess_of`). ``save_dir`` keeps each case's
    raw labels (``pred_<name>.npz``).
    """
    from ..methods.lesions import decide_labels, lesion_volumes, postprocess_labels, segment_lesions
    from .emma import calibration_bins, uncertainty_auroc, whole_tumour_probability

    keys = [f"{f:g}" for f in fractions] + ([f"{f:g}+fill" for f in fractions] if fill else [])
    if fractions and "expected_dice" in decisions:
        keys += [f"{k}+ed" for k in keys]
    rows, bins = [], []
    for case in cases:
        channels, labels, spacing, mask, name = case[:5]
        affine = case[5] if len(case) > 5 else None       # as a user's scan: turned to the model's orientation
        res = segment_lesions(channels, spacing, model=model, brain_mask=mask,
                              min_component_fraction=0.0 if fractions else None,
                              fill_holes=False if fractions else None,
                              decision="argmax" if fractions else None, affine=affine)
        row = {"case": name, **M.brats_region_metrics(res.labels, labels, spacing)}
        tv = lesion_volumes(np.asarray(labels).astype(np.uint8), spacing)
        row["whole_tumour_mL_true"] = tv["whole_tumour_mL"]
        row["whole_tumour_mL_pred"] = res.volumes_ml["whole_tumour_mL"]
        row["seconds"] = round(res.seconds, 1)
        truth = np.asarray(labels) > 0
        bins.append(calibration_bins(whole_tumour_probability(res.probabilities)[res.brain_mask],
                                     truth[res.brain_mask]))
        if res.uncertainty is not None:
            row["uncertainty_auroc_wrong_voxels"] = uncertainty_auroc(res.uncertainty, (res.labels > 0) != truth,
                                                                      res.brain_mask)
        if keys:
            row["clean"] = {}
            raw = {"argmax": res.labels}
            if any(k.endswith("+ed") for k in keys):
                raw["expected_dice"] = decide_labels(res.probabilities, res.label_values, res.brain_mask,
                                                     "expected_dice")[0]
            for k in keys:
                post = postprocess_of(k)
                lab = postprocess_labels(raw[post.pop("decision")], **post, brain_mask=res.brain_mask)
                m = {**M.brats_region_metrics(lab, labels, spacing),
                     "whole_tumour_mL_pred": lesion_volumes(lab, spacing)["whole_tumour_mL"]}
                if res.uncertainty is not None:
                    m["uncertainty_auroc_wrong_voxels"] = uncertainty_auroc(res.uncertainty, (lab > 0) != truth,
                                                                            res.brain_mask)
                row["clean"][k] = m
        if save_dir is not None:
            Path(save_dir).mkdir(parents=True, exist_ok=True)
            np.savez_compressed(Path(save_dir) / f"pred_{name}.npz", labels=res.labels)
        rows.append(row)
        if progress:
            print(f"  {name}: Dice WT {row['dice_whole_tumour']:.3f} TC {row['dice_tumour_core']:.3f} "
                  f"ET {row['dice_enhancing']:.3f}  HD95 WT {row['hd95_whole_tumour_mm']:.1f} mm", flush=True)
    return evaluation_of(rows, bins)


def evaluation_of(rows: Sequence[dict], bins: Sequence[dict]) -> dict[str, Any]:
    """A card's evaluation of per-case ``rows`` and their :func:`~napari_medlearn.training.emma.calibration_bins`:
    the rows, their means, the pooled calibration (its ECE in the summary) and, for an ensemble,
    the mean uncertainty AUROC."""
    from .emma import calibration_summary

    out = {"summary": summarise_rows(rows), "cases": list(rows), "calibration": calibration_summary(bins)}
    out["summary"]["ece_whole_tumour"] = out["calibration"]["ece"]
    auroc = [r["uncertainty_auroc_wrong_voxels"] for r in rows if "uncertainty_auroc_wrong_voxels" in r]
    if auroc:
        out["summary"]["uncertainty_auroc_mean"] = float(np.nanmean(auroc))
    return out


def summarise_rows(rows: Sequence[dict]) -> dict[str, Any]:
    """Means of the Dice / HD95 entries of per-case rows."""
    summary: dict[str, Any] = {"n_cases": len(rows)}
    for k in rows[0] if rows else []:
        if k.startswith(("dice_", "hd95_")):
            summary[f"{k}_mean"] = float(np.nanmean([r[k] for r in rows]))
    return summary


def postprocess_of(key: str) -> dict[str, Any]:
    """The ``postprocess`` entry of a card for a clean-up key of :func:`evaluate_lesion_cases`
    (``"0.1"``: argmax labels, components under 10 % of the largest dropped; ``"0.1+fill"``: then
    holes filled; ``"+ed"`` at the end: the expected-Dice labels instead of the argmax)."""
    frac, *rest = str(key).split("+")
    if rest not in ([], ["fill"], ["ed"], ["fill", "ed"]):
        raise ValueError(f"unknown post-processing key {key!r}")
    return {"decision": "expected_dice" if "ed" in rest else "argmax", "min_component_fraction": float(frac),
            "fill_holes": "fill" in rest}


def choose_postprocess(rows: Sequence[dict]) -> str:
    """The clean-up key with the best mean whole-tumour Dice over ``rows`` (ties: the first, i.e.
    the smaller fraction, no hole filling before filling, the argmax before expected Dice)."""
    keys = list(rows[0]["clean"])
    means = [np.mean([r["clean"][k]["dice_whole_tumour"] for r in rows]) for k in keys]
    return keys[int(np.argmax(np.round(means, 6)))]


def choose_component_fraction(rows: Sequence[dict]) -> float:
    """The clean-up fraction with the best mean whole-tumour Dice over ``rows`` (ties: the smaller)."""
    return float(postprocess_of(choose_postprocess(rows))["min_component_fraction"])


def postprocessed_evaluation(evaluation: dict[str, Any], key: str) -> dict[str, Any]:
    """An :func:`evaluate_lesion_cases` result (run with ``fractions``) as the model gives it with
    the clean-up ``key``: each row's region metrics, predicted volume and uncertainty AUROC from its
    ``clean[key]`` entry, the summary recomputed; the calibration (of the probabilities, which the
    clean-up does not change) and each row's ``clean`` entries kept."""
    rows = [{**r, **r["clean"][key]} for r in evaluation["cases"]]
    out = {**evaluation, "cases": rows, "summary": summarise_rows(rows)}
    out["summary"]["ece_whole_tumour"] = evaluation["calibration"]["ece"]
    auroc = [r["uncertainty_auroc_wrong_voxels"] for r in rows if "uncertainty_auroc_wrong_voxels" in r]
    if auroc:
        out["summary"]["uncertainty_auroc_mean"] = float(np.nanmean(auroc))
    return out


# ---------------------------------------------------------------------------------------------
BRATS_CITATION = ("B. H. Menze et al., The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS), "
                  "IEEE TMI 34(10):1993-2024, 2015")
BRATS_FILES = {"FLAIR": "Flair_subtrMeanDivStd.nii.gz", "T1c": "T1c_subtrMeanDivStd.nii.gz",
               "labels": "OTMultiClass.nii.gz", "mask": "brainmask.nii.gz"}


def find_brats_root(root: str | os.PathLike | None = None) -> Path:
    """The folder of the DeepMedic BraTS example subjects: ``root``, ``$MEDLEARN_BRATS``, or
    ``../shared/data/brats-deepmedic`` (beside the current directory or the source checkout)."""
    candidates = []
    if root is not None:
        candidates.append(Path(root))
    if os.environ.get("MEDLEARN_BRATS"):
        candidates.append(Path(os.environ["MEDLEARN_BRATS"]))
    repo = Path(__file__).resolve().parents[3]
    candidates += [Path.cwd().parent / "shared/data/brats-deepmedic", repo.parent / "shared/data/brats-deepmedic"]
    for c in candidates:
        if c.is_dir() and any((d / BRATS_FILES["labels"]).exists() for d in c.iterdir() if d.is_dir()):
            return c
    raise FileNotFoundError("BraTS subjects not found: pass --data, or set MEDLEARN_BRATS to the folder "
                            "holding brats_2013_patNNNN_1/")


def list_brats_subjects(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and all((d / f).exists() for f in BRATS_FILES.values()))


def synthetic_orientation() -> str:
    """The array orientation of the synthetic lesion cases (the MNI152 template's, ``"SAR"``)."""
    from ..samples.brain_lesions import _anatomy

    return axis_codes(_anatomy(4.0).affine)


def turn_case(channels, labels, spacing, mask, affine, orientation: str | None):
    """A training case turned to ``orientation`` (None: as it is): ``(channels, labels, spacing, mask)``."""
    if orientation is None or affine is None:
        return channels, labels, spacing, mask
    from ..imaging.orientation import turn_to

    turn = turn_to(affine, orientation)
    if turn.identity:
        return channels, labels, spacing, mask
    return (turn.apply(channels), None if labels is None else turn.apply(labels), turn.spacing(spacing),
            None if mask is None else turn.apply(mask))


def brats_eval_case(root: Path, name: str) -> tuple:
    """``(channels, labels, spacing, brain mask, name, affine)`` of a BraTS subject, as
    :func:`evaluate_lesion_cases` takes it."""
    channels, labels, spacing, mask, affine = load_brats_subject(root, name)
    return channels, labels, spacing, mask, name, affine


def load_brats_subject(root: Path, name: str):
    """``(channels (2, z, y, x) FLAIR+T1c, labels uint8, spacing, brain mask, affine)`` of one subject."""
    from ..imaging.io import read_nifti

    d = Path(root) / name
    vols = {k: read_nifti(d / f) for k, f in BRATS_FILES.items()}
    channels = np.stack([vols["FLAIR"].data, vols["T1c"].data]).astype(np.float32)
    labels = np.rint(vols["labels"].data).astype(np.uint8)
    mask = vols["mask"].data > 0
    return channels, labels, tuple(vols["FLAIR"].spacing), mask, vols["FLAIR"].affine


def brats_licence(root: Path, names: Sequence[str]) -> str:
    f = Path(root) / names[0] / "License_CC_BY_NC_SA_3.0.txt"
    return f.read_text(errors="replace").strip() if f.is_file() else ""


# ---------------------------------------------------------------------------------------------
# presets
LESION_LABELS = {"0": "background", "1": "necrotic / non-enhancing tumour core", "2": "oedema",
                 "4": "enhancing tumour"}


def deepmedic_args(width: float = 1.0, factors: Sequence[int] = (3,), fc: Sequence[int] = (150, 150),
                   in_channels: int = 2) -> dict[str, Any]:
    """DeepMedic arguments: the paper's feature maps (30..50, FC 150) scaled by ``width``."""
    from ..nets.deepmedic import NORMAL_FMS

    return {"in_channels": in_channels, "n_classes": 4,
            "fms_normal": [max(2, int(round(f * width))) for f in NORMAL_FMS],
            "subsample_factors": list(factors), "residual_layers": [4, 6, 8],
            "fc_fms": [max(2, int(round(f * width))) for f in fc]}


def lesion_input_spec(channels: Sequence[str] = ("FLAIR", "T1c"), spacing=(1.0, 1.0, 1.0),
                      orientation: str | None = None) -> dict[str, Any]:
    spec = {
        "axes": "(C, z, y, x) co-registered, skull-stripped modalities",
        "channels": list(channels),
        "spacing_mm": list(spacing),
        "intensity": "per channel zero mean / unit variance inside the brain mask, 0 outside",
        "brain_mask": "given, or every voxel where a channel differs from its constant background",
    }
    if orientation:     # the training arrays' orientation: inputs are turned to it (imaging.orientation)
        spec["orientation"] = orientation
    return spec


def train_deepmedic(cases: Sequence[LesionTrainingCase], arch_args: dict, run_dir: Path, epochs: int,
                    iters_per_epoch: int, batch_size: int = 10, out: int = 9, lr: float = 1e-3,
                    seed: int = 0, device: str = "auto", progress: bool = True):
    """Train a DeepMedic on preprocessed cases with the trainer loop (resumable); return model, cfg, hist."""
    import torch.nn.functional as F

    from ..nets.deepmedic import DeepMedic
    from .trainer import TrainConfig, train

    torch.manual_seed(seed)
    model = DeepMedic(**arch_args)
    geo = model.geometry(out)
    # no cases: a finished run is only reloaded (the loop draws no batch)
    sampler = SegmentSampler(cases, geo) if cases else None
    cfg = TrainConfig(epochs=epochs, iters_per_epoch=iters_per_epoch, lr=lr, weight_decay=1e-4,
                      lr_milestones=(int(epochs * 0.6), int(epochs * 0.85)), lr_gamma=0.3, seed=seed,
                      device=device, extra={"batch_size": batch_size, "output_block": out,
                                            "segment": [g.segment for g in geo], "fg_fraction": 0.5,
                                            "optimizer": "Adam"})
    hist = train(model, "deepmedic", arch_args, lambda rng, dev: sampler.batch(rng, dev, batch_size),
                 F.cross_entropy, cfg, run_dir, progress=progress)
    return model, cfg, hist


def _resume_deepmedic(arch_args: dict, run_dir: Path, epochs: int, iters_per_epoch: int, batch_size: int,
                      seed: int, device: str):
    """A fold already trained to ``epochs`` (its ``last.pt``), without loading its training data."""
    from ..zoo import torch_load

    ckpt = torch_load(Path(run_dir) / "last.pt")
    if int(ckpt["epoch"]) + 1 < epochs:
        raise RuntimeError(f"{run_dir} holds an unfinished run (epoch {int(ckpt['epoch']) + 1} of {epochs})")
    return train_deepmedic([], arch_args, run_dir, epochs, iters_per_epoch, batch_size=batch_size, seed=seed,
                           device=device, progress=False)


def _attach_card(model, arch_args: dict, channels=("FLAIR", "T1c"), spacing=(1.0, 1.0, 1.0),
                 orientation: str | None = None) -> None:
    from ..methods.lesions import LABEL_VALUES

    model.card = {"input": lesion_input_spec(channels, spacing, orientation), "n_classes": 4,
                  "label_values": list(LABEL_VALUES)}


def _common_card(arch_args: dict, name: str, spacing=(1.0, 1.0, 1.0), orientation: str | None = None) -> dict[str, Any]:
    from ..methods.lesions import DEFAULT_OUTPUT_BLOCK, LABEL_VALUES, TASK
    from ..nets.deepmedic import PAPER

    return {"name": name, "task": TASK, "architecture": "deepmedic", "arch_args": arch_args, "paper": PAPER,
            "n_classes": 4, "labels": LESION_LABELS, "label_values": list(LABEL_VALUES),
            "input": lesion_input_spec(spacing=spacing, orientation=orientation),
            "inference": {"output_block": DEFAULT_OUTPUT_BLOCK,
                                                        "segment": "output block + the pathways' context"}}


def run_lesions_brats(run_dir: str | Path, ship: bool = False, epochs: int = 20, iters_per_epoch: int = 150,
                      data: str | None = None, folds: int = 4, ship_fold: int = 0, width: float = 1.0,
                      batch_size: int = 10, device: str = "auto", seed: int = 0, progress: bool = True,
                      max_subjects: int | None = None, only_folds: Sequence[int] | None = None) -> dict[str, Any]:
    """DeepMedic on the four BraTS subjects of the DeepMedic examples, ``folds``-fold cross-validated
    (4: leave one subject out).

    Subjects are split in ``folds`` groups in name order; each fold trains on the others and is
    evaluated on its own group, never trained on. Each fold lives in ``run_dir/fold<k>`` (checkpoint
    per epoch, resumable; its evaluation cached in ``evaluation.json``), so folds can run in
    separate processes (``only_folds``) and a last call without it assembles the card.

    The whole-tumour component clean-up (:func:`~napari_medlearn.methods.lesions.remove_small_lesions`)
    is chosen without the labels of the subject it is applied to: for each fold, the fraction
    (of :data:`COMPONENT_FRACTIONS`) that is best on the *other* folds' held-out subjects; the
    shipped model's card carries the fraction chosen without its own test subjects.
    """
    import json
    import time

    from .presets import _finish, training_record

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    root = find_brats_root(data)
    subjects = list_brats_subjects(root)[:max_subjects] if max_subjects else list_brats_subjects(root)
    if len(subjects) < 2:
        raise ValueError(f"cross-validation needs at least 2 subjects, found {len(subjects)} in {root}")
    folds = max(2, min(folds, len(subjects)))
    groups = [sorted(subjects[i::folds]) for i in range(folds)]
    arch_args = deepmedic_args(width)
    # the cards carry the first real scan's orientation; every other training scan is turned to it
    orientation = axis_codes(load_brats_subject(root, subjects[0])[4])
    order = [ship_fold] + [f for f in range(folds) if f != ship_fold]
    if only_folds is not None:
        order = [f for f in order if f in set(int(k) for k in only_folds)]
    fold_results, shipped = {}, None
    for f in order:
        test = groups[f]
        train_names = [s for s in subjects if s not in test]
        fdir = run_dir / f"fold{f}"
        cached = fdir / "evaluation.json"
        cases = []
        if not cached.exists():
            for s in train_names:
                ch, lab, sp, mask, aff = load_brats_subject(root, s)
                cases.append(prepare_case(*turn_case(ch, lab, sp, mask, aff, orientation), name=s))
            if progress:
                print(f"fold {f}: training on {train_names}, testing on {test}", flush=True)
        model, cfg, hist = train_deepmedic(cases, arch_args, fdir, epochs, iters_per_epoch, batch_size=batch_size,
                                           seed=seed + f, device=device, progress=progress) if cases else \
            _resume_deepmedic(arch_args, fdir, epochs, iters_per_epoch, batch_size, seed + f, device)
        del cases
        _attach_card(model, arch_args, orientation=orientation)
        if cached.exists():
            ev = json.loads(cached.read_text())
        else:
            eval_cases = [brats_eval_case(root, s) for s in test]
            ev = evaluate_lesion_cases(model, eval_cases, progress=progress, save_dir=fdir,
                                       fractions=COMPONENT_FRACTIONS)
            del eval_cases
            cached.write_text(json.dumps({**ev, "training": training_record(cfg, hist, t0)}, indent=1))
            ev = json.loads(cached.read_text())
        fold_results[f] = {"fold": f, "train": train_names, "test": test, **ev}
        if f == ship_fold:
            shipped = (model, cfg, hist, train_names, test)
    if len(fold_results) < folds or shipped is None:
        return {"folds_done": sorted(fold_results), "folds": folds}
    # clean-up chosen per fold on the other folds' held-out subjects (never on the fold's own)
    for f, fr in fold_results.items():
        others = [r for g, o in fold_results.items() if g != f for r in o["cases"]]
        frac = choose_component_fraction(others)
        fr["component_fraction"] = frac
        fr["cases_clean"] = [{"case": r["case"], **r["clean"][f"{frac:g}"]} for r in fr["cases"]]
        fr["summary_clean"] = summarise_rows(fr["cases_clean"])
    model, cfg, hist, train_names, test = shipped
    ship_frac = fold_results[ship_fold]["component_fraction"]
    raw_rows = [r for fr in fold_results.values() for r in fr["cases"]]
    clean_rows = [r for fr in fold_results.values() for r in fr["cases_clean"]]
    cv_summary = {"raw": summarise_rows([{k: v for k, v in r.items() if k != "clean"} for r in raw_rows]),
                  "clean": summarise_rows(clean_rows)}
    shipped_fr = fold_results[ship_fold]
    fold_results = [fold_results[f] for f in sorted(fold_results)]
    name = "lesions-brats"
    card = {
        **_common_card(arch_args, name, orientation=orientation),
        "priority": 10,
        "description": f"DeepMedic trained on real BraTS glioma scans (FLAIR + T1c, {len(train_names)} of the "
                       f"{len(subjects)} DeepMedic example subjects); the default lesion model. Research use only, "
                       "not for diagnosis.",
        "postprocess": {"min_component_fraction": ship_frac,
                        "rule": "whole-tumour components smaller than this fraction of the largest are set to "
                                "background; chosen (best mean whole-tumour Dice) on the held-out predictions of "
                                "the cross-validation folds whose test subjects the shipped model was trained on"},
        "training": {
            "data": f"BraTS 2015 subjects {', '.join(train_names)} (from the DeepMedic examples; intensity "
                    "z-scored within the brain by their provider); BraTS label 3 (non-enhancing core) merged "
                    "into 1 as in BraTS 2017+",
            "never_seen": test,
            "cross_validation": {"folds": [{"fold": fr["fold"], "train": fr["train"], "test": fr["test"]}
                                           for fr in fold_results], "shipped_fold": ship_fold},
            "command": "medlearn train lesions-brats --ship (folds in parallel: add --only-folds 0 1 and "
                       "--only-folds 2 3 in two processes, then run it once more without)",
            "loss": "voxel-wise cross-entropy over 9^3 output blocks",
            "sampling": "50% of segments centred on tumour, 50% on brain background (class-balanced)",
            "augmentation": {"intensity_scale_sd": 0.1, "intensity_shift_sd": 0.1, "flip_left_right": 0.5},
            **training_record(cfg, hist, t0),
        },
        "evaluation": {
            "data": f"{len(test)} BraTS subjects never trained on by the shipped model ({', '.join(test)}); "
                    "full pipeline (segment_lesions with the provided brain masks); regions: whole tumour "
                    "(labels > 0), tumour core (1, 3, 4), enhancing (4); HD95 by SimpleITK",
            "summary": shipped_fr["summary_clean"],
            "cases": shipped_fr["cases_clean"],
            "summary_without_cleanup": shipped_fr["summary"],
            "cross_validation_summary": cv_summary,
            "folds": [{k: v for k, v in fr.items() if k != "training"} for fr in fold_results],
        },
        "licence": {
            "weights": "CC BY-NC-SA 3.0 (trained on data under that licence): non-commercial, share alike, "
                       "with the attribution below",
            "training_data": "BraTS 2015 (braintumorsegmentation.org), as modified by Konstantinos Kamnitsas for "
                             "the DeepMedic examples; Creative Commons Attribution-NonCommercial-ShareAlike 3.0 "
                             "Switzerland, http://creativecommons.org/licenses/by-nc-sa/3.0/ch/deed.en",
            "citation": BRATS_CITATION,
            "attribution_text": brats_licence(root, subjects),
        },
        "intended_use": "research use only, not for diagnosis",
    }
    card = _finish(model, "deepmedic", arch_args, card, run_dir, ship)
    if ship:     # calibration of the shipped fold on its never-seen subjects, with the reliability figure
        from .emma import calibrate_lesion_card

        card = calibrate_lesion_card(name, data=data, subjects=test, calibration=shipped_fr.get("calibration"),
                                     card=card, out_dir=run_dir, ship=True)
    return card


def run_lesions_synthetic(run_dir: str | Path, ship: bool = False, epochs: int = 8, iters_per_epoch: int = 150,
                          n_train: int = 12, n_eval: int = 4, width: float = 1.0, batch_size: int = 10,
                          device: str = "auto", seed: int = 0, progress: bool = True,
                          domain: str = SOURCE_DOMAINS, spacing_mm: float = 2.0) -> dict[str, Any]:
    """DeepMedic on synthetic multi-modal lesion cases (``samples.brain_lesions``, domain ``domain``),
    seeds ``seed..seed+n_train-1``; held-out cases of seeds 10000+ for the card."""
    import time

    from ..samples.brain_lesions import synthetic_lesion_case
    from .presets import _finish, training_record

    run_dir = Path(run_dir)
    t0 = time.time()
    arch_args = deepmedic_args(width)
    domains = scanner_domains(domain)
    cases = synthetic_training_cases(n_train, spacing_mm, domains, seed, progress=progress)
    model, cfg, hist = train_deepmedic(cases, arch_args, run_dir, epochs, iters_per_epoch, batch_size=batch_size,
                                       seed=seed, device=device, progress=progress)
    del cases
    spacing = (float(spacing_mm),) * 3
    orientation = synthetic_orientation()
    _attach_card(model, arch_args, spacing=spacing, orientation=orientation)
    eval_seeds = list(range(10000, 10000 + n_eval))
    ev_cases = []
    for i, s in enumerate(eval_seeds):
        c = synthetic_lesion_case(seed=s, domain=domains[i % len(domains)], spacing_mm=spacing_mm)
        ev_cases.append((c.channels, c.labels, c.spacing, c.brain_mask, f"seed {s}", getattr(c, "affine", None)))
    ev = evaluate_lesion_cases(model, ev_cases, progress=progress)
    name = "lesions-synthetic"
    card = {
        **_common_card(arch_args, name, spacing, orientation),
        "priority": 0,
        "description": "DeepMedic trained on synthetic brain-lesion cases (MNI152 anatomy, simulated FLAIR/T1c "
                       f"and tumours, scanner {domains_text(domain)}): a demo of the pipeline and the source-only "
                       "model of domain adaptation, not a model for real scans.",
        "training": {
            "data": f"{n_train} synthetic cases, napari_medlearn.samples.brain_lesions.synthetic_lesion_case "
                    f"seeds {seed}..{seed + n_train - 1}, {domains_text(domain)}, {spacing_mm:g} mm isotropic",
            "command": "medlearn train lesions-synthetic --ship",
            "loss": "voxel-wise cross-entropy over 9^3 output blocks",
            "sampling": "50% of segments centred on lesion, 50% on brain background (class-balanced)",
            "augmentation": {"intensity_scale_sd": 0.1, "intensity_shift_sd": 0.1, "flip_left_right": 0.5},
            **training_record(cfg, hist, t0),
        },
        "evaluation": {
            "data": f"{n_eval} synthetic cases of seeds {eval_seeds[0]}..{eval_seeds[-1]} ({domains_text(domain)}), "
                    "never used in training; full pipeline (segment_lesions with the generator's brain masks)",
            **ev,
        },
        "licence": {"weights": "BSD-3-Clause",
                    "training_data": "synthetic (generated by this package from the MNI152 template in nilearn)"},
        "adaptation_source": {"generator": "samples.brain_lesions.synthetic_lesion_case", "domain": domain,
                              "seeds": [seed, seed + n_train], "spacing_mm": spacing_mm},
        "intended_use": "demonstration and testing; research use only, not for diagnosis",
    }
    card = _finish(model, "deepmedic", arch_args, card, run_dir, ship)
    if ship:     # Dice and calibration on the real BraTS subjects (it never saw a real scan)
        from .emma import calibrate_lesion_card

        try:
            real = list_brats_subjects(find_brats_root(None))
        except (FileNotFoundError, ValueError):
            real = []
        if real:
            card = calibrate_lesion_card(name, subjects=real, card=card, out_dir=run_dir, ship=True,
                                         key="real_brats", progress=progress)
    return card
