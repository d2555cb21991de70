"""The weight checks of :mod:`napari_medlearn.zoo.verify`: a probe for every architecture,
cheap enough to run on every shipped model, run once per file and process."""

import pytest
import torch

from helpers import TINY_FCN
from napari_medlearn import nets, zoo
from napari_medlearn.nets import BaiFCN
from napari_medlearn.zoo import verify


def test_every_architecture_has_a_probe():
    assert set(verify.PROBES) == set(nets.ARCHITECTURES)


def test_every_shipped_model_passes_the_probe():
    for name in zoo.available():
        c = zoo.card(name)
        if c.get("kind") == "ensemble":
            continue
        model = zoo.load(name, device="cpu")
        assert verify.problem(model, c["architecture"]) is None, name


def test_a_file_is_probed_once_per_process(tmp_path, monkeypatch):
    path = tmp_path / "tiny.pt"
    zoo.save_checkpoint(BaiFCN(**TINY_FCN), path, "bai_fcn", TINY_FCN)
    calls = []
    monkeypatch.setattr(zoo, "problem", lambda model, arch: calls.append(arch))
    zoo.load(path, device="cpu")
    zoo._CACHE.clear()
    zoo.load(path, device="cpu")
    assert calls == ["bai_fcn"]


def test_the_probe_keeps_the_model_mode_and_its_weights():
    net = BaiFCN(**TINY_FCN).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert verify.probe_output(net, "bai_fcn") is None
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_unreadable_files_are_one_line_without_torch_advice(tmp_path):
    trunc = tmp_path / "trunc.pt"
    zoo.save_checkpoint(BaiFCN(**TINY_FCN), tmp_path / "whole.pt", "bai_fcn", TINY_FCN)
    trunc.write_bytes((tmp_path / "whole.pt").read_bytes()[:3000])
    with pytest.raises(ValueError, match="trunc.pt is not a readable weights file .truncated, or not written") as info:
        verify.torch_load(trunc)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)
    with pytest.raises(FileNotFoundError):
        verify.torch_load(tmp_path / "missing.pt")
