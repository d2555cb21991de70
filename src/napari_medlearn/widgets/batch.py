"""Cohort dock widget: one job over a folder of cases or a CSV manifest, then case-by-case review.

Runs :func:`napari_medlearn.batch.run_batch_steps` (what ``medlearn batch`` runs) in a worker
thread: each case's outputs go to ``<output folder>/<case>/`` and ``cohort.csv``; cases done
before with unchanged inputs are skipped, so a cancelled or interrupted cohort resumes. The
table lists every case with its status, its main figures and any error; **Open case** (or a
double click) adds the case's input and outputs as layers with the input's geometry (labels as
editable Labels layers) for review. For cardiac and lesion cases a brush stroke on the opened
labels measures the case again in the table ("edited"); **Save correction** keeps the corrected
labels beside the model's (``labels_corrected.nii.gz``) and the new figures in ``case.json`` and
``cohort.csv`` (:func:`napari_medlearn.batch.record_correction`). The cohort's own files are never
modified.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..batch import (
    CASE_FILE,
    CORRECTABLE,
    CORRECTED_FILE,
    JOBS,
    case_folder,
    corrected_row,
    find_cases,
    record_correction,
    record_review,
    run_batch_steps,
)
from ..imaging import structures
from ._common import USER_ERRORS, ModelPicker, TaskRunner, device_picker, notify_error

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..batch import BatchResult


def _task_of(job: str) -> str:
    from ..methods import acnn, cardiac, lesions, planes, recon, sr

    return {"segment-heart": cardiac.TASK, "reconstruct": recon.TASK_2D, "segment-lesions": lesions.TASK,
            "detect-planes": planes.TASK, "super-resolve": sr.TASK_SINGLE, "correct-mask": acnn.TASK}[job]


#: the figures shown in the table for each job (all of them are in cohort.csv)
KEY_COLUMNS = {
    "segment-heart": ("LVEDV_mL", "LVESV_mL", "LVEF_pct", "LVM_g", "RVEDV_mL", "RVEF_pct", "qc"),
    "segment-lesions": ("whole_tumour_mL", "oedema_mL", "enhancing_mL", "necrotic_core_mL"),
    "reconstruct": ("acceleration", "zero_filled_PSNR_dB", "PSNR_dB", "SSIM"),
    "detect-planes": ("frames", "planes_found"),
    "super-resolve": ("shape", "spacing_mm"),
    "correct-mask": ("plausibility_before", "plausibility_after", "voxels_changed"),
}
#: a case's output files shown by Open case: (file, layer type)
#: the structures in each job's label maps (imaging.structures)
JOB_STRUCTURES = {"segment-heart": "cardiac", "segment-lesions": "brats", "correct-mask": "cardiac"}
CASE_LAYERS = {
    "segment-heart": (("labels.nii.gz", "labels"),),
    "segment-lesions": (("uncertainty.nii.gz", "image"), ("labels.nii.gz", "labels")),
    "reconstruct": (("zero_filled.nii.gz", "image"), ("reconstruction.nii.gz", "image")),
    "detect-planes": (("saliency.nii.gz", "image"),),
    "super-resolve": (("super_resolved.nii.gz", "image"),),
    "correct-mask": (("corrected.nii.gz", "labels"),),
}


def _unit(column: str) -> str:
    """``LVEDV_mL`` -> ``LVEDV (mL)``, as tables show measure names."""
    for suffix, unit in (("_mL", "mL"), ("_pct", "%"), ("_g", "g"), ("_dB", "dB"), ("_mm", "mm")):
        if column.endswith(suffix):
            return f"{column[: -len(suffix)]} ({unit})"
    return column.replace("_", " ")


class BatchWidget(QWidget):
    """Run a job over a cohort and review its cases one by one."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer") -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.result: "BatchResult | None" = None
        self.job_picker = QComboBox()
        self.job_picker.addItems(list(JOBS))
        self.cohort_edit = QLineEdit()
        self.cohort_edit.setPlaceholderText("a folder of cases, or a CSV manifest")
        self.folder_button = QPushButton("Folder...")
        self.manifest_button = QPushButton("Manifest...")
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("output folder (one sub-folder per case)")
        self.out_button = QPushButton("...")
        self.model_picker = ModelPicker(_task_of(JOBS[0]))
        self.device_picker = device_picker()
        self.find_button = QPushButton("Find cases")
        self.runner = TaskRunner("Run cohort")
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.table = QTableWidget(0, 3)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        self.table.setSelectionMode(QTableWidget.SingleSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.open_button = QPushButton("Open case")
        self.save_button = QPushButton("Save correction")
        self.save_button.setEnabled(False)
        self.review: dict[str, Any] | None = None      # the opened case whose labels are followed
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.timeout.connect(self.remeasure)

        cohort_row = QHBoxLayout()
        cohort_row.addWidget(self.cohort_edit)
        cohort_row.addWidget(self.folder_button)
        cohort_row.addWidget(self.manifest_button)
        out_row = QHBoxLayout()
        out_row.addWidget(self.out_edit)
        out_row.addWidget(self.out_button)
        form = QFormLayout()
        form.addRow("job", self.job_picker)
        form.addRow("cohort", cohort_row)
        form.addRow("output", out_row)
        form.addRow("model", self.model_picker)
        form.addRow("device", self.device_picker)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.find_button)
        layout.addWidget(self.runner)
        layout.addWidget(self.summary)
        layout.addWidget(self.table)
        open_row = QHBoxLayout()
        open_row.addWidget(self.open_button)
        open_row.addWidget(self.save_button)
        layout.addLayout(open_row)
        self.reason_edit = QLineEdit()
        self.reason_edit.setPlaceholderText("reason (required to flag)")
        review_row = QHBoxLayout()
        self.review_buttons = {}
        for status, text in (("approved", "Approve"), ("needs edit", "Needs edit"), ("flagged", "Flag")):
            button = QPushButton(text)
            button.clicked.connect(lambda _c=False, s=status: self.review_case(s))
            review_row.addWidget(button)
            self.review_buttons[status] = button
        self.next_button = QPushButton("Next unreviewed")
        self.next_button.clicked.connect(lambda: self.next_unreviewed())
        review_row.addWidget(self.next_button)
        layout.addWidget(self.reason_edit)
        layout.addLayout(review_row)

        self.job_picker.currentTextChanged.connect(self._on_job_changed)
        self.folder_button.clicked.connect(self._choose_folder)
        self.manifest_button.clicked.connect(self._choose_manifest)
        self.out_button.clicked.connect(self._choose_out)
        self.find_button.clicked.connect(self.find)
        self.runner.run_button.clicked.connect(self.run)
        self.open_button.clicked.connect(lambda: self.open_case())
        self.save_button.clicked.connect(self.save_correction)
        self.table.cellDoubleClicked.connect(lambda row, _col: self.open_case(row))
        self.viewer.layers.events.removed.connect(self._on_layer_removed)

    # ----- inputs -------------------------------------------------------------------------
    @property
    def job(self) -> str:
        return self.job_picker.currentText()

    def _on_job_changed(self, job: str) -> None:
        picker = ModelPicker(_task_of(job))
        form = self.layout().itemAt(0).layout()
        form.replaceWidget(self.model_picker, picker)
        self.model_picker.deleteLater()
        self.model_picker = picker
        self.table.setRowCount(0)
        self.summary.setText("")

    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Cohort folder")
        if path:
            self.cohort_edit.setText(path)

    def _choose_manifest(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Cohort manifest", "", "CSV (*.csv)")
        if path:
            self.cohort_edit.setText(path)

    def _choose_out(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Output folder")
        if path:
            self.out_edit.setText(path)

    def _cohort(self) -> Path:
        text = self.cohort_edit.text().strip()
        if not text:
            raise ValueError("no cohort: choose a folder of cases or a CSV manifest")
        return Path(text)

    def _out(self) -> Path:
        text = self.out_edit.text().strip()
        if not text:
            raise ValueError("no output folder: choose where the cases' results go")
        out = Path(text)
        cohort = self._cohort()
        if out.resolve() == cohort.resolve() or (cohort.is_dir() and cohort.resolve() in out.resolve().parents):
            raise ValueError(f"the output folder {out} is inside the cohort {cohort}: choose another one, the "
                             "cohort's files are never written to")
        return out

    # ----- running ------------------------------------------------------------------------
    def find(self) -> list:
        """List the cohort's cases in the table (status "to do", or why a case is unusable)."""
        try:
            cases = find_cases(self.job, self._cohort())
        except USER_ERRORS as exc:
            notify_error(exc)
            return []
        self._show_found(cases)
        return cases

    def _show_found(self, cases: list) -> None:
        rows = [{"case": c.name, "status": "unusable" if hasattr(c, "error") else "to do",
                 "error": getattr(c, "error", "")} for c in cases]
        self._fill(rows)
        unusable = sum(r["status"] == "unusable" for r in rows)
        self.summary.setText(f"{len(rows)} cases found" + (f", {unusable} unusable" if unusable else ""))

    def run(self):
        """Run the cohort in a worker thread; returns the worker (None when the input is unusable)."""
        try:
            cohort, out = self._cohort(), self._out()
            cases = find_cases(self.job, cohort)
        except USER_ERRORS as exc:
            notify_error(exc)
            return None
        self._show_found(cases)
        self.result = None
        steps = run_batch_steps(self.job, cases, out, model=self.model_picker.model(),
                                device=self.device_picker.currentText(), cancelled=self.runner.cancel_requested)
        return self.runner.start(steps, self.show_result, description=f"{self.job} on {cohort.name}")

    @property
    def running(self) -> bool:
        return self.runner.running

    def cancel(self) -> None:
        self.runner.cancel()

    # ----- results ------------------------------------------------------------------------
    def show_result(self, result: "BatchResult") -> None:
        self.result = result
        rows = [{"case": o.case, "status": o.status, **dict(o.row), "error": o.error} for o in result.outcomes]
        self._fill(rows)
        self.summary.setText(f"{len(rows)} cases: {result.count('done')} done, {result.count('skipped')} done "
                             f"before, {result.count('failed')} failed; table {result.table}")

    def _columns(self) -> list[str]:
        """The table's columns, as cohort.csv names."""
        return ["case", "status", *KEY_COLUMNS[self.job], "review_status", "error"]

    def _fill(self, rows: list[dict[str, Any]]) -> None:
        columns = self._columns()
        self.table.setColumnCount(len(columns))
        self.table.setHorizontalHeaderLabels([_unit(c) for c in columns])
        self.table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, c in enumerate(columns):
                value = row.get(c, "")
                text = f"{value:.1f}" if isinstance(value, float) else str("" if value is None else value)
                item = QTableWidgetItem(text)
                if c == "error" and text:
                    item.setToolTip(text)
                self.table.setItem(i, j, item)

    def _row_of(self, case: str) -> int:
        for i in range(self.table.rowCount()):
            if self.table.item(i, 0).text() == case:
                return i
        raise KeyError(case)

    def cell(self, case: str, column: str) -> str:
        """The table's text for ``case`` in ``column`` (a cohort.csv name, e.g. ``LVEDV_mL``)."""
        return self.table.item(self._row_of(case), self._columns().index(column)).text()

    def _update_row(self, case: str, row: dict[str, Any], status: str) -> None:
        columns = self._columns()
        i = self._row_of(case)
        for j, c in enumerate(columns[1:-1], start=1):
            value = status if c == "status" else row.get(c, "")
            text = f"{value:.1f}" if isinstance(value, float) else str("" if value is None else value)
            self.table.item(i, j).setText(text)

    # ----- review ------------------------------------------------------------------------
    def review_case(self, status: str, row: int | None = None, reason: str | None = None) -> dict | None:
        """Record a verdict (approved, needs edit, flagged with the reason typed) on the chosen case
        in its case.json and cohort.csv; the table shows it. Returns the new row."""
        row = self.table.currentRow() if row is None else row
        if row is None or row < 0 or row >= self.table.rowCount():
            notify_error("choose a case in the table first")
            return None
        name, status_text = self.table.item(row, 0).text(), self.table.item(row, 1).text()
        reason = self.reason_edit.text() if reason is None else reason
        try:
            new = record_review(self._out(), name, status, reason)
        except USER_ERRORS as exc:
            notify_error(exc)
            return None
        self._update_row(name, new, status_text)
        self.reason_edit.clear()
        return new

    def next_unreviewed(self) -> int | None:
        """Choose and open the next finished case without a verdict (after the chosen one, wrapping)."""
        n = self.table.rowCount()
        col = self._columns().index("review_status")
        start = self.table.currentRow()
        for k in range(1, n + 1):
            i = (start + k) % n
            if self.table.item(i, 1).text() in ("done", "skipped") and not self.table.item(i, col).text():
                self.table.selectRow(i)
                self.open_case(i)
                return i
        notify_error("every finished case has been reviewed")
        return None

    # ----- hand correction of an opened case ----------------------------------------------
    def _follow(self, case: str, layer, spacing, record: dict) -> None:
        self._unfollow()
        self.review = {"case": case, "layer": layer, "spacing": tuple(spacing), "record": record,
                       "out": self._out(), "job": self.job}
        layer.events.paint.connect(self._on_edited)
        layer.events.data.connect(self._on_edited)

    def _unfollow(self) -> None:
        if self.review is None:
            return
        layer = self.review["layer"]
        layer.events.paint.disconnect(self._on_edited)
        layer.events.data.disconnect(self._on_edited)
        self.review = None
        self.save_button.setEnabled(False)

    def _on_layer_removed(self, event) -> None:
        if self.review is not None and event.value is self.review["layer"]:
            self._unfollow()

    def _on_edited(self, event=None) -> None:
        # napari emits `paint` before the edit is in the array: measure on the next turn
        self._debounce.start(0)

    def remeasure(self) -> dict[str, Any]:
        """Measure the opened case's labels as they are now; the table shows it as "edited"."""
        if self.review is None:
            return {}
        r = self.review
        try:
            row = corrected_row(r["job"], r["layer"].data, r["spacing"], r["record"].get("row_model", r["record"]["row"]))
        except ValueError as exc:
            notify_error(exc)
            return {}
        if r["job"] == self.job:
            self._update_row(r["case"], row, "edited")
        self.save_button.setEnabled(True)
        return row

    def save_correction(self) -> dict[str, Any]:
        """Keep the opened case's corrected labels and figures (case folder, cohort.csv)."""
        if self.review is None:
            notify_error("open a cardiac or lesion case and correct its labels first")
            return {}
        r = self.review
        try:
            row = record_correction(r["out"], r["case"], r["layer"].data)
        except USER_ERRORS as exc:
            notify_error(exc)
            return {}
        if r["job"] == self.job:
            self._update_row(r["case"], row, "corrected")
        self.summary.setText(f"{r['case']}: correction saved ({case_folder(r['out'], r['case']) / CORRECTED_FILE})")
        self.save_button.setEnabled(False)
        return row

    def open_case(self, row: int | None = None) -> list:
        """Add the case's input and outputs as layers (input geometry); returns the layers added."""
        from ..jobs import read_cine, read_single_volume

        if row is None:
            row = self.table.currentRow()
        if row is None or row < 0 or row >= self.table.rowCount():
            notify_error("choose a case in the table first")
            return []
        name = self.table.item(row, 0).text()
        status = self.table.item(row, 1).text()
        if status in ("failed", "unusable"):
            notify_error(f"{name} {status}: {self.table.item(row, self.table.columnCount() - 1).text()}")
            return []
        try:
            folder = case_folder(self._out(), name)
            record = json.loads((folder / CASE_FILE).read_text())
        except json.JSONDecodeError:
            notify_error(f"{name}: {CASE_FILE} is not readable")
            return []
        except USER_ERRORS as exc:
            notify_error(exc if not isinstance(exc, OSError) else f"{name}: no results yet (run the cohort)")
            return []
        if record.get("status") != "done":
            notify_error(f"{name} failed: {record.get('error', 'no result')}")
            return []
        layers = []
        try:
            inputs = record["inputs"]
            first = inputs.get("image", inputs.get("flair"))
            vol = read_cine(first) if isinstance(first, list) and self.job == "segment-heart" else \
                read_single_volume(first[0] if isinstance(first, list) else first)
            layers.append(self._add(vol, f"{name}", "labels" if self.job == "correct-mask" else "image"))
            for file, kind in CASE_LAYERS[self.job]:
                if kind == "labels" and (folder / CORRECTED_FILE).exists():
                    file = CORRECTED_FILE                   # the case was corrected by hand before
                if (folder / file).exists():
                    out_vol = read_single_volume(folder / file)
                    if kind == "labels":
                        out_vol = out_vol.with_data(out_vol.data.astype("int32"))
                    layers.append(self._add(out_vol, f"{name} [{file.split('.')[0].replace('_', ' ')}]", kind))
                    if kind == "labels" and self.job in CORRECTABLE:
                        self._follow(name, layers[-1], out_vol.spacing, record)
        except USER_ERRORS as exc:
            notify_error(exc)
        return layers

    def _add(self, vol, name: str, kind: str):
        data, kwargs, _ = vol.to_layer_data(name=name, layer_type=kind)
        if kind == "labels":
            # the structures the file records, else those of the job (results written before they did)
            found = structures.kind_of(kwargs["metadata"]) or JOB_STRUCTURES.get(self.job)
            if found is not None:
                kwargs["metadata"] = {**kwargs["metadata"], structures.META_KEY: found}
                kwargs.update(structures.labels_kwargs(found))
            return self.viewer.add_labels(data.astype("int32", copy=False), **kwargs)
        if name.endswith("[uncertainty]") or name.endswith("[saliency]"):
            kwargs.update(colormap="inferno", blending="additive", opacity=0.6, contrast_limits=(0.0, 1.0))
        return self.viewer.add_image(data, **kwargs)
