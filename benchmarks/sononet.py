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
    rng = np.random.default_rng(0)
    video = rng.gamma(2.0, 40.0, size=(args.frames, *args.frame)).astype(np.float32)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.frames} frames of "
          f"{args.frame[0]}x{args.frame[1]}, batch {args.batch}")
    models = []
    if args.model:
        models.append((args.model, methods.planes.resolve_model(args.model, device="cpu")))
    else:
        for w in args.widths:
            torch.manual_seed(0)
            net = SonoNet(width=w).eval()
            net.card = {"input": {"size": [224, 288]}}
            models.append((f"SonoNet-{w}", net))
    print(f"{'model':<14}{'plain module':>14}{'no saliency':>14}{'ratio':>8}{'saliency':>12}{'target':>10}")
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
        target = "" if name != "SonoNet-16" else ("met" if f_sal >= 25 else "MISSED")
        print(f"{name:<14}{f_plain:>11.1f} /s{f_fast:>11.1f} /s{f_fast / f_plain:>7.2f}x{f_sal:>9.1f} /s"
              f"{'  >=25 ' + target if target else '':>10}", flush=True)
    print("frames/s, best of 2 runs after a warm-up; 'ratio' = detect_planes path without saliency / plain module")


if __name__ == "__main__":
    main()
