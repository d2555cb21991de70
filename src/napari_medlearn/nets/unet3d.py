"""3D U-Net and a 3D FCN: the two non-DeepMedic architectures of the EMMA lesion ensemble.

EMMA (K. Kamnitsas et al., "Ensembles of Multiple Models and Architectures for Robust Brain
Tumour Segmentation", BrainLes / BraTS 2017, first place) averages the posteriors of DeepMedic
variants, 3D FCNs and 3D U-Nets. Both are built here as in that paper's members, scaled by
``base`` (feature maps of the first level) for CPU:

- :class:`UNet3D` follows O. Cicek et al., "3D U-Net: Learning Dense Volumetric Segmentation
  from Sparse Annotation", MICCAI 2016: an analysis path of ``levels`` resolution steps, each two
  3x3x3 convolutions with BN and ReLU, the second doubling the feature maps (32 -> 64 at the
  first level of the paper), and a 2x2x2 max pooling; a synthesis path of 2x2x2 transposed
  convolutions (stride 2), concatenation with the analysis path's features at the same
  resolution (the shortcut), and two 3x3x3 convolutions; a final 1x1x1 convolution to the
  classes. Convolutions are zero-padded ("same"), as in EMMA's U-Net, so the output has the
  input's size and tiles by overlapping sliding windows.
- :class:`FCN3D` follows J. Long et al., "Fully Convolutional Networks for Semantic
  Segmentation", CVPR 2015, in 3D as in EMMA: a VGG-like encoder (blocks of 3x3x3 conv + BN +
  ReLU, then 2x2x2 max pooling), two "fully connected" layers as convolutions at the coarsest
  scale, 1x1x1 score layers at the coarsest scale and at the outputs of pooling steps 1 and 2,
  and the FCN-8s skip architecture: each coarser score map is upsampled by a learned 2x
  transposed convolution (initialised as trilinear interpolation) and added to the next finer
  one, the sum upsampled to the input's size.

Both take ``(B, C, Z, Y, X)`` with each spatial size a multiple of :attr:`divisor` and return
logits ``(B, n_classes, Z, Y, X)``; ``return_features=True`` also returns a dict of feature maps
at several depths (for adversarial domain adaptation, :mod:`napari_medlearn.training.uda`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

UNET_PAPER = ("O. Cicek et al., 3D U-Net: Learning Dense Volumetric Segmentation from Sparse Annotation, "
              "MICCAI 2016")
FCN_PAPER = "J. Long, E. Shelhamer, T. Darrell, Fully Convolutional Networks for Semantic Segmentation, CVPR 2015"
EMMA_PAPER = ("K. Kamnitsas et al., Ensembles of Multiple Models and Architectures for Robust Brain Tumour "
              "Segmentation, BrainLes 2017 (LNCS 10670)")


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


def _check(in_channels: int, n_classes: int, base: int, levels: int, min_levels: int = 1) -> None:
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if base < 1:
        raise ValueError(f"base must be >= 1, got {base}")
    if levels < min_levels:
        raise ValueError(f"levels must be >= {min_levels}, got {levels}")


class UNet3D(nn.Module):
    """3D U-Net (Cicek et al. 2016) with "same" convolutions.

    Parameters
    ----------
    in_channels, n_classes
        Input modalities and output classes (index 0 background).
    base
        Feature maps of the first convolution (paper: 32; the second convolution of each level
        doubles them, the next level starts from there).
    levels
        Resolution levels of the analysis path (paper: 4, i.e. 3 poolings).
    """

    def __init__(self, in_channels: int = 2, n_classes: int = 4, base: int = 32, levels: int = 4) -> None:
        super().__init__()
        _check(in_channels, n_classes, base, levels, min_levels=2)
        self.in_channels, self.n_classes, self.levels = int(in_channels), int(n_classes), int(levels)
        self.down = nn.ModuleList()
        widths = []
        cin = in_channels
        for lv in range(levels):
            first = base * 2 ** lv
            self.down.append(nn.Sequential(_conv_bn_relu(cin, first), _conv_bn_relu(first, 2 * first)))
            widths.append(2 * first)
            cin = 2 * first
        self.ups = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for lv in range(levels - 2, -1, -1):
            self.ups.append(nn.ConvTranspose3d(cin, cin, 2, stride=2))
            out = widths[lv]
            self.up_convs.append(nn.Sequential(_conv_bn_relu(cin + widths[lv], out), _conv_bn_relu(out, out)))
            cin = out
        self.head = nn.Conv3d(cin, n_classes, 1)

    @property
    def divisor(self) -> int:
        """Each input size must be a multiple of this (2 ** poolings)."""
        return 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(f"UNet3D input sizes must be multiples of {self.divisor}, got {tuple(x.shape[2:])}")
        skips = []
        for lv, block in enumerate(self.down):
            x = block(x if lv == 0 else F.max_pool3d(x, 2))
            skips.append(x)
        feats = {"bottleneck": x}
        for i, (up, conv) in enumerate(zip(self.ups, self.up_convs)):
            x = conv(torch.cat([up(x), skips[-2 - i]], dim=1))
            feats[f"up{i + 1}"] = x
        logits = self.head(x)
        if return_features:
            return logits, feats
        return logits


def _trilinear_kernel(channels: int, factor: int = 2) -> torch.Tensor:
    """Weights of a transposed convolution that upsamples each channel trilinearly (FCN's init)."""
    k = 2 * factor - factor % 2
    centre = factor - 1 if k % 2 == 1 else factor - 0.5
    og = torch.arange(k, dtype=torch.float32)
    f1 = 1 - (og - centre).abs() / factor
    w3 = f1[:, None, None] * f1[None, :, None] * f1[None, None, :]
    w = torch.zeros(channels, channels, k, k, k)
    for c in range(channels):
        w[c, c] = w3
    return w


class FCN3D(nn.Module):
    """3D FCN-8s (Long et al. 2015) as an EMMA member.

    Parameters
    ----------
    in_channels, n_classes
        Input modalities and output classes.
    base
        Feature maps of the first block (doubled after each pooling, at most ``8 * base``).
    blocks
        Convolutions per encoder block, one block per scale (``len(blocks)`` = 3 poolings + 1).
    fc
        Feature maps of the two "fully connected" convolutions at the coarsest scale.
    dropout
        Dropout before each "fully connected" layer's output (paper: 0.5).
    """

    def __init__(self, in_channels: int = 2, n_classes: int = 4, base: int = 16,
                 blocks: Sequence[int] = (2, 2, 3, 3), fc: int = 128, dropout: float = 0.5) -> None:
        super().__init__()
        _check(in_channels, n_classes, base, len(blocks), min_levels=3)
        if fc < 1:
            raise ValueError(f"fc must be >= 1, got {fc}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels, self.n_classes = int(in_channels), int(n_classes)
        self.n_pool = len(blocks) - 1
        self.enc = nn.ModuleList()
        cin, widths = in_channels, []
        for i, n in enumerate(blocks):
            w = base * min(2 ** i, 8)
            layers = [_conv_bn_relu(cin if j == 0 else w, w) for j in range(int(n))]
            self.enc.append(nn.Sequential(*layers))
            widths.append(w)
            cin = w
        # "fully connected" layers as convolutions (a 3^3 window, then 1x1x1), with dropout
        self.fc = nn.Sequential(nn.Conv3d(cin, fc, 3, padding=1), nn.ReLU(inplace=True), nn.Dropout3d(dropout),
                                nn.Conv3d(fc, fc, 1), nn.ReLU(inplace=True), nn.Dropout3d(dropout))
        self.score_fc = nn.Conv3d(fc, n_classes, 1)
        # score layers on the outputs of the two finer scales FCN-8s taps (pool3/pool4 of VGG)
        self.score_skips = nn.ModuleList([nn.Conv3d(widths[-2], n_classes, 1), nn.Conv3d(widths[-3], n_classes, 1)])
        self.up2 = nn.ModuleList([nn.ConvTranspose3d(n_classes, n_classes, 4, stride=2, padding=1, bias=False)
                                  for _ in range(2)])
        for up in self.up2:
            with torch.no_grad():
                up.weight.copy_(_trilinear_kernel(n_classes))
        # the skip scores start at zero, as in FCN's staged training (the net is first FCN-32s)
        for s in self.score_skips:
            nn.init.zeros_(s.weight)
            nn.init.zeros_(s.bias)

    @property
    def divisor(self) -> int:
        return 2 ** self.n_pool

    def forward(self, x: torch.Tensor, return_features: bool = False):
        size = x.shape[2:]
        if any(s % self.divisor for s in size):
            raise ValueError(f"FCN3D input sizes must be multiples of {self.divisor}, got {tuple(size)}")
        outs = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else F.max_pool3d(x, 2))
            outs.append(x)
        h = self.fc(x)
        score = self.score_fc(h)
        score = self.up2[0](score) + self.score_skips[0](outs[-2])
        score = self.up2[1](score) + self.score_skips[1](outs[-3])
        logits = F.interpolate(score, size=size, mode="trilinear", align_corners=False)
        if return_features:
            return logits, {"enc_mid": outs[-3], "enc_deep": outs[-2], "fc": h}
        return logits


__all__ = ["EMMA_PAPER", "FCN3D", "FCN_PAPER", "UNET_PAPER", "UNet3D"]
