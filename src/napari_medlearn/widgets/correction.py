"""Correction tools dock: the Segment Editor tools a reviewer reaches for, on any Labels layer.

Fill between slices, remove islands, fill holes, smooth, grow/shrink by a margin in mm, and
paint only within an intensity window (:mod:`napari_medlearn.imaging.correction` does the work,
Qt-free). Each tool applies to the chosen labels layer and label value, on the frame shown when
the layer is a cine, and is **one undo step** in napari's history (``Labels.data_setitem`` with
every changed voxel at once), so Ctrl+Z takes it back; the paint event it emits is the one the
cardiac, lesion and cohort widgets already follow, so their measures update. A tool that cannot
apply (an image layer chosen, an empty label, a single drawn slice, a margin larger than the
volume) shows one notification and changes nothing.

*Paint within window*: while ticked, every brush or fill stroke on the layer keeps only the voxels
whose intensity in the chosen image lies inside ``[low, high]``; the others go back to what they
were, in the same undo step as the stroke where napari's history allows it.

*Model hints* (:func:`napari_medlearn.methods.refine.refine_labels`): while ticked, a click on the
labels layer says "this is the current label" (Shift or Ctrl + click: "this is not"), a drag draws
a scribble of the current label; the model's posteriors of the shown frame (cardiac: the chosen
image; lesions: the image and a second channel, FLAIR then T1c) are computed once off the GUI
thread and cached, then each hint refines a crop around it in a fraction of a second, as one undo
step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..imaging import correction
from ..imaging.volume import Volume
from ..methods import refine
from ._common import TaskRunner, layer_picker, notify_error

if TYPE_CHECKING:  # pragma: no cover
    import napari


def _spin(low: float, high: float, value: float, step: float, suffix: str, decimals: int = 1) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(low, high)
    box.setDecimals(decimals)
    box.setSingleStep(step)
    box.setValue(value)
    box.setSuffix(suffix)
    return box


def _atom_changes(atom, shape) -> tuple[tuple[np.ndarray, ...], np.ndarray] | None:
    """(voxel indices, values before) of one napari Labels history atom, or None if unknown."""
    if isinstance(atom, tuple) and len(atom) == 3 and isinstance(atom[0], tuple):
        indices, old, _ = atom
        idx = tuple(np.asarray(i).ravel() for i in indices)
        return idx, np.broadcast_to(np.asarray(old), idx[0].shape).ravel()
    slice_key, mask = getattr(atom, "slice_key", None), getattr(atom, "mask", None)
    old = getattr(atom, "old_values", None)
    if slice_key is None or old is None:
        return None
    starts = [s.indices(n)[0] for s, n in zip(slice_key, shape)]
    box = tuple(len(range(*s.indices(n))) for s, n in zip(slice_key, shape))
    local = np.nonzero(np.ones(box, bool) if mask is None else mask)
    idx = tuple(i + s for i, s in zip(local, starts))
    return idx, np.asarray(old).ravel() if mask is None else np.asarray(old)


class CorrectionWidget(QWidget):
    """Correction tools for a Labels layer: each one undo step, measures following."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._applying = False
        self._watched: Labels | None = None
        self.labels_picker = layer_picker(napari_viewer, Labels, "labels")
        self.image_picker = layer_picker(napari_viewer, Image, "image")
        self.label_spin = QSpinBox()
        self.label_spin.setRange(1, 65535)
        self.label_spin.setToolTip("the label value the tools act on (follows the layer's selected label)")
        self.labels_picker.changed.connect(self._follow_layer)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        self.island_ml = _spin(0.0, 1000.0, 0.1, 0.05, " mL", 3)
        self.keep_largest = QCheckBox("keep the largest only")
        self.sigma = _spin(0.1, 20.0, 1.0, 0.5, " mm")
        self.margin = _spin(-100.0, 100.0, 2.0, 0.5, " mm")
        self.margin.setToolTip("positive grows, negative shrinks (Euclidean, on the voxel spacing)")
        self.window_low = _spin(-1e6, 1e6, 0.0, 10.0, "", 1)
        self.window_high = _spin(-1e6, 1e6, 1000.0, 10.0, "", 1)
        self.window_check = QCheckBox("paint only within the window")
        self.window_check.toggled.connect(self._watch_strokes)
        window_from_contrast = QPushButton("window from the image's contrast")
        window_from_contrast.clicked.connect(self.window_from_contrast)

        self._hints_box = self._hint_controls()

        self.buttons: dict[str, QPushButton] = {}
        tools = QGridLayout()
        rows = [("Fill between slices", self.interpolate, None), ("Fill holes", self.fill_holes, None),
                ("Remove islands", self.remove_islands, self.island_ml), ("Smooth", self.smooth, self.sigma),
                ("Grow / shrink", self.grow_shrink, self.margin)]
        for r, (text, slot, param) in enumerate(rows):
            button = QPushButton(text)
            button.clicked.connect(slot)
            self.buttons[text] = button
            tools.addWidget(button, r, 0)
            if param is not None:
                tools.addWidget(param, r, 1)
        tools.addWidget(self.keep_largest, len(rows), 1)
        tools_box = QGroupBox("tools (one undo step each)")
        tools_box.setLayout(tools)
        window = QFormLayout()
        window.addRow("image", self.image_picker.native)
        window.addRow("low", self.window_low)
        window.addRow("high", self.window_high)
        window.addRow(window_from_contrast)
        window.addRow(self.window_check)
        window_box = QGroupBox("intensity window")
        window_box.setLayout(window)
        form = QFormLayout()
        form.addRow("labels", self.labels_picker.native)
        form.addRow("label", self.label_spin)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(tools_box)
        layout.addWidget(window_box)
        layout.addWidget(self._hints_box)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self._follow_layer(self.labels_picker.value)

    # -- the layer and the volume a tool works on ------------------------------------------------
    def _follow_layer(self, layer) -> None:
        if isinstance(layer, Labels):
            self.label_spin.setValue(max(1, int(layer.selected_label)))
            # the lesion widget's labels carry how they followed from the probabilities
            self.hint_task.setCurrentText("lesions" if "postprocess" in (layer.metadata or {}) else "cardiac")
        if self.window_check.isChecked():
            self._watch_strokes(True)
        if self.hint_check.isChecked():
            self._hint_mode(True)

    def _layer(self) -> Labels:
        layer = self.labels_picker.value
        if layer is None:
            active = self.viewer.layers.selection.active
            hint = f" ('{active.name}' is an image)" if isinstance(active, Image) else ""
            raise ValueError(f"choose a Labels layer to correct{hint}")
        if not isinstance(layer, Labels):
            raise ValueError(f"'{layer.name}' is not a Labels layer")
        return layer

    def _frame(self, layer: Labels) -> tuple[int, ...]:
        """The index of the frame shown, for a cine ``(t, z, y, x)``; ``()`` for a volume."""
        data = layer.data
        if data.ndim <= 3:
            return ()
        if data.ndim > 4:
            raise ValueError(f"correction tools take 2-D to 4-D labels; '{layer.name}' is {data.shape}")
        point = layer.world_to_data(self.viewer.dims.point[-layer.ndim:])
        return (int(np.clip(round(float(point[0])), 0, data.shape[0] - 1)),)

    def _slice_axis(self, layer: Labels) -> int:
        """The axis of the 3-D volume that the canvas slices through (the z slider, normally)."""
        offset = self.viewer.dims.ndim - layer.ndim
        candidates = [a - offset for a in self.viewer.dims.not_displayed if a - offset >= layer.ndim - 3]
        if not candidates:
            return 0
        return candidates[-1] - (layer.ndim - 3)

    def _spacing(self, layer: Labels) -> tuple[float, ...]:
        vol = Volume.from_layer(np.zeros((1,) * layer.ndim, np.uint8), layer.scale, layer.translate, layer.metadata)
        return tuple(float(s) for s in vol.spacing)[-min(layer.ndim, 3):]

    def apply(self, name: str, tool: Callable[[np.ndarray, int, tuple], np.ndarray]) -> int:
        """Run ``tool(volume, label, spacing)`` on the chosen layer's shown volume and write the
        change as one undo step. Returns the number of voxels changed (0 on refusal)."""
        try:
            layer = self._layer()
            label = int(self.label_spin.value())
            frame = self._frame(layer)
            before = np.asarray(layer.data[frame])
            after = tool(before, label, self._spacing(layer))
        except ValueError as e:
            self.status.setText(f"{name}: not applied")
            notify_error(e)
            return 0
        n = self._write(layer, frame, before, after)
        where = f" in frame {frame[0]}" if frame else ""
        self.status.setText(f"{name}: {n} voxels changed{where} (label {label}; Ctrl+Z undoes it)")
        show_info(self.status.text())
        return n

    def _write(self, layer: Labels, frame: tuple, before: np.ndarray, after: np.ndarray) -> int:
        """Write ``after`` over the frame as one undo step (every changed voxel in one call)."""
        changed = after != before
        n = int(changed.sum())
        if n:
            index = np.nonzero(changed)
            full = tuple(np.full(index[0].shape, f) for f in frame) + index
            self._applying = True
            try:
                layer.data_setitem(full, after[changed])
            finally:
                self._applying = False
        return n

    # -- the tools ------------------------------------------------------------------------------
    def interpolate(self) -> int:
        layer = self.labels_picker.value
        axis = self._slice_axis(layer) if isinstance(layer, Labels) else 0
        return self.apply("Fill between slices",
                          lambda v, lab, sp: correction.interpolate_slices(v, lab, sp, axis=axis))

    def fill_holes(self) -> int:
        return self.apply("Fill holes", lambda v, lab, sp: correction.fill_holes(v, lab))

    def remove_islands(self) -> int:
        ml, largest = float(self.island_ml.value()), self.keep_largest.isChecked()
        return self.apply("Remove islands", lambda v, lab, sp: correction.remove_islands(
            v, lab, sp, min_volume_ml=ml, keep_largest=largest))

    def smooth(self) -> int:
        sigma = float(self.sigma.value())
        return self.apply("Smooth", lambda v, lab, sp: correction.smooth(v, lab, sp, sigma_mm=sigma))

    def grow_shrink(self) -> int:
        margin = float(self.margin.value())
        return self.apply("Grow / shrink", lambda v, lab, sp: correction.grow_shrink(v, lab, sp, margin))

    # -- paint within an intensity window -------------------------------------------------------
    def window_from_contrast(self) -> None:
        image = self.image_picker.value
        if image is None:
            notify_error("choose the image whose intensities bound the paint")
            return
        low, high = image.contrast_limits
        self.window_low.setValue(float(low))
        self.window_high.setValue(float(high))

    def _watch_strokes(self, on: bool) -> None:
        if self._watched is not None:
            self._watched.events.paint.disconnect(self._on_stroke)
            self._watched = None
        layer = self.labels_picker.value
        if on and isinstance(layer, Labels):
            layer.events.paint.connect(self._on_stroke)
            self._watched = layer

    def _on_stroke(self, event) -> None:
        if self._applying or not self.window_check.isChecked():
            return
        # napari announces a click's edit before it writes it: trim once the stroke has landed
        atoms = list(event.value)
        QTimer.singleShot(0, lambda: self._trim_stroke(atoms))

    def _trim_stroke(self, atoms: list) -> None:
        layer, image = self._watched, self.image_picker.value
        if layer is None or image is None or np.shape(image.data) != layer.data.shape:
            self.window_check.setChecked(False)
            notify_error("paint within the window needs an image on the labels' grid (same shape); it is off")
            return
        changes = [_atom_changes(atom, layer.data.shape) for atom in atoms]
        if any(c is None for c in changes):
            return
        idx = tuple(np.concatenate([c[0][k] for c in changes]) for k in range(layer.ndim))
        old = np.concatenate([c[1] for c in changes])
        values = np.asarray(layer.data[idx])
        intensity = np.asarray(image.data[idx])
        low, high = float(self.window_low.value()), float(self.window_high.value())
        revert = (values != old) & ((intensity < low) | (intensity > high))
        if not revert.any():
            return
        self._applying = True
        try:
            layer.data_setitem(tuple(i[revert] for i in idx), old[revert])
            self._merge_last_two_steps(layer)
        finally:
            self._applying = False
        self.status.setText(f"paint within window: {int(revert.sum())} voxels outside [{low:g}, {high:g}] left as they were")

    @staticmethod
    def _merge_last_two_steps(layer: Labels) -> None:
        """Make the stroke and its trimming one undo step (napari keeps a list of atoms per step)."""
        history = getattr(layer, "_undo_history", None)
        if history is None or len(history) < 2:
            return
        last = history.pop()
        history.append(list(history.pop()) + list(last))

    # -- model hints: clicks and scribbles refined with the model's posteriors -------------------
    def _hint_controls(self) -> QGroupBox:
        self.hint_check = QCheckBox("hint mode: click = this label, Shift/Ctrl+click = not it, drag = scribble")
        self.hint_check.toggled.connect(self._hint_mode)
        self.hint_task = QComboBox()
        self.hint_task.addItems(["cardiac", "lesions"])
        self.hint_task.setToolTip("cardiac: the image is the cine of the labels; lesions: the image is the "
                                  "FLAIR, and the second channel the T1c")
        self.second_channel = layer_picker(self.viewer, Image, "T1c")
        self.hint_runner = TaskRunner("Compute posteriors")
        self.hint_runner.run_button.clicked.connect(lambda: self._ensure_posteriors())
        self.hint_posteriors: dict[tuple, tuple[np.ndarray, tuple]] = {}
        self._pending: list = []
        self._hinted: Labels | None = None
        box = QFormLayout()
        box.addRow(self.hint_check)
        box.addRow("model of", self.hint_task)
        box.addRow("lesions: 2nd channel", self.second_channel.native)
        box.addRow(self.hint_runner)
        group = QGroupBox("model hints (image: the cine, or the FLAIR)")
        group.setLayout(box)
        return group

    def _hint_mode(self, on: bool) -> None:
        if self._hinted is not None:
            if self._hint_drag in self._hinted.mouse_drag_callbacks:
                self._hinted.mouse_drag_callbacks.remove(self._hint_drag)
            self._hinted.mouse_pan = True
            self._hinted = None
        layer = self.labels_picker.value
        if on and isinstance(layer, Labels):
            layer.mode = "pan_zoom"
            layer.mouse_pan = False        # a drag draws a scribble instead of moving the camera
            layer.mouse_drag_callbacks.append(self._hint_drag)
            self._hinted = layer

    def _hint_source(self, layer: Labels) -> tuple[str, np.ndarray, tuple, tuple]:
        """(task, image of the shown frame or the session's channels, frame, cache key)."""
        image = self.image_picker.value
        if image is None:
            raise ValueError("choose the image the labels are of (the cine, or the FLAIR of a lesion session)")
        frame = self._frame(layer)
        if np.shape(image.data) != layer.data.shape:
            raise ValueError(f"the image '{image.name}' {np.shape(image.data)} and the labels "
                             f"{layer.data.shape} are not on one grid")
        if self.hint_task.currentText() == "lesions":
            second = self.second_channel.value
            if second is None or second is image:
                raise ValueError("a lesion session needs its second channel (T1c) besides the FLAIR")
            if np.shape(second.data) != layer.data.shape or layer.data.ndim != 3:
                raise ValueError(f"the second channel '{second.name}' {np.shape(second.data)} is not on the "
                                 f"labels' grid {layer.data.shape}")
            data = np.stack([np.asarray(image.data, np.float32), np.asarray(second.data, np.float32)])
            return "lesions", data, frame, (id(layer), id(image), id(second))
        return "cardiac", np.asarray(image.data[frame], np.float32), frame, (id(layer), id(image)) + frame

    def _ensure_posteriors(self) -> bool:
        """True when the shown frame's posteriors are cached; else start computing them."""
        try:
            layer = self._layer()
            task, image, _, key = self._hint_source(layer)
        except ValueError as e:
            notify_error(e)
            return False
        if key in self.hint_posteriors:
            return True
        if self.hint_runner.running:
            return False
        spacing = self._spacing(layer)
        model = (layer.metadata or {}).get("model") or None

        def steps():
            yield 0, 1, "model posteriors"
            return refine.posteriors(image, spacing, model=model, task=task)

        def done(value):
            self.hint_posteriors[key] = value
            pending, self._pending = self._pending, []
            for hint in pending:
                self.apply_hint(hint)

        self.hint_runner.start(steps(), done, "model posteriors (once per frame)", self.viewer, (layer,))
        return False

    def apply_hint(self, hint) -> int:
        """Refine the shown frame around one :class:`~napari_medlearn.methods.refine.Hint` (an index of
        the frame's volume) or scribble ``{label: mask of the frame}``; one undo step. Returns the
        number of voxels changed (0 on refusal or while the posteriors are being computed)."""
        try:
            layer = self._layer()
            task, image, frame, key = self._hint_source(layer)
        except ValueError as e:
            notify_error(e)
            return 0
        if key not in self.hint_posteriors:
            self._pending.append(hint)
            self._ensure_posteriors()
            self.status.setText("computing the model's posteriors of this frame once; the hint follows")
            return 0
        probs, values = self.hint_posteriors[key]
        before = np.asarray(layer.data[frame])
        try:
            result = refine.refine_labels(image, before, self._spacing(layer), [hint], probabilities=probs,
                                          label_values=values)
        except ValueError as e:
            self.status.setText("hint: not applied")
            notify_error(e)
            return 0
        n = self._write(layer, frame, before, result.labels)
        what = "scribble" if isinstance(hint, dict) else ("click" if hint.positive else "negative click")
        self.status.setText(f"{what}: {n} voxels changed (Ctrl+Z undoes it)")
        return n

    def _hint_drag(self, layer: Labels, event):
        """Mouse callback: a click gives a hint, a drag a scribble, on the slice shown."""
        if not self.hint_check.isChecked() or event.button != 1:
            return
        frame = self._frame(layer)
        points = [np.asarray(layer.world_to_data(event.position), float)]
        yield
        while event.type == "mouse_move":
            points.append(np.asarray(layer.world_to_data(event.position), float))
            yield
        label = int(layer.selected_label)
        negative = bool({"Shift", "Control"} & {str(getattr(m, "name", m)) for m in event.modifiers})
        ends = np.array(points)[:, -3:]
        if np.abs(ends - ends[0]).max() < 1.5:           # a click
            index = tuple(int(round(c)) for c in ends[-1])
            self.apply_hint(refine.Hint(index, label, not negative))
            return
        mask = np.zeros(layer.data.shape[len(frame):], bool)
        for a, b in zip(ends[:-1], ends[1:]):               # the path, voxel by voxel
            n = int(np.ceil(np.abs(b - a).max())) + 1
            for p in np.linspace(a, b, n):
                idx = tuple(int(round(c)) for c in p)
                if all(0 <= i < s for i, s in zip(idx, mask.shape)):
                    mask[idx] = True
        if mask.any():
            self.apply_hint({label: mask})
