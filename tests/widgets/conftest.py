import pytest

from napari_medlearn.widgets import _common


@pytest.fixture
def errors(monkeypatch):
    """The messages the widgets show as error notifications, instead of showing them."""
    shown = []
    monkeypatch.setattr(_common, "show_error", shown.append)
    return shown
