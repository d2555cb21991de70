"""The per-case jobs behind the CLI and batch: reading inputs as they come."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from napari_medlearn import jobs


def test_a_3d_scan_stored_as_one_frame_4d_file_is_read_as_3d(tmp_path):
    aff = np.diag([1.0, 1.2, 1.5, 1.0])
    rng = np.random.default_rng(0)
    for name in ("flair", "t1c", "mask"):
        nib.save(nib.Nifti1Image(rng.random((20, 22, 18, 1)).astype(np.float32) if name != "mask"
                                 else np.ones((20, 22, 18, 1), np.uint8), aff), tmp_path / f"{name}.nii.gz")
    notes: list[str] = []
    channels, ref, mask = jobs.read_modalities(tmp_path / "flair.nii.gz", tmp_path / "t1c.nii.gz",
                                               tmp_path / "mask.nii.gz", "lesions-brats", notes)
    assert ref.axes == ("z", "y", "x") and ref.data.shape == (18, 22, 20)
    assert mask.shape == (18, 22, 20) and not notes
    assert np.allclose(ref.spacing, (1.5, 1.2, 1.0))
