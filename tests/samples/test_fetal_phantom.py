import numpy as np
import pytest

from napari_medlearn.samples.fetal_phantom import (
    BACKGROUND,
    PHANTOM_PLANES,
    PLANE_TOLERANCE,
    SONONET_CLASSES,
    extract_plane,
    fetal_sweep,
    fetal_volume,
    render_planes,
)


@pytest.fixture(scope="module")
def sweep():
    return fetal_sweep(seed=0)


def test_published_class_order():
    assert SONONET_CLASSES == ("3VV", "4CH", "Abdominal", "Background", "Brain (Cb.)", "Brain (Tv.)", "Femur",
                               "Kidneys", "Lips", "LVOT", "Profile", "RVOT", "Spine (cor.)", "Spine (sag.)")
    assert SONONET_CLASSES[BACKGROUND] == "Background"


def test_shapes_types_and_range(sweep):
    assert sweep.frames.shape == (120, 224, 288) and sweep.frames.dtype == np.float32
    assert sweep.frames.min() >= 0.0 and sweep.frames.max() <= 1.0
    assert sweep.labels.shape == (120,) and sweep.labels.dtype == np.int64
    assert sweep.class_names == SONONET_CLASSES
    assert sweep.poses.shape == (120, 3, 3)
    assert 0.25 < sweep.pixel_spacing_mm < 0.6 and sweep.seed == 0
    # tissue is grey, fluid dark, bone bright: the frames use the display range
    inside = sweep.frames[sweep.frames > 0]
    assert 0.25 < np.median(inside) < 0.7 and np.quantile(inside, 0.999) > 0.75


def test_sector_mask(sweep):
    # outside the fan (the top corners) every frame is exactly zero; inside it there is signal
    assert np.all(sweep.frames[:, :12, :12] == 0) and np.all(sweep.frames[:, :12, -12:] == 0)
    centre_column = sweep.frames[:, 20:, 140:148]
    assert (centre_column > 0).any(axis=0).mean() > 0.95


def test_every_standard_plane_and_background_present(sweep):
    names = set(sweep.label_names)
    assert set(PHANTOM_PLANES) <= names and "Background" in names
    assert names <= set(PHANTOM_PLANES) | {"Background"}
    counts = np.bincount(sweep.labels, minlength=len(SONONET_CLASSES))
    assert 0.25 < counts[BACKGROUND] / len(sweep.labels) < 0.75


def _normal(pose):
    return np.cross(pose[1], pose[2])


def test_labels_follow_the_poses(sweep):
    """A labelled frame lies within tolerance of its plane's true pose; a Background frame lies
    outside the tolerance of every plane defined by its normal (Femur is defined by its axis)."""
    cos_tol = np.cos(np.radians(PLANE_TOLERANCE["angle_deg"]))

    def near(pose, std):
        n = _normal(pose)
        off = std[0] - pose[0]
        dist = abs(off @ n)
        in_plane = np.linalg.norm(off - (off @ n) * n)
        return (abs(n @ _normal(std)) >= cos_tol - 1e-9 and dist <= PLANE_TOLERANCE["distance_mm"] + 1e-9
                and in_plane <= PLANE_TOLERANCE["in_plane_mm"] + 1e-9)

    femur = []
    for pose, name in zip(sweep.poses, sweep.label_names):
        if name == "Background":
            assert not any(near(pose, sweep.standard_poses[p]) for p in PHANTOM_PLANES if p != "Femur")
        elif name == "Femur":
            femur.append(pose)
        else:
            assert near(pose, sweep.standard_poses[name]), name
    # Femur frames hold the visited bone's axis (the true column axis) within tolerance (a few
    # may hold the other femur, also a femur plane)
    axis = sweep.standard_poses["Femur"][2]
    sin_tol = np.sin(np.radians(PLANE_TOLERANCE["angle_deg"]))
    assert np.mean([abs(_normal(p) @ axis) <= sin_tol + 1e-9 for p in femur]) >= 0.8
    # axes are orthonormal
    g = np.einsum("tij,tkj->tik", sweep.poses[:, 1:], sweep.poses[:, 1:])
    assert np.allclose(g, np.eye(2), atol=1e-6)


def test_rendering_a_true_pose_gives_its_label():
    sw = fetal_sweep(seed=5, n_frames=4, shape=(96, 128))
    names = list(sw.standard_poses)
    frames, labels = render_planes(5, np.stack([sw.standard_poses[n] for n in names]), shape=(96, 128))
    assert [SONONET_CLASSES[i] for i in labels] == names
    assert frames.shape == (len(names), 96, 128) and frames.dtype == np.float32


def test_same_seed_same_sweep_other_seed_differs():
    a = fetal_sweep(seed=11, n_frames=6, shape=(64, 80))
    b = fetal_sweep(seed=11, n_frames=6, shape=(64, 80))
    c = fetal_sweep(seed=12, n_frames=6, shape=(64, 80))
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.poses, b.poses)
    assert not np.array_equal(a.frames, c.frames)
    assert a.params["size"] != c.params["size"]


def test_standard_planes_are_distinguishable(sweep):
    """Leave-one-out nearest class mean on 4x-downsampled frames separates the planes."""
    keep = sweep.labels != BACKGROUND
    x = sweep.frames[keep][:, ::4, ::4].reshape(keep.sum(), -1).astype(float)
    y = sweep.labels[keep]
    classes = np.unique(y)
    sums = {c: x[y == c].sum(0) for c in classes}
    counts = {c: (y == c).sum() for c in classes}
    correct = 0
    for xi, yi in zip(x, y):
        means = {c: (sums[c] - (xi if c == yi else 0)) / (counts[c] - (c == yi)) for c in classes}
        correct += min(means, key=lambda c: np.sum((xi - means[c]) ** 2)) == yi
    assert correct / len(y) > 0.8
    # and the class means differ from each other by more than speckle does within a class
    mean_img = {c: sweep.frames[sweep.labels == c].mean(0) for c in classes}
    brain, abdomen = SONONET_CLASSES.index("Brain (Tv.)"), SONONET_CLASSES.index("Abdominal")
    assert np.abs(mean_img[brain] - mean_img[abdomen]).mean() > 0.05


def test_bone_casts_a_shadow():
    """Under the femur (deeper along the beams) the image is darker than above it."""
    sw = fetal_sweep(seed=2, n_frames=4, shape=(224, 288))
    std = sw.standard_poses["Femur"]
    (frame,), _ = render_planes(2, std[None])
    H, W = frame.shape
    cols = frame[:, W // 2 - 20:W // 2 + 20]
    # the femur crosses the image centre horizontally: its bright surface is the brightest row
    rows = cols.mean(1)
    c = H // 4 + int(np.argmax(rows[H // 4:3 * H // 4]))
    assert cols[c - 3:c + 3].max() > 0.85
    above = cols[c - 20:c - 6].mean()
    below = cols[c + 8:c + 22].mean()
    assert below < 0.5 * above


def test_bad_arguments():
    with pytest.raises(ValueError, match="frame"):
        fetal_sweep(n_frames=0)
    with pytest.raises(ValueError, match="32"):
        fetal_sweep(n_frames=2, shape=(16, 300))
    with pytest.raises(ValueError, match="no standard plane"):
        fetal_sweep(n_frames=2, planes=("Lips",))
    with pytest.raises(ValueError, match="poses"):
        render_planes(0, np.zeros((2, 4, 3)))


def test_volume_and_its_planes():
    vol = fetal_volume(seed=4, shape=(48, 64, 80), spacing_mm=2.5)
    assert vol.data.shape == (48, 64, 80) and vol.data.dtype == np.float32
    assert vol.data.min() >= 0 and vol.data.max() <= 1 and vol.data.std() > 0.05
    assert vol.spacing == (2.5, 2.5, 2.5)
    assert set(vol.planes) == set(PHANTOM_PLANES)
    for name, pose in vol.planes.items():
        assert np.allclose(pose.axes @ pose.axes.T, np.eye(2), atol=1e-9)
        assert np.all(pose.centre >= 0) and np.all(pose.centre <= np.array(vol.data.shape) - 1), name
    view = vol.extract(vol.planes["Brain (Tv.)"], (40, 48))
    assert view.shape == (40, 48) and view.dtype == np.float32
    # the same fetus as the sweep of that seed: the sweep's true 4CH centre maps into the volume
    sw = fetal_sweep(seed=4, n_frames=2, shape=(64, 80))
    assert np.isclose(np.linalg.norm(sw.standard_poses["4CH"][0] - sw.standard_poses["Abdominal"][0]),
                      2.5 * np.linalg.norm(vol.planes["4CH"].centre - vol.planes["Abdominal"].centre))


def test_extract_plane_known_answer():
    z, y, x = np.meshgrid(np.arange(20.0), np.arange(30.0), np.arange(40.0), indexing="ij")
    vol = (1000 * z + 10 * y + x).astype(np.float32)   # linear: trilinear sampling is exact
    centre = np.array([10.0, 15.0, 20.0])
    axes = np.array([[0, 1.0, 0], [0, 0, 1.0]])           # rows along y, columns along x
    out = extract_plane(vol, centre, axes, (5, 7))
    assert np.allclose(out, vol[10, 13:18, 17:24])
    oblique = np.array([[0.6, 0.8, 0], [0, 0, 1.0]])
    out = extract_plane(vol, centre, oblique, (3, 3), step=2.0)
    i = np.array([-2.0, 0, 2.0])
    expect = 1000 * (10 + 0.6 * i)[:, None] + 10 * (15 + 0.8 * i)[:, None] + (20 + i)[None, :]
    assert np.allclose(out, expect, atol=1e-3)
    with pytest.raises(ValueError, match="3D"):
        extract_plane(vol[0], centre, axes, (3, 3))


def test_npe2_sample_layer():
    from napari_medlearn.samples import fetal_sweep_sample

    (data, kw, kind), = fetal_sweep_sample()
    assert kind == "image" and data.shape == (120, 224, 288)
    sp = kw["metadata"]["pixel_spacing_mm"]
    assert kw["scale"] == (1.0, sp, sp)
    assert len(kw["metadata"]["plane_labels"]) == 120
