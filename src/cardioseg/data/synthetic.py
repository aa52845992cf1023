"""Synthetic cardiac short-axis cine MRI phantom (bSSFP look, ACDC-like anatomy).

The phantom is a seeded, anatomically plausible short-axis stack from base (slice 0) to apex:

* **LV**: a slightly irregular, roughly circular blood pool (radius 22–28 mm at ED) inside a
  myocardial ring (8–10 mm at ED); at ES the cavity radius is 60–70 % of ED, the base descends
  towards the apex and the wall thickens so that the myocardial volume is conserved (LVEF 55–65 %).
  Papillary muscles (dark blobs inside the pool at mid-ventricular slices) are labelled LV, as in
  ACDC. The most basal slices have an incomplete myocardial ring (mitral annulus).
* **RV**: a crescent wrapped around the septal side of the LV, attached to the anterior and inferior
  septum, shrinking and disappearing before the LV apex. Its thin (~3 mm) free wall is drawn with
  myocardium-like intensity but labelled background (ACDC / M&Ms convention). A thin, darker
  trabecular layer along the endocardium of both ventricles is part of the cavity labels (ACDC
  contours follow the outer edge of the trabeculae).
* **Surroundings**: a torso ellipse (~320 x 250 mm, filling most of the field of view) with bright
  subcutaneous fat, chest-wall and back muscles, dark lungs filling the chest around the heart and a
  thin mediastinum, the diaphragm dome with liver and stomach/bowel below it (rising towards the
  apex), spine, descending aorta in periaortic fat, patchy epicardial fat and a thin dark
  pericardium.
* **Appearance**: cine bSSFP contrast (bright blood, dark myocardium, fat brighter than blood),
  smoothed random texture, partial-volume blur, a smooth bias field and Rician noise, then a vendor
  style: intensity range, gamma, noise level, effective resolution and the in-plane turn/flip of
  the stored array.

The in-plane layout before the style's turn/flip follows ACDC arrays (seen with
``plt.imshow(a.T)``): RV to the left of the LV, lungs above and to the right, abdomen below. The
named vendor styles keep that layout (no turn or flip), as the real vendor data in
``../shared/data`` do (M&Ms Philips, Siemens and GE NIfTI, and the GE Sunnybrook DICOM cine read by
:func:`cardioseg.io.dicom.load_cine`); they differ in the affine's axis codes, intensity range,
contrast, noise and resolution. The ``random`` style also turns/flips the stored array, for
stress tests of orientation handling.

Arrays are ``(X, Y, Z)`` with ``Z`` the slice axis; labels use the canonical convention
(0 background, 1 LV, 2 MYO, 3 RV).

Example:
    >>> ph = make_phantom(PhantomConfig(seed=1, shape=(96, 80), spacing=3.0, n_slices=6))
    >>> ph.images["ED"].shape, sorted(np.unique(ph.labels["ES"]).tolist())
    ((96, 80, 6), [0, 1, 2, 3])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "ORIENTATIONS",
    "PHASE_CONTRACTION",
    "VENDOR_STYLES",
    "Cine",
    "Phantom",
    "PhantomConfig",
    "VendorStyle",
    "contraction_curve",
    "make_cine",
    "make_phantom",
    "write_phantom",
]

#: Contraction state of the named phases (0 = end-diastole, 1 = end-systole).
PHASE_CONTRACTION: dict[str, float] = {"ED": 0.0, "ES": 1.0, "MID": 0.5}
#: Affine styles: ``auto`` takes the vendor's usual one.
ORIENTATIONS = ("auto", "RAS", "LPS", "PIR")


@dataclass(frozen=True)
class VendorStyle:
    """How one scanner vendor's images look once exported.

    Attributes:
        name: Vendor name.
        blood: Stored value of LV blood; ``None`` means per-volume min–max scaling to [0, 1]
            (the ACDC release).
        integer: Round stored values (integer-like floats).
        gamma: Contrast exponent applied to the noiseless image (blood = 1).
        noise: Rician noise sigma relative to LV blood.
        bias: Amplitude of the smooth multiplicative bias field (0.1 = ±10 %).
        blur: Gaussian sigma in pixels: partial volume and the acquired resolution (a vendor that
            acquires coarser and interpolates looks blurrier on the same grid).
        myo: Myocardium intensity relative to blood.
        turn: ``np.rot90`` turns of the stored array (in-plane).
        flip: Flip the second in-plane axis after turning.
        orientation: Default affine style (see :data:`ORIENTATIONS`).
    """

    name: str
    blood: float | None
    integer: bool
    gamma: float
    noise: float
    bias: float
    blur: float
    myo: float
    turn: int
    flip: bool
    orientation: str


#: The three built-in vendor appearances.
VENDOR_STYLES: dict[str, VendorStyle] = {
    "siemens": VendorStyle("siemens", None, False, 1.0, 0.030, 0.10, 0.70, 0.28, 0, False, "RAS"),
    "philips": VendorStyle("philips", 140.0, True, 0.85, 0.025, 0.20, 0.95, 0.30, 0, False, "LPS"),
    "ge": VendorStyle("ge", 1000.0, True, 1.15, 0.040, 0.15, 0.80, 0.27, 0, False, "PIR"),
}


@dataclass
class PhantomConfig:
    """Parameters of a synthetic study.

    Attributes:
        seed: Random seed; everything (anatomy, appearance, noise) derives from it.
        shape: In-plane shape of the stored arrays (any, odd or non-square).
        spacing: In-plane voxel size in mm.
        n_slices: Number of short-axis slices; slice 0 is basal, the stack runs towards the apex
            (anatomy is in mm, so short or coarse stacks cover only part of the heart).
        slice_spacing: Distance between slice centres in mm.
        phases: Phase names for :func:`make_phantom` (keys of :data:`PHASE_CONTRACTION`).
        vendor: ``siemens``, ``philips``, ``ge`` or ``random`` (a jittered style from the seed).
        orientation: Affine style: ``RAS`` (diagonal, as in ACDC), ``LPS`` / ``PIR`` (oblique
            rotations with a translation, as vendors store) or ``auto`` (the vendor's usual one).
        es_fraction: End-systole position in the cardiac cycle, for :func:`make_cine`.
    """

    seed: int = 0
    shape: tuple[int, int] = (192, 192)
    spacing: float = 1.5
    n_slices: int = 10
    slice_spacing: float = 8.0
    phases: tuple[str, ...] = ("ED", "ES")
    vendor: str = "siemens"
    orientation: str = "auto"
    es_fraction: float = 0.37

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)  # type: ignore[assignment]
        self.phases = tuple(self.phases)
        if len(self.shape) != 2 or min(self.shape) < 16:
            raise ValueError(f"shape must be two sizes >= 16, got {self.shape}")
        if self.spacing <= 0 or self.slice_spacing <= 0:
            raise ValueError("spacing and slice_spacing must be positive")
        if self.n_slices < 1:
            raise ValueError("n_slices must be >= 1")
        if self.vendor not in (*VENDOR_STYLES, "random"):
            raise ValueError(f"unknown vendor {self.vendor!r}; use {(*VENDOR_STYLES, 'random')}")
        if self.orientation not in ORIENTATIONS:
            raise ValueError(f"unknown orientation {self.orientation!r}; use {ORIENTATIONS}")
        unknown = [p for p in self.phases if p not in PHASE_CONTRACTION]
        if unknown or not self.phases:
            raise ValueError(f"unknown phase(s) {unknown}; use {tuple(PHASE_CONTRACTION)}")
        if not 0.1 <= self.es_fraction <= 0.6:
            raise ValueError("es_fraction must lie in [0.1, 0.6]")


@dataclass
class Phantom:
    """A synthetic 3D study (one volume per phase).

    Attributes:
        images: Phase → ``float32`` ``(X, Y, Z)`` image in the vendor's intensity range.
        labels: Phase → ``uint8`` canonical labels, same shape.
        affine: 4x4 voxel-to-world matrix (column norms = voxel sizes).
        spacing: ``(sx, sy, sz)`` in mm.
        meta: ``vendor``, ``style``, ``orientation``, ``axcodes``, ``turn``, ``flip``, ``seed``,
            ``ed_phase``/``es_phase``, ``lv_volume_ml``/``rv_volume_ml``/``myo_volume_ml``
            (phase → ml, from the labels), ``lvef``/``rvef`` (%, where ED and ES exist) and the
            anatomy parameters.
    """

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    affine: np.ndarray
    spacing: tuple[float, float, float]
    meta: dict = field(default_factory=dict)


@dataclass
class Cine:
    """A synthetic 4D cine: ``image`` and ``labels`` are ``(X, Y, Z, T)``; ED is frame 0.

    ``meta`` holds ``ed_frame``, ``es_frame``, ``contraction`` (per frame, 0 = ED, 1 = ES) and
    ``lv_volume_ml`` / ``rv_volume_ml`` per frame, plus everything :class:`Phantom` reports.
    """

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    meta: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# small geometry helpers


def _rot(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _unit(angle: float) -> np.ndarray:
    return np.array([math.cos(angle), math.sin(angle)])


def _wobble(theta: np.ndarray, amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """``1 + sum_k a_k cos(k theta + phi_k)`` for k = 2, 3, ...: a smooth irregular outline."""
    out = np.ones_like(theta)
    for i, (a, p) in enumerate(zip(amps, phases, strict=True)):
        out += a * np.cos((i + 2) * theta + p)
    return out


def _ellipse(xy: tuple[np.ndarray, np.ndarray], centre, a: float, b: float, angle: float):
    """Normalised elliptic radius and elliptic angle of every pixel (``< 1`` inside)."""
    dx, dy = xy[0] - centre[0], xy[1] - centre[1]
    c, s = math.cos(angle), math.sin(angle)
    p = (dx * c + dy * s) / a
    q = (-dx * s + dy * c) / b
    return np.hypot(p, q), np.arctan2(q, p)


def _angdiff(a: np.ndarray, b: float) -> np.ndarray:
    return np.abs((a - b + np.pi) % (2 * np.pi) - np.pi)


def _profile(u: float, u0: float) -> float:
    """Radius along the long axis (0 = base, 1 = apex): 0.9→1 basally, elliptic taper to apex."""
    if u < 0.0 or u >= 1.0:
        return 0.0
    if u < u0:
        return 0.9 + 0.1 * u / u0
    s = (u - u0) / (1.0 - u0)
    return math.sqrt(max(0.0, 1.0 - s * s))


def _smoothstep(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


def contraction_curve(n_frames: int, es_fraction: float = 0.37) -> np.ndarray:
    """Contraction state per frame: 0 at ED (frame 0), 1 at ES, smooth (C1) over the cycle.

    Systole is a cosine ramp to ``es_fraction``; diastole has rapid filling, diastasis and an
    atrial kick.

    Example:
        >>> c = contraction_curve(20, 0.35)
        >>> float(c[0]), int(np.argmax(c))
        (0.0, 7)
    """
    t = np.arange(n_frames) / max(n_frames, 1)
    c = np.empty(n_frames)
    for i, ti in enumerate(t):
        if ti <= es_fraction:
            c[i] = 0.5 * (1.0 - math.cos(math.pi * ti / es_fraction))
        else:
            s = (ti - es_fraction) / (1.0 - es_fraction)
            if s < 0.4:
                c[i] = 1.0 - 0.8 * 0.5 * (1.0 - math.cos(math.pi * s / 0.4))
            elif s < 0.75:
                c[i] = 0.2
            else:
                c[i] = 0.2 * 0.5 * (1.0 + math.cos(math.pi * (s - 0.75) / 0.25))
    return c


# ----------------------------------------------------------------------------------------------
# tissue intensities (before gamma, LV blood = 1)

_AIR, _FAT, _MUSCLE, _SOFT, _LUNG, _LUNG_VESSEL = 0.0, 1.2, 0.28, 0.30, 0.05, 0.30
_LIVER, _STOMACH, _BONE, _CSF, _AORTA, _PERICARD = 0.32, 0.45, 0.55, 1.1, 1.05, 0.12
_LV_BLOOD, _RV_BLOOD, _EPI_FAT = 1.0, 0.82, 0.8


def _resolve_style(config: PhantomConfig, rng: np.random.Generator) -> VendorStyle:
    if config.vendor != "random":
        style = VENDOR_STYLES[config.vendor]
    else:
        base = VENDOR_STYLES[str(rng.choice(list(VENDOR_STYLES)))]
        style = replace(
            base,
            name=f"random-{base.name}",
            gamma=float(base.gamma * rng.uniform(0.85, 1.15)),
            noise=float(rng.uniform(0.02, 0.06)),
            bias=float(rng.uniform(0.05, 0.25)),
            blur=float(rng.uniform(0.6, 1.1)),
            myo=float(rng.uniform(0.24, 0.34)),
            turn=int(rng.integers(4)),
            flip=bool(rng.integers(2)),
            orientation=str(rng.choice(ORIENTATIONS[1:])),
        )
    if config.orientation != "auto":
        style = replace(style, orientation=config.orientation)
    return style


def _affine(style: str, spacing: tuple[float, float, float], rng: np.random.Generator):
    """Voxel-to-world matrix: diagonal (RAS, zero origin) or an oblique LPS/PIR-like rotation."""
    import nibabel as nib

    aff = np.eye(4)
    if style == "RAS":
        aff[:3, :3] = np.diag(spacing)
        return aff
    base = {
        "LPS": np.array([[-1.0, 0, 0], [0, -1, 0], [0, 0, 1]]),
        "PIR": np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]]),
    }[style]
    for _ in range(50):
        a, b, c = rng.uniform(-0.55, 0.55, 3)
        rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
        ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
        rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
        rot = rz @ ry @ rx @ base
        aff[:3, :3] = rot @ np.diag(spacing)
        if "".join(nib.aff2axcodes(aff)) == style:
            break
    else:  # pragma: no cover - practically unreachable
        aff[:3, :3] = base @ np.diag(spacing)
    aff[:3, 3] = rng.uniform(-150.0, 150.0, 3)
    return aff


# ----------------------------------------------------------------------------------------------
# the scene: all random anatomy/appearance parameters, rendered for any contraction state


class _Scene:
    def __init__(self, config: PhantomConfig):
        self.config = config
        ss = np.random.SeedSequence(int(config.seed))
        anat_seq, tex_seq, look_seq, self.noise_seq = ss.spawn(4)
        rng = np.random.default_rng(anat_seq)
        look = np.random.default_rng(look_seq)
        self.style = _resolve_style(config, look)

        sp = float(config.spacing)
        self.turn = self.style.turn % 4
        nx, ny = config.shape if self.turn % 2 == 0 else config.shape[::-1]
        self.canon_shape = (nx, ny)
        x = (np.arange(nx) - (nx - 1) / 2.0) * sp
        y = (np.arange(ny) - (ny - 1) / 2.0) * sp
        self.xy = np.meshgrid(x, y, indexing="ij")
        self.depths = np.arange(config.n_slices) * float(config.slice_spacing)

        # --- LV
        self.rc = rng.uniform(22.0, 28.0)  # ED cavity radius (base/mid)
        self.wall = rng.uniform(8.0, 10.0)  # ED wall thickness
        self.length = rng.uniform(68.0, 78.0)  # ED cavity length, base plane to apex
        self.apex_cap = rng.uniform(6.0, 8.0)
        self.u0 = rng.uniform(0.25, 0.35)
        ef = rng.uniform(0.56, 0.64)  # LVEF of the stack (the base stays inside it)
        self.long_ratio = rng.uniform(0.87, 0.92)  # ES/ED long-axis length
        self.r_ratio = math.sqrt((1.0 - ef) / 1.05)  # ES/ED cavity radius
        descent = self.length * (1.0 - self.long_ratio)
        self.base_ed = -(descent + rng.uniform(1.0, 3.0))  # base plane depth at ED (mm)
        # --- RV
        self.rv_h = rng.uniform(24.0, 30.0)  # ED septum-to-free-wall distance at the base
        self.rv_end = rng.uniform(0.75, 0.88)  # RV apex, as a fraction of the LV length
        self.rv_es = rng.uniform(0.55, 0.66)
        # angular half-spans of the crescent towards the inferior and the anterior insertion
        self.rv_span = math.radians(rng.uniform(60.0, 80.0)), math.radians(rng.uniform(85.0, 105.0))
        self.rv_wall = rng.uniform(2.6, 3.4)
        # --- pose
        self.rv_angle = math.radians(160.0 + rng.uniform(-22.0, 22.0))
        r, phi = 15.0 * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        self.centre = r * _unit(phi) - 6.0 * _unit(self.rv_angle)
        self.drift = rng.uniform(0.0, 0.07) * _unit(rng.uniform(0, 2 * math.pi))
        self.jitter = rng.normal(0.0, 0.6, (config.n_slices, 2))
        # --- outline irregularity (two sets, interpolated from base to apex)
        self.endo_w = rng.normal(0.0, 0.028, (2, 3)), rng.uniform(0, 2 * math.pi, (2, 3))
        self.epi_w = rng.normal(0.0, 0.018, (2, 3)), rng.uniform(0, 2 * math.pi, (2, 3))
        self.rv_w = rng.normal(0.0, 0.045, (2, 3)), rng.uniform(0, 2 * math.pi, (2, 3))
        self.fat_w = rng.normal(0.0, 0.9, (2, 3)), rng.uniform(0, 2 * math.pi, (2, 3))
        self.fat_mm = rng.uniform(1.5, 3.0)
        self.gap_angle = math.pi + rng.uniform(0.2, 0.8)  # mitral annulus side, from the RV dir
        self.papillary = [
            (math.pi + s * rng.uniform(0.85, 1.15), rng.uniform(3.0, 4.5)) for s in (-1.0, 1.0)
        ]
        self.trabeculae = [
            (rng.uniform(0, 2 * math.pi), rng.uniform(0.8, 1.6), rng.uniform(0.82, 0.95))
            for _ in range(int(rng.integers(3, 7)))
        ]
        # --- body and organs. Canonical in-plane frame as in ACDC arrays: the RV lies towards -x,
        # the anterior chest wall towards -x/-y, the lungs above (-y) and lateral (+x), the
        # abdomen (liver, stomach) below (+y) and the back (aorta, spine) towards +x/+y.
        self.body_angle = math.radians(rng.uniform(-15.0, 15.0))
        rb = _rot(self.body_angle)
        self.body_ab = (160.0 * rng.uniform(0.92, 1.08), 125.0 * rng.uniform(0.92, 1.08))
        self.body_c = self.centre + rb @ np.array(
            [45.0 + rng.uniform(-10, 10), 40.0 + rng.uniform(-10, 10)]
        )
        self.body_w = rng.normal(0.0, 0.02, 3), rng.uniform(0, 2 * math.pi, 3)
        self.subcut = rng.uniform(9.0, 16.0), rng.normal(0.0, 0.3, 3), rng.uniform(0, 6.3, 3)
        self.muscle = rng.uniform(7.0, 12.0)
        a, b = self.body_ab
        spine_c = self.body_c + rb @ np.array([0.35 * a, 0.35 * b])
        self.spine = (spine_c, _rot(self.body_angle - math.radians(40.0)))
        to_heart = (self.centre - spine_c) / (float(np.hypot(*(self.centre - spine_c))) + 1e-6)
        side = np.array([-to_heart[1], to_heart[0]])
        self.aorta = (  # descending aorta: beside the front of the vertebral body
            spine_c + rng.uniform(27.0, 30.0) * to_heart + rng.uniform(-8.0, 8.0) * side,
            rng.uniform(8.0, 10.0),
        )
        # mediastinum: a margin around the heart and a strip towards the aorta (left atrium,
        # oesophagus); the lungs fill the rest of the chest above the diaphragm
        self.med_margin = rng.uniform(0.5, 2.5)
        self.med_w = rng.normal(0.0, 0.5, 3), rng.uniform(0, 2 * math.pi, 3)
        to_ao = self.aorta[0] - self.centre
        self.med_post = (
            self.centre + 0.5 * to_ao,
            (0.5 * float(np.hypot(*to_ao)) + 6.0, rng.uniform(14.0, 20.0)),
            math.atan2(to_ao[1], to_ao[0]),
        )
        self.lung_vessels = (
            rng.uniform(-1.0, 1.0, (70, 2)) * np.array([a, b]) + self.body_c,
            rng.uniform(0.8, 2.2, 70),
        )
        # abdomen below the diaphragm: its dome rises towards the apex
        self.inf_angle = math.radians(90.0 + rng.uniform(-15.0, 15.0))
        self.dome_gap = rng.uniform(6.0, 16.0)
        self.dome_ab = rng.uniform(115.0, 145.0), rng.uniform(85.0, 110.0)
        self.dome_w = rng.normal(0.0, 0.03, 3), rng.uniform(0, 2 * math.pi, 3)
        self.liver_split = rng.uniform(40.0, 80.0), rng.normal(0.0, 6.0)
        self.liver_dots = rng.uniform(-1.0, 1.0, (14, 2)), rng.uniform(1.5, 3.5, 14)
        self.bowel = rng.uniform(-1.0, 1.0, (6, 2)), rng.uniform(6.0, 14.0, 6)
        self._med_cache: dict[tuple[int, float], np.ndarray] = {}

        # --- static textures and bias field
        trng = np.random.default_rng(tex_seq)
        shape3 = (nx, ny, config.n_slices)
        fine = ndi.gaussian_filter(trng.standard_normal(shape3), (1.2, 1.2, 0))
        coarse = ndi.gaussian_filter(trng.standard_normal(shape3), (5.0, 5.0, 0))
        self.tex_fine = (fine / (fine.std() + 1e-8)).astype(np.float32)
        self.tex_coarse = (coarse / (coarse.std() + 1e-8)).astype(np.float32)
        self.bias = self._bias_field(trng, shape3)

    # -- geometry ------------------------------------------------------------------------------

    def _interp(self, w, f: float):
        amps, phases = w
        return amps[0] * (1 - f) + amps[1] * f, phases[0] * (1 - f) + phases[1] * f

    def lv_geometry(self, depth: float, c: float) -> dict:
        """Cavity/epicardial radii, RV extent and base gap at one depth and contraction state."""
        length_c = self.length * (1.0 - c * (1.0 - self.long_ratio))
        base_c = self.base_ed + (self.length - length_c)  # the apex stays put
        u = (depth - base_c) / length_c
        k = 1.0 - c * (1.0 - self.r_ratio)
        rc_ed = self.rc * _profile(u, self.u0)
        u_epi = u * length_c / (length_c + self.apex_cap)
        re_ed = (self.rc + self.wall) * _profile(u_epi, self.u0)
        ann = max(re_ed**2 - rc_ed**2, 0.0)
        rcav = k * rc_ed
        # myocardial volume: the ring area grows as the heart shortens (half of it in the stack)
        ann *= 1.0 + 0.5 * c * (1.0 / self.long_ratio - 1.0)
        repi = math.sqrt(rcav**2 + ann) if ann > 0 else 0.0
        u_rv = u / self.rv_end
        rv_prof = (1.0 - u_rv**2) ** 0.6 if 0.0 <= u_rv < 1.0 else 0.0
        h = self.rv_h * (1.0 - c * (1.0 - self.rv_es)) * rv_prof * (1.0 + 0.1 * (1.0 - u_rv))
        span = (0.55 + 0.45 * rv_prof**0.5) * (1.0 - 0.08 * c)
        rv_span = (self.rv_span[0] * span, self.rv_span[1] * span)
        gap = math.radians(130.0) * (1.0 - u / 0.1) if 0.0 <= u < 0.1 else 0.0
        return {
            "u": u,
            "rcav": rcav,
            "repi": repi,
            "rv_h": h,
            "rv_span": rv_span,
            "gap": gap,
            "c": c,
        }

    def _centre(self, s: int) -> np.ndarray:
        return self.centre + self.drift * self.depths[s] + self.jitter[s]

    # -- rendering -----------------------------------------------------------------------------

    def render_slice(self, s: int, c: float) -> tuple[np.ndarray, np.ndarray]:
        """Noiseless intensity (blood = 1, before blur) and labels of slice ``s``."""
        X, Y = self.xy
        depth = float(self.depths[s])
        tf, tc = self.tex_fine[..., s], self.tex_coarse[..., s]
        img = np.zeros(X.shape, np.float32)
        lab = np.zeros(X.shape, np.uint8)

        # body: subcutaneous fat, chest-wall / back muscles, interior
        rb = self.body_angle
        rho_b, th_b = _ellipse((X, Y), self.body_c, *self.body_ab, rb)
        body = rho_b < _wobble(th_b, *self.body_w)
        fat_t = self.subcut[0] * np.clip(_wobble(th_b, self.subcut[1], self.subcut[2]), 0.4, 2.0)
        back = np.clip(np.cos(th_b - math.radians(40.0)), 0.0, 1.0)
        mus_t = self.muscle * (1.0 + 1.5 * back)  # thick back muscles
        a, b = self.body_ab

        def inset(t):
            return np.hypot(
                np.cos(th_b) * rho_b * a / np.maximum(a - t, 1.0),
                np.sin(th_b) * rho_b * b / np.maximum(b - t, 1.0),
            )

        inner = body & (inset(fat_t) < 1.0)
        interior = body & (inset(fat_t + mus_t) < 1.0)
        img[body] = _FAT * (1 + 0.06 * tf[body] + 0.05 * tc[body])
        m = inner & ~interior
        img[m] = _MUSCLE * (1 + 0.10 * tf[m] + 0.08 * tc[m])
        img[m & (tc > 1.4)] = _FAT * 0.9  # fat between the muscles
        img[interior] = _SOFT * (1 + 0.10 * tf[interior] + 0.12 * tc[interior])

        # spine with paraspinal muscles and spinal canal
        spine_c, rs = self.spine
        spine = np.zeros(X.shape, bool)
        for dx, dy, ea, eb, val in (
            (-32.0, 22.0, 26.0, 20.0, _MUSCLE),
            (32.0, 22.0, 26.0, 20.0, _MUSCLE),
            (0.0, 0.0, 17.0, 15.0, _BONE),
            (0.0, 24.0, 7.0, 6.0, _CSF),
        ):
            cc = spine_c + rs @ np.array([dx, dy])
            rho, _ = _ellipse((X, Y), cc, ea, eb, rb)
            m = body & (rho < 1.0)
            spine |= m
            img[m] = val * (1 + 0.08 * tf[m])

        # abdomen under the diaphragm dome: liver (patient right, the RV side) and stomach/bowel
        cen = self._centre(s)
        top = self._heart_reach(depth) + self.dome_gap * (1.0 - 0.6 * min(depth / 80.0, 1.0))
        da, db = self.dome_ab
        ang = self.inf_angle - math.pi / 2
        dc = cen + (top + db) * _unit(self.inf_angle)
        rho, th = _ellipse((X, Y), dc, da, db, ang)
        outline = _wobble(th, *self.dome_w)
        ac, ar = self.aorta
        d_ao = np.hypot(X - ac[0], Y - ac[1])
        retro = d_ao < ar + 14.0  # the aorta runs behind the diaphragm (retrocrural)
        abdomen = interior & ~spine & ~retro & (rho < outline + 4.0 / db)
        img[abdomen] = _MUSCLE * (1 + 0.08 * tf[abdomen])  # diaphragm
        organs = abdomen & (rho < outline)
        # lateral coordinate along the dome: liver on the RV side
        lat = (X - cen[0]) * math.cos(ang) + (Y - cen[1]) * math.sin(ang)
        split, wave = self.liver_split
        liver = organs & (lat < split + wave * np.sin((Y - cen[1]) / 25.0))
        img[liver] = _LIVER * (1 + 0.10 * tc[liver] + 0.06 * tf[liver])
        pos, rad = self.liver_dots
        for (px, py), r in zip(pos, rad, strict=True):
            vc = dc + np.array([px * da * 0.6, py * db * 0.8])
            img[liver & (np.hypot(X - vc[0], Y - vc[1]) < r)] = 0.8
        gut = organs & ~liver
        img[gut] = _SOFT * 1.2 * (1 + 0.15 * tc[gut] + 0.1 * tf[gut])
        pos, rad = self.bowel
        for (px, py), r in zip(pos, rad, strict=True):
            vc = dc + np.array([px * da * 0.7, py * db * 0.7])
            d = np.hypot(X - vc[0], Y - vc[1])
            d = d * (1.0 + 0.15 * np.cos(2 * np.arctan2(Y - vc[1], X - vc[0]) + r))
            img[gut & (d < r + 2.0)] = _MUSCLE
            st = gut & (d < r)
            img[st] = _STOMACH * (1 + 0.15 * tc[st])

        # lungs: the chest minus mediastinum, spine and abdomen
        lungs = interior & ~spine & ~abdomen & ~self._mediastinum(s, c)
        img[lungs] = _LUNG * (1 + 0.5 * tc[lungs] + 0.2 * tf[lungs]).clip(0.2)
        pos, rad = self.lung_vessels
        for (px, py), r in zip(pos, rad, strict=True):
            img[lungs & (np.hypot(X - px, Y - py) < r)] = _LUNG_VESSEL
        # descending aorta
        m = interior & (d_ao < ar + 4.0) & ~spine  # periaortic fat
        img[m] = _FAT * 0.75 * (1 + 0.06 * tf[m])
        m = interior & (d_ao < ar)
        img[m] = _AORTA * (1 + 0.03 * tf[m])

        self._draw_heart(img, lab, s, c, tf, tc)
        img[~body] = _AIR
        lab[~body] = 0
        return img, lab

    def _heart_reach(self, depth: float) -> float:
        """How far the ED heart extends towards the diaphragm at this depth (mm)."""
        geo = self.lv_geometry(depth, 0.0)
        return geo["repi"] + 0.35 * geo["rv_h"]

    def _mediastinum(self, s: int, c: float) -> np.ndarray:
        """Mediastinal region of slice ``s`` (the lungs hug the heart as it contracts)."""
        key = (s, round(c, 6))
        if key not in self._med_cache:
            X, Y = self.xy
            hm = self._heart_masks(s, c)
            med = np.zeros(X.shape, bool)
            if hm is not None:
                heart = hm["epi"] | hm["rv_cav"] | hm["rv_wall"]
                dist = ndi.distance_transform_edt(~heart, sampling=float(self.config.spacing))
                margin = self.med_margin * np.clip(_wobble(hm["th"], *self.med_w), 0.3, 1.8)
                med |= dist < margin
                scale = min(1.0, 0.3 + hm["geo"]["repi"] / (self.rc + self.wall))
            else:
                scale = 0.3
            cc, (ea, eb), ang = self.med_post
            rho, _ = _ellipse((X, Y), cc, ea, eb * scale, ang)
            med |= rho < 1.0
            self._med_cache[key] = med
        return self._med_cache[key]

    def _heart_masks(self, s: int, c: float) -> dict | None:
        """LV cavity, LV epicardium, RV cavity and RV free wall of slice ``s``."""
        X, Y = self.xy
        depth = float(self.depths[s])
        f = min(max(depth / 90.0, 0.0), 1.0)
        geo = self.lv_geometry(depth, c)
        if geo["repi"] <= 0.0:
            return None
        cen = self._centre(s)
        dx, dy = X - cen[0], Y - cen[1]
        rho = np.hypot(dx, dy)
        th = np.arctan2(dy, dx) - self.rv_angle  # local angle: RV at 0, anterior < 0
        rcav = geo["rcav"]
        r_epi = geo["repi"] * _wobble(th, *self._interp(self.epi_w, f))
        if rcav > 0:
            r_endo = rcav * _wobble(th, *self._interp(self.endo_w, f))
            r_epi = np.maximum(r_epi, r_endo + 5.0 + 2.0 * c)
            cav = rho < r_endo
        else:
            cav = np.zeros(X.shape, bool)
        epi = rho < r_epi
        if geo["gap"] > 0 and rcav > 0:  # mitral annulus: incomplete basal ring
            cav |= epi & (_angdiff(th, self.gap_angle) < geo["gap"] / 2)
        # RV: a crescent wrapped around the septal side, between the horns at the anterior and
        # inferior septum; its thin free wall is labelled background
        h = geo["rv_h"]
        rv_cav = np.zeros(X.shape, bool)
        rv_wall = np.zeros(X.shape, bool)
        if h > 0.5:
            phi_i, phi_a = geo["rv_span"]
            w = _wobble(th, *self._interp(self.rv_w, f))
            tw = self.rv_wall * (1.0 + 0.4 * c)
            extra = tw / max(geo["repi"], 1.0)
            r_in = r_epi + h * w * self._crescent(th, phi_i, phi_a)
            r_out = r_epi + (h * w + tw) * self._crescent(th, phi_i + extra, phi_a + extra)
            rv_cav = (rho < r_in) & ~epi
            rv_wall = (rho < r_out) & ~rv_cav & ~epi
        return {
            "cav": cav,
            "epi": epi,
            "rv_cav": rv_cav,
            "rv_wall": rv_wall,
            "th": th,
            "cen": cen,
            "geo": geo,
            "f": f,
        }

    def _draw_heart(self, img, lab, s: int, c: float, tf, tc) -> None:
        hm = self._heart_masks(s, c)
        if hm is None:
            return
        X, Y = self.xy
        sp = float(self.config.spacing)
        cav, epi, rv_cav, rv_wall = hm["cav"], hm["epi"], hm["rv_cav"], hm["rv_wall"]
        th, cen, geo, f = hm["th"], hm["cen"], hm["geo"], hm["f"]
        heart = epi | rv_cav | rv_wall
        dist = ndi.distance_transform_edt(~heart, sampling=sp)
        # patchy epicardial fat: grooves, RV free wall, more at the base (AV groove)
        fat_t = self.fat_mm * np.clip(_wobble(th, *self._interp(self.fat_w, f)) - 0.9, 0.0, 1.5)
        fat_t = fat_t * (1.0 + 0.6 * max(0.0, 0.25 - geo["u"]) / 0.25)
        fat_t = fat_t * (1.0 - 0.5 * np.cos(np.clip(th, -np.pi / 2, np.pi / 2)))  # thin on RV wall
        if geo["rv_h"] > 0.5:
            for alpha in (-geo["rv_span"][0], geo["rv_span"][1]):  # interventricular grooves
                gc = cen + (geo["repi"] + 3.0) * _unit(self.rv_angle + alpha)
                fat_t = np.where(
                    np.hypot(X - gc[0], Y - gc[1]) < 5.0, np.maximum(fat_t, 3.5), fat_t
                )
        fat = ~heart & (dist < fat_t)
        peri = ~heart & (dist >= fat_t) & (dist < fat_t + 1.2 * sp)
        img[peri] = _PERICARD
        img[fat] = _EPI_FAT * (1 + 0.06 * tf[fat])

        myo_v = self.style.myo
        img[rv_wall] = myo_v * (1 + 0.06 * tf[rv_wall])
        img[rv_cav] = _RV_BLOOD * (1 + 0.03 * tf[rv_cav] + 0.03 * tc[rv_cav])
        img[rv_cav & (tf > 2.2)] = myo_v * 1.5  # RV trabeculae
        myo = epi & ~cav
        img[myo] = myo_v * (1 + 0.06 * tf[myo] + 0.04 * tc[myo])
        img[cav] = _LV_BLOOD * (1 + 0.025 * tf[cav] + 0.03 * tc[cav])
        # endocardial trabecular layer: darker, irregular, but part of the cavity label (ACDC
        # contours follow the outer edge of the trabeculae)
        for pool, blood, width in ((cav, _LV_BLOOD, 1.6), (rv_cav, _RV_BLOOD, 1.6)):
            if pool.any():
                band = pool & (ndi.distance_transform_edt(pool, sampling=sp) <= width + c * 0.8)
                mix = np.clip(0.45 + 0.25 * tf[band], 0.15, 0.85)
                img[band] = myo_v + (blood - myo_v) * mix
        # papillary muscles and trabeculae inside the pool (labelled LV, as in ACDC)
        u, rcav = geo["u"], geo["rcav"]
        if rcav > 0 and 0.2 < u < 0.85:
            size = math.sin(math.pi * (u - 0.2) / 0.65) ** 0.5
            for ang, r in self.papillary:
                pc = cen + rcav * (0.62 - 0.1 * c) * _unit(self.rv_angle + ang)
                pm = cav & (np.hypot(X - pc[0], Y - pc[1]) < r * size * (1 + 0.15 * c))
                img[pm] = myo_v * 1.1
            for ang, r, pos in self.trabeculae:
                tcen = cen + rcav * pos * _unit(self.rv_angle + ang)
                img[cav & (np.hypot(X - tcen[0], Y - tcen[1]) < r)] = 0.5 * (myo_v + _LV_BLOOD)
        lab[myo] = 2
        lab[cav] = 1
        lab[rv_cav] = 3

    @staticmethod
    def _crescent(th: np.ndarray, phi_neg: float, phi_pos: float) -> np.ndarray:
        """Crescent thickness profile: 1 facing the RV (local angle 0), 0 at the horns, which
        lie at ``-phi_neg`` (inferior insertion) and ``+phi_pos`` (anterior insertion)."""
        t = (th + np.pi) % (2 * np.pi) - np.pi
        s = np.where(t < 0, t / phi_neg, t / phi_pos)
        return np.where(np.abs(s) < 1.0, np.cos(0.5 * np.pi * np.clip(s, -1, 1)) ** 0.7, 0.0)

    def _bias_field(self, rng: np.random.Generator, shape3) -> np.ndarray:
        nx, ny, nz = shape3
        x = np.linspace(-1, 1, nx)[:, None, None]
        y = np.linspace(-1, 1, ny)[None, :, None]
        z = np.linspace(-1, 1, nz)[None, None, :] * 0.3
        terms = [x, y, z, x * y, x**2, y**2, x * z, y * z]
        p = sum(rng.normal() * t for t in terms)
        # surface-coil brightening towards the anterior chest wall (-x, -y)
        p = p + 0.8 * np.exp(1.5 * (-(x + y) / math.sqrt(2.0) - 1.0))
        p = p - p.mean()
        p = p / (np.abs(p).max() + 1e-8)
        return (1.0 + self.style.bias * p).astype(np.float32)

    # -- volumes -------------------------------------------------------------------------------

    def render(self, c: float) -> tuple[np.ndarray, np.ndarray]:
        """Noiseless, blurred, bias-modulated canonical volume (blood ~ 1) and labels."""
        nx, ny = self.canon_shape
        nz = self.config.n_slices
        img = np.empty((nx, ny, nz), np.float32)
        lab = np.empty((nx, ny, nz), np.uint8)
        for s in range(nz):
            img[..., s], lab[..., s] = self.render_slice(s, c)
        img = ndi.gaussian_filter(img, (self.style.blur, self.style.blur, 0))
        img = np.clip(img * self.bias, 0.0, None) ** self.style.gamma
        return img.astype(np.float32), lab

    def finish(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Rician noise (magnitude of a complex Gaussian), in the canonical frame."""
        sig = self.style.noise
        re = img + rng.normal(0.0, sig, img.shape)
        im = rng.normal(0.0, sig, img.shape)
        return np.hypot(re, im).astype(np.float32)

    def scale(self, vols: list[np.ndarray]) -> list[np.ndarray]:
        """Map to the vendor's stored range (min–max [0, 1] or integer-like)."""
        st = self.style
        if st.blood is None:
            hi = max(float(v.max()) for v in vols) or 1.0
            return [(v / hi).astype(np.float32) for v in vols]
        out = [v * st.blood for v in vols]
        if st.integer:
            out = [np.round(v) for v in out]
        return [v.astype(np.float32) for v in out]

    def store(self, arr: np.ndarray) -> np.ndarray:
        """Canonical → stored in-plane orientation (turn, then flip the second axis)."""
        out = np.rot90(arr, self.turn, axes=(0, 1))
        if self.style.flip:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)


def _volumes(lab: np.ndarray, voxel_ml: float) -> tuple[float, float, float]:
    return tuple(float((lab == k).sum() * voxel_ml) for k in (1, 3, 2))  # type: ignore[return-value]


def _base_meta(scene: _Scene, affine: np.ndarray) -> dict:
    import nibabel as nib

    cfg = scene.config
    return {
        "vendor": scene.style.name,
        "style": asdict(scene.style),
        "orientation": scene.style.orientation,
        "axcodes": "".join(nib.aff2axcodes(affine)),
        "turn": scene.turn,
        "flip": scene.style.flip,
        "seed": cfg.seed,
        "anatomy": {
            "lv_radius_ed_mm": round(scene.rc, 2),
            "wall_ed_mm": round(scene.wall, 2),
            "lv_length_ed_mm": round(scene.length, 2),
            "es_radius_ratio": round(scene.r_ratio, 3),
            "es_length_ratio": round(scene.long_ratio, 3),
            "rv_angle_deg": round(math.degrees(scene.rv_angle), 1),
            "heart_centre_mm": [round(float(v), 1) for v in scene.centre],
        },
    }


def _geometry(scene: _Scene) -> tuple[np.ndarray, tuple[float, float, float]]:
    cfg = scene.config
    spacing = (float(cfg.spacing), float(cfg.spacing), float(cfg.slice_spacing))
    arng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), 7]))
    return _affine(scene.style.orientation, spacing, arng), spacing


def make_phantom(config: PhantomConfig | None = None) -> Phantom:
    """Render one synthetic ED/ES (or other phases) study; see the module docstring.

    Example:
        >>> ph = make_phantom(PhantomConfig(seed=3, shape=(80, 72), spacing=3.0, n_slices=5))
        >>> ph.meta["lv_volume_ml"]["ED"] > ph.meta["lv_volume_ml"]["ES"]
        True
    """
    config = config or PhantomConfig()
    scene = _Scene(config)
    affine, spacing = _geometry(scene)
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    noise_rng = np.random.default_rng(scene.noise_seq)
    clean, labels = {}, {}
    for phase in config.phases:
        clean[phase], labels[phase] = scene.render(PHASE_CONTRACTION[phase])
    noisy = [scene.finish(clean[p], noise_rng) for p in config.phases]
    if scene.style.blood is None:  # ACDC-like: each volume min–max scaled on its own
        noisy = [scene.scale([v])[0] for v in noisy]
    else:
        noisy = scene.scale(noisy)
    images = {p: scene.store(v) for p, v in zip(config.phases, noisy, strict=True)}
    labels = {p: scene.store(labels[p]) for p in config.phases}
    meta = _base_meta(scene, affine)
    vols = {p: _volumes(labels[p], voxel_ml) for p in config.phases}
    meta["lv_volume_ml"] = {p: round(v[0], 2) for p, v in vols.items()}
    meta["rv_volume_ml"] = {p: round(v[1], 2) for p, v in vols.items()}
    meta["myo_volume_ml"] = {p: round(v[2], 2) for p, v in vols.items()}
    if "ED" in vols and "ES" in vols:
        meta["ed_phase"], meta["es_phase"] = "ED", "ES"
        for key, i in (("lvef", 0), ("rvef", 1)):
            ed, es = vols["ED"][i], vols["ES"][i]
            meta[key] = round(100.0 * (ed - es) / ed, 2) if ed > 0 else float("nan")
    return Phantom(images, labels, affine, spacing, meta)


def make_cine(config: PhantomConfig | None = None, n_frames: int = 25) -> Cine:
    """Render a 4D cine ``(X, Y, Z, T)``: ED at frame 0, ES at ``config.es_fraction``.

    The anatomy, textures and bias are those of :func:`make_phantom` with the same config (its ED
    labels equal frame 0); the noise is drawn independently per frame.

    Example:
        >>> cine = make_cine(PhantomConfig(seed=2, shape=(64, 64), spacing=3.5, n_slices=4), 8)
        >>> cine.image.shape, cine.meta["es_frame"]
        ((64, 64, 4, 8), 3)
    """
    config = config or PhantomConfig()
    if n_frames < 2:
        raise ValueError("n_frames must be >= 2")
    scene = _Scene(config)
    affine, spacing = _geometry(scene)
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    curve = contraction_curve(n_frames, config.es_fraction)
    noise_rng = np.random.default_rng(scene.noise_seq)
    frames, labs = [], []
    for c in curve:
        img, lab = scene.render(float(c))
        frames.append(scene.finish(img, noise_rng))
        labs.append(lab)
    frames = scene.scale(frames)
    image = np.stack([scene.store(v) for v in frames], axis=-1)
    labels = np.stack([scene.store(v) for v in labs], axis=-1)
    meta = _base_meta(scene, affine)
    vols = [_volumes(labels[..., t], voxel_ml) for t in range(n_frames)]
    meta.update(
        ed_frame=0,
        es_frame=int(round(config.es_fraction * n_frames)),
        contraction=[round(float(c), 4) for c in curve],
        lv_volume_ml=[round(v[0], 2) for v in vols],
        rv_volume_ml=[round(v[1], 2) for v in vols],
        myo_volume_ml=[round(v[2], 2) for v in vols],
    )
    return Cine(image, labels, affine, spacing, meta)


def write_phantom(phantom: Phantom, folder: str | Path, name: str = "phantom") -> dict[str, Path]:
    """Write ``<name>_<PHASE>.nii.gz`` (float32) and ``<name>_<PHASE>_gt.nii.gz`` (uint8).

    Returns:
        ``{"<name>_ED": path, "<name>_ED_gt": path, ...}``.
    """
    import nibabel as nib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for phase in phantom.images:
        for key, arr, dtype in (
            (f"{name}_{phase}", phantom.images[phase], np.float32),
            (f"{name}_{phase}_gt", phantom.labels[phase], np.uint8),
        ):
            img = nib.Nifti1Image(np.asarray(arr, dtype=dtype), phantom.affine)
            img.header.set_xyzt_units("mm", "sec")
            img.set_qform(phantom.affine, code=1)
            img.set_sform(phantom.affine, code=1)
            path = folder / f"{key}.nii.gz"
            nib.save(img, str(path))
            out[key] = path
    return out
