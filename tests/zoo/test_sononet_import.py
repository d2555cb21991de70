"""Official SonoNet-16 weights (Baumgartner et al., Lasagne SonoNet16.npz, Apache-2.0) converted
into the user zoo reproduce the published predictions on the authors' example frames. Skips when
../shared/data/sononet (which holds the published file and frames) is absent."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from napari_medlearn import methods, zoo


def find_sononet_dir() -> Path | None:
    """``$MEDLEARN_SONONET`` or ``../shared/data/sononet`` beside the cwd or the checkout."""
    repo = Path(__file__).resolve().parents[2]
    candidates = [Path(os.environ["MEDLEARN_SONONET"])] if os.environ.get("MEDLEARN_SONONET") else []
    candidates += [Path.cwd().parent / "shared/data/sononet", repo.parent / "shared/data/sononet"]
    for c in candidates:
        if (c / "SonoNet16.npz").is_file():
            return c
    return None


DATA = find_sononet_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="../shared/data/sononet/SonoNet16.npz not found")
# the frames' file names -> the published class names
TRUTH = {"4CH": "4CH", "ABDOMINAL": "Abdominal", "BRAIN-TV": "Brain (Tv.)", "FEMUR": "Femur"}


def real_frames() -> tuple[list[str], np.ndarray]:
    from PIL import Image

    names, frames = [], []
    for f in sorted((DATA / "frames").glob("*.tiff")):
        names.append(f.stem)
        frames.append(np.asarray(Image.open(f))[115:734, 81:874])   # crop vendor text, as published
    return names, np.stack(frames)


@pytest.fixture
def user_zoo(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLEARN_ZOO", str(tmp_path / "zoo"))
    return tmp_path / "zoo"


@needs_data
def test_real_frames_are_classified_as_named(user_zoo):
    name = zoo.import_weights("sononet-16", DATA / "SonoNet16.npz")
    assert name == "sononet-16" and name in zoo.available("us-standard-planes")
    assert zoo.default_model("us-standard-planes") == "sononet-16"
    names, video = real_frames()
    assert set(names) == set(TRUTH)
    res = methods.detect_planes(video)                       # default model: the imported one
    assert res.model == "sononet-16"
    got = dict(zip(names, res.predicted_names))
    assert got == {n: TRUTH[n] for n in names}
    assert (res.confidence > 0.8).all(), dict(zip(names, res.confidence.round(3)))
    assert res.best_frames == {TRUTH[n]: i for i, n in enumerate(names)}
    assert res.saliency.shape == video.shape[:3] and np.isfinite(res.boxes).all()


@needs_data
def test_card_licence_and_batchnorm_statistics(user_zoo):
    import torch

    name = zoo.import_weights("sononet-16", DATA / "SonoNet16.npz")
    card = json.loads((user_zoo / f"{name}.json").read_text())
    assert card["sha256"] == zoo.sha256_of(user_zoo / f"{name}.pt")
    assert card["conversion"]["source_sha256"] == zoo.sha256_of(DATA / "SonoNet16.npz")
    assert card["licence"]["weights"] == "Apache-2.0" and "Baumgartner" in card["licence"]["citation"]
    assert card["class_names"][3] == "Background" and card["input"]["size"] == [224, 288]
    net = zoo.load(name, device="cpu")
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with np.load(DATA / "SonoNet16.npz") as f:
        for i, bn in enumerate(bns):
            inv_std = f[f"arr_{5 * i + 4}"]
            np.testing.assert_allclose(1 / np.sqrt(bn.running_var.numpy().astype(np.float64) + bn.eps),
                                       inv_std, rtol=1e-5)
            np.testing.assert_array_equal(bn.bias.detach().numpy(), f[f"arr_{5 * i + 1}"])      # beta
            np.testing.assert_array_equal(bn.weight.detach().numpy(), f[f"arr_{5 * i + 2}"])    # gamma


@needs_data
def test_flipped_kernels_would_be_wrong():
    """The authors built every 3x3 layer with flip_filters=False; flipping breaks predictions."""
    from napari_medlearn.zoo.sononet_import import convert_sononet

    names, video = real_frames()
    flipped, *_ = convert_sononet(DATA / "SonoNet16.npz", 16, flip_filters=True)
    flipped.card = {}
    res = methods.detect_planes(video, model=flipped, saliency=False)
    assert sum(got != TRUTH[n] for n, got in zip(names, res.predicted_names)) >= 1


@needs_data
def test_wrong_files_are_refused(user_zoo, tmp_path):
    with pytest.raises(zoo.ModelError, match="SonoNet32"):
        zoo.import_weights("sononet-32", DATA / "SonoNet16.npz")
    with pytest.raises(zoo.ModelError):
        zoo.import_weights("sononet-16", DATA / "SmallNet.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(zoo.ModelError, match="cannot read"):
        zoo.import_weights("sononet-16", bad)
    with pytest.raises(FileNotFoundError):
        zoo.import_weights("sononet-16", tmp_path / "missing.npz")
