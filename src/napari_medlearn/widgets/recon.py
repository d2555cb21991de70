"""MR reconstruction dock widget: undersample an image (or take k-space + mask), reconstruct.

Runs :func:`napari_medlearn.methods.recon.reconstruct_steps` (deep cascade of CNNs, Schlemper
et al., IEEE TMI 2018) in a worker thread. Two inputs:

- **simulate from image**: a fully sampled image layer is undersampled here (pattern,
  acceleration R, centre lines, seed; one mask per frame for a cine);
- **k-space + mask**: a k-space layer (napari cannot show complex data, so k-space layers show
  ``log(1 + |k|)`` and keep the complex array in ``metadata["kspace"]``; *Load k-space...*
  makes one from ``.npy``/``.h5``) and a 0/1 mask layer that broadcasts to it.

Outputs, named after the input (``"scan [cascade R=4]"``) with the input's geometry: the
zero-filled and reconstructed magnitudes (real parts for an image with negative values, e.g. a
z-scored one, whose acquisition is simulated after subtracting its minimum), the mask, the undersampled k-space (simulation), and
with a reference (the simulated image) the error map and PSNR/SSIM. A cine's layers share its
time axis, so they move together with the time slider; the table shows the current frame's
figures next to the whole sequence's. The input layer is never modified.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..imaging import kspace as K
from ..methods.recon import TASK_2D, TASK_2DT, reconstruct_steps, reconstruction_quality, simulate
from ._common import USER_ERRORS, ModelPicker, TaskRunner, device_picker, layer_picker, notify_error

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..methods.recon import ReconResult

SIMULATE, KSPACE = "simulate from image", "k-space + mask"
METHODS = ("zero-filled", "cascade")
#: table rows: the whole input, then the image on screen (the current frame or slice)
QUANTITIES = ("PSNR (dB)", "SSIM", "PSNR, this image", "SSIM, this image")


class ReconWidget(QWidget):
    """Reconstruct MR images from undersampled Cartesian k-space.

    Parameters
    ----------
    napari_viewer
        The viewer whose layers are offered and where the results go.
    """

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.result: ReconResult | None = None
        self.reference: np.ndarray | None = None
        self.outputs: dict[str, Any] = {}      # output layer name -> layer, over all runs
        self.current: dict[str, Any] = {}      # kind ("cascade", "mask", ...) -> layer of the last run
        self.metrics: dict[str, dict[str, float]] = {}
        self._frame_metrics_axis: int | None = None

        self.mode = QComboBox()
        self.mode.addItems([SIMULATE, KSPACE])
        self.image_picker = layer_picker(napari_viewer, Image, "image")
        self.pattern = QComboBox()
        self.pattern.addItems(list(K.PATTERNS))
        self.pattern.setToolTip("cartesian: random lines, Gaussian variable density; equispaced: a regular lattice")
        self.acceleration = QDoubleSpinBox()
        self.acceleration.setRange(1.0, 32.0)
        self.acceleration.setSingleStep(1.0)
        self.acceleration.setValue(4.0)
        self.centre_lines = QSpinBox()
        self.centre_lines.setRange(0, 256)
        self.centre_lines.setValue(8)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.kspace_picker = layer_picker(napari_viewer, Image, "k-space")
        self.mask_picker = layer_picker(napari_viewer, (Image, Labels), "mask")
        self.load_button = QPushButton("Load k-space...")
        self.load_button.setToolTip(".npy (and a mask .npy), or .h5 with datasets 'kspace' and 'mask'")
        self.load_button.clicked.connect(lambda: self.load_kspace())
        self.dynamic = QCheckBox("cine: axis 0 is time")
        self.dynamic.setToolTip("one mask per frame, and a 2D+t model that shares data across frames")
        self.model_picker = ModelPicker(TASK_2D)
        self.device_picker = device_picker()
        self.runner = TaskRunner("Reconstruct")
        self.runner.run_button.clicked.connect(self.run)

        self.table = QTableWidget(len(QUANTITIES), len(METHODS))
        self.table.setHorizontalHeaderLabels(list(METHODS))
        self.table.setVerticalHeaderLabels(list(QUANTITIES))
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setToolTip("against the fully sampled image; 'this image' is the frame or slice on screen")
        for r in range(len(QUANTITIES)):
            for c in range(len(METHODS)):
                self.table.setItem(r, c, QTableWidgetItem("\u2013"))
        row_height = self.table.verticalHeader().defaultSectionSize()
        self.table.setFixedHeight(row_height * (len(QUANTITIES) + 1) + 2 * self.table.frameWidth() + 6)
        self.info = QLabel("")
        self.info.setWordWrap(True)

        self.form = QFormLayout()
        self.form.addRow("input", self.mode)
        self.form.addRow("image", self.image_picker.native)
        self.form.addRow("pattern", self.pattern)
        self.form.addRow("acceleration R", self.acceleration)
        self.form.addRow("centre lines", self.centre_lines)
        self.form.addRow("seed", self.seed)
        self.form.addRow("k-space", self.kspace_picker.native)
        self.form.addRow("mask", self.mask_picker.native)
        self.form.addRow("", self.load_button)
        self.form.addRow("", self.dynamic)
        self.form.addRow("model", self.model_picker)
        self.form.addRow("device", self.device_picker)
        layout = QVBoxLayout(self)
        layout.addLayout(self.form)
        layout.addWidget(self.runner)
        layout.addWidget(self.table)
        layout.addWidget(self.info)
        layout.addStretch(1)
        self.setMinimumWidth(320)

        self.mode.currentTextChanged.connect(self._on_mode)
        self.dynamic.toggled.connect(self._on_dynamic)
        self.image_picker.changed.connect(self._guess_dynamic)
        self.kspace_picker.changed.connect(self._guess_dynamic)
        napari_viewer.dims.events.current_step.connect(self._on_step)
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)
        self._on_mode(self.mode.currentText())
        self._guess_dynamic()

    # ----- form state ---------------------------------------------------------------------
    def _set_row_visible(self, field: QWidget, visible: bool) -> None:
        field.setVisible(visible)   # QFormLayout.setRowVisible needs Qt >= 6.4
        label = self.form.labelForField(field)
        if label is not None:
            label.setVisible(visible)

    def _on_mode(self, mode: str) -> None:
        simulate = mode == SIMULATE
        for w in (self.image_picker.native, self.pattern, self.acceleration, self.centre_lines, self.seed):
            self._set_row_visible(w, simulate)
        for w in (self.kspace_picker.native, self.mask_picker.native, self.load_button):
            self._set_row_visible(w, not simulate)
        self._guess_dynamic()

    def _on_dynamic(self, checked: bool) -> None:
        self.model_picker.task = TASK_2DT if checked else TASK_2D
        self.model_picker.refresh()
        if self.model_picker.model() is None and checked:
            # no 2D+t model: frame by frame with the best 2D model
            self.model_picker.task = TASK_2D
            self.model_picker.refresh()

    def _guess_dynamic(self, *_: Any) -> None:
        layer = self.image_picker.value if self.mode.currentText() == SIMULATE else self.kspace_picker.value
        if layer is None:
            return
        axes = tuple(layer.metadata.get("axes") or ())
        self.dynamic.setChecked(bool(axes) and axes[0] == "t" and layer.ndim >= 3)

    # ----- inputs -------------------------------------------------------------------------
    def load_kspace(self, path: str | None = None, mask_path: str | None = None):
        """Add a k-space layer (and a mask layer when the file has one) from ``.npy``/``.h5``."""
        from pathlib import Path

        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Load k-space", "", "k-space (*.npy *.h5 *.hdf5)")
            if not path:
                return None
        try:
            k, mask = K.read_kspace(path, mask_path)
            if not np.iscomplexobj(k):
                raise ValueError(f"{Path(path).name} holds real {k.dtype} data, not complex k-space")
        except USER_ERRORS as exc:
            notify_error(exc)
            return None
        name = Path(path).name.split(".")[0]
        layer = self.viewer.add_image(K.log_magnitude(k), name=f"{name} [k-space]", colormap="gray",
                                      metadata={"kspace": k, "source": str(path)})
        if mask is not None:
            try:   # shown at the k-space's shape when it broadcasts; the method judges the rest
                shown = np.broadcast_to(mask, k.shape)
            except ValueError:
                shown = mask
            self.viewer.add_image(np.asarray(shown, dtype=np.float32), name=f"{name} [mask]",
                                  colormap="gray", contrast_limits=(0, 1), visible=False)
        self.mode.setCurrentText(KSPACE)
        self.kspace_picker.value = layer
        if mask is not None:
            self.mask_picker.value = self.viewer.layers[f"{name} [mask]"]
        return layer

    def _inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, Any, str, float]:
        """``(kspace, mask, reference or None, geometry source layer, output name prefix, offset)``;
        ``offset`` as :func:`napari_medlearn.methods.recon.simulate` returns it."""
        if self.mode.currentText() == SIMULATE:
            layer = self.image_picker.value
            if layer is None:
                raise ValueError("no image layer: open an image (e.g. File > Open Sample > MedLearn)")
            if layer.rgb:
                raise ValueError(f"{layer.name} is an RGB image; reconstruction needs a grey-level MR image")
            image = np.asarray(layer.data)
            if np.iscomplexobj(image) or not np.issubdtype(image.dtype, np.number):
                raise ValueError(f"{layer.name}: the image must be real numbers, got {image.dtype}")
            image = image.astype(np.float32)
            if not np.all(np.isfinite(image)):
                raise ValueError(f"{layer.name} contains NaN or Inf values")
            k, mask, offset = simulate(image, self.acceleration.value(), self.pattern.currentText(),
                                       self.centre_lines.value(), self.seed.value(),
                                       per_frame=self.dynamic.isChecked() and image.ndim >= 3)
            return k, mask, image, layer, layer.name, offset
        layer, mask_layer = self.kspace_picker.value, self.mask_picker.value
        if layer is None:
            raise ValueError("no k-space layer: use 'Load k-space...' or run a simulation first")
        k = layer.metadata.get("kspace")
        if k is None:
            raise ValueError(f"{layer.name} holds no k-space (k-space layers keep the complex data in "
                             "metadata['kspace']: use 'Load k-space...')")
        if mask_layer is None:
            raise ValueError("no mask layer: choose the 0/1 sampling mask")
        reference = layer.metadata.get("reference")
        offset = float(layer.metadata.get("offset", 0.0))
        name = layer.name.replace(" [k-space]", "").split(" [k-space")[0]
        return np.asarray(k), np.asarray(mask_layer.data), reference, layer, name, offset

    # ----- running ------------------------------------------------------------------------
    def run(self):
        """Reconstruct in a worker thread; returns the worker (or None when the input is unusable)."""
        try:
            k, mask, reference, source, name, offset = self._inputs()
        except USER_ERRORS as exc:
            notify_error(exc)
            return None
        model = self.model_picker.model()
        if model is None:
            notify_error("no reconstruction model: train one (medlearn train recon-2d --ship), convert the "
                         "official weights (medlearn import-weights), or choose 'load checkpoint...'")
            return None
        dynamic = self.dynamic.isChecked() and np.ndim(k) >= 3
        steps = reconstruct_steps(k, mask, model, self.device_picker.currentText(), dynamic=dynamic,
                                  cancelled=self.runner.cancel_requested, offset=offset)
        simulated = self.mode.currentText() == SIMULATE
        requested = self.acceleration.value() if simulated else None
        return self.runner.start(
            steps, lambda result: self.show_result(result, source, name, reference, k if simulated else None,
                                                   requested),
            description=f"reconstructing {name}", viewer=self.viewer, inputs=(source,))

    @property
    def running(self) -> bool:
        return self.runner.running

    def cancel(self) -> None:
        self.runner.cancel()

    # ----- results ------------------------------------------------------------------------
    def _put(self, key: str, name: str, data: np.ndarray, source, **kwargs: Any):
        """Add a layer with ``source``'s geometry, or refresh the one an earlier run of the same
        input and acceleration added (same name, same shape). A layer the user renamed is theirs
        now: it is left alone and a new one is added."""
        layer = self.outputs.get(name)
        if layer is not None and layer in self.viewer.layers and layer.name == name \
                and layer.data.shape == data.shape:
            layer.data = data
            for attr in ("contrast_limits", "metadata"):
                if attr in kwargs:
                    setattr(layer, attr, kwargs[attr])
        else:
            geometry = {"scale": source.scale, "translate": source.translate, "rotate": source.rotate,
                        "shear": source.shear, "affine": source.affine}
            layer = self.viewer.add_image(data, name=name, **geometry, **kwargs)
            self.outputs[name] = layer
        self.current[key] = layer
        return layer

    def show_result(self, result: "ReconResult", source, name: str, reference=None, kspace=None,
                    requested: float | None = None) -> None:
        """Add (or refresh) the output layers and fill the figures.

        Layers are tagged with the ``requested`` acceleration of a simulation, else with the one
        the mask achieves.
        """
        self.result = result
        if reference is not None:
            reference = np.asarray(reference)
            reference = (reference.real if result.signed else np.abs(reference)).astype(np.float32)
        self.reference = reference
        tag = f"R={requested:g}" if requested is not None else f"R={result.acceleration:.3g}"
        mag, zf = result.display, result.zero_filled_display
        shown = self.reference if self.reference is not None else mag
        low = float(shown.min()) if result.signed else 0.0
        high = float(shown.max())
        limits = (low, high if high > low else low + 1.0)
        meta = {"model": result.model_name, "model_sha256": result.model_sha256, "acceleration": result.acceleration,
                "axes": tuple(source.metadata.get("axes") or ()) or None}
        if "affine" in source.metadata:
            meta["affine"] = source.metadata["affine"]
        meta = {k: v for k, v in meta.items() if v is not None}
        self._put("mask", f"{name} [mask {tag}]", result.mask.astype(np.float32), source, colormap="gray",
                  contrast_limits=(0.0, 1.0), visible=False, metadata=dict(meta))
        if kspace is not None:
            self._put("kspace", f"{name} [k-space {tag}]", K.log_magnitude(kspace), source, colormap="gray",
                      visible=False, metadata={**meta, "kspace": kspace, "reference": self.reference,
                                               "offset": result.offset})
        self._put("zero_filled", f"{name} [zero-filled {tag}]", zf, source, colormap="gray",
                  contrast_limits=limits, visible=False, metadata=dict(meta))
        if self.reference is not None:
            self._put("error", f"{name} [error {tag}]", np.abs(mag - self.reference), source, colormap="magma",
                      contrast_limits=(0.0, 0.2 * (limits[1] - limits[0])), visible=False, metadata=dict(meta))
        self._put("cascade", f"{name} [cascade {tag}]", mag, source, colormap="gray",
                  contrast_limits=limits, metadata=dict(meta))
        if self.reference is None:
            self.current.pop("error", None)
        if kspace is None:
            self.current.pop("kspace", None)
        self.metrics = {}
        if self.reference is not None:
            self.metrics = {"zero-filled": reconstruction_quality(self.reference, zf),
                            "cascade": reconstruction_quality(self.reference, mag)}
        self._frame_metrics_axis = 0 if result.axes in ("tyx", "zyx", "tzyx") else None
        self._fill_table()
        self.info.setText(f"model {result.model_name or '?'} ({result.model_sha256[:12]}...), "
                          f"acceleration {result.acceleration:.2f}, {result.seconds:.2f} s"
                          + ("" if self.reference is not None else "; no reference: no error map or PSNR/SSIM"))

    def frame_metrics(self) -> dict[str, dict[str, float]]:
        """PSNR/SSIM of the image the viewer shows now (the current frame or slice)."""
        if self.result is None or self.reference is None or self._frame_metrics_axis is None:
            return {}
        nd = self.result.image.ndim
        layer = self.current.get("cascade")
        point = np.asarray(self.viewer.dims.point, dtype=float)[-nd:]
        if layer is not None and layer in self.viewer.layers:
            point = np.asarray(layer.world_to_data(point), dtype=float)    # the outputs' own grid
        index = tuple(min(max(int(round(point[a])), 0), self.result.image.shape[a] - 1) for a in range(nd - 2))
        ref = self.reference[index]
        if not np.abs(ref).max() > 0:
            return {}
        part = np.real if self.result.signed else np.abs
        return {"zero-filled": reconstruction_quality(ref, part(self.result.zero_filled[index])),
                "cascade": reconstruction_quality(ref, part(self.result.image[index]))}

    def _fill_table(self) -> None:
        frame = self.frame_metrics()
        for c, method in enumerate(METHODS):
            m, f = self.metrics.get(method, {}), frame.get(method, {})
            values = (m.get("psnr_db"), m.get("ssim"), f.get("psnr_db"), f.get("ssim"))
            for r, v in enumerate(values):
                text = "\u2013" if v is None else (f"{v:.2f}" if r % 2 == 0 else f"{v:.3f}")
                self.table.item(r, c).setText(text)

    def metric_text(self, method: str, quantity: str) -> str:
        """The table's text, e.g. ``metric_text("cascade", "PSNR (dB)")``."""
        return self.table.item(QUANTITIES.index(quantity), METHODS.index(method)).text()

    def _on_step(self, event=None) -> None:
        if self.result is not None and self._frame_metrics_axis is not None:
            self._fill_table()

    def _on_layer_removed(self, event) -> None:
        for store in (self.outputs, self.current):
            for key, layer in list(store.items()):
                if event.value is layer:
                    del store[key]
