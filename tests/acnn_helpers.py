"""Tiny ACNN shape-prior checkpoints and small cardiac label maps for the ACNN tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY_GRID = (4, 16, 16)
TINY_ACNN = dict(n_classes=4, grid=list(TINY_GRID), filters=[2, 4], strides=[[1, 2, 2], [2, 2, 2]],
                 code_size=8, in_channels=0)
TINY_SPACING = (20.0, 9.0, 9.0)


def tiny_acnn_checkpoint(folder: Path, seed: int = 0, name: str = "tiny-acnn") -> Path:
    """An untrained tiny shape prior (4 x 16 x 16 grid of 20 x 9 x 9 mm) as a zoo checkpoint."""
    import torch

    from napari_medlearn import zoo
    from napari_medlearn.nets import ACNNShapeModel

    torch.manual_seed(seed)
    net = ACNNShapeModel(**TINY_ACNN).eval()
    path = Path(folder) / f"{name}.pt"
    zoo.save_checkpoint(net, path, "acnn_shape", TINY_ACNN, card={
        "name": name, "task": "cardiac-shape-prior", "n_classes": 4,
        "input": {"grid": list(TINY_GRID), "grid_spacing_mm": list(TINY_SPACING)}})
    return path


def ring_labels(shape=(6, 48, 40), spacing=(8.0, 2.0, 2.0), centre=None, r_lv=12.0, wall=6.0) -> np.ndarray:
    """uint8 ``(z, y, x)``: an LV disc in a myocardial ring with an RV crescent beside it, in mm."""
    z, h, w = shape
    cy, cx = centre or (h / 2, w / 2 - 2)
    yy, xx = np.mgrid[:h, :w]
    d = np.hypot((yy - cy) * spacing[1], (xx - cx) * spacing[2])
    drv = np.hypot((yy - cy) * spacing[1], (xx - cx - (r_lv + wall) / spacing[2]) * spacing[2])
    sl = np.zeros((h, w), np.uint8)
    sl[(drv < r_lv + wall + 4) & (d >= r_lv + wall)] = 3
    sl[d < r_lv + wall] = 2
    sl[d < r_lv] = 1
    out = np.zeros(shape, np.uint8)
    out[1:-1] = sl
    return out
