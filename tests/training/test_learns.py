"""The training loop and the cardiac recipe learn, and resuming equals not stopping."""

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from napari_medlearn import zoo
from napari_medlearn.imaging import measures as M
from napari_medlearn.methods import segment_heart
from napari_medlearn.nets import BaiFCN
from napari_medlearn.samples.cardiac_phantom import cardiac_cine_phantom
from napari_medlearn.training.cardiac import SlicePool
from napari_medlearn.training.presets import fcn_args
from napari_medlearn.training.trainer import TrainConfig, train

SPACING = 3.0


@pytest.fixture(scope="module")
def pool():
    p = SlicePool(crop=64)
    for seed in (0, 1):
        ph = cardiac_cine_phantom(seed=seed, n_frames=4, in_plane_spacing=SPACING, matrix=112)
        for t in range(ph.image.shape[0]):
            p.add_volume(ph.image[t], ph.labels[t], ph.spacing, SPACING)
    return p


def _lv_dice(model, phantom):
    model.card = {"input": {"in_plane_spacing_mm": SPACING}, "n_classes": 4}
    res = segment_heart(phantom.image, phantom.spacing, model=model, transpose_tta=False)
    return M.dice(res.labels == 1, phantom.labels == 1)


def test_loss_falls_and_held_out_dice_rises(pool, tmp_path):
    args = fcn_args(0.25)
    torch.manual_seed(0)
    model = BaiFCN(**args)
    held_out = cardiac_cine_phantom(seed=10003, n_frames=2, in_plane_spacing=SPACING, matrix=112)
    before = _lv_dice(model, held_out)
    cfg = TrainConfig(epochs=6, iters_per_epoch=25, lr=3e-3, seed=0, device="cpu")
    hist = train(model, "bai_fcn", args, lambda rng, dev: pool.batch(rng, dev, 8),
                 DiceCELoss(to_onehot_y=True, softmax=True), cfg, tmp_path, progress=False)
    after = _lv_dice(model, held_out)
    assert hist["loss"][-1] < 0.8 * hist["loss"][0], hist["loss"]
    assert after > before + 0.3 and after > 0.5, (before, after)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(pool, tmp_path):
    args = dict(filters=[2, 2, 2, 2, 2], blocks=[1, 1, 1, 1, 1], same_dim=2, fc=2)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def run(run_dir, epochs):
        torch.manual_seed(0)
        m = BaiFCN(**args)
        cfg = TrainConfig(epochs=epochs, iters_per_epoch=3, seed=1, device="cpu")
        train(m, "bai_fcn", args, lambda rng, dev: pool.batch(rng, dev, 2), loss, cfg, run_dir, progress=False)
        return m

    straight = run(tmp_path / "a", 2)
    run(tmp_path / "b", 1)              # stopped after one epoch ...
    resumed = run(tmp_path / "b", 2)    # ... and resumed from its checkpoint
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    ckpt = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    card = zoo.load(tmp_path / "b" / "last.pt").card     # no card at all: one generated, named after the file
    assert card["sha256"] == zoo.sha256_of(tmp_path / "b" / "last.pt")
    assert card["name"] == "last (file last.pt)" and card["generated"] and card["architecture"] == "bai_fcn"


def test_batches_are_augmented_pairs(pool):
    x, y = pool.batch(np.random.default_rng(0), "cpu", 4)
    assert x.shape == (4, 1, 64, 64) and y.shape == (4, 1, 64, 64) and y.dtype == torch.long
    assert set(y.unique().tolist()) <= {0, 1, 2, 3}
    # labels stay on the bright blood: LV voxels are brighter than myocardium on average
    assert x[y == 1].mean() > x[y == 2].mean()
