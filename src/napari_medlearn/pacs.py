"""A DICOMweb client for a PACS: find studies (QIDO-RS), retrieve series (WADO-RS), store
results (STOW-RS), through `dicomweb-client <https://dicomweb-client.readthedocs.io>`_.

Credentials come from the environment only, never from the command line, a file or the URL
(which end up in shell histories and logs): ``MEDLEARN_PACS_TOKEN`` (sent as a bearer token),
else ``MEDLEARN_PACS_USER`` and ``MEDLEARN_PACS_PASSWORD`` (HTTP basic). HTTPS certificates are
verified (requests' default; ``REQUESTS_CA_BUNDLE`` names a hospital's own CA). Every failure
is one :class:`PacsError` line naming the URL (without credentials) and the HTTP status.

Storing is idempotent: before sending, the server is asked which of the instances it already
holds (by SOPInstanceUID), and those are skipped; instances go one request each, so a STOW that
fails half-way reports what was stored and what was not, and running it again sends only the
rest.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

__all__ = ["PacsError", "StoreResult", "connect", "find", "retrieve", "store", "safe_url"]

TOKEN_ENV, USER_ENV, PASSWORD_ENV = "MEDLEARN_PACS_TOKEN", "MEDLEARN_PACS_USER", "MEDLEARN_PACS_PASSWORD"
TIMEOUT_S = 30.0


class PacsError(Exception):
    """A PACS request failed: one line with the URL and the HTTP status or network problem."""


@dataclass(frozen=True)
class StoreResult:
    stored: list[str]            # SOPInstanceUIDs sent and accepted now
    skipped: list[str]           # already on the server
    failed: list[tuple[str, str]]   # (SOPInstanceUID, reason)

    def summary(self) -> str:
        text = f"stored {len(self.stored)}, already there {len(self.skipped)}"
        return text + (f", failed {len(self.failed)}" if self.failed else "")


def safe_url(url: str) -> str:
    """``url`` without any user:password part, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PacsError(f"{safe_url(url) or url!r} is not a DICOMweb URL (http[s]://host/path)")
    if parts.username or parts.password:
        raise PacsError(f"{safe_url(url)}: credentials in the URL are refused; set {USER_ENV} and "
                        f"{PASSWORD_ENV} (or {TOKEN_ENV}) in the environment instead")
    return url.rstrip("/")


def _session():
    """A requests session authenticated from the environment (certificates verified)."""
    import requests

    session = requests.Session()
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or True
    token = os.environ.get(TOKEN_ENV)
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif user:
        session.auth = (user, password or "")
    return session


def connect(url: str):
    """A ``DICOMwebClient`` for ``url`` (the DICOMweb root, e.g. ``https://pacs/dicom-web``)."""
    from dicomweb_client.api import DICOMwebClient

    url = _check_url(url)
    client = DICOMwebClient(url, session=_session(), timeout=TIMEOUT_S)
    # dicomweb-client retries every failed request (a refused connection too) 5 times with
    # 2-16 s pauses: half a minute before a down server is reported. One retry after 1 s
    # still rides out a busy server's 503.
    client.set_http_retry_params(retry=True, max_attempts=2, wait_exponential_multiplier=500)
    return client


def _fail(url: str, exc: BaseException, what: str) -> PacsError:
    """One line for a failed request: the URL, the HTTP status, and what it means."""
    import requests

    where = safe_url(url)
    response = getattr(exc, "response", None)
    if response is not None:
        status = response.status_code
        hint = {401: "credentials refused or missing (" + f"{USER_ENV}/{PASSWORD_ENV} or {TOKEN_ENV})",
                403: "access forbidden for these credentials", 404: "not found"}.get(status, response.reason or "")
        return PacsError(f"{where}: {what} failed: HTTP {status} {hint}".rstrip())
    if isinstance(exc, requests.exceptions.SSLError):
        return PacsError(f"{where}: {what} failed: HTTPS certificate not trusted (set REQUESTS_CA_BUNDLE to "
                         "the hospital's CA file)")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return PacsError(f"{where}: {what} failed: cannot connect (server down or unreachable)")
    if isinstance(exc, requests.exceptions.Timeout):
        return PacsError(f"{where}: {what} failed: no answer within {TIMEOUT_S:g} s")
    return PacsError(f"{where}: {what} failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")


def _call(url: str, what: str, fn: Callable, *args, **kwargs):
    import requests

    try:
        return fn(*args, **kwargs)
    except (requests.exceptions.RequestException, OSError) as exc:
        raise _fail(url, exc, what) from None


def _value(record: dict, tag: str, default: str = "") -> str:
    """A QIDO-RS JSON attribute as text (PersonName as its Alphabetic form)."""
    v = (record.get(tag) or {}).get("Value") or []
    if not v:
        return default
    first = v[0]
    if isinstance(first, dict):
        return str(first.get("Alphabetic", ""))
    return str(first)


_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"
_PAGE = 500


def _search(url: str, what: str, fn: Callable, key: str, **kwargs) -> list[dict]:
    """All results of a QIDO-RS search, page by page. dicomweb-client's ``get_remaining``
    loops for ever on servers that ignore ``offset`` (Orthanc 1.10's plugin): a page that
    brings no new ``key`` ends the search instead."""
    rows: list[dict] = []
    seen: set[str] = set()
    offset = 0
    while True:
        page = _call(url, what, fn, limit=_PAGE, offset=offset, **kwargs) or []
        fresh = [r for r in page if _value(r, key) not in seen]
        seen.update(_value(r, key) for r in fresh)
        rows += fresh
        if len(page) < _PAGE or not fresh:
            return rows
        offset += len(page)


def find(url: str, patient_id: str | None = None, modality: str | None = None,
         study_uid: str | None = None) -> list[dict[str, Any]]:
    """The series of the matching studies: one dict per series with ``study_uid``,
    ``patient_id``, ``study_date``, ``study_description``, ``series_uid``, ``modality``,
    ``series_description``, ``series_number`` and ``instances``."""
    client = connect(url)
    filters: dict[str, str] = {}
    if patient_id:
        filters["PatientID"] = patient_id
    if study_uid:
        filters["StudyInstanceUID"] = study_uid
    if modality:
        filters["ModalitiesInStudy"] = modality
    studies = _search(url, "QIDO-RS study search", client.search_for_studies, _STUDY_UID, search_filters=filters)
    rows = []
    for st in studies:
        uid = _value(st, _STUDY_UID)
        series_filters = {"Modality": modality} if modality else None
        series = _search(url, "QIDO-RS series search", client.search_for_series, _SERIES_UID,
                         study_instance_uid=uid, search_filters=series_filters,
                         fields=["NumberOfSeriesRelatedInstances", "SeriesDescription"])
        for se in series:
            rows.append({
                "study_uid": uid, "patient_id": _value(st, "00100020"), "study_date": _value(st, "00080020"),
                "study_description": _value(st, "00081030"), "series_uid": _value(se, _SERIES_UID),
                "modality": _value(se, "00080060"), "series_description": _value(se, "0008103E"),
                "series_number": _value(se, "00200011"), "instances": _value(se, "00201209"),
            })
    return rows


def retrieve(url: str, study_uid: str, folder: str | os.PathLike, series_uid: str | None = None) -> list[Path]:
    """Download a study (or one of its series) into ``folder`` (created; must be new or empty),
    one ``<SOPInstanceUID>.dcm`` per instance, each written atomically."""
    from .imaging.atomic import atomic_path

    client = connect(url)
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise PacsError(f"{folder} is not empty: retrieve into a new folder")
    if series_uid:
        instances = _call(url, "WADO-RS series retrieve", client.iter_series, study_uid, series_uid)
    else:
        instances = _call(url, "WADO-RS study retrieve", client.iter_study, study_uid)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    it = iter(instances)
    while True:
        ds = _call(url, "WADO-RS retrieve", next, it, None)
        if ds is None:
            break
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        with atomic_path(path) as tmp:
            ds.save_as(str(tmp), enforce_file_format=True)
        written.append(path)
    if not written:
        raise PacsError(f"{safe_url(url)}: nothing to retrieve for study {study_uid}"
                        + (f" series {series_uid}" if series_uid else ""))
    return written


def _on_server(client, url: str, study_uid: str) -> set[str]:
    """SOPInstanceUIDs the server holds in a study (none when it does not know the study)."""
    try:
        found = _search(url, "QIDO-RS instance search", client.search_for_instances, _SOP_UID,
                        study_instance_uid=study_uid)
    except PacsError as exc:
        if " HTTP 404" in str(exc):        # a study the server does not know yet
            return set()
        raise
    return {_value(r, _SOP_UID) for r in found}


def store(url: str, files: Iterable[str | os.PathLike]) -> StoreResult:
    """STOW-RS the DICOM files (SEG, SR, ...) to the server, skipping instances it already has.

    Raises :class:`PacsError` (one line: how many were stored, what failed and why) when any
    instance could not be stored; what was stored stays stored, and a second call sends only
    the rest.
    """
    import pydicom

    client = connect(url)
    datasets = []
    for f in files:
        try:
            datasets.append(pydicom.dcmread(str(f)))
        except Exception as exc:
            raise PacsError(f"cannot read {f} as DICOM: {' '.join(str(exc).split())[:200]}") from None
    if not datasets:
        raise PacsError("no files to store")
    present: dict[str, set[str]] = {}
    stored, skipped, failed = [], [], []
    for ds in datasets:
        study, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
        if study not in present:
            present[study] = _on_server(client, url, study)
        if sop in present[study]:
            skipped.append(sop)
            continue
        try:
            _call(url, "STOW-RS", client.store_instances, [ds], study_instance_uid=study)
        except PacsError as exc:       # stop: the rest would most likely fail the same way
            failed.append((sop, str(exc)))
            break
        stored.append(sop)
        present[study].add(sop)
    result = StoreResult(stored, skipped, failed)
    if failed:
        left = len(datasets) - len(stored) - len(skipped)
        raise PacsError(f"{failed[0][1]}; stored {len(stored)} of {len(datasets)} instances "
                        f"({len(skipped)} already there), {left} not stored: run again to store "
                        "them (instances already stored are skipped)")
    return result


def new_download_folder(root: str | os.PathLike | None = None) -> Path:
    """A fresh temporary folder for a retrieve (under ``root`` or the system's temp folder)."""
    import tempfile

    base = Path(root) if root else Path(tempfile.gettempdir())
    folder = base / f"medlearn-pacs-{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True)
    return folder


def format_rows(rows: Sequence[dict[str, Any]]) -> list[str]:
    """``medlearn pacs find`` output: one tab-separated line per series, a header first."""
    cols = ("patient_id", "study_date", "study_uid", "series_uid", "modality", "series_number",
            "instances", "series_description")
    return ["\t".join(cols)] + ["\t".join(str(r.get(c, "")) for c in cols) for r in rows]


def add_cli(sub) -> None:
    """``medlearn pacs find|retrieve|store`` on the CLI's sub-parsers (see :mod:`napari_medlearn.cli`)."""
    p = sub.add_parser("pacs", help="a PACS through DICOMweb: find studies, retrieve series, store SEG/SR "
                                    f"(credentials from {USER_ENV}/{PASSWORD_ENV} or {TOKEN_ENV})")
    actions = p.add_subparsers(dest="pacs_command", required=True)
    f = actions.add_parser("find", help="list the series of matching studies (QIDO-RS)")
    f.add_argument("--url", required=True, help="DICOMweb root, e.g. https://pacs.example.org/dicom-web")
    f.add_argument("--patient", default=None, help="PatientID")
    f.add_argument("--modality", default=None, help="e.g. MR")
    f.add_argument("--study", default=None, help="StudyInstanceUID")
    r = actions.add_parser("retrieve", help="download a study or series into a new folder (WADO-RS)")
    r.add_argument("--url", required=True)
    r.add_argument("--study", required=True)
    r.add_argument("--series", default=None)
    r.add_argument("--out", required=True, help="new (or empty) folder")
    s = actions.add_parser("store", help="send DICOM files (SEG, SR, ...) to the PACS (STOW-RS); "
                                         "instances it already has are skipped")
    s.add_argument("--url", required=True)
    s.add_argument("files", nargs="+")


def run_cli(args) -> int:
    """Run a parsed ``medlearn pacs`` command; :class:`PacsError` propagates (one line)."""
    if args.pacs_command == "find":
        for line in format_rows(find(args.url, args.patient, args.modality, args.study)):
            print(line)
    elif args.pacs_command == "retrieve":
        files = retrieve(args.url, args.study, args.out, args.series)
        print(f"retrieved {len(files)} instance(s) into {args.out}")
    else:
        print(store(args.url, args.files).summary())
    return 0


# ---------------------------------------------------------------------------------------
# jobs on a PACS: --pacs URL --study UID [--series UID] [--push]
# ---------------------------------------------------------------------------------------
_NOT_IMAGES = ("SEG", "SR", "PR", "KO", "RTSTRUCT", "DOC")


def add_job_args(parser) -> None:
    """``--pacs``, ``--study``, ``--series``, ``--push`` on a job's sub-parser."""
    g = parser.add_argument_group("PACS (DICOMweb)", f"credentials from {USER_ENV}/{PASSWORD_ENV} or {TOKEN_ENV}")
    g.add_argument("--pacs", default=None, metavar="URL", help="read the input from this DICOMweb server")
    g.add_argument("--study", default=None, metavar="UID", help="StudyInstanceUID of the input (with --pacs)")
    g.add_argument("--series", default=None, metavar="UID",
                   help="SeriesInstanceUID (default: the study's one image series)")
    g.add_argument("--push", action="store_true", help="store the DICOM results (SEG, SR) back to --pacs")


def _image_series(url: str, study_uid: str) -> str:
    rows = [r for r in find(url, study_uid=study_uid) if r["modality"] not in _NOT_IMAGES]
    if len(rows) != 1:
        names = "; ".join(f"{r['series_uid']} ({r['modality']} {r['series_description']!r})" for r in rows)
        raise PacsError(f"study {study_uid} holds {len(rows)} image series on {safe_url(url)}"
                        + (f": {names}; choose one with --series" if rows else ""))
    return rows[0]["series_uid"]


def with_pacs(args, input_attr: str, run: Callable):
    """Run ``run(args)`` (a job returning a ``JobResult``) on a series retrieved from
    ``args.pacs`` into a temporary folder (removed afterwards) when ``--pacs`` is given, and
    store the job's DICOM outputs back with ``--push``."""
    import shutil

    if args.push and not args.pacs:
        raise PacsError("--push stores results back to the PACS given with --pacs URL")
    if not args.pacs:
        if getattr(args, input_attr) is None:
            raise PacsError(f"give the {input_attr} (a file or DICOM folder), or --pacs URL --study UID")
        return run(args)
    if not args.study:
        raise PacsError("--pacs needs --study UID (list studies with: medlearn pacs find --url URL)")
    if getattr(args, input_attr) is not None:
        raise PacsError(f"give either the {input_attr} or --pacs, not both")
    series = args.series or _image_series(args.pacs, args.study)
    folder = new_download_folder()
    try:
        retrieve(args.pacs, args.study, folder / "series", series)
        setattr(args, input_attr, str(folder / "series"))
        result = run(args)
    finally:
        shutil.rmtree(folder, ignore_errors=True)     # patient images do not linger in /tmp
        setattr(args, input_attr, None)
    if args.push:
        dicom = [p for p in result.outputs.values() if str(p).endswith(".dcm")]
        if not dicom:
            result.lines.append("nothing to push: the job wrote no DICOM results")
        else:
            done = store(args.pacs, dicom)
            result.lines.append(f"pushed to {safe_url(args.pacs)}: {done.summary()}")
    return result
