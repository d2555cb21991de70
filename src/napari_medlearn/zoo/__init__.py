"""Named models: weights + model cards, checked by sha256 and loaded safely.

A shipped model is two files: ``weights/<name>.pt`` (a dict ``{"arch", "arch_args",
"state_dict"}`` readable by ``torch.load(weights_only=True)``) and ``cards/<name>.json`` (the
model card: architecture, input spec, label names, training data, licence and command,
held-out metrics, and the sha256 of the weights file). :func:`load` refuses a file whose hash
does not match its card.

A user's own checkpoint (from ``medlearn train`` or :func:`save_checkpoint`) works wherever a
name does: pass its path. It carries its card inside; when a ``.json`` card with a ``sha256``
sits beside it, the hash is checked too.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
WEIGHTS_DIR = HERE / "weights"
CARDS_DIR = HERE / "cards"

#: (resolved path, sha256, device) -> module; the only global state (see DESIGN.md)
_CACHE: dict[tuple[str, str, str], Any] = {}


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
    """Names of shipped models that have both a card and weights (optionally for one task)."""
    names = []
    for card_path in sorted(CARDS_DIR.glob("*.json")):
        name = card_path.stem
        if not (WEIGHTS_DIR / f"{name}.pt").exists():
            continue
        if task is not None and json.loads(card_path.read_text()).get("task") != task:
            continue
        names.append(name)
    return names


def default_model(task: str) -> str:
    """The best shipped model for ``task``: the highest ``priority`` in its card."""
    names = available(task)
    if not names:
        raise ModelError(f"no shipped model for task {task!r}")
    return max(names, key=lambda n: (card(n).get("priority", 0), n))


def card(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The model card of a shipped name or a checkpoint path."""
    path = Path(name_or_path)
    if path.suffix == ".pt" or path.exists():
        side = path.with_suffix(".json")
        if side.exists():
            return json.loads(side.read_text())
        return dict(_read_checkpoint(path).get("card", {}))
    card_path = CARDS_DIR / f"{name_or_path}.json"
    if not card_path.exists():
        raise ModelError(
            f"unknown model {str(name_or_path)!r}; shipped models: {', '.join(available()) or 'none'}"
            " (or give the path of a checkpoint)"
        )
    return json.loads(card_path.read_text())


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
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"unknown device {device!r}: {e}") from None


def _read_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"checkpoint not found: {path}") from None
    except Exception as e:  # pickle errors, truncated files, foreign formats
        raise ModelError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "arch" not in ckpt:
        raise ModelError(f"{path} is not a napari-medlearn checkpoint (needs arch, arch_args, state_dict)")
    return ckpt


def _locate(name_or_path: str | os.PathLike) -> tuple[Path, str | None, dict[str, Any]]:
    """Weights path, expected sha256 (or None) and card for a name or a path."""
    p = Path(name_or_path)
    if p.suffix == ".pt" or p.exists():
        if not p.exists():
            raise ModelError(f"checkpoint not found: {p}")
        c = card(p)
        side = p.with_suffix(".json")
        expected = c.get("sha256") if side.exists() else None
        return p, expected, c
    c = card(str(name_or_path))
    w = WEIGHTS_DIR / f"{name_or_path}.pt"
    if not w.exists():
        raise ModelError(f"model {name_or_path!r} has a card but its weights file is missing: {w}")
    if "sha256" not in c:
        raise ModelError(f"card of {name_or_path!r} has no sha256")
    return w, c["sha256"], c


def load(name_or_path: str | os.PathLike, device: str = "auto"):
    """Load a model by zoo name or checkpoint path, in eval mode, on ``device``.

    The returned module has ``.card`` (dict) and ``.zoo_name`` attributes. The weights file's
    sha256 is checked against its card before ``torch.load(..., weights_only=True)``.
    """
    from .. import nets

    path, expected, c = _locate(name_or_path)
    actual = sha256_of(path)
    if expected is not None and actual != expected:
        raise ModelError(f"sha256 mismatch for {path.name}: card says {expected[:12]}..., file is {actual[:12]}...")
    dev = resolve_device(device)
    key = (str(path.resolve()), actual, str(dev))
    if key in _CACHE:
        return _CACHE[key]
    ckpt = _read_checkpoint(path)
    model = nets.build(ckpt["arch"], **dict(ckpt.get("arch_args", {})))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ModelError(f"weights in {path.name} do not fit architecture {ckpt['arch']}: {e}") from None
    model.eval().to(dev)
    model.card = {**dict(ckpt.get("card", {})), **c, "sha256": actual}
    model.zoo_name = c.get("name", path.stem)
    _CACHE[key] = model
    return model


def save_checkpoint(model, path: str | os.PathLike, arch: str, arch_args: dict[str, Any],
                    card: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> str:
    """Write a loadable checkpoint atomically; return its sha256.

    ``extra`` may hold tensors and plain values (optimizer state, epoch) for resuming.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    obj = {"arch": arch, "arch_args": dict(arch_args), "state_dict": state, "card": dict(card or {})}
    if extra:
        obj.update(extra)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return sha256_of(path)


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Write JSON to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=float)
        f.write("\n")
    os.replace(tmp, path)


__all__ = [
    "ModelError", "available", "card", "default_model", "load",
    "resolve_device", "save_checkpoint", "sha256_of", "write_json_atomic",
]
