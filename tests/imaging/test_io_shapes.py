"""Every message about dimensions names the real shape."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_medlearn.imaging.io import read_itk_image, read_nifti
from napari_medlearn.imaging.volume import Volume


def test_a_5d_nifti_names_its_shape(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 3, 2, 2, 2), np.int16), np.eye(4)), tmp_path / "five.nii")
    with pytest.raises(ValueError, match=r"5-D NIfTI of shape \(4, 3, 2, 2, 2\)"):
        read_nifti(tmp_path / "five.nii")


def test_a_4d_nrrd_names_its_shape(tmp_path):
    import SimpleITK as sitk

    sitk.WriteImage(sitk.Image([4, 3, 2, 2], sitk.sitkInt16), str(tmp_path / "four.nrrd"))
    with pytest.raises(ValueError, match=r"4-D of shape \(4, 3, 2, 2\) with 1 component"):
        read_itk_image(tmp_path / "four.nrrd")


def test_volume_shape_messages_name_the_shape():
    with pytest.raises(ValueError, match=r"2 dims \(shape \(3, 4\)\)"):
        Volume(np.zeros((3, 4)), np.eye(4), ("z", "y", "x"))
    with pytest.raises(ValueError, match=r"5-D layer of shape \(1, 1, 1, 2, 3\)"):
        Volume.from_layer(np.zeros((1, 1, 1, 2, 3)))
    with pytest.raises(ValueError, match=r"5-D array of shape \(1, 1, 1, 2, 3\) with 3 spacings"):
        Volume.from_spacing(np.zeros((1, 1, 1, 2, 3)), (1.0, 1.0, 1.0))
