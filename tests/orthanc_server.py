"""A real DICOMweb server for the tests: Orthanc with its DICOMweb plugin, on localhost.

:func:`orthanc` starts ``Orthanc`` (Debian packages ``orthanc`` and ``orthanc-dicomweb``,
installed by ``.ci/setup.sh``) as a child process with a generated configuration: HTTP on a
free port of 127.0.0.1 only, no DICOM port, storage and index in a temporary folder, HTTP
basic authentication with a test user, the DICOMweb plugin at ``/dicom-web/``. It waits until
the server answers and stops it (its own process, by its pid) afterwards. The Debian service
is never used.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

PLUGIN_CANDIDATES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
                     "/usr/lib/orthanc/libOrthancDicomWeb.so")
USER, PASSWORD = "medlearn", "test-secret"
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Orthanc:
    """A running test server: ``url`` is the DICOMweb root, ``rest`` Orthanc's own REST API."""

    url: str
    rest: str
    user: str
    password: str
    log: Path

    def rest_get(self, path: str):
        """GET on Orthanc's REST API (authenticated), parsed JSON."""
        req = urllib.request.Request(self.rest + path)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)


def orthanc_binary() -> str | None:
    """The Orthanc executable and its DICOMweb plugin, or None when either is missing."""
    exe = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    return exe if exe and plugin_path() else None


def plugin_path() -> str | None:
    return next((p for p in PLUGIN_CANDIDATES if Path(p).exists()), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def orthanc(folder: Path) -> Iterator[Orthanc]:
    """Run Orthanc with its storage in ``folder`` until the block ends."""
    exe = orthanc_binary()
    if exe is None:
        raise RuntimeError("Orthanc or its DICOMweb plugin is not installed (bash .ci/setup.sh)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "medlearn-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": port,
        "HttpServerEnabled": True,
        "RemoteAccessAllowed": False,        # 127.0.0.1 only
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "DicomServerEnabled": False,         # no DICOM port
        "DicomPort": free_port(),            # if this Orthanc ignores the switch above: a free one
        "Plugins": [plugin_path()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False},
        "ConcurrentJobs": 1,
        "HttpThreadsCount": 4,
        "StorageCompression": False,
    }
    cfg = folder / "orthanc.json"
    cfg.write_text(json.dumps(config, indent=1))
    log = folder / "orthanc.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([exe, str(cfg)], stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    rest = f"http://127.0.0.1:{port}"
    server = Orthanc(url=f"{rest}/dicom-web", rest=rest, user=USER, password=PASSWORD, log=log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with status {proc.returncode}: "
                                   f"{log.read_text()[-2000:]}")
            try:
                server.rest_get("/system")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not answer within {START_TIMEOUT_S:g} s: "
                                       f"{log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
