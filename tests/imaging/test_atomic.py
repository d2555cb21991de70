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
