"""Seconds and peak memory of ``correct_mask`` on a 10 x 256 x 256 cardiac mask (CPU), next to
plain morphology (largest component + hole filling) in the same kind of fresh process.

Goal: correct_mask <= 2 s. The mask is a held-out ACDC expert mask resampled onto a 256 x 256
matrix (10 slices), damaged by a lost slice and islands; without ACDC a synthetic ring mask is
used. Usage: ``python benchmarks/acnn.py [--model NAME] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _peak import measure  # noqa: E402

SHAPE = (10, 256, 256)


def _mask():
    import numpy as np
    from scipy import ndimage as ndi

    from napari_medlearn.imaging.mask_corruption import islands, lost_slice

    try:
        from napari_medlearn.training.acdc import find_acdc_root, list_patients, load_patient, stratified_split

        root = find_acdc_root()
        _, val = stratified_split(list_patients(root), 4, 0)
        p = load_patient(root, val[0])
        lab = p.ed_labels
        zoom = [a / b for a, b in zip(SHAPE, lab.shape)]
        lab = ndi.zoom(lab, zoom, order=0, grid_mode=True, mode="nearest")[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
        spacing = tuple(s * a / b for s, a, b in zip(p.spacing, p.ed_labels.shape, SHAPE))
        source = f"ACDC {p.name} ED resampled to {SHAPE}"
    except FileNotFoundError:
        yy, xx = np.mgrid[:SHAPE[1], :SHAPE[2]]
        d = np.hypot(yy - 128, xx - 120) * 1.4
        sl = np.where(d < 25, 1, np.where(d < 34, 2, 0)).astype(np.uint8)
        sl[(np.hypot(yy - 128, xx - 160) * 1.4 < 38) & (sl == 0)] = 3
        lab = np.repeat(sl[None], SHAPE[0], axis=0)
        lab[[0, -1]] = 0
        spacing, source = (10.0, 1.4, 1.4), "synthetic ring mask"
    rng = np.random.default_rng(0)
    return islands(lost_slice(lab, spacing, rng), spacing, rng), spacing, source


def run_correct(model, threads):
    import time

    import torch

    from napari_medlearn import methods, zoo

    torch.set_num_threads(threads)
    lab, spacing, source = _mask()
    net = zoo.load(model, device="cpu")
    methods.correct_mask(lab[:, ::4, ::4], (spacing[0], spacing[1] * 4, spacing[2] * 4), model=net)  # warm-up
    t0 = time.perf_counter()
    res = methods.correct_mask(lab, spacing, model=net)
    return {"seconds_inside": time.perf_counter() - t0, "changed": res.n_changed, "source": source,
            "plausibility": (res.plausibility_before, res.plausibility)}


def run_morphology(model, threads):
    import time

    from napari_medlearn.imaging.labels import clean_labels

    lab, spacing, source = _mask()
    t0 = time.perf_counter()
    out = clean_labels(lab, values=(1, 2, 3))
    return {"seconds_inside": time.perf_counter() - t0, "changed": int((out != lab).sum()), "source": source}


def main() -> None:
    from napari_medlearn import zoo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="zoo name (default: the shipped shape prior)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    model = args.model or zoo.default_model("cardiac-shape-prior")
    print(f"load average {os.getloadavg()[0]:.1f}; mask {SHAPE}; model {model}; {args.threads} thread(s)")
    print(f"{'run':22s} {'seconds':>8s} {'peak RSS MiB':>13s} {'growth MiB':>11s} {'changed':>8s}")
    rows = {}
    for name, fn in (("correct_mask", run_correct), ("morphology", run_morphology)):
        _, peak, growth, extra = measure(fn, model, args.threads)
        rows[name] = extra["seconds_inside"]
        print(f"{name:22s} {extra['seconds_inside']:8.2f} {peak:13.0f} {growth:11.0f} {extra['changed']:8d}")
    print(f"source: {extra['source']}")
    print(f"correct_mask / morphology time: {rows['correct_mask'] / max(rows['morphology'], 1e-9):.1f}x; "
          f"goal correct_mask <= 2 s: {'met' if rows['correct_mask'] <= 2.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
