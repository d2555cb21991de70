"""Ensemble review and adaptation in the lesion widget (issue 12): members as hidden layers, the
uncertainty heat map, the review outline above a level, member volumes; adapting the chosen model
to the open scans into a new model that the picker then offers. Tiny untrained members in a
temporary user zoo on a 4 mm synthetic case keep each run short."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medlearn import zoo
from napari_medlearn.methods.lesions import TASK
from napari_medlearn.nets import DeepMedic, UNet3D
from napari_medlearn.samples.brain_lesions import synthetic_lesion_case
from napari_medlearn.widgets.lesions import LesionWidget

TIMEOUT_MS = 120_000
DM = dict(in_channels=2, n_classes=4, fms_normal=(3,) * 8, subsample_factors=((3, 3, 3),), fc_fms=(4,),
          dropout_fc=(0.0, 0.0))
UN = dict(in_channels=2, n_classes=4, base=2, levels=3)
CARD = {"task": TASK, "n_classes": 4, "label_values": [0, 1, 2, 4],
        "input": {"channels": ["FLAIR", "T1c"], "spacing_mm": [4.0, 4.0, 4.0]}}


@pytest.fixture
def user_zoo(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLEARN_ZOO", str(tmp_path))
    for seed, name, arch, args, net in ((0, "tiny-dm", "deepmedic", DM, DeepMedic), (1, "tiny-unet", "unet3d", UN, UNet3D)):
        torch.manual_seed(seed)
        model = net(**args)
        if arch == "unet3d":       # move BN statistics off their defaults so members disagree
            model.train()
            with torch.no_grad():
                model(torch.randn(2, 2, 8, 8, 8) * 3 + 1)
            model.eval()
        card = {**CARD, "name": name, "architecture": arch, "arch_args": args, "inference": {"roi": 32},
                "adaptation_source": {"generator": "samples.brain_lesions.synthetic_lesion_case", "domain": "A",
                                      "seeds": [0, 1], "spacing_mm": 4.0}}
        sha = zoo.save_checkpoint(model, tmp_path / f"{name}.pt", arch, args, card=card)
        zoo.write_json_atomic({**card, "sha256": sha}, tmp_path / f"{name}.json")
    return tmp_path


@pytest.fixture
def widget(make_napari_viewer, qtbot, user_zoo):
    case = synthetic_lesion_case(seed=1, spacing_mm=4.0, n_lesions=1)
    viewer = make_napari_viewer()
    vols = case.volumes()
    for name in ("FLAIR", "T1c"):
        viewer.add_image(vols[name].data.copy(), name=name, **vols[name].layer_kwargs())
    w = LesionWidget(viewer)
    qtbot.addWidget(w)
    w.device_picker.setCurrentText("cpu")
    w.ensemble.refresh()
    return w


def test_ensemble_run_adds_members_uncertainty_and_review_outline(widget, qtbot, errors):
    widget.ensemble.set_members(["tiny-dm", "tiny-unet"])
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert not errors, errors
    names = [layer.name for layer in widget.viewer.layers]
    assert "FLAIR [EMMA]" in names and "FLAIR [EMMA uncertainty]" in names and "FLAIR [EMMA review]" in names
    members = widget.review.member_layers
    assert set(members) == {"tiny-dm", "tiny-unet"} and not any(layer.visible for layer in members.values())
    u = widget.review.uncertainty_layer
    assert u.contrast_limits == [0.0, 1.0] and u.data.max() <= 1.0 and np.allclose(u.scale, widget.labels_layer.scale)
    # the outline follows the slider: more voxels to review at a lower level
    n_high = widget.review.set_level(0.5)
    n_low = widget.review.set_level(0.05)
    assert n_low >= n_high and n_low == int((u.data > 0.05).sum())
    assert widget.review.outline_layer.contour >= 1
    # review traps: strokes go to the labels, never to the outline the slider redraws
    outline = widget.review.outline_layer
    assert widget.viewer.layers.selection.active is widget.labels_layer
    widget.viewer.layers.selection.active = outline
    widget.review.set_level(0.2)                     # napari makes a labels layer editable again on new data
    assert not outline.editable and outline.mode == "pan_zoom"
    # the heat map: translucent and clear where nothing is uncertain (additive inferno went white over FLAIR)
    assert u.blending == "translucent" and u.colormap.map(np.array([0.0]))[0][3] == 0.0
    assert widget.review.table.rowCount() == 2 and widget.labels_layer.metadata["members"] == ["tiny-dm", "tiny-unet"]


def test_ticking_an_ensemble_cards_members_runs_that_card(widget, qtbot, errors, user_zoo):
    post = {"decision": "expected_dice", "min_component_fraction": 0.0, "fill_holes": True}
    zoo.write_json_atomic({"name": "tiny-emma", "kind": "ensemble", "task": TASK, "members": ["tiny-dm", "tiny-unet"],
                           "postprocess": post}, user_zoo / "tiny-emma.json")
    widget.ensemble.refresh()
    listed = [widget.ensemble.list.item(i).text() for i in range(widget.ensemble.list.count())]
    assert {"tiny-dm", "tiny-unet"} <= set(listed) and "tiny-emma" not in listed   # an ensemble is no member
    widget.ensemble.set_members(["tiny-unet", "tiny-dm"])
    assert widget.ensemble.members() == "tiny-emma"
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert not errors, errors
    meta = widget.labels_layer.metadata
    assert meta["model"] == "tiny-emma" and meta["members"] == ["tiny-dm", "tiny-unet"]
    assert {k: meta["postprocess"][k] for k in post} == post
    assert set(widget.review.member_layers) == {"tiny-dm", "tiny-unet"}


def test_one_member_is_not_an_ensemble(widget, errors):
    widget.ensemble.set_members(["tiny-dm"])
    before = len(widget.viewer.layers)
    assert widget.run() is None
    assert any("at least 2" in e for e in errors) and len(widget.viewer.layers) == before


def test_adapt_panel_makes_a_model_the_picker_offers(widget, qtbot, errors):
    widget.model_picker.setCurrentIndex(widget.model_picker.findData("tiny-dm"))
    widget.adapt_panel.setChecked(True)
    assert widget.adapt_panel.body.isVisible() or not widget.isVisible()
    widget.adapt_panel.name_edit.setText("tiny-dm-here")
    widget.adapt_panel.epochs.setValue(1)
    widget.adapt_panel.iters.setValue(2)
    widget.adapt_panel.run()
    qtbot.waitUntil(lambda: not widget.adapt_panel.runner.running, timeout=TIMEOUT_MS)
    assert not errors, errors
    assert widget.model_picker.model() == "tiny-dm-here" and "tiny-dm-here" in zoo.available(TASK)
    assert "self_training" not in zoo.card("tiny-dm-here")["adaptation"]
    # ticked: the adversarial stage is followed by lesions-uda's two self-training rounds
    widget.adapt_panel.name_edit.setText("tiny-dm-st")
    widget.adapt_panel.iters.setValue(1)
    widget.adapt_panel.self_train.setChecked(True)
    widget.adapt_panel.run()
    qtbot.waitUntil(lambda: not widget.adapt_panel.runner.running, timeout=TIMEOUT_MS)
    assert not errors, errors
    assert zoo.card("tiny-dm-st")["adaptation"]["self_training"]["portions"] == [0.5, 0.7]


def test_adapting_to_scans_that_look_not_skull_stripped_warns_before_training(widget, qtbot, errors, monkeypatch):
    from napari_medlearn.methods import lesions as lesion_method
    from napari_medlearn.widgets import lesions_review

    warnings = []
    monkeypatch.setattr(lesions_review, "show_warning", warnings.append)
    monkeypatch.setattr(lesion_method, "BRAIN_VOLUME_LIMIT_ML", 10.0)       # stands in for a whole head
    widget.model_picker.setCurrentIndex(widget.model_picker.findData("tiny-dm"))
    widget.adapt_panel.name_edit.setText("tiny-dm-head")
    widget.adapt_panel.epochs.setValue(1)
    widget.adapt_panel.iters.setValue(1)
    widget.adapt_panel.run()
    assert len(warnings) == 1 and "skull-stripped" in warnings[0]          # shown as the run starts
    qtbot.waitUntil(lambda: not widget.adapt_panel.runner.running, timeout=TIMEOUT_MS)
    assert not errors, errors
    assert zoo.card("tiny-dm-head")["adaptation"]["target_warnings"]
