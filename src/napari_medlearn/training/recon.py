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


def _peak_normalised(a: np.ndarray, percentile: float = 99.8) -> np.ndarray:
    """``a`` scaled so its ``percentile`` is 1 and clipped to ``[0, 1]`` (bright outliers saturate)."""
    a = np.clip(np.asarray(a, np.float32), 0, None)
    top = float(np.percentile(a, percentile)) if a.any() else 1.0
    return np.clip(a / max(top, 1e-6), 0, 1).astype(np.float32)


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


def dipy_t1_slice() -> list[tuple[str, np.ndarray]]:
    """dipy's real T1 coronal slice (``dipy.data.get_fnames(name="t1_coronal_slice")``, 256^2)."""
    try:
        from dipy.data import get_fnames
    except ImportError:
        return []
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = get_fnames(name="t1_coronal_slice")
    a = np.load(path).astype(np.float32)
    return [("dipy t1_coronal_slice (brain T1, coronal)", a / max(float(a.max()), 1e-6))]


def acdc_slices(names: Sequence[str], root: str | Path | None = None, size: int | None = 256,
                every: int = 1) -> list[tuple[str, np.ndarray]]:
    """Short-axis slices of ACDC patients (ED and ES frames, every ``every``-th slice).

    Real cine bSSFP from 1.5 T and 3 T scanners (University Hospital of Dijon); each volume is
    scaled so its 99.8th percentile is 1 (clipped), slices centred on a ``size`` canvas (centre
    crop when larger; native matrix when ``size`` is None).
    """
    from .acdc import find_acdc_root, load_patient

    root = find_acdc_root(root)
    out = []
    for name in names:
        p = load_patient(root, name)
        for frame, vol in (("ED", p.ed_image), ("ES", p.es_image)):
            vol = _peak_normalised(vol)
            for z in range(0, vol.shape[0], every):
                img = vol[z] if size is None else pad_to(vol[z], size)
                if img.max() > 0.2:
                    out.append((f"ACDC {name} {frame} z={z}", img))
    return out


def brats_slices(root: str | Path | None = None) -> list[tuple[str, np.ndarray]]:
    """Mid-tumour axial FLAIR and T1c slices of the four BraTS subjects in ``../shared`` (evaluation only).

    The files hold z-scored intensities (``*_subtrMeanDivStd``); they are shifted so the
    background is 0 and scaled to a 99.8th percentile of 1. Empty when the folder is absent.
    """
    from ..imaging.io import read_nifti
    from .deepmedic import BRATS_FILES, find_brats_root, list_brats_subjects

    try:
        root = find_brats_root(root)
    except FileNotFoundError:
        return []
    out = []
    for name in list_brats_subjects(root):
        d = root / name
        mask = np.asarray(read_nifti(d / BRATS_FILES["mask"]).data) > 0
        lab = np.asarray(read_nifti(d / BRATS_FILES["labels"]).data)
        z = int(np.argmax((lab > 0).sum(axis=(1, 2)))) if lab.any() else mask.shape[0] // 2
        for mod in ("FLAIR", "T1c"):
            vol = np.asarray(read_nifti(d / BRATS_FILES[mod]).data, np.float32)
            s = np.where(mask[z], vol[z] - vol[z][mask[z]].min(), 0)
            out.append((f"BraTS {d.name} {mod} z={z}", _peak_normalised(s)))
    return out


def held_out_real_mr(size: int = 256, acdc_names: Sequence[str] = (), acdc_root: str | Path | None = None,
                     ) -> list[tuple[str, str, np.ndarray]]:
    """Real MR images the recon-2d preset never trains on: ``(source, name, image)``.

    Brain T1 (dipy's coronal slice, a different subject and scanner from the MNI template),
    shoulder and abdomen (pydicom-data), brain FLAIR and T1c with tumours (BraTS, if present),
    cardiac cine of ACDC validation patients (mid-ventricular ED slice of each of
    ``acdc_names``). Sources that are not installed are skipped.
    """
    out = [("dipy", n, im) for n, im in dipy_t1_slice()]
    out += [("pydicom-data", n, im) for n, im in pydicom_mr_images(size)]
    out += [("BraTS", n, im) for n, im in brats_slices()]
    if acdc_names:
        from .acdc import find_acdc_root, load_patient

        root = find_acdc_root(acdc_root)
        for name in acdc_names:
            p = load_patient(root, name)
            vol = _peak_normalised(p.ed_image)
            z = vol.shape[0] // 2
            out.append(("ACDC", f"ACDC {name} ED z={z}", pad_to(vol[z], size)))
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
    """Magnitude slices in ``[0, 1]``, sampled as augmented, freshly undersampled batches.

    ``weights`` (one per slice, any scale) set how often each slice is drawn, so sources of
    different sizes can be balanced; ``crop`` takes a random ``crop x crop`` field of view of
    each augmented slice before simulating its acquisition (a smaller FOV is as real an
    acquisition as the whole canvas, and a quarter of the compute).
    """

    def __init__(self, slices: Sequence[np.ndarray], augment: dict | None = None,
                 weights: Sequence[float] | None = None, crop: int | None = None) -> None:
        self.slices = [np.asarray(s, np.float32) for s in slices]
        self.augment = dict(max_rot=np.pi, scale=(0.8, 1.25), shift=0.1, gamma=(0.7, 1.4), bias=0.2, noise=0.02)
        self.augment.update(augment or {})
        if weights is not None:
            w = np.asarray(weights, np.float64)
            if w.shape != (len(self.slices),) or np.any(w < 0) or w.sum() <= 0:
                raise ValueError("weights need one non-negative value per slice")
            self.p = w / w.sum()
        else:
            self.p = None
        self.crop = crop

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Indices of ``n`` slices drawn with the pool's weights."""
        return rng.choice(len(self.slices), size=n, p=self.p)

    def batch(self, rng: np.random.Generator, device, batch_size: int = 4):
        from .cardiac import augment_batch

        idx = self.draw(rng, batch_size)
        x = torch.from_numpy(np.stack([self.slices[i] for i in idx]))[:, None]
        x, _ = augment_batch(rng, x, torch.zeros_like(x), **self.augment)
        images = x[:, 0].clamp(min=0).numpy()
        if self.crop and self.crop < min(images.shape[-2:]):
            c = self.crop
            ys = rng.integers(0, images.shape[-2] - c + 1, size=batch_size)
            xs = rng.integers(0, images.shape[-1] - c + 1, size=batch_size)
            crops = []
            for im, y, x in zip(images, ys, xs):
                for _ in range(6):      # a field of view with something in it
                    if im[y:y + c, x:x + c].max() > 0.2:
                        break
                    y, x = rng.integers(0, im.shape[0] - c + 1), rng.integers(0, im.shape[1] - c + 1)
                crops.append(im[y:y + c, x:x + c])
            images = np.stack(crops)
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
CS_LAMBDAS = (1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2)


def compressed_sensing_l1_wavelet(kspace: np.ndarray, mask: np.ndarray, reference: np.ndarray,
                                  lambdas: Sequence[float] = CS_LAMBDAS, iters: int = 100):
    """The classical peer: SigPy's L1-wavelet CS, its lambda tuned *per image* against ``reference``.

    An oracle choice of lambda that favours the peer. Returns ``(image, lambda, seconds of that
    run)``. Needs ``sigpy`` (``pip install napari-medlearn[bench]``).
    """
    import sigpy.mri as mr

    from ..methods.recon import reconstruction_quality

    s = K.intensity_scale(K.zero_filled(kspace))
    y = (kspace / s)[None].astype(np.complex64)
    ones = np.ones_like(y)
    w = np.broadcast_to(mask, y.shape).astype(np.float32)
    best = None
    for lam in lambdas:
        t0 = time.perf_counter()
        x = mr.app.L1WaveletRecon(y, ones, lam, weights=w, max_iter=iters, show_pbar=False).run() * s
        dt = time.perf_counter() - t0
        q = reconstruction_quality(reference, np.asarray(x))["psnr_db"]
        if best is None or q > best[0]:
            best = (q, np.asarray(x), lam, dt)
    return best[1], best[2], best[3]


def have_sigpy() -> bool:
    try:
        import sigpy  # noqa: F401
    except ImportError:
        return False
    return True


def evaluate_recon(model, cases: Sequence[tuple[str, np.ndarray]], dynamic: bool = False,
                   accelerations: Sequence[float] = EVAL_ACCELERATIONS, seed: int = 1234,
                   progress: bool = False, compressed_sensing: bool = False) -> dict[str, Any]:
    """PSNR/SSIM of zero-filling and of ``model`` on fully sampled magnitude images.

    Every case is undersampled at each acceleration with a Cartesian mask of
    :data:`EVAL_CENTRE_LINES` centre lines (at most half the acquired lines for small images;
    seed ``seed + case index``; one mask per frame when ``dynamic``) and reconstructed by
    :func:`napari_medlearn.methods.reconstruct`. With ``compressed_sensing`` (2D only, needs
    SigPy) the tuned L1-wavelet peer runs on the same k-space. Returns per-case rows and a
    summary of means, as written into model cards.
    """
    from ..methods.recon import reconstruct, reconstruction_quality

    cs = compressed_sensing and not dynamic and have_sigpy()
    rows = []
    for i, (name, image) in enumerate(cases):
        for R in accelerations:
            centre = min(EVAL_CENTRE_LINES, K.n_lines_for(image.shape[-2], R) // 2)
            k, m = K.simulate_acquisition(image, R, "cartesian", centre, seed + i, per_frame=dynamic)
            res = reconstruct(k, m, model=model, dynamic=dynamic)
            zf = reconstruction_quality(image, res.zero_filled)
            rc = reconstruction_quality(image, res.image)
            row = {"case": name, "R": R, "psnr_zero_filled": zf["psnr_db"], "ssim_zero_filled": zf["ssim"],
                   "psnr_cascade": rc["psnr_db"], "ssim_cascade": rc["ssim"], "seconds": res.seconds}
            if cs:
                x, lam, dt = compressed_sensing_l1_wavelet(k, m, image)
                q = reconstruction_quality(image, x)
                row.update({"psnr_cs": q["psnr_db"], "ssim_cs": q["ssim"], "cs_lambda": lam, "cs_seconds": dt})
            rows.append(row)
            if progress:
                extra = f", CS {row['psnr_cs']:.2f} dB" if cs else ""
                print(f"  {name} R={R:g}: PSNR {zf['psnr_db']:.2f} -> {rc['psnr_db']:.2f} dB{extra}, "
                      f"SSIM {zf['ssim']:.3f} -> {rc['ssim']:.3f}", flush=True)
    summary: dict[str, Any] = {"n_cases": len(cases)}
    keys = ["psnr_zero_filled", "ssim_zero_filled", "psnr_cascade", "ssim_cascade"]
    if cs:
        keys += ["psnr_cs", "ssim_cs"]
    for R in accelerations:
        sel = [r for r in rows if r["R"] == R]
        for key in keys:
            summary[f"R{R:g}_{key}"] = float(np.mean([r[key] for r in sel]))
        summary[f"R{R:g}_psnr_gain_db"] = summary[f"R{R:g}_psnr_cascade"] - summary[f"R{R:g}_psnr_zero_filled"]
        if cs:
            summary[f"R{R:g}_psnr_gain_over_cs_db"] = summary[f"R{R:g}_psnr_cascade"] - summary[f"R{R:g}_psnr_cs"]
            summary[f"R{R:g}_min_psnr_gain_over_cs_db"] = float(min(r["psnr_cascade"] - r["psnr_cs"] for r in sel))
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


def run_recon_2d(run_dir: str | Path, ship: bool = False, epochs: int = 30, iters_per_epoch: int = 100,
                 width: int = 32, n_cascades: int = 5, n_layers: int = 5, batch_size: int = 4,
                 size: int = 256, crop: int | None = 160, mni_share: float = 0.35,
                 device: str = "auto", seed: int = 0, progress: bool = True,
                 n_eval: int = 3, data: str | None = None, max_train_slices: int | None = None,
                 max_acdc_patients: int | None = None, compressed_sensing: bool = True) -> dict[str, Any]:
    """2D D{n_layers}-C{n_cascades} on real MR of two kinds; held-out real MR of five kinds for the card.

    Training: MNI152 T1 axial slices (brain, nilearn) outside a held-out block, and the ED/ES
    short-axis slices of the ACDC training patients (cardiac cine bSSFP; the cardiac-acdc
    preset's split, so its validation patients stay unseen here too; ``data`` is the ACDC
    folder). ``mni_share`` of the draws come from MNI. Each example is a random ``crop`` field
    of view of an augmented slice. The card evaluates the held-out MNI block and ACDC
    validation patients, and sources never trained on: dipy's T1 slice, pydicom-data's
    shoulder and abdomen, BraTS FLAIR/T1c; with SigPy installed the tuned CS peer runs beside.
    Defaults (width 32, 3000 batches of 4) take about an hour on 2 CPU cores; the paper's
    width is 64. Tests shrink everything.
    """
    from ..nets import DeepCascade
    from .acdc import ACDC_CITATION, find_acdc_root, list_patients, stratified_split
    from .presets import _finish, training_record
    from .trainer import TrainConfig, train

    run_dir = Path(run_dir)
    t0 = time.time()
    mni_train, mni_held, train_z, held_z = mni_axial_slices(size)
    if max_train_slices:
        mni_train, train_z = mni_train[:max_train_slices], train_z[:max_train_slices]
    root = find_acdc_root(data)
    train_names, val_names = stratified_split(list_patients(root), 4, 0)   # cardiac-acdc's split
    if max_acdc_patients is not None:
        train_names, val_names = train_names[:max_acdc_patients], val_names[:max(1, max_acdc_patients // 2)]
    acdc = [im for _, im in acdc_slices(train_names, root, size)]
    weights = [mni_share / len(mni_train)] * len(mni_train) + [(1 - mni_share) / len(acdc)] * len(acdc)
    pool = SlicePool2D(mni_train + acdc, weights=weights, crop=crop)
    if progress:
        print(f"training slices: {len(mni_train)} MNI152 + {len(acdc)} ACDC ({len(train_names)} patients); "
              f"held out: MNI z {held_z[0]}..{held_z[-1]}, {len(val_names)} ACDC patients, other sources",
              flush=True)
    args = cascade_args(2, width, n_cascades, n_layers)
    torch.manual_seed(seed)
    net = DeepCascade(**args)
    cfg = TrainConfig(epochs=epochs, iters_per_epoch=iters_per_epoch, lr=1e-3,
                      lr_milestones=(int(epochs * 0.6), int(epochs * 0.85)), seed=seed, device=device)
    hist = train(PackedInput(net), "deep_cascade", args, lambda rng, dev: pool.batch(rng, dev, batch_size),
                 _mse, cfg, run_dir, progress=progress)
    net.eval()

    pick = np.linspace(0, len(mni_held) - 1, min(n_eval, len(mni_held))).round().astype(int)
    same = [(f"MNI152 T1 axial z={held_z[i]}", mni_held[i]) for i in sorted(set(pick))]
    # one ACDC validation patient per group (the split lists them group by group)
    acdc_eval = val_names[::4] if max_acdc_patients is None else val_names[:1]
    other = held_out_real_mr(size, acdc_names=acdc_eval, acdc_root=root)
    same += [(n, im) for src, n, im in other if src == "ACDC"]
    unseen = [(n, im) for src, n, im in other if src != "ACDC"]
    if progress:
        print(f"evaluating on {len(same)} held-out images of the training sources and {len(unseen)} of "
              "sources never trained on", flush=True)
    ev = evaluate_recon(net, same, progress=progress, compressed_sensing=compressed_sensing)
    ev_unseen = (evaluate_recon(net, unseen, seed=4321, progress=progress, compressed_sensing=compressed_sensing)
                 if unseen else None)
    name = "recon-cascade-mr"
    cs_note = ("; compressed sensing = SigPy L1-wavelet, 100 iterations, lambda tuned per image against "
               "the reference over " + ", ".join(f"{v:g}" for v in CS_LAMBDAS) + " (an oracle that favours the peer)")
    card = {
        "name": name,
        "task": "mri-reconstruction-2d",
        "priority": 20,
        "description": f"Deep cascade D{n_layers}-C{n_cascades} (width {width}) for 2D Cartesian MR "
                       "reconstruction, trained on real brain (MNI152 T1) and cardiac (ACDC cine) MR.",
        "architecture": "deep_cascade", "arch_args": args, "paper": _PAPER,
        "labels": {}, "output": "complex image, the input's shape (a reconstruction has no label classes)",
        "input": _input_spec(False),
        "training": {
            "data": f"(1) MNI152 T1 template (ICBM 2009c nonlinear symmetric, 1 mm, shipped inside nilearn; "
                    f"napari_medlearn.samples.mni152_t1(resolution=1)): {len(mni_train)} axial slices "
                    f"z={train_z[0]}..{train_z[-1]} excluding {HELD_OUT_Z[0] - GAP}..{HELD_OUT_Z[1] + GAP - 1}; "
                    f"(2) ACDC cardiac cine MRI: ED and ES short-axis slices of the {len(train_names)} training "
                    f"patients of the cardiac-acdc split ({len(acdc)} slices); {mni_share:.0%} of draws from (1). "
                    f"Slices centred on a {size}x{size} canvas, each example a random {crop}x{crop} field of view",
            "command": "medlearn train recon-2d --ship",
            "loss": "mean squared error of the real/imaginary channels (the paper's objective)",
            "augmentation": "rotation +-180 deg, scale 0.8-1.25, shifts, flips, gamma 0.7-1.4, smooth bias "
                            "field up to +-20 %, Gaussian noise of sd up to 0.02; smooth "
                            "random phase (amplitude 0-pi) on half the examples; a fresh mask per example "
                            "(R 3.5-9, Cartesian random 80 % / equispaced 20 %, 6-12 centre lines)",
            "batch_size": batch_size,
            "acdc_split": {"train": train_names, "validation": val_names},
            **training_record(cfg, hist, t0),
        },
        "evaluation": {
            "data": f"held out from the training sources: MNI152 T1 axial slices "
                    f"{', '.join(c[0].split('=')[1] for c in same if c[0].startswith('MNI'))} of the block "
                    f"z={HELD_OUT_Z[0]}..{HELD_OUT_Z[1] - 1} ({GAP} slices of gap either side) and the mid "
                    f"ED slice of ACDC validation patients {', '.join(acdc_eval)}; magnitude images, Cartesian "
                    f"random masks, {EVAL_CENTRE_LINES} centre lines, seeds 1234+; methods.reconstruct" + cs_note,
            **ev,
        },
        "licence": {"weights": "research use only (trained on ACDC, whose terms require research use and "
                               "the citation below); MNI152 part: free use with attribution",
                    "training_data": "MNI152 ICBM 2009c template as distributed with nilearn (copyright "
                                     "McConnell Brain Imaging Centre); ACDC (University Hospital of Dijon), "
                                     "research use, cite: " + ACDC_CITATION},
        "intended_use": "demonstration and research use only, not for diagnosis",
    }
    if ev_unseen is not None:
        card["evaluation"]["unseen_sources"] = {
            "data": "real MR from sources never trained on: dipy's t1_coronal_slice (brain T1, 256^2), "
                    "pydicom-data MR2_UNCR (shoulder T1 SE) and MR-SIEMENS (abdomen T1 VIBE) resized to "
                    f"{size}^2, BraTS 2013 FLAIR and T1c mid-tumour axial slices of four subjects "
                    "(../shared/data/brats-deepmedic, evaluation only); seeds 4321+" + cs_note,
            **ev_unseen}
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
