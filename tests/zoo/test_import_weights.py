"""Official deep-cascade weights (Schlemper et al., Lasagne d5_c5.npz, Apache-2.0) converted into
the user zoo: the card carries the licence and hashes, and the converted model beats
zero-filling on a real MR image. Skips when ../shared (which holds the published file) is absent."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from napari_medlearn import methods, zoo
from napari_medlearn.imaging import kspace as K
from napari_medlearn.methods.recon import reconstruction_quality


def find_d5c5() -> Path | None:
    """``d5_c5.npz``: ``$MEDLEARN_DEEP_CASCADE``, or ``../shared/data/deep-cascade/`` beside the
    current directory or the checkout (as training.acdc.find_acdc_root looks for ACDC)."""
    repo = Path(__file__).resolve().parents[2]
    candidates = [Path(os.environ["MEDLEARN_DEEP_CASCADE"])] if os.environ.get("MEDLEARN_DEEP_CASCADE") else []
    candidates += [Path.cwd().parent / "shared/data/deep-cascade", repo.parent / "shared/data/deep-cascade"]
    for c in candidates:
        for f in (c, c / "d5_c5.npz"):
            if f.is_file():
                return f
    return None


D5C5 = find_d5c5()
needs_file = pytest.mark.skipif(D5C5 is None, reason="../shared/data/deep-cascade/d5_c5.npz not found")


@pytest.fixture
def user_zoo(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLEARN_ZOO", str(tmp_path / "zoo"))
    return tmp_path / "zoo"


@pytest.fixture(scope="module")
def mni_slice():
    """A real MR image: MNI152 T1 (nilearn, 1 mm) axial slice z=100, padded to 256 x 256."""
    from napari_medlearn.samples import mni152_t1
    from napari_medlearn.training.recon import pad_to

    s = mni152_t1(resolution=1).data[100]
    return pad_to(s / s.max(), 256)


@needs_file
def test_conversion_writes_a_loadable_model_with_its_licence(user_zoo):
    name = zoo.import_weights("deep-cascade-d5c5", D5C5)
    assert name == "deep-cascade-d5c5"
    assert (user_zoo / f"{name}.pt").is_file() and (user_zoo / f"{name}.json").is_file()
    assert name in zoo.available() and name in zoo.available("mri-reconstruction-2d")
    card = json.loads((user_zoo / f"{name}.json").read_text())
    assert card["sha256"] == zoo.sha256_of(user_zoo / f"{name}.pt")
    assert card["conversion"]["source_sha256"] == zoo.sha256_of(D5C5)
    assert card["licence"]["weights"] == "Apache-2.0" and "Schlemper" in card["licence"]["copyright"]
    assert "flip" in card["conversion"]["notes"]
    net = zoo.load(name, device="cpu")
    assert net.zoo_name == name and (net.dims, net.n_cascades, net.n_layers, net.width) == (2, 5, 5, 64)
    # Lasagne's flip_filters=True: every kernel is the published one rotated by 180 degrees
    with np.load(D5C5) as f:
        w0, b0, w_last = f["arr_0"], f["arr_1"], f["arr_48"]
    np.testing.assert_array_equal(net.blocks[0].layers[0].weight.detach().numpy(), w0[..., ::-1, ::-1])
    np.testing.assert_array_equal(net.blocks[0].layers[0].bias.detach().numpy(), b0)
    np.testing.assert_array_equal(net.blocks[4].layers[-1].weight.detach().numpy(), w_last[..., ::-1, ::-1])


@needs_file
def test_imported_model_beats_zero_filling_on_a_real_mr_image(user_zoo, mni_slice):
    name = zoo.import_weights("deep-cascade-d5c5", D5C5)
    k, m = K.simulate_acquisition(mni_slice, 4, "cartesian", 8, seed=0)
    res = methods.reconstruct(k, m, model=name, device="cpu")
    zf = reconstruction_quality(mni_slice, res.zero_filled)
    rc = reconstruction_quality(mni_slice, res.image)
    assert rc["psnr_db"] > zf["psnr_db"] + 5.0, (zf, rc)     # measured: about +9 dB
    assert rc["ssim"] > zf["ssim"] + 0.05, (zf, rc)
    assert res.model_name == name


@needs_file
def test_out_folder_gives_a_path_that_loads(tmp_path, user_zoo):
    path = zoo.import_weights("deep-cascade-d5c5", D5C5, out=tmp_path / "elsewhere")
    assert path == str(tmp_path / "elsewhere" / "deep-cascade-d5c5.pt")
    assert zoo.card(path)["licence"]["weights"] == "Apache-2.0"
    assert zoo.load(path, device="cpu").width == 64
    assert "deep-cascade-d5c5" not in zoo.available()


def test_unknown_kind_and_bad_files_are_refused(tmp_path, user_zoo):
    with pytest.raises(ValueError, match="not supported"):
        zoo.import_weights("unet-2015", tmp_path / "x.npz")
    with pytest.raises(FileNotFoundError):
        zoo.import_weights("deep-cascade-d5c5", tmp_path / "missing.npz")
    np.savez(tmp_path / "few.npz", np.zeros(3))
    with pytest.raises(zoo.ModelError, match="arr_0..arr_49"):
        zoo.import_weights("deep-cascade-d5c5", tmp_path / "few.npz")
    arrays = [np.zeros((1,), np.float32)] * 50
    np.savez(tmp_path / "shapes.npz", *arrays)
    with pytest.raises(zoo.ModelError, match="shape"):
        zoo.import_weights("deep-cascade-d5c5", tmp_path / "shapes.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(zoo.ModelError, match="cannot read"):
        zoo.import_weights("deep-cascade-d5c5", tmp_path / "text.npz")
    assert not user_zoo.exists() or not list(user_zoo.iterdir())


def test_user_zoo_models_load_by_name_and_shipped_names_win(tmp_path, user_zoo):
    import torch

    from napari_medlearn.nets import DeepCascade

    args = {"dims": 2, "n_cascades": 1, "n_layers": 2, "width": 2}
    torch.manual_seed(0)
    path = user_zoo / "mine.pt"
    card = {"name": "mine", "task": "mri-reconstruction-2d"}
    sha = zoo.save_checkpoint(DeepCascade(**args), path, "deep_cascade", args, card=card)
    zoo.write_json_atomic({**card, "sha256": sha}, path.with_suffix(".json"))
    assert "mine" in zoo.available("mri-reconstruction-2d")
    assert zoo.card("mine")["sha256"] == sha
    assert zoo.load("mine", device="cpu").width == 2
    # a tampered file is refused by its hash
    zoo.write_json_atomic({**card, "sha256": "0" * 64}, path.with_suffix(".json"))
    with pytest.raises(zoo.ModelError, match="sha256 mismatch"):
        zoo.load("mine", device="cpu")
    # a user card without weights is not listed
    zoo.write_json_atomic({"name": "ghost", "task": "x"}, user_zoo / "ghost.json")
    assert "ghost" not in zoo.available()
