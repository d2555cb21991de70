"""A cohort through ``medlearn batch``: cases per minute in one process vs dask worker processes.

Runs ``batch.run_batch("segment-heart", ...)`` with the best shipped cardiac model on a cohort of
cardiac cine phantoms (``samples.cardiac_phantom``, ``--frames`` frames each; ``--acdc N`` takes the first
N ACDC patients from ``../shared/data/acdc`` instead), three ways in the same process:

- **peer**: the cases one after the other in this process (``workers=1``; models loaded once);
- dask ``processes`` with ``--workers`` processes, the CPU threads shared out between them;
- a resumed run over the finished cohort (every case skipped: the cost of resuming).

Usage::

    python benchmarks/batch.py [--cases 4] [--frames 4] [--workers 2] [--acdc N]

Prints seconds per case and the ratio to the peer. On a 2-core machine two workers at one
thread each are about as fast as one process at two threads (the convolutions already use both
cores); dask pays off on machines with more cores or a cluster (``--scheduler tcp://...``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _phantom_cohort(folder: Path, n: int, frames: int) -> Path:
    from napari_medlearn.imaging.io import write_nifti
    from napari_medlearn.samples.cardiac_phantom import cardiac_cine_phantom

    for seed in range(n):
        image, _ = cardiac_cine_phantom(seed=100 + seed, n_frames=frames).volumes()
        write_nifti(image, folder / f"phantom{seed:02d}.nii.gz")
    return folder


def _acdc_cohort(folder: Path, n: int) -> Path:
    from napari_medlearn.training.acdc import find_acdc_root, list_patients

    root = find_acdc_root()
    for name, _group in list_patients(root)[:n]:
        (folder / name).symlink_to(root / name, target_is_directory=True)
    return folder


def main() -> None:
    import torch

    from napari_medlearn.batch import run_batch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--frames", type=int, default=4, help="frames per phantom cine (a full one has 20-30)")
    ap.add_argument("--acdc", type=int, default=0, help="use the first N ACDC patients instead of phantoms")
    ap.add_argument("--scheduler", default="processes")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="medlearn-batch-bench-"))
    cohort = tmp / "cohort"
    cohort.mkdir()
    cohort = _acdc_cohort(cohort, args.acdc) if args.acdc else _phantom_cohort(cohort, args.cases, args.frames)
    n = len(list(cohort.iterdir()))
    print(f"cohort: {n} {'ACDC patients' if args.acdc else 'cardiac cine phantoms'}; torch threads "
          f"{torch.get_num_threads()}")

    t0 = time.perf_counter()
    serial = run_batch("segment-heart", cohort, tmp / "serial", device="cpu")
    t_serial = time.perf_counter() - t0
    t0 = time.perf_counter()
    parallel = run_batch("segment-heart", cohort, tmp / "dask", device="cpu", workers=args.workers,
                         scheduler=args.scheduler)
    t_parallel = time.perf_counter() - t0
    t0 = time.perf_counter()
    resumed = run_batch("segment-heart", cohort, tmp / "serial", device="cpu")
    t_resume = time.perf_counter() - t0
    for label, res in (("serial", serial), ("dask", parallel), ("resumed", resumed)):
        assert not res.failed, [(o.case, o.error) for o in res.failed]
    assert resumed.count("skipped") == n
    print(f"{'run':40s} {'seconds':>8s} {'s/case':>7s} {'speed-up':>8s}")
    for label, t in (("peer: one process, one case at a time", t_serial),
                     (f"dask {args.scheduler}, {args.workers} workers", t_parallel)):
        print(f"{label:40s} {t:8.1f} {t / n:7.2f} {t_serial / t:7.2f}x")
    print(f"{'resumed (every case done before)':40s} {t_resume:8.3f} {t_resume / n:7.3f}")
    print(f"outputs in {tmp}")


if __name__ == "__main__":
    main()
