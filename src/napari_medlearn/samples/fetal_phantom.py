"""A fetal ultrasound phantom: freehand 2D sweeps and 3D volumes with true standard planes.

The sample data for SonoNet standard-plane detection (Baumgartner et al., "SonoNet: real-time
detection and localisation of fetal standard scan planes in freehand ultrasound", IEEE TMI 2017).
A second-trimester fetus (about 20 weeks, the anomaly scan) is an analytic scene of ellipsoids,
capsules and periodic bone chains in a fetal frame (``s`` cranial, ``l`` fetal left, ``a``
anterior, mm): head with skull, falx, cavum septi pellucidi, thalami, lateral ventricles with
choroid plexus, cerebellum with vermis and cisterna magna; thorax with ribs, lungs, a
four-chamber heart and the descending aorta; abdomen with liver, stomach bubble, umbilical vein,
kidneys, bladder and spine; hips and flexed legs with femur, tibia and fibula. Around it lie
amniotic fluid, the uterine wall, a placenta and the maternal abdominal wall.

Frames are rendered the way a curvilinear scanner forms them rather than drawn as pictures. The
tissue map is evaluated analytically on each plane's beam grid (depth x beam angle), never
voxelised. Along each beam: diffuse backscatter of random complex scatterers convolved with an
anisotropic point-spread function (fully developed, Rayleigh-distributed speckle; the beam
width is fixed in angle, so grains widen with depth), specular echoes where the acoustic
impedance changes along the beam, cumulative attenuation (bone casts acoustic shadows, fluid
gives posterior enhancement), time-gain compensation with a focal zone, an electronic noise
floor, log compression, then scan conversion into the sector (fan).

A freehand sweep moves and tilts the probe through the fetus, dwelling near standard planes with
hand tremor and wandering between them. Each frame is labelled with a standard plane only when
its pose is within a tolerance of that plane's true pose (``PLANE_TOLERANCE``); every other
frame is "Background". Everything random (fetal size and lie, organ positions, gain, dynamic
range, speckle size, probe path, image mirroring) derives from the seed.

Poses. A plane is a centre and two in-plane unit axes: the row axis (image down = beam depth
direction at the image centre) and the column axis (image right). Sweep poses are in world mm
(``z`` up, towards the probe). Volume poses are in voxel indices ``(z, y, x)`` of the volume
array, whose axis 0 points down (depth).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation, Slerp

#: SonoNet's 14 classes in the published order (the index of a class is its output channel)
SONONET_CLASSES = ("3VV", "4CH", "Abdominal", "Background", "Brain (Cb.)", "Brain (Tv.)", "Femur",
                   "Kidneys", "Lips", "LVOT", "Profile", "RVOT", "Spine (cor.)", "Spine (sag.)")
BACKGROUND = SONONET_CLASSES.index("Background")
#: the standard planes the phantom contains (the others never occur, as in a partial scan)
PHANTOM_PLANES = ("Brain (Tv.)", "Brain (Cb.)", "4CH", "Abdominal", "Kidneys", "Femur", "Spine (sag.)")
#: a frame shows a standard plane when its plane is within these of the true one: angle between
#: the normals (deg), distance of the true centre from the frame's plane (mm), and distance of
#: the true centre from the image centre within the plane (mm)
PLANE_TOLERANCE = {"angle_deg": 10.0, "distance_mm": 3.5, "in_plane_mm": 25.0}

# ----- tissues: diffuse backscatter (intensity), two-way attenuation (dB/mm), impedance ---------
_TISSUES = {
    "maternal": (0.30, 0.12, 1.040), "fat": (0.06, 0.10, 0.985), "muscle": (0.32, 0.13, 1.045),
    "skin": (0.60, 0.12, 1.060), "fluid": (0.0004, 0.004, 1.000), "blood": (0.0010, 0.006, 1.008),
    "myometrium": (0.28, 0.12, 1.040), "placenta": (0.45, 0.11, 1.035), "soft": (0.26, 0.11, 1.040),
    "brain": (0.045, 0.07, 1.020), "thalamus": (0.025, 0.07, 1.018), "choroid": (0.90, 0.10, 1.060),
    "falx": (1.40, 0.10, 1.080), "cerebellum": (0.10, 0.08, 1.030), "vermis": (0.70, 0.09, 1.050),
    "lung": (0.60, 0.10, 1.030), "myocardium": (0.20, 0.11, 1.050), "liver": (0.22, 0.11, 1.040),
    "bowel": (0.55, 0.12, 1.045), "kidney": (0.05, 0.10, 1.030), "bone": (20.0, 3.2, 1.600),
    "skull": (12.0, 1.0, 1.300),
}
_NAMES = tuple(_TISSUES)
T = {name: i for i, name in enumerate(_NAMES)}
_ECHO = np.array([v[0] for v in _TISSUES.values()], np.float32)
_ATTEN = np.array([v[1] for v in _TISSUES.values()], np.float32)
_IMPED = np.array([v[2] for v in _TISSUES.values()], np.float32)


# ===== geometry helpers =========================================================================
def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _rot(axis: str, deg: float) -> np.ndarray:
    return Rotation.from_euler(axis, deg, degrees=True).as_matrix()


@dataclass(frozen=True)
class PlanePose:
    """A plane: ``centre`` (3,), ``axes`` (2, 3) = (row axis, column axis), unit and orthogonal.

    In a sweep the units are world mm; in a :class:`FetalVolume` voxel indices ``(z, y, x)``.
    """

    centre: np.ndarray
    axes: np.ndarray

    @property
    def normal(self) -> np.ndarray:
        """Unit normal, ``row x column``."""
        return np.cross(self.axes[0], self.axes[1])

    def as_array(self) -> np.ndarray:
        """``(3, 3)``: centre, row axis, column axis."""
        return np.stack([np.asarray(self.centre, float), *np.asarray(self.axes, float)])


class _Grids:
    """``n`` planar sample grids in the fetal frame: ``o[i] + a U[i] + b V[i]`` for the 2D grid
    coordinates ``(a, b)`` shared by all planes.

    Every shape is a Boolean combination of quadratic and linear forms of the position, and a
    quadratic form restricted to a plane is a quadratic in ``(a, b)``: six coefficients per plane
    times six basis images, one matrix product for all planes at once. :meth:`view` restricts
    that to the planes and the block of the grid a shape can reach.
    """

    def __init__(self, o, U, V, a, b) -> None:
        self.o, self.U, self.V = (np.asarray(x, float) for x in (o, U, V))
        self.a, self.b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        self.gshape = self.a.shape
        self.basis = np.stack([self.a * self.a, self.a * self.b, self.b * self.b, self.a, self.b,
                               np.ones_like(self.a)])
        self.normal = _unit(np.cross(self.U, self.V))
        self.n = len(self.o)

    def locate(self, p0, p1, radius):
        """Planes that can meet the capsule ``p0``-``p1`` of ``radius``, and the grid block
        ``(slice, slice)`` holding every such meeting."""
        d0 = np.einsum("ni,ni->n", p0 - self.o, self.normal)
        d1 = np.einsum("ni,ni->n", p1 - self.o, self.normal)
        idx = np.flatnonzero((d0 * d1 <= 0) | (np.minimum(np.abs(d0), np.abs(d1)) < radius))
        if idx.size == 0:
            return idx, None
        ends = np.stack([p0 - self.o[idx], p1 - self.o[idx]])          # (2, k, 3)
        pa = np.einsum("eki,ki->ek", ends, self.U[idx])
        pb = np.einsum("eki,ki->ek", ends, self.V[idx])
        lo_a, hi_a = pa.min() - radius, pa.max() + radius
        lo_b, hi_b = pb.min() - radius, pb.max() + radius
        inbox = (self.a >= lo_a) & (self.a <= hi_a) & (self.b >= lo_b) & (self.b <= hi_b)
        rows, cols = np.flatnonzero(inbox.any(axis=1)), np.flatnonzero(inbox.any(axis=0))
        if rows.size == 0 or cols.size == 0:
            return idx[:0], None
        return idx, (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))

    def view(self, idx, block) -> "_GridView":
        return _GridView(self.o[idx], self.U[idx], self.V[idx],
                         np.ascontiguousarray(self.basis[(slice(None),) + block]).reshape(6, -1))


class _GridView:
    """Some planes of a :class:`_Grids` on one block of its grid: forms -> ``(k, m)`` float32."""

    def __init__(self, o, U, V, basis) -> None:
        self.o, self.U, self.V, self.basis = o, U, V, basis

    def quad(self, A, bvec=None, c=0.0) -> np.ndarray:
        """``F.A.F + bvec.F + c`` at every sample."""
        o, U, V = self.o, self.U, self.V
        bvec = np.zeros(3) if bvec is None else np.asarray(bvec, float)
        Ao = o @ A
        coef = np.stack([np.einsum("ni,ij,nj->n", U, A, U), 2 * np.einsum("ni,ij,nj->n", U, A, V),
                         np.einsum("ni,ij,nj->n", V, A, V), 2 * np.einsum("ni,ni->n", U, Ao) + U @ bvec,
                         2 * np.einsum("ni,ni->n", V, Ao) + V @ bvec,
                         np.einsum("ni,ni->n", o, Ao) + o @ bvec + c], 1)
        return coef.astype(np.float32) @ self.basis

    def lin(self, bvec, c=0.0) -> np.ndarray:
        """``bvec.F + c`` at every sample."""
        bvec = np.asarray(bvec, float)
        coef = np.stack([self.U @ bvec, self.V @ bvec, self.o @ bvec + c], 1)
        return coef.astype(np.float32) @ self.basis[3:]


@dataclass(frozen=True)
class _Shape:
    """One painted primitive: ``mask(grids, idx) -> bool (len(idx), N)``, and a bounding capsule."""

    tissue: int
    p0: np.ndarray
    p1: np.ndarray
    radius: float
    mask: Callable


def _ellipsoid_form(centre, semi, rot=None):
    """(A, b, c) with ``F.A.F + b.F + c = |((F - centre) @ rot) / semi|^2``."""
    c = np.asarray(centre, float)
    q = np.eye(3) if rot is None else np.asarray(rot, float)
    M = q @ np.diag(1.0 / np.asarray(semi, float) ** 2) @ q.T
    return M, -2 * M @ c, float(c @ M @ c)


def _ellipsoid(tissue, centre, semi, rot=None) -> _Shape:
    form = _ellipsoid_form(centre, semi, rot)
    c = np.asarray(centre, float)
    return _Shape(T[tissue], c, c, float(max(semi)), lambda g: g.quad(*form) < 1.0)


def _capsule(tissue, p0, p1, radius) -> _Shape:
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    L2 = float(d @ d)
    A = np.eye(3) - np.outer(d, d) / L2            # squared distance from the axis line
    cyl = (A, -2 * A @ p0, float(p0 @ A @ p0) - radius ** 2)
    along = (d / L2, -float(p0 @ d) / L2)
    ends = [(np.eye(3), -2 * p, float(p @ p) - radius ** 2) for p in (p0, p1)]

    def mask(g):
        t = g.lin(*along)
        m = (g.quad(*cyl) < 0) & (t >= 0) & (t <= 1)
        for form in ends:
            m |= g.quad(*form) < 0
        return m

    return _Shape(T[tissue], p0, p1, float(radius), mask)


def _shell(tissue, centre, semi, inner_frac, extra: Callable | None = None, rot=None) -> _Shape:
    """Between the ellipsoid scaled by ``inner_frac`` and itself (and where ``extra`` holds)."""
    form = _ellipsoid_form(centre, semi, rot)
    lo = inner_frac * inner_frac
    c = np.asarray(centre, float)

    def mask(g):
        rho2 = g.quad(*form)
        m = (rho2 < 1.0) & (rho2 >= lo)
        if extra is not None:
            m &= extra(g)
        return m

    return _Shape(T[tissue], c, c, float(max(semi)), mask)


# ===== the fetus ===============================================================================
@dataclass(frozen=True, eq=False)
class _Fetus:
    """The random anatomy of one seed, in the fetal frame, and its lie in the world."""

    shapes: tuple
    rotation: np.ndarray          # world <- fetal (columns: s, l, a in world)
    origin: np.ndarray            # world position of the fetal origin (mm)
    standard: dict                # class -> list of (centre, normal, in-plane "along" axis or None)
    params: dict = field(default_factory=dict)

    def to_fetal(self, points_world: np.ndarray) -> np.ndarray:
        return (points_world - self.origin) @ self.rotation

    def tissue(self, grids: _Grids) -> np.ndarray:
        """Tissue index on every grid ``(n, *grid shape)`` uint8 (painter's order: last wins).

        Shapes whose bounding capsule misses a plane are not evaluated on it.
        """
        out = np.full((grids.n,) + grids.gshape, T["maternal"], np.uint8)
        for shape in self.shapes:
            idx, block = grids.locate(shape.p0, shape.p1, shape.radius)
            if idx.size == 0:
                continue
            m = shape.mask(grids.view(idx, block))
            sub = out[(idx,) + block]
            if shape.tissue < 0:  # the shape paints several tissues; 255 leaves a sample alone
                m = m.reshape(sub.shape)
                sub = np.where(m == 255, sub, m)
            else:
                sub[m.reshape(sub.shape)] = shape.tissue
            out[(idx,) + block] = sub
        return out


def _draw_fetus(rng: np.random.Generator) -> _Fetus:
    u = rng.uniform
    k = u(0.88, 1.12)                       # size (gestational age around 20 weeks)
    S: list[_Shape] = []
    e, cap = _ellipsoid, _capsule

    # --- uterus, fluid, placenta (fetal frame: the fetus floats, the sac comes with it) -------
    ut_c = np.array([u(5, 20), u(-8, 8), u(-8, 8)])
    ut_semi = np.array([u(100, 115), u(52, 64), u(50, 60)])
    pl_dir = _unit(rng.normal(size=3) * [0.4, 1, 1])
    pl_cos = np.cos(np.radians(u(45, 60)))
    pl_lin = (pl_dir / ut_semi, -float((ut_c / ut_semi) @ pl_dir))
    sac_form = _ellipsoid_form(ut_c, ut_semi)
    wall = (1 + 9 / ut_semi.mean()) ** 2
    pl_inner = (1 - u(24, 32) / ut_semi.mean()) ** 2

    def sac(g):  # uterine wall, amniotic fluid, and the placenta on one side of the wall
        rho2 = g.quad(*sac_form)
        dot = g.lin(*pl_lin)
        out = np.full(rho2.shape, 255, np.uint8)
        out[rho2 < wall] = T["myometrium"]
        out[rho2 < 1] = T["fluid"]
        out[(rho2 < 1) & (rho2 >= pl_inner) & (dot > 0) & (dot * dot > pl_cos ** 2 * rho2)] = T["placenta"]
        return out

    S.append(_Shape(-1, ut_c, ut_c, float(ut_semi.max() + 10), sac))

    # --- body: head, neck, thorax, abdomen, pelvis --------------------------------------------
    head_c = np.array([68, 0, 3]) * k
    flex = u(-8, 18)                           # head flexion about the l axis
    Rh = _rot("y", -flex)                      # head frame -> fetal frame (s, l, a)
    hsemi = np.array([27, 24, 31]) * k * np.array([u(0.95, 1.05), u(0.94, 1.04), u(0.96, 1.05)])

    def H(p):                                   # head-frame point -> fetal frame
        return head_c + Rh @ (np.asarray(p, float) * k)

    def HR(extra=None):                         # a head-frame shape's axes in the fetal frame
        return Rh if extra is None else Rh @ extra

    thor_c, thor_semi = np.array([20, 0, 0]) * k, np.array([23, 21, 19]) * k
    abd_c, abd_semi = np.array([-15, 0, 0]) * k, np.array([25, 20, 19]) * k * u(0.95, 1.08)
    S.append(e("skin", [42 * k, 0, -1 * k], np.array([13, 14, 14]) * k))                # neck
    S.append(e("skin", thor_c, thor_semi))
    S.append(e("skin", abd_c, abd_semi))
    S.append(e("skin", [-40 * k, 0, -2 * k], np.array([14, 19, 15]) * k))               # pelvis
    S.append(e("soft", [42 * k, 0, -1 * k], np.array([11, 12, 12]) * k))
    S.append(e("lung", thor_c, thor_semi - 2.2))
    S.append(e("bowel", abd_c, abd_semi - 2.2))
    S.append(e("soft", [-40 * k, 0, -2 * k], np.array([12, 17, 13]) * k))

    # --- legs (flexed at hip and knee) ---------------------------------------------------------
    femur_len = u(31, 36) * k
    hip_flex = np.radians(u(65, 100))
    femurs = []
    for side in (-1, 1):
        hip = np.array([-44, side * 12, -1]) * k
        splay = np.radians(u(5, 25))
        d = _unit([-np.cos(hip_flex), side * np.sin(splay), np.sin(hip_flex)])
        knee = hip + (femur_len + 4 * k) * d
        shin = _unit([-1.0, side * u(0.0, 0.2), -u(0.1, 0.5)])
        ankle = knee + 30 * k * shin
        S.append(cap("skin", hip, knee, 8.5 * k))
        S.append(cap("skin", knee, ankle, 6.0 * k))
        S.append(cap("soft", hip, knee, 6.8 * k))
        S.append(cap("soft", knee, ankle, 4.6 * k))
        f0, f1 = hip + 2.5 * k * d, hip + (2.5 * k + femur_len) * d
        S.append(cap("bone", f0, f1, 1.7 * k))
        perp = _unit(np.cross(shin, [0, 0, 1.0]))
        S.append(cap("bone", knee + 3 * k * shin + 1.6 * k * perp, knee + 27 * k * shin + 1.6 * k * perp, 1.2 * k))
        S.append(cap("bone", knee + 3 * k * shin - 1.8 * k * perp, knee + 26 * k * shin - 1.8 * k * perp, 0.8 * k))
        femurs.append((f0, f1))
    # arms folded over the chest: humerus and forearm
    for side in (-1, 1):
        shoulder = np.array([33, side * 18, -1]) * k
        d = _unit([-u(0.4, 0.9), side * u(0.1, 0.3), u(0.4, 0.9)])
        elbow = shoulder + 28 * k * d
        fore = _unit([u(0.2, 0.8), -side * u(0.2, 0.6), u(0.4, 0.8)])
        hand = elbow + 24 * k * fore
        S.append(cap("skin", shoulder, elbow, 5.2 * k))
        S.append(cap("skin", elbow, hand, 4.2 * k))
        S.append(cap("bone", shoulder + 2 * k * d, elbow - 1.5 * k * d, 1.2 * k))
        S.append(cap("bone", elbow + 2 * k * fore, hand - 3 * k * fore, 0.8 * k))

    # --- head ----------------------------------------------------------------------------------
    S.append(e("skin", head_c, hsemi + 3 * k, HR()))
    S.append(e("skull", head_c, hsemi, HR()))
    inner = hsemi - 2.4 * k
    S.append(e("brain", head_c, inner, HR()))
    # orbits and face in front, low
    for side in (-1, 1):
        S.append(e("fluid", H([-8, side * 11, 26]), np.array([5, 4.5, 4.5]) * k, HR()))
    S.append(e("thalamus", H([-9, 0, -3]), np.array([8, 6, 6]) * k, HR()))                # brainstem
    for side in (-1, 1):
        S.append(e("thalamus", H([-3, side * 6, 0]), np.array([6, 5.5, 8]) * k, HR()))
        yaw = _rot("x", side * 22)            # the atria diverge posteriorly
        S.append(e("fluid", H([3, side * 9.5, -12]), np.array([5, 3.6, 9.5]) * k, HR(yaw)))
        S.append(e("choroid", H([3, side * 9.7, -13]), np.array([4, 2.6, 6.2]) * k, HR(yaw)))
        S.append(e("fluid", H([6, side * 5.5, 14]), np.array([4, 2.0, 6]) * k, HR()))    # frontal horns
        S.append(e("cerebellum", H([-12, side * 6.2, -15]), np.array([6.5, 6.0, 5.8]) * k, HR()))

    def midline(g):  # a thin sheet between the hemispheres, above the posterior fossa
        lat = g.lin(Rh[:, 1], -float(head_c @ Rh[:, 1]))
        up = g.lin(Rh[:, 0], -float(head_c @ Rh[:, 0]))
        return (np.abs(lat) < 0.75 * k) & (up > -7 * k)

    S.append(_shell("falx", head_c, inner, 0.0, midline, HR()))
    S.append(e("fluid", H([3, 0, 12]), np.array([5, 2.6, 4.5]) * k, HR()))                # CSP
    S.append(e("fluid", H([-4, 0, 0]), np.array([5, 1.0, 6]) * k, HR()))                 # 3rd ventricle
    S.append(e("vermis", H([-12, 0, -16]), np.array([5.5, 2.6, 5.2]) * k, HR()))
    S.append(e("fluid", H([-13, 0, -23.5]), np.array([4.5, 7.0, 3.2]) * k, HR()))        # cisterna magna

    # --- thorax: heart, aorta ------------------------------------------------------------------
    heart_c = np.array([18, 3, 4]) * k + u(-1.5, 1.5, 3)
    turn = u(35, 50)                            # apex towards left-anterior
    Rc = _rot("x", turn)                        # heart frame (s, hx apex-wards, hy) -> fetal
    S.append(e("myocardium", heart_c + Rc @ (np.array([0, 1, 0]) * k), np.array([10, 13, 10.5]) * k, Rc))
    # chambers: ventricles towards the apex, atria behind the AV valves; LV/LA left-posterior
    for hx, hy, semi in ((4.5, -4.6, (7, 7, 3.8)), (4.0, 4.6, (7, 6.6, 3.8)),      # LV, RV
                         (-5.6, -4.6, (6, 3.9, 3.8)), (-5.6, 4.6, (6, 4.1, 3.8))):  # LA, RA
        S.append(e("blood", heart_c + Rc @ (np.array([0, hx, hy]) * k), np.array(semi) * k, Rc))
    S.append(cap("blood", np.array([32, 3, -11]) * k, np.array([-30, 2, -10]) * k, 2.4 * k))  # aorta

    # --- abdomen: liver, stomach, umbilical vein, kidneys, bladder ------------------------------
    S.append(e("liver", np.array([-6, -2, 2]) * k, np.array([11, 17, 15]) * k))
    stomach_c = np.array([-8, 8.5, 2]) * k + u(-1, 1, 3)
    S.append(e("fluid", stomach_c, np.array([5.5, 5, 8]) * k * u(0.8, 1.15), _rot("x", -25)))
    S.append(cap("blood", np.array([-9, 0, 17]) * k, np.array([-8.5, -3.5, 3]) * k, 1.6 * k))
    S.append(cap("blood", np.array([-8.5, -3.5, 3]) * k, np.array([-8, -8, -3]) * k, 1.5 * k))
    for side in (-1, 1):
        S.append(e("kidney", np.array([-19, side * 8, -10]) * k, np.array([7.5, 4, 5]) * k))
        S.append(e("fluid", np.array([-19, side * 6.5, -9.5]) * k, np.array([3, 1.0, 1.4]) * k))
    S.append(e("fluid", np.array([-36, 0, 5]) * k, np.array([5, 5, 5]) * k * u(0.7, 1.2)))  # bladder
    for side in (-1, 1):                                                           # iliac wings
        S.append(e("bone", np.array([-36, side * 11, -8]) * k, np.array([6, 1.3, 6.5]) * k, _rot("x", side * 35)))

    # --- ribs and spine: periodic bone chains -------------------------------------------------
    rib_s0, rib_pitch, n_ribs = 4 * k, 4.6 * k, 8
    thor_form = _ellipsoid_form(thor_c, thor_semi)

    def ribs(g):  # arcs of the thoracic shell at regular levels, open in front
        s = g.lin([1.0, 0, 0])
        j = np.clip(np.round((s - rib_s0) / rib_pitch), 0, n_ribs - 1)
        m = np.abs(s - (rib_s0 + j * rib_pitch)) < 1.0 * k
        m &= g.lin([0, 0, 1.0 / thor_semi[2]], -thor_c[2] / thor_semi[2]) < 0.45
        rho2 = g.quad(*thor_form)
        return m & (rho2 > 0.80) & (rho2 < 0.92)

    S.append(_Shape(T["bone"], np.array([rib_s0, 0, 0]), np.array([rib_s0 + (n_ribs - 1) * rib_pitch, 0, 0]),
                    float(max(thor_semi[1:])), ribs))

    sp_top, sp_bot, pitch = 50 * k, -48 * k, 3.7 * k

    def spine_a(s):
        return (-11.0 - 1.5 * np.cos(np.pi * s / (100 * k))) * k

    def spine(g):
        s, l, a = (g.lin(e) for e in np.eye(3))
        j = np.round((s - sp_bot) / pitch)
        sc = sp_bot + j * pitch
        ds = s - sc
        taper = np.clip(0.55 + 0.45 * (sc - sp_bot) / (30 * k), 0.55, 1.0)
        ac = spine_a(sc)
        body = (ds / (1.05 * k * taper)) ** 2 + (l / (2.9 * k * taper)) ** 2 + ((a - ac) / (2.3 * k * taper)) ** 2 < 1
        arch = ((ds / (1.0 * k * taper)) ** 2 + ((np.abs(l) - 3.6 * k * taper) / (1.25 * k * taper)) ** 2
                + ((a - ac + 3.6 * k * taper) / (1.4 * k * taper)) ** 2 < 1)
        spinous = (ds / (1.0 * k)) ** 2 + (l / (1.0 * k)) ** 2 + ((a - ac + 5.4 * k * taper) / (1.0 * k)) ** 2 < 1
        return (body | arch | spinous) & (s > sp_bot - 2) & (s < sp_top)

    S.append(_Shape(T["bone"], np.array([sp_bot, 0, spine_a(sp_bot)]), np.array([sp_top, 0, spine_a(sp_top)]),
                    9.0 * k, spine))

    # --- the standard planes: (centre, normal, axis that must lie in the plane or None) ------
    s_ax, l_ax, a_ax = np.eye(3)
    sag_c = np.array([-12 * k, 0, spine_a(-12 * k) - 1.5 * k])
    standard = {
        "Brain (Tv.)": [(H([3, 0, 0]), Rh @ s_ax, None)],
        "Brain (Cb.)": [(H([-4.5, 0, -2]), Rh @ _rot("y", 30) @ s_ax, None)],
        "4CH": [(np.array([heart_c[0], 0, 0]), s_ax, None)],
        "Abdominal": [(np.array([stomach_c[0], 0, 0]), s_ax, None)],
        "Kidneys": [(np.array([-19 * k, 0, -4 * k]), s_ax, None)],
        "Femur": [((f0 + f1) / 2, None, _unit(f1 - f0)) for f0, f1 in femurs],
        "Spine (sag.)": [(sag_c, l_ax, None)],
    }
    # the fetal lie: long axis roughly horizontal, anterior towards the probe +- roll, any azimuth
    roll, pitch_, yaw = u(-45, 45), u(-15, 15), u(0, 360)
    rotation = _rot("z", yaw) @ _rot("y", pitch_) @ _rot("x", roll)
    params = dict(size=k, head_flexion_deg=flex, roll_deg=roll, pitch_deg=pitch_, yaw_deg=yaw,
                  femur_length_mm=femur_len)
    return _Fetus(tuple(S), rotation, np.zeros(3), standard, params)


# ===== poses of the standard planes ==============================================================
DOWN = np.array([0.0, 0.0, -1.0])


def _frame_from_normal(n_world: np.ndarray, mirror: bool) -> np.ndarray:
    """World rotation (columns: column axis u, row axis v, normal) for a plane of normal n, the
    image's depth direction as close to straight down as the plane allows (the probe on top)."""
    n = _unit(n_world)
    v = DOWN - (DOWN @ n) * n
    if np.linalg.norm(v) < 0.3:  # plane nearly horizontal: tilt the probe as far as a hand can
        v = _unit(v + 0.3 * _unit(np.cross(n, [1.0, 0.3, 0.0])))
    v = _unit(v)
    u = np.cross(v, n)
    if mirror:
        u, n = -u, -n
    return np.stack([u, v, n], axis=1)


def _standard_world_poses(fetus: _Fetus, mirror: bool) -> dict[str, list[np.ndarray]]:
    """class -> list of world rotations + centres, as (4, 3): centre, u, v, n."""
    R, o = fetus.rotation, fetus.origin
    out = {}
    for name, entries in fetus.standard.items():
        poses = []
        for centre, normal, along in entries:
            if normal is None:  # a long bone: across the image, the beams perpendicular to it
                a = R @ along
                v = DOWN - (DOWN @ a) * a
                v = _unit(v if np.linalg.norm(v) > 1e-3 else np.cross(a, [1.0, 0, 0]))
                uu = -a if mirror else a
                frame = np.stack([uu, v, np.cross(uu, v)], axis=1)
            else:
                frame = _frame_from_normal(R @ normal, mirror)
            poses.append(np.vstack([R @ centre + o, frame.T]))
        out[name] = poses
    return out


def _plane_label(pose: np.ndarray, standard: dict[str, list[np.ndarray]], along: dict[str, list]) -> tuple[int, float]:
    """Class index of a frame pose ``(4, 3)`` (centre, u, v, n) and its distance score."""
    tol = PLANE_TOLERANCE
    c, n = pose[0], pose[3]
    best, best_score = BACKGROUND, np.inf
    cos_tol = np.cos(np.radians(tol["angle_deg"]))
    for name, poses in standard.items():
        for i, sp in enumerate(poses):
            axis = along[name][i]
            if axis is None:
                cosang = abs(float(n @ sp[3]))
                if cosang < cos_tol:
                    continue
                ang = np.degrees(np.arccos(min(cosang, 1.0)))
            else:  # the long axis in the plane (any rotation about it within 30 deg)
                sin_out = abs(float(n @ axis))
                if sin_out > np.sin(np.radians(tol["angle_deg"])) or abs(float(n @ sp[3])) < np.cos(np.radians(30)):
                    continue
                ang = np.degrees(np.arcsin(sin_out))
            off = sp[0] - c
            dist = abs(float(off @ n))
            if dist > tol["distance_mm"]:
                continue
            in_plane = float(np.linalg.norm(off - (off @ n) * n))
            if in_plane > tol["in_plane_mm"]:
                continue
            score = ang / tol["angle_deg"] + dist / tol["distance_mm"]
            if score < best_score:
                best, best_score = SONONET_CLASSES.index(name), score
    return best, best_score


# ===== the scanner =============================================================================
@dataclass(frozen=True)
class _Scanner:
    """A curvilinear probe and its processing chain (random per seed)."""

    spacing: float                 # output pixel size (mm)
    apex_radius: float             # probe face radius (mm): the fan's virtual apex lies behind it
    half_angle: float              # fan half-angle (rad)
    depth: float                   # imaging depth below the face (mm)
    top: float                     # distance apex -> image row 0 (mm)
    n_r: int
    n_beams: int
    psf_axial: float               # speckle PSF sigma (samples)
    psf_lateral: float             # (beams)
    gain_db: float
    dynamic_range_db: float
    tgc_db_per_mm: float
    tgc_knots: np.ndarray          # extra TGC (dB) at evenly spaced depths
    focus_mm: float
    wall_mm: tuple                 # maternal wall: skin, fat, muscle thickness
    noise_db: float
    frame_correlation: float

    def beam_grid(self) -> tuple[np.ndarray, np.ndarray]:
        r = self.apex_radius + (np.arange(self.n_r) + 0.5) * self.depth / self.n_r
        th = np.linspace(-self.half_angle, self.half_angle, self.n_beams)
        return r, th


def _draw_scanner(rng, shape) -> _Scanner:
    u = rng.uniform
    H, W = shape
    fov = u(75, 100)
    spacing = fov / H
    apex = u(40, 55)
    half = np.radians(u(29, 36))
    top = apex * np.cos(half) - 1.0
    depth = top + (H - 1) * spacing - apex - 1.0
    n_r = int(np.ceil(depth / (0.85 * spacing)))
    arc = (apex + depth) * 2 * half
    n_beams = int(np.clip(arc / (2.2 * spacing), 64, 4 * W))
    wall = (u(1.0, 2.0), u(3, 12), u(5, 12))
    return _Scanner(spacing, apex, half, depth, top, n_r, n_beams, u(1.0, 1.4), u(1.3, 1.8),
                    u(-1, 5), u(40, 50), u(0.070, 0.095), u(-3, 3, 5), u(50, 80), wall, u(-46, -41),
                    u(0.3, 0.6))


def _scan_conversion(sc: _Scanner, shape):
    """Sparse bilinear map from the beam grid (n_r * n_beams) to the image (H * W), zero
    outside the fan."""
    from scipy import sparse

    H, W = shape
    z = sc.top + np.arange(H) * sc.spacing
    x = (np.arange(W) - (W - 1) / 2) * sc.spacing
    zz, xx = np.meshgrid(z, x, indexing="ij")
    r = np.hypot(xx, zz)
    th = np.arctan2(xx, zz)
    ri = np.clip((r - sc.apex_radius) / sc.depth * sc.n_r - 0.5, 0, sc.n_r - 1.0001)
    ti = np.clip((th + sc.half_angle) / (2 * sc.half_angle) * (sc.n_beams - 1), 0, sc.n_beams - 1.0001)
    inside = ((r >= sc.apex_radius) & (r <= sc.apex_radius + sc.depth) & (np.abs(th) <= sc.half_angle)).ravel()
    r0, t0 = np.floor(ri).astype(int).ravel(), np.floor(ti).astype(int).ravel()
    fr, ft = ri.ravel() - r0, ti.ravel() - t0
    rows, cols, vals = [], [], []
    pix = np.arange(H * W)
    for dr_, wr in ((0, 1 - fr), (1, fr)):
        for dt_, wt in ((0, 1 - ft), (1, ft)):
            rows.append(pix[inside])
            cols.append(((r0 + dr_) * sc.n_beams + t0 + dt_)[inside])
            vals.append((wr * wt)[inside])
    return sparse.csr_matrix((np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(H * W, sc.n_r * sc.n_beams))


def _beamform(tissue: np.ndarray, depth_mm: np.ndarray, step_mm: float, sc: _Scanner, rng,
              psf: tuple[float, ...], beam_axis: int = 1, lateral_db: np.ndarray | float = 0.0,
              frame_axis: bool = True) -> np.ndarray:
    """Echo display values in [0, 1] from a tissue map whose axis ``beam_axis`` runs along the beams.

    ``psf`` is the speckle sigma per axis (samples; 0 on the frame axis); ``depth_mm`` the depth
    of each sample along the beam axis.
    """
    echo, atten, imped = _ECHO[tissue], _ATTEN[tissue], _IMPED[tissue]
    spec = np.zeros_like(echo)
    idx = [slice(None)] * tissue.ndim
    idx[beam_axis] = slice(1, None)
    spec[tuple(idx)] = np.minimum(260.0 * np.diff(imped, axis=beam_axis) ** 2, 6.0)
    # transmission: attenuation, plus the energy reflected back at interfaces (bone surfaces)
    step_loss = atten * np.float32(step_mm) + np.float32(1.5) * np.minimum(spec, np.float32(3.0))
    loss_db = np.cumsum(step_loss, axis=beam_axis, dtype=np.float32) - step_loss
    # speckle: complex scatterers whose amplitude follows the tissue, blurred by the PSF
    shape = tissue.shape
    z = rng.standard_normal(shape + (2,), dtype=np.float32)
    if frame_axis:
        rho = np.float32(sc.frame_correlation)
        for i in range(1, shape[0]):  # neighbouring frames share part of their scatterers
            z[i] = rho * z[i - 1] + np.float32(np.sqrt(1 - rho * rho)) * z[i]
    z *= np.sqrt(echo + spec)[..., None]
    z = ndi.gaussian_filter(z, tuple(psf) + (0,), mode="nearest", truncate=2.5)
    # a normalised Gaussian passes 1 / (2 sqrt(pi) sigma) of white-noise power per axis
    norm = np.prod([2 * np.sqrt(np.pi) * p for p in psf if p > 0]) / 2
    intensity = np.einsum("...i,...i->...", z, z) * np.float32(norm)
    del z
    knots = np.interp(depth_mm, np.linspace(0, depth_mm.max(), len(sc.tgc_knots)), sc.tgc_knots)
    focus = 2.5 * np.exp(-0.5 * ((depth_mm - sc.focus_mm) / 25.0) ** 2)
    gain = (sc.tgc_db_per_mm * depth_mm + knots + focus).astype(np.float32)
    gshape = [1] * tissue.ndim
    gshape[beam_axis] = -1
    total_db = gain.reshape(gshape) + np.float32(lateral_db) - loss_db if np.ndim(lateral_db) == 0 else \
        gain.reshape(gshape) + lateral_db - loss_db
    intensity *= np.power(np.float32(10.0), total_db / np.float32(10.0))
    intensity += np.float32(10 ** (sc.noise_db / 10)) * rng.exponential(size=shape).astype(np.float32)
    db = np.float32(10.0) * np.log10(intensity + np.float32(1e-12))
    lo = 10 * np.log10(_ECHO[T["soft"]]) - sc.gain_db - 0.45 * sc.dynamic_range_db
    return np.clip((db - np.float32(lo)) / np.float32(sc.dynamic_range_db), 0.0, 1.0)


def _render(fetus: _Fetus, sc: _Scanner, poses: np.ndarray, shape, rng) -> np.ndarray:
    """B-mode frames ``(t, H, W)`` in [0, 1] for world poses ``(t, 4, 3)`` (centre, u, v, n)."""
    H, W = shape
    t = len(poses)
    r, th = sc.beam_grid()
    centre_depth = sc.top + (H - 1) / 2 * sc.spacing   # apex -> image centre along v
    R, o = fetus.rotation, fetus.origin
    cen = (poses[:, 0] - o) @ R                          # everything in the fetal frame
    uf, vf = poses[:, 1] @ R, poses[:, 2] @ R
    apex = cen - centre_depth * vf
    rr, tt = np.meshgrid(r, th, indexing="ij")
    grids = _Grids(apex, uf, vf, rr * np.sin(tt), rr * np.cos(tt))
    tissue = fetus.tissue(grids)                          # (t, n_r, n_beams)
    # the maternal abdominal wall lies under the probe face whatever the probe's pose
    depth_mm = r - sc.apex_radius
    skin, fat, muscle = sc.wall_mm
    tissue[:, depth_mm < skin + fat + muscle] = T["muscle"]
    tissue[:, depth_mm < skin + fat] = T["fat"]
    tissue[:, depth_mm < skin] = T["skin"]
    edge_db = (-3.0 * (th / sc.half_angle) ** 4).astype(np.float32)[None, None, :]
    img = _beamform(tissue, depth_mm, sc.depth / sc.n_r, sc, rng, (0, sc.psf_axial, sc.psf_lateral),
                    beam_axis=1, lateral_db=edge_db)
    conv = _scan_conversion(sc, shape)
    return np.ascontiguousarray((conv @ img.reshape(t, -1).T).T.reshape(t, H, W), dtype=np.float32)


# ===== the probe path ============================================================================
def _tremor(rng, n: int, scale: float, dims: int = 3) -> np.ndarray:
    """Smooth hand-tremor offsets (n, dims): a few random low-frequency sinusoids."""
    tt = np.arange(n)[:, None]
    out = np.zeros((n, dims))
    for _ in range(3):
        f = rng.uniform(0.03, 0.18)
        out += np.sin(2 * np.pi * f * tt + rng.uniform(0, 2 * np.pi, dims)) * rng.uniform(0.3, 1.0, dims)
    return out * scale / 2.0


def _random_pose(rng, fetus: _Fetus, mirror: bool) -> np.ndarray:
    """A random look at the fetus or its surroundings (a background view)."""
    R = fetus.rotation
    centre = R @ (np.array([rng.uniform(-60, 90), rng.uniform(-35, 35), rng.uniform(-30, 30)])) + fetus.origin
    n = _unit(np.r_[rng.normal(size=2), rng.uniform(-0.5, 0.5)])
    frame = _frame_from_normal(n, mirror)
    return np.vstack([centre, frame.T])


def _probe_path(rng, n_frames: int, targets: list[np.ndarray], mirror: bool, fetus: _Fetus) -> np.ndarray:
    """World poses ``(n_frames, 4, 3)``: dwell at each target with tremor, wander between them."""
    stops = [_random_pose(rng, fetus, mirror)] + targets + [_random_pose(rng, fetus, mirror)]
    m = len(targets)
    dwell_total = int(round(0.5 * n_frames)) if m else 0
    dwell = np.full(m, dwell_total // max(m, 1))
    dwell[: dwell_total - dwell.sum()] += 1
    legs = len(stops) - 1
    # transition lengths in proportion to how far the probe must move
    cost = np.array([np.linalg.norm(stops[i + 1][0] - stops[i][0]) / 20
                     + np.degrees(np.arccos(np.clip(abs(stops[i + 1][3] @ stops[i][3]), -1, 1))) / 25 + 1
                     for i in range(legs)])
    n_move = n_frames - int(dwell.sum())
    move = np.floor(cost / cost.sum() * n_move).astype(int)
    move[np.argsort(-cost)[: n_move - move.sum()]] += 1
    rots = [Rotation.from_matrix(s[1:].T) for s in stops]
    out = []
    for leg in range(legs):
        a, b = stops[leg], stops[leg + 1]
        n = int(move[leg])
        if n > 0:
            slerp = Slerp([0, 1], Rotation.concatenate([rots[leg], rots[leg + 1]]))
            tau = (np.arange(n) + 1) / (n + 1)
            ease = 0.5 - 0.5 * np.cos(np.pi * tau)
            detour = _unit(rng.normal(size=3)) * rng.uniform(6, 25)
            wobble = _unit(rng.normal(size=3)) * np.radians(rng.uniform(10, 35))
            bump = np.sin(np.pi * ease)[:, None]
            centres = a[0] + ease[:, None] * (b[0] - a[0]) + bump * detour
            rot = slerp(ease) * Rotation.from_rotvec(bump * wobble)
            mats = rot.as_matrix()
            for i in range(n):
                out.append(np.vstack([centres[i], mats[i].T]))
        if leg < m:  # dwell at target leg (stops[leg + 1])
            d = int(dwell[leg])
            if d == 0:
                continue
            tgt = stops[leg + 1]
            nrm, uu, vv = tgt[3], tgt[1], tgt[2]
            shift = _tremor(rng, d, 1.0) @ np.stack([0.9 * nrm, 4.0 * uu, 3.0 * vv])
            shift += rng.uniform(-6, 6) * uu + rng.uniform(-5, 5) * vv
            tilt = _tremor(rng, d, np.radians(4.0))
            base = Rotation.from_matrix(tgt[1:].T)
            for i in range(d):
                rot = Rotation.from_rotvec(tilt[i] * [1, 1, 0.5]) * base
                out.append(np.vstack([tgt[0] + shift[i], rot.as_matrix().T]))
    return np.asarray(out[:n_frames])


# ===== public API ================================================================================
@dataclass(frozen=True, eq=False)
class FetalSweep:
    """A freehand 2D ultrasound video and its truth.

    ``frames`` ``(t, H, W)`` float32 in [0, 1]; ``labels`` ``(t,)`` int64 indices into
    ``class_names`` (== :data:`SONONET_CLASSES`); ``pixel_spacing_mm``; ``poses`` ``(t, 3, 3)``
    world mm: image-centre position, row axis (depth), column axis; ``standard_poses`` the true
    pose of each standard plane the sweep visits (same layout); ``seed``.
    """

    frames: np.ndarray
    labels: np.ndarray
    class_names: tuple
    pixel_spacing_mm: float
    poses: np.ndarray
    standard_poses: dict
    seed: int
    params: dict = field(default_factory=dict)

    def pose(self, i: int) -> PlanePose:
        return PlanePose(self.poses[i, 0], self.poses[i, 1:])

    @property
    def label_names(self) -> list[str]:
        return [self.class_names[i] for i in self.labels]


def _as_public(pose43: np.ndarray) -> np.ndarray:
    """(centre, u, v, n) -> (centre, row axis v, column axis u)."""
    return np.stack([pose43[0], pose43[2], pose43[1]])


def _setup(seed: int, shape):
    rng = np.random.default_rng(seed)
    fetus = _draw_fetus(rng)
    scanner = _draw_scanner(rng, shape)
    mirror = bool(rng.random() < 0.5)
    standard = _standard_world_poses(fetus, mirror)
    along = {name: [None if e[2] is None else fetus.rotation @ e[2] for e in entries]
             for name, entries in fetus.standard.items()}
    return rng, fetus, scanner, mirror, standard, along


def fetal_sweep(seed: int = 0, n_frames: int = 120, shape: tuple[int, int] = (224, 288),
                planes: tuple[str, ...] | None = None) -> FetalSweep:
    """Render one freehand sweep through a random fetal phantom.

    Parameters
    ----------
    seed
        Everything random derives from it: the same seed gives the same sweep.
    n_frames
        Video length. The probe dwells near each visited standard plane for about half the
        frames in total and wanders (Background) between them.
    shape
        ``(H, W)`` of a frame (SonoNet's input is 224 x 288). The field of view (75-100 mm deep)
        does not depend on it; ``pixel_spacing_mm`` does.
    planes
        Standard planes to visit (default: all of :data:`PHANTOM_PLANES`, in the order a
        sonographer meets them going along the body, head first or feet first).

    Returns
    -------
    FetalSweep
    """
    H, W = (int(s) for s in shape)
    if n_frames < 1 or H < 32 or W < 32:
        raise ValueError(f"a sweep needs at least 1 frame of at least 32 x 32 pixels, got {n_frames} x {shape}")
    planes = PHANTOM_PLANES if planes is None else tuple(planes)
    unknown = [p for p in planes if p not in PHANTOM_PLANES]
    if unknown:
        raise ValueError(f"the phantom has no standard plane {unknown}; it has {PHANTOM_PLANES}")
    rng, fetus, scanner, mirror, standard, along = _setup(seed, (H, W))
    # visit order: along the body, with the spine views and a random direction
    key = {p: fetus.standard[p][0][0][0] + rng.normal(0, 8) for p in planes}
    order = sorted(planes, key=key.get, reverse=bool(rng.random() < 0.6))
    n_visit = min(len(order), max(n_frames // 6, 1 if n_frames >= 3 else 0))
    if n_visit < len(order):
        order = [order[i] for i in sorted(rng.choice(len(order), n_visit, replace=False))]
    visited = {p: standard[p][int(rng.integers(len(standard[p])))] for p in order}
    poses = _probe_path(rng, n_frames, [visited[p] for p in order], mirror, fetus)
    labels = np.array([_plane_label(p, standard, along)[0] for p in poses], np.int64)
    frames = _render(fetus, scanner, poses, (H, W), rng)
    public_std = {name: _as_public(visited.get(name, v[0])) for name, v in standard.items()}
    params = dict(fetus.params, mirror=mirror, gain_db=scanner.gain_db,
                  dynamic_range_db=scanner.dynamic_range_db, order=tuple(order))
    return FetalSweep(frames, labels, SONONET_CLASSES, float(scanner.spacing),
                      np.stack([_as_public(p) for p in poses]), public_std, int(seed), params)


def render_planes(seed: int, poses: np.ndarray, shape: tuple[int, int] = (224, 288)) -> tuple[np.ndarray, np.ndarray]:
    """B-mode frames of the phantom of ``seed`` at arbitrary world poses, and their labels.

    ``poses`` ``(t, 3, 3)`` as in :attr:`FetalSweep.poses` (centre mm, row axis, column axis).
    The scanner settings are those of ``fetal_sweep(seed, shape=shape)``; the speckle differs.
    """
    poses = np.asarray(poses, float)
    if poses.ndim != 3 or poses.shape[1:] != (3, 3):
        raise ValueError(f"poses must be (t, 3, 3): centre, row axis, column axis; got {poses.shape}")
    rng, fetus, scanner, mirror, standard, along = _setup(seed, tuple(shape))
    v, u = _unit(poses[:, 1]), _unit(poses[:, 2])
    p43 = np.stack([poses[:, 0], u, v, np.cross(u, v)], axis=1)
    labels = np.array([_plane_label(p, standard, along)[0] for p in p43], np.int64)
    return _render(fetus, scanner, p43, tuple(shape), np.random.default_rng([seed, 1])), labels


@dataclass(frozen=True, eq=False)
class FetalVolume:
    """A 3D ultrasound volume of the phantom (a 3D probe on top: axis 0 is depth).

    ``data`` ``(z, y, x)`` float32 in [0, 1]; ``spacing`` (mm, isotropic); ``planes`` class ->
    :class:`PlanePose` of the true standard plane in voxel indices (centre, row and column axes;
    row axis = image down); ``all_planes`` class -> every true pose of that plane (two femurs);
    ``seed``.
    """

    data: np.ndarray
    spacing: tuple
    planes: dict
    seed: int
    all_planes: dict = field(default_factory=dict)

    def extract(self, pose: PlanePose, shape: tuple[int, int], step: float = 1.0) -> np.ndarray:
        """The 2D view at ``pose`` (see :func:`extract_plane`)."""
        return extract_plane(self.data, pose.centre, pose.axes, shape, step)


def extract_plane(volume: np.ndarray, centre, axes, shape: tuple[int, int], step: float = 1.0,
                  order: int = 1) -> np.ndarray:
    """Sample ``volume`` on a plane: ``(H, W)`` float32, zero outside.

    Pixel ``(i, j)`` is at ``centre + (i - (H-1)/2) step axes[0] + (j - (W-1)/2) step axes[1]``
    in voxel indices, interpolated with ``order`` (1 trilinear).
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D (z, y, x), got {volume.shape}")
    axes = np.asarray(axes, float)
    if axes.shape != (2, 3):
        raise ValueError(f"axes must be (2, 3): row axis and column axis, got {axes.shape}")
    H, W = (int(s) for s in shape)
    i = (np.arange(H) - (H - 1) / 2) * step
    j = (np.arange(W) - (W - 1) / 2) * step
    pts = (np.asarray(centre, float)[:, None, None] + axes[0][:, None, None] * i[None, :, None]
           + axes[1][:, None, None] * j[None, None, :])
    return ndi.map_coordinates(volume.astype(np.float32, copy=False), pts, order=order, cval=0.0).astype(np.float32)


def _volume_setup(seed: int, shape, spacing_mm: float):
    """The volume of ``fetal_volume`` and everything needed to pose views in it."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16 or spacing_mm <= 0:
        raise ValueError(f"shape must be 3 sizes >= 16 and spacing positive, got {shape}, {spacing_mm}")
    rng, fetus, scanner, mirror, standard, along = _setup(seed, (224, 288))
    sp = float(spacing_mm)
    nz, ny, nx = shape
    zc, yc, xc = (nz - 1) / 2, (ny - 1) / 2, (nx - 1) / 2
    # voxel (k, j, i) -> world (x, y, z) = ((i - xc) sp, (j - yc) sp, -(k - zc) sp) + origin;
    # each z slab is a plane grid (a along x, b along y)
    R = fetus.rotation
    corners = np.array([[-xc * sp, -yc * sp, -(kk - zc) * sp] for kk in range(nz)])
    bb, aa = np.meshgrid(np.arange(ny) * sp, np.arange(nx) * sp, indexing="ij")
    ex, ey = np.array([1.0, 0, 0]) @ R, np.array([0, 1.0, 0]) @ R
    grids = _Grids(corners @ R, np.tile(ex, (nz, 1)), np.tile(ey, (nz, 1)), aa, bb)
    tissue = fetus.tissue(grids)                          # (z, y, x)
    depth = np.arange(nz) * sp
    skin, fat, muscle = scanner.wall_mm
    tissue[depth < skin + fat + muscle] = T["muscle"]
    tissue[depth < skin + fat] = T["fat"]
    tissue[depth < skin] = T["skin"]
    data = _beamform(tissue, depth, sp, scanner, rng, (0.5 / sp, 1.0 / sp, 1.0 / sp), beam_axis=0,
                     frame_axis=False).astype(np.float32)

    def to_voxel_point(p):
        q = p - fetus.origin
        return np.array([zc - q[2] / sp, yc + q[1] / sp, xc + q[0] / sp])

    def to_voxel_dir(d):
        return _unit([-d[2], d[1], d[0]])

    return data, sp, fetus, mirror, standard, along, to_voxel_point, to_voxel_dir


def fetal_volume(seed: int = 0, shape: tuple[int, int, int] = (128, 160, 192), spacing_mm: float = 1.0) -> FetalVolume:
    """A 3D ultrasound-like volume of the phantom of ``seed`` (same fetus as ``fetal_sweep(seed)``).

    Axis 0 is depth (world down); the fetal origin sits at the volume centre. Rendered with 3D
    speckle, attenuation and shadowing along axis 0, depth gain and log compression (no fan).
    """
    data, sp, _, _, standard, _, to_voxel_point, to_voxel_dir = _volume_setup(seed, shape, spacing_mm)
    all_planes = {name: [PlanePose(to_voxel_point(p[0]), np.stack([to_voxel_dir(p[2]), to_voxel_dir(p[1])]))
                         for p in poses] for name, poses in standard.items()}
    planes = {name: poses[0] for name, poses in all_planes.items()}
    return FetalVolume(data, (sp, sp, sp), planes, int(seed), all_planes)


def _tilted(pose43: np.ndarray, angle_rad: float, rng) -> np.ndarray:
    """``pose43`` (centre, u, v, n) rotated by ``angle_rad`` about a random in-plane axis."""
    t = rng.uniform(0, 2 * np.pi)
    axis = np.cos(t) * pose43[1] + np.sin(t) * pose43[2]
    rot = Rotation.from_rotvec(_unit(axis) * angle_rad).as_matrix()
    return np.vstack([pose43[0], (rot @ pose43[1:].T).T])


def volume_views(seed: int, n_views: int, shape: tuple[int, int], pixel_mm: float,
                 volume_shape: tuple[int, int, int] = (128, 160, 192), spacing_mm: float = 1.0,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """2D views ``(n, H, W)`` of ``fetal_volume(seed)`` at many poses, with their plane labels.

    What a plane search in a 3D volume looks at (:func:`napari_medlearn.methods.find_standard_plane`):
    a third near a standard plane (tilt <= 8 deg, <= 3 mm off, in-plane shifts), a third
    deliberately wrong cuts through the same anatomy (tilted 12-90 deg or 5-30 mm off), a third
    random; each with a random in-plane rotation. Labels come from the same pose tolerance as
    the sweeps' (:data:`PLANE_TOLERANCE`), so a view counts as a plane only where it is one.
    """
    rng = np.random.default_rng([seed, 7]) if rng is None else rng
    data, sp, fetus, mirror, standard, along, to_vp, to_vd = _volume_setup(seed, volume_shape, spacing_mm)
    entries = [(name, i) for name in PHANTOM_PLANES for i in range(len(standard[name]))]
    H, W = (int(s) for s in shape)
    views, labels = [], []
    for k in range(int(n_views)):
        kind = k % 3
        if kind == 2:
            pose = _random_pose(rng, fetus, mirror)
        else:
            name, i = entries[int(rng.integers(len(entries)))]
            pose = standard[name][i].copy()
            if kind == 0:
                pose = _tilted(pose, np.radians(rng.uniform(0, 8)), rng)
                pose[0] = pose[0] + rng.uniform(-3, 3) * pose[3]
            elif rng.random() < 0.6:
                pose = _tilted(pose, np.radians(rng.uniform(12, 90)), rng)
            else:
                pose[0] = pose[0] + rng.choice([-1, 1]) * rng.uniform(5, 30) * pose[3]
            pose[0] = pose[0] + rng.uniform(-10, 10) * pose[1] + rng.uniform(-8, 8) * pose[2]
        label, _ = _plane_label(pose, standard, along)
        a = rng.uniform(0, 2 * np.pi)                     # the view's rows: any direction in the plane
        u, v = pose[1], pose[2]
        row = np.cos(a) * v + np.sin(a) * u
        col = np.cross(pose[3], row)
        axes = np.stack([to_vd(row), to_vd(col)])
        views.append(extract_plane(data, to_vp(pose[0]), axes, (H, W), step=pixel_mm / sp))
        labels.append(label)
    return np.stack(views), np.asarray(labels, np.int64)
