"""Weights that are valid files but not valid models (issue 41): NaN/Inf values, finite values
whose activations overflow, checkpoints without a card, checkpoints holding pickled code.
Each is met as a user meets it, through ``medlearn`` (tiny models and synthetic files only)."""

import csv
import json

import numpy as np
import pytest
import torch

from helpers import TINY_FCN
from napari_medlearn import zoo
from napari_medlearn.cli import main
from napari_medlearn.imaging.io import write_nifti
from napari_medlearn.nets import BaiFCN, SonoNet
from napari_medlearn.samples.cardiac_phantom import cardiac_cine_phantom


@pytest.fixture
def user_zoo(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLEARN_ZOO", str(tmp_path / "zoo"))
    return tmp_path / "zoo"


@pytest.fixture(scope="module")
def cine(tmp_path_factory):
    image, _ = cardiac_cine_phantom(seed=4, n_frames=3, matrix=(40, 48), in_plane_spacing=6.0).volumes()
    path = tmp_path_factory.mktemp("in") / "cine.nii.gz"
    write_nifti(image, path)
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("medlearn: error:") and "\n" not in err, err
    return err


def d5c5_arrays(bad: float | None = None) -> list[np.ndarray]:
    """Synthetic arrays in the layout of the authors' ``d5_c5.npz`` (small random values);
    ``bad`` (NaN or Inf) is put into one kernel of the third cascade."""
    rng = np.random.default_rng(0)
    shapes = [(64, 2, 3, 3), (64,), (64, 64, 3, 3), (64,), (64, 64, 3, 3), (64,),
              (64, 64, 3, 3), (64,), (2, 64, 3, 3), (2,)] * 5
    arrays = [(0.01 * rng.standard_normal(s)).astype(np.float32) for s in shapes]
    if bad is not None:
        arrays[22][3, 5, 1, 1] = bad
    return arrays


def sononet16_arrays(bad: float | None = None) -> list[np.ndarray]:
    """Synthetic arrays in the layout of the authors' ``SonoNet16.npz`` (W, beta, gamma, mean,
    inv_std per convolution); ``bad`` is put into the fourth convolution's kernel."""
    net = SonoNet(width=16, n_classes=14, in_channels=1, blocks=[2, 2, 3, 3, 3])
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    rng = np.random.default_rng(0)
    arrays = []
    for conv in convs:
        n = conv.out_channels
        arrays += [(0.05 * rng.standard_normal(tuple(conv.weight.shape))).astype(np.float32),
                   np.zeros(n, np.float32), np.ones(n, np.float32), np.zeros(n, np.float32), np.ones(n, np.float32)]
    if bad is not None:
        arrays[15][0, 0, 1, 1] = bad
    return arrays


@pytest.mark.parametrize("kind, make, first", [
    ("deep-cascade-d5c5", d5c5_arrays, "blocks.2.layers.2.weight"),
    ("sononet-16", sononet16_arrays, "features.1.1.0.weight"),
])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_imported_npz_with_nan_or_inf_is_refused_and_nothing_enters_the_zoo(kind, make, first, bad, user_zoo,
                                                                            tmp_path, capsys):
    good, broken = tmp_path / "good.npz", tmp_path / "published.npz"
    np.savez(good, *make())
    np.savez(broken, *make(bad))
    assert main(["import-weights", kind, str(broken)]) == 2
    err = _one_error_line(capsys)
    assert "weights in published.npz: 1 of " in err and f"tensors contain NaN/Inf (first: {first}); refusing" in err
    assert not user_zoo.exists() or not list(user_zoo.iterdir())
    # the same file without the bad value is a valid model: the refusal is about the values
    assert main(["import-weights", kind, str(good)]) == 0
    assert (user_zoo / f"{kind}.pt").is_file()


def _tiny_checkpoint(path, card=None, scale: float = 1.0, nan_key: str | None = None):
    """A tiny Bai FCN checkpoint, its weights multiplied by ``scale``, one tensor NaN if asked."""
    torch.manual_seed(0)
    net = BaiFCN(**TINY_FCN)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("weight") and p.dim() == 4:
                p.mul_(scale)
        if nan_key is not None:
            dict(net.named_parameters())[nan_key].view(-1)[0] = float("nan")
    zoo.save_checkpoint(net, path, "bai_fcn", TINY_FCN, card=card or {
        "name": "tiny-cardiac", "task": "cardiac-segmentation", "n_classes": 4,
        "input": {"in_plane_spacing_mm": 3.0}})
    return net


def test_a_nan_checkpoint_given_by_path_is_refused(cine, tmp_path, capsys):
    ckpt = tmp_path / "diverged.pt"
    _tiny_checkpoint(ckpt, nan_key="levels.2.0.0.weight")
    out = tmp_path / "out"
    assert main(["segment-heart", str(cine), "--out", str(out), "--model", str(ckpt), "--device", "cpu",
                 "--quiet"]) == 2
    err = _one_error_line(capsys)
    assert "weights in diverged.pt: 1 of " in err and "(first: levels.2.0.0.weight); refusing" in err
    assert not out.exists() or not list(out.iterdir())


def test_finite_weights_whose_output_overflows_are_refused(cine, tmp_path, user_zoo, capsys):
    ckpt = tmp_path / "huge.pt"
    net = _tiny_checkpoint(ckpt, scale=1e30)     # every value finite (float32 reaches 3.4e38)
    assert all(bool(torch.isfinite(t).all()) for t in net.state_dict().values())
    assert main(["segment-heart", str(cine), "--out", str(tmp_path / "out"), "--model", str(ckpt),
                 "--device", "cpu", "--quiet"]) == 2
    err = _one_error_line(capsys)
    assert "weights in huge.pt: finite weights, but" in err and "on a probe input (1, 1, 16, 16) are NaN/Inf" in err
    # nor can such weights be saved into the user zoo, where they would be used by name
    user_zoo.mkdir()
    with pytest.raises(zoo.ModelError, match="weights in huge-copy.pt: finite weights, but"):
        zoo.save_checkpoint(net, user_zoo / "huge-copy.pt", "bai_fcn", TINY_FCN, card={"name": "huge-copy"})
    assert not list(user_zoo.iterdir())


def test_a_cardless_checkpoint_is_named_after_its_file_in_the_outputs(cine, tmp_path, capsys):
    # a copy of a model whose carried card names a shipped model, without that model's card
    ckpt = tmp_path / "my-checkpoint.pt"
    _tiny_checkpoint(ckpt, card={"name": "cardiac-fcn-acdc", "task": "cardiac-segmentation", "n_classes": 4})
    sha = zoo.sha256_of(ckpt)
    out = tmp_path / "out"
    assert main(["segment-heart", str(cine), "--out", str(out), "--model", str(ckpt), "--device", "cpu",
                 "--quiet"]) == 0
    capsys.readouterr()
    with open(out / "measures.csv") as f:
        row = next(csv.DictReader(f))
    report = json.loads((out / "measures.json").read_text())
    assert row["model"] == report["model"] == "my-checkpoint (file my-checkpoint.pt)"
    assert row["model_sha256"] == report["model_sha256"] == sha
    card = zoo.card(ckpt)
    default = zoo.default_model("cardiac-segmentation")
    assert card["generated"] is True and card["name_in_checkpoint"] == "cardiac-fcn-acdc"
    assert card["architecture"] == "bai_fcn" and card["arch_args"] == TINY_FCN and card["sha256"] == sha
    assert card["input_from"] == default and card["input"] == zoo.card(default)["input"]
    assert not any(str(v) == "cardiac-fcn-acdc" for v in row.values())


def test_a_checkpoint_holding_pickled_code_is_refused_without_weights_only_advice(cine, tmp_path, capsys):
    ckpt = tmp_path / "pickled.pt"
    torch.save({"arch": "bai_fcn", "arch_args": TINY_FCN, "state_dict": BaiFCN(**TINY_FCN).state_dict(),
                "payload": np.random.default_rng(0)}, ckpt)
    assert main(["segment-heart", str(cine), "--out", str(tmp_path / "out"), "--model", str(ckpt),
                 "--device", "cpu", "--quiet"]) == 2
    err = _one_error_line(capsys)
    assert "pickled.pt is not a plain weights file (it holds pickled code objects: numpy.random" in err
    assert "medlearn only loads tensors" in err
    assert "weights_only" not in err and "weights only" not in err.lower()
    with pytest.raises(zoo.ModelError) as info:      # the widgets show the whole message
        zoo.load(ckpt, device="cpu")
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)


def test_training_resume_refuses_pickled_code_without_weights_only_advice(tmp_path):
    from napari_medlearn.training.trainer import TrainConfig, train

    torch.save({"arch": "bai_fcn", "payload": np.random.default_rng(0)}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="not a plain weights file") as info:
        train(BaiFCN(**TINY_FCN), "bai_fcn", TINY_FCN, lambda rng, dev: None, None,
              TrainConfig(epochs=1, iters_per_epoch=1, device="cpu"), tmp_path, progress=False)
    assert "weights_only" not in str(info.value)
