"""Named models: weights + model cards, checked by sha256 and loaded safely.

A shipped model is two files: ``weights/<name>.pt`` (a dict ``{"arch", "arch_args",
"state_dict"}`` readable by ``torch.load(weights_only=True)``) and ``cards/<name>.json`` (the
model card: architecture, input spec, label names, training data, licence and command,
held-out metrics, and the sha256 of the weights file). :func:`load` refuses a file whose hash
does not match its card.

A user's own checkpoint (from ``medlearn train`` or :func:`save_checkpoint`) works wherever a
name does: pass its path. It carries its card inside; when a ``.json`` card with a ``sha256``
sits beside it, the hash is checked too.

Official weights published by a paper's authors are not shipped (licences, size): the user
converts their own copy with :func:`import_weights`, which writes ``NAME.pt`` + ``NAME.json``
into the user zoo :func:`user_dir` (``$MEDLEARN_ZOO``, else ``~/.cache/napari-medlearn/zoo``);
names found there work like shipped ones (a shipped name wins a clash).

Weights are checked before use by :mod:`.verify` (on import, on a save into the user zoo, on
every first load of a file): finite values and a finite output on a tiny probe input (verdicts
cached by sha256 within the process). A checkpoint given by path without a card beside it gets a
generated card named after the file (:func:`card`), never the name of the model it came from.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from ..imaging.atomic import atomic_path
from .verify import problem, torch_load

HERE = Path(__file__).parent
WEIGHTS_DIR = HERE / "weights"
CARDS_DIR = HERE / "cards"


def user_dir() -> Path:
    """The user zoo: ``$MEDLEARN_ZOO`` if set, else ``~/.cache/napari-medlearn/zoo``."""
    env = os.environ.get("MEDLEARN_ZOO")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "napari-medlearn" / "zoo"


def _card_path(name: str) -> Path | None:
    """Where the card of zoo name ``name`` lives: the package's cards, then the user zoo."""
    for folder in (CARDS_DIR, user_dir()):
        p = folder / f"{name}.json"
        if p.exists():
            return p
    return None


def _weights_path(name: str) -> Path:
    return (WEIGHTS_DIR if (CARDS_DIR / f"{name}.json").exists() else user_dir()) / f"{name}.pt"


#: (resolved path, sha256, device) -> module; the only global state (see DESIGN.md), with
#: :data:`_VERDICTS`
_CACHE: dict[tuple[str, str, str], Any] = {}
#: sha256 -> what is wrong with those weights ("" when nothing): each file is probed once
_VERDICTS: dict[str, str] = {}


class ModelError(ValueError):
    """A model name, file or card that cannot be used."""


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def available(task: str | None = None) -> list[str]:
    """Names of models that have both a card and weights (optionally for one task): shipped
    ones and those in the user zoo (:func:`user_dir`). An ensemble card (``"kind": "ensemble"``,
    ``"members": [...]``, no weights of its own) is listed when all its members are."""
    names, ensembles = [], []
    for card_path in sorted(CARDS_DIR.glob("*.json")) + sorted(user_dir().glob("*.json")):
        name = card_path.stem
        if name in names or _card_path(name) != card_path:
            continue
        try:
            c = json.loads(card_path.read_text())
        except (OSError, ValueError):
            continue
        if task is not None and c.get("task") != task:
            continue
        if c.get("kind") == "ensemble":
            ensembles.append((name, [str(m) for m in c.get("members", [])]))
        elif _weights_path(name).exists():
            names.append(name)
    names += [n for n, members in ensembles if members and all(m in names for m in members)]
    return names


def default_model(task: str) -> str:
    """The best shipped model for ``task``: the highest ``priority`` in its card."""
    names = available(task)
    if not names:
        raise ModelError(f"no shipped model for task {task!r}")
    return max(names, key=lambda n: (card(n).get("priority", 0), n))


def card(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The model card of a shipped name or a checkpoint path (for a checkpoint without a
    ``.json`` card beside it, the card :func:`generated_card` makes)."""
    path = Path(name_or_path)
    if path.suffix == ".pt" or path.exists():
        side = path.with_suffix(".json")
        if side.exists():
            return json.loads(side.read_text())
        return generated_card(path, _read_checkpoint(path))
    card_path = _card_path(str(name_or_path))
    if card_path is None:
        raise ModelError(
            f"unknown model {str(name_or_path)!r}; shipped models: {', '.join(available()) or 'none'}"
            " (or give the path of a checkpoint)"
        )
    return json.loads(card_path.read_text())


def generated_card(path: Path, ckpt: dict[str, Any], task: str | None = None,
                   sha256: str | None = None) -> dict[str, Any]:
    """The card of a checkpoint that has none beside it.

    Its name is the file's (``"my-checkpoint (file my-checkpoint.pt)"``): the card carried
    inside may still name the model the checkpoint was trained as or copied from (a shipped
    one), and results would then claim to be that model. The rest of the carried card stays
    (task, labels, training); architecture and arguments come from the checkpoint itself; the
    input spec is the carried one, else the default card of its task (``task`` when the
    checkpoint names none), recorded as ``"input_from"``.
    """
    inner = dict(ckpt.get("card", {}) or {})
    c = {**inner, "name": f"{path.stem} (file {path.name})", "generated": True, "file": path.name,
         "sha256": sha256 or sha256_of(path), "architecture": ckpt["arch"],
         "arch_args": dict(ckpt.get("arch_args", {}))}
    if inner.get("name"):
        c["name_in_checkpoint"] = str(inner["name"])
    task = inner.get("task") or task
    if not inner.get("input") and task:
        try:
            source = default_model(str(task))
        except ModelError:
            source = None
        if source is not None and card(source).get("input"):
            c.update(input=card(source)["input"], input_from=source)
    return c


def resolve_device(device: str = "auto"):
    """``"auto"`` -> CUDA if present, else Apple MPS, else CPU; other strings pass to torch."""
    import torch

    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"unknown device {device!r}: {e}") from None
    mps = getattr(torch.backends, "mps", None)
    available = {"cpu": lambda: True, "cuda": torch.cuda.is_available,
                 "mps": lambda: mps is not None and mps.is_available()}.get(dev.type)
    if available is not None and not available():
        raise ModelError(f"device {device!r} is not available on this machine (torch {torch.__version__}); "
                         "use --device auto or cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch_load(path)
    except FileNotFoundError:
        raise ModelError(f"checkpoint not found: {path}") from None
    except ValueError as e:  # pickled objects, truncated files, foreign formats: one line, no torch advice
        raise ModelError(str(e)) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "arch" not in ckpt:
        raise ModelError(f"{path} is not a napari-medlearn checkpoint (needs arch, arch_args, state_dict)")
    return ckpt


def _locate(name_or_path: str | os.PathLike) -> tuple[Path, str | None, dict[str, Any] | None]:
    """Weights path, expected sha256 (or None) and card (None for a checkpoint without one
    beside it: generated once the file is read) for a name or a path."""
    p = Path(name_or_path)
    if p.suffix == ".pt" or p.exists():
        if not p.exists():
            raise ModelError(f"checkpoint not found: {p}")
        side = p.with_suffix(".json")
        if not side.exists():
            return p, None, None
        c = json.loads(side.read_text())
        return p, c.get("sha256"), c
    c = card(str(name_or_path))
    w = _weights_path(str(name_or_path))
    if not w.exists():
        raise ModelError(f"model {name_or_path!r} has a card but its weights file is missing: {w}")
    if "sha256" not in c:
        raise ModelError(f"card of {name_or_path!r} has no sha256")
    return w, c["sha256"], c


def load(name_or_path: str | os.PathLike, device: str = "auto", task: str | None = None):
    """Load a model by zoo name or checkpoint path, in eval mode, on ``device``.

    The returned module has ``.card`` (dict) and ``.zoo_name`` attributes. The weights file's
    sha256 is checked against its card before ``torch.load(..., weights_only=True)``. With
    ``task``, a model whose card names another task (one not starting with ``task``) is
    refused with a :class:`ModelError` naming both, before its weights are read (after, for a
    checkpoint without a card beside it: its task is inside). The weights must be finite and
    give a finite output on a tiny probe input (:func:`check_weights`, once per file and
    process): a matching sha256 only says the file is the one its card was written for, and
    ``medlearn train --ship`` writes that card for whatever the training produced. A
    checkpoint without a card gets a :func:`generated_card` named after the file.
    """
    from .. import nets

    path, expected, c = _locate(name_or_path)
    if task is not None and c is not None:
        _check_task(name_or_path, c.get("task") or _checkpoint_task(path), task)
    actual = sha256_of(path)
    if expected is not None and actual != expected:
        raise ModelError(f"sha256 mismatch for {path.name}: card says {expected[:12]}..., file is {actual[:12]}...")
    dev = resolve_device(device)
    key = (str(path.resolve()), actual, str(dev))
    if key in _CACHE:
        if task is not None and c is None:
            _check_task(name_or_path, _CACHE[key].card.get("task"), task)
        return _CACHE[key]
    ckpt = _read_checkpoint(path)
    if c is None:
        c = generated_card(path, ckpt, task, sha256=actual)
        if task is not None:
            _check_task(name_or_path, c.get("task"), task)
    model = nets.build(ckpt["arch"], **dict(ckpt.get("arch_args", {})))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ModelError(f"weights in {path.name} do not fit architecture {ckpt['arch']}: {e}") from None
    check_weights(model.eval(), ckpt["arch"], path.name, sha256=actual)
    model.to(dev)
    model.card = {**dict(ckpt.get("card", {})), **c, "sha256": actual}
    model.zoo_name = c.get("name", path.stem)
    _CACHE[key] = model
    return model


def check_weights(model, arch: str, label: str, sha256: str | None = None) -> None:
    """Refuse (:class:`ModelError` naming ``label``) weights with NaN/Inf values or a
    non-finite output on a tiny probe input (:func:`.verify.problem`). With ``sha256`` the
    verdict is cached: a file is probed once per process."""
    reason = _VERDICTS.get(sha256) if sha256 else None
    if reason is None:
        reason = problem(model, arch) or ""
        if sha256:
            _VERDICTS[sha256] = reason
    if reason:
        raise ModelError(f"weights in {label}: {reason}; refusing")


def _checkpoint_task(path: Path) -> str | None:
    """The task in a checkpoint's own card (a .pt given by path, without a sidecar card)."""
    try:
        return dict(_read_checkpoint(path).get("card", {}) or {}).get("task")
    except ModelError:
        return None


def _check_task(name, has: str | None, wanted: str) -> None:
    if has and not str(has).startswith(wanted):
        raise ModelError(f"model {Path(str(name)).name} is a {has} model; this needs a {wanted} model")


def save_checkpoint(model, path: str | os.PathLike, arch: str, arch_args: dict[str, Any],
                    card: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                    check: bool | None = None) -> str:
    """Write a loadable checkpoint atomically; return its sha256.

    ``extra`` may hold tensors and plain values (optimizer state, epoch) for resuming.
    ``check`` runs :func:`check_weights` first (nothing is written for broken weights); by
    default only for a file saved into the user zoo, where it would be used by name.
    """
    import torch

    path = Path(path)
    if check is None:
        check = path.parent.resolve() == user_dir().resolve()
    if check:
        check_weights(model, arch, path.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # plain Python values only: a NumPy scalar in the card would make the file unreadable under
    # torch.load(weights_only=True)
    obj = {"arch": arch, "arch_args": _json_ready(dict(arch_args)), "state_dict": state,
           "card": _json_ready(dict(card or {}))}
    if extra:
        obj.update(extra)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return sha256_of(path)


def _json_ready(obj: Any) -> Any:
    """``obj`` with NumPy scalars as Python numbers and NaN / infinity as ``None``: strict JSON
    has no NaN, and a measure that could not be made is written ``null``, as in the CSVs."""
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:   # NumPy scalar or 0-d array
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Write strict JSON (NaN and infinity as ``null``) to ``path`` via a temporary file and
    ``os.replace``."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(_json_ready(obj), f, indent=2, sort_keys=False, default=float, allow_nan=False)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# Official published weights -> zoo models
def read_npz(path: str | os.PathLike) -> dict[str, Any]:
    """The arrays of a published ``.npz`` (no pickles), or a clear error naming the file."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except Exception as e:  # not a zip, truncated, pickled objects
        raise ModelError(f"cannot read {path} as a NumPy .npz: {type(e).__name__}: {e}") from None


DEEP_CASCADE_PAPER = (
    "J. Schlemper, J. Caballero, J. V. Hajnal, A. N. Price, D. Rueckert, A Deep Cascade of "
    "Convolutional Neural Networks for Dynamic MR Image Reconstruction, IEEE TMI 37(2):491-503, "
    "2018; and IPMI 2017 (arXiv:1703.00555)"
)


def _convert_deep_cascade_d5c5(path: Path) -> tuple[Any, str, dict[str, Any], dict[str, Any]]:
    """The authors' Lasagne ``d5_c5.npz`` -> a ``deep_cascade`` D5-C5 (width 64, 2D).

    The file holds ``arr_0 .. arr_49`` in Lasagne's parameter order: for each of 5 cascades,
    ``W, b`` of conv1 (2->64), conv2..conv4 (64->64) and conv_aggr (64->2). Lasagne's
    ``Conv2DLayer`` defaults to ``flip_filters=True`` (a true convolution), PyTorch computes a
    cross-correlation: each kernel is flipped in both spatial axes.
    """
    import numpy as np
    import torch

    from .. import nets

    arrays = read_npz(path)
    arch_args = {"dims": 2, "n_cascades": 5, "n_layers": 5, "width": 64}
    model = nets.build("deep_cascade", **arch_args)
    expected = []
    for _ in range(5):
        expected += [(64, 2, 3, 3), (64,), (64, 64, 3, 3), (64,), (64, 64, 3, 3), (64,),
                     (64, 64, 3, 3), (64,), (2, 64, 3, 3), (2,)]
    names = [f"arr_{i}" for i in range(len(expected))]
    if sorted(arrays) != sorted(names):
        raise ModelError(f"{path.name} is not the D5-C5 file: expected arrays arr_0..arr_49, "
                         f"found {len(arrays)} ({', '.join(sorted(arrays)[:4])}...)")
    for name, shape in zip(names, expected):
        if arrays[name].shape != shape:
            raise ModelError(f"{path.name}: {name} has shape {arrays[name].shape}, D5-C5 needs {shape}")
    state = {}
    i = 0
    for c in range(5):
        convs = [n for n, m in model.blocks[c].layers.named_children() if isinstance(m, torch.nn.Conv2d)]
        for n in convs:
            w = arrays[f"arr_{i}"][..., ::-1, ::-1]   # flip_filters=True
            state[f"blocks.{c}.layers.{n}.weight"] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
            state[f"blocks.{c}.layers.{n}.bias"] = torch.from_numpy(arrays[f"arr_{i + 1}"].astype(np.float32))
            i += 2
    model.load_state_dict(state)
    licence_file = path.parent / "LICENSE"
    card = {
        "name": "deep-cascade-d5c5",
        "task": "mri-reconstruction-2d",
        # above the shipped demo (10): the paper's own width-64 network generalises across anatomy
        # (brain, shoulder, abdomen in benchmarks/recon.py), the demo is tuned to one brain template
        "priority": 20,
        "description": "Official D5-C5 deep cascade weights of Schlemper et al. (Lasagne, converted); "
                       "2D single-coil Cartesian reconstruction. The default 2D model once imported.",
        "architecture": "deep_cascade", "arch_args": arch_args, "paper": DEEP_CASCADE_PAPER,
        "labels": {}, "output": "complex image, the input's shape (no label classes)",
        "input": {
            "axes": "2D complex images (y, x); Cartesian lines along y (axis -2), readout along x",
            "channels": ["real", "imaginary"],
            "intensity": "k-space divided by the largest magnitude of its zero-filled image "
                         "(imaging.kspace.intensity_scale); the output is scaled back",
            "fft": "orthonormal, centred (norm='ortho')",
        },
        "training": {
            "data": "trained by the authors (js3611/Deep-MRI-Reconstruction, models/pretrained/d5_c5.npz); "
                    "see their repository and paper",
            "command": "converted with napari_medlearn.zoo.import_weights('deep-cascade-d5c5', PATH)",
        },
        "conversion": {
            "source": str(path.name), "source_sha256": sha256_of(path),
            "notes": "Lasagne Conv2DLayer flip_filters=True: kernels flipped in both spatial axes for "
                     "PyTorch's cross-correlation; ReLU after conv1-conv4, linear conv_aggr, residual, "
                     "noiseless data consistency, as in the authors' cascade_resnet + DCLayer",
        },
        "licence": {
            "weights": "Apache-2.0",
            "copyright": "Copyright 2017 Jo Schlemper",
            "notice": "Licensed under the Apache License, Version 2.0 "
                      "(http://www.apache.org/licenses/LICENSE-2.0); distributed on an \"AS IS\" BASIS, "
                      "WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND. Converted by the user from their own "
                      "copy; not redistributed with napari-medlearn.",
            **({"licence_file_text": licence_file.read_text(errors="replace").strip()}
               if licence_file.is_file() else {}),
        },
        "intended_use": "research use only, not for diagnosis",
    }
    return model, "deep_cascade", arch_args, card


#: kind -> converter ``(path) -> (model, arch, arch_args, card)``
IMPORTERS = {"deep-cascade-d5c5": _convert_deep_cascade_d5c5}

from .sononet_import import SONONET_IMPORTERS  # noqa: E402  (SonoNet-16/32/64, Baumgartner et al.)

IMPORTERS.update(SONONET_IMPORTERS)


def import_weights(kind: str, path: str | os.PathLike, out: str | os.PathLike | None = None) -> str:
    """Convert officially published weights into a zoo model; return its name (or path).

    Parameters
    ----------
    kind
        Which published file this is: ``"deep-cascade-d5c5"`` (Schlemper et al.'s Lasagne
        ``d5_c5.npz``, Apache-2.0); ``"sononet-16"``, ``"sononet-32"``, ``"sononet-64"``
        (Baumgartner et al.'s Lasagne ``SonoNet16.npz`` etc., Apache-2.0).
    path
        The user's copy of that file.
    out
        Folder for ``NAME.pt`` + ``NAME.json`` (card with sha256 and licence). Default: the user
        zoo (:func:`user_dir`), and the return value is the zoo name, usable wherever a shipped
        name is. With another folder the return value is the ``.pt`` path.
    """
    if kind not in IMPORTERS:
        raise ValueError(f"weights kind {kind!r} not supported; known: {', '.join(sorted(IMPORTERS))}")
    src = Path(path).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such file")
    model, arch, arch_args, c = IMPORTERS[kind](src)
    check_weights(model, arch, src.name)
    folder = Path(out).expanduser() if out is not None else user_dir()
    name = c["name"]
    weights = folder / f"{name}.pt"
    c["sha256"] = save_checkpoint(model, weights, arch, arch_args, card=c, check=False)
    _VERDICTS[c["sha256"]] = ""
    write_json_atomic(c, weights.with_suffix(".json"))
    for key in [k for k in _CACHE if k[0] == str(weights.resolve())]:
        del _CACHE[key]
    in_zoo = folder.resolve() == user_dir().resolve() and _card_path(name) == weights.with_suffix(".json")
    return name if in_zoo else str(weights)


__all__ = [
    "IMPORTERS", "ModelError", "available", "card", "check_weights", "default_model", "generated_card",
    "import_weights", "load", "resolve_device", "save_checkpoint", "sha256_of", "torch_load", "user_dir",
    "write_json_atomic",
]
