"""``medlearn reconstruct`` (image in -> simulated k-space; or k-space + mask as .npy/.h5) and
``medlearn import-weights``: outputs, figures, and one-line errors with status 2."""

import json

import numpy as np
import pytest
import torch

from napari_medlearn import zoo
from napari_medlearn.cli import main
from napari_medlearn.jobs import RECON_OUTPUTS
from napari_medlearn.imaging import kspace as K
from napari_medlearn.imaging.io import read_nifti, write_nifti
from napari_medlearn.imaging.volume import Volume, affine_from_spacing
from napari_medlearn.nets import DeepCascade


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    args = {"dims": 2, "n_cascades": 1, "n_layers": 2, "width": 4}
    path = tmp_path_factory.mktemp("m") / "tiny-recon.pt"
    zoo.save_checkpoint(DeepCascade(**args), path, "deep_cascade", args,
                        card={"name": "tiny-recon", "task": "mri-reconstruction-2d"})
    return str(path)


def _image(shape=(3, 32, 24)):
    img = np.zeros(shape, np.float32)
    img[..., 8:24, 6:18] = 1.0
    return img + 0.1 * np.random.default_rng(0).random(shape, dtype=np.float32)


def test_image_input_is_undersampled_and_reconstructed(tmp_path, tiny_model, capsys):
    vol = Volume(_image(), affine_from_spacing((3.0, 1.5, 1.25), origin=(10.0, -5.0, 2.0)), ("z", "y", "x"), {})
    src = tmp_path / "scan.nii.gz"
    write_nifti(vol, src)
    out = tmp_path / "out"
    assert main(["reconstruct", str(src), "--acceleration", "4", "--pattern", "cartesian", "--centre-lines", "4",
                 "--out", str(out), "--model", tiny_model, "--quiet"]) == 0
    for name in RECON_OUTPUTS:
        assert (out / name).exists(), name
    rec = read_nifti(out / "reconstruction.nii.gz")
    np.testing.assert_allclose(rec.affine, read_nifti(src).affine, atol=1e-5)
    assert rec.data.shape == vol.data.shape
    report = json.loads((out / "recon.json").read_text())
    assert report["model"] == "tiny-recon (file tiny-recon.pt)" and report["acceleration"] == pytest.approx(32 / 8)
    assert report["reconstruction"]["psnr_db"] > 0 and 0 < report["zero_filled"]["ssim"] <= 1
    image = np.load(out / "reconstruction.npy")
    assert image.dtype == np.complex64 and image.shape == vol.data.shape
    mask = read_nifti(out / "mask.nii.gz").data.astype(bool)
    assert mask.shape == vol.data.shape and np.all(mask == mask[:1])       # one mask for all slices
    printed = capsys.readouterr().out
    assert "zero-filled PSNR" in printed and "cascade PSNR" in printed


def test_a_z_scored_image_keeps_its_scale_and_signs(tmp_path, tiny_model, capsys):
    img = (_image() - 0.5) * 2.0                          # background about -1, as a z-scored scan
    src = tmp_path / "z.nii.gz"
    write_nifti(Volume(img, affine_from_spacing((3.0, 1.5, 1.25)), ("z", "y", "x"), {}), src)
    out = tmp_path / "out"
    assert main(["reconstruct", str(src), "--acceleration", "2", "--centre-lines", "4", "--out", str(out),
                 "--model", tiny_model, "--quiet"]) == 0
    assert "negative values" in capsys.readouterr().out
    report = json.loads((out / "recon.json").read_text())
    assert report["offset"] == pytest.approx(float(img.min())) and report["outputs"] == "real parts"
    zf = read_nifti(out / "zero_filled.nii.gz").data
    rec = read_nifti(out / "reconstruction.nii.gz").data
    assert zf.min() < -0.5 and rec.min() < -0.5                 # not folded into magnitudes
    np.testing.assert_allclose(rec, np.load(out / "reconstruction.npy").real, atol=1e-6)
    assert report["zero_filled"]["psnr_db"] > 10


def test_kspace_and_mask_from_npy_and_h5(tmp_path, tiny_model):
    import h5py

    k, m = K.simulate_acquisition(_image((32, 24)), 3, "equispaced", 4, seed=1)
    np.save(tmp_path / "k.npy", k)
    np.save(tmp_path / "m.npy", m)
    assert main(["reconstruct", str(tmp_path / "k.npy"), "--mask", str(tmp_path / "m.npy"),
                 "--out", str(tmp_path / "a"), "--model", tiny_model, "--quiet"]) == 0
    a = np.load(tmp_path / "a" / "reconstruction.npy")
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["kspace"] = k
        f["mask"] = m
    assert main(["reconstruct", str(tmp_path / "d.h5"), "--out", str(tmp_path / "b"), "--model", tiny_model,
                 "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "b" / "reconstruction.npy"), a)
    assert "reconstruction" not in json.loads((tmp_path / "b" / "recon.json").read_text())   # no reference


@pytest.mark.parametrize("setup, args, match", [
    (lambda p, k, m: np.save(p / "k.npy", np.abs(k)), ["--mask", "{p}/m.npy"], "complex-valued"),
    (lambda p, k, m: np.save(p / "k.npy", k), ["--mask", "{p}/bad.npy"], "does not broadcast"),
    (lambda p, k, m: np.save(p / "k.npy", k), [], "--mask"),
    (lambda p, k, m: np.save(p / "k.npy", k), ["--mask", "{p}/zero.npy"], "all zeros"),
    (lambda p, k, m: np.save(p / "k.npy", k), ["--mask", "{p}/missing.npy"], "no such file"),
])
def test_bad_input_gives_one_line_and_status_2(setup, args, match, tmp_path, tiny_model, capsys):
    k, m = K.simulate_acquisition(_image((32, 24)), 3, seed=1)
    np.save(tmp_path / "m.npy", m)
    np.save(tmp_path / "bad.npy", np.ones((5, 24), bool))
    np.save(tmp_path / "zero.npy", np.zeros_like(m))
    setup(tmp_path, k, m)
    argv = ["reconstruct", str(tmp_path / "k.npy"), "--out", str(tmp_path / "o"), "--model", tiny_model, "--quiet"]
    argv += [a.format(p=tmp_path) for a in args]
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("medlearn: error:") and match in err[0], err
    assert not (tmp_path / "o" / "reconstruction.npy").exists()


def test_a_constant_image_is_refused_before_any_work(tmp_path, tiny_model, capsys):
    path = tmp_path / "zero.nii.gz"
    write_nifti(Volume.from_spacing(np.zeros((3, 32, 24), np.float32), (5.0, 1.0, 1.0)), path)
    assert main(["reconstruct", str(path), "--out", str(tmp_path / "o"), "--model", tiny_model, "--quiet"]) == 2
    assert "constant" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_outputs_are_not_overwritten(tmp_path, tiny_model, capsys):
    k, m = K.simulate_acquisition(_image((32, 24)), 3, seed=1)
    np.save(tmp_path / "k.npy", k)
    np.save(tmp_path / "m.npy", m)
    out = tmp_path / "o"
    out.mkdir()
    (out / "recon.json").write_text("precious")
    argv = ["reconstruct", str(tmp_path / "k.npy"), "--mask", str(tmp_path / "m.npy"), "--out", str(out),
            "--model", tiny_model, "--quiet"]
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "recon.json").read_text() == "precious"
    assert main(argv + ["--overwrite"]) == 0


def test_import_weights_command_refuses_unknown_kinds(tmp_path, capsys):
    assert main(["import-weights", "nope", str(tmp_path / "x.npz")]) == 2
    assert "not supported" in capsys.readouterr().err
