"""ACNN-Seg: whole-stack batches mapped onto the prior's canonical grid exactly as the numpy
path does, a shape loss whose gradient reaches only the segmenter, and a tiny run that learns."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from acnn_helpers import TINY_ACNN, ring_labels
from napari_medlearn.imaging.shape_grid import foreground_centre, grid_map, to_canonical
from napari_medlearn.nets import ACNNShapeModel, BaiFCN
from helpers import needs_acdc
from napari_medlearn.training.acnn_seg import (ShapeRegularisedLoss, StackPool, antialias, antialias_kernel,
                                               to_canonical_torch, topology_faults)


def _pool(n=2):
    pool = StackPool({"scale": (0.9, 1.1)}, crop=48)
    for s in range(n):
        lab = ring_labels(shape=(6, 64, 64), spacing=(8.0, 1.5, 1.5))
        img = (lab > 0) * 0.6 + 0.2 + np.random.default_rng(s).normal(0, 0.02, lab.shape)
        pool.add_volume(img.astype(np.float32), lab, (8.0, 1.5, 1.5))
    return pool


def test_stack_batches_and_the_canonical_mapping_match_the_numpy_path():
    pool = _pool()
    x, y = pool.batch(np.random.default_rng(0), "cpu", grid=(4, 16, 16), grid_spacing=(20.0, 9.0, 9.0))
    assert x.shape == (6, 1, 48, 48) and y["labels"].shape == (6, 1, 48, 48) and y["grid"].shape == (1, 4, 16, 16, 3)
    lab = y["labels"][:, 0].numpy().astype(np.uint8)
    assert set(np.unique(lab)) <= {0, 1, 2, 3} and (lab > 0).any()
    gmap = grid_map(lab.shape, (8.0, 1.5, 1.5), foreground_centre(lab, (8.0, 1.5, 1.5)), (4, 16, 16), (20.0, 9.0, 9.0))
    ref = to_canonical(lab, gmap, 4)
    oh = F.one_hot(y["labels"][:, 0], 4).permute(0, 3, 1, 2).float()
    mine = to_canonical_torch(oh, y["grid"])[0].numpy()
    np.testing.assert_allclose(mine.sum(0), 1.0, atol=1e-5)
    # identical away from the stack's first and last slice (edge handling differs by half a voxel)
    np.testing.assert_allclose(mine[:, 1:-1], ref[:, 1:-1], atol=1e-4)


def test_far_crops_cover_the_field_of_view_and_near_ones_the_heart():
    lab = np.zeros((4, 160, 160), np.uint8)
    lab[:, 70:90, 70:90] = 1
    near, far = StackPool(crop=32), StackPool(crop=32, far_fraction=1.0)
    for p in (near, far):
        p.add_volume(lab.astype(np.float32), lab, (8.0, 1.5, 1.5))
    rng = np.random.default_rng(0)
    near_hits = [near._crop(rng, 0, 32)[1].any() for _ in range(50)]
    far_hits = [far._crop(rng, 0, 32)[1].any() for _ in range(200)]
    assert all(near_hits)
    assert 0.02 < np.mean(far_hits) < 0.5       # mostly background, sometimes the heart


def test_shape_loss_trains_the_segmenter_not_the_prior():
    torch.manual_seed(0)
    prior = ACNNShapeModel(**TINY_ACNN)
    before = [p.clone() for p in prior.parameters()]
    net = BaiFCN(filters=(4, 4, 4, 4, 4), blocks=(1, 1, 1, 1, 1), same_dim=4, fc=4)
    pool = _pool(1)
    x, y = pool.batch(np.random.default_rng(1), "cpu", grid=(4, 16, 16), grid_spacing=(20.0, 9.0, 9.0))
    loss_fn = ShapeRegularisedLoss(prior, lam=1.0)
    loss = loss_fn(net(x), y)
    loss.backward()
    assert loss_fn.last["shape"] > 0 and np.isfinite(loss_fn.last["seg"])
    assert all(p.grad is None for p in prior.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, prior.parameters()))
    plain = ShapeRegularisedLoss(None, lam=0.0)
    assert float(plain(net(x), y).detach()) == pytest.approx(loss_fn.last["seg"], rel=1e-5)


def test_topology_faults():
    lab = ring_labels(shape=(6, 48, 40))
    assert topology_faults(lab)["any"] is False
    lab[0, 1:3, 1:3] = 1
    lab[3, 23, 18] = 0
    f = topology_faults(lab)
    assert f["islands"] == 1 and f["holes"] >= 1 and f["any"] is True




@needs_acdc
def test_tiny_acnn_seg_run_learns_and_compares_with_its_twin(tmp_path):
    from napari_medlearn import zoo
    from napari_medlearn.training.acnn_seg import run_acnn_seg

    torch.set_num_threads(1)
    prior = tmp_path / "prior.pt"
    torch.manual_seed(0)
    zoo.save_checkpoint(ACNNShapeModel(**TINY_ACNN).eval(), prior, "acnn_shape", TINY_ACNN, card={
        "name": "tiny-prior", "task": "cardiac-shape-prior", "n_classes": 4,
        "input": {"grid": [4, 16, 16], "grid_spacing_mm": [20.0, 9.0, 9.0]}})
    card = run_acnn_seg(tmp_path / "run", epochs=3, iters_per_epoch=12, init=None, width=0.125,
                        prior=str(prior), max_patients=6, n_val_per_group=4, device="cpu", progress=False)
    loss = card["training"]["loss_per_epoch"]
    assert loss[-1] < loss[0], loss
    ev = card["evaluation"]
    assert ev["summary"]["n_frames"] == 8 and ev["twin_without_shape_loss"]["n_frames"] == 8
    assert set(ev["acnn_vs_twin"]) >= {"dice_mean_acnn_minus_plain", "hd95_mm_acnn_minus_plain"}
    assert card["name"] == "cardiac-fcn-acnn" and card["task"] == "cardiac-segmentation"
    assert (tmp_path / "run" / "plain" / "model.pt").exists() and (tmp_path / "run" / "model.pt").exists()


def test_every_pixel_reaches_the_shape_code_only_with_the_low_pass():
    """The canonical grid is twice as coarse as the slices: bilinear sampling alone lands on one
    pixel in four; the tent filter first spreads every pixel onto the sampled ones."""
    pool = _pool(1)
    x, y = pool.batch(np.random.default_rng(0), "cpu", grid=(4, 16, 16), grid_spacing=(8.0, 3.0, 3.0))
    lab = y["labels"][:, 0]
    heart = (lab > 0).numpy()
    assert antialias_kernel(1.0) is None and torch.allclose(antialias_kernel(2.0), torch.tensor([0.25, 0.5, 0.25]))
    reached = {}
    for name, kernel in (("plain", None), ("low-pass", antialias_kernel(2.0))):
        prob = F.one_hot(lab, 4).permute(0, 3, 1, 2).float().requires_grad_(True)
        can = to_canonical_torch(antialias(prob, kernel), y["grid"])
        (can[:, 1:] * torch.randn_like(can[:, 1:])).sum().backward()
        reached[name] = float((prob.grad.abs().sum(1).numpy()[heart] > 0).mean())
    assert reached["plain"] < 0.75 and reached["low-pass"] > 0.95, reached
    blurred = antialias(F.one_hot(lab, 4).permute(0, 3, 1, 2).float(), antialias_kernel(2.0))
    assert torch.allclose(blurred.sum(1), torch.ones_like(blurred[:, 0]), atol=1e-5)   # still probabilities
