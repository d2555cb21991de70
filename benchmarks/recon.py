"""MRI reconstruction quality and speed on CPU (issue 3): the deep cascade against its peers.

On real MR images (held-out axial slices of nilearn's MNI152 T1, 1 mm, 256 x 256; and the
sources the shipped 2D model never trained on: dipy's T1 coronal slice, pydicom-data's shoulder
and abdomen MR files, BraTS FLAIR/T1c mid-tumour slices from ../shared when present), each
undersampled at R=4 and R=8 (Cartesian, Gaussian variable density, 8 centre lines), this
prints PSNR/SSIM and seconds, in one process, for

- zero-filling (the inverse FFT of the undersampled k-space);
- compressed sensing: SigPy's L1-wavelet reconstruction (``sigpy.mri.app.L1WaveletRecon``,
  100 iterations), its lambda tuned *per image* against the reference (an oracle choice that
  favours the peer; ``training.recon.compressed_sensing_l1_wavelet``);
- the deep cascade through ``methods.reconstruct`` (default model, or ``--model``);

then the mean PSNR gains (cascade - CS, cascade - zero-filling) with the issue's targets, and
the speed figures: a 256 x 256 image through a 2D D5-C5 and a 30-frame 256 x 256 sequence
through a 2D+t D5-C5 (the shipped ones, else untrained ones of the presets' sizes, and the
paper's width 64 for reference).

Run: ``pip install -e ".[bench]"; python benchmarks/recon.py [--model NAME] [--threads 2]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

MNI_Z = (94, 100, 106)   # inside the recon-2d preset's held-out block


def real_images():
    from napari_medlearn.samples import mni152_t1
    from napari_medlearn.training.recon import held_out_real_mr, pad_to

    vol = mni152_t1(resolution=1).data
    cases = [(f"MNI152 T1 z={z}", pad_to(vol[z] / float(vol[z].max()), 256)) for z in MNI_Z]
    extra = [(name.replace("pydicom-data ", "").replace("brats_2013_", ""), img)
             for _, name, img in held_out_real_mr(256)]
    if not any(n.startswith("MR2") for n, _ in extra):
        print("(pydicom-data not installed: no shoulder/abdomen images; pip install napari-medlearn[bench])")
    return cases + extra


def quality_table(model, threads: int) -> None:
    import torch

    from napari_medlearn.imaging import kspace as K
    from napari_medlearn.methods import reconstruct
    from napari_medlearn.methods.recon import reconstruction_quality
    from napari_medlearn.training.recon import CS_LAMBDAS, compressed_sensing_l1_wavelet

    torch.set_num_threads(threads)
    try:
        import sigpy  # noqa: F401
        have_cs = True
    except ImportError:
        have_cs = False
        print("(SigPy not installed: no compressed-sensing peer; pip install napari-medlearn[bench])")
    cases = real_images()
    reconstruct(*K.simulate_acquisition(cases[0][1], 4), model=model)   # warm-up, model loading
    print(f"{'image':34s} {'R':>2s} {'method':24s} {'PSNR dB':>8s} {'SSIM':>6s} {'seconds':>8s}")
    rows = []
    model_name = ""
    for R in (4, 8):
        for i, (name, ref) in enumerate(cases):
            k, m = K.simulate_acquisition(ref, R, "cartesian", 8, seed=100 + i)
            t0 = time.perf_counter()
            zf = K.zero_filled(k)
            t_zf = time.perf_counter() - t0
            res = reconstruct(k, m, model=model)
            model_name = res.model_name
            out = {"zero-filled": (zf, t_zf), "cascade": (res.image, res.seconds)}
            if have_cs:
                x, lam, t_cs = compressed_sensing_l1_wavelet(k, m, ref)
                out[f"CS L1-wavelet (l={lam:g})"] = (x, t_cs)
            for method, (img, sec) in out.items():
                q = reconstruction_quality(ref, img)
                rows.append({"R": R, "image": name, "method": method.split(" (")[0], **q, "seconds": sec})
                print(f"{name:34s} {R:2d} {method:24s} {q['psnr_db']:8.2f} {q['ssim']:6.3f} {sec:8.2f}")
    print(f"\ncascade model: {model_name}; CS lambda tuned per image over {CS_LAMBDAS}")
    groups = {"MNI152 held-out slices (a training source, slices never trained on)": lambda n: n.startswith("MNI152"),
              "sources never trained on (dipy brain, pydicom-data shoulder + abdomen, BraTS)":
                  lambda n: not n.startswith("MNI152"),
              "all images": lambda n: True}
    for group, member in groups.items():
        if not any(member(r["image"]) for r in rows):
            continue
        print(f"\n{group}")
        print(f"{'R':>2s} {'method':16s} {'mean PSNR':>9s} {'mean SSIM':>9s} {'mean s':>7s}")
        for R in (4, 8):
            means = {}
            for method in ("zero-filled", "CS L1-wavelet", "cascade"):
                sel = [r for r in rows if r["R"] == R and r["method"] == method and member(r["image"])]
                if not sel:
                    continue
                means[method] = {k: float(np.mean([r[k] for r in sel])) for k in ("psnr_db", "ssim", "seconds")}
                mm = means[method]
                print(f"{R:2d} {method:16s} {mm['psnr_db']:9.2f} {mm['ssim']:9.3f} {mm['seconds']:7.2f}")
            c, z = means["cascade"], means["zero-filled"]
            line = f"R={R}: cascade - zero-filled {c['psnr_db'] - z['psnr_db']:+.2f} dB"
            if R == 4:
                line += " (target >= +5)"
            if "CS L1-wavelet" in means:
                cs = means["CS L1-wavelet"]
                target = "+3" if R == 4 else "+2"
                line += (f"; cascade - CS {c['psnr_db'] - cs['psnr_db']:+.2f} dB (target >= {target}); "
                         f"CS / cascade time {cs['seconds'] / c['seconds']:.1f}x (CS tuning excluded)")
            print(line)


def _time_net(net, shape, dynamic: bool, repeats: int = 3) -> float:
    from napari_medlearn.imaging import kspace as K
    from napari_medlearn.methods import reconstruct

    rng = np.random.default_rng(0)
    img = rng.random(shape).astype(np.float32)
    k, m = K.simulate_acquisition(img, 4, per_frame=dynamic)
    reconstruct(k, m, model=net, dynamic=dynamic)   # warm-up
    times = []
    for _ in range(repeats):
        times.append(reconstruct(k, m, model=net, dynamic=dynamic).seconds)
    return float(np.median(times))


def speed_table(model, threads: int) -> None:
    import torch

    from napari_medlearn import zoo
    from napari_medlearn.methods.recon import TASK_2D, TASK_2DT
    from napari_medlearn.nets import DeepCascade

    torch.set_num_threads(threads)
    print(f"\nspeed, {threads} CPU threads ({'methods.reconstruct, median of 3'})")
    nets = []
    name2d = model or (zoo.default_model(TASK_2D) if zoo.available(TASK_2D) else None)
    if name2d:
        nets.append((f"2D {name2d}", zoo.load(name2d, device="cpu"), (256, 256), False, 0.5))
    else:
        nets.append(("2D D5-C5 width 16 (recon-2d preset size, untrained)", DeepCascade(2, 5, 5, 16).eval(),
                     (256, 256), False, 0.5))
    if "deep-cascade-d5c5" in zoo.available() and name2d != "deep-cascade-d5c5":
        nets.append(("2D deep-cascade-d5c5 (official weights, width 64)", zoo.load("deep-cascade-d5c5", device="cpu"),
                     (256, 256), False, 0.5))
    else:
        nets.append(("2D D5-C5 width 64 (paper size, untrained)", DeepCascade(2, 5, 5, 64).eval(),
                     (256, 256), False, 0.5))
    if zoo.available(TASK_2DT):
        n = zoo.default_model(TASK_2DT)
        nets.append((f"2D+t {n}", zoo.load(n, device="cpu"), (30, 256, 256), True, 15.0))
    else:
        nets.append(("2D+t D5-C5 width 16, sharing 1-4 (recon-2dt preset size, untrained)",
                     DeepCascade(3, 5, 5, 16, share_widths=(1, 2, 3, 4)).eval(), (30, 256, 256), True, 15.0))
    for label, net, shape, dynamic, target in nets:
        sec = _time_net(net, shape, dynamic)
        print(f"  {label:70s} {str(shape):15s} {sec:7.2f} s  (target <= {target:g} s: "
              f"{'met' if sec <= target else 'NOT met'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="2D zoo name or checkpoint (default: the best available)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed-only", action="store_true")
    args = ap.parse_args()
    if not args.speed_only:
        quality_table(args.model, args.threads)
    speed_table(args.model, args.threads)


if __name__ == "__main__":
    main()
