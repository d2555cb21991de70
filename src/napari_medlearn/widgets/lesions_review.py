"""Panels of the lesion widget for robust models (issue 12): EMMA ensembles and adaptation.

- :class:`EnsemblePanel`: tick two or more lesion models to run them as an ensemble (EMMA,
  Kamnitsas et al., BraTS 2017): their posteriors are averaged by
  :func:`napari_medlearn.methods.segment_lesions`.
- :class:`ReviewPanel`: after an ensemble run, each member's labels as a hidden layer, the
  uncertainty (entropy of the mean posterior, 0..1) as a heat map over the anatomy, a slider that
  outlines the voxels above an uncertainty level for review, and the members' lesion volumes.
- :class:`AdaptPanel`: adapt the chosen model to the scans in the modality pickers without
  labels (:func:`napari_medlearn.methods.adapt`), in a worker with progress and Cancel; the new
  model joins the model list.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..methods import lesions as lesion_method
from ..imaging import structures
from ._common import TaskRunner, notify_error
from ._outputs import OutputLayers, heat_colormap

if TYPE_CHECKING:  # pragma: no cover
    import napari

TASK = lesion_method.TASK
MEMBER_VOLUMES = (("whole_tumour_mL", "WT (mL)"), ("tumour_core_mL", "TC (mL)"), ("enhancing_mL", "ET (mL)"))
DEFAULT_LEVEL = 0.3


class EnsemblePanel(QGroupBox):
    """A checkable group: when on, the ticked models run as one ensemble."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Ensemble (EMMA)", parent)
        self.setToolTip("When ticked, the ticked models run as one ensemble: the mean of their posteriors, "
                        "and their disagreement as an uncertainty map")
        self.setCheckable(True)
        self.setChecked(False)
        self.list = QListWidget()
        layout = QVBoxLayout(self)
        layout.addWidget(self.list)
        self.refresh()

    def refresh(self) -> None:
        """List the single lesion models of the zoo; keep ticks; tick EMMA's members the first time."""
        from .. import zoo

        ticked = set(self.checked())
        first = self.list.count() == 0
        if first:
            try:
                ticked = set(zoo.card("emma").get("members", []))
            except zoo.ModelError:
                ticked = set()
        self.list.clear()
        for name in zoo.available(TASK):
            if zoo.card(name).get("kind") == "ensemble":
                continue
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(Qt.Checked if name in ticked else Qt.Unchecked)
            item.setToolTip(zoo.card(name).get("description", name))
            self.list.addItem(item)
        rows = max(1, min(self.list.count(), 5))
        self.list.setFixedHeight(rows * max(self.list.sizeHintForRow(0), 16) + 2 * self.list.frameWidth() + 2)

    def checked(self) -> list[str]:
        return [self.list.item(i).text() for i in range(self.list.count())
                if self.list.item(i).checkState() == Qt.Checked]

    def set_members(self, names) -> None:
        """Tick exactly ``names`` and switch the ensemble on (scripts, tests)."""
        for i in range(self.list.count()):
            item = self.list.item(i)
            item.setCheckState(Qt.Checked if item.text() in set(names) else Qt.Unchecked)
        self.setChecked(True)

    def members(self) -> list[str] | str | None:
        """The ensemble to run, or None when the panel is off. ValueError with fewer than 2 ticked.

        When the ticked models are exactly the members of an ensemble card (``emma``), that card's
        name, so that its label post-processing applies as on the command line."""
        if not self.isChecked():
            return None
        names = self.checked()
        if len(names) < 2:
            raise ValueError(f"tick at least 2 models for an ensemble ({len(names)} ticked), or switch the "
                             "ensemble off")
        return lesion_method.ensemble_card_of(names) or names


def lock_outline(layer) -> None:
    """Make a drawn-for-review Labels layer take no paint: it is redrawn by the slider, so strokes
    on it would change nothing. napari turns ``editable`` back on with every 2D redraw, so it is
    switched off again each time."""
    layer.contour = 1
    layer.mode = "pan_zoom"

    def relock(_event=None) -> None:
        if layer.editable:
            layer.editable = False
    layer.events.editable.connect(relock)
    layer.editable = False


class ReviewPanel(QWidget):
    """Uncertainty heat map, review outline above a level, members' labels and volumes."""

    def __init__(self, viewer: "napari.viewer.Viewer", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.uncertainty_layer = None
        self.outline_layer = None
        self.member_layers: dict[str, Any] = {}
        self.uncertainty: np.ndarray | None = None
        self.outputs = OutputLayers(viewer)
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, 100)
        self.slider.setValue(int(DEFAULT_LEVEL * 100))
        self.slider.valueChanged.connect(lambda v: self.set_level(v / 100.0))
        self.level_label = QLabel()
        self.level_label.setWordWrap(True)
        self.table = QTableWidget(0, 1 + len(MEMBER_VOLUMES))
        self.table.setHorizontalHeaderLabels(["member"] + [t for _, t in MEMBER_VOLUMES])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeToContents)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.level_label)
        layout.addWidget(self.slider)
        layout.addWidget(self.table)
        self._update_label()
        self.setVisible(False)

    @property
    def level(self) -> float:
        return self.slider.value() / 100.0

    def _update_label(self, n: int | None = None) -> None:
        extra = f" ({n:,} voxels)" if n is not None else ""
        self.level_label.setText(f"review outline: uncertainty > {self.level:.2f}{extra}")

    def show_result(self, result, source, geometry: dict, meta: dict) -> None:
        """Add members (hidden), uncertainty and outline layers over ``source``; fill the table."""
        from napari.utils.colormaps import DirectLabelColormap

        self.member_layers = {}
        models = "+".join(result.members or ())
        for name, labels in result.extras.get("member_labels", {}).items():
            self.member_layers[name] = self.outputs.put(
                ("member", name, source.name), self.viewer.add_labels, np.asarray(labels, np.uint8),
                f"{source.name} [member {name}]", models, visible=False, opacity=0.5,
                metadata={**copy.deepcopy(meta), "model": name, structures.META_KEY: "brats"},
                **structures.labels_kwargs("brats"), **geometry)
        self.uncertainty = np.asarray(result.uncertainty, np.float32)
        # translucent over the anatomy, fading to clear at 0: additive inferno saturated to white
        # over a bright FLAIR lesion, just where the reviewer looks
        self.uncertainty_layer = self.outputs.put(
            ("uncertainty", source.name), self.viewer.add_image, self.uncertainty,
            f"{source.name} [EMMA uncertainty]", models, colormap=heat_colormap("inferno"),
            contrast_limits=(0.0, 1.0), blending="translucent", opacity=0.8, metadata=copy.deepcopy(meta),
            **geometry)
        self.outline_layer = self.outputs.put(
            ("outline", source.name), self.viewer.add_labels, np.zeros(self.uncertainty.shape, np.uint8),
            f"{source.name} [EMMA review]", models, opacity=1.0,
            colormap=DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: "cyan"}),
            metadata=copy.deepcopy(meta), **geometry)
        lock_outline(self.outline_layer)
        vols = result.extras.get("member_volumes_ml", {})
        self.table.setRowCount(len(vols))
        for row, (name, v) in enumerate(vols.items()):
            self.table.setItem(row, 0, QTableWidgetItem(name))
            for col, (key, _t) in enumerate(MEMBER_VOLUMES, start=1):
                item = QTableWidgetItem(f"{float(v.get(key, float('nan'))):.2f}")
                item.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
                self.table.setItem(row, col, item)
        self.table.resizeRowsToContents()
        self.table.setFixedHeight(sum(self.table.rowHeight(r) for r in range(self.table.rowCount()))
                                  + self.table.horizontalHeader().sizeHint().height() + 2 * self.table.frameWidth() + 2)
        self.setVisible(True)
        self.set_level(self.level)

    def set_level(self, level: float) -> int:
        """Outline the voxels whose uncertainty exceeds ``level``; return how many there are."""
        level = float(np.clip(level, 0.0, 1.0))
        if abs(self.slider.value() - round(level * 100)) > 0:
            self.slider.blockSignals(True)
            self.slider.setValue(int(round(level * 100)))
            self.slider.blockSignals(False)
        if self.uncertainty is None or self.outline_layer is None or self.outline_layer not in self.viewer.layers:
            self._update_label()
            return 0
        above = self.uncertainty > level
        self.outputs.write(self.outline_layer, above.astype(np.uint8))
        n = int(above.sum())
        self._update_label(n)
        return n

    def forget(self, layer) -> None:
        if layer is self.outline_layer:
            self.outline_layer = None
        if layer is self.uncertainty_layer:
            self.uncertainty_layer = None
        for name, lay in list(self.member_layers.items()):
            if lay is layer:
                del self.member_layers[name]


class AdaptPanel(QGroupBox):
    """Adapt the chosen model to the scans in the modality pickers (no labels)."""

    def __init__(self, gather: Callable[[], tuple], model: Callable[[], Any], on_new_model: Callable[[str], None],
                 parent: QWidget | None = None) -> None:
        super().__init__("Adapt the model to these scans (no labels)", parent)
        self.setCheckable(True)
        self.setChecked(False)          # folded away until wanted
        self._gather, self._model, self._on_new_model = gather, model, on_new_model
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("<model>-adapted-<date>")
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 100)
        self.epochs.setValue(4)
        self.iters = QSpinBox()
        self.iters.setRange(1, 5000)
        self.iters.setValue(100)
        self.self_train = QCheckBox("then self-train on them (2 rounds)")
        self.self_train.setToolTip("After the adversarial stage, the copy's most confident voxels of each class "
                                   "become pseudo-labels for two more rounds of training (lesions-uda's recipe); "
                                   "each round takes 2 x the iterations of an epoch")
        self.runner = TaskRunner("Adapt")
        self.runner.run_button.clicked.connect(self.run)
        self.body = QWidget()
        form = QFormLayout(self.body)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("new name", self.name_edit)
        form.addRow("epochs", self.epochs)
        form.addRow("iterations / epoch", self.iters)
        form.addRow(self.self_train)
        hint = QLabel("A copy learns from the model's own training data while its features are made "
                      "blind to how these scans differ; the original is kept. Slow on a CPU.")
        hint.setWordWrap(True)
        form.addRow(hint)
        form.addRow(self.runner)
        layout = QVBoxLayout(self)
        layout.addWidget(self.body)
        self.body.setVisible(False)
        self.toggled.connect(self.body.setVisible)

    def run(self):
        from ..methods.adapt import adapt_steps

        if self.runner.running:
            return None
        try:
            model = self._model()
            if model is None or isinstance(model, (list, tuple)):
                raise ValueError("choose one model to adapt (switch the ensemble off)")
            channels, spacing, mask, layers, affine = self._gather()
        except (ValueError, TypeError) as exc:
            notify_error(exc)
            return None
        for w in lesion_method.scan_warnings(channels, spacing, mask):   # before the training, not after it
            show_warning(w)
        steps = adapt_steps(model, [channels], spacing, brain_masks=[mask] if mask is not None else None,
                            name=self.name_edit.text().strip() or None, epochs=self.epochs.value(),
                            iters_per_epoch=self.iters.value(), cancelled=self.runner.cancel_requested,
                            self_training=self.self_train.isChecked(), affines=[affine])
        return self.runner.start(steps, self._done, description=f"adapting {model} to {layers[0].name}")

    def _done(self, name: str) -> None:
        show_info(f"adapted model {name} saved in the user zoo; it is now chosen")
        self._on_new_model(name)


__all__ = ["AdaptPanel", "EnsemblePanel", "ReviewPanel"]
