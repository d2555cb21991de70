"""npe2 ``sample_data`` hooks: the samples of :mod:`napari_medlearn.samples` (napari-free, also
used by the demo and the tests), plus what only a viewer can do: napari makes a sample's last
layer (its hidden truth) the active one, so the layer controls and a mask-correction picker would
start on the answer key; once the layers are in, the sample's image is made active instead."""

from __future__ import annotations


def _activate_after_opening(name: str) -> None:
    """Once the sample's layers are in, make the visible image named ``name`` active (no-op
    without a viewer)."""
    try:
        from napari import current_viewer
        from qtpy.QtCore import QTimer
    except ImportError:  # pragma: no cover
        return
    viewer = current_viewer()
    if viewer is None:
        return

    def activate() -> None:
        shown = [layer for layer in viewer.layers if layer.name.startswith(name) and layer.visible]
        if shown:
            viewer.layers.selection.active = shown[-1]
    QTimer.singleShot(0, activate)


def cardiac_cine_sample(seed: int = 2024):
    """A short-axis cine phantom ``(t, z, y, x)`` with its exact labels (hidden)."""
    from . import samples

    layers = samples.cardiac_cine_sample(seed)
    _activate_after_opening("cardiac cine (phantom)")
    return layers


def brain_lesion_sample(seed: int = 3, domain: str = "A"):
    """The synthetic lesion case (FLAIR + T1c, truth hidden), the FLAIR active."""
    from . import samples

    layers = samples.brain_lesion_sample(seed, domain)
    _activate_after_opening(next(kw["name"] for _d, kw, t in layers if t == "image" and kw.get("visible", True)))
    return layers
