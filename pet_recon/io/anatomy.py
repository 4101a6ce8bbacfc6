"""An anatomical image (MR or CT) brought onto the PET grid.

The anatomical guidance of the restoration needs, for every PET voxel, the value of an MR or
CT image of the same patient at the same place. This module reads that series with the
backbone reader (:func:`~pet_recon.io.series.read_series`), registers it rigidly to the PET
when the two do not share a frame of reference, and resamples it onto the PET grid.

Conventions (``docs/anatomy.md`` has the details):

- Positions are DICOM LPS millimetres; grids are :class:`~pet_recon.io.metadata.VolumeGeometry`
  (SimpleITK origin, spacing and direction); volumes are ``(slices, rows, columns)``.
- A transform maps a **PET physical point to the anatomy physical point** shown there (the
  SimpleITK resampling convention: the PET grid is the fixed image, the anatomy the moving one).
- Resampling is trilinear; points outside the anatomy get the anatomy's minimum value (air:
  about -1000 HU for CT, about 0 for MR). When the PET grid is coarser than the anatomy's by
  more than :data:`~pet_recon.io.resample.ANTIALIAS_RATIO` along an anatomy axis, a Gaussian
  of :data:`~pet_recon.io.resample.ANTIALIAS_SIGMA` PET voxels (standard deviation) first
  removes detail the PET grid cannot hold (:func:`~pet_recon.io.resample.resample_volume`,
  the same resampling as for the PET itself).
- The anatomy must cover at least :data:`MIN_COVERAGE` of the PET voxels (voxel centres
  inside the anatomy's voxel extent after the transform); otherwise a
  :class:`~pet_recon.errors.PetReconError` names the anatomical series and its folder.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pet_recon.errors import PetReconError, warn
from pet_recon.io.metadata import SeriesMeta, VolumeGeometry
from pet_recon.io.resample import antialias_variance, resample_volume
from pet_recon.io.series import find_series, read_series

__all__ = [
    "ANATOMY_MODALITIES",
    "MIN_COVERAGE",
    "RegistrationResult",
    "coverage",
    "frames_of_reference_differ",
    "prepare_anatomy",
    "read_anatomy",
    "register_rigid",
    "to_pet_grid",
]

log = logging.getLogger(__name__)

ANATOMY_MODALITIES = ("MR", "CT")
"""Modalities (0008,0060) accepted as anatomical images."""
MIN_COVERAGE = 0.5
"""Smallest fraction of PET voxel centres that must fall inside the anatomical image."""

HISTOGRAM_BINS = 32
"""Mattes mutual information histogram bins."""
SHRINK_FACTORS = (4, 2, 1)
"""Multi-resolution shrink factors (coarse to fine), in voxels of each image."""
SMOOTHING_SIGMAS = (2.0, 1.0, 0.0)
"""Gaussian smoothing per level, in voxels of the full-resolution images."""
SAMPLES_PER_LEVEL = 30_000
"""Metric samples per level (random, fixed seed); all voxels when the level has fewer."""
MAX_ITERATIONS = 200
"""Optimiser iterations per level."""
LEARNING_RATE = 2.0
"""Initial step of the regular step gradient descent (scaled parameter units, about mm)."""
MIN_STEP = 1e-4
"""Step length at which a level has converged (1e-3 stops rotations short by ~1 degree)."""
RELAXATION = 0.5
"""Factor applied to the step each time the gradient changes direction."""
CLIP_PERCENTILES = (0.5, 99.5)
"""Intensities are clipped to these percentiles before registration (hot spots, metal)."""


@dataclass(frozen=True)
class RegistrationResult:
    """Rigid transform from the PET to the anatomical image, found by :func:`register_rigid`.

    Attributes
    ----------
    transform : SimpleITK.Euler3DTransform
        Maps a PET physical point (LPS mm) to the anatomy physical point shown there; its
        centre is the centre of the PET grid. Pass it to :func:`to_pet_grid`.
    translation_mm : tuple of float
        ``(x, y, z)`` translation in LPS mm: where the centre of the PET grid lands in the
        anatomy, minus that centre.
    rotation_deg : tuple of float
        Euler angles about x, y and z in degrees (ITK ``Euler3DTransform``: ``R = Rz Rx Ry``).
    metric : float
        Final Mattes mutual information (negative; lower is better).
    iterations : int
        Optimiser iterations, all levels together.
    converged : bool
        The finest level stopped before :data:`MAX_ITERATIONS` (step or gradient small).
    stop_condition : str
        The optimiser's description of why it stopped at the finest level.
    initialization : str
        ``"identity"`` (the headers' positions) or ``"geometry centres"`` (the grid centres
        brought together), whichever gave the better initial metric.
    seconds : float
        Wall time of the registration.
    """

    transform: sitk.Euler3DTransform
    translation_mm: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    metric: float
    iterations: int
    converged: bool
    stop_condition: str
    initialization: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The result without the transform object, JSON-serialisable."""
        return {
            "translation_mm": list(self.translation_mm),
            "rotation_deg": list(self.rotation_deg),
            "metric_mattes_mi": self.metric,
            "iterations": self.iterations,
            "converged": self.converged,
            "stop_condition": self.stop_condition,
            "initialization": self.initialization,
            "seconds": self.seconds,
        }


def read_anatomy(path: Path, series_uid: str | None = None) -> tuple[np.ndarray, SeriesMeta]:
    """Read an MR or CT series.

    Parameters
    ----------
    path : Path
        A folder (searched recursively), a ``.zip`` archive or a single DICOM file.
    series_uid : str, optional
        SeriesInstanceUID to read; needed when ``path`` holds several MR or CT series. Other
        series (a PET next to its CT, for instance) are ignored when it is not given.

    Returns
    -------
    volume : np.ndarray
        float32, shape ``(slices, rows, columns)``, rescaled stored values (HU for CT,
        arbitrary units for MR).
    meta : SeriesMeta
        Geometry, provenance and headers of the series.

    Raises
    ------
    PetReconError
        ``path`` holds no MR or CT series (a PET series, for instance), several of them and
        no ``series_uid``, or a series the reader refuses; the message names ``path``.
    """
    path = Path(path)
    if series_uid is None:
        found = find_series(path)
        anatomical = [s for s in found if s.modality in ANATOMY_MODALITIES]
        if len(anatomical) > 1:
            listing = "; ".join(f"{s.modality} {s.describe()}" for s in anatomical)
            raise PetReconError(
                f"{path}: {len(anatomical)} MR/CT series found; choose one by its "
                f"SeriesInstanceUID: {listing}"
            )
        if not anatomical:
            if not found:
                raise PetReconError(f"{path}: no DICOM image files found")
            _refuse_modality(path, sorted({s.modality for s in found}))
        series_uid = anatomical[0].series_instance_uid
    volume, meta = read_series(path, series_uid, modality=None)
    if meta.modality not in ANATOMY_MODALITIES:
        _refuse_modality(path, [meta.modality])
    return volume, meta


def _refuse_modality(path: Path, modalities: list[str]) -> None:
    if "PT" in modalities:
        raise PetReconError(f"{path} is a PET series; --anatomy needs MR or CT")
    raise PetReconError(
        f"{path}: Modality {', '.join(modalities)}; --anatomy needs MR or CT"
    )


def frames_of_reference_differ(pet_meta: SeriesMeta, anatomy_meta: SeriesMeta) -> bool:
    """Whether the two series may not share patient coordinates.

    Parameters
    ----------
    pet_meta, anatomy_meta : SeriesMeta
        Metadata from the reader; ``source.frame_of_reference_uid`` is the Frame of
        Reference UID (0020,0052) of the series' first header.

    Returns
    -------
    bool
        True when the Frame of Reference UIDs differ or either is missing (nothing then
        says the coordinates agree); False when both are present and equal.
    """
    pet_for = pet_meta.source.frame_of_reference_uid
    anatomy_for = anatomy_meta.source.frame_of_reference_uid
    return pet_for is None or anatomy_for is None or pet_for != anatomy_for


def coverage(
    anatomy_geometry: VolumeGeometry,
    pet_geometry: VolumeGeometry,
    transform: sitk.Transform | None = None,
) -> float:
    """Fraction of PET voxel centres that fall inside the anatomical image.

    Parameters
    ----------
    anatomy_geometry, pet_geometry : VolumeGeometry
        The two grids (LPS mm).
    transform : SimpleITK.Transform, optional
        PET physical point -> anatomy physical point; identity when None.

    Returns
    -------
    float
        In ``[0, 1]``: a PET voxel counts when its centre, transformed, lies within half a
        voxel of the anatomy's voxel centres along every axis (where SimpleITK interpolates).
    """
    ones = anatomy_geometry.to_sitk(np.ones(anatomy_geometry.shape, np.uint8))
    reference = pet_geometry.to_sitk(np.zeros(pet_geometry.shape, np.uint8))
    inside = sitk.Resample(
        ones, reference, _or_identity(transform), sitk.sitkNearestNeighbor, 0
    )
    return float(sitk.GetArrayViewFromImage(inside).mean())


def to_pet_grid(
    anatomy: np.ndarray,
    anatomy_geometry: VolumeGeometry,
    pet_geometry: VolumeGeometry,
    transform: sitk.Transform | None = None,
    *,
    label: str = "anatomical image",
) -> np.ndarray:
    """Resample an anatomical volume onto the PET grid.

    Parameters
    ----------
    anatomy : np.ndarray
        Shape ``anatomy_geometry.shape`` ``(slices, rows, columns)``, any real dtype, in its
        own units (HU, MR units).
    anatomy_geometry, pet_geometry : VolumeGeometry
        The grids of the anatomy and of the PET (origin, spacing, direction in LPS mm).
    transform : SimpleITK.Transform, optional
        PET physical point -> anatomy physical point (e.g.
        :attr:`RegistrationResult.transform`); identity (the headers' positions) when None.
    label : str
        Name of the anatomical series (folder and UID) for the error message.

    Returns
    -------
    np.ndarray
        float32, shape ``pet_geometry.shape``, the anatomy's units; trilinear interpolation
        after the anti-aliasing Gaussian of the module description; PET voxels outside the
        anatomy hold the anatomy's minimum value.

    Raises
    ------
    PetReconError
        Fewer than :data:`MIN_COVERAGE` of the PET voxel centres fall inside the anatomy.
    ValueError
        ``anatomy`` does not match ``anatomy_geometry``.
    """
    covered = coverage(anatomy_geometry, pet_geometry, transform)
    if covered < MIN_COVERAGE:
        where = (
            f"anatomy centre {_fmt(_centre(anatomy_geometry))} mm, PET centre "
            f"{_fmt(_centre(pet_geometry))} mm (LPS)"
        )
        amount = (
            "at all" if covered == 0.0
            else f"enough: it covers {100 * covered:.0f}% of the PET voxels, at least "
            f"{100 * MIN_COVERAGE:.0f}% needed"
        )
        raise PetReconError(
            f"{label}: does not overlap the PET volume {amount} ({where}); is it the same "
            "patient and frame of reference?"
        )
    outside = float(np.min(anatomy)) if np.size(anatomy) else 0.0
    return resample_volume(anatomy, anatomy_geometry, pet_geometry, transform, outside)


def register_rigid(
    pet: np.ndarray,
    pet_geometry: VolumeGeometry,
    anatomy: np.ndarray,
    anatomy_geometry: VolumeGeometry,
    *,
    seed: int = 0,
) -> RegistrationResult:
    """Rigid registration of the anatomy to the PET by Mattes mutual information.

    The PET is the fixed image, the anatomy the moving one. Both are clipped to their
    :data:`CLIP_PERCENTILES`; the transform starts at the identity or at the geometry
    centres brought together (SimpleITK ``CenteredTransformInitializer``, GEOMETRY),
    whichever has the better metric; then regular step gradient descent with physical-shift
    parameter scales runs over :data:`SHRINK_FACTORS` levels with :data:`SAMPLES_PER_LEVEL`
    random samples drawn with ``seed``. The result is reproducible for a given ``seed`` and
    number of SimpleITK threads.

    Parameters
    ----------
    pet : np.ndarray
        Shape ``pet_geometry.shape`` ``(slices, rows, columns)``, any linear PET unit.
    pet_geometry : VolumeGeometry
        The PET grid (LPS mm).
    anatomy : np.ndarray
        Shape ``anatomy_geometry.shape``, MR or CT values.
    anatomy_geometry : VolumeGeometry
        The anatomy grid (LPS mm).
    seed : int
        Seed (>= 0) of the metric's random sampling. SimpleITK takes seed 0 to mean "seed from
        the wall clock", so ``seed + 1`` is passed on: every ``seed`` here is reproducible.

    Returns
    -------
    RegistrationResult
        The transform (PET point -> anatomy point) and its parameters.

    Raises
    ------
    PetReconError
        The images do not overlap enough for the metric (SimpleITK stops with too few
        samples inside the anatomy).
    ValueError
        A volume does not match its geometry, or ``seed`` is negative.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    t0 = time.perf_counter()
    fixed = pet_geometry.to_sitk(_clipped(pet))
    moving = anatomy_geometry.to_sitk(_clipped(anatomy))
    centred = sitk.Euler3DTransform(
        sitk.CenteredTransformInitializer(
            fixed, moving, sitk.Euler3DTransform(),
            sitk.CenteredTransformInitializerFilter.GEOMETRY,
        )
    )
    identity = sitk.Euler3DTransform()
    identity.SetCenter(centred.GetCenter())
    candidates = [("identity", identity), ("geometry centres", centred)]
    scores = [
        _initial_metric(fixed, moving, transform, pet_geometry, anatomy_geometry, seed)
        for _, transform in candidates
    ]
    best = int(np.argmin(scores))
    if not np.isfinite(scores[best]):
        raise PetReconError(
            "the anatomical image does not overlap the PET volume, neither at the headers' "
            "positions nor with the grid centres brought together"
        )
    initialization, initial = candidates[best]

    method = _registration_method(fixed, seed)
    method.SetInitialTransform(initial, inPlace=True)
    iterations = [0]
    method.AddCommand(sitk.sitkIterationEvent, lambda: iterations.__setitem__(0, iterations[0] + 1))
    try:
        method.Execute(fixed, moving)
    except RuntimeError as exc:
        raise PetReconError(f"rigid registration failed: {_sitk_message(exc)}") from exc
    angles = initial.GetAngleX(), initial.GetAngleY(), initial.GetAngleZ()
    return RegistrationResult(
        transform=initial,
        translation_mm=_triple(initial.GetTranslation()),
        rotation_deg=_triple(np.degrees(angles)),
        metric=float(method.GetMetricValue()),
        iterations=iterations[0],
        converged=method.GetOptimizerIteration() < MAX_ITERATIONS,
        stop_condition=method.GetOptimizerStopConditionDescription(),
        initialization=initialization,
        seconds=time.perf_counter() - t0,
    )


def prepare_anatomy(
    path: Path,
    pet: np.ndarray,
    pet_meta: SeriesMeta,
    *,
    register: bool | None = None,
    series_uid: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an MR or CT series, register it when needed, and resample it onto the PET grid.

    Parameters
    ----------
    path : Path
        Folder, ``.zip`` archive or file holding the anatomical series.
    pet : np.ndarray
        The PET volume, float32 ``(slices, rows, columns)`` on ``pet_meta.geometry``, any
        linear unit (used only as the registration's fixed image).
    pet_meta : SeriesMeta
        Metadata of the PET series (geometry and Frame of Reference UID).
    register : bool or None
        None: register only when the frames of reference differ
        (:func:`frames_of_reference_differ`); True: always; False: never.
    series_uid : str, optional
        SeriesInstanceUID of the anatomical series, when ``path`` holds several.

    Returns
    -------
    anatomy : np.ndarray
        float32, shape ``pet_meta.geometry.shape`` ``(slices, rows, columns)``, the anatomy
        on the PET grid in its own units (HU for CT).
    report : dict
        JSON-serialisable: ``modality``, ``series_instance_uid``, ``series_description``,
        ``folder``, ``frame_of_reference_uid``, ``pet_frame_of_reference_uid``,
        ``frames_of_reference_differ``, ``registered``, ``registration_reason``,
        ``registration`` (:meth:`RegistrationResult.to_dict`, or None), ``coverage``
        (fraction of PET voxels inside the anatomy), ``outside_value``, ``anatomy_grid``
        (shape, spacing_mm), ``antialias_sigma_mm`` and ``warnings``.

    Raises
    ------
    PetReconError
        Not an MR or CT series, unreadable, or not overlapping the PET (see
        :func:`to_pet_grid`); the message names ``path`` and the series.
    """
    path = Path(path)
    if tuple(pet.shape) != tuple(pet_meta.geometry.shape):
        raise ValueError(f"PET shape {pet.shape} does not match geometry {pet_meta.geometry.shape}")
    volume, meta = read_anatomy(path, series_uid)
    uid = meta.source.series_instance_uid
    label = f"{path} ({meta.modality} series {uid})"
    warnings = list(meta.warnings)
    differ = frames_of_reference_differ(pet_meta, meta)
    pet_for = pet_meta.source.frame_of_reference_uid
    anatomy_for = meta.source.frame_of_reference_uid
    if register is None:
        do_register = differ
        reason = (
            "frames of reference differ" if differ and pet_for and anatomy_for
            else "Frame of Reference UID missing" if differ
            else "same frame of reference"
        )
    else:
        do_register = register
        reason = "registration requested" if register else "registration disabled"
        if not register and differ:
            warn(warnings, "frames of reference differ (or one is missing) but registration is "
                 "disabled: the anatomy is placed by the headers' positions only", log)
    result = None
    if do_register:
        try:
            result = register_rigid(pet, pet_meta.geometry, volume, meta.geometry)
        except PetReconError as exc:
            raise PetReconError(f"{label}: {exc}") from exc
        if not result.converged:
            warn(warnings, f"rigid registration did not converge: {result.stop_condition}", log)
    transform = None if result is None else result.transform
    resampled = to_pet_grid(volume, meta.geometry, pet_meta.geometry, transform, label=label)
    variance = antialias_variance(meta.geometry, pet_meta.geometry)
    report: dict[str, Any] = {
        "modality": meta.modality,
        "series_instance_uid": uid,
        "series_description": meta.source.series_description,
        "folder": str(path),
        "frame_of_reference_uid": anatomy_for,
        "pet_frame_of_reference_uid": pet_for,
        "frames_of_reference_differ": differ,
        "registered": result is not None,
        "registration_reason": reason,
        "registration": None if result is None else result.to_dict(),
        "coverage": coverage(meta.geometry, pet_meta.geometry, transform),
        "outside_value": float(volume.min()),
        "anatomy_grid": {
            "shape": list(meta.geometry.shape),
            "spacing_mm": list(meta.geometry.spacing),
        },
        "antialias_sigma_mm": [float(np.sqrt(v)) for v in variance],
        "warnings": warnings,
    }
    return resampled, report


def _registration_method(fixed: sitk.Image, seed: int) -> sitk.ImageRegistrationMethod:
    """Mattes MI, random sampling (SimpleITK seed ``seed + 1``), linear interpolation, RSGD."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    n_voxels = int(np.prod(fixed.GetSize()))
    method.SetMetricSamplingPercentagePerLevel(
        [min(1.0, SAMPLES_PER_LEVEL * f**3 / n_voxels) for f in SHRINK_FACTORS], seed + 1
    )
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=LEARNING_RATE, minStep=MIN_STEP, numberOfIterations=MAX_ITERATIONS,
        relaxationFactor=RELAXATION, gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(SHRINK_FACTORS))
    method.SetSmoothingSigmasPerLevel(list(SMOOTHING_SIGMAS))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


def _initial_metric(
    fixed: sitk.Image,
    moving: sitk.Image,
    transform: sitk.Euler3DTransform,
    pet_geometry: VolumeGeometry,
    anatomy_geometry: VolumeGeometry,
    seed: int,
) -> float:
    """Mattes MI at ``transform`` at the coarsest level; inf when the overlap is too small."""
    if coverage(anatomy_geometry, pet_geometry, transform) < MIN_COVERAGE:
        return float("inf")
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    n_voxels = int(np.prod(fixed.GetSize()))
    method.SetMetricSamplingPercentage(min(1.0, SAMPLES_PER_LEVEL / n_voxels), seed + 1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(sitk.Euler3DTransform(transform), inPlace=False)
    try:
        return float(method.MetricEvaluate(fixed, moving))
    except RuntimeError:  # too few samples inside the moving image
        return float("inf")


def _or_identity(transform: sitk.Transform | None) -> sitk.Transform:
    return sitk.Transform() if transform is None else transform


def _clipped(volume: np.ndarray) -> np.ndarray:
    """float32 copy clipped to :data:`CLIP_PERCENTILES` (of a strided subsample)."""
    data = np.asarray(volume, dtype=np.float32)
    sample = data.ravel()[:: max(1, data.size // 200_000)]
    low, high = np.percentile(sample, CLIP_PERCENTILES)
    return np.clip(data, low, high).astype(np.float32, copy=False)


def _centre(geometry: VolumeGeometry) -> np.ndarray:
    """Physical centre (LPS mm) of the grid's voxel centres, float64 ``(3,)``."""
    d = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    half = (np.asarray(geometry.shape[::-1], dtype=float) - 1.0) / 2.0
    return np.asarray(geometry.origin, dtype=float) + d @ (np.asarray(geometry.spacing) * half)


def _fmt(point: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.0f}" for v in point) + ")"


def _triple(values: Any) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in values)
    return (x, y, z)


def _sitk_message(exc: Exception) -> str:
    """The last non-empty line of a SimpleITK exception (the ITK error itself)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
