"""MR image reconstruction from undersampled Cartesian k-space with a deep cascade of CNNs.

J. Schlemper et al., "A Deep Cascade of Convolutional Neural Networks for Dynamic MR Image
Reconstruction", IEEE TMI 37(2):491-503, 2018.

Input is complex k-space (orthonormal, centred, :mod:`napari_medlearn.imaging.kspace`) and a
boolean mask that broadcasts to it; values outside the mask are ignored. Shapes:

- ``(y, x)``: one image;
- ``(z, y, x)``: a stack of slices, each reconstructed on its own by a 2D model;
- ``(t, y, x)`` with ``dynamic=True``: a cine, reconstructed as one sequence by a 2D+t model
  (k-space data sharing across frames), or frame by frame when only a 2D model is at hand;
- ``(t, z, y, x)``: a cine of slices (``dynamic=True``: one sequence per slice).

Networks are trained with lines along ``y`` (axis -2); a mask that acquires whole columns
instead is handled by swapping the in-plane axes on the way in and out.
Each image (or sequence) is divided by :func:`~napari_medlearn.imaging.kspace.intensity_scale`
of its zero-filled image before the network sees it, as in training, and scaled back. With a
noiseless data-consistency model the acquired samples are put back once more in double
precision at the end, so the output's sampled k-space equals the input's to float32 rounding.

``reconstruct_steps`` yields ``(done, total, message)`` and returns a :class:`ReconResult` (for a
GUI worker); ``reconstruct`` drains it (CLI, batch, tests).

The networks learnt MR images (magnitudes, background 0). :func:`simulate` acquires a real
image with negative values (z-scored, e.g. BraTS's ``*_subtrMeanDivStd``) after subtracting its
minimum, and returns that offset for ``reconstruct(..., offset=...)`` to add back to both
results. Such a result is shown, saved and scored by its real part
(:attr:`ReconResult.display`), which keeps the signs a magnitude would fold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Generator

import numpy as np

from ..imaging import kspace as K
from .cardiac import drain

TASK_2D = "mri-reconstruction-2d"
TASK_2DT = "mri-reconstruction-2dt"
Progress = Callable[[int, int, str], Any]


@dataclass(frozen=True, eq=False)
class ReconResult:
    """What :func:`reconstruct` produced.

    Attributes
    ----------
    image
        complex64, the input k-space's shape: the reconstruction.
    zero_filled
        complex64, same shape: the inverse FFT of the undersampled k-space (the baseline).
    mask
        bool, same shape: where k-space was acquired.
    axes
        ``"yx"``, ``"zyx"``, ``"tyx"`` or ``"tzyx"``: how the input was read.
    model_name, model_sha256
        Which weights produced this.
    seconds
        Wall time of the reconstruction (model loading excluded).
    offset
        0, or the (negative) minimum of a real image that :func:`simulate` subtracted before the
        acquisition; already added back to ``image`` and ``zero_filled``.
    """

    image: np.ndarray
    zero_filled: np.ndarray
    mask: np.ndarray
    axes: str
    model_name: str = ""
    model_sha256: str = ""
    seconds: float = 0.0
    offset: float = 0.0

    @property
    def acceleration(self) -> float:
        """Samples in a full acquisition / samples acquired."""
        return K.acceleration_of(self.mask)

    @property
    def magnitude(self) -> np.ndarray:
        """``abs(image)`` as float32."""
        return np.abs(self.image).astype(np.float32)

    @property
    def signed(self) -> bool:
        """The source was a real image with negative values (``offset < 0``): show real parts."""
        return self.offset < 0

    @property
    def display(self) -> np.ndarray:
        """The reconstruction to show and save, float32: its magnitude, or its real part when
        :attr:`signed` (a magnitude would fold the source's negative values)."""
        return (self.image.real if self.signed else np.abs(self.image)).astype(np.float32)

    @property
    def zero_filled_display(self) -> np.ndarray:
        """The zero-filled image as :attr:`display` shows the reconstruction."""
        return (self.zero_filled.real if self.signed else np.abs(self.zero_filled)).astype(np.float32)


def validate_kspace(kspace: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check k-space and mask; return complex64 k-space (zero outside the mask) and a bool mask
    of the same shape. ``ValueError`` with a plain message for anything unusable."""
    k = np.asarray(kspace)
    if k.size == 0:
        raise ValueError("the k-space is empty")
    if not np.issubdtype(k.dtype, np.number):
        raise ValueError(f"k-space must be complex numbers, got {k.dtype}")
    if not np.iscomplexobj(k):
        raise ValueError(
            f"k-space must be complex-valued, got real {k.dtype} data (an image?): simulate its k-space "
            "with imaging.kspace.simulate_kspace, or use the image input of the widget / CLI")
    if k.ndim not in (2, 3, 4):
        raise ValueError(f"expected k-space (y, x), (z, y, x), (t, y, x) or (t, z, y, x), got a {k.ndim}-D "
                         f"array {k.shape}")
    if k.shape[-1] < 8 or k.shape[-2] < 8:
        raise ValueError(f"in-plane size {k.shape[-2:]} is too small (need at least 8x8)")
    if not np.all(np.isfinite(k)):
        raise ValueError("the k-space contains NaN or Inf values")
    m = np.asarray(mask)
    if m.size == 0:
        raise ValueError("the mask is empty")
    if m.dtype != bool:
        if not np.issubdtype(m.dtype, np.number) or np.iscomplexobj(m):
            raise ValueError(f"the mask must be boolean or 0/1 numbers, got {m.dtype}")
        if not np.all(np.isfinite(m)):
            raise ValueError("the mask contains NaN or Inf values")
        if not np.all((m == 0) | (m == 1)):
            raise ValueError("the mask must hold only 0 and 1 (or True/False)")
    try:
        shape = np.broadcast_shapes(m.shape, k.shape)
    except ValueError:
        shape = None
    if shape != k.shape:
        raise ValueError(f"a mask of shape {m.shape} does not broadcast to the k-space shape {k.shape}")
    m = np.broadcast_to(m.astype(bool, copy=False), k.shape).copy()
    if not m.any():
        raise ValueError("the mask is all zeros: no k-space sample was acquired, nothing to reconstruct")
    per_image = m.reshape(-1, *k.shape[-2:]).any(axis=(1, 2))
    if not per_image.all():
        raise ValueError(f"the mask acquires nothing for image {int(np.argmin(per_image))} of "
                         f"{per_image.size} (all zeros there)")
    k = np.where(m, k, 0).astype(np.complex64, copy=False)
    return k, m


def simulate(image: np.ndarray, acceleration: float = 4.0, pattern: str = "cartesian", centre_lines: int = 8,
             seed: int | None = 0, per_frame: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Simulate an undersampled acquisition of a real image: ``(kspace, mask, offset)``.

    ``offset`` is the image's minimum when negative, else 0; the k-space is that of
    ``image - offset`` (the networks learnt MR images with background 0, not z-scores). Pass it
    on to :func:`reconstruct` to get results on the image's own scale. Arguments as for
    :func:`napari_medlearn.imaging.kspace.simulate_acquisition`.
    """
    x = np.asarray(image)
    if np.iscomplexobj(x) or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"the image must be real numbers, got {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise ValueError("the image contains NaN or Inf values")
    low = float(x.min()) if x.size else 0.0
    offset = low if low < 0 else 0.0
    k, mask = K.simulate_acquisition(x - offset if offset else x, acceleration, pattern, centre_lines, seed,
                                     per_frame=per_frame)
    return k, mask, offset


def _model_dims(net) -> int:
    dims = getattr(net, "dims", None)
    if dims is None:
        dims = int((getattr(net, "card", {}) or {}).get("arch_args", {}).get("dims", 2))
    return int(dims)


def resolve_model(model=None, dynamic: bool = False, device: str = "auto"):
    """A loaded module for ``model`` (module, zoo name, checkpoint path, or None for the best
    model for the input: the default 2D+t model for dynamic input when one exists, else 2D)."""
    from .. import zoo

    if hasattr(model, "forward"):
        return model
    if model:
        return zoo.load(model, device=device, task="mri-reconstruction")
    if dynamic and zoo.available(TASK_2DT):
        return zoo.load(zoo.default_model(TASK_2DT), device=device)
    if not zoo.available(TASK_2D):
        raise zoo.ModelError(
            "no reconstruction model available: train one (medlearn train recon-2d --ship) or convert "
            "the official weights (zoo.import_weights('deep-cascade-d5c5', 'd5_c5.npz'))")
    return zoo.load(zoo.default_model(TASK_2D), device=device)


def _exact_consistency(image: np.ndarray, k: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Put the acquired samples back in double precision (removes float32 FFT rounding)."""
    kk = K.fft2c(image.astype(np.complex128))
    kk[m] = k[m]
    return K.ifft2c(kk).astype(np.complex64)


def lines_along_x(mask: np.ndarray) -> bool:
    """True when a mask acquires whole columns (constant along y) rather than rows: the
    in-plane axes are then swapped for the network, which was trained with lines along y."""
    m = np.asarray(mask, dtype=bool)
    flat = m.reshape(-1, *m.shape[-2:])
    rows_constant = bool(np.all(flat == flat[:, :, :1]))
    cols_constant = bool(np.all(flat == flat[:, :1, :]))
    return cols_constant and not rows_constant


def _run(net, k: np.ndarray, m: np.ndarray, dev) -> np.ndarray:
    """Network on a batch: complex ``(B, [T,] H, W)`` k-space + bool mask -> complex image."""
    import torch

    from ..nets.cascade import to_channels, to_complex

    with torch.inference_mode():
        kt = to_channels(torch.from_numpy(np.ascontiguousarray(k))).to(dev)
        mt = torch.from_numpy(np.ascontiguousarray(m))[:, None].to(dev)
        out = to_complex(net(kt, mt)).cpu().numpy()
    return out.astype(np.complex64, copy=False)


def reconstruct_steps(
    kspace: np.ndarray,
    mask: np.ndarray,
    model=None,
    device: str = "auto",
    dynamic: bool = False,
    batch_size: int = 4,
    cancelled: Callable[[], bool] | None = None,
    offset: float = 0.0,
) -> Generator[tuple[int, int, str], None, ReconResult]:
    """Reconstruct, yielding ``(images_done, images_total, message)``; returns the result.

    ``images`` are 2D images for a 2D model and sequences for a 2D+t model. ``offset`` (from
    :func:`simulate`) is added to the reconstruction and the zero-filled image.
    """
    offset = float(offset)
    if not np.isfinite(offset) or offset > 0:
        raise ValueError(f"offset must be a finite number <= 0 (from simulate), got {offset}")
    k, m = validate_kspace(kspace, mask)
    if dynamic and k.ndim == 2:
        raise ValueError("dynamic reconstruction needs a sequence (t, y, x), got a single image")
    axes = {2: "yx", 3: "tyx" if dynamic else "zyx", 4: "tzyx"}[k.ndim]
    net = resolve_model(model, dynamic=dynamic, device=device)
    dims = _model_dims(net)
    if dims == 3 and not (dynamic and k.ndim >= 3):
        name = getattr(net, "zoo_name", "this model")
        raise ValueError(f"{name} reconstructs 2D+t sequences: give a cine (t, y, x) and set dynamic "
                         f"(got {axes})")
    card = getattr(net, "card", {}) or {}
    dev = next(net.parameters()).device
    swap = lines_along_x(m)
    if swap:
        k, m = np.swapaxes(k, -1, -2).copy(), np.swapaxes(m, -1, -2).copy()
    H, W = k.shape[-2:]
    zf = K.ifft2c(k)
    out = np.empty_like(zf)
    t0 = time.perf_counter()
    if dims == 3:
        # sequences (t, y, x): the whole cine, or one per slice of (t, z, y, x)
        seq_k = k if k.ndim == 3 else np.moveaxis(k, 1, 0)
        seq_m = m if m.ndim == 3 else np.moveaxis(m, 1, 0)
        seq_zf = zf if zf.ndim == 3 else np.moveaxis(zf, 1, 0)
        seq_k, seq_m, seq_zf = (a.reshape(-1, *a.shape[-3:]) for a in (seq_k, seq_m, seq_zf))
        total = seq_k.shape[0]
        results = []
        yield 0, total, "reconstructing"
        for i in range(total):
            if cancelled is not None and cancelled():
                raise InterruptedError("cancelled")
            s = K.intensity_scale(seq_zf[i])
            results.append(_run(net, seq_k[i:i + 1] / s, seq_m[i:i + 1], dev)[0] * s)
            yield i + 1, total, f"sequence {i + 1}/{total}"
        res = np.stack(results)
        if k.ndim == 3:
            out[...] = res[0]
        else:
            out[...] = np.moveaxis(res, 0, 1)
    else:
        flat_k, flat_m, flat_zf = (a.reshape(-1, H, W) for a in (k, m, zf))
        flat_out = out.reshape(-1, H, W)
        total = flat_k.shape[0]
        yield 0, total, "reconstructing"
        for i in range(0, total, batch_size):
            if cancelled is not None and cancelled():
                raise InterruptedError("cancelled")
            sl = slice(i, min(i + batch_size, total))
            scales = np.array([K.intensity_scale(z) for z in flat_zf[sl]], dtype=np.float32)[:, None, None]
            flat_out[sl] = _run(net, flat_k[sl] / scales, flat_m[sl], dev) * scales
            yield sl.stop, total, f"image {sl.stop}/{total}"
    noiseless = all(getattr(dc, "lam", None) is None for dc in getattr(net, "dcs", []))
    if noiseless:
        out = _exact_consistency(out, k, m)
    if swap:
        out, zf, m = (np.swapaxes(a, -1, -2).copy() for a in (out, zf, m))
    seconds = time.perf_counter() - t0
    if offset:
        out, zf = out + np.float32(offset), zf + np.float32(offset)
    return ReconResult(
        image=out.astype(np.complex64, copy=False), zero_filled=zf.astype(np.complex64, copy=False), mask=m,
        axes=axes, model_name=str(getattr(net, "zoo_name", card.get("name", ""))),
        model_sha256=str(card.get("sha256", "")), seconds=seconds, offset=offset,
    )


def reconstruct(kspace: np.ndarray, mask: np.ndarray, model=None, device: str = "auto",
                dynamic: bool = False, progress: Progress | None = None, batch_size: int = 4,
                offset: float = 0.0) -> ReconResult:
    """Reconstruct MR images from undersampled Cartesian k-space.

    Parameters
    ----------
    kspace
        complex ``(y, x)``, ``(z, y, x)``, ``(t, y, x)`` or ``(t, z, y, x)``; orthonormal centred
        FFT convention; values where ``mask`` is 0 are ignored.
    mask
        bool or 0/1, broadcastable to ``kspace`` (e.g. ``(y, x)`` or ``(y, 1)`` for all slices, or
        ``(t, y, x)`` with one pattern per frame).
    model
        Zoo name, checkpoint path, a loaded module, or None for the best available model for
        the input (2D+t for ``dynamic`` input when there is one).
    dynamic
        The first axis is time (a cine): use a 2D+t model's data sharing across frames.
    device
        ``"auto"`` (CUDA, MPS, else CPU), ``"cpu"``, ...
    progress
        Called with ``(done, total, message)``.
    offset
        What :func:`simulate` subtracted from the image (0 for acquired k-space).
    """
    return drain(reconstruct_steps(kspace, mask, model, device, dynamic, batch_size, offset=offset), progress)


def reconstruction_quality(reference: np.ndarray, image: np.ndarray) -> dict[str, float]:
    """PSNR (dB) and SSIM of a reconstruction against its reference (:func:`imaging.measures.image_quality`)."""
    from ..imaging.measures import image_quality

    return image_quality(reference, image)
