"""Cardiac segmentation speed and memory on CPU (issues 2 and 9).

Prints seconds and peak memory of ``segment_heart`` (percentile normalisation, in-plane
resampling, FCN with transposition test-time augmentation, post-processing, measures) on
synthetic 30-frame cines of 10 x 192 x 192 and 10 x 256 x 256, against a named peer run in the
same process: the bare network forward pass over the same slices at the model's resolution
(what any FCN pipeline must pay), so the ratio is the cost of everything around the network.

Run: ``python benchmarks/cardiac.py [--model NAME] [--threads N]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _peak import measure  # noqa: E402


def _cine(shape, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    t, z, y, x = shape
    yy, xx = np.mgrid[:y, :x]
    img = np.zeros(shape, np.float32)
    for f in range(t):   # a beating bright disc in noise: enough to exercise every step
        r = y * (0.12 + 0.03 * np.cos(2 * np.pi * f / t))
        img[f] = ((yy - y / 2) ** 2 + (xx - x / 2) ** 2 < r ** 2) * 1.0
    return img + 0.1 * rng.random(shape, dtype=np.float32)


def full_pipeline(shape, model, threads):
    import torch

    from napari_medlearn import methods, zoo

    torch.set_num_threads(threads)
    cine = _cine(shape)
    net = zoo.load(model, device="cpu")
    methods.segment_heart(cine[:1, :1], (8.0, 1.5, 1.5), model=net)   # warm-up
    import time

    t0 = time.perf_counter()
    res = methods.segment_heart(cine, (8.0, 1.5, 1.5), model=net)
    return {"seconds_inside": time.perf_counter() - t0, "frames": res.frames}


def forward_only(shape, model, threads):
    import time

    import torch

    from napari_medlearn import zoo

    torch.set_num_threads(threads)
    net = zoo.load(model, device="cpu")
    t, z, y, x = shape
    target = net.card["input"]["in_plane_spacing_mm"]
    h = int(round(y * 1.5 / target / 16 + 0.5)) * 16
    w = int(round(x * 1.5 / target / 16 + 0.5)) * 16
    xin = torch.rand(z, 1, h, w)
    with torch.inference_mode():
        net(xin[:1])
        t0 = time.perf_counter()
        for _ in range(t):
            torch.softmax(net(xin), 1)
    return {"seconds_inside": time.perf_counter() - t0, "frames": t}


def main() -> None:
    from napari_medlearn import zoo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="zoo name (default: the default cardiac model)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    model = args.model or zoo.default_model("cardiac-segmentation")
    print(f"model {model}, {args.threads} CPU threads")
    print(f"{'cine (t,z,y,x)':22s} {'run':34s} {'seconds':>8s} {'peak RSS MiB':>13s} {'growth MiB':>11s}")
    for shape in ((30, 10, 192, 192), (30, 10, 256, 256)):
        rows = {}
        for name, fn in (("segment_heart (full pipeline, TTA)", full_pipeline),
                         ("peer: bare FCN forward, same slices", forward_only)):
            _, peak, growth, extra = measure(fn, shape, model, args.threads)
            rows[name] = extra["seconds_inside"]
            print(f"{str(shape):22s} {name:34s} {extra['seconds_inside']:8.1f} {peak:13.0f} {growth:11.0f}")
        full, peer = rows.values()
        print(f"{str(shape):22s} ratio full / bare forward: {full / peer:.2f}x "
              f"(transposition TTA alone accounts for 2x)")


if __name__ == "__main__":
    main()
