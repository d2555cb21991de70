"""One inference layer under the methods: the network forward on the best backend for the machine.

On a CPU, torch's eager path spends most of a network's time in the runtime, not the arithmetic
(``benchmarks/speed.py`` measures torch, ONNX Runtime and OpenVINO on every shipped architecture;
OpenVINO was the faster and leaner of the two runtimes): there a model runs as an ONNX export
under OpenVINO, in float32, or in bfloat16 where the CPU has it and the card's
``inference.mixed_precision`` allows it (backend ``"openvino-bf16"``). On CUDA / MPS torch
stays, with autocast when the card allows mixed precision.

An export is made once per weights and input signature and cached in the user zoo
(``zoo.user_dir() / "exports"``) under a name made of the weights' sha256 and the signature, so a
change of weights can never run an old export. Each export has its own sha256 written beside it:
a damaged file is detected and rebuilt, never run. An export is checked against torch on its
example input before use; an architecture that cannot be exported (or whose export disagrees)
runs under torch, with a one-line note (:attr:`Engine.note`, also a ``RuntimeWarning``).

``backend``: ``"auto"`` (the CPU runtime on CPU when installed, torch elsewhere), ``"torch"``, or
``"onnx"`` (the CPU runtime, refused in one line with what to install when it is missing).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

BACKENDS = ("auto", "torch", "onnx")
#: the CPU runtime that runs exports (chosen by benchmarks/speed.py; ONNX Runtime is its peer there)
RUNTIME = "openvino"
INSTALL = "pip install openvino onnx"
#: bumped when the export recipe changes, so old exports are not reused
EXPORT_VERSION = 1
OPSET = 17
#: an export whose output on its example differs from torch's by more than this (relative to the
#: output's range, at least 1) is not used; bfloat16 keeps ~3 significant digits
EXPORT_TOLERANCE = {"f32": 1e-3, "bf16": 5e-2}

class BackendError(ValueError):
    """A backend that is unknown or not installed."""


class OutOfMemoryError(MemoryError, ValueError):
    """The network ran out of memory on this input: a user-fixable problem (a ValueError, so the
    CLI, batch and the widgets report it in one line), not a crash."""


#: how the runtimes say they ran out of memory (torch's allocators, OpenVINO's C++ bad_alloc)
_OOM_WORDS = ("out of memory", "can't allocate memory", "failed to allocate", "bad_alloc", "cannot allocate memory")


def runtime_installed() -> bool:
    """Whether the CPU runtime and the ONNX exporter's package are importable."""
    return all(importlib.util.find_spec(m) is not None for m in (RUNTIME, "onnx"))


def check_backend(backend: str | None) -> str:
    """``backend`` normalised (None -> ``"auto"``); :class:`BackendError` in one line when it is
    unknown, or ``"onnx"`` without the runtime installed."""
    b = str(backend or "auto").lower()
    if b == RUNTIME:
        b = "onnx"
    if b not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if b == "onnx" and not runtime_installed():
        raise BackendError(f"backend 'onnx' needs {RUNTIME} and onnx, which are not installed: {INSTALL}")
    return b


def export_dir() -> Path:
    """Where exports are cached: ``exports/`` in the user zoo."""
    from . import zoo

    return zoo.user_dir() / "exports"


def weights_key(model) -> str:
    """What identifies ``model``'s weights in an export's name: the weights file's sha256 (its
    card's, "" for a module built in memory) and a sha256 of the state dict itself, so weights
    changed in memory after loading never reuse an export of the old ones. The state hash is
    remembered per module while no parameter has been modified in place (torch's version counters)."""
    state = model.state_dict()
    versions = tuple(v._version for v in state.values())
    memo = _STATE_SHA.get(model)
    if memo is None or memo[0] != versions:
        h = hashlib.sha256()
        for k, v in state.items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        memo = _STATE_SHA[model] = (versions, h.hexdigest())
    file_sha = str((getattr(model, "card", {}) or {}).get("sha256", "")) or "memory"
    return f"{file_sha[:16]}-{memo[1][:16]}"


#: module -> (its parameters' version counters, sha256 of its state dict); weak, so a new module
#: that happens to reuse a freed one's address is hashed afresh
_STATE_SHA: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def signature(model, shapes: Sequence[Sequence[int]], dynamic: Sequence[Sequence[int]]) -> str:
    """What an export depends on besides the weights: architecture, its arguments, input shapes
    (dynamic axes as ``?``), the export recipe and torch's version."""
    import torch

    card = getattr(model, "card", {}) or {}
    parts = [type(model).__name__, str(card.get("architecture", "")), repr(sorted(card.get("arch_args", {}).items())),
             torch.__version__, f"v{EXPORT_VERSION}", f"opset{OPSET}"]
    for shape, dyn in zip(shapes, dynamic):
        parts.append("x".join("?" if a in dyn else str(int(n)) for a, n in enumerate(shape)))
    return ";".join(parts)


def _file_sha(path: Path) -> str:
    from .zoo import sha256_of

    return sha256_of(path)


def cached_export(model, examples: Sequence[Any], dynamic: Sequence[Sequence[int]]) -> Path:
    """The ONNX export of ``model`` for inputs like ``examples`` (torch tensors): reused from the
    cache when its recorded sha256 matches, else (missing, damaged) made anew. Raises what the
    exporter raises for an architecture it cannot export."""
    from .imaging.atomic import atomic_path

    shapes = [tuple(e.shape) for e in examples]
    sig = signature(model, shapes, dynamic)
    name = f"{weights_key(model)}-{hashlib.sha256(sig.encode()).hexdigest()[:16]}"
    folder = export_dir()
    path, side = folder / f"{name}.onnx", folder / f"{name}.onnx.sha256"
    if path.is_file() and side.is_file():
        recorded = side.read_text().split()[0] if side.read_text().split() else ""
        if recorded == _file_sha(path):
            return path
        warnings.warn(f"cached export {path.name} is damaged (its sha256 differs from the one recorded): rebuilding",
                      RuntimeWarning, stacklevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        _export(model, examples, dynamic, Path(tmp))
    with atomic_path(side) as tmp:
        Path(tmp).write_text(f"{_file_sha(path)}  {path.name}\n{sig}\n")
    return path


def _export(model, examples, dynamic, out: Path) -> None:
    import torch

    names = [f"input{i}" for i in range(len(examples))]
    axes = {n: {int(a): f"{n}_d{a}" for a in dyn} for n, dyn in zip(names, dynamic) if dyn}
    axes["output"] = {0: "output_d0"} if any(0 in d for d in dynamic) else {}
    # the exporter prints its whole graph (from C++) when it fails: the caller says it in one line instead
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), _quiet_fds():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(examples), str(out), input_names=names,
                          output_names=["output"], dynamic_axes=axes or None, opset_version=OPSET,
                          dynamo=False)


@contextlib.contextmanager
def _quiet_fds():
    """Standard output and error (the file descriptors, which C++ writes to) to /dev/null."""
    import os
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError):
            pass
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [null]:
            os.close(fd)


def _compile(path: Path, threads: int, precision: str):
    """The export compiled by OpenVINO for the CPU (dynamic axes stay dynamic: measured as fast
    as a static compile on the cardiac FCN, and one compile serves every slice size)."""
    import openvino as ov

    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": max(1, int(threads)), "PERFORMANCE_HINT": "LATENCY",
           "INFERENCE_PRECISION_HINT": precision}
    return core.compile_model(core.read_model(str(path)), "CPU", cfg)


def cpu_has_bf16() -> bool:
    """Whether OpenVINO runs bfloat16 natively on this CPU (else a bf16 hint would be emulated)."""
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001  no runtime, or a build that does not say
        return False


@dataclass(eq=False)
class Engine:
    """A model's forward on one backend: call it with torch tensors, get the torch output.

    ``backend`` is ``"torch"`` or the runtime's name; ``note`` says why torch runs when another
    backend was asked for or expected ("" otherwise).
    """

    model: Any
    backend: str = "torch"
    note: str = ""
    session: Any = None
    autocast: bool = False

    def __call__(self, *inputs):
        try:
            return self._run(*inputs)
        except MemoryError:
            raise OutOfMemoryError(self._oom(inputs)) from None
        except RuntimeError as e:
            if any(w in str(e).lower() for w in _OOM_WORDS):
                raise OutOfMemoryError(self._oom(inputs)) from None
            raise

    def _oom(self, inputs) -> str:
        name = getattr(self.model, "zoo_name", type(self.model).__name__)
        shape = "x".join(str(n) for n in inputs[0].shape)
        return (f"out of memory running {name} under {self.backend} on an input of {shape} voxels: crop or "
                "downsample the image, or use a smaller tile / batch")

    def _run(self, *inputs):
        import torch

        if self.session is None:
            dev = inputs[0].device
            if self.autocast:
                with torch.autocast(device_type=dev.type):
                    return self.model(*inputs).float()
            return self.model(*inputs)
        out = self.session([x.detach().cpu().contiguous().numpy() for x in inputs])[0]
        return torch.from_numpy(np.array(out, dtype=np.float32)).to(inputs[0].device)   # a copy: the
        # request's buffer is reused by the next call


#: (weights key, signature, threads) -> Engine: a session per process, not per call
_ENGINES: dict[tuple, Engine] = {}


def engine(model, examples: Sequence[Any], backend: str = "auto",
           dynamic: Sequence[Sequence[int]] | None = None) -> Engine:
    """The :class:`Engine` running ``model`` on inputs shaped like ``examples`` (torch tensors on
    the model's device; ``dynamic`` lists, per input, the axes that may vary between calls:
    default none, a new shape makes a new export).

    CPU + ``auto``/``onnx`` -> the cached export under the runtime (bfloat16 where the CPU has it
    and the card's ``inference.mixed_precision`` is true); CUDA / MPS (or ``torch``) -> torch,
    autocast where the card allows mixed precision. ``onnx`` on a GPU model runs the export on
    the CPU: asked for explicitly.
    """
    import torch

    b = check_backend(backend)
    dev = next(model.parameters()).device
    card = getattr(model, "card", {}) or {}
    if b == "torch" or (b == "auto" and dev.type != "cpu"):
        mixed = dev.type in ("cuda", "mps") and bool(card.get("inference", {}).get("mixed_precision"))
        return Engine(model, "torch", autocast=mixed)
    if not runtime_installed():   # auto without the runtime
        return Engine(model, "torch", note=f"{RUNTIME} is not installed, running torch ({INSTALL})")
    dynamic = [tuple(d) for d in (dynamic or [()] * len(examples))]
    # a dynamic batch axis: export and check on the first item only (the forward is paid twice)
    cpu_examples = [e.detach().cpu()[:1] if 0 in d else e.detach().cpu() for e, d in zip(examples, dynamic)]
    precision = "bf16" if bool(card.get("inference", {}).get("mixed_precision")) and cpu_has_bf16() else "f32"
    key = (weights_key(model), signature(model, [tuple(e.shape) for e in examples], dynamic),
           torch.get_num_threads(), precision, str(dev))
    if key in _ENGINES:
        return _ENGINES[key]
    try:
        path = _export_on_cpu(model, cpu_examples, dynamic)
        eng = Engine(model, RUNTIME + ("-bf16" if precision == "bf16" else ""),
                     session=_compile(path, torch.get_num_threads(), precision))
        problem = _disagreement(model, eng, cpu_examples, EXPORT_TOLERANCE[precision])
    except Exception as e:  # noqa: BLE001  any exporter / runtime failure means: torch runs it
        problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    if problem:
        name = getattr(model, "zoo_name", type(model).__name__)
        eng = Engine(model, "torch", note=f"{name} cannot run under {RUNTIME} ({problem}); running torch")
        warnings.warn(eng.note, RuntimeWarning, stacklevel=2)   # the CLI prints it as one line, napari notifies
    _ENGINES[key] = eng
    return eng


def _export_on_cpu(model, examples, dynamic) -> Path:
    """Export from a CPU copy of the weights when the model lives elsewhere (the export is a CPU one)."""
    dev = next(model.parameters()).device
    if dev.type == "cpu":
        return cached_export(model, examples, dynamic)
    import copy

    clone = copy.deepcopy(model).cpu()
    return cached_export(clone, examples, dynamic)


def _disagreement(model, eng: Engine, examples, tolerance: float) -> str:
    """"" when the export's output on ``examples`` matches torch's within ``tolerance`` times
    the output's range (at least 1), else what differs."""
    import torch

    with torch.inference_mode():
        ref = model(*[e.to(next(model.parameters()).device) for e in examples]).float().cpu()
        got = eng(*examples).float().cpu()
    if tuple(ref.shape) != tuple(got.shape):
        return f"export output shape {tuple(got.shape)} differs from torch's {tuple(ref.shape)}"
    diff = float((ref - got).abs().max()) if ref.numel() else 0.0
    scale = max(1.0, float(ref.abs().max()) if ref.numel() else 0.0)
    if not np.isfinite(diff) or diff > tolerance * scale:
        return f"export differs from torch by {diff:.3g} on its example"
    return ""


def clear() -> None:
    """Forget the sessions made in this process (exports on disk stay)."""
    _ENGINES.clear()


__all__ = ["BACKENDS", "BackendError", "Engine", "INSTALL", "OutOfMemoryError", "RUNTIME", "cached_export", "check_backend",
           "clear", "cpu_has_bf16", "engine", "export_dir", "runtime_installed", "signature", "weights_key"]
