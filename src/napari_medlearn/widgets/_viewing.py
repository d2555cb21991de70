"""Window/level presets and the review actions' keyboard shortcuts, listed in the dock.

Presets set an image layer's contrast limits. MR intensities have no fixed scale, so the MR
presets are percentiles of the layer's non-zero voxels (brain: 0.5..99.5, a wide window for
grey/white matter and a bright lesion; cardiac: 1..99.8, blood pool bright without clipping the
myocardium); CT soft tissue is the radiological W 400 / L 40 HU; ultrasound shows the whole
stored range (echo intensities are already display values).

Shortcuts are bound on the viewer (they work with the canvas focused): ``Alt-1`` .. ``Alt-4`` the
presets on the active image layer, and the dock's own actions (``Alt-R`` run, ``Alt-S`` save,
``Alt-V`` show/hide the result). The dock opened last owns them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

#: name -> ("percentile", lo, hi) of the non-zero voxels, or ("window", width, level) in stored units,
#: or ("range",) the stored range
PRESETS: dict[str, tuple] = {
    "MR brain": ("percentile", 0.5, 99.5),
    "MR cardiac": ("percentile", 1.0, 99.8),
    "CT soft tissue": ("window", 400.0, 40.0),
    "ultrasound": ("range",),
}
PRESET_KEYS = {name: f"Alt-{i}" for i, name in enumerate(PRESETS, start=1)}


def preset_limits(data, name: str) -> tuple[float, float]:
    """The contrast limits preset ``name`` gives an image array."""
    if name not in PRESETS:
        raise ValueError(f"no window preset {name!r}; choose one of {', '.join(PRESETS)}")
    kind, *args = PRESETS[name]
    if kind == "window":
        width, level = args
        return level - width / 2.0, level + width / 2.0
    arr = np.asarray(data)
    step = max(1, arr.size // 2_000_000)            # a strided sample: a cine of 10^8 voxels stays quick
    sample = arr.reshape(-1)[::step].astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if kind == "range" or not sample.size:
        return (float(sample.min()), float(sample.max())) if sample.size else (0.0, 1.0)
    nonzero = sample[sample != 0]
    lo, hi = np.percentile(nonzero if nonzero.size else sample, args)
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def apply_preset(layer, name: str) -> tuple[float, float]:
    """Set an image layer's contrast limits (and range, so the slider reaches them) to a preset."""
    if layer is None or layer.__class__.__name__ != "Image" or getattr(layer, "rgb", False):
        raise ValueError("window presets apply to a grey-level image layer: select one first")
    lo, hi = preset_limits(layer.data, name)
    rlo, rhi = layer.contrast_limits_range
    layer.contrast_limits_range = (min(rlo, lo), max(rhi, hi))
    layer.contrast_limits = (lo, hi)
    return lo, hi


class ViewingPanel(QWidget):
    """A preset picker for the active image layer and the list of the dock's shortcuts.

    ``actions`` are ``(key, what, callback)``; callbacks take no argument.
    """

    def __init__(self, viewer, actions: Sequence[tuple[str, str, Callable[[], object]]] = (),
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.preset_picker = QComboBox()
        self.preset_picker.addItems(list(PRESETS))
        self.preset_picker.setToolTip("window/level of the active image layer")
        apply_button = QPushButton("Apply window")
        apply_button.clicked.connect(lambda: self.apply(self.preset_picker.currentText()))
        row = QHBoxLayout()
        row.addWidget(QLabel("window"))
        row.addWidget(self.preset_picker, 1)
        row.addWidget(apply_button)
        self.actions = [(PRESET_KEYS[n], f"window: {n}", (lambda n=n: self.apply(n))) for n in PRESETS]
        self.actions += list(actions)
        keys = QLabel("Shortcuts: " + "; ".join(f"{key} {what}" for key, what, _f in self.actions))
        keys.setWordWrap(True)
        keys.setStyleSheet("color: gray;")
        self.shortcuts_label = keys
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(keys)
        for key, _what, callback in self.actions:
            viewer.bind_key(key, _no_viewer_arg(callback), overwrite=True)

    def _image(self):
        from napari.layers import Image

        active = self.viewer.layers.selection.active
        if isinstance(active, Image):
            return active
        shown = [la for la in self.viewer.layers if isinstance(la, Image) and la.visible
                 and "[" not in la.name]          # the scans, not the widgets' heat maps
        return shown[-1] if shown else None

    def apply(self, name: str):
        """Apply preset ``name`` to the active image layer (else the top visible scan)."""
        from ._common import notify_error

        layer = self._image()
        try:
            limits = apply_preset(layer, name)
        except ValueError as exc:
            notify_error(exc)
            return None
        self.preset_picker.setCurrentText(name)
        return limits


def _no_viewer_arg(callback: Callable[[], object]) -> Callable:
    def run(_viewer=None):
        callback()
    return run
