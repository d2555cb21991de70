"""Mask correction dock widget: a cardiac Labels layer in, a shape-prior proposal beside it.

Runs :func:`napari_medlearn.methods.acnn.correct_mask_steps` (ACNN shape prior, Oktay et al.,
IEEE TMI 2018) on a Labels layer in a worker thread and adds ``"<labels> [proposal]"`` (the
corrected labels, same geometry) and ``"<labels> [changed]"`` (the changed voxels, highlighted)
beside the untouched original, with the plausibility before and after. **Accept** copies the
proposal into a new editable layer ``"<labels> [corrected]"`` (the original stays for undo);
**Reject** removes the proposal.

A proposal never hides harm: while it is shown the original is hidden (a structure the proposal
removes must not still look present underneath), the changed voxels come in three colours (added
to a structure, removed to background, moved between structures), a table gives every frame's
LV, myocardium and RV volumes before and after, and
:func:`~napari_medlearn.methods.acnn.review_proposal`'s warnings (a structure shrinking by more
than the set share in any frame, or vanishing; the plausibility not rising) are shown in red.
With a warning, Accept waits until the reviewer ticks that they have looked at the changes.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Labels
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..imaging.volume import Volume
from ..methods.acnn import DEFAULT_MAX_SHRINK, TASK, correct_mask_steps, review_proposal
from ._common import ModelPicker, TaskRunner, device_picker, layer_picker, notify_error

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..methods.acnn import MaskResult, ProposalReview

#: the changed-voxel overlay: added to a structure, removed to background, moved between structures
CHANGE_COLORS = {None: "transparent", 0: "transparent", 1: "#00e5ff", 2: "#ff00ff", 3: "#ffb000"}
CHANGE_NAMES = {1: "added", 2: "removed", 3: "moved"}


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
        self.review: "ProposalReview | None" = None
        self._source_was_visible = True
        self.labels_picker = layer_picker(napari_viewer, Labels, "labels")
        self.model_picker = ModelPicker(TASK)
        self.device_picker = device_picker()
        self.runner = TaskRunner("Correct mask")
        self.runner.run_button.clicked.connect(self.run)
        self.plausibility_label = QLabel("plausibility: \u2013")
        self.plausibility_label.setWordWrap(True)
        self.volumes_label = QLabel("")
        self.volumes_label.setWordWrap(True)
        self.max_shrink = QDoubleSpinBox()
        self.max_shrink.setRange(1.0, 100.0)
        self.max_shrink.setValue(100 * DEFAULT_MAX_SHRINK)
        self.max_shrink.setSuffix(" %")
        self.max_shrink.setToolTip("warn when the proposal shrinks a structure of any frame by more than this")
        self.legend_label = QLabel(
            "changed voxels: <span style='color:#00e5ff'>added</span>, "
            "<span style='color:#ff00ff'>removed</span>, <span style='color:#ffb000'>moved between structures</span>")
        self.warning_label = QLabel("")
        self.warning_label.setWordWrap(True)
        self.warning_label.setStyleSheet("color: #ff5555")
        self.seen_check = QCheckBox("I have looked at the changes")
        self.seen_check.toggled.connect(lambda _: self._set_decision_enabled(self.result is not None))
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["frame", "LV (mL)", "Myo (mL)", "RV (mL)"])
        self.table.verticalHeader().setVisible(False)
        self.accept_button = QPushButton("Accept")
        self.reject_button = QPushButton("Reject")
        self.accept_button.clicked.connect(self.accept)
        self.reject_button.clicked.connect(self.reject)
        form = QFormLayout()
        form.addRow("labels", self.labels_picker.native)
        form.addRow("shape prior", self.model_picker)
        form.addRow("device", self.device_picker)
        form.addRow("warn if a structure shrinks by", self.max_shrink)
        buttons = QHBoxLayout()
        buttons.addWidget(self.accept_button)
        buttons.addWidget(self.reject_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.runner)
        layout.addWidget(self.plausibility_label)
        layout.addWidget(self.volumes_label)
        layout.addWidget(self.legend_label)
        layout.addWidget(self.table)
        layout.addWidget(self.warning_label)
        layout.addWidget(self.seen_check)
        layout.addLayout(buttons)
        layout.addStretch(1)
        self._set_decision_enabled(False)

    def _set_decision_enabled(self, enabled: bool) -> None:
        warned = bool(self.review and self.review.warnings)
        self.seen_check.setEnabled(enabled and warned)
        self.accept_button.setEnabled(enabled and (not warned or self.seen_check.isChecked()))
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
        before = np.asarray(src.data)
        self.review = review_proposal(before, result.labels, result.spacing, result.plausibility_before,
                                      result.plausibility, max_shrink=self.max_shrink.value() / 100)
        self.changed_layer = self.viewer.add_labels(
            self.review.changes.astype(np.uint8), name=f"{src.name} [changed]", opacity=1.0,
            blending="translucent", colormap=DirectLabelColormap(color_dict=CHANGE_COLORS),
            features={"index": list(CHANGE_NAMES), "change": list(CHANGE_NAMES.values())}, **geometry)
        self.changed_layer.contour = 2
        # the original hidden while the proposal is shown: what it removes must not look present
        self._source_was_visible = bool(src.visible)
        src.visible = False
        self.plausibility_label.setText(
            f"plausibility: before {result.plausibility_before:.2f} \u2192 after {result.plausibility:.2f}  "
            f"({result.n_changed} voxels changed)")
        frame = self._largest_change_frame()
        where = f" (frame {frame}, the largest change)" if before.ndim == 4 else ""
        self.volumes_label.setText(f"volumes (mL), original \u2192 proposal{where}: " + self.volume_text(
            before, result.labels, result.spacing, frame))
        self._fill_table()
        self.warning_label.setText("\n".join(f"\u26a0 {w}" for w in self.review.warnings))
        self.seen_check.setChecked(False)
        self._set_decision_enabled(True)
        self.viewer.layers.selection.active = self.proposal_layer

    def _largest_change_frame(self) -> int:
        return int(np.argmax([sum(abs(a - b) for b, a in row.values()) for row in self.review.volumes]))

    def _fill_table(self) -> None:
        rows = self.review.volumes
        self.table.setRowCount(len(rows))
        for t, row in enumerate(rows):
            self.table.setItem(t, 0, QTableWidgetItem(str(t)))
            for col, k in enumerate((1, 2, 3), start=1):
                b, a = row[k]
                item = QTableWidgetItem(f"{b:.1f} \u2192 {a:.1f}")
                if (t, k) in self.review.flagged:
                    item.setForeground(QColor("#ff5555"))
                self.table.setItem(t, col, item)
        self.table.resizeColumnsToContents()

    @staticmethod
    def volume_text(before: np.ndarray, after: np.ndarray, spacing, frame: int = 0) -> str:
        """LV, myocardium and RV volumes of one frame (of a cine), before -> after."""
        from ..imaging.measures import voxel_volume_ml

        b, a = (np.asarray(x)[frame] if np.ndim(x) == 4 else np.asarray(x) for x in (before, after))
        v = voxel_volume_ml(tuple(spacing))
        return ", ".join(f"{name} {np.sum(b == k) * v:.1f} \u2192 {np.sum(a == k) * v:.1f}"
                         for k, name in ((1, "LV"), (2, "Myo"), (3, "RV")))

    def accept(self):
        """Copy the proposal into a new editable layer; the original layer is kept for undo."""
        if self.result is None or self.proposal_layer is None:
            return None
        if self.review is not None and self.review.warnings and not self.seen_check.isChecked():
            notify_error("look at the proposal's warnings and tick 'I have looked at the changes' before accepting")
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
        shown = self.proposal_layer is not None
        for layer in (self.proposal_layer, self.changed_layer):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.proposal_layer = self.changed_layer = None
        if shown and self.source is not None and self.source in self.viewer.layers:
            self.source.visible = self._source_was_visible
        self.review = None
        self._set_decision_enabled(False)
