"""The ACNN cardiac shape prior: a denoising label autoencoder on ACDC expert masks.

O. Oktay et al., "Anatomically Constrained Neural Networks (ACNNs)", IEEE TMI 37(2), 2018.

Data: the ED and ES expert label maps of the ACDC training patients of the *same* split as the
``cardiac-acdc`` preset (:func:`napari_medlearn.training.acdc.stratified_split`, seed 0, 4
validation patients per group), so the held-out patients are never seen by any shipped cardiac
model, plus label maps of cardiac cine phantoms. Each sample is drawn on the canonical grid of
:mod:`napari_medlearn.imaging.shape_grid` with a random in-plane rotation (+-180 deg), flip,
scale (0.85-1.15) and shift of the centre (sd 6 mm in-plane, 4 mm through-plane). With
probability ``p_corrupt`` the *input* is first damaged on the mask's own grid by one of
:data:`napari_medlearn.imaging.mask_corruption.CORRUPTIONS` (holes, islands, lost slice,
bitten ring, ragged boundaries, combined) while the *target* stays intact: the autoencoder
learns to map implausible to plausible (a denoising autoencoder; Oktay's AE reconstructs clean
inputs, which is the ``p_corrupt=0`` special case). Loss: MONAI DiceCE on the decoder logits.

Evaluation (:func:`evaluate_correction`): each held-out mask is damaged by every corruption
(seeded) and corrected; Dice to the truth before, after correction and after plain morphology
(largest component + hole filling), the clean mask's Dice to its own correction, and whether
the plausibility ranks the clean mask above its damaged copy.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..imaging import measures as M
from ..imaging.labels import clean_labels
from ..imaging.mask_corruption import CORRUPTIONS, corrupt
from ..imaging.shape_grid import (CANONICAL_GRID, CANONICAL_SPACING, foreground_centre, grid_map,
                                  to_canonical)

OKTAY_PAPER = ("O. Oktay et al., Anatomically Constrained Neural Networks (ACNNs): Application to Cardiac "
               "Image Enhancement and Segmentation, IEEE TMI 37(2):384-395, 2018, doi:10.1109/TMI.2017.2743464")
N_CLASSES = 4


def shape_args(width: float = 1.0, grid=CANONICAL_GRID) -> dict[str, Any]:
    """Autoencoder arguments: widths 8, 16, 32, 64 scaled by ``width``; no image predictor."""
    return {"n_classes": N_CLASSES, "grid": list(grid),
            "filters": [max(2, int(round(f * width))) for f in (8, 16, 32, 64)],
            "strides": [[1, 2, 2], [2, 2, 2], [1, 2, 2], [2, 2, 2]], "code_size": 64, "in_channels": 0}


def crop_to_heart(labels: np.ndarray, spacing, margin_mm: float = 75.0) -> np.ndarray:
    """In-plane crop of ``(z, y, x)`` labels to the heart plus ``margin_mm`` (saves sampling time)."""
    fg = np.argwhere(labels > 0)
    if len(fg) == 0:
        return labels
    lo, hi = fg.min(axis=0), fg.max(axis=0) + 1
    my, mx = int(margin_mm / spacing[1]), int(margin_mm / spacing[2])
    return labels[:, max(0, lo[1] - my):hi[1] + my, max(0, lo[2] - mx):hi[2] + mx]


class MaskPool:
    """Label maps ``(z, y, x)`` with their spacing, sampled as (damaged, intact) canonical pairs."""

    def __init__(self, grid=CANONICAL_GRID, grid_spacing=CANONICAL_SPACING, p_corrupt: float = 0.7,
                 augment: bool = True) -> None:
        self.masks: list[tuple[np.ndarray, tuple]] = []
        self.grid, self.grid_spacing = tuple(grid), tuple(grid_spacing)
        self.p_corrupt, self.augment = p_corrupt, augment

    def add(self, labels: np.ndarray, spacing) -> None:
        sp = tuple(float(s) for s in spacing)
        if np.any(labels > 0):
            self.masks.append((crop_to_heart(np.asarray(labels, np.uint8), sp), sp))

    def __len__(self) -> int:
        return len(self.masks)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One pair: damaged input one-hot ``(K, D, H, W)`` float32 and intact target ``(D, H, W)`` int64."""
        lab, sp = self.masks[int(rng.integers(len(self)))]
        centre = foreground_centre(lab, sp)
        kw: dict[str, Any] = {}
        if self.augment:
            centre = centre + rng.normal(0, 1, 3) * np.array([4.0, 6.0, 6.0])
            kw = dict(rotation=rng.uniform(-np.pi, np.pi), flip=bool(rng.random() < 0.5),
                      scale=float(np.exp(rng.uniform(np.log(0.85), np.log(1.15)))))
        gmap = grid_map(lab.shape, sp, centre, self.grid, self.grid_spacing, **kw)
        target_soft = to_canonical(lab, gmap, N_CLASSES)
        target = np.argmax(target_soft, axis=0).astype(np.int64)
        if rng.random() < self.p_corrupt:
            kind = list(CORRUPTIONS)[int(rng.integers(len(CORRUPTIONS)))]
            x = to_canonical(corrupt(lab, sp, kind, rng), gmap, N_CLASSES)
        else:
            x = target_soft
        return x, target

    def batch(self, rng: np.random.Generator, device, batch_size: int = 8):
        pairs = [self.sample(rng) for _ in range(batch_size)]
        x = torch.from_numpy(np.stack([p[0] for p in pairs]))
        y = torch.from_numpy(np.stack([p[1] for p in pairs]))[:, None]
        return x.to(device), y.to(device)


def mean_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean Dice over LV cavity, myocardium and RV cavity."""
    return float(np.mean(list(M.dice_per_label(pred, truth).values())))


#: the percentile of clean training masks' agreement that the calibration maps to plausibility 0.5
CLEAN_PERCENTILE = 5


def calibration(model, masks, rng: np.random.Generator) -> dict[str, float]:
    """Logistic calibration of the reconstruction agreement from clean and damaged masks."""
    from ..methods.acnn import _reconstruct, agreement, outside_box

    clean, damaged = [], []
    for lab, sp in masks:
        for src, out in ((lab, clean), (corrupt(lab, sp, list(CORRUPTIONS)[int(rng.integers(len(CORRUPTIONS)))], rng),
                                         damaged)):
            gmap = grid_map(src.shape, sp, foreground_centre(src, sp), model.grid, CANONICAL_SPACING)
            canon = to_canonical(src, gmap, N_CLASSES)
            out.append(agreement(canon, _reconstruct(model, canon), outside_box(src, gmap, N_CLASSES)))
    c, d = float(np.median(clean)), float(np.median(damaged))
    low = float(np.percentile(clean, CLEAN_PERCENTILE))
    # A typical expert mask -> 0.9, the clean masks' 5th percentile -> 0.5. The learnt agreement of
    # clean and damaged masks differs little (their medians ~0.02 apart), so a logistic centred
    # between the two medians with a quarter of that gap as its scale (the first rule) was a step:
    # 40 % of held-out expert masks scored ~0. Damage is told apart by the exact anatomy checks
    # (methods.acnn.fault_factor) and the ranking, which a monotone calibration cannot change.
    scale = max(float((c - low) / np.log(9.0)), 1e-3)
    return {"midpoint": low, "scale": scale, "rule": f"clean median -> 0.9, clean {CLEAN_PERCENTILE}th percentile "
            "-> 0.5 (logistic)", "clean_median_agreement": c, f"clean_p{CLEAN_PERCENTILE}_agreement": low,
            "damaged_median_agreement": d, "n_masks": len(masks)}


def evaluate_correction(model, cases, seed: int = 12345, kinds=tuple(CORRUPTIONS), progress: bool = False,
                        **correct_kw) -> dict[str, Any]:
    """Damage, correct and score every ``(labels (z,y,x), spacing, name)`` case; rows + summary."""
    from ..methods.acnn import correct_mask, plausibility

    rows, clean_rows = [], []
    for ci, (truth, sp, name) in enumerate(cases):
        p_clean = plausibility(truth, sp, model=model)
        res = correct_mask(truth, sp, model=model, **correct_kw)
        clean_rows.append({"case": name, "dice_self": mean_dice(res.labels, truth),
                           "dice_self_morphology": mean_dice(clean_labels(truth, values=(1, 2, 3)), truth),
                           "plausibility": p_clean, "changed_voxels": res.n_changed})
        for ki, kind in enumerate(kinds):
            rng = np.random.default_rng([seed, ci, ki])
            bad = corrupt(truth, sp, kind, rng)
            res = correct_mask(bad, sp, model=model, **correct_kw)
            morph = clean_labels(bad, values=(1, 2, 3))
            rows.append({"case": name, "corruption": kind, "dice_corrupted": mean_dice(bad, truth),
                         "dice_corrected": mean_dice(res.labels, truth), "dice_morphology": mean_dice(morph, truth),
                         "plausibility_clean": p_clean, "plausibility_corrupted": res.plausibility_before,
                         "plausibility_corrected": res.plausibility})
        if progress:
            r = rows[-len(kinds):]
            print(f"  {name}: self {clean_rows[-1]['dice_self']:.3f}; " + ", ".join(
                f"{x['corruption']} {x['dice_corrupted']:.3f}->{x['dice_corrected']:.3f} (morph "
                f"{x['dice_morphology']:.3f})" for x in r), flush=True)
    return {"summary": summarise(rows, clean_rows), "cases": rows, "clean": clean_rows}


def summarise(rows: list[dict], clean_rows: list[dict]) -> dict[str, Any]:
    def block(rs):
        dc = np.array([r["dice_corrupted"] for r in rs])
        dx = np.array([r["dice_corrected"] for r in rs])
        dm = np.array([r["dice_morphology"] for r in rs])
        ranked = np.array([r["plausibility_clean"] > r["plausibility_corrupted"] for r in rs])
        return {"n": len(rs), "dice_corrupted_mean": float(dc.mean()), "dice_corrected_mean": float(dx.mean()),
                "dice_morphology_mean": float(dm.mean()),
                "share_correction_raises_dice": float(np.mean(dx > dc)),
                "share_morphology_raises_dice": float(np.mean(dm > dc)),
                "correction_minus_morphology": float(dx.mean() - dm.mean()),
                "share_plausibility_ranks_clean_higher": float(ranked.mean())}
    out = {"all": block(rows)} if rows else {}
    for kind in sorted({r["corruption"] for r in rows}):
        out[kind] = block([r for r in rows if r["corruption"] == kind])
    if clean_rows:
        out["clean_dice_to_self_mean"] = float(np.mean([r["dice_self"] for r in clean_rows]))
        out["clean_dice_to_self_min"] = float(np.min([r["dice_self"] for r in clean_rows]))
        out["clean_morphology_dice_to_self_mean"] = float(np.mean([r["dice_self_morphology"] for r in clean_rows]))
        out["clean_plausibility_mean"] = float(np.mean([r["plausibility"] for r in clean_rows]))
        out["clean_plausibility_median"] = float(np.median([r["plausibility"] for r in clean_rows]))
        out["share_clean_scored_implausible"] = float(np.mean([r["plausibility"] < 0.5 for r in clean_rows]))
    return out


#: correction settings besides the tuned threshold (methods.acnn.correct_mask)
CORRECTION = {"smooth_mm": 0.8, "gate_mm": 12.0, "lost_slice_min_probability": 0.35}


def tune_threshold(model, cases, thresholds=(0.1, 0.2, 0.3, 0.4, 0.5), min_self_dice: float = 0.98) -> tuple[float, dict]:
    """Pick the prior's overrule threshold on *training* masks: best mean corrected Dice while
    clean masks come back with mean Dice >= ``min_self_dice`` to themselves."""
    scores = {}
    fixed = {"smooth_mm": CORRECTION["smooth_mm"], "gate_mm": CORRECTION["gate_mm"],
             "refill_p": CORRECTION["lost_slice_min_probability"]}
    for th in thresholds:
        s = evaluate_correction(model, cases, seed=777, threshold=th, **fixed)["summary"]
        scores[th] = {"dice_corrected_mean": s["all"]["dice_corrected_mean"],
                      "share_correction_raises_dice": s["all"]["share_correction_raises_dice"],
                      "clean_dice_to_self_mean": s["clean_dice_to_self_mean"]}
    ok = [t for t in thresholds if scores[t]["clean_dice_to_self_mean"] >= min_self_dice] or [min(thresholds)]
    best = max(ok, key=lambda t: scores[t]["dice_corrected_mean"])
    return float(best), {str(t): v for t, v in scores.items()}


def run_acnn_shape_prior(run_dir: str | Path, ship: bool = False, epochs: int = 40, iters_per_epoch: int = 100,
                         data: str | None = None, n_val_per_group: int = 4, width: float = 1.0,
                         device: str = "auto", seed: int = 0, progress: bool = True,
                         max_patients: int | None = None, n_phantoms: int = 6, batch_size: int = 8,
                         n_tune: int = 10, n_eval: int | None = None, weights: str | None = None) -> dict[str, Any]:
    """Train, calibrate, tune and evaluate the shape prior; write model + card (``ship``: into the zoo).

    ``weights`` (a zoo name or checkpoint) skips the training and re-runs calibration, tuning and
    evaluation on those weights (the card keeps their training record and says so)."""
    from monai.losses import DiceCELoss

    from ..nets import ACNNShapeModel
    from ..samples.cardiac_phantom import cardiac_cine_phantom
    from .acdc import ACDC_CITATION, find_acdc_root, list_patients, load_patient, stratified_split
    from .presets import CARDIAC_LABELS, _finish, training_record
    from .trainer import TrainConfig, train

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    root = find_acdc_root(data)
    patients = list_patients(root)
    train_names, val_names = stratified_split(patients, n_val_per_group, seed)   # the cardiac-acdc split
    if max_patients:
        train_names, val_names = train_names[:max_patients], val_names[:max(1, max_patients // 4)]
    pool = MaskPool()
    train_masks = []
    for name in train_names:
        p = load_patient(root, name)
        for lab in (p.ed_labels, p.es_labels):
            pool.add(lab, p.spacing)
            train_masks.append((np.asarray(lab, np.uint8), p.spacing))
    n_real = len(pool)
    for s_ in range(n_phantoms):
        ph = cardiac_cine_phantom(seed=30000 + s_)
        for t in range(0, ph.labels.shape[0], max(1, ph.labels.shape[0] // 3)):
            pool.add(ph.labels[t], ph.spacing)
    if progress:
        print(f"{n_real} ACDC label maps ({len(train_names)} patients) + {len(pool) - n_real} phantom label maps",
              flush=True)
    if weights:
        from .. import zoo

        model = zoo.load(weights, device="cpu")
        arch_args = dict(model.card["arch_args"])
        record = dict(model.card.get("training", {}))
        record = {k: record[k] for k in ("config", "loss_per_epoch", "wall_seconds", "train_loop_seconds",
                                         "hardware", "reproducibility") if k in record}
        record["weights_from"] = f"{weights} sha256 {model.card.get('sha256', '')}: calibration, tuning and " \
                                 "evaluation re-run on these weights"
        record["recalibration_command"] = "medlearn train acnn-recalibrate --ship"
    else:
        arch_args = shape_args(width)
        torch.manual_seed(seed)
        model = ACNNShapeModel(**arch_args)
        cfg = TrainConfig(epochs=epochs, iters_per_epoch=iters_per_epoch, lr=1e-3,
                          lr_milestones=(int(epochs * 0.6), int(epochs * 0.85)), seed=seed, device=device)
        dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
        hist = train(model, "acnn_shape", arch_args, lambda rng, dev: pool.batch(rng, dev, batch_size),
                     lambda out, y: dice_ce(out[0], y), cfg, run_dir, progress=progress)
        record = training_record(cfg, hist, t0)
    model.cpu().eval()
    rng = np.random.default_rng(seed + 1)
    tune_idx = rng.choice(len(train_masks), size=min(n_tune, len(train_masks)), replace=False)
    tune_masks = [train_masks[int(i)] for i in tune_idx]
    cal = calibration(model, [train_masks[int(i)] for i in rng.choice(len(train_masks), size=min(40, len(train_masks)),
                                                                          replace=False)], rng)
    model.card = {"n_classes": N_CLASSES, "plausibility_calibration": cal,
                  "input": {"grid": list(CANONICAL_GRID), "grid_spacing_mm": list(CANONICAL_SPACING)}}
    threshold, tuning = tune_threshold(model, [(lab, sp, f"train {i}") for i, (lab, sp) in enumerate(tune_masks)])
    model.card["correction"] = {"threshold": threshold, **CORRECTION}
    if progress:
        print(f"calibration {cal}; threshold {threshold} ({tuning})", flush=True)
    cases = []
    for name in val_names[:n_eval] if n_eval else val_names:
        p = load_patient(root, name)
        cases += [(np.asarray(p.ed_labels, np.uint8), p.spacing, f"{name} ED"),
                  (np.asarray(p.es_labels, np.uint8), p.spacing, f"{name} ES")]
    ev = evaluate_correction(model, cases, progress=progress)
    card = {
        "name": "acnn-shape-prior",
        "task": "cardiac-shape-prior",
        "priority": 10,
        "description": "ACNN label autoencoder (T-L network, 64-d code) trained as a denoising autoencoder on "
                       "ACDC expert masks: plausibility score and mask correction for cardiac labels.",
        "architecture": "acnn_shape", "arch_args": arch_args, "paper": OKTAY_PAPER,
        "n_classes": N_CLASSES, "labels": CARDIAC_LABELS,
        "input": {"axes": "(z, y, x) short-axis label map, one frame at a time",
                  "grid": list(CANONICAL_GRID), "grid_spacing_mm": list(CANONICAL_SPACING),
                  "resampling": "one-hot channels trilinear to the canonical box centred on the median foreground "
                                "position; probabilities trilinear back to the input grid"},
        "plausibility_calibration": cal,
        "correction": {"threshold": threshold, **CORRECTION, "threshold_tuning_on_training_masks": tuning},
        "training": {
            "data": f"ACDC expert label maps of {len(train_names)} training patients (ED and ES, {n_real} maps), "
                    f"plus {len(pool) - n_real} label maps of cardiac phantoms (seeds 30000..{30000 + n_phantoms - 1})",
            "split": {"seed": seed, "validation_per_group": n_val_per_group, "same_as": "cardiac-acdc",
                      "train": train_names, "validation": val_names},
            "command": "medlearn train acnn-shape-prior --ship",
            "loss": "MONAI DiceCELoss on the decoder logits (denoising: damaged input, intact target)",
            "augmentation": {"rotation_deg": 180, "flip": True, "scale": [0.85, 1.15],
                             "centre_shift_sd_mm": [4, 6, 6], "p_corrupt": pool.p_corrupt,
                             "corruptions": list(CORRUPTIONS)},
            **record,
        },
        "evaluation": {
            "data": f"{len(cases)} expert label maps (ED and ES) of {len(cases) // 2} ACDC patients held out by the "
                    "split above, never trained on by this or any shipped cardiac model; each damaged by every "
                    "corruption of napari_medlearn.imaging.mask_corruption (seeded), then corrected; "
                    "'morphology' = largest component + in-plane hole filling (imaging.labels.clean_labels); "
                    "Dice = mean over LV cavity, myocardium, RV cavity",
            **ev,
        },
        "licence": {"weights": "research use only (ACDC terms); not for diagnosis",
                    "training_data": "ACDC (MICCAI 2017 challenge, University Hospital of Dijon), research use; "
                                     "any use must cite the paper below", "citation": ACDC_CITATION},
        "intended_use": "quality control and correction of cardiac label maps; research use only",
    }
    return _finish(model, "acnn_shape", arch_args, card, run_dir, ship)
