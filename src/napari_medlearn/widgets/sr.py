"""Super-resolution dock widget: thick-slice stacks -> near-isotropic volumes.

Runs :func:`napari_medlearn.methods.sr.super_resolve_steps` (one stack, or a cine frame by
frame) or :func:`~napari_medlearn.methods.sr.super_resolve_stacks_steps` (the reference stack
plus the checked stacks, fused in the reference's frame; Oktay et al., MICCAI 2016) in a worker
thread, with progress and Cancel.

Outputs, named after the input (``"scan [SR x4]"``), are new layers whose scale and translate
come from the result's affine, so they overlay the input exactly: the network's output and,
beside it, the cubic B-spline interpolation of the same stack (``"scan [cubic spline x4]"``;
for fusion, the average of the interpolated stacks). The input layers are never modified.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..imaging.volume import Volume
from ..methods.sr import TASK_MULTI, TASK_SINGLE, super_resolve_stacks_steps, super_resolve_steps
from ._common import USER_ERRORS, ModelPicker, TaskRunner, device_picker, layer_picker, notify_error

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..methods.sr import SRResult

SINGLE, FUSE = "one stack (or cine)", "fuse several stacks"


def layer_volume(layer) -> Volume:
    """The input layer as a :class:`Volume` (its affine from metadata, else scale/translate)."""
    if getattr(layer, "rgb", False):
        raise ValueError(f"{layer.name} is an RGB image; super-resolution needs a grey-level MR stack")
    return Volume.from_layer(np.asarray(layer.data), layer.scale, layer.translate, layer.metadata)


class SuperResolutionWidget(QWidget):
    """Through-plane super-resolution of thick-slice MR stacks.

    Parameters
    ----------
    napari_viewer
        The viewer whose layers are offered and where the results go.
    """

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.result: SRResult | None = None
        self.outputs: dict[str, Any] = {}

        self.mode = QComboBox()
        self.mode.addItems([SINGLE, FUSE])
        self.image_picker = layer_picker(napari_viewer, Image, "stack")
        self.others = QListWidget()
        self.others.setToolTip("the other stacks of the same anatomy (any orientation; geometry from each "
                               "layer's affine)")
        self.others.setMaximumHeight(90)
        self.factor = QSpinBox()
        self.factor.setRange(2, 8)
        self.factor.setValue(4)
        self.factor.setToolTip("through-plane factor: N thick slices -> N x factor slices over the same extent")
        self.model_picker = ModelPicker(TASK_SINGLE)
        self.device_picker = device_picker()
        self.runner = TaskRunner("Super-resolve")
        self.runner.run_button.clicked.connect(self.run)
        self.info = QLabel("")
        self.info.setWordWrap(True)

        self.form = QFormLayout()
        self.form.addRow("input", self.mode)
        self.form.addRow("stack", self.image_picker.native)
        self.form.addRow("fuse with", self.others)
        self.form.addRow("factor", self.factor)
        self.form.addRow("model", self.model_picker)
        self.form.addRow("device", self.device_picker)
        layout = QVBoxLayout(self)
        layout.addLayout(self.form)
        layout.addWidget(self.runner)
        layout.addWidget(self.info)
        layout.addStretch(1)
        self.setMinimumWidth(300)

        self.mode.currentTextChanged.connect(self._on_mode)
        self.image_picker.changed.connect(lambda *_: self._refresh_others())
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(lambda *_: self._refresh_others())
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)
        self._on_mode(self.mode.currentText())

    # ----- form state ---------------------------------------------------------------------
    def _on_mode(self, mode: str) -> None:
        fuse = mode == FUSE
        self.others.setVisible(fuse)
        label = self.form.labelForField(self.others)
        if label is not None:
            label.setVisible(fuse)
        self.model_picker.task = TASK_MULTI if fuse else TASK_SINGLE
        self.model_picker.refresh()
        self._refresh_others()

    def _refresh_others(self) -> None:
        checked = set(self.checked_names())
        ref = self.image_picker.value
        self.others.clear()
        for layer in self.viewer.layers:
            if isinstance(layer, Image) and layer is not ref and not layer.name.endswith("]"):
                item = QListWidgetItem(layer.name)
                item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
                item.setCheckState(Qt.Checked if layer.name in checked else Qt.Unchecked)
                self.others.addItem(item)

    def checked_names(self) -> list[str]:
        return [self.others.item(i).text() for i in range(self.others.count())
                if self.others.item(i).checkState() == Qt.Checked]

    def set_fusion(self, reference, others) -> None:
        """Choose fusion of ``reference`` with the layers ``others`` (for scripts and tests)."""
        self.mode.setCurrentText(FUSE)
        self.image_picker.value = reference
        self._refresh_others()
        names = {o.name for o in others}
        for i in range(self.others.count()):
            item = self.others.item(i)
            item.setCheckState(Qt.Checked if item.text() in names else Qt.Unchecked)

    # ----- running ------------------------------------------------------------------------
    def run(self):
        """Super-resolve in a worker thread; returns the worker (or None when the input is unusable)."""
        layer = self.image_picker.value
        try:
            if layer is None:
                raise ValueError("no image layer: open a thick-slice stack (e.g. a NIfTI file)")
            vol = layer_volume(layer)
            factor = self.factor.value()
            model = self.model_picker.model()
            if model is None:
                raise ValueError("no super-resolution model: train one (medlearn train sr-brain --ship) or "
                                 "choose 'load checkpoint...'")
            device = self.device_picker.currentText()
            cancelled = self.runner.cancel_requested
            if self.mode.currentText() == FUSE:
                others = [self.viewer.layers[n] for n in self.checked_names()]
                if not others:
                    raise ValueError("fusion needs at least one other stack: tick it under 'fuse with'")
                if vol.data.ndim != 3:
                    raise ValueError(f"{layer.name} is {vol.data.ndim}-D; fusion takes 3-D stacks (z, y, x)")
                stacks = [(vol.data, vol.affine)] + [(v.data, v.affine) for v in map(layer_volume, others)]
                dz, dy, dx = vol.spacing
                steps = super_resolve_stacks_steps(stacks, (dz / factor, dy, dx), model, device, cancelled)
                tag = f"fused x{factor}"
            else:
                if vol.data.ndim not in (3, 4):
                    raise ValueError(f"{layer.name} is {vol.data.ndim}-D; super-resolution needs a stack "
                                     "(z, y, x) or a cine (t, z, y, x)")
                steps = super_resolve_steps(vol.data, vol.spacing, factor, model, device, vol.affine, cancelled)
                tag = f"x{factor}"
        except USER_ERRORS as exc:
            notify_error(exc)
            return None
        return self.runner.start(steps, lambda result: self.show_result(result, layer, vol, tag),
                                 description=f"super-resolving {layer.name}", viewer=self.viewer,
                                 inputs=(layer,))

    @property
    def running(self) -> bool:
        return self.runner.running

    def cancel(self) -> None:
        self.runner.cancel()

    # ----- results ------------------------------------------------------------------------
    def _put(self, name: str, data: np.ndarray, kwargs: dict[str, Any]):
        """Add an output layer in place of the one an earlier run added under ``name``, unless the
        user renamed that one: then it is theirs and stays."""
        old = self.outputs.get(name)
        if old is not None and old in self.viewer.layers and old.name == name:
            self.viewer.layers.remove(old)
        layer = self.viewer.add_image(data, name=name, **kwargs)
        self.outputs[name] = layer
        return layer

    def show_result(self, result: "SRResult", source, vol: Volume, tag: str) -> None:
        """Add the SR volume and its interpolation baseline as layers on the result's grid."""
        self.result = result
        out = Volume(result.image, result.affine, vol.axes if result.image.ndim == vol.data.ndim
                     else ("z", "y", "x"), {k: v for k, v in vol.meta.items() if k == "time_step"})
        kw = out.layer_kwargs()
        kw["metadata"].update(model=result.model_name, model_sha256=result.model_sha256)
        lo, hi = (float(v) for v in np.percentile(result.baseline, (0.5, 99.5)))
        common = {**kw, "colormap": "gray", "contrast_limits": (lo, hi if hi > lo else lo + 1.0),
                  "rotate": source.rotate, "shear": source.shear, "affine": source.affine}
        baseline = "cubic spline" if result.factor else "average of interpolated stacks"
        self._put(f"{source.name} [{baseline} {tag}]", result.baseline, {**common, "visible": False})
        self._put(f"{source.name} [SR {tag}]", result.image, common)
        self.info.setText(f"model {result.model_name or '?'} ({result.model_sha256[:12]}...), "
                          f"{result.image.shape} at {', '.join(f'{s:.3g}' for s in result.spacing)} mm, "
                          f"{result.seconds:.2f} s")

    def _on_layer_removed(self, event) -> None:
        for key, layer in list(self.outputs.items()):
            if event.value is layer:
                del self.outputs[key]
