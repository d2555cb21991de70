"""CPU runtimes on the shipped networks: torch eager, ONNX Runtime and OpenVINO side by side (issue 36).

For each shipped architecture, the same seeded input of the size a method feeds it, the same
thread count, one fresh process per (network, runtime): seconds per forward (after a warm-up; the
export is made before timing and cached as :mod:`napari_medlearn.inference` does), peak resident
memory, the speed-up over torch and the largest absolute difference from torch's output (and,
for segmentation networks, the share of voxels whose argmax label differs).

OpenVINO (float32, through :func:`napari_medlearn.inference.engine`) is the runtime the package
uses; its bfloat16 mode (for cards that allow mixed precision, on CPUs with bf16) and ONNX
Runtime (a peer when installed, never imported by the package) run the same cached export. With ``--cardiac`` the cardiac pipeline (``segment_heart`` on a 30 x 10 x 256 x
256 cine) runs with ``backend="torch"`` and ``backend="auto"`` side by side too.

With ``--acdc``: the accuracy of torch, OpenVINO float32 and bfloat16 on the cardiac card's
held-out ACDC patients (Dice per structure, LVEF error, labels that differ from torch's).

Run: ``python benchmarks/speed.py [--threads 2] [--reps 3] [--only NAME] [--cardiac] [--acdc]``
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _peak import measure  # noqa: E402

#: name -> (zoo model, input shapes, dynamic axes per input as the methods ask, what feeds it)
CASES = {
    "cardiac FCN (1 frame)": ("cardiac-fcn-acdc", [(10, 1, 256, 256)], [(0, 2, 3)],
                              "10 short-axis slices at 1.5 mm, methods.cardiac"),
    "DeepMedic segment": ("lesions-brats", "deepmedic", None, "one 39^3 output block + context, methods.lesions"),
    "SonoNet-16 (16 frames)": ("sononet-phantom", [(16, 1, 112, 144)], [()], "card size, methods.planes"),
    "SR x4 tile": ("sr-brain-x4", [(1, 1, 10, 112, 112)], [()], "a 96+2x8 tile of a 10-slice stack, methods.sr"),
    "recon cascade 256^2": ("recon-cascade-mr", "cascade", None, "one 2D slice, methods.recon"),
}


def _inputs(net, spec, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    if spec == "deepmedic":
        geo = net.geometry((39, 39, 39))
        return [torch.randn((1, net.in_channels if hasattr(net, "in_channels") else 2)
                            + tuple(a.segment for a in geo), generator=g)], [()]
    if spec == "cascade":
        k = torch.randn(1, 2, 256, 256, generator=g)
        m = (torch.rand(1, 1, 256, 1, generator=g) < 0.3).float().expand(1, 1, 256, 256).contiguous()
        return [k * m, m], [(), ()]
    return [torch.randn(s, generator=g) for s in spec], None


def _run(runtime, model_name, spec, dyn, reps, threads, zoo_dir):
    import time

    import numpy as np
    import torch

    os.environ["MEDLEARN_ZOO"] = zoo_dir
    torch.set_num_threads(threads)
    from napari_medlearn import inference, zoo

    net = zoo.load(model_name, device="cpu")
    xs, d = _inputs(net, spec)
    dyn = d or dyn
    try:
        return _timed(runtime, net, xs, dyn, reps, threads)
    except Exception as e:  # noqa: BLE001  an architecture the exporter refuses: a row saying so
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}


def _timed(runtime, net, xs, dyn, reps, threads):
    import time

    import numpy as np
    import torch

    from napari_medlearn import inference

    with torch.inference_mode():
        if runtime == "torch":
            fn = net
        elif runtime == "openvino":   # the package's own path: napari_medlearn.inference
            eng = inference.engine(net, xs, backend="onnx", dynamic=dyn)
            if not eng.backend.startswith("openvino"):
                return {"error": eng.note}
            fn = eng
        elif runtime == "onnxruntime":   # the peer, on the same cached export
            import onnxruntime as ort

            path = inference.cached_export(net, [x.detach() for x in xs], dyn)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            names = [i.name for i in sess.get_inputs()]

            def fn(*a):
                return torch.from_numpy(sess.run(None, dict(zip(names, (t.numpy() for t in a))))[0])
        else:  # openvino-bf16: the same export in this CPU's bfloat16 (what a card allowing mixed
            # precision gets where the CPU has bf16: faster, ~1e-1 off on logits)
            import openvino as ov

            path = inference.cached_export(net, [x.detach() for x in xs], dyn)
            core = ov.Core()
            comp = core.compile_model(core.read_model(str(path)), "CPU", {
                "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16"})

            def fn(*a):
                return torch.from_numpy(np.array(comp([t.numpy() for t in a])[0]))
        fn(*xs)   # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fn(*xs)
        sec = (time.perf_counter() - t0) / reps
    return {"seconds": sec, "out": out.float().numpy()}


def _cardiac(backend, threads, zoo_dir):
    import time

    import numpy as np
    import torch

    os.environ["MEDLEARN_ZOO"] = zoo_dir
    torch.set_num_threads(threads)
    from cardiac import _cine

    from napari_medlearn import methods, zoo

    net = zoo.load("cardiac-fcn-acdc", device="cpu")
    cine = _cine((30, 10, 256, 256))
    methods.segment_heart(cine[:1], (8.0, 1.5, 1.5), model=net, backend=backend)   # warm-up + export
    t0 = time.perf_counter()
    res = methods.segment_heart(cine, (8.0, 1.5, 1.5), model=net, backend=backend)
    return {"seconds": time.perf_counter() - t0, "labels": res.labels, "backend": res.backend,
            "probs": np.asarray(res.probabilities, np.float32)}


def _acdc(mode, threads, zoo_dir):
    """The card's held-out ACDC patients (ED + ES as a two-frame cine) through ``segment_heart``
    with ``mode``: ``torch``, ``openvino`` (float32) or ``openvino-bf16`` (the card's
    ``inference.mixed_precision`` switched on for this run). Dice per structure, LVEF error."""
    import time

    import numpy as np
    import torch

    os.environ["MEDLEARN_ZOO"] = zoo_dir
    torch.set_num_threads(threads)
    from napari_medlearn import methods, zoo
    from napari_medlearn.imaging import measures as M
    from napari_medlearn.training.acdc import find_acdc_root, load_patient

    net = zoo.load("cardiac-fcn-acdc", device="cpu")
    tta = not mode.endswith("-noTTA")
    mode = mode.removesuffix("-noTTA")
    if mode == "openvino-bf16":
        net.card = {**net.card, "inference": {**net.card.get("inference", {}), "mixed_precision": True}}
    backend = "torch" if mode == "torch" else "onnx"
    root = find_acdc_root()   # $MEDLEARN_ACDC, or shared/data/acdc beside the checkout
    names = zoo.card("cardiac-fcn-acdc")["training"]["split"]["validation"]
    dice, lvef_err, labels, seconds, used = [], [], [], 0.0, ""
    for name in names:
        p = load_patient(root, name)
        image, truth = p.cine()
        t0 = time.perf_counter()
        res = methods.segment_heart(image, p.spacing, model=net, backend=backend, transpose_tta=tta)
        seconds += time.perf_counter() - t0
        used = res.backend
        d = M.dice_per_label(res.labels, truth)
        dice.append([d[k] for k in sorted(d)])
        lvef_err.append(abs(res.measures["LVEF_pct"] - M.cardiac_measures(truth, p.spacing)["LVEF_pct"]))
        labels.append(res.labels)
    return {"dice": np.array(dice), "lvef": np.array(lvef_err), "labels": labels, "seconds": seconds,
            "backend": used + ("" if tta else " no TTA"), "n": len(names)}


def acdc_table(threads, zoo_dir, modes=("torch", "openvino", "openvino-bf16")) -> None:
    """Accuracy of each CPU mode on the held-out patients, beside the first mode's (torch's);
    a mode ending in ``-noTTA`` runs without the transposition pass (issue 36: less work)."""
    import numpy as np

    ref = None
    print(f"ACDC held-out (cardiac-fcn-acdc card's validation split), ED+ES, {threads} threads")
    print(f"{'mode':22s} {'seconds':>8s} {'Dice LV':>8s} {'Myo':>7s} {'RV':>7s} {'max |dDice| vs torch':>21s} "
          f"{'LVEF MAE':>9s} {'labels differ':>14s}")
    for mode in modes:
        _, _, _, r = measure(_acdc, mode, threads, zoo_dir)
        ref = ref or r
        mean = r["dice"].mean(0)
        dd = float(np.abs(mean - ref["dice"].mean(0)).max())
        differ = np.mean([np.mean(a != b) for a, b in zip(r["labels"], ref["labels"])])
        print(f"{r['backend']:22s} {r['seconds']:8.1f} {mean[0]:8.4f} {mean[1]:7.4f} {mean[2]:7.4f} {dd:21.5f} "
              f"{np.nanmean(r['lvef']):9.3f} {100 * differ:13.4f}%  (n={r['n']})")


def main() -> None:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default=None, help="run only cases whose name contains this")
    ap.add_argument("--cardiac", action="store_true", help="also the cardiac pipeline, torch vs auto")
    ap.add_argument("--acdc", action="store_true", help="only the accuracy of each CPU mode on held-out ACDC patients")
    ap.add_argument("--modes", nargs="+", default=["torch", "openvino", "openvino-bf16"],
                    help="--acdc: modes to compare, the first the reference (add -noTTA: no transposition pass)")
    args = ap.parse_args()
    if args.acdc:
        acdc_table(args.threads, tempfile.mkdtemp(prefix="medlearn-speed-"), args.modes)
        return
    runtimes = ["torch", "openvino", "openvino-bf16"] + (["onnxruntime"] if importlib.util.find_spec("onnxruntime") else [])
    zoo_dir = tempfile.mkdtemp(prefix="medlearn-speed-")   # a fresh export cache
    print(f"{args.threads} CPU threads, {args.reps} timed forwards after a warm-up; load average "
          f"{os.getloadavg()[0]:.1f} at start")
    print(f"{'network':24s} {'runtime':12s} {'s/forward':>10s} {'peak MiB':>9s} {'speed-up':>9s} "
          f"{'max|diff|':>10s} {'labels differ':>14s}")
    for case, (model, spec, dyn, _what) in CASES.items():
        if args.only and args.only not in case:
            continue
        ref = None
        for rt in runtimes:
            _, peak, _, r = measure(_run, rt, model, spec, dyn, args.reps, args.threads, zoo_dir)
            if "error" in r:
                print(f"{case:24s} {rt:12s} {'-':>10s} {'-':>9s} {'-':>9s} {'-':>10s}  {r['error']}")
                continue
            if ref is None:
                ref = r
            diff = float(np.abs(r["out"] - ref["out"]).max())
            lab = "-"
            if r["out"].ndim >= 4 and r["out"].shape[1] > 1 and "recon" not in case and "SR" not in case:
                lab = f"{100 * float(np.mean(r['out'].argmax(1) != ref['out'].argmax(1))):.4f}%"
            print(f"{case:24s} {rt:12s} {r['seconds']:10.3f} {peak:9.0f} {ref['seconds'] / r['seconds']:8.2f}x "
                  f"{diff:10.2e} {lab:>14s}")
    if args.cardiac:
        rows = {}
        for b in ("torch", "auto"):
            _, peak, _, r = measure(_cardiac, b, args.threads, zoo_dir)
            rows[b] = r
            print(f"{'segment_heart 30x10x256^2':24s} {r['backend']:12s} {r['seconds']:10.1f} {peak:9.0f} "
                  f"{rows['torch']['seconds'] / r['seconds']:8.2f}x "
                  f"{float(np.abs(r['probs'] - rows['torch']['probs']).max()):10.2e} "
                  f"{100 * float(np.mean(r['labels'] != rows['torch']['labels'])):13.4f}%")
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
