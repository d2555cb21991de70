import json

import numpy as np
import pytest
import torch

from napari_medlearn import zoo
from napari_medlearn.nets import BaiFCN

ARGS = dict(filters=[2, 2], blocks=[1, 1], same_dim=2, fc=2)


@pytest.fixture
def ckpt(tmp_path):
    net = BaiFCN(**ARGS)
    path = tmp_path / "tiny.pt"
    sha = zoo.save_checkpoint(net, path, "bai_fcn", ARGS, card={"name": "tiny", "task": "t"})
    return net, path, sha


def test_checkpoint_round_trip(ckpt):
    net, path, sha = ckpt
    assert sha == zoo.sha256_of(path)
    loaded = zoo.load(path, device="cpu")
    # no card beside it: the name is the file's, the carried name kept apart
    assert loaded.card["name"] == loaded.zoo_name == "tiny (file tiny.pt)" and loaded.card["sha256"] == sha
    assert loaded.card["generated"] is True and loaded.card["name_in_checkpoint"] == "tiny"
    for a, b in zip(net.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert not loaded.training


def test_sidecar_card_hash_is_checked(ckpt):
    _, path, sha = ckpt
    path.with_suffix(".json").write_text(json.dumps({"name": "tiny", "sha256": "0" * 64}))
    with pytest.raises(zoo.ModelError, match="sha256 mismatch"):
        zoo.load(path)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"arch": "bai_fcn", "arch_args": {}, "state_dict": {}, "payload": np.random.default_rng(0)}, path)
    with pytest.raises(zoo.ModelError, match="not a plain weights file .it holds pickled code objects: numpy"):
        zoo.load(path)


def test_not_a_checkpoint_and_missing_and_unknown(tmp_path):
    bad = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    with pytest.raises(zoo.ModelError, match="not a napari-medlearn checkpoint"):
        zoo.load(bad)
    with pytest.raises(zoo.ModelError, match="not found"):
        zoo.load(tmp_path / "missing.pt")
    with pytest.raises(zoo.ModelError, match="unknown model"):
        zoo.load("no-such-model")


def test_device_auto_resolves_to_something_torch_accepts():
    assert zoo.resolve_device("auto").type in ("cpu", "cuda", "mps")
    assert zoo.resolve_device("cpu").type == "cpu"


def test_every_shipped_model_matches_its_card():
    names = zoo.available()
    assert "cardiac-fcn-phantom" in names
    for name in names:
        card = zoo.card(name)
        if card.get("kind") == "ensemble":       # weights are its members'; the card names them
            assert len(card["members"]) >= 3 and set(card["members"]) <= set(names), name
            for key in ("task", "labels", "training", "evaluation", "licence"):
                assert key in card, f"{name} card lacks {key}"
            assert all(zoo.card(m)["task"] == card["task"] for m in card["members"])
            assert "medlearn train" in card["training"]["command"]
            continue
        assert card["sha256"] == zoo.sha256_of(zoo.WEIGHTS_DIR / f"{name}.pt")
        for key in ("task", "architecture", "labels", "input", "training", "evaluation", "licence"):
            assert key in card, f"{name} card lacks {key}"
        assert "medlearn train" in card["training"]["command"]
        model = zoo.load(name, device="cpu")
        assert model.zoo_name == name
    assert zoo.default_model("cardiac-segmentation") in names


def test_json_outputs_are_strict_json(tmp_path):
    import json

    path = tmp_path / "m.json"
    zoo.write_json_atomic({"LVEF_pct": float("nan"), "x": np.float32(np.inf), "ok": [np.float64(1.5), np.int64(2)]}, path)
    strict = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert strict == {"LVEF_pct": None, "x": None, "ok": [1.5, 2]}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_an_absent_device_is_refused_clearly():
    with pytest.raises(zoo.ModelError, match="'cuda' is not available on this machine"):
        zoo.resolve_device("cuda")


def test_a_model_of_another_task_is_refused():
    with pytest.raises(zoo.ModelError, match="recon-cascade-mr is a mri-reconstruction-2d model; this needs a "
                                             "us-standard-planes model"):
        zoo.load("recon-cascade-mr", device="cpu", task="us-standard-planes")
    assert zoo.load("recon-cascade-mr", device="cpu", task="mri-reconstruction").card["name"] == "recon-cascade-mr"


def test_a_numpy_scalar_in_a_card_still_gives_a_weights_only_file(tmp_path):
    import numpy as np
    import torch

    from helpers import TINY_FCN
    from napari_medlearn import zoo
    from napari_medlearn.nets import BaiFCN

    path = tmp_path / "m.pt"
    args = {**TINY_FCN, "in_channels": np.int64(TINY_FCN.get("in_channels", 1))}
    zoo.save_checkpoint(BaiFCN(**TINY_FCN), path, "bai_fcn", args,
                        card={"name": "m", "calibration": {"scale": np.float64(0.06)}})
    ck = torch.load(path, weights_only=True)
    assert ck["card"]["calibration"]["scale"] == 0.06 and type(ck["arch_args"]["in_channels"]) is int
