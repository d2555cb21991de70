"""Measures as table rows and CSV files: one row per case, units in the column names.

The widget's "Export measures...", the CLI and batch runs all write the same columns
(:data:`CARDIAC_COLUMNS`): the clinical measures of
:data:`napari_medlearn.imaging.measures.CARDIAC_MEASURES` (``LVEDV_mL`` ... ``RVEF_pct``), the
ED/ES frames, the quality-control flags joined by ``;``, and which model and image produced
them. No napari or Qt here.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..imaging.atomic import atomic_path
from ..imaging.measures import CARDIAC_MEASURES

#: column order of a cardiac measures CSV
CARDIAC_COLUMNS = CARDIAC_MEASURES + (
    "ED_frame", "ES_frame", "qc", "model", "model_sha256", "source",
)


def _number(value: Any, decimals: int = 3) -> float | int | None:
    """A finite number rounded for a report; None for missing or NaN."""
    if value is None:
        return None
    if isinstance(value, (bool, int)):
        return int(value)
    v = float(value)
    return round(v, decimals) if math.isfinite(v) else None


def qc_flags(qc: Iterable[Mapping[str, str] | str] | None) -> str:
    """QC flags joined by ``;`` (``""`` when there are none); accepts dicts with ``flag`` or strings."""
    flags = []
    for item in qc or ():
        flags.append(str(item.get("flag", "")) if isinstance(item, Mapping) else str(item))
    return ";".join(f for f in flags if f)


def measures_row(
    measures: Mapping[str, Any],
    qc: Sequence[Mapping[str, str] | str] | None = None,
    model_name: str = "",
    sha256: str = "",
    source: str = "",
) -> dict[str, Any]:
    """One report row for a segmented cine.

    Parameters
    ----------
    measures
        Output of :func:`napari_medlearn.methods.cardiac_measures` (or ``CardiacResult.measures``).
    qc
        Quality-control flags, ``[{"flag": ..., "reason": ...}, ...]`` or flag strings.
    model_name, sha256
        The model that produced the labels and the sha256 of its weights.
    source
        The image the measures come from (a path or layer name).

    Returns
    -------
    dict
        Keys :data:`CARDIAC_COLUMNS`, in order. Volumes (mL), EF (%) and mass (g) are rounded
        to 3 decimals; undefined values (NaN, e.g. ES volumes of a single frame) are None.
    """
    row: dict[str, Any] = {k: _number(measures.get(k)) for k in CARDIAC_MEASURES}
    for k in ("ED_frame", "ES_frame"):
        v = measures.get(k)
        row[k] = None if v is None else int(v)
    row["qc"] = qc_flags(qc)
    row["model"] = str(model_name or "")
    row["model_sha256"] = str(sha256 or "")
    row["source"] = str(source or "")
    return row


def write_measures_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write report rows to a CSV file, atomically (temporary file, then :func:`os.replace`).

    Columns are those of the first row followed by any new keys of later rows; None and NaN
    are written as empty cells. An existing file is replaced.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("no rows to write")
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name ending in .csv")

    def cell(v: Any) -> Any:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return ""
        return v

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: cell(v) for k, v in r.items()})
    return path


__all__ = ["CARDIAC_COLUMNS", "measures_row", "qc_flags", "write_measures_csv"]
