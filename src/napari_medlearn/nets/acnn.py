"""The T-L network of Anatomically Constrained Neural Networks (ACNN), for 3D label maps.

O. Oktay et al., "Anatomically Constrained Neural Networks (ACNNs): Application to Cardiac
Image Enhancement and Segmentation", IEEE TMI 37(2):384-395, 2018.

Two parts share one low-dimensional code (64-d in the paper):

* the **autoencoder** (the "L" of T-L): a label map, one-hot ``(B, K, D, H, W)``, goes through
  a stack of strided 3D convolutions (conv-BN-ReLU, stride 2 halving the grid) and a fully
  connected layer to the code ``h``; a fully connected layer and transposed convolutions
  (stride 2 doubling the grid) mirror it back to class logits ``(B, K, D, H, W)``;
* the **predictor** (the "T"): an image ``(B, C, D, H, W)`` through its own strided
  convolutional encoder into the same code space, trained to match the autoencoder's code of
  the true labels (Euclidean loss), so an image can be mapped into the shape space.

In ACNN the autoencoder's encoder, frozen, is the shape regulariser of a segmentation network
(loss = cross-entropy + lambda * ||f(prediction) - f(truth)||^2); in this plugin it is also the
shape prior behind :func:`napari_medlearn.methods.acnn.correct_mask`.

Differences from the paper, on purpose: the grid and widths are small by default for CPU, and
a level may stride in-plane only (``strides`` per level) because short-axis stacks have far
fewer slices than in-plane pixels.

Shapes: ``grid = (D, H, W)`` must be divisible by the product of the strides along each axis.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _block(cin: int, cout: int, stride) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


def _up(cin: int, cout: int, stride) -> nn.Sequential:
    k = tuple(2 * s if s > 1 else 3 for s in stride)
    pad = tuple(s // 2 if s > 1 else 1 for s in stride)
    return nn.Sequential(nn.ConvTranspose3d(cin, cout, k, stride=stride, padding=pad, bias=False),
                         nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class _Encoder(nn.Module):
    """Strided conv stack + fully connected layer to the code."""

    def __init__(self, cin: int, filters: Sequence[int], strides, grid, code: int) -> None:
        super().__init__()
        layers, c = [_block(cin, filters[0], 1)], filters[0]
        for f, s in zip(filters, strides):
            layers += [_block(c, f, s), _block(f, f, 1)]
            c = f
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(c * int(torch.tensor(grid).prod()), code)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv(x), 1))


class ACNNShapeModel(nn.Module):
    """T-L network: label-map autoencoder with a 64-d code and an image-to-code predictor.

    Parameters
    ----------
    n_classes
        Classes including background (4 for cardiac: background, LV, myocardium, RV).
    grid
        ``(D, H, W)`` of the label maps (the canonical grid the method resamples to).
    filters
        Channels per resolution level of the encoder (the decoder mirrors them).
    strides
        Stride ``(sd, sh, sw)`` of each level's first convolution (2 halves that axis).
    code_size
        Length of the shape code (64 in the paper).
    in_channels
        Image channels of the predictor; ``0`` builds no predictor (shape prior only).

    ``forward(labels_onehot)`` returns ``(logits, code)``; :meth:`encode`, :meth:`decode` and
    :meth:`predict_code` expose the parts.
    """

    def __init__(self, n_classes: int = 4, grid: Sequence[int] = (12, 64, 64),
                 filters: Sequence[int] = (16, 32, 64, 64),
                 strides: Sequence[Sequence[int]] = ((1, 2, 2), (2, 2, 2), (1, 2, 2), (2, 2, 2)),
                 code_size: int = 64, in_channels: int = 1) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        if len(filters) != len(strides) or not filters:
            raise ValueError(f"filters ({len(filters)}) and strides ({len(strides)}) must have the same length")
        strides = [tuple(int(v) for v in s) for s in strides]
        grid = tuple(int(g) for g in grid)
        total = [1, 1, 1]
        for s in strides:
            if len(s) != 3 or any(v not in (1, 2) for v in s):
                raise ValueError(f"each stride must be three of 1 or 2, got {s}")
            total = [t * v for t, v in zip(total, s)]
        if len(grid) != 3 or any(g % t for g, t in zip(grid, total)):
            raise ValueError(f"grid {grid} must be divisible by the total stride {tuple(total)}")
        self.n_classes, self.grid, self.code_size = n_classes, grid, code_size
        self.bottleneck = (int(filters[-1]),) + tuple(g // t for g, t in zip(grid, total))
        self.encoder = _Encoder(n_classes, filters, strides, self.bottleneck[1:], code_size)
        self.fc_dec = nn.Linear(code_size, int(torch.tensor(self.bottleneck).prod()))
        ups, c = [], filters[-1]
        for f, s in zip(reversed([filters[0]] + list(filters[:-1])), reversed(strides)):
            ups += [_up(c, f, s), _block(f, f, 1)]
            c = f
        self.decoder = nn.Sequential(*ups, nn.Conv3d(c, n_classes, 1))
        self.predictor = (_Encoder(in_channels, filters, strides, self.bottleneck[1:], code_size)
                          if in_channels > 0 else None)

    def encode(self, onehot: torch.Tensor) -> torch.Tensor:
        """``(B, K, D, H, W)`` one-hot (or probabilities) -> ``(B, code_size)``."""
        return self.encoder(onehot)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """``(B, code_size)`` -> logits ``(B, K, D, H, W)``."""
        x = torch.relu(self.fc_dec(code)).view(code.shape[0], *self.bottleneck)
        return self.decoder(x)

    def predict_code(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` image -> ``(B, code_size)`` (the T network)."""
        if self.predictor is None:
            raise ValueError("this model was built without a predictor (in_channels=0)")
        return self.predictor(image)

    def forward(self, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encode(onehot)
        return self.decode(code), code
