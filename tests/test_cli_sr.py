"""``medlearn super-resolve``: geometry kept, fusion, refusal to overwrite, one-line errors."""

import numpy as np
import pytest
import torch

from napari_medlearn import zoo
from napari_medlearn.cli import main
from napari_medlearn.imaging.io import read_nifti, write_nifti
from napari_medlearn.imaging.slices import fine_grid
from napari_medlearn.imaging.volume import Volume
from napari_medlearn.nets.sr import SRNet


def _oblique_affine(spacing=(4.0, 1.25, 1.25)):
    c, s = np.cos(0.3), np.sin(0.3)
    R = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    aff = np.eye(4)
    aff[:3, :3] = R @ np.diag(spacing)
    aff[:3, 3] = (-20.0, 15.0, 3.0)
    return aff


@pytest.fixture
def stack_file(tmp_path):
    data = np.random.default_rng(0).random((5, 16, 12)).astype(np.float32)
    path = tmp_path / "stack.nii.gz"
    write_nifti(Volume(data, _oblique_affine(), ("z", "y", "x")), path)
    return path


def test_super_resolve_keeps_geometry_and_refuses_to_overwrite(stack_file, tmp_path, capsys):
    out = tmp_path / "sr.nii.gz"
    assert main(["super-resolve", str(stack_file), "--factor", "4", "--out", str(out), "--model", "spline",
                 "--quiet"]) == 0
    src, res = read_nifti(stack_file), read_nifti(out)
    shape, faff = fine_grid(src.data.shape, src.affine, 4)
    assert res.data.shape == shape == (20, 16, 12)
    np.testing.assert_allclose(res.affine, faff, atol=1e-4)
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["super-resolve", str(stack_file), "--out", str(out), "--model", "spline", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0]
    assert out.read_bytes() == before
    # the input itself as --out: refused even with --overwrite
    source = stack_file.read_bytes()
    assert main(["super-resolve", str(stack_file), "--out", str(stack_file), "--overwrite", "--model", "spline",
                 "--quiet"]) == 2
    assert "differ from the inputs" in capsys.readouterr().err and stack_file.read_bytes() == source


def test_a_checkpoint_model_and_a_bad_factor(stack_file, tmp_path, capsys):
    torch.manual_seed(0)
    args = {"factor": 4, "width": 2, "n_lr": 1, "n_hr": 1}
    ckpt = tmp_path / "tiny-sr.pt"
    zoo.save_checkpoint(SRNet(**args), ckpt, "sr_net", args, card={"name": "tiny-sr", "task": "mr-super-resolution"})
    out = tmp_path / "net.nii.gz"
    assert main(["super-resolve", str(stack_file), "--out", str(out), "--model", str(ckpt), "--quiet"]) == 0
    assert read_nifti(out).data.shape == (20, 16, 12)
    capsys.readouterr()
    assert main(["super-resolve", str(stack_file), "--factor", "2.5", "--out", str(tmp_path / "x.nii.gz"),
                 "--model", "spline", "--quiet"]) == 2
    assert "factor" in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()


def test_fusion_of_two_stacks_and_a_2d_image(stack_file, tmp_path, capsys):
    src = read_nifti(stack_file)
    # the same anatomy as a second stack thick along another axis: permute the voxel axes
    data2 = np.ascontiguousarray(np.transpose(src.data, (1, 0, 2)))
    second = tmp_path / "second.nii.gz"
    write_nifti(Volume(data2, src.affine[:, [1, 0, 2, 3]], ("z", "y", "x")), second)
    out = tmp_path / "fused.nii.gz"
    assert main(["super-resolve", str(stack_file), str(second), "--factor", "4", "--out", str(out),
                 "--model", "average", "--quiet"]) == 0
    res = read_nifti(out)
    _, faff = fine_grid(src.data.shape, src.affine, 4)
    np.testing.assert_allclose(res.affine, faff, atol=1e-4)
    flat = tmp_path / "flat.nii.gz"
    write_nifti(Volume(np.zeros((16, 12), np.float32), np.eye(4), ("y", "x")), flat)
    capsys.readouterr()
    assert main(["super-resolve", str(flat), "--out", str(tmp_path / "y.nii.gz"), "--model", "spline",
                 "--quiet"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
