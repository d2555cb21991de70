"""Presets: one command per shipped weight file (``medlearn train PRESET``).

Each preset builds its data, trains with :func:`napari_medlearn.training.trainer.train`,
evaluates on held-out data it never trained on, and writes ``model.pt`` + ``model.json``
(the card, with the sha256) into the run directory; ``ship=True`` also copies both into the
package's zoo under the preset's model name.
"""

from __future__ import annotations

import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable


from .. import zoo

CARDIAC_LABELS = {"0": "background", "1": "LV cavity", "2": "myocardium", "3": "RV cavity"}
BAI_PAPER = ("W. Bai et al., Automated cardiovascular magnetic resonance image analysis with fully "
             "convolutional networks, J Cardiovasc Magn Reson 20:65, 2018")


@dataclass
class Preset:
    """A named recipe that produces one zoo model."""

    name: str
    model_name: str
    description: str
    run: Callable[..., dict[str, Any]]
    defaults: dict[str, Any] = field(default_factory=dict)


def _hardware() -> str:
    import torch

    return f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}"


def _finish(model, arch: str, arch_args: dict, card: dict, run_dir: Path, ship: bool) -> dict:
    """Write model + card into ``run_dir`` (and the zoo when shipping); return the card."""
    out = run_dir / "model.pt"
    card = dict(card)
    sha = zoo.save_checkpoint(model, out, arch, arch_args, card=card)
    card["sha256"] = sha
    zoo.write_json_atomic(card, run_dir / "model.json")
    if ship:
        zoo.WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
        zoo.CARDS_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, zoo.WEIGHTS_DIR / f"{card['name']}.pt")
        zoo.write_json_atomic(card, zoo.CARDS_DIR / f"{card['name']}.json")
        print(f"shipped {card['name']} -> {zoo.WEIGHTS_DIR / (card['name'] + '.pt')}")
    return card


def fcn_args(width: float = 1.0) -> dict[str, Any]:
    """Bai FCN arguments: the paper's widths (16..256, 32, 64) scaled by ``width``."""
    return {
        "in_channels": 1, "n_classes": 4,
        "filters": [max(2, int(round(f * width))) for f in (16, 32, 64, 128, 256)],
        "blocks": [2, 2, 3, 3, 3], "same_dim": max(2, int(round(32 * width))),
        "fc": max(2, int(round(64 * width))),
    }


def cardiac_input_spec(target: float) -> dict[str, Any]:
    return {
        "axes": "2D short-axis slices of a (t, z, y, x) cine",
        "channels": ["cine MR magnitude (bSSFP)"],
        "in_plane_spacing_mm": target,
        "intensity": "each frame's volume rescaled so its 1st/99th percentiles map to 0/1, clipped",
    }


REPRODUCIBILITY = ("same seed and hardware class give the same batches; CPU thread scheduling can "
                   "change the last bits of the weights, so a rerun gives metrics within noise "
                   "rather than the same sha256")


def training_record(cfg, hist: dict, t0: float) -> dict[str, Any]:
    """The card fields every preset reports about its run."""
    return {
        "config": asdict(cfg), "loss_per_epoch": hist["loss"],
        "wall_seconds": round(time.time() - t0, 1),
        "train_loop_seconds": round(hist["wall_seconds"], 1), "hardware": _hardware(),
        "reproducibility": REPRODUCIBILITY,
    }


def _train_cardiac_fcn(pool, target: float, width: float, epochs: int, iters_per_epoch: int,
                       seed: int, device: str, run_dir: Path, progress: bool):
    """Bai FCN trained on a slice pool with Dice + cross-entropy (both cardiac presets)."""
    from monai.losses import DiceCELoss

    from ..nets import BaiFCN
    from .trainer import TrainConfig, train

    arch_args = fcn_args(width)
    model = BaiFCN(**arch_args)
    cfg = TrainConfig(epochs=epochs, iters_per_epoch=iters_per_epoch, lr=1e-3,
                      lr_milestones=(int(epochs * 0.6), int(epochs * 0.85)), seed=seed, device=device)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    hist = train(model, "bai_fcn", arch_args, lambda rng, dev: pool.batch(rng, dev, 8), loss, cfg,
                 run_dir, progress=progress)
    model.card = {"input": {"in_plane_spacing_mm": target}, "n_classes": 4}
    return model, arch_args, cfg, hist


# ---------------------------------------------------------------------------------------------
def run_cardiac_phantom(run_dir: str | Path, ship: bool = False, epochs: int = 6,
                        iters_per_epoch: int = 250, n_train: int = 40, n_eval: int = 10,
                        width: float = 1.0, device: str = "auto", seed: int = 0,
                        progress: bool = True) -> dict[str, Any]:
    """Bai FCN on cardiac cine phantoms; held-out phantoms of seeds 10000+ for the card.

    ``width`` scales the paper's filter counts (1.0 = 16..256); tests use a tiny fraction.
    """
    from ..samples.cardiac_phantom import cardiac_cine_phantom
    from .cardiac import SlicePool, evaluate_cases

    run_dir = Path(run_dir)
    target = 1.5
    t0 = time.time()
    pool = SlicePool(crop=128)
    for s in range(n_train):
        ph = cardiac_cine_phantom(seed=seed + s)
        for t in range(ph.image.shape[0]):
            pool.add_volume(ph.image[t], ph.labels[t], ph.spacing, target)
        if progress:
            print(f"phantom {s + 1}/{n_train}: {len(pool)} slices", flush=True)
    model, arch_args, cfg, hist = _train_cardiac_fcn(pool, target, width, epochs, iters_per_epoch,
                                                     seed, device, run_dir, progress)
    eval_seeds = list(range(10000, 10000 + n_eval))
    cases = []
    for s in eval_seeds:
        ph = cardiac_cine_phantom(seed=s)
        cases.append((ph.image, ph.labels, ph.spacing, f"phantom seed {s}"))
    if progress:
        print("evaluating on held-out phantoms", flush=True)
    ev = evaluate_cases(model, cases, progress=progress)
    card = {
        "name": "cardiac-fcn-phantom",
        "task": "cardiac-segmentation",
        "priority": 0,
        "description": "Bai FCN trained on synthetic short-axis cine phantoms: a demo of the "
                       "pipeline, not a model for real scans.",
        "architecture": "bai_fcn", "arch_args": arch_args, "paper": BAI_PAPER,
        "n_classes": 4, "labels": CARDIAC_LABELS,
        "input": cardiac_input_spec(target),
        "training": {
            "data": f"{n_train} cardiac cine phantoms, napari_medlearn.samples.cardiac_phantom seeds "
                    f"{seed}..{seed + n_train - 1}, all frames and slices ({len(pool)} slices)",
            "command": "medlearn train cardiac-phantom --ship",
            "loss": "MONAI DiceCELoss (softmax cross-entropy + Dice)",
            "augmentation": "rotation +-180 deg, scale 0.8-1.25, translation, flip, gamma 0.7-1.5, crops 128x128",
            **training_record(cfg, hist, t0),
        },
        "evaluation": {
            "data": f"{n_eval} phantoms of seeds {eval_seeds[0]}..{eval_seeds[-1]}, never used in training; "
                    "full pipeline (segment_heart with post-processing) on every frame",
            **ev,
        },
        "licence": {"weights": "BSD-3-Clause", "training_data": "synthetic (generated by this package)"},
        "intended_use": "demonstration and testing; research use only, not for diagnosis",
    }
    return _finish(model, "bai_fcn", arch_args, card, run_dir, ship)


def run_cardiac_acdc(run_dir: str | Path, ship: bool = False, epochs: int = 16,
                     iters_per_epoch: int = 250, data: str | None = None, n_val_per_group: int = 4,
                     width: float = 1.0, device: str = "auto", seed: int = 0,
                     progress: bool = True, max_patients: int | None = None,
                     n_phantoms: int = 8) -> dict[str, Any]:
    """Bai FCN on ACDC (real cine MRI, expert labels), patient-level split stratified by group.

    The validation patients (``n_val_per_group`` per diagnostic group, drawn with ``seed``) are
    never trained on; the card reports Dice at ED and ES, per group, and Bland-Altman agreement
    of the clinical measures on them. A few phantoms (every 8th frame of ``n_phantoms``, seeds
    20000+, about a fifth of the slices) keep the default model working on the sample data.
    """
    from .acdc import ACDC_CITATION, find_acdc_root, list_patients, load_patient, stratified_split
    from .cardiac import SlicePool, bland_altman_figure, evaluate_cases

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    root = find_acdc_root(data)
    patients = list_patients(root)
    if max_patients:
        patients = patients[:max_patients]
    groups = dict(patients)
    train_names, val_names = stratified_split(patients, n_val_per_group, seed)
    target = 1.5
    augment = {"scale": (0.7, 1.4), "gamma": (0.6, 1.7), "bias": 0.3, "noise": 0.05}
    pool = SlicePool(crop=128, heart_fraction=0.8, augment=augment)
    for i, name in enumerate(train_names):
        p = load_patient(root, name)
        pool.add_volume(p.ed_image, p.ed_labels, p.spacing, target)
        pool.add_volume(p.es_image, p.es_labels, p.spacing, target)
        if progress and (i + 1) % 10 == 0:
            print(f"loaded {i + 1}/{len(train_names)} training patients ({len(pool)} slices)", flush=True)
    n_real = len(pool)
    from ..samples.cardiac_phantom import cardiac_cine_phantom

    for s_ in range(n_phantoms):
        ph = cardiac_cine_phantom(seed=20000 + s_)
        for t in range(0, ph.image.shape[0], 8):
            pool.add_volume(ph.image[t], ph.labels[t], ph.spacing, target)
    if progress:
        print(f"{n_real} ACDC slices + {len(pool) - n_real} phantom slices", flush=True)
    model, arch_args, cfg, hist = _train_cardiac_fcn(pool, target, width, epochs, iters_per_epoch,
                                                     seed, device, run_dir, progress)
    if progress:
        print(f"evaluating on {len(val_names)} held-out patients", flush=True)
    cases = []
    for name in val_names:
        p = load_patient(root, name)
        image, labels = p.cine()
        cases.append((image, labels, p.spacing, name))
    ev = evaluate_cases(model, cases, progress=progress, groups=groups)
    name = "cardiac-fcn-acdc"
    plot = run_dir / f"{name}_bland_altman.png"
    bland_altman_figure(ev["cases"], plot, title=f"{name}: {len(val_names)} held-out ACDC patients (ED/ES)")
    card = {
        "name": name,
        "task": "cardiac-segmentation",
        "priority": 10,
        "description": "Bai FCN trained on ACDC real cine MRI (1.5 T and 3 T, Dijon); the default "
                       "cardiac model. Research use only, not for diagnosis.",
        "architecture": "bai_fcn", "arch_args": arch_args, "paper": BAI_PAPER,
        "n_classes": 4, "labels": CARDIAC_LABELS,
        "input": cardiac_input_spec(target),
        "training": {
            "data": f"ACDC training patients ({len(train_names)} of {len(patients)}; ED and ES frames, "
                    f"{n_real} 2D slices), expert labels remapped from ACDC order (1 RV, 2 Myo, 3 LV); "
                    f"plus {len(pool) - n_real} slices of {n_phantoms} cardiac cine phantoms (seeds "
                    f"20000..{20000 + n_phantoms - 1}, every 8th frame) so the sample data stays in range",
            "split": {"seed": seed, "validation_per_group": n_val_per_group,
                      "train": train_names, "validation": val_names},
            "command": "medlearn train cardiac-acdc --ship",
            "loss": "MONAI DiceCELoss (softmax cross-entropy + Dice)",
            "augmentation": {"rotation_deg": 180, "flip": True, "translation": 0.1, **augment,
                             "crop": 128, "heart_centred_fraction": 0.8},
            **training_record(cfg, hist, t0),
        },
        "evaluation": {
            "data": f"{len(val_names)} ACDC patients held out by the split above ({n_val_per_group} per group), "
                    "never trained on; ED and ES frames stacked as a two-frame cine through segment_heart "
                    "(post-processing and test-time transposition included)",
            "bland_altman_plot": f"{name}_bland_altman.png",
            **ev,
        },
        "licence": {
            "weights": "research use only (ACDC terms); not for diagnosis",
            "training_data": "ACDC (MICCAI 2017 challenge, University Hospital of Dijon), research use; "
                             "any use must cite the paper below",
            "citation": ACDC_CITATION,
        },
        "intended_use": "research use only, not for diagnosis",
    }
    card = _finish(model, "bai_fcn", arch_args, card, run_dir, ship)
    if ship:
        shutil.copyfile(plot, zoo.CARDS_DIR / plot.name)
    return card


def _run_recon_2d(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    from .recon import run_recon_2d

    return run_recon_2d(run_dir, **kwargs)


def _run_recon_2dt(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    from .recon import run_recon_2dt

    return run_recon_2dt(run_dir, **kwargs)


def _run_lesions_brats(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    from .deepmedic import run_lesions_brats

    return run_lesions_brats(run_dir, **kwargs)


def _run_lesions_synthetic(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    from .deepmedic import run_lesions_synthetic

    return run_lesions_synthetic(run_dir, **kwargs)


def _run_lesions_uda(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    from .uda import run_lesions_uda

    if "train_subjects" in kwargs:                 # lesions-uda trains on these subjects' images only
        kwargs["target_subjects"] = kwargs.pop("train_subjects")
    return run_lesions_uda(run_dir, **kwargs)


def _reevaluate_lesions(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    from .uda import reevaluate_lesion_cards

    return reevaluate_lesion_cards(run_dir, **kwargs)


def _run_emma_member(member: str):
    def run(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
        from .emma import run_emma_member

        return run_emma_member(run_dir, member, **kwargs)

    return run


def _run_emma(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    from .emma import run_emma

    return run_emma(run_dir, **kwargs)


def _run_sononet_phantom(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    from .sononet import run_sononet_phantom

    return run_sononet_phantom(run_dir, **kwargs)


def _run_acnn_shape_prior(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    from .acnn import run_acnn_shape_prior

    return run_acnn_shape_prior(run_dir, **kwargs)


def _run_acnn_recalibrate(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """The shipped shape prior's weights, calibrated, tuned and evaluated again (no training)."""
    from .acnn import run_acnn_shape_prior

    kwargs.pop("epochs", None)
    return run_acnn_shape_prior(run_dir, weights="acnn-shape-prior", **kwargs)


def _run_sr_brain(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    from .sr import run_sr_brain

    return run_sr_brain(run_dir, **kwargs)


def _run_sr_cardiac_phantom(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    from .sr import run_sr_cardiac_phantom

    return run_sr_cardiac_phantom(run_dir, **kwargs)


def _run_sr_cardiac_acdc(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    from .sr import run_sr_cardiac_acdc

    return run_sr_cardiac_acdc(run_dir, **kwargs)


def _run_acnn_seg(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    from .acnn_seg import run_acnn_seg

    return run_acnn_seg(run_dir, **kwargs)


PRESETS: dict[str, Preset] = {
    "acnn-shape-prior": Preset(
        "acnn-shape-prior", "acnn-shape-prior",
        "ACNN label autoencoder (denoising) on ACDC expert masks: mask plausibility and correction (~45 min on 1 CPU thread)",
        _run_acnn_shape_prior,
    ),
    "acnn-recalibrate": Preset(
        "acnn-recalibrate", "acnn-shape-prior",
        "the shipped ACNN shape prior's plausibility calibration, correction threshold and evaluation run "
        "again on its weights, untouched (~20 min on 1 CPU thread)",
        _run_acnn_recalibrate,
    ),
    "acnn-seg": Preset(
        "acnn-seg", "cardiac-fcn-acnn",
        "ACNN-Seg: cardiac-fcn-acdc fine-tuned on ACDC stacks with the shape-code loss, and its plain twin "
        "(~1 h on 2 CPU cores)",
        _run_acnn_seg,
    ),
    "cardiac-acdc": Preset(
        "cardiac-acdc", "cardiac-fcn-acdc",
        "Bai FCN on ACDC real cine MRI (default cardiac model; ~2 h on 2 CPU cores)",
        run_cardiac_acdc,
    ),
    "cardiac-phantom": Preset(
        "cardiac-phantom", "cardiac-fcn-phantom",
        "Bai FCN on cardiac cine phantoms (demo weights; ~30-60 min on 2 CPU cores)",
        run_cardiac_phantom,
    ),
    "recon-2d": Preset(
        "recon-2d", "recon-cascade-mr",
        "Deep cascade D5-C5 2D MR reconstruction on real brain (MNI152) and cardiac (ACDC) MR (~1 h on 2 CPU cores)",
        _run_recon_2d,
    ),
    "recon-2dt": Preset(
        "recon-2dt", "recon-cascade-cine-phantom",
        "Deep cascade D5-C5 2D+t with data sharing on cardiac cine phantoms (~15-20 min on 2 CPU cores)",
        _run_recon_2dt,
    ),
    "sononet-phantom": Preset(
        "sononet-phantom", "sononet-phantom",
        "SonoNet-16 standard-plane detection on fetal phantom sweeps (demo weights; ~60 min on 1 CPU thread)",
        _run_sononet_phantom,
    ),
    "lesions-brats": Preset(
        "lesions-brats", "lesions-brats",
        "DeepMedic on 4 real BraTS subjects, leave-one-subject-out (default lesion model; 4 folds of ~35 min on "
        "1 CPU thread each, two at a time with --only-folds)",
        _run_lesions_brats,
    ),
    "lesions-uda": Preset(
        "lesions-uda", "lesions-uda",
        "DeepMedic on synthetic lesion cases, adversarially adapted to 2 real BraTS subjects' images without their "
        "labels, then self-trained on them; judged on the other 2 (~100 min on 1 CPU thread)",
        _run_lesions_uda,
    ),
    "lesions-synthetic": Preset(
        "lesions-synthetic", "lesions-synthetic",
        "DeepMedic on synthetic multi-modal lesion cases (demo / source-only weights; ~25 min on 2 CPU cores)",
        _run_lesions_synthetic,
    ),
    "lesions-reevaluate": Preset(
        "lesions-reevaluate", "lesions-uda",
        "Judge lesions-synthetic on the real BraTS subjects and lesions-uda's source-only baseline again with "
        "today's inference, weights untouched (after a change to how models read scans; ~12 min on 1 CPU thread)",
        _reevaluate_lesions,
    ),
    "emma-deepmedic": Preset(
        "emma-deepmedic", "emma-deepmedic",
        "EMMA member: DeepMedic, cross-entropy, 50% tumour segments, on 2 BraTS subjects (~25 min on 1 CPU thread)",
        _run_emma_member("emma-deepmedic"),
    ),
    "emma-unet": Preset(
        "emma-unet", "emma-unet",
        "EMMA member: 3D U-Net, Dice + cross-entropy, 1/2 tumour patches, on 2 BraTS subjects (~25 min on 1 CPU "
        "thread)",
        _run_emma_member("emma-unet"),
    ),
    "emma-fcn": Preset(
        "emma-fcn", "emma-fcn",
        "EMMA member: 3D FCN-8s, cross-entropy, 1/3 tumour patches, on 2 BraTS subjects (~12 min on 1 CPU thread)",
        _run_emma_member("emma-fcn"),
    ),
    "emma": Preset(
        "emma", "emma",
        "EMMA ensemble card: judges the members and their mean on the BraTS subjects they never saw (ECE, "
        "uncertainty AUROC, FLAIR threshold floor; ~5 min); with --with-fold, the cross-validation of all folds",
        _run_emma,
    ),
    "sr-brain": Preset(
        "sr-brain", "sr-brain-x4",
        "Oktay et al. x4 through-plane SR, single-stack then axial+coronal fusion, on MNI152 + BraTS 1 mm brain MR "
        "(~25 min on 1 CPU thread)",
        _run_sr_brain,
    ),
    "sr-cardiac-acdc": Preset(
        "sr-cardiac-acdc", "sr-cardiac-x4",
        "Oktay et al. x4 SR for short-axis stacks, self-supervised (SMORE-style) from the in-plane resolution of "
        "real ACDC cine MRI (~30 min on 1 CPU thread)",
        _run_sr_cardiac_acdc,
    ),
    "sr-cardiac-phantom": Preset(
        "sr-cardiac-phantom", "sr-cardiac-x4-phantom",
        "Oktay et al. x4 through-plane SR on thin-slice cardiac cine phantoms (demo weights; ~10 min on 1 CPU thread)",
        _run_sr_cardiac_phantom,
    ),
}


def run_preset(name: str, run_dir: str | Path | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run preset ``name``; ``ValueError`` for unknown names."""
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} not supported; known: {', '.join(sorted(PRESETS))}")
    preset = PRESETS[name]
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / name
    return preset.run(run_dir, **kwargs)
