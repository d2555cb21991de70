"""Through-plane super-resolution CNNs for thick-slice MR stacks.

O. Oktay, W. Bai, M. Lee, R. Guerrero, K. Kamnitsas, J. Caballero, A. de Marvao, S. Cook,
D. O'Regan, D. Rueckert, "Multi-input Cardiac Image Super-Resolution Using Convolutional Neural
Networks", MICCAI 2016, LNCS 9902:246-254.

:class:`SRNet` (single stack, the paper's de-CNN)
    Features are extracted in the low-resolution space by 3x3x3 convolutions on the thick stack
    ``(B, 1, N, Y, X)``; a **learned transposed convolution** upsamples them by ``factor`` along
    z only (kernel ``2f - f mod 2`` along z, stride ``f``, so thick slice ``i`` feeds thin slices
    ``i*f .. i*f+f-1`` and its neighbours); convolutions in the high-resolution space then predict
    the **residual** over the interpolated stack (linear along z, the same slice-centre
    convention as :mod:`napari_medlearn.imaging.slices`). The output is ``(B, 1, N*f, Y, X)``.
    The last layer starts at zero, so an untrained network returns the interpolation.
    ``planar=True`` makes every kernel span ``(z, y)`` only (width 1 along x): each x column-plane
    is then upsampled on its own, as a 2D network on the planes through the slice direction. This is
    the form trained self-supervised from in-plane resolution (SMORE, Zhao et al., IEEE TMI 2021),
    where only one in-plane axis stands for the thin through-plane axis at training time.

:class:`MultiInputSRNet` (Siamese multi-input)
    ``n_inputs`` stacks of the same anatomy, each already resampled (cubic B-spline, from its own
    affine) onto the common thin grid, ``(B, n_inputs, Z, Y, X)``. Every stack goes through the
    **same** feature-extraction stream (shared weights); the stream outputs are concatenated,
    fused by a 1x1x1 convolution and high-resolution convolutions that predict the residual over
    the stacks' average. The paper resamples its long-axis stacks into the short-axis frame and
    fuses the Siamese streams after them in the same way; here the learned z-upsampling of the
    single-stack network is replaced by the resampling into the common thin grid, since stacks in
    different orientations share no low-resolution grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PAPER = ("O. Oktay et al., Multi-input Cardiac Image Super-Resolution Using Convolutional Neural "
         "Networks, MICCAI 2016, LNCS 9902:246-254")


def _convs(n: int, c_in: int, width: int, planar: bool = False) -> list[nn.Module]:
    k, pad = ((3, 3, 1), (1, 1, 0)) if planar else (3, 1)
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv3d(c_in if i == 0 else width, width, k, padding=pad), nn.PReLU(width)]
    return layers


def _check(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class SRNet(nn.Module):
    """Single-stack SR: ``(B, 1, N, Y, X)`` thick stack -> ``(B, 1, N*factor, Y, X)``.

    Parameters
    ----------
    factor
        Through-plane upsampling factor (integer >= 2).
    width
        Feature maps of every hidden layer (the paper uses 64).
    n_lr, n_hr
        Convolution layers before (low-resolution space) and after (high-resolution space) the
        transposed convolution.
    planar
        Kernels of width 1 along x: every ``(z, y)`` plane is upsampled independently.
    """

    def __init__(self, factor: int = 4, width: int = 32, n_lr: int = 3, n_hr: int = 3,
                 planar: bool = False) -> None:
        super().__init__()
        self.factor = _check("factor", factor, 2)
        width, n_lr, n_hr = _check("width", width, 1), _check("n_lr", n_lr, 1), _check("n_hr", n_hr, 1)
        self.planar = bool(planar)
        f, kx = self.factor, (1 if self.planar else 3)
        self.lr = nn.Sequential(*_convs(n_lr, 1, width, self.planar))
        self.up = nn.ConvTranspose3d(width, width, kernel_size=(2 * f - f % 2, 3, kx), stride=(f, 1, 1),
                                     padding=(f // 2, 1, kx // 2))
        self.up_act = nn.PReLU(width)
        self.hr = nn.Sequential(*_convs(n_hr - 1, width, width, self.planar)) if n_hr > 1 else nn.Identity()
        self.out = nn.Conv3d(width, 1, (3, 3, kx), padding=(1, 1, kx // 2))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def interpolate(self, x: torch.Tensor) -> torch.Tensor:
        """Linear interpolation along z onto the thin grid (slice centres at ``(k + 0.5)/f - 0.5``)."""
        return F.interpolate(x, scale_factor=(self.factor, 1, 1), mode="trilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"expected (B, 1, N, Y, X), got {tuple(x.shape)}")
        h = self.up_act(self.up(self.lr(x)))
        return self.interpolate(x) + self.out(self.hr(h))


class MultiInputSRNet(nn.Module):
    """Siamese multi-input SR: ``(B, n_inputs, Z, Y, X)`` stacks on one thin grid -> ``(B, 1, Z, Y, X)``.

    Parameters
    ----------
    n_inputs
        Number of stacks (channel ``0`` is the reference stack, whose frame the output is in).
    width
        Feature maps of the shared streams and of the fusion layers.
    n_stream
        Convolution layers of the shared stream.
    n_fused
        Convolution layers after the fusion (the last one outputs the residual).
    """

    def __init__(self, n_inputs: int = 2, width: int = 16, n_stream: int = 3, n_fused: int = 3) -> None:
        super().__init__()
        self.n_inputs = _check("n_inputs", n_inputs, 2)
        width, n_stream, n_fused = (_check("width", width, 1), _check("n_stream", n_stream, 1),
                                    _check("n_fused", n_fused, 1))
        self.stream = nn.Sequential(*_convs(n_stream, 1, width))
        self.fuse = nn.Sequential(nn.Conv3d(self.n_inputs * width, width, 1), nn.PReLU(width))
        self.hr = nn.Sequential(*_convs(n_fused - 1, width, width)) if n_fused > 1 else nn.Identity()
        self.out = nn.Conv3d(width, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.n_inputs:
            raise ValueError(f"expected (B, {self.n_inputs}, Z, Y, X), got {tuple(x.shape)}")
        b, n = x.shape[:2]
        feats = self.stream(x.reshape(b * n, 1, *x.shape[2:]))          # shared weights
        feats = feats.reshape(b, n * feats.shape[1], *x.shape[2:])
        return x.mean(dim=1, keepdim=True) + self.out(self.hr(self.fuse(feats)))
