"""Array orientation: which way each array axis points in the patient, and how to turn a
volume so that its axes point the way a model learnt them.

A network learns anatomy in the orientation of its training arrays: BraTS volumes are stored
with their ``(z, y, x)`` axes pointing superior, posterior, left (``"SPL"``); nilearn's MNI152
(and dcm2niix output) is ``"SAR"`` / ``"SAL"``; a sagittal 3D FLAIR is something else again. The
model card says which (``input.orientation``); an input is flipped and its axes permuted to
that orientation by its affine alone (nibabel's closest-axis rule, so an oblique scan goes to
its nearest orientation; nothing is resampled), the model runs, and its outputs are turned
back, so they lie on the input's own grid voxel for voxel.

Codes are nibabel's axis codes for the array axes in order (``"SPL"``: axis 0 towards S, axis 1
towards P, axis 2 towards L), for :class:`~napari_medlearn.imaging.volume.Volume` affines whose
columns follow the array axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def axis_codes(affine: np.ndarray) -> str:
    """The three letters of the directions the array's spatial axes point to (RAS world)."""
    import nibabel as nib

    return "".join(nib.aff2axcodes(np.asarray(affine, dtype=float)))


def check_codes(codes: str) -> str:
    """``codes`` upper-cased, or ``ValueError`` unless it names each of R/L, A/P, S/I once."""
    c = str(codes).upper()
    pairs = [{"R", "L"}, {"A", "P"}, {"S", "I"}]
    if len(c) != 3 or any(sum(ch in p for ch in c) != 1 for p in pairs):
        raise ValueError(f"orientation {codes!r} must name each of R/L, A/P and S/I once (e.g. 'SPL')")
    return c


@dataclass(frozen=True)
class Turn:
    """How the last three axes of an array go from one orientation to another."""

    ornt: np.ndarray        # nibabel orientation transform: row i = (output axis, flip) of input axis i
    source: str
    target: str

    @property
    def identity(self) -> bool:
        return bool(np.array_equal(self.ornt, [[0, 1], [1, 1], [2, 1]]))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """``array`` (``(..., z, y, x)``) with its last three axes turned to the target."""
        from nibabel.orientations import apply_orientation

        a = np.asarray(array)
        if self.identity:
            return a
        lead = a.ndim - 3
        moved = np.moveaxis(a, list(range(lead)), list(range(3, a.ndim))) if lead else a
        out = apply_orientation(moved, self.ornt)
        return np.ascontiguousarray(np.moveaxis(out, list(range(3, a.ndim)), list(range(lead))) if lead else out)

    def spacing(self, spacing) -> tuple[float, float, float]:
        """The voxel spacing of the turned array."""
        sp = [0.0, 0.0, 0.0]
        for i, (axis, _) in enumerate(self.ornt):
            sp[int(axis)] = float(spacing[i])
        return tuple(sp)

    def inverse(self) -> "Turn":
        from nibabel.orientations import axcodes2ornt, ornt_transform

        return Turn(ornt_transform(axcodes2ornt(tuple(self.target)), axcodes2ornt(tuple(self.source))),
                    self.target, self.source)


def turn_to(affine: np.ndarray, target: str) -> Turn:
    """The :class:`Turn` that brings an array with ``affine`` (``(z, y, x)`` columns) to ``target``."""
    from nibabel.orientations import axcodes2ornt, ornt_transform

    target = check_codes(target)
    source = axis_codes(affine)
    return Turn(ornt_transform(axcodes2ornt(tuple(source)), axcodes2ornt(tuple(target))), source, target)


__all__ = ["Turn", "axis_codes", "check_codes", "turn_to"]
