"""Interactive refinement against a simulated user (issue 39), on held-out real cases.

Starting from the model's labels, each interaction is one click at the most interior point of the
largest wrong region (3-D connected piece of one structure, missed or spurious), on the slice
where that region is largest: positive with the true label if the region was missed, negative
if it is spurious. Two users click the same way in the same run:

- ``refine``: :func:`napari_medlearn.methods.refine_labels` with the model's posteriors
  (``refine-g0.01``: the same with a ten times stronger posterior prior, ``gamma = 0.01``);
- ``brush``: no model, each click paints a disc of 5 mm radius on its slice with napari's brush
  semantics (every voxel of the disc takes the label: the true label at the click, 0 for a
  spurious region on background).

Reported: mean Dice of the structures (LV, myocardium, RV; necrotic core, oedema, enhancing) after
0, 1, 3, 5, 10 clicks, clicks to reach 0.90 / 0.95 (">10" when not reached), on all cases and on
those starting below 0.90, and the largest drop of any structure's Dice that a click not about it
caused. Cases: ACDC validation patients of the ``cardiac-fcn-acdc`` card (ED and ES), BraTS 2018
subjects of other institutions than the ``lesions-brats`` training ones (CBICA, TCIA).

    python benchmarks/interactive.py --out /tmp/interactive.txt [--acdc DIR] [--brats DIR] [--max-brats N] [--cache DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

CHECKPOINTS = (1, 3, 5, 10)
BRUSH_MM = 5.0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else 1.0


def scores(pred, truth, values) -> dict[int, float]:
    return {v: dice(pred == v, truth == v) for v in values if (truth == v).any()}


def next_click(pred, truth, values, spacing):
    """The simulated user's next click: ``(index, label, positive, true_value)`` or None."""
    best = None
    for v in values:
        for positive, wrong in ((True, (truth == v) & (pred != v)), (False, (pred == v) & (truth != v))):
            comp, n = ndi.label(wrong)
            if not n:
                continue
            sizes = np.bincount(comp.ravel())[1:]
            k = int(np.argmax(sizes))
            if best is None or sizes[k] > best[0]:
                best = (int(sizes[k]), comp == k + 1, v, positive)
    if best is None:
        return None
    _, region, v, positive = best
    z = int(np.argmax(region.reshape(region.shape[0], -1).sum(axis=1)))
    depth = ndi.distance_transform_edt(np.pad(region[z], 1), sampling=spacing[1:])[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    index = (z, int(y), int(x))
    return index, v, positive, int(truth[index])


def brush(pred, index, value, spacing):
    """napari's brush on one slice: a disc of ``BRUSH_MM`` radius takes ``value``."""
    out = pred.copy()
    z, y, x = index
    yy, xx = np.ogrid[:pred.shape[1], :pred.shape[2]]
    disc = ((yy - y) * spacing[1]) ** 2 + ((xx - x) * spacing[2]) ** 2 <= BRUSH_MM ** 2
    out[z][disc] = value
    return out


def simulate(start, truth, values, spacing, step, clicks=10):
    """Dice after each click (index 0: the start) and the worst harm to another structure."""
    pred, curve, harm, seconds = start.copy(), [], 0.0, []
    s = scores(pred, truth, values)
    curve.append(float(np.mean(list(s.values()))))
    for _ in range(clicks):
        c = next_click(pred, truth, values, spacing)
        if c is None:
            curve.append(curve[-1])
            continue
        t0 = time.time()
        pred = step(pred, c)
        seconds.append(time.time() - t0)
        s2 = scores(pred, truth, values)
        harm = max([harm] + [s[v] - s2[v] for v in s if v != c[1]])
        s = s2
        curve.append(float(np.mean(list(s.values()))))
    return curve, harm, seconds


def clicks_to(curve, level):
    hit = [i for i, d in enumerate(curve) if d >= level]
    return hit[0] if hit else None


def users(image, probs, values, spacing, gammas=(None, 0.01)):
    from napari_medlearn.methods.refine import GAMMA, Hint, refine_labels

    def refiner(gamma):
        def step(pred, c):
            index, v, positive, _ = c
            return refine_labels(image, pred, spacing, [Hint(index, v, positive)], probabilities=probs,
                                 label_values=values, gamma=GAMMA if gamma is None else gamma).labels
        return step

    out = {"refine" if g is None else f"refine-g{g:g}": refiner(g) for g in gammas}
    out["brush"] = lambda pred, c: brush(pred, c[0], c[3], spacing)
    return out


def run_case(name, image, start, truth, probs, values, spacing, log):
    row = {}
    fg = [v for v in values if v]
    for user, step in users(image, probs, values, spacing).items():
        curve, harm, secs = simulate(start, truth, fg, spacing, step)
        row[user] = (curve, harm, secs)
        log(f"{name:28s} {user:10s} " + " ".join(f"{d:.3f}" for d in curve)
            + f"  harm {harm:.4f}  {np.mean(secs) if secs else 0:.2f} s/click")
    return row


def summary(rows: dict, log, title):
    log(f"\n## {title}: {len(rows)} cases")
    below = [k for k, r in rows.items() if r["brush"][0][0] < 0.90]
    for subset, keys in (("all", list(rows)), ("start < 0.90", below)):
        if not keys:
            continue
        log(f"### {subset} ({len(keys)} cases)")
        log("user        " + "  ".join(f"{c:>6d}" for c in (0,) + CHECKPOINTS)
            + "   gain@5  to0.90  to0.95  max_harm  s/click")
        base = None
        for user in rows[keys[0]]:
            curves = np.array([rows[k][user][0] for k in keys])
            mean = curves.mean(axis=0)
            gain = mean[5] - mean[0]
            base = gain if user == "brush" else base
            to = []
            for level in (0.90, 0.95):
                n = [clicks_to(c, level) for c in curves]
                to.append(f"{np.median([x if x is not None else 11 for x in n]):.0f}"
                          f"({sum(x is not None for x in n)}/{len(n)})")
            secs = [s for k in keys for s in rows[k][user][2]]
            log(f"{user:10s}  " + "  ".join(f"{mean[c]:.3f}" for c in (0,) + CHECKPOINTS)
                + f"   {gain:+.3f}  {to[0]:>7s} {to[1]:>7s}  {max(rows[k][user][1] for k in keys):.4f}"
                + f"   {np.mean(secs) if secs else 0:.2f}")
        log("(to0.90/to0.95: median clicks, 11 = not within 10, (reached/cases))")


def cached(cache, name, compute):
    """``compute()`` -> (labels, probabilities, values), kept in ``cache`` (a folder) when given:
    a rerun with other refinement settings then skips the networks."""
    path = Path(cache) / f"{name.replace(' ', '_')}.npz" if cache else None
    if path is not None and path.exists():
        z = np.load(path)
        return z["labels"], z["probs"], tuple(int(v) for v in z["values"])
    labels, probs, values = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, labels=labels, probs=probs.astype(np.float16), values=np.asarray(values))
    return labels, probs, values


def cardiac_cases(root, log, cache=None):
    from napari_medlearn import methods, zoo
    from napari_medlearn.training import acdc

    root = acdc.find_acdc_root(root)
    net = zoo.load("cardiac-fcn-acdc", device="cpu")
    rows = {}
    for name in zoo.card("cardiac-fcn-acdc")["training"]["split"]["validation"]:
        p = acdc.load_patient(root, name)
        for key, image, truth in (("ED", p.ed_image, p.ed_labels), ("ES", p.es_image, p.es_labels)):
            def compute(image=image):
                r = methods.segment_heart(image, p.spacing, model=net)
                return r.labels, r.probabilities, (0, 1, 2, 3)

            start, probs, values = cached(cache, f"{name} {key}", compute)
            rows[f"{name} {key}"] = run_case(f"{name} {key}", image, start, truth.astype(np.uint8),
                                             probs.astype(np.float32), values, p.spacing, log)
    return rows


def brats_cases(root, max_n, log, cache=None):
    from napari_medlearn import methods
    from napari_medlearn.imaging.io import read_nifti

    rows = {}
    subjects = sorted(d for d in Path(root).iterdir() if d.is_dir() and ("CBICA" in d.name or "TCIA" in d.name))
    for d in subjects[:max_n]:
        vols = {k: read_nifti(next(d.glob(f"*_{k}.nii.gz"))) for k in ("flair", "t1ce", "seg")}
        f = vols["flair"]
        image = np.stack([np.asarray(vols["flair"].data, np.float32), np.asarray(vols["t1ce"].data, np.float32)])
        truth = np.asarray(vols["seg"].data).astype(np.uint8)
        def compute():
            t0 = time.time()
            r = methods.segment_lesions(image, f.spacing, model="lesions-brats", affine=f.affine, device="cpu")
            log(f"{d.name}: segmented in {time.time() - t0:.0f} s")
            return r.labels, r.probabilities, tuple(r.label_values)

        start, probs, values = cached(cache, d.name, compute)
        rows[d.name] = run_case(d.name, image, start, truth, probs.astype(np.float32), values, f.spacing, log)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="interactive.txt")
    ap.add_argument("--acdc", default="/work/shared/data/acdc")
    ap.add_argument("--brats", default="/work/shared/data/brats2018/labelled")
    ap.add_argument("--max-brats", type=int, default=7)
    ap.add_argument("--skip", choices=("cardiac", "lesions"), default=None)
    ap.add_argument("--cache", default=None, help="folder keeping the models' outputs between runs")
    args = ap.parse_args(argv)
    out = open(args.out, "w")

    def log(line):
        print(line, flush=True)
        out.write(line + "\n")
        out.flush()

    results = {}
    if args.skip != "cardiac":
        results["ACDC validation (cardiac-fcn-acdc)"] = cardiac_cases(args.acdc, log, args.cache)
    if args.skip != "lesions" and args.max_brats > 0:
        results["BraTS 2018 CBICA/TCIA (lesions-brats)"] = brats_cases(args.brats, args.max_brats, log, args.cache)
    for title, rows in results.items():
        summary(rows, log, title)


if __name__ == "__main__":
    main()
