"""Discover and read DICOM image series (PET first, any modality on request).

The input is a folder (searched recursively), a ``.zip`` archive (members are read in
memory, nothing is extracted) or a single DICOM file. Files are grouped by
SeriesInstanceUID; files that are not DICOM images are skipped with a warning.

:func:`read_series` returns the rescaled volume, float32 of shape ``(slices, rows, columns)``
in the stored units (Bq/ml for Units BQML), and a :class:`~pet_recon.io.metadata.SeriesMeta`.
Slices are sorted along the slice normal (the cross product of the row and column
directions of ImageOrientationPatient). The reader refuses, with a one-line
:class:`~pet_recon.errors.PetReconError`, what it cannot represent as one regular grid:

- more than one orientation (direction cosines differing by more than ``1e-4``),
  matrix size or pixel spacing (more than ``1e-3`` mm);
- two slices at the same position (closer than ``0.01`` mm along the normal);
- gantry tilt: slice positions drifting off the slice normal by more than half a pixel;
- non-uniform slice spacing: a gap differing from the median gap by more than
  ``max(1e-2 * median, 0.01 mm)`` (a missing slice, for instance);
- multi-frame images, missing or truncated pixel data.
"""

from __future__ import annotations

import io
import logging
import math
import re
import zipfile
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import DA, DT, TM

from pet_recon.errors import PetReconError, warn
from pet_recon.io.metadata import (
    AcquisitionInfo,
    PatientInfo,
    Radiopharmaceutical,
    SeriesMeta,
    SourceReference,
    VolumeGeometry,
)

logger = logging.getLogger(__name__)

ORIENTATION_TOL = 1e-4
"""Largest difference between direction cosines of slices of one series."""
PIXEL_SPACING_TOL_MM = 1e-3
"""Largest difference between the pixel spacings of slices of one series, mm."""
SLICE_SPACING_REL_TOL = 1e-2
"""Largest gap deviation from the median gap, relative to the median gap ..."""
SLICE_SPACING_ABS_TOL_MM = 0.01
"""... or in mm, whichever is larger; also the distance below which positions coincide."""
MBQ_DOSE_LIMIT = 1e5
"""A Radionuclide Total Dose below this is taken to be written in MBq instead of Bq."""

_GE_PET_CREATOR = "GEMS_PETD_01"
_PHILIPS_PET_CREATOR = "Philips PET Private Group"
_MODALITY_NAMES = {"PT": "PET"}
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


@dataclass(frozen=True)
class SeriesSummary:
    """One image series found by :func:`find_series`.

    Attributes
    ----------
    series_instance_uid : str
    modality : str
        Modality (0008,0060), e.g. ``"PT"``.
    description : str
        Series Description (0008,103E), empty when absent.
    series_number : int or None
    n_slices : int
        Number of images (frames) in the series.
    files : tuple of str
        The series' file paths (``archive.zip:member`` for zip members), unsorted.
    """

    series_instance_uid: str
    modality: str
    description: str
    series_number: int | None
    n_slices: int
    files: tuple[str, ...]

    def describe(self) -> str:
        """One-line description: UID, description and number of slices."""
        return f"{self.series_instance_uid} ({self.description!r}, {self.n_slices} slices)"


class _Input:
    """A folder, a zip archive or a single file, giving access to its files by label."""

    def __init__(self, path: Path) -> None:
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, str] = {}
        if not path.exists():
            raise PetReconError(f"{path}: no such file or folder")
        if path.is_dir():
            self.labels = sorted(str(p) for p in path.rglob("*") if p.is_file())
        elif path.suffix.lower() == ".zip":
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise PetReconError(f"{path}: not a readable zip archive ({exc})") from exc
            names = sorted(info.filename for info in self._zip.infolist() if not info.is_dir())
            self._members = {f"{path}:{name}": name for name in names}
            self.labels = list(self._members)
        else:
            self.labels = [str(path)]

    def open(self, label: str) -> BinaryIO:
        """A binary stream of ``label`` (zip members are read into memory)."""
        if self._zip is None:
            return open(label, "rb")  # closed by the caller's with-block
        return io.BytesIO(self._zip.read(self._members[label]))

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> _Input:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def find_series(path: Path) -> list[SeriesSummary]:
    """List the DICOM image series under ``path``.

    Parameters
    ----------
    path : Path
        A folder (searched recursively), a ``.zip`` archive or a single DICOM file.

    Returns
    -------
    list of SeriesSummary
        Sorted by modality, series number and UID. Files that are not DICOM images are
        skipped and reported with a ``logging`` warning.

    Raises
    ------
    PetReconError
        ``path`` does not exist or is an unreadable zip archive.
    """
    with _Input(Path(path)) as inp:
        series, _ = _discover(inp)
    return series


def read_series(
    path: Path, series_uid: str | None = None, modality: str | None = "PT",
    also_read: Collection[str] = (),
) -> tuple[np.ndarray, SeriesMeta]:
    """Read one image series as a volume with its metadata.

    Parameters
    ----------
    path : Path
        A folder (searched recursively), a ``.zip`` archive or a single DICOM file.
    series_uid : str, optional
        SeriesInstanceUID to read; needed when ``path`` holds several series of
        ``modality``.
    modality : str or None
        Modality to look for (default ``"PT"``); ``None`` accepts any modality.
    also_read : collection of str
        SeriesInstanceUIDs of series under ``path`` that the caller reads too (``inspect-meta``
        reads every PET series): the warning about series not read leaves them out.

    Returns
    -------
    volume : np.ndarray
        float32, shape ``(slices, rows, columns)``, slices sorted along the slice normal,
        per-slice RescaleSlope/RescaleIntercept applied: values in the stored units
        (``meta.units``, e.g. Bq/ml for BQML).
    meta : SeriesMeta
        Geometry, patient, radiopharmaceutical, acquisition and provenance; per-slice
        entries in the volume's slice order.

    Raises
    ------
    PetReconError
        No or several matching series, inconsistent geometry, unreadable pixel data; the
        message names the file or folder and the problem.

    Notes
    -----
    Other series under ``path`` (an RTSTRUCT, the CT, another modality) are not read; a
    warning in ``meta.warnings`` names them.
    """
    path = Path(path)
    with _Input(path) as inp:
        found, warnings = _discover(inp)
        summary = _choose(path, found, series_uid, modality)
        others = [s for s in found
                  if s is not summary and s.series_instance_uid not in also_read]
        if others:  # an RTSTRUCT, a CT or another PET series beside the chosen one
            shown = _first_few([f"{s.modality} {s.describe()}" for s in others], "; ")
            warn(warnings, f"{path}: read series {summary.series_instance_uid}; "
                 f"not read: {len(others)} other series: {shown}", logger)
        datasets = [_read_full(inp, label) for label in summary.files]
    return _assemble(path, list(summary.files), datasets, warnings)


def _read_header(inp: _Input, label: str) -> Dataset | None:
    """Header of ``label`` when it is a DICOM image, else None.

    A file without the 128-byte preamble and "DICM" must start with a group 0002 or 0008
    element (little endian) to be parsed at all; it must then have SOPClassUID, Modality
    and SeriesInstanceUID.
    """
    try:
        with inp.open(label) as fp:
            if fp.read(132)[128:] != b"DICM":
                fp.seek(0)
                if fp.read(2) not in (b"\x02\x00", b"\x08\x00"):
                    return None
            fp.seek(0)
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
            is_image = all(ds.get(k) for k in ("SOPClassUID", "Modality", "SeriesInstanceUID"))
    except Exception:  # a damaged or non-DICOM file can fail the parser in many ways
        return None
    return ds if is_image else None


def _first_few(items: list[str], sep: str) -> str:
    """The first three of ``items`` joined by ``sep``, and how many more there are."""
    return sep.join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")


def _discover(inp: _Input) -> tuple[list[SeriesSummary], list[str]]:
    """Group the DICOM images of ``inp`` by series; warnings list the skipped files."""
    groups: dict[str, list[tuple[str, Dataset]]] = {}
    skipped: list[str] = []
    for label in inp.labels:
        ds = _read_header(inp, label)
        if ds is None:
            skipped.append(label)
        else:
            groups.setdefault(str(ds.SeriesInstanceUID), []).append((label, ds))
    warnings: list[str] = []
    if skipped:
        warn(warnings, f"skipped {len(skipped)} file(s) that are not DICOM images: "
             f"{_first_few(skipped, ', ')}", logger)
    series = []
    for uid, members in groups.items():
        first = members[0][1]
        series.append(
            SeriesSummary(
                series_instance_uid=uid,
                modality=str(first.Modality),
                description=str(first.get("SeriesDescription", "") or ""),
                series_number=_int(first.get("SeriesNumber")),
                n_slices=sum(_int(ds.get("NumberOfFrames")) or 1 for _, ds in members),
                files=tuple(label for label, _ in members),
            )
        )
    series.sort(key=lambda s: (s.modality, s.series_number or 0, s.series_instance_uid))
    return series, warnings


def _choose(
    path: Path, found: list[SeriesSummary], series_uid: str | None, modality: str | None
) -> SeriesSummary:
    """The series to read, or a one-line error saying why there is none."""
    if not found:
        raise PetReconError(f"{path}: no DICOM image files found")
    if series_uid is not None:
        chosen = [s for s in found if s.series_instance_uid == series_uid]
        if not chosen:
            listing = "; ".join(f"{s.modality} {s.describe()}" for s in found)
            raise PetReconError(f"{path}: series {series_uid} not found; found {listing}")
        if modality is not None and chosen[0].modality != modality:
            raise PetReconError(
                f"{path}: series {series_uid} has Modality {chosen[0].modality}, "
                f"expected {modality}"
            )
        return chosen[0]
    candidates = [s for s in found if modality is None or s.modality == modality]
    kind = "image" if modality is None else _MODALITY_NAMES.get(modality, modality)
    if not candidates:
        counts: dict[str, int] = {}
        for s in found:
            counts[s.modality] = counts.get(s.modality, 0) + 1
        listing = ", ".join(f"{m} ({n} series)" for m, n in counts.items())
        raise PetReconError(
            f"{path}: no {kind} series (Modality {modality}) found; found {listing}"
        )
    if len(candidates) > 1:
        listing = "; ".join(s.describe() for s in candidates)
        raise PetReconError(
            f"{path}: {len(candidates)} {kind} series found; choose one with --series-uid: "
            f"{listing}"
        )
    return candidates[0]


def _read_full(inp: _Input, label: str) -> Dataset:
    """The whole dataset; files without file meta get the transfer syntax they were read in."""
    try:
        with inp.open(label) as fp:
            ds = pydicom.dcmread(fp, force=True)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise PetReconError(f"{label}: cannot read DICOM file ({exc})") from exc
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit_vr, little_endian = ds.original_encoding
        if implicit_vr:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            ds.file_meta.TransferSyntaxUID = (
                ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian
            )
    return ds


def _assemble(
    path: Path, labels: list[str], datasets: list[Dataset], warnings: list[str]
) -> tuple[np.ndarray, SeriesMeta]:
    """Check, sort and decode the slices of one series and collect its metadata."""
    for label, ds in zip(labels, datasets, strict=True):
        _check_single_frame(label, ds)
    row, col = _orientation(labels, datasets)
    normal = np.cross(row, col)
    rows, cols, pixel_spacing = _matrix(labels, datasets)
    positions = [
        _numbers(ds, "ImagePositionPatient", 3, label)
        for label, ds in zip(labels, datasets, strict=True)
    ]
    order = sorted(range(len(datasets)), key=lambda k: float(positions[k] @ normal))
    labels = [labels[k] for k in order]
    datasets = [datasets[k] for k in order]
    positions = [positions[k] for k in order]
    slice_spacing = _slice_spacing(
        path, labels, datasets, positions, normal, pixel_spacing, warnings
    )

    volume = np.empty((len(datasets), rows, cols), dtype=np.float32)
    for k, (label, ds) in enumerate(zip(labels, datasets, strict=True)):
        volume[k] = _rescaled_pixels(label, ds, rows, cols)
        del ds.PixelData

    geometry = VolumeGeometry(
        shape=(len(datasets), rows, cols),
        origin=tuple(float(v) for v in positions[0]),
        spacing=(float(pixel_spacing[1]), float(pixel_spacing[0]), slice_spacing),
        direction=tuple(float(v) for v in np.column_stack([row, col, normal]).ravel()),
    )
    first = datasets[0]
    acquisition = _acquisition(datasets)
    meta = SeriesMeta(
        geometry=geometry,
        modality=str(first.Modality),
        units=acquisition.units,
        patient=_patient(first, warnings),
        radiopharmaceutical=_radiopharmaceutical(first, acquisition, warnings),
        acquisition=acquisition,
        source=_source(datasets),
        headers=datasets,
        files=labels,
        warnings=warnings,
    )
    return volume, meta


def _check_single_frame(label: str, ds: Dataset) -> None:
    frames = _int(ds.get("NumberOfFrames")) or 1
    if frames > 1:
        raise PetReconError(
            f"{label}: multi-frame image ({frames} frames) is not supported; "
            "export the series as single-frame images"
        )
    if "PixelData" not in ds:
        raise PetReconError(f"{label}: no pixel data (7FE0,0010) (truncated file?)")


def _orientation(labels: list[str], datasets: list[Dataset]) -> tuple[np.ndarray, np.ndarray]:
    """Unit row and column direction vectors, the same for every slice."""
    iops = [
        _numbers(ds, "ImageOrientationPatient", 6, label)
        for label, ds in zip(labels, datasets, strict=True)
    ]
    for label, iop in zip(labels, iops, strict=True):
        if np.max(np.abs(iop - iops[0])) > ORIENTATION_TOL:
            raise PetReconError(
                f"{label}: ImageOrientationPatient {list(iop)} differs from "
                f"{labels[0]} {list(iops[0])}; slices of one series must share one orientation"
            )
    row, col = iops[0][:3], iops[0][3:]
    return row / np.linalg.norm(row), col / np.linalg.norm(col)


def _matrix(labels: list[str], datasets: list[Dataset]) -> tuple[int, int, np.ndarray]:
    """Rows, Columns and PixelSpacing (row spacing, column spacing) shared by all slices."""
    shapes = [(_int(ds.get("Rows")), _int(ds.get("Columns"))) for ds in datasets]
    spacings = [
        _numbers(ds, "PixelSpacing", 2, label) for label, ds in zip(labels, datasets, strict=True)
    ]
    for label, shape, spacing in zip(labels, shapes, spacings, strict=True):
        if shape != shapes[0]:
            raise PetReconError(
                f"{label}: matrix {shape[0]}x{shape[1]} differs from {labels[0]} "
                f"{shapes[0][0]}x{shapes[0][1]}; mixed matrix sizes in one series"
            )
        if np.max(np.abs(spacing - spacings[0])) > PIXEL_SPACING_TOL_MM:
            raise PetReconError(
                f"{label}: PixelSpacing {list(spacing)} differs from {labels[0]} "
                f"{list(spacings[0])}; mixed pixel spacings in one series"
            )
    rows, cols = shapes[0]
    if not rows or not cols:
        raise PetReconError(f"{labels[0]}: missing Rows/Columns (0028,0010)/(0028,0011)")
    return rows, cols, spacings[0]


def _slice_spacing(
    path: Path,
    labels: list[str],
    datasets: list[Dataset],
    positions: list[np.ndarray],
    normal: np.ndarray,
    pixel_spacing: np.ndarray,
    warnings: list[str],
) -> float:
    """Distance between slice centres (mm) after checking the slices form a regular grid."""
    if len(positions) == 1:
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            value = _float(datasets[0].get(keyword))
            if value:
                return abs(value)
        warn(warnings, f"{labels[0]}: single slice without SliceThickness; slice spacing 1 mm",
             logger)
        return 1.0
    along = np.array([float(p @ normal) for p in positions])
    gaps = np.diff(along)
    for k, gap in enumerate(gaps):
        if gap < SLICE_SPACING_ABS_TOL_MM:
            raise PetReconError(
                f"{labels[k]} and {labels[k + 1]}: duplicate slice position "
                f"({along[k]:.2f} mm along the slice normal); dynamic or repeated "
                "acquisitions in one series are not supported"
            )
    offsets = [p - positions[0] - float((p - positions[0]) @ normal) * normal for p in positions]
    drift = max(float(np.linalg.norm(o)) for o in offsets)
    if drift > 0.5 * float(np.min(pixel_spacing)):
        raise PetReconError(
            f"{path}: gantry tilt (or sheared slices) not supported: slice positions drift "
            f"{drift:.2f} mm off the slice normal"
        )
    median = float(np.median(gaps))
    tolerance = max(SLICE_SPACING_REL_TOL * median, SLICE_SPACING_ABS_TOL_MM)
    worst = int(np.argmax(np.abs(gaps - median)))
    if abs(gaps[worst] - median) > tolerance:
        raise PetReconError(
            f"{path}: non-uniform slice spacing: {gaps[worst]:.3f} mm between "
            f"{labels[worst]} and {labels[worst + 1]}, median {median:.3f} mm "
            "(missing slice?)"
        )
    return median


def _rescaled_pixels(label: str, ds: Dataset, rows: int, cols: int) -> np.ndarray:
    """Pixel values times RescaleSlope plus RescaleIntercept, float64 ``(rows, cols)``."""
    syntax = ds.file_meta.TransferSyntaxUID
    if not syntax.is_compressed:
        samples = _int(ds.get("SamplesPerPixel")) or 1
        bits = _int(ds.get("BitsAllocated")) or 16
        expected = (rows * cols * samples * bits + 7) // 8
        if len(ds.PixelData) < expected:
            raise PetReconError(
                f"{label}: pixel data has {len(ds.PixelData)} bytes, the header needs "
                f"{expected} (truncated file?)"
            )
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types
        raise PetReconError(f"{label}: cannot decode pixel data ({syntax.name}): {exc}") from exc
    if pixels.shape != (rows, cols):
        raise PetReconError(
            f"{label}: decoded pixel array has shape {pixels.shape}, expected ({rows}, {cols}); "
            "only single-sample (grey-scale) images are supported"
        )
    slope = _float(ds.get("RescaleSlope"))
    intercept = _float(ds.get("RescaleIntercept"))
    return pixels * (1.0 if slope is None else slope) + (intercept or 0.0)


def _acquisition(datasets: list[Dataset]) -> AcquisitionInfo:
    first = datasets[0]
    corrected = first.get("CorrectedImage") or ()
    return AcquisitionInfo(
        manufacturer=_str(first.get("Manufacturer")),
        model=_str(first.get("ManufacturerModelName")),
        units=_str(first.get("Units")),
        suv_type=_str(first.get("SUVType")),
        decay_correction=_str(first.get("DecayCorrection")),
        series_datetime=_combine(first.get("SeriesDate"), first.get("SeriesTime")),
        acquisition_datetimes=tuple(_acquisition_datetime(ds) for ds in datasets),
        frame_duration_s=tuple(
            _scaled(_float(ds.get("ActualFrameDuration")), 1e-3) for ds in datasets
        ),
        decay_factors=tuple(_float(ds.get("DecayFactor")) for ds in datasets),
        reconstruction_method=_str(first.get("ReconstructionMethod")),
        corrected_image=(corrected,) if isinstance(corrected, str) else tuple(map(str, corrected)),
        slice_thickness_mm=_float(first.get("SliceThickness")),
        ge_scan_datetime=_ge_scan_datetime(first),
        philips_suv_scale=tuple(_philips_value(ds, 0x00) for ds in datasets),
        philips_activity_scale=tuple(_philips_value(ds, 0x09) for ds in datasets),
    )


def _acquisition_datetime(ds: Dataset) -> datetime | None:
    """AcquisitionDateTime, else AcquisitionTime on AcquisitionDate (or SeriesDate)."""
    value = _parse_dt(ds.get("AcquisitionDateTime"))
    if value is not None:
        return value
    day = ds.get("AcquisitionDate") or ds.get("SeriesDate")
    return _combine(day, ds.get("AcquisitionTime"))


def _ge_scan_datetime(ds: Dataset) -> datetime | None:
    """GE private scan datetime (0009,100D), the decay-correction reference on GE scanners."""
    try:
        element = ds.private_block(0x0009, _GE_PET_CREATOR)[0x0D]
    except KeyError:
        return None
    return _parse_dt(element.value)


def _philips_value(ds: Dataset, offset: int) -> float | None:
    """Philips PET private (7053,xx00) SUV or (7053,xx09) activity concentration factor.

    Without any private creator in group 7053 (as in the SUV DRO) the element is read at
    (7053,10xx).
    """
    try:
        tag = ds.private_block(0x7053, _PHILIPS_PET_CREATOR).get_tag(offset)
    except KeyError:
        if Tag(0x7053, 0x0010) in ds:
            return None
        tag = Tag(0x7053, 0x1000 + offset)
    return _float(ds[tag].value) if tag in ds else None


def _patient(ds: Dataset, warnings: list[str]) -> PatientInfo:
    """Weight, height, sex and age; names, IDs and birth date are not kept."""
    height = _float(ds.get("PatientSize")) or None
    if height is not None and height > 3.0:
        warn(warnings, f"Patient's Size {height:g} taken to be in cm (DICOM uses metres)", logger)
        height /= 100.0
    sex = _str(ds.get("PatientSex"))
    return PatientInfo(
        weight_kg=_float(ds.get("PatientWeight")) or None,
        height_m=height,
        sex=sex.upper() if sex and sex.upper() in ("M", "F", "O") else None,
        age_years=_age_years(ds),
    )


def _age_years(ds: Dataset) -> float | None:
    """PatientAge ('045Y', '006M', ...), else the birth date's distance to the study date.

    Anonymisation placeholders give None: PatientAge '000Y' (an infant's age is written in
    days, weeks or months) and birth dates that make the patient older than 120 years
    (e.g. 17000101).
    """
    match = re.fullmatch(r"(\d{1,3})([DWMY])", _str(ds.get("PatientAge")) or "")
    if match and match.group(0) != "000Y":
        return int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2)]
    birth = _parse_date(ds.get("PatientBirthDate"))
    study = _parse_date(ds.get("StudyDate") or ds.get("SeriesDate"))
    if birth is None or study is None:
        return None
    age = (study - birth).days / 365.25
    return age if 0 <= age <= 120 else None


def _radiopharmaceutical(
    ds: Dataset, acquisition: AcquisitionInfo, warnings: list[str]
) -> Radiopharmaceutical:
    """First item of the Radiopharmaceutical Information Sequence, dose in Bq."""
    items = ds.get("RadiopharmaceuticalInformationSequence") or []
    if not items:
        return Radiopharmaceutical()
    item = items[0]
    name = _str(item.get("Radiopharmaceutical")) or _code_meaning(
        item, "RadiopharmaceuticalCodeSequence"
    )
    dose = _float(item.get("RadionuclideTotalDose"))
    if dose is not None and dose <= 0:
        dose = None
    if dose is not None and dose < MBQ_DOSE_LIMIT:
        warn(
            warnings,
            f"Radionuclide Total Dose {dose:g} is below {MBQ_DOSE_LIMIT:g} Bq; taken to be in MBq",
            logger,
        )
        dose *= 1e6
    return Radiopharmaceutical(
        name=name,
        radionuclide=_code_meaning(item, "RadionuclideCodeSequence"),
        half_life_s=_float(item.get("RadionuclideHalfLife")) or None,
        total_dose_bq=dose,
        start=_injection_start(item, acquisition, warnings),
        positron_fraction=_float(item.get("RadionuclidePositronFraction")),
    )


def _injection_start(
    item: Dataset, acquisition: AcquisitionInfo, warnings: list[str]
) -> datetime | None:
    """Radiopharmaceutical Start DateTime, else Start Time on the day of the scan.

    A start time later in the day than the scan is an injection before midnight: the day
    before is used.
    """
    start = _parse_dt(item.get("RadiopharmaceuticalStartDateTime"))
    start_time = _parse_time(item.get("RadiopharmaceuticalStartTime"))
    if start is not None or start_time is None:
        return start
    scan_times = [t for t in (acquisition.series_datetime, *acquisition.acquisition_datetimes) if t]
    if not scan_times:
        warn(warnings, "Radiopharmaceutical Start Time without a series or acquisition date",
             logger)
        return None
    scan = min(scan_times)
    start = datetime.combine(scan.date(), start_time)
    if start > scan:
        start -= timedelta(days=1)
        warn(
            warnings,
            "Radiopharmaceutical Start Time is after the scan time; injection "
            "taken to be on the day before (before midnight)",
            logger,
        )
    return start


def _source(datasets: list[Dataset]) -> SourceReference:
    first = datasets[0]
    return SourceReference(
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        series_instance_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=_str(first.get("FrameOfReferenceUID")),
        sop_class_uid=str(first.SOPClassUID),
        sop_instance_uids=tuple(str(ds.get("SOPInstanceUID", "")) for ds in datasets),
        series_number=_int(first.get("SeriesNumber")),
        series_description=_str(first.get("SeriesDescription")),
        modality=str(first.Modality),
    )


def _code_meaning(item: Dataset, keyword: str) -> str | None:
    codes = item.get(keyword) or []
    return _str(codes[0].get("CodeMeaning")) if codes else None


def _numbers(ds: Dataset, keyword: str, count: int, label: str) -> np.ndarray:
    """A required multi-valued numeric attribute as float64 of shape ``(count,)``."""
    value = ds.get(keyword)
    try:
        numbers = np.array([float(v) for v in _values(value)], dtype=float)
    except (TypeError, ValueError):
        numbers = np.array([])
    if numbers.shape != (count,) or not np.all(np.isfinite(numbers)):
        raise PetReconError(f"{label}: missing or invalid {keyword} ({value!r})")
    return numbers


def _values(value: Any) -> Iterator[Any]:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        yield from value
    elif value is not None:
        yield value


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    return "" if value is None else str(value).strip(" \x00")


def _str(value: Any) -> str | None:
    text = _text(value)
    return text or None


def _float(value: Any) -> float | None:
    """A number from a DS/IS/FL value (the first of several, or ASCII bytes), else None."""
    first = next(_values(value), None)
    try:
        number = float(_text(first) if isinstance(first, str | bytes) else first)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _float(value)
    return None if number is None else int(number)


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _parse_date(value: Any) -> date | None:
    try:
        parsed = DA(_text(value)) if _text(value) else None
    except ValueError:
        return None
    return None if parsed is None else date(parsed.year, parsed.month, parsed.day)


def _parse_time(value: Any) -> time | None:
    try:
        parsed = TM(_text(value)) if _text(value) else None
    except ValueError:
        return None
    return (
        None
        if parsed is None
        else time(parsed.hour, parsed.minute, parsed.second, parsed.microsecond)
    )


def _parse_dt(value: Any) -> datetime | None:
    """A DT value as a naive datetime (a UTC offset in the value is dropped)."""
    try:
        parsed = DT(_text(value)) if _text(value) else None
    except ValueError:
        return None
    return None if parsed is None else datetime.combine(parsed.date(), parsed.time())


def _combine(day: Any, moment: Any) -> datetime | None:
    parsed_day, parsed_time = _parse_date(day), _parse_time(moment)
    if parsed_day is None or parsed_time is None:
        return None
    return datetime.combine(parsed_day, parsed_time)
