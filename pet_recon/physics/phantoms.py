"""Random anatomical phantoms: brain, torso ("body") and the NEMA NU 2 IEC body phantom.

petrecon trains only on data it simulates, so each phantom is a small 3D anatomy, random per
seed, with the images a PET/CT or PET/MR study holds: the true tracer uptake, the 511 keV
attenuation map, a CT and a T1-weighted MR, and a label map.

Conventions
-----------
- Volumes are numpy arrays of shape ``geometry.shape`` = ``(planes, ny, nx)`` on the grid of
  :class:`~pet_recon.physics.geometry.ImageGeometry`; all shapes are defined in millimetres,
  so any matrix and pixel size work.
- Coordinates are patient LPS-like with the origin at the grid centre: ``+x`` is the
  patient's left, ``+y`` posterior (row index grows towards the back) and ``+z`` superior,
  with plane ``p`` centred at ``z = (p - (planes - 1) / 2) * plane_mm``.
- ``activity`` is the true uptake in **SUVbw units (g/ml)**: the activity concentration
  divided by (injected activity / body weight), decay-corrected to the injection time. A
  simulator gets the concentration at scan start in Bq/ml as
  ``activity * injected_Bq / (info["weight_kg"] * 1000) * exp(-ln2 * delay / half_life)``.
- Partial volume: every structure is an implicit surface ``level(x, y, z) = 0`` (negative
  inside) painted back to front with its voxel coverage. The coverage is the first-order
  box-filter estimate ``clip(0.5 - level / sum_i |d level / d x_i| * h_i, 0, 1)`` (``h_i`` the
  voxel size), which anti-aliases edges like infinite supersampling of a locally flat surface
  at the cost of one evaluation per voxel; ellipsoids smaller than about four voxels are
  instead evaluated on a 3x3x3 supersampled grid and averaged. A voxel's label is the last
  structure painted that covers at least half of it, except that a lesion (or NEMA sphere)
  labels as many voxels as its volume fills, its most covered ones, so that label volumes
  of small objects are unbiased.

Label table (:class:`Label`)
----------------------------
======  ==============  ======================================================
id      name            content
======  ==============  ======================================================
0       BACKGROUND      air outside the patient or phantom
1       SOFT_TISSUE     muscle, viscera, scalp, neck
2       FAT             subcutaneous fat
3       GREY_MATTER     cortical grey matter
4       WHITE_MATTER    cerebral and cerebellar white matter, brainstem
5       CSF             ventricles, sulcal and subarachnoid CSF, spinal canal
6       SKULL           skull
7       LUNG            lungs; the lung insert of the NEMA phantom
8       LIVER           liver
9       HEART           myocardium
10      BLOOD           blood pool: cardiac cavities, aorta, vena cava
11      KIDNEY          kidneys
12      BLADDER         urinary bladder
13      BONE            spine, ribs, pelvis, femora
14      DEEP_GREY       caudate, putamen, thalamus
15      CEREBELLUM      cerebellar cortex
16      SPLEEN          spleen
17      PHANTOM_FILL    water background compartment of the NEMA phantom
18      PHANTOM_WALL    PMMA walls of the NEMA phantom, its spheres and insert
100+    lesions         one id per lesion or NEMA sphere (``info["lesions"]``)
======  ==============  ======================================================

Sources
-------
- Attenuation at 511 keV: every tissue is given a CT number and its attenuation coefficient
  follows from the bilinear 120 kVp CT-to-511 keV transform of Carney et al., Med. Phys. 33
  (2006) 976-983 (:func:`ct_to_mu`), which reproduces NIST XCOM values: water
  ``mu/rho = 0.0960 cm^2/g`` at 511 keV, lung (0.26-0.30 g/ml) ``0.025-0.029 /cm``, cortical
  bone (ICRU, 1.92 g/ml) ``~0.17 /cm``.
- CT numbers: Hounsfield-scale values of the tissues (air -1000, inflated lung -700 to -850,
  fat -100, soft tissue 20-60, cancellous/cortical bone 300-1900).
- FDG uptake (SUVbw, 60 min p.i.): liver 2.0-2.6 and mediastinal blood pool 1.5-2.0 as the
  reference regions of Boellaard et al., EANM procedure guidelines for tumour imaging v2.0,
  EJNMMI 42 (2015) 328-354, and of PERCIST (Wahl et al., J Nucl Med 50 (2009) 122S); spleen
  1.6-2.1, muscle 0.6-1.0, subcutaneous fat 0.3-0.5, lung 0.4-0.7, marrow 0.8-1.6,
  myocardium 2-8 (fasting dependent), kidneys 3-5 and bladder 10-30 (urinary excretion);
  brain cortex 8-10, white matter 2.7-3.3, CSF 0.4-0.6 (typical adult cerebral FDG SUVs).
- Amyloid PET (18F-florbetapir/-florbetaben, 50-70 min p.i.): white matter about twice the
  cerebellar grey matter reference; cortical SUVR 1.0-1.15 when negative and 1.4-1.9 when
  positive (e.g. Clark et al., JAMA 305 (2011) 275; Barthel et al., Lancet Neurol 10 (2011)
  424).
- NEMA NU 2-2018 IEC body phantom: outer D-shaped section 300 mm x 230 mm (a 150 mm half
  circle over a 140 mm x 80 mm base with 80 mm corner radius, 3 mm PMMA wall, 214 mm long with
  10 mm end walls), lung insert of 50 mm outer diameter (4 mm wall, 0.3 g/ml filling), six
  spheres of 10, 13, 17, 22, 28 and 37 mm inner diameter and 1 mm wall on a 57.2 mm radius
  circle around the insert, centres 70 mm from the lid (dimensions as in the OpenGATE IEC
  phantom model). Boellaard et al. (2015) use a sphere-to-background ratio of 10:1; NEMA NU 2
  uses 4:1 and 8:1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
from scipy import ndimage

from pet_recon.physics.geometry import ImageGeometry

__all__ = [
    "FAMILIES",
    "LESION_BASE",
    "NEMA_SPHERE_DIAMETERS_MM",
    "BRAIN_TRACERS",
    "Label",
    "Phantom",
    "body",
    "brain",
    "ct_to_mu",
    "make_phantom",
    "nema",
]


class Label(IntEnum):
    """Label ids of :attr:`Phantom.labels` (lesions and spheres use ``LESION_BASE + i``)."""

    BACKGROUND = 0
    SOFT_TISSUE = 1
    FAT = 2
    GREY_MATTER = 3
    WHITE_MATTER = 4
    CSF = 5
    SKULL = 6
    LUNG = 7
    LIVER = 8
    HEART = 9
    BLOOD = 10
    KIDNEY = 11
    BLADDER = 12
    BONE = 13
    DEEP_GREY = 14
    CEREBELLUM = 15
    SPLEEN = 16
    PHANTOM_FILL = 17
    PHANTOM_WALL = 18


LESION_BASE = 100
"""Label id of the first lesion (brain, body) or of the 10 mm sphere (NEMA)."""

BRAIN_TRACERS = ("FDG", "amyloid+", "amyloid-")
"""Tracers :func:`brain` simulates."""


@dataclass(frozen=True, eq=False)
class Phantom:
    """A phantom: true uptake, attenuation, CT, MR and labels on one grid.

    Attributes
    ----------
    geometry : ImageGeometry
        The grid; every array has shape ``geometry.shape`` = ``(planes, ny, nx)``.
    activity : numpy.ndarray
        float32, true uptake in SUVbw units (g/ml); see the module notes for Bq/ml.
    mu : numpy.ndarray
        float32, linear attenuation coefficient at 511 keV in 1/cm.
    ct : numpy.ndarray
        float32, CT image in Hounsfield units (white noise of 10 HU standard deviation).
    mr : numpy.ndarray
        float32, T1-weighted-like MR in arbitrary units (about 0-1): smooth multiplicative
        bias field, Rician noise and a small rigid misregistration to the other images
        (``info["mr_misregistration"]``).
    labels : numpy.ndarray
        int16, :class:`Label` ids and lesion ids ``>= LESION_BASE``.
    info : dict
        ``family``, ``seed``, ``tracer``, ``activity_units``, ``weight_kg`` (the SUV
        normalisation), ``lesions`` (a list of dicts with ``label``, ``centre_mm`` (x, y, z),
        ``diameter_mm`` (equal-volume sphere), ``suv``, ``contrast`` (to the host tissue)
        and ``host``) and ``mr_misregistration`` (``rotation_deg`` about x, y, z and
        ``translation_mm``, see :func:`_finish`); brain and body: the patient's
        ``height_m``, ``sex`` ("M" or "F") and ``age``; brain: ``amyloid_status``
        ("positive", "negative" or None), ``cortical_suvr`` (amyloid), ``hypometabolic``
        (FDG: ``centre_mm``, ``radius_mm``, ``reduction``); body: ``region`` ("thorax",
        "abdomen" or "pelvis"); nema: ``ratio``, ``position_mm``, ``rotation_deg``.
    """

    geometry: ImageGeometry
    activity: np.ndarray
    mu: np.ndarray
    ct: np.ndarray
    mr: np.ndarray
    labels: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("activity", "mu", "ct", "mr", "labels"):
            array = getattr(self, name)
            if array.shape != self.geometry.shape:
                raise ValueError(f"{name} has shape {array.shape}, expected {self.geometry.shape}")
            expected = np.int16 if name == "labels" else np.float32
            if array.dtype != expected:
                raise ValueError(f"{name} has dtype {array.dtype}, expected {np.dtype(expected)}")


def ct_to_mu(hu: float | np.ndarray) -> float | np.ndarray:
    """Attenuation coefficient at 511 keV of a CT number (bilinear transform, 120 kVp).

    ``mu = 9.6e-5 * (HU + 1000)`` below 47 HU (air-water mixtures) and
    ``5.10e-5 * (HU + 1000) + 4.71e-2`` above (water-bone mixtures), Carney et al.,
    Med. Phys. 33 (2006) 976-983, table 1.

    Parameters
    ----------
    hu : float or numpy.ndarray
        CT number(s) in Hounsfield units.

    Returns
    -------
    float or numpy.ndarray
        ``mu`` in 1/cm, same shape as ``hu`` (float64 for arrays).
    """
    ct = np.asarray(hu, dtype=np.float64) + 1000.0
    mu = np.where(ct < 1047.0, 9.6e-5 * ct, 5.10e-5 * ct + 4.71e-2)
    mu = np.maximum(mu, 0.0)
    return float(mu) if mu.ndim == 0 else mu


@dataclass(frozen=True)
class _Tissue:
    """CT number (HU) and T1-weighted MR intensity (a.u.) of a material."""

    hu: float
    mr: float

    @property
    def mu(self) -> float:
        """Attenuation coefficient at 511 keV in 1/cm."""
        return float(ct_to_mu(self.hu))


_SOFT = _Tissue(40.0, 0.35)
_SCALP = _Tissue(-20.0, 0.70)  # skin and subcutaneous fat: bright on T1
_FAT = _Tissue(-100.0, 1.00)
_GM = _Tissue(38.0, 0.55)
_WM = _Tissue(28.0, 0.85)
_DEEP_GM = _Tissue(36.0, 0.63)
_CSF = _Tissue(8.0, 0.10)
_SKULL = _Tissue(1200.0, 0.10)
_LUNG = _Tissue(-720.0, 0.04)
_LIVER = _Tissue(55.0, 0.50)
_SPLEEN = _Tissue(45.0, 0.38)
_MYOCARDIUM = _Tissue(40.0, 0.40)
_BLOOD = _Tissue(40.0, 0.25)
_KIDNEY = _Tissue(30.0, 0.42)
_URINE = _Tissue(5.0, 0.08)
_BONE = _Tissue(700.0, 0.55)  # vertebrae and pelvis: cortex and fatty marrow
_TUMOUR = _Tissue(40.0, 0.30)
_WATER = _Tissue(0.0, 0.25)
_PMMA = _Tissue(120.0, 0.0)
_LUNG_INSERT = _Tissue(-700.0, 0.0)  # polystyrene beads, 0.3 g/ml


# --------------------------------------------------------------------------- primitives


def _z_mm(geometry: ImageGeometry) -> np.ndarray:
    """Plane-centre z coordinates, shape ``(planes,)``, float64, mm."""
    return (np.arange(geometry.n_planes) - (geometry.n_planes - 1) / 2.0) * geometry.plane_mm


def _smoothstep(t: np.ndarray) -> np.ndarray:
    """``3t^2 - 2t^3`` on ``t`` clipped to [0, 1]: a C1 ramp from 0 to 1."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _coverage(*levels: np.ndarray) -> np.ndarray:
    """Fraction of each voxel inside all of ``level < 0`` (first-order box filter).

    Each level's change across one voxel along each axis is estimated by central differences,
    so a level may be in any unit; axes of length 1 are treated as unresolved. The coverage of
    an intersection is the product of the coverages (exact for orthogonal faces), so levels of
    lower dimension (e.g. ``(planes, 1, 1)`` for a z-range) cost little.
    """
    total: np.ndarray | None = None
    for level in levels:
        width = np.zeros_like(level)
        for axis in range(3):
            if level.shape[axis] > 1:
                width += np.abs(np.gradient(level, axis=axis))
        cover = 0.5 - level / np.maximum(width, 1e-6)
        np.clip(cover, 0.0, 1.0, out=cover)
        total = cover if total is None else total * cover
    if total is None:
        raise ValueError("no level given")
    return total


def _ellipsoid_level(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    centre: tuple[float, float, float],
    radii: tuple[float, float, float],
    yaw_deg: float,
) -> np.ndarray:
    """Normalised radius minus one of an ellipsoid turned by ``yaw_deg`` about z (x to y)."""
    cos, sin = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    dx, dy = x - centre[0], y - centre[1]
    u = (cos * dx + sin * dy) / radii[0]
    v = (cos * dy - sin * dx) / radii[1]
    w = (z - centre[2]) / radii[2]
    return np.sqrt(u * u + v * v + w * w) - 1.0


def _superellipse_level(
    x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, power: float
) -> np.ndarray:
    """``(|x/a|^n + |y/b|^n)^(1/n) - 1``: a rounded rectangle for ``n > 2``."""
    return (np.abs(x / a) ** power + np.abs(y / b) ** power) ** (1.0 / power) - 1.0


def _depth(x: np.ndarray, y: np.ndarray, z: np.ndarray, radii: tuple[Any, Any, Any]) -> np.ndarray:
    """Approximate depth below the surface of an axis-aligned ellipsoid at the origin, mm.

    ``(1 - rho) / |grad rho|`` with ``rho`` the normalised radius: exact on the surface,
    negative outside, and close to the true distance within a few centimetres of it.
    """
    u, v, w = x / radii[0], y / radii[1], z / radii[2]
    rho = np.sqrt(u * u + v * v + w * w)
    gu, gv, gw = u / radii[0], v / radii[1], w / radii[2]
    grad = np.sqrt(gu * gu + gv * gv + gw * gw) / np.maximum(rho, 1e-6)
    return (1.0 - rho) / np.maximum(grad, 1e-9)


def _random_field(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    scale_mm: float,
    ring: bool = False,
) -> np.ndarray:
    """Smooth Gaussian random field, zero mean and unit standard deviation, float32.

    Low-pass (``ring=False``): white noise filtered by a Gaussian of ``scale_mm`` standard
    deviation. Band-pass (``ring=True``): spectrum concentrated on the shell of wavelength
    ``scale_mm`` (+-35 %), whose level sets form a labyrinth like cortical folds.
    """
    noise = rng.standard_normal(shape, dtype=np.float32)
    fz = np.fft.fftfreq(shape[0], spacing[0])[:, None, None]
    fy = np.fft.fftfreq(shape[1], spacing[1])[None, :, None]
    fx = np.fft.rfftfreq(shape[2], spacing[2])[None, None, :]
    f = np.sqrt(fz * fz + fy * fy + fx * fx) * scale_mm
    gain = np.exp(-0.5 * ((f - 1.0) / 0.35) ** 2) if ring else np.exp(-2.0 * (np.pi * f) ** 2)
    out = np.fft.irfftn(np.fft.rfftn(noise) * gain, s=shape, axes=(0, 1, 2)).astype(np.float32)
    out -= out.mean()
    out /= max(float(out.std()), 1e-12)
    return out


def _profile(rng: np.random.Generator, s: np.ndarray, amplitude: float) -> np.ndarray:
    """``1 + amplitude * (random smooth function of s)``: three cosines, 80-400 mm periods."""
    out = np.ones_like(s)
    for period in rng.uniform(80.0, 400.0, size=3):
        out += (
            amplitude / math.sqrt(1.5) * np.cos(2 * np.pi * s / period + rng.uniform(0, 2 * np.pi))
        )
    return out


def _subsample(coords: np.ndarray, step: float, factor: int) -> np.ndarray:
    """Sub-voxel sample positions of voxels centred at ``coords``, float32."""
    offsets = ((np.arange(factor) + 0.5) / factor - 0.5) * step
    return (coords[:, None] + offsets[None, :]).ravel().astype(np.float32)


class _Canvas:
    """Volumes that structures are painted into, back to front, with partial volume."""

    def __init__(self, geometry: ImageGeometry) -> None:
        self.geometry = geometry
        self.spacing = (geometry.plane_mm, geometry.pixel_mm, geometry.pixel_mm)
        self.axes = (_z_mm(geometry), geometry.y_mm(), geometry.x_mm())
        self.z = self.axes[0].astype(np.float32)[:, None, None]
        self.y = self.axes[1].astype(np.float32)[None, :, None]
        self.x = self.axes[2].astype(np.float32)[None, None, :]
        shape = geometry.shape
        self.activity = np.zeros(shape, np.float32)
        self.mu = np.zeros(shape, np.float32)
        self.ct = np.full(shape, -1000.0, np.float32)
        self.mr = np.zeros(shape, np.float32)
        self.labels = np.zeros(shape, np.int16)

    def paint(
        self, label: int, tissue: _Tissue, suv: float | np.ndarray, *levels: np.ndarray
    ) -> None:
        """Paint where all ``levels`` (broadcastable to the grid) are negative.

        ``suv`` is a scalar or grid-shaped.
        """
        self.fill(label, tissue, suv, _coverage(*levels))

    def paint_ellipsoid(
        self,
        centre: tuple[float, float, float],
        radii: tuple[float, float, float],
        label: int,
        tissue: _Tissue,
        suv: float,
        yaw_deg: float = 0.0,
        within: np.ndarray | None = None,
    ) -> None:
        """Paint an ellipsoid (centre x, y, z and radii in mm) times the coverage ``within``.

        Only the ellipsoid's bounding box is evaluated; ellipsoids smaller than four voxels
        are supersampled 3x3x3. ``within`` (broadcastable to the grid) clips the ellipsoid to
        another structure, e.g. an organ to the body.
        """
        reach_xy = max(radii[0], radii[1])
        reach = (radii[2], reach_xy, reach_xy)
        box = []
        for axis, (c, r) in enumerate(zip((centre[2], centre[1], centre[0]), reach, strict=True)):
            margin = r + self.spacing[axis]
            lo = int(np.searchsorted(self.axes[axis], c - margin))
            hi = int(np.searchsorted(self.axes[axis], c + margin, side="right"))
            if lo >= hi:
                return
            box.append(slice(lo, hi))
        region = (box[0], box[1], box[2])
        factor = 3 if min(radii) < 4 * max(self.spacing) else 1
        z, y, x = (
            _subsample(self.axes[axis][region[axis]], self.spacing[axis], factor)
            for axis in range(3)
        )
        level = _ellipsoid_level(
            x[None, None, :], y[None, :, None], z[:, None, None], centre, radii, yaw_deg
        )
        cover = _coverage(level)
        if factor > 1:
            nz, ny, nx = (n // factor for n in cover.shape)
            cover = cover.reshape(nz, factor, ny, factor, nx, factor).mean(axis=(1, 3, 5))
        if within is not None:
            cover = cover * np.broadcast_to(within, self.labels.shape)[region]
        self.fill(label, tissue, suv, cover, region)

    def fill(
        self,
        label: int,
        tissue: _Tissue,
        suv: float | np.ndarray,
        cover: np.ndarray,
        region: tuple[slice, slice, slice] = (slice(None), slice(None), slice(None)),
    ) -> None:
        """Composite a structure of voxel coverage ``cover`` (shape of ``region``) on top.

        ``suv`` is a scalar or has the shape of ``region``.
        """
        for volume, value in (
            (self.activity, suv),
            (self.mu, tissue.mu),
            (self.ct, tissue.hu),
            (self.mr, tissue.mr),
        ):
            view = volume[region]
            view += cover * (value - view)
        labels = self.labels[region]
        if label >= LESION_BASE:
            # A lesion owns as many voxels as it fills, its most covered ones, at least one.
            flat = np.broadcast_to(cover, labels.shape).ravel()
            count = max(1, round(float(flat.sum())))
            owned = np.zeros(flat.size, bool)
            owned[np.argpartition(flat, flat.size - count)[flat.size - count :]] = True
            labels[owned.reshape(labels.shape)] = label
        else:
            labels[np.broadcast_to(cover >= 0.5, labels.shape)] = label


def _draw_patient(
    rng: np.random.Generator, weight_kg: float | None, height_m: float | None
) -> dict[str, Any]:
    """Sex, age, height (1.5-1.95 m) and weight (50-120 kg); given values override draws.

    The same number of random draws is made either way, so a seed gives the same anatomy
    whatever is overridden.
    """
    sex = "M" if rng.random() < 0.5 else "F"
    age = int(rng.integers(25, 86))
    height = float(np.clip(rng.normal(1.76 if sex == "M" else 1.63, 0.07), 1.5, 1.95))
    bmi = float(rng.lognormal(math.log(26.0), 0.17))
    if height_m is not None:
        if not 0.5 < height_m < 2.5:
            raise ValueError(f"height_m={height_m} is not a plausible height in metres")
        height = float(height_m)
    if weight_kg is not None:
        if not 20.0 < weight_kg < 300.0:
            raise ValueError(f"weight_kg={weight_kg} is not a plausible weight in kg")
        weight = float(weight_kg)
    else:
        weight = float(np.clip(bmi * height * height, 50.0, 120.0))
    return {"sex": sex, "age": age, "height_m": height, "weight_kg": weight}


def _place_lesions(
    canvas: _Canvas,
    rng: np.random.Generator,
    count: int,
    hosts: dict[int, tuple[str, float]],
    diameter_mm: tuple[float, float],
    contrast: tuple[float, float],
    min_depth_mm: np.ndarray | None = None,
    max_suv: float = math.inf,
) -> list[dict[str, Any]]:
    """Paint ``count`` hot ellipsoidal lesions centred in random voxels of the host labels.

    ``hosts`` maps a host label to its name and uptake; the lesion uptake is ``contrast``
    times the host's, at most ``max_suv``. Diameters are log-uniform; lesions do not overlap
    each other and lie inside the slab; with ``min_depth_mm`` (a grid of depths below the
    body surface) a lesion stays inside the body. Large lesions (> 25 mm) have a 50 % chance
    of a necrotic core at host uptake. Fewer than ``count`` lesions result when no room is
    found in ``20 * count`` attempts.
    """
    lesions: list[dict[str, Any]] = []
    candidates = {label: np.flatnonzero(canvas.labels == label) for label in hosts}
    candidates = {label: idx for label, idx in candidates.items() if idx.size > 0}
    half = canvas.geometry.n_planes * canvas.geometry.plane_mm / 2.0
    attempts = 0
    while len(lesions) < count and candidates and attempts < 20 * count:
        attempts += 1
        host = list(candidates)[int(rng.integers(len(candidates)))]
        diameter = float(np.exp(rng.uniform(*np.log(diameter_mm))))
        flat = int(candidates[host][int(rng.integers(candidates[host].size))])
        index = np.unravel_index(flat, canvas.labels.shape)
        jitter = rng.uniform(-0.5, 0.5, size=3)
        centre = tuple(
            float(canvas.axes[axis][index[axis]] + jitter[axis] * canvas.spacing[axis])
            for axis in (2, 1, 0)
        )
        if abs(centre[2]) > half - min(diameter / 2, half / 2):
            continue  # keep lesions inside the slab
        if min_depth_mm is not None and min_depth_mm[index] < diameter / 2 + 5.0:
            continue
        if any(
            math.dist(centre, other["centre_mm"]) < (diameter + other["diameter_mm"]) / 2 + 2.0
            for other in lesions
        ):
            continue
        shape = rng.uniform(0.8, 1.2, size=3)
        shape /= np.cbrt(np.prod(shape))
        radii = (diameter / 2 * shape[0], diameter / 2 * shape[1], diameter / 2 * shape[2])
        yaw = float(rng.uniform(0.0, 180.0))
        name, host_suv = hosts[host]
        ratio = min(float(rng.uniform(*contrast)), max_suv / host_suv)
        label = LESION_BASE + len(lesions)
        canvas.paint_ellipsoid(centre, radii, label, _TUMOUR, ratio * host_suv, yaw)
        if diameter > 25.0 and rng.random() < 0.5:
            core = tuple(0.45 * r for r in radii)
            canvas.paint_ellipsoid(centre, core, label, _TUMOUR, host_suv, yaw)
        lesions.append(
            {
                "label": label,
                "centre_mm": centre,
                "diameter_mm": diameter,
                "suv": ratio * host_suv,
                "contrast": ratio,
                "host": name,
            }
        )
    return lesions


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation ``Rz @ Ry @ Rx`` (3x3, acting on x, y, z) for angles about x, y, z."""
    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _finish(
    canvas: _Canvas, rng: np.random.Generator, info: dict[str, Any], texture: float
) -> Phantom:
    """Uptake texture, CT noise and the MR acquisition; wrap everything as a :class:`Phantom`.

    ``texture`` is the standard deviation of a smooth (4 mm) multiplicative uptake
    heterogeneity. The MR shows the anatomy moved by a rigid transform: the point ``p`` of the
    other images (mm, about the grid centre) appears at ``R p + t`` in ``mr``, with ``R``
    rotating by ``rotation_deg`` about x, y then z and ``t = translation_mm`` (x, y, z).
    """
    geometry, spacing = canvas.geometry, canvas.spacing
    activity = canvas.activity
    if texture > 0:
        activity *= 1.0 + texture * _random_field(rng, geometry.shape, spacing, 4.0)
        np.maximum(activity, 0.0, out=activity)
    ct = canvas.ct + rng.normal(0.0, 10.0, geometry.shape).astype(np.float32)

    angles = np.clip(rng.normal(0.0, 0.7, size=3), -2.0, 2.0)
    voxel_xyz = np.array([geometry.pixel_mm, geometry.pixel_mm, geometry.plane_mm])
    shift = np.clip(rng.normal(0.0, 0.4, size=3), -1.2, 1.2) * voxel_xyz
    flip = np.eye(3)[::-1]  # (x, y, z) <-> (z, y, x)
    rot = flip @ _rotation(angles) @ flip
    step = np.array(spacing)
    matrix = (rot.T * step[None, :]) / step[:, None]  # S^-1 R^T S in voxel units
    centre = (np.array(geometry.shape) - 1) / 2.0
    offset = centre - matrix @ centre - (rot.T @ (flip @ shift)) / step
    moved = ndimage.affine_transform(canvas.mr, matrix, offset, order=1, mode="nearest")
    bias = np.exp(rng.uniform(0.1, 0.25) * _random_field(rng, geometry.shape, spacing, 40.0))
    sigma = rng.uniform(0.015, 0.03)
    real = moved * bias + rng.normal(0.0, sigma, geometry.shape)
    imag = rng.normal(0.0, sigma, geometry.shape)
    mr = np.sqrt(real * real + imag * imag).astype(np.float32)
    info["mr_misregistration"] = {
        "rotation_deg": tuple(float(v) for v in angles),
        "translation_mm": tuple(float(v) for v in shift),
    }
    info["activity_units"] = "SUVbw (g/ml)"
    return Phantom(geometry, activity, canvas.mu, ct, mr, canvas.labels, info)


# --------------------------------------------------------------------------- brain


def brain(geometry: ImageGeometry, seed: int, tracer: str = "FDG") -> Phantom:
    """A random adult head: scalp, skull, CSF, folded cortex, white and deep grey matter.

    The cerebrum is an ellipsoid (flatter below) with a cortical ribbon 2.5-3.2 mm thick whose
    gyri and sulci follow the level sets of a band-passed 3D random field (22 mm wavelength),
    an interhemispheric fissure down to the corpus callosum, lateral and third ventricles,
    caudate, putamen and thalamus, a cerebellum with a white matter core, the brainstem and
    the neck. Atrophy (sulcal and subarachnoid CSF, ventricle size) grows with the drawn age.
    The vertex is placed near the top plane; slabs shorter than the head cover its middle.

    Parameters
    ----------
    geometry : ImageGeometry
        Grid; a field of view of at least 220 mm holds the whole head.
    seed : int
        Seed of :func:`numpy.random.default_rng`: anatomy, uptake and lesions.
    tracer : {"FDG", "amyloid+", "amyloid-"}
        FDG: grey matter SUV 8-10, white matter 2.7-3.3, CSF 0.4-0.6, scalp 0.8-1.2, and
        1-2 hypometabolic cortical regions (30-50 % reduction). Amyloid: cerebellar grey
        matter 1.0-1.4 (the reference), white matter 2.0-2.4 times that, cortical SUVR
        1.4-1.9 with +-10 % regional variation when positive, 1.0-1.15 when negative.

    Returns
    -------
    Phantom
        With 1-3 hot lesions (4-15 mm, 1.5-3 times the host tissue) in grey, white or deep
        grey matter.
    """
    if tracer not in BRAIN_TRACERS:
        raise ValueError(f"tracer must be one of {BRAIN_TRACERS}, got {tracer!r}")
    rng = np.random.default_rng(seed)
    info: dict[str, Any] = {"family": "brain", "seed": seed, "tracer": tracer}
    info.update(_draw_patient(rng, None, None))
    atrophy = float(np.clip((info["age"] - 50) / 35.0, 0.0, 1.0))
    canvas = _Canvas(geometry)
    shape, spacing = geometry.shape, canvas.spacing

    # Uptake (SUVbw).
    if tracer == "FDG":
        gm = rng.uniform(8.0, 10.0)
        wm, csf, scalp = rng.uniform(2.7, 3.3), rng.uniform(0.4, 0.6), rng.uniform(0.8, 1.2)
        deep, cerebellum, skull = gm * rng.uniform(0.9, 1.05), gm * rng.uniform(0.75, 0.9), 0.5
        info["amyloid_status"] = None
    else:
        cerebellum = rng.uniform(1.0, 1.4)
        wm = cerebellum * rng.uniform(2.0, 2.4)
        positive = tracer == "amyloid+"
        suvr = rng.uniform(1.4, 1.9) if positive else rng.uniform(1.0, 1.15)
        gm = cerebellum * suvr
        deep = cerebellum * (1.5 if positive else 1.2)
        csf, scalp, skull = 0.3 * cerebellum, 0.6 * cerebellum, 0.4 * cerebellum
        info["amyloid_status"] = "positive" if positive else "negative"
        info["cortical_suvr"] = float(suvr)

    # Pose and size.
    k = rng.uniform(0.92, 1.05) * (0.96 if info["sex"] == "F" else 1.0)
    a, b = 68.0 * k * rng.uniform(0.97, 1.03), 84.0 * k * rng.uniform(0.97, 1.03)
    c_up, c_down = 62.0 * k * rng.uniform(0.97, 1.03), 45.0 * k
    t_csf = rng.uniform(1.0, 2.0) + 1.5 * atrophy
    t_skull, t_scalp = rng.uniform(5.0, 8.0), rng.uniform(4.0, 7.0)
    half = geometry.n_planes * geometry.plane_mm / 2.0
    z0 = max(half - (c_up + t_csf + t_skull + t_scalp) - rng.uniform(0.0, 15.0), -half / 2.0)
    x0, y0 = rng.uniform(-5.0, 5.0), rng.uniform(0.0, 10.0)
    yaw = float(np.clip(rng.normal(0.0, 4.0), -10.0, 10.0))
    cos, sin = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    dx, dy = canvas.x - x0, canvas.y - y0
    lx, ly, lz = cos * dx + sin * dy, cos * dy - sin * dx, canvas.z - z0  # head frame

    def world(px: float, py: float, pz: float) -> tuple[float, float, float]:
        return (x0 + cos * px - sin * py, y0 + sin * px + cos * py, z0 + pz)

    # Depths below the cerebrum, cerebellum and intracranial surfaces (mm, positive inside).
    c_cerebrum = np.where(lz > 0, np.float32(c_up), np.float32(c_down))
    d_cerebrum = _depth(lx, ly, lz, (a, b, c_cerebrum))
    cb_y, cb_z, cb_r = 40.0 * k, -38.0 * k, (52.0 * k, 32.0 * k, 24.0 * k)
    d_cerebellum = _depth(lx, ly - cb_y, lz - cb_z, cb_r)
    d_cranium = np.maximum(d_cerebrum, d_cerebellum)

    # Scalp and neck, skull, CSF.
    neck = _superellipse_level(lx, ly - 12.0 * k, 55.0 * k, 68.0 * k, 2.0)
    canvas.paint(Label.SOFT_TISSUE, _SOFT, scalp, neck, lz + 30.0 * k)
    outer = t_csf + t_skull + t_scalp
    canvas.paint(Label.SOFT_TISSUE, _SCALP, scalp, -(d_cranium + outer))
    canvas.paint(Label.SKULL, _SKULL, skull, -(d_cranium + t_csf + t_skull))
    canvas.paint(Label.CSF, _CSF, csf, -(d_cranium + t_csf))

    # Cortex: depth below the outer surface or the interhemispheric fissure, which reaches
    # the corpus callosum centrally and splits the frontal and occipital poles completely.
    floor = 18.0 * k - 70.0 * k * _smoothstep((np.abs(ly) - 40.0 * k) / (25.0 * k))
    d_fissure = np.abs(lx) - 1.0 + np.maximum(floor - lz, 0.0)
    d_cortex = np.minimum(d_cerebrum, d_fissure)
    # Sulci lie on the zero surfaces of a band-passed random field: CSF where |field| < 0.15
    # (about 1.5 mm wide, wider with atrophy) down to the sulcal depth, grey matter lining
    # them where |field| < 0.8 and over the crowns, white matter in the gyral cores.
    folds = np.abs(_random_field(rng, shape, spacing, 22.0, ring=True))
    sulcus_depth = rng.uniform(12.0, 20.0) * (1.0 + 0.3 * atrophy)
    ribbon = rng.uniform(2.5, 3.2)
    csf_width = 0.15 + 0.1 * atrophy
    pial = sulcus_depth * _smoothstep((csf_width - folds) / (0.5 * csf_width))
    white = ribbon + (sulcus_depth + ribbon) * _smoothstep(1.0 - folds / 0.8)
    gm_suv = np.full(shape, gm, np.float32)
    info["hypometabolic"] = []
    if tracer == "FDG":
        for _ in range(int(rng.integers(1, 3))):
            cos_t = rng.uniform(-0.2, 0.8)
            phi = rng.uniform(0.0, 2 * np.pi)
            sin_t = math.sqrt(1.0 - cos_t * cos_t)
            local = (0.85 * a * sin_t * math.cos(phi), 0.85 * b * sin_t * math.sin(phi))
            centre = world(local[0], local[1], 0.85 * c_up * cos_t)
            radius, reduction = rng.uniform(20.0, 35.0), rng.uniform(0.3, 0.5)
            dist2 = (
                (canvas.x - centre[0]) ** 2
                + (canvas.y - centre[1]) ** 2
                + (canvas.z - centre[2]) ** 2
            )
            gm_suv *= 1.0 - reduction / (1.0 + (dist2 / radius**2) ** 3)
            info["hypometabolic"].append(
                {"centre_mm": centre, "radius_mm": float(radius), "reduction": float(reduction)}
            )
    elif tracer == "amyloid+":
        gm_suv *= 1.0 + 0.1 * _random_field(rng, shape, spacing, 15.0)
    canvas.paint(Label.GREY_MATTER, _GM, gm_suv, pial - d_cortex)
    canvas.paint(Label.WHITE_MATTER, _WM, wm, white - d_cortex)

    # Cerebellum with its white matter core, brainstem.
    canvas.paint(Label.CEREBELLUM, _GM, cerebellum, -d_cerebellum)
    core = (0.45 * cb_r[0], 0.4 * cb_r[1], 0.4 * cb_r[2])
    canvas.paint_ellipsoid(world(0.0, cb_y, cb_z), core, Label.WHITE_MATTER, _WM, wm, yaw)
    stem = _superellipse_level(lx, ly - 18.0 * k, 13.0 * k, 11.0 * k, 2.0)
    canvas.paint(Label.WHITE_MATTER, _WM, 1.3 * wm, stem, lz + 10.0 * k)

    # Deep grey matter, then the ventricles.
    for px, py, pz, radii in (
        (13.0, -14.0, 12.0, (5.0, 12.0, 9.0)),  # caudate head
        (24.0, -2.0, 2.0, (6.0, 16.0, 11.0)),  # putamen
        (10.0, 14.0, 4.0, (9.0, 13.0, 9.0)),  # thalamus
    ):
        for side in (-1.0, 1.0):
            scaled = (radii[0] * k, radii[1] * k, radii[2] * k)
            centre = world(side * px * k, py * k, pz * k)
            canvas.paint_ellipsoid(centre, scaled, Label.DEEP_GREY, _DEEP_GM, deep, yaw)
    vent = (1.0 + 0.6 * atrophy) * rng.uniform(0.8, 1.2)
    for side in (-1.0, 1.0):
        centre = world(side * 9.0 * k, 2.0 * k, 14.0 * k)
        radii = (4.0 * k * vent, 28.0 * k, 7.0 * k * vent)
        canvas.paint_ellipsoid(centre, radii, Label.CSF, _CSF, csf, yaw - side * 8.0)
    third = (1.5 * k * vent, 12.0 * k, 7.0 * k)
    canvas.paint_ellipsoid(world(0.0, 8.0 * k, 2.0 * k), third, Label.CSF, _CSF, csf, yaw)

    hosts = {
        Label.GREY_MATTER: ("grey matter", gm),
        Label.WHITE_MATTER: ("white matter", wm),
        Label.DEEP_GREY: ("deep grey matter", deep),
    }
    count = int(rng.integers(1, 4))
    info["lesions"] = _place_lesions(canvas, rng, count, hosts, (4.0, 15.0), (1.5, 3.0))
    return _finish(canvas, rng, info, texture=0.05)


# --------------------------------------------------------------------------- body

# Reference torso (1.75 m, 75 kg) along the anatomical axis s (mm, superior positive, 0 at
# the dome of the liver): relative cross-section area, width/depth ratio, fat thickness.
_BODY_S = np.array([-700.0, -480.0, -280.0, -120.0, 60.0, 180.0, 260.0, 330.0])
_BODY_AREA = np.array([1.00, 1.12, 0.95, 1.00, 1.02, 0.95, 0.70, 0.40])
_BODY_ASPECT = np.array([1.35, 1.45, 1.30, 1.30, 1.45, 1.55, 1.50, 1.20])
_BODY_FAT = np.array([1.0, 1.1, 1.2, 1.2, 0.7, 0.6, 0.6, 0.6])
_BODY_POWER = 2.4  # superellipse exponent of the outline
_AREA_PER_KG_PER_M = 1500.0  # mm^2 of mean torso section per (kg / m): 643 cm^2 at 75 kg, 1.75 m
_REGIONS = {"thorax": 80.0, "abdomen": -110.0, "pelvis": -430.0}  # slab centre s, mm


def _outline(
    s: np.ndarray, weight: float, height: float, bmi: float, female: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outer half-width, half-depth and fat thickness (mm) of the torso at positions ``s``.

    Subcutaneous fat grows by 2 mm per BMI unit (5 mm more for women) from 6 mm at BMI 20.
    """
    power = _BODY_POWER
    kappa = 4.0 * math.gamma(1.0 + 1.0 / power) ** 2 / math.gamma(1.0 + 2.0 / power)
    area = _AREA_PER_KG_PER_M * weight / height * np.interp(s, _BODY_S, _BODY_AREA)
    aspect = np.interp(s, _BODY_S, _BODY_ASPECT)
    half_width = np.sqrt(area * aspect / kappa)
    base = np.clip(6.0 + 2.0 * (bmi - 20.0), 4.0, 50.0) + (5.0 if female else 0.0)
    fat = base * np.interp(s, _BODY_S, _BODY_FAT)
    return half_width, half_width / aspect, fat


def body(
    geometry: ImageGeometry,
    seed: int,
    weight_kg: float | None = None,
    height_m: float | None = None,
) -> Phantom:
    """A random adult torso slab: thorax, upper abdomen or pelvis, drawn at random.

    The outline is a rounded rectangle (superellipse) whose area follows
    ``15 cm^2 * weight[kg] / height[m]`` times a smooth profile along z, with a subcutaneous
    fat layer that thickens with BMI. Inside: ribs, lungs, heart (myocardium and cavities),
    aorta and vena cava, liver, spleen, kidneys, bladder (size and uptake random), spine with
    discs and canal, pelvis and femora, as ellipsoids and cylinders present in their z-range.
    Organ positions scale with the height (z) and the lean cross-section (x, y).

    Parameters
    ----------
    geometry : ImageGeometry
        Grid; a 600 mm field of view holds even heavy patients (a smaller one crops them).
    seed : int
        Seed of :func:`numpy.random.default_rng`.
    weight_kg, height_m : float, optional
        Patient size; drawn (sex-dependent height 1.5-1.95 m, BMI about 26, weight 50-120 kg)
        when not given. The same seed gives the same anatomy for any given size.

    Returns
    -------
    Phantom
        With 2-6 tumours (5-40 mm, tumour-to-host uptake 2-15, SUV at most 30) in the lungs,
        liver or soft tissue present in the slab.
    """
    rng = np.random.default_rng(seed)
    info: dict[str, Any] = {"family": "body", "seed": seed, "tracer": "FDG"}
    info.update(_draw_patient(rng, weight_kg, height_m))
    weight, height = info["weight_kg"], info["height_m"]
    bmi = weight / height**2
    region = str(rng.choice(list(_REGIONS)))
    info["region"] = region
    hz = height / 1.75
    s_centre = hz * (_REGIONS[region] + rng.uniform(-25.0, 25.0))
    canvas = _Canvas(geometry)
    z = canvas.z

    suv = {
        "fat": rng.uniform(0.3, 0.5),
        "soft": rng.uniform(0.6, 1.0),
        "lung": rng.uniform(0.4, 0.7),
        "liver": rng.uniform(2.0, 2.6),
        "spleen": rng.uniform(1.6, 2.1),
        "blood": rng.uniform(1.5, 2.0),
        "heart": float(np.exp(rng.uniform(math.log(2.0), math.log(8.0)))),
        "kidney": rng.uniform(3.0, 5.0),
        "bladder": rng.uniform(10.0, 30.0),
        "bone": rng.uniform(0.8, 1.6),
        "csf": rng.uniform(0.3, 0.6),
    }

    # Outline along z (s: reference anatomical position of each plane).
    s = (z[:, 0, 0] + s_centre) / hz
    female = info["sex"] == "F"
    half_width, half_depth, fat = _outline(s, weight, height, bmi, female)
    half_width *= _profile(rng, s, 0.03)
    half_depth *= _profile(rng, s, 0.03)
    x0, y0 = rng.uniform(-5.0, 5.0), rng.uniform(-8.0, 8.0)
    dx, dy = canvas.x - x0, canvas.y - y0
    col = (slice(None), None, None)
    w_out, d_out, t_fat = half_width[col], half_depth[col], fat[col]
    outline = _superellipse_level(dx, dy, w_out, d_out, _BODY_POWER)
    canvas.paint(Label.FAT, _FAT, suv["fat"], outline)
    w_in, d_in = w_out - t_fat, d_out - t_fat
    lean = _coverage(_superellipse_level(dx, dy, w_in, d_in, _BODY_POWER))
    canvas.fill(Label.SOFT_TISSUE, _SOFT, suv["soft"], lean)

    # Organ coordinates: reference mm scaled by the lean section (x, y) and height (z).
    ref_w, ref_d, ref_fat = _outline(np.array([-120.0]), 75.0, 1.75, 75.0 / 1.75**2, False)
    own_w, own_d, own_fat = _outline(np.array([-120.0]), weight, height, bmi, female)
    k = float(
        np.sqrt((own_w - own_fat) * (own_d - own_fat) / ((ref_w - ref_fat) * (ref_d - ref_fat)))[0]
    )

    def at(px: float, py: float, ps: float) -> tuple[float, float, float]:
        return (x0 + k * px, y0 + k * py, hz * ps - s_centre)

    def size(rx: float, ry: float, rs: float) -> tuple[float, float, float]:
        jitter = rng.uniform(0.9, 1.1, size=3)
        return (k * rx * jitter[0], k * ry * jitter[1], hz * rs * jitter[2])

    def span(s_lo: float, s_hi: float) -> np.ndarray:
        """Level (mm, shape (planes, 1, 1)) of the reference positions s_lo to s_hi."""
        return np.maximum(hz * s_lo - s_centre - z, z - (hz * s_hi - s_centre))

    def column(px: float, py: float, radius: float) -> np.ndarray:
        """Level (mm, shape (1, ny, nx)) of a vertical cylinder."""
        return np.hypot(canvas.x - x0 - k * px, canvas.y - y0 - k * py) - k * radius

    # Rib cage: oblique bands (lower in front) in a shell under the lean outline.
    cage_level = _superellipse_level(dx, dy, w_in - 14.0 * k, d_in - 14.0 * k, _BODY_POWER)
    shell = _superellipse_level(dx, dy, w_in - 3.0, d_in - 3.0, _BODY_POWER)
    bands = 0.55 - np.cos(2 * np.pi * (s[col] - 0.4 * dy / k) / 36.0)
    canvas.paint(Label.BONE, _BONE, suv["bone"], shell, -cage_level, bands, span(-50.0, 200.0))

    # Lungs fill the rib cage; organs stay inside the lean outline.
    cage = _coverage(cage_level)
    for px, ps, radii in ((-75.0, 95.0, (62.0, 95.0, 125.0)), (78.0, 88.0, (60.0, 95.0, 120.0))):
        canvas.paint_ellipsoid(
            at(px, 5.0, ps), size(*radii), Label.LUNG, _LUNG, suv["lung"], within=cage
        )
    organs = (
        ((-58.0, 2.0, -58.0), (95.0, 88.0, 80.0), 12.0, Label.LIVER, _LIVER, "liver"),
        ((88.0, 42.0, -55.0), (34.0, 52.0, 55.0), -35.0, Label.SPLEEN, _SPLEEN, "spleen"),
        ((-68.0, 52.0, -140.0), (28.0, 32.0, 55.0), 25.0, Label.KIDNEY, _KIDNEY, "kidney"),
        ((68.0, 52.0, -125.0), (28.0, 32.0, 55.0), -25.0, Label.KIDNEY, _KIDNEY, "kidney"),
    )
    for centre, radii, yaw, label, tissue, name in organs:
        canvas.paint_ellipsoid(at(*centre), size(*radii), label, tissue, suv[name], yaw, lean)

    # Heart: myocardium, then left ventricle, right ventricle and atria (blood pool) placed
    # in the heart frame (u along the long axis towards the apex, left-anterior).
    heart_yaw = -35.0 + rng.uniform(-10.0, 10.0)
    heart = at(22.0, -22.0, 55.0)
    cos, sin = math.cos(math.radians(heart_yaw)), math.sin(math.radians(heart_yaw))
    canvas.paint_ellipsoid(
        heart, size(58.0, 45.0, 50.0), Label.HEART, _MYOCARDIUM, suv["heart"], heart_yaw, lean
    )
    for pu, pv, pz, radii in (
        (12.0, 10.0, -3.0, (35.0, 22.0, 30.0)),
        (-8.0, -32.0, 3.0, (32.0, 10.0, 34.0)),
        (-40.0, 0.0, 10.0, (25.0, 30.0, 30.0)),
    ):
        centre = (
            heart[0] + k * (cos * pu - sin * pv),
            heart[1] + k * (sin * pu + cos * pv),
            heart[2] + hz * pz,
        )
        scaled = (k * radii[0], k * radii[1], hz * radii[2])
        canvas.paint_ellipsoid(centre, scaled, Label.BLOOD, _BLOOD, suv["blood"], heart_yaw)
    aorta, cava = column(22.0, 48.0, 11.0), column(-22.0, 30.0, 10.0)
    canvas.paint(Label.BLOOD, _BLOOD, suv["blood"], aorta, span(-260.0, 95.0))
    canvas.paint(Label.BLOOD, _BLOOD, suv["blood"], cava, span(-300.0, -20.0))

    # Bladder.
    radius = rng.uniform(25.0, 50.0)
    canvas.paint_ellipsoid(
        at(0.0, -30.0, -470.0),
        (1.15 * k * radius, 0.9 * k * radius, 0.85 * hz * radius),
        Label.BLADDER,
        _URINE,
        suv["bladder"],
        within=lean,
    )

    # Spine (kyphosis and lordosis, vertebrae larger caudally, discs every 32 mm), canal,
    # pelvis and femora.
    spine_y = k * np.interp(
        s, [-450.0, -250.0, -100.0, 100.0, 250.0], [65.0, 40.0, 50.0, 62.0, 55.0]
    )
    grow = np.interp(s, [-400.0, 200.0], [1.2, 0.85])
    sy = spine_y[col]
    discs = np.cos(2 * np.pi * (s[col] + rng.uniform(0.0, 32.0)) / 32.0) - 0.8
    lumbar_up = span(-380.0, 1000.0)
    vertebra = _superellipse_level(dx, dy - sy, 22.0 * k * grow[col], 18.0 * k * grow[col], 2.0)
    process = _superellipse_level(dx, dy - sy - 30.0 * k, 10.0 * k, 15.0 * k, 2.0)
    canvas.paint(Label.BONE, _BONE, suv["bone"], np.minimum(vertebra, process), discs, lumbar_up)
    canal = _superellipse_level(dx, dy - sy - 20.0 * k, 8.0 * k, 8.0 * k, 2.0)
    canvas.paint(Label.CSF, _CSF, suv["csf"], canal, lumbar_up)
    for side in (-1.0, 1.0):
        for centre, radii, yaw in (
            ((95.0 * side, 30.0, -370.0), (14.0, 55.0, 60.0), 25.0 * side),  # iliac wing
            ((88.0 * side, 0.0, -495.0), (24.0, 24.0, 24.0), 0.0),  # femoral head
        ):
            canvas.paint_ellipsoid(at(*centre), size(*radii), Label.BONE, _BONE, suv["bone"], yaw)
        femur = column(100.0 * side, 5.0, 14.0)
        canvas.paint(Label.BONE, _BONE, suv["bone"], femur, span(-900.0, -500.0))
    for centre, radii in (
        ((0.0, 62.0, -400.0), (42.0, 18.0, 70.0)),  # sacrum
        ((0.0, -70.0, -495.0), (40.0, 12.0, 18.0)),  # pubic symphysis
    ):
        canvas.paint_ellipsoid(at(*centre), size(*radii), Label.BONE, _BONE, suv["bone"])

    depth = ndimage.distance_transform_edt(
        canvas.labels != Label.BACKGROUND, sampling=canvas.spacing
    )
    hosts = {
        Label.LUNG: ("lung", suv["lung"]),
        Label.LIVER: ("liver", suv["liver"]),
        Label.SOFT_TISSUE: ("soft tissue", suv["soft"]),
    }
    count = int(rng.integers(2, 7))
    info["lesions"] = _place_lesions(
        canvas, rng, count, hosts, (5.0, 40.0), (2.0, 15.0), min_depth_mm=depth, max_suv=30.0
    )
    return _finish(canvas, rng, info, texture=0.06)


# --------------------------------------------------------------------------- NEMA

NEMA_SPHERE_DIAMETERS_MM = (10.0, 13.0, 17.0, 22.0, 28.0, 37.0)
"""Inner diameters of the NEMA spheres; sphere ``i`` has label ``LESION_BASE + i``."""
_NEMA_SPHERE_ANGLE_DEG = {37.0: 180.0, 28.0: 240.0, 22.0: 300.0, 17.0: 0.0, 13.0: 60.0, 10.0: 120.0}
_NEMA_RING_MM = 57.2
_NEMA_WALL_MM = 3.0
_NEMA_Z_MM = (-124.0, 70.0)  # interior along z about the sphere plane; lid at +z, 10 mm walls


def _iec_outline(x: np.ndarray, y: np.ndarray, inset: float) -> np.ndarray:
    """Signed distance (mm) to the IEC body section, about the lung insert axis.

    The section is a 150 mm radius half circle (anterior, -y) centred 35 mm posterior of the
    insert axis, over a 140 mm wide base with 80 mm radius corners whose flat back lies
    115 mm posterior of the axis; ``inset`` shrinks it (the wall thickness).
    """
    yc = y - 35.0
    arc = np.maximum(np.hypot(x, yc) - (150.0 - inset), yc)
    base = np.hypot(np.maximum(np.abs(x) - 70.0, 0.0), yc) - (80.0 - inset)
    return np.minimum(arc, base)


def nema(geometry: ImageGeometry, seed: int, ratio: float = 4.0) -> Phantom:
    """The NEMA NU 2-2018 / IEC 61675-1 body phantom with its six spheres and lung insert.

    The spheres' centre plane is the middle plane of the volume, the insert axis the grid
    centre. The seed only moves the phantom by up to 3 mm along x, y and z and turns it by up
    to 1 degree about z (positioning jitter, which changes the partial volume of the spheres),
    besides the CT and MR noise and the MR bias and misregistration.

    Parameters
    ----------
    geometry : ImageGeometry
        Grid; a field of view of at least 310 mm holds the 300 mm x 230 mm phantom.
    seed : int
        Seed of :func:`numpy.random.default_rng` for the positioning jitter.
    ratio : float
        Sphere-to-background activity ratio (NEMA: 4 or 8).

    Returns
    -------
    Phantom
        Background SUV 1 (``info["weight_kg"]`` is the mass of water in the background
        compartment, so the injected activity is that of the background), spheres ``ratio``,
        walls and lung insert 0. Sphere ``i`` (diameters ascending) has label
        ``LESION_BASE + i``.
    """
    if not ratio > 0:
        raise ValueError(f"ratio must be positive, got {ratio}")
    rng = np.random.default_rng(seed)
    shift = rng.uniform(-3.0, 3.0, size=3)
    turn = float(rng.uniform(-1.0, 1.0))
    canvas = _Canvas(geometry)
    cos, sin = math.cos(math.radians(turn)), math.sin(math.radians(turn))
    dx, dy = canvas.x - shift[0], canvas.y - shift[1]
    px, py, pz = cos * dx + sin * dy, cos * dy - sin * dx, canvas.z - shift[2]
    lo, hi = _NEMA_Z_MM
    wall = _NEMA_WALL_MM

    outer = np.maximum(lo - 10.0 - pz, pz - hi - 10.0)
    inner = np.maximum(lo - pz, pz - hi)
    canvas.paint(Label.PHANTOM_WALL, _PMMA, 0.0, _iec_outline(px, py, 0.0), outer)
    canvas.paint(Label.PHANTOM_FILL, _WATER, 1.0, _iec_outline(px, py, wall), inner)
    radial = np.hypot(px, py)
    canvas.paint(Label.PHANTOM_WALL, _PMMA, 0.0, radial - 25.0, inner)
    canvas.paint(Label.LUNG, _LUNG_INSERT, 0.0, radial - 21.0, inner)
    lesions = []
    for i, diameter in enumerate(NEMA_SPHERE_DIAMETERS_MM):
        angle = math.radians(_NEMA_SPHERE_ANGLE_DEG[diameter])
        qx, qy = _NEMA_RING_MM * math.cos(angle), -_NEMA_RING_MM * math.sin(angle)
        centre = (
            float(shift[0] + cos * qx - sin * qy),
            float(shift[1] + sin * qx + cos * qy),
            float(shift[2]),
        )
        r = diameter / 2.0
        canvas.paint_ellipsoid(centre, (r + 1.0,) * 3, Label.PHANTOM_WALL, _PMMA, 0.0)
        canvas.paint_ellipsoid(centre, (r,) * 3, LESION_BASE + i, _WATER, ratio)
        lesions.append(
            {
                "label": LESION_BASE + i,
                "centre_mm": centre,
                "diameter_mm": diameter,
                "suv": float(ratio),
                "contrast": float(ratio),
                "host": "background",
            }
        )
    section = (
        math.pi * (150.0 - wall) ** 2 / 2 + 140.0 * (80.0 - wall) + math.pi * (80.0 - wall) ** 2 / 2
    )
    spheres = sum(4.0 / 3.0 * math.pi * (d / 2 + 1.0) ** 3 for d in NEMA_SPHERE_DIAMETERS_MM)
    fill_ml = ((section - math.pi * 25.0**2) * (hi - lo) - spheres) / 1000.0
    info: dict[str, Any] = {
        "family": "nema",
        "seed": seed,
        "tracer": "FDG",
        "ratio": float(ratio),
        "weight_kg": fill_ml / 1000.0,
        "lesions": lesions,
        "position_mm": tuple(float(v) for v in shift),
        "rotation_deg": turn,
    }
    return _finish(canvas, rng, info, texture=0.0)


FAMILIES: dict[str, Callable[..., Phantom]] = {"brain": brain, "body": body, "nema": nema}
"""Phantom families by name."""


def make_phantom(family: str, geometry: ImageGeometry, seed: int, **kwargs: Any) -> Phantom:
    """Build a phantom of a named family.

    Parameters
    ----------
    family : {"brain", "body", "nema"}
        The family; ``kwargs`` go to :func:`brain`, :func:`body` or :func:`nema`.
    geometry : ImageGeometry
        Grid of the volumes.
    seed : int
        Random seed.
    **kwargs
        ``tracer`` (brain), ``weight_kg`` and ``height_m`` (body), ``ratio`` (nema).

    Returns
    -------
    Phantom
    """
    try:
        builder = FAMILIES[family]
    except KeyError:
        raise ValueError(
            f"unknown phantom family {family!r}; choose from {sorted(FAMILIES)}"
        ) from None
    return builder(geometry, seed, **kwargs)
