import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_medlearn.nets import DeepMedic, UNet3D
from napari_medlearn.training.uda import (DomainDiscriminator, adversarial_weight, domain_probe_accuracy,
                                          feature_list, grad_reverse, train_uda)

TINY = dict(in_channels=2, n_classes=2, fms_normal=[4, 4, 4, 4, 4, 4, 4, 4], subsample_factors=[3], fc_fms=[8, 8])


def test_gradient_reversal_scales_and_flips():
    x = torch.ones(3, requires_grad=True)
    (grad_reverse(x, 0.25) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.25, -0.5, -0.75]))


def test_ramp():
    assert adversarial_weight(0.5, (1, 3), 0.1) == 0.0
    assert adversarial_weight(2.0, (1, 3), 0.1) == pytest.approx(0.05)
    assert adversarial_weight(9.0, (1, 3), 0.1) == pytest.approx(0.1)


def test_discriminator_takes_maps_of_any_size():
    net = UNet3D(2, 3, base=2, levels=3)
    _, feats = feature_list(net, torch.randn(2, 2, 16, 16, 16))
    d = DomainDiscriminator([f.shape[1] for f in feats], width=4)
    assert d(feats).shape == (2,)
    with pytest.raises(ValueError):
        DomainDiscriminator([])


def _toy(offset: float = 2.0, batch: int = 4, size: int = 16):
    """Patches whose class (everywhere) is the sign of channel 0's mean; the target adds
    ``offset`` to channel 1, which the task does not need but a discriminator can see."""

    def source(rng, dev):
        x = rng.standard_normal((batch, 2, size, size, size)).astype(np.float32)
        s = np.sign(rng.standard_normal(batch)).astype(np.float32)
        x[:, 0] += s[:, None, None, None]
        y = np.broadcast_to((s > 0).astype(np.int64)[:, None, None, None], (batch, size, size, size)).copy()
        return torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)

    def target(rng, dev):
        x, _ = source(rng, dev)
        x[:, 1] += offset
        return x

    return source, target


UNET = dict(in_channels=2, n_classes=2, base=4, levels=3)


def _run(tmp_path, lam, epochs=6, **kw):
    torch.manual_seed(0)
    net = UNet3D(**UNET)
    source, target = _toy()
    hist = train_uda(net, source, target, F.cross_entropy, tmp_path, "unet3d", UNET, epochs=epochs,
                     iters_per_epoch=25, lr=1e-3, lam_max=lam, ramp=(0, 2), disc_width=8, progress=False, **kw)
    return net, hist, source, target


def test_adversarial_training_confuses_the_discriminator(tmp_path):
    plain, h_plain, source, target = _run(tmp_path / "plain", 0.0)
    adapted, h_uda, _, _ = _run(tmp_path / "uda", 1.0)
    # source-only features give the domain away; under the adversarial term the discriminator,
    # trained all along, does much worse over the last epochs
    assert np.mean(h_plain["domain_accuracy"][-3:]) > 0.85
    assert np.mean(h_uda["domain_accuracy"][-3:]) < np.mean(h_plain["domain_accuracy"][-3:]) - 0.15
    assert h_uda["seg_loss"][-1] < 0.5 * h_uda["seg_loss"][0]        # the task is still learnt
    assert h_uda["lambda"][0] < h_uda["lambda"][-1] == pytest.approx(1.0)
    # a fresh discriminator on the source-only model's frozen features finds the domain
    assert domain_probe_accuracy(plain, source, target, steps=20) > 0.85


def test_the_discriminator_compares_the_domain_batches_not_the_task_batch(tmp_path):
    """The task's source segments carry something the target's cannot (here +3 on channel 1, as
    lesion-centred sampling puts lesions in them); the discriminator, fed source segments drawn
    like the target's, has nothing to tell apart, fed the task's it finds the difference."""
    source, target = _toy(offset=0.0)

    def task_source(rng, dev):
        x, y = source(rng, dev)
        x[:, 1] += 3.0
        return x, y

    def run(path, **kw):
        torch.manual_seed(0)
        return train_uda(UNet3D(**UNET), task_source, target, F.cross_entropy, path, "unet3d", UNET, epochs=3,
                         iters_per_epoch=25, lam_max=0.0, disc_width=8, progress=False, **kw)

    confounded = run(tmp_path / "task")
    matched = run(tmp_path / "matched", domain_source_batch=lambda rng, dev: source(rng, dev)[0])
    assert np.mean(confounded["domain_accuracy"][-2:]) > 0.85
    assert np.mean(matched["domain_accuracy"][-2:]) < 0.7
    assert matched["config"]["discriminator_source"].startswith("own source segments")
    assert matched["seg_loss"][-1] < 0.5 * matched["seg_loss"][0]


def _deepmedic_and_source():
    """A tiny DeepMedic and a source of noise segments, all background (3^3 outputs)."""
    torch.manual_seed(0)
    net = DeepMedic(**TINY)
    seg = net.segment_size(3)

    def source(rng, dev):
        x = torch.from_numpy(rng.standard_normal((2, 2, *seg)).astype(np.float32))
        return x, torch.zeros((2, 3, 3, 3), dtype=torch.long)

    return net, source


def test_deepmedic_features_feed_the_discriminator(tmp_path):
    net, source = _deepmedic_and_source()
    hist = train_uda(net, source, lambda rng, dev: source(rng, dev)[0] + 1.0, F.cross_entropy, tmp_path,
                     "deepmedic", TINY, epochs=1, iters_per_epoch=3, lam_max=0.1, progress=False)
    assert len(hist["seg_loss"]) == 1 and len(hist["config"]["discriminator_inputs"]) == 4


def test_the_discriminator_can_see_the_output_too(tmp_path):
    net, source = _deepmedic_and_source()
    target = lambda rng, dev: source(rng, dev)[0] + 1.0  # noqa: E731
    hist = train_uda(net, source, target, F.cross_entropy, tmp_path, "deepmedic", TINY, epochs=1,
                     iters_per_epoch=2, lam_max=0.1, progress=False, output_to_discriminator=True)
    # the four feature maps plus the softmax over the model's classes
    assert hist["config"]["discriminator_inputs"][-1] == TINY["n_classes"]
    assert len(hist["config"]["discriminator_inputs"]) == 5 and hist["config"]["discriminator_sees_output"]
    assert np.isfinite(hist["domain_loss"]).all()


def test_resume_and_cancel(tmp_path):
    full = _run(tmp_path / "a", 0.5, epochs=2)[1]
    _run(tmp_path / "b", 0.5, epochs=1)
    resumed = _run(tmp_path / "b", 0.5, epochs=2)[1]
    assert np.allclose(full["seg_loss"], resumed["seg_loss"], rtol=1e-4)
    assert np.allclose(full["domain_loss"], resumed["domain_loss"], rtol=1e-4)
    with pytest.raises(InterruptedError):
        _run(tmp_path / "c", 0.5, epochs=1, cancelled=lambda: True)



def test_frozen_batchnorm_keeps_the_running_statistics(tmp_path):
    net, source = _deepmedic_and_source()

    def bn_stats(m):
        return [b.running_mean.clone() for b in m.modules() if isinstance(b, torch.nn.BatchNorm3d)]

    before = bn_stats(net)
    frozen = train_uda(net, source, lambda rng, dev: source(rng, dev)[0] * 3.0 + 2.0, F.cross_entropy,
                       tmp_path / "f", "deepmedic", TINY, epochs=1, iters_per_epoch=3, lam_max=0.1, progress=False,
                       freeze_batchnorm=True)
    assert before and all(torch.equal(a, b) for a, b in zip(before, bn_stats(net)))
    assert frozen["config"]["batchnorm"].startswith("frozen")
    train_uda(net, source, lambda rng, dev: source(rng, dev)[0] * 3.0 + 2.0, F.cross_entropy, tmp_path / "m",
              "deepmedic", TINY, epochs=1, iters_per_epoch=3, lam_max=0.1, progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(before, bn_stats(net)))


def _lesion_toy():
    """A tiny 4-class DeepMedic, a labelled scanner-A source case and an unlabelled scanner-B
    target case, both synthetic at 4 mm."""
    from napari_medlearn.samples.brain_lesions import synthetic_lesion_case
    from napari_medlearn.training.deepmedic import prepare_case, unlabelled_case

    src = synthetic_lesion_case(seed=0, spacing_mm=4.0, n_lesions=1)
    tgt = synthetic_lesion_case(seed=1, spacing_mm=4.0, n_lesions=1, domain="B")
    sp = (4.0, 4.0, 4.0)
    args = {**TINY, "n_classes": 4}
    torch.manual_seed(0)
    net = DeepMedic(**args)
    net.card = {"input": {"spacing_mm": list(sp)}}
    return (net, args, [prepare_case(src.channels, src.labels, sp, src.brain_mask)],
            [unlabelled_case(tgt.channels, sp, tgt.brain_mask)])


def test_lesion_adaptation_with_matched_domain_sampling(tmp_path):
    from napari_medlearn.training.uda import adapt_lesion_segmenter

    net, args, source, target = _lesion_toy()
    runs = {}
    for matched in (False, True):
        runs[matched] = adapt_lesion_segmenter(
            net, "deepmedic", args, source, target, tmp_path / str(matched), epochs=1,
            iters_per_epoch=2, batch_size=8, out=3, progress=False, matched_domain_sampling=matched)
    assert runs[True]["config"]["discriminator_source"].startswith("own source segments")
    assert runs[False]["config"]["discriminator_source"] == "the task's source segments"
    assert all(np.isfinite(h["seg_loss"]).all() for h in runs.values())


def test_pseudo_labels_keep_the_most_confident_portion_of_each_class(monkeypatch):
    from napari_medlearn.methods import lesions
    from napari_medlearn.training.deepmedic import IGNORE_CLASS, LesionTrainingCase
    from napari_medlearn.training.uda import pseudo_label_cases

    rng = np.random.default_rng(0)
    shape = (4, 6, 6)
    prob = rng.dirichlet(np.ones(4), size=shape).transpose(3, 0, 1, 2).astype(np.float32)
    prob[3] *= 0.01                  # a rare class: per-class thresholds still keep its best voxels
    prob /= prob.sum(0, keepdims=True)
    mask = np.ones(shape, bool)
    mask[0] = False
    case = LesionTrainingCase(rng.standard_normal((2, *shape)).astype(np.float32), np.zeros(shape, np.uint8), mask, "t")

    class Res:
        probabilities = prob

    monkeypatch.setattr(lesions, "segment_lesions", lambda *a, **k: Res)
    net = torch.nn.Conv3d(1, 1, 1)
    (out,), rec = pseudo_label_cases(net, [case], 0.5)
    pred, conf = prob.argmax(0), prob.max(0)
    assert (out.classes[~mask] == 0).all()
    assert out.image is case.image and (case.classes == 0).all()
    for k in range(4):
        sel = (pred == k) & mask
        if not sel.any():
            continue
        kept = sel & (out.classes == k)
        assert (out.classes[sel] == k).sum() == pytest.approx(0.5 * sel.sum(), abs=1)
        dropped = sel & (out.classes == IGNORE_CLASS)
        if kept.any() and dropped.any():
            assert conf[kept].min() >= conf[dropped].max()
    assert rec["portion"] == 0.5 and len(rec["thresholds"]) == 4
    assert rec["brain_share_kept"][0] == pytest.approx((out.classes[mask] != IGNORE_CLASS).mean())
    (all_kept,), _ = pseudo_label_cases(net, [case], 1.0)
    assert (all_kept.classes[mask] == pred[mask]).all()
    with pytest.raises(ValueError, match="portion"):
        pseudo_label_cases(net, [case], 0.0)


def test_segments_are_never_centred_on_unselected_voxels():
    from napari_medlearn.training.deepmedic import IGNORE_CLASS, LesionTrainingCase, SegmentSampler

    shape = (12, 12, 12)
    classes = np.zeros(shape, np.uint8)
    classes[2:6, 2:6, 2:6] = IGNORE_CLASS
    classes[7:9, 7:9, 7:9] = 2
    case = LesionTrainingCase(np.zeros((2, *shape), np.float32), classes, np.ones(shape, bool))
    net = DeepMedic(**{**TINY, "n_classes": 4})
    s = SegmentSampler([case], net.geometry(3), fg_fraction=1.0)
    assert set(classes.ravel()[s.fg[0]]) == {2} and set(classes.ravel()[s.bg[0]]) == {0}


def _self_train(tmp_path, epochs=2, portions=(0.5, 0.8), iters=3, **kw):
    from napari_medlearn.training.uda import self_train_lesion_segmenter

    net, args, source, target = _lesion_toy()
    hist = self_train_lesion_segmenter(
        net, "deepmedic", args, source, target, tmp_path, portions=portions, epochs_per_round=epochs,
        iters_per_epoch=iters, batch_size=4, lr=3e-3, out=3, progress=False, **kw)
    return net, hist


def test_self_training_rounds_resume_and_cancel(tmp_path):
    _, full = _self_train(tmp_path / "a")
    assert [r["portion"] for r in full["rounds"]] == [0.5, 0.8]
    assert len(full["source_loss"]) == 4 and np.isfinite(full["target_loss"]).all()
    # a run stopped inside round 2 resumes to the same result as one that never stopped
    part = tmp_path / "d"
    with pytest.raises(InterruptedError):     # calls: round 1's labelling + 6 steps, round 2's + 3 steps
        _self_train(part, cancelled=_cancel_after(1 + 6 + 1 + 3))
    ck = torch.load(part / "self_training.pt", weights_only=True)
    assert (ck["round"], ck["epoch"]) == (1, 0)
    _, resumed = _self_train(part)
    assert np.allclose(full["source_loss"], resumed["source_loss"], rtol=1e-4)
    assert np.allclose(full["target_loss"], resumed["target_loss"], rtol=1e-4)
    with pytest.raises(InterruptedError):
        _self_train(tmp_path / "e", cancelled=lambda: True)


def _cancel_after(n):
    calls = {"n": 0}

    def cancelled():
        calls["n"] += 1
        return calls["n"] > n

    return cancelled


def test_self_training_fits_its_pseudo_labels(tmp_path):
    _, hist = _self_train(tmp_path, epochs=4, portions=(1.0,), iters=6)
    # one round: the pseudo-labels stay fixed and the loss on them falls as the model learns them
    assert hist["target_loss"][-1] < 0.8 * hist["target_loss"][0]


def test_adversarial_self_training_continues_its_discriminator_and_resumes(tmp_path):
    _, fresh = _self_train(tmp_path / "f", adversarial_weight=0.1)
    assert fresh["config"]["discriminator"] == "fresh" and len(fresh["domain_loss"]) == 4
    given = torch.load(tmp_path / "f" / "self_training.pt", weights_only=True)["discriminator"]
    _, full = _self_train(tmp_path / "a", adversarial_weight=0.1, discriminator_state=given)
    assert full["config"]["adversarial_weight"] == 0.1
    assert full["config"]["discriminator"] == "continued from the adversarial stage"
    assert np.isfinite(full["domain_loss"]).all() and len(full["domain_loss"]) == 4
    after = torch.load(tmp_path / "a" / "self_training.pt", weights_only=True)["discriminator"]
    assert any(not torch.equal(given[k], after[k]) for k in given)       # the discriminator trained on
    _, plain = _self_train(tmp_path / "p")
    assert "domain_loss" not in plain and not np.allclose(plain["source_loss"], full["source_loss"])
    part = tmp_path / "d"
    with pytest.raises(InterruptedError):
        _self_train(part, adversarial_weight=0.1, discriminator_state=given,
                    cancelled=_cancel_after(1 + 6 + 1 + 3))
    _, resumed = _self_train(part, adversarial_weight=0.1, discriminator_state=given)
    assert np.allclose(full["domain_loss"], resumed["domain_loss"], rtol=1e-4)
    assert np.allclose(full["target_loss"], resumed["target_loss"], rtol=1e-4)
    with pytest.raises(ValueError, match="adversarial_weight"):
        _self_train(part)                    # a checkpoint of another recipe is not resumed silently
    with pytest.raises(ValueError, match="adversarial_weight"):
        _self_train(tmp_path / "n", adversarial_weight=-1.0)
