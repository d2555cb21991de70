"""DeepMedic training: class-balanced segments, and the recipe learns on tiny lesion cases."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_medlearn.imaging.measures import dice
from napari_medlearn.methods import segment_lesions
from napari_medlearn.nets.deepmedic import DeepMedic
from napari_medlearn.training.deepmedic import (SegmentSampler, labels_to_classes, prepare_case,
                                                train_deepmedic)

TINY = dict(in_channels=2, n_classes=4, fms_normal=[4, 4, 6, 6, 6, 6, 8, 8], subsample_factors=[3],
            residual_layers=[4, 6, 8], fc_fms=[12, 12])


def tiny_lesion_case(seed: int, shape=(28, 32, 30)):
    """A brain-like ellipsoid with one tumour: oedema bright on FLAIR, enhancing rim bright on T1c,
    dark necrotic centre; background constant (skull-stripped)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    c = np.array(shape) / 2
    brain = ((zz - c[0]) / (0.45 * shape[0])) ** 2 + ((yy - c[1]) / (0.45 * shape[1])) ** 2 + \
            ((xx - c[2]) / (0.45 * shape[2])) ** 2 < 1
    t = c + rng.uniform(-4, 4, 3)
    r = np.sqrt((zz - t[0]) ** 2 + (yy - t[1]) ** 2 + (xx - t[2]) ** 2)
    R = rng.uniform(5, 7)
    labels = np.zeros(shape, np.uint8)
    labels[r < R] = 2
    labels[r < 0.6 * R] = 4
    labels[r < 0.35 * R] = 1
    labels[~brain] = 0
    flair = 1.0 + 0.15 * rng.standard_normal(shape)
    t1c = 1.0 + 0.15 * rng.standard_normal(shape)
    flair[labels > 0] += 1.0
    t1c[labels == 4] += 1.2
    t1c[labels == 1] -= 0.6
    ch = np.stack([flair, t1c]).astype(np.float32)
    ch[:, ~brain] = 0.0
    return SimpleNamespace(channels=ch, labels=labels, brain_mask=brain, spacing=(2.0, 2.0, 2.0),
                           channel_names=("FLAIR", "T1c"))


def test_labels_to_classes_merges_old_label_3():
    assert labels_to_classes(np.array([0, 1, 2, 3, 4])).tolist() == [0, 1, 2, 1, 3]
    with pytest.raises(ValueError, match="BraTS"):
        labels_to_classes(np.array([5]))


def test_sampler_is_class_balanced_and_shapes_fit_the_net():
    case = tiny_lesion_case(0)
    net = DeepMedic(**TINY)
    pc = prepare_case(case.channels, case.labels, case.spacing, case.brain_mask)
    s = SegmentSampler([pc], net.geometry(9))
    x, y = s.batch(np.random.default_rng(0), "cpu", batch_size=8)
    assert tuple(x.shape) == (8, 2) + net.segment_size(9) and tuple(y.shape) == (8, 9, 9, 9)
    centre = y[:, 4, 4, 4]
    assert torch.all(centre[:4] > 0)          # first half centred on tumour
    assert torch.all(centre[4:] == 0)         # the rest on brain background
    assert net(x).shape[2:] == y.shape[1:]


def test_sampler_pads_a_volume_smaller_than_the_patch():
    from napari_medlearn.training.deepmedic import PatchGeometry

    case = tiny_lesion_case(0)
    pc = prepare_case(case.channels, case.labels, case.spacing, case.brain_mask)
    big = [n + 6 for n in pc.classes.shape]           # a same-size patch larger than the volume on every axis
    s = SegmentSampler([pc], tuple(PatchGeometry(n, n) for n in big))
    x, y = s.batch(np.random.default_rng(0), "cpu", batch_size=2)
    assert tuple(x.shape[2:]) == tuple(big) and tuple(y.shape[1:]) == tuple(big)
    assert int((y > 0).sum()) == 2 * int((pc.classes > 0).sum())     # the whole case, padded with background


def test_spatial_augmentation_identity_gives_the_plain_segment():
    case = tiny_lesion_case(0)
    pc = prepare_case(case.channels, case.labels, case.spacing, case.brain_mask)
    s = SegmentSampler([pc], DeepMedic(**TINY).geometry(9), rotation_deg=0.0, scale_range=(1.0, 1.0))
    for fg in (True, False):
        plain = s.segment(np.random.default_rng(3), 0, fg)
        moved = s.segment(np.random.default_rng(3), 0, fg, spatial=True)
        assert np.allclose(plain[0], moved[0], atol=1e-5)
        assert np.array_equal(plain[1], moved[1]) and np.array_equal(plain[2], moved[2])


def test_spatial_augmentation_keeps_labels_on_their_anatomy():
    """Rotated and scaled segments: the classes still sit where the image says they are."""
    from napari_medlearn.training.deepmedic import LesionTrainingCase, PatchGeometry

    shape = (40, 44, 42)
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    r = np.sqrt((zz - 20) ** 2 + ((yy - 22) / 1.4) ** 2 + (xx - 21) ** 2)     # an elongated blob
    image = np.stack([np.clip(12.0 - r, 0, None), np.zeros(shape)]).astype(np.float32)
    classes = (r < 6).astype(np.uint8) * 2
    pc = LesionTrainingCase(image, classes, np.ones(shape, bool))
    s = SegmentSampler([pc], tuple(PatchGeometry(24, 24) for _ in range(3)), fg_fraction=1.0, spatial_p=1.0,
                       rotation_deg=30.0, scale_range=(0.8, 1.25), intensity_shift=0.0, intensity_scale=0.0,
                       flip=0.0)
    rng = np.random.default_rng(0)
    x, y = s.batch(rng, "cpu", batch_size=6)
    plain = s.segment(np.random.default_rng(0), 0, True)
    for b in range(6):
        inside = x[b, 0].numpy() > 6.0 + 1e-3
        agree = np.mean(inside == (y[b].numpy() == 2))
        assert agree > 0.97
    # and the segments were transformed: the blob's extent differs from the upright one's
    assert not all(np.array_equal(y[b].numpy(), plain[1]) for b in range(6))


def test_spatial_augmentation_is_off_by_default_and_checked():
    case = tiny_lesion_case(0)
    pc = prepare_case(case.channels, case.labels, case.spacing, case.brain_mask)
    geo = DeepMedic(**TINY).geometry(9)
    a = SegmentSampler([pc], geo).batch(np.random.default_rng(5), "cpu", 4)
    b = SegmentSampler([pc], geo, spatial_p=0.0, rotation_deg=45.0).batch(np.random.default_rng(5), "cpu", 4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="spatial_p"):
        SegmentSampler([pc], geo, spatial_p=1.5)
    with pytest.raises(ValueError, match="scale_range"):
        SegmentSampler([pc], geo, scale_range=(1.2, 0.9))


@pytest.mark.parametrize("batch_size, fraction", [(2, 0.25), (2, 1 / 3), (3, 0.5), (10, 0.5)])
def test_small_batches_keep_the_tumour_share(batch_size, fraction):
    """A batch of 2 at 25 % must still see tumour a quarter of the time (plain rounding gave none)."""
    case = tiny_lesion_case(0)
    pc = prepare_case(case.channels, case.labels, case.spacing, case.brain_mask)
    s = SegmentSampler([pc], DeepMedic(**TINY).geometry(9), fg_fraction=fraction)
    rng = np.random.default_rng(1)
    counts = [s.foreground_count(rng, batch_size) for _ in range(4000)]
    assert set(counts) <= {int(np.floor(batch_size * fraction)), int(np.ceil(batch_size * fraction))}
    assert abs(np.mean(counts) / batch_size - fraction) < 0.02


def test_deepmedic_learns_on_tiny_lesion_cases(tmp_path):
    torch.set_num_threads(1)
    cases = [tiny_lesion_case(s) for s in range(3)]
    held_out = tiny_lesion_case(100)
    prepared = [prepare_case(c.channels, c.labels, c.spacing, c.brain_mask) for c in cases]
    args = {**TINY, "dropout_fc": [0.0, 0.0, 0.0]}   # no FC dropout: a few dozen steps must do
    model, cfg, hist = train_deepmedic(prepared, args, tmp_path / "run", epochs=3, iters_per_epoch=20,
                                       batch_size=4, lr=1e-2, device="cpu", progress=False)
    assert hist["loss"][-1] < 0.7 * hist["loss"][0]
    model.card = {"input": {"channels": ["FLAIR", "T1c"]}, "label_values": [0, 1, 2, 4]}
    torch.manual_seed(0)
    untrained = DeepMedic(**args).eval()
    untrained.card = model.card

    def wt_dice(net):
        res = segment_lesions(held_out.channels, held_out.spacing, model=net, brain_mask=held_out.brain_mask)
        return dice(res.labels > 0, held_out.labels > 0)

    before, after = wt_dice(untrained), wt_dice(model.eval())
    assert after > 0.6 and after > before + 0.2, (before, after)
    assert (tmp_path / "run" / "last.pt").exists()


def test_synthetic_preset_end_to_end(tmp_path, monkeypatch):
    from napari_medlearn import zoo
    from napari_medlearn.samples import brain_lesions
    from napari_medlearn.training import deepmedic as T

    monkeypatch.setattr(brain_lesions, "synthetic_lesion_case",
                        lambda seed, domain="A", spacing_mm=2.0, **_: tiny_lesion_case(seed))
    monkeypatch.setattr(T, "deepmedic_args", lambda width=1.0: dict(TINY))
    card = T.run_lesions_synthetic(tmp_path, epochs=1, iters_per_epoch=2, n_train=2, n_eval=1,
                                   batch_size=2, device="cpu", progress=False)
    assert card["name"] == "lesions-synthetic" and card["architecture"] == "deepmedic"
    assert card["input"]["channels"] == ["FLAIR", "T1c"] and card["input"]["spacing_mm"] == [2.0, 2.0, 2.0]
    assert card["label_values"] == [0, 1, 2, 4]
    assert "dice_whole_tumour_mean" in card["evaluation"]["summary"]
    assert card["evaluation"]["cases"][0]["case"] == "seed 10000"
    assert card["sha256"] == zoo.sha256_of(tmp_path / "model.pt")
    net = zoo.load(tmp_path / "model.pt", device="cpu")
    res = segment_lesions(tiny_lesion_case(5).channels, (2, 2, 2), model=net)
    assert res.labels.shape == (28, 32, 30)


def test_synthetic_preset_learns_from_three_scanners(tmp_path, monkeypatch):
    """The shipped recipe's source (scanners A, B, C in turn, the real generator at 4 mm) trains a
    tiny DeepMedic that segments held-out cases of all three scanners."""
    from napari_medlearn.samples import brain_lesions
    from napari_medlearn.training import deepmedic as T

    torch.set_num_threads(1)
    drawn = []
    real = brain_lesions.synthetic_lesion_case
    monkeypatch.setattr(brain_lesions, "synthetic_lesion_case",
                        lambda seed, domain="A", **kw: drawn.append((seed, domain)) or real(seed=seed, domain=domain, **kw))
    monkeypatch.setattr(T, "deepmedic_args", lambda width=1.0: {**TINY, "dropout_fc": [0.0, 0.0, 0.0]})
    card = T.run_lesions_synthetic(tmp_path, epochs=5, iters_per_epoch=40, n_train=3, n_eval=3, batch_size=4,
                                   device="cpu", progress=False, spacing_mm=4.0)
    assert T.SOURCE_DOMAINS == "ABC" and card["adaptation_source"]["domain"] == "ABC"
    assert drawn == [(0, "A"), (1, "B"), (2, "C"), (10000, "A"), (10001, "B"), (10002, "C")]
    assert "domains 'A', 'B', 'C' in turn" in card["training"]["data"]
    loss = card["training"]["loss_per_epoch"]
    assert loss[-1] < 0.5 * loss[0], loss
    dice = [c["dice_whole_tumour"] for c in card["evaluation"]["cases"]]
    assert min(dice) > 0.5 and np.mean(dice) > 0.65, dice
