"""A short-axis cardiac cine MRI phantom with exact labels.

The heart is built from nested truncated half-ellipsoids (LV endocardium inside epicardium, as
in the classic analytic LV models) plus an RV crescent wrapped around the septum, all in mm in
a frame tilted slightly off the slice normal. Through the cycle the LV cavity shrinks to a chosen
ejection fraction while the myocardial volume is conserved (the wall thickens in systole), and
the base descends a little. Around it: chest wall with subcutaneous fat, lungs, liver, the
descending aorta, papillary muscles (labelled as cavity, as in ACDC and UK Biobank), and the
atria above the base (unlabelled). The acquisition adds what a scanner adds: partial volume
through 8-10 mm slices, a coil bias field, Rician noise, slice-to-slice breath-hold shifts and
an arbitrary intensity scale.

Labels follow the plugin's convention: 0 background, 1 LV cavity, 2 myocardium, 3 RV cavity.
Labels are drawn at the centre of each slice from the same shapes that render the image, so
measures computed on them are the truth for that image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..imaging.volume import Volume, affine_from_spacing


@dataclass(frozen=True, eq=False)
class CardiacPhantom:
    """A rendered cine and its truth.

    ``image`` and ``labels`` are ``(t, z, y, x)``; ``spacing`` is ``(dz, dy, dx)`` mm;
    ``time_step`` in ms; ``params`` the random draws (target EF, sizes, angles, ...).
    """

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    time_step: float
    params: dict = field(default_factory=dict)

    def volumes(self) -> tuple[Volume, Volume]:
        """The image and labels as :class:`Volume` s sharing one geometry."""
        aff = affine_from_spacing(self.spacing)
        meta = {"time_step": self.time_step, "source": "cardiac cine phantom",
                "phantom_seed": self.params.get("seed")}
        return (Volume(self.image, aff, ("t", "z", "y", "x"), dict(meta)),
                Volume(self.labels, aff, ("t", "z", "y", "x"), dict(meta)))


def _contraction(phase: np.ndarray, es_phase: float) -> np.ndarray:
    """0 at end-diastole, 1 at end-systole: cosine ejection then cosine filling."""
    phase = np.asarray(phase, dtype=float) % 1.0
    up = 0.5 * (1 - np.cos(np.pi * np.clip(phase / es_phase, 0, 1)))
    down = 0.5 * (1 + np.cos(np.pi * np.clip((phase - es_phase) / (1 - es_phase), 0, 1)))
    return np.where(phase <= es_phase, up, down)


def _ellipse(u, v, cu, cv, a, b):
    """Inside test for an axis-aligned ellipse in (u, v); a, b <= 0 gives an empty region."""
    if a <= 0 or b <= 0:
        return np.zeros(np.broadcast(u, v).shape, dtype=bool)
    return ((u - cu) / a) ** 2 + ((v - cv) / b) ** 2 < 1.0


def _bias_field(rng, shape, strength) -> np.ndarray:
    """A smooth multiplicative coil sensitivity, ``1 +- strength``, over (z, y, x)."""
    nz, ny, nx = shape
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx),
                             indexing="ij")
    field = np.zeros(shape)
    for _ in range(3):  # a few broad Gaussian "coil elements" at random places
        c = rng.uniform(-1.2, 1.2, size=3)
        w = rng.uniform(0.6, 1.4)
        field += rng.uniform(0.3, 1.0) * np.exp(-((yy - c[1]) ** 2 + (xx - c[2]) ** 2 + 0.2 * (zz - c[0]) ** 2) / w ** 2)
    field = (field - field.min()) / (np.ptp(field) + 1e-9)
    return 1.0 - strength + 2.0 * strength * field


def cardiac_cine_phantom(
    seed: int = 0,
    n_frames: int | None = None,
    matrix: int | tuple[int, int] | None = None,
    in_plane_spacing: float | None = None,
    slice_thickness: float | None = None,
    noise: float | None = None,
) -> CardiacPhantom:
    """Render one random short-axis cine.

    Parameters
    ----------
    seed
        Everything random derives from it: the same seed gives the same phantom.
    n_frames
        Frames per cycle (default: random 20-30).
    matrix
        In-plane matrix ``(ny, nx)`` (default: a field of view of 300-360 mm at the spacing).
    in_plane_spacing
        mm (default random 1.3-1.8).
    slice_thickness
        mm, also the slice spacing (default random 8-10).
    noise
        Rician noise sigma relative to the blood signal (default random 0.02-0.07).

    Returns
    -------
    CardiacPhantom
        ``image`` float32 and ``labels`` uint8, both ``(t, z, y, x)``.
    """
    rng = np.random.default_rng(seed)
    u_ = rng.uniform
    T = int(n_frames if n_frames is not None else rng.integers(20, 31))
    dxy = float(in_plane_spacing if in_plane_spacing is not None else u_(1.3, 1.8))
    dz = float(slice_thickness if slice_thickness is not None else u_(8.0, 10.0))
    if matrix is None:
        n = int(round(u_(300, 360) / dxy / 2) * 2)
        ny, nx = n, n + 2 * int(rng.integers(0, 12))
    elif np.isscalar(matrix):
        ny = nx = int(matrix)
    else:
        ny, nx = (int(m) for m in matrix)
    if T < 1 or ny < 16 or nx < 16 or dz <= 0 or dxy <= 0:
        raise ValueError("phantom needs at least 1 frame, a 16x16 matrix and positive spacing")

    # --- anatomy (mm) --------------------------------------------------------------------
    L = u_(70, 95)                    # LV cavity length, base to apex
    r0 = u_(21, 30)                   # basal endocardial radius at ED
    asp = u_(0.85, 1.0)               # cross-section ellipticity
    wall = u_(6.0, 11.0)              # wall thickness at ED
    R0 = r0 + wall
    ef = u_(0.25, 0.70)
    rv_ef = u_(0.30, 0.65)
    es_phase = u_(0.30, 0.42)
    theta = u_(0, 2 * np.pi)          # direction from LV to RV in the image
    tilt = u_(-0.15, 0.15, size=2)    # long axis vs slice normal (mm in-plane per mm along)
    fov_y, fov_x = ny * dxy, nx * dxy
    centre = np.array([u_(-0.12, 0.12) * fov_y, u_(-0.12, 0.12) * fov_x])
    rv_len = L * u_(0.75, 0.92)
    rv_depth = u_(14, 28)             # how far the RV free wall stands off the septum at ED
    rv_b = u_(1.15, 1.5)              # RV width relative to the epicardial radius
    rv_wall = u_(2.5, 4.0)
    base_descent = u_(0.05, 0.12)
    above_base = int(rng.integers(1, 3))   # slices through the atria above the base
    below_apex = int(rng.integers(0, 2))
    n_slices = above_base + int(np.ceil((L + wall) / dz)) + below_apex
    z_base = (above_base - 0.5 + u_(0.0, 0.8)) * dz   # base position from the first slice centre
    shifts = rng.normal(0, 1.5, size=(n_slices, 2))   # breath-hold mismatch per slice (mm)
    # tissue contrast (bSSFP-like), random per scan
    c = {
        "blood": u_(0.75, 1.0), "myo": u_(0.18, 0.32), "fat": u_(0.65, 0.95), "muscle": u_(0.2, 0.35),
        "lung": u_(0.02, 0.08), "liver": u_(0.3, 0.45), "soft": u_(0.3, 0.45), "air": 0.0,
    }
    sigma = float(noise if noise is not None else u_(0.02, 0.07))
    scale = u_(150, 2000)
    pap = [(theta + np.pi + u_(-0.9, -0.4), u_(2.0, 3.5)), (theta + np.pi + u_(0.4, 0.9), u_(2.0, 3.5))]
    body_r = np.array([0.36 * fov_y * u_(0.85, 1.05), 0.42 * fov_x * u_(0.85, 1.05)])
    body_c = centre * u_(0.2, 0.5) + rng.normal(0, 5, size=2)
    aorta_c = centre + 1.0 * (R0 + 18) * np.array([np.sin(theta + np.pi * 0.85), np.cos(theta + np.pi * 0.85)])
    liver_side = np.array([np.sin(theta + np.pi * 1.3), np.cos(theta + np.pi * 1.3)])

    # --- sampling grid ---------------------------------------------------------------------
    yy = (np.arange(ny) - (ny - 1) / 2) * dxy
    xx = (np.arange(nx) - (nx - 1) / 2) * dxy
    Y, X = np.meshgrid(yy, xx, indexing="ij")
    sub_offsets = np.array([-1 / 3, 0.0, 1 / 3]) * dz   # partial volume through the slice
    phases = np.arange(T) / T
    cont = _contraction(phases, es_phase)

    # myocardial volume conservation: R(t)^2 (L(t)+wall) - r(t)^2 L(t) = const
    K = R0 ** 2 * (L + wall) - r0 ** 2 * L

    image = np.zeros((T, n_slices, ny, nx), dtype=np.float32)
    labels = np.zeros((T, n_slices, ny, nx), dtype=np.uint8)
    for t in range(T):
        q = 1.0 - ef * cont[t]                     # LV volume ratio to ED
        ell = 1.0 - base_descent * cont[t]         # LV length ratio
        r_t = r0 * np.sqrt(q / ell)
        L_t = L * ell
        R_t = np.sqrt((K + r_t ** 2 * L_t) / (L_t + wall))
        depth_t = (1.0 - rv_ef * cont[t]) ** 0.7   # crescent area ~ depth x width
        width_t = (1.0 - rv_ef * cont[t]) ** 0.3
        base_t = z_base + L * (1 - ell) * 0.5      # the base moves towards the apex
        for k in range(n_slices):
            acc = np.zeros((ny, nx))
            for j, dzs in enumerate(sub_offsets):
                zeta = (k * dz + dzs) - base_t       # distance below the base along the long axis
                cen = centre + tilt * zeta + shifts[k]
                du, dv = Y - cen[0], X - cen[1]
                # rotate into the heart frame: u towards the RV
                u = du * np.sin(theta) + dv * np.cos(theta)
                v = -du * np.cos(theta) + dv * np.sin(theta)
                rho_endo = r_t * np.sqrt(max(0.0, 1 - (zeta / L_t) ** 2)) if zeta >= 0 else 0.0
                rho_epi = R_t * np.sqrt(max(0.0, 1 - (zeta / (L_t + wall)) ** 2)) if zeta >= 0 else 0.0
                endo = _ellipse(u, v, 0, 0, rho_endo, rho_endo * asp)
                epi = _ellipse(u, v, 0, 0, rho_epi, rho_epi * (asp + (1 - asp) * 0.5))
                myo = epi & ~endo
                # RV: an ellipse from inside the septum out to the free wall, minus the LV;
                # systole moves the free wall towards the septum and narrows the crescent
                rv_scale = np.sqrt(max(0.0, 1 - (zeta / rv_len) ** 2)) if zeta >= 0 else 0.0
                u_in = -0.3 * rho_epi
                u_out = rho_epi + rv_depth * rv_scale * depth_t
                a = (u_out - u_in) / 2
                b = max(rho_epi, 0.5 * R0 * rv_scale) * rv_b * width_t
                rv_epi_clear = ~_ellipse(u, v, 0, 0, rho_epi + 1.5, (rho_epi + 1.5) * asp)
                rv = _ellipse(u, v, (u_in + u_out) / 2, 0, a, b) & rv_epi_clear if rv_scale > 0 else np.zeros_like(endo)
                rv_outer = _ellipse(u, v, (u_in + u_out) / 2, 0, a + rv_wall, b + rv_wall) if rv_scale > 0 else np.zeros_like(endo)
                rv_free_wall = rv_outer & ~rv & ~epi
                paps = np.zeros_like(endo)
                if 0.25 * L_t < zeta < 0.7 * L_t:
                    for ang, pr in pap:
                        pc = 0.72 * rho_endo * np.array([np.cos(ang), np.sin(ang)])
                        paps |= _ellipse(u, v, pc[0], pc[1], pr, pr)
                    paps &= endo
                # atria above the base: bright, unlabelled blood pools
                atria = np.zeros_like(endo)
                if zeta < 0:
                    la = _ellipse(u, v, -0.2 * R0, 0, 0.9 * r0, 0.8 * r0)
                    ra = _ellipse(u, v, 0.9 * R0, 0.3 * R0, 0.7 * r0, 0.9 * r0)
                    atria = la | ra
                    atria_wall = _ellipse(u, v, -0.2 * R0, 0, 0.9 * r0 + 2, 0.8 * r0 + 2) & ~atria
                # surroundings
                bu, bv = Y - body_c[0], X - body_c[1]
                body = (bu / body_r[0]) ** 2 + (bv / body_r[1]) ** 2 < 1
                fat_ring = body & ((bu / (body_r[0] - 12)) ** 2 + (bv / (body_r[1] - 12)) ** 2 >= 1)
                chest_muscle = body & ~fat_ring & ((bu / (body_r[0] - 22)) ** 2 + (bv / (body_r[1] - 22)) ** 2 >= 1)
                lungs = (_ellipse(Y, X, body_c[0] - 0.1 * body_r[0], body_c[1] - 0.5 * body_r[1], 0.65 * body_r[0], 0.4 * body_r[1])
                         | _ellipse(Y, X, body_c[0] - 0.1 * body_r[0], body_c[1] + 0.5 * body_r[1], 0.65 * body_r[0], 0.4 * body_r[1]))
                liver = np.zeros_like(endo)
                if zeta > 0.55 * L:
                    lc = centre + liver_side * (R0 + 40)
                    liver = _ellipse(Y, X, lc[0], lc[1], 70, 90) & body & ~chest_muscle & ~fat_ring
                aorta = _ellipse(Y, X, aorta_c[0] + tilt[0] * zeta, aorta_c[1] + tilt[1] * zeta, 11, 11)

                img = np.where(body, c["soft"], c["air"])
                img = np.where(lungs & body & ~chest_muscle & ~fat_ring, c["lung"], img)
                img = np.where(liver, c["liver"], img)
                img = np.where(chest_muscle, c["muscle"], img)
                img = np.where(fat_ring, c["fat"], img)
                img = np.where(aorta & body, c["blood"] * 0.95, img)
                if zeta < 0:
                    img = np.where(atria_wall, c["myo"], img)
                    img = np.where(atria, c["blood"], img)
                img = np.where(rv_free_wall, c["myo"], img)
                img = np.where(rv, c["blood"], img)
                # a rim of epicardial fat where the LV meets the lungs
                epi_fat = _ellipse(u, v, 0, 0, rho_epi + 2.5, (rho_epi + 2.5) * asp) & ~epi & ~rv & ~rv_free_wall
                img = np.where(epi_fat, c["fat"] * 0.8, img)
                img = np.where(myo, c["myo"], img)
                img = np.where(endo, c["blood"], img)
                img = np.where(paps, c["myo"] * 1.1, img)
                acc += img
                if j == 1:   # labels at the slice centre
                    lab = np.zeros((ny, nx), np.uint8)
                    lab[rv] = 3
                    lab[myo] = 2
                    lab[endo] = 1
                    labels[t, k] = lab
            image[t, k] = acc / len(sub_offsets)

    # --- acquisition -----------------------------------------------------------------------
    image = ndi.gaussian_filter(image, sigma=(0, 0, 0.6, 0.6))   # in-plane point spread
    image *= _bias_field(rng, (n_slices, ny, nx), u_(0.1, 0.3))[None].astype(np.float32)
    n1 = rng.normal(0, sigma * c["blood"], size=image.shape)
    n2 = rng.normal(0, sigma * c["blood"], size=image.shape)
    image = np.sqrt((image + n1) ** 2 + n2 ** 2) * scale
    rr = u_(800, 1100)
    params = {
        "seed": int(seed), "target_LVEF_pct": 100 * ef, "target_RVEF_pct": 100 * rv_ef,
        "lv_length_mm": L, "lv_radius_mm": r0, "wall_mm": wall, "theta_rad": theta,
        "es_phase": es_phase, "noise": sigma, "slices_above_base": above_base,
    }
    return CardiacPhantom(image.astype(np.float32), labels, (dz, dxy, dxy), rr / T, params)
