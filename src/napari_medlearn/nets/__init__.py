"""Architectures as plain ``torch.nn.Module`` s: no I/O, no Qt, no training loops.

:func:`build` makes one from its registry name and keyword arguments, which is how model
cards and checkpoints name an architecture.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .acnn import ACNNShapeModel
from .cascade import DeepCascade
from .deepmedic import DeepMedic
from .fcn import BaiFCN
from .sononet import SONONET_CLASSES, SonoNet
from .sr import MultiInputSRNet, SRNet
from .unet3d import FCN3D, UNet3D

#: architecture name (as written in model cards) -> constructor
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "acnn_shape": ACNNShapeModel,
    "bai_fcn": BaiFCN,
    "deep_cascade": DeepCascade,
    "deepmedic": DeepMedic,
    "fcn3d": FCN3D,
    "sononet": SonoNet,
    "sr_net": SRNet,
    "sr_multi_input": MultiInputSRNet,
    "unet3d": UNet3D,
}


def build(arch: str, **kwargs: Any) -> nn.Module:
    """Construct architecture ``arch`` with ``kwargs``; ``ValueError`` for unknown names."""
    try:
        ctor = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"architecture {arch!r} not supported; known: {sorted(ARCHITECTURES)}") from None
    return ctor(**kwargs)


__all__ = ["ACNNShapeModel", "ARCHITECTURES", "BaiFCN", "DeepCascade", "FCN3D", "UNet3D", "SONONET_CLASSES", "SonoNet", "SRNet", "MultiInputSRNet", "build"]
