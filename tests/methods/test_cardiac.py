import numpy as np
import pytest

from napari_medlearn import methods, zoo
from napari_medlearn.imaging import measures as M
from napari_medlearn.samples.cardiac_phantom import cardiac_cine_phantom


@pytest.fixture(scope="module")
def small_phantom():
    return cardiac_cine_phantom(seed=5, n_frames=3, matrix=(40, 52), in_plane_spacing=6.0)


def test_cine_in_labels_out_on_the_input_grid(small_phantom, tiny_cardiac):
    ph = small_phantom
    before = ph.image.copy()
    res = methods.segment_heart(ph.image, ph.spacing, model=tiny_cardiac, device="cpu")
    assert res.labels.shape == ph.image.shape and res.labels.dtype == np.uint8
    assert res.probabilities.shape == (4,) + ph.image.shape
    np.testing.assert_allclose(res.probabilities.astype(np.float32).sum(0), 1.0, atol=5e-3)
    assert set(np.unique(res.labels)) <= {0, 1, 2, 3}
    assert np.array_equal(ph.image, before)
    assert res.model_name == "tiny-cardiac (file tiny-cardiac.pt)" and len(res.model_sha256) == 64
    assert len(res.measures["LV_volume_mL"]) == 3


def test_single_frame_gives_3d_labels(small_phantom, tiny_cardiac):
    res = methods.segment_heart(small_phantom.image[0], small_phantom.spacing, model=tiny_cardiac)
    assert res.labels.shape == small_phantom.image.shape[1:]
    assert res.es is None


@pytest.mark.parametrize("shape", [(2, 3, 37, 53), (3, 29, 18)])
def test_swapping_rows_and_columns_transposes_the_answer(shape, tiny_cardiac):
    rng = np.random.default_rng(0)
    img = rng.random(shape).astype(np.float32)
    img[..., 5:15, 6:14] += 2.0
    sp = (8.0, 1.4, 2.1)
    a = methods.segment_heart(img, sp, model=tiny_cardiac)
    b = methods.segment_heart(np.swapaxes(img, -1, -2), (8.0, 2.1, 1.4), model=tiny_cardiac)
    assert np.array_equal(np.swapaxes(a.labels, -1, -2), b.labels)
    assert np.array_equal(np.swapaxes(a.probabilities, -1, -2), b.probabilities)


@pytest.mark.parametrize("data, spacing, match", [
    (np.zeros((64, 64), np.float32), (8, 1.5, 1.5), "2D image"),
    (np.zeros((0, 64, 64), np.float32), (8, 1.5, 1.5), "empty"),
    (np.full((2, 32, 32), np.nan, np.float32), (8, 1.5, 1.5), "NaN"),
    (np.zeros((1, 2, 3, 32, 32), np.float32), (8, 1.5, 1.5), "5-D"),
    (np.zeros((2, 32, 32), np.complex64), (8, 1.5, 1.5), "real-valued"),
    (np.zeros((2, 8, 8), np.float32), (8, 1.5, 1.5), "too small"),
    (np.zeros((2, 32, 32), np.float32), (8, 1.5), "spacing"),
    (np.zeros((2, 32, 32), np.float32), (8, 0, 1.5), "spacing"),
    (np.zeros((2, 96, 96), np.float32), (500, 100, 100), "field of view of 9600"),   # not mm
    (np.zeros((2, 96, 96), np.float32), (0.008, 0.0015, 0.0015), "field of view of 0.144"),
])
def test_bad_input_is_refused_clearly(data, spacing, match, tiny_cardiac):
    with pytest.raises(ValueError, match=match):
        methods.segment_heart(data, spacing, model=tiny_cardiac)


def test_cancel_stops_the_generator(small_phantom, tiny_cardiac):
    gen = methods.segment_heart_steps(small_phantom.image, small_phantom.spacing, model=tiny_cardiac,
                                      cancelled=lambda: True)
    assert next(gen)[0] == 0
    with pytest.raises(InterruptedError):
        next(gen)


def test_noise_is_no_heart_and_gets_no_ejection_fraction(tiny_cardiac):
    rng = np.random.default_rng(1)
    res = methods.segment_heart(rng.random((3, 4, 32, 32)).astype(np.float32), (8, 1.5, 1.5),
                                model=tiny_cardiac)
    if any(f["flag"] == "no_heart" for f in res.qc):
        assert np.isnan(res.measures["LVEF_pct"])


def test_quality_flags_on_known_cases():
    from napari_medlearn.methods.cardiac import quality_flags

    ph = cardiac_cine_phantom(seed=12, n_frames=12, in_plane_spacing=2.0, matrix=140)
    m = M.cardiac_measures(ph.labels, ph.spacing)
    assert quality_flags(ph.labels, m, ph.spacing) == []
    empty = np.zeros_like(ph.labels)
    flags = quality_flags(empty, M.cardiac_measures(empty, ph.spacing), ph.spacing)
    assert [f["flag"] for f in flags] == ["no_heart"]
    no_myo = np.where(ph.labels == 2, 0, ph.labels).astype(np.uint8)
    no_myo[0, 0, 0, 0] = 2      # a speck of myocardium, not a wall
    flags = quality_flags(no_myo, M.cardiac_measures(no_myo, ph.spacing), ph.spacing)
    assert "lv_without_myocardium" in [f["flag"] for f in flags]
    cut = ph.labels.copy()
    ed = m["ED_frame"]
    big = int(np.argmax((cut[ed] == 1).reshape(cut.shape[1], -1).sum(1)))
    cut = cut[:, big:]                       # basal slices lost
    flags = quality_flags(cut, M.cardiac_measures(cut, ph.spacing), ph.spacing)
    assert "base_missing" in [f["flag"] for f in flags]
    jumpy = ph.labels.copy()
    jumpy[2][jumpy[2] == 1] = 0              # the LV vanishes in one frame
    flags = quality_flags(jumpy, M.cardiac_measures(jumpy, ph.spacing), ph.spacing)
    assert "volume_curve_jump" in [f["flag"] for f in flags]


def test_default_model_segments_held_out_phantoms():
    """The shipped default model on a phantom never used in training (issue 2/9 floor)."""
    ph = cardiac_cine_phantom(seed=10007, n_frames=4)
    res = methods.segment_heart(ph.image, ph.spacing, device="cpu")
    assert res.model_name == zoo.default_model("cardiac-segmentation")
    d = M.dice_per_label(res.labels, ph.labels)
    assert d[1] >= 0.85, d
    assert not any(f["flag"] == "no_heart" for f in res.qc)


def test_cardiac_measures_passthrough():
    lab = np.zeros((2, 3, 8, 8), np.uint8)
    lab[0, :, 2:6, 2:6] = 1
    lab[1, :, 3:5, 2:6] = 1
    m = methods.cardiac_measures(lab, (10, 1, 1))
    assert m["LVEF_pct"] == pytest.approx(50.0)


def test_a_brain_is_no_heart_and_gets_no_ejection_fraction():
    """A real scan without a heart (nilearn's MNI152 T1) must not produce made-up measures."""
    from napari_medlearn.samples import mni152_t1

    brain = mni152_t1(resolution=2)
    res = methods.segment_heart(brain.data, brain.spacing, device="cpu")
    assert [f["flag"] for f in res.qc] == ["no_heart"]
    assert all(np.isnan(res.measures[k]) for k in M.CARDIAC_MEASURES)


def test_backends_give_the_same_labels_and_say_which_ran(small_phantom, tiny_cardiac):
    """The CPU runtime (issue 36) against torch on a sample cine: posteriors within 1e-3
    (float16 storage), identical labels; each result records its backend; a bad name is refused."""
    pytest.importorskip("openvino")
    from napari_medlearn import inference

    ph = small_phantom
    ref = methods.segment_heart(ph.image, ph.spacing, model=tiny_cardiac, device="cpu", backend="torch")
    got = methods.segment_heart(ph.image, ph.spacing, model=tiny_cardiac, device="cpu", backend="onnx")
    assert ref.backend == "torch" and got.backend.startswith(inference.RUNTIME)
    assert np.array_equal(got.labels, ref.labels)
    np.testing.assert_allclose(got.probabilities.astype(np.float32), ref.probabilities.astype(np.float32), atol=1e-3)
    with pytest.raises(ValueError, match="unknown backend"):
        methods.segment_heart(ph.image, ph.spacing, model=tiny_cardiac, backend="cuda-graphs")
