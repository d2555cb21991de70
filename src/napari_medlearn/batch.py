"""Cohorts: one job over many cases, resumable, scaled out with dask.

A cohort is a folder (one case per entry) or a CSV manifest (one row per case). Each case runs
the job ``medlearn <job>`` runs (:mod:`napari_medlearn.jobs`) and writes the same files into
``OUT/<case>/``; ``OUT/cohort.csv`` gathers one row per case (status, error, the job's figures
with units in the column names: ``LVEDV_mL``, ``whole_tumour_mL``, ``PSNR_dB`` ...).

- **Resumable.** A case's ``case.json`` is written last, with its inputs' sizes and modification
  times, the job's options and the model asked for. A case done with the same inputs and
  options is skipped when the batch runs again, so an interrupted cohort resumes where it
  stopped; failed cases are tried again. ``overwrite=True`` runs every case anew.
- **Nothing lost.** A case folder holding files this batch did not write (no ``case.json``) is
  left alone and the case reported failed. A case's outputs appear all together or not at all.
  ``cohort.csv`` keeps the rows of earlier runs into the same folder (another manifest's cases):
  a case run again gets its new row in place. One batch at a time holds ``OUT`` (a second is
  refused, naming the first).
- **One bad case does not stop a cohort.** Its error is recorded (``case.json``, the table) and
  the others run; so it is when its folder cannot be written (disk full, read-only, permission).
- **Scale-out.** ``workers=1`` runs the cases in this process, one after the other (models are
  loaded once). More workers run them through dask (``scheduler="processes"`` by default, or
  ``"threads"``, ``"sync"``, or the address of a ``dask.distributed`` scheduler); each process
  loads its own models and uses its share of the CPU threads.

Folder layouts understood (anything else: a manifest):

- ``segment-heart``, ``reconstruct``, ``detect-planes``, ``super-resolve``, ``correct-mask``:
  each image file is a case (NIfTI, NRRD/MetaImage; k-space ``.npy``/``.h5`` for
  ``reconstruct``; videos for ``detect-planes``), and each sub-folder is one: a DICOM series,
  or a folder holding one image (ACDC's layout: the ``*_4d`` cine is taken; without one, for
  ``segment-heart`` the 3D frames, e.g. ED and ES, make the cine in name order). For
  ``super-resolve`` a folder of several stacks is one case, the stacks fused.
- ``segment-lesions``: each sub-folder is a session with a FLAIR (``flair``/``t2f`` in the file
  name), a T1c (``t1c``, ``t1ce``, ``t1gd``, ``t1post``) and optionally a brain mask
  (``brainmask``, ``mask``); segmentations (``seg``, ``label``, ``OTMultiClass``, ``gt``) are
  ignored. BraTS 2013-2023 and DeepMedic names match.

A manifest is a CSV with a ``case`` column (optional: the first input's name otherwise) and one
column per input: ``image`` for the single-input jobs (``;`` between the stacks of a fused
``super-resolve`` case; ``mask`` beside it for k-space), ``flair``, ``t1c`` and optionally
``mask`` for ``segment-lesions``. Relative paths are relative to the manifest.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .imaging.io import ITK_SUFFIXES, NIFTI_SUFFIXES
from .imaging.kspace import KSPACE_SUFFIXES
from .jobs import VIDEO_SUFFIXES, InputError, JobResult

Progress = Callable[[int, int, str], Any]

IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
CASE_FILE = "case.json"
LOCAL_SCHEDULERS = ("processes", "threads", "sync", "synchronous", "single-threaded")
TABLE_FILE = "cohort.csv"

FLAIR_NAMES = ("flair", "t2f", "t2-flair", "t2_flair")
T1C_NAMES = ("t1c", "t1ce", "t1gd", "t1-gd", "t1_gd", "t1post", "t1_post", "t1-post", "t1contrast")
MASK_NAMES = ("brainmask", "brain_mask", "brain-mask", "mask")
LABEL_NAMES = ("seg", "label", "labels", "otmulticlass", "gt", "truth")


@dataclass(frozen=True)
class Case:
    """One case of a cohort: a name (its output folder) and its input files by role."""

    name: str
    inputs: Mapping[str, Any]


@dataclass(frozen=True)
class CaseOutcome:
    """How one case went: ``status`` is ``"done"``, ``"skipped"`` (done before, unchanged) or
    ``"failed"`` (``error`` says why)."""

    case: str
    status: str
    seconds: float = 0.0
    row: Mapping[str, Any] = field(default_factory=dict)
    error: str = ""
    warnings: Sequence[str] = ()


@dataclass(frozen=True)
class BatchResult:
    """Every case's outcome, in the cohort's order, and the cohort table written."""

    outcomes: Sequence[CaseOutcome]
    table: Path

    @property
    def failed(self) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)


# ----- the jobs ------------------------------------------------------------------------------

def _job_segment_heart(out: Path, inputs, options, model, device, progress) -> JobResult:
    from .jobs import segment_heart_job

    return segment_heart_job(out, inputs["image"], model=model, device=device, progress=progress, **options)


def _job_reconstruct(out: Path, inputs, options, model, device, progress) -> JobResult:
    from .jobs import reconstruct_job

    return reconstruct_job(out, inputs["image"], mask=inputs.get("mask"), model=model, device=device,
                           progress=progress, **options)


def _job_segment_lesions(out: Path, inputs, options, model, device, progress) -> JobResult:
    from .jobs import segment_lesions_job

    return segment_lesions_job(out, inputs["flair"], inputs["t1c"], mask=inputs.get("mask"), model=model,
                               device=device, progress=progress, **options)


def _job_detect_planes(out: Path, inputs, options, model, device, progress) -> JobResult:
    from .jobs import detect_planes_job

    return detect_planes_job(out, inputs["image"], model=model, device=device, progress=progress, **options)


def _job_super_resolve(out: Path, inputs, options, model, device, progress) -> JobResult:
    from .jobs import super_resolve_job

    return super_resolve_job(out / "super_resolved.nii.gz", _as_list(inputs["image"]), model=model, device=device,
                             overwrite=True, progress=progress, **options)


def _job_correct_mask(out: Path, inputs, options, model, device, progress) -> JobResult:
    from .jobs import correct_mask_job

    return correct_mask_job(out / "corrected.nii.gz", inputs["image"], model=model, device=device, overwrite=True,
                            progress=progress)


@dataclass(frozen=True)
class Job:
    run: Callable[..., JobResult]
    outputs: tuple[str, ...]            # files a case's folder gets (some only for some inputs)
    roles: tuple[str, ...] = ("image",)
    optional: tuple[str, ...] = ()
    options: tuple[str, ...] = ()        # keyword options the job takes
    suffixes: tuple[str, ...] = IMAGE_SUFFIXES


def _jobs() -> dict[str, Job]:
    from .jobs import CARDIAC_OUTPUTS, LESION_OUTPUTS, PLANE_OUTPUTS, RECON_OUTPUTS

    return {
        "segment-heart": Job(_job_segment_heart, CARDIAC_OUTPUTS, options=("backend",)),
        "reconstruct": Job(_job_reconstruct, RECON_OUTPUTS, optional=("mask",),
                           options=("acceleration", "pattern", "centre_lines", "seed", "dynamic", "kspace_key",
                                    "mask_key"), suffixes=IMAGE_SUFFIXES + KSPACE_SUFFIXES),
        "segment-lesions": Job(_job_segment_lesions, LESION_OUTPUTS, roles=("flair", "t1c"), optional=("mask",),
                               options=("decision", "backend")),
        "detect-planes": Job(_job_detect_planes, PLANE_OUTPUTS, options=("saliency",),
                             suffixes=IMAGE_SUFFIXES + VIDEO_SUFFIXES),
        "super-resolve": Job(_job_super_resolve, ("super_resolved.nii.gz",), options=("factor", "spacing")),
        "correct-mask": Job(_job_correct_mask, ("corrected.nii.gz",)),
    }


JOBS = ("segment-heart", "reconstruct", "segment-lesions", "detect-planes", "super-resolve", "correct-mask")


def job_spec(job: str) -> Job:
    specs = _jobs()
    if job not in specs:
        raise ValueError(f"job {job!r} not supported; one of {', '.join(JOBS)}")
    return specs[job]


# ----- finding the cases ---------------------------------------------------------------------

def _as_list(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _has_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    return path.name.lower().endswith(tuple(suffixes))


def _stem(path: Path) -> str:
    name = path.name
    for s in sorted(IMAGE_SUFFIXES + KSPACE_SUFFIXES + VIDEO_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _tokens(path: Path) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", _stem(path).lower()) if t]


def _named(path: Path, names: Sequence[str]) -> bool:
    stem, tokens = _stem(path).lower(), _tokens(path)
    return any(n in tokens or (("-" in n or "_" in n) and n in stem) for n in names)


def _lesion_session(folder: Path) -> dict[str, Any]:
    images = [p for p in _visible(folder) if p.is_dir() or _has_suffix(p, IMAGE_SUFFIXES)]
    images = [p for p in images if not _named(p, LABEL_NAMES)]
    found: dict[str, Any] = {}
    for role, names in (("flair", FLAIR_NAMES), ("t1c", T1C_NAMES), ("mask", MASK_NAMES)):
        hits = [p for p in images if _named(p, names)]
        if role == "mask":
            hits = [p for p in hits if not any(_named(p, n) for n in (FLAIR_NAMES, T1C_NAMES))]
        if len(hits) > 1:
            raise InputError(f"{folder}: several {role} images ({', '.join(p.name for p in hits)}); "
                             "name them in a manifest CSV")
        if hits:
            found[role] = str(hits[0])
        elif role != "mask":
            raise InputError(f"{folder}: no {role.upper() if role == 'flair' else 'T1c'} image (file names "
                             f"with {' / '.join(names[:4])}); name the files in a manifest CSV")
    return found


def _single_input(entry: Path, job: str, spec: Job) -> Any:
    """The input of a one-image case found in a folder entry (a file, or a folder)."""
    if entry.is_file():
        return str(entry)
    inner = [p for p in _visible(entry) if p.is_file() and _has_suffix(p, spec.suffixes)]
    if job != "correct-mask":       # its inputs are label maps; the others' are not
        inner = [p for p in inner if not _named(p, LABEL_NAMES)] or inner
    if not inner:
        return str(entry)          # a DICOM series (read_volume says so if it is not one)
    if len(inner) == 1:
        return str(inner[0])
    if job == "super-resolve":          # stacks of one region, fused
        return [str(p) for p in inner]
    four_d = [p for p in inner if "4d" in _tokens(p)]
    if len(four_d) == 1:
        return str(four_d[0])
    if job == "segment-heart":          # 3D frames of one cine (ACDC's ED and ES), checked when read
        return [str(p) for p in inner]
    raise InputError(f"{entry}: several images ({', '.join(p.name for p in inner[:4])}"
                     f"{', ...' if len(inner) > 4 else ''}); name the one to use in a manifest CSV")


@dataclass(frozen=True)
class _Unusable:
    """A case whose inputs could not be worked out: it is reported failed, the rest run."""

    name: str
    error: str


def find_cases(job: str, source: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[Case | _Unusable]:
    """The cases of a cohort folder or manifest (see the module docstring), in a stable order;
    a folder's entry holding ``exclude`` (the run's output folder, when it lies inside the
    cohort) is not a case."""
    spec = job_spec(job)
    src = Path(source)
    skip = Path(exclude).resolve() if exclude is not None else None
    if not src.exists():
        raise InputError(f"{src}: no such file or directory")
    if src.is_file():
        if src.suffix.lower() != ".csv":
            raise InputError(f"{src}: a cohort is a folder or a CSV manifest")
        return _read_manifest(src, spec)
    cases: list[Case | _Unusable] = []
    for entry in _visible(src):
        if skip is not None and (skip == entry.resolve() or entry.resolve() in skip.parents):
            continue                       # the outputs of this very run
        if entry.is_file() and not _has_suffix(entry, spec.suffixes):
            continue                       # notes, citations, configs beside the images
        if job == "segment-lesions" and not entry.is_dir():
            continue
        name = _stem(entry)
        try:
            inputs = _lesion_session(entry) if job == "segment-lesions" else {"image": _single_input(entry, job, spec)}
        except InputError as exc:
            cases.append(_Unusable(name, str(exc)))
            continue
        cases.append(Case(name, inputs))
    if not cases:
        what = "sub-folders (sessions)" if job == "segment-lesions" else \
            f"images ({', '.join(spec.suffixes[:3])}, ...) or sub-folders"
        raise InputError(f"{src}: no cases found for {job}: expected {what}")
    _check_unique(cases, src)
    return cases


def _read_manifest(path: Path, spec: Job) -> list[Case | _Unusable]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise InputError(f"{path}: the manifest has no rows")
    columns = {c.strip().lower() for c in rows[0] if c}
    missing = [r for r in spec.roles if r not in columns]
    if missing:
        raise InputError(f"{path}: the manifest needs the column(s) {', '.join(spec.roles)} (missing: "
                         f"{', '.join(missing)}); optional: case, {', '.join(spec.optional) or 'nothing else'}")
    cases: list[Case | _Unusable] = []
    for i, raw in enumerate(rows, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
        inputs: dict[str, Any] = {}
        for role in spec.roles + spec.optional:
            value = row.get(role, "")
            if not value:
                continue
            paths = [str(p if p.is_absolute() else (path.parent / p)) for p in map(Path, value.split(";"))]
            inputs[role] = paths if len(paths) > 1 else paths[0]
        first = inputs.get(spec.roles[0])
        name = row.get("case") or (_stem(Path(_as_list(first)[0])) if first else f"row{i}")
        empty = [r for r in spec.roles if r not in inputs]
        cases.append(_Unusable(name, f"{path} line {i}: no {', '.join(empty)}") if empty else Case(name, inputs))
    _check_unique(cases, path)
    return cases


def _check_unique(cases, where: Path) -> None:
    seen: dict[str, str] = {}
    for c in cases:
        key = _folder_name(c.name).lower()
        if key in seen:
            raise InputError(f"{where}: two cases named {seen[key]!r} and {c.name!r}; give distinct case names "
                             "(a manifest's case column)")
        seen[key] = c.name


def _folder_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "case"
    return safe + "_case" if safe.lower() == TABLE_FILE else safe     # the table keeps its name


def case_folder(out: str | os.PathLike, case: str) -> Path:
    """Where a batch writes case ``case`` of a cohort run into ``out``."""
    return Path(out) / _folder_name(case)


# ----- running -------------------------------------------------------------------------------

def _fingerprint(job: str, inputs: Mapping[str, Any], options: Mapping[str, Any], model) -> dict:
    files = {}
    for role, value in sorted(inputs.items()):
        for p in _as_list(value):
            path = Path(p)
            if path.is_dir():
                stats = [(q.name, q.stat().st_size, q.stat().st_mtime_ns) for q in sorted(path.iterdir()) if q.is_file()]
                files[f"{role}:{p}"] = [len(stats), sum(s[1] for s in stats), max((s[2] for s in stats), default=0)]
            elif path.exists():
                st = path.stat()
                files[f"{role}:{p}"] = [st.st_size, st.st_mtime_ns]
            else:
                files[f"{role}:{p}"] = None
    return {"job": job, "inputs": files, "options": json.loads(json.dumps(dict(options), default=str)),
            "model": None if model is None else str(model)}


def _read_case_file(folder: Path) -> dict | None:
    try:
        return json.loads((folder / CASE_FILE).read_text())
    except (OSError, ValueError):
        return None


def run_case(job: str, case: Case, out: str | os.PathLike, options: Mapping[str, Any] | None = None, model=None,
             device: str = "auto", overwrite: bool = False, threads: int | None = None,
             progress: Progress | None = None) -> CaseOutcome:
    """Run (or skip, when done before with the same inputs) one case into ``out/<case>/``.

    A case whose folder or inputs cannot be used (unwritable, disk full, a path that does not
    resolve) fails alone: its outcome says why and the cohort goes on."""
    from .imaging.atomic import error_message

    try:
        return _run_case(job, case, out, options, model, device, overwrite, threads, progress)
    except InterruptedError:       # cancelled: not a failure of this case
        raise
    except OSError as exc:
        return CaseOutcome(case.name, "failed", error=error_message(exc))


def _run_case(job, case, out, options, model, device, overwrite, threads, progress) -> CaseOutcome:
    from .imaging.atomic import error_message, remove_stale_temporaries
    from .zoo import write_json_atomic

    spec = job_spec(job)
    options = dict(options or {})
    folder = case_folder(out, case.name)
    fingerprint = _fingerprint(job, case.inputs, options, model)
    before = _read_case_file(folder)
    remove_stale_temporaries(folder)        # what a killed run left (nothing being written now)
    if not overwrite and before is not None and before.get("status") == "done" \
            and before.get("fingerprint") == fingerprint:
        return CaseOutcome(case.name, "skipped", float(before.get("seconds", 0.0)), before.get("row", {}),
                           warnings=before.get("warnings", []))
    if before is None and not overwrite and folder.exists():
        from .jobs import existing_outputs

        theirs = existing_outputs(folder, spec.outputs)
        if theirs:
            return CaseOutcome(case.name, "failed", error=f"{theirs[0]} exists and was not written by a "
                                                          "batch run; not replaced (use overwrite)")
    if threads:
        import torch

        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    record = {"case": case.name, "job": job, "inputs": {k: v for k, v in case.inputs.items()},
              "fingerprint": fingerprint}
    # said before any output is written, so outputs of a run that is interrupted are known as
    # this batch's (and replaced by the next run), not taken for the user's own files
    created = not os.path.lexists(folder)
    try:
        write_json_atomic({**record, "status": "running"}, folder / CASE_FILE)
        result = spec.run(folder, case.inputs, options, model, device, progress)
    except InterruptedError:
        raise
    except Exception as exc:  # one case's failure is recorded; the cohort goes on
        text = str(exc).splitlines()[0] if str(exc) else ""
        error = error_message(exc) if isinstance(exc, OSError) else \
            text if isinstance(exc, ValueError) else f"{type(exc).__name__}: {text}"
        seconds = time.perf_counter() - t0
        try:
            if created and {p.name for p in folder.iterdir()} <= {CASE_FILE}:
                shutil.rmtree(folder, ignore_errors=True)       # failed before any output: nothing left behind
            else:
                write_json_atomic({**record, "status": "failed", "error": error, "seconds": round(seconds, 3)},
                                  folder / CASE_FILE)
        except OSError:      # the folder cannot be written at all: cohort.csv says why
            pass
        return CaseOutcome(case.name, "failed", seconds, error=error)
    seconds = time.perf_counter() - t0
    write_json_atomic({**record, "status": "done", "seconds": round(seconds, 3), "row": result.row,
                       "notes": result.notes, "warnings": result.warnings,
                       "outputs": {k: str(v) for k, v in result.outputs.items()}}, folder / CASE_FILE)
    return CaseOutcome(case.name, "done", seconds, result.row, warnings=list(result.warnings))


def _table_rows(outcomes: Sequence[CaseOutcome]) -> list[dict[str, Any]]:
    rows = []
    for o in outcomes:
        rows.append({"case": o.case, "status": o.status, "error": o.error, "seconds": round(o.seconds, 3),
                     **dict(o.row), "warnings": "; ".join(o.warnings)})
    return rows


def _read_table(path: Path) -> list[dict[str, str]]:
    """The rows of an earlier ``cohort.csv`` (none when there is none)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows, columns = list(reader), reader.fieldnames or []
    except FileNotFoundError:
        return []
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path} is not a cohort table ({exc}): not replaced; move it away") from None
    if columns and "case" not in columns:
        raise InputError(f"{path} is not a cohort table (no case column): not replaced; move it away")
    return rows


def _merged(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` merged into the table already at ``path``, one row per case folder: a case of this
    run replaces its earlier row in place, cases of earlier runs are kept, new cases come last."""
    new = {_folder_name(str(r["case"])): r for r in rows}
    merged = [new.pop(_folder_name(r.get("case") or ""), r) for r in _read_table(path)]
    return merged + list(new.values())


def _write_table(outcomes: Sequence[CaseOutcome], path: Path) -> None:
    """Write ``path`` with the rows of ``outcomes`` merged into those of earlier runs (a second
    manifest run into the same folder adds its cases; the table is never cut down to one run)."""
    from .imaging.atomic import atomic_path
    from .methods.report import write_measures_csv

    rows = _merged(path, _table_rows(outcomes))
    # every row gets every column, in first-seen order, so a failed first case does not drop the figures
    columns: list[str] = ["case", "status", "error", "seconds"]
    for r in rows:
        columns += [k for k in r if k not in columns and k != "warnings"]
    columns.append("warnings")
    if not rows:
        with atomic_path(path) as tmp:
            tmp.write_text(",".join(columns) + "\n")
        return
    write_measures_csv([{c: r.get(c) for c in columns} for r in rows], path)


def run_batch(job: str, cohort: str | os.PathLike | Sequence[Case], out: str | os.PathLike, *,
              options: Mapping[str, Any] | None = None, model=None, device: str = "auto", workers: int = 1,
              scheduler: str | None = None, overwrite: bool = False, progress: Progress | None = None,
              cancelled: Callable[[], bool] | None = None, note: Callable[[str], Any] | None = None,
              command: str | None = None) -> BatchResult:
    """Run ``job`` on every case of ``cohort`` (a folder, a manifest CSV or a list of
    :class:`Case`) into ``out``; returns the outcomes and writes ``out/cohort.csv``.

    Parameters
    ----------
    job
        One of :data:`JOBS` (the ``medlearn`` sub-command of the same name).
    options
        The job's options, e.g. ``{"acceleration": 8}`` for ``reconstruct``, ``{"factor": 4}``
        for ``super-resolve``, ``{"decision": "argmax"}`` for ``segment-lesions``.
    model, device
        As for the single-case job (``model=None``: the best shipped model).
    workers, scheduler
        ``workers=1`` without ``scheduler``: the cases one after the other in this process.
        Otherwise through dask with ``scheduler`` ``"processes"`` (the default), ``"threads"``,
        ``"sync"`` or a ``dask.distributed`` address (``"tcp://host:8786"``).
    overwrite
        Run every case again, replacing what an earlier batch wrote.
    progress
        Called with ``(cases_finished, cases_total, message)``.
    cancelled
        Checked between cases (in-process runs): True stops the batch with ``InterruptedError``
        after the table of the cases finished so far is written.
    note, command
        ``out`` is held for the run (:func:`napari_medlearn.imaging.atomic.folder_lock`: a second
        batch into it is refused); ``note`` hears of a lock taken over from a killed run and of
        its temporaries removed, ``command`` is recorded as the holder.
    """
    if workers == 1 and scheduler is None:
        from .methods.cardiac import drain

        return drain(run_batch_steps(job, cohort, out, options=options, model=model, device=device,
                                     overwrite=overwrite, cancelled=cancelled, note=note, command=command), progress)
    from .imaging.atomic import folder_lock

    state = _Cohort(job, cohort, out, options, workers, scheduler)
    with folder_lock(state.out, command, note):
        try:
            _run_with_dask(job, [state.cases[i] for i in state.todo], state.todo, state.out, state.options, model,
                           device, overwrite, workers, scheduler, lambda i, o: state.finished(i, o, progress))
        finally:
            state.write_table()
    return state.result()


def run_batch_steps(job: str, cohort: str | os.PathLike | Sequence[Case], out: str | os.PathLike, *,
                    options: Mapping[str, Any] | None = None, model=None, device: str = "auto",
                    overwrite: bool = False, cancelled: Callable[[], bool] | None = None,
                    note: Callable[[str], Any] | None = None, command: str | None = None):
    """:func:`run_batch` in this process, one case after the other, as a generator: yields
    ``(cases_finished, cases_total, message)`` and returns the :class:`BatchResult` (for a GUI
    worker; the table is written after every case)."""
    from .imaging.atomic import folder_lock

    state = _Cohort(job, cohort, out, options, 1, None)
    total = len(state.cases)
    with folder_lock(state.out, command, note):
        yield total - len(state.todo), total, "starting"
        try:
            for i in state.todo:
                if cancelled is not None and cancelled():
                    raise InterruptedError(f"cancelled after {state.n_finished} of {total} cases")
                outcome = run_case(job, state.cases[i], state.out, state.options, model, device, overwrite)
                state.finished(i, outcome)
                state.write_table()
                yield state.n_finished, total, f"{outcome.case}: {outcome.status}"
        finally:
            state.write_table()
    return state.result()


class _Cohort:
    """The cases of one run, their outcomes so far, and the table."""

    def __init__(self, job, cohort, out, options, workers, scheduler) -> None:
        spec = job_spec(job)
        self.options = dict(options or {})
        unknown = [k for k in self.options if k not in spec.options]
        if unknown:
            raise ValueError(f"{job} takes no option {', '.join(map(repr, unknown))}; it takes "
                             f"{', '.join(spec.options) or 'none'}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if scheduler is not None and "://" not in scheduler and scheduler not in LOCAL_SCHEDULERS:
            raise ValueError(f"scheduler {scheduler!r} not supported; use {', '.join(LOCAL_SCHEDULERS[:3])} or a "
                             "dask.distributed address (tcp://host:port)")
        self.cases = list(cohort) if isinstance(cohort, (list, tuple)) else find_cases(job, cohort, exclude=out)
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"{self.out} exists and is not a folder")
        self.out.mkdir(parents=True, exist_ok=True)
        self.table = self.out / TABLE_FILE
        self.outcomes: list[CaseOutcome | None] = [
            CaseOutcome(c.name, "failed", error=c.error) if isinstance(c, _Unusable) else None for c in self.cases]
        self.todo = [i for i, o in enumerate(self.outcomes) if o is None]

    @property
    def n_finished(self) -> int:
        return sum(o is not None for o in self.outcomes)

    def finished(self, i: int, outcome: CaseOutcome, progress: Progress | None = None) -> None:
        self.outcomes[i] = outcome
        if progress is not None:
            progress(self.n_finished, len(self.cases), f"{outcome.case}: {outcome.status}")

    def write_table(self) -> None:
        _write_table([o for o in self.outcomes if o is not None], self.table)

    def result(self) -> BatchResult:
        return BatchResult([o for o in self.outcomes if o is not None], self.table)


CORRECTED_FILE = "labels_corrected.nii.gz"
CORRECTABLE = ("segment-heart", "segment-lesions")


def corrected_row(job: str, labels, spacing, row: Mapping[str, Any]) -> dict[str, Any]:
    """A case's table row measured again on hand-corrected ``labels`` (cardiac measures with QC
    flags, or lesion volumes); model and source kept, ``corrected`` set."""
    import numpy as np

    labels = np.asarray(labels)
    if job == "segment-heart":
        from .methods.cardiac import measure_with_qc
        from .methods.report import measures_row

        measures, qc = measure_with_qc(labels, spacing)
        new = measures_row(measures, qc, row.get("model", ""), row.get("model_sha256", ""), row.get("source", ""))
    elif job == "segment-lesions":
        from .methods.lesions import lesion_volumes

        new = {**row, **{k: round(v, 3) for k, v in lesion_volumes(labels, spacing).items()}}
    else:
        raise ValueError(f"{job} results are not corrected by hand here (only {', '.join(CORRECTABLE)})")
    new["corrected"] = CORRECTED_FILE
    return new


def record_correction(out: str | os.PathLike, case: str, labels) -> dict[str, Any]:
    """Keep a hand correction of a case's labels: ``labels_corrected.nii.gz`` beside the model's
    ``labels.nii.gz`` (which stays), the case's row measured again in ``case.json`` (the model's
    row kept as ``row_model``) and in ``cohort.csv``. Returns the new row; a later batch run
    that skips the case keeps it."""
    import numpy as np

    from .imaging.io import write_nifti
    from .jobs import read_single_volume
    from .zoo import write_json_atomic

    folder = case_folder(out, case)
    record = _read_case_file(folder)
    if record is None or record.get("status") != "done":
        raise ValueError(f"{case}: no finished result in {folder} to correct")
    model_labels = read_single_volume(folder / "labels.nii.gz")
    labels = np.asarray(labels)
    if labels.shape != model_labels.data.shape:
        raise ValueError(f"{case}: corrected labels {labels.shape} differ in shape from the result "
                         f"{model_labels.data.shape}")
    row = corrected_row(record["job"], labels, model_labels.spacing, record.get("row_model", record.get("row", {})))
    write_nifti(model_labels.with_data(labels.astype(model_labels.data.dtype, copy=False)), folder / CORRECTED_FILE,
                overwrite=True)
    record.setdefault("row_model", record.get("row", {}))
    row.update(_review_columns(record.get("review"), hand_edited=True))
    record["row"] = row
    write_json_atomic(record, folder / CASE_FILE)
    _replace_table_row(out, case, row, record)
    return row


#: a reviewer's verdicts on a case (``record_review``)
REVIEW_STATUSES = ("approved", "flagged", "needs edit")
REVIEW_COLUMNS = ("review_status", "review_reason", "hand_edited", "reviewer", "reviewed_at")


def _review_columns(review: Mapping[str, Any] | None, hand_edited: bool) -> dict[str, Any]:
    review = review or {}
    return {"review_status": review.get("status", ""), "review_reason": review.get("reason", ""),
            "hand_edited": "yes" if hand_edited else "no", "reviewer": review.get("reviewer", ""),
            "reviewed_at": review.get("at", "")}


def record_review(out: str | os.PathLike, case: str, status: str, reason: str = "",
                  reviewer: str | None = None) -> dict[str, Any]:
    """Keep a reviewer's verdict on a finished case (approved, flagged with a reason, needs edit)
    in its ``case.json`` (``review``: status, reason, reviewer, UTC time) and as the columns
    :data:`REVIEW_COLUMNS` of its ``cohort.csv`` row (``hand_edited``: a hand correction is
    kept). The reviewer defaults to the login name. Returns the new row."""
    import datetime
    import getpass

    from .zoo import write_json_atomic

    if status not in REVIEW_STATUSES:
        raise ValueError(f"unknown review status {status!r}: one of {', '.join(REVIEW_STATUSES)}")
    if status == "flagged" and not reason.strip():
        raise ValueError(f"{case}: say why it is flagged (a reason is required)")
    folder = case_folder(out, case)
    record = _read_case_file(folder)
    if record is None or record.get("status") != "done":
        raise ValueError(f"{case}: no finished result in {folder} to review")
    if reviewer is None:
        try:
            reviewer = getpass.getuser()
        except (KeyError, OSError):          # no login name (a container): left empty
            reviewer = ""
    at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record["review"] = {"status": status, "reason": reason.strip(), "reviewer": reviewer, "at": at}
    row = {**record.get("row", {}),
           **_review_columns(record["review"], hand_edited=(folder / CORRECTED_FILE).exists())}
    record["row"] = row
    write_json_atomic(record, folder / CASE_FILE)
    _replace_table_row(out, case, row, record)
    return row


def review_of(out: str | os.PathLike, case: str) -> dict[str, Any]:
    """The review kept in a case's ``case.json`` (empty when none)."""
    record = _read_case_file(case_folder(out, case))
    return dict((record or {}).get("review") or {})


def _replace_table_row(out: str | os.PathLike, case: str, row: Mapping[str, Any], record: dict) -> None:
    """``cohort.csv`` with ``case``'s row replaced by ``row`` (status, time, warnings kept)."""
    table = Path(out) / TABLE_FILE
    rows = []
    if table.exists():
        with open(table, newline="") as f:
            rows = list(csv.DictReader(f))
    outcomes = [CaseOutcome(r.get("case", ""), r.get("status", ""), float(r.get("seconds") or 0.0),
                            {k: v for k, v in r.items() if k not in ("case", "status", "error", "seconds", "warnings")},
                            r.get("error", ""), [w for w in (r.get("warnings") or "").split("; ") if w])
                for r in rows]
    for i, o in enumerate(outcomes):
        if o.case == case:
            outcomes[i] = CaseOutcome(case, o.status, o.seconds, row, o.error, o.warnings)
            break
    else:
        outcomes.append(CaseOutcome(case, "done", float(record.get("seconds", 0.0)), row))
    _write_table(outcomes, table)


def _run_with_dask(job, cases, indices, out, options, model, device, overwrite, workers, scheduler, finished):
    """Run the cases as dask tasks, calling ``finished(index, outcome)`` as each ends; CPU threads
    shared out between workers."""
    import dask

    threads = max(1, (os.cpu_count() or 1) // workers)
    tasks = [dask.delayed(run_case, pure=False)(job, c, str(out), options, model, device, overwrite, threads)
             for c in cases]
    where = {t.key: i for t, i in zip(tasks, indices)}
    if scheduler is not None and "://" in scheduler:
        try:
            from dask.distributed import Client, as_completed
        except ImportError:
            raise ValueError(f"scheduler {scheduler}: a dask.distributed address needs the 'distributed' package "
                             "(pip install distributed)") from None
        with Client(scheduler) as client:
            futures = client.compute(tasks)
            for future in as_completed(futures):
                finished(where[future.key], future.result())
        return
    name = scheduler or "processes"
    from dask.callbacks import Callback

    class _Finished(Callback):      # local schedulers call it in this thread as each task ends
        def _posttask(self, key, result, dsk, state, worker_id):
            if key in where:
                finished(where[key], result)

    with _Finished():
        dask.compute(*tasks, scheduler=name, num_workers=workers)
__all__ = ["BatchResult", "Case", "CaseOutcome", "JOBS", "case_folder", "corrected_row", "find_cases",
           "record_correction", "record_review", "review_of", "run_batch", "run_batch_steps", "run_case"]
