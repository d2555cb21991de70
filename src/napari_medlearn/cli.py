"""``medlearn``: the plugin's jobs without a screen.

Every sub-command calls :mod:`napari_medlearn.methods` (the same code the widgets run). Bad
input ends with exit status 2 and one line on stderr; outputs go into ``--out`` and are never
written over unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence


class CLIError(Exception):
    """An error to report as one line and exit status 2."""


def _out_dir(path: str, names: Sequence[str], overwrite: bool) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory")
    clash = [n for n in names if (out / n).exists()]
    if clash and not overwrite:
        raise CLIError(f"{out / clash[0]} already exists (use --overwrite to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _progress_printer(label: str):
    def show(done: int, total: int, message: str = "") -> None:
        print(f"\r{label}: {done}/{total} {message}".ljust(60), end="" if done < total else "\n",
              file=sys.stderr, flush=True)
    return show


def _read_single_volume(path: str):
    from .imaging.io import read_volume

    p = Path(path)
    if not p.exists():
        raise CLIError(f"{path}: no such file or directory")
    vol = read_volume(p)
    if isinstance(vol, list):
        if len(vol) != 1:
            names = ", ".join(str(v.meta.get("series", i)) for i, v in enumerate(vol))
            raise CLIError(f"{path} holds {len(vol)} series ({names}); give a folder with one")
        vol = vol[0]
    return vol


def write_cardiac_outputs(out: Path, vol, result, source: str) -> dict[str, Path]:
    """labels.nii.gz (input geometry), measures.csv and measures.json for one case."""
    from .imaging.io import write_nifti
    from .methods.report import measures_row, write_measures_csv

    labels_vol = vol.with_data(result.labels)
    paths = {"labels": out / "labels.nii.gz", "csv": out / "measures.csv", "json": out / "measures.json"}
    write_nifti(labels_vol, paths["labels"], overwrite=True)
    row = measures_row(result.measures, result.qc, result.model_name, result.model_sha256, source)
    write_measures_csv([row], paths["csv"])
    from .zoo import write_json_atomic

    write_json_atomic({"source": source, "model": result.model_name, "model_sha256": result.model_sha256,
                       "ED_frame": result.ed, "ES_frame": result.es, "qc": result.qc,
                       "measures": result.measures}, paths["json"])
    return paths


def cmd_segment_heart(args: argparse.Namespace) -> int:
    from .methods import segment_heart

    out = _out_dir(args.out, ("labels.nii.gz", "measures.csv", "measures.json"), args.overwrite)
    vol = _read_single_volume(args.input)
    if len(vol.spatial_axes) != 3:
        raise CLIError(f"{args.input}: a {vol.data.ndim}-D image; cardiac segmentation needs a short-axis stack or cine")
    res = segment_heart(vol.data, vol.spacing, model=args.model, device=args.device,
                        progress=None if args.quiet else _progress_printer("segment-heart"))
    paths = write_cardiac_outputs(out, vol, res, str(args.input))
    m = res.measures
    print(f"LVEDV {m['LVEDV_mL']:.1f} mL  LVESV {m['LVESV_mL']:.1f} mL  LVEF {m['LVEF_pct']:.1f} %  "
          f"LVM {m['LVM_g']:.1f} g  RVEDV {m['RVEDV_mL']:.1f} mL  RVEF {m['RVEF_pct']:.1f} %")
    for f in res.qc:
        print(f"QC: {f['reason']}")
    print(f"wrote {paths['labels']}, {paths['csv']}, {paths['json']}")
    return 0


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
    write_nifti(volume.with_data(result.display), out / "reconstruction.nii.gz", overwrite=True)
    write_nifti(volume.with_data(result.zero_filled_display), out / "zero_filled.nii.gz", overwrite=True)
    write_nifti(volume.with_data(result.mask.astype(np.uint8)), out / "mask.nii.gz", overwrite=True)
    _write_npy_atomic(result.image, out / "reconstruction.npy")
    report = {"source": source, "model": result.model_name, "model_sha256": result.model_sha256,
              "axes": result.axes, "acceleration": result.acceleration, "seconds": result.seconds,
              "offset": result.offset, "outputs": "real parts" if result.signed else "magnitudes"}
    if reference is not None:
        report["zero_filled"] = reconstruction_quality(reference, result.zero_filled_display)
        report["reconstruction"] = reconstruction_quality(reference, result.display)
    write_json_atomic(report, out / "recon.json")
    return report


def cmd_reconstruct(args: argparse.Namespace) -> int:
    import numpy as np

    from .imaging import kspace as K
    from .methods import reconstruct
    from .methods.recon import simulate

    out = _out_dir(args.out, RECON_OUTPUTS, args.overwrite)
    is_kspace = Path(args.input).suffix.lower() in K.KSPACE_SUFFIXES
    volume = reference = None
    offset = 0.0
    if is_kspace:
        k, mask = K.read_kspace(args.input, args.mask, args.kspace_key, args.mask_key)
        if mask is None:
            raise CLIError(f"{args.input}: no mask; give --mask (a .npy or .h5 file that broadcasts to the k-space)")
        source = str(args.input)
    else:
        if args.mask is not None:
            raise CLIError("--mask is for k-space input (.npy/.h5); an image gets a simulated mask")
        volume = _read_single_volume(args.input)
        reference = np.asarray(volume.data, dtype=np.float32)
        if reference.ndim < 2 or reference.ndim > 4:
            raise CLIError(f"{args.input}: a {reference.ndim}-D image; need (y, x), (z, y, x), (t, y, x) "
                           "or (t, z, y, x)")
        k, mask, offset = simulate(reference, args.acceleration, args.pattern, args.centre_lines, args.seed,
                                   per_frame=args.dynamic)
        if offset:
            _note(f"{args.input} has negative values (z-scored?): simulated the acquisition of the image minus "
                  f"its minimum {offset:.4g} and added it back; outputs are real parts, not magnitudes")
        source = f"{args.input} (simulated: {args.pattern}, R={args.acceleration:g}, "\
                 f"{args.centre_lines} centre lines, seed {args.seed})"
    res = reconstruct(k, mask, model=args.model, device=args.device, dynamic=args.dynamic, offset=offset,
                      progress=None if args.quiet else _progress_printer("reconstruct"))
    report = write_recon_outputs(out, res, volume, reference, source)
    line = f"R={res.acceleration:.2f} model {res.model_name} {res.seconds:.2f} s"
    if reference is not None:
        zf, rc = report["zero_filled"], report["reconstruction"]
        line += (f"  zero-filled PSNR {zf['psnr_db']:.2f} dB SSIM {zf['ssim']:.3f}  "
                 f"cascade PSNR {rc['psnr_db']:.2f} dB SSIM {rc['ssim']:.3f}")
    print(line)
    print(f"wrote {', '.join(str(out / n) for n in RECON_OUTPUTS)}")
    return 0


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
    write_nifti(ref.with_data(result.labels), paths["labels"], overwrite=True)
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
                       "members": list(result.members), "member_volumes_ml": member_volumes,
                       "channels": list(result.channel_names), "label_values": list(result.label_values),
                       "postprocess": result.extras.get("postprocess"),
                       "warnings": list(result.extras.get("warnings") or []),
                       "volumes_ml": result.volumes_ml, "seconds": round(result.seconds, 2)}, paths["json"])
    return paths


def _note(text: str) -> None:
    """A line of information for the user (stdout; errors alone go to stderr)."""
    print(f"note: {text}")


def _mm(spacing) -> str:
    return "x".join(f"{s:.3g}" for s in spacing) + " mm"


def _read_modalities(flair: str, t1c: str, mask_path: str | None, model: str):
    """FLAIR + T1c (+ mask) files -> ``(channels in the model's order, reference Volume, mask)``.
    Scans on other grids than the FLAIR's are resampled onto it by their scanner coordinates."""
    import numpy as np

    from . import zoo
    from .imaging.volume import resample_onto

    given = {"FLAIR": flair, "T1c": t1c}
    vols = {}
    for name, path in given.items():
        v = _read_single_volume(path)
        if len(v.spatial_axes) != 3 or v.data.ndim != 3:
            raise CLIError(f"{path}: the {name} image is {v.data.ndim}-D {v.data.shape}; lesion segmentation "
                           "needs 3D volumes")
        vols[name] = v
    ref = vols["FLAIR"]
    for name, v in list(vols.items()):
        # series of one session on different grids (a 2D FLAIR, a 3D T1c) meet on the FLAIR's grid
        # through their scanner coordinates; the outputs keep the FLAIR's geometry
        try:
            vols[name] = resample_onto(v, ref, order=1, what=f"the {name} image", onto="the FLAIR image")
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        if vols[name] is not v:
            _note(f"{name} {v.data.shape} at {_mm(v.spacing)} resampled onto the FLAIR grid {ref.data.shape} "
                  f"at {_mm(ref.spacing)} (scanner coordinates, trilinear)")
    c = zoo.card(model)
    if c.get("kind") == "ensemble":
        c = zoo.card(c["members"][0])
    wanted = list(c.get("input", {}).get("channels", ["FLAIR", "T1c"]))
    missing = [ch for ch in wanted if ch not in vols]
    if missing:
        raise CLIError(f"model {model} needs the modalities {', '.join(wanted)}; this command gives FLAIR "
                       f"and T1c (missing: {', '.join(missing)})")
    mask = None
    if mask_path:
        m = _read_single_volume(mask_path)
        if m.data.ndim != 3 or len(m.spatial_axes) != 3:
            raise CLIError(f"{mask_path}: the brain mask is {m.data.ndim}-D {m.data.shape}; it needs to be 3D")
        try:
            on_ref = resample_onto(m, ref, order=0, what="the brain mask", onto="the FLAIR image")
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        if on_ref is not m:
            _note(f"brain mask {mask_path} resampled onto the FLAIR grid (nearest voxel)")
        mask = on_ref.data
    return np.stack([vols[ch].data for ch in wanted]), ref, mask


def cmd_segment_lesions(args: argparse.Namespace) -> int:
    from . import zoo
    from .methods import segment_lesions
    from .methods.lesions import TASK

    model = args.model or zoo.default_model(TASK)
    channels, ref, mask = _read_modalities(args.flair, args.t1c, args.mask, model)
    out = _out_dir(args.out, LESION_OUTPUTS, args.overwrite)
    res = segment_lesions(channels, ref.spacing, model=model, brain_mask=mask,
                          device=args.device, decision=args.decision,
                          progress=None if args.quiet else _progress_printer("segment-lesions"))
    paths = write_lesion_outputs(out, ref, res, f"FLAIR {args.flair}; T1c {args.t1c}")
    for w in res.extras.get("warnings") or []:
        print(f"medlearn: warning: {w}", file=sys.stderr)
    v = res.volumes_ml
    print(f"whole tumour {v['whole_tumour_mL']:.1f} mL  oedema {v['oedema_mL']:.1f} mL  "
          f"enhancing {v['enhancing_mL']:.1f} mL  necrotic core {v['necrotic_core_mL']:.1f} mL")
    print(f"wrote {paths['labels']}, {paths['csv']}, {paths['json']} and the probabilities")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from . import zoo
    from .methods import adapt
    from .methods.lesions import TASK, scan_warnings

    model = args.model or zoo.default_model(TASK)
    if len(args.flair) != len(args.t1c):
        raise CLIError(f"{len(args.flair)} FLAIR files but {len(args.t1c)} T1c files: give one of each per scan")
    if args.mask and len(args.mask) != len(args.flair):
        raise CLIError(f"{len(args.mask)} brain masks for {len(args.flair)} scans: give one per scan or none")
    scans, spacings, masks = [], [], []
    for i, (f, t) in enumerate(zip(args.flair, args.t1c)):
        ch, ref, mask = _read_modalities(f, t, args.mask[i] if args.mask else None, model)
        for w in scan_warnings(ch, ref.spacing, mask):       # before the training, not after it
            print(f"medlearn: warning: scan {i + 1} ({f}): {w}", file=sys.stderr)
        scans.append(ch)
        spacings.append(tuple(ref.spacing))
        masks.append(mask)
    name = adapt(model, scans, spacings, brain_masks=masks if args.mask else None, name=args.name,
                 epochs=args.epochs, iters_per_epoch=args.iters, device=args.device,
                 progress=None if args.quiet else _progress_printer("adapt"),
                 self_training=args.self_training or ())
    print(f"adapted model {name} (from {model}, {len(scans)} unlabelled scans) in {zoo.user_dir()}; "
          f"use it with --model {name}")
    return 0


PLANE_OUTPUTS = ("scores.csv", "boxes.csv", "best_frames.csv", "planes.json", "saliency.npy")
VIDEO_SUFFIXES = (".npy", ".tif", ".tiff", ".gif", ".png", ".jpg", ".jpeg", ".mp4", ".avi", ".mov")


def read_video(path: str):
    """An ultrasound video for ``detect-planes``: ``(array, Volume or None)``.

    ``.npy`` (t, H, W[, 3]); TIFF/GIF stacks and single PNG/JPEG frames (imageio); MP4/AVI/MOV
    when imageio has a video plugin (ffmpeg or PyAV); NIfTI, NRRD and DICOM through
    :func:`napari_medlearn.imaging.io.read_volume` (the first axis is time).
    """
    import numpy as np

    p = Path(path)
    if not p.exists():
        raise CLIError(f"{path}: no such file or directory")
    suffix = p.suffix.lower()
    if p.is_file() and suffix == ".npy":
        try:
            return np.load(p, allow_pickle=False), None
        except Exception as e:   # pickled objects, truncated files
            raise CLIError(f"{path}: cannot read as a NumPy array: {type(e).__name__}: {e}") from None
    if p.is_file() and suffix in VIDEO_SUFFIXES:
        import imageio.v3 as iio

        try:
            arr = np.asarray(iio.imread(p, index=None) if suffix in (".tif", ".tiff", ".gif") else iio.imread(p))
        except Exception as e:
            extra = " (video files need imageio's ffmpeg or PyAV plugin; or convert to .npy/TIFF)" \
                if suffix in (".mp4", ".avi", ".mov") else ""
            raise CLIError(f"{path}: cannot read: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                           f"{extra}") from None
        return arr, None
    vol = _read_single_volume(path)
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


def cmd_detect_planes(args: argparse.Namespace) -> int:
    from .methods import detect_planes
    from .methods.planes import validate_video

    frames, volume = read_video(args.video)
    out = _out_dir(args.out, PLANE_OUTPUTS, args.overwrite)
    res = detect_planes(frames, model=args.model, saliency=not args.no_saliency, device=args.device,
                        progress=None if args.quiet else _progress_printer("detect-planes"))
    report = write_plane_outputs(out, res, validate_video(frames), volume, str(args.video))
    found = ", ".join(f"{r['class']} (frame {r['frame']}, p={r['probability']:.2f})" for r in report["best_frames"])
    print(f"{res.frames} frames, model {res.model}, {report['frames_per_second']} frames/s; "
          f"standard planes found: {found or 'none'}")
    print(f"wrote {out}")
    return 0


def _nifti_output(path: str, overwrite: bool) -> Path:
    """``--out`` for a single NIfTI file: the right suffix, and never an existing file unasked."""
    out = Path(path)
    if not (out.name.endswith(".nii.gz") or out.name.endswith(".nii")):
        raise CLIError(f"--out {out} must end in .nii or .nii.gz")
    if out.exists() and not overwrite:
        raise CLIError(f"{out} already exists (use --overwrite to replace it)")
    return out


def cmd_super_resolve(args: argparse.Namespace) -> int:
    """One stack (or cine): learned through-plane SR; several stacks: fused in the first one's frame."""
    from .imaging.io import write_nifti
    from .imaging.volume import Volume
    from .methods.sr import super_resolve, super_resolve_stacks

    out = _nifti_output(args.out, args.overwrite)
    vols = [_read_single_volume(p) for p in args.inputs]
    progress = None if args.quiet else _progress_printer("super-resolving")
    ref = vols[0]
    if len(vols) == 1:
        if ref.data.ndim not in (3, 4):
            raise CLIError(f"{args.inputs[0]}: a {ref.data.ndim}-D image; super-resolution needs a stack "
                           "(z, y, x) or a cine (t, z, y, x)")
        result = super_resolve(ref.data, ref.spacing, args.factor, model=args.model, progress=progress,
                               device=args.device, affine=ref.affine)
    else:
        for path, v in zip(args.inputs, vols):
            if v.data.ndim != 3:
                raise CLIError(f"{path}: a {v.data.ndim}-D image; fusion takes 3-D stacks (z, y, x)")
        dz, dy, dx = ref.spacing
        if args.spacing is not None:
            spacing = tuple(args.spacing)
        else:
            try:
                f = float(args.factor)
            except (TypeError, ValueError):
                raise CLIError(f"--factor must be an integer >= 2, got {args.factor!r}") from None
            if not (f.is_integer() and f >= 2):
                raise CLIError(f"--factor must be an integer >= 2, got {args.factor!r}")
            spacing = (dz / f, dy, dx)
        result = super_resolve_stacks([(v.data, v.affine) for v in vols], spacing, model=args.model,
                                      progress=progress, device=args.device)
    meta = {k: v for k, v in ref.meta.items() if k != "nifti_header"}
    meta.update(description=f"super-resolved by {result.model_name}")
    written = write_nifti(Volume(result.image, result.affine, ref.axes if len(vols) == 1 else ("z", "y", "x"), meta),
                          out, overwrite=args.overwrite)
    print(f"{written}: {result.image.shape} at {tuple(round(s, 4) for s in result.spacing)} mm "
          f"({result.model_name}, {result.seconds:.2f} s)")
    return 0


def cmd_correct_mask(args: argparse.Namespace) -> int:
    """Shape-prior correction of a cardiac label map; the output keeps the input's geometry."""
    from .imaging.io import write_nifti
    from .methods.acnn import correct_mask

    out = _nifti_output(args.out, args.overwrite)
    if Path(args.labels).resolve() == out.resolve():
        raise CLIError("--out must differ from the input: the input file is never modified")
    vol = _read_single_volume(args.labels)
    if len(vol.spatial_axes) != 3:
        raise CLIError(f"{args.labels}: a {vol.data.ndim}-D label map; the shape prior needs a short-axis stack "
                       "(z, y, x) or a cine (t, z, y, x)")
    res = correct_mask(vol.data, vol.spacing, model=args.model, device=args.device,
                       progress=None if args.quiet else _progress_printer("correct-mask"))
    write_nifti(vol.with_data(res.labels), out, overwrite=args.overwrite)
    print(f"plausibility before {res.plausibility_before:.3f}  after {res.plausibility:.3f}  "
          f"({res.n_changed} voxels changed, model {res.model_name})")
    print(f"wrote {out}")
    return 0


def cmd_import_weights(args: argparse.Namespace) -> int:
    from . import zoo

    name = zoo.import_weights(args.kind, args.path, out=args.out)
    print(f"imported {args.kind} as {name}")
    return 0


#: presets whose BraTS subjects split into training (labels for EMMA, images for lesions-uda) and judging
SPLIT_PRESETS = ("emma-deepmedic", "emma-unet", "emma-fcn", "emma", "lesions-uda")


def cmd_train(args: argparse.Namespace) -> int:
    from .training.presets import PRESETS, run_preset

    if args.preset not in PRESETS:
        raise CLIError(f"preset {args.preset!r} not supported; known: {', '.join(sorted(PRESETS))}")
    kwargs = {"ship": args.ship, "device": args.device}
    if args.epochs is not None:
        kwargs["epochs"] = args.epochs
    if args.data is not None:
        kwargs["data"] = args.data
    if args.only_folds is not None:
        if args.preset != "lesions-brats":
            raise CLIError(f"--only-folds is for the cross-validated lesions-brats preset, not {args.preset!r}")
        kwargs["only_folds"] = args.only_folds
    if args.train_subjects is not None:
        if args.preset not in SPLIT_PRESETS:
            raise CLIError(f"--train-subjects is for the BraTS-split presets ({', '.join(SPLIT_PRESETS)}), "
                           f"not {args.preset!r}")
        if args.ship:
            raise CLIError("--ship installs the models of the default split; train the other fold of the "
                           "cross-validation with --train-subjects and without --ship")
        kwargs["train_subjects"] = args.train_subjects
    if args.domain is not None:
        if args.preset not in ("lesions-synthetic", "lesions-uda"):
            raise CLIError(f"--domain is for the lesions-synthetic and lesions-uda presets, not {args.preset!r}")
        from .training.deepmedic import scanner_domains

        try:
            scanner_domains(args.domain)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        kwargs["domain"] = args.domain
    if args.with_fold is not None:
        if args.preset not in ("emma", "lesions-uda"):
            raise CLIError(f"--with-fold is for the emma and lesions-uda presets, not {args.preset!r}")
        kwargs["with_fold"] = args.with_fold
    card = run_preset(args.preset, args.run_dir, **kwargs)
    if "folds_done" in card:
        print(f"folds trained and evaluated so far: {card['folds_done']} of {card['folds']}; "
              "run again without --only-folds once all are done to write the model")
        return 0
    print(json.dumps(card.get("evaluation", {}).get("summary", {}), indent=2))
    print(f"model {card['name']} " + (f"sha256 {card['sha256']}" if "sha256" in card
                                       else f"(ensemble of {', '.join(card.get('members', []))})"))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from . import zoo

    for name in zoo.available():
        c = zoo.card(name)
        default = "(default) " if zoo.default_model(c.get("task", "")) == name else ""
        print(f"{name:28s} {c.get('task', ''):24s} {default}{c.get('description', '')}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    report = run_demo(Path(args.out), device=args.device, overwrite=args.overwrite)
    print(f"report: {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medlearn", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, out_required=True):
        sp.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, mps")
        sp.add_argument("--overwrite", action="store_true", help="replace existing output files")
        sp.add_argument("--quiet", action="store_true", help="no progress output")

    s = sub.add_parser("segment-heart", help="segment LV, myocardium and RV in a cine; write labels and measures")
    s.add_argument("input", help="NIfTI file (t,z,y,x or z,y,x) or a DICOM cine folder")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--model", default=None, help="zoo name or checkpoint path (default: best shipped)")
    common(s)
    s.set_defaults(func=cmd_segment_heart)

    from .imaging.kspace import PATTERNS

    s = sub.add_parser("reconstruct", help="reconstruct MR images from undersampled k-space (deep cascade); "
                                           "from an image, k-space is simulated first")
    s.add_argument("input", help="an image (NIfTI, DICOM: k-space is simulated from it) or k-space as .npy / .h5")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--mask", default=None, help="sampling mask for k-space input (.npy, or .h5 with --mask-key)")
    s.add_argument("--kspace-key", default="kspace", help="HDF5 dataset holding the k-space (default kspace)")
    s.add_argument("--mask-key", default="mask", help="HDF5 dataset holding the mask (default mask)")
    s.add_argument("--acceleration", type=float, default=4.0, help="simulation: acceleration R (default 4)")
    s.add_argument("--pattern", choices=PATTERNS, default="cartesian", help="simulation: sampling pattern")
    s.add_argument("--centre-lines", type=int, default=8, help="simulation: fully sampled centre lines (default 8)")
    s.add_argument("--seed", type=int, default=0, help="simulation: mask seed (default 0)")
    s.add_argument("--dynamic", action="store_true",
                   help="the first axis is time (a cine): 2D+t model, and one mask per frame when simulating")
    s.add_argument("--model", default=None, help="zoo name or checkpoint path (default: best available)")
    common(s)
    s.set_defaults(func=cmd_reconstruct)

    s = sub.add_parser("segment-lesions", help="segment a brain tumour (necrotic core, oedema, enhancing) in "
                                               "FLAIR + T1c; write labels, probabilities and volumes")
    s.add_argument("--flair", required=True, help="FLAIR volume (NIfTI or DICOM folder)")
    s.add_argument("--t1c", required=True, help="contrast-enhanced T1 volume of the same session (on another grid "
                                                "it is resampled onto the FLAIR's by scanner coordinates)")
    s.add_argument("--mask", default=None, help="brain mask (default: derived from the images; on another grid it "
                                                "is resampled onto the FLAIR's)")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--model", default=None, help="zoo name or checkpoint path (default: best shipped)")
    s.add_argument("--decision", default=None, choices=("argmax", "expected_dice"),
                   help="labels from the probabilities: the most probable class, or the whole tumour of maximal "
                        "expected Dice found per scan (default: as the model card says, else argmax)")
    common(s)
    s.set_defaults(func=cmd_segment_lesions)

    s = sub.add_parser("adapt", help="adapt a lesion model to your own unlabelled scans (adversarial domain "
                                     "adaptation); writes a new model to the user zoo")
    s.add_argument("--flair", nargs="+", required=True, help="FLAIR volumes, one per scan")
    s.add_argument("--t1c", nargs="+", required=True, help="contrast-enhanced T1 volumes, same order")
    s.add_argument("--mask", nargs="+", default=None, help="brain masks, same order (default: derived)")
    s.add_argument("--model", default=None, help="lesion model to adapt (default: best shipped)")
    s.add_argument("--name", default=None, help="name of the new model (default: <model>-adapted-<date>)")
    s.add_argument("--epochs", type=int, default=4)
    s.add_argument("--iters", type=int, default=100, help="iterations per epoch")
    s.add_argument("--self-training", type=float, nargs="+", default=None, metavar="P",
                   help="then class-balanced self-training: one round per portion P of each class's most "
                        "confident voxels kept as pseudo-labels (lesions-uda's recipe: 0.5 0.7)")
    common(s)
    s.set_defaults(func=cmd_adapt)

    s = sub.add_parser("detect-planes", help="detect fetal standard planes in a 2D ultrasound video (SonoNet); "
                                             "write per-frame scores, boxes, saliency and the best frames")
    s.add_argument("video", help="video (t, H, W[, 3]) as .npy, TIFF stack, NIfTI or DICOM (first axis time)")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--model", default=None, help="zoo name (e.g. sononet-16 once imported) or checkpoint path "
                                                 "(default: best available)")
    s.add_argument("--no-saliency", action="store_true", help="classification only (faster; boxes from the "
                                                              "category maps)")
    common(s)
    s.set_defaults(func=cmd_detect_planes)

    s = sub.add_parser("super-resolve", help="through-plane super-resolution of thick-slice stacks (one stack, "
                                             "a cine, or several stacks fused); geometry kept")
    s.add_argument("inputs", nargs="+", help="NIfTI/DICOM stacks (z, y, x) thick along z, or one cine (t, z, y, x); "
                                             "several stacks are fused in the first one's frame")
    s.add_argument("--factor", type=float, default=4, help="through-plane factor, an integer >= 2 (default 4)")
    s.add_argument("--out", required=True, help="output NIfTI file (.nii.gz); never overwritten without --overwrite")
    s.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("DZ", "DY", "DX"),
                   help="fusion: output spacing in mm (default: the first stack's, dz / factor)")
    s.add_argument("--model", default=None, help="zoo name, checkpoint path, 'spline' / 'average' for the "
                                                 "baselines (default: best shipped)")
    common(s)
    s.set_defaults(func=cmd_super_resolve)

    s = sub.add_parser("correct-mask", help="check and correct a cardiac label map with the learned shape prior "
                                            "(ACNN); prints the plausibility before and after")
    s.add_argument("labels", help="label map (NIfTI or DICOM; z,y,x or t,z,y,x; 1 LV, 2 myocardium, 3 RV)")
    s.add_argument("--out", required=True, help="output NIfTI file (.nii.gz)")
    s.add_argument("--model", default=None, help="zoo name or checkpoint path (default: best shipped shape prior)")
    common(s)
    s.set_defaults(func=cmd_correct_mask)

    s = sub.add_parser("import-weights", help="convert officially published weights into a zoo model")
    s.add_argument("kind", help="which published weights, e.g. deep-cascade-d5c5")
    s.add_argument("path", help="the published file (e.g. d5_c5.npz)")
    s.add_argument("--out", default=None, help="folder for NAME.pt + NAME.json (default: the user zoo)")
    s.set_defaults(func=cmd_import_weights)

    s = sub.add_parser("train", help="train a preset (reproduces a shipped weight)")
    s.add_argument("preset")
    s.add_argument("--run-dir", default=None, help="checkpoints and outputs (default runs/PRESET); resumes if present")
    s.add_argument("--ship", action="store_true", help="also install the result into the package's zoo")
    s.add_argument("--epochs", type=int, default=None)
    s.add_argument("--data", default=None, help="data folder for presets trained on real data (e.g. ACDC)")
    s.add_argument("--only-folds", type=int, nargs="+", default=None, metavar="K",
                   help="cross-validated presets: train and evaluate only these folds (run folds in parallel)")
    s.add_argument("--train-subjects", nargs="+", default=None, metavar="SUBJECT",
                   help="EMMA members, emma and lesions-uda: the BraTS subjects used in training (their labels; "
                        "lesions-uda: their images only); the others judge the model (the cross-validation's "
                        "other fold; not with --ship)")
    s.add_argument("--domain", default=None, metavar="SCANNERS",
                   help="lesions-synthetic and lesions-uda: the synthetic source's scanner domain(s), e.g. ABC (the "
                        "default: the cases cycle through A, B, C) or A (one scanner)")
    s.add_argument("--with-fold", nargs="+", default=None, metavar="CARD",
                   help="emma and lesions-uda: the cards (JSON) of the runs with the other --train-subjects; the "
                        "card written adds the cross-validation of all folds")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("models", help="list shipped models")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("demo", help="run every method on the built-in sample data; write outputs and a report")
    s.add_argument("--out", default="medlearn-demo", help="output directory (default ./medlearn-demo)")
    common(s)
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("medlearn: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, FileNotFoundError, FileExistsError, PermissionError, InterruptedError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"medlearn: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
