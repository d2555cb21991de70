"""Defaults that fit the data: which kind of image (phantom, synthetic, real) a model was made for.

A model trained on phantoms can look broken on a real scan and the other way round (the imported
official SonoNet-16 outranks the phantom model on the phantom sweep: 0.28 frame accuracy; the
BraTS lesion model gives 156 mL for a 111.5 mL synthetic tumour). The samples say what they are
in ``layer.metadata["image_kind"]``; a card says it through its training data (the words of
:data:`KIND_WORDS` in ``card["training"]``, or an explicit ``card["image_kinds"]``).
:class:`FitWatch` warns once per (model, layer) when they differ, in the dock and as a
notification, and when a sample's image is chosen while the user has not picked a model, it picks
the shipped model made for that kind.
"""

from __future__ import annotations

import json
from typing import Any

from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QLabel

META_KEY = "image_kind"
#: kind -> words of a card's training data that say the model saw images of that kind
KIND_WORDS = {
    "phantom": ("phantom",),
    "synthetic": ("synthetic",),
    "real": ("acdc", "brats", "examinations", "mni152", "patients", "subjects", "ultrasound scans"),
}


def card_image_kinds(card: dict[str, Any]) -> set[str]:
    """The kinds of image a card's model was trained on (empty: the card does not say)."""
    explicit = card.get("image_kinds")
    if isinstance(explicit, (list, tuple)):
        return {str(k) for k in explicit}
    text = json.dumps(card.get("training") or {}).lower()
    return {kind for kind, words in KIND_WORDS.items() if any(w in text for w in words)}


def layer_image_kind(layer) -> str | None:
    """What a layer says it is (the samples do), else None."""
    kind = (getattr(layer, "metadata", None) or {}).get(META_KEY)
    return kind if kind in KIND_WORDS else None


def _card(model) -> dict[str, Any]:
    from .. import zoo

    try:
        return zoo.card(model)
    except Exception:  # noqa: BLE001 (an unreadable card: the run will say why)
        return {}


def mismatch(model, layer) -> str | None:
    """One line saying that ``model`` was made for other images than ``layer``, or None."""
    kind = layer_image_kind(layer)
    if model is None or layer is None or kind is None:
        return None
    kinds = card_image_kinds(_card(model))
    if not kinds or kind in kinds:
        return None
    name = _card(model).get("name") or str(model)
    return (f"{name} was trained on {' and '.join(sorted(kinds))} images, but {layer.name!r} is a {kind} image: "
            f"expect poor results; choose a model made for {kind} images")


def matching_model(task: str, kind: str) -> str | None:
    """The shipped model of ``task`` with the highest priority trained on ``kind`` images only."""
    from .. import zoo

    fits = [n for n in zoo.available(task) if card_image_kinds(zoo.card(n)) == {kind}]
    return max(fits, key=lambda n: (zoo.card(n).get("priority", 0), n)) if fits else None


class FitWatch:
    """Watch a widget's image picker and model picker: warn on a mismatch (once per pair), pick the
    matching model for a sample unless the user chose one. ``label`` is the dock's status line."""

    def __init__(self, image_picker, model_picker) -> None:
        self.image_picker = image_picker
        self.model_picker = model_picker
        self.label = QLabel("")
        self.label.setWordWrap(True)
        self.label.setStyleSheet("color: #ffb347;")
        self.user_chose = False
        self._warned: set[tuple[str, int]] = set()
        model_picker.activated.connect(self._on_user_choice)
        model_picker.currentIndexChanged.connect(lambda _i: self.check())
        image_picker.changed.connect(lambda *_: self.check(preselect=True))
        self.check(preselect=True)

    def _on_user_choice(self, _index=None) -> None:
        self.user_chose = True

    def check(self, preselect: bool = False) -> str | None:
        """Update the status line; notify a mismatch the first time it is seen. Returns it."""
        layer = self.image_picker.value
        kind = layer_image_kind(layer)
        if preselect and kind is not None and not self.user_chose:
            best = matching_model(self.model_picker.task, kind)
            index = self.model_picker.findData(best) if best is not None else -1
            if index >= 0 and index != self.model_picker.currentIndex():
                self.model_picker.setCurrentIndex(index)      # re-enters check() for the new model
                return self.label.text() or None
        msg = mismatch(self.model_picker.model(), layer)
        self.label.setText(msg or "")
        self.label.setVisible(bool(msg))
        key = (str(self.model_picker.model()), id(layer))
        if msg and key not in self._warned:
            self._warned.add(key)
            show_warning(msg)
        return msg
