"""Sample data: phantoms made on the fly and real images from installed packages.

These functions are the npe2 ``sample_data`` contributions; each returns napari LayerData
tuples carrying the volume's geometry.
"""

from __future__ import annotations

#: what each sample is, for the widgets' model choice (``widgets._fit``)
PHANTOM, SYNTHETIC, REAL = "phantom", "synthetic", "real"


def _kind(layer_data: tuple, kind: str) -> tuple:
    data, kwargs, layer_type = layer_data
    return data, {**kwargs, "metadata": {**kwargs.get("metadata", {}), "image_kind": kind}}, layer_type


def cardiac_cine_sample(seed: int = 2024):
    """A short-axis cine phantom ``(t, z, y, x)`` with its exact labels (hidden)."""
    from .cardiac_phantom import cardiac_cine_phantom

    from ..imaging import structures

    ph = cardiac_cine_phantom(seed=seed)
    image, labels = ph.volumes()
    return [
        _kind(image.to_layer_data(name="cardiac cine (phantom)", layer_type="image",
                                  colormap="gray", contrast_limits=(0.0, float(ph.image.max()))), PHANTOM),
        structures.style_layer_data(labels.with_data(labels.data, structures="cardiac").to_layer_data(
            name="cardiac cine (phantom) truth", layer_type="labels", visible=False)),
    ]


def mni152_t1(resolution: int = 2):
    """The MNI152 T1 template shipped inside nilearn, as a :class:`Volume` ``(z, y, x)``.

    Source: nilearn.datasets.load_mni152_template (ICBM 2009 nonlinear asymmetric, packaged
    with nilearn; no download).
    """
    from nilearn.datasets import load_mni152_template

    from ..imaging.volume import Volume

    img = load_mni152_template(resolution=resolution)
    data = img.get_fdata(dtype="float32").transpose(2, 1, 0)
    perm = [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]]
    import numpy as np

    affine = img.affine @ np.asarray(perm, dtype=float)
    return Volume(np.ascontiguousarray(data), affine, ("z", "y", "x"),
                  {"source": "nilearn MNI152 template (ICBM 2009)"})


def mni152_t1_sample():
    """npe2 sample: the real MNI152 T1 brain from nilearn."""
    return [_kind(mni152_t1().to_layer_data(name="MNI152 T1 (nilearn)", layer_type="image", colormap="gray"), REAL)]


def brain_lesion_sample(seed: int = 3, domain: str = "A"):
    """npe2 sample: a synthetic glioma on the MNI152 anatomy, FLAIR + T1c, 2 mm, with its truth.

    Labels (hidden) follow BraTS: 1 necrotic core, 2 oedema, 4 enhancing tumour.
    """
    import numpy as np

    from .brain_lesions import LABEL_COLORS, LABEL_NAMES, synthetic_lesion_case

    case = synthetic_lesion_case(seed=seed, domain=domain)
    vols = case.volumes()
    layers = []
    for name in case.channel_names:
        v = vols[name]
        hi = float(np.percentile(v.data[case.brain_mask], 99.5))
        layers.append(_kind(v.to_layer_data(name=f"synthetic lesion {name}", layer_type="image",
                                            colormap="gray", contrast_limits=(0.0, hi),
                                            visible=name == case.channel_names[0]), SYNTHETIC))
    truth = vols["labels"].to_layer_data(name="synthetic lesion FLAIR [truth]", layer_type="labels",
                                         visible=False, colormap=dict(LABEL_COLORS))
    truth[1]["metadata"] = {**truth[1]["metadata"], "label_names": dict(LABEL_NAMES), "structures": "brats"}
    layers.append(truth)
    return layers


def fetal_sweep_sample(seed: int = 2024):
    """npe2 sample: a freehand ultrasound sweep ``(t, y, x)`` through the fetal phantom.

    The per-frame truth (SonoNet class names) rides in the layer's metadata. The seed is outside
    the sweeps the shipped demo model was trained (0-39) and evaluated (10000+) on.
    """
    from .fetal_phantom import fetal_sweep

    sw = fetal_sweep(seed=seed)
    sp = float(sw.pixel_spacing_mm)
    meta = {"source": f"fetal phantom sweep (seed {seed})", "plane_labels": sw.label_names,
            "class_names": list(sw.class_names), "pixel_spacing_mm": sp, "image_kind": PHANTOM}
    return [(sw.frames, {"name": "fetal ultrasound sweep (phantom)", "scale": (1.0, sp, sp), "axis_labels": ("t", "y", "x"), "colormap": "gray",
                         "contrast_limits": (0.0, 1.0), "metadata": meta}, "image")]
