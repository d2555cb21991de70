"""Tiny SonoNet checkpoints and synthetic 'planes' for the plane-detection tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY_SONONET = dict(width=2, n_classes=14, in_channels=1, blocks=[1, 1, 1, 1, 1])
TINY_SIZE = [32, 48]


def tiny_sononet_checkpoint(folder: Path, seed: int = 0, name: str = "tiny-sononet") -> Path:
    """An untrained tiny SonoNet (14 published classes, 32 x 48 input) as a zoo checkpoint."""
    import torch

    from napari_medlearn import zoo
    from napari_medlearn.nets import SONONET_CLASSES, SonoNet

    torch.manual_seed(seed)
    net = SonoNet(**TINY_SONONET).eval()
    with torch.no_grad():   # non-trivial BN statistics so folding them is exercised
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    path = Path(folder) / f"{name}.pt"
    zoo.save_checkpoint(net, path, "sononet", TINY_SONONET, card={
        "name": name, "task": "us-standard-planes", "n_classes": 14,
        "class_names": list(SONONET_CLASSES),
        "input": {"size": TINY_SIZE, "intensity": "zscore255"}})
    return path


def blob_video(t: int = 5, shape=(40, 56), seed: int = 0) -> np.ndarray:
    """float32 (t, H, W) speckled frames with a bright disc moving across."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = rng.gamma(2.0, 0.1, size=(t, *shape)).astype(np.float32)
    for i in range(t):
        cy, cx = shape[0] / 2, 8 + i * (shape[1] - 16) / max(1, t - 1)
        out[i] += ((yy - cy) ** 2 + (xx - cx) ** 2 < 36).astype(np.float32)
    return out
