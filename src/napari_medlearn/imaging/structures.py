"""One name and one colour per structure, whichever path a label map takes to the screen.

A label map says which structures it holds by a *kind* (``"cardiac"``, ``"brats"``) carried in
``Volume.meta`` / ``layer.metadata`` under :data:`META_KEY`. The widgets set it on their labels
layers, the batch jobs on the labels they write, and :func:`napari_medlearn.imaging.io.write_nifti`
stores it inside the NIfTI file (a header extension, see :func:`nifti_extension`), so that
:func:`~napari_medlearn.imaging.io.read_nifti`, the plugin's reader and the cohort's Open case
give a reopened file the same colours and names as the run that made it (napari would pick
random colours: LV and myocardium both cyan).

Why in the file and not a sidecar: a ``<file>.medlearn.json`` beside it is lost as soon as a
file is copied, renamed or sent alone; a NIfTI header extension travels with the data and other
tools (nibabel, ITK-SNAP, Slicer) read the file unchanged, ignoring an extension they do not know.

The names are those of the model cards' ``labels`` (BraTS: the short names the widgets' tables
use); probability maps are never drawn in a structure's colour (:data:`PROBABILITY_COLORMAP`).
"""

from __future__ import annotations

import json
from typing import Any

META_KEY = "structures"
#: NIfTI extension code: NIFTI_ECODE_COMMENT (free text; ours is a small JSON object)
NIFTI_ECODE = 6
NIFTI_TAG = "napari-medlearn"
TRANSPARENT = (0.0, 0.0, 0.0, 0.0)

#: kind -> {label value: (name, RGBA)}; cardiac as in ACDC figures, BraTS as in the BraTS papers
STRUCTURES: dict[str, dict[int, tuple[str, tuple[float, float, float, float]]]] = {
    "cardiac": {
        1: ("LV cavity", (1.0, 0.25, 0.25, 1.0)),
        2: ("myocardium", (0.3, 0.85, 0.3, 1.0)),
        3: ("RV cavity", (0.3, 0.55, 1.0, 1.0)),
    },
    "brats": {
        1: ("necrotic core", (0.95, 0.2, 0.2, 1.0)),
        2: ("oedema", (0.25, 0.85, 0.3, 1.0)),
        3: ("non-enhancing core", (0.3, 0.55, 1.0, 1.0)),
        4: ("enhancing tumour", (1.0, 0.9, 0.15, 1.0)),
    },
}
#: model-card task -> kind of its label maps
TASK_KINDS = {
    "cardiac-segmentation": "cardiac",
    "cardiac-shape-prior": "cardiac",
    "brain-lesion-segmentation": "brats",
}
#: a colormap for probability and uncertainty maps, unlike every structure's flat colour
PROBABILITY_COLORMAP = "viridis"


def names(kind: str) -> dict[int, str]:
    """Label value -> structure name (0 is background)."""
    return {0: "background", **{v: name for v, (name, _c) in STRUCTURES[kind].items()}}


def color_dict(kind: str) -> dict[Any, tuple[float, ...]]:
    """Label value -> RGBA for napari's ``DirectLabelColormap`` (background and others clear)."""
    return {None: TRANSPARENT, 0: TRANSPARENT, **{v: c for v, (_n, c) in STRUCTURES[kind].items()}}


def kind_of(metadata: dict | None) -> str | None:
    """The kind a layer's or volume's metadata declares, or None (unknown kinds are ignored)."""
    kind = (metadata or {}).get(META_KEY)
    return kind if kind in STRUCTURES else None


def labels_kwargs(kind: str) -> dict[str, Any]:
    """``colormap`` and ``features`` for ``viewer.add_labels``: the structure's colour and its
    name in the status bar under the cursor. The colormap is a plain ``{value: RGBA}`` dict,
    which napari turns into a ``DirectLabelColormap`` (imaging imports no napari)."""
    table = names(kind)
    return {"colormap": color_dict(kind),
            "features": {"index": list(table), "structure": list(table.values())}}


def style_layer_data(layer_data: tuple) -> tuple:
    """A labels ``LayerData`` tuple with its kind's colours and names when its metadata says
    one (anything else is returned as it is)."""
    data, kwargs, layer_type = layer_data
    kind = kind_of(kwargs.get("metadata"))
    if layer_type != "labels" or kind is None:
        return layer_data
    return data, {**kwargs, **labels_kwargs(kind)}, layer_type


def nifti_extension(kind: str):
    """The NIfTI header extension that records ``kind`` (JSON in a comment extension)."""
    import nibabel as nib

    text = json.dumps({NIFTI_TAG: {META_KEY: kind, "labels": {str(v): n for v, n in names(kind).items()}}})
    return nib.nifti1.Nifti1Extension(NIFTI_ECODE, text.encode())


def _ours(ext) -> dict | None:
    if ext.get_code() != NIFTI_ECODE:
        return None
    try:
        content = json.loads(bytes(ext.get_content()).rstrip(b"\0").decode())
    except (ValueError, UnicodeDecodeError):
        return None
    return content.get(NIFTI_TAG) if isinstance(content, dict) and isinstance(content.get(NIFTI_TAG), dict) else None


def kind_from_nifti(header) -> str | None:
    """The kind recorded in a NIfTI header by :func:`nifti_extension`, or None."""
    for ext in getattr(header, "extensions", ()):
        found = _ours(ext)
        if found is not None and found.get(META_KEY) in STRUCTURES:
            return found[META_KEY]
    return None


def set_nifti_kind(header, kind: str | None) -> None:
    """Replace the header's record of a kind by ``kind`` (None: remove it), keeping other
    extensions."""
    exts = header.extensions
    for ext in [e for e in exts if _ours(e) is not None]:
        exts.remove(ext)
    if kind is not None:
        exts.append(nifti_extension(kind))
