import numpy as np

from napari_medlearn.imaging.labels import clean_labels, largest_component


def test_island_removed_and_hole_filled():
    lab = np.zeros((3, 20, 20), np.uint8)
    lab[:, 4:12, 4:12] = 1
    lab[1, 7, 7] = 0            # a hole in the cavity
    lab[1, 17:19, 17:19] = 1    # an island
    lab[:, 3, 4:12] = 2         # myocardium touching it
    out = clean_labels(lab)
    assert out[1, 7, 7] == 1
    assert (out[1, 17:19, 17:19] == 0).all()
    assert (out == 2).sum() == (lab == 2).sum()


def test_largest_component_of_empty_is_empty():
    assert not largest_component(np.zeros((4, 4), bool)).any()
