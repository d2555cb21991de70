"""The output-folder lock: who holds it, a dead holder's lock taken over with a note, released
however the block ends, and the temporaries of the plugin's naming removed only when their
writer is gone (never another hidden file, never one being written)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from napari_medlearn.imaging.atomic import (LOCK_FILE, FolderInUse, atomic_path, folder_lock, is_temporary_name,
                                            remove_stale_temporaries, temporary_name)


def test_the_lock_says_who_holds_it_and_a_second_taker_is_refused(tmp_path):
    with folder_lock(tmp_path / "out", "medlearn segment-heart a.nii.gz") as lock:
        info = json.loads(lock.read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert info["command"] == "medlearn segment-heart a.nii.gz" and info["started"]
        with pytest.raises(FolderInUse, match=rf"in use by `medlearn segment-heart a.nii.gz` \(pid {os.getpid()} "):
            with folder_lock(tmp_path / "out", "medlearn other"):
                pass
    assert not lock.exists()


def test_the_lock_of_a_killed_process_is_taken_over_with_a_note(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    code = ("import sys, os, signal; from napari_medlearn.imaging.atomic import folder_lock\n"
            "with folder_lock(sys.argv[1], 'medlearn killed-run'):\n    os.kill(os.getpid(), signal.SIGKILL)")
    assert subprocess.run([sys.executable, "-c", code, str(out)]).returncode == -9
    assert (out / LOCK_FILE).exists()               # left behind by the dead run
    notes = []
    with folder_lock(out, "medlearn next", note=notes.append):
        assert json.loads((out / LOCK_FILE).read_text())["command"] == "medlearn next"
    assert len(notes) == 1 and "took over the lock of `medlearn killed-run`" in notes[0]
    assert "no longer running" in notes[0] and not (out / LOCK_FILE).exists()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_the_lock_is_released_on_error_and_interrupt_and_a_folder_it_made_is_removed(tmp_path, error):
    kept = tmp_path / "kept"
    kept.mkdir()
    for folder in (kept, tmp_path / "made"):
        with pytest.raises(error):
            with folder_lock(folder, "x"):
                raise error()
        with folder_lock(folder, "again"):     # free again
            pass
    assert kept.is_dir() and list(kept.iterdir()) == [] and not (tmp_path / "made").exists()


def test_only_abandoned_temporaries_of_the_plugins_naming_are_removed(tmp_path):
    ours = temporary_name(tmp_path / "labels.nii.gz")
    ours.write_bytes(b"half")
    stage = temporary_name(tmp_path / "medlearn-outputs")
    stage.mkdir()
    (stage / "measures.csv").write_text("half")
    others = [".keep", ".labels.nii.gz.tmp", ".x.0123456789AB.tmp", ".x.0123456789ab.tmp.csv", "x.0123456789ab.tmp"]
    for name in others:
        assert not is_temporary_name(name)
        (tmp_path / name).write_text("the user's")
    with atomic_path(tmp_path / "being_written.csv") as writing:      # a live writer holds its temporary
        writing.write_text("in progress")
        assert sorted(p.name for p in remove_stale_temporaries(tmp_path, before=os.path.getmtime(writing) + 1)) \
            == sorted([ours.name, stage.name])
        assert writing.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others + ["being_written.csv"])


def test_a_temporary_newer_than_the_run_is_kept(tmp_path):
    ours = temporary_name(tmp_path / "scores.csv")
    ours.write_text("half")
    assert remove_stale_temporaries(tmp_path, before=os.path.getmtime(ours)) == [] and ours.exists()
