"""SonoNet: fully convolutional standard-plane classifier for 2D fetal ultrasound.

C. F. Baumgartner, K. Kamnitsas, J. Matthew, T. P. Fletcher, S. Smith, L. M. Koch, B. Kainz,
D. Rueckert, "SonoNet: Real-Time Detection and Localisation of Fetal Standard Scan Planes in
Freehand Ultrasound", IEEE TMI 36(11):2204-2215, 2017 (arXiv:1612.05601); MICCAI 2016.

A VGG-style feature extractor of five blocks of 2/2/3/3/3 convolutions (3x3, no bias, batch
normalisation, ReLU) with widths N, 2N, 4N, 8N, 8N and 2x2 max-pooling between blocks, then
the adaptation layers: a 1x1 convolution to 4N channels + BN + ReLU and a 1x1 convolution to
K channels + BN. Those K maps are the *category maps* (one per class, 1/16 of the input
size); their global average is the class score, a softmax of the scores the posterior.
N = 16, 32, 64 give SonoNet-16/32/64. Inputs are ``(B, 1, H, W)`` with H, W multiples of 16
(the paper uses 224 x 288), each image z-scored and multiplied by 255.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

#: the 14 output classes of the published SonoNet weights, in the published output order
SONONET_CLASSES: tuple[str, ...] = (
    "3VV", "4CH", "Abdominal", "Background", "Brain (Cb.)", "Brain (Tv.)", "Femur", "Kidneys",
    "Lips", "LVOT", "Profile", "RVOT", "Spine (cor.)", "Spine (sag.)",
)
#: input size (height, width) of the published models
SONONET_INPUT_SIZE: tuple[int, int] = (224, 288)
#: Lasagne's BatchNormLayer epsilon, used by the published models
BN_EPS = 1e-4


def _conv_bn_relu(cin: int, cout: int, eps: float) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                         nn.BatchNorm2d(cout, eps=eps), nn.ReLU(inplace=True))


class SonoNet(nn.Module):
    """SonoNet-N: ``(B, C, H, W)`` image -> ``(B, K)`` class scores (logits).

    Parameters
    ----------
    width
        N, the first block's channel count (16, 32, 64 in the paper; smaller for tests).
    n_classes
        K, the number of category maps / classes (14 for the published weights).
    in_channels
        Input channels (1: grayscale ultrasound).
    blocks
        Convolutions per block (the paper: 2, 2, 3, 3, 3).
    bn_eps
        BatchNorm epsilon (Lasagne's 1e-4 for the published weights).

    ``category_maps(x)`` returns the ``(B, K, H/16, W/16)`` maps before pooling; ``forward``
    their spatial mean, i.e. the pre-softmax scores (train with cross-entropy on them).
    """

    def __init__(self, width: int = 16, n_classes: int = len(SONONET_CLASSES), in_channels: int = 1,
                 blocks: Sequence[int] = (2, 2, 3, 3, 3), bn_eps: float = BN_EPS) -> None:
        super().__init__()
        blocks = tuple(int(b) for b in blocks)
        if int(width) < 1:
            raise ValueError(f"width must be a positive integer, got {width}")
        if int(n_classes) < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        if int(in_channels) < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        if len(blocks) != 5 or min(blocks) < 1:
            raise ValueError(f"blocks must be five positive counts (the paper: 2, 2, 3, 3, 3), got {blocks}")
        self.width, self.n_classes, self.in_channels = int(width), int(n_classes), int(in_channels)
        self.blocks = blocks
        widths = [self.width * m for m in (1, 2, 4, 8, 8)]
        stages = []
        cin = self.in_channels
        for i, (n, w) in enumerate(zip(blocks, widths)):
            layers: list[nn.Module] = []
            for _ in range(n):
                layers.append(_conv_bn_relu(cin, w, bn_eps))
                cin = w
            if i < 4:
                layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*stages)
        self.adaptation = nn.Sequential(
            nn.Conv2d(cin, 4 * self.width, 1, bias=False), nn.BatchNorm2d(4 * self.width, eps=bn_eps),
            nn.ReLU(inplace=True),
            nn.Conv2d(4 * self.width, self.n_classes, 1, bias=False), nn.BatchNorm2d(self.n_classes, eps=bn_eps),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    #: H and W must be multiples of this (four 2x2 poolings)
    size_multiple = 16

    def category_maps(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, K, H/16, W/16)`` category maps."""
        return self.adaptation(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, K)`` scores: global average of the category maps."""
        return self.category_maps(x).mean(dim=(2, 3))


def sononet_preprocess(x: torch.Tensor, size: Sequence[int] = SONONET_INPUT_SIZE) -> torch.Tensor:
    """The published preprocessing: ``(B, 1, H, W)`` grayscale frames -> ``(B, 1, *size)``.

    Bilinear resize (antialiased when shrinking, like the authors' PIL ``imresize``) of the whole
    frame to ``size``, then each image's z-score times 255 (the authors' scale). A constant
    frame becomes zeros. Shared by training and inference.
    """
    import torch.nn.functional as F

    x = x.float()
    if tuple(x.shape[-2:]) != tuple(size):
        down = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        x = F.interpolate(x, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False,
                          antialias=down)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (x - mean) * (255.0 / torch.where(std > 0, std, torch.ones_like(std)))


__all__ = ["BN_EPS", "SONONET_CLASSES", "SONONET_INPUT_SIZE", "SonoNet", "sononet_preprocess"]
