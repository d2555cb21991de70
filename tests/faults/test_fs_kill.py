"""SIGKILL in the middle of writing the outputs: no output under its final name, and the next
run in that folder takes over the dead run's lock and removes its temporaries (only those:
other hidden files, even look-alikes, stay)."""

from __future__ import annotations

import signal

from napari_medlearn.cli import main
from napari_medlearn.imaging.atomic import LOCK_FILE
from napari_medlearn.jobs import CARDIAC_OUTPUTS

USERS_HIDDEN = (".keep", ".labels.nii.gz.tmp", ".x.0123456789AB.tmp", ".x.0123456789ab.tmp.csv")


def test_a_run_killed_mid_write_leaves_nothing_final_and_the_next_run_cleans_up(held, cines, tiny_cardiac,
                                                                                 tmp_path, capsys, fault):
    out = tmp_path / "out"
    out.mkdir()
    for name in USERS_HIDDEN:
        (out / name).write_text("the user's")
    args = ("segment-heart", cines["case1"], "--out", out, "--model", tiny_cardiac, "--device", "cpu", "--quiet")
    run = held("after-save", *args)              # labels.nii.gz written under a temporary name
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait(30)
    assert not any((out / n).exists() for n in CARDIAC_OUTPUTS)
    assert fault.leftovers(out) and (out / LOCK_FILE).exists()

    assert main(list(map(str, args))) == 0         # the next run (in this process)
    said = capsys.readouterr().out
    assert f"took over the lock of `medlearn segment-heart {cines['case1']}" in said
    assert f"(pid {run.pid} " in said and "removed 1 temporary file(s)" in said
    assert sorted(p.name for p in out.iterdir()) == sorted(CARDIAC_OUTPUTS + USERS_HIDDEN)
    assert all((out / n).read_text() == "the user's" for n in USERS_HIDDEN)


def test_a_single_file_job_removes_what_a_killed_write_left_beside_its_out(tmp_path, capsys):
    import numpy as np

    from napari_medlearn.imaging.atomic import temporary_name
    from napari_medlearn.imaging.io import write_nifti
    from napari_medlearn.imaging.volume import Volume

    stack = write_nifti(Volume(np.random.default_rng(0).random((3, 8, 8)).astype(np.float32), np.diag([4, 1, 1, 1.0]),
                               ("z", "y", "x")), tmp_path / "stack.nii.gz")
    out = tmp_path / "sr"
    out.mkdir()
    left = temporary_name(out / "sr.nii.gz")
    left.write_bytes(b"half a file of a killed run")
    (out / ".keep").write_text("the user's")
    assert main(["super-resolve", str(stack), "--factor", "2", "--out", str(out / "sr.nii.gz"), "--model", "spline",
                 "--quiet"]) == 0
    assert f"removed {left.name}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [".keep", "sr.nii.gz"]
