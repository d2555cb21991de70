"""A 3-member EMMA ensemble on a 240x240x155 two-channel brain volume on CPU: seconds and peak memory.

Runs ``methods.segment_lesions(..., model=[DeepMedic, 3D U-Net, 3D FCN])`` (each member tiled:
DeepMedic by dense segments, the others by MONAI sliding windows over the brain's box; the mean
posterior, entropy, mutual information and member variance on the full grid) with the shipped
EMMA members when present, else random weights of the same architectures (the cost does not
depend on the values), on a real BraTS subject from ``../shared/data/brats-deepmedic`` (or a
synthetic volume of that size), each run in a fresh process so peak RSS is its own. Peers:

- each member alone, through the same pipeline (the ensemble should cost about their sum plus
  the uncertainty maps).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/emma.py [--threads 2] [--no-peers]

Target (issue 12): memory bounded by tiling, <= 4 GiB peak on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _peak import measure  # noqa: E402
from deepmedic import _volume  # noqa: E402


def _members():
    from napari_medlearn import nets, zoo
    from napari_medlearn.training.deepmedic import lesion_input_spec
    from napari_medlearn.training.emma import MEMBER_RECIPES, member_arch_args

    out = []
    for name, recipe in MEMBER_RECIPES.items():
        if name in zoo.available():
            out.append(zoo.load(name, device="cpu"))
            continue
        net = nets.build(recipe["arch"], **member_arch_args(recipe)).eval()
        net.card = {"input": lesion_input_spec(), "label_values": [0, 1, 2, 4], "inference": recipe.get("inference", {})}
        net.zoo_name = f"{name} (random weights)"
        out.append(net)
    return out


def run(threads: int, subject: str | None, which: int | None):
    import torch

    from napari_medlearn.methods.lesions import segment_lesions

    torch.set_num_threads(threads)
    ch, sp, mask, what = _volume(subject)
    members = _members()
    model = members if which is None else members[which]
    res = segment_lesions(ch, sp, model=model, brain_mask=mask)
    return what, res.model or "ensemble", ", ".join(getattr(m, "zoo_name", "?") for m in members)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--subject", default=None)
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args()
    runs = [("EMMA, 3 members", None)]
    if not args.no_peers:
        runs += [(f"peer: member {i + 1} alone", i) for i in range(3)]
    rows = []
    for label, which in runs:
        sec, peak, growth, extra = measure(run, args.threads, args.subject, which)
        rows.append((label, sec, peak))
        print(f"{label:28s} {sec:7.1f} s  peak RSS {peak / 1024:5.2f} GiB  ({extra[0]}; members {extra[2]})",
              flush=True)
    if len(rows) > 1:
        total = sum(r[1] for r in rows[1:])
        print(f"ensemble / sum of members alone: {rows[0][1] / total:.2f}x")
    print(f"target: <= 4 GiB peak on 2 cores -> {'met' if rows[0][2] <= 4096 else 'NOT met'} ({args.threads} threads)")


if __name__ == "__main__":
    main()
