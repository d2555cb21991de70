import importlib

from npe2 import PluginManifest


def test_manifest_is_valid_and_every_command_resolves():
    pm = PluginManifest.from_distribution("napari-medlearn")
    assert pm.name == "napari-medlearn"
    for cmd in pm.contributions.commands:
        module, _, attr = cmd.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), cmd.python_name
    keys = {s.key for s in pm.contributions.sample_data}
    assert {"cardiac_cine", "mni152_t1"} <= keys


def test_samples_carry_geometry():
    from napari_medlearn.samples import mni152_t1_sample

    (data, kw, kind), = mni152_t1_sample()
    assert kind == "image" and data.ndim == 3
    assert kw["scale"] == (2.0, 2.0, 2.0)
    assert kw["metadata"]["affine"].shape == (4, 4)
