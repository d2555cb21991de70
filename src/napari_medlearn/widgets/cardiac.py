"""Cardiac segmentation dock widget: a cine in, editable labels and live measures out.

Runs :func:`napari_medlearn.methods.segment_heart_steps` (Bai et al., JCMR 2018) on an image
layer in a worker thread and adds ``"<image> [cardiac]"``, an editable Labels layer with the
image's geometry (1 LV cavity, 2 myocardium, 3 RV cavity), and a hidden foreground-probability
layer. The measures table, the QC flags and the volume-time curve always describe the labels
layer's *current* data: paint, erase or fill on it and they follow. Labels save as NIfTI in the
source geometry, measures as a one-row CSV (:mod:`napari_medlearn.methods.report`).
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..imaging import structures
from ..imaging.measures import CARDIAC_MEASURES, display_name
from ..imaging.volume import Volume
from ..methods.cardiac import TASK, measure_with_qc, segment_heart_steps
from ..methods.report import measures_row, write_measures_csv
from ._common import (USER_ERRORS, ModelPicker, TaskRunner, backend_picker, device_picker, layer_picker, notify_error, save_path,
                      themed_canvas)
from ._fit import FitWatch
from ._outputs import OutputLayers
from ._review import ReviewBar
from ._viewing import ViewingPanel

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..methods.cardiac import CardiacResult

#: table rows: the clinical measures, then the frames they were taken at
TABLE_ROWS = tuple(display_name(k) for k in CARDIAC_MEASURES) + ("ED frame", "ES frame")
#: label value -> RGBA; background transparent (LV red, myocardium green, RV blue, as in ACDC figures)
LABEL_COLORS = structures.color_dict("cardiac")
LV_COLOR, RV_COLOR = "#ff4040", "#4d8cff"
#: quiet time (ms) after a `set_data` before the measures are recomputed
SETTLE_MS = 150


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "\u2013"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.1f}"


class CardiacWidget(QWidget):
    """Segment LV cavity, myocardium and RV in a short-axis cine; measure, correct, save.

    Parameters
    ----------
    napari_viewer
        The viewer whose image layers are offered and where the results go.
    """

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.model_name = ""
        self.model_sha256 = ""
        self.labels_layer = None
        self.probability_layer = None
        self.spacing: tuple[float, float, float] | None = None
        self.source = ""
        self.measures: dict = {}
        self.qc: list[dict] = []
        self.outputs = OutputLayers(napari_viewer)

        self.image_picker = layer_picker(napari_viewer, Image, "image")
        self.model_picker = ModelPicker(TASK)
        self.device_picker = device_picker()
        self.backend_picker = backend_picker()
        self.runner = TaskRunner("Run")
        self.runner.run_button.clicked.connect(self.run)
        self.fit = FitWatch(self.image_picker, self.model_picker)

        self.table = QTableWidget(len(TABLE_ROWS), 2)
        self.table.setHorizontalHeaderLabels(["measure", "value"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        for row, name in enumerate(TABLE_ROWS):
            self.table.setItem(row, 0, QTableWidgetItem(name))
            value = QTableWidgetItem("\u2013")
            value.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
            self.table.setItem(row, 1, value)
        self.table.resizeRowsToContents()
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        rows_height = sum(self.table.rowHeight(r) for r in range(len(TABLE_ROWS)))
        self.table.setFixedHeight(rows_height + self.table.horizontalHeader().sizeHint().height()
                                  + 2 * self.table.frameWidth() + 4)
        self.qc_label = QLabel("")
        self.qc_label.setWordWrap(True)
        hint = QLabel("Paint, erase or fill on the labels layer: the measures follow.")
        hint.setWordWrap(True)

        self.canvas = themed_canvas(napari_viewer)
        self.canvas.setMinimumHeight(190)
        self._init_curve()

        self.save_button = QPushButton("Save labels...")
        self.export_button = QPushButton("Export measures...")
        self.save_button.clicked.connect(lambda: self.save_labels())
        self.export_button.clicked.connect(lambda: self.export_measures())
        self._set_has_result(False)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.timeout.connect(self.update_measures)

        form = QFormLayout()
        form.addRow("image", self.image_picker.native)
        form.addRow("model", self.model_picker)
        form.addRow("device", self.device_picker)
        form.addRow("backend", self.backend_picker)
        files = QHBoxLayout()
        files.addWidget(self.save_button)
        files.addWidget(self.export_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.fit.label)
        layout.addWidget(self.runner)
        layout.addWidget(self.table)
        layout.addWidget(self.qc_label)
        layout.addWidget(self.canvas)
        layout.addWidget(hint)
        layout.addLayout(files)
        self.review_bar = ReviewBar(lambda: self.labels_layer, self.outputs.edited)
        layout.addWidget(self.review_bar)
        self.viewing = ViewingPanel(napari_viewer, (
            ("Alt-R", "run", self.run), ("Alt-S", "save labels", lambda: self.save_labels()),
            ("Alt-V", "show/hide the labels", self.toggle_labels)))
        layout.addWidget(self.viewing)
        layout.addStretch(1)
        self.setMinimumWidth(300)
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)
        napari_viewer.layers.events.inserted.connect(self._on_layer_inserted)

    # ----- running ------------------------------------------------------------------------
    def run(self):
        """Segment the chosen image layer in a worker thread; returns the worker (or None)."""
        if self.running:
            return None
        layer = self.image_picker.value
        if layer is None:
            notify_error("no image layer: open a short-axis cine first")
            return None
        model = self.model_picker.model()
        if model is None:
            notify_error("no cardiac model shipped yet: choose 'load checkpoint...' in the model list")
            return None
        if getattr(layer, "rgb", False):
            notify_error(f"{layer.name} is an RGB image; cardiac segmentation needs a grey-level cine or stack")
            return None
        try:
            vol = Volume.from_layer(layer.data, layer.scale, layer.translate, layer.metadata)
        except (ValueError, TypeError) as exc:
            notify_error(exc)
            return None
        spacing = vol.spacing
        if "affine" not in (layer.metadata or {}) and np.allclose(np.asarray(layer.scale)[-3:], 1.0):
            show_warning(f"{layer.name} has no voxel spacing (scale 1, e.g. read from PNG/TIFF): the model and the "
                         "measures take 1 mm voxels; set the layer's scale to the scan's spacing in mm")
        steps = segment_heart_steps(vol.data, spacing, model, self.device_picker.currentText(),
                                    cancelled=self.runner.cancel_requested, backend=self.backend_picker.currentText())
        return self.runner.start(steps, lambda result: self.show_result(result, layer, spacing),
                                 description=f"segmenting {layer.name}", viewer=self.viewer, inputs=(layer,))

    def cancel(self) -> None:
        """Stop the running segmentation; nothing is added."""
        self.runner.cancel()

    @property
    def running(self) -> bool:
        return self.runner.running

    # ----- results ------------------------------------------------------------------------
    def show_result(self, result: "CardiacResult", source, spacing) -> None:
        """Add the labels and probability layers over ``source`` (or refresh this widget's earlier
        ones, see :class:`~._outputs.OutputLayers`) and fill table and curve."""
        # keep names, not the result: its probabilities are four maps the size of the cine
        self.model_name, self.model_sha256 = result.model_name, result.model_sha256
        self.spacing = tuple(float(s) for s in spacing)
        self.source = str(source.metadata.get("source") or source.source.path or source.name)
        geometry = {"scale": source.scale, "translate": source.translate, "rotate": source.rotate,
                    "shear": source.shear, "affine": source.affine}
        meta = copy.deepcopy(dict(source.metadata))
        meta.update(model=result.model_name, model_sha256=result.model_sha256, backend=result.backend)
        foreground = 1.0 - result.probabilities[0].astype(np.float32)
        self.probability_layer = self.outputs.put(
            ("probability", source.name), self.viewer.add_image, foreground,
            f"{source.name} [cardiac probability]", result.model_name, colormap="inferno",
            contrast_limits=(0.0, 1.0), blending="additive", opacity=0.7, visible=False,
            metadata=copy.deepcopy(meta), **geometry)
        meta[structures.META_KEY] = "cardiac"
        labels = self.outputs.put(
            ("labels", source.name), self.viewer.add_labels, result.labels, f"{source.name} [cardiac]",
            result.model_name, metadata=meta, opacity=0.5, **structures.labels_kwargs("cardiac"), **geometry)
        if labels is self.labels_layer:
            self.update_measures()          # refreshed in place
        else:
            self.follow_labels(labels)
        self.viewer.layers.selection.active = labels
        self.review_bar.refresh()

    def update_measures(self, event=None) -> dict:
        """Measure the labels layer's current data; refresh table, QC flags and curve."""
        self._debounce.stop()
        if self.labels_layer is None or self.spacing is None:
            return {}
        labels = np.asarray(self.labels_layer.data)
        try:
            self.measures, self.qc = measure_with_qc(labels, self.spacing)
        except ValueError as exc:
            self.measures, self.qc = {}, [{"flag": "invalid_labels", "reason": str(exc)}]
        self._fill_table()
        self._plot_curve()
        return self.measures

    def _on_labels_edited(self, event=None) -> None:
        # napari emits `paint` before it writes the edit into the array: measure on the next turn
        self._debounce.start(0)

    def _on_labels_refreshed(self, event=None) -> None:
        # every slice change emits `set_data` too: measure once the slider has stopped, and do not
        # postpone an edit already waiting
        if not (self._debounce.isActive() and self._debounce.interval() == 0):
            self._debounce.start(SETTLE_MS)

    def _fill_table(self) -> None:
        m = self.measures
        values = [m.get(k) for k in CARDIAC_MEASURES] + [m.get("ED_frame"), m.get("ES_frame")]
        for row, value in enumerate(values):
            self.table.item(row, 1).setText(_fmt(value))
        if self.qc:
            self.qc_label.setText("QC: " + "; ".join(f["reason"] for f in self.qc))
            self.qc_label.setStyleSheet("color: #ffb347;")
        else:
            self.qc_label.setText("QC: no flags")
            self.qc_label.setStyleSheet("")

    def measure_text(self, name: str) -> str:
        """The table's text for a row, e.g. ``measure_text("LVEDV (mL)")``."""
        return self.table.item(TABLE_ROWS.index(name), 1).text()

    # ----- volume-time curve --------------------------------------------------------------
    def _init_curve(self) -> None:
        from matplotlib.ticker import MaxNLocator

        ax = self.canvas.axes
        (self.lv_line,) = ax.plot([], [], "o-", color=LV_COLOR, ms=3, lw=1.5, label="LV")
        (self.rv_line,) = ax.plot([], [], "o-", color=RV_COLOR, ms=3, lw=1.5, label="RV")
        fg = self.canvas.text_color
        self.ed_line = ax.axvline(0, color=fg, ls="--", lw=0.8, visible=False)
        self.es_line = ax.axvline(0, color=fg, ls=":", lw=0.8, visible=False)
        xaxis = ax.get_xaxis_transform()
        self.ed_text = ax.text(0, 1.0, "ED", color=fg, fontsize=8, ha="center", va="bottom",
                               transform=xaxis, visible=False)
        self.es_text = ax.text(0, 1.0, "ES", color=fg, fontsize=8, ha="center", va="bottom",
                               transform=xaxis, visible=False)
        ax.set_xlabel("frame", fontsize=8)
        ax.set_ylabel("volume (mL)", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="best", fontsize=8, frameon=False, labelcolor=fg)

    def _plot_curve(self) -> None:
        m = self.measures
        lv, rv = m.get("LV_volume_mL", []), m.get("RV_volume_mL", [])
        frames = np.arange(len(lv))
        self.lv_line.set_data(frames, lv)
        self.rv_line.set_data(frames, rv)
        for line, text, key in ((self.ed_line, self.ed_text, "ED_frame"),
                                (self.es_line, self.es_text, "ES_frame")):
            frame = m.get(key)
            shown = frame is not None and len(lv) > 0
            line.set_visible(shown)
            text.set_visible(shown)
            if shown:
                line.set_xdata([frame, frame])
                text.set_x(frame)
        ax = self.canvas.axes
        values = np.asarray(list(lv) + list(rv), dtype=float)
        top = float(np.nanmax(values)) if values.size and np.isfinite(values).any() else 0.0
        ax.set_xlim(-0.5, max(len(lv) - 0.5, 0.5))
        ax.set_ylim(0.0, 1.12 * top if top > 0 else 1.0)
        self.canvas.draw_idle()

    # ----- saving -------------------------------------------------------------------------
    def _default_name(self) -> str:
        name = self.labels_layer.name if self.labels_layer is not None else "cardiac"
        return re.sub(r"[^\w.-]+", "_", name).strip("_")

    def save_labels(self, path: str | Path | None = None, overwrite: bool = False) -> Path | None:
        """Write the labels layer's current data as NIfTI in the source geometry (atomically).

        Without ``path`` a file dialog asks; a name without ``.nii``/``.nii.gz`` gets ``.nii.gz``.
        An existing file is replaced only after a confirmation (dialog) or with ``overwrite``.
        """
        if self.labels_layer is None:
            notify_error("no labels to save: run the segmentation first")
            return None
        path = save_path(self, path, "Save labels as NIfTI", f"{self._default_name()}.nii.gz",
                         "NIfTI (*.nii.gz *.nii)", (".nii.gz", ".nii"), overwrite)
        if path is None:
            return None
        try:
            from ..imaging.io import write_nifti

            layer = self.labels_layer
            vol = Volume.from_layer(layer.data, layer.scale, layer.translate, layer.metadata)
            out = write_nifti(vol, path, overwrite=True)  # save_path has asked about replacing
        except USER_ERRORS as exc:
            notify_error(exc)
            return None
        show_info(f"labels saved to {out}")
        return out

    def export_measures(self, path: str | Path | None = None, overwrite: bool = False) -> Path | None:
        """Write the current measures as a one-row CSV (units in the column names), atomically;
        an existing file is replaced only after a confirmation (dialog) or with ``overwrite``."""
        if self.labels_layer is None or not self.measures:
            notify_error("no measures to export: run the segmentation first (and keep labels 0-3)")
            return None
        path = save_path(self, path, "Export measures as CSV", f"{self._default_name()}_measures.csv",
                         "CSV (*.csv)", (".csv",), overwrite)
        if path is None:
            return None
        row = measures_row(self.measures, self.qc, self.model_name, self.model_sha256, self.source)
        row.update(self.review_bar.columns())
        try:
            out = write_measures_csv([row], path)
        except USER_ERRORS as exc:
            notify_error(exc)
            return None
        show_info(f"measures saved to {out}")
        return out

    # ----- bookkeeping --------------------------------------------------------------------
    def toggle_labels(self) -> None:
        """Show or hide the labels layer (a shortcut: look at the image under them)."""
        if self.labels_layer is not None:
            self.labels_layer.visible = not self.labels_layer.visible

    def _set_has_result(self, has: bool) -> None:
        self.save_button.setEnabled(has)
        self.export_button.setEnabled(has)

    def _disconnect_labels(self) -> None:
        if self.labels_layer is None:
            return
        events = self.labels_layer.events
        events.paint.disconnect(self._on_labels_edited)
        events.data.disconnect(self._on_labels_edited)
        events.set_data.disconnect(self._on_labels_refreshed)
        self._debounce.stop()

    def follow_labels(self, layer) -> None:
        """Measure ``layer`` from now on (the table, QC, curve, save and export describe it)."""
        if layer is self.labels_layer:
            return
        self._disconnect_labels()
        self.labels_layer = layer
        events = layer.events
        events.paint.connect(self._on_labels_edited)
        events.data.connect(self._on_labels_edited)
        events.set_data.connect(self._on_labels_refreshed)
        self._set_has_result(True)
        self.update_measures()

    def _on_layer_inserted(self, event) -> None:
        # a corrected copy of the labels this widget measures (mask correction's Accept): follow it
        layer = event.value
        if (self.labels_layer is not None and layer.__class__.__name__ == "Labels"
                and layer.metadata.get("corrected_from") == self.labels_layer.name
                and np.shape(layer.data) == np.shape(self.labels_layer.data)):
            self.follow_labels(layer)
            show_info(f"cardiac measures now follow {layer.name!r}")

    def _on_layer_removed(self, event) -> None:
        if event.value is self.probability_layer:
            self.probability_layer = None
        if event.value is self.labels_layer:
            self._disconnect_labels()
            self.labels_layer = None
            self._set_has_result(False)
