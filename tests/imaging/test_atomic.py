import os
import stat

import pytest

from napari_medlearn.imaging.atomic import atomic_path


def test_replaces_on_success_and_keeps_the_suffix(tmp_path):
    target = tmp_path / "sub" / "labels.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == target.parent
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["labels.nii.gz"]


def test_upper_case_nifti_suffix_is_kept_whole(tmp_path):
    with atomic_path(tmp_path / "CASE01.NII.GZ") as tmp:
        assert tmp.name.endswith(".NII.GZ")


def test_failure_leaves_the_old_file_and_no_debris(tmp_path):
    target = tmp_path / "measures.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["measures.csv"]


def test_new_files_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "x.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o644


# ----- errors named after the file asked for; all outputs of a job or none -------------------

import errno  # noqa: E402

from napari_medlearn.imaging.atomic import error_message, staged_outputs  # noqa: E402


def test_a_failed_write_names_the_target_not_the_temporary(tmp_path):
    target = tmp_path / "labels.nii.gz"
    with pytest.raises(OSError) as info:
        with atomic_path(target) as tmp:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))     # as gzip says it: no file name
    assert info.value.errno == errno.ENOSPC
    assert error_message(info.value) == f"cannot write {target}: No space left on device"
    with pytest.raises(PermissionError) as info:          # the errno's own subclass is kept
        with atomic_path(target) as tmp:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp))
    assert error_message(info.value) == f"cannot write {target}: Permission denied"
    assert list(tmp_path.iterdir()) == []


def test_error_message_is_one_line_for_any_error():
    assert error_message(FileNotFoundError(errno.ENOENT, "No such file or directory", "a.nii")) == \
        "a.nii: No such file or directory"
    assert error_message(ValueError("bad input\nmore")) == "bad input"
    moved = OSError(errno.EXDEV, os.strerror(errno.EXDEV), "a", None, "b")
    assert error_message(moved).startswith("cannot move a to b")


def test_staged_outputs_appear_together_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    with staged_outputs(out) as stage:
        (stage / "a.csv").write_text("new a")
        (stage / "b.json").write_text("new b")
        assert list(out.iterdir()) == [stage]              # nothing under a final name yet
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "b.json"]
    with pytest.raises(RuntimeError):
        with staged_outputs(out) as stage:
            (stage / "a.csv").write_text("newer a")
            raise RuntimeError("the model failed")
    assert (out / "a.csv").read_text() == "new a" and sorted(p.name for p in out.iterdir()) == ["a.csv", "b.json"]


def test_a_move_that_fails_takes_back_the_moves_before_it(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.csv").write_text("old a")
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith("b.json"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(src), None, str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError) as info:
        with staged_outputs(out) as stage:
            (stage / "a.csv").write_text("new a")
            (stage / "b.json").write_text("new b")
            (stage / "c.npy").write_text("new c")
    assert error_message(info.value).startswith(f"cannot write {out / 'b.json'}")
    assert sorted(p.name for p in out.iterdir()) == ["a.csv"] and (out / "a.csv").read_text() == "old a"


def test_without_overwrite_a_file_that_appeared_meanwhile_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileExistsError, match="a.csv already exists"):
        with staged_outputs(out, overwrite=False) as stage:
            (stage / "a.csv").write_text("ours")
            (stage / "b.csv").write_text("ours")
            (out / "a.csv").write_text("someone else's")
    assert sorted(p.name for p in out.iterdir()) == ["a.csv"] and (out / "a.csv").read_text() == "someone else's"
