"""Typed metadata of a PET (or anatomical) DICOM series.

The reader (:func:`pet_recon.io.series.read_series`) returns a float32 volume together with
a :class:`SeriesMeta`; the writer (:func:`pet_recon.io.writer.write_derived_series`) takes
that same object back. This is the nnU-Net reader/writer pattern: geometry, units, SUV
inputs and provenance travel together, so a derived series keeps every SUV input of its
source and a viewer computes the same SUV scale from it.

Conventions
-----------
- Volumes are numpy arrays of shape ``(slices, rows, columns)``, index order ``[k, j, i]``.
- Patient coordinates are DICOM LPS in millimetres.
- Geometry follows SimpleITK: ``spacing`` and ``origin`` are in ``(x, y, z)`` = (column,
  row, slice) order and ``direction`` is a row-major 3x3 matrix whose *columns* are the unit
  vectors of the column, row and slice axes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pydicom
import SimpleITK as sitk


@dataclass(frozen=True)
class VolumeGeometry:
    """Voxel grid of a volume in patient coordinates.

    Attributes
    ----------
    shape : tuple of int
        ``(slices, rows, columns)``.
    origin : tuple of float
        Centre of voxel ``[0, 0, 0]`` in LPS millimetres.
    spacing : tuple of float
        ``(column spacing, row spacing, slice spacing)`` in millimetres; slice spacing is the
        distance between slice centres along the slice normal (not SliceThickness).
    direction : tuple of float
        Nine numbers, the row-major 3x3 direction matrix (SimpleITK convention).
    """

    shape: tuple[int, int, int]
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, float, float, float, float, float, float, float, float]

    def to_sitk(self, volume: np.ndarray) -> sitk.Image:
        """Wrap ``volume`` (shape ``self.shape``) as a SimpleITK image with this geometry."""
        if tuple(volume.shape) != tuple(self.shape):
            raise ValueError(f"volume shape {volume.shape} does not match geometry {self.shape}")
        image = sitk.GetImageFromArray(np.ascontiguousarray(volume))
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetSpacing(tuple(float(v) for v in self.spacing))
        image.SetDirection(tuple(float(v) for v in self.direction))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> VolumeGeometry:
        """Geometry of a 3D SimpleITK image."""
        size = image.GetSize()
        return cls(
            shape=(int(size[2]), int(size[1]), int(size[0])),
            origin=tuple(float(v) for v in image.GetOrigin()),
            spacing=tuple(float(v) for v in image.GetSpacing()),
            direction=tuple(float(v) for v in image.GetDirection()),
        )

    def slice_position(self, k: int) -> tuple[float, float, float]:
        """ImagePositionPatient (mm) of slice ``k``: origin + k * spacing_z * normal."""
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        p = np.asarray(self.origin, dtype=float) + k * self.spacing[2] * d[:, 2]
        return (float(p[0]), float(p[1]), float(p[2]))


@dataclass(frozen=True)
class Radiopharmaceutical:
    """Radiopharmaceutical Information Sequence, first item, in SI-like units.

    Attributes
    ----------
    name : str or None
        Radiopharmaceutical (0018,0031) or the code meaning of (0054,0304), e.g. ``"FDG"``.
    radionuclide : str or None
        Code meaning of the Radionuclide Code Sequence, e.g. ``"^18^Fluorine"``.
    half_life_s : float or None
        Radionuclide Half Life in seconds.
    total_dose_bq : float or None
        Injected activity in Bq (values written in MBq are converted; see docs/dicom.md).
    start : datetime or None
        Injection start. From Radiopharmaceutical Start DateTime, else Start Time on the
        series date (the day before when that would fall after the acquisition).
    positron_fraction : float or None
        Radionuclide Positron Fraction.
    """

    name: str | None = None
    radionuclide: str | None = None
    half_life_s: float | None = None
    total_dose_bq: float | None = None
    start: datetime | None = None
    positron_fraction: float | None = None


@dataclass(frozen=True)
class PatientInfo:
    """Patient attributes used for SUV and the meta-information prompt (no identifiers)."""

    weight_kg: float | None = None
    height_m: float | None = None
    sex: str | None = None  # "M", "F", "O" or None
    age_years: float | None = None


@dataclass(frozen=True)
class AcquisitionInfo:
    """Acquisition and reconstruction attributes.

    Per-slice tuples are in the reader's sorted slice order (same as the volume's axis 0).
    """

    manufacturer: str | None = None
    model: str | None = None
    units: str | None = None  # Units (0054,1001): BQML, CNTS, GML, CM2ML, PROPCPS, ...
    suv_type: str | None = None  # SUV Type (0054,1006) of GML/CM2ML images: BW, LBMJAMES128, ...
    decay_correction: str | None = None  # START, ADMIN or NONE
    series_datetime: datetime | None = None
    acquisition_datetimes: tuple[datetime | None, ...] = ()
    frame_duration_s: tuple[float | None, ...] = ()
    decay_factors: tuple[float | None, ...] = ()
    reconstruction_method: str | None = None
    corrected_image: tuple[str, ...] = ()
    slice_thickness_mm: float | None = None
    ge_scan_datetime: datetime | None = None  # GE private (0009,100D)
    philips_suv_scale: tuple[float | None, ...] = ()  # Philips private (7053,1000) per slice
    philips_activity_scale: tuple[float | None, ...] = ()  # Philips private (7053,1009)


@dataclass(frozen=True)
class SourceReference:
    """Identity of the source series, for provenance of derived series."""

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str | None
    sop_class_uid: str
    sop_instance_uids: tuple[str, ...]  # per slice, sorted order
    series_number: int | None = None
    series_description: str | None = None
    modality: str = "PT"


@dataclass
class SeriesMeta:
    """Everything the reader knows about a series, and everything the writer needs back.

    Attributes
    ----------
    geometry : VolumeGeometry
    modality : str
    units : str or None
        Units of the rescaled stored values (the volume the reader returns).
    patient, radiopharmaceutical, acquisition : see their classes.
    source : SourceReference
    headers : list of pydicom.Dataset
        Per-slice headers in sorted order, pixel data removed. The writer copies the
        patient, study, equipment and PET modules from these.
    files : list of str
        Source file paths in sorted order (or ``zip:member`` names).
    warnings : list of str
        Problems found while reading that did not stop it.
    """

    geometry: VolumeGeometry
    modality: str
    units: str | None
    patient: PatientInfo
    radiopharmaceutical: Radiopharmaceutical
    acquisition: AcquisitionInfo
    source: SourceReference
    headers: list[pydicom.Dataset] = field(default_factory=list, repr=False)
    files: list[str] = field(default_factory=list, repr=False)
    warnings: list[str] = field(default_factory=list)
