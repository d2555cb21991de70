"""Paths that cannot be used: a symlink loop (ELOOP), a name too long (ENAMETOOLONG), an output
name taken by a folder (EISDIR). One line and exit 2 for a single job, with none of its outputs
written (files moved already are taken back); in a cohort such a case fails alone."""

from __future__ import annotations

import csv
import os

import pytest

from napari_medlearn.cli import main
from napari_medlearn.jobs import CARDIAC_OUTPUTS


@pytest.mark.parametrize("make, cause", [
    (lambda d: (os.symlink("loop", d / "loop"), d / "loop" / "out")[1], "Too many levels of symbolic links"),
    (lambda d: d / ("n" * 300), "File name too long"),
])
def test_an_out_that_cannot_be_resolved_is_one_line(make, cause, cines, tiny_cardiac, tmp_path, capsys, fault):
    out = make(tmp_path)
    assert main(["segment-heart", str(cines["case1"]), "--out", str(out), "--model", str(tiny_cardiac),
                 "--quiet", "--device", "cpu"]) == 2
    line = fault.error_line(capsys.readouterr().err)
    assert line.endswith(cause) and str(out) in line


def test_cases_whose_paths_cannot_be_resolved_fail_alone(cines, tiny_cardiac, tmp_path, capsys, fault):
    os.symlink("loop", tmp_path / "loop")
    long_case = "c" * 300
    table = fault.manifest(tmp_path / "m.csv", {"looped": tmp_path / "loop" / "x.nii.gz",
                                                "long": tmp_path / ("i" * 300) / "x.nii.gz",
                                                long_case: cines["case1"], "case2": cines["case2"]})
    out = tmp_path / "out"
    assert main(["batch", "segment-heart", str(table), "--out", str(out), "--model", str(tiny_cardiac),
                 "--device", "cpu", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    with open(out / "cohort.csv", newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert [rows[c]["status"] for c in ("looped", "long", long_case, "case2")] == ["failed", "failed", "failed",
                                                                                 "done"]
    assert "File name too long" in rows["long"]["error"] and "File name too long" in rows[long_case]["error"]
    assert rows["looped"]["error"] and len([ln for ln in err.splitlines() if "failed:" in ln]) == 3


def test_an_output_taken_by_a_folder_writes_none_and_restores_what_it_replaced(cines, tiny_cardiac, tmp_path,
                                                                              capsys, fault):
    out = tmp_path / "out"
    args = ["segment-heart", str(cines["case1"]), "--out", str(out), "--model", str(tiny_cardiac), "--quiet",
            "--device", "cpu"]
    assert main(args) == 0
    (out / "measures.json").unlink()
    (out / "measures.json").mkdir()               # labels and csv would be replaced before the json fails
    earlier = fault.snapshot(out, CARDIAC_OUTPUTS)
    capsys.readouterr()
    args[1] = str(cines["case2"])
    assert main(args + ["--overwrite"]) == 2
    assert fault.error_line(capsys.readouterr().err) == f"medlearn: error: cannot write {out}/measures.json: " \
                                                        "Is a directory"
    fault.all_or_none(out, ["labels.nii.gz", "measures.csv"], before=earlier)
    assert (out / "measures.json").is_dir()
