"""Shared fault fixtures: real filesystems that fail (a full tmpfs, a read-only one), a user
without root's override of file modes, the real ``medlearn`` in a subprocess, and the checks
every fault test makes (exit status, one line on stderr without a traceback, no partial file
under a final name, no temporary left).

Mounting needs root (CI runs as root); without it the full disk is emulated by an ENOSPC raised
when a file is moved into place under the folder (in-process runs only), and the tests that need
a read-only mount are skipped.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from napari_medlearn.imaging.atomic import is_temporary_name


# ----- the real CLI --------------------------------------------------------------------------

def run_medlearn(*args, prefix=(), env=None, timeout=120) -> subprocess.CompletedProcess:
    """``medlearn ARGS`` in a subprocess (``prefix``: e.g. a command dropping capabilities)."""
    cmd = [*prefix, sys.executable, "-m", "napari_medlearn.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def error_line(stderr: str) -> str:
    """The one line of a failed run's stderr (a traceback or a second line fails the test)."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("medlearn: error: "), lines[0]
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Temporaries of the plugin's naming under ``folder`` (anywhere below it)."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if is_temporary_name(p.name))


def assert_all_or_none(folder: Path, names, before: dict[str, bytes] | None = None) -> None:
    """Either none of ``names`` is in ``folder`` or (with ``before``) each is exactly as it was;
    and no temporary is left."""
    before = before or {}
    for n in names:
        p = Path(folder) / n
        if n in before:
            assert p.read_bytes() == before[n], f"{p} changed"
        else:
            assert not os.path.lexists(p), f"{p} was written by a failed run"
    assert leftovers(folder) == []


def snapshot(folder: Path, names) -> dict[str, bytes]:
    return {n: (Path(folder) / n).read_bytes() for n in names if (Path(folder) / n).is_file()}


# ----- filesystems ---------------------------------------------------------------------------

def _can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None


class Mounts:
    """tmpfs mounts made by a test, unmounted in its teardown (lazily if still busy)."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def tmpfs(self, where: Path, size: str = "64k") -> Path:
        where.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        self.points.append(where)
        return where

    def read_only(self, where: Path) -> Path:
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)
        return where

    def fill(self, where: Path, free_pages: int) -> None:
        """Fill the tmpfs at ``where`` so that ``free_pages`` pages stay free."""
        st = os.statvfs(where)
        filler = where / "filler.bin"
        with open(filler, "ab") as f:
            f.write(b"\0" * max(0, (st.f_bavail - free_pages) * st.f_frsize))
        assert os.statvfs(where).f_bavail == free_pages

    def unmount_all(self) -> None:
        for p in reversed(self.points):
            if subprocess.run(["umount", str(p)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(p)], capture_output=True)


@pytest.fixture
def mounts():
    """Make tmpfs mounts (root only; the test is skipped otherwise); all unmounted afterwards."""
    if not _can_mount():
        pytest.skip("mounting a filesystem needs root")
    m = Mounts()
    yield m
    m.unmount_all()


class FullDisk:
    """Folders on (nearly) full filesystems: a real 256 KiB tmpfs each (root), else an ENOSPC
    raised by every move into place under the folder in this process (``monkeypatch``)."""

    def __init__(self, monkeypatch) -> None:
        self.mounts, self.monkeypatch, self.emulated = Mounts(), monkeypatch, not _can_mount()
        self.full: list[str] = []

    def __call__(self, folder: Path, free_pages: int | None = 0) -> Path:
        """``folder`` on its own small filesystem, filled to ``free_pages`` free pages (None: empty)."""
        if self.emulated:
            folder.mkdir(parents=True, exist_ok=True)
        else:
            self.mounts.tmpfs(folder, "256k")
        if free_pages is not None:
            self.fill(folder, free_pages)
        return folder

    def fill(self, folder: Path, free_pages: int) -> None:
        if not self.emulated:
            self.mounts.fill(folder, free_pages)
            return
        self.full.append(str(folder.absolute()) + os.sep)
        if len(self.full) == 1:
            real, full = os.replace, self.full

            def replace(src, dst, *a, **k):
                if any(str(os.path.abspath(dst)).startswith(f) for f in full):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real(src, dst, *a, **k)

            self.monkeypatch.setattr(os, "replace", replace)


@pytest.fixture
def full_disk(monkeypatch):
    """:class:`FullDisk`: ``full_disk(folder, free_pages)``, ``full_disk.fill(folder, free_pages)``;
    unmounted afterwards."""
    disk = FullDisk(monkeypatch)
    yield disk
    disk.mounts.unmount_all()


@pytest.fixture
def no_override():
    """A command prefix that runs a program without root's override of file modes (so chmod
    0o555 forbids writing, as for any user); empty when not root."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return []
    if shutil.which("setpriv"):
        return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--inh-caps=-all", "--"]
    if shutil.which("capsh"):
        pytest.skip("capsh-only machines: use setpriv (util-linux)")
    pytest.skip("no setpriv to drop CAP_DAC_OVERRIDE")


# ----- data ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def cines(tmp_path_factory):
    """Two tiny cardiac cine phantoms (3 frames, 40x48) as NIfTI: ``{"case1": path, "case2": path}``."""
    from napari_medlearn.imaging.io import write_nifti
    from napari_medlearn.samples.cardiac_phantom import cardiac_cine_phantom

    folder = tmp_path_factory.mktemp("cines")
    paths = {}
    for seed in (1, 2):
        image, _ = cardiac_cine_phantom(seed=seed, n_frames=3, matrix=(40, 48), in_plane_spacing=6.0).volumes()
        paths[f"case{seed}"] = write_nifti(image, folder / f"case{seed}.nii.gz")
    return paths


def manifest(path: Path, rows: dict[str, str]) -> Path:
    """A batch manifest (case, image) with ``rows``."""
    path.write_text("case,image\n" + "".join(f"{c},{i}\n" for c, i in rows.items()))
    return path


@pytest.fixture
def fault():
    """The helpers above for a test: ``fault.run``, ``fault.error_line``, ``fault.all_or_none``,
    ``fault.snapshot``, ``fault.leftovers``, ``fault.manifest``."""
    from types import SimpleNamespace

    return SimpleNamespace(run=run_medlearn, error_line=error_line, all_or_none=assert_all_or_none,
                           snapshot=snapshot, leftovers=leftovers, manifest=manifest)


# ----- a real run held at a chosen point -----------------------------------------------------

_HELD = r'''
import os, sys, time
where, marker = sys.argv[1], sys.argv[2]

def hold(real):
    def held(*a, **k):
        result = real(*a, **k) if where == "after-save" else None
        print(marker, flush=True)
        while not os.path.exists(marker):     # until the test says go (or kills this process)
            time.sleep(0.05)
        return result if where == "after-save" else real(*a, **k)
    return held

if where == "after-save":       # a NIfTI written to its temporary name, not yet moved into place
    import nibabel
    nibabel.save = hold(nibabel.save)
else:                           # the model running, the folder held
    import napari_medlearn.methods as methods
    methods.segment_heart = hold(methods.segment_heart)
from napari_medlearn.cli import main
sys.exit(main(sys.argv[3:]))
'''


class Held:
    """``medlearn`` in a subprocess stopped at ``where`` ("after-save": a file written under its
    temporary name; "segment": while the model runs) until :meth:`go` (or a kill)."""

    def __init__(self, tmp_path: Path, where: str, args) -> None:
        self.go_file = tmp_path / f"go-{where}-{os.getpid()}-{id(self)}"
        self.proc = subprocess.Popen([sys.executable, "-c", _HELD, where, str(self.go_file), *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], 120)
        line = self.proc.stdout.readline().strip() if ready else ""
        assert line == str(self.go_file), f"the held run did not get there: {line!r} {self.proc.stderr.read()}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def go(self, timeout: float = 120) -> subprocess.CompletedProcess:
        self.go_file.touch()
        out, err = self.proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def held(tmp_path):
    """``held(where, *args)``: a :class:`Held` run of ``medlearn ARGS``; killed at teardown if still alive."""
    runs: list[Held] = []

    def start(where: str, *args) -> Held:
        runs.append(Held(tmp_path, where, args))
        return runs[-1]

    yield start
    for r in runs:
        if r.proc.poll() is None:
            r.kill()
