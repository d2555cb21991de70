"""Through-plane super-resolution speed and quality on CPU (issue 10).

Speed, each in a fresh process (seconds and peak resident memory, ``_peak.measure``), with the
cubic B-spline peer timed on the same input:

- a 140 x 140 x 10 stack upsampled x5 (the issue's target: <= 6 s on 2 CPU cores). No x5 model
  is shipped, so an untrained network of the shipped single-stack architecture built for x5
  stands in: the compute is the same, the output is not meaningful;
- the same stack x4 through the shipped ``sr-brain-x4`` model;
- a 4D cine (the cardiac cine phantom, ``(t, z, y, x)``, 10 mm slices) x4, frame by frame;
- the axial + coronal fusion of a held-out brain volume (``sr-brain-x4-fused``).

Quality, in the same run: PSNR inside the brain mask and SSIM on the held-out BraTS subject
(``training.sr.HELD_OUT``, never trained on), axial x4 box-profile stacks: cubic B-spline,
single-stack SR, the average of interpolated axial + coronal stacks, and their fusion.

Run: ``python benchmarks/sr.py [--threads 2] [--no-quality]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _peak import measure  # noqa: E402


def _stack(shape=(10, 140, 140)):
    rng = np.random.default_rng(0)
    from scipy import ndimage as ndi

    return ndi.gaussian_filter(rng.random(shape).astype(np.float32), (0.5, 2, 2)) * 100


def run_single(shape, factor, model, threads):
    import torch

    torch.set_num_threads(threads)
    from napari_medlearn import zoo
    from napari_medlearn.methods import super_resolve

    stack = _stack(shape)
    if model == "untrained-x5":
        from napari_medlearn.nets import SRNet

        args = dict(zoo.card("sr-brain-x4")["arch_args"]) if "sr-brain-x4" in zoo.available() else {}
        args.update(factor=factor)
        net = SRNet(**args).eval()
    elif model == "spline":
        net = "spline"
    else:
        net = zoo.load(model, device="cpu")
    super_resolve(stack[:2, :32, :32], (8.0, 1.0, 1.0), factor, model=net)     # warm-up
    import time

    t0 = time.perf_counter()
    r = super_resolve(stack, (8.0, 1.0, 1.0), factor, model=net)
    return {"method_seconds": time.perf_counter() - t0, "shape": r.image.shape}


def run_cine(model, threads):
    import time

    import torch

    torch.set_num_threads(threads)
    from napari_medlearn.methods import super_resolve
    from napari_medlearn.samples.cardiac_phantom import cardiac_cine_phantom

    ph = cardiac_cine_phantom(seed=2024)
    cine = ph.image.astype(np.float32)
    net = model
    if model not in ("spline",):
        from napari_medlearn import zoo

        net = zoo.load(model, device="cpu")
    t0 = time.perf_counter()
    r = super_resolve(cine, ph.spacing, 4, model=net)
    return {"method_seconds": time.perf_counter() - t0, "input": cine.shape, "shape": r.image.shape,
            "spacing": tuple(round(float(s), 2) for s in ph.spacing)}


def run_fusion(model, threads):
    import time

    import torch

    torch.set_num_threads(threads)
    from napari_medlearn.imaging import slices as S
    from napari_medlearn.methods import super_resolve_stacks
    from napari_medlearn.training.sr import coronal_stack, held_out_cases

    v = held_out_cases(4, modalities=("T1c",))[0][1]
    ax, ax_aff = S.thick_slices(v.image, v.affine, 4, "box", axis=0)
    cor, cor_aff = coronal_stack(v, 4)
    net = model
    if model != "average":
        from napari_medlearn import zoo

        net = zoo.load(model, device="cpu")
    t0 = time.perf_counter()
    r = super_resolve_stacks([(ax, ax_aff), (cor, cor_aff)], (1.0, 1.0, 1.0), model=net)
    return {"method_seconds": time.perf_counter() - t0, "shape": r.image.shape}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-quality", action="store_true")
    args = ap.parse_args()
    import os

    from napari_medlearn import zoo

    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} cores; torch threads {args.threads}")
    have = set(zoo.available())
    rows = []

    def line(label, fn, *fargs):
        _, peak, growth, extra = measure(fn, *fargs)
        rows.append((label, extra["method_seconds"], peak, growth))
        print(f"{label:58s} {extra['method_seconds']:7.2f} s  peak RSS {peak:7.0f} MiB (+{growth:.0f})  "
              f"-> {extra['shape']}", flush=True)
        return extra["method_seconds"]

    print("\n== speed ==")
    s5 = line("140x140x10 x5, SR network (untrained, shipped arch)", run_single, (10, 140, 140), 5, "untrained-x5",
              args.threads)
    p5 = line("140x140x10 x5, cubic B-spline (peer)", run_single, (10, 140, 140), 5, "spline", args.threads)
    print(f"  target <= 6 s: {'met' if s5 <= 6 else 'NOT met'} ({s5:.2f} s; {s5 / max(p5, 1e-9):.1f}x the spline)")
    if "sr-brain-x4" in have:
        line("140x140x10 x4, sr-brain-x4", run_single, (10, 140, 140), 4, "sr-brain-x4", args.threads)
        line("cardiac cine phantom (t,z,y,x) x4, sr-brain-x4", run_cine, "sr-brain-x4", args.threads)
    line("cardiac cine phantom (t,z,y,x) x4, cubic B-spline (peer)", run_cine, "spline", args.threads)
    if "sr-brain-x4-fused" in have:
        line("held-out brain axial+coronal fusion, sr-brain-x4-fused", run_fusion, "sr-brain-x4-fused", args.threads)
        line("held-out brain axial+coronal, average (peer)", run_fusion, "average", args.threads)

    if args.no_quality:
        return
    print("\n== quality: held-out BraTS subject, x4 box profile, PSNR inside the brain ==")
    import torch

    torch.set_num_threads(args.threads)
    from napari_medlearn.training.sr import HELD_OUT, evaluate_sr, held_out_cases

    single = zoo.load("sr-brain-x4", device="cpu") if "sr-brain-x4" in have else None
    fused = zoo.load("sr-brain-x4-fused", device="cpu") if "sr-brain-x4-fused" in have else None
    ev = evaluate_sr(single, fused, held_out_cases(4), 4)
    print(f"{'case':40s} {'spline':>14s} {'single SR':>14s} {'average':>14s} {'fused':>14s}   (PSNR dB / SSIM)")
    for r in ev["cases"]:
        print(f"{r['case']:40s} " + " ".join(f"{r['psnr_' + k]:7.2f}/{r['ssim_' + k]:.3f}"
                                             for k in ("spline", "single", "average", "fused")))
    s = ev["summary"]
    print(f"single - spline {s['single_minus_spline_db']:+.2f} dB (target >= +1.5); fused - single "
          f"{s['fused_minus_single_db']:+.2f} dB (target >= +1.0); fused - average {s['fused_minus_average_db']:+.2f} dB"
          f"  [{HELD_OUT}; models: {single is not None and 'sr-brain-x4' or 'spline'}, "
          f"{fused is not None and 'sr-brain-x4-fused' or 'average'}]")


if __name__ == "__main__":
    main()
