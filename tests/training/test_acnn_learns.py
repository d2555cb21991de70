"""The shape prior learns: a tiny denoising autoencoder trained for a few dozen steps
reconstructs masks better than untrained, and its evaluation table is computed from real
corrections (not constants)."""

import numpy as np
import torch

from acnn_helpers import TINY_ACNN, TINY_GRID, TINY_SPACING, ring_labels
from napari_medlearn.imaging.shape_grid import foreground_centre, grid_map, to_canonical
from napari_medlearn.nets import ACNNShapeModel
from napari_medlearn.training.acnn import MaskPool, evaluate_correction, mean_dice


def _recon_dice(net, masks):
    net.eval()
    out = []
    for lab, sp in masks:
        g = grid_map(lab.shape, sp, foreground_centre(lab, sp), TINY_GRID, TINY_SPACING)
        c = to_canonical(lab, g, 4)
        with torch.no_grad():
            p = net(torch.from_numpy(c)[None])[0][0].argmax(0).numpy()
        out.append(mean_dice(p, c.argmax(0)))
    return float(np.mean(out))


def test_denoising_autoencoder_learns_and_evaluation_runs():
    torch.manual_seed(0)
    sp = (8.0, 3.0, 3.0)
    masks = [(ring_labels(shape=(6, 56, 56), spacing=sp, r_lv=r, wall=10.0), sp) for r in (18.0, 24.0, 30.0)]
    pool = MaskPool(grid=TINY_GRID, grid_spacing=TINY_SPACING, p_corrupt=0.0, augment=False)
    for lab, s in masks:
        pool.add(lab, s)
    net = ACNNShapeModel(**{**TINY_ACNN, "filters": [8, 8]})
    before = _recon_dice(net, masks)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    net.train()
    for _ in range(80):
        x, y = pool.batch(rng, "cpu", 4)
        loss = torch.nn.functional.cross_entropy(net(x)[0], y[:, 0])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _recon_dice(net, masks)
    assert after > before + 0.2 and after > 0.4
    net.eval()
    net.card = {"n_classes": 4, "input": {"grid": list(TINY_GRID), "grid_spacing_mm": list(TINY_SPACING)}}
    ev = evaluate_correction(net, [(masks[1][0], sp, "ring")], kinds=("islands", "lost_slice"))
    s = ev["summary"]
    assert s["all"]["n"] == 2 and {r["corruption"] for r in ev["cases"]} == {"islands", "lost_slice"}
    assert 0.0 < s["all"]["dice_corrupted_mean"] < 1.0
    assert 0.0 <= s["clean_dice_to_self_mean"] <= 1.0


def test_calibration_takes_a_typical_expert_mask_as_plausible():
    """The calibration is read off clean masks alone: their median agreement -> 0.9, their 5th
    percentile -> 0.5 (the earlier rule, a step between the clean and damaged medians, scored
    40 % of held-out ACDC expert masks about 0)."""
    import pytest

    from napari_medlearn.methods.acnn import calibrate
    from napari_medlearn.training.acnn import calibration

    torch.manual_seed(0)
    net = ACNNShapeModel(**TINY_ACNN).eval()
    sp = (8.0, 3.0, 3.0)
    masks = [(ring_labels(shape=(6, 56, 56), spacing=sp, r_lv=r, wall=w), sp) for r in (14.0, 18.0, 22.0)
             for w in (6.0, 10.0)]
    cal = calibration(net, masks, np.random.default_rng(0))
    card = {"plausibility_calibration": cal}
    assert calibrate(cal["clean_median_agreement"], card) == pytest.approx(0.9, abs=1e-6)
    assert calibrate(cal["clean_p5_agreement"], card) == pytest.approx(0.5, abs=1e-6)
    assert cal["n_masks"] == 6
