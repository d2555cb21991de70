"""``resample_onto``: scans of one session on different grids meet by their scanner coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medlearn.imaging.volume import Volume, resample_onto, same_grid


def _smooth(shape, seed=0):
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.normal(size=shape), 2.0).astype(np.float32)


def _oblique_affine(spacing, origin):
    """An oblique grid: rotated 20 degrees about S, ``spacing`` (z, y, x) mm."""
    c, s = np.cos(np.deg2rad(20)), np.sin(np.deg2rad(20))
    rot = np.array([[0, -s, c], [0, c, s], [1, 0, 0]], float)    # columns: voxel z, y, x -> RAS
    aff = np.eye(4)
    aff[:3, :3] = rot * np.asarray(spacing, float)
    aff[:3, 3] = origin
    return aff


def test_a_scan_stored_in_another_orientation_comes_back_exactly():
    ref = Volume(_smooth((10, 12, 14)), _oblique_affine((2.0, 1.0, 1.0), (5, -3, 7)), ("z", "y", "x"))
    # the same voxels written the other way round: x and z reversed, axes z and x swapped
    data = np.ascontiguousarray(np.swapaxes(ref.data[::-1, :, ::-1], 0, 2))
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, ref.data.shape[0] - 1
    flip[2, 2], flip[2, 3] = -1, ref.data.shape[2] - 1
    swap = np.eye(4)[[2, 1, 0, 3]]
    other = Volume(data, ref.affine @ flip @ swap, ("z", "y", "x"), {"source": "t1c.nii.gz"})
    assert not same_grid(other, ref)
    out = resample_onto(other, ref)
    np.testing.assert_allclose(out.data, ref.data, atol=1e-5)
    np.testing.assert_allclose(out.affine, ref.affine)
    assert out.meta["source"] == "t1c.nii.gz" and out.data.shape == ref.data.shape


def test_a_finer_grid_is_sampled_trilinearly_and_labels_by_nearest_voxel():
    z, y, x = np.meshgrid(np.arange(8), np.arange(10), np.arange(12), indexing="ij")
    ref = Volume((3 * z + 2 * y - x).astype(np.float32), _oblique_affine((3.0, 2.0, 2.0), (0, 0, 0)),
                 ("z", "y", "x"))
    # a 1 mm grid over the same field of view: a linear ramp in world space, exact under trilinear
    fine_aff = ref.affine.copy()
    fine_aff[:3, :3] /= np.array([3.0, 2.0, 2.0])
    fz, fy, fx = np.meshgrid(np.arange(22), np.arange(19), np.arange(23), indexing="ij")
    fine = Volume((3 * fz / 3.0 + 2 * fy / 2.0 - fx / 2.0).astype(np.float32), fine_aff, ("z", "y", "x"))
    out = resample_onto(fine, ref)
    np.testing.assert_allclose(out.data, ref.data, atol=1e-4)
    labels = Volume((fz > 10).astype(np.uint8) * 4, fine_aff, ("z", "y", "x"))
    lab = resample_onto(labels, ref, order=0)
    assert lab.data.dtype == np.uint8 and set(np.unique(lab.data)) == {0, 4}
    np.testing.assert_array_equal(lab.data, (z * 3 > 10).astype(np.uint8) * 4)


def test_scans_that_do_not_overlap_are_refused_with_a_reason():
    ref = Volume(_smooth((6, 8, 8)), _oblique_affine((2.0, 1.0, 1.0), (0, 0, 0)), ("z", "y", "x"))
    far = Volume(ref.data.copy(), _oblique_affine((2.0, 1.0, 1.0), (0, 0, 300)), ("z", "y", "x"))
    with pytest.raises(ValueError, match="T1c covers 0% of the FLAIR's field of view.*register them first"):
        resample_onto(far, ref, what="T1c", onto="the FLAIR")
    with pytest.raises(ValueError, match="only 3D"):
        resample_onto(Volume.from_spacing(np.ones((4, 5), np.float32), (1.0, 1.0)), ref)
    assert resample_onto(ref, ref) is ref
