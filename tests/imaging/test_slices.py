"""Thick-slice simulation, the super-resolved grid and resampling by affines (known answers)."""

import numpy as np
import pytest

from napari_medlearn.imaging.slices import (coverage, fine_grid, profile_weights, resample,
                                            spline_upsample, thick_affine, thick_slices)
from napari_medlearn.imaging.volume import affine_from_spacing


def _world(affine, idx):
    return (np.asarray(affine) @ np.r_[idx, 1.0])[:3]


def _rotation(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def test_box_profile_averages_the_covered_slices_and_the_affine_centres_them():
    rng = np.random.default_rng(0)
    vol = rng.random((13, 5, 6)).astype(np.float32)
    aff = affine_from_spacing((1.0, 0.8, 0.7), origin=(3.0, -2.0, 5.0))
    thick, taff = thick_slices(vol, aff, 4, "box")
    assert thick.shape == (3, 5, 6)          # 13 // 4; the 13th thin slice is not covered
    for i in range(3):
        np.testing.assert_allclose(thick[i], vol[4 * i:4 * i + 4].mean(0), rtol=1e-6)
        centre = np.mean([_world(aff, (k, 2, 3)) for k in range(4 * i, 4 * i + 4)], axis=0)
        np.testing.assert_allclose(_world(taff, (i, 2, 3)), centre)
    # never decimation: a single bright thin slice shows in its thick slice at 1/f
    spike = np.zeros((8, 2, 2), np.float32)
    spike[5] = 1.0
    t, _ = thick_slices(spike, aff, 4)
    np.testing.assert_allclose(t[:, 0, 0], [0.0, 0.25])


def test_profiles_sum_to_one_and_gaussian_is_centred():
    for prof in ("box", "gaussian"):
        w = profile_weights(20, 5, prof)
        np.testing.assert_allclose(w.sum(1), 1.0)
    w = profile_weights(30, 5, "gaussian")
    centres = w @ np.arange(30)
    np.testing.assert_allclose(centres[1:-1], 5 * np.arange(1, 5) + 2.0, atol=1e-9)
    # FWHM = factor thin slices: half maximum at +-f/2
    row = w[3]
    assert row[17] == row.max() and np.isclose(row[15], row[19])
    assert row[15] > row.max() / 2 > row[14]


def test_fine_grid_undoes_the_thick_affine_with_an_oblique_affine():
    aff = np.eye(4)
    aff[:3, :3] = _rotation(0.3, -0.5, 1.1) @ np.diag([1.2, 0.9, 0.9])
    aff[:3, 3] = (10.0, -4.0, 7.0)
    for axis in (0, 1, 2):
        taff = thick_affine(aff, 3, axis)
        shape, faff = fine_grid((4, 5, 6), taff, 3, axis)
        np.testing.assert_allclose(faff, aff, atol=1e-12)
        assert shape[axis] == (4, 5, 6)[axis] * 3


@pytest.mark.parametrize("bad", [1, 0, -2, 2.5, float("nan"), "4", True])
def test_bad_factor(bad):
    with pytest.raises(ValueError, match="factor"):
        thick_slices(np.zeros((8, 4, 4)), np.eye(4), bad)


def test_unknown_profile_and_2d_input():
    with pytest.raises(ValueError, match="profile"):
        thick_slices(np.zeros((8, 4, 4)), np.eye(4), 2, "sinc")
    with pytest.raises(ValueError, match="3-D"):
        thick_slices(np.zeros((8, 4)), np.eye(4), 2)


def test_spline_upsample_reproduces_a_linear_ramp_at_the_thin_slice_centres():
    aff = affine_from_spacing((1.0, 1.0, 1.0))
    z = np.arange(160, dtype=np.float32)
    vol = np.broadcast_to(z[:, None, None], (160, 4, 4)).copy()
    thick, taff = thick_slices(vol, aff, 4)
    up, faff = spline_upsample(thick, taff, 4)
    np.testing.assert_allclose(faff, aff, atol=1e-12)
    np.testing.assert_allclose(up[40:-40, 1, 1], z[40:-40], atol=1e-3)


def test_oblique_phantom_lands_where_its_affine_puts_it():
    """A ball imaged in an oblique (long-axis-like) thick stack, resampled into an axis-aligned
    frame from the affines alone, is centred where it was in the world."""
    centre_world = np.array([12.0, -7.0, 20.0])
    R = _rotation(0.4, 0.7, -0.9)
    sp = np.array([6.0, 1.5, 1.5])               # thick along the stack's own z
    aff = np.eye(4)
    aff[:3, :3] = R @ np.diag(sp)
    aff[:3, 3] = centre_world - aff[:3, :3] @ np.array([7.0, 24.0, 24.0])
    idx = np.indices((15, 48, 48)).reshape(3, -1).T
    world = idx @ aff[:3, :3].T + aff[:3, 3]
    ball = (np.linalg.norm(world - centre_world, axis=1) < 9.0).reshape(15, 48, 48).astype(np.float32)
    target = affine_from_spacing((1.0, 1.0, 1.0), origin=tuple(centre_world[[0, 1, 2]] - (20.0, 20.0, 20.0)))
    # axis-aligned target: voxel (z, y, x) -> (R, A, S) = (x, y, z) + origin
    out = resample(ball, aff, (40, 40, 40), target, order=1, mode="constant")
    w = out.clip(0, None)
    com_vox = np.array([(np.indices(w.shape)[a] * w).sum() / w.sum() for a in range(3)])
    np.testing.assert_allclose(_world(target, com_vox), centre_world, atol=0.6)
    big = affine_from_spacing((3.0, 3.0, 3.0), origin=tuple(centre_world - 60.0))
    cov = coverage(ball.shape, aff, (40, 40, 40), big)
    assert cov[20, 20, 20] and not cov[0, 0, 0] and 0.05 < cov.mean() < 0.5
    far = target.copy()
    far[:3, 3] += 500.0
    assert not coverage(ball.shape, aff, (8, 8, 8), far).any()
