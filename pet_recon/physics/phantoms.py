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
1       SOFT_TISSUE     muscle, viscera, scalp, face, eyes, neck
2       FAT             subcutaneous and orbital fat
3       GREY_MATTER     cortical grey matter
4       WHITE_MATTER    cerebral and cerebellar white matter, brainstem
5       CSF             ventricles, sulcal and subarachnoid CSF, spinal canal
6       SKULL           skull (tables and diploe)
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
  brain cortex 7.5-9.5, white matter 2.7-3.2 times lower, deep grey matter like the cortex,
  cerebellar cortex 0.75-0.9 of it, CSF 0.3-0.5 (sources in :func:`brain`).
- Amyloid PET (18F-florbetapir/-florbetaben, 50-70 min p.i.): white matter 1.6-1.9 times the
  cerebellar grey matter reference; cortical SUVR 0.95-1.1 when negative and, when
  positive, 1.0-1.15 times the white matter (loss of grey-white contrast) (e.g. Clark et
  al., JAMA 305 (2011) 275; Barthel et al., Lancet Neurol 10 (2011) 424).
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
from scipy import ndimage

from pet_recon.physics.geometry import ImageGeometry

__all__ = [
    "FAMILIES",
    "LESION_BASE",
    "MR_SPHERE_INTENSITY",
    "NEMA_SPHERE_DIAMETERS_MM",
    "BRAIN_TRACERS",
    "Label",
    "MrSphere",
    "Phantom",
    "body",
    "brain",
    "ct_to_mu",
    "make_phantom",
    "mismatched_mr",
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

MR_SPHERE_INTENSITY: dict[str, float] = {
    "csf": _CSF.mr,
    "grey matter": _GM.mr,
    "white matter": _WM.mr,
    "fat": _FAT.mr,
}
"""T1-weighted MR intensity (a.u., before bias field and noise) of the tissues an
:class:`MrSphere` can show."""


@dataclass(frozen=True)
class MrSphere:
    """A sphere painted into a brain phantom's MR only: a structure that the MR shows and the
    PET does not (no uptake, attenuation, CT or label of its own; :func:`brain`).

    Attributes
    ----------
    centre_mm : tuple of float
        ``(x, y, z)`` centre in mm, grid coordinates of the other images (as a lesion's
        ``centre_mm``); the MR's misregistration moves it like the rest of the anatomy.
    diameter_mm : float
        Diameter in mm (partial volume at its edge, like every painted structure).
    tissue : str
        Key of :data:`MR_SPHERE_INTENSITY`: the MR intensity it has.
    """

    centre_mm: tuple[float, float, float]
    diameter_mm: float
    tissue: str


# --------------------------------------------------------------------------- primitives


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
) -> np.ndarray:
    """Smooth Gaussian random field, zero mean and unit standard deviation, float32.

    White noise filtered by a Gaussian of ``scale_mm`` standard deviation.
    """
    noise = rng.standard_normal(shape, dtype=np.float32)
    fz = np.fft.fftfreq(shape[0], spacing[0])[:, None, None]
    fy = np.fft.fftfreq(shape[1], spacing[1])[None, :, None]
    fx = np.fft.rfftfreq(shape[2], spacing[2])[None, None, :]
    f = np.sqrt(fz * fz + fy * fy + fx * fx) * scale_mm
    gain = np.exp(-2.0 * (np.pi * f) ** 2)
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
        self.axes = (geometry.z_mm(), geometry.y_mm(), geometry.x_mm())
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

        The coverage is :meth:`ellipsoid_cover`'s. ``within`` (broadcastable to the grid) clips
        the ellipsoid to another structure, e.g. an organ to the body.
        """
        found = self.ellipsoid_cover(centre, radii, yaw_deg)
        if found is None:
            return
        cover, region = found
        if within is not None:
            cover = cover * np.broadcast_to(within, self.labels.shape)[region]
        self.fill(label, tissue, suv, cover, region)

    def ellipsoid_cover(
        self,
        centre: tuple[float, float, float],
        radii: tuple[float, float, float],
        yaw_deg: float = 0.0,
    ) -> tuple[np.ndarray, _Region] | None:
        """Voxel coverage (0-1) of an ellipsoid over its bounding box on the grid.

        Only the bounding box is evaluated; ellipsoids smaller than four voxels are
        supersampled 3x3x3.

        Returns
        -------
        tuple or None
            ``(cover, region)``: float coverage of shape of ``region`` (planes, rows,
            columns slices of the grid); None when the ellipsoid misses the grid.
        """
        reach_xy = max(radii[0], radii[1])
        reach = (radii[2], reach_xy, reach_xy)
        box = []
        for axis, (c, r) in enumerate(zip((centre[2], centre[1], centre[0]), reach, strict=True)):
            margin = r + self.spacing[axis]
            lo = int(np.searchsorted(self.axes[axis], c - margin))
            hi = int(np.searchsorted(self.axes[axis], c + margin, side="right"))
            if lo >= hi:
                return None
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
        return cover, region

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


def rigid_move(volume: np.ndarray, spacing: tuple[float, float, float],
               rotation_deg: np.ndarray, translation_mm: np.ndarray) -> np.ndarray:
    """Move a volume by a rigid transform about its grid centre (linear interpolation).

    The point ``p`` of the input (mm, about the grid centre) appears at ``R p + t`` in the
    output, ``R`` rotating by ``rotation_deg`` about x, y then z (:func:`_rotation`) and
    ``t = translation_mm``; outside the input the nearest edge value is repeated
    (``scipy.ndimage.affine_transform``, ``order=1``, ``mode="nearest"``).

    Parameters
    ----------
    volume : np.ndarray
        ``(slices, rows, columns)`` volume, any float dtype and unit.
    spacing : tuple of float
        ``(z, y, x)`` voxel spacing in mm.
    rotation_deg : np.ndarray
        ``(3,)`` angles about x, y, z in degrees.
    translation_mm : np.ndarray
        ``(3,)`` shift along x, y, z in mm.

    Returns
    -------
    np.ndarray
        The moved volume, same shape and dtype.
    """
    flip = np.eye(3)[::-1]  # (x, y, z) <-> (z, y, x)
    rot = flip @ _rotation(np.asarray(rotation_deg)) @ flip
    step = np.array(spacing)
    matrix = (rot.T * step[None, :]) / step[:, None]  # S^-1 R^T S in voxel units
    centre = (np.array(volume.shape) - 1) / 2.0
    offset = centre - matrix @ centre - (rot.T @ (flip @ np.asarray(translation_mm))) / step
    return ndimage.affine_transform(volume, matrix, offset, order=1, mode="nearest")


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
    moved = rigid_move(canvas.mr, spacing, angles, shift)
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

_DIPLOE = _Tissue(700.0, 0.60)  # cancellous bone between the skull tables: fatty marrow
_DURA = _Tissue(60.0, 0.20)  # falx cerebri
_EYE = _Tissue(10.0, 0.12)  # vitreous body: water-like, dark on T1
_SLAB_CENTRE_MM = 28.0  # head z (reference head) that a slab shorter than the head centres on
_SULCAL_WAVES = 48  # plane waves of a sulcal field
_CHUNK = 65536  # points per block of plane-wave evaluations

_Region = tuple[slice, slice, slice]
_Point = tuple[float, float, float]


@dataclass(frozen=True)
class _HeadFrame:
    """The head's coordinate frame on the canvas.

    Head coordinates (mm) have their origin at the anterior commissure, ``x`` towards the
    patient's left, ``y`` posterior and ``z`` superior: the grid's axes turned by ``yaw_deg``
    about z and moved to ``origin`` (grid x, y, z in mm).
    """

    canvas: _Canvas
    origin: _Point
    yaw_deg: float

    def world(self, point: _Point) -> _Point:
        """Grid coordinates (x, y, z in mm) of a point in head coordinates."""
        cos, sin = math.cos(math.radians(self.yaw_deg)), math.sin(math.radians(self.yaw_deg))
        x0, y0, z0 = self.origin
        return (
            x0 + cos * point[0] - sin * point[1],
            y0 + sin * point[0] + cos * point[1],
            z0 + point[2],
        )

    def box(self, lo: _Point, hi: _Point) -> _Region | None:
        """Grid region (planes, rows, columns) holding a box given in head coordinates.

        None when the box misses the grid.
        """
        corners = np.array(
            [
                self.world((x, y, z))
                for x in (lo[0], hi[0])
                for y in (lo[1], hi[1])
                for z in (lo[2], hi[2])
            ]
        )
        region = []
        for axis, column in ((0, 2), (1, 1), (2, 0)):
            step, coords = self.canvas.spacing[axis], self.canvas.axes[axis]
            first = int(np.searchsorted(coords, corners[:, column].min() - step))
            last = int(np.searchsorted(coords, corners[:, column].max() + step, side="right"))
            if first >= last:
                return None
            region.append(slice(first, last))
        return (region[0], region[1], region[2])

    def coords(self, region: _Region) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Head coordinates (mm, float32) of a region's voxels.

        ``x`` and ``y`` have shape ``(1, rows, columns)``, ``z`` shape ``(planes, 1, 1)``.
        """
        cos, sin = math.cos(math.radians(self.yaw_deg)), math.sin(math.radians(self.yaw_deg))
        dx = self.canvas.x[:, :, region[2]] - np.float32(self.origin[0])
        dy = self.canvas.y[:, region[1], :] - np.float32(self.origin[1])
        lx = np.float32(cos) * dx + np.float32(sin) * dy
        ly = np.float32(cos) * dy - np.float32(sin) * dx
        return lx, ly, self.canvas.z[region[0]] - np.float32(self.origin[2])


def _smooth_max(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth maximum of two depths (their union), blended over ``k`` mm."""
    h = np.clip(0.5 + 0.5 * (a - b) / k, 0.0, 1.0)
    return b + h * (a - b) + k * h * (1.0 - h)


def _lobe_depth(
    lx: np.ndarray,
    ly: np.ndarray,
    lz: np.ndarray,
    centre: _Point,
    radii: tuple[float | np.ndarray, tuple[float, float], tuple[float, float]],
    yaw_deg: float = 0.0,
) -> np.ndarray:
    """Depth (mm, negative outside) below an ellipsoid whose half-axes differ on either side.

    ``radii`` is ``(x, (y anterior, y posterior), (z inferior, z superior))`` about
    ``centre``; the lobe is turned by ``yaw_deg`` about z. All in head millimetres.
    """
    cos, sin = (
        np.float32(math.cos(math.radians(yaw_deg))),
        np.float32(math.sin(math.radians(yaw_deg))),
    )
    dx, dy = lx - np.float32(centre[0]), ly - np.float32(centre[1])
    u, v = cos * dx + sin * dy, cos * dy - sin * dx
    w = lz - np.float32(centre[2])
    ry = np.where(v < 0, np.float32(radii[1][0]), np.float32(radii[1][1]))
    rz = np.where(w < 0, np.float32(radii[2][0]), np.float32(radii[2][1]))
    return _depth(u, v, w, (radii[0], ry, rz))


def _capsule_level(
    lx: np.ndarray,
    ly: np.ndarray,
    lz: np.ndarray,
    start: _Point,
    end: _Point,
    radii: tuple[float, float],
) -> np.ndarray:
    """Level (mm, negative inside) of a capsule from ``start`` to ``end``.

    Its radius tapers linearly from ``radii[0]`` to ``radii[1]``.
    """
    axis = np.subtract(end, start)
    along = (axis / float(axis @ axis)).astype(np.float32)
    dx, dy, dz = lx - np.float32(start[0]), ly - np.float32(start[1]), lz - np.float32(start[2])
    t = np.clip(dx * along[0] + dy * along[1] + dz * along[2], 0.0, 1.0)
    ex, ey, ez = (
        dx - t * np.float32(axis[0]),
        dy - t * np.float32(axis[1]),
        dz - t * np.float32(axis[2]),
    )
    return np.sqrt(ex * ex + ey * ey + ez * ez) - (radii[0] + t * np.float32(radii[1] - radii[0]))


def _slab_cover(s: np.ndarray, half_width: np.ndarray | float, width: np.ndarray) -> np.ndarray:
    """Voxel coverage of the slab ``|s| < half_width`` (``s`` a signed distance in mm).

    ``width`` is the voxel's extent along the slab normal, ``sum_i |n_i| h_i``: the first-order
    box filter of :func:`_coverage`, evaluated for both faces at once so that slabs thinner
    than a voxel get their true partial volume.
    """
    lo = np.maximum(s - half_width, -0.5 * width)
    hi = np.minimum(s + half_width, 0.5 * width)
    return np.clip((hi - lo) / width, 0.0, 1.0)


def _plane_waves(
    rng: np.random.Generator, count: int, wavelength_mm: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Random wave vectors (``(count, 3)``, z, y, x order, rad/mm) and phases, float32."""
    direction = rng.standard_normal((count, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    wavenumber = 2.0 * np.pi / rng.uniform(*wavelength_mm, size=count)
    phase = rng.uniform(0.0, 2.0 * np.pi, size=count)
    return (direction * wavenumber[:, None]).astype(np.float32), phase.astype(np.float32)


def _wave_sum(
    points: np.ndarray, waves: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """A sum of plane waves and its gradient at points.

    Parameters
    ----------
    points : numpy.ndarray
        ``(n, 3)`` positions (z, y, x) in mm, float32.
    waves : tuple of numpy.ndarray
        Wave vectors and phases from :func:`_plane_waves`.

    Returns
    -------
    value, gradient : numpy.ndarray
        ``sum_i cos(k_i . p + phase_i) / sqrt(count / 2)`` (unit variance), shape ``(n,)``,
        and its gradient in 1/mm, shape ``(n, 3)``.
    """
    vectors, phases = waves
    norm = np.float32(math.sqrt(2.0 / len(phases)))
    value = np.empty(len(points), np.float32)
    grad = np.empty((len(points), 3), np.float32)
    for start in range(0, len(points), _CHUNK):
        block = slice(start, start + _CHUNK)
        arg = points[block] @ vectors.T + phases
        value[block] = np.cos(arg).sum(axis=1) * norm
        grad[block] = (np.sin(arg) @ vectors) * -norm
    return value, grad


def _variation(
    rng: np.random.Generator,
    lx: np.ndarray,
    ly: np.ndarray,
    lz: np.ndarray,
    wavelength_mm: tuple[float, float],
    count: int = 4,
) -> np.ndarray:
    """Smooth random field of unit variance on a region (sum of ``count`` plane waves)."""
    vectors, phases = _plane_waves(rng, count, wavelength_mm)
    out = np.zeros(np.broadcast_shapes(lx.shape, lz.shape), np.float32)
    for (kz, ky, kx), phase in zip(vectors, phases, strict=True):
        out += np.cos(kx * lx + ky * ly + (kz * lz + phase))
    return out * np.float32(math.sqrt(2.0 / count))


def _grad_mm(level: np.ndarray, spacing: tuple[float, float, float]) -> list[np.ndarray]:
    """Gradient of a volume per mm along (z, y, x); zero along unresolved (length-1) axes."""
    return [
        np.gradient(level, axis=axis) / np.float32(spacing[axis])
        if level.shape[axis] > 1
        else np.zeros_like(level)
        for axis in range(3)
    ]


def _brain_uptake(rng: np.random.Generator, tracer: str) -> dict[str, float]:
    """Uptake (SUVbw) of the head's tissues for one tracer; sources in :func:`brain`."""
    if tracer == "FDG":
        grey = rng.uniform(7.5, 9.5)
        white = grey / rng.uniform(2.7, 3.2)
        return {
            "grey": grey,
            "white": white,
            "deep": grey * rng.uniform(0.9, 1.05),
            "cerebellum": grey * rng.uniform(0.75, 0.9),
            "stem": white * rng.uniform(1.2, 1.5),
            "csf": rng.uniform(0.3, 0.5),
            "scalp": rng.uniform(0.8, 1.2),
            "skull": rng.uniform(0.4, 0.6),
            "eye": rng.uniform(0.4, 0.8),
        }
    reference = rng.uniform(1.0, 1.4)  # cerebellar grey matter
    white = reference * rng.uniform(1.6, 1.9)
    positive = tracer == "amyloid+"
    grey = white * rng.uniform(1.0, 1.15) if positive else reference * rng.uniform(0.95, 1.1)
    return {
        "grey": grey,
        "white": white,
        "deep": 0.9 * grey if positive else 1.3 * reference,
        "cerebellum": reference,
        "stem": white,
        "csf": 0.3 * reference,
        "scalp": 0.6 * reference,
        "skull": 0.4 * reference,
        "eye": 0.4 * reference,
    }


def _brain_surfaces(
    lx: np.ndarray, ly: np.ndarray, lz: np.ndarray, k: float, size: dict[str, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depths (mm) below the cerebral envelope, the cerebellum and the brainstem.

    The cerebrum is an egg-shaped ellipsoid (wider posteriorly, 20 mm deep below the origin)
    joined smoothly to the orbital surface of the frontal lobes (down to 22 mm below the
    origin) and to two temporal lobes (down to 40 mm); the cerebellum two hemispheres and
    the vermis; the brainstem the midbrain, the pons and the medulla tapering into the cord.
    Sizes in ``size`` (mm) and positions scaled by ``k`` (head size).
    """
    widen = 1.0 + 0.05 * np.tanh((ly - 12.0 * k) / (40.0 * k))
    cerebrum = _lobe_depth(
        lx,
        ly,
        lz,
        (0.0, 12.0 * k, 2.0 * k),
        (size["half_width"] * widen, (size["front"], size["back"]), (20.0 * k, size["top"])),
    )
    orbital = _lobe_depth(
        lx,
        ly,
        lz,
        (0.0, -30.0 * k, -6.0 * k),
        (44.0 * k, (36.0 * k, 30.0 * k), (16.0 * k, 16.0 * k)),
    )
    cerebrum = _smooth_max(cerebrum, orbital, 8.0 * k)
    for side in (-1.0, 1.0):
        temporal = _lobe_depth(
            lx,
            ly,
            lz,
            (side * 44.0 * k, 6.0 * k, -16.0 * k),
            (24.0 * k, (38.0 * k, 42.0 * k), (24.0 * k, 20.0 * k)),
            -12.0 * side,
        )
        cerebrum = _smooth_max(cerebrum, temporal, 10.0 * k)
    cerebellum = _lobe_depth(
        lx,
        ly,
        lz,
        (0.0, 58.0 * k, -26.0 * k),
        (10.0 * k, (24.0 * k, 24.0 * k), (20.0 * k, 19.0 * k)),
    )
    for side in (-1.0, 1.0):
        hemisphere = _lobe_depth(
            lx,
            ly,
            lz,
            (side * 24.0 * k, 60.0 * k, -32.0 * k),
            (30.0 * k, (22.0 * k, 25.0 * k), (20.0 * k, 20.0 * k)),
            20.0 * side,
        )
        cerebellum = _smooth_max(cerebellum, hemisphere, 6.0 * k)
    stem = _smooth_max(
        _lobe_depth(
            lx,
            ly,
            lz,
            (0.0, 20.0 * k, -8.0 * k),
            (13.0 * k, (11.0 * k, 11.0 * k), (10.0 * k, 10.0 * k)),
        ),
        _lobe_depth(
            lx,
            ly,
            lz,
            (0.0, 16.0 * k, -30.0 * k),
            (15.0 * k, (13.0 * k, 12.0 * k), (14.0 * k, 14.0 * k)),
        ),
        6.0 * k,
    )
    medulla = _capsule_level(
        lx, ly, lz, (0.0, 24.0 * k, -40.0 * k), (0.0, 30.0 * k, -95.0 * k), (9.0 * k, 7.0 * k)
    )
    stem = _smooth_max(stem, -medulla, 5.0 * k)
    return cerebrum, np.minimum(cerebellum, -stem - 1.5 * k), stem


@dataclass(frozen=True)
class _Folding:
    """How a cortex folds (:func:`_folds`); lengths in mm.

    Attributes
    ----------
    wavelength_mm : tuple of float
        Range of the wavelengths of the plane waves whose zero set forms the sulci.
    depth_mm : tuple of float
        Mean and amplitude of the sulcal depth, which varies smoothly over the surface.
    half_width_mm, opening_mm : float
        Half-width of the CSF in a sulcus, and its extra half-width at the surface (the
        sulcus widens over its outer 6 mm).
    ribbon_mm : float
        Cortical thickness.
    projection : float
        Fraction of its depth by which a point is moved onto the surface before the sulcal
        field is evaluated: 1 makes the sulci planes normal to the surface, less lets them
        tilt and bend.
    """

    wavelength_mm: tuple[float, float]
    depth_mm: tuple[float, float]
    half_width_mm: float
    opening_mm: float
    ribbon_mm: float
    projection: float


def _folds(
    canvas: _Canvas,
    region: _Region,
    depth: np.ndarray,
    rng: np.random.Generator,
    folding: _Folding,
) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray, np.ndarray]:
    """Sulcal CSF and the grey matter lining the sulci of a folded cortex.

    Sulci are sheets (nearly) normal to the surface: the zero set of a sum of 48 plane waves
    evaluated at each voxel's projection ``p - projection * depth * n`` towards the surface
    (``n`` the unit gradient of ``depth``), down to a sulcal depth that varies smoothly over
    the surface (a second field of 60-120 mm wavelength). The signed distance to a sheet is
    the field over its gradient (the part along ``n`` reduced by the projection). The CSF in
    a sulcus is a slab with its exact partial volume (:func:`_slab_cover`), never a full
    voxel for sulci narrower than one; grey matter lines it ``ribbon_mm`` deep on both sides
    and around its fundus. Sheets leaning more than about 45 degrees away from the surface
    normal fade out, so that no sulcus runs parallel to the cortex.

    Parameters
    ----------
    canvas, region : _Canvas, tuple of slice
        The grid and the region ``depth`` covers.
    depth : numpy.ndarray
        Depth (mm) below the cortical surface on the region.
    rng : numpy.random.Generator
        Draws the sulcal pattern and depth.
    folding : _Folding
        Sizes.

    Returns
    -------
    index : tuple of numpy.ndarray
        Region indices of the voxels near the surface where the sulci are evaluated.
    h, csf, grey : numpy.ndarray
        Their depth (mm) and the coverages of sulcal CSF and of sulcal grey matter.
    """
    waves = _plane_waves(rng, _SULCAL_WAVES, folding.wavelength_mm)
    depth_waves = _plane_waves(rng, 8, (60.0, 120.0))
    mean, amplitude = folding.depth_mm
    ribbon = folding.ribbon_mm
    index = np.nonzero((depth > -1.5) & (depth < mean + amplitude + ribbon + 4.0))
    h = depth[index]
    normal = np.stack([g[index] for g in _grad_mm(depth, canvas.spacing)], axis=1)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-6)
    point = np.stack(
        [canvas.axes[axis][region[axis]][index[axis]] for axis in range(3)], axis=1
    ).astype(np.float32)
    surface = point - (folding.projection * h)[:, None] * normal
    field, grad = _wave_sum(surface, waves)
    grad -= folding.projection * np.sum(grad * normal, axis=1, keepdims=True) * normal
    slope = np.maximum(np.linalg.norm(grad, axis=1), 1e-4)
    s = np.clip(field / slope, -30.0, 30.0)
    width = np.abs(grad / slope[:, None]) @ np.array(canvas.spacing, np.float32)
    fundus = mean + amplitude * np.tanh(_wave_sum(surface, depth_waves)[0])
    # Sheets leaning 37-58 degrees or more away from the surface normal fade out: sulci do
    # not run parallel to the cortex.
    tilt = np.abs(np.sum(grad * normal, axis=1)) / slope
    fundus *= np.clip((0.85 - tilt) / 0.25, 0.0, 1.0)
    half_width = folding.half_width_mm + folding.opening_mm * np.clip(1.0 - h / 6.0, 0.0, 1.0)
    csf = _slab_cover(s, half_width, width) * np.clip(0.5 - (h - fundus) / width, 0.0, 1.0)
    csf *= np.clip(0.5 + (h + 1.0) / width, 0.0, 1.0)
    below = np.maximum(h - fundus, 0.0)
    grey = np.clip(0.5 - (np.sqrt(s * s + below * below) - half_width - ribbon) / width, 0, 1)
    return index, h, csf, grey


def _sylvian(
    canvas: _Canvas,
    coords: tuple[np.ndarray, np.ndarray, np.ndarray],
    index: tuple[np.ndarray, ...],
    h: np.ndarray,
    k: float,
    half_width: float,
    ribbon: float,
) -> tuple[np.ndarray, np.ndarray]:
    """CSF and grey matter coverage of the Sylvian fissures at the voxels ``index``.

    Each fissure is a stem running in from the lateral surface, over the temporal lobe
    (3 mm below the origin at the insula's centre, rising backwards by 35 % and outwards by
    15 %, with a 2.5 mm undulation), to the insula, whose lateral face (an arc 38-42 mm from
    the midline, 48 mm long, 22 mm high) it then covers. Sheet normals are taken along the
    head axes.
    """
    lx, ly, lz = coords
    ax = np.abs(lx[0, index[1], index[2]])
    ay = ly[0, index[1], index[2]] - 6.0 * k
    face = k * (38.0 + 4.0 * np.clip(1.0 - (ay / (24.0 * k)) ** 2, 0.0, 1.0))
    dz = lz[index[0], 0, 0] + 3.0 * k - 0.35 * ay - 0.15 * (ax - face)
    dz += (
        2.5
        * k
        * np.sin(ax * np.float32(2 * np.pi / (30.0 * k)))
        * np.cos(ay * np.float32(2 * np.pi / (40.0 * k)))
    )
    stem_s, stem_over = dz / np.float32(math.hypot(1.0, 0.35)), face - ax
    face_s, face_over = ax - face, np.maximum(-8.0 * k - dz, dz - 14.0 * k)
    use_stem = np.hypot(stem_s, np.maximum(stem_over, 0)) <= np.hypot(
        face_s, np.maximum(face_over, 0)
    )
    s = np.where(use_stem, stem_s, face_s)
    over = np.where(use_stem, stem_over, face_over)
    over_y = np.abs(ay) - 24.0 * k
    hz, hy, hx = canvas.spacing
    width = np.where(use_stem, 0.94 * hz + 0.33 * hy, hx)
    edge = np.clip(0.5 - np.maximum(over, over_y) / width, 0.0, 1.0)
    csf = _slab_cover(s, half_width, width) * edge * np.clip(0.5 + (h + 1.0) / width, 0, 1)
    reach = np.sqrt(s * s + np.maximum(over, 0) ** 2 + np.maximum(over_y, 0) ** 2)
    grey = np.clip(0.5 - (reach - half_width - ribbon) / width, 0.0, 1.0)
    return csf, grey


def _scatter(
    shape: tuple[int, ...], index: tuple[np.ndarray, ...], values: np.ndarray
) -> np.ndarray:
    """A float32 volume of ``shape``: ``values`` at ``index``, zero elsewhere."""
    out = np.zeros(shape, np.float32)
    out[index] = values
    return out


def brain(
    geometry: ImageGeometry,
    seed: int,
    tracer: str = "FDG",
    *,
    mr_lesions: bool = True,
    mr_spheres: Sequence[MrSphere] = (),
) -> Phantom:
    """A random adult head: scalp, skull, CSF, folded cortex, white and deep grey matter.

    Anatomy, in head coordinates (origin at the anterior commissure, ``x`` left, ``y``
    posterior, ``z`` superior) of an adult male head scaled by 0.87-1.05:

    - Cerebrum: an egg-shaped envelope (136 mm wide, 168 mm long, 72 mm above and 20 mm
      below the origin) joined to the orbital surface of the frontal lobes (22 mm below) and
      to two temporal lobes (40 mm below), split into hemispheres by the interhemispheric
      fissure (CSF 2.2-3 mm wide, with the falx) which reaches the corpus callosum centrally
      and the base of the brain in front of and behind it (:func:`_paint_cerebrum`).
    - Cortex: a grey matter ribbon 2.6-3.1 mm thick (the 2.5 mm average of Fischl and Dale,
      PNAS 97 (2000) 11050) along the outer and medial surfaces and along both walls of the
      sulci, CSF clefts 0.5-0.9 mm wide (up to 2 mm with atrophy, wider at the surface)
      running 10-20 mm in from the surface (:func:`_folds`), and the Sylvian fissures over
      the insulae (:func:`_sylvian`); white matter fills the hemispheres' cores and reaches
      into the gyri. At 2 mm voxels the cortex is a convoluted band 10-20 mm deep.
    - Deep grey matter: caudate (head beside the frontal horn, body along the ventricle),
      putamen and pallidum lateral to the internal capsule, thalamus medial and posterior.
    - Ventricles: lateral ventricles (frontal horns, bodies, atria, occipital and temporal
      horns, the two kept 2.4 mm apart by the septum), third and fourth ventricle
      (:func:`_paint_deep`).
    - Cerebellum (finely folded cortex around a white matter core) and brainstem below the
      tentorium, behind and between the temporal lobes; cisterns around the brainstem and
      above the sella (:func:`_paint_hindbrain`).
    - Extra-axial CSF (2-3 mm), skull (5-8 mm, with diploe) and scalp (4-7 mm); below the
      skull base the face with the eyes in orbital fat (:func:`_paint_exterior`).
    - Atrophy grows with the drawn age from 50 to 85 years: wider sulci, fissures and
      extra-axial CSF, ventricles up to 1.7 times larger, a 10 % thinner cortex.

    The slab: its top plane lies 0-10 mm below the top of the scalp when that puts the slab
    centre at most 28 mm (scaled) above the origin, i.e. for slabs longer than about 120 mm
    (128 mm: from the vertex down to the lower cerebellum, the temporal lobes' base and the
    orbits); shorter slabs are centred 28 mm above the origin, on the basal ganglia and the
    lateral ventricles.

    Parameters
    ----------
    geometry : ImageGeometry
        Grid; a field of view of at least 230 mm holds the whole head.
    seed : int
        Seed of :func:`numpy.random.default_rng`: anatomy, uptake and lesions.
    tracer : {"FDG", "amyloid+", "amyloid-"}
        FDG (60 min p.i.): cortex SUV 7.5-9.5 and white matter 2.7-3.2 times lower (Huang et
        al., Am J Physiol 238 (1980) E69 measured 7.3 and 3.4 mg/min/100 g, a ratio of 2.1
        lowered by the partial volume of their scanner; at 2 mm voxels the medians of the
        labelled voxels give 2.1-2.4), deep grey matter 0.9-1.05 and cerebellar cortex
        0.75-0.9 times the cortex (Wang et al., Mol Imaging Biol 9 (2007) 83: cerebellum
        SUVmean 8.0 +- 2.2), brainstem 1.2-1.5 times white matter, CSF 0.3-0.5 (no uptake
        of its own), scalp 0.8-1.2; a +-6 % regional variation of the cortex and 1-2
        hypometabolic cortical regions (30-50 % reduction). Amyloid (18F-florbetapir or
        -florbetaben, 50-70 min p.i.): cerebellar grey matter SUV 1.0-1.4 (the reference),
        white matter 1.6-1.9 times that; negative: cortex 0.95-1.1 (white matter 1.5-2
        times the cortex, the "white matter pattern"); positive: cortex 1.0-1.15 times the
        white matter, i.e. SUVR 1.6-2.2, with +-10 % regional variation: the loss of
        grey-white contrast that makes a scan positive (Clark et al., JAMA 305 (2011) 275;
        Barthel et al., Lancet Neurol 10 (2011) 424).
    mr_lesions : bool
        False: the MR shows the anatomy before the lesions were painted (the host tissue
        where a lesion is), with the same misregistration, bias field and noise; every other
        array and ``info`` are unchanged. For the benchmark's leak check of a lesion the MR
        does not show.
    mr_spheres : sequence of MrSphere
        Spheres painted into the MR only, after the lesions and before the MR acquisition
        (misregistration, bias field, noise, drawn as without them); every other array and
        ``info`` are unchanged. For the benchmark's leak check of an MR structure without
        uptake.

    Returns
    -------
    Phantom
        With 1-3 hot lesions (4-15 mm, 1.5-3 times the host tissue) in grey, white or deep
        grey matter. Labels: cortex ``GREY_MATTER`` (sulci covering less than half a voxel
        stay grey matter), ``WHITE_MATTER`` (with the cerebellar core and the brainstem),
        ``CEREBELLUM`` (cerebellar cortex), ``DEEP_GREY``, ``CSF``, ``SKULL``,
        ``SOFT_TISSUE`` (scalp, face, eyes), ``FAT`` (orbits).
    """
    if tracer not in BRAIN_TRACERS:
        raise ValueError(f"tracer must be one of {BRAIN_TRACERS}, got {tracer!r}")
    for sphere in mr_spheres:
        if sphere.tissue not in MR_SPHERE_INTENSITY:
            raise ValueError(f"MR sphere tissue must be one of {tuple(MR_SPHERE_INTENSITY)}, "
                             f"got {sphere.tissue!r}")
    rng = np.random.default_rng(seed)
    info: dict[str, Any] = {"family": "brain", "seed": seed, "tracer": tracer}
    info.update(_draw_patient(rng, None, None))
    atrophy = float(np.clip((info["age"] - 50) / 35.0, 0.0, 1.0))
    suv = _brain_uptake(rng, tracer)
    info["amyloid_status"] = None
    if tracer != "FDG":
        info["amyloid_status"] = "positive" if tracer == "amyloid+" else "negative"
        info["cortical_suvr"] = float(suv["grey"] / suv["cerebellum"])
    canvas = _Canvas(geometry)

    # Size, pose and the part of the head the slab covers.
    k = rng.uniform(0.92, 1.05) * (0.95 if info["sex"] == "F" else 1.0)
    jitter = [float(v) for v in rng.uniform(0.96, 1.04, size=3)]
    size = {
        "half_width": 68.0 * k * jitter[0],
        "front": 80.0 * k * jitter[1],
        "back": 88.0 * k * jitter[1],
        "top": 72.0 * k * jitter[2],
    }
    thickness = (  # extra-axial CSF, skull, scalp
        rng.uniform(2.0, 3.0) + 2.0 * atrophy,
        rng.uniform(5.0, 8.0),
        rng.uniform(4.0, 7.0),
    )
    outer = sum(thickness)
    vertex = 2.0 * k + size["top"] + outer
    half = geometry.n_planes * geometry.plane_mm / 2.0
    centre = min(vertex - rng.uniform(0.0, 10.0) - half, _SLAB_CENTRE_MM * k)
    yaw = float(np.clip(rng.normal(0.0, 4.0), -10.0, 10.0))
    frame = _HeadFrame(canvas, (rng.uniform(-5.0, 5.0), rng.uniform(-12.0, -2.0), -centre), yaw)
    reach = size["half_width"] * 1.06 + outer + 4.0
    front = min(12.0 * k - size["front"] - outer, -83.0 * k) - 4.0  # forehead or face
    back = max(12.0 * k + size["back"] + outer, 93.0 * k) + 4.0
    region = frame.box((-reach, front, -110.0 * k), (reach, back, vertex + 4.0))
    info["hypometabolic"] = []
    if region is None:  # the slab misses the head
        info["lesions"] = []
        _paint_mr_spheres(canvas, mr_spheres)
        return _finish(canvas, rng, info, texture=0.05)
    coords = frame.coords(region)
    cerebrum, cerebellum, stem = _brain_surfaces(*coords, k, size)
    _paint_exterior(canvas, frame, region, (cerebrum, cerebellum, stem), k, suv, thickness)
    grey = _grey_uptake(rng, frame, coords, k, size, suv["grey"], tracer, info)
    _paint_cerebrum(
        canvas, region, coords, (cerebrum, cerebellum, stem), rng, k, atrophy, suv, grey
    )
    _paint_hindbrain(canvas, region, (cerebellum, stem), rng, k, suv)
    _paint_deep(canvas, frame, rng, k, atrophy, suv)

    hosts = {
        Label.GREY_MATTER: ("grey matter", suv["grey"]),
        Label.WHITE_MATTER: ("white matter", suv["white"]),
        Label.DEEP_GREY: ("deep grey matter", suv["deep"]),
    }
    count = int(rng.integers(1, 4))
    anatomy_mr = None if mr_lesions else canvas.mr.copy()
    info["lesions"] = _place_lesions(canvas, rng, count, hosts, (4.0, 15.0), (1.5, 3.0))
    if anatomy_mr is not None:
        canvas.mr = anatomy_mr
    _paint_mr_spheres(canvas, mr_spheres)
    return _finish(canvas, rng, info, texture=0.05)


def _paint_mr_spheres(canvas: _Canvas, spheres: Sequence[MrSphere]) -> None:
    """Composite each :class:`MrSphere` into ``canvas.mr`` only, with partial volume."""
    for sphere in spheres:
        found = canvas.ellipsoid_cover(sphere.centre_mm, (sphere.diameter_mm / 2.0,) * 3)
        if found is None:
            continue
        cover, region = found
        view = canvas.mr[region]
        view += cover * (MR_SPHERE_INTENSITY[sphere.tissue] - view)


MISMATCH_SEED = 11
"""First entry of the seed sequence of :func:`mismatched_mr`'s draws (with the case seed)."""

MISMATCH_DIAMETERS_MM = (6.0, 20.0)
"""Range of the diameters of :func:`mismatched_mr`'s MR-only spheres."""


def mismatched_mr(phantom: Phantom) -> tuple[np.ndarray, list[MrSphere]]:
    """A brain phantom's MR re-rendered so that it disagrees with the PET: for training the
    anatomical branch not to copy anatomy into function (issue #7's leak guard).

    The MR is rendered again from the phantom's seed and tracer (:func:`brain`) without the
    lesions (``mr_lesions=False``: PET-only lesions) and with 1-3 :class:`MrSphere` of a
    random :data:`MR_SPHERE_INTENSITY` tissue, a diameter drawn uniformly from
    :data:`MISMATCH_DIAMETERS_MM` and a centre on a random voxel of brain tissue (grey, white,
    deep grey matter or cerebellum): structures the MR shows and the PET has no uptake for.
    Misregistration, bias field and noise are those of ``phantom.mr``. Draws come from
    ``np.random.default_rng([MISMATCH_SEED, seed])``.

    Parameters
    ----------
    phantom : Phantom
        A phantom made by :func:`brain` (its ``info`` gives the seed and the tracer).

    Returns
    -------
    mr : numpy.ndarray
        float32, ``phantom.geometry.shape``, the mismatched MR (a.u.).
    spheres : list of MrSphere
        The MR-only spheres (empty when the slab holds no brain tissue).
    """
    if phantom.info.get("family") != "brain":
        raise ValueError(f"mismatched_mr needs a brain phantom, got {phantom.info.get('family')}")
    seed = int(phantom.info["seed"])
    rng = np.random.default_rng([MISMATCH_SEED, seed])
    g = phantom.geometry
    tissue = np.argwhere(np.isin(phantom.labels, (Label.GREY_MATTER, Label.WHITE_MATTER,
                                                  Label.DEEP_GREY, Label.CEREBELLUM)))
    spheres: list[MrSphere] = []
    if len(tissue):
        kinds = sorted(MR_SPHERE_INTENSITY)
        for _ in range(int(rng.integers(1, 4))):
            z, y, x = tissue[rng.integers(len(tissue))]
            spheres.append(MrSphere(
                (float(g.x_mm()[x]), float(g.y_mm()[y]), float(g.z_mm()[z])),
                float(rng.uniform(*MISMATCH_DIAMETERS_MM)), str(kinds[rng.integers(len(kinds))])))
    mr = brain(g, seed, phantom.info["tracer"], mr_lesions=False, mr_spheres=spheres).mr
    return mr, spheres


def _paint_exterior(
    canvas: _Canvas,
    frame: _HeadFrame,
    region: _Region,
    surfaces: tuple[np.ndarray, np.ndarray, np.ndarray],
    k: float,
    suv: dict[str, float],
    thickness: tuple[float, float, float],
) -> None:
    """Paint the lower head and face, scalp, orbits and eyes, skull and extra-axial CSF.

    The intracranial space follows the cerebrum, cerebellum and brainstem (with 3 mm of
    cisterns) at ``thickness[0]`` mm, so that bone fills the concave skull base between the
    temporal lobes, the brainstem and the cerebellum; the skull (``thickness[1]``) has a
    diploe between 1.8 mm thick tables, the scalp is ``thickness[2]`` thick. Below the skull
    base the lower head and face are soft tissue, with the eyes in orbital fat.
    """
    lx, ly, lz = frame.coords(region)
    cerebrum, cerebellum, stem = surfaces
    csf, skull, scalp = thickness
    cranium = _smooth_max(_smooth_max(cerebrum, cerebellum, 4.0 * k), stem + 3.0 * k, 4.0 * k)
    lower = 60.0 * k * _superellipse_level(lx, ly - 5.0 * k, 64.0 * k, 88.0 * k, 3.0)
    lower = np.maximum(lower, lz + 20.0 * k)
    canvas.fill(Label.SOFT_TISSUE, _SOFT, suv["scalp"], _coverage(lower), region)
    outer = cranium + csf + skull + scalp
    canvas.fill(Label.SOFT_TISSUE, _SCALP, suv["scalp"], _coverage(-outer), region)
    for side in (-1.0, 1.0):
        canvas.paint_ellipsoid(
            frame.world((side * 29.0 * k, -58.0 * k, -32.0 * k)),
            (16.0 * k, 22.0 * k, 15.0 * k),
            Label.FAT,
            _FAT,
            0.4 * suv["scalp"],
            frame.yaw_deg + 15.0 * side,
        )
        canvas.paint_ellipsoid(
            frame.world((side * 32.0 * k, -65.0 * k, -32.0 * k)),
            (12.0 * k,) * 3,
            Label.SOFT_TISSUE,
            _EYE,
            suv["eye"],
        )
    inner = cranium + csf
    canvas.fill(Label.SKULL, _SKULL, suv["skull"], _coverage(-(inner + skull)), region)
    diploe = _coverage(1.8 - inner - skull, inner + 1.8)
    canvas.fill(Label.SKULL, _DIPLOE, suv["skull"], diploe, region)
    canvas.fill(Label.CSF, _CSF, suv["csf"], _coverage(-inner), region)
    canal = _capsule_level(
        lx, ly, lz, (0.0, 26.0 * k, -44.0 * k), (0.0, 34.0 * k, -200.0 * k), (10.0 * k, 10.0 * k)
    )
    canvas.fill(Label.CSF, _CSF, suv["csf"], _coverage(canal), region)


def _grey_uptake(
    rng: np.random.Generator,
    frame: _HeadFrame,
    coords: tuple[np.ndarray, np.ndarray, np.ndarray],
    k: float,
    size: dict[str, float],
    grey: float,
    tracer: str,
    info: dict[str, Any],
) -> np.ndarray:
    """Cortical uptake on a region: regional variation and FDG hypometabolism.

    FDG: +-6 % variation over 60-120 mm and 1-2 regions of 20-35 mm radius on the convexity
    with 30-50 % less uptake (``info["hypometabolic"]``); amyloid-positive: +-10 % over
    30-60 mm; amyloid-negative: uniform.
    """
    lx, ly, lz = coords
    out = np.full(np.broadcast_shapes(lx.shape, lz.shape), grey, np.float32)
    if tracer == "FDG":
        out *= 1.0 + 0.06 * _variation(rng, lx, ly, lz, (60.0, 120.0))
        for _ in range(int(rng.integers(1, 3))):
            cos_t = rng.uniform(-0.2, 0.8)
            phi = rng.uniform(0.0, 2 * np.pi)
            sin_t = math.sqrt(1.0 - cos_t * cos_t)
            local = (
                0.85 * size["half_width"] * sin_t * math.cos(phi),
                12.0 * k + 0.85 * size["back" if phi < np.pi else "front"] * sin_t * math.sin(phi),
                2.0 * k + 0.85 * size["top"] * cos_t,
            )
            radius, reduction = rng.uniform(20.0, 35.0), rng.uniform(0.3, 0.5)
            dist2 = (lx - local[0]) ** 2 + (ly - local[1]) ** 2 + (lz - local[2]) ** 2
            out *= 1.0 - reduction / (1.0 + (dist2 / radius**2) ** 3)
            info["hypometabolic"].append(
                {
                    "centre_mm": frame.world(local),
                    "radius_mm": float(radius),
                    "reduction": float(reduction),
                }
            )
    elif tracer == "amyloid+":
        out *= 1.0 + 0.1 * _variation(rng, lx, ly, lz, (30.0, 60.0), count=6)
    return out


def _paint_cerebrum(
    canvas: _Canvas,
    region: _Region,
    coords: tuple[np.ndarray, np.ndarray, np.ndarray],
    surfaces: tuple[np.ndarray, np.ndarray, np.ndarray],
    rng: np.random.Generator,
    k: float,
    atrophy: float,
    suv: dict[str, float],
    grey: np.ndarray,
) -> None:
    """Paint the cerebral hemispheres: cortex, white matter, fissures and sulci.

    The cerebral envelope is kept 2.5 mm from the cerebellum (tentorium) and 3 mm from the
    brainstem below the diencephalon (ambient and prepontine cisterns), and the suprasellar
    cistern is cut out. The interhemispheric fissure (CSF 2.2-3 mm wide, 2 mm more at 85
    years, with a 0.8 mm falx) reaches down to the corpus callosum (28 mm above the origin)
    for 34 mm either side of it and through the whole brain in front and behind. The
    hemispheres are grey matter within the cortical thickness (2.6-3.1 mm) of their outer or
    medial surface, of a sulcus (:func:`_folds`: 20-26 mm wavelength, 15 +- 4.5 mm deep,
    0.5-0.9 mm wide, 1 mm more at 85 years, widening by 0.4-2 mm at the surface) or of the
    Sylvian fissure (:func:`_sylvian`), white matter elsewhere.
    """
    lx, ly, lz = coords
    cerebrum, cerebellum, stem = surfaces
    cerebrum = np.minimum(cerebrum, -cerebellum - 2.5 * k)
    cerebrum = np.minimum(cerebrum, -stem - 3.0 * k + 2.0 * np.maximum(lz + 4.0 * k, 0.0))
    cistern = _lobe_depth(
        lx,
        ly,
        lz,
        (0.0, -4.0 * k, -22.0 * k),
        (13.0 * k, (13.0 * k, 13.0 * k), (10.0 * k, 10.0 * k)),
    )
    cerebrum = np.minimum(cerebrum, -cistern)
    midline = np.float32(rng.uniform(-2.0, 2.0)) * np.sin(ly * np.float32(np.pi / (120.0 * k)))
    floor = k * (28.0 - 70.0 * _smoothstep((np.abs(ly - 4.0 * k) - 34.0 * k) / (16.0 * k)))
    fissure_half = rng.uniform(1.1, 1.5) + 1.0 * atrophy
    across = lx - midline
    # Depth below the medial surface; under the fissure's floor (the corpus callosum) it
    # grows four times faster, so that the callosum is white matter, not folded cortex.
    medial = np.abs(across) - fissure_half + 4.0 * np.maximum(floor - lz, 0.0)
    hemisphere = np.minimum(cerebrum, medial)
    folding = _Folding(
        wavelength_mm=(20.0, 26.0),
        depth_mm=(15.0, 4.5),
        half_width_mm=rng.uniform(0.25, 0.45) + 0.5 * atrophy,
        opening_mm=0.2 + 0.8 * atrophy,
        ribbon_mm=rng.uniform(2.6, 3.1) * (1.0 - 0.1 * atrophy),
        projection=0.7,
    )
    index, h, csf, sulcal_grey = _folds(canvas, region, hemisphere, rng, folding)
    sylvian_half = rng.uniform(0.8, 1.2) + 1.0 * atrophy
    sylvian_csf, sylvian_grey = _sylvian(
        canvas, coords, index, h, k, sylvian_half, folding.ribbon_mm
    )
    shape = hemisphere.shape
    brain = _coverage(-cerebrum)
    canvas.fill(Label.GREY_MATTER, _GM, grey, brain, region)
    lining = _scatter(shape, index, np.maximum(sulcal_grey, sylvian_grey))
    white = _coverage(folding.ribbon_mm - hemisphere) * (1.0 - lining)
    canvas.fill(Label.WHITE_MATTER, _WM, suv["white"], white, region)
    hz, _, hx = canvas.spacing
    above = lz - floor
    fissure = _slab_cover(across, fissure_half, hx) * np.clip(0.5 + above / hz, 0, 1) * brain
    canvas.fill(Label.CSF, _CSF, suv["csf"], fissure, region)
    falx = _slab_cover(across, 0.4, hx) * np.clip(0.5 + (above - 3.0 * k) / hz, 0, 1) * brain
    canvas.fill(Label.SOFT_TISSUE, _DURA, suv["csf"], falx, region)
    sulci = _scatter(shape, index, np.maximum(csf, sylvian_csf))
    canvas.fill(Label.CSF, _CSF, suv["csf"], sulci, region)


def _paint_hindbrain(
    canvas: _Canvas,
    region: _Region,
    surfaces: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator,
    k: float,
    suv: dict[str, float],
) -> None:
    """Paint the cerebellum and the brainstem.

    The cerebellar cortex folds like the cerebral one but finer (:func:`_folds`: 10-14 mm
    wavelength, 7 +- 2 mm deep fissures 0.5 mm wide, 2 mm cortex, sheets bending more),
    around a white matter core deeper than 11 mm.
    """
    cerebellum, stem = surfaces
    folding = _Folding(
        wavelength_mm=(10.0, 14.0),
        depth_mm=(7.0, 2.0),
        half_width_mm=0.25,
        opening_mm=0.2,
        ribbon_mm=2.0,
        projection=0.5,
    )
    index, _, csf, lining = _folds(canvas, region, cerebellum, rng, folding)
    shape = cerebellum.shape
    canvas.fill(Label.CEREBELLUM, _GM, suv["cerebellum"], _coverage(-cerebellum), region)
    white = _coverage(2.0 - cerebellum) * (1.0 - _scatter(shape, index, lining))
    white = np.maximum(white, _coverage(11.0 * k - cerebellum))
    canvas.fill(Label.WHITE_MATTER, _WM, suv["white"], white, region)
    canvas.fill(Label.CSF, _CSF, suv["csf"], _scatter(shape, index, csf), region)
    canvas.fill(Label.WHITE_MATTER, _WM, suv["stem"], _coverage(-stem), region)


# Deep grey nuclei of the left hemisphere (mirrored for the right) in mm of the reference
# head: centre (x, y, z), half-axes (x, (y anterior, y posterior), (z inferior, z superior)),
# yaw (degrees, mirrored) and uptake relative to that of deep grey matter.
_NUCLEI = (
    ((14.0, -12.0, 10.0), (5.5, (11.0, 10.0), (10.0, 9.0)), 0.0, 1.0),  # caudate head
    ((27.0, -1.0, 2.0), (6.0, (16.0, 15.0), (11.0, 10.0)), -8.0, 1.0),  # putamen
    ((20.5, 0.0, 0.0), (3.5, (8.0, 7.0), (6.5, 6.5)), -8.0, 0.85),  # globus pallidus
    ((10.5, 15.0, 6.0), (8.5, (14.0, 13.0), (10.0, 9.5)), 0.0, 0.95),  # thalamus
)
_CAUDATE_BODY = ((16.0, -2.0, 16.0), (19.0, 24.0, 19.0), (3.5, 2.0))  # start, end, radii
# Course of the left lateral ventricle (x, y, z, radius in mm of the reference head): frontal
# horn tip, foramen of Monro, body, atrium, occipital horn tip, temporal horn, its tip.
_VENTRICLE = (
    (13.0, -30.0, 8.0, 3.0),
    (9.0, -16.0, 14.0, 5.0),
    (11.0, 4.0, 18.0, 4.0),
    (24.0, 30.0, 12.0, 6.0),
    (20.0, 52.0, 6.0, 2.5),
    (32.0, 18.0, -6.0, 3.0),
    (32.0, -4.0, -18.0, 2.0),
)
_VENTRICLE_SEGMENTS = ((0, 1), (1, 2), (2, 3), (3, 4), (3, 5), (5, 6))


def _paint_deep(
    canvas: _Canvas,
    frame: _HeadFrame,
    rng: np.random.Generator,
    k: float,
    atrophy: float,
    suv: dict[str, float],
) -> None:
    """Paint the deep grey nuclei (:data:`_NUCLEI`, caudate body) and the ventricles.

    Each lateral ventricle is a chain of tapered capsules along its C-shaped course
    (:data:`_VENTRICLE`), the two kept 2.4 mm apart by the septum pellucidum; the third
    ventricle is a 3 mm slit between the thalami, the fourth lies between the pons and the
    vermis. Ventricles are 0.85-1.15 times their reference size, up to 1.7 times more with
    atrophy.
    """
    region = frame.box((-48.0 * k, -46.0 * k, -30.0 * k), (48.0 * k, 72.0 * k, 40.0 * k))
    if region is None:
        return
    lx, ly, lz = frame.coords(region)
    vent = (1.0 + 0.7 * atrophy) * rng.uniform(0.85, 1.15)
    for side in (-1.0, 1.0):
        for centre, radii, yaw, factor in _NUCLEI:
            depth = _lobe_depth(
                lx,
                ly,
                lz,
                (side * centre[0] * k, centre[1] * k, centre[2] * k),
                (
                    radii[0] * k,
                    (radii[1][0] * k, radii[1][1] * k),
                    (radii[2][0] * k, radii[2][1] * k),
                ),
                side * yaw,
            )
            canvas.fill(Label.DEEP_GREY, _DEEP_GM, factor * suv["deep"], _coverage(-depth), region)
        start, end, width = _CAUDATE_BODY
        body = _capsule_level(
            lx,
            ly,
            lz,
            (side * start[0] * k, start[1] * k, start[2] * k),
            (side * end[0] * k, end[1] * k, end[2] * k),
            (width[0] * k, width[1] * k),
        )
        canvas.fill(Label.DEEP_GREY, _DEEP_GM, suv["deep"], _coverage(body), region)
    for side in (-1.0, 1.0):
        level = None
        for a, b in _VENTRICLE_SEGMENTS:
            (xa, ya, za, ra), (xb, yb, zb, rb) = _VENTRICLE[a], _VENTRICLE[b]
            piece = _capsule_level(
                lx,
                ly,
                lz,
                (side * xa * k, ya * k, za * k),
                (side * xb * k, yb * k, zb * k),
                (ra * k * vent, rb * k * vent),
            )
            level = piece if level is None else -_smooth_max(-level, -piece, 3.0 * k)
        septum = 1.2 - side * lx
        canvas.fill(Label.CSF, _CSF, suv["csf"], _coverage(np.maximum(level, septum)), region)
    for centre, radii in (
        ((0.0, 8.0, 4.0), (1.5 * vent, 12.0, 8.0)),  # third ventricle
        ((0.0, 33.0, -30.0), (5.0, 4.0 * vent, 8.0)),  # fourth ventricle
    ):
        world = frame.world((centre[0] * k, centre[1] * k, centre[2] * k))
        scaled = (radii[0] * k, radii[1] * k, radii[2] * k)
        canvas.paint_ellipsoid(world, scaled, Label.CSF, _CSF, suv["csf"], frame.yaw_deg)


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
        ``tracer``, ``mr_lesions`` and ``mr_spheres`` (brain), ``weight_kg`` and
        ``height_m`` (body), ``ratio`` (nema).

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
