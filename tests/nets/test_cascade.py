"""The deep cascade: shapes in 2D and 2D+t, exact data consistency, the noisy-lambda form, and
k-space data sharing that averages neighbouring frames."""

import numpy as np
import pytest
import torch

from napari_medlearn import nets
from napari_medlearn.imaging import kspace as K
from napari_medlearn.nets.cascade import (
    DataConsistency,
    DeepCascade,
    data_consistency,
    fft2c,
    ifft2c,
    share_data,
    to_channels,
    to_complex,
)


def _kspace(shape, seed=0, per_frame=False, R=3):
    """Undersampled k-space channels (B, 2, ...) and mask (B, 1, ...) of random images."""
    rng = np.random.default_rng(seed)
    img = (rng.random(shape) + 1j * rng.random(shape)).astype(np.complex64)
    mshape = shape if per_frame else shape[-2:]
    m = K.sampling_mask(mshape, R, "cartesian", centre_lines=2, seed=seed)
    k = K.undersample(K.fft2c(img), m)
    mt = torch.from_numpy(np.broadcast_to(m, shape).astype(np.float32))[:, None]
    return to_channels(torch.from_numpy(k)), mt, torch.from_numpy(np.broadcast_to(m, shape).copy())


def test_fft_matches_numpy_and_round_trips():
    x = torch.randn(2, 7, 10, dtype=torch.complex64)
    np.testing.assert_allclose(fft2c(x).numpy(), K.fft2c(x.numpy()), atol=1e-5)
    np.testing.assert_allclose(ifft2c(fft2c(x)).numpy(), x.numpy(), atol=1e-5)
    assert torch.equal(to_complex(to_channels(x)), x)


@pytest.mark.parametrize("shape", [(2, 32, 32), (1, 33, 28)])
def test_2d_shapes(shape):
    torch.manual_seed(0)
    net = DeepCascade(dims=2, n_cascades=2, n_layers=3, width=4)
    k, m, _ = _kspace(shape)
    out = net(k, m)
    assert out.shape == k.shape and out.dtype == torch.float32
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("shape, widths", [((1, 5, 20, 18), (1, 2)), ((2, 4, 17, 16), ()),
                                           ((1, 3, 16, 16), (1, 2, 3, 4))])
def test_2d_plus_t_shapes(shape, widths):
    torch.manual_seed(0)
    net = DeepCascade(dims=3, n_cascades=2, n_layers=2, width=3, share_widths=widths)
    assert net.blocks[0].layers[0].in_channels == 2 * (1 + len(widths))
    assert isinstance(net.blocks[0].layers[0], torch.nn.Conv3d)
    k, m, _ = _kspace(shape, per_frame=True)
    out = net(k, m)
    assert out.shape == k.shape == (shape[0], 2) + shape[1:]


def test_data_consistency_restores_sampled_values_exactly():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(2, 9, 8, dtype=torch.complex64, generator=g)
    k0 = torch.randn(2, 9, 8, dtype=torch.complex64, generator=g)
    mask = torch.rand(2, 9, 8, generator=g) > 0.5
    out = data_consistency(k, k0, mask)
    assert torch.equal(out[mask], k0[mask])          # bit for bit
    assert torch.equal(out[~mask], k[~mask])
    # broadcasting mask (lines only)
    lines = torch.zeros(1, 9, 1, dtype=torch.bool)
    lines[0, ::3] = True
    out = data_consistency(k, k0, lines)
    full = lines.expand_as(k)
    assert torch.equal(out[full], k0[full]) and torch.equal(out[~full], k[~full])


@pytest.mark.parametrize("dims, shape", [(2, (2, 24, 20)), (3, (1, 4, 16, 15))])
def test_network_output_is_consistent_with_the_measured_lines(dims, shape):
    torch.manual_seed(1)
    net = DeepCascade(dims=dims, n_cascades=2, n_layers=2, width=4,
                      share_widths=(1,) if dims == 3 else ())
    k, m, mb = _kspace(shape, per_frame=dims == 3)
    with torch.no_grad():
        out = to_complex(net(k, m))
    k_out = fft2c(out)
    k_in = to_complex(k)
    err = (k_out[mb] - k_in[mb]).abs().max() / k_in.abs().max()
    assert err < 1e-5                                   # only float32 FFT rounding
    assert (k_out[~mb] - k_in[~mb]).abs().max() > 1e-3  # the rest is the network's estimate


def test_noisy_lambda_form():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, 8, 8, dtype=torch.complex64, generator=g)
    k0 = torch.randn(1, 8, 8, dtype=torch.complex64, generator=g)
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, ::2] = True
    lam = 3.0
    out = data_consistency(k, k0, mask, lam)
    torch.testing.assert_close(out[mask], (k[mask] + lam * k0[mask]) / (1 + lam))
    assert torch.equal(out[~mask], k[~mask])
    # large lambda tends to the noiseless case
    torch.testing.assert_close(data_consistency(k, k0, mask, 1e9)[mask], k0[mask])

    image = ifft2c(k)
    dc = DataConsistency(noise_lambda=lam)
    torch.testing.assert_close(fft2c(dc(image, k0, mask))[mask], out[mask], atol=1e-5, rtol=1e-5)
    learn = DataConsistency(noise_lambda=lam, learn_lambda=True)
    assert float(learn.lam.detach()) == pytest.approx(lam)
    fft2c(learn(image, k0, mask)).abs().sum().backward()
    assert learn.log_lambda.grad is not None and learn.log_lambda.grad != 0
    net = DeepCascade(dims=2, n_cascades=2, n_layers=2, width=2, noise_lambda=2.0, learn_lambda=True)
    assert sum(1 for n, _ in net.named_parameters() if n.endswith("log_lambda")) == 2


def test_data_sharing_averages_neighbouring_frames():
    T, H, W = 5, 6, 4
    rng = np.random.default_rng(0)
    k = (rng.standard_normal((1, T, H, W)) + 1j * rng.standard_normal((1, T, H, W))).astype(np.complex64)
    mask = np.zeros((1, T, H, W), dtype=bool)
    mask[0, 0, 1] = True      # line 1 acquired in frames 0 and 2 only
    mask[0, 2, 1] = True
    mask[0, :, 3] = True      # line 3 acquired everywhere
    mask[0, 4, 0] = True      # line 0 only in the last frame (cyclic neighbour of frame 0)
    k = np.where(mask, k, 0)
    kt, mt = torch.from_numpy(k), torch.from_numpy(mask)
    shared = share_data(ifft2c(kt), mt, widths=(1, 2), acquired_only=True)
    assert shared.shape == (1, 2, T, H, W)
    ks = fft2c(shared).numpy()
    w1, w2 = ks[0, 0], ks[0, 1]
    # frame 1 misses line 1: its neighbours 0 and 2 have it -> their mean
    np.testing.assert_allclose(w1[1, 1], 0.5 * (k[0, 0, 1] + k[0, 2, 1]), atol=1e-5)
    # acquired lines keep their own values
    np.testing.assert_allclose(w1[:, 3], k[0, :, 3], atol=1e-5)
    np.testing.assert_allclose(w1[0, 1], k[0, 0, 1], atol=1e-5)
    # cyclic in time: frame 0's missing line 0 comes from frame 4 (its neighbour at -1)
    np.testing.assert_allclose(w1[0, 0], k[0, 4, 0], atol=1e-5)
    # width 2 reaches further: frame 3 sees frames 1..5 (5 = 0 cyclically): lines 1 of frames 2 and 0
    np.testing.assert_allclose(w2[3, 1], 0.5 * (k[0, 2, 1] + k[0, 0, 1]), atol=1e-5)
    # nothing acquired nearby -> zero
    np.testing.assert_allclose(w1[2, 0], 0, atol=1e-5)
    # later cascades: every position holds an estimate, divide by the window size
    full = torch.from_numpy((rng.standard_normal((1, T, H, W)) + 0j).astype(np.complex64))
    kf = fft2c(full).numpy()
    sf = fft2c(share_data(full, mt, widths=(1,), acquired_only=False)).numpy()[0, 0]
    np.testing.assert_allclose(sf[2, 0], kf[0, 1:4, 0].mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(sf[2, 3], kf[0, 2, 3], atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"dims": 4}, "dims"),
    ({"n_layers": 1}, "n_layers"),
    ({"n_cascades": 0}, "n_cascades"),
    ({"width": 2.5}, "width"),
    ({"share_widths": (1,)}, "dims=3"),
    ({"dims": 3, "share_widths": (0,)}, "positive"),
    ({"noise_lambda": -1.0}, "noise_lambda"),
    ({"learn_lambda": True}, "learn_lambda"),
])
def test_bad_arguments_are_refused_before_building(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeepCascade(**kwargs)


def test_wrong_input_shape_is_a_clear_error():
    net = DeepCascade(dims=3, n_cascades=1, n_layers=2, width=2)
    with pytest.raises(ValueError, match=r"\(B, 2, T, H, W\)"):
        net(torch.zeros(1, 2, 8, 8), torch.ones(1, 1, 8, 8))


def test_registered_and_paper_sized_by_default():
    net = nets.build("deep_cascade")
    assert isinstance(net, DeepCascade)
    assert (net.dims, net.n_cascades, net.n_layers, net.width) == (2, 5, 5, 64)
    convs = [m for m in net.blocks[0].layers if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == \
        [(2, 64, (3, 3))] + [(64, 64, (3, 3))] * 3 + [(64, 2, (3, 3))]
    assert sum(isinstance(m, torch.nn.ReLU) for m in net.blocks[0].layers) == 4
