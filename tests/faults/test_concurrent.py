"""Two runs on one output folder: while one holds it a second is refused with one line naming
the holder (nothing of the first is touched); batches run one after the other with different
manifests add up in cohort.csv (the newer row of a case wins, the other cases' rows stay)."""

from __future__ import annotations

import csv
import json

from napari_medlearn.cli import main
from napari_medlearn.imaging.atomic import LOCK_FILE, folder_lock
from napari_medlearn.jobs import CARDIAC_OUTPUTS


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_second_run_on_the_same_out_is_refused_naming_the_first(held, cines, tiny_cardiac, tmp_path, capsys,
                                                                  fault):
    out = tmp_path / "out"
    common = ("--out", out, "--model", tiny_cardiac, "--device", "cpu", "--quiet")
    first = held("segment", "segment-heart", cines["case1"], *common)        # holds out, model running
    assert main(list(map(str, ("segment-heart", cines["case2"], *common)))) == 2     # this process: the second
    line = fault.error_line(capsys.readouterr().err)
    assert line.startswith(f"medlearn: error: {out} is in use by `medlearn segment-heart {cines['case1']} --out {out}")
    assert f"(pid {first.pid} on " in line
    done = first.go()
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "measures.json").read_text())["source"] == str(cines["case1"])   # the first patient's
    assert sorted(p.name for p in out.iterdir()) == sorted(CARDIAC_OUTPUTS)        # lock released


def test_a_batch_into_a_folder_held_by_another_is_refused(cines, tiny_cardiac, tmp_path, capsys, fault):
    out = tmp_path / "out"
    table = fault.manifest(tmp_path / "m.csv", {"case1": cines["case1"]})
    with folder_lock(out, "medlearn batch segment-heart other.csv"):
        assert main(["batch", "segment-heart", str(table), "--out", str(out), "--model", str(tiny_cardiac),
                     "--device", "cpu", "--quiet"]) == 2
        line = fault.error_line(capsys.readouterr().err)
        assert "is in use by `medlearn batch segment-heart other.csv`" in line
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]       # no case run, no table written


def test_batches_with_different_manifests_add_up_in_the_cohort_table(cines, tiny_cardiac, tmp_path, fault):
    out = tmp_path / "out"
    common = ["--out", str(out), "--model", str(tiny_cardiac), "--device", "cpu", "--quiet"]
    one = fault.manifest(tmp_path / "one.csv", {"case1": cines["case1"]})
    two = fault.manifest(tmp_path / "two.csv", {"case2": cines["case2"]})
    assert main(["batch", "segment-heart", str(one), *common]) == 0
    assert main(["batch", "segment-heart", str(two), *common]) == 0
    rows = _rows(out / "cohort.csv")
    assert [(r["case"], r["status"], r["source"]) for r in rows] == [("case1", "done", str(cines["case1"])),
                                                                     ("case2", "done", str(cines["case2"]))]
    # a newer run of case1 (another image) replaces its row in place; case2's row stays
    again = fault.manifest(tmp_path / "again.csv", {"case1": cines["case2"], "new": tmp_path / "missing.nii.gz"})
    assert main(["batch", "segment-heart", str(again), *common]) == 1
    rows = _rows(out / "cohort.csv")
    assert [(r["case"], r["status"]) for r in rows] == [("case1", "done"), ("case2", "done"), ("new", "failed")]
    assert rows[0]["source"] == str(cines["case2"]) and rows[1]["source"] == str(cines["case2"])


def test_a_cohort_csv_that_is_not_a_cohort_table_is_not_replaced(cines, tiny_cardiac, tmp_path, capsys, fault):
    out = tmp_path / "out"
    out.mkdir()
    (out / "cohort.csv").write_text("patient,notes\nP1,the user's own table\n")
    table = fault.manifest(tmp_path / "m.csv", {"flat": tmp_path / "missing.nii.gz"})
    assert main(["batch", "segment-heart", str(table), "--out", str(out), "--model", str(tiny_cardiac),
                 "--quiet"]) == 2
    assert "is not a cohort table (no case column): not replaced" in fault.error_line(capsys.readouterr().err)
    assert (out / "cohort.csv").read_text() == "patient,notes\nP1,the user's own table\n"
