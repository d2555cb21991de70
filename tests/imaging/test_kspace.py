"""k-space maths and sampling masks: orthonormal centred FFTs, masks that deliver what they
promise (acceleration, centre, per-frame independence, seeds), undersampling, file input."""

import subprocess
import sys

import numpy as np
import pytest

from napari_medlearn.imaging import kspace as K

SHAPES = [(8, 8), (33, 17), (3, 20, 31), (2, 3, 15, 16)]


def _rand(shape, seed=0, complex_=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    if complex_:
        x = x + 1j * rng.standard_normal(shape)
    return x


@pytest.mark.parametrize("shape", SHAPES)
def test_fft_round_trip_and_parseval(shape):
    x = _rand(shape)
    k = K.fft2c(x)
    assert k.dtype == np.complex128 and k.shape == x.shape
    np.testing.assert_allclose(K.ifft2c(k), x, atol=1e-12)
    np.testing.assert_allclose(K.fft2c(K.ifft2c(x)), x, atol=1e-12)
    # orthonormal: energy preserved, per image
    np.testing.assert_allclose((np.abs(k) ** 2).sum(axis=(-2, -1)), (np.abs(x) ** 2).sum(axis=(-2, -1)), rtol=1e-12)
    # single precision in, single precision out
    x32 = x.astype(np.complex64)
    assert K.fft2c(x32).dtype == np.complex64
    assert K.fft2c(x32.real.astype(np.float32)).dtype == np.complex64
    np.testing.assert_allclose(K.ifft2c(K.fft2c(x32)), x32, atol=1e-5)


@pytest.mark.parametrize("shape", [(8, 8), (9, 7), (16, 15)])
def test_fft_is_centred(shape):
    k = K.fft2c(np.ones(shape))
    peak = np.unravel_index(np.argmax(np.abs(k)), shape)
    assert peak == (shape[0] // 2, shape[1] // 2)
    np.testing.assert_allclose(np.abs(k[peak]), np.sqrt(np.prod(shape)))     # ortho DC = sum / sqrt(N)
    # a centred image has a real, symmetric spectrum about the DC sample
    x = np.zeros(shape)
    x[shape[0] // 2, shape[1] // 2] = 1.0
    np.testing.assert_allclose(K.fft2c(x), np.full(shape, 1 / np.sqrt(np.prod(shape))), atol=1e-12)


def test_other_axes():
    x = _rand((6, 5, 4))
    k = K.fft2c(x, axes=(0, 1))
    np.testing.assert_allclose(K.ifft2c(k, axes=(0, 1)), x, atol=1e-12)
    np.testing.assert_allclose(k[..., 2], K.fft2c(x[..., 2]), atol=1e-12)


@pytest.mark.parametrize("pattern", K.PATTERNS)
@pytest.mark.parametrize("ny, nx", [(256, 256), (37, 20), (64, 33), (101, 9)])
@pytest.mark.parametrize("R", [2, 4, 8])
def test_mask_achieves_the_acceleration_with_a_full_centre(pattern, ny, nx, R):
    centre = 4
    m = K.sampling_mask((ny, nx), R, pattern, centre_lines=centre, seed=3)
    assert m.dtype == bool and m.shape == (ny, nx)
    assert np.all(m == m[:, :1])                        # whole lines: constant along the readout x
    lines = m[:, 0]
    assert lines.sum() == round(ny / R)                 # acceleration achieved
    assert K.acceleration_of(m) == pytest.approx(ny / round(ny / R))
    assert abs(K.acceleration_of(m) - R) / R < 0.15 or ny < 64
    assert lines[K.centre_slice(ny, centre)].all()      # centre fully sampled
    assert lines[ny // 2]                               # DC line
    assert K.centre_slice(ny, centre).stop - K.centre_slice(ny, centre).start == centre


def test_equispaced_lines_are_evenly_spaced():
    m = K.sampling_mask((256, 1), 8, "equispaced", centre_lines=0, seed=0)[:, 0]
    gaps = np.diff(np.flatnonzero(m))
    assert set(gaps) == {8}


def test_cartesian_density_is_higher_near_the_centre():
    m = K.sampling_mask((200, 256, 4), 4, "cartesian", centre_lines=8, seed=0)[:, :, 0]
    freq = m.mean(axis=0)
    inner = np.r_[256 // 2 - 40:256 // 2 - 4, 256 // 2 + 4:256 // 2 + 40]
    outer = np.r_[:40, 216:256]
    assert freq[inner].mean() > 2 * freq[outer].mean()
    assert freq[outer].mean() > 0.02                  # the uniform floor reaches the edges


@pytest.mark.parametrize("pattern", K.PATTERNS)
def test_each_frame_gets_its_own_mask(pattern):
    m = K.sampling_mask((6, 64, 32), 4, pattern, centre_lines=6, seed=1)
    assert m.shape == (6, 64, 32)
    lines = m[:, :, 0]
    assert len({tuple(row) for row in lines}) == 6      # all frames differ
    for row in lines:                                   # each keeps the centre and the count
        assert row.sum() == 16 and row[K.centre_slice(64, 6)].all()
    m4 = K.sampling_mask((2, 3, 64, 8), 4, pattern, seed=1)
    assert len({tuple(r) for r in m4[..., 0].reshape(6, 64)}) == 6


@pytest.mark.parametrize("pattern", K.PATTERNS)
def test_seeds_reproduce_and_differ(pattern):
    a = K.sampling_mask((4, 96, 10), 4, pattern, seed=7)
    b = K.sampling_mask((4, 96, 10), 4, pattern, seed=7)
    c = K.sampling_mask((4, 96, 10), 4, pattern, seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    rng = np.random.default_rng(7)
    assert np.array_equal(K.sampling_mask((4, 96, 10), 4, pattern, seed=rng),
                          K.sampling_mask((4, 96, 10), 4, pattern, seed=np.random.default_rng(7)))


def test_full_sampling_at_r1():
    assert K.sampling_mask((17, 5), 1, centre_lines=3).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"pattern": "radial"}, "not supported"),
    ({"acceleration": 0.5}, "acceleration"),
    ({"acceleration": float("nan")}, "acceleration"),
    ({"centre_lines": 40}, "centre lines"),
    ({"centre_lines": -1}, "centre_lines"),
    ({"shape": (16,)}, "shape"),
    ({"shape": (0, 16)}, "shape"),
])
def test_bad_mask_requests_are_refused(kwargs, match):
    args = {"shape": (64, 16), "acceleration": 4, "pattern": "cartesian", "centre_lines": 8}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        K.sampling_mask(**args)


def test_undersample_and_zero_filling():
    x = _rand((2, 24, 20)).astype(np.complex64)
    k = K.fft2c(x)
    m = K.sampling_mask((24, 20), 4, centre_lines=4, seed=0)
    ku = K.undersample(k, m)
    assert ku.dtype == np.complex64
    assert np.array_equal(ku[:, m], k[:, m]) and not ku[:, ~m].any()
    np.testing.assert_allclose(K.zero_filled(k, m), K.ifft2c(ku), atol=1e-6)
    # zero-filling is the adjoint of undersampling: <A x, y> = <x, A^H y>
    y = _rand((2, 24, 20), seed=1)
    lhs = np.vdot(K.undersample(K.fft2c(x.astype(complex)), m), y)
    rhs = np.vdot(x.astype(complex), K.ifft2c(K.undersample(y, m)))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10)


def test_simulated_acquisition():
    img = np.random.default_rng(0).random((5, 40, 24)).astype(np.float32)
    k, m = K.simulate_acquisition(img, 4, "cartesian", 8, seed=2)
    assert k.dtype == np.complex64 and k.shape == img.shape and m.shape == (40, 24)
    np.testing.assert_allclose(K.zero_filled(K.simulate_kspace(img), m), K.ifft2c(k), atol=1e-5)
    k2, m2 = K.simulate_acquisition(img, 4, "cartesian", 8, seed=2, per_frame=True)
    assert m2.shape == img.shape and not np.array_equal(m2[0], m2[1])
    # magnitude in, magnitude back with a smooth phase
    kp = K.simulate_kspace(img, phase=1.0, seed=0)
    xp = K.ifft2c(kp)
    np.testing.assert_allclose(np.abs(xp), img, atol=1e-5)
    assert np.abs(np.angle(xp[img > 0.1])).max() <= 1.0 + 1e-5 and np.abs(xp.imag).max() > 0.01
    assert np.abs(K.ifft2c(K.simulate_kspace(img)).imag).max() < 1e-5


def test_intensity_scale():
    assert K.intensity_scale(np.array([[0, -3 + 4j]])) == 5.0
    assert K.intensity_scale(np.zeros((3, 3))) == 1.0


def test_read_kspace_from_npy_and_h5(tmp_path):
    import h5py

    k = K.fft2c(_rand((3, 16, 12)).astype(np.complex64))
    m = K.sampling_mask((16, 12), 4, centre_lines=2, seed=0)
    np.save(tmp_path / "k.npy", k)
    np.save(tmp_path / "m.npy", m)
    k1, m1 = K.read_kspace(tmp_path / "k.npy", tmp_path / "m.npy")
    assert np.array_equal(k1, k) and np.array_equal(m1, m)
    assert K.read_kspace(tmp_path / "k.npy")[1] is None
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["kspace"] = k
        f["mask"] = m
    k2, m2 = K.read_kspace(tmp_path / "d.h5")
    assert np.array_equal(k2, k) and np.array_equal(m2, m)
    with pytest.raises(ValueError, match="no dataset 'nope'"):
        K.read_array(tmp_path / "d.h5", "nope")
    with pytest.raises(FileNotFoundError):
        K.read_array(tmp_path / "missing.npy")
    (tmp_path / "bad.npy").write_text("not numpy")
    with pytest.raises(ValueError, match="not a readable"):
        K.read_array(tmp_path / "bad.npy")


def test_kspace_needs_no_torch():
    code = "import sys, napari_medlearn.imaging.kspace; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
