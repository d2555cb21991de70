"""Measures report rows and CSV files: unit-named columns, empty cells for undefined values,
atomic replacement."""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import pytest

from napari_medlearn.imaging.measures import CARDIAC_MEASURES
from napari_medlearn.methods import cardiac_measures
from napari_medlearn.methods.report import (
    CARDIAC_COLUMNS,
    measures_row,
    qc_flags,
    write_measures_csv,
)


def _cine_labels() -> np.ndarray:
    """2 frames: LV of 8 voxels at ED and 4 at ES, myocardium 2, RV 6 then 3."""
    lab = np.zeros((2, 2, 4, 4), dtype=np.uint8)
    lab[0, :, :2, :2] = 1          # 8 voxels
    lab[1, 0, :2, :2] = 1          # 4 voxels
    lab[:, 0, 3, :2] = 2           # 2 voxels each frame
    lab[0, :, 2, 2:] = 3           # 4 voxels
    lab[0, 0, 3, 2:] = 3           # +2 -> 6
    lab[1, 0, 2, 2:] = 3           # 2 voxels
    lab[1, 1, 2, 3] = 3            # +1 -> 3
    return lab


def test_columns_carry_units():
    assert CARDIAC_COLUMNS[:9] == (
        "LVEDV_mL", "LVESV_mL", "LVSV_mL", "LVEF_pct", "LVM_g",
        "RVEDV_mL", "RVESV_mL", "RVSV_mL", "RVEF_pct",
    )
    assert CARDIAC_COLUMNS[9:] == ("ED_frame", "ES_frame", "qc", "model", "model_sha256", "source")


def test_measures_row_known_values():
    # 10 x 10 x 10 mm voxels = 1 mL each
    m = cardiac_measures(_cine_labels(), (10.0, 10.0, 10.0))
    row = measures_row(m, [{"flag": "a", "reason": "x"}, {"flag": "b", "reason": "y"}],
                       "tiny", "abc123", "case01.nii.gz")
    assert tuple(row) == CARDIAC_COLUMNS
    assert row["LVEDV_mL"] == 8.0 and row["LVESV_mL"] == 4.0 and row["LVSV_mL"] == 4.0
    assert row["LVEF_pct"] == 50.0
    assert row["LVM_g"] == pytest.approx(2 * 1.05)
    assert row["RVEDV_mL"] == 6.0 and row["RVESV_mL"] == 3.0 and row["RVEF_pct"] == 50.0
    assert (row["ED_frame"], row["ES_frame"]) == (0, 1)
    assert row["qc"] == "a;b"
    assert (row["model"], row["model_sha256"], row["source"]) == ("tiny", "abc123", "case01.nii.gz")


def test_measures_row_single_frame_has_no_es():
    m = cardiac_measures(_cine_labels()[0], (10.0, 10.0, 10.0))
    row = measures_row(m)
    assert row["LVEDV_mL"] == 8.0
    assert row["LVESV_mL"] is None and row["LVEF_pct"] is None and row["ES_frame"] is None
    assert row["qc"] == "" and row["model"] == ""


def test_qc_flags_accepts_strings_and_none():
    assert qc_flags(None) == ""
    assert qc_flags(["no_heart", "lv_lost"]) == "no_heart;lv_lost"


def test_write_measures_csv_round_trip_and_replace(tmp_path):
    m = cardiac_measures(_cine_labels(), (10.0, 10.0, 10.0))
    rows = [measures_row(m, [], "tiny", "abc", "a.nii"),
            measures_row({**m, "LVEF_pct": float("nan")}, ["single_frame"], "tiny", "abc", "b.nii")]
    out = tmp_path / "sub" / "measures.csv"
    assert write_measures_csv(rows, out) == out
    with open(out, newline="") as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == list(CARDIAC_COLUMNS)
    assert float(got[0]["LVEDV_mL"]) == 8.0 and got[0]["qc"] == ""
    assert got[1]["LVEF_pct"] == "" and got[1]["qc"] == "single_frame" and got[1]["source"] == "b.nii"
    # replaced, not appended; no temporary files left behind
    write_measures_csv(rows[:1], out)
    with open(out, newline="") as f:
        assert len(list(csv.DictReader(f))) == 1
    assert os.listdir(out.parent) == ["measures.csv"]


def test_write_measures_csv_refuses_nothing(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        write_measures_csv([], tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_nan_measures_become_none():
    row = measures_row({k: float("nan") for k in CARDIAC_MEASURES} | {"ED_frame": 0, "ES_frame": 0})
    assert all(row[k] is None for k in CARDIAC_MEASURES)
    assert not any(isinstance(v, float) and math.isnan(v) for v in row.values())
