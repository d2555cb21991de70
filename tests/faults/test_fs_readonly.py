"""Read-only filesystems (EROFS, a tmpfs remounted read-only) and folders a user may not write
(EACCES, run without root's override of file modes): one line, exit 2, nothing written; in a
cohort the case that cannot be written fails alone and the others run."""

from __future__ import annotations

import csv
import os

from napari_medlearn.cli import main
from napari_medlearn.jobs import CARDIAC_OUTPUTS


def _rows(path):
    with open(path, newline="") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def test_a_read_only_out_is_one_line_and_nothing_is_touched(mounts, cines, tiny_cardiac, tmp_path, capsys, fault):
    out = mounts.tmpfs(tmp_path / "ro")
    (out / "notes.txt").write_text("the user's")
    mounts.read_only(out)
    assert main(["segment-heart", str(cines["case1"]), "--out", str(out), "--model", str(tiny_cardiac),
                 "--device", "cpu", "--quiet"]) == 2
    line = fault.error_line(capsys.readouterr().err)
    assert line.startswith(f"medlearn: error: cannot write to {out}: Read-only file system")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_read_only_case_folder_fails_alone(mounts, cines, tiny_cardiac, tmp_path, capsys, fault):
    out = tmp_path / "out"
    mounts.read_only(mounts.tmpfs(out / "case1"))
    table = fault.manifest(tmp_path / "m.csv", {"case1": cines["case1"], "case2": cines["case2"]})
    assert main(["batch", "segment-heart", str(table), "--out", str(out), "--model", str(tiny_cardiac),
                 "--device", "cpu", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines() == [f"medlearn: case case1 failed: cannot write {out}/case1/case.json: "
                                     "Read-only file system"]
    rows = _rows(out / "cohort.csv")
    assert rows["case1"]["status"] == "failed" and "Read-only file system" in rows["case1"]["error"]
    assert rows["case2"]["status"] == "done"
    assert list((out / "case1").iterdir()) == [] and all((out / "case2" / n).exists() for n in CARDIAC_OUTPUTS)


def test_an_unwritable_case_folder_fails_alone_and_the_later_cases_run(no_override, cines, tiny_cardiac, tmp_path,
                                                                        fault):
    out = tmp_path / "out"
    (out / "case1").mkdir(parents=True)
    os.chmod(out / "case1", 0o555)
    table = fault.manifest(tmp_path / "m.csv", {"case1": cines["case1"], "case2": cines["case2"]})
    r = fault.run("batch", "segment-heart", table, "--out", out, "--model", tiny_cardiac, "--device", "cpu",
                  "--quiet", prefix=no_override)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines() == [f"medlearn: case case1 failed: cannot write {out}/case1/case.json: "
                                     "Permission denied"]
    rows = _rows(out / "cohort.csv")
    assert rows["case1"]["status"] == "failed" and "Permission denied" in rows["case1"]["error"]
    assert rows["case2"]["status"] == "done" and all((out / "case2" / n).exists() for n in CARDIAC_OUTPUTS)
    assert list((out / "case1").iterdir()) == []
