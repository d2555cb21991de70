"""Window/level presets and the review shortcuts listed in the docks."""

from __future__ import annotations

import numpy as np
import pytest

from app_model.types import KeyBinding

from napari_medlearn.widgets._viewing import PRESETS, ViewingPanel, apply_preset, preset_limits


def test_presets_give_the_expected_windows():
    rng = np.random.default_rng(0)
    mr = np.zeros((4, 50, 50), np.float32)
    mr[:, 10:40, 10:40] = rng.uniform(100, 200, (4, 30, 30))      # background zeros do not count
    lo, hi = preset_limits(mr, "MR brain")
    assert 100 <= lo < 102 and 198 < hi <= 200
    assert preset_limits(np.array([-1000, 0, 3000], np.int16), "CT soft tissue") == (-160.0, 240.0)
    assert preset_limits(np.array([[0, 17], [200, 255]], np.uint8), "ultrasound") == (0.0, 255.0)
    with pytest.raises(ValueError, match="no window preset 'bone'"):
        preset_limits(mr, "bone")


def test_apply_preset_sets_the_layer_and_refuses_labels(make_napari_viewer):
    viewer = make_napari_viewer()
    ct = viewer.add_image(np.linspace(-1000, 1000, 400, dtype=np.float32).reshape(20, 20))
    assert apply_preset(ct, "CT soft tissue") == (-160.0, 240.0)
    assert tuple(ct.contrast_limits) == (-160.0, 240.0)
    labels = viewer.add_labels(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="grey-level image layer"):
        apply_preset(labels, "MR brain")


def test_shortcuts_are_bound_on_the_viewer_and_listed(make_napari_viewer, qtbot, errors):
    viewer = make_napari_viewer()
    ct = viewer.add_image(np.linspace(-1000, 1000, 400, dtype=np.float32).reshape(20, 20), name="ct")
    calls = []
    panel = ViewingPanel(viewer, (("Alt-R", "run", lambda: calls.append("run")),))
    qtbot.addWidget(panel)
    for i, name in enumerate(PRESETS, start=1):
        assert f"Alt-{i} window: {name}" in panel.shortcuts_label.text()
    assert "Alt-R run" in panel.shortcuts_label.text()
    viewer.keymap[KeyBinding.from_str("Alt+R")](viewer)
    assert calls == ["run"]
    viewer.keymap[KeyBinding.from_str("Alt+3")](viewer)                   # CT soft tissue on the active image
    assert tuple(ct.contrast_limits) == (-160.0, 240.0)
    viewer.layers.selection.active = viewer.add_labels(np.zeros((4, 4), np.uint8))
    viewer.layers.remove(ct)
    panel.apply("MR brain")                          # no image: one notification
    assert len(errors) == 1 and "grey-level image layer" in errors[0]
