import numpy as np
import pytest

from napari_medlearn.imaging.measures import dice
from napari_medlearn.samples.brain_lesions import DOMAINS, LesionCase, synthetic_lesion_case


@pytest.fixture(scope="module")
def case():
    return synthetic_lesion_case(seed=2, domain="A", n_lesions=1)


def test_shapes_types_and_geometry(case):
    assert isinstance(case, LesionCase)
    c, *grid = case.channels.shape
    assert c == 2 and case.channel_names == ("FLAIR", "T1c")
    assert case.channels.dtype == np.float32 and np.isfinite(case.channels).all()
    assert case.labels.shape == tuple(grid) and case.labels.dtype == np.uint8
    assert case.brain_mask.shape == tuple(grid) and case.brain_mask.dtype == bool
    assert all(70 <= n <= 110 for n in grid)          # 2 mm grid over the brain
    assert case.spacing == (2.0, 2.0, 2.0)
    np.testing.assert_allclose(np.linalg.norm(case.affine[:3, :3], axis=0), 2.0)
    # voxel axes (z, y, x) point S, A, R like every Volume the plugin reads
    assert np.argmax(np.abs(case.affine[:3, 0])) == 2 and np.argmax(np.abs(case.affine[:3, 2])) == 0
    # MNI space: the brain's centre of mass lies near the origin
    com = case.affine @ np.r_[np.argwhere(case.brain_mask).mean(0), 1.0]
    assert np.all(np.abs(com[:3]) < 25)
    vols = case.volumes()
    assert set(vols) == {"FLAIR", "T1c", "labels", "brain_mask"}
    assert vols["FLAIR"].spacing == pytest.approx((2.0, 2.0, 2.0))


def test_labels_are_brats_and_inside_the_brain(case):
    assert set(np.unique(case.labels)) <= {0, 1, 2, 4}
    assert (case.labels > 0).sum() > 100
    assert not (case.labels[~case.brain_mask]).any()
    assert not case.channels[:, ~case.brain_mask].any()     # skull-stripped


def test_contrasts_look_like_flair_and_t1c():
    c = synthetic_lesion_case(seed=15, domain="A", n_lesions=1, mass_effect=0.0)  # necrotic kind
    from napari_medlearn.samples.brain_lesions import _anatomy

    anat = _anatomy(2.0)
    flair, t1c = c.channels
    healthy = c.brain_mask & (c.labels == 0)
    med = lambda img, m: float(np.median(img[m]))  # noqa: E731
    csf, gm, wm = (healthy & (anat.csf > 0.9)), (healthy & (anat.gm > 0.8)), (healthy & (anat.wm > 0.9))
    # FLAIR: CSF suppressed, GM > WM, oedema brightest
    assert med(flair, csf) < 0.4 * med(flair, wm) and med(flair, gm) > med(flair, wm)
    assert med(flair, c.labels == 2) > 1.5 * med(flair, wm)
    # T1c: WM > GM > CSF, enhancing rim bright, necrotic core dark
    assert med(t1c, wm) > med(t1c, gm) > med(t1c, csf)
    assert med(t1c, c.labels == 4) > 1.3 * med(t1c, wm)
    assert med(t1c, c.labels == 1) < 0.6 * med(t1c, wm)


def test_deterministic_and_paired_across_domains():
    a = synthetic_lesion_case(seed=5)
    b = synthetic_lesion_case(seed=5)
    assert np.array_equal(a.channels, b.channels) and np.array_equal(a.labels, b.labels)
    assert a.domain == b.domain
    other_scanner = synthetic_lesion_case(seed=5, domain="B")
    assert np.array_equal(other_scanner.labels, a.labels)       # same patient, other scanner
    assert not np.allclose(other_scanner.channels, a.channels)
    assert not np.array_equal(synthetic_lesion_case(seed=6).labels, a.labels)


def test_necrosis_ranges_from_solid_to_cystic():
    # seed 15: one necrotic tumour; the same labels and scanner, only the necrotic centre's content differs
    solid, cyst = (synthetic_lesion_case(seed=15, n_lesions=1, mass_effect=0.0, necrosis_fluid=f) for f in (0.0, 1.0))
    assert np.array_equal(solid.labels, cyst.labels) and solid.domain == cyst.domain
    from scipy import ndimage as ndi

    centre = ndi.binary_erosion(solid.labels == 1, iterations=1)     # past the blur of the rim
    wm = solid.brain_mask & (solid.labels == 0)
    med = lambda img, m: float(np.median(img[m]))  # noqa: E731
    assert med(solid.channels[0], centre) > med(solid.channels[0], wm)          # solid: FLAIR-bright
    assert med(cyst.channels[0], centre) < 0.6 * med(cyst.channels[0], wm)      # fluid: suppressed like CSF
    assert med(cyst.channels[1], centre) < med(solid.channels[1], centre)       # and darker on T1c
    unchanged = ndi.distance_transform_edt(solid.labels != 1) > 4    # beyond the soft edge of the centre
    np.testing.assert_array_equal(solid.channels[:, unchanged], cyst.channels[:, unchanged])
    assert synthetic_lesion_case(seed=15, n_lesions=1, mass_effect=0.0).params["necrosis_fluid"] == 0.0   # default
    # drawn per case: both kinds occur across seeds, and a case without a necrotic centre has no fluid
    draws = [synthetic_lesion_case(seed=s, necrosis_fluid=None).params for s in range(12)]
    fluid = [p["necrosis_fluid"] for p in draws]
    assert 0 < sum(f > 0 for f in fluid) < len(fluid)
    assert all(p["necrosis_fluid"] == 0 for p in draws if all(les["kind"] != "necrotic" for les in p["lesions"]))


def _stats(c):
    """Brain-normalised statistics of one case that a z-score cannot remove."""
    flair = c.channels[0]
    healthy = flair[c.brain_mask & (c.labels == 0)]
    contrast = (np.median(flair[c.labels == 2]) - np.median(healthy)) / flair[c.brain_mask].std()
    both = c.brain_mask[1:] & c.brain_mask[:-1]
    roughness = np.abs(np.diff(flair, axis=0))[both].mean() / flair[c.brain_mask].std()
    return contrast, roughness


def test_scanner_domains_differ_in_intensity_statistics():
    assert {"A", "B"} <= set(DOMAINS)
    for seed in range(3):      # the same patients imaged by both scanners
        (con_a, rough_a), (con_b, rough_b) = (_stats(synthetic_lesion_case(seed, d)) for d in "AB")
        assert con_a > 1.2 * con_b            # oedema less conspicuous on B's FLAIR
        assert rough_b > 1.2 * rough_a        # more noise along z despite thicker slices
    da = synthetic_lesion_case(0, "A").domain
    db = synthetic_lesion_case(0, "B").domain
    assert db["slice_thickness_mm"] > 2 * max(da["slice_thickness_mm"], 2.0)
    assert db["noise"]["FLAIR"] > 2 * da["noise"]["FLAIR"] and db["name"] == "B"


def test_custom_domain_dict_overrides_a_base():
    c = synthetic_lesion_case(1, domain={"base": "A", "noise": 0.0, "bias": 0.0, "gamma": 1.0,
                                         "scale": 1.0, "offset": 0.0,
                                         "intensities": {"FLAIR": {"wm": 0.4, "gm": 0.4, "csf": 0.4}}})
    assert c.domain["noise"]["FLAIR"] == 0.0 and c.domain["intensities"]["FLAIR"]["wm"] == 0.4
    from scipy import ndimage as ndi

    away_from_lesion = ndi.distance_transform_edt(c.labels == 0) > 3   # past its blurred edge
    vals = c.channels[0][c.brain_mask & away_from_lesion]
    assert np.ptp(vals) < 1e-4     # one intensity for all tissue: no noise, no bias
    assert float(vals.mean()) == pytest.approx(0.4, abs=1e-4)


def test_lesion_sizes_and_places_vary_across_seeds():
    cases = [synthetic_lesion_case(seed=s) for s in range(6)]
    whole = np.array([(c.labels > 0).sum() for c in cases]) * 8e-3   # mL at 2 mm
    assert whole.min() > 0.5 and whole.max() > 3 * whole.min()
    overlaps = [dice(cases[0].labels > 0, c.labels > 0) for c in cases[1:]]
    assert max(overlaps) < 0.5


def test_one_millimetre_option():
    c = synthetic_lesion_case(seed=3, spacing_mm=1.0, n_lesions=1)
    assert c.spacing == (1.0, 1.0, 1.0) and c.labels.shape[0] > 150
    assert set(np.unique(c.labels)) <= {0, 1, 2, 4} and (c.labels > 0).any()


@pytest.mark.parametrize("kwargs, word", [
    (dict(domain="Z"), "unknown scanner domain"),
    (dict(domain={"noise": (0.2, 0.1)}), "low > high"),
    (dict(domain={"contrast": 1.0}), "unknown domain parameter"),
    (dict(domain={"intensities": {"T2": {"wm": 1.0}}}), "unknown modality"),
    (dict(spacing_mm=0.5), "spacing_mm"),
    (dict(n_lesions=3), "n_lesions"),
    (dict(mass_effect=2.0), "mass_effect"),
    (dict(necrosis_fluid=1.5), "necrosis_fluid"),
])
def test_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        synthetic_lesion_case(0, **kwargs)


def test_npe2_sample_layers_share_the_case_geometry():
    from napari_medlearn.samples import brain_lesion_sample

    layers = brain_lesion_sample(seed=4)
    assert [(kw["name"], kind) for _, kw, kind in layers] == [
        ("synthetic lesion FLAIR", "image"), ("synthetic lesion T1c", "image"),
        ("synthetic lesion FLAIR [truth]", "labels")]
    case = synthetic_lesion_case(seed=4)
    for (data, kw, _), ref in zip(layers, (case.channels[0], case.channels[1], case.labels)):
        assert np.array_equal(data, ref)
        assert kw["scale"] == (2.0, 2.0, 2.0)
        np.testing.assert_array_equal(kw["metadata"]["affine"], case.affine)
    assert layers[0][1]["translate"] == layers[2][1]["translate"]
