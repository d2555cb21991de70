"""Oktay et al. SR networks: shapes, residual start, learned upsampling, shared Siamese streams."""

import pytest
import torch

from napari_medlearn.nets import ARCHITECTURES, build
from napari_medlearn.nets.sr import MultiInputSRNet, SRNet


@pytest.mark.parametrize("factor", [2, 3, 4, 5])
def test_output_has_n_times_factor_slices_and_starts_as_interpolation(factor):
    torch.manual_seed(0)
    net = SRNet(factor=factor, width=4, n_lr=1, n_hr=2)
    x = torch.rand(2, 1, 3, 7, 6)
    y = net(x)
    assert y.shape == (2, 1, 3 * factor, 7, 6)
    torch.testing.assert_close(y, net.interpolate(x))      # residual branch starts at zero
    # a constant stack stays constant under the interpolation
    c = torch.full((1, 1, 4, 5, 5), 0.7)
    torch.testing.assert_close(net.interpolate(c), torch.full((1, 1, 4 * factor, 5, 5), 0.7))


def test_upsampling_is_a_learned_transposed_convolution_along_z_only():
    net = SRNet(factor=4, width=4)
    assert isinstance(net.up, torch.nn.ConvTranspose3d)
    assert net.up.stride == (4, 1, 1) and net.up.weight.requires_grad
    # gradients reach the upsampling layer once the residual head has moved off zero
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, t = torch.rand(1, 1, 3, 8, 8), torch.rand(1, 1, 12, 8, 8)
    for _ in range(2):
        opt.zero_grad()
        ((net(x) - t) ** 2).mean().backward()
        opt.step()
    assert net.up.weight.grad is not None and net.up.weight.grad.abs().sum() > 0


def test_a_few_steps_fit_a_single_example_better_than_interpolation():
    torch.manual_seed(1)
    net = SRNet(factor=2, width=8, n_lr=1, n_hr=2)
    t = torch.rand(1, 1, 8, 8, 8)
    x = 0.5 * (t[:, :, 0::2] + t[:, :, 1::2])               # box profile, factor 2
    base = float(((net.interpolate(x) - t) ** 2).mean())
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        loss = ((net(x) - t) ** 2).mean()
        loss.backward()
        opt.step()
    assert float(loss) < 0.7 * base


def test_siamese_streams_share_weights_and_start_at_the_average():
    net = MultiInputSRNet(n_inputs=3, width=4, n_stream=2, n_fused=2)
    x = torch.rand(2, 3, 6, 5, 4)
    y = net(x)
    assert y.shape == (2, 1, 6, 5, 4)
    torch.testing.assert_close(y, x.mean(1, keepdim=True))
    # one stream for all inputs: its first convolution takes one channel
    assert net.stream[0].in_channels == 1
    assert net.fuse[0].in_channels == 3 * 4
    with pytest.raises(ValueError, match="expected"):
        net(torch.rand(1, 2, 6, 5, 4))


@pytest.mark.parametrize("kwargs", [{"factor": 1}, {"factor": 2.5}, {"width": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SRNet(**kwargs)


def test_registered():
    assert ARCHITECTURES["sr_net"] is SRNet and ARCHITECTURES["sr_multi_input"] is MultiInputSRNet
    assert isinstance(build("sr_net", factor=3, width=2), SRNet)


def test_planar_network_upsamples_each_x_plane_on_its_own():
    torch.manual_seed(0)
    net = SRNet(factor=3, width=6, planar=True)
    torch.nn.init.normal_(net.out.weight, std=0.3)
    x = torch.randn(1, 1, 4, 10, 5)
    y = net(x)
    assert y.shape == (1, 1, 12, 10, 5)
    x2 = x.clone()
    x2[..., 2] += 1.0
    changed = (net(x2) - y).abs().amax(dim=(0, 1, 2, 3))
    assert changed[2] > 0 and torch.all(changed[[0, 1, 3, 4]] == 0)
    # the plain network mixes neighbouring x planes
    full = SRNet(factor=3, width=6)
    torch.nn.init.normal_(full.out.weight, std=0.3)
    assert (full(x2) - full(x)).abs().amax(dim=(0, 1, 2, 3))[1] > 0
