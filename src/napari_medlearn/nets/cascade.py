"""Deep cascade of CNNs for MR reconstruction from undersampled Cartesian k-space.

J. Schlemper, J. Caballero, J. V. Hajnal, A. N. Price, D. Rueckert, "A Deep Cascade of
Convolutional Neural Networks for Dynamic MR Image Reconstruction", IEEE TMI 37(2):491-503,
2018 (and the IPMI 2017 paper).

D{n}-C{m}: ``m`` times, a block of ``n`` convolutions (3x3, or 3x3x3 over ``(t, y, x)`` for
dynamic data; ReLU after all but the last, which maps back to the two real/imaginary channels)
whose output is *added* to its input image (residual), followed by a data-consistency layer that
puts the acquired k-space samples back:

- noiseless (``noise_lambda=None``): sampled positions take the measured values exactly;
- noisy: sampled positions take ``(k_cnn + lambda * k0) / (1 + lambda)`` with a given or
  learnable ``lambda`` (the closed-form solution of the paper's eq. 6 with ``lambda = q / nu``).

For 2D+t, a k-space data-sharing layer comes before each block (the paper's Section III-C): each
frame's missing k-space lines are filled with the average of the neighbouring frames' values
within ``+-w`` frames (cyclic in time, one copy per width ``w`` in ``share_widths``); the block
sees the image and all the filled copies as channels. In the first cascade the average runs over
the *acquired* neighbours only; later cascades average all ``2w + 1`` frames (every position
holds an estimate by then), as in the authors' code.

Tensors: complex images travel as two real channels (real, imaginary). Shapes are
``(B, 2, H, W)`` for 2D and ``(B, 2, T, H, W)`` for 2D+t; masks ``(B, 1, [T,] H, W)`` (any shape
that broadcasts), 1 where a sample was acquired. FFTs are orthonormal and centred, as in
:mod:`napari_medlearn.imaging.kspace`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

_DIMS = (-2, -1)


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal centred 2D FFT over the last two axes of a complex tensor."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=_DIMS), norm="ortho"), dim=_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Orthonormal centred 2D inverse FFT over the last two axes of a complex tensor."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=_DIMS), norm="ortho"), dim=_DIMS)


def to_complex(x: torch.Tensor) -> torch.Tensor:
    """``(B, 2, ...)`` real/imaginary channels -> complex ``(B, ...)``."""
    return torch.complex(x[:, 0].float(), x[:, 1].float())


def to_channels(z: torch.Tensor) -> torch.Tensor:
    """Complex ``(B, ...)`` -> ``(B, 2, ...)`` real/imaginary channels."""
    return torch.stack((z.real, z.imag), dim=1)


def _mask_bool(mask: torch.Tensor) -> torch.Tensor:
    """A ``(B, 1, ...)`` 0/1 (or bool) mask -> bool ``(B, ...)`` for complex tensors."""
    m = mask if mask.dtype == torch.bool else mask > 0.5
    return m[:, 0] if m.dim() >= 2 and m.shape[1] == 1 else m


def data_consistency(k: torch.Tensor, k0: torch.Tensor, mask: torch.Tensor,
                     noise_lambda: torch.Tensor | float | None = None) -> torch.Tensor:
    """Combine a k-space estimate ``k`` with the measured ``k0`` at the sampled positions.

    All complex, broadcasting; ``mask`` bool. Noiseless (``noise_lambda=None``): sampled
    positions are ``k0`` bit for bit. Noisy: ``(k + lambda k0) / (1 + lambda)`` there.
    Unsampled positions keep ``k``.
    """
    if noise_lambda is None:
        return torch.where(mask, k0, k)
    return torch.where(mask, (k + noise_lambda * k0) / (1 + noise_lambda), k)


class DataConsistency(nn.Module):
    """Data-consistency layer on an image: FFT, :func:`data_consistency`, inverse FFT.

    Parameters
    ----------
    noise_lambda
        None for the noiseless case; a positive number for the noisy form.
    learn_lambda
        Make ``lambda`` a trainable parameter (kept positive through its logarithm).
    """

    def __init__(self, noise_lambda: float | None = None, learn_lambda: bool = False) -> None:
        super().__init__()
        if noise_lambda is not None and not (math.isfinite(noise_lambda) and noise_lambda > 0):
            raise ValueError(f"noise_lambda must be a positive number or None, got {noise_lambda}")
        if learn_lambda and noise_lambda is None:
            raise ValueError("learn_lambda needs a starting noise_lambda")
        self.learn_lambda = bool(learn_lambda)
        if self.learn_lambda:
            self.log_lambda = nn.Parameter(torch.tensor(math.log(noise_lambda)))
        else:
            self.noise_lambda = noise_lambda

    @property
    def lam(self) -> torch.Tensor | float | None:
        return self.log_lambda.exp() if self.learn_lambda else self.noise_lambda

    def forward(self, image: torch.Tensor, k0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``image`` complex ``(B, [T,] H, W)``, ``k0`` complex, ``mask`` bool -> complex image."""
        return ifft2c(data_consistency(fft2c(image), k0, mask, self.lam))


def share_data(image: torch.Tensor, mask: torch.Tensor, widths: Sequence[int], acquired_only: bool) -> torch.Tensor:
    """k-space data sharing across frames: one filled copy of ``image`` per width.

    ``image`` complex ``(B, T, H, W)``, ``mask`` bool broadcastable to it. For each ``w`` the
    missing positions of frame ``t`` get the mean of frames ``t-w .. t+w`` (cyclic): over the
    acquired ones when ``acquired_only`` (zeros elsewhere do not count), else over all
    ``2w + 1``; acquired positions keep their own values. Returns complex ``(B, len(widths), T, H, W)``.
    """
    k = fft2c(image)
    m = mask.expand_as(k)
    mf = m.to(k.real.dtype)
    out = []
    for w in widths:
        total = torch.zeros_like(k)
        count = torch.zeros_like(mf)
        for d in range(-w, w + 1):
            total = total + torch.roll(k, d, dims=1)
            count = count + torch.roll(mf, d, dims=1)
        denom = count.clamp(min=1.0) if acquired_only else torch.full_like(count, float(2 * w + 1))
        out.append(ifft2c(torch.where(m, k, total / denom)))
    return torch.stack(out, dim=1)


class ConvBlock(nn.Module):
    """``n_layers`` convolutions (3x3 or 3x3x3), ReLU after all but the last; no residual here."""

    def __init__(self, in_channels: int, width: int, n_layers: int, dims: int, out_channels: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(n_layers - 1):
            layers += [conv(c, width, 3, padding=1), nn.ReLU(inplace=True)]
            c = width
        layers.append(conv(c, out_channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)
        for m in self.layers:
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        # start close to the identity cascade (zero-filling + data consistency): stable training
        self.layers[-1].weight.data.mul_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DeepCascade(nn.Module):
    """D{n_layers}-C{n_cascades} reconstruction network (2D or 2D+t).

    Parameters
    ----------
    dims
        2: images ``(B, 2, H, W)``, 3x3 convolutions. 3: sequences ``(B, 2, T, H, W)``, 3x3x3
        convolutions and k-space data sharing over ``T``.
    n_cascades, n_layers, width
        Cascades ``C``, convolutions per block ``D`` (>= 2) and their channels (paper: 5, 5, 64).
    share_widths
        2D+t only: the data-sharing neighbourhoods ``w`` (frames ``t-w..t+w``); empty for none.
    noise_lambda, learn_lambda
        Data consistency: None for noiseless, else the noisy form with this (learnable) lambda.

    ``forward(kspace, mask)`` takes the measured k-space as channels (zeros where not acquired
    are enforced) and the mask, and returns the reconstructed image as channels, same shape.
    """

    def __init__(self, dims: int = 2, n_cascades: int = 5, n_layers: int = 5, width: int = 64,
                 share_widths: Sequence[int] = (), noise_lambda: float | None = None,
                 learn_lambda: bool = False) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 (2D) or 3 (2D+t), got {dims}")
        for name, v, lo in (("n_cascades", n_cascades, 1), ("n_layers", n_layers, 2), ("width", width, 1)):
            if int(v) != v or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v}")
        share_widths = tuple(int(w) for w in share_widths)
        if share_widths and dims != 3:
            raise ValueError("data sharing (share_widths) needs dims=3 (2D+t)")
        if any(w < 1 for w in share_widths):
            raise ValueError(f"share_widths must be positive frame counts, got {share_widths}")
        self.dims, self.n_cascades, self.n_layers, self.width = int(dims), int(n_cascades), int(n_layers), int(width)
        self.share_widths = share_widths
        in_channels = 2 * (1 + len(share_widths))
        self.blocks = nn.ModuleList(ConvBlock(in_channels, self.width, self.n_layers, self.dims)
                                    for _ in range(self.n_cascades))
        self.dcs = nn.ModuleList(DataConsistency(noise_lambda, learn_lambda) for _ in range(self.n_cascades))

    def forward(self, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        want = 4 if self.dims == 2 else 5
        if kspace.dim() != want or kspace.shape[1] != 2:
            axes = "(B, 2, H, W)" if self.dims == 2 else "(B, 2, T, H, W)"
            raise ValueError(f"expected k-space channels {axes}, got {tuple(kspace.shape)}")
        m = _mask_bool(mask)
        k0 = torch.where(m, to_complex(kspace), torch.zeros((), dtype=torch.complex64, device=kspace.device))
        x = ifft2c(k0)
        for i, (block, dc) in enumerate(zip(self.blocks, self.dcs)):
            if self.share_widths:
                shared = share_data(x, m, self.share_widths, acquired_only=(i == 0))
                inp = torch.cat([to_channels(x), to_channels(shared).flatten(1, 2)], dim=1)
            else:
                inp = to_channels(x)
            x = x + to_complex(block(inp))
            x = dc(x, k0, m)
        return to_channels(x)

    def forward_complex(self, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Complex k-space ``(B, [T,] H, W)`` and mask -> complex image, same shape."""
        m = mask if mask.dim() == kspace.dim() + 1 else mask.unsqueeze(1)
        return to_complex(self.forward(to_channels(kspace), m))


__all__ = ["ConvBlock", "DataConsistency", "DeepCascade", "data_consistency", "fft2c", "ifft2c",
           "share_data", "to_channels", "to_complex"]
