"""Standard-plane detection dock widget: a 2D ultrasound video in, per-frame plane scores out.

Runs :func:`napari_medlearn.methods.planes.detect_planes_steps` (SonoNet, Baumgartner et al.,
IEEE TMI 2017) on a video layer ``(t, y, x)`` (or ``(t, y, x, 3)`` RGB) in a worker thread and
shows: the class posteriors of every frame plotted against time, with a line that follows the
viewer's time slider (click the plot to move the slider); a checklist of the standard planes
found with their best frame (click one to go there); the saliency as a heat-map layer over the
video, ``"<video> [SonoNet saliency]"``; and the localisation boxes as a Shapes layer of
rectangles in ``(t, y, x)``, ``"<video> [SonoNet boxes]"``, so each shows on its own frame. A
live mode classifies the frame under the slider with
:func:`~napari_medlearn.methods.planes.classify_frame` in a worker thread (the newest frame wins
when the slider moves faster than the model). The video layer is never modified.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..methods.planes import TASK, classify_frame, detect_planes_steps, model_spec, resolve_model
from ._common import USER_ERRORS, ModelPicker, TaskRunner, device_picker, layer_picker, notify_error, themed_canvas
from ._fit import FitWatch

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..methods.planes import PlaneResult

#: quiet time (ms) after the slider moves before the live classification starts
LIVE_DEBOUNCE_MS = 60
#: a class gets a curve in the score plot when its posterior reaches this somewhere
PLOT_MIN_SCORE = 0.2
BACKGROUND = "Background"


def _class_colours(names) -> dict[str, str]:
    """A fixed colour per class name (tab20 in the class order; Background grey)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["tab20"]
    out, i = {}, 0
    for name in names:
        if name == BACKGROUND:
            out[name] = "#9a9a9a"
            continue
        out[name] = to_hex(cmap((2 * i) % 20 + (i // 10)))
        i += 1
    return out


def _swatch(colour: str, size: int = 12) -> QIcon:
    pix = QPixmap(size, size)
    pix.fill(QColor(colour))
    return QIcon(pix)


class PlanesWidget(QWidget):
    """Detect fetal standard planes in a 2D ultrasound video with SonoNet.

    Parameters
    ----------
    napari_viewer
        The viewer whose image layers are offered and where the results go.
    """

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.result: "PlaneResult | None" = None
        self.source = None                  # the video layer of the last result
        self.saliency_layer = None
        self.boxes_layer = None
        self._live_worker = None
        self._live_pending: int | None = None
        self._live_net = None
        self._live_key: tuple | None = None
        self.live_result: tuple[int, str, float] | None = None   # frame, class, posterior

        self.video_picker = layer_picker(napari_viewer, Image, "video")
        self.model_picker = ModelPicker(TASK)
        self.device_picker = device_picker()
        self.saliency_check = QCheckBox("saliency heat map and boxes")
        self.saliency_check.setChecked(True)
        self.saliency_check.setToolTip("guided back-propagation x category map (2-3x slower than classifying)")
        self.runner = TaskRunner("Detect planes")
        self.runner.run_button.clicked.connect(self.run)
        self.fit = FitWatch(self.video_picker, self.model_picker)

        self.canvas = themed_canvas(napari_viewer, height=2.4)
        self.canvas.setMinimumHeight(180)
        self.canvas.setToolTip("class posteriors per frame; click to move the time slider")
        self._init_plot()
        self.frame_label = QLabel("")
        self.canvas.mpl_connect("button_press_event", self._on_plot_click)

        self.checklist = QListWidget()
        self.checklist.setToolTip("standard planes found, with their best frame: click to go there")
        self.checklist.itemClicked.connect(self._on_item_clicked)
        self.checklist.setMinimumHeight(120)

        self.live_check = QCheckBox("live: classify the frame under the slider")
        self.live_check.toggled.connect(self._on_live_toggled)
        self.live_label = QLabel("")
        self.live_label.setWordWrap(True)
        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.timeout.connect(self.classify_current_frame)

        form = QFormLayout()
        form.addRow("video", self.video_picker.native)
        form.addRow("model", self.model_picker)
        form.addRow("device", self.device_picker)
        form.addRow("", self.saliency_check)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.fit.label)
        layout.addWidget(self.runner)
        layout.addWidget(self.canvas)
        layout.addWidget(self.frame_label)
        layout.addWidget(QLabel("Standard planes (best frame):"))
        layout.addWidget(self.checklist)
        layout.addWidget(self.live_check)
        layout.addWidget(self.live_label)
        layout.addStretch(1)
        self.setMinimumWidth(320)

        napari_viewer.dims.events.current_step.connect(self._on_step)
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)
        self.video_picker.changed.connect(lambda *_: self._on_step())

    # ----- the video and its time axis ------------------------------------------------------
    @staticmethod
    def _video_array(layer) -> np.ndarray:
        """The layer's frames as an array ``(t, y, x)`` / ``(t, y, x, 3|4)``, refusing others."""
        data = np.asarray(layer.data)
        spatial = data.ndim - (1 if layer.rgb else 0)
        if spatial == 2:
            return data[None]            # one frame: a one-frame video
        if spatial != 3:
            raise ValueError(f"'{layer.name}' is {spatial}-D; plane detection needs a 2D video (t, y, x)")
        return data

    def _time_axis(self, layer) -> int | None:
        """The viewer dimension that runs through ``layer``'s frames (None for a single frame)."""
        spatial = layer.ndim
        if spatial < 3:
            return None
        return self.viewer.dims.ndim - spatial

    def current_frame(self, layer=None) -> int | None:
        """The frame of ``layer`` (default: the chosen video) under the time slider."""
        layer = layer if layer is not None else self.video_picker.value
        if layer is None:
            return None
        axis = self._time_axis(layer)
        if axis is None:
            return 0
        coords = layer.world_to_data(self.viewer.dims.point[-layer.ndim:])
        n = layer.data.shape[0]
        return int(np.clip(np.round(coords[0]), 0, n - 1))

    def go_to_frame(self, frame: int, layer=None) -> None:
        """Move the viewer's time slider to ``frame`` of ``layer`` (default: the last result's video)."""
        layer = layer if layer is not None else (self.source or self.video_picker.value)
        if layer is None:
            return
        axis = self._time_axis(layer)
        if axis is None:
            return
        frame = int(np.clip(frame, 0, layer.data.shape[0] - 1))
        point = np.zeros(layer.ndim)
        point[0] = frame
        world = layer.data_to_world(point)
        self.viewer.dims.set_point(axis, float(world[0]))

    # ----- running --------------------------------------------------------------------------
    def run(self):
        """Detect planes in the chosen video in a worker thread; returns the worker (or None)."""
        if self.running:
            return None
        layer = self.video_picker.value
        if layer is None:
            notify_error("no video layer: open a 2D ultrasound video (t, y, x) first")
            return None
        model = self.model_picker.model()
        if model is None:
            notify_error("no standard-plane model: import the official SonoNet weights "
                         "(medlearn import-weights sononet-16 SonoNet16.npz) or choose 'load checkpoint...'")
            return None
        try:
            video = self._video_array(layer)
        except ValueError as exc:
            notify_error(exc)
            return None
        steps = detect_planes_steps(video, model, saliency=self.saliency_check.isChecked(),
                                    device=self.device_picker.currentText(),
                                    cancelled=self.runner.cancel_requested)
        return self.runner.start(steps, lambda result: self.show_result(result, layer),
                                 description=f"detecting planes in {layer.name}", viewer=self.viewer,
                                 inputs=(layer,))

    def cancel(self) -> None:
        """Stop the running detection; nothing is added."""
        self.runner.cancel()

    @property
    def running(self) -> bool:
        return self.runner.running

    # ----- results --------------------------------------------------------------------------
    def show_result(self, result: "PlaneResult", source) -> None:
        """Plot, list, and add the saliency and box layers over ``source``."""
        self.result, self.source = result, source
        self._remove_outputs()
        single = self._time_axis(source) is None
        geometry = {"scale": source.scale, "translate": source.translate, "rotate": source.rotate,
                    "shear": source.shear, "affine": source.affine}
        meta = {"model": result.model, "model_sha256": result.model_sha256, "source": source.name}
        if result.saliency is not None:
            sal = result.saliency[0] if single else result.saliency
            self.saliency_layer = self.viewer.add_image(
                np.ascontiguousarray(sal, dtype=np.float32), name=f"{source.name} [SonoNet saliency]",
                colormap="inferno", contrast_limits=(0.0, 1.0), blending="additive", opacity=0.6,
                metadata=copy.deepcopy(meta), **geometry)
        self._add_boxes(result, source, single, geometry, meta)
        self._plot_scores()
        self._fill_checklist()
        self.viewer.layers.selection.active = source    # keep the user on the video
        self._on_step()

    def _add_boxes(self, result, source, single, geometry, meta) -> None:
        rects, names, scores = [], [], []
        for t, box in enumerate(result.boxes):
            if not np.all(np.isfinite(box)):
                continue
            y0, x0, y1, x1 = (float(v) - 0.5 for v in box)    # pixel edges around pixel centres
            corners = [[y0, x0], [y0, x1], [y1, x1], [y1, x0]]
            rects.append(np.array(corners) if single else np.array([[t, y, x] for y, x in corners]))
            k = int(result.predicted[t])
            names.append(result.class_names[k])
            scores.append(float(result.probabilities[t, k]))
        if not rects:
            return
        colours = _class_colours(result.class_names)
        self.boxes_layer = self.viewer.add_shapes(
            rects, shape_type="rectangle", name=f"{source.name} [SonoNet boxes]", edge_width=2,
            edge_color=[colours[n] for n in names], face_color="transparent",
            features={"plane": names, "score": scores},
            text={"string": "{plane} {score:.2f}", "color": "white", "size": 9, "anchor": "upper_left"},
            metadata=copy.deepcopy(meta), **{k: v for k, v in geometry.items() if k in ("scale", "translate")})

    def _remove_outputs(self) -> None:
        for layer in (self.saliency_layer, self.boxes_layer):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.saliency_layer = self.boxes_layer = None

    # ----- score plot ------------------------------------------------------------------------
    def _init_plot(self) -> None:
        from matplotlib.ticker import MaxNLocator

        ax = self.canvas.axes
        ax.set_xlabel("frame", fontsize=8)
        ax.set_ylabel("posterior", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_xlim(0, 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        self.time_line = ax.axvline(0, color=self.canvas.text_color, lw=1.0, visible=False)
        self.score_lines: dict[str, Any] = {}

    def _plot_scores(self) -> None:
        ax = self.canvas.axes
        for line in self.score_lines.values():
            line.remove()
        self.score_lines = {}
        legend = ax.get_legend()
        if legend is not None:
            legend.remove()
        res = self.result
        t = np.arange(res.frames)
        colours = _class_colours(res.class_names)
        shown = set(res.predicted_names)
        for k, name in enumerate(res.class_names):
            if name in shown or res.probabilities[:, k].max() >= PLOT_MIN_SCORE:
                bg = name == BACKGROUND
                (line,) = ax.plot(t, res.probabilities[:, k], color=colours[name], lw=0.8 if bg else 1.4,
                                  ls="--" if bg else "-", label=name, marker="." if res.frames < 3 else None)
                self.score_lines[name] = line
        ax.set_xlim(-0.5, max(res.frames - 0.5, 0.5))
        if self.score_lines:
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False,
                      labelcolor=self.canvas.text_color)
        self.canvas.draw_idle()

    def _on_plot_click(self, event) -> None:
        if event.inaxes is not self.canvas.axes or event.xdata is None or self.result is None:
            return
        self.go_to_frame(int(round(event.xdata)))

    # ----- checklist ------------------------------------------------------------------------
    def _fill_checklist(self) -> None:
        self.checklist.clear()
        res = self.result
        colours = _class_colours(res.class_names)
        for k, name in enumerate(res.class_names):
            if name == BACKGROUND:
                continue
            frame = res.best_frames.get(name)
            if frame is None:
                item = QListWidgetItem(f"{name}: not found")
                item.setCheckState(Qt.Unchecked)
                item.setForeground(QColor("#8a8a8a"))
            else:
                item = QListWidgetItem(f"{name}: frame {frame} ({res.probabilities[frame, k]:.2f})")
                item.setCheckState(Qt.Checked)
                # the class colour (as in the score plot and the boxes) as a swatch; the text keeps
                # the theme's colour so it stays readable on dark and light themes
                item.setIcon(_swatch(colours[name]))
            item.setFlags(Qt.ItemIsEnabled | Qt.ItemIsSelectable)   # shows the check, not editable
            item.setData(Qt.UserRole, frame)
            item.setData(Qt.UserRole + 1, name)
            self.checklist.addItem(item)
        # found planes first, in the order met in the video
        found = sorted(res.best_frames.items(), key=lambda kv: kv[1])
        for row, (name, _) in enumerate(found):
            for i in range(self.checklist.count()):
                if self.checklist.item(i).data(Qt.UserRole + 1) == name:
                    self.checklist.insertItem(row, self.checklist.takeItem(i))
                    break

    def found_planes(self) -> dict[str, int]:
        """class name -> best frame, as listed (checked items)."""
        out = {}
        for i in range(self.checklist.count()):
            item = self.checklist.item(i)
            if item.checkState() == Qt.Checked:
                out[item.data(Qt.UserRole + 1)] = int(item.data(Qt.UserRole))
        return out

    def _on_item_clicked(self, item: QListWidgetItem) -> None:
        frame = item.data(Qt.UserRole)
        if frame is not None:
            self.go_to_frame(int(frame))

    # ----- time slider ----------------------------------------------------------------------
    def _on_step(self, event=None) -> None:
        layer = self.source if self.result is not None else None
        if layer is not None and layer in self.viewer.layers:
            frame = self.current_frame(layer)
            self.time_line.set_xdata([frame, frame])
            self.time_line.set_visible(True)
            self.canvas.draw_idle()
            res = self.result
            k = int(res.predicted[frame])
            self.frame_label.setText(f"frame {frame}: {res.class_names[k]} ({res.probabilities[frame, k]:.2f})")
        if self.live_check.isChecked():
            self._live_timer.start(LIVE_DEBOUNCE_MS)

    # ----- live mode --------------------------------------------------------------------------
    def _on_live_toggled(self, on: bool) -> None:
        if on:
            self.classify_current_frame()
        else:
            self._live_timer.stop()
            self._live_pending = None
            self.live_label.setText("")

    def classify_current_frame(self):
        """Classify the frame under the slider in a worker (queued if one is running)."""
        layer = self.video_picker.value
        if layer is None:
            self.live_label.setText("live: no video layer")
            return None
        frame = self.current_frame(layer)
        if self._live_worker is not None:
            self._live_pending = frame        # the newest frame wins
            return None
        model, device = self.model_picker.model(), self.device_picker.currentText()
        if model is None:
            self.live_label.setText("live: no model")
            return None
        try:
            video = self._video_array(layer)
        except ValueError as exc:
            self.live_label.setText(f"live: {exc}")
            return None
        image = np.asarray(video[frame])
        key = (model, device)
        net = self._live_net if self._live_key == key else None

        def work():
            nonlocal net
            try:   # user errors come back as a value: one plain notification, no traceback
                if net is None:
                    net = resolve_model(model, device=device)
                probs, _, _ = classify_frame(image, model=net, saliency=False)
            except USER_ERRORS as exc:
                return exc
            return net, probs

        from napari.qt.threading import create_worker

        worker = create_worker(work)
        worker.returned.connect(lambda value, f=frame, k=key: self._on_live_returned(f, k, value))
        worker.errored.connect(self._on_live_error)
        worker.finished.connect(self._on_live_finished)
        self._live_worker = worker
        self.live_label.setText(f"live: classifying frame {frame}...")
        worker.start()
        return worker

    def _on_live_returned(self, frame: int, key: tuple, value) -> None:
        if isinstance(value, BaseException):
            self._on_live_error(value)
            return
        net, probs = value
        self._live_net, self._live_key = net, key
        names, _ = model_spec(net)
        k = int(np.argmax(probs))
        self.live_result = (frame, names[k], float(probs[k]))
        order = np.argsort(probs)[::-1][:3]
        others = ", ".join(f"{names[i]} {probs[i]:.2f}" for i in order[1:])
        self.live_label.setText(f"live, frame {frame}: <b>{names[k]}</b> {probs[k]:.2f}  ({others})")

    def _on_live_error(self, exc: BaseException) -> None:
        if isinstance(exc, USER_ERRORS):
            self.live_label.setText(f"live: {notify_error(exc)}")
        else:
            self.live_label.setText(f"live failed: {type(exc).__name__}: {exc}")
        self._live_pending = None
        self.live_check.setChecked(False)

    def _on_live_finished(self) -> None:
        self._live_worker = None
        if self._live_pending is not None and self.live_check.isChecked():
            self._live_pending = None
            self.classify_current_frame()

    # ----- bookkeeping ------------------------------------------------------------------------
    def _on_layer_removed(self, event) -> None:
        if event.value is self.saliency_layer:
            self.saliency_layer = None
        if event.value is self.boxes_layer:
            self.boxes_layer = None
        if event.value is self.source:
            self.source = None
            self.frame_label.setText("")
            self.time_line.set_visible(False)
            self.canvas.draw_idle()
