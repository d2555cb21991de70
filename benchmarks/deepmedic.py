"""Dense DeepMedic inference on a 240x240x155 two-channel brain volume on CPU: seconds and peak memory.

Runs ``methods.segment_lesions`` (segment-wise tiling, segments without brain skipped) with the
shipped architecture (paper widths, one factor-3 subsampled pathway; the shipped weights when
present, else random weights of the same architecture: the cost does not depend on the values)
on a real BraTS subject from ``../shared/data/brats-deepmedic`` (or a synthetic volume of the
same size), each in a fresh process so peak RSS is its own. Peers in the same process:

- the same tiling without skipping segments that hold no brain;
- the reference configuration's inference segment (45^3 input -> 29^3 output blocks with the
  normal pathway alone; 29^3 output blocks here, with the subsampled context added);
- larger 57^3 output blocks (the default until the 39^3 blocks measured faster on CPU).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/deepmedic.py [--threads 2] [--subject brats_2013_pat0003_1]

Targets (issue 5): <= 60 s and <= 4 GiB on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _peak import measure  # noqa: E402


def _volume(subject: str | None):
    import numpy as np

    try:
        from napari_medlearn.training.deepmedic import find_brats_root, list_brats_subjects, load_brats_subject

        root = find_brats_root()
        name = subject or list_brats_subjects(root)[0]
        ch, lab, sp, mask, _ = load_brats_subject(root, name)
        return ch, sp, mask, f"BraTS {name} {ch.shape[1:]}"
    except FileNotFoundError:
        from napari_medlearn.samples.brain_lesions import synthetic_lesion_case

        c = synthetic_lesion_case(0, spacing_mm=1.0)
        ch = np.zeros((2, 155, 240, 240), np.float32)
        mask = np.zeros((155, 240, 240), bool)
        z, y, x = (min(a, b) for a, b in zip(c.channels.shape[1:], (155, 240, 240)))
        ch[:, :z, :y, :x] = c.channels[:, :z, :y, :x]
        mask[:z, :y, :x] = c.brain_mask[:z, :y, :x]
        return ch, (1.0, 1.0, 1.0), mask, "synthetic case padded to 155x240x240"


def _model():
    from napari_medlearn import zoo
    from napari_medlearn.methods.lesions import TASK
    from napari_medlearn.nets.deepmedic import DeepMedic
    from napari_medlearn.training.deepmedic import _attach_card, deepmedic_args

    if zoo.available(TASK):
        return zoo.load(zoo.default_model(TASK), device="cpu")
    net = DeepMedic(**deepmedic_args()).eval()
    _attach_card(net, deepmedic_args())
    net.zoo_name = "random weights (no shipped lesion model)"
    return net


def run(threads: int, subject: str | None, block: int, skip: bool):
    import numpy as np
    import torch

    from napari_medlearn.methods.lesions import dense_probabilities, normalise_channels, segment_lesions

    torch.set_num_threads(threads)
    ch, sp, mask, what = _volume(subject)
    net = _model()
    if skip:
        res = segment_lesions(ch, sp, model=net, brain_mask=mask, output_block=block)
        return what, res.model, float((res.labels > 0).sum() * np.prod(sp) / 1000)
    gen = dense_probabilities(net, normalise_channels(ch, mask), mask, output_block=block, skip_empty=False)
    for _ in gen:
        pass
    return what, getattr(net, "zoo_name", ""), None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--subject", default=None)
    ap.add_argument("--block", type=int, default=None, help="output block (default: the method's)")
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args()
    from napari_medlearn.methods.lesions import DEFAULT_OUTPUT_BLOCK

    block = args.block or DEFAULT_OUTPUT_BLOCK
    runs = [("segment_lesions (tiling, brain segments only)", block, True)]
    if not args.no_peers:
        runs += [("peer: same tiling, every segment", block, False),
                 ("peer: reference-size blocks (29^3 output)", 29, True),
                 ("peer: larger blocks (57^3 output)", 57, True)]
    rows = []
    for label, b, skip in runs:
        sec, peak, growth, extra = measure(run, args.threads, args.subject, b, skip)
        rows.append((label, b, sec, peak))
        print(f"{label:48s} block {b:3d}: {sec:7.1f} s  peak RSS {peak / 1024:5.2f} GiB  "
              f"({extra[0]}; model {extra[1]}{'; WT %.1f mL' % extra[2] if extra[2] is not None else ''})",
              flush=True)
    base = rows[0][2]
    for label, b, sec, peak in rows[1:]:
        print(f"{label}: {sec / base:.2f}x the time of segment_lesions")
    print(f"target: <= 60 s and <= 4 GiB on 2 cores -> {'met' if rows[0][2] <= 60 and rows[0][3] <= 4096 else 'NOT met'} "
          f"({args.threads} threads)")


if __name__ == "__main__":
    main()
