"""Brain-lesion segmentation dock widget: FLAIR + T1c in, editable BraTS labels and live volumes out.

Runs :func:`napari_medlearn.methods.lesions.segment_lesions_steps` (DeepMedic, Kamnitsas et al.,
MedIA 2017) on one image layer per modality (the model card's input channels, FLAIR and T1c for the
shipped models) in a worker thread, with an optional brain mask (found automatically, taken from a
Labels or Image layer, or none). A modality or mask on another grid than the first modality's (a 3D
T1c beside a 2D FLAIR of the same session) is resampled onto it by scanner coordinates, with a
notification; scans that do not overlap are refused. It adds ``"<FLAIR> [DeepMedic]"``, an editable
Labels layer with the input's geometry (1 necrotic core, 2 oedema, 4 enhancing tumour, in the BraTS
colours), and one probability layer per class (0..1, fixed colormap, blended over the anatomy, all
hidden but the oedema). The volume table (mL per class, tumour core, whole tumour) always describes
the labels layer's *current* data: paint, erase or fill and it follows. Save writes the labels as
NIfTI in the input's geometry and the volumes as a one-row CSV beside it, atomically, and never
replaces an existing file without asking.

Robust models (issue 12, :mod:`.lesions_review`): tick two or more models in the Ensemble panel
to run them as an EMMA ensemble (members' labels as hidden layers, an uncertainty heat map, a
slider outlining the voxels above an uncertainty level, the members' volumes); the Adapt panel
adapts the chosen model to the open scans without labels and adds the new model to the list.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox
from napari.layers import Image, Labels
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..imaging.volume import Volume, resample_onto
from ..methods import lesions as lesion_method
from ..imaging import structures
from ._common import USER_ERRORS, ModelPicker, TaskRunner, backend_picker, device_picker, layer_picker, may_replace, notify_error
from ._fit import FitWatch
from ._outputs import OutputLayers
from ._review import ReviewBar
from ._viewing import ViewingPanel
from .lesions_review import AdaptPanel, EnsemblePanel, ReviewPanel

if TYPE_CHECKING:  # pragma: no cover
    import napari

TASK = lesion_method.TASK
DEFAULT_CHANNELS = ("FLAIR", "T1c")
METHOD = "DeepMedic"
#: BraTS label value -> name (names and colours: :mod:`napari_medlearn.imaging.structures`)
LABEL_NAMES = {v: n for v, n in structures.names("brats").items() if v}
#: probability maps: sequential colormaps, none of them a structure's flat colour
PROBABILITY_COLORMAPS = {1: "magma", 2: structures.PROBABILITY_COLORMAP, 4: "plasma"}
#: the probability layer shown after a run (the others are added hidden)
SHOWN_PROBABILITY = 2
#: table rows: (key in the volumes dict, row title)
VOLUME_ROWS = (
    ("necrotic_core_mL", "necrotic core (mL)"),
    ("oedema_mL", "oedema (mL)"),
    ("enhancing_mL", "enhancing (mL)"),
    ("tumour_core_mL", "tumour core (mL)"),
    ("whole_tumour_mL", "whole tumour (mL)"),
)
MASK_AUTOMATIC, MASK_NONE = "automatic", "none"
#: the dock's title as napari writes it (display name and package), and the room its buttons take
DOCK_TITLE, TITLE_BUTTONS_PX = "Brain lesion segmentation (napari-medlearn)", 110
SETTLE_MS = 150


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "\u2013"
    return f"{float(value):.2f}"


def model_channels(model: str | None) -> tuple[str, ...]:
    """The input channels a model's card asks for (FLAIR, T1c when it does not say)."""
    from .. import zoo

    if model is None:
        return DEFAULT_CHANNELS
    try:
        card = zoo.card(model)
    except Exception:  # noqa: BLE001 (an unreadable card: the run will say why)
        return DEFAULT_CHANNELS
    names = card.get("channel_names") or card.get("input", {}).get("channels")
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        return tuple(names)
    return DEFAULT_CHANNELS


def _names(layer_name: str, modality: str) -> bool:
    """Whether a layer name mentions a modality as a word (``Flair_subtrMeanDivStd`` -> FLAIR),
    excluding result layers (``... [DeepMedic]``)."""
    layer_name, key = layer_name.lower(), modality.lower()
    if "[" in layer_name:
        return False
    return re.search(rf"(^|[^a-z0-9]){re.escape(key)}([^a-z0-9]|$)", layer_name) is not None


class LesionWidget(QWidget):
    """Segment brain lesions (necrotic core, oedema, enhancing tumour) from FLAIR and T1c.

    Parameters
    ----------
    napari_viewer
        The viewer whose image layers are offered and where the results go.
    """

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.labels_layer = None
        self.probability_layers: dict[int, Any] = {}
        self.spacing: tuple[float, float, float] | None = None
        self.source = ""
        self.model_name = ""
        self.model_sha256 = ""
        self.volumes: dict = {}
        self.outputs = OutputLayers(napari_viewer)

        self.model_picker = ModelPicker(TASK)
        self.model_picker.currentIndexChanged.connect(lambda _i: self._sync_channels())
        self.device_picker = device_picker()
        self.backend_picker = backend_picker()
        self.mask_picker = ComboBox(label="brain mask", choices=self._mask_choices)
        self.mask_picker.native.setToolTip(
            "automatic: the non-zero voxels of skull-stripped scans; a Labels or Image layer: its "
            "non-zero voxels; none: the whole volume")
        self.runner = TaskRunner("Run")
        self.runner.run_button.clicked.connect(self.run)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed,
                      napari_viewer.layers.events.moved):
            event.connect(lambda _e=None: self.mask_picker.reset_choices())

        self.table = QTableWidget(len(VOLUME_ROWS), 2)
        self.table.setHorizontalHeaderLabels(["region", "volume"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        for row, (_key, title) in enumerate(VOLUME_ROWS):
            self.table.setItem(row, 0, QTableWidgetItem(title))
            value = QTableWidgetItem("\u2013")
            value.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
            self.table.setItem(row, 1, value)
        self.table.resizeRowsToContents()
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        rows_height = sum(self.table.rowHeight(r) for r in range(len(VOLUME_ROWS)))
        self.table.setFixedHeight(rows_height + self.table.horizontalHeader().sizeHint().height()
                                  + 2 * self.table.frameWidth() + 4)
        self.warning = QLabel("")
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("color: #ffb347;")
        hint = QLabel("Paint, erase or fill on the labels layer (1 necrotic core, 2 oedema, "
                      "4 enhancing): the volumes follow.")
        hint.setWordWrap(True)
        self.save_button = QPushButton("Save labels + volumes...")
        self.save_button.clicked.connect(lambda: self.save())
        self.save_button.setEnabled(False)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.timeout.connect(self.update_volumes)

        self.form = QFormLayout()
        self.modality_pickers: dict[str, ComboBox] = {}
        self._all_pickers: dict[str, ComboBox] = {}
        self.ensemble = EnsemblePanel()
        self.review = ReviewPanel(napari_viewer)
        self.adapt_panel = AdaptPanel(self._gather, self._chosen_model, self._on_new_model)
        self.form.addRow("model", self.model_picker)
        self.form.addRow("mask", self.mask_picker.native)
        self.form.addRow("device", self.device_picker)
        self.form.addRow("backend", self.backend_picker)
        layout = QVBoxLayout(self)
        layout.addLayout(self.form)
        layout.addWidget(self.ensemble)
        layout.addWidget(self.runner)
        layout.addWidget(self.table)
        layout.addWidget(self.warning)
        layout.addWidget(hint)
        layout.addWidget(self.save_button)
        self.review_bar = ReviewBar(lambda: self.labels_layer, self.outputs.edited)
        layout.addWidget(self.review_bar)
        layout.addWidget(self.review)
        layout.addWidget(self.adapt_panel)
        self.viewing = ViewingPanel(napari_viewer, (
            ("Alt-R", "run", self.run), ("Alt-S", "save", lambda: self.save()),
            ("Alt-V", "show/hide the labels", self.toggle_labels)))
        layout.addWidget(self.viewing)
        layout.addStretch(1)
        # wide enough for the dock's title and its three buttons (at 300 px napari cut the title)
        self.setMinimumWidth(max(300, self.fontMetrics().horizontalAdvance(DOCK_TITLE) + TITLE_BUTTONS_PX))
        self._sync_channels()
        # the first modality (FLAIR) says what kind of image the scans are
        self.fit = FitWatch(next(iter(self.modality_pickers.values())), self.model_picker)
        layout.insertWidget(1, self.fit.label)
        # after the pickers' own refresh: a scan opened later goes to the modality it names
        napari_viewer.layers.events.inserted.connect(lambda _e=None: self.guess_modalities(keep_matching=True))
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)

    # ----- inputs -------------------------------------------------------------------------
    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(self.modality_pickers)

    def _mask_choices(self, _widget=None):
        layers = [(f"layer: {layer.name}", layer) for layer in self.viewer.layers
                  if isinstance(layer, (Labels, Image)) and layer is not self.labels_layer
                  and layer not in self.probability_layers.values()]
        return [(MASK_AUTOMATIC, MASK_AUTOMATIC), (MASK_NONE, MASK_NONE)] + layers

    def _sync_channels(self) -> None:
        """One image picker per input channel of the chosen model, pre-set by layer name.

        Pickers are kept per modality name (hidden when the model does not take it), so the
        layer-list connections each one holds stay valid.
        """
        names = model_channels(self.model_picker.model())
        if names == self.channel_names:
            return
        for name, picker in self._all_pickers.items():
            picker.native.setVisible(name in names)
            label = self.form.labelForField(picker.native)
            if label is not None:
                label.setVisible(name in names)
        for name in names:
            if name not in self._all_pickers:
                picker = layer_picker(self.viewer, Image, name)
                self._all_pickers[name] = picker
                self.form.insertRow(len(self._all_pickers) - 1, name, picker.native)
        self.modality_pickers = {name: self._all_pickers[name] for name in names}
        self.guess_modalities()

    def guess_modalities(self, keep_matching: bool = False) -> None:
        """Choose, for each modality, the image layer whose name mentions it (``Flair_...``).

        With ``keep_matching``, a picker whose layer already names its modality is left alone.
        """
        for name, picker in self.modality_pickers.items():
            if keep_matching and picker.value is not None and _names(picker.value.name, name):
                continue
            for choice in picker.choices:
                if _names(choice.name, name):
                    picker.value = choice
                    break

    def set_modality(self, name: str, layer) -> None:
        """Choose ``layer`` for modality ``name`` (for scripts and tests)."""
        self.modality_pickers[name].value = layer

    def _gather(self):
        """The chosen layers checked against each other: ``(channels, spacing, mask, layers)``."""
        names = list(self.modality_pickers)
        n_images = sum(isinstance(layer, Image) for layer in self.viewer.layers)
        if n_images < len(names):
            raise ValueError(f"missing modality: the model needs {len(names)} scans ({', '.join(names)}) "
                             f"but {n_images} image layer{'s are' if n_images != 1 else ' is'} open")
        layers = []
        for name, picker in self.modality_pickers.items():
            layer = picker.value
            if layer is None:
                raise ValueError(f"missing modality {name}: open a {name} scan and choose it")
            layers.append(layer)
        for i in range(len(layers)):
            for j in range(i):
                if layers[i] is layers[j]:
                    raise ValueError(f"the same layer {layers[i].name!r} is chosen as {names[j]} and "
                                     f"{names[i]}: choose one scan per modality")
        rgb = [(n, layer) for n, layer in zip(names, layers) if getattr(layer, "rgb", False)]
        if rgb:
            raise ValueError(f"{rgb[0][0]} ({rgb[0][1].name!r}) is an RGB image; lesion segmentation needs "
                             "grey-level MR volumes")
        vols = [Volume.from_layer(np.asarray(layer.data), layer.scale, layer.translate, layer.metadata)
                for layer in layers]
        for name, layer, vol in zip(names, layers, vols):
            if vol.data.ndim != 3 or len(vol.spatial_axes) != 3:
                raise ValueError(f"{name} ({layer.name!r}) is {vol.data.ndim}-D {vol.data.shape}: lesion "
                                 "segmentation needs a 3D volume (z, y, x)")
        ref_name, ref = names[0], vols[0]
        # series of one session on different grids (a 2D FLAIR, a 3D T1c) meet on the first
        # modality's grid through their scanner coordinates; the results keep that grid
        resampled = []
        for i, (name, layer, vol) in enumerate(zip(names[1:], layers[1:], vols[1:]), start=1):
            vols[i] = resample_onto(vol, ref, order=1, what=f"{name} ({layer.name!r})",
                                    onto=f"{ref_name} ({layers[0].name!r})", atol=1e-2)
            if vols[i] is not vol:
                resampled.append(name)
        mask = self._mask_array(ref, ref_name)
        # the method's own checks (NaN, size, types), here so that nothing starts on bad input
        channels, spacing, mask = lesion_method.validate_channels(
            [v.data for v in vols], ref.spacing, names, mask)
        if resampled:
            show_info(f"{' and '.join(resampled)} resampled onto the {ref_name} grid {ref.data.shape} "
                      "(scanner coordinates, trilinear); the results are on that grid")
        # with the scans' affine: their orientation, for each model to read them its way
        return channels, spacing, mask, layers, ref.affine

    def _mask_array(self, ref: Volume, ref_name: str = "the scans"):
        shape = ref.data.shape
        choice = self.mask_picker.value
        if choice == MASK_AUTOMATIC or choice is None:
            return None
        if choice == MASK_NONE:
            return np.ones(shape, dtype=bool)
        data = np.asarray(choice.data)
        if data.ndim != 3:
            raise ValueError(f"the brain mask {choice.name!r} is {data.ndim}-D {data.shape}: it needs to be "
                             "3D like the scans")
        if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            raise ValueError(f"the brain mask {choice.name!r} contains NaN or infinite values")
        m = Volume.from_layer(data, choice.scale, choice.translate, choice.metadata)
        data = resample_onto(m, ref, order=0, what=f"the brain mask {choice.name!r}", onto=ref_name, atol=1e-2).data
        mask = data > 0
        if not mask.any():
            raise ValueError(f"the brain mask {choice.name!r} is empty")
        return mask

    # ----- running ------------------------------------------------------------------------
    def _chosen_model(self):
        """The ensemble's members when the Ensemble panel is on, else the picked model."""
        members = self.ensemble.members()
        return members if members is not None else self.model_picker.model()

    def _on_new_model(self, name: str) -> None:
        self.model_picker.refresh()
        index = self.model_picker.findData(name)
        if index >= 0:
            self.model_picker.setCurrentIndex(index)
        self.ensemble.refresh()

    def run(self):
        """Segment the chosen modalities in a worker thread; returns the worker (or None)."""
        if self.running:
            return None
        try:
            model = self._chosen_model()
        except ValueError as exc:
            notify_error(exc)
            return None
        if model is None:
            notify_error("no brain-lesion model shipped yet: choose 'load checkpoint...' in the model list")
            return None
        try:
            channels, spacing, mask, layers, affine = self._gather()
        except (ValueError, TypeError) as exc:
            notify_error(exc)
            return None
        steps = lesion_method.segment_lesions_steps(
            channels, spacing, model=model, brain_mask=mask, device=self.device_picker.currentText(),
            cancelled=self.runner.cancel_requested, affine=affine, backend=self.backend_picker.currentText())
        source = layers[0]
        return self.runner.start(steps, lambda result: self.show_result(result, source, spacing),
                                 description=f"segmenting lesions in {source.name}", viewer=self.viewer,
                                 inputs=tuple(layers))

    def cancel(self) -> None:
        """Stop the running segmentation; nothing is added."""
        self.runner.cancel()

    @property
    def running(self) -> bool:
        return self.runner.running

    # ----- results ------------------------------------------------------------------------
    def show_result(self, result, source, spacing) -> None:
        """Add the probability and labels layers over ``source``; fill the volume table."""

        self._disconnect_labels()
        self.model_name, self.model_sha256 = str(result.model), str(result.model_sha256)
        self.spacing = tuple(float(s) for s in spacing)
        self.source = str(source.metadata.get("source") or source.source.path or source.name)
        geometry = {"scale": source.scale, "translate": source.translate, "rotate": source.rotate,
                    "shear": source.shear, "affine": source.affine}
        meta = copy.deepcopy(dict(source.metadata))
        method = "EMMA" if result.uncertainty is not None else METHOD
        meta.update(model=self.model_name, model_sha256=self.model_sha256, method=method, backend=result.backend)
        if result.members:
            meta["members"] = list(result.members)
        values = [int(v) for v in result.label_values]
        model = self.model_name if method == METHOD else "+".join(result.members or ())
        self.probability_layers = {}
        for index, value in enumerate(values):
            if value == 0 or index >= len(result.probabilities):
                continue
            name = LABEL_NAMES.get(value, f"label {value}")
            self.probability_layers[value] = self.outputs.put(
                (f"p{value}", method, source.name), self.viewer.add_image,
                np.asarray(result.probabilities[index], dtype=np.float32),
                f"{source.name} [{method} p({name})]", model,
                colormap=PROBABILITY_COLORMAPS.get(value, "magma"), contrast_limits=(0.0, 1.0),
                blending="additive", opacity=0.6, visible=value == SHOWN_PROBABILITY,
                metadata=copy.deepcopy(meta), **geometry)
        # how the labels followed from the probabilities (decision, clean-up, hole filling)
        meta["postprocess"] = copy.deepcopy(dict(result.extras.get("postprocess") or {}))
        meta["warnings"] = list(result.extras.get("warnings") or [])
        meta[structures.META_KEY] = "brats"
        self.labels_layer = self.outputs.put(
            ("labels", method, source.name), self.viewer.add_labels,
            np.asarray(result.labels, dtype=np.uint8), f"{source.name} [{method}]", model,
            metadata=meta, opacity=0.5, **structures.labels_kwargs("brats"), **geometry)
        events = self.labels_layer.events
        events.paint.connect(self._on_labels_edited)
        events.data.connect(self._on_labels_edited)
        events.set_data.connect(self._on_labels_refreshed)
        if result.uncertainty is not None:
            self.review.show_result(result, source, geometry, meta)
        else:
            self.review.setVisible(False)
        self.mask_picker.reset_choices()
        self.save_button.setEnabled(True)
        self.viewer.layers.selection.active = self.labels_layer   # the one to paint on, not the outline
        self.review_bar.refresh()
        self.update_volumes()
        for w in result.extras.get("warnings") or []:
            show_warning(w)                 # e.g. scans that look not skull-stripped

    def update_volumes(self, event=None) -> dict:
        """Measure the labels layer's current data and refresh the table."""
        self._debounce.stop()
        if self.labels_layer is None or self.spacing is None:
            return {}
        labels = np.asarray(self.labels_layer.data)
        try:
            self.volumes = dict(lesion_method.lesion_volumes(labels, self.spacing))
            self.warning.setText("")
        except ValueError as exc:
            self.volumes = {}
            self.warning.setText(str(exc))
        for row, (key, _title) in enumerate(VOLUME_ROWS):
            self.table.item(row, 1).setText(_fmt(self.volumes.get(key)))
        return self.volumes

    def volume_text(self, key: str) -> str:
        """The table's text for a volume key, e.g. ``volume_text("whole_tumour_mL")``."""
        return self.table.item([k for k, _ in VOLUME_ROWS].index(key), 1).text()

    def _on_labels_edited(self, event=None) -> None:
        # napari emits `paint` before it writes the edit into the array: measure on the next turn
        self._debounce.start(0)

    def _on_labels_refreshed(self, event=None) -> None:
        # slice changes emit `set_data` too: measure once things settle, without delaying an edit
        if not (self._debounce.isActive() and self._debounce.interval() == 0):
            self._debounce.start(SETTLE_MS)

    # ----- saving -------------------------------------------------------------------------
    def _default_name(self) -> str:
        name = self.labels_layer.name if self.labels_layer is not None else "lesions"
        return re.sub(r"[^\w.-]+", "_", name).strip("_")

    @staticmethod
    def output_paths(path: str | Path) -> tuple[Path, Path]:
        """The labels NIfTI for ``path`` (``.nii.gz`` added when missing) and its volumes CSV."""
        path = Path(path)
        if not path.name.lower().endswith((".nii", ".nii.gz")):
            path = path.with_name(path.name + ".nii.gz")
        stem = re.sub(r"\.nii(\.gz)?$", "", path.name, flags=re.IGNORECASE)
        return path, path.with_name(f"{stem}_volumes.csv")

    def save(self, path: str | Path | None = None, overwrite: bool = False) -> tuple[Path, Path] | None:
        """Write the labels (NIfTI, input geometry) and the volumes (CSV beside it), atomically.

        Without ``path`` a file dialog asks, and existing files are replaced only after a
        confirmation. With ``path``, existing files are replaced only when ``overwrite``.
        Returns the two paths written, or None.
        """
        if self.labels_layer is None:
            notify_error("no labels to save: run the segmentation first")
            return None
        ask = path is None
        if ask:
            path, _ = QFileDialog.getSaveFileName(
                self, "Save lesion labels (NIfTI) and volumes (CSV)", f"{self._default_name()}.nii.gz",
                "NIfTI (*.nii.gz *.nii)", options=QFileDialog.Option.DontConfirmOverwrite)
            if not path:
                return None
        nifti, csv_path = self.output_paths(path)
        if not overwrite and not may_replace(self, (nifti, csv_path), ask):
            return None
        self.update_volumes()
        if not self.volumes:
            notify_error(f"the labels cannot be measured ({self.warning.text()}): fix them before saving")
            return None
        try:
            from ..imaging.io import write_nifti
            from ..methods.report import write_measures_csv

            layer = self.labels_layer
            vol = Volume.from_layer(np.asarray(layer.data), layer.scale, layer.translate, layer.metadata)
            nifti = write_nifti(vol, nifti, overwrite=True)  # asked above
            row = {"source": self.source, "model": self.model_name, "model_sha256": self.model_sha256,
                   "labels_file": nifti.name}
            row.update({k: round(float(self.volumes[k]), 3) for k, _ in VOLUME_ROWS if k in self.volumes})
            row.update(self.review_bar.columns())
            csv_path = write_measures_csv([row], csv_path)
        except USER_ERRORS as exc:
            notify_error(exc)
            return None
        show_info(f"labels saved to {nifti}, volumes to {csv_path.name}")
        return nifti, csv_path

    # ----- bookkeeping --------------------------------------------------------------------
    def toggle_labels(self) -> None:
        """Show or hide the labels layer (a shortcut: look at the scan under them)."""
        if self.labels_layer is not None:
            self.labels_layer.visible = not self.labels_layer.visible

    def _disconnect_labels(self) -> None:
        if self.labels_layer is None:
            return
        events = self.labels_layer.events
        events.paint.disconnect(self._on_labels_edited)
        events.data.disconnect(self._on_labels_edited)
        events.set_data.disconnect(self._on_labels_refreshed)
        self._debounce.stop()

    def _on_layer_removed(self, event) -> None:
        self.review.forget(event.value)
        for value, layer in list(self.probability_layers.items()):
            if event.value is layer:
                del self.probability_layers[value]
        if event.value is self.labels_layer:
            self._disconnect_labels()
            self.labels_layer = None
            self.save_button.setEnabled(False)
            self.volumes = {}
            self.warning.setText("")
            for row in range(len(VOLUME_ROWS)):
                self.table.item(row, 1).setText("\u2013")
