"""ACDC validation patients through the DICOM path: export, read back, segment, compare.

Each validation patient's ED and ES frames (O. Bernard et al., IEEE TMI 37(11):2514-2525,
2018) are stacked into a two-phase cine, exported as a DICOM series with
:func:`napari_medlearn.imaging.dicom_write.write_dicom_series` (file names from instance UIDs,
so in no slice or phase order), read back with the plugin's own
:func:`napari_medlearn.imaging.io.read_volume` and segmented with
:func:`napari_medlearn.methods.segment_heart`. The predicted labels are put back on the NIfTI
grid through the two affines and compared with the expert labels: Dice for LV cavity,
myocardium and RV cavity over both frames together, and LVEF. This checks that a user who
exports a cine from a scanner gets what the held-out evaluation promised.

The validation patients are ``training.split.validation`` of the ``cardiac-fcn-acdc`` model
card when it is installed, else the preset's split
(``stratified_split(list_patients(root), 4, 0)``).

Run: ``python benchmarks/acdc_dicom.py [--model NAME_OR_CHECKPOINT] [--max-patients N]
[--data ACDC_FOLDER]``. Not a test: it needs the ACDC data and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CARD_NAME = "cardiac-fcn-acdc"
TIME_STEP_MS = 400.0


def validation_patients(root: Path) -> tuple[list[str], str]:
    """Validation patient names and where the split came from."""
    from napari_medlearn import zoo
    from napari_medlearn.training.acdc import list_patients, stratified_split

    card_path = zoo.CARDS_DIR / f"{CARD_NAME}.json"
    if card_path.exists():
        split = json.loads(card_path.read_text()).get("training", {}).get("split", {})
        names = split.get("validation")
        if names:
            def name_of(entry) -> str:
                if isinstance(entry, dict):
                    return str(entry.get("name") or entry.get("patient"))
                return str(entry[0] if isinstance(entry, (list, tuple)) else entry)
            return [name_of(e) for e in names], f"card {card_path.name}"
    _, val = stratified_split(list_patients(root), 4, 0)
    return val, "stratified_split(list_patients(root), 4, 0)"


def onto_grid(labels: np.ndarray, affine_from: np.ndarray, affine_to: np.ndarray) -> np.ndarray:
    """``(t, z, y, x)`` labels on the grid of ``affine_from`` moved onto the grid of
    ``affine_to`` when the two differ by axis flips and permutations only (as after a DICOM
    round trip that reorders slices); ``ValueError`` for anything needing interpolation."""
    m = np.linalg.inv(affine_to) @ affine_from  # voxel of `from` -> voxel of `to`
    lin = m[:3, :3]
    perm = np.rint(lin)
    if np.abs(lin - perm).max() > 1e-3 or sorted(np.abs(perm).sum(0)) != [1, 1, 1] \
            or sorted(np.abs(perm).sum(1)) != [1, 1, 1]:
        raise ValueError(f"grids differ by more than flips and permutations:\n{np.round(m, 4)}")
    out_axes = [int(np.argmax(np.abs(perm[:, k]))) for k in range(3)]  # from-axis k -> to-axis
    # the first voxel must land on a corner of the target grid: 0, or n - 1 along a flipped axis
    corner = [(labels.shape[1 + k] - 1) if perm[out_axes[k], k] < 0 else 0 for k in range(3)]
    expected = np.zeros(3)
    for k in range(3):
        expected[out_axes[k]] = corner[k]
    if np.abs(m[:3, 3] - expected).max() > 1e-3:
        raise ValueError(f"grids are shifted by {np.round(m[:3, 3] - expected, 4)} voxels")
    arr = labels
    for k in range(3):
        if perm[out_axes[k], k] < 0:
            arr = np.flip(arr, axis=1 + k)
    order = [0] + [1 + out_axes.index(a) for a in range(3)]
    return np.ascontiguousarray(np.transpose(arr, order))


def header_spacing_mismatch(root: Path, name: str, spacing: tuple[float, ...]) -> tuple | None:
    """NIfTI pixdim (z, y, x) when it disagrees with the affine's spacing, else None."""
    import nibabel as nib

    from napari_medlearn.training.acdc import read_info

    frame = int(read_info(root / name)["ED"])
    zooms = nib.load(str(root / name / f"{name}_frame{frame:02d}.nii.gz")).header.get_zooms()[:3]
    pixdim = tuple(float(v) for v in zooms[::-1])
    return None if np.allclose(pixdim, spacing, atol=1e-3) else pixdim


def evaluate_patient(root: Path, name: str, group: str, net, work: Path) -> dict:
    from napari_medlearn.imaging import measures as M
    from napari_medlearn.imaging.dicom_write import write_dicom_series
    from napari_medlearn.imaging.io import read_volume
    from napari_medlearn.imaging.volume import Volume
    from napari_medlearn.methods import segment_heart
    from napari_medlearn.training.acdc import load_patient

    patient = load_patient(root, name)
    image, truth = patient.cine()
    vol = Volume(image, patient.affine, ("t", "z", "y", "x"), {"time_step": TIME_STEP_MS})
    folder = work / name
    write_dicom_series(vol, folder, series_description=f"ACDC {name} ED+ES", patient_id=name)
    back = read_volume(folder)
    if isinstance(back, list):
        raise RuntimeError(f"{name}: the exported folder reads as {len(back)} series")
    if back.data.shape != image.shape:
        raise RuntimeError(f"{name}: exported {image.shape}, read back {back.data.shape}")

    t0 = time.perf_counter()
    res = segment_heart(back.data, back.spacing, model=net)
    seconds = time.perf_counter() - t0
    pred = onto_grid(res.labels, back.affine, vol.affine)
    dice = {k: M.dice(pred == k, truth == k) for k in (M.LV, M.MYO, M.RV)}
    true_ef = M.cardiac_measures(truth, back.spacing)["LVEF_pct"]
    pred_ef = res.measures["LVEF_pct"]
    return {"patient": name, "group": group, "LV": dice[M.LV], "Myo": dice[M.MYO], "RV": dice[M.RV],
            "LVEF_true": true_ef, "LVEF_pred": pred_ef, "LVEF_abs_err": abs(pred_ef - true_ef),
            "seconds": seconds, "pixdim": header_spacing_mismatch(root, name, back.spacing),
            "spacing": back.spacing}


def _fmt(v: float, width: int, digits: int) -> str:
    return f"{v:{width}.{digits}f}" if v is not None and math.isfinite(v) else f"{'nan':>{width}}"


def print_table(rows: list[dict]) -> None:
    head = (f"{'patient':11s} {'group':5s} {'LV':>6s} {'Myo':>6s} {'RV':>6s} "
            f"{'LVEF true':>9s} {'LVEF pred':>9s} {'|err|':>6s} {'s':>5s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['patient']:11s} {r['group']:5s} {_fmt(r['LV'], 6, 3)} {_fmt(r['Myo'], 6, 3)} "
              f"{_fmt(r['RV'], 6, 3)} {_fmt(r['LVEF_true'], 9, 1)} {_fmt(r['LVEF_pred'], 9, 1)} "
              f"{_fmt(r['LVEF_abs_err'], 6, 1)} {_fmt(r['seconds'], 5, 1)}")
    print("-" * len(head))

    def mean(key: str) -> float:
        vals = [r[key] for r in rows if r[key] is not None and math.isfinite(r[key])]
        return float(np.mean(vals)) if vals else float("nan")

    print(f"{'mean':11s} {'':5s} {_fmt(mean('LV'), 6, 3)} {_fmt(mean('Myo'), 6, 3)} "
          f"{_fmt(mean('RV'), 6, 3)} {_fmt(mean('LVEF_true'), 9, 1)} {_fmt(mean('LVEF_pred'), 9, 1)} "
          f"{_fmt(mean('LVEF_abs_err'), 6, 1)} {_fmt(mean('seconds'), 5, 1)}")
    print(f"mean |LVEF error|: {mean('LVEF_abs_err'):.2f} percentage points over {len(rows)} patient(s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None,
                    help="zoo name or checkpoint path (default: the default cardiac model)")
    ap.add_argument("--max-patients", type=int, default=None, help="evaluate only the first N")
    ap.add_argument("--data", default=None, help="ACDC folder (default: find_acdc_root())")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)

    import torch

    from napari_medlearn import zoo
    from napari_medlearn.methods.cardiac import TASK
    from napari_medlearn.training.acdc import find_acdc_root, list_patients

    if args.threads:
        torch.set_num_threads(args.threads)
    root = find_acdc_root(args.data)
    groups = dict(list_patients(root))
    names, source = validation_patients(root)
    if args.max_patients is not None:
        names = names[: args.max_patients]
    model = args.model or zoo.default_model(TASK)
    net = zoo.load(model, device=args.device)
    print(f"ACDC {root}; {len(names)} validation patient(s) from {source}; model {model}; "
          f"cines exported as DICOM with TriggerTime step {TIME_STEP_MS:g} ms")

    rows = []
    with tempfile.TemporaryDirectory(prefix="acdc-dicom-") as tmp:
        for name in names:
            rows.append(evaluate_patient(root, name, groups.get(name, "?"), net, Path(tmp)))
    print_table(rows)
    odd = [r for r in rows if r["pixdim"] is not None]
    if odd:
        r = odd[0]
        print(f"note: {len(odd)} of {len(rows)} patient(s) have NIfTI affines whose spacing "
              f"{tuple(round(s, 4) for s in r['spacing'])} mm differs from pixdim "
              f"{tuple(round(s, 4) for s in r['pixdim'])} mm ({r['patient']}); the export used "
              "the affine, so volumes in mL are off by the ratio (Dice and LVEF are not)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
