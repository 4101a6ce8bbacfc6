"""Write a PET volume as a DICOM PET Image series (PS3.3 A.21) that every PACS accepts.

Two entry points share one code path:

- :func:`write_derived_series` writes a restored volume as a new, DERIVED series in the study of
  its source. Each slice starts from a copy of the source slice's header (patient, study,
  equipment, PET series, PET isotope and PET image modules), so every SUV input (Units,
  Decay Correction, radiopharmaceutical, patient weight, series and acquisition times, Frame
  Reference Time, Decay Factor) is the same as in the source and any viewer computes the same
  SUV scale as for the input.
- :func:`write_new_series` writes a volume that has no source files (the simulator) as an
  ORIGINAL series, building the same modules from the typed fields of :class:`SeriesMeta`;
  with ``meta.modality == "MR"`` or ``"CT"`` it writes an MR Image (PS3.3 A.4) or CT Image
  (A.3) series instead, the simulated anatomical images that ``petrecon reconstruct
  --anatomy`` reads.

In both cases a missing attribute that the PET Image IOD requires is filled from the typed
metadata (the reader's interpretation, so the reader computes the same SUV from the output)
or, where that is unknown too, with a valid default (Type 1) or an empty value (Type 2), and
conditional attributes are added or removed to match their conditions. The output is
uncompressed Explicit VR Little Endian with signed 16-bit pixels and a per-slice Rescale Slope
chosen for full int16 precision. ``docs/dicom.md`` ("Tags written") lists every rule.

Private attributes are removed, except the two vendor attributes that SUV readers use and that
stay valid for the written values: GE (0009,xx0D) scan datetime, and the Philips (7053,xx00)
SUV and (7053,xx09) activity concentration scale factors when the written Units equal the
source Units (both factors multiply the rescaled values, which then keep their meaning).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Iterable, Sequence, Sized
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydicom.datadict import dictionary_has_tag, dictionary_is_retired
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from pet_recon import __version__
from pet_recon.errors import PetReconError
from pet_recon.io.metadata import Radiopharmaceutical, SeriesMeta

__all__ = ["write_derived_series", "write_new_series"]

_LOG = logging.getLogger(__name__)
_T = TypeVar("_T")

_INT16_MAX = 32767
_INT16_MIN = -32768
_LO_MAX = 64
_ST_MAX = 1024
_SOFTWARE = f"petrecon {__version__}"

# Attributes of a source header that describe the source instance, its pixel data or its
# place in the source series; they are removed from the copy and, where needed, rewritten.
_NOT_COPIED = (
    # SOP Common, General Image, General Series: identity of the new instance and series
    "SOPInstanceUID",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "InstanceCreatorUID",
    "ContentDate",
    "ContentTime",
    "InstanceNumber",
    "ImageType",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "DerivationDescription",
    "DerivationCodeSequence",
    "SourceImageSequence",
    "ReferencedSeriesSequence",
    "StudiesContainingOtherReferencedInstancesSequence",
    "DigitalSignaturesSequence",
    "MACParametersSequence",
    # edit history of the source instance (SOP Common, C.12.1): may hold identifying values
    "OriginalAttributesSequence",
    # staff identification (Person Identification Macro, 10.1), not needed to read the images
    "ReferringPhysicianIdentificationSequence",
    "PhysiciansOfRecordIdentificationSequence",
    "PerformingPhysicianIdentificationSequence",
    "PhysiciansReadingStudyIdentificationSequence",
    "OperatorIdentificationSequence",
    # Image Plane: rewritten from the geometry
    "PatientOrientation",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceLocation",
    # Image Pixel, Modality LUT, VOI LUT: depend on the stored values
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "PixelAspectRatio",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "NumberOfFrames",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "WindowCenterWidthExplanation",
    "VOILUTFunction",
    "VOILUTSequence",
    "IconImageSequence",
)

# PS3.3 C.8.4.6 (NM/PET Patient Orientation): Patient Position (0018,5100) as codes.
_ORIENTATION_CODES: dict[str, tuple[Code, Code, Code]] = {
    "HFS": (codes.SCT.Recumbent, codes.SCT.Supine, codes.SCT.Headfirst),
    "HFP": (codes.SCT.Recumbent, codes.SCT.Prone, codes.SCT.Headfirst),
    "FFS": (codes.SCT.Recumbent, codes.SCT.Supine, codes.SCT.FeetFirst),
    "FFP": (codes.SCT.Recumbent, codes.SCT.Prone, codes.SCT.FeetFirst),
    "HFDR": (codes.SCT.Recumbent, codes.SCT.RightLateralDecubitus, codes.SCT.Headfirst),
    "HFDL": (codes.SCT.Recumbent, codes.SCT.LeftLateralDecubitus, codes.SCT.Headfirst),
    "FFDR": (codes.SCT.Recumbent, codes.SCT.RightLateralDecubitus, codes.SCT.FeetFirst),
    "FFDL": (codes.SCT.Recumbent, codes.SCT.LeftLateralDecubitus, codes.SCT.FeetFirst),
}

#: SOP Class UID and name of the IODs written, by Modality (0008,0060).
_IODS = {"PT": (PositronEmissionTomographyImageStorage, "PET"), "MR": (MRImageStorage, "MR"),
         "CT": (CTImageStorage, "CT")}
#: Rescale Intercept of the CT pixels: stored value 0 is -1024 HU (below air).
_CT_INTERCEPT_HU = -1024

_GE_CREATOR = "GEMS_PETD_01"
_PHILIPS_CREATOR = "Philips PET Private Group"


@dataclasses.dataclass(frozen=True)
class _SeriesPlan:
    """Series-level values of the series being written, the same for every slice."""

    derived: bool
    series_instance_uid: str
    sop_instance_uids: tuple[str, ...]
    frame_of_reference_uid: str
    series_number: int
    series_description: str
    derivation_description: str | None
    units: str
    keep_philips_factors: bool
    image_type: tuple[str, ...]
    contribution: Code
    patient_name: str
    patient_id: str
    patient_position: str
    created: datetime
    modality: str = "PT"


def write_derived_series(
    volume: np.ndarray,
    meta: SeriesMeta,
    out_dir: Path,
    *,
    series_description: str,
    derivation_description: str,
    series_number: int | None = None,
    units: str | None = None,
    image_type_extra: str = "RESTORED",
) -> list[Path]:
    """Write ``volume`` as a derived PET series in the study of the series ``meta`` describes.

    Follows the rules for derived images (PS3.3 C.7.6.1, C.7.6.1.1.2 Image Type, C.8.9.4.1.1
    Image Type for PET): new Series and SOP Instance UIDs; same Study Instance UID and Frame of
    Reference UID; patient, study, equipment, PET Series (C.8.9.1), PET Isotope (C.8.9.2) and
    PET Image (C.8.9.4) modules copied from the source slice; Image Type
    ``DERIVED\\PRIMARY\\<image_type_extra>``; a Source Image Sequence item (C.7.6.1, purpose
    DCM 121322) per slice and the Common Instance Reference module (C.12.2); a Contributing
    Equipment item (C.12.1, DCM 109102 "Processing Equipment").

    A source Frame of Reference UID that is missing or equal to the Study or Series Instance
    UID (invalid, PS3.5 9) is replaced by a UID derived from it, the same for every series
    written from that source.

    Parameters
    ----------
    volume : numpy.ndarray
        Values in ``units``, shape ``meta.geometry.shape`` ``(slices, rows, columns)``.
    meta : SeriesMeta
        Metadata of the source series as the reader returned it, with one header per slice.
    out_dir : pathlib.Path
        Folder to write ``IM_0001.dcm``... into; created if missing, must be empty.
    series_description : str
        Series Description (0008,103E), at most 64 characters.
    derivation_description : str
        Derivation Description (0008,2111): how the images were derived, at most 1024
        characters.
    series_number : int, optional
        Series Number (0020,0011); default the source's number + 1000.
    units : str, optional
        Units (0054,1001) of ``volume``; default ``meta.units``.
    image_type_extra : str
        Value 3 of Image Type (0008,0008); empty for none.

    Returns
    -------
    list of pathlib.Path
        The files written, in slice order.

    Raises
    ------
    PetReconError
        If ``out_dir`` is not empty, the source is not a PET Image Storage series, or a
        description is too long.
    ValueError
        If ``volume`` does not match ``meta`` or holds non-finite values.
    """
    n_slices = _check_volume(volume, meta)
    if len(meta.headers) != n_slices or len(meta.source.sop_instance_uids) != n_slices:
        raise ValueError(
            f"meta has {len(meta.headers)} headers and {len(meta.source.sop_instance_uids)} "
            f"source SOP Instance UIDs for a volume of {n_slices} slices; "
            "a series without source headers is written with write_new_series"
        )
    if meta.source.sop_class_uid != PositronEmissionTomographyImageStorage:
        raise PetReconError(
            f"source series SOP Class {meta.source.sop_class_uid} is not PET Image Storage; "
            "only classic PET series can be the source of a derived series"
        )
    _check_text(series_description, "series description", _LO_MAX)
    _check_text(derivation_description, "derivation description", _ST_MAX)
    source_units = meta.acquisition.units or meta.headers[0].get("Units")
    written_units = _written_units(units, meta, source_units)
    if series_number is None:
        series_number = (meta.source.series_number or 0) + 1000
    plan = _SeriesPlan(
        derived=True,
        series_instance_uid=generate_uid(),
        sop_instance_uids=tuple(generate_uid() for _ in range(n_slices)),
        frame_of_reference_uid=_frame_of_reference_uid(meta),
        series_number=series_number,
        series_description=series_description,
        derivation_description=derivation_description,
        units=written_units,
        keep_philips_factors=written_units == source_units,
        image_type=("DERIVED", "PRIMARY", *([image_type_extra] if image_type_extra else [])),
        contribution=codes.DCM.ProcessingEquipment,
        patient_name="",
        patient_id="",
        patient_position="",
        created=datetime.now(),
    )
    return _write_series(volume, meta, Path(out_dir), plan)


def write_new_series(
    volume: np.ndarray,
    meta: SeriesMeta,
    out_dir: Path,
    *,
    series_description: str,
    patient_id: str,
    patient_name: str = "PETRECON^SIM",
    patient_position: str | None = None,
    series_number: int | None = None,
    image_type_extra: str = "",
) -> list[Path]:
    """Write ``volume`` as an ORIGINAL PET (or MR or CT) series built only from the typed
    fields of ``meta``.

    For volumes without source files (the simulator). Patient (C.7.1.1), General Study
    (C.7.2.1), Patient Study (C.7.2.2), General Equipment (C.7.5.1), PET Series (C.8.9.1),
    PET Isotope (C.8.9.2), NM/PET Patient Orientation (C.8.4.6) and PET Image (C.8.9.4)
    modules come from ``meta.patient``, ``meta.radiopharmaceutical``, ``meta.acquisition``
    and ``meta.source``: the series is written with ``meta.source``'s Study, Series, Frame of
    Reference and (when there is one per slice) SOP Instance UIDs, so a reader finds the
    series ``meta`` describes. Frame Reference Time and Decay Factor are computed from the
    times and half-life when ``meta`` lacks them (C.8.9.4.1.5). A
    Contributing Equipment item (C.12.1) names petrecon as DCM 109100 "Synthesizing
    Equipment".

    With ``meta.modality == "MR"`` the series is an MR Image Storage series (PS3.3 A.4): the
    same Patient, General Study, General Series, Frame of Reference, General Equipment, Image
    Plane and Image Pixel modules, Patient Position (0018,5100) as such (Type 2C for MR), and
    the MR Image module (C.8.3.1) of a simulated image: Scanning Sequence ``RM`` (research
    mode), Sequence Variant ``NONE``, MR Acquisition Type ``3D``, and empty (unknown) Type 2
    sequence timings; no PET modules. With ``meta.modality == "CT"`` it is a CT Image Storage
    series (A.3): the same common modules and the CT Image module (C.8.2.1): HU stored as
    unsigned 16-bit integers with Rescale Slope 1, Rescale Intercept -1024 and Rescale Type
    ``HU``, empty (unknown) KVP and Acquisition Number; Image Type value 3 must then be
    ``AXIAL``.

    Parameters
    ----------
    volume : numpy.ndarray
        Values in ``meta.units`` (arbitrary units for MR, HU for CT), shape
        ``meta.geometry.shape``.
    meta : SeriesMeta
        Typed metadata of the series; ``meta.headers`` is ignored.
    out_dir : pathlib.Path
        Folder to write ``IM_0001.dcm``... into; created if missing, must be empty.
    series_description : str
        Series Description (0008,103E), at most 64 characters.
    patient_id : str
        Patient ID (0010,0020), e.g. the simulated case id; at most 64 characters.
    patient_name : str
        Patient's Name (0010,0010), anonymous.
    patient_position : str, optional
        Patient Position as in (0018,5100), e.g. ``"HFS"``: written as the Patient
        Orientation and Patient Gantry Relationship Code Sequences; empty when None.
    series_number : int, optional
        Series Number (0020,0011); default ``meta.source.series_number`` or 1.
    image_type_extra : str
        Value 3 of Image Type (0008,0008); empty for none (MR needs one, e.g. ``OTHER``; CT
        ``AXIAL``).

    Returns
    -------
    list of pathlib.Path
        The files written, in slice order.

    Raises
    ------
    PetReconError
        If ``out_dir`` is not empty or a text is too long.
    ValueError
        If ``volume`` does not match ``meta``, holds non-finite values, ``meta.modality`` is
        not PT, MR or CT, or ``meta.units`` of a PET series is unknown.
    """
    n_slices = _check_volume(volume, meta)
    _check_text(series_description, "series description", _LO_MAX)
    _check_text(patient_id, "patient ID", _LO_MAX)
    if meta.modality not in _IODS:
        raise ValueError(f"write_new_series writes PET, MR or CT series, not modality "
                         f"{meta.modality}")
    pet = meta.modality == "PT"
    uids = meta.source.sop_instance_uids
    plan = _SeriesPlan(
        derived=False,
        series_instance_uid=meta.source.series_instance_uid,
        sop_instance_uids=(
            tuple(uids) if len(uids) == n_slices else tuple(generate_uid() for _ in range(n_slices))
        ),
        frame_of_reference_uid=_frame_of_reference_uid(meta),
        series_number=(
            series_number if series_number is not None else meta.source.series_number or 1
        ),
        series_description=series_description,
        derivation_description=None,
        units=_written_units(None, meta, meta.acquisition.units) if pet else "",
        keep_philips_factors=pet,
        image_type=("ORIGINAL", "PRIMARY", *([image_type_extra] if image_type_extra else [])),
        contribution=codes.DCM.SynthesizingEquipment,
        patient_name=patient_name,
        patient_id=patient_id,
        patient_position=patient_position or "",
        created=datetime.now(),
        modality=meta.modality,
    )
    return _write_series(volume, meta, Path(out_dir), plan)


def _check_volume(volume: np.ndarray, meta: SeriesMeta) -> int:
    """Number of slices of ``volume`` after checking it against ``meta.geometry``."""
    if volume.ndim != 3 or tuple(volume.shape) != tuple(meta.geometry.shape):
        raise ValueError(f"volume shape {volume.shape} does not match {meta.geometry.shape}")
    if not np.all(np.isfinite(volume)):
        raise ValueError("volume holds NaN or infinite values; DICOM stores finite integers")
    return int(volume.shape[0])


def _check_text(text: str, what: str, max_chars: int) -> None:
    """Raise :class:`PetReconError` when ``text`` does not fit its Value Representation."""
    if len(text) > max_chars or "\\" in text:
        raise PetReconError(
            f"{what} must be at most {max_chars} characters without a backslash, got {text!r}"
        )


def _written_units(units: str | None, meta: SeriesMeta, source_units: str | None) -> str:
    """Units (0054,1001) of the written values: explicit, else the volume's, else the source's."""
    written = units or meta.units or source_units
    if not written:
        raise ValueError("the units of the volume are unknown; pass units=, e.g. 'BQML'")
    return str(written)


def _frame_of_reference_uid(meta: SeriesMeta) -> str:
    """Frame of Reference UID (0020,0052) of the written series (PS3.3 C.7.4.1).

    The source's, unless it is missing or reuses the Study or Series Instance UID (a UID
    identifies one kind of thing only, PS3.5 9): then a UID derived from the source's UIDs,
    so every series written from the same source shares it.
    """
    source = meta.source
    uid = source.frame_of_reference_uid
    if uid and uid not in (source.study_instance_uid, source.series_instance_uid):
        return uid
    _LOG.warning(
        "source Frame of Reference UID is missing or equals the Study or Series Instance UID; "
        "the written series gets a Frame of Reference UID derived from it"
    )
    return generate_uid(
        entropy_srcs=["petrecon frame of reference", uid or "", source.series_instance_uid]
    )


def _write_series(
    volume: np.ndarray, meta: SeriesMeta, out_dir: Path, plan: _SeriesPlan
) -> list[Path]:
    """Write one file per slice of ``volume`` into the empty folder ``out_dir``."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise PetReconError(f"{out_dir}: output folder is not empty; petrecon never overwrites")
    out_dir.mkdir(parents=True, exist_ok=True)
    n_slices = volume.shape[0]
    width = max(4, len(str(n_slices)))
    paths = []
    for k in range(n_slices):
        ds = _copy_source_header(meta.headers[k]) if plan.derived else _new_header(meta, plan)
        if plan.modality == "PT":
            _complete_modules(ds, meta, k, n_slices, plan.created)
        else:
            _complete_anatomy_modules(ds, meta, plan.modality, plan.created)
        _set_instance(ds, meta, k, plan)
        if plan.modality == "CT":
            _set_ct_pixels(ds, volume[k])
        else:
            _set_pixels(ds, volume[k])
        path = out_dir / f"IM_{k + 1:0{width}d}.dcm"
        _save(ds, path)
        paths.append(path)
    return paths


def _copy_source_header(header: Dataset) -> Dataset:
    """Copy of a source slice header without private, retired, unknown or instance attributes."""
    ds = Dataset()
    for elem in header:
        ds.add(copy.deepcopy(elem))
    ds.remove_private_tags()

    def drop(dataset: Dataset, elem: DataElement) -> None:
        tag = elem.tag
        # group lengths (retired, PS3.5 7.2), retired attributes, and tags outside the main
        # dictionary: unknown ones and the repeating overlay/curve groups (60xx, 50xx) drawn
        # on the source pixels
        if tag.element == 0 or not dictionary_has_tag(tag) or dictionary_is_retired(tag):
            del dataset[tag]

    ds.walk(drop)
    for keyword in _NOT_COPIED:
        if keyword in ds:
            del ds[keyword]
    _repair_misplaced_modifier(ds)
    for item in ds.get("AcquisitionContextSequence", []):
        _repair_value_type(item)
    return ds


def _repair_misplaced_modifier(ds: Dataset) -> None:
    """Move a top-level Patient Orientation Modifier Code Sequence into its place (C.8.4.6).

    Some scanners write (0054,0412) next to, instead of inside, the Patient Orientation Code
    Sequence item.
    """
    modifier = ds.get("PatientOrientationModifierCodeSequence")
    if modifier is None:
        return
    del ds.PatientOrientationModifierCodeSequence
    orientation = ds.get("PatientOrientationCodeSequence")
    if orientation and "PatientOrientationModifierCodeSequence" not in orientation[0]:
        orientation[0].PatientOrientationModifierCodeSequence = modifier


_VALUE_TYPES = (
    ("ConceptCodeSequence", "CODE"),
    ("MeasuredValueSequence", "NUM"),
    ("NumericValue", "NUM"),
    ("TextValue", "TEXT"),
    ("DateTime", "DATETIME"),
    ("Date", "DATE"),
    ("Time", "TIME"),
    ("PersonName", "PNAME"),
    ("UID", "UIDREF"),
)


def _repair_value_type(item: Dataset) -> None:
    """Add the Value Type (0040,A040) a Content Item (Content Item Macro, PS3.3 10.2) lacks.

    Inferred from the value attribute the item has, as Acquisition Context items written
    without it (seen in GE files) need.
    """
    if "ValueType" in item:
        return
    for keyword, value_type in _VALUE_TYPES:
        if keyword in item:
            item.ValueType = value_type
            return


def _new_header(meta: SeriesMeta, plan: _SeriesPlan) -> Dataset:
    """Patient identity and the optional (Type 3) typed attributes of a series without source.

    Patient's Name and ID (C.7.1.1); Patient Position (C.7.3.1); age, size, weight (Patient
    Study, C.7.2.2); model (General Equipment, C.7.5.1); reconstruction method and SUV Type
    (PET Series, C.8.9.1). :func:`_complete_modules` adds the required attributes, as for a
    derived series.
    """
    patient = meta.patient
    acq = meta.acquisition
    ds = Dataset()
    ds.PatientName = plan.patient_name
    ds.PatientID = plan.patient_id
    if plan.patient_position:
        ds.PatientPosition = plan.patient_position  # turned into codes by _complete_modules
    if patient.age_years is not None:
        ds.PatientAge = f"{min(int(patient.age_years), 999):03d}Y"
    if patient.height_m is not None:
        ds.PatientSize = format_number_as_ds(float(patient.height_m))
    if patient.weight_kg is not None:
        ds.PatientWeight = format_number_as_ds(float(patient.weight_kg))
    if acq.model:
        ds.ManufacturerModelName = acq.model
    if acq.reconstruction_method:
        ds.ReconstructionMethod = acq.reconstruction_method
    if acq.suv_type:
        ds.SUVType = acq.suv_type
    return ds


def _complete_modules(
    ds: Dataset, meta: SeriesMeta, k: int, n_slices: int, created: datetime
) -> None:
    """Add the PET Image IOD attributes (PS3.3 A.21.3) that slice ``k``'s ``ds`` lacks.

    Values come from the typed metadata where it knows them, else a valid default (Type 1)
    or an empty value (Type 2). Attributes present in ``ds`` are kept, except the counts
    that describe the written series (Number of Slices, Image Index, the conditional
    Number of Time Slices/Slots/R-R Intervals), which are set for it.
    """
    acq = meta.acquisition
    series_dt = acq.series_datetime or min(
        (t for t in acq.acquisition_datetimes if t is not None), default=None
    )
    acq_dt = _at(acq.acquisition_datetimes, k)
    _complete_common_modules(ds, meta, "PT", series_dt)

    # PET Series (C.8.9.1)
    # Type 1: without series or acquisition times, the study's, else the time of writing
    _default(ds, "SeriesDate", _da(series_dt) or ds.get("StudyDate") or _da(created))
    _default(ds, "SeriesTime", _tm(series_dt) or ds.get("StudyTime") or _tm(created))
    _default(ds, "CountsSource", "EMISSION")
    _default(ds, "SeriesType", ["STATIC", "IMAGE"])
    _default(ds, "CorrectedImage", list(acq.corrected_image))
    corrected = list(_values(ds.get("CorrectedImage")))
    _default(ds, "DecayCorrection", acq.decay_correction or _decay_default(corrected))
    _default(ds, "CollimatorType", "")
    ds.NumberOfSlices = n_slices
    series_type = str(_values(ds.SeriesType)[0]).upper()
    _set_or_remove(ds, "NumberOfTimeSlices", 1, series_type == "DYNAMIC")
    _set_or_remove(ds, "NumberOfTimeSlots", 1, series_type == "GATED")
    _set_or_remove(ds, "NumberOfRRIntervals", 1, series_type == "GATED")
    if series_type != "GATED":  # Trigger and Frame Time: gated images only (Table C.8-63)
        for keyword in ("TriggerTime", "FrameTime"):
            if keyword in ds:
                del ds[keyword]

    # PET Isotope (C.8.9.2)
    if "RadiopharmaceuticalInformationSequence" not in ds:
        ds.RadiopharmaceuticalInformationSequence = _radiopharmaceutical_sequence(meta)

    # NM/PET Patient Orientation (C.8.4.6); Patient Position (0018,5100) only where it is
    # absent (C.7.3.1), so Patient Position is turned into its codes
    position = str(ds.get("PatientPosition") or "").strip().upper()
    if "PatientPosition" in ds:
        del ds.PatientPosition
    if not ds.get("PatientOrientationCodeSequence"):
        _set_orientation_codes(ds, position)
    _default(ds, "PatientGantryRelationshipCodeSequence", DicomSequence())

    # PET Image (C.8.9.4) and Image Plane (C.7.6.2)
    ds.ImageIndex = k + 1  # C.8.9.4.1.9 with one time slice, R-R interval and time slot
    _default(ds, "AcquisitionDate", _da(acq_dt))
    _default(ds, "AcquisitionTime", _tm(acq_dt))
    duration = _at(acq.frame_duration_s, k)
    _default(ds, "ActualFrameDuration", "" if duration is None else str(round(duration * 1000)))
    reference_ms, decay_factor = _frame_timing(meta, k, str(ds.DecayCorrection), series_dt)
    _default(ds, "FrameReferenceTime", format_number_as_ds(reference_ms))
    if str(ds.DecayCorrection).upper() != "NONE":
        _default(ds, "DecayFactor", format_number_as_ds(decay_factor))
    thickness = acq.slice_thickness_mm  # else the slice spacing: Type 2, but readers use it
    if thickness is None:
        thickness = meta.geometry.spacing[2]
    _default(ds, "SliceThickness", format_number_as_ds(float(thickness)))


def _complete_common_modules(
    ds: Dataset, meta: SeriesMeta, modality: str, series_dt: datetime | None
) -> None:
    """Patient (C.7.1.1), General Study (C.7.2.1), General Series (C.7.3.1), Frame of
    Reference (C.7.4.1) and General Equipment (C.7.5.1) attributes that ``ds`` lacks, shared
    by the PET, MR and CT Image IODs; ``series_dt`` dates the study."""
    # Patient (C.7.1.1)
    _default(ds, "PatientName", "")
    _default(ds, "PatientID", "")
    _default(ds, "PatientBirthDate", "")
    _default(ds, "PatientSex", meta.patient.sex or "")

    # General Study (C.7.2.1)
    _default(ds, "StudyInstanceUID", meta.source.study_instance_uid)
    _default(ds, "StudyDate", _da(series_dt))
    _default(ds, "StudyTime", _tm(series_dt))
    _default(ds, "ReferringPhysicianName", "")
    _default(ds, "StudyID", "")
    _default(ds, "AccessionNumber", "")

    # General Series (C.7.3.1), Frame of Reference (C.7.4.1), General Equipment (C.7.5.1)
    _default(ds, "Modality", modality)
    if not {"Laterality", "ImageLaterality", "BodyPartExamined"} & set(ds.dir()):
        ds.Laterality = ""  # Type 2C: the body part, so whether it is paired, is unknown
    _default(ds, "PositionReferenceIndicator", "")
    _default(ds, "Manufacturer", meta.acquisition.manufacturer or "")


def _complete_anatomy_modules(ds: Dataset, meta: SeriesMeta, modality: str,
                              created: datetime) -> None:
    """The MR Image (PS3.3 A.4) or CT Image (A.3) IOD attributes of a simulated slice,
    besides those of :func:`_set_instance` and :func:`_set_pixels` / :func:`_set_ct_pixels`.

    The shared modules (:func:`_complete_common_modules`), Patient Position (0018,5100)
    (General Series, Type 2C for MR and CT), series date and time, and the modality's image
    module. MR Image (C.8.3.1): Scanning Sequence ``RM`` (research mode: a simulated image),
    Sequence Variant ``NONE``, MR Acquisition Type ``3D``, and the Type 2 timings (Scan
    Options, Repetition Time, Echo Time, Echo Train Length) empty, as they are unknown. CT
    Image (C.8.2.1): KVP and Acquisition Number (Type 2) empty, as they are unknown.
    """
    acq = meta.acquisition
    _complete_common_modules(ds, meta, modality, acq.series_datetime)
    _default(ds, "PatientPosition", "")
    _default(ds, "SeriesDate", _da(acq.series_datetime) or _da(created))
    _default(ds, "SeriesTime", _tm(acq.series_datetime) or _tm(created))
    if modality == "MR":
        ds.ScanningSequence = "RM"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = ""
        ds.EchoTime = ""
        ds.EchoTrainLength = ""
    else:
        ds.KVP = ""
        ds.AcquisitionNumber = ""
    thickness = acq.slice_thickness_mm or meta.geometry.spacing[2]
    ds.SliceThickness = format_number_as_ds(float(thickness))


def _default(ds: Dataset, keyword: str, value: object) -> None:
    """Set ``keyword`` to ``value`` unless ``ds`` has a value for it.

    An empty value counts as missing only when ``value`` is not empty, so a Type 2 attribute
    present with an empty value is kept and a Type 1 attribute gets a value.
    """
    present = keyword in ds and not _is_empty(ds[keyword].value)
    if present or (keyword in ds and _is_empty(value)):
        return
    setattr(ds, keyword, value)


def _is_empty(value: object) -> bool:
    """Whether a DICOM value is empty (None, empty string or empty sequence)."""
    return value is None or (isinstance(value, Sized) and len(value) == 0)


def _set_or_remove(ds: Dataset, keyword: str, value: int, required: bool) -> None:
    """Set a Type 1C attribute when its condition holds, remove it otherwise."""
    if required:
        setattr(ds, keyword, value)
    elif keyword in ds:
        del ds[keyword]


def _values(value: object) -> list[object]:
    """A possibly multi-valued DICOM value as a list."""
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def _decay_default(corrected: Sequence[object]) -> str:
    """Decay Correction (0054,1102) implied by Corrected Image (0028,0051) (C.8.9.1)."""
    return "START" if "DECY" in {str(v).upper() for v in corrected} else "NONE"


def _at(values: Sequence[_T | None], k: int) -> _T | None:
    """``values[k]`` or None when the tuple is shorter."""
    return values[k] if k < len(values) else None


def _da(value: datetime | None) -> str:
    """DA string of a datetime, empty when unknown."""
    return "" if value is None else value.strftime("%Y%m%d")


def _tm(value: datetime | None) -> str:
    """TM string of a datetime, empty when unknown."""
    return "" if value is None else value.strftime("%H%M%S.%f")


def _dt(value: datetime) -> str:
    """DT string of a (naive) datetime."""
    return value.strftime("%Y%m%d%H%M%S.%f")


def _code_item(code: Code) -> Dataset:
    """Code Sequence item (Basic Code Sequence Macro, PS3.3 8.8)."""
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _set_orientation_codes(ds: Dataset, position: str) -> None:
    """Patient Orientation and Patient Gantry Relationship Code Sequences (C.8.4.6).

    From a Patient Position (0018,5100) value (HFS, FFP, HFDR, ...), empty (Type 2) for
    other or unknown positions.
    """
    triple = _ORIENTATION_CODES.get(position)
    if triple is None:
        ds.PatientOrientationCodeSequence = DicomSequence()
        return
    orientation, modifier, gantry = triple
    item = _code_item(orientation)
    item.PatientOrientationModifierCodeSequence = DicomSequence([_code_item(modifier)])
    ds.PatientOrientationCodeSequence = DicomSequence([item])
    if not ds.get("PatientGantryRelationshipCodeSequence"):
        ds.PatientGantryRelationshipCodeSequence = DicomSequence([_code_item(gantry)])


def _radiopharmaceutical_sequence(meta: SeriesMeta) -> DicomSequence:
    """Radiopharmaceutical Information Sequence (C.8.9.2) from ``meta.radiopharmaceutical``."""
    rp = meta.radiopharmaceutical
    if dataclasses.astuple(rp) == dataclasses.astuple(Radiopharmaceutical()):
        return DicomSequence()
    item = Dataset()
    if rp.name:
        item.Radiopharmaceutical = rp.name
    if rp.start is not None:
        item.RadiopharmaceuticalStartTime = _tm(rp.start)
        item.RadiopharmaceuticalStartDateTime = _dt(rp.start)
    if rp.total_dose_bq is not None:
        item.RadionuclideTotalDose = format_number_as_ds(float(rp.total_dose_bq))
    if rp.half_life_s is not None:
        item.RadionuclideHalfLife = format_number_as_ds(float(rp.half_life_s))
    if rp.positron_fraction is not None:
        item.RadionuclidePositronFraction = format_number_as_ds(float(rp.positron_fraction))
    nuclide = _radionuclide_code(rp.radionuclide)
    item.RadionuclideCodeSequence = DicomSequence([_code_item(nuclide)] if nuclide else [])
    return DicomSequence([item])


def _radionuclide_code(meaning: str | None) -> Code | None:
    """Code of CID 4020 "PET Radionuclide" whose meaning is ``meaning`` (e.g. ^18^Fluorine)."""
    if not meaning:
        return None
    collection = codes.CID4020
    for name in collection.dir():
        code = getattr(collection, name)
        if code.meaning.lower() == meaning.strip().lower():
            return code
    return None


def _frame_timing(
    meta: SeriesMeta, k: int, decay_correction: str, series_dt: datetime | None
) -> tuple[float, float]:
    """Frame Reference Time (ms) and Decay Factor of slice ``k`` (PS3.3 C.8.9.4.1.5).

    The Frame Reference Time is the offset of the frame's average-activity time from the
    series reference time ``series_dt``, ``T_ave = ln(x / (1 - exp(-x))) / lambda`` with
    ``x = lambda * duration`` after the acquisition start. The Decay Factor is the typed one,
    else the factor that corrects the frame average back to the decay reference time (series
    start for START, injection for ADMIN): ``exp(lambda * (t_start - t_ref)) * x /
    (1 - exp(-x))``; 1 when the times or the half-life are unknown.
    """
    acq = meta.acquisition
    start = _at(acq.acquisition_datetimes, k) or series_dt
    duration = float(_at(acq.frame_duration_s, k) or 0.0)
    half_life = meta.radiopharmaceutical.half_life_s
    lam = math.log(2.0) / half_life if half_life else 0.0
    x = lam * duration
    frame_gain = x / -math.expm1(-x) if x > 0 else 1.0  # average decay over the frame
    average_s = math.log(frame_gain) / lam if x > 0 else duration / 2
    offset_s = (start - series_dt).total_seconds() if start and series_dt else 0.0
    reference_ms = (offset_s + average_s) * 1000.0

    typed = _at(acq.decay_factors, k)
    if typed is not None:
        return reference_ms, float(typed)
    ref = meta.radiopharmaceutical.start if decay_correction.upper() == "ADMIN" else series_dt
    if lam > 0 and start is not None and ref is not None:
        return reference_ms, math.exp(lam * (start - ref).total_seconds()) * frame_gain
    return reference_ms, 1.0


def _set_instance(ds: Dataset, meta: SeriesMeta, k: int, plan: _SeriesPlan) -> None:
    """Identity, provenance, geometry and (PET) SUV attributes of slice ``k`` of the new
    series."""
    geometry = meta.geometry
    created = plan.created
    pet = plan.modality == "PT"

    # SOP Common (C.12.1), General Series (C.7.3.1), General Image (C.7.6.1)
    ds.SOPClassUID = _IODS[plan.modality][0]
    ds.SOPInstanceUID = plan.sop_instance_uids[k]
    ds.InstanceCreationDate = _da(created)
    ds.InstanceCreationTime = _tm(created)
    ds.SeriesInstanceUID = plan.series_instance_uid
    ds.SeriesNumber = plan.series_number
    ds.SeriesDescription = plan.series_description
    ds.ImageType = list(plan.image_type)
    ds.InstanceNumber = k + 1
    ds.ContentDate = _da(created)
    ds.ContentTime = _tm(created)
    ds.FrameOfReferenceUID = plan.frame_of_reference_uid
    if pet:
        ds.Units = plan.units
    versions = [str(v) for v in _values(ds.get("SoftwareVersions")) if str(v) != _SOFTWARE]
    ds.SoftwareVersions = [*versions, _SOFTWARE]
    _add_contributing_equipment(ds, plan)
    if plan.derived:
        _add_source_references(ds, meta, k, plan)
    texts = [plan.series_description, plan.derivation_description or "", plan.patient_name]
    if any(not t.isascii() for t in texts):
        ds.SpecificCharacterSet = "ISO_IR 192"

    # Image Plane (C.7.6.2)
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    position = geometry.slice_position(k)
    ds.ImagePositionPatient = [format_number_as_ds(v) for v in position]
    ds.ImageOrientationPatient = [
        format_number_as_ds(float(v)) for v in (*direction[:, 0], *direction[:, 1])
    ]
    ds.PixelSpacing = [format_number_as_ds(float(v)) for v in geometry.spacing[1::-1]]
    ds.SliceLocation = format_number_as_ds(float(np.dot(position, direction[:, 2])))

    _set_vendor_suv_attributes(ds, meta, k, plan)


def _add_contributing_equipment(ds: Dataset, plan: _SeriesPlan) -> None:
    """Append petrecon to the Contributing Equipment Sequence (SOP Common, C.12.1)."""
    item = Dataset()
    item.Manufacturer = "petrecon"
    item.ManufacturerModelName = "petrecon"
    item.SoftwareVersions = __version__
    item.ContributionDateTime = _dt(plan.created)
    item.ContributionDescription = (plan.derivation_description
                                    or f"simulated {_IODS[plan.modality][1]} series")
    item.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(plan.contribution)])
    previous = list(ds.get("ContributingEquipmentSequence", []))
    ds.ContributingEquipmentSequence = DicomSequence([*previous, item])


def _add_source_references(ds: Dataset, meta: SeriesMeta, k: int, plan: _SeriesPlan) -> None:
    """Derivation Description, Source Image Sequence (C.7.6.1) and Common Instance Reference.

    The source slice is referenced with purpose DCM 121322 "Source image for image processing
    operation" (CID 7202); the Referenced Series Sequence (C.12.2) names its series.
    """
    source = meta.source
    ds.DerivationDescription = plan.derivation_description
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.sop_class_uid
    reference.ReferencedSOPInstanceUID = source.sop_instance_uids[k]
    reference.PurposeOfReferenceCodeSequence = DicomSequence(
        [_code_item(codes.DCM.SourceImageForImageProcessingOperation)]
    )
    ds.SourceImageSequence = DicomSequence([reference])
    instance = Dataset()
    instance.ReferencedSOPClassUID = source.sop_class_uid
    instance.ReferencedSOPInstanceUID = source.sop_instance_uids[k]
    series = Dataset()
    series.SeriesInstanceUID = source.series_instance_uid
    series.ReferencedInstanceSequence = DicomSequence([instance])
    ds.ReferencedSeriesSequence = DicomSequence([series])


def _set_vendor_suv_attributes(ds: Dataset, meta: SeriesMeta, k: int, plan: _SeriesPlan) -> None:
    """Re-add the private attributes SUV readers use (GE scan datetime, Philips factors)."""
    acq = meta.acquisition
    if acq.ge_scan_datetime is not None:
        block = ds.private_block(0x0009, _GE_CREATOR, create=True)
        block.add_new(0x0D, "DT", _dt(acq.ge_scan_datetime))
    if not plan.keep_philips_factors:
        return
    suv_scale = _at(acq.philips_suv_scale, k)
    activity_scale = _at(acq.philips_activity_scale, k)
    if suv_scale is None and activity_scale is None:
        return
    block = ds.private_block(0x7053, _PHILIPS_CREATOR, create=True)
    if suv_scale is not None:
        block.add_new(0x00, "DS", format_number_as_ds(float(suv_scale)))
    if activity_scale is not None:
        block.add_new(0x09, "DS", format_number_as_ds(float(activity_scale)))


def _set_pixels(ds: Dataset, plane: np.ndarray) -> None:
    """Signed 16-bit pixels with a per-slice Rescale Slope for full precision (C.7.6.3, C.8.9.4).

    ``slope = max(max / 32767, -min / 32768)`` (rounded to the 10 significant digits written
    in the DS) so the largest magnitude maps to 32767 or -32768; intercept 0 as the PET Image
    module requires (Table C.8-63); an all-zero slice gets slope 1.
    """
    values = np.asarray(plane, dtype=np.float64)
    slope = max(float(values.max()) / _INT16_MAX, float(values.min()) / _INT16_MIN, 0.0)
    slope_text = f"{slope:.10g}" if slope > 0 else "1"
    stored = np.rint(values / float(slope_text))
    _store_pixels(ds, np.clip(stored, _INT16_MIN, _INT16_MAX).astype("<i2"), slope_text, "0")


def _set_ct_pixels(ds: Dataset, plane: np.ndarray) -> None:
    """Unsigned 16-bit CT pixels (C.8.2.1): HU rounded to integers, stored as
    ``HU + 1024`` (Rescale Slope 1, Rescale Intercept -1024, Rescale Type ``HU``), values
    below -1024 HU clipped."""
    hu = np.rint(np.asarray(plane, dtype=np.float64))
    stored = np.clip(hu - _CT_INTERCEPT_HU, 0, np.iinfo(np.uint16).max).astype("<u2")
    _store_pixels(ds, stored, "1", str(_CT_INTERCEPT_HU))
    ds.RescaleType = "HU"


def _store_pixels(ds: Dataset, pixels: np.ndarray, slope: str, intercept: str) -> None:
    """Image Pixel module (C.7.6.3) of 16-bit ``pixels`` (``<i2`` signed or ``<u2``
    unsigned, ``(rows, columns)``) with their Rescale Slope and Intercept (DS texts)."""
    signed = pixels.dtype.kind == "i"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = int(signed)
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = slope
    vr = "SS" if signed else "US"
    ds.add_new(0x00280106, vr, int(pixels.min()))  # Smallest Image Pixel Value
    ds.add_new(0x00280107, vr, int(pixels.max()))  # Largest Image Pixel Value
    ds.PixelData = pixels.tobytes()


def _save(ds: Dataset, path: Path) -> None:
    """Save as a Part 10 file, Explicit VR Little Endian (PS3.10 7.1), never overwriting."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PETRECON_{__version__}"[:16]
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True, overwrite=False)
