"""Training data, evaluation and presets for the deep-cascade reconstruction networks.

J. Schlemper et al., "A Deep Cascade of Convolutional Neural Networks for Dynamic MR Image
Reconstruction", IEEE TMI 37(2):491-503, 2018: fully sampled images are undersampled on the fly
(a fresh Cartesian mask for every example), the network sees the undersampled k-space and is
trained with the mean squared error against the fully sampled image.

- ``recon-2d`` (:func:`run_recon_2d`): 2D D5-C5 on real MR images that ship inside nilearn:
  axial slices of the MNI152 T1 template (ICBM 2009c, 1 mm). A block of axial slices in the
  middle of the brain (plus a gap on either side) is held out for the card's evaluation; when
  pydicom-data is installed its real MR files (shoulder, abdomen), never trained on, are
  evaluated too.
- ``recon-2dt`` (:func:`run_recon_2dt`): 2D+t D5-C5 with k-space data sharing on short-axis
  slices of the cardiac cine phantom (:mod:`napari_medlearn.samples.cardiac_phantom`), an
  independent mask per frame; held-out phantoms of seeds 10000+ for the card.

Augmentation: rotation, scaling, shifts, flips, intensity gamma, bias field and noise
(:func:`napari_medlearn.training.cardiac.augment_batch`), a smooth random phase on half the
examples (so complex k-space of real scans is in range), accelerations drawn from 3.5-9 and
both sampling patterns. Inputs and targets are divided by the zero-filled image's
:func:`~napari_medlearn.imaging.kspace.intensity_scale`, exactly as at inference.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..imaging import kspace as K

#: held-out block of MNI152 1 mm axial slices (z indices) and the gap excluded around it
HELD_OUT_Z = (92, 112)
GAP = 6
EVAL_ACCELERATIONS = (4, 8)
EVAL_CENTRE_LINES = 8


class PackedInput(nn.Module):
    """Adapter for the training loop, which calls ``model(x)``: ``x = (kspace, mask)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(*x)


def pad_to(image: np.ndarray, size: int) -> np.ndarray:
    """Centre ``(y, x)`` in a ``size x size`` zero canvas (cropping the centre if larger)."""
    out = np.zeros((size, size), np.float32)
    h, w = image.shape
    hh, ww = min(h, size), min(w, size)
    y0, x0 = (size - hh) // 2, (size - ww) // 2
    sy, sx = (h - hh) // 2, (w - ww) // 2
    out[y0:y0 + hh, x0:x0 + ww] = image[sy:sy + hh, sx:sx + ww]
    return out


def mni_axial_slices(size: int = 256, zoom: float = 1.0
                     ) -> tuple[list[np.ndarray], list[np.ndarray], list[int], list[int]]:
    """MNI152 T1 1 mm axial slices padded to ``size``, each scaled to a peak of 1.

    Returns ``(train, held_out, train_z, held_out_z)``: slices with at least 5 % brain; the
    held-out block :data:`HELD_OUT_Z` and ``GAP`` slices either side of it are never trained on.
    ``zoom`` < 1 shrinks the slices in-plane first (small test images of the whole brain).
    """
    from ..samples import mni152_t1

    vol = mni152_t1(resolution=1).data
    if zoom != 1.0:
        from scipy import ndimage as ndi

        vol = np.clip(ndi.zoom(vol, (1.0, zoom, zoom), order=1, grid_mode=True, mode="grid-constant"), 0, None)
    peak = float(vol.max())
    train, held, tz, hz = [], [], [], []
    lo, hi = HELD_OUT_Z
    for z in range(vol.shape[0]):
        s = vol[z] / peak
        if (s > 0.05).mean() < 0.05:
            continue
        img = pad_to(s, size)
        img /= max(float(img.max()), 1e-6)
        if lo <= z < hi:
            held.append(img)
            hz.append(z)
        elif z < lo - GAP or z >= hi + GAP:
            train.append(img)
            tz.append(z)
    return train, held, tz, hz


def pydicom_mr_images(size: int = 256) -> list[tuple[str, np.ndarray]]:
    """Real MR images from the pydicom-data package (if installed), resized to ``size``.

    ``MR2_UNCR.dcm`` (shoulder, T1 SE, 1024^2) and ``MR-SIEMENS-DICOM-WithOverlays.dcm``
    (abdomen, T1 VIBE, 484^2); each scaled to a peak of 1. Empty when pydicom-data is absent.
    """
    try:
        import data_store  # the import name of pydicom-data
    except ImportError:
        return []
    import pydicom
    from skimage.transform import resize

    folder = Path(data_store.__file__).parent / "data"
    out = []
    for name, label in (("MR2_UNCR.dcm", "pydicom-data MR2_UNCR (shoulder T1 SE)"),
                        ("MR-SIEMENS-DICOM-WithOverlays.dcm", "pydicom-data MR-SIEMENS (abdomen T1 VIBE)")):
        path = folder / name
        if not path.exists():
            continue
        a = pydicom.dcmread(path).pixel_array.astype(np.float32)
        a = resize(a, (size, size), order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)
        out.append((label, a / max(float(a.max()), 1e-6)))
    return out


# ----- examples -------------------------------------------------------------------------------
def random_acquisition(rng: np.random.Generator, image: np.ndarray, per_frame: bool,
                       r_range=(3.5, 9.0), phase_prob: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training example: ``(kspace / s, mask, target / s)`` with ``s`` the zero-filled scale.

    ``image`` is a magnitude ``(y, x)`` or ``(t, y, x)``; a smooth phase (amplitude up to pi) is
    added with probability ``phase_prob``; the pattern is Cartesian (80 %) or equispaced, the
    acceleration uniform in ``r_range``, 6-12 centre lines (at most half the lines).
    """
    amp = float(rng.uniform(0, np.pi)) if rng.random() < phase_prob else 0.0
    target = image.astype(np.complex64)
    if amp > 0:
        target = target * np.exp(1j * K.smooth_phase(image.shape, amp, rng)).astype(np.complex64)
    R = float(rng.uniform(*r_range))
    pattern = "cartesian" if rng.random() < 0.8 else "equispaced"
    ny = image.shape[-2]
    centre = int(min(rng.integers(6, 13), K.n_lines_for(ny, R) // 2))
    mask = K.sampling_mask(image.shape if per_frame else image.shape[-2:], R, pattern, centre, rng)
    k = K.undersample(K.fft2c(target), mask)
    s = K.intensity_scale(K.ifft2c(k))
    return k / s, np.broadcast_to(mask, image.shape), target / s


def _to_batch(examples, device) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    from ..nets.cascade import to_channels

    k = to_channels(torch.from_numpy(np.stack([e[0] for e in examples])))
    m = torch.from_numpy(np.stack([e[1] for e in examples]).astype(np.float32))[:, None]
    y = to_channels(torch.from_numpy(np.stack([e[2] for e in examples])))
    return (k.to(device), m.to(device)), y.to(device)


class SlicePool2D:
    """Magnitude slices in ``[0, 1]``, sampled as augmented, freshly undersampled batches."""

    def __init__(self, slices: Sequence[np.ndarray], augment: dict | None = None) -> None:
        self.slices = [np.asarray(s, np.float32) for s in slices]
        self.augment = dict(max_rot=np.pi, scale=(0.8, 1.25), shift=0.1, gamma=(0.7, 1.4), bias=0.2, noise=0.02)
        self.augment.update(augment or {})

    def batch(self, rng: np.random.Generator, device, batch_size: int = 4):
        from .cardiac import augment_batch

        idx = rng.integers(0, len(self.slices), size=batch_size)
        x = torch.from_numpy(np.stack([self.slices[i] for i in idx]))[:, None]
        x, _ = augment_batch(rng, x, torch.zeros_like(x), **self.augment)
        images = x[:, 0].clamp(min=0).numpy()
        return _to_batch([random_acquisition(rng, im, per_frame=False) for im in images], device)


class CinePool:
    """Short-axis cine slices ``(t, y, x)`` in ``[0, 1]`` with per-frame masks."""

    def __init__(self, cines: Sequence[np.ndarray]) -> None:
        self.cines = [np.asarray(c, np.float32) for c in cines]

    def batch(self, rng: np.random.Generator, device, batch_size: int = 1):
        out = []
        for i in rng.integers(0, len(self.cines), size=batch_size):
            c = self.cines[i]
            if rng.random() < 0.5:
                c = c[:, ::-1]
            if rng.random() < 0.5:
                c = c[:, :, ::-1]
            if rng.random() < 0.5:
                c = c[::-1]                      # the cycle played backwards
            c = np.roll(c, int(rng.integers(0, c.shape[0])), axis=0)
            c = np.clip(c * rng.uniform(0.9, 1.1), 0, None) ** rng.uniform(0.8, 1.25)
            out.append(random_acquisition(rng, np.ascontiguousarray(c, np.float32), per_frame=True))
        return _to_batch(out, device)


def cine_slices(seeds: Sequence[int], matrix: int | None = 128, n_frames: int | None = None,
                slices_per_phantom: int = 4) -> list[np.ndarray]:
    """Mid-ventricular and neighbouring short-axis slices ``(t, y, x)`` of cardiac phantoms, peak 1."""
    from ..samples.cardiac_phantom import cardiac_cine_phantom

    out = []
    for s in seeds:
        ph = cardiac_cine_phantom(seed=int(s), matrix=matrix, n_frames=n_frames)
        img = ph.image / max(float(ph.image.max()), 1e-6)
        nz = img.shape[1]
        zs = np.linspace(1, nz - 2, slices_per_phantom).round().astype(int) if nz > 2 else [0]
        for z in sorted(set(int(v) for v in zs)):
            out.append(np.ascontiguousarray(img[:, z]))
    return out


# ----- evaluation -----------------------------------------------------------------------------
def evaluate_recon(model, cases: Sequence[tuple[str, np.ndarray]], dynamic: bool = False,
                   accelerations: Sequence[float] = EVAL_ACCELERATIONS, seed: int = 1234,
                   progress: bool = False) -> dict[str, Any]:
    """PSNR/SSIM of zero-filling and of ``model`` on fully sampled magnitude images.

    Every case is undersampled at each acceleration with a Cartesian mask of
    :data:`EVAL_CENTRE_LINES` centre lines (at most half the acquired lines for small images;
    seed ``seed + case index``; one mask per frame when ``dynamic``) and reconstructed by
    :func:`napari_medlearn.methods.reconstruct`. Returns per-case rows and a summary of means,
    as written into model cards.
    """
    from ..methods.recon import reconstruct, reconstruction_quality

    rows = []
    for i, (name, image) in enumerate(cases):
        for R in accelerations:
            centre = min(EVAL_CENTRE_LINES, K.n_lines_for(image.shape[-2], R) // 2)
            k, m = K.simulate_acquisition(image, R, "cartesian", centre, seed + i, per_frame=dynamic)
            res = reconstruct(k, m, model=model, dynamic=dynamic)
            zf = reconstruction_quality(image, res.zero_filled)
            rc = reconstruction_quality(image, res.image)
            rows.append({"case": name, "R": R, "psnr_zero_filled": zf["psnr_db"], "ssim_zero_filled": zf["ssim"],
                         "psnr_cascade": rc["psnr_db"], "ssim_cascade": rc["ssim"], "seconds": res.seconds})
            if progress:
                print(f"  {name} R={R:g}: PSNR {zf['psnr_db']:.2f} -> {rc['psnr_db']:.2f} dB, "
                      f"SSIM {zf['ssim']:.3f} -> {rc['ssim']:.3f}", flush=True)
    summary: dict[str, Any] = {"n_cases": len(cases)}
    for R in accelerations:
        sel = [r for r in rows if r["R"] == R]
        for key in ("psnr_zero_filled", "ssim_zero_filled", "psnr_cascade", "ssim_cascade"):
            summary[f"R{R:g}_{key}"] = float(np.mean([r[key] for r in sel]))
        summary[f"R{R:g}_psnr_gain_db"] = summary[f"R{R:g}_psnr_cascade"] - summary[f"R{R:g}_psnr_zero_filled"]
    return {"summary": summary, "cases": rows}


# ----- presets --------------------------------------------------------------------------------
def cascade_args(dims: int, width: int, n_cascades: int = 5, n_layers: int = 5,
                 share_widths: Sequence[int] = (1, 2, 3, 4)) -> dict[str, Any]:
    args: dict[str, Any] = {"dims": dims, "n_cascades": n_cascades, "n_layers": n_layers, "width": width}
    if dims == 3:
        args["share_widths"] = list(share_widths)
    return args


def _mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean((pred - target) ** 2)


def _input_spec(dynamic: bool) -> dict[str, Any]:
    return {
        "axes": ("2D+t complex sequences (t, y, x), one mask per frame" if dynamic else
                 "2D complex images (y, x); stacks (z, y, x) slice by slice") +
                "; Cartesian lines along y (axis -2), readout along x",
        "channels": ["real", "imaginary"],
        "intensity": "k-space divided by the largest magnitude of its zero-filled image "
                     "(imaging.kspace.intensity_scale); the output is scaled back",
        "fft": "orthonormal, centred (norm='ortho')",
        "trained_accelerations": "3.5-9, Cartesian random (Gaussian variable density) or equispaced, "
                                 "6-12 centre lines",
    }


def run_recon_2d(run_dir: str | Path, ship: bool = False, epochs: int = 18, iters_per_epoch: int = 100,
                 width: int = 16, n_cascades: int = 5, n_layers: int = 5, batch_size: int = 4,
                 size: int = 256, device: str = "auto", seed: int = 0, progress: bool = True,
                 n_eval: int = 5, data: str | None = None, max_train_slices: int | None = None) -> dict[str, Any]:
    """2D D{n_layers}-C{n_cascades} on MNI152 T1 axial slices; held-out slices for the card.

    Defaults (width 16, 1800 batches of 4) take about 15-20 min on 2 CPU cores; the paper's
    width is 64. Tests shrink ``width``, ``size`` and the epochs.
    """
    from ..nets import DeepCascade
    from .presets import _finish, training_record
    from .trainer import TrainConfig, train

    if data is not None:
        raise ValueError("recon-2d trains on the MNI152 template inside nilearn; --data is not used")
    run_dir = Path(run_dir)
    t0 = time.time()
    train_slices, held, train_z, held_z = mni_axial_slices(size)
    if max_train_slices:
        train_slices, train_z = train_slices[:max_train_slices], train_z[:max_train_slices]
    pool = SlicePool2D(train_slices)
    if progress:
        print(f"{len(train_slices)} training slices, {len(held)} held out (z {held_z[0]}..{held_z[-1]})", flush=True)
    args = cascade_args(2, width, n_cascades, n_layers)
    torch.manual_seed(seed)
    net = DeepCascade(**args)
    cfg = TrainConfig(epochs=epochs, iters_per_epoch=iters_per_epoch, lr=1e-3,
                      lr_milestones=(int(epochs * 0.6), int(epochs * 0.85)), seed=seed, device=device)
    hist = train(PackedInput(net), "deep_cascade", args, lambda rng, dev: pool.batch(rng, dev, batch_size),
                 _mse, cfg, run_dir, progress=progress)
    net.eval()
    pick = np.linspace(0, len(held) - 1, min(n_eval, len(held))).round().astype(int)
    cases = [(f"MNI152 T1 axial z={held_z[i]}", held[i]) for i in sorted(set(pick))]
    if progress:
        print(f"evaluating on {len(cases)} held-out slices", flush=True)
    ev = evaluate_recon(net, cases, progress=progress)
    extra = pydicom_mr_images(size)
    ev_other = evaluate_recon(net, extra, seed=4321, progress=progress) if extra else None
    name = "recon-cascade-mni"
    card = {
        "name": name,
        "task": "mri-reconstruction-2d",
        "priority": 10,
        "description": f"Deep cascade D{n_layers}-C{n_cascades} (width {width}) for 2D Cartesian MR "
                       "reconstruction, trained on MNI152 T1 slices (real MR, nilearn).",
        "architecture": "deep_cascade", "arch_args": args, "paper": _PAPER,
        "labels": {}, "output": "complex image, the input's shape (a reconstruction has no label classes)",
        "input": _input_spec(False),
        "training": {
            "data": f"MNI152 T1 template (ICBM 2009c nonlinear symmetric, 1 mm, shipped inside nilearn; "
                    f"napari_medlearn.samples.mni152_t1(resolution=1)): {len(train_slices)} axial slices "
                    f"z={train_z[0]}..{train_z[-1]} excluding {HELD_OUT_Z[0] - GAP}..{HELD_OUT_Z[1] + GAP - 1}, "
                    f"centred on a {size}x{size} canvas",
            "command": "medlearn train recon-2d --ship",
            "loss": "mean squared error of the real/imaginary channels (the paper's objective)",
            "augmentation": "rotation +-180 deg, scale 0.8-1.25, shifts, flips, gamma 0.7-1.4, smooth bias "
                            "field up to +-20 %, Gaussian noise of sd up to 0.02; smooth "
                            "random phase (amplitude 0-pi) on half the examples; a fresh mask per example "
                            "(R 3.5-9, Cartesian random 80 % / equispaced 20 %, 6-12 centre lines)",
            "batch_size": batch_size,
            **training_record(cfg, hist, t0),
        },
        "evaluation": {
            "data": f"MNI152 T1 axial slices z={', '.join(c[0].split('=')[1] for c in cases)} from the held-out "
                    f"block z={HELD_OUT_Z[0]}..{HELD_OUT_Z[1] - 1} (never trained on, {GAP} slices of gap either "
                    f"side), magnitude images on a {size}x{size} canvas; Cartesian random masks, "
                    f"{EVAL_CENTRE_LINES} centre lines, seeds 1234+; methods.reconstruct",
            **ev,
        },
        "licence": {"weights": "BSD-3-Clause",
                    "training_data": "MNI152 ICBM 2009c template as distributed with nilearn (copyright "
                                     "McConnell Brain Imaging Centre; free use with attribution)"},
        "intended_use": "demonstration and research use only, not for diagnosis",
    }
    if ev_other is not None:
        card["evaluation"]["out_of_domain"] = {
            "data": "real MR DICOM files of pydicom-data (never trained on), resized to "
                    f"{size}x{size}; seeds 4321+", **ev_other}
    return _finish(net, "deep_cascade", args, card, run_dir, ship)


def run_recon_2dt(run_dir: str | Path, ship: bool = False, epochs: int = 9, iters_per_epoch: int = 60,
                  width: int = 16, n_cascades: int = 5, n_layers: int = 5, share_widths=(1, 2, 3, 4),
                  matrix: int = 128, n_train: int = 24, n_eval: int = 4, n_eval_full: int = 2,
                  frames: tuple[int, int] = (12, 20),
                  device: str = "auto", seed: int = 0, progress: bool = True,
                  data: str | None = None) -> dict[str, Any]:
    """2D+t D{n_layers}-C{n_cascades} with data sharing on cardiac cine phantoms (demo weights).

    ``n_train`` phantoms (seeds ``seed..``), 4 slices each, ``frames`` frames per cycle drawn per
    phantom; the card evaluates held-out phantoms (seeds 10000+) at the same matrix and at the
    sample data's default matrix. Defaults (width 16, 540 sequences) take about 15-20 min on 2
    CPU cores.
    """
    from ..nets import DeepCascade
    from .presets import _finish, training_record
    from .trainer import TrainConfig, train

    if data is not None:
        raise ValueError("recon-2dt trains on cardiac phantoms made on the fly; --data is not used")
    run_dir = Path(run_dir)
    t0 = time.time()
    rng = np.random.default_rng(seed)
    cines = []
    for s in range(n_train):
        cines += cine_slices([seed + s], matrix=matrix, n_frames=int(rng.integers(frames[0], frames[1] + 1)))
    pool = CinePool(cines)
    if progress:
        print(f"{len(cines)} training cine slices from {n_train} phantoms", flush=True)
    args = cascade_args(3, width, n_cascades, n_layers, share_widths)
    torch.manual_seed(seed)
    net = DeepCascade(**args)
    cfg = TrainConfig(epochs=epochs, iters_per_epoch=iters_per_epoch, lr=1e-3,
                      lr_milestones=(int(epochs * 0.6), int(epochs * 0.85)), seed=seed, device=device)
    hist = train(PackedInput(net), "deep_cascade", args, lambda r, dev: pool.batch(r, dev, 1),
                 _mse, cfg, run_dir, progress=progress)
    net.eval()
    eval_seeds = list(range(10000, 10000 + n_eval))
    cases = [(f"phantom seed {s} mid slice ({matrix}^2)", cine_slices([s], matrix=matrix, slices_per_phantom=1)[0])
             for s in eval_seeds]
    if progress:
        print(f"evaluating on {len(cases)} held-out phantoms", flush=True)
    ev = evaluate_recon(net, cases, dynamic=True, progress=progress)
    full = [(f"phantom seed {s} mid slice (default matrix)", cine_slices([s], matrix=None, slices_per_phantom=1)[0])
            for s in eval_seeds[:n_eval_full]]
    ev_full = evaluate_recon(net, full, dynamic=True, seed=2345, progress=progress) if full else None
    name = "recon-cascade-cine-phantom"
    card = {
        "name": name,
        "task": "mri-reconstruction-2dt",
        "priority": 10,
        "description": f"Deep cascade D{n_layers}-C{n_cascades} 2D+t (width {width}, data sharing "
                       f"{list(share_widths)}) trained on cardiac cine phantoms: a demo of dynamic "
                       "reconstruction, not a model for real scans.",
        "architecture": "deep_cascade", "arch_args": args, "paper": _PAPER,
        "labels": {}, "output": "complex image sequence, the input's shape (no label classes)",
        "input": _input_spec(True),
        "training": {
            "data": f"{n_train} cardiac cine phantoms (napari_medlearn.samples.cardiac_phantom seeds "
                    f"{seed}..{seed + n_train - 1}, matrix {matrix}, {frames[0]}-{frames[1]} frames), 4 "
                    f"short-axis slices each ({len(cines)} sequences)",
            "command": "medlearn train recon-2dt --ship",
            "loss": "mean squared error of the real/imaginary channels",
            "augmentation": "flips, time reversal, cyclic time shift, intensity scale and gamma; smooth random "
                            "phase on half the examples; an independent mask per frame per example "
                            "(R 3.5-9, Cartesian random 80 % / equispaced 20 %, 6-12 centre lines)",
            **training_record(cfg, hist, t0),
        },
        "evaluation": {
            "data": f"mid short-axis slice of {n_eval} phantoms of seeds {eval_seeds[0]}..{eval_seeds[-1]} "
                    "(never trained on), whole cycle, one Cartesian random mask per frame, "
                    f"{EVAL_CENTRE_LINES} centre lines; methods.reconstruct(dynamic=True)",
            **ev,
        },
        "licence": {"weights": "BSD-3-Clause", "training_data": "synthetic (generated by this package)"},
        "intended_use": "demonstration and testing; research use only, not for diagnosis",
    }
    if ev_full is not None:
        card["evaluation"]["default_matrix"] = {
            "data": f"{len(full)} of the held-out phantoms at the sample data's default matrix (about "
                    "200-260 pixels, 20-30 frames); seeds 2345+ for the masks", **ev_full}
    return _finish(net, "deep_cascade", args, card, run_dir, ship)


_PAPER = ("J. Schlemper, J. Caballero, J. V. Hajnal, A. N. Price, D. Rueckert, A Deep Cascade of "
          "Convolutional Neural Networks for Dynamic MR Image Reconstruction, IEEE TMI 37(2):491-503, 2018")
