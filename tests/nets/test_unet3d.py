import pytest
import torch
import torch.nn.functional as F

from napari_medlearn.nets import FCN3D, UNet3D, build
from napari_medlearn.nets.unet3d import _trilinear_kernel


@pytest.mark.parametrize("net", [UNet3D(2, 4, base=4, levels=3), FCN3D(2, 4, base=4, fc=8)])
@pytest.mark.parametrize("shape", [(16, 16, 16), (8, 24, 32)])
def test_output_has_input_size_and_features(net, shape):
    net.eval()
    x = torch.randn(1, 2, *shape)
    y, feats = net(x, return_features=True)
    assert y.shape == (1, 4, *shape)
    assert len(feats) >= 3 and all(f.ndim == 5 and f.shape[0] == 1 for f in feats.values())
    assert torch.allclose(net(x), y)


def test_unet_paper_widths_double_in_each_level():
    net = UNet3D(2, 4, base=32, levels=4)
    firsts = [blk[0][0].out_channels for blk in net.down]
    seconds = [blk[1][0].out_channels for blk in net.down]
    assert firsts == [32, 64, 128, 256] and seconds == [64, 128, 256, 512]
    assert net.divisor == 8


def test_sizes_not_multiple_of_divisor_are_refused():
    with pytest.raises(ValueError, match="multiples of 4"):
        UNet3D(2, 4, base=4, levels=3)(torch.zeros(1, 2, 10, 16, 16))
    with pytest.raises(ValueError, match="multiples of 8"):
        FCN3D(2, 4, base=4, fc=8)(torch.zeros(1, 2, 16, 12, 16))


@pytest.mark.parametrize("kwargs", [{"in_channels": 0}, {"n_classes": 1}, {"base": 0}, {"levels": 1}])
def test_bad_unet_arguments(kwargs):
    with pytest.raises(ValueError):
        UNet3D(**kwargs)


def test_fcn_upsampling_starts_as_trilinear_interpolation():
    w = _trilinear_kernel(1)
    x = torch.rand(1, 1, 4, 4, 4)
    up = F.conv_transpose3d(x, w, stride=2, padding=1)
    ref = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
    # identical away from the border (the transposed conv pads with zeros there)
    assert torch.allclose(up[..., 1:-1, 1:-1, 1:-1], ref[..., 1:-1, 1:-1, 1:-1], atol=1e-6)


def test_registry_builds_both():
    assert isinstance(build("unet3d", in_channels=2, n_classes=4, base=4, levels=2), UNet3D)
    assert isinstance(build("fcn3d", in_channels=2, n_classes=4, base=4, fc=8), FCN3D)
