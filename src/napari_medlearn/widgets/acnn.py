"""Mask correction dock widget: a cardiac Labels layer in, a shape-prior proposal beside it.

Runs :func:`napari_medlearn.methods.acnn.correct_mask_steps` (ACNN shape prior, Oktay et al.,
IEEE TMI 2018) on a Labels layer in a worker thread and adds ``"<labels> [proposal]"`` (the
corrected labels, same geometry) and ``"<labels> [changed]"`` (the changed voxels, highlighted)
beside the untouched original, with the plausibility before and after. **Accept** copies the
proposal into a new editable layer ``"<labels> [corrected]"`` (the original stays for undo);
**Reject** removes the proposal.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Labels
from qtpy.QtWidgets import QFormLayout, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..imaging.volume import Volume
from ..methods.acnn import TASK, correct_mask_steps
from ._common import ModelPicker, TaskRunner, device_picker, layer_picker, notify_error

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..methods.acnn import MaskResult


class MaskCorrectionWidget(QWidget):
    """Check a cardiac label map against the learned shape prior and propose a correction."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.result: "MaskResult | None" = None
        self.source = None
        self.proposal_layer = None
        self.changed_layer = None
        self.accepted_layer = None
        self.labels_picker = layer_picker(napari_viewer, Labels, "labels")
        self.model_picker = ModelPicker(TASK)
        self.device_picker = device_picker()
        self.runner = TaskRunner("Correct mask")
        self.runner.run_button.clicked.connect(self.run)
        self.plausibility_label = QLabel("plausibility: \u2013")
        self.plausibility_label.setWordWrap(True)
        self.volumes_label = QLabel("")
        self.volumes_label.setWordWrap(True)
        self.accept_button = QPushButton("Accept")
        self.reject_button = QPushButton("Reject")
        self.accept_button.clicked.connect(self.accept)
        self.reject_button.clicked.connect(self.reject)
        form = QFormLayout()
        form.addRow("labels", self.labels_picker.native)
        form.addRow("shape prior", self.model_picker)
        form.addRow("device", self.device_picker)
        buttons = QHBoxLayout()
        buttons.addWidget(self.accept_button)
        buttons.addWidget(self.reject_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.runner)
        layout.addWidget(self.plausibility_label)
        layout.addWidget(self.volumes_label)
        layout.addLayout(buttons)
        layout.addStretch(1)
        self._set_decision_enabled(False)

    def _set_decision_enabled(self, enabled: bool) -> None:
        self.accept_button.setEnabled(enabled)
        self.reject_button.setEnabled(enabled)

    def run(self):
        """Start the correction of the chosen Labels layer in a worker; returns the worker."""
        layer = self.labels_picker.value
        if layer is None:
            notify_error("choose a Labels layer with a cardiac mask (1 LV cavity, 2 myocardium, 3 RV cavity)")
            return None
        model = self.model_picker.model()
        if model is None:
            notify_error("no shape prior: train one with `medlearn train acnn-shape-prior --ship`")
            return None
        try:
            vol = Volume.from_layer(np.asarray(layer.data), layer.scale, layer.translate, layer.metadata)
            steps = correct_mask_steps(vol.data, vol.spacing, model, self.device_picker.currentText(),
                                       cancelled=self.runner.cancel_requested)
        except (ValueError, OSError) as exc:
            notify_error(exc)
            return None
        self.reject()
        self.source = layer
        return self.runner.start(steps, self.show_result, description=f"correcting {layer.name}",
                                 viewer=self.viewer, inputs=(layer,))

    @property
    def running(self) -> bool:
        return self.runner.running

    def cancel(self) -> None:
        self.runner.cancel()

    def show_result(self, result: "MaskResult") -> None:
        """Add the proposal and the changed voxels beside the original (never modified)."""
        src = self.source
        self.result = result
        geometry = {"scale": src.scale, "translate": src.translate, "rotate": src.rotate, "shear": src.shear,
                    "affine": src.affine}
        self.proposal_layer = self.viewer.add_labels(result.labels.copy(), name=f"{src.name} [proposal]",
                                                     **geometry)
        try:
            self.proposal_layer.colormap = src.colormap
        except (AttributeError, TypeError, ValueError):  # pragma: no cover (older napari)
            pass
        from napari.utils.colormaps import DirectLabelColormap

        # the changed voxels as a thick, saturated outline that no cardiac label colour resembles
        self.changed_layer = self.viewer.add_labels(
            result.changed.astype(np.uint8), name=f"{src.name} [changed]", opacity=1.0, blending="translucent",
            colormap=DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: "#ffff00"}),
            **geometry)
        self.changed_layer.contour = 2
        self.plausibility_label.setText(
            f"plausibility: before {result.plausibility_before:.2f} \u2192 after {result.plausibility:.2f}  "
            f"({result.n_changed} voxels changed)")
        self.volumes_label.setText("volumes (mL), original \u2192 proposal: " + self.volume_text(
            np.asarray(src.data), result.labels, result.spacing))
        self._set_decision_enabled(True)
        self.viewer.layers.selection.active = self.proposal_layer

    @staticmethod
    def volume_text(before: np.ndarray, after: np.ndarray, spacing) -> str:
        """LV, myocardium and RV volumes of the first frame, before -> after."""
        from ..imaging.measures import voxel_volume_ml

        b, a = (np.asarray(x)[0] if np.ndim(x) == 4 else np.asarray(x) for x in (before, after))
        v = voxel_volume_ml(tuple(spacing))
        return ", ".join(f"{name} {np.sum(b == k) * v:.1f} \u2192 {np.sum(a == k) * v:.1f}"
                         for k, name in ((1, "LV"), (2, "Myo"), (3, "RV")))

    def accept(self):
        """Copy the proposal into a new editable layer; the original layer is kept for undo."""
        if self.result is None or self.proposal_layer is None:
            return None
        data = np.asarray(self.proposal_layer.data).copy()   # includes any edits made to the proposal
        geometry = {k: getattr(self.proposal_layer, k) for k in ("scale", "translate", "rotate", "shear", "affine")}
        name = f"{self.source.name} [corrected]"
        colormap = self.proposal_layer.colormap
        self._remove_proposal()
        # the source's metadata (geometry, provenance) plus what the correction did; a cardiac
        # widget measuring the source follows this layer (``corrected_from``)
        meta = copy.deepcopy(dict(self.source.metadata))
        meta.update(corrected_from=self.source.name, correction={
            "model": self.result.model_name, "model_sha256": self.result.model_sha256,
            "plausibility_before": self.result.plausibility_before, "plausibility": self.result.plausibility,
            "changed_voxels": int(self.result.n_changed)})
        self.accepted_layer = self.viewer.add_labels(data, name=name, metadata=meta, **geometry)
        try:
            self.accepted_layer.colormap = colormap
        except (AttributeError, TypeError, ValueError):  # pragma: no cover (older napari)
            pass
        self.plausibility_label.setText(self.plausibility_label.text() + "  \u2013 accepted")
        return self.accepted_layer

    def reject(self) -> None:
        """Drop the proposal and the highlight; nothing else changes."""
        self._remove_proposal()

    def _remove_proposal(self) -> None:
        for layer in (self.proposal_layer, self.changed_layer):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.proposal_layer = self.changed_layer = None
        self._set_decision_enabled(False)
