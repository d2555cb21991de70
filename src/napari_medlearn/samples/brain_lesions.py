"""Synthetic multi-modal brain-tumour cases on the real MNI152 anatomy, with "scanner" domains.

The anatomy is the ICBM 2009 MNI152 template packaged with nilearn (grey- and white-matter
probability maps and the brain mask; CSF is what the mask holds beyond GM and WM); nothing
is downloaded. On it the generator grows a glioma-like lesion and renders two MR contrasts:

* **FLAIR**: CSF suppressed (dark), grey matter brighter than white matter, vasogenic oedema
  and tumour bright;
* **T1c** (post-gadolinium T1): white matter brighter than grey, CSF dark, an enhancing
  tumour rim bright, the necrotic core dark, oedema slightly hypointense.

Lesions are irregular blobs: level sets of an anisotropic, randomly rotated radial distance
plus band-limited (Gaussian-smoothed) noise. The whole tumour spreads preferentially along
white matter and spares CSF, like vasogenic oedema; inside it a tumour core, and inside the
core a necrotic centre surrounded by an enhancing rim. The necrotic centre ranges from solid
(FLAIR-bright, as coagulative necrosis mixed with tumour) to liquefied or cystic (fluid that
FLAIR suppresses like CSF and T1c shows dark): a tumour property (``necrosis_fluid``, 0 solid to
1 fluid, or drawn per case), the same on every scanner. Labels follow the BraTS convention the
plugin uses everywhere: 0 background, 1 necrotic (and non-enhancing) core, 2 oedema,
4 enhancing tumour (no label 3). Optionally the tumour pushes the surrounding tissue away
(mass effect, a smooth radial displacement that vanishes at the skull).

A **scanner domain** is the set of acquisition parameters: tissue intensities per modality
(contrast), a gamma (nonlinear intensity response), a smooth multiplicative bias field,
Rician noise, resolution (slice thickness and in-plane blur, then resampling back to the
grid) and an intensity scale and offset. :data:`DOMAINS` holds ranges per named scanner; a
case draws its parameters from them. "A" is the source scanner; "B" a clearly different
target (poor CSF suppression and low grey/white contrast on FLAIR, weaker enhancement, strong
bias, more noise, thick slices, gamma > 1); "C" a third (older low-field-like: gamma < 1,
in-plane blur, moderate noise). The anatomy and lesion depend only on ``seed`` and the scanner
only on ``(seed, domain)``, so the same seed in two domains gives the *same* labels imaged by two
scanners (paired cases for domain-adaptation experiments, Kamnitsas et al., IPMI 2017).

References: Menze et al., "The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)",
IEEE TMI 2015 (label convention, appearance per modality); Fonov et al., NeuroImage 2011
(MNI152 2009 template).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..imaging import structures
from ..imaging.volume import Volume

CHANNEL_NAMES = ("FLAIR", "T1c")
LABEL_NAMES = {0: "background", 1: "necrotic core", 2: "oedema", 4: "enhancing tumour"}
#: RGBA per BraTS label, the colours of the BraTS papers' figures (3: the older non-enhancing core)
LABEL_COLORS = structures.color_dict("brats")
TISSUES = ("csf", "gm", "wm", "oedema", "necrotic", "enhancing")

# Relative tissue intensities per modality (before gamma, bias, noise, scale). Each entry is a
# (low, high) range a case draws from, or a number.
DOMAINS: dict[str, dict[str, Any]] = {
    "A": {
        "description": "source scanner: 3T-like, good CSF suppression and enhancement, "
                       "mild bias, low noise, native resolution",
        "intensities": {
            "FLAIR": {"csf": (0.05, 0.11), "gm": (0.52, 0.58), "wm": (0.38, 0.44),
                      "oedema": (0.86, 0.98), "necrotic": (0.66, 0.82), "enhancing": (0.74, 0.88)},
            "T1c": {"csf": (0.12, 0.18), "gm": (0.42, 0.48), "wm": (0.62, 0.68),
                    "oedema": (0.36, 0.42), "necrotic": (0.16, 0.24), "enhancing": (0.95, 1.10)},
        },
        "gamma": (0.92, 1.08),
        "bias": (0.0, 0.12),
        "noise": (0.01, 0.025),
        "slice_thickness_mm": 0.0,
        "inplane_resolution_mm": 0.0,
        "scale": (0.8, 1.25),
        "offset": (-0.03, 0.03),
    },
    "B": {
        "description": "target scanner: incomplete CSF suppression and low grey/white contrast "
                       "on FLAIR, weak enhancement, strong bias, noisy, 5-6 mm slices, gamma > 1",
        "intensities": {
            "FLAIR": {"csf": (0.24, 0.32), "gm": (0.50, 0.55), "wm": (0.45, 0.50),
                      "oedema": (0.62, 0.70), "necrotic": (0.42, 0.52), "enhancing": (0.56, 0.64)},
            "T1c": {"csf": (0.22, 0.28), "gm": (0.50, 0.55), "wm": (0.58, 0.63),
                    "oedema": (0.46, 0.52), "necrotic": (0.30, 0.38), "enhancing": (0.74, 0.84)},
        },
        "gamma": (1.2, 1.45),
        "bias": (0.25, 0.40),
        "noise": (0.04, 0.065),
        "slice_thickness_mm": (5.0, 6.0),
        "inplane_resolution_mm": 0.0,
        "scale": (1.5, 3.0),
        "offset": (0.05, 0.2),
    },
    "C": {
        "description": "a third scanner: low-field-like, gamma < 1, blurred in-plane (3-4 mm), "
                       "moderate bias and noise",
        "intensities": {
            "FLAIR": {"csf": (0.12, 0.20), "gm": (0.55, 0.62), "wm": (0.42, 0.48),
                      "oedema": (0.80, 0.90), "necrotic": (0.60, 0.75), "enhancing": (0.70, 0.82)},
            "T1c": {"csf": (0.15, 0.22), "gm": (0.40, 0.46), "wm": (0.56, 0.62),
                    "oedema": (0.38, 0.45), "necrotic": (0.20, 0.28), "enhancing": (0.85, 0.98)},
        },
        "gamma": (0.6, 0.8),
        "bias": (0.12, 0.25),
        "noise": (0.03, 0.05),
        "slice_thickness_mm": (2.5, 3.5),
        "inplane_resolution_mm": (3.0, 4.0),
        "scale": (0.5, 0.9),
        "offset": (-0.02, 0.02),
    },
}
_SCALAR_KEYS = ("gamma", "bias", "noise", "slice_thickness_mm", "inplane_resolution_mm",
                "scale", "offset")


@dataclass(frozen=True, eq=False)
class LesionCase:
    """One rendered case.

    Attributes
    ----------
    channels
        ``(C, z, y, x)`` float32, in the order of ``channel_names``; zero outside the brain
        (skull-stripped, as BraTS distributes its images).
    channel_names
        ``("FLAIR", "T1c")``.
    labels
        ``(z, y, x)`` uint8 in {0, 1, 2, 4}: necrotic core, oedema, enhancing tumour.
    brain_mask
        ``(z, y, x)`` bool.
    spacing
        ``(dz, dy, dx)`` mm.
    affine
        4x4 voxel ``(z, y, x)`` -> RAS mm, as :class:`~napari_medlearn.imaging.volume.Volume`.
    domain
        The scanner parameters this case was imaged with (concrete numbers; ``name``).
    seed
        The seed; ``params`` holds the lesion draws (centres, radii, mass effect, ...).
    """

    channels: np.ndarray
    labels: np.ndarray
    brain_mask: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    domain: dict
    seed: int
    channel_names: tuple[str, ...] = CHANNEL_NAMES
    params: dict = field(default_factory=dict)

    def volumes(self) -> dict[str, Volume]:
        """Each channel, the labels and the brain mask as :class:`Volume` s sharing one geometry."""
        meta = {"source": f"synthetic brain lesion (seed {self.seed}, scanner {self.domain['name']})"}
        out = {name: Volume(self.channels[i], self.affine, ("z", "y", "x"), {**meta, "modality": name})
               for i, name in enumerate(self.channel_names)}
        out["labels"] = Volume(self.labels, self.affine, ("z", "y", "x"), dict(meta))
        out["brain_mask"] = Volume(self.brain_mask.astype(np.uint8), self.affine, ("z", "y", "x"), dict(meta))
        return out


# ----- anatomy ----------------------------------------------------------------------------------
_MARGIN_MM = 10


@lru_cache(maxsize=1)
def _mni_1mm() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GM, WM, brain mask (float32, nilearn's ``(x, y, z)`` order) and the 1 mm affine."""
    from nilearn.datasets import (load_mni152_brain_mask, load_mni152_gm_template,
                                  load_mni152_wm_template)

    gm_img = load_mni152_gm_template(resolution=1)
    gm = gm_img.get_fdata(dtype=np.float32)
    wm = load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    mask = load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32)
    return gm, wm, mask, np.asarray(gm_img.affine, dtype=float)


@dataclass(frozen=True, eq=False)
class _Anatomy:
    gm: np.ndarray        # (z, y, x) float32 probabilities
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray      # bool
    inside_mm: np.ndarray  # distance to the outside of the brain, mm
    affine: np.ndarray    # voxel (z, y, x) -> RAS
    spacing: float


@lru_cache(maxsize=4)
def _anatomy(spacing_mm: float) -> _Anatomy:
    """The template cropped to the brain (+10 mm) and resampled to ``spacing_mm`` isotropic."""
    gm, wm, mask, aff1 = _mni_1mm()
    idx = np.argwhere(mask > 0.5)
    lo = np.maximum(idx.min(0) - _MARGIN_MM, 0)
    hi = np.minimum(idx.max(0) + _MARGIN_MM + 1, mask.shape)
    s = float(spacing_mm)
    n = np.ceil((hi - lo) / s).astype(int)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    maps = [gm[crop], wm[crop], mask[crop]]
    if s != 1.0:
        # anti-alias, then sample at the centres of the coarse voxels
        sigma = 0.5 * np.sqrt(s * s - 1.0)
        coords = [(np.arange(k) + 0.5) * s - 0.5 for k in n]
        grid = np.meshgrid(*coords, indexing="ij")
        maps = [ndi.map_coordinates(ndi.gaussian_filter(m, sigma), grid, order=1, mode="nearest")
                for m in maps]
    # nilearn (x, y, z) -> napari (z, y, x)
    g, w, m = (np.ascontiguousarray(np.clip(a, 0, 1).transpose(2, 1, 0)).astype(np.float32) for a in maps)
    brain = m > 0.5
    total = g + w
    over = total > 1.0
    g = np.where(over, g / np.maximum(total, 1e-6), g) * brain
    w = np.where(over, w / np.maximum(total, 1e-6), w) * brain
    g, w = g.astype(np.float32), w.astype(np.float32)
    c = (np.clip(1.0 - g - w, 0.0, 1.0) * brain).astype(np.float32)
    shift = np.diag([s, s, s, 1.0])
    shift[:3, 3] = lo + 0.5 * s - 0.5
    aff_xyz = aff1 @ shift
    perm = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    inside = ndi.distance_transform_edt(brain, sampling=s).astype(np.float32)
    for a in (g, w, c, brain, inside):
        a.setflags(write=False)  # cached and shared by every case
    return _Anatomy(g, w, c, brain, inside, aff_xyz @ perm, s)


# ----- domains ----------------------------------------------------------------------------------
def _check_range(key: str, v: Any) -> None:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if not np.isfinite(v):
            raise ValueError(f"domain parameter {key!r} must be finite, got {v}")
        return
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(t, (int, float)) for t in v):
        if not v[0] <= v[1]:
            raise ValueError(f"domain parameter {key!r}: range {tuple(v)} has low > high")
        return
    raise ValueError(f"domain parameter {key!r} must be a number or a (low, high) range, got {v!r}")


def _domain_spec(domain: str | dict) -> dict:
    """The parameter ranges of a named domain, or a dict merged over its ``base`` (default "A")."""
    if isinstance(domain, str):
        if domain not in DOMAINS:
            raise ValueError(f"unknown scanner domain {domain!r}; known: {sorted(DOMAINS)}")
        spec = copy.deepcopy(DOMAINS[domain])
        spec["name"] = domain
        return spec
    if not isinstance(domain, dict):
        raise ValueError(f"domain must be a name {sorted(DOMAINS)} or a dict, got {type(domain).__name__}")
    base = domain.get("base", "A")
    spec = _domain_spec(base)
    spec["name"] = str(domain.get("name", f"custom (base {base})"))
    for key, v in domain.items():
        if key in ("base", "name", "description"):
            continue
        if key == "intensities":
            if not isinstance(v, dict):
                raise ValueError("domain 'intensities' must be {modality: {tissue: value or range}}")
            for mod, tissues in v.items():
                if mod not in CHANNEL_NAMES or not isinstance(tissues, dict):
                    raise ValueError(f"domain intensities: unknown modality {mod!r}; known: {CHANNEL_NAMES}")
                for t, r in tissues.items():
                    if t not in TISSUES:
                        raise ValueError(f"domain intensities: unknown tissue {t!r}; known: {TISSUES}")
                    _check_range(f"intensities.{mod}.{t}", r)
                    spec["intensities"][mod][t] = r
        elif key in _SCALAR_KEYS:
            _check_range(key, v)
            spec[key] = v
        else:
            raise ValueError(f"unknown domain parameter {key!r}; known: "
                             f"{('base', 'name', 'intensities') + _SCALAR_KEYS}")
    return spec


def _draw(rng: np.random.Generator, v: Any) -> float:
    if isinstance(v, (tuple, list)):
        return float(rng.uniform(v[0], v[1])) if v[1] > v[0] else float(v[0])
    return float(v)


def _draw_domain(spec: dict, rng: np.random.Generator) -> dict:
    out: dict[str, Any] = {"name": spec["name"], "intensities": {}}
    for mod in CHANNEL_NAMES:
        out["intensities"][mod] = {t: _draw(rng, spec["intensities"][mod][t]) for t in TISSUES}
    for key in ("slice_thickness_mm", "inplane_resolution_mm"):
        out[key] = _draw(rng, spec[key])
    for key in ("gamma", "bias", "noise", "scale", "offset"):
        out[key] = {mod: _draw(rng, spec[key]) for mod in CHANNEL_NAMES}
    return out


# ----- lesions ----------------------------------------------------------------------------------
def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _smooth_noise(rng: np.random.Generator, shape, sigma_vox: float) -> np.ndarray:
    """Band-limited Gaussian noise of unit standard deviation."""
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), max(sigma_vox, 0.5))
    sd = float(n.std())
    return n / sd if sd > 0 else n


def _radius(offsets: np.ndarray, rot: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Normalised anisotropic distance ``|R^T d / radii|`` of mm offsets ``(3, ...)``."""
    d = np.tensordot(rot.T, offsets, axes=1)
    return np.sqrt(sum((d[i] / radii[i]) ** 2 for i in range(3)))


def _mass_effect(anat_maps, centre_mm, core_mm, whole_mm, strength, inside_mm, spacing):
    """Push tissue radially away from the tumour: resample the maps at ``x - u(r) (x - c)/r``."""
    gm, wm, csf = anat_maps
    shape = gm.shape
    length = 1.2 * whole_mm
    reach = core_mm + 2.5 * length
    lo = np.maximum(np.floor((centre_mm - reach) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((centre_mm + reach) / spacing).astype(int) + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    grid = np.stack(np.meshgrid(*[np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)],
                                indexing="ij"))
    off = grid * spacing - centre_mm[:, None, None, None].astype(np.float32)
    r = np.sqrt((off ** 2).sum(0)) + 1e-3
    u = np.where(r < core_mm, r / core_mm, np.exp(-((r - core_mm) / length) ** 2)) * strength * core_mm
    u *= np.clip(inside_mm[box] / 15.0, 0.0, 1.0)  # the skull does not move
    src = grid - (u / r)[None] * off / spacing
    gm, wm = (_paste(m, box, ndi.map_coordinates(m, src, order=1, mode="nearest")) for m in (gm, wm))
    # what is pulled in from beyond the brain's edge is CSF; the three still sum to one
    mask = csf + anat_maps[0] + anat_maps[1] > 0.5
    return gm, wm, (np.clip(1.0 - gm - wm, 0.0, 1.0) * mask).astype(np.float32)


def _paste(full: np.ndarray, box, part: np.ndarray) -> np.ndarray:
    out = np.array(full, copy=True)
    out[box] = part
    return out


def _grow_lesion(rng, anat: _Anatomy, gm, wm, csf, labels, mass_effect):
    """Draw one tumour, maybe displace the anatomy, and write its labels. Returns its params."""
    s = anat.spacing
    whole_r = float(rng.uniform(12.0, 34.0))            # mm, mean radius of the whole tumour
    core_r = whole_r * float(rng.uniform(0.35, 0.7))
    kind = rng.choice(["necrotic", "solid", "non-enhancing"], p=[0.7, 0.15, 0.15])
    necro_r = core_r * float(rng.uniform(0.45, 0.8))
    # centre in deep white matter, far enough inside the brain for the core
    ok = (anat.wm > 0.5) & (anat.inside_mm > 0.6 * core_r + 6.0)
    cand = np.flatnonzero(ok)
    if cand.size == 0:
        cand = np.flatnonzero(anat.wm > 0.5)
    centre_vox = np.array(np.unravel_index(cand[rng.integers(cand.size)], anat.mask.shape), dtype=float)
    centre = centre_vox * s
    strength = float(rng.uniform(0.0, 0.45)) if mass_effect is None else float(mass_effect)
    if strength > 0:
        gm, wm, csf = _mass_effect((gm, wm, csf), centre, core_r, whole_r, strength, anat.inside_mm, s)

    half = 1.6 * whole_r + 3 * s
    lo = np.maximum(np.floor((centre - half) / s).astype(int), 0)
    hi = np.minimum(np.ceil((centre + half) / s).astype(int) + 1, anat.mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    shape = tuple(hi - lo)
    off = np.stack(np.meshgrid(*[np.arange(a, b) * s for a, b in zip(lo, hi)], indexing="ij")) \
        - centre[:, None, None, None]

    def blob(radius, centre_shift, roughness, corr_mm):
        rot = _rotation(rng)
        radii = radius * rng.uniform(0.75, 1.3, size=3)
        rho = _radius(off - centre_shift[:, None, None, None], rot, radii)
        return rho + roughness * _smooth_noise(rng, shape, corr_mm / s)

    inside = anat.mask[box]
    wm_b, csf_b = wm[box], csf[box]
    # whole tumour: reaches further along white matter, stops at CSF
    whole = (blob(whole_r, np.zeros(3), 0.18, 0.25 * whole_r) - 0.35 * (wm_b - 0.5) < 1.0) & inside
    whole &= (csf_b < 0.6)
    shift = rng.uniform(-0.2, 0.2, size=3) * whole_r
    core = (blob(core_r, shift, 0.15, 0.3 * core_r) < 1.0) & inside
    core = ndi.binary_opening(core, iterations=1) if core.sum() > 50 else core
    necro = (blob(necro_r, shift, 0.15, 0.3 * necro_r) < 1.0) & ndi.binary_erosion(core, iterations=1)
    if not core.any():  # a core always exists: at least the voxel at the centre
        core[tuple(np.clip((centre_vox - lo).astype(int), 0, np.array(shape) - 1))] = True
    whole |= core
    # keep the connected part of the oedema that touches the core
    comp, _ = ndi.label(whole)
    keep = np.unique(comp[core])
    whole = np.isin(comp, keep[keep > 0])

    lab = np.where(whole, 2, 0).astype(np.uint8)
    if kind == "non-enhancing":
        lab[core] = 1
    elif kind == "solid":
        lab[core] = 4
    else:
        lab[core] = 4
        lab[necro] = 1
    region = labels[box]
    # a second lesion never overwrites the first one's core
    write = lab > 0
    write &= ~((region == 1) | (region == 4)) | (lab != 2)
    region[write] = lab[write]
    params = {"centre_mm": [float(v) for v in centre], "whole_radius_mm": whole_r, "core_radius_mm": core_r,
              "necrotic_radius_mm": necro_r if kind == "necrotic" else 0.0, "kind": str(kind),
              "mass_effect": strength}
    return gm, wm, csf, params, box


# ----- scanner ----------------------------------------------------------------------------------
def _bias_field(rng, shape, strength) -> np.ndarray:
    """``1 + strength * f`` with ``f`` a random cubic polynomial in (z, y, x), ``|f| <= 1``."""
    if strength <= 0:
        return np.ones(shape, dtype=np.float32)
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    leg = [[np.ones_like(a), a, 1.5 * a * a - 0.5, 2.5 * a ** 3 - 1.5 * a] for a in axes]
    f = np.zeros(shape, dtype=np.float32)
    for i in range(4):
        for j in range(4 - i):
            for k in range(4 - i - j):
                if i + j + k == 0:
                    continue
                c = rng.normal() / (1 + i + j + k)
                f += c * leg[0][i][:, None, None] * leg[1][j][None, :, None] * leg[2][k][None, None, :]
    f /= max(float(np.abs(f).max()), 1e-6)
    return (1.0 + strength * f).astype(np.float32)


def _resample_axis(img: np.ndarray, axis: int, step: float) -> np.ndarray:
    """Sample ``img`` every ``step`` voxels along ``axis`` and interpolate back (linear)."""
    n = img.shape[axis]
    pos = np.arange(0.0, n - 1 + 1e-6, step)
    if pos.size < 2:
        return img
    coarse = _interp_axis(img, axis, pos)
    return _interp_axis(coarse, axis, np.clip(np.arange(n) / step, 0, pos.size - 1))


def _interp_axis(img: np.ndarray, axis: int, pos: np.ndarray) -> np.ndarray:
    i0 = np.clip(np.floor(pos).astype(int), 0, img.shape[axis] - 1)
    i1 = np.clip(i0 + 1, 0, img.shape[axis] - 1)
    w = (pos - i0).astype(np.float32)
    shp = [1] * img.ndim
    shp[axis] = -1
    w = w.reshape(shp)
    return np.take(img, i0, axis=axis) * (1 - w) + np.take(img, i1, axis=axis) * w


def _degrade_resolution(img: np.ndarray, spacing: float, slice_mm: float, inplane_mm: float) -> np.ndarray:
    """Thick slices along z and/or a blurred in-plane point-spread, resampled back to the grid."""
    sig = []
    for fwhm in (slice_mm, inplane_mm, inplane_mm):
        extra = max(fwhm * fwhm - spacing * spacing, 0.0)
        sig.append(np.sqrt(extra) / 2.3548 / spacing)
    if max(sig) <= 0:
        return img
    out = ndi.gaussian_filter(img, sig)
    if slice_mm > 1.5 * spacing:
        out = _resample_axis(out, 0, slice_mm / spacing)
    if inplane_mm > 1.5 * spacing:
        out = _resample_axis(_resample_axis(out, 1, inplane_mm / spacing), 2, inplane_mm / spacing)
    return out


def _render(anat, gm, wm, csf, labels, lesion_box, dom, mod, rng, necrosis_fluid: float = 0.0) -> np.ndarray:
    mu = dict(dom["intensities"][mod])
    # liquefied necrosis takes on the scanner's CSF signal in proportion to its fluid content
    mu["necrotic"] = (1.0 - necrosis_fluid) * mu["necrotic"] + necrosis_fluid * mu["csf"]
    img = (csf * mu["csf"] + gm * mu["gm"] + wm * mu["wm"]).astype(np.float32)
    if lesion_box is not None:
        lab = labels[lesion_box]
        part = img[lesion_box]
        soft = {k: ndi.gaussian_filter((lab == k).astype(np.float32), 0.6) for k in (1, 2, 4)}
        total = soft[1] + soft[2] + soft[4]
        # oedema is brightest next to the tumour core and fades outwards
        core = (lab == 1) | (lab == 4)
        near = np.exp(-ndi.distance_transform_edt(~core, sampling=anat.spacing) / 15.0) if core.any() \
            else np.ones(lab.shape)
        tex = lambda amp, corr: 1.0 + amp * _smooth_noise(rng, lab.shape, corr / anat.spacing)  # noqa: E731
        lesion = (soft[2] * mu["oedema"] * (0.78 + 0.22 * near) * tex(0.06, 4.0)
                  + soft[1] * mu["necrotic"] * tex(0.08, 3.0)
                  + soft[4] * mu["enhancing"] * tex(0.07, 2.0))
        img[lesion_box] = part * np.clip(1.0 - total, 0.0, 1.0) + lesion
    img = np.clip(img, 0.0, None) ** dom["gamma"][mod]
    img *= _bias_field(rng, img.shape, dom["bias"][mod])
    img = _degrade_resolution(img, anat.spacing, dom["slice_thickness_mm"], dom["inplane_resolution_mm"])
    sigma = dom["noise"][mod] * mu["wm"] ** dom["gamma"][mod]
    n1 = rng.standard_normal(img.shape, dtype=np.float32)
    n2 = rng.standard_normal(img.shape, dtype=np.float32)
    img = np.sqrt((img + sigma * n1) ** 2 + (sigma * n2) ** 2)  # Rician magnitude
    img = dom["scale"][mod] * img + dom["offset"][mod]
    return np.where(anat.mask, img, 0.0).astype(np.float32)


def synthetic_lesion_case(
    seed: int,
    domain: str | dict = "A",
    spacing_mm: float = 2.0,
    n_lesions: int | None = None,
    mass_effect: float | None = None,
    necrosis_fluid: float | None = 0.0,
) -> LesionCase:
    """Render one synthetic brain-tumour case on the MNI152 anatomy.

    Parameters
    ----------
    seed
        The anatomy deformation and lesion derive from ``seed`` alone; the scanner draw from
        ``(seed, domain)``. The same arguments give the same case, bit for bit.
    domain
        A name in :data:`DOMAINS` ("A" source, "B" target, "C") or a dict of parameters merged
        over ``dict["base"]`` (default "A"): any of ``intensities`` (``{modality: {tissue: v}}``),
        ``gamma``, ``bias``, ``noise``, ``slice_thickness_mm``, ``inplane_resolution_mm``,
        ``scale``, ``offset``, each a number or a ``(low, high)`` range.
    spacing_mm
        Isotropic voxel size, 1 to 4 mm (2 mm: about 83x101x83 voxels).
    n_lesions
        1 or 2 tumours (default: 1, sometimes 2).
    mass_effect
        Displacement of the surrounding tissue as a fraction of the core radius, 0 to 0.6
        (0: none; default random 0-0.45).
    necrosis_fluid
        Fluid content of the necrotic centre (inside an enhancing rim), 0 (solid: FLAIR-bright;
        the default, the cases the shipped synthetic-domain models learnt) to 1 (cystic: the CSF
        signal on every modality); ``None``: random per seed, 0 for half of the cases, else
        uniform 0.3-1. No effect on a case without a necrotic centre.

    Returns
    -------
    LesionCase
    """
    if not (isinstance(spacing_mm, (int, float)) and 1.0 <= float(spacing_mm) <= 4.0):
        raise ValueError(f"spacing_mm must be between 1 and 4 mm, got {spacing_mm!r}")
    if n_lesions is not None and n_lesions not in (1, 2):
        raise ValueError(f"n_lesions must be 1 or 2, got {n_lesions!r}")
    if mass_effect is not None and not 0.0 <= float(mass_effect) <= 0.6:
        raise ValueError(f"mass_effect must be between 0 and 0.6, got {mass_effect!r}")
    if necrosis_fluid is not None and not 0.0 <= float(necrosis_fluid) <= 1.0:
        raise ValueError(f"necrosis_fluid must be between 0 and 1, got {necrosis_fluid!r}")
    seed = int(seed)
    spec = _domain_spec(domain)
    anat = _anatomy(float(spacing_mm))
    lesion_rng = np.random.default_rng([seed, 0])
    scanner_rng = np.random.default_rng([seed, 1, *[ord(c) for c in spec["name"]]])

    gm, wm, csf = anat.gm, anat.wm, anat.csf
    labels = np.zeros(anat.mask.shape, dtype=np.uint8)
    n = int(n_lesions if n_lesions is not None else (2 if lesion_rng.random() < 0.2 else 1))
    lesions, boxes = [], []
    for _ in range(n):
        gm, wm, csf, p, box = _grow_lesion(lesion_rng, anat, gm, wm, csf, labels, mass_effect)
        lesions.append(p)
        boxes.append(box)
    labels[~anat.mask] = 0
    union = tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes)) for i in range(3))

    if necrosis_fluid is None:     # its own stream: the lesion and scanner draws stay as they were
        fluid_rng = np.random.default_rng([seed, 2])
        necrosis_fluid = float(fluid_rng.uniform(0.3, 1.0)) if fluid_rng.random() < 0.5 else 0.0
    if not any(p["kind"] == "necrotic" for p in lesions):
        necrosis_fluid = 0.0       # a solid or non-enhancing core has no necrotic centre to liquefy
    dom = _draw_domain(spec, scanner_rng)
    channels = np.stack([_render(anat, gm, wm, csf, labels, union, dom, mod, scanner_rng, float(necrosis_fluid))
                         for mod in CHANNEL_NAMES])
    s = float(spacing_mm)
    return LesionCase(channels=channels, labels=labels, brain_mask=anat.mask.copy(), spacing=(s, s, s),
                      affine=anat.affine.copy(), domain=dom, seed=seed,
                      params={"lesions": lesions, "n_lesions": n, "necrosis_fluid": float(necrosis_fluid)})
