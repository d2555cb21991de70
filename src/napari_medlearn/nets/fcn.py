"""The fully convolutional network of the UK Biobank cardiac MR pipeline.

W. Bai et al., "Automated cardiovascular magnetic resonance image analysis with fully
convolutional networks", J. Cardiovasc. Magn. Reson. 20:65, 2018.

Architecture (Fig. 1 and the authors' ``build_FCN``): ``n_level`` resolution levels of 3x3
conv-BN-ReLU, ``filters = 16, 32, 64, 128, 256`` with ``blocks = 2, 2, 3, 3, 3`` convolutions,
the first convolution of levels 2-5 with stride 2; each level's output mapped by a 1x1
conv-BN-ReLU to 32 channels and brought back to full resolution by a transposed convolution
(stride ``2**level``) + BN + ReLU; the maps of all levels concatenated; two 1x1 conv(64)-BN-ReLU;
a 1x1 convolution to the class logits.

One deliberate difference: the authors' code uses a 3x3 transposed kernel for every stride,
which for strides 8 and 16 writes only a sparse lattice of the full-resolution grid. Here the
kernel is ``2 * stride`` (initialised to bilinear interpolation), so every output pixel hears
every level. ``up_kernel="paper"`` restores the 3x3 kernel.

Shapes: input ``(B, C, H, W)``, output logits ``(B, n_classes, H, W)``; ``H`` and ``W`` must be
multiples of ``2 ** (n_level - 1)`` (the methods pad to that).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _bilinear_kernel(channels: int, k: int) -> torch.Tensor:
    """Per-channel bilinear upsampling weights for ``ConvTranspose2d`` of kernel ``k``."""
    factor = (k + 1) // 2
    centre = factor - 1 if k % 2 == 1 else factor - 0.5
    og = torch.arange(k, dtype=torch.float32)
    filt1d = 1 - (og - centre).abs() / factor
    filt = filt1d[:, None] * filt1d[None, :]
    w = torch.zeros(channels, channels, k, k)
    for c in range(channels):
        w[c, c] = filt
    return w


class _Up(nn.Module):
    """Transposed convolution by ``stride`` + BN + ReLU, output exactly ``stride`` x input."""

    def __init__(self, channels: int, stride: int, paper_kernel: bool) -> None:
        super().__init__()
        if paper_kernel:
            k, pad, outpad = 3, 1, stride - 1
        else:
            k, pad, outpad = 2 * stride, stride // 2, 0
        self.conv = nn.ConvTranspose2d(channels, channels, k, stride=stride, padding=pad,
                                       output_padding=outpad, bias=False)
        if not paper_kernel:
            with torch.no_grad():
                self.conv.weight.copy_(_bilinear_kernel(channels, k))
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class BaiFCN(nn.Module):
    """Multi-level FCN for 2D cardiac MR segmentation (Bai et al., JCMR 2018).

    Parameters
    ----------
    in_channels
        Image channels (1 for cine MR).
    n_classes
        Output classes including background (4: background, LV, myocardium, RV).
    filters
        Feature maps per level (paper: 16, 32, 64, 128, 256).
    blocks
        Convolutions per level (paper: 2, 2, 3, 3, 3).
    same_dim
        Channels each level is mapped to before upsampling (paper: 32).
    fc
        Width of the two 1x1 layers after concatenation (paper: 64).
    up_kernel
        ``"bilinear"`` (kernel 2*stride, bilinear init) or ``"paper"`` (3x3, as the authors' code).
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 4,
        filters: Sequence[int] = (16, 32, 64, 128, 256),
        blocks: Sequence[int] = (2, 2, 3, 3, 3),
        same_dim: int = 32,
        fc: int = 64,
        up_kernel: str = "bilinear",
    ) -> None:
        super().__init__()
        filters, blocks = list(filters), list(blocks)
        if len(filters) != len(blocks) or not filters:
            raise ValueError(f"filters {filters} and blocks {blocks} need the same, non-zero length")
        if any(f < 1 for f in filters) or any(b < 1 for b in blocks):
            raise ValueError("filters and blocks must be positive")
        if in_channels < 1 or n_classes < 2:
            raise ValueError(f"need in_channels >= 1 and n_classes >= 2, got {in_channels}, {n_classes}")
        if up_kernel not in ("bilinear", "paper"):
            raise ValueError(f"up_kernel {up_kernel!r} not supported (bilinear or paper)")
        self.n_level = len(filters)
        self.levels = nn.ModuleList()
        cin = in_channels
        for lvl, (f, b) in enumerate(zip(filters, blocks)):
            layers = [_conv_bn_relu(cin, f, stride=1 if lvl == 0 else 2)]
            layers += [_conv_bn_relu(f, f) for _ in range(b - 1)]
            self.levels.append(nn.Sequential(*layers))
            cin = f
        self.same_dim = nn.ModuleList(_conv_bn_relu(f, same_dim, kernel=1) for f in filters)
        self.up = nn.ModuleList(
            nn.Identity() if lvl == 0 else _Up(same_dim, 2 ** lvl, up_kernel == "paper")
            for lvl in range(self.n_level)
        )
        self.head = nn.Sequential(
            _conv_bn_relu(same_dim * self.n_level, fc, kernel=1),
            _conv_bn_relu(fc, fc, kernel=1),
            nn.Conv2d(fc, n_classes, 1),
        )

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (self.n_level - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` image -> ``(B, n_classes, H, W)`` logits."""
        m = self.size_multiple
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"height and width must be multiples of {m}, got {tuple(x.shape[-2:])}")
        feats = []
        for level, same, up in zip(self.levels, self.same_dim, self.up):
            x = level(x)
            feats.append(up(same(x)))
        return self.head(torch.cat(feats, dim=1))
