"""Small shared builders for tests: tiny models and tiny phantoms."""

from __future__ import annotations

from pathlib import Path

TINY_FCN = dict(filters=[4, 4, 4, 4, 4], blocks=[1, 1, 1, 1, 1], same_dim=4, fc=4)


def tiny_cardiac_checkpoint(folder: Path, seed: int = 0) -> Path:
    """An untrained, tiny Bai FCN saved as a zoo checkpoint (for plumbing, not accuracy)."""
    import torch

    from napari_medlearn import zoo
    from napari_medlearn.nets import BaiFCN

    torch.manual_seed(seed)
    net = BaiFCN(**TINY_FCN)
    path = Path(folder) / "tiny-cardiac.pt"
    zoo.save_checkpoint(net, path, "bai_fcn", TINY_FCN, card={
        "name": "tiny-cardiac", "task": "cardiac-segmentation", "n_classes": 4,
        "input": {"in_plane_spacing_mm": 3.0}})
    return path


def have_acdc() -> bool:
    """True when the ACDC data is found (``../shared/data/acdc`` or ``$MEDLEARN_ACDC``)."""
    from napari_medlearn.training.acdc import find_acdc_root

    try:
        find_acdc_root()
    except FileNotFoundError:
        return False
    return True


#: skip marker for tests that read the real ACDC data
needs_acdc = __import__("pytest").mark.skipif(not have_acdc(), reason="ACDC data (../shared/data/acdc) not present")


def write_cine_cohort(folder: Path) -> Path:
    """A cohort folder: two tiny cardiac cine phantoms (case1, case2) and a 2D image (flat) that
    cardiac segmentation refuses."""
    import numpy as np

    from napari_medlearn.imaging import Volume
    from napari_medlearn.imaging.io import write_nifti
    from napari_medlearn.samples.cardiac_phantom import cardiac_cine_phantom

    for seed in (1, 2):
        image, _ = cardiac_cine_phantom(seed=seed, n_frames=3, matrix=(40, 48), in_plane_spacing=6.0).volumes()
        write_nifti(image, folder / f"case{seed}.nii.gz")
    write_nifti(Volume(np.zeros((40, 48), np.float32), np.eye(4), ("y", "x"), {}), folder / "flat.nii.gz")
    return folder
