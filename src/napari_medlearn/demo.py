"""``medlearn demo``: every method on the built-in sample data, headless, with a report.

Each section runs one method through :mod:`napari_medlearn.methods` on sample data whose truth
is known, writes its outputs (NIfTI with geometry, CSV/JSON, a PNG figure) under the output
directory and adds a few lines with figures against the truth to ``report.md``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def _figure_cardiac(path: Path, image, labels, truth, result) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = labels.shape[1] // 2
    fig, axs = plt.subplots(1, 3, figsize=(13, 4.3))
    for ax, f, title in ((axs[0], result.ed, "ED"), (axs[1], result.es, "ES")):
        ax.imshow(image[f, z], cmap="gray")
        ax.contour(truth[f, z], levels=[0.5, 1.5, 2.5], colors="yellow", linewidths=0.6)
        ax.contour(labels[f, z], levels=[0.5, 1.5, 2.5], colors=["red", "lime", "deepskyblue"], linewidths=0.8)
        ax.set_title(f"{title} frame {f}, slice {z} (yellow: truth)")
        ax.axis("off")
    m = result.measures
    axs[2].plot(m["LV_volume_mL"], label="LV")
    axs[2].plot(m["RV_volume_mL"], label="RV")
    axs[2].axvline(result.ed, ls="--", c="gray")
    axs[2].axvline(result.es, ls=":", c="gray")
    axs[2].set_xlabel("frame")
    axs[2].set_ylabel("volume (mL)")
    axs[2].legend()
    axs[2].set_title("volume-time curve (dashed ED, dotted ES)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def demo_cardiac(out: Path, device: str = "auto") -> list[str]:
    """Segment the cardiac sample phantom; compare with its exact labels."""
    from .jobs import write_cardiac_outputs
    from .imaging import measures as M
    from .imaging.io import write_nifti
    from .methods import segment_heart
    from .samples.cardiac_phantom import cardiac_cine_phantom

    out.mkdir(parents=True, exist_ok=True)
    ph = cardiac_cine_phantom(seed=2024)
    image_vol, truth_vol = ph.volumes()
    write_nifti(image_vol, out / "cine.nii.gz", overwrite=True)
    write_nifti(truth_vol, out / "truth.nii.gz", overwrite=True)
    t0 = time.time()
    res = segment_heart(ph.image, ph.spacing, device=device)
    seconds = time.time() - t0
    write_cardiac_outputs(out, image_vol, res, "sample: cardiac cine phantom seed 2024")
    _figure_cardiac(out / "cardiac.png", ph.image, res.labels, ph.labels, res)
    d = M.dice_per_label(res.labels, ph.labels)
    mt = M.cardiac_measures(ph.labels, ph.spacing)
    lines = [
        "## Cardiac cine segmentation (Bai FCN)",
        f"Input: cardiac cine phantom (seed 2024), {ph.image.shape} (t, z, y, x), spacing "
        f"{tuple(round(s, 2) for s in ph.spacing)} mm. Model `{res.model_name}` "
        f"(sha256 {res.model_sha256[:12]}...), {seconds:.1f} s.",
        "",
        f"Dice vs exact labels: LV {d[1]:.3f}, myocardium {d[2]:.3f}, RV {d[3]:.3f}.",
        "",
        "| measure | predicted | truth |",
        "|---|---|---|",
    ]
    for k in M.CARDIAC_MEASURES:
        lines.append(f"| {M.display_name(k)} | {res.measures[k]:.1f} | {mt[k]:.1f} |")
    lines += ["", f"ED frame {res.ed} (truth {mt['ED_frame']}), ES frame {res.es} (truth {mt['ES_frame']}).",
              f"QC: {'; '.join(f['reason'] for f in res.qc) or 'no flags'}.", "",
              "Outputs: `cardiac/cine.nii.gz`, `cardiac/labels.nii.gz`, `cardiac/measures.csv`, "
              "`cardiac/measures.json`, `cardiac/cardiac.png`.", "", "![cardiac](cardiac/cardiac.png)", ""]
    return lines


def _figure_recon(path: Path, rows) -> None:
    """One row per case: reference, zero-filled, cascade, |error| x5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(len(rows), 4, figsize=(13, 3.4 * len(rows)), squeeze=False)
    for ax_row, (title, ref, res) in zip(axs, rows):
        peak = float(np.abs(ref).max())
        err = np.abs(np.abs(res.image) - np.abs(ref))
        for ax, img, sub, kw in ((ax_row[0], np.abs(ref), "reference", {}),
                                 (ax_row[1], np.abs(res.zero_filled), "zero-filled", {}),
                                 (ax_row[2], np.abs(res.image), "cascade", {}),
                                 (ax_row[3], err, "|error| (x5)", {"cmap": "magma", "vmax": peak / 5})):
            ax.imshow(img, cmap=kw.get("cmap", "gray"), vmin=0, vmax=kw.get("vmax", peak))
            ax.set_title(f"{title}: {sub}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def demo_recon(out: Path, device: str = "auto") -> list[str]:
    """Undersample a held-out MNI152 slice (R=4, R=8) and a phantom cine (R=8); reconstruct."""
    from . import zoo
    from .jobs import write_recon_outputs
    from .imaging import kspace as K
    from .imaging.volume import Volume, affine_from_spacing
    from .methods import reconstruct
    from .methods.recon import TASK_2D, TASK_2DT, reconstruction_quality
    from .samples import mni152_t1
    from .samples.cardiac_phantom import cardiac_cine_phantom
    from .training.recon import pad_to

    lines = ["## MRI reconstruction (deep cascade of CNNs)"]
    if not zoo.available(TASK_2D):
        return lines + ["Skipped: no reconstruction model. Train one (`medlearn train recon-2d --ship`) or "
                        "convert the official weights (`medlearn import-weights deep-cascade-d5c5 d5_c5.npz`).", ""]
    out.mkdir(parents=True, exist_ok=True)
    vol = mni152_t1(resolution=1)
    z = 100   # inside the recon-2d preset's held-out block
    ref = pad_to(vol.data[z] / float(vol.data[z].max()), 256)
    rows = []
    table = ["| input | R | zero-filled PSNR / SSIM | cascade PSNR / SSIM | seconds |", "|---|---|---|---|---|"]
    for R in (4, 8):
        k, m = K.simulate_acquisition(ref, R, "cartesian", 8, seed=7)
        res = reconstruct(k, m, device=device)
        zf, rc = reconstruction_quality(ref, res.zero_filled), reconstruction_quality(ref, res.image)
        sub = out / f"mni_R{R}"
        sub.mkdir(exist_ok=True)
        write_recon_outputs(sub, res, Volume(ref, affine_from_spacing((1.0, 1.0)), ("y", "x"), {}), ref,
                            f"MNI152 T1 1 mm axial slice z={z}, simulated R={R}")
        rows.append((f"MNI152 z={z} R={R}", ref, res))
        table.append(f"| MNI152 T1 axial z={z} (256x256) | {R} | {zf['psnr_db']:.2f} dB / {zf['ssim']:.3f} | "
                     f"{rc['psnr_db']:.2f} dB / {rc['ssim']:.3f} | {res.seconds:.2f} |")
    model2d = res.model_name
    cine_note = "No 2D+t model: the cine was reconstructed frame by frame with the 2D model."
    ph = cardiac_cine_phantom(seed=2024)
    cine = ph.image[:, ph.image.shape[1] // 2]
    cine = cine / float(cine.max())
    k, m = K.simulate_acquisition(cine, 8, "cartesian", 8, seed=7, per_frame=True)
    res = reconstruct(k, m, device=device, dynamic=True)
    if zoo.available(TASK_2DT):
        cine_note = f"2D+t model `{res.model_name}` with k-space data sharing across frames."
    zf, rc = reconstruction_quality(cine, res.zero_filled), reconstruction_quality(cine, res.image)
    sub = out / "cine_R8"
    sub.mkdir(exist_ok=True)
    write_recon_outputs(sub, res, None, cine, "cardiac cine phantom seed 2024, mid slice, simulated R=8 per frame")
    table.append(f"| cardiac cine phantom mid slice {cine.shape} (t, y, x) | 8 | {zf['psnr_db']:.2f} dB / "
                 f"{zf['ssim']:.3f} | {rc['psnr_db']:.2f} dB / {rc['ssim']:.3f} | {res.seconds:.2f} |")
    f = cine.shape[0] // 3
    rows.append((f"cine frame {f} R=8", cine[f], _frame(res, f)))
    _figure_recon(out / "recon.png", rows)
    lines += [
        f"Fully sampled images undersampled on Cartesian lines (Gaussian variable density, 8 centre lines, "
        f"seed 7), reconstructed by `methods.reconstruct` with 2D model `{model2d}`. {cine_note}",
        "", *table, "",
        "Outputs: `recon/*/reconstruction.nii.gz`, `zero_filled.nii.gz`, `mask.nii.gz`, `reconstruction.npy` "
        "(complex), `recon.json`; `recon/recon.png`.", "", "![recon](recon/recon.png)", "",
    ]
    return lines


def _frame(res, f):
    """Frame ``f`` of a cine result, as an object with ``image`` and ``zero_filled``."""
    from types import SimpleNamespace

    return SimpleNamespace(image=res.image[f], zero_filled=res.zero_filled[f])


def _figure_planes(path: Path, frames, truth, res) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res.class_names)
    shown = [n for n in names if n != "Background" and (res.predicted == names.index(n)).any() or
             (n != "Background" and (truth == names.index(n)).any())]
    best = sorted(res.best_frames.items(), key=lambda kv: kv[1])[:4]
    fig = plt.figure(figsize=(14, 7.5))
    ax = fig.add_subplot(2, 1, 1)
    for n in shown:
        ax.plot(res.probabilities[:, names.index(n)], label=n, lw=1)
    for i, lab in enumerate(truth):
        if names[int(lab)] != "Background":
            ax.axvspan(i - 0.5, i + 0.5, color="0.85", lw=0)
    ax.set_xlim(-0.5, len(truth) - 0.5)
    ax.set_xlabel("frame (grey: true standard-plane frames)")
    ax.set_ylabel("posterior")
    ax.legend(ncol=4, fontsize=8)
    for j, (n, i) in enumerate(best):
        a = fig.add_subplot(2, 4, 5 + j)
        a.imshow(frames[i], cmap="gray")
        if res.saliency is not None:
            a.imshow(res.saliency[i], cmap="hot", alpha=0.4, vmin=0, vmax=1)
        if np.isfinite(res.boxes[i]).all():
            y0, x0, y1, x1 = res.boxes[i]
            a.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="cyan", lw=1.2))
        a.set_title(f"{n}: frame {i} (truth {names[int(truth[i])]})", fontsize=9)
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def demo_planes(out: Path, device: str = "auto") -> list[str]:
    """Detect standard planes in a phantom freehand sweep; compare with its per-frame truth."""
    from . import zoo
    from .jobs import write_plane_outputs
    from .methods import detect_planes
    from .methods.planes import TASK

    lines = ["## Fetal standard-plane detection (SonoNet)"]
    try:
        from .samples.fetal_phantom import fetal_sweep
    except ImportError:
        return lines + ["Skipped: the fetal phantom sample is not installed.", ""]
    if not zoo.available(TASK):
        return lines + ["Skipped: no plane-detection model. Train one (`medlearn train sononet-phantom --ship`) or "
                        "convert the official weights (`medlearn import-weights sononet-16 SonoNet16.npz`).", ""]
    out.mkdir(parents=True, exist_ok=True)
    seed = 2024
    sw = fetal_sweep(seed=seed, n_frames=120)
    # the phantom is this package's own rendering: its demo model is the one trained on it (imported
    # official weights, made for real scans, rank higher by default and recognise few phantom planes)
    model = "sononet-phantom" if "sononet-phantom" in zoo.available(TASK) else None
    res = detect_planes(sw.frames, model=model, device=device)
    write_plane_outputs(out, res, sw.frames, None, f"sample: fetal phantom sweep seed {seed}")
    np.save(out / "sweep.npy", sw.frames)
    names = list(res.class_names)
    truth = sw.labels
    acc = float(np.mean(res.predicted == truth))
    bg = names.index("Background") if "Background" in names else -1
    table = ["| plane | true frames | detected frames | recall | best frame | best frame's truth |",
             "|---|---|---|---|---|---|"]
    for k, n in enumerate(names):
        if k == bg or not ((truth == k).any() or (res.predicted == k).any()):
            continue
        n_true, n_pred = int((truth == k).sum()), int((res.predicted == k).sum())
        rec = f"{np.mean(res.predicted[truth == k] == k):.2f}" if n_true else "-"
        b = res.best_frames.get(n)
        table.append(f"| {n} | {n_true} | {n_pred} | {rec} | {b if b is not None else '-'} | "
                     f"{names[int(truth[b])] if b is not None else '-'} |")
    _figure_planes(out / "planes.png", sw.frames, truth, res)
    lines += [
        f"A {len(truth)}-frame freehand sweep of the fetal phantom (seed {seed}, {sw.frames.shape[1]}x"
        f"{sw.frames.shape[2]}) through `methods.detect_planes` with model `{res.model}` "
        f"({res.frames / max(res.seconds, 1e-9):.1f} frames/s with saliency). Frame accuracy against the "
        f"phantom's labels: {acc:.3f}.", "", *table, "",
        "Outputs: `planes/scores.csv`, `boxes.csv`, `best_frames.csv` + `best_*.png`, `saliency.npy`, "
        "`planes.json`, `sweep.npy`; `planes/planes.png` (posteriors over time; best frames with saliency and box).",
        "", "![planes](planes/planes.png)", "",
    ]
    return lines


def demo_lesions(out: Path, device: str = "auto") -> list[str]:
    """Segment a synthetic brain-tumour case (FLAIR + T1c); compare with its exact labels."""
    from . import zoo
    from .jobs import write_lesion_outputs
    from .imaging import measures as M
    from .imaging.io import write_nifti
    from .methods import segment_lesions
    from .methods.lesions import TASK
    from .samples.brain_lesions import synthetic_lesion_case

    lines = ["## Brain-lesion segmentation (DeepMedic)"]
    if not zoo.available(TASK):
        return lines + ["Skipped: no lesion model. Train one (`medlearn train lesions-synthetic --ship`).", ""]
    out.mkdir(parents=True, exist_ok=True)
    case = synthetic_lesion_case(seed=2024, domain="A")
    vols = case.volumes()
    for name, fname in (("FLAIR", "FLAIR"), ("T1c", "T1c"), ("labels", "truth")):
        write_nifti(vols[name], out / f"{fname}.nii.gz", overwrite=True)
    model = "lesions-synthetic" if "lesions-synthetic" in zoo.available(TASK) else None
    res = segment_lesions(case.channels, case.spacing, model=model, brain_mask=case.brain_mask, device=device,
                              affine=case.affine)
    write_lesion_outputs(out, vols["FLAIR"], res, "sample: synthetic brain lesion seed 2024, scanner A")
    m = M.brats_region_metrics(res.labels, case.labels, case.spacing)
    from .methods.lesions import lesion_volumes

    tv = lesion_volumes(case.labels, case.spacing)
    _figure_lesions(out / "lesions.png", case, res)
    lines += [
        f"Input: synthetic FLAIR + T1c (seed 2024, scanner A), {case.channels.shape[1:]} voxels of "
        f"{case.spacing[0]:g} mm. Model `{res.model}` (sha256 {res.model_sha256[:12]}...), {res.seconds:.1f} s.",
        "",
        "| region | Dice | HD95 (mm) |", "|---|---|---|",
        *[f"| {r.replace('_', ' ')} | {m[f'dice_{r}']:.3f} | {m[f'hd95_{r}_mm']:.1f} |"
          for r in ("whole_tumour", "tumour_core", "enhancing")],
        "", "| volume | predicted | truth |", "|---|---|---|",
        *[f"| {M.display_name(k)} | {res.volumes_ml[k]:.1f} | {tv[k]:.1f} |" for k in res.volumes_ml],
        "", "Outputs: `lesions/labels.nii.gz`, `lesions/probability_*.nii.gz`, `lesions/volumes.csv`, "
        "`lesions/lesions.json`, `lesions/lesions.png`.", "", "![lesions](lesions/lesions.png)", "",
    ]
    return lines


def _figure_lesions(path: Path, case, res) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = int(np.argmax((case.labels > 0).sum(axis=(1, 2))))
    fig, axs = plt.subplots(1, 3, figsize=(12, 4.2))
    for ax, img, title in ((axs[0], case.channels[0, z], "FLAIR"), (axs[1], case.channels[1, z], "T1c")):
        ax.imshow(img, cmap="gray")
        ax.contour(case.labels[z] > 0, levels=[0.5], colors="yellow", linewidths=0.7)
        ax.contour(res.labels[z] > 0, levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(f"{title}, slice {z} (yellow truth, red predicted)", fontsize=9)
        ax.axis("off")
    axs[2].imshow(res.labels[z], cmap="viridis", vmin=0, vmax=4, interpolation="nearest")
    axs[2].set_title("labels: 1 necrotic, 2 oedema, 4 enhancing", fontsize=9)
    axs[2].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


SECTIONS = (("cardiac", demo_cardiac), ("recon", demo_recon), ("planes", demo_planes), ("lesions", demo_lesions))


def demo_sr(out: Path, device: str = "auto") -> list[str]:
    """Through-plane x4 super-resolution of a real 1 mm brain thickened with a box profile."""
    from . import zoo
    from .imaging import slices as S
    from .imaging.io import write_nifti
    from .imaging.volume import Volume
    from .methods import super_resolve, super_resolve_stacks
    from .methods.sr import TASK_MULTI, TASK_SINGLE, sr_quality
    from .training.sr import HELD_OUT, coronal_stack, figure, held_out_cases, mni_volume

    lines = ["## Super-resolution of thick-slice stacks (Oktay et al.)"]
    if not zoo.available(TASK_SINGLE):
        return lines + ["Skipped: no super-resolution model. Train one (`medlearn train sr-brain --ship`).", ""]
    out.mkdir(parents=True, exist_ok=True)
    cases = held_out_cases(4, modalities=("T1c",))
    if cases:
        v, note = cases[0][1], f"the BraTS subject the shipped models never trained on ({HELD_OUT})"
    else:
        v, note = mni_volume(4), "the MNI152 T1 template (seen in training: a demonstration, not an evaluation)"
    ax, ax_aff = S.thick_slices(v.image, v.affine, 4, "box")
    write_nifti(Volume(ax, ax_aff, ("z", "y", "x")), out / "axial_4mm.nii.gz", overwrite=True)
    r1 = super_resolve(ax, (4.0, 1.0, 1.0), 4, affine=ax_aff, device=device)
    write_nifti(Volume(r1.image, r1.affine, ("z", "y", "x")), out / "sr_x4.nii.gz", overwrite=True)
    write_nifti(Volume(r1.baseline, r1.affine, ("z", "y", "x")), out / "cubic_spline_x4.nii.gz", overwrite=True)
    rows = [("cubic B-spline", sr_quality(v.image, r1.baseline, v.mask)),
            (f"single-stack SR (`{r1.model_name}`)", sr_quality(v.image, r1.image, v.mask))]
    fused = None
    if zoo.available(TASK_MULTI):
        cor, cor_aff = coronal_stack(v, 4)
        r2 = super_resolve_stacks([(ax, ax_aff), (cor, cor_aff)], (1.0, 1.0, 1.0), device=device)
        write_nifti(Volume(r2.image, r2.affine, ("z", "y", "x")), out / "fused_axial_coronal.nii.gz", overwrite=True)
        rows += [("average of axial + coronal", sr_quality(v.image, r2.baseline, v.mask)),
                 (f"axial + coronal fused (`{r2.model_name}`)", sr_quality(v.image, r2.image, v.mask))]
        fused = zoo.load(r2.model_name, device="cpu")
    figure(zoo.load(r1.model_name, device="cpu"), fused, v, 4, out / "sr.png")
    lines += [
        f"Input: {v.name}, {note}, thickened to 4 mm axial slices with a box profile {ax.shape}; "
        f"super-resolved back to 1 mm {r1.image.shape} in {r1.seconds:.1f} s. Figures inside the brain "
        "against the 1 mm original:", "",
        "| method | PSNR (dB) | SSIM |", "|---|---|---|",
        *[f"| {name} | {q['psnr_db']:.2f} | {q['ssim']:.3f} |" for name, q in rows],
        "", "Outputs: `sr/axial_4mm.nii.gz`, `sr/sr_x4.nii.gz`, `sr/cubic_spline_x4.nii.gz`"
        + (", `sr/fused_axial_coronal.nii.gz`" if fused is not None else "") + ", `sr/sr.png`.", "",
        "![super-resolution](sr/sr.png)", "",
    ]
    if "sr-cardiac-x4" in zoo.available(TASK_SINGLE):
        from .training.sr import phantom_volumes

        v = phantom_volumes([2024], 4, frames_per_phantom=1)[0]
        thick, taff = S.thick_slices(v.image, v.affine, 4, "box")
        sp = tuple(float(x) for x in np.linalg.norm(taff[:3, :3], axis=0))
        rc = super_resolve(thick, sp, 4, model="sr-cardiac-x4", affine=taff, device=device)
        write_nifti(Volume(thick, taff, ("z", "y", "x")), out / "cardiac_8mm.nii.gz", overwrite=True)
        write_nifti(Volume(rc.image, rc.affine, ("z", "y", "x")), out / "cardiac_sr_x4.nii.gz", overwrite=True)
        qs, qn = sr_quality(v.image, rc.baseline, v.mask), sr_quality(v.image, rc.image, v.mask)
        lines += [
            f"Cardiac: the sample cine phantom (seed 2024, end-diastole) with 2 mm slices thickened to 8 mm "
            f"{thick.shape} and super-resolved x4 by `sr-cardiac-x4` (trained self-supervised on real ACDC "
            f"short-axis scans) in {rc.seconds:.1f} s: PSNR against the 2 mm phantom {qn['psnr_db']:.2f} dB "
            f"(SSIM {qn['ssim']:.3f}) vs cubic B-spline {qs['psnr_db']:.2f} dB ({qs['ssim']:.3f}). "
            "Outputs: `sr/cardiac_8mm.nii.gz`, `sr/cardiac_sr_x4.nii.gz`.", "",
        ]
    return lines


SECTIONS = SECTIONS + (("sr", demo_sr),)


def demo_acnn(out: Path, device: str = "auto") -> list[str]:
    """The shape prior on the sample cine's expert-like ED labels, damaged six ways."""
    from . import zoo
    from .imaging.io import write_nifti
    from .imaging.labels import clean_labels
    from .imaging.mask_corruption import CORRUPTIONS, corrupt
    from .imaging.measures import dice_per_label
    from .imaging.volume import Volume
    from .methods import correct_mask
    from .methods.acnn import TASK
    from .samples.cardiac_phantom import cardiac_cine_phantom

    lines = ["## Mask correction with the learned shape prior (ACNN, Oktay et al.)"]
    if not zoo.available(TASK):
        return lines + ["Skipped: no shape prior. Train one (`medlearn train acnn-shape-prior --ship`).", ""]
    out.mkdir(parents=True, exist_ok=True)
    ph = cardiac_cine_phantom(seed=2024)
    truth, spacing = ph.labels[0], tuple(float(s) for s in ph.spacing[-3:])
    dev = zoo.resolve_device(device).type

    def mean_dice(a):
        return float(np.mean(list(dice_per_label(a, truth).values())))

    rows = []
    rng = np.random.default_rng(0)
    for kind in CORRUPTIONS:
        bad = corrupt(truth, spacing, kind, rng)
        res = correct_mask(bad, spacing, device=dev)
        morph = clean_labels(bad, values=(1, 2, 3))
        rows.append((kind, mean_dice(bad), mean_dice(morph), mean_dice(res.labels),
                     res.plausibility_before, res.plausibility, int(res.changed.sum())))
        if kind == "combined":
            write_nifti(Volume.from_spacing(bad.astype(np.uint8), spacing, ("z", "y", "x")),
                        out / "damaged.nii.gz", overwrite=True)
            write_nifti(Volume.from_spacing(res.labels.astype(np.uint8), spacing, ("z", "y", "x")),
                        out / "corrected.nii.gz", overwrite=True)
    clean = correct_mask(truth, spacing, device=dev)
    lines += [
        f"Input: the ED labels of the cardiac phantom seed 2024 (truth), damaged by each corruption of "
        f"`imaging.mask_corruption`, corrected by `{clean.model_name}` and by plain morphology (largest "
        "component + hole filling). Mean Dice over LV, myocardium and RV against the truth:", "",
        "| damage | damaged | morphology | shape prior | plausibility before -> after | voxels changed |",
        "|---|---|---|---|---|---|",
        *[f"| {k} | {a:.3f} | {m:.3f} | {c:.3f} | {pb:.2f} -> {pa:.2f} | {n} |" for k, a, m, c, pb, pa, n in rows],
        "", f"The clean truth comes back with Dice {mean_dice(clean.labels):.3f} to itself "
        f"(plausibility {clean.plausibility_before:.2f}). Outputs: `acnn/damaged.nii.gz`, `acnn/corrected.nii.gz` "
        "(the combined damage).", "",
    ]
    return lines


SECTIONS = SECTIONS + (("acnn", demo_acnn),)


def demo_robust_lesions(out: Path, device: str = "auto") -> list[str]:
    """A synthetic case from a scanner the source model never saw: the source-only and the
    BraTS-adapted model, and an ensemble's mean labels with its uncertainty map."""
    from . import zoo
    from .jobs import write_lesion_outputs
    from .imaging import measures as M
    from .methods import segment_lesions
    from .methods.lesions import TASK
    from .samples.brain_lesions import synthetic_lesion_case

    lines = ["## Robust lesion models: domain adaptation and ensembles (Kamnitsas et al. 2017)"]
    have = [n for n in zoo.available(TASK) if zoo.card(n).get("kind") != "ensemble"]
    singles = [n for n in ("lesions-synthetic", "lesions-uda") if n in have]
    if not singles:
        return lines + ["Skipped: no synthetic-domain lesion model (`medlearn train lesions-synthetic --ship`).", ""]
    # the ensemble shown here is of the models that know this synthetic domain; emma's members
    # learnt real BraTS scans (z-scored FLAIR/T1c) and are out of their domain on this case
    if len(singles) >= 2:
        ensemble = singles
        ens_text = "the synthetic-domain lesion models " + ", ".join(f"`{n}`" for n in ensemble)
    else:
        ensemble, ens_text = None, ""
    out.mkdir(parents=True, exist_ok=True)
    case = synthetic_lesion_case(seed=2025, domain="B")
    vols = case.volumes()
    rows = []
    for name in singles:
        res = segment_lesions(case.channels, case.spacing, model=name, brain_mask=case.brain_mask, device=device,
                              affine=case.affine)
        m = M.brats_region_metrics(res.labels, case.labels, case.spacing)
        rows.append(f"| `{name}` | {m['dice_whole_tumour']:.3f} | {m['dice_tumour_core']:.3f} | "
                    f"{m['dice_enhancing']:.3f} |")
    from .training.deepmedic import scanner_domains

    def scanners(name):
        d = scanner_domains(zoo.card(name).get("adaptation_source", {}).get("domain", "A"))
        return f"scanner {d[0]}" if len(d) == 1 else f"scanners {', '.join(d[:-1])} and {d[-1]}"

    lines += ["Input: synthetic FLAIR + T1c (seed 2025, a case no model trained on) from **scanner B** (its own "
              "contrast, bias field, noise and resolution).", "",
              "| model | Dice WT | Dice TC | Dice ET |", "|---|---|---|---|", *rows, "",
              _learnt_from({n: scanners(n) for n in singles})
              + " `lesions-uda` is the `lesions-synthetic` recipe adapted to real BraTS scans (not to this scanner): "
              "its row shows what adapting to one target does to another. To adapt to your own scanner, use "
              "`medlearn adapt` (below).", ""]
    if ensemble is not None:
        res = segment_lesions(case.channels, case.spacing, model=ensemble, brain_mask=case.brain_mask, device=device,
                              affine=case.affine)
        write_lesion_outputs(out, vols["FLAIR"], res, "sample: synthetic brain lesion seed 2025, scanner B")
        m = M.brats_region_metrics(res.labels, case.labels, case.spacing)
        truth = case.labels > 0
        wrong = (res.labels > 0) != truth
        from .training.emma import uncertainty_auroc

        auroc = uncertainty_auroc(res.uncertainty, wrong, case.brain_mask)
        _figure_uncertainty(out / "uncertainty.png", case, res)
        lines += [f"Ensemble of {ens_text}: Dice WT {m['dice_whole_tumour']:.3f}; the uncertainty (entropy of "
                  f"the mean posterior) ranks its wrong voxels above its right ones with AUROC {auroc:.3f}.", "",
                  "Outputs: `robust/labels.nii.gz`, `robust/uncertainty.nii.gz`, `robust/mutual_information.nii.gz`, "
                  "`robust/volumes.csv` (one row per member too), `robust/uncertainty.png`.", "",
                  "![uncertainty](robust/uncertainty.png)", ""]
    if "emma" in zoo.available(TASK):
        card = zoo.card("emma")
        cv = card.get("cross_validation")
        ev = cv["emma"] if cv else card.get("evaluation", {})
        per_case = ", ".join(f"{r['dice_whole_tumour']:.3f}" for r in ev.get("cases", []))
        judged = (f"{len(cv['folds'])}-fold cross-validation over {len(ev.get('cases', []))} BraTS subjects, each "
                  "judged by members that never saw it" if cv else "on BraTS subjects none of them saw")
        post = card.get("postprocess")
        if post:
            steps = (["whole tumour at the threshold of maximal expected Dice, found per scan"]
                     if post.get("decision") == "expected_dice" else []) + (
                     [f"tumour components under {post['min_component_fraction']:.0%} of the largest dropped"]
                     if post.get("min_component_fraction") else []) + (
                     ["holes in the tumour filled"] if post.get("fill_holes") else [])
            judged += (f", its labels post-processed ({', '.join(steps) or 'nothing'}; each fold's own "
                       "post-processing chosen on the other fold)")
        lines += [f"For real skull-stripped FLAIR + T1c scans (BraTS-like), `--model emma` averages "
                  f"{', '.join(card['members'])}; its card, {judged}: whole "
                  f"tumour Dice {per_case}, ECE {ev.get('summary', {}).get('ece_whole_tumour', float('nan')):.4f}, "
                  f"uncertainty AUROC {ev.get('summary', {}).get('uncertainty_auroc_mean', float('nan')):.3f} "
                  "(not run here: this synthetic scanner is outside its members' domain).", ""]
    lines += ["Adapt a model to your own unlabelled scans: `medlearn adapt --model lesions-synthetic --flair ... "
              "--t1c ... --name my-site` (or the Adapt panel of the lesion widget); add `--self-training 0.5 0.7` "
              "for lesions-uda's two rounds of self-training on the scans after the adversarial stage.", ""]
    return lines


def _learnt_from(sources: dict[str, str]) -> str:
    """One sentence naming the synthetic scanners each model learnt from, models of one source together."""
    by_source: dict[str, list[str]] = {}
    for name, source in sources.items():
        by_source.setdefault(source, []).append(f"`{name}`")
    return " ".join(f"{' and '.join(names)} learnt from synthetic {source}." for source, names in by_source.items())


def _figure_uncertainty(path: Path, case, res) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = int(np.argmax((case.labels > 0).sum(axis=(1, 2))))
    fig, axs = plt.subplots(1, 2, figsize=(9, 4.4))
    axs[0].imshow(case.channels[0, z], cmap="gray")
    axs[0].contour(case.labels[z] > 0, levels=[0.5], colors="yellow", linewidths=0.7)
    axs[0].contour(res.labels[z] > 0, levels=[0.5], colors="red", linewidths=0.8)
    axs[0].set_title(f"FLAIR slice {z}: truth (yellow), ensemble (red)", fontsize=9)
    axs[1].imshow(case.channels[0, z], cmap="gray")
    im = axs[1].imshow(np.ma.masked_less(res.uncertainty[z], 0.02), cmap="inferno", vmin=0, vmax=1, alpha=0.8)
    axs[1].contour(res.uncertainty[z] > 0.3, levels=[0.5], colors="cyan", linewidths=0.7)
    axs[1].set_title("uncertainty (entropy of the mean), cyan: above 0.3", fontsize=9)
    fig.colorbar(im, ax=axs[1], fraction=0.046)
    for ax in axs:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


SECTIONS = SECTIONS + (("robust", demo_robust_lesions),)


def demo_cohort(out: Path, device: str = "auto") -> list[str]:
    """Cardiac segmentation over a small cohort of phantom cines through ``batch.run_batch``,
    then the same command again (every case skipped: resumed)."""
    from .batch import run_batch
    from .imaging import measures as M
    from .imaging.io import write_nifti
    from .samples.cardiac_phantom import cardiac_cine_phantom

    cohort = out / "cases"
    cohort.mkdir(parents=True, exist_ok=True)
    truth = {}
    for seed in (11, 12, 13):
        ph = cardiac_cine_phantom(seed=seed, n_frames=4)
        image_vol, _ = ph.volumes()
        write_nifti(image_vol, cohort / f"phantom{seed}.nii.gz", overwrite=True)
        truth[f"phantom{seed}"] = M.cardiac_measures(ph.labels, ph.spacing)
    t0 = time.time()
    first = run_batch("segment-heart", cohort, out / "results", device=device, overwrite=True)
    seconds = time.time() - t0
    t0 = time.time()
    again = run_batch("segment-heart", cohort, out / "results", device=device)
    resumed = time.time() - t0
    lines = ["## Cohort processing (`medlearn batch`)",
             f"`segment-heart` over {len(first.outcomes)} phantom cines (4 frames each) in "
             f"`cohort/cases/`: {first.count('done')} done in {seconds:.1f} s; run again, "
             f"{again.count('skipped')} skipped as done before in {resumed:.2f} s.", "",
             "| case | status | LVEDV (mL) | truth | LVEF (%) | truth |", "|---|---|---|---|---|---|"]
    for o in first.outcomes:
        t = truth[o.case]
        lines.append(f"| {o.case} | {o.status} | {o.row.get('LVEDV_mL', float('nan')):.1f} | {t['LVEDV_mL']:.1f} | "
                     f"{o.row.get('LVEF_pct', float('nan')):.1f} | {t['LVEF_pct']:.1f} |")
    lines += ["", "Outputs: `cohort/results/<case>/` (labels, measures, case.json), `cohort/results/cohort.csv`. "
              "The same from the shell: `medlearn batch segment-heart cohort/cases --out cohort/results`.", ""]
    return lines


SECTIONS = SECTIONS + (("cohort", demo_cohort),)

def run_demo(out: Path, device: str = "auto", overwrite: bool = False) -> Path:
    """Run every section into ``out``; return the report path."""
    out = Path(out)
    report = out / "report.md"
    if report.exists() and not overwrite:
        raise FileExistsError(f"{report} already exists (use --overwrite to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# napari-medlearn demo", "",
             "Every method on the built-in sample data, with figures against the known truth.", ""]
    for name, fn in SECTIONS:
        print(f"demo: {name}", flush=True)
        lines += fn(out / name, device=device)
    from .imaging.atomic import atomic_path

    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return report
