"""``medlearn detect-planes``: per-frame scores, boxes, saliency and best frames from .npy, TIFF
and NIfTI videos; one-line errors with status 2."""

import csv
import json

import numpy as np
import pytest

from napari_medlearn.cli import main
from napari_medlearn.imaging.io import read_nifti, write_nifti
from napari_medlearn.imaging.volume import Volume, affine_from_spacing

from sononet_helpers import blob_video, tiny_sononet_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(tiny_sononet_checkpoint(tmp_path_factory.mktemp("cli-planes")))


def test_npy_video(tmp_path, tiny, capsys):
    video = (blob_video(5) * 1000).astype(np.uint16)
    src = tmp_path / "sweep.npy"
    np.save(src, video)
    out = tmp_path / "out"
    assert main(["detect-planes", str(src), "--out", str(out), "--model", tiny, "--quiet"]) == 0
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 5 and {"frame", "predicted", "confidence", "4CH", "Background"} <= set(rows[0])
    for r in rows:
        assert r["predicted"] == max(rows[0].keys() - {"frame", "predicted", "confidence"}, key=lambda c: float(r[c]))
    sal = np.load(out / "saliency.npy")
    assert sal.shape == video.shape and sal.dtype == np.float32
    report = json.loads((out / "planes.json").read_text())
    assert report["frames"] == 5 and report["model"] == "tiny-sononet (file tiny-sononet.pt)"   # no card beside it
    best = list(csv.DictReader(open(out / "best_frames.csv")))
    assert best and all((out / b["png"]).is_file() for b in best)
    boxes = list(csv.DictReader(open(out / "boxes.csv")))
    assert all(r["class"] != "Background" for r in boxes)
    assert "standard planes found" in capsys.readouterr().out
    # outputs are not overwritten without --overwrite: the fixed names, and each plane's picture
    assert main(["detect-planes", str(src), "--out", str(out), "--model", tiny, "--quiet"]) == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / best[0]["png"]).write_bytes(b"my picture")
    assert main(["detect-planes", str(src), "--out", str(other), "--model", tiny, "--quiet"]) == 2
    assert (other / best[0]["png"]).read_bytes() == b"my picture"
    assert best[0]["png"] in capsys.readouterr().err
    assert main(["detect-planes", str(src), "--out", str(out), "--model", tiny, "--quiet", "--overwrite",
                 "--no-saliency"]) == 0


def test_tiff_and_nifti_videos(tmp_path, tiny):
    import imageio.v3 as iio

    video = (blob_video(4) / blob_video(4).max() * 255).astype(np.uint8)
    tif = tmp_path / "sweep.tif"
    iio.imwrite(tif, video)
    assert main(["detect-planes", str(tif), "--out", str(tmp_path / "a"), "--model", tiny, "--quiet"]) == 0
    nii = tmp_path / "sweep.nii.gz"
    write_nifti(Volume(video.astype(np.float32), affine_from_spacing((1.0, 0.3, 0.3)), ("z", "y", "x"), {}), nii)
    assert main(["detect-planes", str(nii), "--out", str(tmp_path / "b"), "--model", tiny, "--quiet"]) == 0
    a = list(csv.DictReader(open(tmp_path / "a" / "scores.csv")))
    b = list(csv.DictReader(open(tmp_path / "b" / "scores.csv")))
    assert [r["predicted"] for r in a] == [r["predicted"] for r in b]
    sal = read_nifti(tmp_path / "b" / "saliency.nii.gz")
    assert sal.data.shape == video.shape
    # the same frames as a multi-frame ultrasound DICOM, as scanners export clips
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "_medlearn_dicom_video_tests", Path(__file__).parent / "imaging" / "test_dicom_video.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    helpers.grey_clip(tmp_path / "sweep.dcm", video, FrameTime="33.3")
    assert main(["detect-planes", str(tmp_path / "sweep.dcm"), "--out", str(tmp_path / "c"), "--model", tiny,
                 "--quiet"]) == 0
    c = list(csv.DictReader(open(tmp_path / "c" / "scores.csv")))
    assert [r["predicted"] for r in a] == [r["predicted"] for r in c]


@pytest.mark.parametrize("content, match", [
    (np.zeros((0, 40, 40)), "empty"),
    (np.full((2, 40, 40), np.nan), "NaN"),
    (np.zeros((2, 3, 40, 40, 2)), "expected"),
])
def test_bad_videos_exit_2_with_one_line(tmp_path, tiny, capsys, content, match):
    src = tmp_path / "bad.npy"
    np.save(src, content)
    assert main(["detect-planes", str(src), "--out", str(tmp_path / "o"), "--model", tiny, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medlearn: error:") and match in err and "\n" not in err


def test_missing_and_unreadable_files(tmp_path, tiny, capsys):
    assert main(["detect-planes", str(tmp_path / "nope.npy"), "--out", str(tmp_path / "o")]) == 2
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"garbage")
    assert main(["detect-planes", str(bad), "--out", str(tmp_path / "o"), "--model", tiny]) == 2
    assert "cannot read" in capsys.readouterr().err
