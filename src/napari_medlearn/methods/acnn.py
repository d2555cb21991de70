"""Check and correct cardiac label maps with a learned shape prior (ACNN, Oktay et al. 2018).

O. Oktay et al., "Anatomically Constrained Neural Networks (ACNNs): Application to Cardiac
Image Enhancement and Segmentation", IEEE TMI 37(2):384-395, 2018.

The prior is the T-L network's label autoencoder (:class:`napari_medlearn.nets.ACNNShapeModel`),
trained as a denoising autoencoder: damaged expert masks in, the intact masks out, so its
decoder maps an implausible mask to a plausible one near it. For each frame:

1. the labels go to the canonical grid of the model card
   (:mod:`napari_medlearn.imaging.shape_grid`, centred on the median foreground position);
2. the autoencoder reconstructs them; its class probabilities come back to the input grid;
3. **correction** keeps the input wherever the prior does not disagree strongly: the input is
   first smoothed by an in-plane majority vote (one-hot channels blurred by ``smooth_mm``, so
   an isolated ragged voxel loses and a smooth boundary stays); the prior then *adds*
   structure where the input has background, its probability of background is below
   ``threshold`` and of a structure above ``1 - threshold``, in regions thicker than a sliver
   (an in-plane 3x3 opening of that set) and only inside the heart's own in-plane footprint
   closed by a disc of ``gate_mm`` and hole-filled (:func:`concavities`: where a hole or a
   bite can be; beyond it, at the apex and base, the coarse prior's extra structure is more
   often wrong than right). A **lost slice** (far less foreground than both neighbours,
   :func:`lost_slices`) takes the prior's labels wherever the prior is surer than
   ``refill_p``. The prior never deletes drawn structure voxel by voxel; deletion is by whole
   components: last, each structure keeps its largest 3D component and any other the prior
   supports (a part cut off by a lost slice), with in-plane holes filled
   (:func:`prior_guided_cleanup`). A clean expert mask comes back nearly unchanged;
4. **plausibility** is the agreement of the labels with their own reconstruction (mean soft
   Dice over the structures present, on the canonical grid; labelled voxels outside the
   canonical box, which the prior cannot reconstruct, count as unmatched), mapped through the
   logistic calibration in the card (its midpoint halfway between the median agreement of clean
   and of damaged training masks), so about 0.9 is a typical expert mask and about 0.1 a
   typically damaged one. A mask the prior cannot reconstruct is, by construction, far from
   every mask it learnt. The learnt score is then tempered by explicit anatomy
   (:func:`anatomy_faults`): each hole, lost slice or LV cavity open to the background halves
   it, each extra component multiplies it by 0.8 (a coarse 64-d code sees a small bite or hole
   only faintly; these checks see it exactly, and an expert mask has none of them).

``correct_mask_steps`` yields ``(frames_done, frames_total, message)`` and returns a
:class:`MaskResult`; ``correct_mask`` drains it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generator

import numpy as np
from scipy import ndimage as ndi

from ..imaging.shape_grid import CANONICAL_GRID, CANONICAL_SPACING, foreground_centre, from_canonical, grid_map, to_canonical

TASK = "cardiac-shape-prior"
Progress = Callable[[int, int, str], Any]
CARDIAC_NAMES = {0: "background", 1: "LV cavity", 2: "myocardium", 3: "RV cavity"}
#: correction defaults when a card does not say (see the module docstring)
DEFAULT_THRESHOLD = 0.25
DEFAULT_SMOOTH_MM = 0.8


@dataclass(frozen=True, eq=False)
class MaskResult:
    """What :func:`correct_mask` did.

    Attributes
    ----------
    labels
        The corrected labels, same shape, dtype and grid as the input.
    plausibility
        Shape plausibility of ``labels`` in [0, 1] (mean over frames for a cine).
    plausibility_before
        The same for the input.
    changed
        bool, same shape: voxels whose label changed.
    frame_plausibility, frame_plausibility_before
        Per frame (one entry for a single volume).
    """

    labels: np.ndarray
    plausibility: float
    plausibility_before: float
    changed: np.ndarray
    frame_plausibility: tuple = ()
    frame_plausibility_before: tuple = ()
    spacing: tuple = ()
    model_name: str = ""
    model_sha256: str = ""

    @property
    def n_changed(self) -> int:
        return int(self.changed.sum())


def validate_labels(labels, spacing, n_classes: int = 4) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Check a label map and its spacing; return ``(t, z, y, x)`` labels and ``(dz, dy, dx)``."""
    arr = np.asarray(labels)
    if arr.size == 0:
        raise ValueError("the label map is empty")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integers (a Labels layer), got {arr.dtype} values")
    if arr.ndim == 2:
        raise ValueError(f"a 2D label map {arr.shape} is not enough: the shape prior needs a short-axis "
                         "stack (z, y, x) or a cine (t, z, y, x)")
    if arr.ndim not in (3, 4):
        raise ValueError(f"expected (z, y, x) or (t, z, y, x) labels, got a {arr.ndim}-D array {arr.shape}")
    values = np.unique(arr)
    unknown = [int(v) for v in values if v < 0 or v >= n_classes]
    if unknown:
        known = ", ".join(f"{k} {v}" for k, v in CARDIAC_NAMES.items() if k < n_classes)
        raise ValueError(f"unknown label values {unknown}; expected {known}")
    if spacing is None:
        raise ValueError("spacing is missing: give (dz, dy, dx) in mm")
    sp = tuple(float(s) for s in np.ravel(spacing))
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be three positive numbers (dz, dy, dx) in mm, got {spacing}")
    from .cardiac import check_field_of_view

    check_field_of_view(arr.shape[-2:], sp[1:], "the label map")
    return (arr[None] if arr.ndim == 3 else arr), sp


def _load(model, device: str = "cpu"):
    from .. import zoo

    if hasattr(model, "forward"):
        return model
    return zoo.load(model or zoo.default_model(TASK), device=device, task=TASK)


def _grid_of(net) -> tuple[tuple, tuple]:
    card = getattr(net, "card", {}) or {}
    inp = card.get("input", {})
    return (tuple(inp.get("grid", getattr(net, "grid", CANONICAL_GRID))),
            tuple(inp.get("grid_spacing_mm", CANONICAL_SPACING)))


def _reconstruct(net, canon: np.ndarray) -> np.ndarray:
    """Autoencoder probabilities ``(K, D, H, W)`` of one canonical one-hot map."""
    import torch

    dev = next(net.parameters()).device
    with torch.inference_mode():
        logits, _ = net(torch.from_numpy(canon)[None].to(dev))
        return torch.softmax(logits, dim=1)[0].float().cpu().numpy()


def agreement(canon: np.ndarray, prob: np.ndarray, outside=None) -> float:
    """Mean soft Dice between a canonical one-hot map and its reconstruction, over the
    foreground structures present in either (0 when there is no foreground at all).

    ``outside[k]``: amount of structure ``k`` (in canonical voxels) lying outside the canonical
    box; the prior reconstructs nothing there, so it counts as unmatched (an island far from the
    heart lowers the agreement instead of going unseen)."""
    scores = []
    for k in range(1, canon.shape[0]):
        a, b = canon[k], prob[k]
        extra = 0.0 if outside is None else float(outside[k])
        den = a.sum() + b.sum() + extra
        if a.sum() + extra < 0.5 and b.sum() < 0.5:
            continue
        scores.append(2 * float((a * b).sum()) / max(float(den), 1e-6))
    return float(np.mean(scores)) if scores else 0.0


def outside_box(labels: np.ndarray, gmap, n_classes: int) -> np.ndarray:
    """Per class, the labelled voxels outside the canonical box of ``gmap``, in canonical voxels."""
    out = np.zeros(n_classes)
    idx = np.argwhere(labels > 0)
    if len(idx) == 0:
        return out
    c = (idx - gmap.offset) @ np.linalg.inv(gmap.matrix).T
    far = np.any((c < -0.5) | (c > np.asarray(gmap.grid) - 0.5), axis=1)
    if not far.any():
        return out
    vals = labels[tuple(idx[far].T)]
    per = abs(float(np.linalg.det(gmap.matrix)))          # input voxels per canonical voxel
    for k in range(1, n_classes):
        out[k] = float(np.sum(vals == k)) / per
    return out


def calibrate(agr: float, card: dict) -> float:
    """Agreement -> plausibility in [0, 1] with the card's logistic calibration."""
    cal = (card or {}).get("plausibility_calibration")
    if not cal:
        return float(np.clip(agr, 0.0, 1.0))
    mid, scale = float(cal["midpoint"]), max(float(cal["scale"]), 1e-6)
    return float(1.0 / (1.0 + np.exp(-(agr - mid) / scale)))


def prior_guided_cleanup(labels: np.ndarray, prob: np.ndarray, support: float = 0.5) -> np.ndarray:
    """Connected-component clean-up that asks the prior before deleting.

    Each structure keeps its largest 3D component and every other component whose mean prior
    probability for that structure is at least ``support`` (a part cut off by a lost slice is
    kept, a far island is not); then background holes inside a structure's slice are filled
    with it, as in :func:`napari_medlearn.imaging.labels.clean_labels`.
    """
    out = np.zeros_like(labels)
    values = [int(v) for v in np.unique(labels) if v != 0]
    for v in values:
        m = labels == v
        comp, n = ndi.label(m, structure=np.ones((3, 3, 3)))
        if n <= 1:
            out[m] = v
            continue
        idx = np.arange(1, n + 1)
        sizes = ndi.sum_labels(m, comp, idx)
        mean_p = ndi.mean(prob[v], comp, idx)
        keep = idx[(sizes == sizes.max()) | (mean_p >= support)]
        out[np.isin(comp, keep)] = v
    for v in values:
        filled = np.stack([ndi.binary_fill_holes(s) for s in out == v])
        out[filled & (out == 0)] = v
    return out


def _disk(radius_mm: float, sp) -> np.ndarray:
    ry, rx = max(1, int(round(radius_mm / sp[1]))), max(1, int(round(radius_mm / sp[2])))
    yy, xx = np.ogrid[-ry:ry + 1, -rx:rx + 1]
    return ((yy / ry) ** 2 + (xx / rx) ** 2 <= 1)[None]


def concavities(labels: np.ndarray, sp, radius_mm: float, neighbours: bool = False) -> np.ndarray:
    """The heart's in-plane footprint with its concavities and holes: the foreground closed by a
    disc of ``radius_mm`` and hole-filled, slice by slice (where a bite or a hole can be); with
    ``neighbours``, also wherever the footprints of the slices 1 (or 2) below and above overlap."""
    disk = _disk(radius_mm, sp)
    _, ry, rx = (d // 2 for d in disk.shape)
    fg = np.pad(labels > 0, ((0, 0), (ry, ry), (rx, rx)))
    closed = ndi.binary_closing(fg, structure=disk)[:, ry:fg.shape[1] - ry, rx:fg.shape[2] - rx]
    fp = np.stack([ndi.binary_fill_holes(s) for s in closed])
    if not neighbours:
        return fp
    # a bite through the outer wall is no concavity in its own slice, but both slices around it
    # (1 or 2 away) still cover it
    out = fp.copy()
    for k in (1, 2):
        if fp.shape[0] > 2 * k:
            out[k:-k] |= fp[:-2 * k] & fp[2 * k:]
    return out


def lost_slices(labels: np.ndarray, ratio: float = 0.3) -> list[int]:
    """Slices inside the heart with far less foreground than both neighbours (a lost slice)."""
    area = (labels > 0).reshape(labels.shape[0], -1).sum(axis=1).astype(float)
    return [z for z in range(1, labels.shape[0] - 1)
            if min(area[z - 1], area[z + 1]) > 0 and area[z] < ratio * min(area[z - 1], area[z + 1])]


def islands_and_holes(labels: np.ndarray) -> tuple[int, int, int, int]:
    """``(islands, holes, island_voxels, hole_voxels)`` of a ``(z, y, x)`` cardiac label map:
    3D components of a structure beyond its largest, and in-plane regions of background
    enclosed by one structure (counted per enclosing structure)."""
    islands = holes = island_vox = hole_vox = 0
    for v in (1, 2, 3):
        m = labels == v
        if not m.any():
            continue
        comp, n = ndi.label(m, structure=np.ones((3, 3, 3)))
        if n > 1:
            sizes = np.bincount(comp.ravel())[1:]
            islands += n - 1
            island_vox += int(sizes.sum() - sizes.max())
        for z, sl in enumerate(m):
            if sl.any():
                enclosed = ndi.binary_fill_holes(sl) & (labels[z] == 0)
                if enclosed.any():
                    holes += ndi.label(enclosed)[1]
                    hole_vox += int(enclosed.sum())
    return islands, holes, island_vox, hole_vox


def anatomy_faults(labels: np.ndarray) -> dict[str, int]:
    """Counts of what an expert cardiac mask does not have, in a ``(z, y, x)`` frame:
    ``islands`` (3D components of a structure beyond its largest), ``holes`` (background regions
    enclosed in-plane by one structure), ``lost_slices`` (:func:`lost_slices`) and
    ``exposed_lv`` (1 when, in a slice between the first and last heart slices, more than 10 % of
    the LV cavity's border touches background instead of myocardium or RV)."""
    islands, holes, _, _ = islands_and_holes(labels)
    exposed = 0
    zs = np.flatnonzero((labels > 0).reshape(labels.shape[0], -1).any(axis=1))
    for z in zs[1:-1]:
        lv = labels[z] == 1
        if lv.any():
            edge = ndi.binary_dilation(lv) & ~lv
            if np.mean(labels[z][edge] == 0) > 0.1:
                exposed = 1
                break
    return {"islands": int(islands), "holes": int(holes), "lost_slices": len(lost_slices(labels)),
            "exposed_lv": exposed}


#: plausibility factor per anatomical fault (islands: a far smaller one, since expert masks
#: sometimes have a detached basal piece)
FAULT_FACTOR = {"islands": 0.8, "holes": 0.5, "lost_slices": 0.5, "exposed_lv": 0.5}


def fault_factor(labels: np.ndarray) -> float:
    f = anatomy_faults(labels)
    return float(np.prod([FAULT_FACTOR[k] ** v for k, v in f.items()]))


def _frame(net, lab: np.ndarray, sp, n_classes: int, threshold: float, smooth_mm: float, fix: bool,
           gate_mm: float = 0.0, refill_p: float = 0.0):
    """Plausibility (and, with ``fix``, the corrected labels and their plausibility) of one frame."""
    grid, gsp = _grid_of(net)
    gmap = grid_map(lab.shape, sp, foreground_centre(lab, sp), grid, gsp)
    canon = to_canonical(lab, gmap, n_classes)
    prob = _reconstruct(net, canon)
    card = getattr(net, "card", {}) or {}
    before = calibrate(agreement(canon, prob, outside_box(lab, gmap, n_classes)), card) * fault_factor(lab)
    if not fix or not np.any(lab > 0):
        return before, lab, before
    p = from_canonical(prob, gmap)
    out = lab.copy()
    if smooth_mm > 0:   # in-plane majority: isolated ragged voxels lose, smooth boundaries stay
        sigma = (0.0, smooth_mm / sp[1], smooth_mm / sp[2])
        support = np.stack([ndi.gaussian_filter((lab == k).astype(np.float32), sigma) for k in range(n_classes)])
        out = np.argmax(support, axis=0).astype(lab.dtype)
    # the prior adds structure where it is sure the input's background is wrong, in regions thicker
    # than a sliver; removals are left to the component clean-up below
    p_input = np.take_along_axis(p, out[None].astype(np.intp), axis=0)[0]
    best = np.argmax(p, axis=0)
    disagree = (p_input < threshold) & (np.max(p, axis=0) > 1 - threshold) & (best != out) & (out == 0)
    disagree = ndi.binary_opening(disagree, structure=np.ones((1, 3, 3), bool))
    if gate_mm > 0:     # only where a bite or a hole can be, not beyond the heart's own footprint
        disagree &= concavities(lab, sp, gate_mm)
    out[disagree] = best[disagree].astype(lab.dtype)
    if refill_p > 0:    # a lost slice: the prior's labels wherever it is at least this sure
        for z in lost_slices(out):
            sel = (out[z] == 0) & (best[z] > 0) & (np.max(p[:, z], axis=0) > refill_p)
            out[z][sel] = best[z][sel].astype(lab.dtype)
    out = prior_guided_cleanup(out, p)
    gmap_out = grid_map(out.shape, sp, foreground_centre(out, sp), grid, gsp)
    canon_out = to_canonical(out, gmap_out, n_classes)
    after = calibrate(agreement(canon_out, _reconstruct(net, canon_out), outside_box(out, gmap_out, n_classes)),
                      card) * fault_factor(out)
    return before, out, after


def correct_mask_steps(labels, spacing, model=None, device: str = "cpu", threshold: float | None = None,
                       smooth_mm: float | None = None, gate_mm: float | None = None, refill_p: float | None = None,
                       cancelled: Callable[[], bool] | None = None) -> Generator[tuple[int, int, str], None, MaskResult]:
    """Correct a label map frame by frame, yielding ``(done, total, message)``; returns a :class:`MaskResult`."""
    arr, sp = validate_labels(labels, spacing, int(getattr(model, "n_classes", 4)))
    net = _load(model, device)
    card = getattr(net, "card", {}) or {}
    n_classes = int(card.get("n_classes", getattr(net, "n_classes", 4)))
    arr, sp = validate_labels(labels, spacing, n_classes)
    corr = card.get("correction", {})
    threshold = float(corr.get("threshold", DEFAULT_THRESHOLD) if threshold is None else threshold)
    smooth_mm = float(corr.get("smooth_mm", DEFAULT_SMOOTH_MM) if smooth_mm is None else smooth_mm)
    gate_mm = float(corr.get("gate_mm", 0.0) if gate_mm is None else gate_mm)
    refill_p = float(corr.get("lost_slice_min_probability", 0.0) if refill_p is None else refill_p)
    T = arr.shape[0]
    out = np.empty_like(arr)
    before, after = [], []
    yield 0, T, "correcting"
    for t in range(T):
        if cancelled is not None and cancelled():
            raise InterruptedError("cancelled")
        b, out[t], a = _frame(net, arr[t], sp, n_classes, threshold, smooth_mm, True, gate_mm, refill_p)
        before.append(b)
        after.append(a)
        yield t + 1, T, f"frame {t + 1}/{T}"
    single = np.ndim(labels) == 3
    res_labels = out[0] if single else out
    src = np.asarray(labels)
    return MaskResult(
        labels=res_labels.astype(src.dtype, copy=False), plausibility=float(np.mean(after)),
        plausibility_before=float(np.mean(before)), changed=res_labels != src,
        frame_plausibility=tuple(after), frame_plausibility_before=tuple(before), spacing=sp,
        model_name=str(getattr(net, "zoo_name", card.get("name", ""))), model_sha256=str(card.get("sha256", "")),
    )


def correct_mask(labels, spacing, model=None, progress: Progress | None = None, device: str = "cpu",
                 threshold: float | None = None, smooth_mm: float | None = None, gate_mm: float | None = None,
                 refill_p: float | None = None) -> MaskResult:
    """Correct an implausible cardiac label map towards the learned shape prior.

    Parameters
    ----------
    labels
        Integer labels ``(z, y, x)`` or ``(t, z, y, x)`` (0 background, 1 LV cavity,
        2 myocardium, 3 RV cavity), any spacing and matrix.
    spacing
        ``(dz, dy, dx)`` in mm.
    model
        Zoo name, checkpoint path, a loaded module, or None for the shipped shape prior.
    progress
        Called with ``(frames_done, frames_total, message)``.
    threshold, smooth_mm
        The prior fills a background voxel where its probability of background is below
        ``threshold`` and of a structure above ``1 - threshold``; ``smooth_mm`` is the
        in-plane majority smoothing of the input (0: none). Defaults from the model card.
    gate_mm
        The prior adds structure only inside the heart's in-plane footprint closed by a disc of
        this radius (its concavities and holes: where bites and holes are); 0 = anywhere.
    refill_p
        In a lost slice (far less foreground than both neighbours) the prior's labels are taken
        wherever its probability exceeds this; 0 = off.

    Returns
    -------
    MaskResult
        ``.labels`` on the input's grid, ``.changed``, ``.plausibility`` (after) and
        ``.plausibility_before``.
    """
    from .cardiac import drain

    return drain(correct_mask_steps(labels, spacing, model, device, threshold, smooth_mm, gate_mm, refill_p),
                 progress)


def plausibility(labels, spacing, model=None, device: str = "cpu") -> float:
    """Shape plausibility of a cardiac label map in [0, 1] (higher is more plausible).

    The calibrated agreement of the labels with their shape-prior reconstruction (see the
    module docstring); for a cine, the mean over frames.
    """
    arr, sp = validate_labels(labels, spacing, int(getattr(model, "n_classes", 4)))
    net = _load(model, device)
    card = getattr(net, "card", {}) or {}
    n_classes = int(card.get("n_classes", getattr(net, "n_classes", 4)))
    arr, sp = validate_labels(labels, spacing, n_classes)
    return float(np.mean([_frame(net, arr[t], sp, n_classes, 0.0, 0.0, False)[0] for t in range(arr.shape[0])]))


#: a proposal that shrinks a structure of a frame by more than this share is flagged for review
DEFAULT_MAX_SHRINK = 0.2
#: a plausibility a typical expert mask reaches (the card's calibration maps their median here)
PLAUSIBLE = 0.9


@dataclass(frozen=True)
class ProposalReview:
    """What a correction proposal does, frame by frame, and what a reviewer must look at.

    ``volumes[t][k] = (before_ml, after_ml)`` for structure ``k`` (1 LV cavity, 2 myocardium,
    3 RV cavity) of frame ``t``; ``changes`` is an int8 map (1 voxel added to a structure from
    background, 2 removed to background, 3 moved from one structure to another); ``warnings`` is
    one line per problem (a structure shrinking by more than ``max_shrink`` in a frame, or
    vanishing from it; the plausibility falling, or not rising while below :data:`PLAUSIBLE`); ``flagged`` the ``(frame, structure)`` pairs
    those lines are about.
    """

    volumes: tuple
    changes: np.ndarray
    warnings: tuple
    flagged: frozenset = frozenset()


def review_proposal(before, after, spacing, plausibility_before: float, plausibility_after: float,
                    max_shrink: float = DEFAULT_MAX_SHRINK) -> ProposalReview:
    """Compare a proposal with the labels it would replace (``(z, y, x)`` or ``(t, z, y, x)``)."""
    from ..imaging.measures import voxel_volume_ml

    b, a = np.asarray(before), np.asarray(after)
    if b.shape != a.shape:
        raise ValueError(f"the proposal {a.shape} and the original {b.shape} are not on one grid")
    changes = np.zeros(b.shape, np.int8)
    changes[(b == 0) & (a != 0)] = 1
    changes[(b != 0) & (a == 0)] = 2
    changes[(b != 0) & (a != 0) & (a != b)] = 3
    frames_b, frames_a = (b, a) if b.ndim == 4 else (b[None], a[None])
    v = voxel_volume_ml(tuple(spacing)[-3:])
    volumes, warnings, flagged = [], [], set()
    for t, (fb, fa) in enumerate(zip(frames_b, frames_a)):
        row = {k: (float(np.sum(fb == k)) * v, float(np.sum(fa == k)) * v) for k in (1, 2, 3)}
        volumes.append(row)
        where = f"frame {t}: " if b.ndim == 4 else ""
        for k, (vb, va) in row.items():
            if vb > 0 and va < (1 - max_shrink) * vb:
                flagged.add((t, k))
            if vb > 0 and va == 0:
                warnings.append(f"{where}{CARDIAC_NAMES[k]} removed entirely ({vb:.1f} mL \u2192 0)")
            elif vb > 0 and va < (1 - max_shrink) * vb:
                warnings.append(f"{where}{CARDIAC_NAMES[k]} shrinks {vb:.1f} \u2192 {va:.1f} mL "
                                f"({100 * (va - vb) / vb:+.0f} %)")
    if plausibility_after < plausibility_before - 0.01:
        warnings.append(f"plausibility falls ({plausibility_before:.2f} \u2192 {plausibility_after:.2f})")
    elif plausibility_after <= plausibility_before and plausibility_after < PLAUSIBLE:
        warnings.append(f"plausibility does not rise ({plausibility_before:.2f} \u2192 {plausibility_after:.2f})")
    return ProposalReview(tuple(volumes), changes, tuple(warnings), frozenset(flagged))
