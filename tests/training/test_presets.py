"""A preset runs end to end: trains, evaluates on held-out data, writes a loadable model + card."""

import json

import pytest

from napari_medlearn import zoo
from napari_medlearn.training.presets import PRESETS, run_preset


def test_tiny_cardiac_phantom_preset_writes_a_card_that_matches_its_weights(tmp_path):
    card = run_preset("cardiac-phantom", tmp_path, epochs=1, iters_per_epoch=2, n_train=1, n_eval=1,
                      width=0.125, progress=False)
    on_disk = json.loads((tmp_path / "model.json").read_text())
    assert on_disk["sha256"] == zoo.sha256_of(tmp_path / "model.pt") == card["sha256"]
    assert on_disk["training"]["command"] == "medlearn train cardiac-phantom --ship"
    assert on_disk["evaluation"]["summary"]["n_cases"] == 1
    assert "seeds 10000..10000" in on_disk["evaluation"]["data"]
    model = zoo.load(tmp_path / "model.pt", device="cpu")
    assert model.card["input"]["in_plane_spacing_mm"] == 1.5


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="not supported"):
        run_preset("no-such-preset")
    assert {"cardiac-phantom", "cardiac-acdc"} <= set(PRESETS)
