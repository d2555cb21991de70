"""Methods run in a plain Python process: importing them must not pull napari or Qt."""

import subprocess
import sys


def test_methods_do_not_import_napari_or_qt():
    code = (
        "import sys, napari_medlearn\n"
        "from napari_medlearn import methods, zoo, imaging, training, cli\n"
        "import napari_medlearn.training.presets, napari_medlearn.demo\n"
        "bad = [m for m in ('napari', 'qtpy', 'PyQt5', 'PySide2', 'PySide6') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_package_import_is_cheap():
    code = "import sys, napari_medlearn; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_imaging_needs_no_torch():
    code = ("import sys; import napari_medlearn.imaging.measures, napari_medlearn.imaging.volume, "
            "napari_medlearn.imaging.labels, napari_medlearn.imaging.intensity\n"
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
