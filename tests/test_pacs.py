"""DICOMweb against a real Orthanc: upload a series, find it, retrieve it, push SEG + SR, read
them back from the server; a server that is down or refuses credentials, a STOW that fails
half-way and its retry."""

from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest

from napari_medlearn import pacs
from napari_medlearn.cli import main
from napari_medlearn.imaging.dicom_seg import CARDIAC_STRUCTURES, Algorithm, read_seg_series, write_seg
from napari_medlearn.imaging.dicom_sr import cardiac_groups, read_measurement_report, write_measurement_report
from napari_medlearn.imaging.dicom_write import write_dicom_series
from napari_medlearn.imaging.io import read_dicom_folder
from orthanc_server import free_port
from pacs_fixtures import orthanc_pacs, pacs_env  # noqa: F401

MODEL = Algorithm("bai-fcn", "1.0", "0f" * 32)


@pytest.fixture(scope="module")
def cine(tmp_path_factory):
    from napari_medlearn.samples.cardiac_phantom import cardiac_cine_phantom

    ph = cardiac_cine_phantom(seed=8, n_frames=2, matrix=32)
    image, labels = ph.volumes()
    folder = tmp_path_factory.mktemp("pacs") / "cine"
    files = write_dicom_series(image, folder, series_description="sax cine", patient_id="PACS-TEST-1")
    return folder, files, labels


def _study_series(server, study_uid: str) -> dict[str, str]:
    """Series UID -> modality of a study, from Orthanc's own REST API (not DICOMweb)."""
    out = {}
    for sid in server.rest_get("/series"):
        s = server.rest_get(f"/series/{sid}")
        study = server.rest_get(f"/studies/{s['ParentStudy']}")
        if study["MainDicomTags"]["StudyInstanceUID"] == study_uid:
            out[s["MainDicomTags"]["SeriesInstanceUID"]] = s["MainDicomTags"].get("Modality", "")
    return out


def test_upload_find_retrieve_push_seg_and_sr_and_read_them_back(pacs_env, cine, tmp_path, capsys):
    server = pacs_env
    folder, files, labels = cine
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    series_uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)

    assert main(["pacs", "store", "--url", server.url, *map(str, files)]) == 0
    assert f"stored {len(files)}" in capsys.readouterr().out

    assert main(["pacs", "find", "--url", server.url, "--patient", "PACS-TEST-1", "--modality", "MR"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("patient_id\t")
    [row] = [line.split("\t") for line in lines[1:]]
    assert row[0] == "PACS-TEST-1" and row[2] == study_uid and row[3] == series_uid and row[4] == "MR"
    assert row[6] == str(len(files)) and row[7] == "sax cine"

    got = tmp_path / "retrieved"
    assert main(["pacs", "retrieve", "--url", server.url, "--study", study_uid, "--series", series_uid,
                 "--out", str(got)]) == 0
    retrieved = read_dicom_folder(got)
    original = read_dicom_folder(folder)
    np.testing.assert_array_equal(retrieved.data, original.data)
    np.testing.assert_allclose(retrieved.affine, original.affine, atol=1e-6)

    # results drawn on the retrieved instances go back into the same study
    segs = write_seg(labels, got, CARDIAC_STRUCTURES, MODEL, tmp_path / "out" / "seg.dcm")
    row = {"LVEDV_mL": 101.25, "LVESV_mL": 40.5, "LVEF_pct": 60.0, "LVM_g": 88.125}
    sr = write_measurement_report(cardiac_groups(row, segs[0], segs[1]), MODEL, tmp_path / "out" / "sr.dcm")
    result = pacs.store(server.url, [*segs, sr])
    assert len(result.stored) == 3 and not result.skipped
    modalities = sorted(_study_series(server, study_uid).values())
    assert modalities == ["MR", "SEG", "SR"]

    seg_uid = str(pydicom.dcmread(segs[0]).SeriesInstanceUID)
    back = pacs.retrieve(server.url, study_uid, tmp_path / "seg_back", seg_uid)
    np.testing.assert_array_equal(read_seg_series(back).labels, labels.data)
    sr_uid = str(pydicom.dcmread(sr).SeriesInstanceUID)
    [sr_back] = pacs.retrieve(server.url, study_uid, tmp_path / "sr_back", sr_uid)
    values = {k: v for g in read_measurement_report(sr_back) for k, v in g["measures"].items()}
    assert values == row


def test_refused_credentials_is_one_line_with_url_and_status(pacs_env, monkeypatch, capsys):
    server = pacs_env
    monkeypatch.setenv("MEDLEARN_PACS_PASSWORD", "wrong-password")
    assert main(["pacs", "find", "--url", server.url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert server.url in err and "HTTP 401" in err
    assert "wrong-password" not in err
    monkeypatch.delenv("MEDLEARN_PACS_USER")
    monkeypatch.delenv("MEDLEARN_PACS_PASSWORD")
    assert main(["pacs", "find", "--url", server.url]) == 2
    assert "HTTP 401" in capsys.readouterr().err


def test_server_down_is_one_line(capsys):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert main(["pacs", "find", "--url", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and url in err and "cannot connect" in err
    assert main(["pacs", "find", "--url", "http://user:pw@127.0.0.1/dicom-web"]) == 2
    err = capsys.readouterr().err
    assert "credentials in the URL are refused" in err and "pw" not in err.replace("PASSWORD", "")


def test_stow_failing_half_way_is_reported_and_the_retry_stores_nothing_twice(pacs_env, tmp_path, monkeypatch):
    import requests
    from dicomweb_client.api import DICOMwebClient

    from napari_medlearn.imaging.volume import Volume, affine_from_spacing

    server = pacs_env
    image = np.random.default_rng(2).integers(0, 500, (5, 8, 8)).astype(np.uint16)
    files = write_dicom_series(Volume(image, affine_from_spacing((2.0, 1.0, 1.0)), ("z", "y", "x")),
                               tmp_path / "s", patient_id="PACS-TEST-2")
    real = DICOMwebClient.store_instances
    sent: list[str] = []

    def flaky(self, datasets, *args, **kwargs):
        if len(sent) == 2:                               # the connection drops at the third
            sent.append("dropped")
            raise requests.exceptions.ConnectionError("connection reset")
        sent.extend(str(d.SOPInstanceUID) for d in datasets)
        return real(self, datasets, *args, **kwargs)

    monkeypatch.setattr(DICOMwebClient, "store_instances", flaky)
    with pytest.raises(pacs.PacsError, match=r"STOW-RS failed: cannot connect.*stored 2 of 5 instances \(0 already there\), 3 not stored: run again"):
        pacs.store(server.url, files)
    monkeypatch.setattr(DICOMwebClient, "store_instances", real)

    calls: list[str] = []

    def counting(self, datasets, *args, **kwargs):
        calls.extend(str(d.SOPInstanceUID) for d in datasets)
        return real(self, datasets, *args, **kwargs)

    monkeypatch.setattr(DICOMwebClient, "store_instances", counting)
    result = pacs.store(server.url, files)
    assert len(result.skipped) == 2 and len(result.stored) == 3
    assert not set(calls) & set(sent)                   # nothing sent twice
    assert len(pacs.store(server.url, files).skipped) == 5
    [series] = [s for s in server.rest_get("/series")
                if server.rest_get(f"/series/{s}")["MainDicomTags"]["SeriesInstanceUID"]
                == str(pydicom.dcmread(files[0]).SeriesInstanceUID)]
    assert len(server.rest_get(f"/series/{series}")["Instances"]) == 5     # on the server once each


def test_credentials_come_from_the_environment_only(monkeypatch):
    monkeypatch.setenv("MEDLEARN_PACS_TOKEN", "tok-123")
    monkeypatch.setenv("MEDLEARN_PACS_USER", "someone")
    session = pacs._session()
    assert session.headers["Authorization"] == "Bearer tok-123" and session.auth is None
    assert session.verify is True or session.verify == os.environ.get("REQUESTS_CA_BUNDLE")   # never off
    monkeypatch.delenv("MEDLEARN_PACS_TOKEN")
    monkeypatch.setenv("MEDLEARN_PACS_PASSWORD", "pw")
    session = pacs._session()
    assert session.auth == ("someone", "pw") and "Authorization" not in session.headers
    assert pacs.safe_url("https://a:b@pacs.example.org:8443/dicom-web?x=1") == "https://pacs.example.org:8443/dicom-web"


def test_segment_heart_from_the_pacs_pushes_its_seg_back(pacs_env, tiny_cardiac, tmp_path, capsys, monkeypatch):
    """``medlearn segment-heart --pacs URL --study UID --push``: WADO-RS into a temporary folder
    (gone afterwards), the job, then STOW-RS of its DICOM results into the same study."""
    import tempfile

    from napari_medlearn.imaging.volume import Volume, affine_from_spacing

    server = pacs_env
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    rng = np.random.default_rng(3)
    cine = Volume(rng.random((2, 3, 24, 24)).astype(np.float32), affine_from_spacing((8.0, 1.5, 1.5)),
                  ("t", "z", "y", "x"), {"time_step": 40.0})
    files = write_dicom_series(cine, tmp_path / "cine", patient_id="PACS-TEST-3")
    pacs.store(server.url, files)
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    assert main(["segment-heart", "--pacs", server.url, "--study", study, "--out", str(tmp_path / "out"),
                 "--model", str(tiny_cardiac), "--push", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "pushed to" in out and "stored 2" in out                     # one SEG per phase
    assert sorted(_study_series(server, study).values()) == ["MR", "SEG"]   # no heart found: no SR
    assert not list((tmp_path / "tmp").iterdir())                       # the download is gone
    assert main(["segment-heart", "--pacs", server.url, "--study", "1.2.3.4", "--out", str(tmp_path / "o2"),
                 "--quiet"]) == 2
    assert "holds 0 image series" in capsys.readouterr().err


@pytest.fixture
def https_qido(tmp_path):
    """A minimal HTTPS DICOMweb stand-in (every QIDO answer: no studies) with a self-signed
    certificate for 127.0.0.1; yields its URL and the certificate file."""
    import datetime
    import http.server
    import ipaddress
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = b"[]"
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}/dicom-web", cert_file
    httpd.shutdown()
    httpd.server_close()


def test_https_certificates_are_verified(https_qido, monkeypatch):
    url, cert = https_qido
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with pytest.raises(pacs.PacsError, match="HTTPS certificate not trusted"):
        pacs.find(url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))         # the hospital's CA: trusted
    assert pacs.find(url) == []
