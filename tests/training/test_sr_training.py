"""training.sr: patches whose thick input is the box profile of their target, fusion inputs from
the same B-spline resampling as the method, and a tiny run that learns beyond interpolation."""

import numpy as np
import torch

from napari_medlearn.imaging import slices as S
from napari_medlearn.imaging.volume import affine_from_spacing
from napari_medlearn.nets.sr import SRNet
from napari_medlearn.training.sr import BrainVolume, SRPatchPool, central_mse, coronal_stack
from helpers import needs_acdc


def _volume(shape=(24, 20, 20), seed=0):
    from scipy import ndimage as ndi

    img = ndi.gaussian_filter(np.random.default_rng(seed).random(shape), 1.0).astype(np.float32)
    img /= img.max()
    return BrainVolume("synthetic", img, affine_from_spacing((1.0, 1.0, 1.0)), np.ones(shape, bool))


def test_single_patches_are_box_profiles_of_their_targets():
    pool = SRPatchPool([_volume()], 4, (8, 12, 12))
    x, y = pool.batch(np.random.default_rng(0), "cpu", 6)
    assert x.shape == (6, 1, 2, 12, 12) and y.shape == (6, 1, 8, 12, 12)
    box = y.reshape(6, 1, 2, 4, 12, 12).mean(3)
    torch.testing.assert_close(x, box, rtol=1e-5, atol=1e-6)


def test_fusion_patches_hold_the_reference_interpolation_first():
    v = _volume()
    pool = SRPatchPool([v], 4, (24, 20, 20), fusion=True)
    rng = np.random.default_rng(3)
    x, y = pool.batch(rng, "cpu", 1)
    assert x.shape == (1, 2, 24, 20, 20) and y.shape == (1, 1, 24, 20, 20)
    # the entries are the method's own resampling of thick stacks along two different axes
    interps = pool.items[0]["interp"]
    t0, a0 = S.thick_slices(v.image, v.affine, 4, axis=0)
    np.testing.assert_allclose(interps[0], S.spline_upsample(t0, a0, 4, axis=0)[0])
    cor, cor_aff = coronal_stack(v, 4)
    assert cor.shape == (5, 24, 20)
    np.testing.assert_allclose((cor_aff @ [0, 0, 0, 1])[:3], (v.affine @ [0, 1.5, 0, 1])[:3])


def test_a_tiny_run_learns_beyond_interpolation():
    torch.manual_seed(0)
    vols = [_volume(seed=s) for s in range(2)]
    pool = SRPatchPool(vols, 2, (8, 12, 12))
    net = SRNet(factor=2, width=6, n_lr=1, n_hr=2)
    loss = central_mse(2, False)
    rng = np.random.default_rng(0)
    xv, yv = pool.batch(np.random.default_rng(99), "cpu", 8)
    with torch.no_grad():
        base = float(loss(net(xv), yv))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(120):
        x, y = pool.batch(rng, "cpu", 4)
        opt.zero_grad()
        loss(net(x), y).backward()
        opt.step()
    with torch.no_grad():
        after = float(loss(net(xv), yv))
    assert after < 0.8 * base, (base, after)


def test_in_plane_pairs_thicken_one_in_plane_axis_with_the_box_profile():
    """SMORE-style pairs: the target is (in-plane axis A, in-plane axis B, slices) of a short-axis
    frame and the input is its box-profile thickening along A."""
    from napari_medlearn.training.sr import InPlanePatchPool

    img = _volume((6, 40, 36)).image
    pool = InPlanePatchPool([("frame", img, np.zeros(img.shape, np.uint8), (8.0, 1.5, 1.5))], 4, (16, 20, 3))
    assert len(pool.items) == 2        # y as the thin axis, and x
    hr, thick = pool.items[0]
    np.testing.assert_allclose(hr, np.transpose(img, (1, 2, 0)))
    x, y = pool.batch(np.random.default_rng(0), "cpu", 5)
    assert x.shape == (5, 1, 4, 20, 3) and y.shape == (5, 1, 16, 20, 3)
    torch.testing.assert_close(x, y.reshape(5, 1, 4, 4, 20, 3).mean(3), rtol=1e-5, atol=1e-6)




@needs_acdc
def test_cardiac_self_supervised_recipe_learns(tmp_path):
    """A tiny sr-cardiac-acdc run: the loss falls and, on held-out ACDC patients, the restored
    in-plane axis is closer to the truth than the untrained network's linear interpolation."""
    from napari_medlearn.training.acdc import find_acdc_root, list_patients, stratified_split
    from napari_medlearn.training.sr import acdc_frames, evaluate_in_plane, run_sr_cardiac_acdc

    torch.set_num_threads(1)
    card = run_sr_cardiac_acdc(tmp_path, epochs=4, iters_per_epoch=60, batch_size=8, width=8, max_patients=4,
                               n_eval=2, device="cpu", progress=False)
    loss = card["training"]["loss_per_epoch"]
    assert loss[-1] < loss[0], loss
    root = find_acdc_root()
    _, val = stratified_split(list_patients(root), n_val_per_group=4, seed=0)
    assert card["evaluation"]["held_out_patients"] == val[:2]
    assert not set(val) & set(n.split()[0] for n in card["training"]["data"].split(";"))
    frames = acdc_frames(root, val[:2])
    untrained = evaluate_in_plane(SRNet(factor=4, width=8, planar=True).eval(), frames, 4)["summary"]
    trained = card["evaluation"]["summary"]
    assert trained["psnr_sr"] > untrained["psnr_sr"] + 0.2, (trained, untrained)
    assert card["arch_args"]["planar"] is True and card["task"] == "mr-super-resolution"
    assert (tmp_path / card["evaluation"]["figure"]).exists()
