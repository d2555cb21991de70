"""Training data, evaluation and the ``sr-brain`` preset for through-plane super-resolution.

O. Oktay et al., "Multi-input Cardiac Image Super-Resolution Using Convolutional Neural
Networks", MICCAI 2016 (:mod:`napari_medlearn.nets.sr`): thin (1 mm) volumes are degraded with
a slice profile (box, factor ``f``; :func:`napari_medlearn.imaging.slices.thick_slices`, never
decimation) and the networks learn to undo it from patches, with the mean squared error.

Data (real 1 mm brain MRI): the MNI152 T1 template shipped inside nilearn (ICBM 2009c, 1 mm)
and the BraTS 2013 subjects in ``../shared/data/brats-deepmedic`` (T1c and FLAIR, 1 mm, skull
stripped; CC BY-NC-SA 3.0). One BraTS subject (``HELD_OUT``) is never trained on: the card's
figures come from it. Every volume is thickened along each of its three axes, so the single-stack
network sees axial, coronal and sagittal slice directions; the fusion network sees every ordered
pair of orthogonal stacks (reference stack first), each resampled onto the thin grid by cubic
B-spline exactly as :func:`napari_medlearn.methods.sr.super_resolve_stacks` does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..imaging import slices as S
from ..methods.sr import TASK_MULTI, TASK_SINGLE, intensity_scale

HELD_OUT = "brats_2013_pat0006_1"
MODALITIES = ("T1c", "Flair")
BRATS_CITATION = ("B. H. Menze et al., The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS), "
                  "IEEE TMI 34(10):1993-2024, 2015; data as redistributed with DeepMedic "
                  "(K. Kamnitsas et al., github.com/deepmedic/deepmedic, examples/dataForExamples)")


def find_brats_root(data: str | Path | None = None) -> Path | None:
    """The BraTS folder: ``data``, else as :func:`napari_medlearn.training.deepmedic.find_brats_root`
    finds it (``$MEDLEARN_BRATS``, ``../shared/data/brats-deepmedic`` beside the repo or the cwd);
    None when there is none."""
    from .deepmedic import find_brats_root as find_subjects

    if data is not None:
        p = Path(data)
        if not p.is_dir():
            raise ValueError(f"BraTS folder not found: {p}")
        return p
    try:
        return find_subjects()
    except FileNotFoundError:
        return None


@dataclass
class BrainVolume:
    name: str
    image: np.ndarray       # (z, y, x) float32, 1 mm, intensity_scale 1, cropped to multiples of f
    affine: np.ndarray
    mask: np.ndarray        # brain


def _crop_to_brain(v: np.ndarray, mask: np.ndarray, aff: np.ndarray, f: int, margin: int = 4):
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, v.shape)
    n = ((hi - lo) // f) * f
    hi = lo + n
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    a2 = aff.copy()
    a2[:3, 3] = (aff @ np.r_[lo, 1.0])[:3]
    return v[sl], mask[sl], a2


def brats_volume(folder: Path, modality: str, f: int) -> BrainVolume:
    """A BraTS modality: z-scored intensities shifted so the brain's minimum is 0, zero outside."""
    from ..imaging.io import read_nifti

    mask = np.asarray(read_nifti(folder / "brainmask.nii.gz").data) > 0
    vol = read_nifti(folder / f"{modality}_subtrMeanDivStd.nii.gz")
    v = np.asarray(vol.data, np.float32)
    v = np.where(mask, v - v[mask].min(), 0).astype(np.float32)
    v, m, aff = _crop_to_brain(v, mask, vol.affine, f)
    return BrainVolume(f"BraTS {folder.name} {modality}", v / intensity_scale(v), aff, m)


def mni_volume(f: int) -> BrainVolume:
    from ..samples import mni152_t1

    vol = mni152_t1(resolution=1)
    v = np.clip(np.asarray(vol.data, np.float32), 0, None)
    mask = v > 0.1 * v.max()
    v, m, aff = _crop_to_brain(v, mask, vol.affine, f)
    return BrainVolume("MNI152 T1 (nilearn, ICBM 2009c 1 mm)", v / intensity_scale(v), aff, m)


def training_volumes(f: int, data=None, max_subjects: int | None = None, mni: bool = True) -> list[BrainVolume]:
    root = find_brats_root(data)
    vols = [mni_volume(f)] if mni else []
    if root is not None:
        subjects = [d for d in sorted(root.glob("brats_*")) if d.name != HELD_OUT]
        for d in subjects[:max_subjects]:
            vols += [brats_volume(d, m, f) for m in MODALITIES]
    return vols


class SRPatchPool:
    """Patches of thin volumes with their thick stacks (single) or interpolated stacks (fusion).

    For every volume and axis ``a`` the thick stack along ``a`` is kept (moved to axis 0, so the
    network always upsamples its z); for fusion, the cubic B-spline interpolation of each thick
    stack back onto the thin grid is kept too.
    """

    def __init__(self, volumes: list[BrainVolume], factor: int, patch: tuple[int, int, int] = (32, 32, 32),
                 fusion: bool = False, profile: str = "box") -> None:
        self.f, self.patch, self.fusion = factor, patch, fusion
        self.items = []
        for v in volumes:
            entry = {"hr": v.image, "thick": [], "interp": [], "mask": v.mask}
            for a in range(3):
                t, taff = S.thick_slices(v.image, v.affine, factor, profile, axis=a)
                entry["thick"].append(t)
                if fusion:
                    up, _ = S.spline_upsample(t, taff, factor, axis=a)
                    entry["interp"].append(up)
            self.items.append(entry)

    def _corner(self, rng, shape, pz, py, px, mask):
        for _ in range(10):
            c = [int(rng.integers(0, max(1, s - p + 1))) for s, p in zip(shape, (pz, py, px))]
            if mask[c[0]:c[0] + pz, c[1]:c[1] + py, c[2]:c[2] + px].mean() > 0.3:
                break
        return c

    def batch(self, rng: np.random.Generator, device, batch_size: int = 4):
        f = self.f
        xs, ys = [], []
        for _ in range(batch_size):
            e = self.items[int(rng.integers(len(self.items)))]
            gain = float(rng.uniform(0.8, 1.25))
            if not self.fusion:
                a = int(rng.integers(3))
                hr = np.moveaxis(e["hr"], a, 0)
                th = np.moveaxis(e["thick"][a], a, 0)
                mk = np.moveaxis(e["mask"], a, 0)
                pz, py, px = self.patch
                pz = (pz // f) * f
                c = self._corner(rng, hr.shape, pz, py, px, mk)
                c[0] = (c[0] // f) * f
                x = th[c[0] // f:(c[0] + pz) // f, c[1]:c[1] + py, c[2]:c[2] + px][None]
                y = hr[c[0]:c[0] + pz, c[1]:c[1] + py, c[2]:c[2] + px][None]
            else:
                ref = int(rng.integers(3))
                other = int(rng.choice([o for o in range(3) if o != ref]))
                hr = np.moveaxis(e["hr"], ref, 0)
                mk = np.moveaxis(e["mask"], ref, 0)
                ins = [np.moveaxis(e["interp"][k], ref, 0) for k in (ref, other)]
                pz, py, px = self.patch
                c = self._corner(rng, hr.shape, pz, py, px, mk)
                sl = (slice(c[0], c[0] + pz), slice(c[1], c[1] + py), slice(c[2], c[2] + px))
                x = np.stack([i[sl] for i in ins])
                y = hr[sl][None]
            if rng.random() < 0.5:
                x, y = x[..., ::-1], y[..., ::-1]
            if rng.random() < 0.5:
                x, y = x[..., ::-1, :], y[..., ::-1, :]
            xs.append(np.ascontiguousarray(x) * gain)
            ys.append(np.ascontiguousarray(y) * gain)
        return (torch.from_numpy(np.stack(xs)).float().to(device), torch.from_numpy(np.stack(ys)).float().to(device))


def central_mse(f: int, fusion: bool):
    """MSE away from the patch borders (zero padding there is not what whole volumes see)."""
    def loss(pred, target):
        mz = 0 if fusion else f
        sl = (slice(None), slice(None), slice(mz, pred.shape[2] - mz or None), slice(4, -4), slice(4, -4))
        return torch.mean((pred[sl] - target[sl]) ** 2)
    return loss


def held_out_cases(f: int, data=None, modalities=MODALITIES) -> list[tuple[str, BrainVolume]]:
    root = find_brats_root(data)
    if root is None or not (root / HELD_OUT).is_dir():
        return []
    return [(m, brats_volume(root / HELD_OUT, m, f)) for m in modalities]


def coronal_stack(v: BrainVolume, f: int, profile: str = "box") -> tuple[np.ndarray, np.ndarray]:
    """A coronal thick stack of ``v`` as its own ``(z, y, x)`` array (z = the thick axis) + affine."""
    t, taff = S.thick_slices(v.image, v.affine, f, profile, axis=1)
    arr = np.ascontiguousarray(np.transpose(t, (1, 0, 2)))
    aff = taff[:, [1, 0, 2, 3]]
    return arr, aff


def evaluate_sr(single, fused, cases, f: int, profile: str = "box") -> dict[str, Any]:
    """PSNR inside the brain and SSIM on held-out volumes: spline, single SR, average, fused."""
    from ..methods.sr import sr_quality, super_resolve, super_resolve_stacks

    rows = []
    for label, v in cases:
        ax, ax_aff = S.thick_slices(v.image, v.affine, f, profile, axis=0)
        row = {"case": v.name, "shape": list(v.image.shape)}
        r1 = super_resolve(ax, (f, 1.0, 1.0), f, model=single if single is not None else "spline", affine=ax_aff)
        assert np.allclose(r1.affine, v.affine) and r1.image.shape == v.image.shape
        for key, img in (("spline", r1.baseline), ("single", r1.image)):
            q = sr_quality(v.image, img, v.mask)
            row[f"psnr_{key}"], row[f"ssim_{key}"] = q["psnr_db"], q["ssim"]
        cor, cor_aff = coronal_stack(v, f, profile)
        r2 = super_resolve_stacks([(ax, ax_aff), (cor, cor_aff)], (1.0, 1.0, 1.0),
                                  model=fused if fused is not None else "average")
        assert np.allclose(r2.affine, v.affine) and r2.image.shape == v.image.shape
        for key, img in (("average", r2.baseline), ("fused", r2.image)):
            q = sr_quality(v.image, img, v.mask)
            row[f"psnr_{key}"], row[f"ssim_{key}"] = q["psnr_db"], q["ssim"]
        rows.append(row)
    keys = [k for k in rows[0] if k.startswith(("psnr_", "ssim_"))] if rows else []
    summary = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    if rows:
        summary["single_minus_spline_db"] = summary["psnr_single"] - summary["psnr_spline"]
        summary["fused_minus_single_db"] = summary["psnr_fused"] - summary["psnr_single"]
        summary["fused_minus_average_db"] = summary["psnr_fused"] - summary["psnr_average"]
    return {"summary": summary, "cases": rows}


def figure(single, fused, case: BrainVolume, f: int, path: Path) -> None:
    """Sagittal and coronal reformats of the held-out case: truth, spline, single SR, fused."""
    from ..methods.sr import super_resolve, super_resolve_stacks

    ax, ax_aff = S.thick_slices(case.image, case.affine, f, "box", axis=0)
    r1 = super_resolve(ax, (f, 1.0, 1.0), f, model=single or "spline", affine=ax_aff)
    cor, cor_aff = coronal_stack(case, f)
    r2 = super_resolve_stacks([(ax, ax_aff), (cor, cor_aff)], (1.0, 1.0, 1.0), model=fused or "average")
    panels = [("truth (1 mm)", case.image), (f"cubic B-spline x{f}", r1.baseline), ("single-stack SR", r1.image),
              ("axial+coronal fused", r2.image)]
    xm = case.image.shape[2] // 2
    save_panels([(t, img[::-1, :, xm]) for t, img in panels], path, (12, 3.6), 1.0,
                f"{case.name}: sagittal reformat of an axial x{f} box-profile stack (held out)")


def save_panels(panels, path: Path, figsize, aspect: float, title: str, interpolation: str = "antialiased") -> None:
    """One row of grey 2D images ``[(title, image), ...]`` (0..1) saved as a PNG figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=figsize)
    for a, (name, img) in zip(np.atleast_1d(axes), panels):
        a.imshow(img, cmap="gray", vmin=0, vmax=1.0, aspect=aspect, interpolation=interpolation)
        a.set_title(name, fontsize=9)
        a.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_sr_brain(run_dir: str | Path, ship: bool = False, factor: int = 4, epochs: int = 10,
                 iters_per_epoch: int = 90, batch_size: int = 4, patch: int = 32, width: int = 24,
                 fused_width: int = 16, device: str = "auto", seed: int = 0, progress: bool = True,
                 data: str | None = None, max_subjects: int | None = None, mni: bool = True,
                 which: str = "both", eval_modalities: tuple[str, ...] = MODALITIES) -> dict[str, Any]:
    """Train the single-stack SR network then the axial+coronal fusion network (one at a time).

    ``which`` = ``"single"``, ``"fused"`` or ``"both"``. Each network has its own run folder
    (``run_dir/single``, ``run_dir/fused``: checkpoint per epoch, resumable). The card reports
    PSNR inside the brain and SSIM on the held-out BraTS subject.
    """
    from ..nets import MultiInputSRNet, SRNet
    from .presets import _finish, training_record
    from .trainer import TrainConfig, train

    if which not in ("single", "fused", "both"):
        raise ValueError(f"which must be single, fused or both, got {which!r}")
    run_dir = Path(run_dir)
    f = int(factor)
    vols = training_volumes(f, data, max_subjects, mni)
    if not vols:
        raise ValueError("no training volumes (MNI152 off and no BraTS folder)")
    if progress:
        print(f"{len(vols)} training volumes: " + "; ".join(v.name for v in vols), flush=True)
    cases = held_out_cases(f, data, eval_modalities)
    if not cases:
        raise ValueError(f"held-out subject {HELD_OUT} not found in the BraTS folder")
    cfg_kw = dict(epochs=epochs, iters_per_epoch=iters_per_epoch, lr=1e-3,
                  lr_milestones=(int(epochs * 0.6), int(epochs * 0.85)), seed=seed, device=device)
    nets: dict[str, Any] = {}
    records: dict[str, Any] = {}
    specs = {"single": ("sr_net", {"factor": f, "width": width, "n_lr": 3, "n_hr": 3}, False),
             "fused": ("sr_multi_input", {"n_inputs": 2, "width": fused_width, "n_stream": 3, "n_fused": 3}, True)}
    for kind in ("single", "fused"):
        arch, args, fusion = specs[kind]
        torch.manual_seed(seed)
        net = SRNet(**args) if kind == "single" else MultiInputSRNet(**args)
        if which in (kind, "both"):
            pool = SRPatchPool(vols, f, (patch, patch, patch), fusion=fusion)
            cfg = TrainConfig(**cfg_kw)
            t1 = time.time()
            hist = train(net, arch, args, lambda r, dev, p=pool: p.batch(r, dev, batch_size),
                         central_mse(f, fusion), cfg, run_dir / kind, progress=progress)
            records[kind] = training_record(cfg, hist, t1)
            del pool
        else:
            last = run_dir / kind / "model.pt"
            if not last.exists():      # evaluate against the baseline instead
                nets[kind] = (None, arch, args)
                continue
            from .. import zoo

            net = zoo.load(str(last), device="cpu")
            records[kind] = dict(zoo.card(str(last)).get("training", {}))
        net.eval()
        nets[kind] = (net, arch, args)
    if progress:
        print(f"evaluating on held-out {HELD_OUT}", flush=True)
    single, fused = nets["single"][0], nets["fused"][0]
    ev = evaluate_sr(single, fused, cases, f)
    figpath = run_dir / "sr-brain_heldout.png"
    figure(single, fused, cases[0][1], f, figpath)
    data_text = (f"(1) MNI152 T1 template (ICBM 2009c, 1 mm, shipped inside nilearn; "
                 f"napari_medlearn.samples.mni152_t1(resolution=1)); (2) BraTS 2013 subjects in "
                 f"../shared/data/brats-deepmedic except {HELD_OUT}, T1c and FLAIR (1 mm, skull stripped): "
                 + "; ".join(v.name for v in vols)
                 + f". Each volume cropped to the brain, thickened x{f} with a box slice profile along each "
                   f"of its three axes; random {patch}^3 thin patches (>= 30 % brain), in-plane flips, gain 0.8-1.25")
    licence = {"weights": "CC BY-NC-SA 3.0 (derived from BraTS data; non-commercial, share alike, attribution)",
               "training_data": "BraTS 2013 as redistributed with DeepMedic: CC BY-NC-SA 3.0 (License_CC_BY_NC_SA_3.0.txt "
                                "in each subject folder), cite: " + BRATS_CITATION + "; MNI152 ICBM 2009c template "
                                "(copyright McConnell Brain Imaging Centre, free use with attribution)"}
    eval_text = (f"held-out BraTS subject {HELD_OUT} (never trained on), " + ", ".join(eval_modalities)
                 + f": axial stack simulated x{f} with a box profile (imaging.slices.thick_slices), coronal stack "
                   "likewise along A; PSNR inside the brain mask (peak = the truth's maximum there) and mean slice "
                   "SSIM, against the 1 mm truth, through methods.super_resolve / super_resolve_stacks")
    common = {"paper": "O. Oktay et al., Multi-input Cardiac Image Super-Resolution Using Convolutional Neural "
                       "Networks, MICCAI 2016, LNCS 9902:246-254",
              "labels": {}, "licence": licence,
              "intended_use": "research use only, not for diagnosis"}
    cards = {}
    names = {"single": f"sr-brain-x{f}", "fused": f"sr-brain-x{f}-fused"}
    for kind in ("single", "fused"):
        if which not in (kind, "both"):
            continue
        net, arch, args = nets[kind]
        card = {
            "name": names[kind],
            "task": TASK_SINGLE if kind == "single" else TASK_MULTI,
            "priority": 10,
            "description": (f"Oktay et al. single-stack SR network, x{f} through-plane, trained on real 1 mm brain MR"
                            if kind == "single" else
                            "Oktay et al. Siamese multi-input SR network fusing two orthogonal x{f} stacks "
                            "(reference first) on real 1 mm brain MR".replace("{f}", str(f))),
            "architecture": arch, "arch_args": args, **common,
            "input": {"stack": "(z, y, x) thick along z" if kind == "single" else
                      "2 stacks (z, y, x) with affines, resampled by cubic B-spline onto the first stack's grid",
                      "factor": f, "slice_profile": "box (thick slice i covers thin slices i*f..i*f+f-1)",
                      "in_plane_spacing_mm": 1.0,
                      "intensity": "divided by the first stack's 99.5th percentile (methods.sr.intensity_scale), scaled back"},
            "training": {"data": data_text, "command": "medlearn train sr-brain --ship" + (f" --epochs {epochs}" if epochs != 10 else ""),
                         "loss": "mean squared error away from patch borders",
                         "batch_size": batch_size, **records[kind]},
            "evaluation": {"data": eval_text, "figure": "sr-brain_heldout.png", **ev},
        }
        cards[kind] = _finish(net, arch, args, card, run_dir / kind, ship)
    if ship:
        import shutil

        from .. import zoo

        shutil.copyfile(figpath, zoo.CARDS_DIR / figpath.name)
    if progress:
        print({k: round(v, 3) for k, v in ev["summary"].items()}, flush=True)
    return cards.get("fused") or cards.get("single")


def phantom_volumes(seeds, f: int, slice_thickness: float = 2.0, matrix: int = 128,
                    frames_per_phantom: int = 2, noise: float = 0.0) -> list[BrainVolume]:
    """Thin-slice cardiac cine phantoms (``slice_thickness`` mm): a few frames each as volumes.

    Noise-free by default: the anatomy, not Rician noise no method can predict, is what the
    through-plane upsampling must recover (and what PSNR against the thin phantom measures).
    """
    from ..imaging.volume import affine_from_spacing
    from ..samples.cardiac_phantom import cardiac_cine_phantom

    out = []
    for s in seeds:
        ph = cardiac_cine_phantom(seed=int(s), n_frames=8, slice_thickness=slice_thickness, matrix=matrix,
                                  noise=noise)
        aff = affine_from_spacing(tuple(float(v) for v in ph.spacing))
        for t in np.linspace(0, ph.image.shape[0] - 1, frames_per_phantom).round().astype(int):
            v = np.asarray(ph.image[t], np.float32)
            n = (v.shape[0] // f) * f
            v = v[:n] / intensity_scale(v[:n])
            out.append(BrainVolume(f"cardiac phantom seed {s} frame {t}", v, aff, v > 0.1))
    return out


def evaluate_phantoms(net, seeds, f: int, key: str) -> tuple[list[dict], dict[str, float]]:
    """Through-plane truth: the first frame of thin-slice phantoms of ``seeds`` thickened ``f`` x
    (box) and super-resolved by ``net``; PSNR/SSIM of cubic spline and of ``net`` (columns
    ``*_spline`` / ``*_{key}``) per case and their means with ``{key}_minus_spline_db``."""
    from ..methods.sr import sr_quality, super_resolve

    rows = []
    for v in phantom_volumes(seeds, f, frames_per_phantom=1):
        thick, taff = S.thick_slices(v.image, v.affine, f, "box")
        sp = tuple(float(s) for s in np.linalg.norm(taff[:3, :3], axis=0))
        r = super_resolve(thick, sp, f, model=net, affine=taff)
        q0, q1 = sr_quality(v.image, r.baseline, v.mask), sr_quality(v.image, r.image, v.mask)
        rows.append({"case": v.name, "psnr_spline": q0["psnr_db"], "ssim_spline": q0["ssim"],
                     f"psnr_{key}": q1["psnr_db"], f"ssim_{key}": q1["ssim"]})
    summary = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "case"}
    summary[f"{key}_minus_spline_db"] = summary[f"psnr_{key}"] - summary["psnr_spline"]
    return rows, summary


def run_sr_cardiac_phantom(run_dir: str | Path, ship: bool = False, factor: int = 4, epochs: int = 6,
                           iters_per_epoch: int = 60, batch_size: int = 4, patch: int = 32, width: int = 24,
                           n_train: int = 24, n_eval: int = 4, device: str = "auto", seed: int = 0,
                           progress: bool = True, data: str | None = None) -> dict[str, Any]:
    """Single-stack SR x``factor`` on thin-slice (2 mm) cardiac cine phantoms thickened with a box
    profile (2 mm -> 8 mm at x4); held-out phantoms of seeds 10000+ for the card (demo weights)."""
    from ..nets import SRNet
    from .presets import _finish, training_record
    from .trainer import TrainConfig, train

    if data is not None:
        raise ValueError("sr-cardiac-phantom trains on phantoms made on the fly; --data is not used")
    run_dir = Path(run_dir)
    f = int(factor)
    vols = phantom_volumes(range(seed, seed + n_train), f)
    if progress:
        print(f"{len(vols)} thin-slice phantom volumes from {n_train} phantoms", flush=True)
    pool = SRPatchPool(vols, f, (patch, patch, patch))
    args = {"factor": f, "width": width, "n_lr": 3, "n_hr": 3}
    torch.manual_seed(seed)
    net = SRNet(**args)
    cfg = TrainConfig(epochs=epochs, iters_per_epoch=iters_per_epoch, lr=1e-3,
                      lr_milestones=(int(epochs * 0.6), int(epochs * 0.85)), seed=seed, device=device)
    t1 = time.time()
    hist = train(net, "sr_net", args, lambda r, dev: pool.batch(r, dev, batch_size), central_mse(f, False),
                 cfg, run_dir, progress=progress)
    net.eval()
    rows, summary = evaluate_phantoms(net, range(10000, 10000 + n_eval), f, "single")
    name = f"sr-cardiac-x{f}-phantom"
    card = {
        "name": name, "task": TASK_SINGLE, "priority": 0,
        "description": f"Oktay et al. single-stack SR x{f} trained on thin-slice cardiac cine phantoms: a demo of "
                       "short-axis through-plane SR, not a model for real scans.",
        "architecture": "sr_net", "arch_args": args,
        "paper": "O. Oktay et al., Multi-input Cardiac Image Super-Resolution Using Convolutional Neural "
                 "Networks, MICCAI 2016, LNCS 9902:246-254",
        "labels": {},
        "input": {"stack": "(z, y, x) short-axis stack thick along z (cines frame by frame)", "factor": f,
                  "slice_profile": "box", "in_plane_spacing_mm": "1.3-1.8 (phantom)",
                  "intensity": "divided by the stack's 99.5th percentile, scaled back"},
        "training": {"data": f"{n_train} cardiac cine phantoms (napari_medlearn.samples.cardiac_phantom seeds "
                             f"{seed}..{seed + n_train - 1}, 2 mm slices, matrix 128, noise-free, 2 frames each), thickened "
                             f"x{f} with a box profile along each axis; random {patch}^3 patches",
                     "command": "medlearn train sr-cardiac-phantom --ship", "loss": "mean squared error",
                     "batch_size": batch_size, **training_record(cfg, hist, t1)},
        "evaluation": {"data": f"{n_eval} phantoms of seeds 10000..{10000 + n_eval - 1} (never trained on), first "
                               f"frame, noise-free, 2 mm -> {2 * f} mm box profile; PSNR where the image is above 10 % of its "
                               "99.5th percentile, SSIM of the slices; methods.super_resolve",
                       "summary": summary, "cases": rows},
        "licence": {"weights": "BSD-3-Clause", "training_data": "synthetic (generated by this package)"},
        "intended_use": "demonstration and testing; research use only, not for diagnosis",
    }
    if progress:
        print({k: round(v, 3) for k, v in summary.items()}, flush=True)
    return _finish(net, "sr_net", args, card, run_dir, ship)


# --------------------------------------------------------------------------------------------
# Cardiac: self-supervised from the in-plane resolution of real short-axis scans (SMORE-style)
# --------------------------------------------------------------------------------------------

from .acdc import ACDC_CITATION  # noqa: E402


def acdc_frames(root: Path, names: list[str]) -> list[tuple[str, np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """``(name, image / intensity_scale, labels, spacing)`` of the ED and ES frames of ``names``."""
    from .acdc import load_patient

    out = []
    for n in names:
        p = load_patient(root, n)
        for tag, img, lab in (("ED", p.ed_image, p.ed_labels), ("ES", p.es_image, p.es_labels)):
            out.append((f"{n} {tag}", (img / intensity_scale(img)).astype(np.float32), lab, p.spacing))
    return out


class InPlanePatchPool:
    """SMORE-style pairs from short-axis stacks: an in-plane axis plays the thin slice axis.

    A short-axis frame ``(Z, Y, X)`` is laid out as ``(A, B, Z)`` with ``A`` one in-plane axis
    (thickened ``factor`` x with the slice profile, as the scanner thickens z), ``B`` the other
    in-plane axis and the short-axis slices last (independent planes for a planar network).
    """

    def __init__(self, frames, factor: int, patch: tuple[int, int, int] = (32, 64, 4),
                 profile: str = "box") -> None:
        self.f, self.patch = factor, patch
        self.items = []
        for name, img, _lab, _sp in frames:
            for a in (1, 2):
                hr = np.ascontiguousarray(np.transpose(img, (a, 3 - a, 0)))
                n = (hr.shape[0] // factor) * factor
                hr = hr[:n]
                if n < patch[0] or hr.shape[1] < patch[1]:
                    continue
                thick, _ = S.thick_slices(hr, np.eye(4), factor, profile, axis=0)
                self.items.append((hr, thick))

    def batch(self, rng: np.random.Generator, device, batch_size: int = 8):
        f = self.f
        pa, pb, pz = self.patch
        xs, ys = [], []
        for _ in range(batch_size):
            hr, thick = self.items[int(rng.integers(len(self.items)))]
            for _ in range(10):   # patches with some signal (not all air)
                ca = int(rng.integers(0, (hr.shape[0] - pa) // f + 1)) * f
                cb = int(rng.integers(0, hr.shape[1] - pb + 1))
                zs = rng.choice(hr.shape[2], size=pz, replace=hr.shape[2] < pz)
                y = hr[ca:ca + pa, cb:cb + pb][:, :, zs]
                if y.mean() > 0.05:
                    break
            x = thick[ca // f:(ca + pa) // f, cb:cb + pb][:, :, zs]
            if rng.random() < 0.5:
                x, y = x[::-1], y[::-1]
            if rng.random() < 0.5:
                x, y = x[:, ::-1], y[:, ::-1]
            gain = float(rng.uniform(0.8, 1.25))
            xs.append(np.ascontiguousarray(x)[None] * gain)
            ys.append(np.ascontiguousarray(y)[None] * gain)
        return (torch.from_numpy(np.stack(xs)).float().to(device), torch.from_numpy(np.stack(ys)).float().to(device))


def planar_mse(f: int):
    """MSE away from the patch borders along the two planar axes (the third is independent)."""
    def loss(pred, target):
        sl = (slice(None), slice(None), slice(f, pred.shape[2] - f), slice(4, -4), slice(None))
        return torch.mean((pred[sl] - target[sl]) ** 2)
    return loss


def _heart_box(labels: np.ndarray, margin: int = 12) -> tuple[slice, slice]:
    ys, xs = np.nonzero(labels.max(axis=0))
    if ys.size == 0:
        return slice(None), slice(None)
    return (slice(max(0, ys.min() - margin), ys.max() + margin + 1),
            slice(max(0, xs.min() - margin), xs.max() + margin + 1))


def evaluate_in_plane(net, frames, f: int, profile: str = "box") -> dict[str, Any]:
    """Self-supervised test on held-out short-axis frames: each in-plane axis in turn thickened
    ``f`` x with ``profile`` and restored (planar network on the planes through it, the other
    in-plane axis as context) or cubic-B-spline interpolated; PSNR over the body
    (> 10 % of the 99.5th percentile) and over the heart's bounding box (+12 px), slice SSIM."""
    from ..methods.sr import _run_tiled, sr_quality

    rows = []
    for name, img, lab, _sp in frames:
        row = {"case": name}
        acc = {k: [] for k in ("psnr_spline", "psnr_sr", "psnr_heart_spline", "psnr_heart_sr", "ssim_spline",
                               "ssim_sr")}
        by, bx = _heart_box(lab)
        for a in (1, 2):
            hr = np.ascontiguousarray(np.transpose(img, (a, 3 - a, 0)))
            n = (hr.shape[0] // f) * f
            hr = hr[:n]
            thick, taff = S.thick_slices(hr, np.eye(4), f, profile, axis=0)
            base, _ = S.spline_upsample(thick, taff, f)
            gen = _run_tiled(net, thick[None], n, next(net.parameters()).device)
            while True:
                try:
                    next(gen)
                except StopIteration as stop:
                    sr = stop.value
                    break
            body = hr > 0.1
            heart = np.zeros_like(body)
            ha, hb = (by, bx) if a == 1 else (bx, by)
            heart[ha, hb] = True
            heart[n:] = False
            for key, est in (("spline", base), ("sr", sr)):
                q = sr_quality(hr, est, body)
                qh = sr_quality(hr, est, heart & body)
                acc[f"psnr_{key}"].append(q["psnr_db"])
                acc[f"ssim_{key}"].append(q["ssim"])
                acc[f"psnr_heart_{key}"].append(qh["psnr_db"])
        row.update({k: float(np.mean(v)) for k, v in acc.items()})
        rows.append(row)
    keys = [k for k in rows[0] if k != "case"]
    summary = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    summary["sr_minus_spline_db"] = summary["psnr_sr"] - summary["psnr_spline"]
    summary["heart_sr_minus_spline_db"] = summary["psnr_heart_sr"] - summary["psnr_heart_spline"]
    summary["cases_better_than_spline"] = float(np.mean([r["psnr_sr"] > r["psnr_spline"] for r in rows]))
    return {"summary": summary, "cases": rows}


def cardiac_figure(net, frame, f: int, path: Path) -> None:
    """A held-out real short-axis stack super-resolved x``f``: a long-axis reformat through the
    heart (the acquired stack, cubic B-spline, SR) at the true aspect ratio."""
    from ..methods.sr import super_resolve

    name, img, lab, sp = frame
    r = super_resolve(img, sp, f, model=net)
    by, bx = _heart_box(lab, 20)
    xm = (bx.start + bx.stop) // 2
    panels = [(f"acquired ({sp[0]:.0f} mm slices)", np.repeat(img, f, axis=0)),
              (f"cubic B-spline x{f}", r.baseline), (f"SR x{f} (self-supervised)", r.image)]
    save_panels([(t, vol[::-1, by, xm]) for t, vol in panels], path, (10, 4.2), r.spacing[0] / r.spacing[1],
                f"ACDC {name} (held out): vertical long-axis reformat of the short-axis stack", "nearest")


def run_sr_cardiac_acdc(run_dir: str | Path, ship: bool = False, factor: int = 4, epochs: int = 16,
                        iters_per_epoch: int = 300, batch_size: int = 8, width: int = 32,
                        device: str = "auto", seed: int = 0, progress: bool = True, data: str | None = None,
                        max_patients: int | None = None, n_eval: int | None = None) -> dict[str, Any]:
    """Self-supervised cardiac SR (SMORE-style): the planar Oktay network learns to undo an
    ``factor`` x box-profile thickening of one in-plane axis of real ACDC short-axis frames, and
    is applied through-plane. The patient split is the ``cardiac-acdc`` one (seed 0, 4 validation
    patients per group): the card's figures come from those 20 validation patients."""
    from ..nets import SRNet
    from .acdc import find_acdc_root, list_patients, stratified_split
    from .presets import _finish, training_record
    from .trainer import TrainConfig, train

    run_dir = Path(run_dir)
    f = int(factor)
    root = find_acdc_root(data)
    train_names, val_names = stratified_split(list_patients(root), n_val_per_group=4, seed=0)
    if max_patients is not None:
        train_names = train_names[:max_patients]
    if n_eval is not None:
        val_names = val_names[:n_eval]
    frames = acdc_frames(root, train_names)
    if progress:
        print(f"{len(frames)} ED/ES frames from {len(train_names)} ACDC training patients", flush=True)
    pool = InPlanePatchPool(frames, f)
    del frames
    args = {"factor": f, "width": width, "n_lr": 3, "n_hr": 3, "planar": True}
    torch.manual_seed(seed)
    net = SRNet(**args)
    cfg = TrainConfig(epochs=epochs, iters_per_epoch=iters_per_epoch, lr=1e-3,
                      lr_milestones=(int(epochs * 0.6), int(epochs * 0.85)), seed=seed, device=device)
    t1 = time.time()
    hist = train(net, "sr_net", args, lambda r, dev: pool.batch(r, dev, batch_size), planar_mse(f),
                 cfg, run_dir, progress=progress)
    pool = None     # the patches are not needed for the evaluation
    net.eval()
    if progress:
        print(f"evaluating on {len(val_names)} held-out patients", flush=True)
    val = acdc_frames(root, val_names)
    ev = evaluate_in_plane(net, val, f)
    # through-plane truth exists only for phantoms: thin (2 mm) noise-free phantoms, thickened x f
    _, phantom = evaluate_phantoms(net, range(10000, 10004), f, "sr")
    figpath = run_dir / f"sr-cardiac-x{f}_heldout.png"
    cardiac_figure(net, val[0], f, figpath)
    name = f"sr-cardiac-x{f}"
    card = {
        "name": name, "task": TASK_SINGLE, "priority": 5,
        "description": (f"Oktay et al. single-stack SR x{f} for short-axis cardiac stacks, planar (2D kernels in the "
                        "planes through the slice direction), trained self-supervised from the in-plane resolution "
                        "of real ACDC cine MRI (SMORE-style); applied to the (z, y) and (z, x) planes and averaged"),
        "architecture": "sr_net", "arch_args": args,
        "paper": ("O. Oktay et al., Multi-input Cardiac Image Super-Resolution Using Convolutional Neural Networks, "
                  "MICCAI 2016, LNCS 9902:246-254; self-supervision as in C. Zhao et al., SMORE: A Self-Supervised "
                  "Anti-Aliasing and Super-Resolution Algorithm for MRI Using Deep Learning, IEEE TMI 40(3):805-817, 2021"),
        "labels": {},
        "input": {"stack": "(z, y, x) short-axis stack thick along z (cines frame by frame)", "factor": f,
                  "slice_profile": f"box (thick slice = {f} thin slices); the network has learnt the ratio, "
                                   f"so a 10 mm stack becomes 2.5 mm whatever the in-plane spacing",
                  "in_plane_spacing_mm": "any (trained on ACDC's native 1.3-1.9 mm)",
                  "intensity": "divided by the stack's 99.5th percentile, scaled back"},
        "training": {"data": (f"ACDC (real short-axis cine MRI, 1.5 T and 3 T, University Hospital of Dijon): ED and ES frames of the "
                              f"{len(train_names)} training patients of the cardiac-acdc split (seed 0, 4 validation "
                              "patients per group held out). Each frame's y and x axes in turn are thickened "
                              f"x{f} with a box profile; the network learns to restore them from (thin axis, other "
                              "in-plane axis) planes, random 32x64 patches x 4 slices, flips, gain 0.8-1.25"),
                     "command": "medlearn train sr-cardiac-acdc --ship", "loss": "mean squared error away from "
                     "patch borders", "batch_size": batch_size, **training_record(cfg, hist, t1)},
        "evaluation": {
            "data": (f"the {len(val_names)} ACDC validation patients of the cardiac-acdc split (never trained on), "
                     "ED and ES: each in-plane axis thickened x{f} (box) and restored, PSNR over the body and over "
                     "the heart's bounding box, slice SSIM (real through-plane truth does not exist for these "
                     "scans). Second check with true through-plane truth: 4 thin-slice (2 mm) noise-free cardiac "
                     "phantoms (seeds 10000-10003) thickened to {t} mm, through methods.super_resolve"
                     ).replace("{f}", str(f)).replace("{t}", str(2 * f)),
            "figure": figpath.name, "held_out_patients": val_names,
            "summary": ev["summary"], "phantom_through_plane": phantom, "cases": ev["cases"]},
        "licence": {"weights": "research use only (ACDC terms); not for diagnosis",
                    "training_data": "ACDC (MICCAI 2017 challenge, University Hospital of Dijon), research use; "
                                     "any use must cite the paper below",
                    "citation": ACDC_CITATION},
        "intended_use": "research use only, not for diagnosis",
    }
    card = _finish(net, "sr_net", args, card, run_dir, ship)
    if ship:
        import shutil

        from .. import zoo

        shutil.copyfile(figpath, zoo.CARDS_DIR / figpath.name)
    if progress:
        print({k: round(v, 3) for k, v in ev["summary"].items()}, {k: round(v, 3) for k, v in phantom.items()},
              flush=True)
    return card
