import pytest
import torch

from napari_medlearn.nets import BaiFCN, build


def tiny(**kw):
    args = dict(filters=(4, 4, 8, 8, 8), blocks=(1, 1, 1, 1, 1), same_dim=4, fc=4)
    args.update(kw)
    return BaiFCN(**args)


@pytest.mark.parametrize("h,w", [(16, 16), (48, 32), (64, 80)])
def test_logits_have_input_size(h, w):
    net = tiny().eval()
    out = net(torch.randn(2, 1, h, w))
    assert out.shape == (2, 4, h, w)


@pytest.mark.parametrize("up_kernel", ["bilinear", "paper"])
def test_both_upsampling_kernels_restore_full_resolution(up_kernel):
    net = tiny(up_kernel=up_kernel).eval()
    assert net(torch.randn(1, 1, 32, 48)).shape == (1, 4, 32, 48)


def test_paper_configuration():
    net = BaiFCN()
    convs = [m for m in net.levels.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16] * 2 + [32] * 2 + [64] * 3 + [128] * 3 + [256] * 3
    strides = [c.stride[0] for c in convs]
    assert strides == [1, 1, 2, 1, 2, 1, 1, 2, 1, 1, 2, 1, 1]
    assert all(c.kernel_size == (3, 3) and c.bias is None for c in convs)
    assert net.size_multiple == 16


def test_size_not_multiple_is_refused():
    with pytest.raises(ValueError, match="multiples of 16"):
        tiny()(torch.randn(1, 1, 20, 32))


@pytest.mark.parametrize("kw", [dict(filters=(4, 4), blocks=(1,)), dict(n_classes=1), dict(up_kernel="nearest")])
def test_bad_arguments_raise_before_building(kw):
    with pytest.raises(ValueError):
        tiny(**kw)


def test_build_by_name():
    assert isinstance(build("bai_fcn", filters=(2, 2), blocks=(1, 1), same_dim=2, fc=2), BaiFCN)
    with pytest.raises(ValueError, match="not supported"):
        build("no_such_net")


def test_bilinear_upsampling_of_a_constant_is_constant_inside():
    from napari_medlearn.nets.fcn import _Up

    up = _Up(2, 4, paper_kernel=False)
    y = up.conv(torch.ones(1, 2, 6, 6))
    assert y.shape[-1] == 24
    inner = y[..., 4:-4, 4:-4]
    assert torch.allclose(inner, torch.ones_like(inner))
