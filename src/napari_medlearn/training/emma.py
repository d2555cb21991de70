"""EMMA: Ensembles of Multiple Models and Architectures for brain-tumour segmentation.

K. Kamnitsas et al., "Ensembles of Multiple Models and Architectures for Robust Brain Tumour
Segmentation", BrainLes 2017 (BraTS 2017, first place). Networks that differ in architecture,
loss and sampling make different errors; the mean of their posteriors is more accurate and
better calibrated than any one of them, and their disagreement shows where to look.

Members here (each a zoo model with a preset and a card; :data:`MEMBER_RECIPES`):

- ``emma-deepmedic``: DeepMedic (paper widths), cross-entropy, 50 % of segments on tumour;
- ``emma-unet``: 3D U-Net (Cicek et al. 2016), Dice + cross-entropy (MONAI ``DiceCELoss``),
  half of the patches on tumour;
- ``emma-fcn``: 3D FCN-8s (Long et al. 2015), cross-entropy, a third of the patches on tumour.

A quarter of each member's training batches (:data:`SYNTHETIC_TRAINING`) come from synthetic cases of
:mod:`napari_medlearn.samples.brain_lesions` on three scanners: two real training subjects show few of
the appearances a glioma can take (neither has a liquefied, FLAIR-dark necrotic centre), and the
generator varies them (solid and liquefied necrotic centres, three scanners). On BraTS pat0003 /
pat0005 the members trained so reached whole-tumour Dice 0.908 / 0.612 (DeepMedic), 0.906 / 0.661
(U-Net), 0.863 / 0.701 (FCN), against 0.909 / 0.643, 0.908 / 0.658, 0.908 / 0.619 on the real
subjects alone; their ensemble 0.911 / 0.664 (0.920 / 0.657), tumour core 0.490 (0.452), ECE
0.0041 (0.0076).

Evaluation helpers shared by every lesion card: whole-tumour calibration (expected calibration
error and the reliability curve, by MONAI's ``calibration_binning``, pooled over cases inside the
brain), AUROC of an uncertainty map for the ensemble's own wrong voxels (MONAI
``compute_roc_auc``), and the floor to beat: a FLAIR intensity threshold tuned on the training
subjects.

Each member's card carries a ``prior_correction`` (:func:`class_priors`): its training segments
over-sample tumour (a half or a third centred on it), so its raw posteriors are those of that
sampling and over-predict tumour on whole scans; at inference they are moved to the class prior of
whole training brains (Saerens et al. 2002), estimated from the training subjects alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..imaging import measures as M
from ..imaging.orientation import axis_codes

#: architecture, size and training recipe of each EMMA member (varied loss and sampling, as in EMMA);
#: ``epochs`` of 150 iterations (default 12). The FCN trains 24: on both cross-validation folds its
#: held-out whole-tumour Dice rose with 24 against 12 (0.782 -> 0.795 and 0.742 -> 0.777). The U-Net
#: keeps 12: at 24 it rose on the shipped fold (0.784 -> 0.795) but fell on the other (0.832 -> 0.808);
#: DeepMedic keeps 12 too: at 24 it fell on the shipped fold (0.760 -> 0.739) and rose on the other (0.697 -> 0.772).
#: A recipe's ``spatial`` asks for rotation / scale augmentation of its segments (:func:`recipe_spatial`); none
#: uses it: the U-Net with ``{"p": 0.5, "rotation_deg": 15, "scale_range": (0.85, 1.15)}`` fell on both folds
#: (0.784 -> 0.761 and 0.832 -> 0.763). A recipe's ``spacing_mm`` (default 1) is the isotropic grid the member
#: is trained and run on (:func:`recipe_spacing`); all stay at 1 mm: at 2 mm (a 48-voxel patch then sees 96 mm,
#: the whole of a large tumour with its rim) the U-Net fell on both folds (0.784 -> 0.720, 0.832 -> 0.781) and
#: so did the FCN (0.795 -> 0.658, 0.777 -> 0.690)
MEMBER_RECIPES: dict[str, dict[str, Any]] = {
    "emma-deepmedic": {"arch": "deepmedic", "loss": "ce", "fg_fraction": 0.5, "out": 9, "batch_size": 10},
    "emma-unet": {"arch": "unet3d", "arch_args": {"base": 8, "levels": 4}, "loss": "dice_ce", "fg_fraction": 0.5,
                  "patch": 48, "batch_size": 2, "inference": {"roi": 96, "overlap": 0.25}},
    "emma-fcn": {"arch": "fcn3d", "arch_args": {"base": 8, "fc": 64}, "loss": "ce", "fg_fraction": 1 / 3,
                 "patch": 48, "batch_size": 2, "inference": {"roi": 96, "overlap": 0.25}, "epochs": 24},
}
#: synthetic cases mixed into every member's training: ``share`` of the batches are drawn from
#: ``n_cases`` cases (seeds ``seed``.., scanners cycling through ``domains``) at 1 mm, or on the grid of a
#: recipe's ``spacing_mm`` (``necrosis_fluid`` None: solid or liquefied necrotic centres, drawn per case)
SYNTHETIC_TRAINING: dict[str, Any] = {"share": 0.25, "n_cases": 12, "domains": "ABC", "spacing_mm": 1.0, "seed": 0,
                                      "necrosis_fluid": None}
LOSS_TEXT = {"ce": "voxel-wise cross-entropy", "dice_ce": "soft Dice + cross-entropy (MONAI DiceCELoss, softmax, "
                                                          "one-hot targets)"}


# ---------------------------------------------------------------------------------------------
# evaluation: calibration, uncertainty AUROC, FLAIR threshold floor

def calibration_bins(prob: np.ndarray, truth: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin sums of a binary probability and its truth: ``sum_p``, ``sum_y``, ``count``
    (MONAI ``calibration_binning`` on equal-width bins; sums pool exactly over cases)."""
    from monai.metrics import calibration_binning

    p = torch.as_tensor(np.asarray(prob, np.float32).ravel())[None, None]
    y = torch.as_tensor(np.asarray(truth, np.float32).ravel())[None, None]
    mp, my, n = (t[0, 0].double().numpy() for t in calibration_binning(p, y, num_bins=n_bins))
    mp, my = np.nan_to_num(mp), np.nan_to_num(my)
    return {"sum_p": mp * n, "sum_y": my * n, "count": n}


def calibration_summary(bins: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Expected calibration error (count-weighted |confidence - frequency|) and the reliability
    curve of pooled :func:`calibration_bins`."""
    sp = np.sum([b["sum_p"] for b in bins], axis=0)
    sy = np.sum([b["sum_y"] for b in bins], axis=0)
    n = np.sum([b["count"] for b in bins], axis=0)
    ok = n > 0
    conf = np.where(ok, sp / np.maximum(n, 1), np.nan)
    freq = np.where(ok, sy / np.maximum(n, 1), np.nan)
    ece = float(np.sum(np.abs(sp[ok] - sy[ok])) / max(n.sum(), 1))
    return {"ece": ece, "n_bins": int(len(n)), "confidence": [None if np.isnan(v) else round(float(v), 5) for v in conf],
            "frequency": [None if np.isnan(v) else round(float(v), 5) for v in freq], "count": [int(v) for v in n]}


def _bins_of(calibration: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per-bin sums back from a :func:`calibration_summary` (confidence and frequency x count)."""
    n = np.asarray(calibration["count"], float)
    conf = np.array([0.0 if v is None else v for v in calibration["confidence"]], float)
    freq = np.array([0.0 if v is None else v for v in calibration["frequency"]], float)
    return {"sum_p": conf * n, "sum_y": freq * n, "count": n}


def pool_evaluations(evaluations: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One evaluation (``summary``, ``cases``, ``calibration``) of the disjoint held-out cases of
    several folds, as :func:`~napari_medlearn.training.deepmedic.evaluate_lesion_cases` gives for one:
    the cases side by side, their means, and the calibration pooled over every case's brain."""
    from .deepmedic import evaluation_of

    rows = [r for e in evaluations for r in e["cases"]]
    names = [r["case"] for r in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"folds judge overlapping cases: {sorted(names)}")
    return evaluation_of(rows, [_bins_of(e["calibration"]) for e in evaluations])


def whole_tumour_probability(probabilities: np.ndarray) -> np.ndarray:
    """P(whole tumour) = 1 - P(background) of ``(K, z, y, x)`` posteriors (index 0 background)."""
    return 1.0 - np.asarray(probabilities[0], np.float32)


def uncertainty_auroc(uncertainty: np.ndarray, wrong: np.ndarray, mask: np.ndarray) -> float:
    """AUROC of ``uncertainty`` for telling ``wrong`` voxels from right ones inside ``mask``
    (MONAI ``compute_roc_auc``; NaN when all voxels are right or all wrong)."""
    from monai.metrics import compute_roc_auc

    u = np.asarray(uncertainty, np.float32)[mask]
    w = np.asarray(wrong, bool)[mask]
    if w.all() or not w.any():
        return float("nan")
    return float(compute_roc_auc(torch.from_numpy(u), torch.from_numpy(w.astype(np.float32))))


def save_reliability_figure(curves: dict[str, dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Reliability diagram (frequency vs confidence per bin, diagonal = calibrated) with each
    curve's ECE in the legend; PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..imaging.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(4.6, 4.4), dpi=110)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="calibrated")
    for name, c in curves.items():
        conf = np.array([np.nan if v is None else v for v in c["confidence"]], float)
        freq = np.array([np.nan if v is None else v for v in c["frequency"]], float)
        ok = ~np.isnan(conf)
        ax.plot(conf[ok], freq[ok], marker="o", ms=3, lw=1.4, label=f"{name} (ECE {c['ece']:.4f})")
    ax.set_xlabel("predicted whole-tumour probability")
    ax.set_ylabel("observed tumour frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title or "whole-tumour reliability inside the brain", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def flair_threshold_floor(train: Sequence[tuple], test: Sequence[tuple], quantiles=np.linspace(0.5, 0.995, 60)
                          ) -> dict[str, Any]:
    """The floor to beat: whole tumour = FLAIR (z-scored in the brain) above a threshold, the
    threshold tuned for mean whole-tumour Dice on ``train`` cases and applied to ``test`` ones.

    Cases are ``(channels, labels, spacing, brain_mask, name)`` with FLAIR as channel 0.
    """
    from ..methods.lesions import normalise_channels

    def flair(c):
        return normalise_channels(np.asarray(c[0], np.float32)[:1], c[3])[0]

    tr = [(flair(c), np.asarray(c[1]) > 0, c[3]) for c in train]
    pooled = np.concatenate([f[m] for f, _, m in tr])
    thresholds = np.quantile(pooled, quantiles)
    scores = [np.mean([M.dice((f > t) & m, y) for f, y, m in tr]) for t in thresholds]
    best = float(thresholds[int(np.argmax(scores))])
    rows = []
    for c in test:
        pred = (flair(c) > best) & c[3]
        rows.append({"case": c[4], "dice_whole_tumour": M.dice(pred, np.asarray(c[1]) > 0),
                     "hd95_whole_tumour_mm": M.hausdorff95(pred, np.asarray(c[1]) > 0, c[2])})
    return {"threshold_z": best, "train_dice_whole_tumour": float(np.max(scores)), "cases": rows,
            "dice_whole_tumour_mean": float(np.mean([r["dice_whole_tumour"] for r in rows])) if rows else float("nan")}


def calibrate_lesion_card(name: str, data: str | None = None, subjects: Sequence[str] | None = None,
                          calibration: dict[str, Any] | None = None, card: dict[str, Any] | None = None,
                          out_dir: str | Path | None = None, ship: bool = False, key: str | None = None,
                          progress: bool = False) -> dict[str, Any]:
    """Whole-tumour calibration (ECE, reliability curve and its figure) in the card of lesion model
    ``name``: on the BraTS ``subjects`` it never saw (default: the card's ``training.never_seen``).

    ``calibration`` (from :func:`~napari_medlearn.training.deepmedic.evaluate_lesion_cases`) skips
    the evaluation. The card (``card`` or the zoo's) gets ``evaluation.calibration``,
    ``evaluation.reliability_figure`` and ``evaluation.summary.ece_whole_tumour``; it is written to
    ``out_dir`` and, with ``ship``, into the zoo with the figure. The weights are not touched.
    With ``key`` (e.g. ``real_brats`` for a model whose own evaluation is on synthetic cases),
    the whole evaluation on ``subjects`` (region Dice/HD95 per case, calibration) goes into
    ``evaluation[key]`` instead and the card's summary is left as it is.
    """
    from .. import zoo
    from .deepmedic import brats_eval_case, evaluate_lesion_cases, find_brats_root

    card = dict(card if card is not None else zoo.card(name))
    subjects = list(subjects or card.get("training", {}).get("never_seen", []))
    full = None
    if calibration is None or key:
        if not subjects:
            raise ValueError(f"card {name!r} names no never-seen subject to calibrate on")
        root = find_brats_root(data)
        cases = [brats_eval_case(root, s) for s in subjects]
        full = evaluate_lesion_cases(zoo.load(name, device="cpu"), cases, progress=progress)
        calibration = full["calibration"]
        del cases
    fig = f"{name}_reliability.png"
    ev = dict(card.get("evaluation", {}))
    cal = {**calibration, "data": f"whole-tumour probability inside the brain, pooled over {', '.join(subjects)} "
                                  "(never trained on)"}
    if key:
        ev[key] = {"data": f"real BraTS subjects {', '.join(subjects)}, never used in training; full pipeline "
                           "(segment_lesions with the provided brain masks)",
                   "summary": full["summary"], "cases": full["cases"], "calibration": cal}
    else:
        ev["calibration"] = cal
        if isinstance(ev.get("summary"), dict):
            ev["summary"] = {**ev["summary"], "ece_whole_tumour": calibration["ece"]}
    ev["reliability_figure"] = fig
    card["evaluation"] = ev
    targets = [Path(out_dir)] if out_dir is not None else []
    if ship:
        targets.append(zoo.CARDS_DIR)
    for d in targets:
        d.mkdir(parents=True, exist_ok=True)
        save_reliability_figure({name: calibration}, d / fig, f"{name}: whole tumour, never-seen BraTS subjects")
        zoo.write_json_atomic(card, d / f"{name}.json")
    return card


# ---------------------------------------------------------------------------------------------
# members

def member_arch_args(recipe: dict[str, Any], in_channels: int = 2, width: float = 1.0) -> dict[str, Any]:
    """Constructor arguments of a member (``width`` scales the feature maps, for tests)."""
    from .deepmedic import deepmedic_args

    if recipe["arch"] == "deepmedic":
        return deepmedic_args(width, in_channels=in_channels)
    args = {"in_channels": in_channels, "n_classes": 4, **recipe.get("arch_args", {})}
    for k in ("base", "fc"):
        if k in args:
            args[k] = max(2, int(round(args[k] * width)))
    return args


def member_loss(kind: str):
    """``loss(logits, target_classes)`` of a recipe."""
    import torch.nn.functional as F

    if kind == "ce":
        return F.cross_entropy
    if kind == "dice_ce":
        from monai.losses import DiceCELoss

        dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
        return lambda logits, y: dice_ce(logits, y[:, None])
    raise ValueError(f"loss {kind!r} not supported; known: ce, dice_ce")


def _fluid_text(necrosis_fluid: float | None) -> str:
    if necrosis_fluid is None:
        return "necrotic centres solid or liquefied, drawn per case"
    return f"necrotic centres of fluid content {float(necrosis_fluid):g}"


def mixed_batches(real, synthetic, share: float, batch_size: int):
    """``batch(rng, device)`` drawing a whole batch from the ``synthetic``
    :class:`~napari_medlearn.training.deepmedic.SegmentSampler` with probability ``share``, else from
    ``real``."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"synthetic share must be between 0 and 1, got {share}")
    if share > 0 and synthetic is None:
        raise ValueError("a synthetic share needs synthetic cases")

    def batch(rng, dev):
        src = synthetic if share > 0 and rng.random() < share else real
        return src.batch(rng, dev, batch_size)

    return batch


def recipe_spatial(recipe: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~napari_medlearn.training.deepmedic.SegmentSampler` keywords of a recipe's
    ``spatial`` augmentation (``p``, ``rotation_deg``, ``scale_range``); ``{}`` when it has none."""
    sp = recipe.get("spatial")
    if not sp:
        return {}
    return {"spatial_p": float(sp["p"]), "rotation_deg": float(sp.get("rotation_deg", 15.0)),
            "scale_range": tuple(float(v) for v in sp.get("scale_range", (0.85, 1.15)))}


def recipe_spacing(recipe: dict[str, Any]) -> tuple[float, float, float]:
    """The isotropic grid (mm) a member is trained and run on: the recipe's ``spacing_mm``, default 1.
    Inputs are resampled to it (``segment_lesions`` step 3) and the posteriors back to the input grid."""
    sp = float(recipe.get("spacing_mm", 1.0))
    if not np.isfinite(sp) or sp <= 0:
        raise ValueError(f"a member's spacing_mm must be a positive number of mm, got {recipe.get('spacing_mm')!r}")
    return (sp, sp, sp)


def train_member(recipe: dict[str, Any], cases: Sequence, run_dir: str | Path, epochs: int, iters_per_epoch: int,
                 width: float = 1.0, lr: float = 1e-3, seed: int = 0, device: str = "auto", progress: bool = True,
                 batch_size: int | None = None, synthetic: Sequence = (), synthetic_share: float = 0.0):
    """Train one member on preprocessed :class:`~napari_medlearn.training.deepmedic.LesionTrainingCase` s
    with the shared trainer (checkpoint per epoch, resumable); return model, config, history.
    ``synthetic_share`` of the batches come from the ``synthetic`` cases (:func:`mixed_batches`)."""
    from .. import nets
    from .deepmedic import SegmentSampler, sampler_geometry
    from .trainer import TrainConfig, train

    arch_args = member_arch_args(recipe, cases[0].image.shape[0] if cases else 2, width)
    torch.manual_seed(seed)
    model = nets.build(recipe["arch"], **arch_args)
    geo = sampler_geometry(model, recipe.get("out", 9), recipe.get("patch", 48))
    spatial = recipe_spatial(recipe)
    sampler = SegmentSampler(cases, geo, fg_fraction=recipe["fg_fraction"], **spatial) if cases else None
    syn = SegmentSampler(synthetic, geo, fg_fraction=recipe["fg_fraction"], **spatial) if cases and synthetic else None
    bs = int(batch_size or recipe["batch_size"])
    batches = mixed_batches(sampler, syn, synthetic_share if cases else 0.0, bs)
    cfg = TrainConfig(epochs=epochs, iters_per_epoch=iters_per_epoch, lr=lr, weight_decay=1e-4,
                      lr_milestones=(int(epochs * 0.6), int(epochs * 0.85)), lr_gamma=0.3, seed=seed, device=device,
                      extra={"batch_size": bs, "segment": [g.segment for g in geo], "output": [g.out for g in geo],
                             "fg_fraction": recipe["fg_fraction"], "loss": LOSS_TEXT[recipe["loss"]],
                             "optimizer": "Adam", "synthetic_share": float(synthetic_share),
                             **({"spatial_augmentation": spatial} if spatial else {})})
    hist = train(model, recipe["arch"], arch_args, batches, member_loss(recipe["loss"]), cfg, run_dir,
                 progress=progress)
    return model, arch_args, cfg, hist


def class_priors(cases: Sequence, geometry, fg_fraction: float, batch_size: int, n_batches: int = 300,
                 seed: int = 0, synthetic: Sequence = (), synthetic_share: float = 0.0) -> dict[str, Any]:
    """The card's ``prior_correction`` of a model trained on ``cases`` by a
    :class:`~napari_medlearn.training.deepmedic.SegmentSampler` (``geometry``, ``fg_fraction``,
    ``batch_size``): the class frequencies in the sampled output blocks (the prior it learnt) and in
    the training brains (the prior of whole scans), both inside the brain. Training data only.
    With ``synthetic_share`` of the batches from ``synthetic`` cases (:func:`mixed_batches`), the
    prior learnt is the mixture of both samplers'; whole scans keep the real brains' prior."""
    from .deepmedic import SegmentSampler

    sampler = SegmentSampler(cases, geometry, fg_fraction=fg_fraction)
    train = sampler.output_class_frequency(np.random.default_rng(seed), n_batches, batch_size)
    if synthetic_share > 0 and synthetic:
        syn = SegmentSampler(synthetic, geometry, fg_fraction=fg_fraction)
        train = ((1.0 - synthetic_share) * train
                 + synthetic_share * syn.output_class_frequency(np.random.default_rng(seed), n_batches, batch_size))
    counts = np.zeros(train.size)
    for c in cases:
        counts += np.bincount(c.classes[c.mask].ravel(), minlength=train.size)[:train.size]
    target = counts / max(counts.sum(), 1.0)
    eps = 1e-6                                   # a class never seen in training keeps a finite factor
    return {"training_prior": [float(max(v, eps)) for v in train],
            "target_prior": [float(max(v, eps)) for v in target],
            "rule": "posteriors x target_prior / training_prior, renormalised (Saerens et al., Neural "
                    "Computation 14(1), 2002): the training segments over-sample tumour, whole scans do not",
            "estimated_from": f"{n_batches} training batches of {batch_size} segments ({fg_fraction:.0%} on tumour)"
                              + (f", {synthetic_share:.0%} of them from {len(synthetic)} synthetic cases,"
                                 if synthetic_share > 0 and synthetic else "")
                              + f" and the brains of the {len(cases)} training subjects"}


def evaluate_with_calibration(model, cases: Sequence[tuple], fig_path: Path | None = None,
                              progress: bool = False, **clean: Any) -> dict[str, Any]:
    """:func:`~napari_medlearn.training.deepmedic.evaluate_lesion_cases` (region metrics,
    whole-tumour calibration, an ensemble's uncertainty AUROC; ``clean``: its ``fractions`` and
    ``fill``) plus the reliability figure."""
    from .deepmedic import evaluate_lesion_cases

    out = evaluate_lesion_cases(model, cases, progress=progress, **clean)
    if fig_path is not None:
        save_reliability_figure({str(getattr(model, "zoo_name", "model")): out["calibration"]}, fig_path)
    return out


# ---------------------------------------------------------------------------------------------
# presets

#: BraTS subjects whose labels train the shipped EMMA members; pat0003 and pat0005 judge them, and
#: the cross-validation's other fold (``--train-subjects`` pat0003 pat0005) judges pat0004 and
#: pat0006. Members trained leave-one-subject-out on three subjects were tried and not shipped: on
#: pat0003 / pat0005 their ensemble scored whole-tumour Dice 0.897 / 0.617 against 0.920 / 0.657 for the
#: two-subject members of that time (trained on the real subjects alone)
EMMA_TRAIN_SUBJECTS = ("brats_2013_pat0004_1", "brats_2013_pat0006_1")


def _brats_split(data, train_subjects):
    from .deepmedic import find_brats_root, list_brats_subjects

    root = find_brats_root(data)
    subjects = list_brats_subjects(root)
    missing = [s for s in train_subjects if s not in subjects]
    if missing:
        raise ValueError(f"training subjects not found in {root}: {missing}")
    held_out = [s for s in subjects if s not in train_subjects]
    if not held_out:
        raise ValueError("no BraTS subject is left to judge the model")
    return root, subjects, list(train_subjects), held_out


def _command(preset: str, train_subjects: Sequence[str], default: Sequence[str] = EMMA_TRAIN_SUBJECTS,
             run_dir: str | None = None) -> str:
    """The command that trains ``preset`` on ``train_subjects`` (the default split ships; another
    split's run folder is ``run_dir``, default ``RUN/<preset>``)."""
    if tuple(train_subjects) == tuple(default):
        return f"medlearn train {preset} --ship"
    return f"medlearn train {preset} --train-subjects {' '.join(train_subjects)} --run-dir {run_dir or 'RUN/' + preset}"


def _brats_licence_block(root, subjects) -> dict[str, str]:
    from .deepmedic import BRATS_CITATION, brats_licence

    return {"weights": "CC BY-NC-SA 3.0 (trained on data under that licence): non-commercial, share alike",
            "training_data": "BraTS 2015 (braintumorsegmentation.org), as modified by Konstantinos Kamnitsas for "
                             "the DeepMedic examples; CC BY-NC-SA 3.0 Switzerland",
            "citation": BRATS_CITATION, "attribution_text": brats_licence(root, subjects)}


def _read_folds(paths: str | Path | Sequence[str | Path], held_out: Sequence[str]) -> list[dict[str, Any]]:
    """The other folds' cards (JSON); each must judge subjects that no other fold judges."""
    import json

    cards, seen = [], set(held_out)
    for path in [paths] if isinstance(paths, (str, Path)) else list(paths):
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"--with-fold: no card at {path}")
        other = json.loads(path.read_text())
        judged = [r["case"] for r in other.get("evaluation", {}).get("cases", [])]
        if not judged:
            raise ValueError(f"--with-fold: {path} has no evaluated cases")
        both = sorted(set(judged) & seen)
        if both:
            raise ValueError(f"--with-fold: {path} judges {', '.join(both)} too; folds must judge different subjects")
        seen.update(judged)
        cards.append(other)
    return cards


def run_emma_member(run_dir: str | Path, member: str, ship: bool = False, epochs: int | None = None,
                    iters_per_epoch: int = 150, data: str | None = None,
                    train_subjects: Sequence[str] = EMMA_TRAIN_SUBJECTS, width: float = 1.0,
                    device: str = "auto", seed: int = 0, progress: bool = True,
                    synthetic: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train EMMA member ``member`` (a key of :data:`MEMBER_RECIPES`) on the BraTS
    ``train_subjects`` (and a share of synthetic cases, ``synthetic``: default
    :data:`SYNTHETIC_TRAINING`, ``{"share": 0}`` for none) and judge it on the others (Dice, HD95,
    calibration + reliability figure)."""
    from ..nets.unet3d import EMMA_PAPER, FCN_PAPER, UNET_PAPER
    from ..nets.deepmedic import PAPER as DM_PAPER
    from .deepmedic import (LESION_LABELS, brats_eval_case, lesion_input_spec, load_brats_subject,
                            prepare_case, turn_case, sampler_geometry,
                            synthetic_training_cases)
    from .presets import _finish, training_record
    from ..methods.lesions import LABEL_VALUES, TASK

    if member not in MEMBER_RECIPES:
        raise ValueError(f"EMMA member {member!r} not supported; known: {', '.join(MEMBER_RECIPES)}")
    recipe = MEMBER_RECIPES[member]
    epochs = int(recipe.get("epochs", 12)) if epochs is None else int(epochs)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    root, subjects, train_names, held_out = _brats_split(data, train_subjects)
    spacing = recipe_spacing(recipe)
    # every training scan in the orientation of the first real one (BraTS: "SPL"); the synthetic
    # cases (MNI152's "SAR") are turned to it too, so no flip separates the two kinds of data
    loaded = [load_brats_subject(root, s) for s in train_names]
    orientation = axis_codes(loaded[0][4])
    cases = [prepare_case(*turn_case(*x[:4], x[4], orientation), target_spacing=spacing, name=s)
             for s, x in zip(train_names, loaded)]
    del loaded
    syn_spec = {**SYNTHETIC_TRAINING, **({"spacing_mm": spacing[0]} if "spacing_mm" in recipe else {}),
                **(synthetic or {})}
    share = float(syn_spec["share"])
    syn_cases = (synthetic_training_cases(syn_spec["n_cases"], syn_spec["spacing_mm"], syn_spec["domains"],
                                          syn_spec["seed"], syn_spec["necrosis_fluid"], progress,
                                          orientation=orientation) if share > 0 else [])
    model, arch_args, cfg, hist = train_member(recipe, cases, run_dir, epochs, iters_per_epoch, width=width,
                                               seed=seed, device=device, progress=progress, synthetic=syn_cases,
                                               synthetic_share=share)
    geo = sampler_geometry(model, recipe.get("out", 9), recipe.get("patch", 48))
    priors = class_priors(cases, geo, recipe["fg_fraction"], int(recipe["batch_size"]), seed=seed,
                          synthetic=syn_cases, synthetic_share=share)
    del cases, syn_cases
    card_core = {"input": lesion_input_spec(spacing=spacing, orientation=orientation), "n_classes": 4, "label_values": list(LABEL_VALUES),
                 "prior_correction": priors}
    if "inference" in recipe:
        card_core["inference"] = dict(recipe["inference"])
    model.card, model.zoo_name = card_core, member
    ev_cases = [brats_eval_case(root, s) for s in held_out]
    ev = evaluate_with_calibration(model, ev_cases, run_dir / f"{member}_reliability.png", progress=progress)
    del ev_cases
    paper = {"deepmedic": DM_PAPER, "unet3d": UNET_PAPER, "fcn3d": FCN_PAPER}[recipe["arch"]]
    card = {
        "name": member, "task": TASK, "architecture": recipe["arch"], "arch_args": arch_args,
        "paper": f"{paper}; ensemble: {EMMA_PAPER}", **card_core, "labels": LESION_LABELS, "priority": -5,
        "description": f"EMMA member: {recipe['arch']} trained on {len(train_names)} real BraTS subjects with "
                       f"{LOSS_TEXT[recipe['loss']]}; use it inside model='emma'. Research use only.",
        "training": {"data": f"BraTS 2015 subjects {', '.join(train_names)} (DeepMedic examples), labels 3 -> 1"
                             + (f"; {share:.0%} of the batches from {syn_spec['n_cases']} synthetic cases "
                                f"(samples.brain_lesions.synthetic_lesion_case seeds {syn_spec['seed']}.."
                                f"{syn_spec['seed'] + syn_spec['n_cases'] - 1}, scanners {', '.join(syn_spec['domains'])} "
                                f"in turn, {syn_spec['spacing_mm']:g} mm, "
                                f"{_fluid_text(syn_spec['necrosis_fluid'])})" if share > 0 else ""),
                     "synthetic": syn_spec if share > 0 else None,
                     "subjects": list(train_names),
                     "never_seen": held_out, "command": _command(member, train_names),
                     "loss": LOSS_TEXT[recipe["loss"]],
                     "sampling": f"{recipe['fg_fraction']:.0%} of segments centred on tumour, the rest on brain",
                     **training_record(cfg, hist, t0)},
        "evaluation": {"data": f"BraTS subjects {', '.join(held_out)}, never used by any EMMA member or lesions-uda",
                       **ev, "reliability_figure": f"{member}_reliability.png"},
        "licence": _brats_licence_block(root, subjects),
        "intended_use": "research use only, not for diagnosis",
    }
    if share > 0:
        card["licence"]["training_data"] += "; synthetic cases generated by this package from nilearn's MNI152"
    card = _finish(model, recipe["arch"], arch_args, card, run_dir, ship)
    if ship:
        from .. import zoo

        import shutil
        shutil.copyfile(run_dir / f"{member}_reliability.png", zoo.CARDS_DIR / f"{member}_reliability.png")
    return card


def _load_members(members: Sequence[str], run_dir: Path, shipped: bool, held_out: Sequence[str]) -> list:
    """The members to judge: the shipped zoo models, or (another fold) ``run_dir/<member>/model.pt``;
    refuses a member whose card does not list every judging subject as never seen."""
    from .. import zoo

    nets_ = []
    for m in members:
        src = m if shipped else run_dir / m / "model.pt"
        if not shipped and not Path(src).is_file():
            raise ValueError(f"member {m!r} of this fold not found: train it first with "
                             f"medlearn train {m} --train-subjects ... --run-dir {run_dir / m}")
        net = zoo.load(src, device="cpu")
        seen = [s for s in held_out if s not in net.card.get("training", {}).get("never_seen", [])]
        if seen:
            raise ValueError(f"member {m!r} was not trained with {', '.join(seen)} held out; it cannot judge them")
        nets_.append(net)
    return nets_


def cross_validation(cards: Sequence[dict[str, Any]], models: Sequence[str]) -> dict[str, Any]:
    """The cross-validation of fold cards that judge disjoint subjects: for each of ``models``
    (``"emma"``, a member, ``"baseline_source_only"``, ``"flair_threshold_floor"``), its
    :func:`pool_evaluations` over the folds."""
    ev = [c["evaluation"] for c in cards]

    def of(e, m):
        if m in ("emma", "lesions-uda"):
            return e
        if m == "flair_threshold_floor":
            return e[m]
        return e.get("members", {}).get(m) or e[m]

    out: dict[str, Any] = {"folds": [{"trained_on": c["training"].get("subjects", []),
                                      "judged": [r["case"] for r in e["cases"]],
                                      "command": c["training"].get("command", "")} for c, e in zip(cards, ev)]}
    for m in models:
        parts = [of(e, m) for e in ev]
        if m == "flair_threshold_floor":
            rows = [r for p in parts for r in p["cases"]]
            out[m] = {"cases": rows, "dice_whole_tumour_mean": float(np.mean([r["dice_whole_tumour"] for r in rows]))}
        else:
            out[m] = pool_evaluations(parts)
    return out


#: the ensemble's label post-processing is chosen among these (component clean-up fractions, each
#: with and without hole filling) on the other folds' held-out subjects
EMMA_POSTPROCESS_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.5)
#: ... and each of those for the argmax labels and the expected-Dice ones (methods.lesions.decide_labels)
EMMA_DECISIONS = ("argmax", "expected_dice")
POSTPROCESS_RULE = ("labels by the argmax, or (decision expected_dice) the whole tumour where 1 - p(background) "
                    "reaches the threshold of maximal expected Dice found per scan from its own probabilities; "
                    "then whole-tumour components smaller than min_component_fraction of the largest are set to "
                    "background, then (fill_holes) voxels enclosed by the tumour core become necrotic core and "
                    "background enclosed by the whole tumour oedema; chosen (best mean whole-tumour Dice; ties: "
                    "less post-processing) on the held-out predictions of the cross-validation's other fold, "
                    "whose members were trained on this card's judging subjects and judged the subjects this "
                    "card's members were trained on")


def choose_fold_postprocess(card: dict[str, Any], others: Sequence[dict[str, Any]]) -> str | None:
    """The post-processing key for the fold of ``card``, chosen on the ensemble rows of the
    ``others`` (None when they carry no post-processing variants)."""
    from .deepmedic import choose_postprocess

    rows = [r for o in others for r in o.get("evaluation", {}).get("cases", [])]
    if not rows or any("clean" not in r for r in rows):
        return None
    if set(rows[0]["clean"]) != set(card["evaluation"]["cases"][0].get("clean", {})):
        return None
    return choose_postprocess(rows)


def _best_member(members: dict[str, dict[str, Any]]) -> str:
    return max(members, key=lambda m: members[m]["summary"]["dice_whole_tumour_mean"])


def _with_postprocess(card: dict[str, Any], key: str | None) -> dict[str, Any]:
    """``card`` whose ensemble evaluation is that of its labels after post-processing ``key``, and
    so are its members' when they were judged with the same variants."""
    from .deepmedic import postprocessed_evaluation

    if key is None:
        return card
    ev = postprocessed_evaluation(card["evaluation"], key)
    members = {m: postprocessed_evaluation(e, key) if key in e["cases"][0].get("clean", {}) else e
               for m, e in ev.get("members", {}).items()}
    if members:
        ev = {**ev, "members": members, "best_member": _best_member(members)}
    return {**card, "evaluation": ev}


def run_emma(run_dir: str | Path, ship: bool = False, members: Sequence[str] = tuple(MEMBER_RECIPES),
             data: str | None = None, train_subjects: Sequence[str] = EMMA_TRAIN_SUBJECTS,
             with_fold: str | Path | Sequence[str | Path] | None = None, progress: bool = True,
             **_: Any) -> dict[str, Any]:
    """The ``emma`` ensemble card: judge the members and their mean on the held-out BraTS subjects
    (Dice, HD95, ECE, uncertainty AUROC), beside each member and the FLAIR threshold floor.

    With the default ``train_subjects`` the members are the shipped zoo models; with others (the
    cross-validation's other fold) they are ``run_dir/<member>/model.pt``, trained by
    ``medlearn train <member> --train-subjects ... --run-dir run_dir/<member>``. ``with_fold`` is the
    other folds' ``emma.json``: the card then also carries the ``cross_validation`` of all folds.
    """
    from .. import zoo
    from ..methods.lesions import LABEL_VALUES, TASK
    from ..nets.unet3d import EMMA_PAPER
    from .deepmedic import LESION_LABELS, brats_eval_case, postprocess_of

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    root, subjects, train_names, held_out = _brats_split(data, train_subjects)
    shipped = tuple(train_names) == tuple(EMMA_TRAIN_SUBJECTS)
    if ship and not shipped:
        raise ValueError("only the default split's ensemble ships")
    others = _read_folds(with_fold, held_out) if with_fold else []
    nets_ = _load_members(members, run_dir, shipped, held_out)
    ev_cases = [brats_eval_case(root, s) for s in held_out]
    # the members are judged with every post-processing variant too, so that the card compares the
    # ensemble with each member under the same post-processing
    variants = {"fractions": EMMA_POSTPROCESS_FRACTIONS, "fill": True, "decisions": EMMA_DECISIONS}
    per_member = {m: evaluate_with_calibration(n, ev_cases, progress=progress, **variants)
                  for m, n in zip(members, nets_)}
    ens = evaluate_with_calibration(nets_, ev_cases, progress=progress, **variants)
    train_cases = [brats_eval_case(root, s) for s in train_names]
    floor = flair_threshold_floor(train_cases, ev_cases)
    del ev_cases, train_cases
    curves = {m: e["calibration"] for m, e in per_member.items()}
    curves["emma"] = ens["calibration"]
    save_reliability_figure(curves, run_dir / "emma_reliability.png", "EMMA and its members, held-out BraTS")
    card = {
        "name": "emma", "kind": "ensemble", "task": TASK, "members": list(members), "paper": EMMA_PAPER,
        "n_classes": 4, "labels": LESION_LABELS, "label_values": list(LABEL_VALUES), "priority": 5,
        "description": "EMMA: the mean posterior of a DeepMedic, a 3D U-Net and a 3D FCN trained with different "
                       "losses and sampling; uncertainty = entropy of the mean. Research use only.",
        "combination": "mean of the members' posteriors (each on the input grid, each moved from its training "
                       "segments' class prior to that of whole brains by its card's prior_correction); labels = "
                       "argmax, or as postprocess.decision says; uncertainty = "
                       "entropy of the mean / log K; also mutual information and member variance",
        "training": {"members": {m: n.card.get("training", {}).get("command", "") for m, n in zip(members, nets_)},
                     "subjects": list(train_names), "never_seen": held_out,
                     "command": _command("emma", train_names, run_dir="RUN") + " (after the members)"},
        "evaluation": {"data": f"BraTS subjects {', '.join(held_out)}, never used by any member",
                       **ens, "members": {m: {**e, "calibration_ece": e["calibration"]["ece"]}
                                          for m, e in per_member.items()},
                       "best_member": _best_member(per_member), "flair_threshold_floor": floor,
                       "reliability_figure": "emma_reliability.png"},
        "licence": _brats_licence_block(root, subjects),
        "intended_use": "research use only, not for diagnosis",
    }
    raw_card = card
    key = choose_fold_postprocess(card, others) if others else None
    if key is not None:
        from .deepmedic import summarise_rows

        raw = raw_card["evaluation"]
        card = _with_postprocess(raw_card, key)
        card["postprocess"] = {**postprocess_of(key), "rule": POSTPROCESS_RULE,
                               "chosen_on": [r["case"] for o in others for r in o["evaluation"]["cases"]]}
        card["evaluation"]["without_postprocess"] = raw["summary"]
        card["evaluation"]["members_without_postprocess"] = {m: e["summary"] for m, e in raw["members"].items()}
        card["evaluation"]["postprocess_variants"] = {
            k: summarise_rows([r["clean"][k] for r in raw["cases"]]) for k in raw["cases"][0]["clean"]}
    if others:
        # each other fold's post-processing is chosen on the rest (this fold's raw rows among them)
        fold_cards = [raw_card, *others]
        keys = [key] + [choose_fold_postprocess(o, [x for x in fold_cards if x is not o]) for o in others]
        folds = [card] + [_with_postprocess(o, k) for o, k in zip(others, keys[1:])]
        card["cross_validation"] = cross_validation(folds, ["emma", *members, "flair_threshold_floor"])
        if any(keys):
            card["cross_validation"]["postprocess_per_fold"] = [postprocess_of(k) if k else None for k in keys]
    zoo.write_json_atomic(card, run_dir / "emma.json")
    if ship:
        import shutil

        zoo.write_json_atomic(card, zoo.CARDS_DIR / "emma.json")
        shutil.copyfile(run_dir / "emma_reliability.png", zoo.CARDS_DIR / "emma_reliability.png")
    return card


__all__ = ["EMMA_TRAIN_SUBJECTS", "MEMBER_RECIPES", "SYNTHETIC_TRAINING", "mixed_batches", "run_emma", "run_emma_member", "calibrate_lesion_card", "calibration_bins", "calibration_summary", "cross_validation", "evaluate_with_calibration", "pool_evaluations",
           "flair_threshold_floor", "member_arch_args", "member_loss", "save_reliability_figure", "train_member",
           "uncertainty_auroc", "whole_tumour_probability"]
