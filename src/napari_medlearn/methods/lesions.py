"""Brain-lesion (glioma) segmentation of multi-modal MR with DeepMedic (Kamnitsas et al., MedIA 2017).

Pipeline, the same in training (``training/deepmedic.py``) and here:

1. **Check** the channels ``(C, z, y, x)``: as many as the model card's ``input.channels``, in that
   order (e.g. FLAIR, T1c), real, finite, 3D, co-registered (one array, one spacing).
2. **Brain mask**: the one given, else derived from the channels (:func:`derive_brain_mask`): a
   voxel is brain when *any* channel differs from that channel's background value, the value
   that fills most of the volume's outer faces (skull-stripped scans have a constant
   background: 0, or ``-mean/std`` after a normalisation as in the BraTS files). When no channel
   has a constant background, an Otsu threshold of the channels' mean is used instead (largest
   component, holes filled). A brain region larger than any brain
   (:data:`BRAIN_VOLUME_LIMIT_ML`) gives a warning in the result: the scans look not skull-stripped.
3. **Resample** to the card's ``input.spacing_mm`` when the input's spacing differs (trilinear for
   images, nearest for the mask) and the probabilities back to the input grid afterwards.
4. **Normalise** each channel to zero mean and unit variance inside the brain mask
   (:func:`normalise_channels`); outside the brain the input is 0.
5. **Dense segment-wise inference**: the volume is tiled by output blocks; each block's input
   segment is the block plus 8 voxels per side for the normal pathway (``segment - 16 = output``)
   and a wider context for the subsampled pathway(s) (:func:`napari_medlearn.nets.deepmedic.segment_geometry`),
   zero-padded at the volume's edges. One segment at a time, so memory is bounded by one
   segment's activations plus the ``(K, z, y, x)`` probability map; blocks without brain are
   skipped (background). Progress is reported per segment.
6. **Labels**: the argmax class mapped to the BraTS values (0 background, 1 necrotic/non-enhancing
   core, 2 oedema, 4 enhancing), zero outside the brain mask.
6a. **Class-prior correction** (when the card has ``prior_correction``): a network trained on
   segments that over-sample tumour learns the posteriors of that sampling, so it over-predicts
   tumour on whole scans. Each class's probability is multiplied by the ratio of its frequency in
   the training brains to its frequency in the sampled training segments and renormalised
   (Saerens et al., Neural Computation 2002; :func:`correct_class_priors`). Both frequencies come
   from the training data alone. Labels follow from the corrected posteriors. (Re-estimating the
   new prior per scan by Saerens' EM instead was tried on the four held-out scans of the two EMMA
   folds, ensemble with expected-Dice labels: it helped the scan with the largest tumour and hurt
   the one with the smallest, mean whole-tumour Dice 0.806 against 0.809 with the fixed prior; not
   used.)
6b. **Expected-Dice decision** (when the card's ``postprocess.decision`` is ``"expected_dice"``,
   or the ``decision`` argument): instead of the argmax, the whole tumour is the set of voxels
   whose tumour probability ``1 - p(background)`` is at least the threshold that maximises the
   Dice *expected* under the probabilities themselves, found per scan from its own
   probabilities (no label, no tuned parameter; :func:`expected_dice_threshold`; Nowozin, CVPR
   2014; Lipton et al., ECML 2014). Inside it each voxel takes its most probable tumour class.
   Argmax labels are the Bayes decision for voxel accuracy; for Dice, whose optimum with
   calibrated probabilities lies at or below 0.5, they tend to under-segment.
7. **Component clean-up** (when the card's ``postprocess.min_component_fraction`` is set, or the
   ``min_component_fraction`` argument): whole-tumour connected components smaller than that
   fraction of the largest one are set to background (:func:`remove_small_lesions`). The
   probabilities are left as the network gave them.
8. **Hole filling** (when the card's ``postprocess.fill_holes`` is true, or the ``fill_holes``
   argument): a tumour is one solid region. Voxels enclosed by the tumour core (necrotic core or
   enhancing, in 3D or in an axial slice) are necrotic core, as the BraTS labelling protocol
   defines the core inside an enhancing rim; background enclosed by the whole tumour is oedema
   (:func:`fill_lesion_holes`). A liquefied necrosis is dark on FLAIR like CSF and a network
   may leave it out; its rim tells where it is.

``segment_lesions_steps`` yields ``(done, total, message)`` and returns a :class:`LesionResult`;
``segment_lesions`` drains it. ``lesion_volumes`` recomputes volumes from (hand-edited) labels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Sequence

import numpy as np

from ..imaging import measures as M
from ..imaging.orientation import Turn, axis_codes, turn_to
from ..inference import check_backend, engine
from ._threads import progress_from_thread
from .cardiac import drain

TASK = "brain-lesion-segmentation"
Progress = Callable[[int, int, str], Any]

NECROTIC_CORE, OEDEMA, ENHANCING = 1, 2, 4
#: BraTS label values, in the order of the probability channels (index 0 background)
LABEL_VALUES = (0, NECROTIC_CORE, OEDEMA, ENHANCING)
LABEL_NAMES = {0: "background", NECROTIC_CORE: "necrotic core", OEDEMA: "oedema", ENHANCING: "enhancing"}
VOLUME_KEYS = ("necrotic_core_mL", "oedema_mL", "enhancing_mL", "tumour_core_mL", "whole_tumour_mL")
DEFAULT_CHANNELS = ("FLAIR", "T1c")
#: output block per axis at inference (input segment = block + the pathways' context). Any block gives
#: the same posteriors; on CPU 39 (a 55^3 normal-pathway input) ran about twice as fast as 57 or 81 on
#: a BraTS volume: the activations stay cache-sized and more blocks outside the brain are skipped
#: (``python benchmarks/deepmedic.py`` prints the peers)
DEFAULT_OUTPUT_BLOCK = 39


@dataclass(frozen=True, eq=False)
class LesionResult:
    """What :func:`segment_lesions` found.

    Attributes
    ----------
    labels
        uint8 ``(z, y, x)``, the input's grid: 0 background, 1 necrotic/non-enhancing core,
        2 oedema, 4 enhancing tumour (BraTS values).
    probabilities
        float32 ``(K, z, y, x)``: class posteriors in the order of ``label_values`` (index 0 background).
    volumes_ml
        :func:`lesion_volumes` of ``labels`` (keys carry the unit: ``oedema_mL`` ...).
    model
        Zoo name (or path) of the model; for an ensemble its name (e.g. ``"emma"``).
    channel_names
        The modalities in the order the model took them.
    brain_mask
        bool ``(z, y, x)``: the mask used (given or derived).
    spacing
        ``(dz, dy, dx)`` in mm of the input.
    label_values
        Label value of each probability channel.
    model_sha256
        Weights hash from the card.
    backend
        What ran the networks (``"torch"`` or the CPU runtime, :mod:`napari_medlearn.inference`;
        members that ran differently are joined by ``+``).
    uncertainty, members
        Optional, for ensembles (issue 12): ``(z, y, x)`` uncertainty map and member names.
    extras
        Further optional outputs of other model kinds (e.g. mutual information), by name, and the
        label ``postprocess`` applied (component clean-up fraction, hole filling), and
        ``warnings``: what about the input deserves attention (:func:`input_warnings`, e.g. scans
        that look not skull-stripped).
    """

    labels: np.ndarray
    probabilities: np.ndarray
    volumes_ml: dict
    model: str = ""
    channel_names: tuple = DEFAULT_CHANNELS
    brain_mask: np.ndarray | None = None
    spacing: tuple = ()
    label_values: tuple = LABEL_VALUES
    model_sha256: str = ""
    seconds: float = 0.0
    backend: str = ""
    uncertainty: np.ndarray | None = None
    members: tuple = ()
    extras: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# input checks and preprocessing (shared with training)
def _check_spacing(spacing) -> tuple[float, float, float]:
    try:
        sp = tuple(float(s) for s in np.ravel(spacing)) if spacing is not None else ()
    except (TypeError, ValueError):
        sp = ()
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be three positive numbers (dz, dy, dx) in mm, got {spacing}")
    return sp


def validate_channels(channels, spacing, channel_names: Sequence[str] = DEFAULT_CHANNELS,
                      brain_mask=None) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray | None]:
    """Check ``(C, z, y, x)`` channels, spacing and an optional mask; return float32, spacing, bool mask.

    ``channels`` may also be a list of ``C`` arrays ``(z, y, x)`` (one per modality), which must
    all have the same shape.
    """
    names = list(channel_names)
    if isinstance(channels, (list, tuple)):
        arrs = [np.asarray(c) for c in channels]
        shapes = {a.shape for a in arrs}
        if len(shapes) > 1:
            raise ValueError("the modalities have different shapes "
                             f"({', '.join(f'{n}: {a.shape}' for n, a in zip(names + ['?'] * len(arrs), arrs))}); "
                             "resample them onto one grid first")
        arr = np.stack(arrs) if arrs else np.zeros((0,))
    else:
        arr = np.asarray(channels)
    if arr.size == 0:
        raise ValueError("the image is empty")
    if arr.ndim == 3 and len(names) == 1:
        arr = arr[None]
    if arr.ndim == 3 and arr.shape[0] == len(names):
        raise ValueError(f"got {arr.shape}: {len(names)} 2D images? lesion segmentation needs 3D volumes "
                         f"(C, z, y, x) of the modalities {', '.join(names)}")
    if arr.ndim == 3:
        raise ValueError(f"got one 3D volume {arr.shape}, but the model needs {len(names)} modalities "
                         f"({', '.join(names)}) stacked as (C, z, y, x)")
    if arr.ndim == 2 or (arr.ndim == 4 and min(arr.shape[1:]) == 1):
        raise ValueError(f"a 2D image {arr.shape} is not enough: lesion segmentation needs 3D volumes "
                         "(C, z, y, x)")
    if arr.ndim != 4:
        raise ValueError(f"expected channels (C, z, y, x), got a {arr.ndim}-D array {arr.shape}")
    if arr.shape[0] != len(names):
        raise ValueError(f"the model needs {len(names)} modalities ({', '.join(names)}), got {arr.shape[0]}"
                         + (" (a modality is missing)" if arr.shape[0] < len(names) else ""))
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise ValueError(f"the image must be real-valued numbers, got {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    bad = [n for n, c in zip(names, arr) if not np.all(np.isfinite(c))]
    if bad:
        raise ValueError(f"the {' and '.join(bad)} image contains NaN or Inf values")
    if min(arr.shape[1:]) < 4:
        raise ValueError(f"the volume {arr.shape[1:]} is too small (need at least 4 voxels per axis)")
    sp = _check_spacing(spacing)
    mask = None
    if brain_mask is not None:
        mask = np.asarray(brain_mask)
        if mask.shape != arr.shape[1:]:
            raise ValueError(f"the brain mask {mask.shape} does not match the images {arr.shape[1:]}")
        if not (np.issubdtype(mask.dtype, np.number) or mask.dtype == bool):
            raise ValueError(f"the brain mask must be numbers or booleans, got {mask.dtype}")
        if np.issubdtype(mask.dtype, np.floating) and not np.all(np.isfinite(mask)):
            raise ValueError("the brain mask contains NaN or Inf values")
        mask = mask > 0
        if not mask.any():
            raise ValueError("the brain mask is empty")
    flat = [n for n, c in zip(names, arr) if float(c.max()) == float(c.min())]
    if flat:   # an empty export or a channel swapped for a blank: nothing a model could read
        raise ValueError(f"the {' and '.join(flat)} image is constant ({float(arr[names.index(flat[0])].min()):g} "
                         "everywhere): no scan to segment")
    return arr, sp, mask


def _background_value(channel: np.ndarray) -> float | None:
    """The constant that fills most of a volume's outer faces, or None if there is none."""
    faces = np.concatenate([channel[0].ravel(), channel[-1].ravel(), channel[:, 0].ravel(),
                            channel[:, -1].ravel(), channel[:, :, 0].ravel(), channel[:, :, -1].ravel()])
    vals, counts = np.unique(faces, return_counts=True)
    i = int(np.argmax(counts))
    return float(vals[i]) if counts[i] >= 0.5 * faces.size else None


def derive_brain_mask(channels: np.ndarray) -> np.ndarray:
    """Brain mask from skull-stripped channels ``(C, z, y, x)``; see the module docstring (step 2)."""
    from scipy import ndimage as ndi

    from ..imaging.labels import largest_component

    arr = np.asarray(channels, dtype=np.float32)
    mask = np.zeros(arr.shape[1:], bool)
    found = False
    for c in arr:
        bg = _background_value(c)
        if bg is not None:
            mask |= c != bg
            found = True
    if not found:
        from skimage.filters import threshold_otsu

        mean = arr.mean(axis=0)
        mask = largest_component(mean > threshold_otsu(mean))
        mask = ndi.binary_fill_holes(mask)
    if not mask.any():
        raise ValueError("no brain found: every channel is constant (give a brain mask)")
    return mask


# No brain is this large: adult brain masks run about 1000-1900 mL (the four BraTS subjects'
# 1084-1690 mL, nilearn's generous MNI152 mask 1883 mL), while a whole head with scalp, skull and
# face is some 3000-4500 mL. A larger "brain" means the scans were not skull-stripped.
BRAIN_VOLUME_LIMIT_ML = 2500.0


def input_warnings(mask: np.ndarray, spacing: Sequence[float]) -> list[str]:
    """What about the scans deserves the user's attention before trusting the labels (not errors).

    The models take skull-stripped FLAIR/T1c: given a whole head, the brain region (derived or
    given) takes in scalp, skull and face, the intensity normalisation shifts, and bright fat is
    easily called tumour.
    """
    vol = float(np.count_nonzero(mask)) * float(np.prod(spacing)) / 1000.0
    if vol > BRAIN_VOLUME_LIMIT_ML:
        return [f"the brain region is {vol:.0f} mL, larger than any brain (about 1000-1900 mL): the scans "
                "look not skull-stripped, and the models take skull-stripped FLAIR and T1c; skull-strip "
                "them or give a brain mask before trusting the labels"]
    return []


def scan_warnings(channels, spacing, brain_mask=None) -> list[str]:
    """:func:`input_warnings` of a scan ``(C, z, y, x)`` before any inference (the mask derived
    when not given), e.g. to warn before adapting a model to scans that look not skull-stripped.
    A scan without any brain gives no warning here: the run itself refuses it, once."""
    if brain_mask is not None:
        return input_warnings(np.asarray(brain_mask, bool), spacing)
    try:
        mask = derive_brain_mask(np.asarray(channels))
    except ValueError:
        return []
    return input_warnings(mask, spacing)


def normalise_channels(channels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per channel inside ``mask``; 0 outside. Returns float32 (a copy)."""
    out = np.zeros(channels.shape, np.float32)
    for i, c in enumerate(channels):
        v = c[mask]
        sd = float(v.std())
        out[i][mask] = (v - float(v.mean())) / (sd if sd > 0 else 1.0)
    return out


def _resample(arr: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    """Resample ``(C, z, y, x)`` to ``shape`` keeping the field of view (voxel edges align)."""
    import torch
    import torch.nn.functional as F

    if tuple(arr.shape[1:]) == tuple(shape):
        return arr
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]
    mode = "trilinear" if order else "nearest-exact"
    kw = {"align_corners": False} if order else {}
    return F.interpolate(t, size=tuple(shape), mode=mode, **kw)[0].numpy()


def lesion_volumes(labels: np.ndarray, spacing) -> dict[str, float]:
    """Lesion volumes in mL from BraTS labels ``(z, y, x)``.

    Keys: ``necrotic_core_mL`` (label 1), ``oedema_mL`` (2), ``enhancing_mL`` (4),
    ``tumour_core_mL`` (1, 3 and 4; 3 = non-enhancing core of older BraTS labels),
    ``whole_tumour_mL`` (everything > 0).
    """
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"labels must be (z, y, x), got shape {lab.shape}")
    if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise ValueError(f"labels must be integers, got {lab.dtype} with non-integer values")
    unknown = sorted(set(np.unique(lab).tolist()) - {0, 1, 2, 3, 4})
    if unknown:
        raise ValueError(f"labels contain unknown values {unknown[:5]}; BraTS labels are 0 background, "
                         "1 necrotic core, 2 oedema, 4 enhancing (3 non-enhancing core)")
    vox = M.voxel_volume_ml(_check_spacing(spacing))
    counts = np.bincount(lab.astype(np.int64).ravel(), minlength=5)
    return {
        "necrotic_core_mL": float(counts[1] * vox),
        "oedema_mL": float(counts[2] * vox),
        "enhancing_mL": float(counts[4] * vox),
        "tumour_core_mL": float((counts[1] + counts[3] + counts[4]) * vox),
        "whole_tumour_mL": float(counts[1:].sum() * vox),
    }


# ---------------------------------------------------------------------------------------------
# dense inference
def dense_probabilities(net, image: np.ndarray, mask: np.ndarray | None, output_block: int = DEFAULT_OUTPUT_BLOCK,
                        cancelled: Callable[[], bool] | None = None, skip_empty: bool = True,
                        backend: str = "auto", used: list | None = None,
                        ) -> Generator[tuple[int, int, str], None, np.ndarray]:
    """Class posteriors ``(K, z, y, x)`` float32 of a normalised ``(C, z, y, x)`` image by tiling.

    A generator yielding ``(segments_done, segments_total, message)``. Blocks whose output region
    has no voxel of ``mask`` are not run (background 1) when ``skip_empty``.
    """
    import torch

    C, Z, Y, X = image.shape
    dims = (Z, Y, X)
    # A subsampled pathway predicts one value per f^3 block, repeated: what a voxel gets depends on
    # its place on that lattice. Blocks are multiples of every factor and start at multiples of
    # the block, so the lattice is fixed to the volume and any block size gives the same posteriors;
    # the last block overhangs the volume (zero padding) instead of shifting back.
    step = [int(np.lcm.reduce([f[a] for f in net.factors])) if net.factors else 1 for a in range(3)]
    want = [min(output_block, d) for d in dims]
    blocks = tuple(max(st, -(-w // st) * st) for w, st in zip(want, step))
    geo = net.geometry(blocks)
    if tuple(g.out for g in geo) != net.output_size(tuple(g.segment for g in geo)):
        raise RuntimeError(f"output block {blocks} is not what its segment predicts")
    starts = [list(range(0, d, b)) for d, b in zip(dims, blocks)]
    lo = [g.out_start for g in geo]
    hi = [g.segment - g.out_start - g.out + (st[-1] + b - d) for g, st, b, d in zip(geo, starts, blocks, dims)]
    padded = np.pad(image, [(0, 0)] + [(a, b) for a, b in zip(lo, hi)])
    K = int(net.n_classes)
    probs = np.zeros((K, Z, Y, X), np.float32)
    probs[0] = 1.0
    todo = []
    for z0 in starts[0]:
        for y0 in starts[1]:
            for x0 in starts[2]:
                region = (slice(z0, z0 + blocks[0]), slice(y0, y0 + blocks[1]), slice(x0, x0 + blocks[2]))
                if skip_empty and mask is not None and not mask[region].any():
                    continue
                todo.append((z0, y0, x0))
    dev = next(net.parameters()).device
    total = len(todo)
    run = engine(net, [torch.zeros((1, C) + tuple(g.segment for g in geo), device=dev)], backend=backend)
    if used is not None:
        used.append(run.backend)
    yield 0, total, f"{total} segments"
    with torch.inference_mode():
        for i, (z0, y0, x0) in enumerate(todo):
            if cancelled is not None and cancelled():
                raise InterruptedError("cancelled")
            seg = padded[:, z0:z0 + geo[0].segment, y0:y0 + geo[1].segment, x0:x0 + geo[2].segment]
            x = torch.from_numpy(np.ascontiguousarray(seg))[None].to(dev)
            p = torch.softmax(run(x), dim=1)[0].float().cpu().numpy()
            n = [min(b, d - s0) for b, d, s0 in zip(blocks, dims, (z0, y0, x0))]
            probs[:, z0:z0 + n[0], y0:y0 + n[1], x0:x0 + n[2]] = p[:, :n[0], :n[1], :n[2]]
            yield i + 1, total, f"segment {i + 1}/{total}"
    return probs


def sliding_window_probabilities(net, image: np.ndarray, mask: np.ndarray | None, roi: int | Sequence[int] = 64,
                                 overlap: float = 0.25, cancelled: Callable[[], bool] | None = None,
                                 backend: str = "auto", used: list | None = None,
                                 ) -> Generator[tuple[int, int, str], None, np.ndarray]:
    """Class posteriors ``(K, z, y, x)`` of a normalised image by a same-size network (U-Net, FCN).

    MONAI's ``sliding_window_inference`` (Gaussian-weighted overlapping windows of ``roi``
    voxels, softmax per window) on the brain's bounding box plus half a window of context;
    outside it the posterior is background. A generator yielding ``(windows_done, total, message)``
    (the windows run in a worker thread that reports each one, :func:`progress_from_thread`).
    """
    import torch
    from monai.data.utils import dense_patch_slices
    from monai.inferers import sliding_window_inference
    from monai.inferers.utils import _get_scan_interval

    C, Z, Y, X = image.shape
    div = int(getattr(net, "divisor", 1))
    roi = [int(r) for r in (roi if isinstance(roi, (list, tuple)) else (roi,) * 3)]
    roi = [max(div, -(-min(r, max(d, div)) // div) * div) for r, d in zip(roi, (Z, Y, X))]
    if mask is not None and mask.any():
        idx = np.argwhere(mask)
        lo = [max(0, int(v) - r // 2) for v, r in zip(idx.min(0), roi)]
        hi = [min(d, int(v) + 1 + r // 2) for v, r, d in zip(idx.max(0), roi, (Z, Y, X))]
    else:
        lo, hi = [0, 0, 0], [Z, Y, X]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = image[(slice(None),) + box]
    size = [max(n, r) for n, r in zip(sub.shape[1:], roi)]
    total = len(dense_patch_slices(size, roi, _get_scan_interval(size, roi, 3, (overlap,) * 3)))
    dev = next(net.parameters()).device
    run = engine(net, [torch.zeros((1, C) + tuple(roi), device=dev)], backend=backend)
    if used is not None:
        used.append(run.backend)

    def work(report):
        count = [0]

        def predictor(x):
            if cancelled is not None and cancelled():
                raise InterruptedError("cancelled")
            p = torch.softmax(run(x), dim=1)
            count[0] += 1
            report(min(count[0], total), total, f"window {count[0]}/{total}")
            return p

        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(sub))[None].to(dev)
            return sliding_window_inference(t, roi, 1, predictor, overlap=overlap, mode="gaussian")

    yield 0, total, f"{total} windows"
    window_probs = yield from progress_from_thread(work)
    K = int(net.n_classes)
    probs = np.zeros((K, Z, Y, X), np.float32)
    probs[0] = 1.0
    probs[(slice(None),) + box] = window_probs[0].float().cpu().numpy()
    return probs


def member_probabilities(net, image: np.ndarray, mask: np.ndarray | None, output_block: int = DEFAULT_OUTPUT_BLOCK,
                         cancelled: Callable[[], bool] | None = None, backend: str = "auto",
                         used: list | None = None):
    """Posteriors of one network of any lesion architecture: DeepMedic by its dense segment
    tiling (:func:`dense_probabilities`), same-size networks by sliding windows of the card's
    ``inference.roi`` (:func:`sliding_window_probabilities`). A progress generator. The network
    runs on ``backend`` (:func:`napari_medlearn.inference.engine`); what ran is appended to ``used``."""
    if hasattr(net, "geometry"):
        return (yield from dense_probabilities(net, image, mask, output_block, cancelled, backend=backend, used=used))
    inf = (getattr(net, "card", {}) or {}).get("inference", {})
    return (yield from sliding_window_probabilities(net, image, mask, inf.get("roi", 64),
                                                    float(inf.get("overlap", 0.25)), cancelled,
                                                    backend=backend, used=used))


def _load(model, device: str):
    from .. import zoo

    if hasattr(model, "forward"):
        return model
    if model is None:
        model = zoo.default_model(TASK)
    return zoo.load(model, device=device, task=TASK)


def ensemble_members(model) -> tuple[list, dict[str, Any]] | None:
    """``(members, ensemble card)`` when ``model`` names an ensemble ("emma", another ensemble
    card, or a list of models), else None."""
    from .. import zoo

    if isinstance(model, (list, tuple)):
        if len(model) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(model)}")
        return list(model), {"name": "ensemble", "members": [str(getattr(m, "zoo_name", m)) for m in model]}
    if isinstance(model, (str, Path)) and not hasattr(model, "forward"):
        try:
            c = zoo.card(str(model))
        except zoo.ModelError:
            return None
        if c.get("kind") == "ensemble":
            return list(c["members"]), c
    return None


def ensemble_card_of(members: Sequence[str]) -> str | None:
    """The name of the zoo's ensemble card whose members are exactly ``members`` (in any order), or
    None: ticking EMMA's members then runs ``emma`` with its card's post-processing."""
    from .. import zoo

    for name in zoo.available(TASK):
        card = zoo.card(name)
        if card.get("kind") == "ensemble" and sorted(card.get("members", [])) == sorted(members):
            return name
    return None


def _member_steps(net, arr: np.ndarray, sp, mask: np.ndarray, output_block: int,
                  cancelled: Callable[[], bool] | None, label: str = "", backend: str = "auto",
                  used: list | None = None):
    """One network's posteriors on the input grid (resampling, normalisation, inference)."""
    card = getattr(net, "card", {}) or {}
    inp = card.get("input", {})
    shape = arr.shape[1:]
    target = inp.get("spacing_mm")
    work, wmask = arr, mask
    if target is not None:
        tsp = _check_spacing(target)
        if not np.allclose(tsp, sp, rtol=1e-3, atol=1e-4):
            new_shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, sp, tsp))
            work = _resample(arr, new_shape, order=1)
            wmask = _resample(mask[None].astype(np.float32), new_shape, order=0)[0] > 0.5
    if not wmask.any():
        raise ValueError("the brain mask is empty after resampling to the model's spacing")
    image = normalise_channels(work, wmask)
    steps = member_probabilities(net, image, wmask, output_block, cancelled, backend=backend, used=used)
    try:
        while True:
            done, total, msg = next(steps)
            yield done, total, f"{label}{msg}"
    except StopIteration as stop:
        probs = stop.value
    weights = prior_weights(card, probs.shape[0])
    if weights is not None:
        probs = correct_class_priors(probs, weights)
    if probs.shape[1:] != shape:
        probs = _resample(probs, shape, order=1)
        probs /= np.maximum(probs.sum(axis=0, keepdims=True), 1e-8)
    probs[:, ~mask] = 0.0
    probs[0, ~mask] = 1.0
    return probs


def prior_weights(card: dict, n_classes: int) -> np.ndarray | None:
    """Per-class factors of a card's ``prior_correction`` (``target_prior / training_prior``), or
    None when the card has none. Raises ValueError naming the model when the entry is malformed."""
    pc = card.get("prior_correction")
    if not pc:
        return None
    try:
        train = np.asarray(pc["training_prior"], np.float64)
        target = np.asarray(pc["target_prior"], np.float64)
    except (KeyError, TypeError, ValueError):
        train = target = np.zeros(0)
    if (train.shape != (n_classes,) or target.shape != (n_classes,) or not np.all(np.isfinite(train))
            or not np.all(np.isfinite(target)) or np.any(train <= 0) or np.any(target <= 0)):
        raise ValueError(f"model {card.get('name', '')!r}: its card's prior_correction needs training_prior and "
                         f"target_prior, {n_classes} positive class frequencies each")
    return target / train


def correct_class_priors(probs: np.ndarray, weights) -> np.ndarray:
    """Posteriors ``(K, ...)`` learnt under one class prior moved to another: ``p'(c|x)`` proportional
    to ``p(c|x) * weights[c]`` (``weights`` = new prior / training prior), renormalised over ``K``.
    In place when ``probs`` is float32; returns the corrected array."""
    w = np.asarray(weights, np.float32).reshape((-1,) + (1,) * (np.ndim(probs) - 1))
    if w.shape[0] != np.shape(probs)[0]:
        raise ValueError(f"{w.shape[0]} class weights for {np.shape(probs)[0]} probability channels")
    out = np.asarray(probs, np.float32)
    out *= w
    out /= np.maximum(out.sum(axis=0, keepdims=True), np.float32(1e-12))
    return out


def ensemble_uncertainty(member_probs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Uncertainty maps of an ensemble from its members' posteriors ``(K, z, y, x)`` each.

    ``entropy``: entropy of the mean posterior, ``mutual_information``: that minus the members'
    mean entropy (their disagreement), both divided by ``log K`` so they lie in [0, 1];
    ``variance``: the members' variance of the posterior, summed over classes (0 when they agree).
    """
    P = np.stack([np.asarray(p, np.float32) for p in member_probs])
    K = P.shape[1]
    mean = P.mean(axis=0)

    def entropy(p):
        return -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=-4)

    h = entropy(mean)
    mi = np.maximum(h - entropy(P).mean(axis=0), 0.0)
    norm = np.float32(np.log(K))
    return {"entropy": (h / norm).astype(np.float32), "mutual_information": (mi / norm).astype(np.float32),
            "variance": P.var(axis=0).sum(axis=0).astype(np.float32)}


def remove_small_lesions(labels: np.ndarray, min_fraction: float) -> np.ndarray:
    """Labels with the whole-tumour components (labels > 0, full 3D connectivity) smaller than
    ``min_fraction`` of the largest component set to 0; a new array (the input is not changed).

    ``min_fraction`` 0 keeps everything, 1 keeps only the largest component (and any of equal size).
    """
    from scipy import ndimage as ndi

    if not 0.0 <= float(min_fraction) <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    lab = np.array(labels, copy=True)
    if min_fraction <= 0 or not lab.any():
        return lab
    comp, n = ndi.label(lab > 0, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return lab
    sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
    small = np.flatnonzero(sizes < float(min_fraction) * sizes.max()) + 1
    lab[np.isin(comp, small)] = 0
    return lab


def fill_lesion_holes(labels: np.ndarray) -> np.ndarray:
    """Labels with the tumour's enclosed holes filled; a new array (the input is not changed).

    Background or oedema enclosed by the tumour core (labels 1 and 4) in 3D or within an axial
    slice (the first axis) becomes necrotic core (1); background still enclosed by the whole
    tumour (labels > 0) becomes oedema (2). Other labels are never changed, and nothing outside
    the tumour's hull is added.
    """
    from scipy import ndimage as ndi

    lab = np.array(labels, copy=True)
    if not lab.any():
        return lab

    def enclosed(mask):
        filled = ndi.binary_fill_holes(mask)
        filled |= np.stack([ndi.binary_fill_holes(s) for s in mask])
        return filled & ~mask

    core = (lab == NECROTIC_CORE) | (lab == ENHANCING)
    if core.any():
        lab[enclosed(core) & ((lab == 0) | (lab == OEDEMA))] = NECROTIC_CORE
    lab[enclosed(lab > 0) & (lab == 0)] = OEDEMA
    return lab


#: label decisions from the probabilities: the argmax, or the whole tumour of maximal expected Dice
DECISIONS = ("argmax", "expected_dice")


def expected_dice_threshold(prob: np.ndarray, floor: float = 0.01) -> float:
    """The threshold ``t`` on a region's probability map ``prob`` (voxels outside the region's
    possible extent at 0) whose set ``{prob >= t}`` maximises the Dice expected when each voxel
    is in the region with its probability: ``2 * sum(prob[S]) / (|S| + sum(prob))`` over the sets
    ``S`` of the most probable voxels (the best set of each size). Voxels under ``floor`` are never
    chosen; returns 1.0 (an empty region) when no voxel reaches it or the expected size is 0.
    """
    q = np.asarray(prob, np.float32)
    total = float(q.sum(dtype=np.float64))
    v = q[q >= floor]
    if v.size == 0 or total <= 0:
        return 1.0
    v = np.sort(v)[::-1].astype(np.float64)
    expected = 2.0 * np.cumsum(v) / (np.arange(1, v.size + 1) + total)
    return float(v[int(np.argmax(expected))])


def _check_decision(decision: str) -> None:
    if decision not in DECISIONS:
        raise ValueError(f"unknown label decision {decision!r}; choose one of {', '.join(DECISIONS)}")


def decide_labels(probs: np.ndarray, values: Sequence[int], mask: np.ndarray, decision: str = "argmax"
                  ) -> tuple[np.ndarray, float | None]:
    """Labels ``(z, y, x)`` (uint8, BraTS values, 0 outside ``mask``) from posteriors ``(K, z, y, x)``
    with index 0 background, and the whole-tumour threshold used (None for the argmax).

    ``decision`` is ``"argmax"`` (the most probable class) or ``"expected_dice"``: tumour where
    ``1 - p(background)`` reaches :func:`expected_dice_threshold`, each such voxel labelled with its
    most probable tumour class.
    """
    _check_decision(decision)
    vals = np.asarray(values, np.uint8)
    mask = np.asarray(mask, bool)
    if decision == "argmax":
        lab = vals[np.argmax(probs, axis=0)]
        lab[~mask] = 0
        return lab, None
    tumour = np.where(mask, 1.0 - np.asarray(probs[0], np.float32), np.float32(0.0))
    t = expected_dice_threshold(tumour)
    lab = vals[1:][np.argmax(probs[1:], axis=0)]
    lab[~(mask & (tumour >= t))] = 0
    return lab, t


def postprocess_labels(labels: np.ndarray, min_component_fraction: float = 0.0, fill_holes: bool = False,
                       brain_mask: np.ndarray | None = None) -> np.ndarray:
    """Labels after a card's ``postprocess``: :func:`remove_small_lesions`, then
    :func:`fill_lesion_holes`, zero outside ``brain_mask``; a new array."""
    out = remove_small_lesions(labels, float(min_component_fraction or 0.0))
    if fill_holes:
        out = fill_lesion_holes(out)
        if brain_mask is not None:
            out[~np.asarray(brain_mask, bool)] = 0
    return out


def model_turn(card: dict, affine) -> "Turn | None":
    """How a scan with ``affine`` turns to the orientation ``card`` learnt (``input.orientation``);
    None when either is unknown or they already agree."""
    target = (card.get("input") or {}).get("orientation")
    if affine is None or not target:
        return None
    turn = turn_to(affine, target)
    return None if turn.identity else turn


def segment_lesions_steps(
    channels,
    spacing,
    model=None,
    brain_mask=None,
    device: str = "auto",
    output_block: int = DEFAULT_OUTPUT_BLOCK,
    cancelled: Callable[[], bool] | None = None,
    min_component_fraction: float | None = None,
    fill_holes: bool | None = None,
    decision: str | None = None,
    affine=None,
    backend: str = "auto",
) -> Generator[tuple[int, int, str], None, LesionResult]:
    """Segment lesions, yielding ``(segments_done, segments_total, message)``; returns the result.

    Same arguments as :func:`segment_lesions`.
    """
    ens = ensemble_members(model)
    nets = [_load(m, device) for m in ens[0]] if ens else [_load(model, device)]
    cards = [getattr(n, "card", {}) or {} for n in nets]
    names_of = [str(getattr(n, "zoo_name", c.get("name", ""))) for n, c in zip(nets, cards)]
    chan_sets = {tuple(c.get("input", {}).get("channels", DEFAULT_CHANNELS)) for c in cards}
    value_sets = {tuple(int(v) for v in c.get("label_values", LABEL_VALUES)) for c in cards}
    if len(chan_sets) > 1:
        raise ValueError("the ensemble's members take different modalities: "
                         + "; ".join(f"{n}: {', '.join(c.get('input', {}).get('channels', DEFAULT_CHANNELS))}"
                                     for n, c in zip(names_of, cards)))
    if len(value_sets) > 1:
        raise ValueError("the ensemble's members have different label sets: "
                         + "; ".join(f"{n}: {list(c.get('label_values', LABEL_VALUES))}" for n, c in zip(names_of, cards)))
    names = chan_sets.pop()
    values = value_sets.pop()
    arr, sp, mask = validate_channels(channels, spacing, names, brain_mask)
    for n, nm in zip(nets, names_of):
        if getattr(n, "in_channels", len(names)) != len(names):
            raise ValueError(f"model {nm} takes {n.in_channels} channels but its card lists {len(names)}")
        if int(getattr(n, "n_classes", len(values))) != len(values):
            raise ValueError(f"model {nm} gives {n.n_classes} classes but its card lists label values {values}")
    if output_block < 1:
        raise ValueError(f"output_block must be >= 1, got {output_block}")
    card = ens[1] if ens else cards[0]
    post = card.get("postprocess") or {}
    if decision is None:
        decision = str(post.get("decision", "argmax"))
    _check_decision(decision)          # before any inference
    backend = check_backend(backend)
    used: list[str] = []
    t0 = time.time()
    yield 0, 1, "preparing"
    if mask is None:
        mask = derive_brain_mask(arr)
    member_probs, turned = [], {}
    for i, (net, nm) in enumerate(zip(nets, names_of)):
        label = f"{nm} ({i + 1}/{len(nets)}): " if ens else ""
        turn = model_turn(cards[i], affine)
        if turn is None:
            member_probs.append((yield from _member_steps(net, arr, sp, mask, output_block, cancelled, label,
                                                          backend, used)))
            continue
        # the member sees the scan in its training orientation; its posteriors come back to the input's grid
        turned[nm] = f"{turn.source} -> {turn.target}"
        p = yield from _member_steps(net, turn.apply(arr), turn.spacing(sp), turn.apply(mask), output_block,
                                     cancelled, label, backend, used)
        member_probs.append(turn.inverse().apply(p))
    if min_component_fraction is None:
        min_component_fraction = post.get("min_component_fraction")
    if fill_holes is None:
        fill_holes = bool(post.get("fill_holes", False))

    thresholds = []

    def to_labels(p):
        lab, t = decide_labels(p, values, mask, decision)
        thresholds.append(t)
        return postprocess_labels(lab, min_component_fraction, fill_holes, mask)

    probs = member_probs[0] if not ens else np.mean(member_probs, axis=0, dtype=np.float32)
    labels = to_labels(probs)
    uncertainty, extras = None, {}
    if ens:
        maps = ensemble_uncertainty(member_probs)
        uncertainty = maps.pop("entropy")
        member_labels = {nm: to_labels(p) for nm, p in zip(names_of, member_probs)}
        extras = {**maps, "member_labels": member_labels,
                  "member_volumes_ml": {nm: lesion_volumes(lab, sp) for nm, lab in member_labels.items()}}
    extras["warnings"] = input_warnings(mask, sp)
    extras["orientation"] = {"input": axis_codes(affine) if affine is not None else None, "turned": turned}
    extras["postprocess"] = {"decision": decision, "min_component_fraction": float(min_component_fraction or 0.0),
                             "fill_holes": bool(fill_holes)}
    if decision == "expected_dice":
        extras["postprocess"]["whole_tumour_threshold"] = thresholds[0]
    return LesionResult(
        labels=labels, probabilities=probs.astype(np.float32, copy=False),
        volumes_ml=lesion_volumes(labels, sp),
        model=str(card.get("name", "")) if ens else names_of[0],
        channel_names=names, brain_mask=mask, spacing=sp, label_values=values,
        model_sha256="" if ens else str(cards[0].get("sha256", "")), seconds=time.time() - t0,
        backend="+".join(dict.fromkeys(used)),
        uncertainty=uncertainty, members=tuple(names_of) if ens else (), extras=extras,
    )


def segment_lesions(
    channels,
    spacing,
    model=None,
    brain_mask=None,
    progress: Progress | None = None,
    device: str = "auto",
    output_block: int = DEFAULT_OUTPUT_BLOCK,
    min_component_fraction: float | None = None,
    fill_holes: bool | None = None,
    decision: str | None = None,
    affine=None,
    backend: str = "auto",
) -> LesionResult:
    """Segment a brain tumour (necrotic core, oedema, enhancing) in co-registered MR modalities.

    Parameters
    ----------
    channels
        ``(C, z, y, x)`` array (or a list of ``C`` arrays ``(z, y, x)``) in the model card's
        channel order (``zoo.card(name)["input"]["channels"]``, e.g. FLAIR, T1c), on one grid.
    spacing
        ``(dz, dy, dx)`` in mm.
    model
        Zoo name, checkpoint path, a loaded module, or None for the default lesion model; an
        ensemble: ``"emma"`` (or another ensemble card) or a list of models, whose posteriors
        are averaged (``.uncertainty``, ``.members`` and the members' labels in ``.extras``).
    brain_mask
        Boolean ``(z, y, x)``; None derives it from the channels (see the module docstring).
    progress
        Called with ``(segments_done, segments_total, message)``.
    device
        ``"auto"`` (CUDA, MPS, else CPU), ``"cpu"``, ...
    output_block
        Output voxels per axis of one inference segment (larger: faster, more memory).
    min_component_fraction
        Drop whole-tumour components smaller than this fraction of the largest
        (:func:`remove_small_lesions`); None takes the card's ``postprocess`` setting, 0 keeps all.
    fill_holes
        Fill the tumour's enclosed holes (:func:`fill_lesion_holes`), after the component
        clean-up; None takes the card's ``postprocess`` setting.
    decision
        How labels follow from the probabilities (:func:`decide_labels`): ``"argmax"`` or
        ``"expected_dice"`` (the whole tumour of maximal expected Dice, found per scan); None
        takes the card's ``postprocess.decision``, else the argmax.
    affine
        The scan's 4x4 voxel-to-world matrix (columns in ``(z, y, x)`` order, as
        :class:`~napari_medlearn.imaging.volume.Volume` has it). Given, each model sees the scan
        turned to the orientation its card learnt (``input.orientation``, e.g. BraTS's
        ``"SPL"``), so a scan stored in any orientation (RAS from dcm2niix, a sagittal 3D FLAIR)
        is read the way the model knows; the results come back on the input's grid. None: the
        arrays are taken as they are, i.e. already in the model's orientation.
    backend
        ``"auto"`` (the CPU runtime on CPU, torch on CUDA/MPS), ``"torch"`` or ``"onnx"``; see
        :mod:`napari_medlearn.inference`. The result's ``backend`` says which ran.
    """
    return drain(segment_lesions_steps(channels, spacing, model, brain_mask, device, output_block,
                                       min_component_fraction=min_component_fraction, fill_holes=fill_holes,
                                       decision=decision, affine=affine, backend=backend),
                 progress)


__all__ = ["DECISIONS", "LABEL_NAMES", "LABEL_VALUES", "LesionResult", "VOLUME_KEYS", "decide_labels",
           "dense_probabilities", "derive_brain_mask", "ensemble_card_of", "ensemble_members", "ensemble_uncertainty",
           "expected_dice_threshold", "fill_lesion_holes", "lesion_volumes",
           "member_probabilities", "sliding_window_probabilities", "normalise_channels", "postprocess_labels", "remove_small_lesions", "segment_lesions",
           "segment_lesions_steps", "validate_channels"]
