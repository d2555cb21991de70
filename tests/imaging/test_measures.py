import numpy as np
import pytest

from napari_medlearn.imaging import measures as M


def cine_with_boxes():
    lab = np.zeros((3, 4, 10, 10), np.uint8)
    lab[0, :, 2:6, 2:6] = 1   # 64 voxels at ED
    lab[1, :, 2:4, 2:6] = 1   # 32 at ES
    lab[2, :, 2:5, 2:6] = 1   # 48
    lab[:, :, 7:9, 2:6] = 3   # RV constant 32 voxels
    lab[0, :, 6, 2:6] = 2     # myocardium 16 voxels at ED
    return lab


def test_volumes_ef_and_mass_known_answer():
    m = M.cardiac_measures(cine_with_boxes(), (10.0, 2.0, 2.0))   # 40 uL voxels
    assert m["ED_frame"] == 0 and m["ES_frame"] == 1
    assert m["LVEDV_mL"] == pytest.approx(64 * 0.04)
    assert m["LVESV_mL"] == pytest.approx(32 * 0.04)
    assert m["LVSV_mL"] == pytest.approx(32 * 0.04)
    assert m["LVEF_pct"] == pytest.approx(50.0)
    assert m["LVM_g"] == pytest.approx(16 * 0.04 * 1.05)
    assert m["RVEF_pct"] == pytest.approx(0.0)
    assert m["LV_volume_mL"] == pytest.approx([2.56, 1.28, 1.92])


def test_single_frame_has_no_ejection_fraction():
    m = M.cardiac_measures(cine_with_boxes()[0], (10.0, 2.0, 2.0))
    assert m["LVEDV_mL"] == pytest.approx(2.56)
    assert np.isnan(m["LVEF_pct"]) and m["ES_frame"] is None


@pytest.mark.parametrize("bad, match", [
    (np.full((2, 4, 4), 7, np.uint8), "unknown values"),
    (np.full((2, 4, 4), 0.5), "integers"),
    (np.zeros((0, 3, 3), np.uint8), "empty"),
])
def test_bad_labels(bad, match):
    with pytest.raises(ValueError, match=match):
        M.cardiac_measures(bad, (1, 1, 1))


@pytest.mark.parametrize("spacing", [(1, 1), (0, 1, 1), (np.nan, 1, 1)])
def test_bad_spacing(spacing):
    with pytest.raises(ValueError, match="spacing"):
        M.cardiac_measures(cine_with_boxes(), spacing)


def test_display_names():
    assert M.display_name("LVEDV_mL") == "LVEDV (mL)"
    assert M.display_name("LVEF_pct") == "LVEF (%)"
    assert M.display_name("LVM_g") == "LVM (g)"
    assert M.display_name("ED_frame") == "ED_frame"


def test_dice_and_hausdorff_known_answers():
    a = np.zeros((3, 30, 30), bool)
    a[1, 5:15, 5:15] = True
    b = np.zeros_like(a)
    b[1, 7:17, 5:15] = True
    assert M.dice(a, b) == pytest.approx(0.8)
    assert M.dice(a, a) == 1.0
    # a flat square shifted by 2 rows of 1.5 mm: 10% of surface points 3 mm away
    assert M.hausdorff95(a, b, (5.0, 1.5, 1.0)) == pytest.approx(3.0)
    c = np.zeros((20, 20, 20), bool)
    c[5:15, 5:15, 5:15] = True
    d = np.zeros_like(c)
    d[5:15, 5:15, 8:18] = True     # shifted 3 voxels along x of 2 mm
    assert M.hausdorff95(c, d, (1.0, 1.0, 2.0)) == pytest.approx(6.0)
    assert M.hausdorff95(c, c, (1.0, 1.0, 2.0)) == 0.0
    assert np.isnan(M.hausdorff95(a, np.zeros_like(a), (1, 1, 1)))


def test_image_quality_known_answers():
    from napari_medlearn.imaging.measures import image_quality

    rng = np.random.default_rng(0)
    ref = rng.random((2, 32, 32)).astype(np.float32)
    ref[0, 0, 0] = 1.0
    same = image_quality(ref, ref.astype(np.complex64))
    assert same["psnr_db"] == np.inf and same["ssim"] == pytest.approx(1.0)
    q = image_quality(ref, ref + 0.1)              # MSE 0.01 at a peak of 1: 20 dB
    assert q["psnr_db"] == pytest.approx(20.0, abs=1e-3) and q["ssim"] < 1.0
    with pytest.raises(ValueError, match="shape"):
        image_quality(ref, ref[0])
    with pytest.raises(ValueError, match="zeros"):
        image_quality(np.zeros((4, 4)), np.ones((4, 4)))
