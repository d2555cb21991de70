"""Weights that are valid files but not valid models: NaN/Inf values, outputs that overflow,
and checkpoints that ``torch.load(weights_only=True)`` refuses.

A file with the right tensor names and shapes loads without complaint even when its values
are NaN (a diverged training, a corrupted conversion) or so large that the first layers
overflow; the model then writes all-NaN images with exit status 0. :func:`problem` finds both
before such weights enter the zoo or a run: every floating tensor of the state dict must be
finite, and so must the output on a tiny probe input (the smallest shape the architecture
accepts, so the check costs milliseconds, see :data:`PROBES`).

:func:`torch_load` is the one way ``src/`` reads a ``.pt`` file: ``weights_only=True``, and
refusals reworded into one line of our own, since torch's own message advises re-running with
``weights_only=False``, which would execute whatever code the file carries.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

#: torch names the global it refused: "GLOBAL numpy.random._pickle.__generator_ctor was not an allowed global"
_GLOBAL_RE = re.compile(r"GLOBAL (\S+) was not an allowed global")


class UnsafeFileError(ValueError):
    """A ``.pt`` file that is not plain tensors and containers (pickled code objects)."""


def torch_load(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line refusals.

    A file holding pickled objects raises :class:`UnsafeFileError` naming the objects; any
    other unreadable file a ``ValueError`` naming the file and the reason. Neither passes on
    torch's advice to switch ``weights_only`` off. ``FileNotFoundError`` passes through.
    """
    import pickle

    import torch

    name = os.fspath(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        found = sorted(set(_GLOBAL_RE.findall(str(e))))
        what = f"it holds pickled code objects: {', '.join(found)}" if found else "it holds pickled objects"
        raise UnsafeFileError(f"{name} is not a plain weights file ({what}); medlearn only loads tensors") from None
    except Exception as e:  # truncated files, foreign formats
        raise ValueError(f"{name} is not a readable weights file (truncated, or not written by torch.save: "
                         f"{_reason(e)})") from None


def _reason(e: Exception) -> str:
    """The first line of an exception, without any advice about ``weights_only``."""
    first = (str(e).strip().splitlines() or [""])[0]
    first = re.sub(r"\x1b\[[0-9;]*m", "", first)
    if "weights_only" in first or "weights only" in first.lower() or not first:
        return type(e).__name__
    return f"{type(e).__name__}: {first}"


# ---------------------------------------------------------------------------------------------
# Probe inputs: the smallest shape each architecture accepts (seconds would defeat the purpose)
def _first_conv_channels(model) -> int:
    from torch import nn

    return next(m.in_channels for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))


def _image_2d(model, randn):
    m = int(model.size_multiple)
    return (randn(1, _first_conv_channels(model), m, m),)


def _volume(model, randn):
    d = int(model.divisor)
    return (randn(1, _first_conv_channels(model), d, d, d),)


def _deepmedic(model, randn):
    return (randn(1, model.in_channels, *model.segment_size((1, 1, 1))),)


def _deep_cascade(model, randn):
    import torch

    shape = (8, 8) if model.dims == 2 else (3, 8, 8)
    mask = torch.zeros(1, 1, *shape)
    mask[..., ::2, :] = 1.0          # every other line along y acquired
    return randn(1, 2, *shape) * mask, mask


def _sr_net(model, randn):
    return (randn(1, 1, 2, 4, 4),)


def _sr_multi(model, randn):
    return (randn(1, model.n_inputs, 4, 4, 4),)


def _acnn(model, randn):
    return (randn(1, model.n_classes, *model.grid).softmax(dim=1),)


#: architecture -> ``(model, randn) -> forward arguments`` of the smallest valid shape
PROBES: dict[str, Callable[..., tuple]] = {
    "bai_fcn": _image_2d, "sononet": _image_2d, "fcn3d": _volume, "unet3d": _volume,
    "deepmedic": _deepmedic, "deep_cascade": _deep_cascade, "sr_net": _sr_net,
    "sr_multi_input": _sr_multi, "acnn_shape": _acnn,
}


def _tensors(out) -> list:
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _tensors(v)]
    return [out] if hasattr(out, "isfinite") else []


def non_finite_tensors(state: dict[str, Any]) -> str | None:
    """``"12 of 40 tensors contain NaN/Inf (first: ...)"`` for the floating tensors of a state
    dict, or None when all are finite."""
    import torch

    floating = {k: v for k, v in state.items()
                if torch.is_tensor(v) and (v.is_floating_point() or v.is_complex())}
    bad = [k for k, v in floating.items() if not bool(torch.isfinite(v).all())]
    if not bad:
        return None
    return f"{len(bad)} of {len(floating)} tensors contain NaN/Inf (first: {bad[0]})"


def probe_output(model, arch: str) -> str | None:
    """What is wrong with the model's output on a tiny probe input of ``arch``, or None.

    The probe is random normal values (seed 0) of the smallest valid shape, in eval mode (the
    model's own mode is restored), without gradients, on the model's device: finite weights
    whose activations overflow give NaN/Inf there too.
    An architecture without a probe (none today) is not probed.
    """
    import torch

    make = PROBES.get(arch)
    if make is None:
        return None
    gen = torch.Generator().manual_seed(0)
    device = next((t.device for t in model.state_dict().values()), torch.device("cpu"))
    args = make(model, lambda *shape: torch.randn(*shape, generator=gen))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = _tensors(model(*(a.to(device) for a in args)))
    except (RuntimeError, ValueError) as e:
        return f"the model fails on a probe input {tuple(args[0].shape)} ({_reason(e)})"
    finally:
        model.train(was_training)
    n_bad = sum(int((~torch.isfinite(t)).sum()) for t in out)
    if n_bad:
        total = sum(t.numel() for t in out)
        return (f"finite weights, but {n_bad} of {total} output values on a probe input "
                f"{tuple(args[0].shape)} are NaN/Inf (the activations overflow)")
    return None


def problem(model, arch: str) -> str | None:
    """Why a loaded model must not be used (non-finite weights or probe output), or None."""
    return non_finite_tensors(model.state_dict()) or probe_output(model, arch)


__all__ = ["PROBES", "UnsafeFileError", "non_finite_tensors", "probe_output", "problem", "torch_load"]
