"""The demo's sections write their outputs and report lines (the shape-prior section: seconds)."""

from napari_medlearn import demo, zoo
from napari_medlearn.imaging.io import read_nifti


def test_every_method_has_a_demo_section():
    names = [name for name, _ in demo.SECTIONS]
    assert names == sorted(set(names), key=names.index)          # no section twice
    for method in ("cardiac", "recon", "planes", "lesions", "sr", "acnn", "robust", "cohort"):
        assert method in names


def test_acnn_section_corrects_the_damaged_sample(tmp_path):
    lines = demo.demo_acnn(tmp_path / "acnn", device="cpu")
    if "Skipped" in " ".join(lines):
        assert not zoo.available("cardiac-shape-prior")
        return
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| damage")]
    assert len(rows) == 6                                          # five damages + combined
    lost = next(r for r in rows if r.startswith("| lost_slice"))
    damaged, morphology, prior = (float(v) for v in lost.split("|")[2:5])
    assert prior > damaged and prior > morphology, lost
    a, b = read_nifti(tmp_path / "acnn/damaged.nii.gz"), read_nifti(tmp_path / "acnn/corrected.nii.gz")
    assert a.data.shape == b.data.shape and (a.affine == b.affine).all()


def test_robust_section_names_each_models_source_once():
    same = demo._learnt_from({"lesions-synthetic": "scanners A, B and C", "lesions-uda": "scanners A, B and C"})
    assert same == "`lesions-synthetic` and `lesions-uda` learnt from synthetic scanners A, B and C."
    apart = demo._learnt_from({"lesions-synthetic": "scanner A", "lesions-uda": "scanners A, B and C"})
    assert apart.count("learnt from") == 2 and apart.startswith("`lesions-synthetic` learnt from synthetic scanner A.")
