"""Training data, evaluation and the ``sononet-phantom`` preset for standard-plane detection.

C. F. Baumgartner et al., "SonoNet: Real-Time Detection and Localisation of Fetal Standard Scan
Planes in Freehand Ultrasound", IEEE TMI 36(11):2204-2215, 2017: the network is trained as an
image classifier with cross-entropy on image-level labels only (no boxes); localisation comes
out of the category maps and saliency afterwards.

The demo model is SonoNet-16 (the paper's architecture, unchanged) trained on synthetic freehand
sweeps through the fetal phantom (:mod:`napari_medlearn.samples.fetal_phantom`): every frame of
sweeps of seeds ``0..n_train-1``, labelled with the 14 published classes (the phantom contains 7
of the 13 planes; the rest is Background). To fit a CPU budget the frames, rendered at the
published 224 x 288, are resized to **112 x 144** (the card's input size, which
:func:`napari_medlearn.methods.detect_planes` reads and applies to any video): a quarter of the
compute, and the phantom's structures stay several pixels wide. Preprocessing is otherwise the
published one (per-image z-score x 255, :func:`napari_medlearn.nets.sononet.sononet_preprocess`).

Batches draw Background with probability ``background_fraction`` and otherwise a uniformly chosen
plane class (the classes are unbalanced in a sweep), with small rotations (+-10 deg, the probe
stays at the top), scaling, shifts, left-right flips, gamma and noise. The card reports
accuracy, per-class precision/recall/F1 and the confusion matrix on sweeps of seeds 10000+,
never trained on, through ``detect_planes`` (the whole inference path).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..nets.sononet import SONONET_CLASSES, sononet_preprocess
from ..zoo.sononet_import import SONONET_PAPER, TASK

DEMO_INPUT_SIZE = (112, 144)


def resize_frames(frames: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``(t, H, W)`` -> ``(t, *size)`` float32 with the inference resize (bilinear, antialiased)."""
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))[:, None]
    if tuple(x.shape[-2:]) != tuple(size):
        down = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=down)
    return x[:, 0].numpy()


class FramePool:
    """Labelled frames (already at the model's input size), sampled as augmented batches."""

    def __init__(self, size: Sequence[int], background: int = SONONET_CLASSES.index("Background"),
                 background_fraction: float = 0.3, augment: dict | None = None) -> None:
        self.size = tuple(int(s) for s in size)
        self.background = background
        self.background_fraction = float(background_fraction)
        self.frames: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.augment = dict(max_rot=np.deg2rad(10.0), scale=(0.9, 1.1), shift=0.05, gamma=(0.7, 1.4),
                            bias=0.1, noise=0.02)
        self.augment.update(augment or {})
        self._x: np.ndarray | None = None
        self.depths_mm: list[float] = []        # field of view (image height in mm) of each sweep

    def add(self, frames: np.ndarray, labels: np.ndarray) -> None:
        self.frames.append(resize_frames(frames, self.size).astype(np.float16))
        self.labels.append(np.asarray(labels, np.int64))
        self._x = None

    def __len__(self) -> int:
        return sum(len(lab) for lab in self.labels)

    def _arrays(self):
        if self._x is None:
            self._x = np.concatenate(self.frames)
            self._y = np.concatenate(self.labels)
            self._by_class = {int(c): np.flatnonzero(self._y == c) for c in np.unique(self._y)}
        return self._x, self._y

    def class_counts(self) -> dict[str, int]:
        _, y = self._arrays()
        return {SONONET_CLASSES[int(c)]: int((y == c).sum()) for c in np.unique(y)}

    def batch(self, rng: np.random.Generator, device, batch_size: int = 16):
        from .cardiac import augment_batch

        x, y = self._arrays()
        planes = [c for c in self._by_class if c != self.background]
        idx = []
        for _ in range(batch_size):
            if not planes or (self.background in self._by_class and rng.random() < self.background_fraction):
                c = self.background
            else:
                c = planes[int(rng.integers(len(planes)))]
            pool = self._by_class[c]
            idx.append(int(pool[rng.integers(len(pool))]))
        xb = torch.from_numpy(x[idx].astype(np.float32))[:, None]
        xb, _ = augment_batch(rng, xb, torch.zeros_like(xb), **self.augment)
        xb = sononet_preprocess(xb, self.size)
        return xb.to(device), torch.from_numpy(y[idx]).to(device)


def sweep_pool(seeds: Sequence[int], size: Sequence[int], n_frames: int = 120,
               render_shape: Sequence[int] = (224, 288), progress: bool = False) -> FramePool:
    """A :class:`FramePool` of every frame of the phantom sweeps of ``seeds``."""
    from ..samples.fetal_phantom import fetal_sweep

    pool = FramePool(size)
    for i, s in enumerate(seeds):
        sw = fetal_sweep(seed=int(s), n_frames=n_frames, shape=tuple(render_shape))
        if tuple(sw.class_names) != SONONET_CLASSES:
            raise ValueError("the phantom's class names differ from SonoNet's published classes")
        pool.add(sw.frames, sw.labels)
        pool.depths_mm.append(float(sw.pixel_spacing_mm) * sw.frames.shape[1])
        if progress and ((i + 1) % 5 == 0 or i + 1 == len(seeds)):
            print(f"sweep {i + 1}/{len(seeds)}: {len(pool)} frames", flush=True)
    return pool


def evaluate_sweeps(model, seeds: Sequence[int], n_frames: int = 120,
                    render_shape: Sequence[int] = (224, 288), progress: bool = False) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1 and confusion matrix of ``model`` on the phantom
    sweeps of ``seeds``, every frame through :func:`napari_medlearn.methods.detect_planes`."""
    from ..methods.planes import detect_planes
    from ..samples.fetal_phantom import fetal_sweep

    truth, pred = [], []
    for s in seeds:
        sw = fetal_sweep(seed=int(s), n_frames=n_frames, shape=tuple(render_shape))
        res = detect_planes(sw.frames, model=model, saliency=False, device="cpu")
        truth.append(sw.labels)
        pred.append(res.predicted)
        if progress:
            print(f"  seed {s}: accuracy {np.mean(res.predicted == sw.labels):.3f}", flush=True)
    t, p = np.concatenate(truth), np.concatenate(pred)
    K = len(SONONET_CLASSES)
    conf = np.zeros((K, K), np.int64)
    np.add.at(conf, (t, p), 1)
    present = [c for c in range(K) if conf[c].sum() > 0 or conf[:, c].sum() > 0]
    per_class = {}
    for c in present:
        tp, fn, fp = conf[c, c], conf[c].sum() - conf[c, c], conf[:, c].sum() - conf[c, c]
        prec = tp / (tp + fp) if tp + fp else float("nan")
        rec = tp / (tp + fn) if tp + fn else float("nan")
        f1 = 2 * prec * rec / (prec + rec) if tp else 0.0
        per_class[SONONET_CLASSES[c]] = {"n": int(conf[c].sum()), "precision": float(prec),
                                         "recall": float(rec), "f1": float(f1)}
    planes = [n for n in per_class if n != "Background" and per_class[n]["n"] > 0]
    acc = float(np.mean(t == p))
    mean_f1 = float(np.mean([per_class[n]["f1"] for n in planes])) if planes else float("nan")
    return {
        "summary": {"n_frames": int(t.size), "accuracy": acc, "mean_f1_planes": mean_f1},
        "n_frames": int(t.size), "seeds": [int(s) for s in seeds],
        "accuracy": acc, "mean_f1_planes": mean_f1,
        "per_class": per_class,
        "confusion": {"classes": [SONONET_CLASSES[c] for c in present],
                      "rows_truth_cols_predicted": conf[np.ix_(present, present)].tolist()},
    }


def plane_pose_errors(found, volume, plane: str) -> tuple[float, float]:
    """Angle (deg) and distance (mm, along the true normal) of a found plane from the truth (the
    nearest of the plane's true poses when there are several, e.g. two femurs).

    For a long bone (Femur) the plane only has to contain the bone: the angle is the bone's tilt
    out of the found plane."""
    truths = getattr(volume, "all_planes", {}).get(plane) or [volume.planes[plane]]
    errs = [_pose_error(found, t, np.asarray(volume.spacing, float), plane) for t in truths]
    return min(errs, key=lambda e: e[0] / 15.0 + e[1] / 5.0)


def _pose_error(found, truth, sp, plane: str) -> tuple[float, float]:
    n_true = np.cross(truth.axes[0], truth.axes[1])
    n_true = n_true / np.linalg.norm(n_true)
    n_found = np.asarray(found.normal, float) / np.linalg.norm(found.normal)
    if plane == "Femur":
        along = np.asarray(truth.axes[1], float)
        ang = float(np.degrees(np.arcsin(min(1.0, abs(float(n_found @ along))))))
        off = (np.asarray(found.centre) - truth.centre) * sp
        dist = float(np.linalg.norm(off - (off @ along) * along))      # distance to the bone's axis
    else:
        ang = float(np.degrees(np.arccos(min(1.0, abs(float(n_found @ n_true))))))
        dist = abs(float(((np.asarray(found.centre) - truth.centre) * sp) @ n_true))
    return ang, dist


def evaluate_plane_search(model, seeds: Sequence[int], planes: Sequence[str] | None = None,
                          progress: bool = False, **search_kw) -> dict[str, Any]:
    """:func:`napari_medlearn.methods.find_standard_plane` on phantom volumes of ``seeds``: per
    plane, the angle and distance of the found plane from the true one; a plane counts as found
    within 15 deg and 5 mm."""
    from ..methods.planes import find_standard_plane
    from ..samples.fetal_phantom import PHANTOM_PLANES, fetal_volume

    planes = tuple(planes or PHANTOM_PLANES)
    rows = []
    for s in seeds:
        vol = fetal_volume(int(s))
        for name in planes:
            r = find_standard_plane(vol.data, name, model=model, spacing=vol.spacing, device="cpu", **search_kw)
            ang, dist = plane_pose_errors(r, vol, name)
            rows.append({"seed": int(s), "plane": name, "score": float(r.score), "angle_deg": ang,
                         "distance_mm": dist, "found": bool(ang <= 15.0 and dist <= 5.0)})
            if progress:
                print(f"  volume {s} {name}: score {r.score:.3f}, {ang:.1f} deg, {dist:.1f} mm", flush=True)
    summary = {"n_searches": len(rows),
               "median_angle_deg": float(np.median([r["angle_deg"] for r in rows])),
               "median_distance_mm": float(np.median([r["distance_mm"] for r in rows])),
               "found_fraction": float(np.mean([r["found"] for r in rows]))}
    per_plane = {p: {"median_angle_deg": float(np.median([r["angle_deg"] for r in rows if r["plane"] == p])),
                     "median_distance_mm": float(np.median([r["distance_mm"] for r in rows if r["plane"] == p])),
                     "found_fraction": float(np.mean([r["found"] for r in rows if r["plane"] == p]))}
                 for p in planes}
    return {"summary": summary, "per_plane": per_plane, "searches": rows}


def run_sononet_phantom(run_dir: str | Path, ship: bool = False, epochs: int = 24, iters_per_epoch: int = 250,
                        n_train: int = 40, n_eval: int = 10, n_frames: int = 120, width: int = 16,
                        input_size: Sequence[int] = DEMO_INPUT_SIZE, render_shape: Sequence[int] = (224, 288),
                        batch_size: int = 16, lr: float = 1e-3, blocks: Sequence[int] = (2, 2, 3, 3, 3),
                        volume_views_per_seed: int = 240, n_eval_volumes: int = 1,
                        device: str = "auto", seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """SonoNet-``width`` on phantom sweeps of seeds ``seed..seed+n_train-1`` plus views cut from
    the 3D phantom volumes of the same seeds (``volume_views_per_seed`` each, for the 3D plane
    search); held-out sweeps and volumes of seeds 10000+ for the card. Tests pass tiny widths,
    sizes and counts."""
    from torch import nn

    from ..nets import SonoNet
    from .presets import _finish, training_record
    from .trainer import TrainConfig, train

    run_dir = Path(run_dir)
    t0 = time.time()
    size = tuple(int(s) for s in input_size)
    pool = sweep_pool(range(seed, seed + n_train), size, n_frames, render_shape, progress)
    n_sweep_frames = len(pool)
    sweep_counts = pool.class_counts()
    fov = float(np.mean(pool.depths_mm)) if pool.depths_mm else None
    if volume_views_per_seed and fov:
        from ..samples.fetal_phantom import volume_views

        for s in range(seed, seed + n_train):
            v, lab = volume_views(int(s), int(volume_views_per_seed), size, fov / size[0])
            pool.add(v, lab)
    if progress:
        print(f"{len(pool)} training frames ({n_sweep_frames} from sweeps): {pool.class_counts()}", flush=True)
    arch_args = {"width": int(width), "n_classes": len(SONONET_CLASSES), "in_channels": 1, "blocks": list(blocks)}
    torch.manual_seed(seed)
    model = SonoNet(**arch_args)
    cfg = TrainConfig(epochs=epochs, iters_per_epoch=iters_per_epoch, lr=lr,
                      lr_milestones=(int(epochs * 0.6), int(epochs * 0.85)), seed=seed, device=device)
    loss = nn.CrossEntropyLoss()
    hist = train(model, "sononet", arch_args, lambda rng, dev: pool.batch(rng, dev, batch_size), loss, cfg,
                 run_dir, progress=progress)
    name = "sononet-phantom"
    input_spec = {
        "axes": "2D B-mode frames (y, x) of a (t, y, x) video",
        "channels": ["B-mode grayscale"],
        "size": list(size),
        "intensity": "zscore255",
        # the depth the training frames covered: find_standard_plane samples 3D views at this scale
        "field_of_view_mm": round(float(np.mean(pool.depths_mm)), 2) if pool.depths_mm else None,
        "description": f"grayscale, bilinear resize of the whole frame to {size[0]} x {size[1]} (the "
                       "published 224 x 288 halved for CPU training), z-score of each image times 255",
    }
    model.eval()
    model.card = {"name": name, "class_names": list(SONONET_CLASSES), "input": input_spec,
                  "n_classes": len(SONONET_CLASSES)}
    eval_seeds = list(range(10000, 10000 + n_eval))
    if progress:
        print("evaluating on held-out sweeps", flush=True)
    ev = evaluate_sweeps(model, eval_seeds, n_frames, render_shape, progress)
    search = (evaluate_plane_search(model, range(10000, 10000 + int(n_eval_volumes)), progress=progress)
              if n_eval_volumes else None)
    card = {
        "name": name,
        "task": TASK,
        "priority": 0,
        "description": f"SonoNet-{width} trained on synthetic freehand sweeps of the fetal phantom: a demo of "
                       "the pipeline (7 of the 13 standard planes + Background), not a model for real scans.",
        "architecture": "sononet", "arch_args": arch_args, "paper": SONONET_PAPER,
        "n_classes": len(SONONET_CLASSES), "class_names": list(SONONET_CLASSES),
        "labels": {str(i): c for i, c in enumerate(SONONET_CLASSES)},
        "input": input_spec,
        "training": {
            "data": f"{n_train} phantom sweeps of {n_frames} frames, napari_medlearn.samples.fetal_phantom."
                    f"fetal_sweep seeds {seed}..{seed + n_train - 1} rendered at {tuple(render_shape)} "
                    f"({n_sweep_frames} frames: {sweep_counts})"
                    + (f"; plus {volume_views_per_seed} views per seed cut from fetal_volume of the same seeds "
                       f"(samples.fetal_phantom.volume_views: near each standard plane, tilted or shifted off it, "
                       f"random; any in-plane rotation; {fov / size[0]:.3f} mm pixels), all frames: "
                       f"{pool.class_counts()}" if volume_views_per_seed and fov else ""),
            "command": "medlearn train sononet-phantom --ship",
            "loss": "cross-entropy on the globally averaged category maps (image-level labels only)",
            "sampling": f"Background with probability {pool.background_fraction}, else a uniformly drawn plane class",
            "augmentation": "rotation +-10 deg, scale 0.9-1.1, shift 5 %, left-right flip, gamma 0.7-1.4, "
                            "bias field 0.1, noise <= 0.02",
            "batch_size": batch_size,
            **training_record(cfg, hist, t0),
        },
        "evaluation": {
            "data": f"{n_eval} phantom sweeps of seeds {eval_seeds[0]}..{eval_seeds[-1]} ({n_frames} frames each), "
                    "never trained on; every frame through methods.detect_planes",
            **ev,
            **({"plane_search_3d": {
                "data": f"fetal_volume seeds 10000..{10000 + int(n_eval_volumes) - 1} (never trained on), every "
                        "phantom plane searched with methods.find_standard_plane (defaults); angle between found and "
                        "true plane (Femur: the bone's tilt out of the found plane) and distance along the true "
                        "normal; found = within 15 deg and 5 mm",
                **search}} if search else {}),
        },
        "licence": {"weights": "BSD-3-Clause", "training_data": "synthetic (generated by this package)"},
        "intended_use": "demonstration and testing; research use only, not for diagnosis",
    }
    return _finish(model, "sononet", arch_args, card, run_dir, ship)
