"""npe2 reader and writers: NIfTI, NRRD/MetaImage and DICOM into napari layers, and back.

The hooks named in ``napari.yaml`` are thin wrappers around :mod:`napari_medlearn.imaging.io`;
geometry travels through :meth:`Volume.to_layer_data` / :meth:`Volume.from_layer`, so a
layer saved from napari lands in the same world position as the file it came from. Heavy
modules (nibabel, pydicom, SimpleITK) are imported inside the functions so that napari can
read the manifest cheaply.

Image or labels?
----------------
DICOM series always open as image layers; a DICOM SEG opens as a labels layer placed on its
series (:mod:`napari_medlearn.imaging.dicom_seg`). A NIfTI (or NRRD/MetaImage) file opens as a
labels layer when its array is integer (or bool) and either

* its name, without extension, ends in one of :data:`LABEL_NAME_ENDINGS`
  (``case01_gt``, ``brats_seg``, ``aseg``, ``liver_mask``, ``cardiac_labels``), or
* its values are non-negative and there are at most :data:`MAX_LABEL_VALUES` distinct ones.

A float file whose name says labels and whose values are non-negative whole numbers (masks
saved as float by some tools) also opens as labels, converted to the narrowest integer type.
Everything else opens as an image. A labels file written by the plugin names its structures
(:mod:`napari_medlearn.imaging.structures`, a NIfTI header extension): it opens in their colours,
with their names under the cursor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .imaging.volume import Volume

LABEL_NAME_ENDINGS = ("_gt", "seg", "segmentation", "label", "labels", "mask")
MAX_LABEL_VALUES = 32

LayerData = tuple  # (data, kwargs, layer_type)


def _as_paths(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(path, (str, os.PathLike)):
        return [Path(path)]
    return [Path(p) for p in path]


def _can_read(path: Path) -> bool:
    from .imaging.io import ITK_SUFFIXES, NIFTI_SUFFIXES, folder_has_dicom, is_dicom_file

    if path.is_dir():
        return folder_has_dicom(path)
    if not path.is_file():
        return False
    if path.name.lower().endswith(NIFTI_SUFFIXES + ITK_SUFFIXES):
        return True
    return is_dicom_file(path)


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """npe2 reader hook: :func:`read_layers` if every path is readable, else ``None``.

    Readable are ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha``/``.mhd`` files, DICOM
    files (by their ``DICM`` preamble, whatever their name) and folders that directly hold
    DICOM files.
    """
    try:
        paths = _as_paths(path)
        if paths and all(_can_read(p) for p in paths):
            return read_layers
    except (OSError, TypeError, ValueError):
        pass
    return None


def _file_stem(path: Path) -> str:
    from .imaging.io import ITK_SUFFIXES, NIFTI_SUFFIXES

    name = path.name
    for suffix in NIFTI_SUFFIXES + ITK_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _narrowest_int(data: np.ndarray) -> np.ndarray:
    import numpy as np

    hi = int(data.max()) if data.size else 0
    for dtype in (np.uint8, np.int16, np.int32):
        if hi <= np.iinfo(dtype).max:
            return data.astype(dtype)
    return data.astype(np.int64)


def labels_layer_data(volume: Volume, name: str) -> np.ndarray | None:
    """The array to show as a labels layer, or ``None`` if ``volume`` is an image.

    Implements the rule in the module docstring.
    """
    import numpy as np

    data = np.asarray(volume.data)
    named_labels = name.lower().endswith(LABEL_NAME_ENDINGS)
    if data.dtype == bool:
        return data
    if np.issubdtype(data.dtype, np.floating):
        if named_labels and data.size and np.all(data >= 0) and np.all(np.mod(data, 1) == 0):
            return _narrowest_int(data)
        return None
    if not np.issubdtype(data.dtype, np.integer):
        return None
    if named_labels:
        return data
    if data.size == 0 or data.min() < 0:
        return None
    # a strided sample rules most scans out without a full np.unique
    sample = data.reshape(-1)[:: max(1, data.size // 100_000)]
    if np.unique(sample).size > MAX_LABEL_VALUES:
        return None
    return data if np.unique(data).size <= MAX_LABEL_VALUES else None


def _series_layer_names(volumes: list[Volume]) -> list[str]:
    names = []
    for v in volumes:
        base = v.meta.get("series") or (
            f"series {v.meta['series_number']}" if v.meta.get("series_number") is not None
            else "DICOM series")
        names.append(base)
    for i, n in enumerate(names):  # napari would rename duplicates anyway; keep them telling
        if names.count(n) > 1:
            num = volumes[i].meta.get("series_number")
            names[i] = f"{n} ({num})" if num is not None else f"{n} [{i}]"
    return names


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Read files or DICOM folders into napari ``LayerData`` tuples.

    One layer per NIfTI/NRRD file and one image layer per DICOM series (a DICOM file brings
    its whole series; the same series named twice is read once). Each layer carries
    ``scale``, ``translate`` and ``metadata['affine']`` from :meth:`Volume.layer_kwargs`.
    """
    from .imaging.io import (
        ITK_SUFFIXES, NIFTI_SUFFIXES, dicom_series_uid, dicom_videos, is_dicom_video, read_dicom_series, read_volume,
    )
    layers: list[LayerData] = []
    seen_series: set[tuple[str, str]] = set()

    def add_series(volumes: list[Volume]) -> None:
        fresh = []
        for v in volumes:
            key = (str(Path(v.meta["source"]).resolve()), v.meta.get("series_uid", ""))
            if key not in seen_series:
                seen_series.add(key)
                fresh.append(v)
        for v, name in zip(fresh, _series_layer_names(fresh)):
            layers.append(v.to_layer_data(name=name, layer_type="image"))

    def add_video(file: Path) -> None:
        key = (str(file.resolve()), "clip")
        if key not in seen_series:
            seen_series.add(key)
            layers.append(video_layer_data(file))

    for p in _as_paths(path):
        if p.is_dir():
            clips = dicom_videos(p)
            for clip in clips:
                add_video(clip)
            from .imaging.dicom_seg import seg_layers   # DICOM SEG: labels on their series
            segs = seg_layers(p)
            try:
                add_series(read_dicom_series(p, skip_invalid=True, skip_video=True))
            except ValueError:
                if not clips and not segs:   # a folder of clips (or SEGs) alone has no series: not an error
                    raise
            layers.extend(segs)
        elif p.name.lower().endswith(NIFTI_SUFFIXES + ITK_SUFFIXES):
            volume = read_volume(p)
            name = _file_stem(p)
            labels = labels_layer_data(volume, name)
            if labels is None:
                layers.append(volume.to_layer_data(name=name, layer_type="image"))
            else:
                layers.append(_styled(volume.with_data(labels).to_layer_data(name=name, layer_type="labels")))
        elif is_dicom_video(p):
            add_video(p)
        elif _is_seg(p):
            from .imaging.dicom_seg import seg_layer_data

            layers.append(seg_layer_data([p]))
        else:
            series_uid = dicom_series_uid(p)
            if series_uid is None:
                raise ValueError(f"cannot read {p}: not a DICOM image file")
            if (str(p.parent.resolve()), series_uid) not in seen_series:
                from .imaging.dicom_enhanced import read_dicom_file   # its series, or itself if no series

                add_series([read_dicom_file(p, series_uid)])
    return layers


def _styled(layer_data: LayerData) -> LayerData:
    """A labels layer in its structures' colours and names (:mod:`.imaging.structures`, napari-free)
    with the colour table as napari's ``DirectLabelColormap``."""
    from napari.utils.colormaps import DirectLabelColormap

    from .imaging.structures import style_layer_data

    data, kwargs, layer_type = style_layer_data(layer_data)
    if isinstance(kwargs.get("colormap"), dict):
        kwargs = {**kwargs, "colormap": DirectLabelColormap(color_dict=kwargs["colormap"])}
    return data, kwargs, layer_type


def _is_seg(path: Path) -> bool:
    from .imaging.dicom_seg import is_dicom_seg

    return is_dicom_seg(path)


def video_layer_data(path: str | Path) -> LayerData:
    """One DICOM clip (ultrasound, endoscopy, a colour capture) as an image layer: frames
    ``(t, H, W)`` or RGB ``(t, H, W, 3)``, scaled by the frame time (ms) and the pixel size
    (mm) when the file gives them; the time axis is the first slider."""
    from .imaging.io import read_dicom_video

    frames, meta = read_dicom_video(path)
    dy, dx = meta.get("spacing", (1.0, 1.0))
    kwargs = {"name": meta["series"], "rgb": frames.ndim == 4,
              "scale": (float(meta.get("time_step", 1.0)), dy, dx),
              "metadata": {**meta, "axes": ("t", "y", "x")}}
    return (frames, kwargs, "image")


def _nifti_path(path: str) -> str:
    return path if path.lower().endswith((".nii", ".nii.gz")) else path + ".nii.gz"


def _volume_from_layer(data: Any, meta: dict[str, Any]) -> Volume:
    import numpy as np

    from .imaging.volume import Volume

    if meta.get("rgb"):
        raise ValueError("this is an RGB (colour) layer; NIfTI is written from grey-scale layers only")
    if meta.get("multiscale") or isinstance(data, (list, tuple)):
        data = data[0]  # the full-resolution level
    return Volume.from_layer(np.asarray(data), meta.get("scale"), meta.get("translate"),
                             meta.get("metadata"))


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 writer for a labels layer: integer NIfTI in the geometry of its source image.

    The affine comes from ``meta['metadata']['affine']`` (set by the reader, and copied by
    the widgets onto their outputs), else from ``scale`` and ``translate``. Values are
    stored as uint8 when they fit 0..255, else int16/int32. ``.nii.gz`` is appended when the
    name has no NIfTI extension. Returns ``[path]``.
    """
    import numpy as np

    from .imaging.io import write_nifti

    path = _nifti_path(str(path))
    volume = _volume_from_layer(data, meta)
    arr = np.asarray(volume.data)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        if arr.size and not np.all(np.mod(arr, 1) == 0):
            raise ValueError(f"cannot save {path}: labels must be whole numbers, got {arr.dtype}")
        volume = volume.with_data(arr.astype(np.int64))
    write_nifti(volume, path, overwrite=True)
    return [path]


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 writer for an image layer: NIfTI with the layer's dtype and geometry.

    Geometry as in :func:`write_labels`. Returns ``[path]``.
    """
    from .imaging.io import write_nifti

    path = _nifti_path(str(path))
    write_nifti(_volume_from_layer(data, meta), path, overwrite=True)
    return [path]
