import numpy as np
import pytest
import torch

from napari_medlearn import nets
from napari_medlearn.nets.deepmedic import DeepMedic, output_size, residual_add, segment_geometry

TINY = dict(in_channels=2, n_classes=4, fms_normal=[3, 3, 4, 4, 4, 4, 5, 5], fc_fms=[6, 6])


def _tiny(**kw):
    torch.manual_seed(0)
    return DeepMedic(**{**TINY, **kw}).eval()


def test_paper_configuration_by_default():
    m = DeepMedic()
    convs = [layer.conv for layer in m.normal.layers]
    assert [c.out_channels for c in convs] == [30, 30, 40, 40, 40, 40, 50, 50]
    assert all(c.kernel_size == (3, 3, 3) and c.padding == (0, 0, 0) for c in convs)
    assert m.receptive_field == 17
    assert m.normal.residual_layers == (4, 6, 8)
    assert [layer.conv.out_channels for layer in m.fc] == [150, 150]
    assert m.classifier.conv.kernel_size == (1, 1, 1)
    # the first layer sees the image; every other one is BN -> PReLU -> (dropout) -> conv
    assert m.normal.layers[0].bn is None and m.normal.layers[1].bn is not None
    assert isinstance(m.normal.layers[1].act, torch.nn.PReLU)
    assert m.fc[0].drop is None and m.fc[1].drop.p == 0.5 and m.classifier.drop.p == 0.5
    assert isinstance(nets.build("deepmedic", **TINY), DeepMedic)


@pytest.mark.parametrize("out", [1, 9, 10, 29])
def test_normal_pathway_output_is_segment_minus_16(out):
    g = segment_geometry(out, subsample_factors=())
    assert all(a.segment == out + 16 and a.out_start == 8 for a in g)
    assert output_size(out + 16, ()) == (out,) * 3
    m = _tiny(subsample_factors=())
    y = m(torch.zeros(1, 2, out + 16, out + 16, out + 16))
    assert y.shape == (1, 4, out, out, out)


@pytest.mark.parametrize("factors", [(3,), (3, 5), ((3, 3, 1),)])
def test_segment_geometry_round_trip_and_shapes(factors):
    m = _tiny(subsample_factors=factors)
    for out in (5, 9, 11):
        seg = m.segment_size(out)
        assert m.output_size(seg)[0] >= out
        got = m.output_size(seg)
        y = m(torch.zeros(2, 2, *m.segment_size(got)))
        assert tuple(y.shape) == (2, 4) + got


def test_subsampled_input_is_strided_and_centred_on_each_output_block():
    m = _tiny(subsample_factors=(3,))
    seg = m.segment_size(9)
    g = m.geometry(9)[0]
    coords = torch.arange(seg[0], dtype=torch.float32)
    x = coords[None, None, :, None, None].expand(1, 2, *seg).contiguous()
    xn, subs, out = m.pathway_inputs(x)
    assert out == (9, 9, 9)
    assert xn.shape[2:] == (25, 25, 25) and xn[0, 0, 8, 0, 0] == g.out_start   # centre of the normal input
    s = subs[0][0, 0, :, 0, 0].numpy()
    assert len(s) == 3 + 16 and np.all(np.diff(s) == 3)
    # sub-output j (centred on sub-input j + 8) sits at the centre voxel of output block j
    for j in range(3):
        assert s[j + 8] == g.out_start + 3 * j + 1


def test_receptive_field_of_the_pathways():
    """17^3 for the normal pathway; beyond it only voxels on the factor-3 lattice count."""
    m = _tiny(subsample_factors=(3,))
    g = m.geometry(1)
    c = [a.out_start for a in g]
    lattice = [a.sub_starts[0] for a in g]
    x = torch.zeros(1, 2, *m.segment_size(1))
    base = m(x)

    def probe(z, y, xx):
        x2 = x.clone()
        x2[0, 0, z, y, xx] = 5.0
        return not torch.allclose(m(x2), base)

    assert probe(c[0] + 8, c[1] - 8, c[2])            # corner of the normal 17^3 field
    far = lattice[0]                                   # 23 voxels away: only the subsampled pathway
    assert far < c[0] - 8
    assert probe(far, lattice[1] + 24, lattice[2] + 24)
    assert not probe(far + 1, lattice[1] + 24, lattice[2] + 24)   # off the lattice, outside 17^3


def test_residual_pads_channels_and_crops_centre():
    deeper = torch.zeros(1, 5, 3, 3, 3)
    earlier = torch.arange(4 * 5 ** 3, dtype=torch.float32).reshape(1, 4, 5, 5, 5)
    r = residual_add(deeper, earlier)
    assert r.shape == (1, 5, 3, 3, 3)
    assert torch.equal(r[:, :4], earlier[:, :, 1:4, 1:4, 1:4]) and torch.all(r[:, 4] == 0)
    assert residual_add(torch.zeros(1, 2, 3, 3, 3), earlier).shape == (1, 2, 3, 3, 3)


def test_features_for_domain_adaptation():
    m = _tiny(subsample_factors=(3,))
    y, feats = m(torch.zeros(1, 2, *m.segment_size(6)), return_features=True)
    assert y.shape == (1, 4, 6, 6, 6)
    assert [f.shape[1] for f in feats["pathways"]] == [5, 5] and len(feats["fc"]) == 2


@pytest.mark.parametrize("kw, match", [
    (dict(n_classes=1), "n_classes"),
    (dict(residual_layers=[1, 4]), "residual"),
    (dict(fms_subsampled=[3, 3]), "as many layers"),
    (dict(dropout_fc=[0.5]), "dropout_fc"),
    (dict(subsample_factors=[0]), "factors"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        DeepMedic(**{**TINY, **kw})


def test_wrong_segment_is_refused():
    m = _tiny(subsample_factors=(3,))
    seg = m.segment_size(9)
    with pytest.raises(ValueError, match="geometry"):
        m(torch.zeros(1, 2, *(s + 1 for s in seg)))
    with pytest.raises(ValueError, match="receptive field"):
        m(torch.zeros(1, 2, 20, 20, 20))
    with pytest.raises(ValueError, match=r"\(B, 2"):
        m(torch.zeros(1, 3, *m.segment_size(5)))
