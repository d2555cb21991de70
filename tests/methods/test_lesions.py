import numpy as np
import pytest
import torch

from napari_medlearn import zoo
from napari_medlearn.imaging.measures import brats_region_metrics
from napari_medlearn.methods import LesionResult, lesion_volumes, segment_lesions, segment_lesions_steps
from napari_medlearn.methods import lesions as lesion_method
from napari_medlearn.methods.lesions import dense_probabilities, derive_brain_mask, input_warnings, normalise_channels
from napari_medlearn.nets.deepmedic import DeepMedic

TINY = dict(in_channels=2, n_classes=4, fms_normal=[3, 3, 4, 4, 4, 4, 5, 5], subsample_factors=[3],
            fc_fms=[6, 6])
CARD = {"name": "tiny-lesions", "task": "brain-lesion-segmentation", "n_classes": 4, "label_values": [0, 1, 2, 4],
        "input": {"channels": ["FLAIR", "T1c"], "spacing_mm": [2.0, 2.0, 2.0]}}


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    net = DeepMedic(**TINY)
    # move BN statistics off their defaults so outputs differ between classes and voxels
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(2, 2, *net.segment_size(5)))
    net.eval()
    net.card = dict(CARD)
    return net


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_net):
    path = tmp_path_factory.mktemp("models") / "tiny-lesions.pt"
    zoo.save_checkpoint(tiny_net, path, "deepmedic", TINY, card=CARD)
    return path


def _case(shape=(14, 18, 16), background=-3.0, seed=0):
    rng = np.random.default_rng(seed)
    ch = np.full((2,) + shape, background, np.float32)
    mask = np.zeros(shape, bool)
    mask[2:-2, 3:-3, 2:-3] = True
    ch[:, mask] = rng.normal(1.0, 0.5, size=(2, int(mask.sum())))
    return ch, mask


def test_result_on_the_input_grid(tiny_net):
    ch, mask = _case()
    calls = []
    res = segment_lesions(ch, (2.0, 2.0, 2.0), model=tiny_net, progress=lambda *a: calls.append(a))
    assert isinstance(res, LesionResult)
    assert res.labels.shape == ch.shape[1:] and res.labels.dtype == np.uint8
    assert res.probabilities.shape == (4,) + ch.shape[1:] and res.probabilities.dtype == np.float32
    assert set(np.unique(res.labels)) <= {0, 1, 2, 4}
    np.testing.assert_allclose(res.probabilities.sum(0), 1.0, atol=1e-5)
    # the derived mask is the non-background region; nothing is labelled outside it
    assert np.array_equal(res.brain_mask, mask)
    assert not res.labels[~mask].any() and np.all(res.probabilities[0][~mask] == 1)
    assert res.channel_names == ("FLAIR", "T1c") and res.model == "tiny-lesions"
    assert res.volumes_ml == lesion_volumes(res.labels, (2.0, 2.0, 2.0))
    assert calls and calls[-1][0] == calls[-1][1]
    assert res.uncertainty is None and res.members == ()
    assert res.extras["warnings"] == []


def test_tiling_gives_the_same_posteriors_as_one_segment(tiny_net):
    ch, mask = _case()
    img = normalise_channels(ch, mask)

    def run(block):
        gen = dense_probabilities(tiny_net, img, mask, output_block=block, skip_empty=False)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    whole = run(max(ch.shape[1:]))
    tiled = run(5)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_segments_without_brain_are_skipped(tiny_net):
    ch, _ = _case(shape=(12, 30, 12))
    mask = np.zeros(ch.shape[1:], bool)
    mask[3:9, 2:8, 3:9] = True
    steps = list(dense_probabilities(tiny_net, normalise_channels(ch, mask), mask, output_block=6))
    assert steps[-1][1] < 2 * 5 * 2        # fewer than all blocks ran
    full = list(dense_probabilities(tiny_net, normalise_channels(ch, mask), mask, output_block=6, skip_empty=False))
    assert full[-1][1] > steps[-1][1]


def test_other_spacing_is_resampled_and_back(tiny_checkpoint):
    ch, mask = _case(shape=(10, 24, 22))
    res = segment_lesions(ch, (3.0, 1.0, 1.5), model=str(tiny_checkpoint), brain_mask=mask, device="cpu")
    assert res.labels.shape == ch.shape[1:]
    assert res.spacing == (3.0, 1.0, 1.5)
    np.testing.assert_allclose(res.probabilities.sum(0), 1.0, atol=1e-4)
    assert not res.labels[~mask].any()


def test_cancel(tiny_net):
    ch, mask = _case()
    gen = segment_lesions_steps(ch, (2, 2, 2), model=tiny_net, output_block=4, cancelled=lambda: True)
    with pytest.raises(InterruptedError):
        list(gen)


@pytest.mark.parametrize("make, match", [
    (lambda c: [c[0], c[1][:-1]], "different shapes"),
    (lambda c: c[:1], "needs 2 modalities.*missing"),
    (lambda c: c[0], "one 3D volume"),
    (lambda c: c[:, 5], "2D images"),
    (lambda c: c[:, :, :1], "2D"),
    (lambda c: np.where(np.arange(c.size).reshape(c.shape) == 7, np.nan, c), "FLAIR image contains NaN"),
    (lambda c: np.stack([np.zeros_like(c[0]), c[1]]), "FLAIR image is constant"),
])
def test_bad_input(tiny_net, make, match):
    ch, _ = _case()
    with pytest.raises(ValueError, match=match):
        segment_lesions(make(ch), (2, 2, 2), model=tiny_net)


def test_bad_spacing_and_mask(tiny_net):
    ch, mask = _case()
    with pytest.raises(ValueError, match="spacing"):
        segment_lesions(ch, (2, 2), model=tiny_net)
    with pytest.raises(ValueError, match="brain mask"):
        segment_lesions(ch, (2, 2, 2), model=tiny_net, brain_mask=mask[:-1])
    with pytest.raises(ValueError, match="empty"):
        segment_lesions(ch, (2, 2, 2), model=tiny_net, brain_mask=np.zeros_like(mask))


def test_derived_mask_with_noisy_background_uses_otsu():
    rng = np.random.default_rng(1)
    ch = rng.normal(0, 0.05, size=(2, 16, 16, 16)).astype(np.float32)
    ch[:, 4:12, 4:12, 4:12] += 3.0
    m = derive_brain_mask(ch)
    assert m[4:12, 4:12, 4:12].all() and m.sum() == 8 ** 3


def test_a_brain_region_larger_than_a_brain_warns_that_the_scans_look_not_skull_stripped(tiny_net, monkeypatch):
    # known answers at 1 mm: a 1.5 L brain (BraTS-like) passes, a 4 L head does not
    brain = np.zeros((150, 100, 100), bool)
    assert input_warnings(brain, (1.0, 1.0, 1.0)) == []
    brain[:, :, :] = True                                   # 1500 mL
    assert input_warnings(brain, (1.0, 1.0, 1.0)) == []
    (w,) = input_warnings(brain, (1.0, 1.6, 1.7))           # 4080 mL
    assert "4080 mL" in w and "skull-stripped" in w and "brain mask" in w
    assert input_warnings(brain, (1.0, 1.25, 1.25)) == []   # 2344 mL: a large brain, still a brain
    assert input_warnings(brain, (1.0, 1.3, 1.3))           # 2535 mL: beyond the limit
    # the limit sits between the largest brain masks and a head
    assert 1900 < lesion_method.BRAIN_VOLUME_LIMIT_ML < 3000
    # the result carries it, and the segmentation is not changed by it
    ch, mask = _case()
    quiet = segment_lesions(ch, (2.0, 2.0, 2.0), model=tiny_net)
    monkeypatch.setattr(lesion_method, "BRAIN_VOLUME_LIMIT_ML", 1.0)    # 10.6 mL of "brain" now too much
    loud = segment_lesions(ch, (2.0, 2.0, 2.0), model=tiny_net)
    assert len(loud.extras["warnings"]) == 1 and "11 mL" in loud.extras["warnings"][0]
    assert np.array_equal(loud.labels, quiet.labels)


def test_lesion_volumes_known_answer():
    lab = np.zeros((4, 5, 6), np.uint8)
    lab[0, 0, :2] = 1
    lab[1, :, :] = 2
    lab[2, 0, 0] = 4
    lab[3, 0, 0] = 3
    v = lesion_volumes(lab, (2.0, 1.0, 1.0))   # 2 uL voxels
    assert v == pytest.approx({"necrotic_core_mL": 0.004, "oedema_mL": 0.06, "enhancing_mL": 0.002,
                               "tumour_core_mL": 0.008, "whole_tumour_mL": 0.068})
    with pytest.raises(ValueError, match="unknown values"):
        lesion_volumes(lab + 5 * (lab == 2), (1, 1, 1))


def test_brats_regions():
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[2:8, 2:8, 2:8] = 2
    truth[3:7, 3:7, 3:7] = 4
    truth[4:6, 4:6, 4:6] = 1
    pred = truth.copy()
    pred[pred == 1] = 4                      # core right, necrosis called enhancing
    m = brats_region_metrics(pred, truth, (1, 1, 1))
    assert m["dice_whole_tumour"] == 1 and m["dice_tumour_core"] == 1
    assert m["dice_enhancing"] == pytest.approx(2 * 56 / (64 + 56))
    assert m["hd95_whole_tumour_mm"] == 0


def test_fill_lesion_holes_fills_the_core_inside_its_rim_and_nothing_outside():
    from napari_medlearn.methods.lesions import fill_lesion_holes

    zz, yy, xx = np.indices((20, 30, 30))
    r = np.sqrt((zz - 10) ** 2 + (yy - 15) ** 2 + (xx - 15) ** 2)
    lab = np.zeros(r.shape, np.uint8)
    lab[r < 9] = 2                                   # oedema
    lab[r < 6] = 4                                   # enhancing rim ...
    lab[r < 4] = 0                                   # ... around a cavity the network left out
    lab[(r < 2)] = 2                                 # and oedema called inside it
    lab[10, 15, 7:9] = 0                             # a notch in the oedema open to the outside (not a hole)
    ring = np.zeros_like(lab)
    ring[10, 5:25, 5:25] = 2                         # an oedema ring in one slice: its centre is enclosed in 2D
    ring[10, 8:22, 8:22] = 0
    before = lab.copy()
    out = fill_lesion_holes(lab)
    assert np.array_equal(lab, before)               # the input is not changed
    assert (out[r < 4] == 1).all()                   # cavity (and oedema in it) -> necrotic core
    assert np.array_equal(out[r >= 4], lab[r >= 4])  # rim, oedema, outside untouched
    assert (out[10, 15, 7:9] == 0).all()
    ring_out = fill_lesion_holes(ring)
    assert (ring_out[10, 8:22, 8:22] == 2).all() and (ring_out[9] == 0).all() and (ring_out[11] == 0).all()
    assert not fill_lesion_holes(np.zeros((3, 4, 5), np.uint8)).any()


def test_a_scan_in_another_orientation_is_read_in_the_models(tiny_net):
    import copy

    from napari_medlearn.imaging.volume import affine_from_spacing

    net = copy.copy(tiny_net)
    net.card = {**CARD, "input": {**CARD["input"], "orientation": "SPL"}}     # as BraTS arrays are stored
    ch, mask = _case(shape=(14, 18, 16))
    ch[:, 5:8, 6:9, 4:7] += 2.0
    spl = segment_lesions(ch, (2.0, 2.0, 2.0), model=net, brain_mask=mask)
    # the same scan stored as dcm2niix / nilearn store it: axes towards S, A, R
    sar = segment_lesions(ch[:, :, ::-1, ::-1], (2.0, 2.0, 2.0), model=net, brain_mask=mask[:, ::-1, ::-1],
                          affine=affine_from_spacing((2.0, 2.0, 2.0)))
    np.testing.assert_array_equal(sar.labels, spl.labels[:, ::-1, ::-1])
    np.testing.assert_allclose(sar.probabilities, spl.probabilities[:, :, ::-1, ::-1], atol=1e-6)
    assert sar.extras["orientation"] == {"input": "SAR", "turned": {"tiny-lesions": "SAR -> SPL"}}
    # a sagittal stack: axes towards R, S, A
    sag_aff = np.array([[2.0, 0, 0, 0], [0, 0, 2.0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]])
    sag_ch = np.ascontiguousarray(np.transpose(ch[:, :, ::-1, ::-1], (0, 3, 1, 2)))   # (C, R, S, A)
    sag = segment_lesions(sag_ch, (2.0, 2.0, 2.0), model=net, brain_mask=np.transpose(mask[:, ::-1, ::-1], (2, 0, 1)),
                          affine=sag_aff)
    assert sag.labels.shape == sag_ch.shape[1:]
    np.testing.assert_array_equal(np.transpose(sag.labels, (1, 2, 0))[:, ::-1, ::-1], spl.labels)
    # without an affine the arrays are taken as they are
    assert segment_lesions(ch, (2.0, 2.0, 2.0), model=net, brain_mask=mask).extras["orientation"]["turned"] == {}


def test_backends_give_the_same_labels_and_say_which_ran(tiny_net):
    """DeepMedic's segments under the CPU runtime (issue 36) equal torch's: posteriors within
    1e-4, identical labels, the backend recorded."""
    pytest.importorskip("openvino")
    from napari_medlearn import inference

    ch, _ = _case()
    ref = segment_lesions(ch, (2.0, 2.0, 2.0), model=tiny_net, backend="torch")
    got = segment_lesions(ch, (2.0, 2.0, 2.0), model=tiny_net, backend="onnx")
    assert ref.backend == "torch" and got.backend.startswith(inference.RUNTIME)
    assert np.array_equal(got.labels, ref.labels)
    np.testing.assert_allclose(got.probabilities, ref.probabilities, atol=1e-4)
