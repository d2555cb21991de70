"""SonoNet frames per second on CPU (issue 4): SonoNet-16/32/64, with and without saliency.

For each width this times, in one process and on the same frames, ``methods.detect_planes``'s
batched path (BatchNorm folded into the convolutions, channels-last, ``torch.inference_mode``
without saliency; guided back-propagation to the image + category map + box with saliency)
against a peer: the plain ``nn.Module`` in eval mode (``model(x)`` under ``torch.no_grad``, no
saliency), i.e. what a straightforward PyTorch port does. Frames are 224 x 288 (the network's
input size, so no resize is timed) unless ``--frame`` gives another size (e.g. ``619 793``, a
cropped scanner capture, which adds the resize and the full-resolution saliency). Weights are
random (speed does not depend on them); ``--model`` times a zoo model instead. The issue's
target: SonoNet-16 with saliency >= 25 frames/s on 2 cores.

Run: ``python benchmarks/sononet.py [--threads 2] [--frames 64] [--batch 16] [--frame 224 288]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def fps(fn, n_frames: int, repeats: int = 2) -> float:
    fn()                                    # warm-up (oneDNN primitive creation)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n_frames / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--frame", type=int, nargs=2, default=(224, 288))
    ap.add_argument("--widths", type=int, nargs="+", default=(16, 32, 64))
    ap.add_argument("--model", default=None, help="time this zoo model / checkpoint instead")
    args = ap.parse_args()

    import torch

    from napari_medlearn import methods
    from napari_medlearn.methods.planes import _Runner
    from napari_medlearn.nets import SonoNet
    from napari_medlearn.nets.sononet import sononet_preprocess

    torch.set_num_threads(args.threads)
    try:    # a phantom sweep: realistic content and a realistic share of Background frames
        from napari_medlearn.samples.fetal_phantom import fetal_sweep

        video = fetal_sweep(seed=2024, n_frames=args.frames, shape=tuple(args.frame)).frames
        source = "fetal phantom sweep seed 2024"
    except ImportError:
        video = np.random.default_rng(0).gamma(2.0, 40.0, size=(args.frames, *args.frame)).astype(np.float32)
        source = "gamma noise"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.frames} frames of "
          f"{args.frame[0]}x{args.frame[1]} ({source}), batch {args.batch}")
    models = []
    if args.model:
        models.append((args.model, methods.planes.resolve_model(args.model, device="cpu")))
    else:
        for w in args.widths:
            torch.manual_seed(0)
            net = SonoNet(width=w).eval()
            net.card = {"input": {"size": [224, 288]}}
            models.append((f"SonoNet-{w}", net))
    print(f"{'model':<16}{'input':>9}{'plain module':>14}{'no saliency':>14}{'ratio':>8}{'saliency':>12}"
          f"{'planes':>8}{'target':>10}")
    for name, net in models:
        runner = _Runner(net)

        def plain():
            with torch.no_grad():
                for i in range(0, args.frames, args.batch):
                    x = torch.from_numpy(video[i:i + args.batch])[:, None]
                    torch.softmax(net(sononet_preprocess(x, runner.size)), dim=1)

        def method(sal: bool):
            def go():
                for i in range(0, args.frames, args.batch):
                    runner.run(video[i:i + args.batch], sal)
            return go

        f_plain = fps(plain, args.frames)
        f_fast = fps(method(False), args.frames)
        f_sal = fps(method(True), args.frames)
        _, k, _, _ = runner.run(video[: args.batch], False)
        share = float(np.mean(k != runner.background)) if runner.background is not None else 1.0
        target = "" if name != "SonoNet-16" else ("met" if f_sal >= 25 else "MISSED")
        size = f"{runner.size[0]}x{runner.size[1]}"
        print(f"{name:<16}{size:>9}{f_plain:>11.1f} /s{f_fast:>11.1f} /s{f_fast / f_plain:>7.2f}x{f_sal:>9.1f} /s"
              f"{100 * share:>7.0f}%{'  >=25 ' + target if target else '':>10}", flush=True)
    print("frames/s, best of 2 runs after a warm-up; 'ratio' = detect_planes path without saliency / plain "
          "module;\n'planes' = share of frames predicted as a standard plane (first batch), the ones that get "
          "saliency\n(guided back-propagation); Background frames get none. Random-weight networks rarely answer "
          "Background,\nso their saliency column is close to the every-frame worst case.")
    import os

    print(f"load average during the run: {os.getloadavg()[0]:.1f} (2 cores; other jobs slow every column)")


if __name__ == "__main__":
    main()
