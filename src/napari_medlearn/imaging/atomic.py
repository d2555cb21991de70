"""Atomic file output: write to a fresh temporary sibling, then ``os.replace``.

A reader never sees a half-written file, and a failed write leaves the old file (if any)
untouched. The temporary name keeps the target's suffix (``.nii.gz``, ``.npy``), so libraries
that choose a format from the name write the right one, and it is created with mode 0o666
under the umask, like any new file (``mkstemp``'s 0o600 would survive the rename).
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    Examples
    --------
    >>> with atomic_path("out/labels.nii.gz") as tmp:   # doctest: +SKIP
    ...     nib.save(img, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    suffix = "".join(path.suffixes[-2:]) if name.lower().endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".{name}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))   # reserve the name
    except OSError as e:       # name the file the user asked for, not the temporary one
        raise type(e)(e.errno, f"cannot write {path}: {e.strerror}") from None
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
