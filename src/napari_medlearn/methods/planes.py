"""Fetal standard-plane detection in 2D ultrasound video, with saliency and localisation.

C. F. Baumgartner et al., "SonoNet: Real-Time Detection and Localisation of Fetal Standard
Scan Planes in Freehand Ultrasound", IEEE TMI 36(11):2204-2215, 2017.

Every frame of a video ``(t, H, W)`` (grayscale, any numeric dtype) or ``(t, H, W, 3|4)``
(colour: the mean of R, G, B, as the authors do) is preprocessed as the model card says (the
published recipe: resize to 224 x 288, per-image z-score x 255) and classified by a SonoNet;
the class posteriors, the predicted class, and per class the best frame (highest posterior
among the frames predicted as that class) come back in a :class:`PlaneResult`.

Saliency and localisation follow the paper's weakly supervised scheme: the predicted class's
score (the mean of its category map) is back-propagated to the image with *guided
back-propagation* (Springenberg et al., ICLR-W 2015: only positive gradients pass a ReLU, and
only where its input was positive); the magnitude of that image gradient is weighted by the
predicted class's category map (rectified, bilinearly upsampled, scaled to a peak of 1), blurred
with a Gaussian (sigma 1/50 of the network input width) and scaled to 0..1 per frame. The box
is the bounding box of the connected region above ``box_threshold`` (default 0.3) of that map
that holds its maximum, in input pixels ``(y0, x0, y1, x1)`` (half-open). Frames predicted as
Background get no box (NaN row). With ``saliency=False`` no gradient is computed (fast path);
boxes then come from the category map alone.

Decisions about input: a single 2D frame ``(H, W)`` (or ``(H, W, 3|4)`` colour) is accepted as
a one-frame video (``t = 1``). Empty arrays, other shapes, frames under 16 x 16 pixels,
complex or non-numeric data, and NaN/Inf values raise ``ValueError``. Integer (uint8,
uint16, ...) and float frames need no scaling: the per-image z-score removes it.

API notes for callers (widgets, CLI): ``PlaneResult`` has ``class_names``, ``probabilities``
``(t, K)``, ``predicted`` ``(t,)``, ``saliency`` ``(t, H, W)`` (None when ``saliency=False``; all
zero for frames predicted as Background), ``boxes`` ``(t, 4)`` (NaN rows: Background or no
box), ``best_frames`` and ``model`` (+ ``model_sha256``, ``seconds``, and the properties
``frames``, ``predicted_names``, ``confidence``, ``background_index``).

``detect_planes_steps`` yields ``(frames_done, frames_total, message)`` and returns the
result (GUI worker); ``detect_planes`` drains it. ``classify_frame`` is the live single-frame
path. ``find_standard_plane`` searches a 3D volume for the plane that maximises one class's
posterior (coarse grid over normals, in-plane rotations and offsets, then local refinement).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Sequence

import numpy as np

from .cardiac import drain

TASK = "us-standard-planes"
Progress = Callable[[int, int, str], Any]
MIN_SIZE = 16


@dataclass(frozen=True, eq=False)
class PlaneResult:
    """What :func:`detect_planes` found in a video.

    Attributes
    ----------
    class_names
        The model's classes, in output order (the published 14 for SonoNet).
    probabilities
        float32 ``(t, K)``: softmax posteriors per frame.
    predicted
        int64 ``(t,)``: the most probable class per frame.
    saliency
        float32 ``(t, H, W)`` in 0..1 at the input's resolution (None with ``saliency=False``).
    boxes
        float32 ``(t, 4)``: ``(y0, x0, y1, x1)`` in input pixels (half-open), NaN rows for
        Background frames and frames without a box.
    best_frames
        class name -> index of the frame with the highest posterior for that class among the
        frames predicted as it (classes other than Background that were found at least once).
    model, model_sha256
        Which weights produced this.
    seconds
        Wall time (model loading excluded).
    """

    class_names: tuple
    probabilities: np.ndarray
    predicted: np.ndarray
    saliency: np.ndarray | None
    boxes: np.ndarray
    best_frames: dict = field(default_factory=dict)
    model: str = ""
    model_sha256: str = ""
    seconds: float = 0.0

    @property
    def frames(self) -> int:
        return int(self.probabilities.shape[0])

    @property
    def predicted_names(self) -> list[str]:
        return [self.class_names[int(k)] for k in self.predicted]

    @property
    def confidence(self) -> np.ndarray:
        """float32 ``(t,)``: the posterior of the predicted class."""
        return np.take_along_axis(self.probabilities, self.predicted[:, None], axis=1)[:, 0]

    @property
    def background_index(self) -> int | None:
        return self.class_names.index("Background") if "Background" in self.class_names else None


# ----- input ----------------------------------------------------------------------------------
def validate_video(video: np.ndarray) -> np.ndarray:
    """Check a video and return it as float32 grayscale ``(t, H, W)``.

    Accepts ``(t, H, W)``, ``(t, H, W, 3|4)`` (mean of the colour channels, alpha ignored),
    and a single frame ``(H, W)`` or ``(H, W, 3|4)`` as ``t = 1``.
    """
    arr = np.asarray(video)
    if arr.size == 0:
        raise ValueError(f"the video is empty (shape {arr.shape})")
    if np.iscomplexobj(arr) or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"the video must be real-valued numbers, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4) and min(arr.shape[:2]) >= MIN_SIZE:
        arr = arr[None]                              # one colour frame (H, W, C)
    if arr.ndim == 4:
        if arr.shape[-1] not in (3, 4):
            raise ValueError(f"a 4-D video must be (t, H, W, 3) colour frames, got shape {arr.shape}")
        arr = arr[..., :3].astype(np.float32).mean(axis=-1)
    if arr.ndim != 3:
        raise ValueError(f"expected a video (t, H, W) or (t, H, W, 3), or one frame (H, W), got a "
                         f"{arr.ndim}-D array {arr.shape}")
    if arr.shape[1] < MIN_SIZE or arr.shape[2] < MIN_SIZE:
        raise ValueError(f"frames of {arr.shape[1]}x{arr.shape[2]} pixels are too small (need at least "
                         f"{MIN_SIZE}x{MIN_SIZE}); is the time axis first?")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1))
        raise ValueError(f"the video contains NaN or Inf values (frame {int(bad[0])} of {arr.shape[0]})")
    return arr


def resolve_model(model=None, device: str = "auto"):
    """A loaded plane classifier for ``model``: a module, zoo name, checkpoint path, or None
    for the best available model of task ``us-standard-planes``."""
    from .. import zoo

    if hasattr(model, "forward"):
        return model
    if model:
        return zoo.load(model, device=device, task=TASK)
    if not zoo.available(TASK):
        raise zoo.ModelError(
            "no standard-plane model available: convert the official weights "
            "(zoo.import_weights('sononet-16', 'SonoNet16.npz')) or train the demo "
            "(medlearn train sononet-phantom --ship)")
    return zoo.load(zoo.default_model(TASK), device=device)


def model_spec(net) -> tuple[tuple[str, ...], tuple[int, int]]:
    """``(class_names, input_size)`` of a SonoNet from its card (published defaults otherwise)."""
    from ..nets.sononet import SONONET_CLASSES, SONONET_INPUT_SIZE

    card = getattr(net, "card", {}) or {}
    K = int(getattr(net, "n_classes", card.get("n_classes", len(SONONET_CLASSES))))
    names = card.get("class_names")
    if not names:
        names = SONONET_CLASSES if K == len(SONONET_CLASSES) else [f"class {i}" for i in range(K)]
    if len(names) != K:
        raise ValueError(f"the model card names {len(names)} classes but the model has {K} outputs")
    size = tuple(int(s) for s in card.get("input", {}).get("size", SONONET_INPUT_SIZE))
    mult = int(getattr(net, "size_multiple", 16))
    if len(size) != 2 or size[0] % mult or size[1] % mult:
        raise ValueError(f"the model card's input size {size} is not two multiples of {mult}")
    return tuple(str(n) for n in names), size


# ----- the network, run as a flat chain of fused layers ---------------------------------------
def _leaves(module) -> list:
    from torch import nn

    if isinstance(module, nn.Sequential):
        return [leaf for m in module for leaf in _leaves(m)]
    return [module]


def fused_chain(net) -> list:
    """SonoNet as a flat list of layers with each BatchNorm folded into the convolution before
    it (eval-mode statistics): ``("conv", weight, bias, padding, backward_weight)``,
    ``("relu",)``, ``("pool",)``.

    Folding removes a pass over every feature map; weights are channels-last for oneDNN. The
    backward weight (kernel flipped, in/out swapped) turns the gradient of a stride-1 convolution
    with respect to its input into an ordinary convolution, oneDNN's fastest path.
    """
    import torch
    from torch import nn

    layers = _leaves(net.features) + _leaves(net.adaptation)
    chain: list = []
    i = 0
    cl = torch.channels_last
    with torch.no_grad():
        while i < len(layers):
            m = layers[i]
            if isinstance(m, nn.Conv2d):
                if m.stride != (1, 1) or m.dilation != (1, 1) or m.groups != 1:
                    raise ValueError("SonoNet convolutions are stride 1, undilated, ungrouped")
                w = m.weight.detach().float()
                b = m.bias.detach().float() if m.bias is not None else torch.zeros(w.shape[0], device=w.device)
                if i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d):
                    bn = layers[i + 1]
                    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                    w = w * scale[:, None, None, None]
                    b = (b - bn.running_mean) * scale + bn.bias
                    i += 1
                back = w.flip(2, 3).transpose(0, 1).contiguous(memory_format=cl)
                chain.append(("conv", w.contiguous(memory_format=cl), b.detach().contiguous(), m.padding, back))
            elif isinstance(m, nn.ReLU):
                chain.append(("relu",))
            elif isinstance(m, nn.MaxPool2d):
                chain.append(("pool",))
            elif isinstance(m, nn.BatchNorm2d):
                raise ValueError("a BatchNorm without a convolution before it: not a SonoNet")
            else:
                raise ValueError(f"unexpected layer {type(m).__name__} in a SonoNet")
            i += 1
    return chain


def run_chain(chain: list, x, save: bool = False):
    """Category maps ``(B, K, h, w)`` of preprocessed images ``(B, 1, H, W)`` through a
    :func:`fused_chain` (call under ``torch.inference_mode``). With ``save`` also returns what
    :func:`guided_backprop` needs: each ReLU's output and each pooling's argmax indices."""
    import torch.nn.functional as F

    saved = []
    for layer in chain:
        if layer[0] == "conv":
            x = F.conv2d(x, layer[1], layer[2], padding=layer[3])
            saved.append(None)
        elif layer[0] == "relu":
            x = F.relu_(x)
            saved.append(x)
        elif save:
            shape = tuple(x.shape[-2:])
            x, idx = F.max_pool2d(x, 2, return_indices=True)
            saved.append((idx, shape))
        else:
            x = F.max_pool2d(x, 2)
            saved.append(None)
    return (x, saved) if save else x


def guided_backprop(chain: list, saved: list, rows, classes, map_shape):
    """Guided back-propagation (Springenberg et al., ICLR-W 2015) of class scores to the image.

    For the batch ``rows`` (indices into the forward pass that produced ``saved``) the score of
    ``classes`` (the mean of that class's category map) is differentiated with respect to the
    network input, with each ReLU passing only positive gradients where its input was positive.
    Returns ``(len(rows), 1, H, W)``. Written out layer by layer instead of autograd: the same
    numbers (tests compare them) at about half the cost on CPU.
    """
    import torch
    import torch.nn.functional as F

    n = len(rows)
    keep = [int(r) for r in rows]
    everything = keep == list(range(map_shape[0]))

    def take(t):   # rows of a channels-last tensor (index_select is slow on that layout)
        return t if everything else torch.cat([t[r:r + 1] for r in keep])

    h, w = map_shape[-2:]
    g = torch.zeros((n, map_shape[1], h, w), dtype=torch.float32, device=classes.device)
    g[torch.arange(n, device=classes.device), classes] = 1.0 / (h * w)
    g = g.contiguous(memory_format=torch.channels_last)
    for layer, sv in zip(reversed(chain), reversed(saved)):
        if layer[0] == "conv":
            g = F.conv2d(g, layer[4], padding=layer[3])
        elif layer[0] == "relu":
            g = torch.ops.aten.threshold_backward(F.relu_(g), take(sv), 0)
        else:
            idx, shape = sv
            g = F.max_unpool2d(g, take(idx), 2, output_size=shape)
    return g


def _gaussian_blur(x, sigma: float):
    """Separable Gaussian blur of ``(B, 1, H, W)`` (reflect padding)."""
    import torch
    import torch.nn.functional as F

    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


def _normalise_peak(x):
    """Scale each ``(B, 1, H, W)`` map to a peak of 1 (all-zero maps stay zero)."""
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return x / peak.clamp_min(1e-12) * (peak > 0)


def localisation_map(image_grad, cat_map, size: tuple[int, int]):
    """The paper's saliency, ``(B, 1, *size)`` in 0..1: |guided gradient| weighted by the
    predicted class's rectified, upsampled category map, blurred and scaled to a peak of 1.
    ``image_grad`` may be None (category map only)."""
    import torch.nn.functional as F

    cam = F.interpolate(cat_map.clamp(min=0), size=size, mode="bilinear", align_corners=False)
    cam = _normalise_peak(cam)
    s = cam if image_grad is None else image_grad.abs() * cam
    s = _gaussian_blur(s, sigma=max(1.0, size[1] / 50.0))
    return _normalise_peak(s).clamp_(0, 1)


def saliency_box(sal: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """``(y0, x0, y1, x1)`` (half-open) of the region of ``sal`` above ``threshold`` x its peak
    that holds the peak; NaNs when the map is empty."""
    from scipy import ndimage as ndi

    if not sal.size or not np.isfinite(sal).all() or sal.max() <= 0:
        return np.full(4, np.nan, np.float32)
    lab, _ = ndi.label(sal >= threshold * sal.max())
    peak = np.unravel_index(int(np.argmax(sal)), sal.shape)
    ys, xs = np.nonzero(lab == lab[peak])
    return np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float32)


def _scale_box(box: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    fy, fx = dst[0] / src[0], dst[1] / src[1]
    return (box * np.array([fy, fx, fy, fx], np.float32)).astype(np.float32)


class _Runner:
    """A model with its fused chain and input spec, run on batches of frames."""

    def __init__(self, net, device: str = "auto") -> None:
        import torch

        self.net = net
        self.class_names, self.size = model_spec(net)
        self.device = next(net.parameters()).device
        self.chain = fused_chain(net)
        self.card = getattr(net, "card", {}) or {}
        bg = self.class_names.index("Background") if "Background" in self.class_names else None
        self.background = bg
        self.torch = torch

    def prepare(self, frames: np.ndarray, resize: bool = True):
        """Frames ``(B, H, W)`` -> network input: resized to the card's size (unless ``resize``
        is False: fully convolutional use on larger views), z-scored x 255, channels-last."""
        from ..nets.sononet import sononet_preprocess

        x = self.torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))[:, None].to(self.device)
        size = self.size if resize else tuple(x.shape[-2:])
        return sononet_preprocess(x, size).contiguous(memory_format=self.torch.channels_last)

    def run(self, frames: np.ndarray, saliency: bool, out_size: tuple[int, int] | None = None,
            box_threshold: float = 0.3):
        """Posteriors ``(B, K)``, predicted ``(B,)``, saliency ``(B, *out_size)`` (or None),
        boxes ``(B, 4)``. Saliency is computed for frames predicted as a standard plane; frames
        predicted as Background get a zero map (and no box)."""
        torch = self.torch
        out_size = tuple(out_size or frames.shape[-2:])
        with torch.inference_mode():
            x = self.prepare(frames)
            size = tuple(x.shape[-2:])
            maps = run_chain(self.chain, x)
            scores = maps.mean(dim=(2, 3))
            k = scores.argmax(dim=1)
            probs = torch.softmax(scores.float(), dim=1)
            cat = maps.gather(1, k[:, None, None, None].expand(-1, 1, *maps.shape[-2:]))
            plane = (k != self.background) if self.background is not None else torch.ones_like(k, dtype=torch.bool)
            if saliency:
                sal_net = torch.zeros((len(frames), 1, *size), dtype=torch.float32, device=x.device)
                rows = torch.nonzero(plane)[:, 0]
                if len(rows):
                    # forward again on the plane frames only, keeping what the backward pass needs
                    # (cheaper than keeping it for the whole batch and selecting rows after)
                    xs = x if len(rows) == len(frames) else x[rows].contiguous(memory_format=torch.channels_last)
                    sub_maps, saved = run_chain(self.chain, xs, save=True)
                    grad = guided_backprop(self.chain, saved, torch.arange(len(rows)), k[rows], tuple(sub_maps.shape))
                    sal_net[rows] = localisation_map(grad, cat[rows], size)
                    del saved
                sal_out = torch.nn.functional.interpolate(sal_net, size=out_size, mode="bilinear",
                                                          align_corners=False)[:, 0].clamp_(0, 1)
                sal_out = sal_out.float().cpu().numpy()
            else:
                sal_net = localisation_map(None, cat, size)    # category map only: boxes, no saliency
                sal_out = None
            sal_np = sal_net[:, 0].float().cpu().numpy()
        probs_np = probs.cpu().numpy().astype(np.float32)
        k_np = k.cpu().numpy().astype(np.int64)
        plane_np = plane.cpu().numpy()
        boxes = np.full((len(frames), 4), np.nan, np.float32)
        for i in np.flatnonzero(plane_np):
            boxes[i] = _scale_box(saliency_box(sal_np[i], box_threshold), size, out_size)
        return probs_np, k_np, sal_out, boxes


def best_frames_of(probabilities: np.ndarray, predicted: np.ndarray, class_names: Sequence[str]) -> dict:
    """class name -> frame of the highest posterior among frames predicted as that class
    (Background excluded)."""
    best = {}
    for c, name in enumerate(class_names):
        if name == "Background":
            continue
        idx = np.flatnonzero(predicted == c)
        if idx.size:
            best[name] = int(idx[np.argmax(probabilities[idx, c])])
    return best


# ----- video ----------------------------------------------------------------------------------
def detect_planes_steps(
    video: np.ndarray,
    model=None,
    saliency: bool = True,
    batch_size: int = 16,
    device: str = "auto",
    box_threshold: float = 0.3,
    cancelled: Callable[[], bool] | None = None,
) -> Generator[tuple[int, int, str], None, PlaneResult]:
    """Classify every frame, yielding ``(frames_done, frames_total, message)``; returns a
    :class:`PlaneResult`. Arguments as :func:`detect_planes`."""
    frames = validate_video(video)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not 0 < float(box_threshold) < 1:
        raise ValueError(f"box_threshold must be between 0 and 1, got {box_threshold}")
    net = resolve_model(model, device=device)
    runner = _Runner(net)
    t, H, W = frames.shape
    probs = np.empty((t, len(runner.class_names)), np.float32)
    pred = np.empty(t, np.int64)
    boxes = np.empty((t, 4), np.float32)
    sal = np.empty((t, H, W), np.float32) if saliency else None
    t0 = time.perf_counter()
    yield 0, t, "classifying frames"
    for i in range(0, t, int(batch_size)):
        if cancelled is not None and cancelled():
            raise InterruptedError("cancelled")
        sl = slice(i, min(i + int(batch_size), t))
        p, k, s, b = runner.run(frames[sl], saliency, (H, W), box_threshold)
        probs[sl], pred[sl], boxes[sl] = p, k, b
        if saliency:
            sal[sl] = s
        yield sl.stop, t, f"frame {sl.stop}/{t}"
    card = runner.card
    return PlaneResult(
        class_names=runner.class_names, probabilities=probs, predicted=pred, saliency=sal, boxes=boxes,
        best_frames=best_frames_of(probs, pred, runner.class_names),
        model=str(getattr(net, "zoo_name", card.get("name", ""))), model_sha256=str(card.get("sha256", "")),
        seconds=time.perf_counter() - t0,
    )


def detect_planes(video: np.ndarray, model=None, progress: Progress | None = None, saliency: bool = True,
                  batch_size: int = 16, device: str = "auto", box_threshold: float = 0.3) -> PlaneResult:
    """Detect fetal standard planes in every frame of a 2D ultrasound video.

    Parameters
    ----------
    video
        ``(t, H, W)`` grayscale or ``(t, H, W, 3)`` colour frames of any numeric dtype; one
        frame ``(H, W)`` is a one-frame video. Crop vendor text and rulers first for real
        scanner captures (the network sees the whole frame).
    model
        Zoo name (e.g. ``"sononet-16"`` once imported, ``"sononet-phantom"``), checkpoint path,
        a loaded module, or None for the best available model.
    progress
        Called with ``(frames_done, frames_total, message)``.
    saliency
        Compute the guided-backprop x category-map saliency (about 2-3x the time of
        classification alone). Without it ``.saliency`` is None and boxes come from the
        category map.
    batch_size
        Frames per forward pass.
    device
        ``"auto"`` (CUDA, MPS, else CPU), ``"cpu"``, ...
    box_threshold
        Fraction of each saliency map's peak that bounds the box region.
    """
    return drain(detect_planes_steps(video, model, saliency, batch_size, device, box_threshold), progress)


def classify_frame(frame: np.ndarray, model=None, saliency: bool = True, device: str = "auto",
                   box_threshold: float = 0.3) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """One frame ``(H, W)`` or ``(H, W, 3)`` -> ``(probabilities (K,), saliency (H, W) or None,
    box (4,))`` for a live view; the box is NaN for Background. Class names: :func:`model_spec`."""
    arr = np.asarray(frame)
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):
        raise ValueError(f"classify_frame takes one frame (H, W) or (H, W, 3), got shape {arr.shape}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"classify_frame takes one frame (H, W) or (H, W, 3), got a {arr.ndim}-D array")
    frames = validate_video(arr)
    runner = _runner_for(resolve_model(model, device=device))
    p, _, s, b = runner.run(frames, saliency, tuple(frames.shape[-2:]), box_threshold)
    return p[0], (s[0] if s is not None else None), b[0]


_RUNNERS: Any = None   # a weakref.WeakKeyDictionary made on first use: net -> its fused runner


def _runner_for(net) -> _Runner:
    """The fused runner of ``net``, built once per loaded model (live mode calls this per frame)."""
    global _RUNNERS
    import weakref

    if _RUNNERS is None:
        _RUNNERS = weakref.WeakKeyDictionary()
    runner = _RUNNERS.get(net)
    if runner is None or runner.device != next(net.parameters()).device:
        runner = _RUNNERS[net] = _Runner(net)
    return runner


# ----- 3D -------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class StandardPlane:
    """The best view of one class found in a 3D volume by :func:`find_standard_plane`.

    Attributes
    ----------
    plane
        The class searched for.
    score
        Its posterior in the returned view.
    view
        float32 ``(h, w)``: the volume resampled on the plane (the model's input size),
        rows along ``row_axis``, columns along ``col_axis``; zeros outside the volume.
    centre
        ``(z, y, x)`` in voxels: the volume point at the middle of the view.
    row_axis, col_axis, normal
        Unit vectors in physical space, components in ``(z, y, x)`` order: the view's down
        and right directions and their cross product.
    pixel_spacing
        mm per view pixel (square pixels).
    probabilities
        float32 ``(K,)``: all class posteriors of the view.
    class_names
        The model's classes.
    evaluated
        How many candidate planes were scored.
    """

    plane: str
    score: float
    view: np.ndarray
    centre: np.ndarray
    row_axis: np.ndarray
    col_axis: np.ndarray
    normal: np.ndarray
    pixel_spacing: float
    probabilities: np.ndarray
    class_names: tuple
    evaluated: int
    model: str = ""

    def voxel_of(self, rows, cols, spacing) -> np.ndarray:
        """``(z, y, x)`` voxel coordinates of view pixels ``(rows, cols)``."""
        return plane_points(self.centre * np.asarray(spacing, float), self.row_axis, self.col_axis,
                            self.pixel_spacing, self.view.shape, np.asarray(rows), np.asarray(cols)) / np.asarray(spacing, float)


def plane_points(centre_mm, row_axis, col_axis, pixel_mm, shape, rows, cols) -> np.ndarray:
    """Physical ``(z, y, x)`` mm of view pixels ``(rows, cols)`` (arrays of the same shape)."""
    h, w = shape
    r = (np.asarray(rows, float) - (h - 1) / 2.0) * pixel_mm
    c = (np.asarray(cols, float) - (w - 1) / 2.0) * pixel_mm
    return (np.asarray(centre_mm, float) + r[..., None] * np.asarray(row_axis, float)
            + c[..., None] * np.asarray(col_axis, float))


def _frame(normal: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """In-plane unit axes ``(row, col)`` for a unit normal and an in-plane rotation ``angle``:
    angle 0 points the rows as close to +z (depth of the volume's first axis) as the plane allows."""
    n = normal / np.linalg.norm(normal)
    ref = np.array([1.0, 0.0, 0.0]) if abs(n[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    a = ref - n * (ref @ n)
    a /= np.linalg.norm(a)
    b = np.cross(n, a)
    row = math.cos(angle) * a + math.sin(angle) * b
    col = np.cross(n, row)
    return row, col


def _hemisphere(n: int) -> np.ndarray:
    """``n`` roughly uniform unit normals on a hemisphere (Fibonacci lattice), ``(n, 3)``."""
    i = np.arange(n) + 0.5
    z = 1 - i / n                      # cos(polar) in (0, 1]: one hemisphere (a plane's normal
    r = np.sqrt(1 - z ** 2)            # and its opposite give the same plane)
    phi = np.pi * (3 - np.sqrt(5)) * i
    return np.stack([z, r * np.cos(phi), r * np.sin(phi)], axis=1)


def sample_planes(volume_t, spacing, centres_mm, rows, cols, shape, pixel_mm):
    """Trilinear samples of a ``(1, 1, Z, Y, X)`` tensor on planes -> ``(B, 1, h, w)``."""
    import torch
    import torch.nn.functional as F

    h, w = shape
    dev = volume_t.device
    r = (torch.arange(h, dtype=torch.float32, device=dev) - (h - 1) / 2) * pixel_mm
    c = (torch.arange(w, dtype=torch.float32, device=dev) - (w - 1) / 2) * pixel_mm
    cen = torch.as_tensor(np.asarray(centres_mm), dtype=torch.float32, device=dev)
    ra = torch.as_tensor(np.asarray(rows), dtype=torch.float32, device=dev)
    ca = torch.as_tensor(np.asarray(cols), dtype=torch.float32, device=dev)
    pts = (cen[:, None, None, :] + r[None, :, None, None] * ra[:, None, None, :]
           + c[None, None, :, None] * ca[:, None, None, :])                    # (B, h, w, 3) mm
    sp = torch.as_tensor(spacing, dtype=torch.float32, device=dev)
    size = torch.as_tensor(volume_t.shape[-3:], dtype=torch.float32, device=dev)
    g = pts / sp / (size - 1).clamp_min(1) * 2 - 1                              # (z, y, x) in -1..1
    grid = g.flip(-1)[:, None]                                                  # (B, 1, h, w, xyz)
    B = grid.shape[0]
    out = F.grid_sample(volume_t.expand(B, -1, -1, -1, -1), grid, mode="bilinear",
                        padding_mode="zeros", align_corners=True)
    return out[:, :, 0]


def find_standard_plane(
    volume: np.ndarray,
    plane: str,
    model=None,
    spacing: Sequence[float] | None = None,
    field_of_view_mm: float | None = None,
    n_normals: int = 16,
    n_angles: int = 1,
    n_offsets: int | None = None,
    offset_step_mm: float = 5.0,
    refine_rounds: int = 4,
    keep: int = 4,
    batch_size: int = 8,
    device: str = "auto",
    progress: Progress | None = None,
) -> StandardPlane:
    """Search a 3D ultrasound volume for the plane with the highest posterior of class ``plane``.

    A plane is a centre point, a unit normal and an in-plane rotation; its view is the volume
    resampled trilinearly on the model's input grid with square pixels, the view's height
    covering ``field_of_view_mm`` (default: the card's ``input.field_of_view_mm``, the depth of
    the frames the model was trained on, else the volume's largest extent).

    1. Coarse: ``n_normals`` normals on a hemisphere x ``n_angles`` in-plane rotations (1: the
       rows point as close to the volume's first axis, the depth, as the plane allows) x
       ``n_offsets`` offsets along the normal through the volume centre (default: every
       ``offset_step_mm`` across the volume; a standard plane's score falls within a few mm
       along its normal, while it stays high for tilts of 20-30 deg, so positions need the
       finer sampling). Each is sampled as one
       *large* view covering the whole cross-section, and since SonoNet is fully convolutional
       one pass gives the class score of every sub-view of the input size: the category maps
       averaged over sliding windows of the input's map size, softmaxed over classes. The best
       window gives the candidate's score and its in-plane centre.
    2. Refine: the ``keep`` best candidates that differ (more than 20 deg or 10 mm apart) are
       rescored as views of the input size and each improved by a pattern search: one parameter
       at a time (tilt of the normal in two directions, rotation, shift along the normal and in
       the plane, +- a step); a candidate that improves keeps its steps, one that does not halves
       them, until the tilt step is below 1 deg (at most ``3 * refine_rounds`` rounds).

    Parameters
    ----------
    volume
        ``(z, y, x)`` any numeric dtype.
    plane
        A class name of the model (e.g. ``"4CH"``, ``"Brain (Tv.)"``); not Background.
    spacing
        ``(dz, dy, dx)`` mm (default 1 mm isotropic).
    progress
        Called with ``(candidates_scored, candidates_planned, message)``.
    """
    import torch
    import torch.nn.functional as F

    vol = np.asarray(volume)
    if vol.size == 0:
        raise ValueError("the volume is empty")
    if vol.ndim != 3:
        raise ValueError(f"expected a 3D volume (z, y, x), got a {vol.ndim}-D array {vol.shape}")
    if np.iscomplexobj(vol) or not (np.issubdtype(vol.dtype, np.number) or vol.dtype == bool):
        raise ValueError(f"the volume must be real-valued numbers, got {vol.dtype}")
    if min(vol.shape) < 2:
        raise ValueError(f"a volume of shape {vol.shape} has no extent along one axis")
    vol = vol.astype(np.float32, copy=False)
    if not np.all(np.isfinite(vol)):
        raise ValueError("the volume contains NaN or Inf values")
    sp = np.ones(3) if spacing is None else np.asarray(spacing, float).ravel()
    if sp.size != 3 or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be three positive numbers (dz, dy, dx) in mm, got {spacing}")
    if n_offsets is None:
        if not offset_step_mm > 0:
            raise ValueError(f"offset_step_mm must be positive, got {offset_step_mm}")
        ext = (np.array(vol.shape) - 1) * sp
        n_offsets = max(1, int(math.ceil(0.8 * float(np.linalg.norm(ext)) / float(offset_step_mm))) + 1)
    for name, v, lo in (("n_normals", n_normals, 1), ("n_angles", n_angles, 1), ("n_offsets", n_offsets, 1),
                        ("refine_rounds", refine_rounds, 0), ("keep", keep, 1), ("batch_size", batch_size, 1)):
        if int(v) < lo:
            raise ValueError(f"{name} must be at least {lo}, got {v}")
    net = resolve_model(model, device=device)
    runner = _Runner(net)
    if plane not in runner.class_names:
        raise ValueError(f"unknown plane {plane!r}; this model knows: {', '.join(runner.class_names)}")
    if plane == "Background":
        raise ValueError("'Background' is not a standard plane to search for")
    target = runner.class_names.index(plane)
    extent = (np.array(vol.shape) - 1) * sp
    fov = field_of_view_mm or runner.card.get("input", {}).get("field_of_view_mm") or float(extent.max())
    fov = float(fov)
    if not fov > 0:
        raise ValueError(f"field_of_view_mm must be positive, got {field_of_view_mm}")
    h, w = runner.size
    pixel_mm = fov / h
    mult = 16
    centre0 = extent / 2.0
    diag = float(np.linalg.norm(extent))
    big = int(math.ceil(max(diag / pixel_mm, h, w) / mult) * mult)       # a square view over any section
    vt = torch.from_numpy(vol)[None, None].to(runner.device)
    n_coarse = int(n_normals) * int(n_angles) * int(n_offsets)
    planned = n_coarse + int(keep) + int(refine_rounds) * int(keep) * 12
    evaluated = 0

    def tell(msg):
        if progress is not None:
            progress(evaluated, max(planned, evaluated), msg)

    # ---- coarse: tiles a little larger than the input, every sub-view scored from the maps ----
    # (a tile much larger than the input changes the per-image normalisation and the context the
    # category maps see, and the window scores drift from the input-size scores)
    normals = _hemisphere(int(n_normals))
    angles = np.arange(int(n_angles)) * (2 * np.pi / int(n_angles))
    offsets = np.linspace(-0.4, 0.4, int(n_offsets)) * diag if int(n_offsets) > 1 else np.zeros(1)

    def reaches(n):      # offsets along this normal at which the plane still cuts the volume
        half = 0.5 * float(np.abs(n) @ extent)
        return [d for d in offsets if abs(d) <= half] or [0.0]

    th_, tw_ = (int(math.ceil(1.4 * h / mult) * mult), int(math.ceil(1.4 * w / mult) * mult))
    reach = big * pixel_mm / 2                          # half the largest cross-section, mm

    def tile_offsets(tile_px, win_px):
        span = max(0.0, 2 * reach - tile_px * pixel_mm)
        m = max(1, int(math.ceil(span / max((tile_px - win_px) * pixel_mm, 1e-6))) + 1)
        return np.linspace(-span / 2, span / 2, m) if m > 1 else np.zeros(1)

    tr, tc = tile_offsets(th_, h), tile_offsets(tw_, w)
    coarse = [(n, float(a), float(d)) for n in normals for a in angles for d in reaches(n)]
    wh, ww = h // mult, w // mult
    cands = []          # (score, centre_mm, normal, angle)
    items = []
    for n, a, d in coarse:
        row, col = _frame(n, a)
        base = centre0 + d * n
        for dr in tr:
            for dc in tc:
                items.append((n, a, base + dr * row + dc * col, row, col))
    # tiles mostly outside the volume are dropped before the network (a coarse look at their centre
    # region: 9 x 9 samples)
    keep_items = []
    for i in range(0, len(items), 256):
        chunk = items[i:i + 256]
        with torch.inference_mode():
            probe = sample_planes(vt, sp, np.stack([c for _, _, c, _, _ in chunk]),
                                  np.stack([r for _, _, _, r, _ in chunk]), np.stack([c for *_, c in chunk]),
                                  (9, 9), pixel_mm * th_ / 9)
        inside = (probe[:, 0] != 0).flatten(1).float().mean(dim=1) >= 0.1
        keep_items += [it for it, ok in zip(chunk, inside.tolist()) if ok]
    items = keep_items or items[:1]
    n_coarse = len(items)
    planned = n_coarse + int(keep) + int(refine_rounds) * int(keep) * 12
    for i in range(0, len(items), int(batch_size)):
        chunk = items[i:i + int(batch_size)]
        with torch.inference_mode():
            views = sample_planes(vt, sp, np.stack([c for _, _, c, _, _ in chunk]),
                                  np.stack([r for _, _, _, r, _ in chunk]), np.stack([c for *_, c in chunk]),
                                  (th_, tw_), pixel_mm)
            empty = (views[:, 0] == 0).flatten(1).float().mean(dim=1) > 0.9     # tiles outside the volume
            x = runner.prepare(views[:, 0].cpu().numpy(), resize=False)
            maps = run_chain(runner.chain, x)
            win = F.avg_pool2d(maps, (wh, ww), stride=1)                      # (B, K, nh, nw) window scores
            post = torch.softmax(win, dim=1)[:, target]
            flat = post.flatten(1)
            best, where = flat.max(dim=1)
        nw_ = win.shape[-1]
        cell_r, cell_c = th_ / maps.shape[-2], tw_ / maps.shape[-1]         # view pixels per map cell
        for j, (n, a, cen, row, col) in enumerate(chunk):
            if bool(empty[j]):
                continue
            r, c = divmod(int(where[j]), nw_)
            # window centre in view pixels -> mm from the tile centre along row / column axes
            dr = ((r + wh / 2) * cell_r - th_ / 2) * pixel_mm
            dc = ((c + ww / 2) * cell_c - tw_ / 2) * pixel_mm
            cands.append((float(best[j]), cen + dr * row + dc * col, n, a))
        evaluated += len(chunk)
        tell(f"coarse search: {evaluated}/{n_coarse} views")

    def score_views(items):
        """Posterior of the target for views of the input size: items (centre_mm, normal, angle)."""
        nonlocal evaluated
        out = np.empty(len(items), np.float32)
        for i in range(0, len(items), int(batch_size)):
            chunk = items[i:i + int(batch_size)]
            fr = [_frame(n, a) for _, n, a in chunk]
            with torch.inference_mode():
                views = sample_planes(vt, sp, np.stack([c for c, _, _ in chunk]), np.stack([f[0] for f in fr]),
                                      np.stack([f[1] for f in fr]), (h, w), pixel_mm)
            p, _, _, _ = runner.run(views[:, 0].cpu().numpy(), saliency=False)
            out[i:i + len(chunk)] = p[:, target]
            evaluated += len(chunk)
            tell("refining")
        return out

    # diverse seeds: the best candidates, skipping any within 20 deg and 10 mm of a better one
    cands.sort(key=lambda item: -item[0])
    seeds: list = []
    for _, c, n, a in cands:
        if all(abs(float(n @ m)) < math.cos(math.radians(20.0)) or np.linalg.norm(c - cc) > 10.0
               for cc, m, _ in seeds):
            seeds.append((c, n, a))
        if len(seeds) == int(keep):
            break
    best = sorted(zip(score_views(seeds).tolist(), seeds), key=lambda item: -item[0])   # as input-size views
    # pattern search from every seed: move one parameter at a time (tilt of the normal in two
    # directions, in-plane rotation, shift along the normal and in the plane); a seed that
    # improves keeps its steps, one that does not halves them, until the tilt step is small
    tilt0 = math.radians(60.0 / math.sqrt(int(n_normals)))
    step0 = float(offsets[1] - offsets[0]) / 2 if len(offsets) > 1 else 0.05 * diag
    state = [[sc, cand, tilt0, np.pi / int(n_angles) / 2, step0] for sc, cand in best]
    rounds = 0
    while rounds < int(refine_rounds) * 3 and any(st[2] > math.radians(1.0) for st in state):
        rounds += 1
        trial, owner = [], []
        for si, (_, (c, n, a), tilt, rot, step) in enumerate(state):
            if tilt <= math.radians(1.0):
                continue
            row, col = _frame(n, a)
            for sgn in (-1.0, 1.0):
                for axis in (row, col):                               # tilt the normal, keep the rows
                    n2 = n * math.cos(tilt) + sgn * math.sin(tilt) * axis
                    r0, c0 = _frame(n2, 0.0)
                    trial.append((c, n2, math.atan2(float(row @ c0), float(row @ r0))))
                trial.append((c, n, a + sgn * rot))
                trial.append((c + sgn * step * n, n, a))
                trial.append((c + sgn * step * row, n, a))
                trial.append((c + sgn * step * col, n, a))
                owner += [si] * 6
        scores = score_views(trial)
        improved = set()
        for sc, cand, si in zip(scores.tolist(), trial, owner):
            if sc > state[si][0] + 1e-4:
                state[si][0], state[si][1] = sc, cand
                improved.add(si)
        for si, st in enumerate(state):
            if si not in improved:
                st[2], st[3], st[4] = st[2] / 2, st[3] / 2, st[4] / 2
    best = sorted([(st[0], st[1]) for st in state], key=lambda item: -item[0])
    _, (cen_mm, n, a) = best[0]
    row, col = _frame(n, a)
    n = np.cross(row, col)
    with torch.inference_mode():
        view = sample_planes(vt, sp, cen_mm[None], row[None], col[None], (h, w), pixel_mm)[0, 0].cpu().numpy()
    p, _, _, _ = runner.run(view[None], saliency=False)
    card = runner.card
    return StandardPlane(
        plane=plane, score=float(p[0, target]), view=view.astype(np.float32), centre=np.asarray(cen_mm) / sp,
        row_axis=row, col_axis=col, normal=n, pixel_spacing=pixel_mm, probabilities=p[0],
        class_names=runner.class_names, evaluated=evaluated,
        model=str(getattr(net, "zoo_name", card.get("name", ""))),
    )


__all__ = ["PlaneResult", "StandardPlane", "classify_frame", "detect_planes", "detect_planes_steps",
           "find_standard_plane", "validate_video"]
