"""SonoNet architecture (Baumgartner et al., TMI 2017): block structure, widths, category maps."""

import numpy as np
import pytest
import torch
from torch import nn

from napari_medlearn import nets
from napari_medlearn.nets.sononet import SONONET_CLASSES, SonoNet, sononet_preprocess


def convs(module):
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("width", [16, 32, 64])
def test_paper_structure(width):
    net = SonoNet(width=width)
    feats = convs(net.features)
    assert len(feats) == 13                                          # 2+2+3+3+3
    assert [c.out_channels for c in feats] == [width] * 2 + [2 * width] * 2 + [4 * width] * 3 + [8 * width] * 6
    assert all(c.kernel_size == (3, 3) and c.bias is None and c.padding == (1, 1) for c in feats)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 4
    head = convs(net.adaptation)
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in head] == [
        (8 * width, 4 * width, (1, 1)), (4 * width, 14, (1, 1))]
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 15 and all(b.eps == 1e-4 for b in bns)
    # the last layer of the head is BN (category maps), no ReLU after it
    assert isinstance(list(net.adaptation)[-1], nn.BatchNorm2d)


def test_category_maps_and_scores():
    torch.manual_seed(0)
    net = SonoNet(width=2, blocks=(1, 1, 1, 1, 1)).eval()
    x = torch.randn(3, 1, 64, 80)
    maps = net.category_maps(x)
    assert maps.shape == (3, 14, 4, 5)
    assert torch.allclose(net(x), maps.mean(dim=(2, 3)), atol=1e-6)
    assert len(SONONET_CLASSES) == 14 and SONONET_CLASSES[3] == "Background"


def test_registry_and_bad_arguments():
    assert isinstance(nets.build("sononet", width=2, blocks=[1, 1, 1, 1, 1]), SonoNet)
    with pytest.raises(ValueError, match="blocks"):
        SonoNet(blocks=(2, 2, 3))
    with pytest.raises(ValueError, match="width"):
        SonoNet(width=0)
    with pytest.raises(ValueError, match="n_classes"):
        SonoNet(n_classes=1)


def test_preprocess_resizes_and_zscores_times_255():
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 4000, (2, 1, 100, 130)).astype(np.float32))
    y = sononet_preprocess(x, (32, 48))
    assert y.shape == (2, 1, 32, 48)
    assert torch.allclose(y.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-2)
    assert torch.allclose(y.std(dim=(1, 2, 3), unbiased=False), torch.full((2,), 255.0), rtol=1e-4)
    const = sononet_preprocess(torch.full((1, 1, 32, 48), 7.0), (32, 48))
    assert torch.count_nonzero(const) == 0
