"""A full disk (a real size-limited tmpfs): one error line naming the file, exit 2, and the
job's outputs all there or none; in a cohort the case on the full disk fails alone."""

from __future__ import annotations

import csv
import json
import re

from napari_medlearn.cli import main
from napari_medlearn.jobs import CARDIAC_OUTPUTS


def test_a_full_disk_writes_none_of_the_outputs_and_leaves_the_earlier_ones(
        full_disk, cines, tiny_cardiac, tmp_path, capsys, fault):
    disk = full_disk(tmp_path / "disk", free_pages=None)
    out = disk / "results"
    args = ["segment-heart", str(cines["case1"]), "--out", str(out), "--model", str(tiny_cardiac), "--quiet",
            "--device", "cpu"]
    assert main(args) == 0                   # an earlier run, with room to spare
    earlier = fault.snapshot(out, CARDIAC_OUTPUTS)
    assert set(earlier) == set(CARDIAC_OUTPUTS)
    capsys.readouterr()
    # now the disk has room for the lock and the new labels only; the next patient is asked to replace them
    full_disk.fill(disk, free_pages=2)
    args[1] = str(cines["case2"])
    assert main(args + ["--overwrite"]) == 2
    line = fault.error_line(capsys.readouterr().err)
    assert line.startswith(f"medlearn: error: cannot write {out}/") and line.endswith(": No space left on device")
    fault.all_or_none(out, CARDIAC_OUTPUTS, before=earlier)     # the first patient's files, untouched
    assert json.loads((out / "measures.json").read_text())["source"] == str(cines["case1"])
    assert sorted(p.name for p in out.iterdir()) == sorted(CARDIAC_OUTPUTS)     # lock released


def test_a_case_on_a_full_disk_fails_alone_and_the_table_says_why(
        full_disk, cines, tiny_cardiac, tmp_path, capsys, fault):
    out = tmp_path / "cohort-out"
    full_disk(out / "case1", free_pages=2)        # room for case.json and the labels, not the rest
    table = fault.manifest(tmp_path / "cohort.csv", {"case1": cines["case1"], "case2": cines["case2"]})
    assert main(["batch", "segment-heart", str(table), "--out", str(out), "--model", str(tiny_cardiac),
                 "--device", "cpu", "--quiet"]) == 1          # some case failed
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.strip()]
    assert re.fullmatch(rf"medlearn: case case1 failed: cannot write {re.escape(str(out))}/case1/"
                        r"(measures\.csv|case\.json): No space left on device", line), line
    with open(out / "cohort.csv", newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert rows["case1"]["status"] == "failed" and "No space left on device" in rows["case1"]["error"]
    assert rows["case2"]["status"] == "done" and rows["case2"]["model"].startswith("tiny-cardiac")
    fault.all_or_none(out / "case1", CARDIAC_OUTPUTS)
    if (out / "case1" / "case.json").exists():          # (not on the emulated full disk: nothing moves there)
        assert json.loads((out / "case1" / "case.json").read_text())["status"] == "failed"
    assert all((out / "case2" / n).exists() for n in CARDIAC_OUTPUTS)
