"""DeepMedic: a multi-scale 3D CNN for dense segmentation of brain lesions.

K. Kamnitsas, C. Ledig, V. F. J. Newcombe, J. P. Simpson, A. D. Kane, D. K. Menon, D. Rueckert,
B. Glocker, "Efficient multi-scale 3D CNN with fully connected CRF for accurate brain lesion
segmentation", Medical Image Analysis 36:61-78, 2017; layout of the authors' reference
configuration (github.com/deepmedic/deepmedic, ``examples/configFiles/deepMedic/model``).

Architecture
------------
- **Normal pathway**: 8 valid 3x3x3 convolutions with 30, 30, 40, 40, 40, 40, 50, 50 feature
  maps; receptive field 17^3, so an input segment of ``n + 16`` voxels per axis yields ``n``.
- **Residual connections** at layers 4, 6, 8 (numbered from 1, as in the config's
  ``layersWithResidualConnNormal = [4, 6, 8]``): the *input* of the previous layer, centre-cropped
  to the deeper output, is added to the layer's output; when the deeper layer has more feature
  maps the earlier ones are zero-padded in channels (the reference's
  ``makeResidualConnectionBetweenLayersAndReturnOutput``).
- **Subsampled pathways** (one or more, factors e.g. 3 and 5): the same layout applied to the
  image sampled every ``f`` voxels around the same centre (the reference takes strided voxels,
  no averaging). A pathway that must cover ``n`` output voxels produces ``ceil(n / f)`` voxels,
  upsampled by repetition (``"repeat"``) and cropped to the first ``n`` (the reference's
  ``upsampleRcz5DimArrayAndOptionalCrop``), then concatenated with the normal pathway's output.
- **FC layers** as 1x1x1 convolutions (150, 150 maps by default) and a 1x1x1 classification layer;
  dropout on their inputs, ``dropout_fc = (0.0, 0.5, 0.5)`` as in the reference config.
- **Pre-activation** order of the reference ``ConvLayer``: each layer computes
  BN -> PReLU -> dropout -> convolution of its input; the first layer of a pathway sees the
  image directly (no BN, linear). PReLU slopes start at 0.01, weights with He (fan-in) init.

Inputs
------
The module takes **one** tensor ``(B, C, Z, Y, X)``: a segment large enough for every pathway
(:func:`segment_geometry`); it crops the normal pathway's input from the centre and samples each
subsampled pathway's input from it, so training, dense tiling and ensembles pass one array.
The output is logits ``(B, n_classes, nz, ny, nx)`` for the central ``n`` voxels, where
``n = output_size(segment)``. ``return_features=True`` also returns the last feature maps of
every pathway and the hidden FC layers (for adversarial domain adaptation, issue 12).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

PAPER = ("K. Kamnitsas et al., Efficient multi-scale 3D CNN with fully connected CRF for accurate "
         "brain lesion segmentation, Medical Image Analysis 36:61-78, 2017")

NORMAL_FMS = (30, 30, 40, 40, 40, 40, 50, 50)
RESIDUAL_LAYERS = (4, 6, 8)


def _triple(v) -> tuple[int, int, int]:
    if isinstance(v, (int, float)):
        return (int(v),) * 3
    t = tuple(int(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"expected one number or three per axis, got {v!r}")
    return t


@dataclass(frozen=True)
class AxisGeometry:
    """Where each pathway reads along one axis, relative to the segment's first voxel."""

    segment: int          # input segment length
    out: int              # output length (central voxels predicted)
    out_start: int        # index of the first predicted voxel in the segment
    normal_start: int     # first voxel of the normal pathway's input
    sub_starts: tuple     # per subsampled pathway: first sampled voxel (stride = factor)
    sub_lengths: tuple    # per subsampled pathway: number of sampled voxels


def _axis_margins(out: int, factors: Sequence[int], half_rf: int) -> tuple[int, int]:
    """Voxels needed before the first and after the last output voxel along one axis."""
    lo, hi = half_rf, half_rf
    for f in factors:
        n_sub = math.ceil(out / f)
        centre0 = (f - 1) // 2                      # centre of the first output block
        first = centre0 - half_rf * f               # first sampled voxel, rel. to the output start
        last = centre0 + (n_sub - 1 + half_rf) * f  # last sampled voxel
        lo = max(lo, -first)
        hi = max(hi, last - (out - 1))
    return lo, hi


def _axis_geometry(out: int, factors: Sequence[int], half_rf: int) -> AxisGeometry:
    lo, hi = _axis_margins(out, factors, half_rf)
    starts, lengths = [], []
    for f in factors:
        n_sub = math.ceil(out / f)
        starts.append(lo + (f - 1) // 2 - half_rf * f)
        lengths.append(n_sub + 2 * half_rf)
    return AxisGeometry(segment=lo + out + hi, out=out, out_start=lo, normal_start=lo - half_rf,
                        sub_starts=tuple(starts), sub_lengths=tuple(lengths))


def segment_geometry(out_size, subsample_factors: Sequence = ((3, 3, 3),),
                     n_layers: int = 8) -> tuple[AxisGeometry, AxisGeometry, AxisGeometry]:
    """Geometry of a segment that predicts ``out_size`` voxels per axis.

    Parameters
    ----------
    out_size
        Output voxels per axis (one int or three).
    subsample_factors
        One factor per subsampled pathway (int or three per axis); empty for the normal pathway only.
    n_layers
        Number of 3x3x3 layers per pathway (8: receptive field 17).

    Returns
    -------
    One :class:`AxisGeometry` per axis: ``segment`` is the input length to give the network,
    ``out_start`` where its output sits in it. The normal pathway alone needs ``out + 16``; a
    subsampled pathway of factor ``f`` sees ``ceil(out / f) + 16`` voxels ``f`` apart.
    """
    outs = _triple(out_size)
    if min(outs) < 1:
        raise ValueError(f"output size must be positive, got {out_size}")
    facs = [_triple(f) for f in subsample_factors]
    return tuple(_axis_geometry(outs[a], [f[a] for f in facs], n_layers) for a in range(3))


def output_size(segment_size, subsample_factors: Sequence = ((3, 3, 3),), n_layers: int = 8) -> tuple[int, int, int]:
    """Largest output per axis whose segment fits in ``segment_size`` (``segment - 16`` when the
    normal pathway alone is used; less with subsampled pathways, which need more context)."""
    segs = _triple(segment_size)
    facs = [_triple(f) for f in subsample_factors]
    out = []
    for a, s in enumerate(segs):
        n = s - 2 * n_layers
        while n > 0 and _axis_geometry(n, [f[a] for f in facs], n_layers).segment > s:
            n -= 1
        if n < 1:
            raise ValueError(f"segment size {s} is smaller than the receptive field along axis {a}")
        out.append(n)
    return tuple(out)


class _PreActConv(nn.Module):
    """BN -> PReLU -> dropout -> conv, the reference ``ConvLayer`` order; plain conv when ``first``."""

    def __init__(self, cin: int, cout: int, kernel: int, dropout: float, first: bool) -> None:
        super().__init__()
        self.bn = None if first else nn.BatchNorm3d(cin)
        self.act = None if first else nn.PReLU(cin, init=0.01)
        self.drop = nn.Dropout3d(dropout) if dropout > 0 else None
        self.conv = nn.Conv3d(cin, cout, kernel, bias=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn is not None:
            x = self.act(self.bn(x))
        if self.drop is not None:
            x = self.drop(x)
        return self.conv(x)


def _centre_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    sl = [slice(None), slice(None)]
    for d, s in zip(x.shape[2:], size):
        o = (d - s) // 2
        sl.append(slice(o, o + s))
    return x[tuple(sl)]


def residual_add(deeper: torch.Tensor, earlier: torch.Tensor) -> torch.Tensor:
    """``deeper + centre_crop(earlier)``, zero-padding (or truncating) the earlier channels."""
    e = _centre_crop(earlier, deeper.shape[2:])
    cd, ce = deeper.shape[1], e.shape[1]
    if cd > ce:
        e = F.pad(e, (0, 0, 0, 0, 0, 0, 0, cd - ce))
    elif cd < ce:
        e = e[:, :cd]
    return deeper + e


class Pathway(nn.Module):
    """A stack of valid 3x3x3 pre-activation convolutions with residual connections."""

    def __init__(self, in_channels: int, fms: Sequence[int], residual_layers: Sequence[int] = RESIDUAL_LAYERS,
                 dropout: Sequence[float] = (), kernel: int = 3) -> None:
        super().__init__()
        fms = [int(f) for f in fms]
        if not fms or min(fms) < 1:
            raise ValueError(f"feature maps per layer must be positive integers, got {fms}")
        res = sorted(int(r) for r in residual_layers)
        if any(r < 2 or r > len(fms) for r in res):
            raise ValueError(f"residual layers are numbered 2..{len(fms)} (from 1; the first has no "
                             f"previous layer), got {list(residual_layers)}")
        drops = list(dropout) or [0.0] * len(fms)
        if len(drops) != len(fms):
            raise ValueError(f"dropout needs one rate per layer ({len(fms)}), got {len(drops)}")
        self.residual_layers = tuple(res)
        layers, cin = [], in_channels
        for i, cout in enumerate(fms):
            layers.append(_PreActConv(cin, cout, kernel, float(drops[i]), first=(i == 0)))
            cin = cout
        self.layers = nn.ModuleList(layers)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = []
        for i, layer in enumerate(self.layers):
            inputs.append(x)
            y = layer(x)
            if (i + 1) in self.residual_layers:
                y = residual_add(y, inputs[i - 1])   # the input of the previous layer
            x = y
        return x


class DeepMedic(nn.Module):
    """Multi-scale 3D CNN of Kamnitsas et al. (MedIA 2017); see the module docstring.

    Parameters
    ----------
    in_channels
        Number of MR modalities (e.g. 2 for FLAIR + T1c).
    n_classes
        Output classes including background.
    fms_normal
        Feature maps per layer of the normal pathway (paper: 30, 30, 40, 40, 40, 40, 50, 50).
    fms_subsampled
        Feature maps of each subsampled pathway (default: mirror the normal pathway).
    subsample_factors
        One factor per subsampled pathway (int or per axis), e.g. ``(3,)`` or ``(3, 5)``;
        ``()`` for the normal pathway only.
    residual_layers
        Layers (numbered from 1) whose output gets the previous layer's input added.
    fc_fms
        Hidden 1x1x1 FC layers after the concatenation (paper/config: 150, 150).
    dropout_fc
        Dropout on the input of each FC layer and of the classification layer
        (``len(fc_fms) + 1`` rates; config: 0.0, 0.5, 0.5).
    dropout_conv
        Dropout rates on the conv layers' inputs (config: none).
    """

    def __init__(self, in_channels: int = 2, n_classes: int = 4, fms_normal: Sequence[int] = NORMAL_FMS,
                 fms_subsampled: Sequence[int] | None = None, subsample_factors: Sequence = (3,),
                 residual_layers: Sequence[int] = RESIDUAL_LAYERS, fc_fms: Sequence[int] = (150, 150),
                 dropout_fc: Sequence[float] | None = None, dropout_conv: Sequence[float] = ()) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2 (background included), got {n_classes}")
        fms_normal = [int(f) for f in fms_normal]
        fms_sub = [int(f) for f in (fms_subsampled or fms_normal)]
        if len(fms_sub) != len(fms_normal):
            raise ValueError("the subsampled pathway needs as many layers as the normal one "
                             "(the receptive fields must match)")
        self.factors = tuple(_triple(f) for f in subsample_factors)
        if any(min(f) < 1 for f in self.factors):
            raise ValueError(f"subsample factors must be >= 1, got {subsample_factors}")
        fc_fms = [int(f) for f in fc_fms]
        drops = list(dropout_fc) if dropout_fc is not None else [0.0] + [0.5] * len(fc_fms)
        if len(drops) != len(fc_fms) + 1:
            raise ValueError(f"dropout_fc needs len(fc_fms) + 1 = {len(fc_fms) + 1} rates, got {len(drops)}")
        self.n_layers = len(fms_normal)
        self.in_channels = int(in_channels)
        self.n_classes = int(n_classes)
        self.normal = Pathway(in_channels, fms_normal, residual_layers, dropout_conv)
        self.subsampled = nn.ModuleList(
            Pathway(in_channels, fms_sub, residual_layers, dropout_conv) for _ in self.factors)
        cin = self.normal.out_channels + sum(p.out_channels for p in self.subsampled)
        fcs = []
        for i, cout in enumerate(fc_fms):
            # the concatenated conv outputs are linear, so the first FC layer applies BN + PReLU too
            fcs.append(_PreActConv(cin, cout, 1, float(drops[i]), first=False))
            cin = cout
        self.fc = nn.ModuleList(fcs)
        self.classifier = _PreActConv(cin, n_classes, 1, float(drops[-1]), first=False)

    @property
    def receptive_field(self) -> int:
        return 2 * self.n_layers + 1

    def geometry(self, out_size) -> tuple[AxisGeometry, AxisGeometry, AxisGeometry]:
        """:func:`segment_geometry` for this network's pathways."""
        return segment_geometry(out_size, self.factors, self.n_layers)

    def segment_size(self, out_size) -> tuple[int, int, int]:
        """Input segment per axis that predicts ``out_size`` voxels."""
        return tuple(g.segment for g in self.geometry(out_size))

    def output_size(self, segment_size) -> tuple[int, int, int]:
        """Output voxels per axis of an input segment (``segment - 16`` for the normal pathway alone)."""
        return output_size(segment_size, self.factors, self.n_layers)

    def pathway_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, ...]]:
        """The normal pathway's input, each subsampled pathway's input, and the output size."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected (B, {self.in_channels}, Z, Y, X), got {tuple(x.shape)}")
        seg = tuple(int(s) for s in x.shape[2:])
        out = self.output_size(seg)
        geo = self.geometry(out)
        if tuple(g.segment for g in geo) != seg:
            raise ValueError(f"segment {seg} does not match this network's geometry: a segment that "
                             f"predicts {out} voxels is {tuple(g.segment for g in geo)}")
        h = self.n_layers
        xn = x[:, :, geo[0].normal_start:geo[0].normal_start + out[0] + 2 * h,
               geo[1].normal_start:geo[1].normal_start + out[1] + 2 * h,
               geo[2].normal_start:geo[2].normal_start + out[2] + 2 * h]
        subs = []
        for k, f in enumerate(self.factors):
            sl = [slice(None), slice(None)]
            for a in range(3):
                s0, n = geo[a].sub_starts[k], geo[a].sub_lengths[k]
                sl.append(slice(s0, s0 + (n - 1) * f[a] + 1, f[a]))
            subs.append(x[tuple(sl)])
        return xn, subs, out

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Logits ``(B, n_classes, *out)`` for a segment ``(B, C, *segment)``."""
        xn, subs, out = self.pathway_inputs(x)
        feats = [self.normal(xn)]
        for pathway, xs, f in zip(self.subsampled, subs, self.factors):
            y = pathway(xs)
            for a in range(3):
                y = y.repeat_interleave(f[a], dim=2 + a)
            feats.append(y[:, :, :out[0], :out[1], :out[2]])
        h = torch.cat(feats, dim=1)
        hidden = []
        for layer in self.fc:
            h = layer(h)
            hidden.append(h)
        logits = self.classifier(h)
        if return_features:
            return logits, {"pathways": feats, "fc": hidden}
        return logits


__all__ = ["PAPER", "AxisGeometry", "DeepMedic", "Pathway", "output_size", "residual_add", "segment_geometry"]
