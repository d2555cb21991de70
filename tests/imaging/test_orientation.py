"""Turning arrays between orientations by their affine, and back."""

import numpy as np
import pytest

from napari_medlearn.imaging.orientation import axis_codes, check_codes, turn_to
from napari_medlearn.imaging.volume import Volume, affine_from_spacing

BRATS = np.array([[0, 0, -1.0, 0], [0, -1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])   # (z, y, x) -> S, P, L


def test_codes_of_common_layouts():
    assert axis_codes(BRATS) == "SPL"
    assert axis_codes(affine_from_spacing((2.0, 1.0, 1.0))) == "SAR"
    assert check_codes("spl") == "SPL"
    with pytest.raises(ValueError, match="each of R/L"):
        check_codes("SSL")


def test_a_flip_and_its_inverse():
    a = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    turn = turn_to(BRATS, "SAR")
    b = turn.apply(a)
    np.testing.assert_array_equal(b, a[:, :, ::-1, ::-1])       # channel axis kept, y and x flipped
    np.testing.assert_array_equal(turn.inverse().apply(b), a)
    assert turn_to(BRATS, "SPL").identity


def test_a_sagittal_stack_is_permuted_with_its_spacing():
    # axis 0 -> R (1.2 mm), axis 1 -> S (3 mm), axis 2 -> A (0.9 mm): a sagittal acquisition
    aff = np.array([[1.2, 0, 0, 0], [0, 0, 0.9, 0], [0, 3.0, 0, 0], [0, 0, 0, 1]])
    data = np.random.default_rng(0).random((4, 5, 6))
    turn = turn_to(aff, "SPL")
    out = turn.apply(data)
    assert out.shape == (5, 6, 4) and turn.spacing((1.2, 3.0, 0.9)) == (3.0, 0.9, 1.2)
    # the same voxel of the world, before and after
    world = Volume(data, aff, ("z", "y", "x")).affine @ np.array([1, 2, 3, 1.0])
    k, j, i = 2, 6 - 1 - 3, 4 - 1 - 1        # S <- axis 1, P <- reversed axis 2, L <- reversed axis 0
    assert out[k, j, i] == data[1, 2, 3] and world[2] == pytest.approx(2 * 3.0)
    np.testing.assert_array_equal(turn.inverse().apply(out), data)
