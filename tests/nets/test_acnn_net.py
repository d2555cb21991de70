import pytest
import torch

from napari_medlearn.nets import ARCHITECTURES, ACNNShapeModel, build


def test_autoencoder_shapes_code_and_predictor():
    net = build("acnn_shape", n_classes=3, grid=(4, 16, 16), filters=[2, 4], strides=[[1, 2, 2], [2, 2, 2]],
                code_size=64, in_channels=2)
    x = torch.softmax(torch.randn(2, 3, 4, 16, 16), dim=1)
    logits, code = net(x)
    assert logits.shape == (2, 3, 4, 16, 16) and code.shape == (2, 64)
    assert torch.equal(net.encode(x), code)
    assert net.decode(code).shape == logits.shape
    assert net.predict_code(torch.randn(2, 2, 4, 16, 16)).shape == (2, 64)
    assert ARCHITECTURES["acnn_shape"] is ACNNShapeModel


def test_encoder_downsamples_by_strided_convolutions():
    net = ACNNShapeModel(grid=(8, 32, 32), filters=[2, 2, 2], strides=[[1, 2, 2], [2, 2, 2], [2, 2, 2]],
                         in_channels=0)
    assert net.bottleneck == (2, 2, 4, 4)
    strides = [m.stride for m in net.encoder.modules() if isinstance(m, torch.nn.Conv3d)]
    assert (1, 2, 2) in strides and (2, 2, 2) in strides
    assert any(isinstance(m, torch.nn.ConvTranspose3d) for m in net.decoder.modules())
    with pytest.raises(ValueError, match="predictor"):
        net.predict_code(torch.zeros(1, 1, 8, 32, 32))


@pytest.mark.parametrize("kwargs, match", [
    (dict(grid=(5, 16, 16), filters=[2], strides=[[2, 2, 2]]), "divisible"),
    (dict(filters=[2, 2], strides=[[1, 2, 2]]), "same length"),
    (dict(n_classes=1), "n_classes"),
    (dict(filters=[2], strides=[[3, 1, 1]], grid=(3, 4, 4)), "stride"),
])
def test_bad_arguments_raise_before_building(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ACNNShapeModel(**kwargs)
