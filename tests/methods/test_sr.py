"""methods.sr: geometry of the super-resolved grid, cines, fusion from affines, bad input."""

import numpy as np
import pytest
import torch

from napari_medlearn.imaging.slices import fine_grid, thick_slices
from napari_medlearn.imaging.volume import affine_from_spacing
from napari_medlearn.methods import sr as M
from napari_medlearn.methods import super_resolve, super_resolve_stacks
from napari_medlearn.nets.sr import MultiInputSRNet, SRNet


def _tiny_net(factor=3, seed=0):
    torch.manual_seed(seed)
    net = SRNet(factor=factor, width=3, n_lr=1, n_hr=2)
    torch.nn.init.normal_(net.out.weight, std=0.1)     # off the zero start, so the network shows
    return net.eval()


def _ball(shape, affine, centre, radius):
    idx = np.indices(shape).reshape(3, -1).T
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    return (np.linalg.norm(world - centre, axis=1) < radius).reshape(shape).astype(np.float32)


def test_spline_result_keeps_the_extent_and_moves_slice_centres():
    aff = affine_from_spacing((6.0, 1.5, 1.5), origin=(10.0, -20.0, 30.0))
    stack = np.random.default_rng(0).random((5, 12, 10)).astype(np.float32)
    before = stack.copy()
    r = super_resolve(stack, (6.0, 1.5, 1.5), 3, model="spline", affine=aff)
    shape, faff = fine_grid(stack.shape, aff, 3)
    assert r.image.shape == shape == (15, 12, 10)
    np.testing.assert_allclose(r.affine, faff)
    np.testing.assert_allclose(r.spacing, (2.0, 1.5, 1.5))
    # first thin slice centre sits a third of a thick slice before the first thick centre
    np.testing.assert_allclose((r.affine @ [0, 0, 0, 1])[:3], (aff @ [-1 / 3, 0, 0, 1])[:3])
    np.testing.assert_array_equal(stack, before)
    np.testing.assert_array_equal(r.image, r.baseline)


def test_network_result_cine_frame_by_frame_and_tiles_agree(monkeypatch):
    net = _tiny_net(3)
    cine = np.random.default_rng(1).random((2, 4, 20, 18)).astype(np.float32) * 100
    r = super_resolve(cine, (6.0, 1.0, 1.0), 3, model=net)
    assert r.image.shape == (2, 12, 20, 18) and r.baseline.shape == r.image.shape
    one = super_resolve(cine[1], (6.0, 1.0, 1.0), 3, model=net)
    np.testing.assert_allclose(r.image[1], one.image, rtol=1e-5, atol=1e-3)
    assert not np.allclose(one.image, one.baseline)
    monkeypatch.setattr(M, "TILE", 7)
    tiled = super_resolve(cine[1], (6.0, 1.0, 1.0), 3, model=net)
    np.testing.assert_allclose(tiled.image, one.image, rtol=1e-5, atol=1e-3)
    steps = []
    super_resolve(cine[0], (6.0, 1.0, 1.0), 3, model=net, progress=lambda d, t, m: steps.append((d, t)))
    assert steps[-1][0] == steps[-1][1] > 1


@pytest.mark.parametrize("stack,factor,match", [
    (np.zeros((8, 8)), 2, "2-D"),
    (np.zeros((4, 8, 8)), 1, "factor"),
    (np.zeros((4, 8, 8)), 2.5, "factor"),
    (np.full((4, 8, 8), np.nan), 2, "NaN"),
])
def test_bad_input(stack, factor, match):
    with pytest.raises(ValueError, match=match):
        super_resolve(stack, (4.0, 1.0, 1.0), factor, model="spline")


def test_a_model_for_another_factor_is_refused():
    with pytest.raises(ValueError, match="upsamples by 3"):
        super_resolve(np.zeros((4, 8, 8)), (4.0, 1.0, 1.0), 4, model=_tiny_net(3))


def _rot(axis, angle):
    c, s = np.cos(angle), np.sin(angle)
    m = np.eye(3)
    i, j = [k for k in range(3) if k != axis]
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def test_an_oblique_long_axis_stack_fuses_into_the_right_place():
    centre = np.array([5.0, -12.0, 18.0])
    # reference: axial stack, 4 mm slices, 1 mm in-plane
    ax_aff = affine_from_spacing((4.0, 1.0, 1.0), origin=tuple(centre - (20.0, 20.0, 20.0)))
    ax = _ball((10, 40, 40), ax_aff, centre, 8.0)
    # "long axis": oblique stack, thick along its own z, rotated about two axes
    R = _rot(0, 0.5) @ _rot(2, -0.8)
    la_aff = np.eye(4)
    la_aff[:3, :3] = R @ np.diag([4.0, 1.0, 1.0])
    la_aff[:3, 3] = centre - la_aff[:3, :3] @ np.array([5.0, 22.0, 22.0])
    la = _ball((11, 45, 45), la_aff, centre, 8.0)
    r = super_resolve_stacks([(ax, ax_aff), (la, la_aff)], (1.0, 1.0, 1.0), model="average")
    assert r.image.shape == (40, 40, 40)
    _, faff = fine_grid(ax.shape, ax_aff, 4)
    np.testing.assert_allclose(r.affine, faff, atol=1e-9)
    w = r.image.clip(0, None)
    com = np.array([(np.indices(w.shape)[a] * w).sum() / w.sum() for a in range(3)])
    np.testing.assert_allclose((r.affine @ np.r_[com, 1])[:3], centre, atol=0.6)
    # the long-axis stack alone lands on the same ball: resampled, it agrees with the truth
    truth = _ball((40, 40, 40), faff, centre, 8.0)
    only_la = M.S.resample(la, la_aff, (40, 40, 40), faff, order=1)
    assert np.mean(np.abs(only_la - truth)) < 0.05
    # a misplaced long-axis stack (shifted 2 cm) moves the fused centroid: geometry really is used
    shifted = la_aff.copy()
    shifted[:3, 3] += (0.0, 0.0, 20.0)
    r2 = super_resolve_stacks([(ax, ax_aff), (la, shifted)], (1.0, 1.0, 1.0), model="average")
    assert not np.allclose(r2.image, r.image, atol=0.05)


def test_fusion_network_and_bad_stacks():
    aff = affine_from_spacing((3.0, 1.0, 1.0))
    a = np.random.default_rng(2).random((4, 10, 10)).astype(np.float32)
    torch.manual_seed(0)
    net = MultiInputSRNet(n_inputs=2, width=2, n_stream=1, n_fused=1).eval()
    r = super_resolve_stacks([(a, aff), (a, aff)], (1.0, 1.0, 1.0), model=net)
    assert r.image.shape == (12, 10, 10)
    np.testing.assert_allclose(r.image, r.baseline, atol=1e-4)   # untrained residual head is zero
    with pytest.raises(ValueError, match="fuses 2 stacks"):
        super_resolve_stacks([(a, aff)] * 3, (1.0, 1.0, 1.0), model=net)
    far = aff.copy()
    far[:3, 3] += 1000.0
    with pytest.raises(ValueError, match="does not overlap"):
        super_resolve_stacks([(a, aff), (a, far)], (1.0, 1.0, 1.0), model="average")
    with pytest.raises(ValueError, match="at least 2"):
        super_resolve_stacks([(a, aff)], (1.0, 1.0, 1.0), model="average")
    with pytest.raises(ValueError, match="NaN"):
        super_resolve_stacks([(a, aff), (np.full_like(a, np.nan), aff)], (1.0, 1.0, 1.0), model="average")
    with pytest.raises(ValueError, match="3-D"):
        super_resolve_stacks([(a, aff), (a[0], aff)], (1.0, 1.0, 1.0), model="average")


def test_box_profile_round_trip_through_the_method_on_a_smooth_volume():
    """Thicken a smooth volume, super-resolve with the spline baseline: the thin grid is the
    original one and the error is small where the volume is smooth."""
    aff = affine_from_spacing((1.0, 1.0, 1.0))
    z = np.arange(48, dtype=np.float32)
    vol = np.broadcast_to(np.sin(z / 8.0)[:, None, None], (48, 6, 6)).copy()
    thick, taff = thick_slices(vol, aff, 4)
    r = super_resolve(thick, (4.0, 1.0, 1.0), 4, model="spline", affine=taff)
    np.testing.assert_allclose(r.affine, aff, atol=1e-12)
    assert np.abs(r.image[8:-8] - vol[8:-8]).max() < 0.03


def test_a_planar_model_runs_on_both_in_plane_orientations():
    """A planar (SMORE-style) network sees (z, y) and (z, x) planes and averages the two: swapping
    y and x of the input swaps the output exactly."""
    import torch

    torch.manual_seed(1)
    net = SRNet(factor=2, width=4, planar=True).eval()
    torch.nn.init.normal_(net.out.weight, std=0.2)
    stack = np.random.default_rng(0).random((5, 14, 11)).astype(np.float32)
    r = super_resolve(stack, (4.0, 1.0, 1.0), 2, model=net)
    t = super_resolve(np.ascontiguousarray(stack.swapaxes(1, 2)), (4.0, 1.0, 1.0), 2, model=net)
    np.testing.assert_allclose(t.image, r.image.swapaxes(1, 2), rtol=1e-5, atol=1e-5)
    s = M.intensity_scale(stack)
    with torch.inference_mode():
        one = net(torch.from_numpy(stack / s)[None, None])[0, 0].numpy()
    assert not np.allclose(r.image, one * s, atol=1e-4)   # not just one pass


def test_an_image_with_negative_values_is_shifted_to_zero_for_the_network_and_back(monkeypatch):
    """The networks learnt MR magnitudes (>= 0, background 0). A z-scored copy of a magnitude
    stack (its background the minimum, below 0) is shifted to a minimum of 0 before them and back
    after: its result is the magnitude's result, shifted. Without the shift the network sees
    another image and answers otherwise."""
    rng = np.random.default_rng(3)
    mag = np.zeros((4, 16, 14), np.float32)
    mag[:, 3:-3, 3:-3] = rng.random((4, 10, 8)) * 50 + 10
    neg = mag - 20.0
    aff = affine_from_spacing((3.0, 1.0, 1.0))
    net = _tiny_net(3)
    r0 = super_resolve(mag, (3.0, 1.0, 1.0), 3, model=net)
    r1 = super_resolve(neg, (3.0, 1.0, 1.0), 3, model=net)
    np.testing.assert_allclose(r1.image, r0.image - 20.0, atol=1e-3)
    np.testing.assert_allclose(r1.baseline, r0.baseline - 20.0, atol=1e-3)
    torch.manual_seed(0)
    fuse = MultiInputSRNet(n_inputs=2, width=2, n_stream=1, n_fused=1).eval()
    torch.nn.init.normal_(fuse.out.weight, std=0.1)
    f0 = super_resolve_stacks([(mag, aff), (mag[:, ::-1].copy(), aff)], (1.0, 1.0, 1.0), model=fuse)
    f1 = super_resolve_stacks([(neg, aff), (neg[:, ::-1].copy(), aff)], (1.0, 1.0, 1.0), model=fuse)
    np.testing.assert_allclose(f1.image, f0.image - 20.0, atol=1e-3)
    np.testing.assert_allclose(f1.baseline, f0.baseline - 20.0, atol=1e-3)
    assert M.intensity_offset(mag) == 0.0 and M.intensity_offset(mag, neg) == -20.0
    monkeypatch.setattr(M, "intensity_offset", lambda *a: 0.0)          # as before the shift
    unshifted = super_resolve(neg, (3.0, 1.0, 1.0), 3, model=net)
    assert np.abs(unshifted.image - (r0.image - 20.0)).max() > 0.5


def test_backends_agree_and_the_result_says_which_ran(monkeypatch):
    """Issue 36: the tiles under the CPU runtime (edge tiles of other shapes too) equal torch's
    within 1e-3 of an image of range 100; each result records its backend."""
    pytest.importorskip("openvino")
    from napari_medlearn import inference

    monkeypatch.setattr(M, "TILE", 7)
    net = _tiny_net(3)
    stack = np.random.default_rng(3).random((4, 20, 18)).astype(np.float32) * 100
    ref = super_resolve(stack, (6.0, 1.0, 1.0), 3, model=net, backend="torch")
    got = super_resolve(stack, (6.0, 1.0, 1.0), 3, model=net, backend="onnx")
    assert ref.backend == "torch" and got.backend == inference.RUNTIME
    np.testing.assert_allclose(got.image, ref.image, atol=1e-3)
    assert super_resolve(stack, (6.0, 1.0, 1.0), 3, model="spline").backend == ""
