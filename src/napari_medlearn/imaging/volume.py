"""The ``Volume``: an array with the geometry that makes it a medical image.

Arrays are kept in napari axis order, spatial axes last: ``(z, y, x)``, ``(t, z, y, x)`` or
``(y, x)``. ``affine`` is the 4x4 voxel-to-world matrix in RAS millimetres whose *input*
columns follow the array's spatial axes in that same order, i.e. it maps ``(k_z, j_y, i_x, 1)``
to ``(R, A, S, 1)``. (NIfTI stores ``(x, y, z)``; the reader transposes and permutes the
affine's columns, the writer undoes both, so a round trip is exact.)

In napari, a layer gets ``scale`` = voxel spacing and ``translate`` = the origin expressed in
the volume's own direction frame, and the full affine travels in ``metadata['affine']``.
Layers that share direction cosines (a scan and its labels, a scan and its super-resolved
version) therefore overlay exactly, and the view stays aligned with the voxel grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

SPATIAL_AXES = ("z", "y", "x")


def spacing_from_affine(affine: np.ndarray) -> tuple[float, ...]:
    """Voxel spacing (mm) per spatial axis: the lengths of the affine's first three columns."""
    a = np.asarray(affine, dtype=float)
    return tuple(float(v) for v in np.linalg.norm(a[:3, :3], axis=0))


def affine_from_spacing(
    spacing: tuple[float, ...], origin: tuple[float, ...] | None = None
) -> np.ndarray:
    """Axis-aligned affine for ``(z, y, x)`` spacing: voxel z -> S, y -> A, x -> R.

    Two spatial axes are treated as ``(y, x)`` with a 1 mm z.
    """
    sp = tuple(float(s) for s in spacing)
    if len(sp) == 2:
        sp = (1.0,) + sp
    if len(sp) != 3:
        raise ValueError(f"spacing needs 2 or 3 values, got {len(sp)}")
    aff = np.zeros((4, 4))
    # columns: z -> S (row 2), y -> A (row 1), x -> R (row 0)
    aff[2, 0] = sp[0]
    aff[1, 1] = sp[1]
    aff[0, 2] = sp[2]
    aff[3, 3] = 1.0
    if origin is not None:
        aff[:3, 3] = origin
    return aff


@dataclass(frozen=True, eq=False)
class Volume:
    """An image or label volume with geometry.

    Parameters
    ----------
    data
        Array in napari order, spatial axes last (``(t, z, y, x)``, ``(z, y, x)``, ``(y, x)``).
    affine
        4x4 voxel-to-world (RAS, mm) for the spatial axes in array order.
    axes
        Axis names, one per array axis, e.g. ``("t", "z", "y", "x")``.
    meta
        Everything else: ``time_step`` (ms) for cines, ``source`` path, DICOM tags, ...
    """

    data: np.ndarray
    affine: np.ndarray
    axes: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.axes) != np.ndim(self.data):
            raise ValueError(f"axes {self.axes} do not match an array of {np.ndim(self.data)} dims "
                             f"(shape {np.shape(self.data)})")
        aff = np.asarray(self.affine, dtype=float)
        if aff.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {aff.shape}")
        object.__setattr__(self, "affine", aff)

    @classmethod
    def from_spacing(
        cls,
        data: np.ndarray,
        spacing: tuple[float, ...],
        axes: tuple[str, ...] | None = None,
        origin: tuple[float, ...] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> "Volume":
        """A volume on an axis-aligned grid of ``spacing`` (mm, spatial axes in array order)."""
        data = np.asarray(data)
        if axes is None:
            n_sp = len(spacing)
            lead = {0: (), 1: ("t",)}.get(data.ndim - n_sp)
            if lead is None:
                raise ValueError(f"{data.ndim}-D array of shape {data.shape} with {n_sp} spacings: name its axes")
            axes = lead + SPATIAL_AXES[-n_sp:]
        return cls(data, affine_from_spacing(spacing, origin), tuple(axes), dict(meta or {}))

    @property
    def spatial_axes(self) -> tuple[str, ...]:
        return tuple(a for a in self.axes if a in SPATIAL_AXES)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Spacing in mm per spatial axis, in array order (``(dz, dy, dx)``)."""
        sp = spacing_from_affine(self.affine)
        return sp[3 - len(self.spatial_axes):]

    @property
    def time_step(self) -> float | None:
        return self.meta.get("time_step")

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix of unit direction cosines (columns: voxel axes z, y, x)."""
        m = self.affine[:3, :3]
        return m / np.linalg.norm(m, axis=0, keepdims=True)

    @property
    def is_labels(self) -> bool:
        return np.issubdtype(np.asarray(self.data).dtype, np.integer) or np.asarray(self.data).dtype == bool

    def with_data(self, data: np.ndarray, **meta: Any) -> "Volume":
        """Same geometry, new array (e.g. labels predicted from this image)."""
        return replace(self, data=data, meta={**self.meta, **meta})

    # ----- napari ------------------------------------------------------------------------
    def layer_kwargs(self) -> dict[str, Any]:
        """``scale``, ``translate``, ``axis_labels`` (the sliders read t / z, not -4 / -3) and
        ``metadata`` for a napari layer showing this volume."""
        n_sp = len(self.spatial_axes)
        n_other = np.ndim(self.data) - n_sp
        origin_in_frame = self.direction.T @ self.affine[:3, 3]
        translate_sp = origin_in_frame[3 - n_sp:]
        scale_other = [float(self.time_step or 1.0)] * n_other
        return {
            "scale": tuple(scale_other) + tuple(self.spacing),
            "translate": tuple([0.0] * n_other) + tuple(float(v) for v in translate_sp),
            "axis_labels": tuple(self.axes),
            "metadata": {"affine": self.affine.copy(), "axes": self.axes, **{
                k: v for k, v in self.meta.items() if k in ("time_step", "source", "series", "modality", "structures")
            }},
        }

    def to_layer_data(self, name: str | None = None, layer_type: str | None = None, **kwargs: Any):
        """A napari ``LayerData`` tuple ``(data, kwargs, type)``."""
        kw = self.layer_kwargs()
        if name is not None:
            kw["name"] = name
        kw.update(kwargs)
        ltype = layer_type or ("labels" if self.is_labels else "image")
        return (self.data, kw, ltype)

    @classmethod
    def from_layer(
        cls, data: np.ndarray, scale: tuple[float, ...] | None = None,
        translate: tuple[float, ...] | None = None, metadata: dict[str, Any] | None = None,
    ) -> "Volume":
        """Rebuild a Volume from a layer's data, scale, translate and metadata.

        The affine in ``metadata`` wins when it is there (it is what the reader saw);
        otherwise an axis-aligned affine is built from ``scale`` and ``translate``.
        """
        data = np.asarray(data)
        metadata = dict(metadata or {})
        axes = metadata.get("axes")
        if axes is None or len(axes) != data.ndim:
            axes = {2: ("y", "x"), 3: ("z", "y", "x"), 4: ("t", "z", "y", "x")}.get(data.ndim)
            if axes is None:
                raise ValueError(f"cannot interpret a {data.ndim}-D layer of shape {data.shape} as a volume")
        axes = tuple(axes)
        n_sp = sum(a in SPATIAL_AXES for a in axes)
        meta = {k: v for k, v in metadata.items() if k not in ("affine", "axes")}
        if "affine" in metadata and np.shape(metadata["affine"]) == (4, 4):
            affine = np.asarray(metadata["affine"], dtype=float)
        else:
            sc = tuple(scale)[-n_sp:] if scale is not None else (1.0,) * n_sp
            tr = tuple(translate)[-n_sp:] if translate is not None else (0.0,) * n_sp
            if n_sp == 2:
                sc, tr = (1.0,) + tuple(sc), (0.0,) + tuple(tr)
            affine = affine_from_spacing(sc)
            affine[:3, 3] = affine[:3, :3] @ (np.asarray(tr) / np.asarray(sc))
            if scale is not None and data.ndim > n_sp:
                meta.setdefault("time_step", float(tuple(scale)[0]))
        return cls(data, affine, axes, meta)


def same_grid(a: "Volume", b: "Volume", atol: float = 1e-3) -> bool:
    """True when two volumes have the same spatial shape and voxel-to-world affine."""
    return (np.shape(a.data)[-3:] == np.shape(b.data)[-3:]
            and np.allclose(a.affine, b.affine, atol=atol))


def resample_onto(volume: "Volume", reference: "Volume", order: int = 1, min_overlap: float = 0.5,
                  what: str = "the image", onto: str = "the reference", atol: float = 1e-3) -> "Volume":
    """``volume`` (3D) sampled on ``reference``'s grid by the two voxel-to-world affines alone
    (scanner coordinates: right for series of one session, which share the scanner's frame;
    nothing is registered). ``order`` 1 is trilinear (images), 0 nearest (labels, masks); outside
    ``volume`` its edge is repeated. Raises ``ValueError`` naming ``what`` and ``onto`` when less
    than ``min_overlap`` of the reference grid lies inside ``volume`` (not one session's frame:
    register them first). The result carries the reference's geometry and ``volume``'s meta;
    ``volume`` itself comes back when it is on that grid already (:func:`same_grid` within ``atol``)."""
    from .slices import coverage, resample

    if np.ndim(volume.data) != 3 or np.ndim(reference.data) != 3:
        raise ValueError(f"only 3D volumes are resampled onto another grid: {what} is "
                         f"{np.ndim(volume.data)}-D and {onto} {np.ndim(reference.data)}-D")
    if same_grid(volume, reference, atol):
        return volume
    shape = tuple(int(s) for s in np.shape(reference.data))
    inside = float(coverage(np.shape(volume.data), volume.affine, shape, reference.affine).mean())
    if inside < min_overlap:
        raise ValueError(f"{what} covers {inside:.0%} of {onto}'s field of view in scanner coordinates: "
                         "they are not one session's scans in one frame; register them first")
    data = np.asarray(volume.data)
    labels = order == 0
    out = resample(data.astype(np.float32, copy=False), volume.affine, shape, reference.affine,
                   order=order, mode="nearest")
    if labels:
        out = out.astype(data.dtype, copy=False) if data.dtype != bool else out > 0.5
    return Volume(out, reference.affine.copy(), tuple(reference.axes),
                  {**volume.meta, "resampled_onto": onto})
