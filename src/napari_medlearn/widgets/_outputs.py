"""One layer per output kind: a widget's next run refreshes its own layers instead of piling up.

napari renames a second ``"FLAIR [DeepMedic]"`` to ``"FLAIR [DeepMedic] [1]"`` and a reviewer
no longer knows which layer is which run. :class:`OutputLayers` keeps, per output (a key such
as ``("labels", source name)``), the layer the widget added and the name it gave it. The next
run writes into that layer when the user has neither painted on it nor renamed it; otherwise
the user's layer is kept untouched and the new result gets its own layer, named with the model.
"""

from __future__ import annotations

from typing import Any, Callable


class OutputLayers:
    """The layers a widget owns, by output key (see the module docstring)."""

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self._given: dict[Any, tuple[Any, str]] = {}   # key -> (layer, name the widget gave)
        self._edited: set[int] = set()                 # ids of layers the user painted on
        self._writing = False

    def _mark_edited(self, layer) -> Callable:
        def mark(_event=None) -> None:
            if not self._writing:
                self._edited.add(id(layer))
        return mark

    def edited(self, layer) -> bool:
        """Whether the user painted on ``layer`` (one of the widget's)."""
        return id(layer) in self._edited

    def reusable(self, key) -> Any:
        """The layer of ``key`` that a new run may overwrite, or None."""
        layer, name = self._given.get(key, (None, ""))
        if layer is None or layer not in self.viewer.layers:
            return None
        if layer.name != name or id(layer) in self._edited:
            return None
        return layer

    def kept(self, key) -> bool:
        """Whether an earlier output of ``key`` stays in the viewer as the user's (edited or renamed)."""
        layer, _name = self._given.get(key, (None, ""))
        return layer is not None and layer in self.viewer.layers and self.reusable(key) is None

    def write(self, layer, data) -> None:
        """Set a layer's data for the widget (a refresh, not a user's edit)."""
        self._writing = True
        try:
            layer.data = data
        finally:
            self._writing = False

    def put(self, key, add: Callable[..., Any], data, name: str, model_name: str, **props: Any):
        """Show ``data`` for ``key``: written into the earlier layer when :meth:`reusable`, else
        ``add(data, name=..., **props)``; ``name`` gets ``model_name`` when a kept layer of the user's
        has it. ``props`` (metadata, geometry, colours) are set on a reused layer as well, except
        its visibility, which stays the user's choice. Returns the layer."""
        layer = self.reusable(key)
        if layer is not None:
            for prop, value in props.items():
                if prop not in ("visible", "name", "features"):
                    setattr(layer, prop, value)
            self.write(layer, data)
            return layer
        if self.kept(key) and model_name:
            name = _with_model(name, model_name)
        layer = add(data, name=name, **props)
        self._given[key] = (layer, layer.name)
        if hasattr(layer.events, "paint"):
            layer.events.paint.connect(self._mark_edited(layer))
        layer.events.data.connect(self._mark_edited(layer))
        return layer


def _with_model(name: str, model: str) -> str:
    """``"FLAIR [DeepMedic]"`` -> ``"FLAIR [DeepMedic lesions-brats]"``; without a bracket the
    model is appended in one."""
    if name.endswith("]"):
        return f"{name[:-1]} {model}]"
    return f"{name} [{model}]"


def heat_colormap(name: str = "inferno"):
    """A matplotlib colormap whose low end fades to transparent, for ``blending="translucent"``:
    a heat map drawn over the anatomy, which stays readable where the anatomy is bright (additive
    blending over a bright FLAIR lesion saturates to white)."""
    import numpy as np
    from matplotlib import colormaps
    from napari.utils.colormaps import Colormap

    x = np.linspace(0.0, 1.0, 64)
    colors = colormaps[name](0.25 + 0.75 * x)      # skip inferno's black end: dark reads as "none"
    colors[:, 3] = np.clip(x * 1.6, 0.0, 1.0)
    return Colormap(colors=colors, controls=x, name=f"{name} (fading)")
