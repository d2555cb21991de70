"""Screenshots of the cardiac workflow in a real napari window (run under ``xvfb-run -a``).

Not a test: it drives the GUI as a person would and writes PNGs to look at, printing what it
measured along the way.

- ``sample``: File > Open Sample > cardiac cine, the Cardiac segmentation widget, Run, a
  brush stroke on the labels (LVEDV before/after), Save labels, reopen them through the
  plugin's reader and compare array and geometry.
- ``acdc``: an ACDC validation patient (ED + ES as a two-frame cine) opened through the reader.
- ``dicom``: the same patient exported as a DICOM folder, dropped on the window, segmented,
  corrected by hand.

- ``recon``: the MNI152 sample's mid slice undersampled at R=4 and reconstructed (zero-filled,
  reconstruction, mask, error map, PSNR/SSIM table); the cardiac sample's mid slice as a 2D+t
  series at R=8, looked at on frame 5; a z-scored BraTS FLAIR slice (negative background) at R=4.

- ``lesions``: a BraTS subject's FLAIR and T1c opened through the reader, Brain lesion
  segmentation (best shipped model, else ``$MEDLEARN_LESION_MODEL``), a brush stroke of oedema
  (whole-tumour volume before/after), the probability maps, Save (NIfTI + CSV), reopened; then
  the synthetic sample, and lesions-uda on it with the adapt panel unfolded.

- ``planes``: the fetal ultrasound sweep sample through Standard plane detection (score plot,
  checklist, saliency heat map, boxes); the best frames clicked in the checklist; live mode.

- ``emma``: an ensemble of lesion models on a BraTS subject its members never saw: uncertainty
  heat map over the FLAIR, the review outline at 0.3, the members' volumes.

- ``batch``: the Cohort (batch) widget running segment-heart over three ACDC patients, then one
  case opened for review.

- ``correction``: the Correction tools dock on the cardiac sample (LV erased on two slices, filled
  back between the slices, myocardium grown); ``correction_lesion``: on the synthetic lesion
  (islands removed, a stroke painted within a FLAIR window).

- ``review``: issue 34's traps on the cardiac sample (image active, t/z sliders, matching model,
  two runs in one labels layer, Save -> reopen in the same colours); ``review_lesion``: the
  synthetic lesion sample (mismatch note for a BraTS model, EMMA: labels active, outline locked,
  uncertainty heat map over the bright lesion).

Usage: ``xvfb-run -a python benchmarks/screenshots.py OUT_DIR [sample|acdc|dicom|recon|lesions|planes|emma|batch|correction ...]``
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def wait(pred, timeout=1800):
    from qtpy.QtWidgets import QApplication

    t0 = time.time()
    while not pred():
        QApplication.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("timed out")


def settle(seconds=0.5):
    from qtpy.QtWidgets import QApplication

    t0 = time.time()
    while time.time() - t0 < seconds:
        QApplication.processEvents()
        time.sleep(0.02)


def open_widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-medlearn", "Cardiac segmentation")
    return widget


def run_widget(w, layer):
    w.image_picker.value = layer
    t0 = time.time()
    w.run()
    wait(lambda: not w.running)
    print(f"  run {time.time() - t0:.1f} s, model {w.model_picker.model()}: {w.runner.status.text()}")
    return w.labels_layer


def paint_stroke(viewer, labels, frame: int, label: int = 1):
    """A brush stroke at the LV's edge on the mid slice of ``frame``, as the mouse would."""
    z = labels.data.shape[1] // 2
    viewer.dims.set_point(0, frame * viewer.layers[0].scale[0]) if labels.ndim == 4 else None
    lv = np.argwhere(labels.data[frame, z] == 1)
    centre = lv.mean(axis=0) if len(lv) else np.array(labels.data.shape[-2:]) / 2
    edge = centre[1] + (np.ptp(lv[:, 1]) / 2 if len(lv) else 0)
    labels.brush_size = 6
    labels.selected_label = label
    for dx in range(0, 8):
        labels.paint((frame, z, centre[0], edge + dx), label)
    settle(0.5)


def shoot(viewer, path):
    settle(1.0)
    viewer.screenshot(str(path), canvas_only=False)
    print(f"  wrote {path}")


def _segmented_sample(viewer):
    """File > Open Sample > cardiac cine, segmented in the Cardiac segmentation widget:
    ``(image, widget, labels, ED frame, LVEDV text)``."""
    viewer.open_sample("napari-medlearn", "cardiac_cine")
    image = viewer.layers["cardiac cine (phantom)"]
    w = open_widget(viewer)
    labels = run_widget(w, image)
    return image, w, labels, int(w.measures["ED_frame"]), w.measure_text("LVEDV (mL)")


def scenario_sample(viewer, out: Path):
    from napari_medlearn.imaging.io import read_nifti

    print("sample: File > Open Sample > cardiac cine")
    image, w, labels, ed, before = _segmented_sample(viewer)
    viewer.dims.set_point(1, (labels.data.shape[1] // 2) * image.scale[1])
    paint_stroke(viewer, labels, ed)
    print(f"  LVEDV (mL) before the stroke {before}, after {w.measure_text('LVEDV (mL)')}")
    shoot(viewer, out / "cardiac_sample.png")
    saved = w.save_labels(out / "sample_labels.nii.gz")
    reopened = viewer.open(str(saved), plugin="napari-medlearn")[0]
    same_data = np.array_equal(np.asarray(reopened.data), np.asarray(labels.data))
    same_affine = np.allclose(reopened.metadata["affine"], image.metadata["affine"], atol=1e-5)
    print(f"  saved {saved}; reopened: same labels {same_data}, same affine {same_affine}, "
          f"scale {tuple(np.round(reopened.scale, 3))} vs image {tuple(np.round(image.scale, 3))}")
    print(f"  file affine equals the source's: {np.allclose(read_nifti(saved).affine, image.metadata['affine'], atol=1e-5)}")


def _acdc_cine(tmp: Path):
    """The first validation patient of the ACDC model's split, as a two-frame NIfTI cine."""
    import json

    from napari_medlearn import zoo
    from napari_medlearn.imaging import Volume
    from napari_medlearn.imaging.io import write_nifti
    from napari_medlearn.training.acdc import find_acdc_root, load_patient

    card = json.loads((zoo.CARDS_DIR / "cardiac-fcn-acdc.json").read_text())
    name = card["training"]["split"]["validation"][0]
    p = load_patient(find_acdc_root(), name)
    image, truth = p.cine()
    vol = Volume(image, p.affine, ("t", "z", "y", "x"), {"time_step": 400.0})
    path = tmp / f"{name}_ED_ES.nii.gz"
    write_nifti(vol, path, overwrite=True)
    return name, p.group, vol, truth, path


def scenario_acdc(viewer, out: Path):
    from napari_medlearn.imaging import measures as M

    tmp = Path(tempfile.mkdtemp())
    name, group, vol, truth, path = _acdc_cine(tmp)
    print(f"acdc: {name} ({group}) opened through the reader from {path}")
    layer = viewer.open(str(path), plugin="napari-medlearn")[0]
    w = open_widget(viewer)
    labels = run_widget(w, layer)
    d = M.dice_per_label(np.asarray(labels.data), truth)
    print(f"  Dice LV {d[1]:.3f} Myo {d[2]:.3f} RV {d[3]:.3f}; QC {w.qc}")
    viewer.dims.set_point(1, (labels.data.shape[1] // 2) * layer.scale[1])
    shoot(viewer, out / "cardiac_acdc.png")


def scenario_dicom(viewer, out: Path):
    from napari.settings import get_settings

    from napari_medlearn.imaging.dicom_write import write_dicom_series

    tmp = Path(tempfile.mkdtemp())
    name, group, vol, truth, _ = _acdc_cine(tmp)
    folder = tmp / f"{name}_dicom"
    write_dicom_series(vol, folder, series_description=f"{name} cine SA")
    # napari asks which reader to use for a folder (its builtin one also takes folders); a
    # user picks MedLearn and ticks "remember": the same preference, set here
    get_settings().plugins.extension2reader = {**get_settings().plugins.extension2reader,
                                               "*/": "napari-medlearn"}
    print(f"dicom: dropping {folder} ({len(list(folder.iterdir()))} files) on the window")
    viewer.window._qt_viewer._qt_open([str(folder)], stack=False)
    layer = viewer.layers[-1]
    print(f"  layer {layer.name!r} {layer.data.shape} scale {tuple(np.round(layer.scale, 3))}")
    w = open_widget(viewer)
    labels = run_widget(w, layer)
    ed = int(w.measures["ED_frame"])
    before = w.measure_text("LVEDV (mL)")
    viewer.dims.set_point(1, (labels.data.shape[1] // 2) * layer.scale[1])
    paint_stroke(viewer, labels, ed)
    print(f"  LVEDV (mL) before the correction {before}, after {w.measure_text('LVEDV (mL)')}")
    shoot(viewer, out / "cardiac_dicom.png")


def _reconstruct(viewer, layer, acceleration: float, dynamic: bool | None = None):
    _, w = viewer.window.add_plugin_dock_widget("napari-medlearn", "MRI reconstruction")
    w.image_picker.value = layer
    w.acceleration.setValue(acceleration)
    if dynamic is not None:
        w.dynamic.setChecked(dynamic)
    t0 = time.time()
    w.run()
    wait(lambda: not w.running)
    print(f"  {layer.name} R={acceleration:g}: {time.time() - t0:.1f} s, model {w.model_picker.model()}; "
          + "; ".join(f"{m}: PSNR {w.metric_text(m, 'PSNR (dB)')} dB, SSIM {w.metric_text(m, 'SSIM')}"
                      for m in ("zero-filled", "cascade")))
    return w


def _grid_of_outputs(viewer):
    """Every layer visible, side by side (cascade, error, zero-filled, k-space, mask, input)."""
    for layer in viewer.layers:
        layer.visible = True
    viewer.grid.enabled = True
    viewer.reset_view()


def scenario_recon(viewer, out: Path):
    print("recon: File > Open Sample > MNI152 T1, MRI reconstruction, simulate R=4 on one slice")
    viewer.open_sample("napari-medlearn", "mni152_t1")
    vol = viewer.layers[-1]
    z = vol.data.shape[0] // 2
    data, scale = np.asarray(vol.data[z]), vol.scale[1:]
    viewer.layers.remove(vol)
    slice_layer = viewer.add_image(data, name=f"MNI152 T1 z={z}", scale=scale)
    _reconstruct(viewer, slice_layer, 4.0)
    _grid_of_outputs(viewer)
    shoot(viewer, out / "recon_mni_r4.png")
    viewer.grid.enabled = False
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    print("recon: cardiac cine sample, mid slice as a 2D+t series, R=8, frame-synchronous")
    viewer.open_sample("napari-medlearn", "cardiac_cine")
    cine = next(layer for layer in viewer.layers if layer.ndim == 4 and not hasattr(layer, "selected_label"))
    zc = cine.data.shape[1] // 2
    data, scale = np.asarray(cine.data[:, zc]), cine.scale[[0, 2, 3]]
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    seq = viewer.add_image(data, name=f"cine z={zc}", scale=scale, metadata={"axes": ("t", "y", "x")})
    w = _reconstruct(viewer, seq, 8.0, dynamic=True)
    _grid_of_outputs(viewer)
    viewer.dims.set_point(0, 5 * seq.scale[0])
    settle(0.5)
    print(f"  frame 5 metrics: {w.frame_metrics()}")
    shoot(viewer, out / "recon_cine_r8_frame5.png")
    viewer.grid.enabled = False
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    try:
        subject = _brats_subject("brats_2013_pat0006_1")
    except FileNotFoundError as e:
        print(f"recon: z-scored image skipped ({e})")
        return
    print(f"recon: {subject.name} FLAIR (z-scored, background negative) through the reader, one slice, R=4")
    flair = viewer.open(str(subject / "Flair_subtrMeanDivStd.nii.gz"), plugin="napari-medlearn")[0]
    z = flair.data.shape[0] // 2
    data, scale = np.asarray(flair.data[z]), flair.scale[1:]
    viewer.layers.remove(flair)
    print(f"  slice z={z}: values {data.min():.2f} .. {data.max():.2f}")
    _reconstruct(viewer, viewer.add_image(data, name=f"FLAIR z={z} (z-scored)", scale=scale), 4.0)
    _grid_of_outputs(viewer)
    shoot(viewer, out / "recon_brats_zscored_r4.png")


SCENARIOS = {"sample": scenario_sample, "acdc": scenario_acdc, "dicom": scenario_dicom, "recon": scenario_recon}


def scenario_planes(viewer, out: Path):
    """File > Open Sample > fetal ultrasound sweep, Standard plane detection with the best
    available model (``$MEDLEARN_PLANES_MODEL`` overrides), then a look at a few frames: the
    best frame of found planes (clicked in the checklist), a Background frame, live mode."""
    import os

    from qtpy.QtCore import Qt

    from napari_medlearn import zoo

    print("planes: File > Open Sample > fetal ultrasound sweep")
    viewer.open_sample("napari-medlearn", "fetal_sweep")
    video = viewer.layers["fetal ultrasound sweep (phantom)"]
    truth = list(video.metadata["plane_labels"])
    _, w = viewer.window.add_plugin_dock_widget("napari-medlearn", "Standard plane detection")
    model = os.environ.get("MEDLEARN_PLANES_MODEL") or zoo.default_model("us-standard-planes")
    if model is None:
        print("  skipped: no standard-plane model (medlearn import-weights sononet-16 SonoNet16.npz)")
        return
    if Path(str(model)).suffix in (".pt", ".pth"):
        w.model_picker.add_checkpoint(model)
    else:
        w.model_picker.setCurrentIndex(w.model_picker.findData(model))
    w.video_picker.value = video
    t0 = time.time()
    w.run()
    wait(lambda: not w.running)
    res = w.result
    acc = np.mean(np.array(res.predicted_names) == np.array(truth))
    print(f"  run {time.time() - t0:.1f} s, model {w.model_picker.model()}: {w.runner.status.text()}; "
          f"frame accuracy vs phantom truth {acc:.3f}; found {w.found_planes()}")
    viewer.reset_view()
    found = w.found_planes()
    for name in ("Brain (Tv.)", "4CH", "Femur", "Spine (sag.)"):
        if name not in found:
            continue
        item = next(w.checklist.item(i) for i in range(w.checklist.count())
                    if w.checklist.item(i).data(Qt.UserRole + 1) == name)
        w.checklist.setCurrentItem(item)
        w.checklist.itemClicked.emit(item)
        print(f"  clicked {name}: frame {w.current_frame()} (truth {truth[w.current_frame()]})")
        shoot(viewer, out / f"planes_{name.split()[0].lower()}.png")
    background = [i for i, n in enumerate(truth) if n == "Background"]
    w.go_to_frame(background[len(background) // 2])
    w.live_check.setChecked(True)
    wait(lambda: w.live_result is not None and w.live_result[0] == w.current_frame())
    print(f"  live at frame {w.current_frame()}: {w.live_result} (truth {truth[w.current_frame()]})")
    shoot(viewer, out / "planes_live_background.png")


SCENARIOS["planes"] = scenario_planes


def scenario_planes_dicom(viewer, out: Path):
    """File > Open a real ultrasound DICOM clip (pydicom's ``examples_ybr_color.dcm``: 30 colour
    frames, YBR_FULL_422, calibrated regions), then Standard plane detection on it."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("examples_ybr_color.dcm")
    print(f"planes_dicom: File > Open {path}")
    layers = viewer.open(path, plugin="napari-medlearn")
    clip = layers[0]
    print(f"  layer {clip.name!r}: {clip.data.shape} rgb={clip.rgb} scale={tuple(round(s, 3) for s in clip.scale)}")
    _, w = viewer.window.add_plugin_dock_widget("napari-medlearn", "Standard plane detection")
    w.video_picker.value = clip
    w.run()
    wait(lambda: not w.running)
    print(f"  {w.runner.status.text()}; found {w.found_planes()}")
    viewer.reset_view()
    viewer.dims.set_current_step(0, 12)
    shoot(viewer, out / "planes_dicom_clip.png")


SCENARIOS["planes_dicom"] = scenario_planes_dicom


def _brats_subject(name: str = "brats_2013_pat0003_1") -> Path:
    """A BraTS subject folder from ``../shared/data/brats-deepmedic`` (or ``$MEDLEARN_BRATS``)."""
    from napari_medlearn.training.deepmedic import find_brats_root

    return find_brats_root() / name



def scenario_lesions(viewer, out: Path):
    """A BraTS subject's FLAIR and T1c through the reader, Brain lesion segmentation, a stroke, save.

    The model is the best shipped one; without one, the checkpoint in ``$MEDLEARN_LESION_MODEL``.
    """
    import os

    from napari_medlearn import zoo
    from napari_medlearn.imaging import measures as M
    from napari_medlearn.methods.lesions import TASK

    subject = _brats_subject()
    print(f"lesions: {subject.name} FLAIR and T1c opened through the reader")
    for name in ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz"):
        viewer.open(str(subject / name), plugin="napari-medlearn")
    flair = viewer.layers["Flair_subtrMeanDivStd"]
    viewer.layers["T1c_subtrMeanDivStd"].visible = False
    _, w = viewer.window.add_plugin_dock_widget("napari-medlearn", "Brain lesion segmentation")
    if not zoo.available(TASK):
        if not os.environ.get("MEDLEARN_LESION_MODEL"):
            print("  no shipped lesion model and no $MEDLEARN_LESION_MODEL checkpoint: skipped")
            return
        w.model_picker.add_checkpoint(os.environ["MEDLEARN_LESION_MODEL"])
    print("  pickers: " + ", ".join(f"{k} = {p.value.name}" for k, p in w.modality_pickers.items())
          + f"; brain mask {w.mask_picker.value}")
    t0 = time.time()
    w.run()
    wait(lambda: not w.running)
    labels = w.labels_layer
    print(f"  run {time.time() - t0:.1f} s, model {w.model_picker.model()}: {w.runner.status.text()}")
    truth = viewer.open(str(subject / "OTMultiClass.nii.gz"), plugin="napari-medlearn")[0]
    truth.visible = False
    m = M.brats_region_metrics(np.asarray(labels.data), np.rint(truth.data).astype(np.uint8), w.spacing)
    print("  vs the reference labels: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()))
    z = int(np.argmax((np.asarray(labels.data) > 0).sum(axis=(1, 2))))
    viewer.dims.set_point(0, z * flair.scale[0] + flair.translate[0])
    viewer.layers.selection.active = labels
    before = w.volume_text("whole_tumour_mL")
    # a stroke of oedema beside the tumour on this slice, as the brush would paint it
    ys, xs = np.nonzero(np.asarray(labels.data[z]) > 0)
    yc, x_edge = (int(ys.mean()), int(xs.max())) if len(ys) else (120, 120)
    labels.brush_size = 8
    labels.selected_label = 2
    for dx in range(4, 30, 2):
        labels.paint((z, yc, x_edge + dx), 2)
    settle(0.5)
    print(f"  whole tumour (mL) before the stroke {before}, after {w.volume_text('whole_tumour_mL')}; "
          + ", ".join(f"{k} {w.volume_text(k)}" for k in ("necrotic_core_mL", "oedema_mL", "enhancing_mL")))
    shoot(viewer, out / "lesions_brats.png")
    for layer in w.probability_layers.values():
        layer.visible = True
    labels.visible = False
    shoot(viewer, out / "lesions_brats_probabilities.png")
    labels.visible = True
    saved = w.save(out / "lesions_brats_labels.nii.gz", overwrite=True)
    if saved:
        reopened = viewer.open(str(saved[0]), plugin="napari-medlearn")[0]
        print(f"  saved {saved[0].name} + {saved[1].name}; reopened: same labels "
              f"{np.array_equal(np.asarray(reopened.data), np.asarray(labels.data))}, same affine "
              f"{np.allclose(reopened.metadata['affine'], flair.metadata['affine'], atol=1e-5)}")
        print("  " + saved[1].read_text().strip().replace("\n", "\n  "))
        viewer.layers.remove(reopened)
    print("lesions: File > Open Sample > synthetic brain lesion, the same widget")
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    viewer.open_sample("napari-medlearn", "brain_lesion")
    print("  pickers: " + ", ".join(f"{k} = {p.value.name}" for k, p in w.modality_pickers.items()))
    t0 = time.time()
    w.run()
    wait(lambda: not w.running)
    print(f"  run {time.time() - t0:.1f} s: {w.runner.status.text()}; whole tumour {w.volume_text('whole_tumour_mL')} mL "
          f"(truth {(np.asarray(viewer.layers['synthetic lesion FLAIR [truth]'].data) > 0).sum() * 8e-3:.2f} mL)")
    z = int(np.argmax((np.asarray(viewer.layers["synthetic lesion FLAIR [truth]"].data) > 0).sum(axis=(1, 2))))
    viewer.dims.set_point(0, z * w.labels_layer.scale[0] + w.labels_layer.translate[0])
    shoot(viewer, out / "lesions_sample.png")
    if "lesions-uda" in zoo.available(TASK):
        print("lesions: lesions-uda chosen, its segmentation, and the adapt panel unfolded with self-training ticked")
        w.model_picker.setCurrentIndex(w.model_picker.findData("lesions-uda"))
        w.run()
        wait(lambda: not w.running)
        print(f"  {w.runner.status.text()}; whole tumour {w.volume_text('whole_tumour_mL')} mL")
        w.adapt_panel.setChecked(True)
        w.adapt_panel.self_train.setChecked(True)
        shoot(viewer, out / "lesions_adapt_panel.png")


SCENARIOS["lesions"] = scenario_lesions


def scenario_emma(viewer, out: Path):
    """An ensemble on a BraTS subject its members never saw (the ``emma`` card's, else pat0003):
    uncertainty heat map, review outline.

    The members are ``$MEDLEARN_EMMA_MEMBERS`` (comma-separated), else the ``emma`` card's, else
    every single lesion model shipped.
    """
    import os

    from napari_medlearn import zoo
    from napari_medlearn.methods.lesions import TASK

    never_seen = zoo.card("emma").get("training", {}).get("never_seen") if "emma" in zoo.available(TASK) else None
    subject = _brats_subject(never_seen[0]) if never_seen else _brats_subject()
    for name in ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz"):
        viewer.open(str(subject / name), plugin="napari-medlearn")
    flair = viewer.layers["Flair_subtrMeanDivStd"]
    viewer.layers["T1c_subtrMeanDivStd"].visible = False
    _, w = viewer.window.add_plugin_dock_widget("napari-medlearn", "Brain lesion segmentation")
    if os.environ.get("MEDLEARN_EMMA_MEMBERS"):
        members = os.environ["MEDLEARN_EMMA_MEMBERS"].split(",")
    elif "emma" in zoo.available(TASK):
        members = zoo.card("emma")["members"]
    else:
        members = [n for n in zoo.available(TASK) if zoo.card(n).get("kind") != "ensemble"]
    w.ensemble.refresh()
    w.ensemble.set_members(members)
    print(f"emma: {subject.name}, members {', '.join(members)}")
    t0 = time.time()
    w.run()
    wait(lambda: not w.running)
    print(f"  run {time.time() - t0:.1f} s: {w.runner.status.text()}")
    u = np.asarray(w.review.uncertainty)
    z = int(np.argmax((u > 0.3).sum(axis=(1, 2))))
    viewer.dims.set_point(0, z * flair.scale[0] + flair.translate[0])
    for level in (0.5, 0.3, 0.1):
        print(f"  voxels with uncertainty above {level}: {w.review.set_level(level)}")
    w.review.set_level(0.3)
    w.labels_layer.visible = False
    for layer in w.probability_layers.values():
        layer.visible = False
    print("  member volumes: " + "; ".join(
        f"{w.review.table.item(r, 0).text()} WT {w.review.table.item(r, 1).text()} mL"
        for r in range(w.review.table.rowCount())))
    shoot(viewer, out / "emma_uncertainty.png")
    w.labels_layer.visible = True
    w.review.uncertainty_layer.visible = False
    shoot(viewer, out / "emma_labels_review.png")


SCENARIOS["emma"] = scenario_emma


def scenario_sr(viewer, out: Path):
    """A thick axial stack (x4, box profile) of the held-out BraTS subject written as NIfTI, opened
    through the reader, Super-resolution with the best shipped model (SR beside cubic spline),
    the SR volume written by ``medlearn super-resolve`` and reopened: all must overlap the source
    exactly; looked at in the axial, coronal and sagittal planes."""
    from napari_medlearn.cli import main as medlearn
    from napari_medlearn.imaging import slices as S
    from napari_medlearn.imaging.io import write_nifti
    from napari_medlearn.imaging.volume import Volume
    from napari_medlearn.training.sr import held_out_cases

    cases = held_out_cases(4, modalities=("T1c",))
    if not cases:
        print("  skipped: the held-out BraTS subject is not in ../shared/data/brats-deepmedic")
        return
    v = cases[0][1]
    tmp = Path(tempfile.mkdtemp(prefix="sr-shots-"))
    thick, taff = S.thick_slices(v.image, v.affine, 4, "box")
    src_path = tmp / "t1c_axial_4mm.nii.gz"
    write_nifti(Volume(thick, taff, ("z", "y", "x")), src_path)
    print(f"sr: {v.name} as a 4 mm axial stack {thick.shape} -> {src_path.name}, opened through the reader")
    viewer.open(str(src_path), plugin="napari-medlearn")
    src = viewer.layers[-1]
    _, w = viewer.window.add_plugin_dock_widget("napari-medlearn", "Super-resolution")
    w.image_picker.value = src
    w.factor.setValue(4)
    t0 = time.time()
    w.run()
    wait(lambda: not w.running)
    print(f"  widget: {time.time() - t0:.1f} s, model {w.model_picker.model()}: {w.runner.status.text()}")
    sr = viewer.layers[f"{src.name} [SR x4]"]
    spline = viewer.layers[f"{src.name} [cubic spline x4]"]
    spline.visible = True
    out_path = tmp / "t1c_sr.nii.gz"
    medlearn(["super-resolve", str(src_path), "--factor", "4", "--out", str(out_path), "--quiet"])
    viewer.open(str(out_path), plugin="napari-medlearn")
    written = viewer.layers[-1]
    written.visible = False
    def faces(layer):     # outer faces of the first and last voxels (napari's extent is voxel centres)
        e = np.asarray(layer.extent.world, float)
        return np.stack([e[0] - layer.scale / 2, e[1] + layer.scale / 2])

    print(f"  source {src.name}: scale {tuple(float(s) for s in src.scale)}, faces {faces(src).round(2).tolist()}")
    for layer in (spline, sr, written):
        ok = np.allclose(faces(layer), faces(src), atol=1e-4)
        print(f"  {layer.name}: scale {tuple(float(s) for s in layer.scale)}, field of view "
              f"{'== source' if ok else faces(layer).round(2).tolist()}")
    print(f"  written file == widget layer: {np.allclose(written.data, sr.data, atol=1e-4)}")
    viewer.grid.enabled = True
    for plane, order in (("axial", (0, 1, 2)), ("coronal", (1, 0, 2)), ("sagittal", (2, 0, 1))):
        viewer.dims.order = order
        viewer.reset_view()
        shoot(viewer, out / f"sr_{plane}.png")
    viewer.dims.order = (0, 1, 2)
    viewer.grid.enabled = False


SCENARIOS["sr"] = scenario_sr


def scenario_acnn(viewer, out: Path):
    """A held-out ACDC patient's expert mask, damaged (lost slice + bitten ring + islands), over its
    scan; Mask correction (shape prior) proposes a fix with the changes highlighted; Accept."""
    from napari_medlearn.imaging.mask_corruption import bitten_ring, islands, lost_slice
    from napari_medlearn.training.acdc import find_acdc_root, list_patients, load_patient, stratified_split

    root = find_acdc_root()
    _, val = stratified_split(list_patients(root), 4, 0)
    p = load_patient(root, val[0])
    rng = np.random.default_rng(3)
    bad = islands(bitten_ring(lost_slice(p.ed_labels, p.spacing, rng), p.spacing, rng), p.spacing, rng)
    print(f"acnn: {p.name} ED, damaged mask (Dice to expert "
          f"{np.mean([np.sum((bad == k) & (p.ed_labels == k)) * 2 / (np.sum(bad == k) + np.sum(p.ed_labels == k)) for k in (1, 2, 3)]):.3f})")
    viewer.add_image(p.ed_image, name=f"{p.name} ED", scale=p.spacing, colormap="gray")
    mask = viewer.add_labels(bad, name=f"{p.name} damaged mask", scale=p.spacing)
    _, w = viewer.window.add_plugin_dock_widget("napari-medlearn", "Mask correction (shape prior)")
    w.labels_picker.value = mask
    t0 = time.time()
    w.run()
    wait(lambda: not w.running)
    print(f"  run {time.time() - t0:.1f} s, model {w.model_picker.model()}: {w.runner.status.text()}; "
          f"{w.plausibility_label.text()}; {w.volumes_label.text()}")
    z = int(np.argmax(w.result.changed.reshape(bad.shape[0], -1).sum(axis=1)))
    viewer.dims.set_point(0, z * p.spacing[0])
    viewer.reset_view()
    shoot(viewer, out / "acnn_proposal.png")
    accepted = w.accept()
    fixed = np.asarray(accepted.data)
    print(f"  accepted -> {accepted.name}; Dice to expert "
          f"{np.mean([np.sum((fixed == k) & (p.ed_labels == k)) * 2 / (np.sum(fixed == k) + np.sum(p.ed_labels == k)) for k in (1, 2, 3)]):.3f}")
    shoot(viewer, out / "acnn_accepted.png")


SCENARIOS["acnn"] = scenario_acnn


def scenario_batch(viewer, out: Path):
    """Plugins > MedLearn > Cohort (batch): segment-heart over three ACDC patients the model never
    trained on (ED + ES frames per patient folder, as ACDC ships them), the table, then one case opened for review, a
    brush stroke (the case measured again), the correction saved."""
    from napari_medlearn import zoo
    from napari_medlearn.training.acdc import find_acdc_root

    root = find_acdc_root()
    cohort = Path(tempfile.mkdtemp()) / "cohort"
    cohort.mkdir()
    held_out = zoo.card("cardiac-fcn-acdc")["training"]["split"]["validation"]   # never trained on
    cases = [held_out[i] for i in (16, 17, 18)]
    for name in cases:
        (cohort / name).symlink_to(root / name, target_is_directory=True)
    _, w = viewer.window.add_plugin_dock_widget("napari-medlearn", "Cohort (batch)")
    w.cohort_edit.setText(str(cohort))
    w.out_edit.setText(str(cohort.parent / "results"))
    print(f"batch: segment-heart on {', '.join(p.name for p in sorted(cohort.iterdir()))}")
    t0 = time.time()
    w.run()
    wait(lambda: not w.running)
    print(f"  {time.time() - t0:.1f} s; {w.summary.text()}")
    for case in cases:
        print(f"  {case}: " + ", ".join(f"{c} {w.cell(case, c)}" for c in ("status", "LVEDV_mL", "LVEF_pct", "RVEF_pct")))
    w.table.selectRow(1)
    layers = w.open_case()
    print(f"  opened {[layer.name for layer in layers]}")
    labels = layers[-1]
    viewer.dims.set_point(1, (labels.data.shape[1] // 2) * labels.scale[1])
    viewer.reset_view()
    case = cases[1]
    before = w.cell(case, "LVEDV_mL")
    paint_stroke(viewer, labels, 0)
    wait(lambda: w.cell(case, "status") == "edited", timeout=30)
    print(f"  a brush stroke on frame 0: LVEDV (mL) {before} -> {w.cell(case, 'LVEDV_mL')} (edited)")
    shoot(viewer, out / "batch_acdc.png")
    w.save_correction()
    print(f"  {w.summary.text()}")


SCENARIOS["batch"] = scenario_batch


def scenario_correction(viewer, out: Path):
    """Plugins > MedLearn > Correction tools on a cardiac and a lesion case: the sample cine
    segmented, the LV erased on two mid slices of ED and filled back between the slices (LVEDV
    before / erased / filled), the myocardium grown 1.5 mm; then the synthetic lesion sample's
    truth copied as an editable layer, islands sprinkled and removed, a stroke painted within a
    FLAIR window."""
    print("correction: the cardiac sample, segmented, two slices of the LV erased")
    image, w, labels, ed, before = _segmented_sample(viewer)
    _, dock = viewer.window.add_plugin_dock_widget("napari-medlearn", "Correction tools")
    dock.labels_picker.value = labels
    viewer.dims.set_point(0, ed * image.scale[0])
    lv_slices = [z for z in range(labels.data.shape[1]) if (labels.data[ed, z] == 1).any()]
    mid = lv_slices[len(lv_slices) // 2 - 1: len(lv_slices) // 2 + 1]
    for z in mid:
        idx = np.nonzero(labels.data[ed, z] == 1)
        labels.data_setitem((np.full(idx[0].shape, ed), np.full(idx[0].shape, z)) + idx, 0)
    settle(1.0)
    erased = w.measure_text("LVEDV (mL)")
    dock.label_spin.setValue(1)
    world = labels.data_to_world((ed, mid[0], 0, 0))
    viewer.dims.set_point(0, float(world[0]))
    viewer.dims.set_point(1, float(world[1]))
    print(f"  slider at frame {viewer.dims.current_step[0]}, slice {viewer.dims.current_step[1]} (ED is {ed})")
    n = dock.interpolate()
    settle(1.0)
    print(f"  LVEDV (mL) {before} -> slices {mid} erased {erased} -> filled between slices {w.measure_text('LVEDV (mL)')} ({n} voxels)")
    dock.label_spin.setValue(2)
    dock.margin.setValue(1.5)
    dock.grow_shrink()
    settle(1.0)
    print(f"  myocardium grown 1.5 mm: LVM {w.measure_text('LVM (g)')}; status: {dock.status.text()}")
    shoot(viewer, out / "correction_cardiac.png")


def scenario_correction_lesion(viewer, out: Path):
    """The Correction tools dock on the synthetic lesion sample's truth (see ``correction``)."""
    print("correction_lesion: the synthetic lesion sample's truth as an editable layer")
    viewer.open_sample("napari-medlearn", "brain_lesion")
    _, dock = viewer.window.add_plugin_dock_widget("napari-medlearn", "Correction tools")
    flair = next(l for l in viewer.layers if "FLAIR" in l.name)
    truth = next(l for l in viewer.layers if l.__class__.__name__ == "Labels")
    lab = np.asarray(truth.data).copy()
    rng = np.random.default_rng(0)
    for _ in range(12):
        z, y, x = (rng.integers(0, s) for s in lab.shape)
        lab[z, y:y + 2, x:x + 2] = 2
    edit = viewer.add_labels(lab, name="lesion labels (edit)", scale=truth.scale, translate=truth.translate,
                             metadata=dict(truth.metadata))
    truth.visible = False
    dock.labels_picker.value = edit
    dock.label_spin.setValue(2)
    dock.island_ml.setValue(0.05)
    print(f"  remove islands: {dock.remove_islands()} voxels; {dock.status.text()}")
    z = int(np.argmax((lab == 2).sum(axis=(1, 2))))
    viewer.dims.set_point(0, float(edit.data_to_world((z, 0, 0))[0]))
    dock.image_picker.value = flair
    # the window: the FLAIR brightness of oedema (its truth's 5th percentile up), so the stroke
    # that overshoots the lesion's edge into normal tissue keeps only the bright part
    lo, hi = np.percentile(np.asarray(flair.data)[np.asarray(truth.data) == 2], [5, 100])
    dock.window_low.setValue(float(lo))
    dock.window_high.setValue(float(hi))
    dock.window_check.setChecked(True)
    viewer.reset_view()
    edit.selected_label = 2
    edit.brush_size = 14
    ys, xs = np.nonzero(lab[z] == 2)
    row = ys[np.argmax(xs)]
    for dx in range(-4, 8, 2):
        edit.paint((z, row, xs.max() + dx), 2)
    settle(0.5)
    print(f"  {dock.status.text()}")
    shoot(viewer, out / "correction_lesion.png")


SCENARIOS["correction"] = scenario_correction
SCENARIOS["correction_lesion"] = scenario_correction_lesion


def scenario_review(viewer, out: Path):
    """Issue 34's review traps and colours on the cardiac sample: opened with its image active, t/z
    sliders and the phantom model chosen; two runs (one labels layer, refreshed); labels saved,
    removed and reopened through the reader in the same colours."""
    print("review: cardiac sample")
    viewer.open_sample("napari-medlearn", "cardiac_cine")
    settle(0.5)
    image = viewer.layers["cardiac cine (phantom)"]
    w = open_widget(viewer)
    print(f"  active layer {viewer.layers.selection.active.name!r}, axes {viewer.dims.axis_labels}, "
          f"model {w.model_picker.model()}, fit note {w.fit.label.text()!r}")
    labels = run_widget(w, image)
    run_widget(w, image)
    print(f"  after two runs: {[la.name for la in viewer.layers]}; active {viewer.layers.selection.active.name!r}")
    viewer.dims.set_point(1, (labels.data.shape[1] // 2) * image.scale[1])
    shoot(viewer, out / "review_cardiac_runs.png")
    saved = w.save_labels(out / "review_cardiac_labels.nii.gz", overwrite=True)
    viewer.layers.remove(labels)
    reopened = viewer.open(str(saved), plugin="napari-medlearn")[0]
    colours = [tuple(np.round(reopened.colormap.map(v), 2)) for v in (1, 2, 3)]
    print(f"  reopened {reopened.name!r}: colours of 1-3 {colours}")
    shoot(viewer, out / "review_cardiac_reopened.png")
    w.model_picker.setCurrentIndex(w.model_picker.findData("cardiac-fcn-acdc"))
    print(f"  with cardiac-fcn-acdc: fit note {w.fit.label.text()!r}")


def scenario_review_lesion(viewer, out: Path):
    """The synthetic lesion sample: the matching model chosen; a BraTS-only model said to be made
    for real scans; EMMA of lesions-synthetic and lesions-brats: labels active, outline locked,
    uncertainty heat map over the bright FLAIR lesion."""
    print("review_lesion: synthetic lesion sample")
    viewer.open_sample("napari-medlearn", "brain_lesion")
    settle(0.5)
    flair = viewer.layers["synthetic lesion FLAIR"]
    _, w = viewer.window.add_plugin_dock_widget("napari-medlearn", "Brain lesion segmentation")
    print(f"  active {viewer.layers.selection.active.name!r}, model {w.model_picker.model()}")
    w.model_picker.setCurrentIndex(w.model_picker.findData("lesions-brats"))
    print(f"  lesions-brats: {w.fit.label.text()!r}")
    shoot(viewer, out / "review_lesion_mismatch.png")
    w.model_picker.setCurrentIndex(w.model_picker.findData("lesions-synthetic"))
    w.ensemble.refresh()
    w.ensemble.set_members(["lesions-synthetic", "lesions-brats"])     # two members: minutes, not an hour, on 2 CPUs
    t0 = time.time()
    w.run()
    wait(lambda: not w.running)
    print(f"  EMMA {time.time() - t0:.1f} s: {w.runner.status.text()}; active {viewer.layers.selection.active.name!r}, "
          f"outline editable {w.review.outline_layer.editable}")
    truth = viewer.layers["synthetic lesion FLAIR [truth]"]
    z = int(np.argmax((np.asarray(truth.data) > 0).sum(axis=(1, 2))))
    viewer.dims.set_point(0, z * flair.scale[0] + flair.translate[0])
    w.labels_layer.visible = False
    for layer in w.probability_layers.values():
        layer.visible = False
    w.review.set_level(0.3)
    shoot(viewer, out / "review_lesion_uncertainty.png")


SCENARIOS["review"] = scenario_review
SCENARIOS["review_lesion"] = scenario_review_lesion


def main() -> None:
    import napari

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    for key in sys.argv[2:] or list(SCENARIOS):
        viewer = napari.Viewer()
        viewer.window._qt_window.resize(1500, 950)
        try:
            SCENARIOS[key](viewer, out)
        finally:
            viewer.close()


if __name__ == "__main__":
    main()
