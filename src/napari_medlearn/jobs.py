"""One case of each job, from files to files.

A job reads its input files (geometry kept: :mod:`napari_medlearn.imaging.io`), runs the
method (:mod:`napari_medlearn.methods`, the same code the widgets run) and writes its outputs
into a folder, all of them or none (:func:`napari_medlearn.imaging.atomic.staged_outputs`),
returning a :class:`JobResult`: the files written, one row for a
cohort table (units in the column names) and the lines a person reads. ``medlearn <job>``
runs one case (:mod:`napari_medlearn.cli`); :mod:`napari_medlearn.batch` runs a cohort.
Unusable input raises :class:`InputError` (a ``ValueError``) naming the file and the problem,
before anything is written. No napari or Qt here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

Progress = Callable[[int, int, str], Any]


class InputError(ValueError):
    """An input file that cannot be used; the message names it."""


@dataclass
class JobResult:
    """What one job wrote and found.

    Attributes
    ----------
    outputs
        The files written, by role.
    row
        The case's figures for a cohort table (e.g. ``LVEDV_mL``), flat and JSON-able.
    lines
        A short human summary (what the CLI prints).
    notes
        Information about how the inputs were read (e.g. a scan resampled onto another's grid).
    warnings
        Doubts about the input a reviewer should see (e.g. scans that look not skull-stripped).
    """

    outputs: dict[str, Path] = field(default_factory=dict)
    row: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _ready(out: Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _all_or_none(out: str | Path, overwrite: bool):
    """Where a job writes its outputs: a hidden folder inside ``out`` whose files move into ``out``
    once all are written; a failure (disk full, read-only, a signal) leaves ``out`` as it was.
    Without ``overwrite`` a file of the same name that appeared meanwhile is not replaced."""
    from .imaging.atomic import staged_outputs

    return staged_outputs(out, overwrite=overwrite)


def _final(out: str | Path, stage: Path, paths: dict[str, Path]) -> dict[str, Path]:
    """The final names of files written into ``stage``."""
    return {k: Path(out) / Path(p).relative_to(stage) for k, p in paths.items()}


def read_single_volume(path: str | Path):
    """The one image a file or a DICOM folder holds, as a Volume (a folder of several series is refused)."""
    from .imaging.io import read_volume

    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such file or directory")
    vol = read_volume(p)
    if isinstance(vol, list):
        if len(vol) != 1:
            names = ", ".join(str(v.meta.get("series", i)) for i, v in enumerate(vol))
            raise InputError(f"{path} holds {len(vol)} series ({names}); give a folder with one")
        vol = vol[0]
    return vol


def _one_frame_as_3d(vol):
    """A 3D scan stored as a 4D file of one frame (``x, y, z, 1``) as the 3D volume it is."""
    from .imaging.volume import Volume

    if vol.axes[:1] == ("t",) and vol.data.shape[0] == 1 and len(vol.spatial_axes) == 3:
        meta = {k: v for k, v in vol.meta.items() if k != "time_step"}
        return Volume(vol.data[0], vol.affine, vol.axes[1:], meta)
    return vol




def write_cardiac_outputs(out: Path, vol, result, source: str) -> dict[str, Path]:
    """labels.nii.gz (input geometry), measures.csv and measures.json for one case."""
    from .imaging.io import write_nifti
    from .methods.report import measures_row, write_measures_csv

    labels_vol = vol.with_data(result.labels, structures="cardiac")    # reopens in the cardiac colours
    paths = {"labels": out / "labels.nii.gz", "csv": out / "measures.csv", "json": out / "measures.json"}
    write_nifti(labels_vol, paths["labels"], overwrite=True)
    row = measures_row(result.measures, result.qc, result.model_name, result.model_sha256, source)
    write_measures_csv([row], paths["csv"])
    from .zoo import write_json_atomic

    write_json_atomic({"source": source, "model": result.model_name, "model_sha256": result.model_sha256,
                       "backend": result.backend, "ED_frame": result.ed, "ES_frame": result.es, "qc": result.qc,
                       "measures": result.measures}, paths["json"])
    return paths




def _write_npy_atomic(array, path: Path) -> None:
    import numpy as np

    from .imaging.atomic import atomic_path

    with atomic_path(path) as tmp:
        np.save(tmp, array)




RECON_OUTPUTS = ("reconstruction.nii.gz", "zero_filled.nii.gz", "mask.nii.gz", "reconstruction.npy", "recon.json")


def write_recon_outputs(out: Path, result, volume=None, reference=None, source: str = "") -> dict:
    """NIfTIs (reconstruction and zero-filled as ``result.display`` shows them: magnitudes, or
    real parts for a signed source; mask) in ``volume``'s geometry (1 mm when None), the complex
    reconstruction as .npy, and recon.json with model and figures."""
    import numpy as np

    from .imaging.io import write_nifti
    from .imaging.volume import Volume, affine_from_spacing
    from .methods.recon import reconstruction_quality
    from .zoo import write_json_atomic

    if volume is None:
        axes = {"yx": ("y", "x"), "zyx": ("z", "y", "x"), "tyx": ("t", "y", "x"),
                "tzyx": ("t", "z", "y", "x")}[result.axes]
        volume = Volume(np.zeros(result.image.shape, np.float32),
                        affine_from_spacing((1.0,) * min(3, sum(a != "t" for a in axes))), axes, {})
    report = {"source": source, "model": result.model_name, "model_sha256": result.model_sha256,
              "axes": result.axes, "acceleration": result.acceleration, "seconds": result.seconds,
              "offset": result.offset, "outputs": "real parts" if result.signed else "magnitudes"}
    if reference is not None:     # figures first: a reference they cannot be made against writes nothing
        report["zero_filled"] = reconstruction_quality(reference, result.zero_filled_display)
        report["reconstruction"] = reconstruction_quality(reference, result.display)
    write_nifti(volume.with_data(result.display), out / "reconstruction.nii.gz", overwrite=True)
    write_nifti(volume.with_data(result.zero_filled_display), out / "zero_filled.nii.gz", overwrite=True)
    write_nifti(volume.with_data(result.mask.astype(np.uint8)), out / "mask.nii.gz", overwrite=True)
    _write_npy_atomic(result.image, out / "reconstruction.npy")
    write_json_atomic(report, out / "recon.json")
    return report




LESION_CLASS_FILES = {1: "necrotic_core", 2: "oedema", 4: "enhancing"}
LESION_OUTPUTS = ("labels.nii.gz", "volumes.csv", "lesions.json", "uncertainty.nii.gz",
                  "mutual_information.nii.gz") + tuple(
    f"probability_{n}.nii.gz" for n in LESION_CLASS_FILES.values())


def write_lesion_outputs(out: Path, ref, result, source: str) -> dict[str, Path]:
    """labels.nii.gz and probability_<class>.nii.gz with ``ref``'s geometry, volumes.csv, lesions.json;
    for an ensemble also uncertainty.nii.gz (entropy of the mean, 0..1), mutual_information.nii.gz and
    one volumes.csv row per member."""
    import csv

    from .imaging.atomic import atomic_path
    from .imaging.io import write_nifti
    from .zoo import write_json_atomic

    paths = {"labels": out / "labels.nii.gz", "csv": out / "volumes.csv", "json": out / "lesions.json"}
    write_nifti(ref.with_data(result.labels, structures="brats"), paths["labels"], overwrite=True)
    for k, value in enumerate(result.label_values):
        if value in LESION_CLASS_FILES:
            p = out / f"probability_{LESION_CLASS_FILES[value]}.nii.gz"
            write_nifti(ref.with_data(result.probabilities[k].astype("float32")), p, overwrite=True)
            paths[f"probability_{value}"] = p
    rows = [{**{k: round(v, 3) for k, v in result.volumes_ml.items()}, "model": result.model,
             "model_sha256": result.model_sha256, "source": source}]
    member_volumes = result.extras.get("member_volumes_ml", {})
    for name, vols in member_volumes.items():
        rows.append({**{k: round(v, 3) for k, v in vols.items()}, "model": f"member {name}", "model_sha256": "",
                     "source": source})
    if result.uncertainty is not None:
        for key, arr in (("uncertainty", result.uncertainty),
                         ("mutual_information", result.extras.get("mutual_information"))):
            if arr is not None:
                paths[key] = out / f"{key}.nii.gz"
                write_nifti(ref.with_data(arr.astype("float32")), paths[key], overwrite=True)
    with atomic_path(paths["csv"]) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    write_json_atomic({"source": source, "model": result.model, "model_sha256": result.model_sha256,
                       "backend": result.backend, "members": list(result.members), "member_volumes_ml": member_volumes,
                       "channels": list(result.channel_names), "label_values": list(result.label_values),
                       "postprocess": result.extras.get("postprocess"),
                       "warnings": list(result.extras.get("warnings") or []),
                       "volumes_ml": result.volumes_ml, "seconds": round(result.seconds, 2)}, paths["json"])
    return paths




def _mm(spacing) -> str:
    return "x".join(f"{s:.3g}" for s in spacing) + " mm"




def read_modalities(flair: str | Path, t1c: str | Path, mask_path: str | Path | None, model: str,
                    notes: list[str] | None = None):
    """FLAIR + T1c (+ mask) files -> ``(channels in the model's order, reference Volume, mask)``.
    Scans on other grids than the FLAIR's are resampled onto it by their scanner coordinates
    (said in ``notes``)."""
    notes = [] if notes is None else notes
    import numpy as np

    from . import zoo
    from .imaging.volume import resample_onto

    given = {"FLAIR": flair, "T1c": t1c}
    vols = {}
    for name, path in given.items():
        v = _one_frame_as_3d(read_single_volume(path))
        if len(v.spatial_axes) != 3 or v.data.ndim != 3:
            raise InputError(f"{path}: the {name} image is {v.data.ndim}-D {v.data.shape}; lesion segmentation "
                           "needs 3D volumes")
        vols[name] = v
    ref = vols["FLAIR"]
    for name, v in list(vols.items()):
        # series of one session on different grids (a 2D FLAIR, a 3D T1c) meet on the FLAIR's grid
        # through their scanner coordinates; the outputs keep the FLAIR's geometry
        try:
            vols[name] = resample_onto(v, ref, order=1, what=f"the {name} image", onto="the FLAIR image")
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if vols[name] is not v:
            notes.append(f"{name} {v.data.shape} at {_mm(v.spacing)} resampled onto the FLAIR grid {ref.data.shape} "
                  f"at {_mm(ref.spacing)} (scanner coordinates, trilinear)")
    c = zoo.card(model)
    if c.get("kind") == "ensemble":
        c = zoo.card(c["members"][0])
    wanted = list(c.get("input", {}).get("channels", ["FLAIR", "T1c"]))
    missing = [ch for ch in wanted if ch not in vols]
    if missing:
        raise InputError(f"model {model} needs the modalities {', '.join(wanted)}; this command gives FLAIR "
                       f"and T1c (missing: {', '.join(missing)})")
    mask = None
    if mask_path:
        m = _one_frame_as_3d(read_single_volume(mask_path))
        if m.data.ndim != 3 or len(m.spatial_axes) != 3:
            raise InputError(f"{mask_path}: the brain mask is {m.data.ndim}-D {m.data.shape}; it needs to be 3D")
        try:
            on_ref = resample_onto(m, ref, order=0, what="the brain mask", onto="the FLAIR image")
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if on_ref is not m:
            notes.append(f"brain mask {mask_path} resampled onto the FLAIR grid (nearest voxel)")
        mask = on_ref.data
    return np.stack([vols[ch].data for ch in wanted]), ref, mask




PLANE_OUTPUTS = ("scores.csv", "boxes.csv", "best_frames.csv", "planes.json", "saliency.npy", "saliency.nii.gz",
                 "best_*.png")   # one best_<plane>.png per plane found


def existing_outputs(folder: Path, names) -> list[Path]:
    """The files of ``names`` (shell patterns allowed, as in PLANE_OUTPUTS) already in ``folder``."""
    folder = Path(folder)
    found: list[Path] = []
    for n in names:
        found += sorted(folder.glob(n)) if any(c in n for c in "*?[") else [folder / n] if (folder / n).exists() else []
    return found
VIDEO_SUFFIXES = (".npy", ".tif", ".tiff", ".gif", ".png", ".jpg", ".jpeg", ".mp4", ".avi", ".mov")


def read_video(path: str | Path):
    """An ultrasound video for ``detect-planes``: ``(array, Volume or None)``.

    ``.npy`` (t, H, W[, 3]); TIFF/GIF stacks and single PNG/JPEG frames (imageio); MP4/AVI/MOV
    when imageio has a video plugin (ffmpeg or PyAV); a DICOM clip as ultrasound machines
    store them (multi-frame, colour or palette; :func:`napari_medlearn.imaging.io.read_dicom_video`);
    NIfTI, NRRD and DICOM series through :func:`napari_medlearn.imaging.io.read_volume` (the
    first axis is time).
    """
    import numpy as np

    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such file or directory")
    suffix = p.suffix.lower()
    if p.is_file() and suffix == ".npy":
        try:
            return np.load(p, allow_pickle=False), None
        except Exception as e:   # pickled objects, truncated files
            raise InputError(f"{path}: cannot read as a NumPy array: {type(e).__name__}: {e}") from None
    if p.is_file() and suffix in VIDEO_SUFFIXES:
        import imageio.v3 as iio

        try:
            arr = np.asarray(iio.imread(p, index=None) if suffix in (".tif", ".tiff", ".gif") else iio.imread(p))
        except Exception as e:
            extra = " (video files need imageio's ffmpeg or PyAV plugin; or convert to .npy/TIFF)" \
                if suffix in (".mp4", ".avi", ".mov") else ""
            raise InputError(f"{path}: cannot read: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                           f"{extra}") from None
        return arr, None
    from .imaging.io import is_dicom_video, read_dicom_video

    if p.is_file() and is_dicom_video(p):
        try:
            return read_dicom_video(p)[0], None
        except ValueError as e:
            raise InputError(str(e)) from None
    vol = read_single_volume(path)
    return np.asarray(vol.data), vol


def write_plane_outputs(out: Path, result, frames, volume=None, source: str = "") -> dict:
    """scores.csv (posteriors per frame), boxes.csv, best_frames.csv + best_<class>.png,
    saliency.npy (+ saliency.nii.gz in the input's geometry) and planes.json."""
    import csv

    import numpy as np

    from .imaging.atomic import atomic_path
    from .zoo import write_json_atomic

    names = list(result.class_names)
    with atomic_path(out / "scores.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame", "predicted", "confidence"] + names)
        for i in range(result.frames):
            w.writerow([i, names[int(result.predicted[i])], f"{result.confidence[i]:.6f}"]
                       + [f"{v:.6f}" for v in result.probabilities[i]])
    with atomic_path(out / "boxes.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame", "class", "y0", "x0", "y1", "x1"])
        for i in range(result.frames):
            if np.isfinite(result.boxes[i]).all():
                w.writerow([i, names[int(result.predicted[i])]] + [f"{v:.1f}" for v in result.boxes[i]])
    gray = frames        # (t, H, W) grayscale, as methods.planes.validate_video returns
    best_rows = []
    for name, i in sorted(result.best_frames.items(), key=lambda kv: kv[1]):
        png = "best_" + "".join(c if c.isalnum() else "_" for c in name).strip("_") + ".png"
        img = gray[i].astype(np.float64)
        lo, hi = float(img.min()), float(img.max())
        img8 = np.zeros(img.shape, np.uint8) if hi <= lo else ((img - lo) / (hi - lo) * 255).round().astype(np.uint8)
        from PIL import Image

        with atomic_path(out / png) as tmp:
            Image.fromarray(img8).save(tmp, format="PNG")
        best_rows.append({"class": name, "frame": i,
                          "probability": float(result.probabilities[i, names.index(name)]), "png": png})
    with atomic_path(out / "best_frames.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["class", "frame", "probability", "png"])
        w.writeheader()
        w.writerows(best_rows)
    if result.saliency is not None:
        _write_npy_atomic(result.saliency, out / "saliency.npy")
        if volume is not None and volume.data.shape[:3] == result.saliency.shape:
            from .imaging.io import write_nifti

            write_nifti(volume.with_data(result.saliency), out / "saliency.nii.gz", overwrite=True)
    report = {"source": source, "model": result.model, "model_sha256": result.model_sha256,
              "frames": result.frames, "seconds": round(result.seconds, 3),
              "frames_per_second": round(result.frames / result.seconds, 2) if result.seconds > 0 else None,
              "class_names": names, "best_frames": best_rows,
              "frames_per_class": {n: int((result.predicted == k).sum()) for k, n in enumerate(names)}}
    write_json_atomic(report, out / "planes.json")
    return report


CARDIAC_OUTPUTS = ("labels.nii.gz", "measures.csv", "measures.json")


def read_cine(image: str | Path | Sequence[str | Path]):
    """A cine from one file or DICOM folder, or from several 3D frames of one grid (e.g. ACDC's
    ED and ES frames) stacked in the order given."""
    import numpy as np

    from .imaging.volume import Volume

    if isinstance(image, (str, Path)):
        return read_single_volume(image)
    frames = [read_single_volume(p) for p in image]
    first = frames[0]
    for path, v in zip(image, frames):
        if v.data.ndim != 3 or len(v.spatial_axes) != 3:
            raise InputError(f"{path}: a {v.data.ndim}-D image; frames of a cine are 3D stacks (z, y, x)")
        if v.data.shape != first.data.shape or not np.allclose(v.affine, first.affine, atol=1e-3):
            raise InputError(f"{path} and {image[0]} are not frames of one cine (grids differ); name the "
                             "image to use in a manifest CSV")
    # frames from separate files (ED, ES) are not evenly spaced in time: no time step
    meta = {k: v for k, v in first.meta.items() if k != "time_step"}
    return Volume(np.stack([v.data for v in frames]), first.affine, ("t",) + tuple(first.axes), meta)


def segment_heart_job(out: str | Path, image: str | Path | Sequence[str | Path], *, model=None,
                      device: str = "auto", progress: Progress | None = None, overwrite: bool = True,
                      backend: str = "auto") -> JobResult:
    """A short-axis cine (NIfTI file, DICOM folder, or several 3D frames of one grid) ->
    labels.nii.gz, measures.csv, measures.json (all of them or none: :func:`_all_or_none`)."""
    from .methods import segment_heart
    from .methods.report import measures_row

    vol = read_cine(image)
    image = image if isinstance(image, (str, Path)) else ";".join(map(str, image))
    if len(vol.spatial_axes) != 3:
        raise InputError(f"{image}: a {vol.data.ndim}-D image; cardiac segmentation needs a short-axis stack or cine")
    res = segment_heart(vol.data, vol.spacing, model=model, device=device, progress=progress, backend=backend)
    row = measures_row(res.measures, res.qc, res.model_name, res.model_sha256, str(image))
    with _all_or_none(out, overwrite) as stage:
        staged = write_cardiac_outputs(stage, vol, res, str(image))
        staged.update(_dicom_results(stage, image, "cardiac", vol.with_data(res.labels), row, res.model_name,
                                     res.model_sha256))
        paths = _final(out, stage, staged)
    m = res.measures
    lines = [f"LVEDV {m['LVEDV_mL']:.1f} mL  LVESV {m['LVESV_mL']:.1f} mL  LVEF {m['LVEF_pct']:.1f} %  "
             f"LVM {m['LVM_g']:.1f} g  RVEDV {m['RVEDV_mL']:.1f} mL  RVEF {m['RVEF_pct']:.1f} %"]
    lines += [f"QC: {f['reason']}" for f in res.qc]
    lines.append(f"wrote {paths['labels']}, {paths['csv']}, {paths['json']}")
    lines += _dicom_line(paths)
    return JobResult(paths, row, lines)


def _dicom_line(paths: dict) -> list[str]:
    dicom = [Path(p).name for p in paths.values() if str(p).endswith(".dcm")]
    return [f"wrote DICOM {', '.join(dicom)}"] if dicom else []


def _dicom_results(out, image, kind: str, labels, figures, model: str, sha256: str, uncertainty=None) -> dict:
    """DICOM in, DICOM out: SEG + SR (+ parametric map) beside the NIfTI/CSV outputs (imaging.dicom_sr)."""
    from .imaging import dicom_sr
    from .imaging.dicom_seg import Algorithm, _version

    source = dicom_sr.dicom_source(image) if isinstance(image, (str, Path)) else None
    if not source:
        return {}
    # the weights' sha256 identifies the model; the version is the software's that ran it
    algorithm = Algorithm(str(model or ""), f"napari-medlearn {_version()}", str(sha256 or ""))
    if kind == "cardiac":
        paths = dicom_sr.write_cardiac_dicom(out, source, labels, figures, algorithm)
    else:
        paths = dicom_sr.write_lesion_dicom(out, source, labels, figures, algorithm, uncertainty)
    return paths


def reconstruct_job(out: str | Path, source: str | Path, *, mask: str | Path | None = None,
                    kspace_key: str = "kspace", mask_key: str = "mask", acceleration: float = 4.0,
                    pattern: str = "cartesian", centre_lines: int = 8, seed: int = 0, dynamic: bool = False,
                    model=None, device: str = "auto", progress: Progress | None = None,
                    overwrite: bool = True) -> JobResult:
    """k-space (.npy/.h5, with its mask) or an image (its acquisition simulated) -> RECON_OUTPUTS
    (all of them or none)."""
    import numpy as np

    from .imaging import kspace as K
    from .methods import reconstruct
    from .methods.recon import simulate

    notes: list[str] = []
    volume = reference = None
    offset = 0.0
    if Path(source).suffix.lower() in K.KSPACE_SUFFIXES:
        k, m = K.read_kspace(source, mask, kspace_key, mask_key)
        if m is None:
            raise InputError(f"{source}: no mask; give --mask (a .npy or .h5 file that broadcasts to the k-space)")
        described = str(source)
    else:
        if mask is not None:
            raise InputError("--mask is for k-space input (.npy/.h5); an image gets a simulated mask")
        volume = read_single_volume(source)
        reference = np.asarray(volume.data, dtype=np.float32)
        if reference.ndim < 2 or reference.ndim > 4:
            raise InputError(f"{source}: a {reference.ndim}-D image; need (y, x), (z, y, x), (t, y, x) "
                             "or (t, z, y, x)")
        if reference.size and np.all(np.isfinite(reference)) and float(reference.max()) == float(reference.min()):
            raise InputError(f"{source}: the image is constant ({float(reference.min()):g} everywhere); "
                             "there is nothing to acquire or reconstruct")
        k, m, offset = simulate(reference, acceleration, pattern, centre_lines, seed, per_frame=dynamic)
        if offset:
            notes.append(f"{source} has negative values (z-scored?): simulated the acquisition of the image minus "
                         f"its minimum {offset:.4g} and added it back; outputs are real parts, not magnitudes")
        described = f"{source} (simulated: {pattern}, R={acceleration:g}, {centre_lines} centre lines, seed {seed})"
    res = reconstruct(k, m, model=model, device=device, dynamic=dynamic, offset=offset, progress=progress)
    out = Path(out)
    with _all_or_none(out, overwrite) as stage:
        report = write_recon_outputs(stage, res, volume, reference, described)
    line = f"R={res.acceleration:.2f} model {res.model_name} {res.seconds:.2f} s"
    row = {"acceleration": round(res.acceleration, 4), "model": res.model_name, "model_sha256": res.model_sha256,
           "seconds": round(res.seconds, 3), "source": described}
    if reference is not None:
        zf, rc = report["zero_filled"], report["reconstruction"]
        line += (f"  zero-filled PSNR {zf['psnr_db']:.2f} dB SSIM {zf['ssim']:.3f}  "
                 f"cascade PSNR {rc['psnr_db']:.2f} dB SSIM {rc['ssim']:.3f}")
        row.update(zero_filled_PSNR_dB=round(zf["psnr_db"], 3), zero_filled_SSIM=round(zf["ssim"], 4),
                   PSNR_dB=round(rc["psnr_db"], 3), SSIM=round(rc["ssim"], 4))
    paths = {n: out / n for n in RECON_OUTPUTS}
    return JobResult(paths, row, [line, f"wrote {', '.join(str(p) for p in paths.values())}"], notes)


def segment_lesions_job(out: str | Path, flair: str | Path, t1c: str | Path, *, mask: str | Path | None = None,
                        model=None, decision: str | None = None, device: str = "auto",
                        progress: Progress | None = None, overwrite: bool = True, backend: str = "auto") -> JobResult:
    """FLAIR + T1c (+ brain mask) of one session -> LESION_OUTPUTS (the FLAIR's geometry; all of
    them or none)."""
    from . import zoo
    from .methods import segment_lesions
    from .methods.lesions import TASK

    model = model or zoo.default_model(TASK)
    notes: list[str] = []
    channels, ref, brain = read_modalities(flair, t1c, mask, model, notes)
    res = segment_lesions(channels, ref.spacing, model=model, brain_mask=brain, device=device,
                          decision=decision, progress=progress, affine=ref.affine, backend=backend)
    with _all_or_none(out, overwrite) as stage:
        staged = write_lesion_outputs(stage, ref, res, f"FLAIR {flair}; T1c {t1c}")
        staged.update(_dicom_results(stage, flair, "lesions", ref.with_data(res.labels),
                                     {k: round(x, 3) for k, x in res.volumes_ml.items()},   # as volumes.csv
                                     res.model, res.model_sha256, res.uncertainty))
        paths = _final(out, stage, staged)
    notes += _dicom_line(paths)
    v = res.volumes_ml
    lines = [f"whole tumour {v['whole_tumour_mL']:.1f} mL  oedema {v['oedema_mL']:.1f} mL  "
             f"enhancing {v['enhancing_mL']:.1f} mL  necrotic core {v['necrotic_core_mL']:.1f} mL",
             f"wrote {paths['labels']}, {paths['csv']}, {paths['json']} and the probabilities"]
    row = {**{k: round(x, 3) for k, x in v.items()}, "model": res.model, "model_sha256": res.model_sha256,
           "source": f"FLAIR {flair}; T1c {t1c}"}
    return JobResult(paths, row, lines, notes, list(res.extras.get("warnings") or []))


def detect_planes_job(out: str | Path, video: str | Path, *, model=None, saliency: bool = True,
                      device: str = "auto", progress: Progress | None = None, overwrite: bool = True) -> JobResult:
    """An ultrasound video -> PLANE_OUTPUTS (+ best_<plane>.png, saliency.nii.gz; all of them or none)."""
    from .methods import detect_planes
    from .methods.planes import validate_video

    frames, volume = read_video(video)
    res = detect_planes(frames, model=model, saliency=saliency, device=device, progress=progress)
    out = Path(out)
    with _all_or_none(out, overwrite) as stage:
        report = write_plane_outputs(stage, res, validate_video(frames), volume, str(video))
        written = {p.name: out / p.name for p in sorted(stage.iterdir()) if not p.name.startswith(".")}
    found = ", ".join(f"{r['class']} (frame {r['frame']}, p={r['probability']:.2f})" for r in report["best_frames"])
    lines = [f"{res.frames} frames, model {res.model}, {report['frames_per_second']} frames/s; "
             f"standard planes found: {found or 'none'}", f"wrote {out}"]
    row = {"frames": res.frames, "planes_found": ";".join(r["class"] for r in report["best_frames"]),
           **{f"best_frame_{r['class']}": r["frame"] for r in report["best_frames"]},
           "model": res.model, "model_sha256": res.model_sha256, "source": str(video)}
    return JobResult(written, row, lines)


def super_resolve_job(out_file: str | Path, stacks: Sequence[str | Path], *, factor: float = 4,
                      spacing: Sequence[float] | None = None, model=None, device: str = "auto",
                      overwrite: bool = False, progress: Progress | None = None) -> JobResult:
    """One thick-slice stack (or cine): learned through-plane SR; several stacks: fused in the
    first one's frame. Writes one NIfTI file."""
    from .imaging.io import write_nifti
    from .imaging.volume import Volume
    from .methods.sr import super_resolve, super_resolve_stacks

    if not stacks:
        raise InputError("no stack to super-resolve")
    if any(os.path.realpath(p) == os.path.realpath(out_file) for p in stacks):
        raise InputError("the output must differ from the inputs: an input file is never modified")
    vols = [read_single_volume(p) for p in stacks]
    ref = vols[0]
    if len(vols) == 1:
        if ref.data.ndim not in (3, 4):
            raise InputError(f"{stacks[0]}: a {ref.data.ndim}-D image; super-resolution needs a stack "
                             "(z, y, x) or a cine (t, z, y, x)")
        result = super_resolve(ref.data, ref.spacing, factor, model=model, progress=progress, device=device,
                               affine=ref.affine)
    else:
        for path, v in zip(stacks, vols):
            if v.data.ndim != 3:
                raise InputError(f"{path}: a {v.data.ndim}-D image; fusion takes 3-D stacks (z, y, x)")
        dz, dy, dx = ref.spacing
        if spacing is None:
            try:
                f = float(factor)
            except (TypeError, ValueError):
                raise InputError(f"--factor must be an integer >= 2, got {factor!r}") from None
            if not (f.is_integer() and f >= 2):
                raise InputError(f"--factor must be an integer >= 2, got {factor!r}")
            spacing = (dz / f, dy, dx)
        result = super_resolve_stacks([(v.data, v.affine) for v in vols], tuple(spacing), model=model,
                                      progress=progress, device=device)
    meta = {k: v for k, v in ref.meta.items() if k != "nifti_header"}
    meta.update(description=f"super-resolved by {result.model_name}")
    _ready(Path(out_file).parent)
    written = write_nifti(Volume(result.image, result.affine, ref.axes if len(vols) == 1 else ("z", "y", "x"), meta),
                          out_file, overwrite=overwrite)
    spacing_out = tuple(round(s, 4) for s in result.spacing)
    lines = [f"{written}: {result.image.shape} at {spacing_out} mm ({result.model_name}, {result.seconds:.2f} s)"]
    row = {"stacks": len(vols), "shape": "x".join(map(str, result.image.shape)),
           "spacing_mm": "x".join(f"{s:g}" for s in spacing_out), "model": result.model_name,
           "seconds": round(result.seconds, 3), "source": ";".join(map(str, stacks))}
    return JobResult({"image": Path(written)}, row, lines)


def correct_mask_job(out_file: str | Path, labels: str | Path, *, model=None, device: str = "auto",
                     overwrite: bool = False, progress: Progress | None = None) -> JobResult:
    """Shape-prior correction of a cardiac label map; the output keeps the input's geometry."""
    from .imaging.io import write_nifti
    from .methods.acnn import correct_mask

    if os.path.realpath(labels) == os.path.realpath(out_file):
        raise InputError("the output must differ from the input: the input file is never modified")
    vol = read_single_volume(labels)
    if len(vol.spatial_axes) != 3:
        raise InputError(f"{labels}: a {vol.data.ndim}-D label map; the shape prior needs a short-axis stack "
                         "(z, y, x) or a cine (t, z, y, x)")
    res = correct_mask(vol.data, vol.spacing, model=model, device=device, progress=progress)
    _ready(Path(out_file).parent)
    write_nifti(vol.with_data(res.labels, structures="cardiac"), out_file, overwrite=overwrite)
    lines = [f"plausibility before {res.plausibility_before:.3f}  after {res.plausibility:.3f}  "
             f"({res.n_changed} voxels changed, model {res.model_name})", f"wrote {out_file}"]
    row = {"plausibility_before": round(res.plausibility_before, 4), "plausibility_after": round(res.plausibility, 4),
           "voxels_changed": int(res.n_changed), "model": res.model_name, "source": str(labels)}
    return JobResult({"labels": Path(out_file)}, row, lines)
