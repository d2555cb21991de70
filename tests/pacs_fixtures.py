"""pytest fixtures for the PACS tests: a real Orthanc (see :mod:`orthanc_server`) and the
environment that authenticates against it. Import the fixtures into a test module with
``from pacs_fixtures import orthanc_pacs, pacs_env  # noqa: F401``."""

from __future__ import annotations

import os

import pytest

from orthanc_server import orthanc, orthanc_binary


@pytest.fixture(scope="module")
def orthanc_pacs(tmp_path_factory):
    """One Orthanc for a test module, on a free localhost port, storage in a temporary folder.
    Skipped where Orthanc is not installed, except on CI, which installs it (.ci/setup.sh)."""
    if orthanc_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("Orthanc + its DICOMweb plugin are missing on CI: .ci/setup.sh installs them")
        pytest.skip("Orthanc and its DICOMweb plugin are not installed (apt-get install orthanc orthanc-dicomweb)")
    with orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture
def pacs_env(orthanc_pacs, monkeypatch):
    """The test user's credentials in the environment, as a user would set them."""
    monkeypatch.delenv("MEDLEARN_PACS_TOKEN", raising=False)
    monkeypatch.setenv("MEDLEARN_PACS_USER", orthanc_pacs.user)
    monkeypatch.setenv("MEDLEARN_PACS_PASSWORD", orthanc_pacs.password)
    return orthanc_pacs
