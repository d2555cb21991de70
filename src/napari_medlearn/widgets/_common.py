"""What every method widget needs: layer, model and device pickers, a runner that drives a
method's steps generator in a ``thread_worker`` with a progress bar and Cancel, error
notifications, and a plot canvas in napari's colours.

Long work follows the stardist-napari pattern: ``methods.*_steps`` is a generator that yields
``(done, total, message)`` and returns the result; :class:`TaskRunner` runs it in a worker
thread and hands the result back on the GUI thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator

from magicgui.widgets import ComboBox
from napari.utils import progress
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:  # pragma: no cover
    import napari

DEVICES = ("auto", "cpu", "cuda", "mps")
LOAD_CHECKPOINT = "load checkpoint..."
#: errors that are the user's to fix (bad input, missing or broken model, unwritable file): shown
#: as a one-line notification. Anything else is a bug and reaches napari's traceback notification.
USER_ERRORS = (ValueError, OSError, InterruptedError)


def notify_error(error: BaseException | str) -> str:
    """Show ``error`` as a napari error notification; return the message shown. A file error is
    said as the CLI says it (:func:`napari_medlearn.imaging.atomic.error_message`: ``cannot write
    <file>: No space left on device``)."""
    from ..imaging.atomic import error_message

    if isinstance(error, BaseException):
        msg = error_message(error) if isinstance(error, OSError) else \
            str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
    else:
        msg = str(error)
    _LAST_ERROR[:] = [_LAST_ERROR[0] + 1, msg]
    show_error(msg)
    return msg


#: how many errors were notified, and the last one (a refused Run says it on its status line)
_LAST_ERROR: list = [0, ""]


def save_path(parent: QWidget, path, title: str, default: str, file_filter: str, suffixes: tuple[str, ...],
              overwrite: bool = False) -> Path | None:
    """Where to save: ``path``, or a file dialog's answer when None; ``suffixes[0]`` appended to a
    name without one of ``suffixes``. An existing file (after that) is replaced only if
    ``overwrite``, or if the user confirms it in the dialog case; otherwise None (nothing saved).
    The dialog's own overwrite question is off: it would ask about the name before the suffix."""
    ask = path is None
    if ask:
        path, _ = QFileDialog.getSaveFileName(parent, title, default, file_filter,
                                              options=QFileDialog.Option.DontConfirmOverwrite)
        if not path:
            return None
    path = Path(path)
    if not path.name.lower().endswith(suffixes):
        path = path.with_name(path.name + suffixes[0])
    if not overwrite and not may_replace(parent, [path], ask):
        return None
    return path


def may_replace(parent: QWidget, paths, ask: bool) -> bool:
    """True when none of ``paths`` exists, or the user says in a dialog (``ask``) to replace them;
    without ``ask`` existing files are never replaced (an error notification says so)."""
    from qtpy.QtWidgets import QMessageBox

    existing = [Path(p) for p in paths if Path(p).exists()]
    if not existing:
        return True
    names = " and ".join(p.name for p in existing)
    if not ask:
        notify_error(f"{names} already exists in {existing[0].parent}: not replaced")
        return False
    answer = QMessageBox.question(parent, "Replace files?", f"{names} already exists. Replace?",
                                  QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
    return answer == QMessageBox.Yes


def layer_picker(viewer: "napari.viewer.Viewer", layer_type: type, label: str = "image") -> ComboBox:
    """A magicgui combo box of the viewer's layers of ``layer_type``, kept in sync with the
    layer list (insertions, removals, moves and renames)."""

    def choices(_widget=None):
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, layer_type)]

    picker = ComboBox(label=label, choices=choices)

    def sync(event=None):
        picker.reset_choices()
        prefer_shown(picker)

    def watch(layer):
        layer.events.name.connect(sync)

    def on_inserted(event):
        watch(event.value)
        sync()

    for layer in viewer.layers:
        watch(layer)
    prefer_shown(picker)
    viewer.layers.events.inserted.connect(on_inserted)
    viewer.layers.events.removed.connect(sync)
    viewer.layers.events.moved.connect(sync)
    return picker


def _truth(layer) -> bool:
    return "truth" in layer.name.lower()


def prefer_shown(picker: ComboBox) -> None:
    """Move ``picker`` off a sample's truth (the answer key, not the work to review) onto the newest
    visible other layer, when there is one; any other choice stays (a hidden T1c is still the T1c)."""
    current = picker.value
    if current is None or not _truth(current):
        return
    shown = [c for c in picker.choices if not _truth(c) and c.visible]
    if shown:
        picker.value = shown[-1]


class ModelPicker(QComboBox):
    """Shipped zoo models for one task, then the user's checkpoints, then "load checkpoint...".

    :meth:`model` is what ``zoo.load`` takes: a zoo name or a checkpoint path (None when there
    is nothing to choose). The zoo is listed again each time the list opens, so weights that
    finished training while napari was running appear.
    """

    def __init__(self, task: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.task = task
        self._checkpoints: list[str] = []
        self._last = 0
        self.refresh()
        self.activated.connect(self._on_activated)

    def refresh(self) -> None:
        """List the zoo again, keeping the user's checkpoints and the current choice."""
        from .. import zoo

        current = self.model()
        self.blockSignals(True)
        self.clear()
        names = zoo.available(self.task)
        for name in names:
            self.addItem(name, name)
            self.setItemData(self.count() - 1, zoo.card(name).get("description", name), Qt.ToolTipRole)
        if not names:
            self.addItem("(no shipped model)", None)
        for path in self._checkpoints:
            self.addItem(Path(path).name, path)
            self.setItemData(self.count() - 1, path, Qt.ToolTipRole)
        self.addItem(LOAD_CHECKPOINT, LOAD_CHECKPOINT)
        if current is None and names:
            current = zoo.default_model(self.task)
        index = self.findData(current) if current is not None else 0
        self.setCurrentIndex(max(index, 0))
        self._last = self.currentIndex()
        self.blockSignals(False)

    def showPopup(self) -> None:  # noqa: N802 (Qt name)
        self.refresh()
        super().showPopup()

    def model(self) -> str | None:
        """The chosen zoo name or checkpoint path."""
        data = self.currentData()
        return None if data == LOAD_CHECKPOINT else data

    def add_checkpoint(self, path: str | Path) -> None:
        """Add a checkpoint file to the list and choose it."""
        path = str(path)
        if path not in self._checkpoints:
            self._checkpoints.append(path)
        self.refresh()
        self.setCurrentIndex(self.findData(path))
        self._last = self.currentIndex()

    def _on_activated(self, index: int) -> None:
        if self.itemData(index) != LOAD_CHECKPOINT:
            self._last = index
            return
        path, _ = QFileDialog.getOpenFileName(
            self, "Load a checkpoint", "", "PyTorch checkpoint (*.pt *.pth);;All files (*)")
        if path:
            self.add_checkpoint(path)
        else:
            self.setCurrentIndex(self._last)


def device_picker(parent: QWidget | None = None) -> QComboBox:
    """``auto`` (CUDA, then Apple MPS, then CPU), ``cpu``, ``cuda`` or ``mps``."""
    combo = QComboBox(parent)
    combo.addItems(DEVICES)
    combo.setToolTip("where the model runs; auto picks CUDA, then Apple MPS, then the CPU")
    return combo


def backend_picker(parent: QWidget | None = None) -> QComboBox:
    """What runs the network (:mod:`napari_medlearn.inference`): ``auto``, ``torch`` or ``onnx``;
    ``onnx`` is greyed out, with what to install, when the CPU runtime is missing."""
    from ..inference import BACKENDS, INSTALL, RUNTIME, runtime_installed

    combo = QComboBox(parent)
    combo.addItems(BACKENDS)
    combo.setToolTip(f"what runs the network: auto ({RUNTIME} on the CPU, torch on CUDA/MPS), torch, "
                     f"or onnx (the model's ONNX export under {RUNTIME})")
    if not runtime_installed():
        item = combo.model().item(BACKENDS.index("onnx"))
        item.setEnabled(False)
        item.setToolTip(f"{RUNTIME} is not installed: {INSTALL}")
    return combo


class _Failed:
    """What the worker returns when the method raised a user error."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _guarded(steps: Generator) -> Generator:
    """Drive ``steps``; user errors come back as a value, so they are shown once, plainly."""
    try:
        return (yield from steps)
    except USER_ERRORS as exc:
        return _Failed(exc)


class TaskRunner(QWidget):
    """Run and Cancel buttons, a progress bar and a status line for one steps generator.

    The owner connects ``run_button.clicked`` to its own run method, which calls
    :meth:`start` with a generator built with ``cancelled=runner.cancel_requested``.
    """

    def __init__(self, run_text: str = "Run", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton("Cancel")
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.worker = None
        self._cancel = False
        self._pbar = None
        self._on_result: Callable[[Any], None] = lambda value: None
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        self.cancel_button.clicked.connect(self.cancel)
        # connected before the owner's run: the status line never keeps the previous run's message
        self.run_button.clicked.connect(self._on_run_clicked)
        self._set_running(False)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def cancel_requested(self) -> bool:
        """True once Cancel was pressed (read by the method between batches)."""
        worker = self.worker
        return self._cancel or (worker is not None and worker.abort_requested)

    def start(self, steps: Generator, on_result: Callable[[Any], None], description: str = "",
              viewer=None, inputs: tuple = ()) -> Any:
        """Run ``steps`` in a worker thread; ``on_result(value)`` on the GUI thread when it returns.

        Yields update the progress bar; a user error (``ValueError``, ``OSError``) becomes an
        error notification; after Cancel the result is dropped. So it is when one of the
        ``inputs`` layers has left ``viewer`` meanwhile (nothing to lay the result over), and
        when the dock widget is closed (the run is cancelled). Returns the worker.
        """
        from napari.qt.threading import create_worker

        if self.running:
            raise RuntimeError("a run is already in progress")
        self._cancel = False
        self._inputs = (viewer, tuple(inputs))
        self._was_docked = self._docked()
        worker = create_worker(_guarded, steps)
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._on_result = on_result
        self._pbar = progress(total=0, desc=description or "running")
        self.progress_bar.setRange(0, 0)  # busy until the first yield says how much there is
        self.progress_bar.setFormat(description)
        self.status.setText(description or "running...")
        self._set_running(True)
        worker.start()
        return worker

    def _on_run_clicked(self) -> None:
        from qtpy.QtCore import QTimer

        if self.running:
            return
        self.status.setText("")
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("")
        mark = _LAST_ERROR[0]

        def said_why() -> None:      # after the owner's run: a refusal is said here too
            if not self.running and not self.status.text() and _LAST_ERROR[0] != mark:
                self.status.setText(f"not run: {_LAST_ERROR[1]}")
        QTimer.singleShot(0, said_why)

    def _docked(self) -> bool:
        """In a napari window (closing a dock takes its widget out of the window, alive)."""
        from qtpy.QtWidgets import QMainWindow

        return isinstance(self.window(), QMainWindow)

    def _closed(self) -> bool:
        return bool(getattr(self, "_was_docked", False)) and not self._docked()

    def _gone_inputs(self) -> list[str]:
        viewer, layers = getattr(self, "_inputs", (None, ()))
        return [] if viewer is None else [layer.name for layer in layers
                                          if layer is not None and layer not in viewer.layers]

    def cancel(self) -> None:
        """Ask the running method to stop; the result, if one still arrives, is dropped."""
        if self.worker is None:
            return
        self._cancel = True
        self.status.setText("cancelling...")
        self.worker.quit()

    # ----- worker signals (GUI thread) ----------------------------------------------------
    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_yielded(self, step) -> None:
        if self._closed() and not self._cancel:     # the dock was closed: nobody waits for this
            self.cancel()
        done, total, message = step
        self.progress_bar.setRange(0, max(int(total), 1))
        self.progress_bar.setValue(int(done))
        self.progress_bar.setFormat(f"{message}  %p%")
        pbar = self._pbar  # updating it may process queued signals, "finished" among them
        if pbar is not None:
            pbar.total = int(total)
            pbar.set_description(message)
            pbar.update(int(done) - pbar.n)

    def _on_returned(self, value: Any) -> None:
        if isinstance(value, _Failed):
            if self._cancel and isinstance(value.error, InterruptedError):
                self.status.setText("cancelled")
            else:
                self.status.setText(f"failed: {notify_error(value.error)}")
            return
        if self._cancel or self._closed():
            self.status.setText("cancelled")
            return
        gone = self._gone_inputs()
        if gone:
            msg = notify_error(f"the input layer {gone[0]!r} was removed while it ran: the result is not added")
            self.status.setText(f"failed: {msg}")
            return
        try:
            self._on_result(value)
        except USER_ERRORS as exc:
            self.status.setText(f"failed: {notify_error(exc)}")
            return
        self.status.setText("done")

    def _on_errored(self, exc: BaseException) -> None:
        # napari's worker already shows the traceback notification for unexpected errors
        self.status.setText(f"failed: {type(exc).__name__}: {exc}")

    def _on_aborted(self) -> None:
        self.status.setText("cancelled")

    def _on_finished(self) -> None:
        self.worker = None
        if self._cancel:
            # a method that stops itself on `cancelled` returns while the worker is aborting,
            # and superqt then emits neither `returned` nor `aborted`
            self.status.setText("cancelled")
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if self.status.text() != "done":
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0)
            self.progress_bar.setFormat("")
        self._set_running(False)


def themed_canvas(viewer: "napari.viewer.Viewer", width: float = 4.0, height: float = 2.6):
    """A matplotlib ``FigureCanvasQTAgg`` (one axes at ``canvas.axes``) in the viewer's theme."""
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    try:
        from napari.utils.theme import get_theme

        theme = get_theme(viewer.theme if viewer.theme != "system" else "dark")
        bg, fg, grid = theme.background.as_hex(), theme.text.as_hex(), theme.primary.as_hex()
    except Exception:  # noqa: BLE001  (a theme we cannot read: fall back to napari's dark)
        bg, fg, grid = "#23242b", "#f0f1f2", "#424a54"
    fig = Figure(figsize=(width, height), facecolor=bg, layout="constrained")
    ax = fig.add_subplot()
    ax.set_facecolor(bg)
    for spine in ax.spines.values():
        spine.set_color(grid)
    ax.tick_params(colors=fg, labelsize=8)
    ax.xaxis.label.set_color(fg)
    ax.yaxis.label.set_color(fg)
    ax.title.set_color(fg)
    canvas = FigureCanvasQTAgg(fig)
    canvas.axes = ax
    canvas.text_color = fg
    return canvas
