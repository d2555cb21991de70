"""ACNN-Seg: the cardiac FCN trained with the shape prior as a regulariser, and its plain twin.

O. Oktay et al., "Anatomically Constrained Neural Networks (ACNNs)", IEEE TMI 37(2):384-395,
2018, section II-C: a segmentation network is trained with its usual loss plus ``lambda`` times
the Euclidean distance between the shape codes of its prediction and of the ground truth, the
codes given by the **frozen** encoder of the label autoencoder (here the shipped
``acnn-shape-prior``). The network itself is unchanged at inference.

The prior sees whole 3D label maps, so a training sample is a whole short-axis stack: every
slice of one ACDC frame (in-plane 1.5 mm, cropped 128 x 128 around the heart with random
shifts, or anywhere in the field of view for ``far_fraction`` of the stacks, so that both twins
see the far background they meet on whole slices at inference and the shape term penalises
islands there; one random rotation/scale/flip/intensity change for the whole stack) goes through the
2D FCN; its softmax ``(K, Z, 128, 128)`` is resampled (differentiably, trilinear) onto the
prior's canonical grid, centred on the truth's foreground exactly as
:mod:`napari_medlearn.imaging.shape_grid` does, and encoded; the truth's one-hot map goes the
same way, each first low-passed in-plane so that every pixel reaches the code (the canonical grid
is twice as coarse). Loss = MONAI DiceCE over the slices + ``lambda`` * mean squared code difference.

The **twin** is the same recipe with ``lambda = 0``: same initial weights (the shipped
``cardiac-fcn-acdc`` by default, fine-tuned), same batches, same iterations. The card compares
the two on the ACDC patients both never saw (the ``cardiac-acdc`` split): Dice, HD95, and the
fraction of raw network outputs (before the component clean-up) with holes or islands.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..imaging.shape_grid import grid_map

TARGET_MM = 1.5
CROP = 128


class StackPool:
    """Whole short-axis stacks (in-plane ``TARGET_MM``), sampled as augmented 128 x 128 crops:
    around the heart, or (a ``far_fraction`` of stacks) centred anywhere in the field of view, so
    the network also learns the far background it meets at inference on whole slices."""

    def __init__(self, augment: dict | None = None, crop: int = CROP, far_fraction: float = 0.0) -> None:
        self.images: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.dz: list[float] = []
        self.crop = crop
        self.far_fraction = float(far_fraction)
        self.augment = dict(augment or {})

    def add_volume(self, image: np.ndarray, labels: np.ndarray, spacing) -> None:
        from ..imaging.intensity import rescale_percentiles
        from .cardiac import resample_in_plane

        img = resample_in_plane(rescale_percentiles(image), spacing[1:], TARGET_MM, order=1)
        lab = resample_in_plane(labels, spacing[1:], TARGET_MM, order=0)
        self.images.append(img.astype(np.float16))
        self.labels.append(lab.astype(np.uint8))
        self.dz.append(float(spacing[0]))

    def __len__(self) -> int:
        return len(self.images)

    def _crop(self, rng, i: int, size: int):
        from .cardiac import crop_square

        img, lab = self.images[i], self.labels[i]
        _, h, w = img.shape
        if self.far_fraction and rng.random() < self.far_fraction:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        else:
            fg = np.argwhere(lab > 0)
            cy, cx = (fg[:, 1:].mean(axis=0) if len(fg) else np.array([h / 2, w / 2])) + rng.normal(0, self.crop / 12, 2)
        return crop_square(img, cy, cx, size, np.float32), crop_square(lab, cy, cx, size, np.float32)

    def batch(self, rng: np.random.Generator, device, grid=(12, 48, 48), grid_spacing=(10.0, 3.0, 3.0)):
        """``x (Z, 1, crop, crop)`` and ``{"labels": (Z, 1, crop, crop) long, "grid": (1, D, H, W, 3)}``
        where ``grid`` samples the crop stack on the prior's canonical box (``grid_sample`` order)."""
        from .cardiac import augment_batch

        i = int(rng.integers(len(self)))
        pad = int(self.crop * 0.25)
        xi, yl = self._crop(rng, i, self.crop + 2 * pad)
        x, y = augment_batch(rng, torch.from_numpy(xi)[None], torch.from_numpy(yl)[None], **self.augment)
        x = x[0, :, pad:pad + self.crop, pad:pad + self.crop]
        y = y[0, :, pad:pad + self.crop, pad:pad + self.crop].round().long()
        lab = y.numpy()
        sp = (self.dz[i], TARGET_MM, TARGET_MM)
        fg = np.argwhere(lab > 0)
        centre = (np.median(fg, axis=0) * np.asarray(sp)) if len(fg) else (np.asarray(lab.shape) - 1) / 2 * np.asarray(sp)
        gmap = grid_map(lab.shape, sp, centre, tuple(grid), tuple(grid_spacing))
        c = np.stack(np.meshgrid(*[np.arange(g) for g in grid], indexing="ij"), axis=-1).reshape(-1, 3)
        j = c @ gmap.matrix.T + gmap.offset                                  # input (z, y, x) indices
        size = np.maximum(np.asarray(lab.shape, float) - 1, 1)
        g = (j / size * 2 - 1)[:, ::-1].reshape(1, *grid, 3).astype(np.float32)    # (x, y, z) in -1..1
        return (x[:, None].float().to(device),
                {"labels": y[:, None].to(device), "grid": torch.from_numpy(np.ascontiguousarray(g)).to(device)})


def to_canonical_torch(prob: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``(Z, K, H, W)`` class probabilities -> ``(1, K, D, Hc, Wc)`` on the canonical grid, trilinear;
    outside the stack the background channel is 1 (as :func:`imaging.shape_grid.to_canonical`)."""
    vol = prob.permute(1, 0, 2, 3)[None]
    can = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    inside = can.sum(dim=1, keepdim=True)
    return torch.cat([can[:, :1] + (1 - inside), can[:, 1:]], dim=1)


def antialias_kernel(factor: float) -> torch.Tensor | None:
    """Separable triangle (tent) low-pass for in-plane down-sampling by ``factor``: weights
    ``factor - |k|`` for ``|k| < factor``, normalised (``[1, 2, 1] / 4`` for 2); None when
    ``factor < 1.5`` (no down-sampling to speak of)."""
    if factor < 1.5:
        return None
    r = int(np.ceil(factor)) - 1
    w = torch.tensor([factor - abs(k) for k in range(-r, r + 1)], dtype=torch.float32)
    return w / w.sum()


def antialias(maps: torch.Tensor, kernel: torch.Tensor | None) -> torch.Tensor:
    """Low-pass ``(Z, K, H, W)`` maps in-plane with the separable ``kernel`` (reflecting edges)."""
    if kernel is None:
        return maps
    k = kernel.to(maps)
    r = len(k) // 2
    c = maps.shape[1]
    out = F.conv2d(F.pad(maps, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(out, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


class ShapeRegularisedLoss:
    """DiceCE on the slices + ``lam`` * mean squared distance of the prior's codes of the
    prediction and of the truth (the prior frozen). ``last`` keeps the two terms of the last call.

    ``downsample`` is the prior's in-plane grid spacing over the slices' pixel spacing: both maps
    are low-passed (:func:`antialias_kernel`) before they are sampled onto the coarser canonical
    grid, so that every pixel reaches the code; plain bilinear sampling at twice the pixel spacing
    lands on one pixel in four and leaves the other three out of the shape term entirely."""

    def __init__(self, prior, lam: float, n_classes: int = 4, downsample: float = 1.0) -> None:
        from monai.losses import DiceCELoss

        self.seg = DiceCELoss(to_onehot_y=True, softmax=True)
        self.prior, self.lam, self.n_classes = prior, float(lam), n_classes
        self.kernel = antialias_kernel(float(downsample))
        if prior is not None:
            prior.eval()
            for p in prior.parameters():
                p.requires_grad_(False)
        self.last: dict[str, float] = {}

    def __call__(self, logits: torch.Tensor, y: dict) -> torch.Tensor:
        seg = self.seg(logits, y["labels"])
        if self.prior is None or self.lam == 0:
            self.last = {"seg": float(seg.detach()), "shape": float("nan")}
            return seg
        prob = torch.softmax(logits, dim=1)
        truth = F.one_hot(y["labels"][:, 0], self.n_classes).permute(0, 3, 1, 2).float()
        code_p = self.prior.encode(to_canonical_torch(antialias(prob, self.kernel), y["grid"]))
        with torch.no_grad():
            code_t = self.prior.encode(to_canonical_torch(antialias(truth, self.kernel), y["grid"]))
        shape = torch.mean((code_p - code_t) ** 2)
        self.last = {"seg": float(seg.detach()), "shape": float(shape.detach())}
        return seg + self.lam * shape


def topology_faults(labels: np.ndarray) -> dict[str, Any]:
    """Islands and holes of a ``(z, y, x)`` label map (:func:`methods.acnn.islands_and_holes`)
    with their voxel counts; ``any`` is True when either occurs."""
    from ..methods.acnn import islands_and_holes

    islands, holes, island_vox, hole_vox = islands_and_holes(labels)
    return {"islands": islands, "holes": holes, "island_voxels": island_vox, "hole_voxels": hole_vox,
            "any": bool(islands or holes)}


def evaluate_segmenter(model, cases, progress: bool = False) -> dict[str, Any]:
    """Dice, HD95 (mm) per structure and topology faults of ``model`` on ``(image (t,z,y,x),
    labels, spacing, name)`` cases, frame by frame, through :func:`methods.segment_heart`
    (faults counted on the raw network labels, before its component clean-up, and after)."""
    from ..imaging.measures import dice_per_label, hausdorff95
    from ..methods.cardiac import segment_heart

    names = {1: "LV", 2: "Myo", 3: "RV"}
    rows = []
    for image, truth, spacing, name in cases:
        res = segment_heart(image, spacing, model=model, device="cpu")
        raw = np.argmax(np.asarray(res.probabilities, np.float32), axis=0).astype(np.uint8)
        for t, phase in enumerate(("ED", "ES")[: image.shape[0]]):
            row = {"case": f"{name} {phase}"}
            for k, d in dice_per_label(res.labels[t], truth[t]).items():
                row[f"dice_{names[k]}"] = d
                row[f"hd95_{names[k]}_mm"] = hausdorff95(res.labels[t] == k, truth[t] == k, spacing)
            for stage, lab in (("raw", raw[t]), ("post", res.labels[t])):
                f = topology_faults(lab)
                row.update({f"{stage}_{k}": v for k, v in f.items()})
            rows.append(row)
        if progress:
            print(f"  {name}: " + ", ".join(f"{r['case'].split()[-1]} Dice {np.mean([r[f'dice_{n}'] for n in names.values()]):.3f}"
                                          for r in rows[-image.shape[0]:]), flush=True)
    summary: dict[str, Any] = {"n_frames": len(rows)}
    for n in names.values():
        summary[f"dice_{n}_mean"] = float(np.mean([r[f"dice_{n}"] for r in rows]))
        summary[f"hd95_{n}_mm_mean"] = float(np.nanmean([r[f"hd95_{n}_mm"] for r in rows]))
    summary["dice_mean"] = float(np.mean([summary[f"dice_{n}_mean"] for n in names.values()]))
    summary["hd95_mm_mean"] = float(np.mean([summary[f"hd95_{n}_mm_mean"] for n in names.values()]))
    for stage in ("raw", "post"):
        summary[f"{stage}_fraction_with_islands"] = float(np.mean([r[f"{stage}_islands"] > 0 for r in rows]))
        summary[f"{stage}_fraction_with_holes"] = float(np.mean([r[f"{stage}_holes"] > 0 for r in rows]))
        summary[f"{stage}_fraction_with_holes_or_islands"] = float(np.mean([r[f"{stage}_any"] for r in rows]))
        summary[f"{stage}_islands_per_frame"] = float(np.mean([r[f"{stage}_islands"] for r in rows]))
        summary[f"{stage}_holes_per_frame"] = float(np.mean([r[f"{stage}_holes"] for r in rows]))
        summary[f"{stage}_fault_voxels_per_frame"] = float(np.mean(
            [r[f"{stage}_island_voxels"] + r[f"{stage}_hole_voxels"] for r in rows]))
    return {"summary": summary, "cases": rows}


def run_acnn_seg(run_dir: str | Path, ship: bool = False, which: str = "both", lam: float = 0.05,
                 epochs: int = 6, iters_per_epoch: int = 150, init: str | None = "cardiac-fcn-acdc",
                 prior: str = "acnn-shape-prior", data: str | None = None, n_val_per_group: int = 4,
                 max_patients: int | None = None, device: str = "auto", seed: int = 0,
                 progress: bool = True, width: float = 1.0, far_fraction: float = 0.3) -> dict[str, Any]:
    """Fine-tune the cardiac FCN ``init`` on whole ACDC stacks with (``acnn``) and without
    (``plain``, the twin) the shape-code loss; evaluate both (and ``init``) on the held-out split.

    ``which`` = ``acnn``, ``plain`` or ``both`` trains those (each in ``run_dir/<kind>``,
    checkpoint per epoch, resumable); a kind not trained here is read from its folder when it
    has a ``model.pt`` (``evaluate``: train nothing, compare what the folders hold). The card of ``cardiac-fcn-acnn`` carries all three evaluations.
    """
    from .. import zoo
    from ..nets import BaiFCN
    from .acdc import ACDC_CITATION, find_acdc_root, list_patients, load_patient, stratified_split
    from .presets import BAI_PAPER, CARDIAC_LABELS, _finish, cardiac_input_spec, fcn_args, training_record
    from .trainer import TrainConfig, train

    if which not in ("acnn", "plain", "both", "evaluate"):
        raise ValueError(f"which must be acnn, plain, both or evaluate, got {which!r}")
    run_dir = Path(run_dir)
    root = find_acdc_root(data)
    patients = list_patients(root)
    if max_patients:
        patients = patients[:max_patients]
    train_names, val_names = stratified_split(patients, n_val_per_group, seed)
    shape_model = zoo.load(prior, device="cpu")
    grid = tuple(shape_model.card.get("input", {}).get("grid", shape_model.grid))
    gsp = tuple(shape_model.card.get("input", {}).get("grid_spacing_mm", (10.0, 3.0, 3.0)))
    augment = {"scale": (0.8, 1.25), "gamma": (0.7, 1.5), "bias": 0.2, "noise": 0.03}
    models: dict[str, Any] = {}
    records: dict[str, Any] = {}
    for kind in ("acnn", "plain"):
        kdir = run_dir / kind
        if which not in (kind, "both"):
            if (kdir / "model.pt").exists():
                models[kind] = zoo.load(str(kdir / "model.pt"), device="cpu")
                records[kind] = dict(zoo.card(str(kdir / "model.pt")).get("training", {}))
            continue
        pool = StackPool(augment, far_fraction=far_fraction)
        for name in train_names:
            p = load_patient(root, name)
            pool.add_volume(p.ed_image, p.ed_labels, p.spacing)
            pool.add_volume(p.es_image, p.es_labels, p.spacing)
        if init:
            # a copy: zoo.load hands out one shared module per name, which must stay the initial model
            net = copy.deepcopy(zoo.load(init, device="cpu"))
            arch_args = dict(net.card["arch_args"])
        else:
            arch_args = fcn_args(width)
            torch.manual_seed(seed)
            net = BaiFCN(**arch_args)
        loss = ShapeRegularisedLoss(shape_model if kind == "acnn" else None, lam if kind == "acnn" else 0.0,
                                    downsample=gsp[1] / TARGET_MM)
        cfg = TrainConfig(epochs=epochs, iters_per_epoch=iters_per_epoch, lr=2e-4,
                          lr_milestones=(int(epochs * 0.6), int(epochs * 0.85)), seed=seed, device=device)
        t1 = time.time()
        hist = train(net, "bai_fcn", arch_args, lambda r, dev: pool.batch(r, dev, grid, gsp), loss, cfg, kdir,
                     progress=progress)
        net.eval()
        net.card = {"input": {"in_plane_spacing_mm": TARGET_MM}, "n_classes": 4, "arch_args": arch_args}
        records[kind] = training_record(cfg, hist, t1)
        zoo.save_checkpoint(net, kdir / "model.pt", "bai_fcn", arch_args,
                            card={"name": f"twin-{kind}", "training": records[kind], "arch_args": arch_args,
                                  "input": {"in_plane_spacing_mm": TARGET_MM}, "n_classes": 4})
        models[kind] = net
    if set(models) != {"acnn", "plain"}:
        return {"trained": sorted(models), "note": "train the other kind to compare"}
    cases = []
    for name in val_names:
        p = load_patient(root, name)
        image, labels = p.cine()
        cases.append((image, labels, p.spacing, name))
    evals = {}
    for kind, m in (("acnn", models["acnn"]), ("plain", models["plain"])) + ((("init", init),) if init else ()):
        if progress:
            print(f"evaluating {kind} on {len(val_names)} held-out patients", flush=True)
        evals[kind] = evaluate_segmenter(m, cases, progress)
    s_a, s_p = evals["acnn"]["summary"], evals["plain"]["summary"]
    comparison = {
        "dice_mean_acnn_minus_plain": s_a["dice_mean"] - s_p["dice_mean"],
        "hd95_mm_acnn_minus_plain": s_a["hd95_mm_mean"] - s_p["hd95_mm_mean"],
        "raw_faults_acnn_minus_plain": (s_a["raw_fraction_with_holes_or_islands"]
                                        - s_p["raw_fraction_with_holes_or_islands"]),
        "raw_fault_voxels_acnn_minus_plain": (s_a["raw_fault_voxels_per_frame"] - s_p["raw_fault_voxels_per_frame"]),
    }
    name = "cardiac-fcn-acnn"
    card = {
        "name": name, "task": "cardiac-segmentation", "priority": 5,
        "description": "ACNN-Seg: the Bai FCN fine-tuned on ACDC with the ACNN shape-code loss (frozen label "
                       "encoder of acnn-shape-prior); research use only, not for diagnosis.",
        "architecture": "bai_fcn", "arch_args": dict(models["acnn"].card["arch_args"]),
        "paper": "O. Oktay et al., Anatomically Constrained Neural Networks (ACNNs), IEEE TMI 37(2):384-395, 2018; "
                 "network: " + BAI_PAPER,
        "n_classes": 4, "labels": CARDIAC_LABELS, "input": cardiac_input_spec(TARGET_MM),
        "training": {
            "data": f"ACDC training patients of the cardiac-acdc split ({len(train_names)}; ED and ES stacks), "
                    "expert labels in plugin order",
            "split": {"seed": seed, "validation_per_group": n_val_per_group, "same_as": "cardiac-acdc",
                      "validation": val_names},
            "command": "medlearn train acnn-seg --ship",
            "initialisation": init or "random",
            "loss": f"MONAI DiceCELoss over the slices + {lam} x mean squared difference of the {prior} codes of the "
                    "softmax and of the truth, both low-passed in-plane (tent filter) and resampled onto the prior's "
                    "canonical grid (encoder frozen)",
            "sample": f"one whole stack per step: every slice, 128 x 128 at 1.5 mm around the heart ({far_fraction:.0%} "
                      "of stacks centred anywhere in the field of view instead, where the shape code of the truth is "
                      "that of an empty map), one random rotation/scale/flip/shift + gamma/bias/noise for the stack",
            "far_fraction": far_fraction, "lambda": lam,
            "twin": "the same recipe with lambda = 0 (same initial weights, batches and iterations): "
                    "not shipped, its figures are below",
            **records["acnn"],
        },
        "evaluation": {
            "data": f"{len(val_names)} ACDC patients held out by the split (never trained on by any shipped cardiac "
                    "model), ED and ES, through methods.segment_heart (resampling, transposition TTA and component "
                    "clean-up included); HD95 via imaging.measures.hausdorff95; holes/islands counted on the raw "
                    "network labels (argmax of the posteriors) and after the clean-up",
            "summary": s_a, "twin_without_shape_loss": s_p,
            **({"initial_model": {"name": init, **evals["init"]["summary"]}} if init else {}),
            "acnn_vs_twin": comparison, "cases": evals["acnn"]["cases"],
        },
        "licence": {"weights": "research use only (ACDC terms); not for diagnosis",
                    "training_data": "ACDC (MICCAI 2017 challenge, University Hospital of Dijon), research use; any use "
                                     "must cite the paper below", "citation": ACDC_CITATION},
        "intended_use": "research use only, not for diagnosis",
    }
    if progress:
        print({k: round(v, 4) for k, v in comparison.items()}, flush=True)
    return _finish(models["acnn"], "bai_fcn", card["arch_args"], card, run_dir, ship)
