"""The authors' SonoNet weights (Lasagne ``.npz``) -> ``sononet`` zoo models.

Baumgartner et al. published SonoNet-16/32/64 trained on their fetal screening videos
(baumgach/SonoNet-weights, Apache-2.0) as ``SonoNetN.npz``: ``arr_0 .. arr_74`` in Lasagne's
parameter order, five arrays per convolution wrapped in ``batch_norm``: ``W`` (no bias), then
the BatchNormLayer's ``beta, gamma, mean, inv_std`` (``inv_std = 1 / sqrt(var + eps)``,
``eps = 1e-4``). Thirteen 3x3 feature convolutions, then the two 1x1 adaptation convolutions.

The authors' ``models.py`` builds every 3x3 layer with ``flip_filters=False`` (a
cross-correlation, as in PyTorch), so kernels are copied unflipped (the 1x1 adaptation layers
keep Lasagne's default, which makes no difference for 1x1 kernels). Which way is right was also
checked on the published example frames: unflipped weights classify them as their names say,
flipped ones do not (``tests/zoo/test_sononet_import.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SONONET_PAPER = (
    "C. F. Baumgartner, K. Kamnitsas, J. Matthew, T. P. Fletcher, S. Smith, L. M. Koch, B. Kainz, "
    "D. Rueckert, SonoNet: Real-Time Detection and Localisation of Fetal Standard Scan Planes in "
    "Freehand Ultrasound, IEEE TMI 36(11):2204-2215, 2017 (arXiv:1612.05601)"
)
TASK = "us-standard-planes"
PREPROCESSING = ("grayscale (mean of RGB), bilinear resize of the whole frame (after cropping the "
                 "vendor's text and rulers) to 224 x 288, then z-score of each image times 255")


def sononet_input_spec() -> dict[str, Any]:
    """The ``input`` field of a SonoNet card (read by :mod:`napari_medlearn.methods.planes`)."""
    return {
        "axes": "2D B-mode frames (y, x) of a (t, y, x) video",
        "channels": ["B-mode grayscale"],
        "size": [224, 288],
        "intensity": "zscore255",
        "description": PREPROCESSING,
    }


def convert_sononet(path: Path, width: int, flip_filters: bool = False) -> tuple[Any, str, dict, dict]:
    """Convert ``SonoNet{width}.npz`` into a :class:`~napari_medlearn.nets.SonoNet`.

    Returns ``(model, arch, arch_args, card)`` as :data:`napari_medlearn.zoo.IMPORTERS` expect.
    ``flip_filters=True`` flips the 3x3 kernels (wrong for these files; kept for the test that
    shows it).
    """
    import numpy as np
    import torch
    from torch import nn

    from .. import nets
    from . import ModelError, read_npz, sha256_of

    arrays = read_npz(path)
    arch_args = {"width": width, "n_classes": len(nets.SONONET_CLASSES), "in_channels": 1,
                 "blocks": [2, 2, 3, 3, 3]}
    model = nets.SonoNet(**arch_args)
    pairs = [(m, bn) for seq in model.modules() if isinstance(seq, nn.Sequential)
             for m, bn in zip(list(seq)[:-1], list(seq)[1:])
             if isinstance(m, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)]
    n_expected = 5 * len(pairs)
    names = [f"arr_{i}" for i in range(n_expected)]
    if sorted(arrays) != sorted(names):
        raise ModelError(f"{path.name} is not a SonoNet{width} file: expected arrays arr_0..arr_{n_expected - 1}, "
                         f"found {len(arrays)}")
    with torch.no_grad():
        for i, (conv, bn) in enumerate(pairs):
            W, beta, gamma, mean, inv_std = (arrays[f"arr_{5 * i + j}"] for j in range(5))
            if W.shape != tuple(conv.weight.shape) or beta.shape != (conv.out_channels,):
                raise ModelError(f"{path.name}: layer {i} has weights {W.shape}, SonoNet-{width} needs "
                                 f"{tuple(conv.weight.shape)} (is this SonoNet{width}.npz?)")
            if not np.all(np.isfinite(inv_std)) or np.any(inv_std <= 0):
                raise ModelError(f"{path.name}: layer {i} has a non-finite or non-positive inv_std")
            if flip_filters:
                W = W[..., ::-1, ::-1].copy()
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(W, dtype=np.float32)))
            bn.weight.copy_(torch.from_numpy(gamma.astype(np.float32)))
            bn.bias.copy_(torch.from_numpy(beta.astype(np.float32)))
            bn.running_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
            # 1 / sqrt(var + eps) == inv_std, with eps the layer's (Lasagne's 1e-4)
            var = 1.0 / inv_std.astype(np.float64) ** 2 - bn.eps
            bn.running_var.copy_(torch.from_numpy(var.astype(np.float32)))
    model.eval()
    licence_file = path.parent / "LICENSE"
    name = f"sononet-{width}"
    card = {
        "name": name,
        "task": TASK,
        # above the phantom demo (0): trained by the authors on real fetal screening videos
        "priority": 20,
        "description": f"Official SonoNet-{width} weights of Baumgartner et al. (Lasagne, converted): "
                       "13 fetal standard planes + background in 2D freehand ultrasound. The default "
                       "plane-detection model once imported.",
        "architecture": "sononet", "arch_args": arch_args, "paper": SONONET_PAPER,
        "n_classes": len(nets.SONONET_CLASSES), "class_names": list(nets.SONONET_CLASSES),
        "labels": {str(i): c for i, c in enumerate(nets.SONONET_CLASSES)},
        "input": sononet_input_spec(),
        "training": {
            "data": "trained by the authors on 2694 2D ultrasound examinations of 18-22 week fetuses "
                    "(iFIND / St Thomas' Hospital London; see the paper); weights from "
                    "baumgach/SonoNet-weights",
            "command": f"converted with napari_medlearn.zoo.import_weights('sononet-{width}', PATH)",
        },
        "evaluation": {
            "data": "see the paper (TMI 2017): average F1 0.798 in the real-time detection experiment "
                    "for SonoNet-64; the published example frames are classified as named "
                    "(tests/zoo/test_sononet_import.py)",
        },
        "conversion": {
            "source": str(path.name), "source_sha256": sha256_of(path),
            "notes": "Lasagne batch_norm(Conv2DLayer(..., flip_filters=False)): W copied unflipped; "
                     "BatchNormLayer beta/gamma/mean/inv_std -> bias/weight/running_mean/"
                     "running_var = inv_std^-2 - eps with eps = 1e-4",
        },
        "licence": {
            "weights": "Apache-2.0",
            "copyright": "Christian F. Baumgartner et al. (baumgach/SonoNet-weights)",
            "notice": "Licensed under the Apache License, Version 2.0 "
                      "(http://www.apache.org/licenses/LICENSE-2.0); distributed on an \"AS IS\" BASIS, "
                      "WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND. Converted by the user from their own "
                      "copy; not redistributed with napari-medlearn. Cite the paper when using them.",
            "citation": SONONET_PAPER,
            **({"licence_file_text": licence_file.read_text(errors="replace").strip()}
               if licence_file.is_file() else {}),
        },
        "intended_use": "research use only, not for diagnosis",
    }
    return model, "sononet", arch_args, card


def _importer(width: int):
    def convert(path: Path):
        return convert_sononet(path, width)

    convert.__doc__ = f"The authors' ``SonoNet{width}.npz`` -> zoo model ``sononet-{width}``."
    return convert


#: kind -> converter, merged into :data:`napari_medlearn.zoo.IMPORTERS`
SONONET_IMPORTERS = {f"sononet-{w}": _importer(w) for w in (16, 32, 64)}
