"""A corpus of broken inputs for the CLI's error handling, built from a synthetic PET series.

:func:`make_pet_series` writes a small valid PET series (BQML, decay corrected to START,
with patient weight and a complete Radiopharmaceutical Information Sequence) with pydicom.
:data:`BAD_INPUTS` lists broken DICOM inputs and output locations, each run through one CLI
command; :data:`BAD_SINOGRAMS` lists broken Interfile sinograms, read with
:func:`pet_recon.io.sinogram.read_sinogram` (no CLI command reads sinograms yet). Every entry
says how to build it under a given folder and which regular expression the one-line error
message must match (with ``re.search``, in the message after ``petrecon: error:``).
:func:`run_petrecon` runs the CLI in a subprocess and :func:`snapshot` hashes a file tree, to
show that a failed run wrote nothing.

This module holds no tests; ``tests/test_bad_input.py`` runs the corpus.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

from pet_recon.io.sinogram import write_sinogram
from pet_recon.physics.geometry import SinogramGeometry

PIXEL_MM = 2.0
"""In-plane pixel spacing of :func:`make_pet_series`, mm."""
SLICE_MM = 3.0
"""Slice spacing (and thickness) of :func:`make_pet_series`, mm."""
WEIGHT_KG = 70.0
DOSE_BQ = 370e6
HALF_LIFE_S = 6586.2
UPTAKE_S = 3600.0
"""Injection at 09:30, series start at 10:30."""

Edit = Callable[[int, Dataset], None]


def run_petrecon(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pet_recon ARGS`` in ``cwd`` (without PETRECON_DEBUG), capturing text."""
    env = {key: value for key, value in os.environ.items() if key != "PETRECON_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "pet_recon", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False,
    )


def snapshot(path: Path) -> dict[str, str]:
    """Every file (SHA-256) and folder ("<dir>") at or under ``path``; empty when absent."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    if not path.is_dir():
        return {}
    return {
        str(item.relative_to(path)): (
            "<dir>" if item.is_dir() else hashlib.sha256(item.read_bytes()).hexdigest()
        )
        for item in sorted(path.rglob("*"))
    }


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _activity(n_slices: int, size: int) -> np.ndarray:
    """Bq/ml: SUV 1 background in a body disc, a hot sphere of SUV 4 in the middle."""
    suv_to_bqml = DOSE_BQ * 2.0 ** (-UPTAKE_S / HALF_LIFE_S) / (WEIGHT_KG * 1000.0)
    z, y, x = np.meshgrid(
        np.arange(n_slices) * SLICE_MM, *(np.arange(size) * PIXEL_MM,) * 2, indexing="ij"
    )
    centre = (size - 1) * PIXEL_MM / 2
    body = (y - centre) ** 2 + (x - centre) ** 2 <= (0.4 * size * PIXEL_MM) ** 2
    zc = (n_slices - 1) * SLICE_MM / 2
    sphere = (z - zc) ** 2 + (y - centre) ** 2 + (x - centre) ** 2 <= (3 * PIXEL_MM) ** 2
    return (np.where(sphere, 4.0, np.where(body, 1.0, 0.0)) * suv_to_bqml).astype(np.float64)


def make_pet_series(
    folder: Path,
    n_slices: int = 8,
    size: int = 32,
    *,
    edit: Edit | None = None,
    **overrides: object,
) -> list[Path]:
    """Write a valid single-frame PET series, one file per slice, into ``folder``.

    Parameters
    ----------
    folder : Path
        Created if needed; files are named ``slice_000.dcm`` ... in slice order.
    n_slices, size : int
        Number of slices and rows (= columns).
    edit : callable, optional
        ``edit(k, ds)`` is called on the dataset of slice ``k`` just before it is saved.
    **overrides
        DICOM keywords set on every slice (after the defaults, before ``edit``); ``None``
        deletes the attribute. ``SeriesInstanceUID`` and ``StudyInstanceUID`` default to new
        UIDs.

    Returns
    -------
    list of Path
        The files written, in slice order.

    Notes
    -----
    Units BQML with one rescale slope for the series, decay correction START, series at
    10:30, injection of 370 MBq F-18 FDG at 09:30, patient 70 kg: the SUVbw of the
    background is 1 and of the sphere 4. Slices are ``SLICE_MM`` apart along +z with
    ``PIXEL_MM`` pixels; the first slice is at z = 0.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    activity = _activity(n_slices, size)
    slope = float(activity.max()) / 32767 if activity.max() > 0 else 1.0
    stored = np.round(activity / slope).astype(np.int16)
    decay_factor = 2.0 ** (UPTAKE_S / HALF_LIFE_S)  # frame start relative to injection
    origin = -(size - 1) * PIXEL_MM / 2
    paths = []
    for k in range(n_slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = PositronEmissionTomographyImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"slice_{k:03d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240506"
        ds.StudyTime = "101500"
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "103000"
        ds.Modality = "PT"
        ds.Laterality = ""
        ds.Manufacturer = "petrecon tests"
        ds.ManufacturerModelName = "synthetic"
        ds.ReferringPhysicianName = ""
        ds.AccessionNumber = ""
        ds.StudyDescription = "synthetic PET"
        ds.SeriesDescription = "synthetic PET"
        ds.PatientName = "SYNTHETIC^PATIENT"
        ds.PatientID = "SYN0001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "M"
        ds.PatientAge = "054Y"
        ds.PatientSize = 1.75
        ds.PatientWeight = WEIGHT_KG
        ds.SliceThickness = SLICE_MM
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [origin, origin, k * SLICE_MM]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = k * SLICE_MM
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = f"{slope:.10g}"
        ds.Units = "BQML"
        ds.CountsSource = "EMISSION"
        ds.SeriesType = ["STATIC", "IMAGE"]
        ds.CollimatorType = "NONE"
        ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "DTIM", "NORM"]
        ds.DecayCorrection = "START"
        ds.ReconstructionMethod = "OSEM 3i21s"
        ds.NumberOfSlices = n_slices
        ds.ActualFrameDuration = 300_000
        ds.FrameReferenceTime = 0
        ds.DecayFactor = f"{decay_factor:.6f}"
        ds.ImageIndex = k + 1
        item = Dataset()
        item.Radiopharmaceutical = "Fluorodeoxyglucose"
        item.RadiopharmaceuticalStartTime = "093000"
        item.RadiopharmaceuticalStartDateTime = "20240506093000"
        item.RadionuclideTotalDose = DOSE_BQ
        item.RadionuclideHalfLife = HALF_LIFE_S
        item.RadionuclidePositronFraction = 0.9673
        item.RadionuclideCodeSequence = Sequence([_code("77004003", "SCT", "^18^Fluorine")])
        item.RadiopharmaceuticalCodeSequence = Sequence(
            [_code("35321007", "SCT", "Fluorodeoxyglucose F^18^")]
        )
        ds.RadiopharmaceuticalInformationSequence = Sequence([item])
        ds.PatientOrientationCodeSequence = Sequence()
        ds.PatientGantryRelationshipCodeSequence = Sequence()
        ds.PixelData = stored[k].tobytes()
        for keyword, value in overrides.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        if edit is not None:
            edit(k, ds)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------- DICOM corpus


@dataclass(frozen=True)
class Built:
    """A broken case as built on disk.

    Attributes
    ----------
    args : tuple of str
        Command-line arguments after the command name.
    input : Path
        The ``--in`` path (it may not exist); its files must not change.
    output : Path or None
        The ``--out`` folder, when the command has one.
    mentions : tuple of str
        Strings the error message must contain: the offending file or folder first, then
        anything else it must list (series UIDs, for instance).
    """

    args: tuple[str, ...]
    input: Path
    output: Path | None
    mentions: tuple[str, ...]


@dataclass(frozen=True)
class BadInput:
    """One corpus entry: ``build(root)`` makes the case under the empty folder ``root``."""

    name: str
    command: str  # "reconstruct" or "inspect-meta"
    build: Callable[[Path], Built]
    pattern: str


def _reconstruct(root: Path, culprit: Path | None = None, *extra: str) -> Built:
    """Arguments of ``reconstruct --in root/in --out root/out`` plus ``extra``."""
    src, out = root / "in", root / "out"
    args = ("--in", str(src), "--out", str(out), "--fwhm", "4", *extra)
    return Built(args, src, out, (str(culprit or src),))


def _inspect(root: Path, culprit: Path | None = None, *extra: str) -> Built:
    src = root / "in"
    return Built(("--in", str(src), *extra), src, None, (str(culprit or src),))


def _truncated(root: Path) -> Built:
    make_pet_series(root / "in")
    path = root / "in" / "slice_003.dcm"
    path.write_bytes(path.read_bytes()[:-500])
    return _reconstruct(root, path)


def _no_pixel_data(root: Path) -> Built:
    def drop(k: int, ds: Dataset) -> None:
        if k == 2:
            del ds.PixelData

    make_pet_series(root / "in", edit=drop)
    return _reconstruct(root, root / "in" / "slice_002.dcm")


def _ct_only(root: Path) -> Built:
    make_pet_series(root / "in", Modality="CT", SOPClassUID=CTImageStorage, Units=None)
    return _reconstruct(root)


def _ct_only_inspect(root: Path) -> Built:
    _ct_only(root)
    return _inspect(root)


def _mixed_matrix(root: Path) -> Built:
    def crop(k: int, ds: Dataset) -> None:
        if k == 4:
            ds.Rows = ds.Columns = 16
            ds.PixelData = np.zeros((16, 16), dtype=np.int16).tobytes()

    make_pet_series(root / "in", edit=crop)
    return _reconstruct(root, root / "in" / "slice_004.dcm")


def _duplicate_position(root: Path) -> Built:
    def duplicate(k: int, ds: Dataset) -> None:
        if k == 5:
            ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], 4 * SLICE_MM]

    make_pet_series(root / "in", edit=duplicate)
    return _reconstruct(root, root / "in" / "slice_005.dcm")


def _gantry_tilt(root: Path) -> Built:
    def tilt(k: int, ds: Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + z * math.tan(math.radians(15.0)), z]

    make_pet_series(root / "in", edit=tilt)
    return _reconstruct(root)


def _missing_slice(root: Path) -> Built:
    make_pet_series(root / "in")
    (root / "in" / "slice_004.dcm").unlink()
    return _reconstruct(root)


def _multi_frame(root: Path) -> Built:
    make_pet_series(root / "in", NumberOfFrames=2)
    return _reconstruct(root, root / "in" / "slice_000.dcm")


def _two_series(root: Path) -> tuple[str, str]:
    uids = generate_uid(), generate_uid()
    make_pet_series(root / "in" / "a", SeriesInstanceUID=uids[0], SeriesDescription="first")
    make_pet_series(
        root / "in" / "b", 4, SeriesInstanceUID=uids[1], SeriesDescription="second",
        SeriesNumber=2,
    )
    return uids


def _two_pet_series(root: Path) -> Built:
    uids = _two_series(root)
    built = _reconstruct(root)
    return Built(built.args, built.input, built.output, (*built.mentions, *uids))


def _unknown_uid(root: Path) -> Built:
    make_pet_series(root / "in")
    return _reconstruct(root, None, "--series-uid", "1.2.3.4")


def _unknown_uid_inspect(root: Path) -> Built:
    _two_series(root)
    return _inspect(root, None, "--series-uid", "1.2.3.4")


def _empty_folder(root: Path) -> Built:
    (root / "in").mkdir()
    return _reconstruct(root)


def _missing_input(root: Path) -> Built:
    return _reconstruct(root)


def _missing_input_inspect(root: Path) -> Built:
    return _inspect(root)


def _not_a_zip(root: Path) -> Built:
    archive = root / "in.zip"
    archive.write_bytes(b"PK\x03\x04 this is not a zip archive\n" * 4)
    out = root / "out"
    return Built(("--in", str(archive), "--out", str(out)), archive, out, (str(archive),))


def _output_not_empty(root: Path) -> Built:
    make_pet_series(root / "in")
    (root / "out").mkdir()
    (root / "out" / "previous.txt").write_text("an earlier result\n")
    return _reconstruct(root, root / "out")


def _output_under_file(root: Path) -> Built:
    make_pet_series(root / "in")
    blocker = root / "blocker"
    blocker.write_text("a regular file\n")
    out = blocker / "out"
    return Built(("--in", str(root / "in"), "--out", str(out)), root / "in", out, (str(blocker),))


def _report_exists(root: Path) -> Built:
    make_pet_series(root / "in")
    report = root / "run.json"
    report.write_text("{}\n")
    return _reconstruct(root, report, "--report", str(report))


def _report_under_file(root: Path) -> Built:
    make_pet_series(root / "in")
    (root / "blocker").write_text("a regular file\n")
    report = root / "blocker" / "run.json"
    return _reconstruct(root, report, "--report", str(report))


def _preview_exists(root: Path) -> Built:
    make_pet_series(root / "in")
    preview = root / "preview.png"
    preview.write_bytes(b"\x89PNG\r\n\x1a\n")
    return _reconstruct(root, preview, "--preview", str(preview))


BAD_INPUTS: tuple[BadInput, ...] = (
    BadInput(
        "truncated_file", "reconstruct", _truncated,
        r"slice_003\.dcm: pixel data has \d+ bytes, the header needs 2048 \(truncated file\?\)",
    ),
    BadInput(
        "pixel_data_missing", "reconstruct", _no_pixel_data,
        r"slice_002\.dcm: no pixel data \(7FE0,0010\)",
    ),
    BadInput(
        "ct_only_folder", "reconstruct", _ct_only,
        r"no PET series \(Modality PT\) found; found CT \(1 series\)",
    ),
    BadInput(
        "ct_only_folder_inspect", "inspect-meta", _ct_only_inspect,
        r"no PET series \(Modality PT\) found; found CT \(1 series\)",
    ),
    BadInput(
        "mixed_matrix_sizes", "reconstruct", _mixed_matrix,
        r"slice_004\.dcm: matrix 16x16 differs from \S+slice_000\.dcm 32x32; mixed matrix sizes",
    ),
    BadInput(
        "duplicate_slice_positions", "reconstruct", _duplicate_position,
        r"slice_00[45]\.dcm and \S+slice_00[45]\.dcm: duplicate slice position \(12\.00 mm",
    ),
    BadInput(
        "gantry_tilt", "reconstruct", _gantry_tilt,
        r"gantry tilt \(or sheared slices\) not supported: slice positions drift 5\.63 mm",
    ),
    BadInput(
        "non_uniform_slice_spacing", "reconstruct", _missing_slice,
        r"non-uniform slice spacing: 6\.000 mm between \S+slice_003\.dcm and \S+slice_005\.dcm, "
        r"median 3\.000 mm \(missing slice\?\)",
    ),
    BadInput(
        "multi_frame", "reconstruct", _multi_frame,
        r"slice_000\.dcm: multi-frame image \(2 frames\) is not supported",
    ),
    BadInput(
        "two_pet_series_without_uid", "reconstruct", _two_pet_series,
        r"2 PET series found; choose one with --series-uid: "
        r"\S+ \('first', 8 slices\); \S+ \('second', 4 slices\)$",
    ),
    BadInput(
        "unknown_series_uid", "reconstruct", _unknown_uid,
        r"series 1\.2\.3\.4 not found; found PT \S+ \('synthetic PET', 8 slices\)$",
    ),
    BadInput(
        "unknown_series_uid_inspect", "inspect-meta", _unknown_uid_inspect,
        r"no PET series with SeriesInstanceUID 1\.2\.3\.4",
    ),
    BadInput("empty_folder", "reconstruct", _empty_folder, r": no DICOM image files found$"),
    BadInput("input_missing", "reconstruct", _missing_input, r": no such file or folder$"),
    BadInput(
        "input_missing_inspect", "inspect-meta", _missing_input_inspect,
        r": no such file or folder$",
    ),
    BadInput(
        "zip_not_a_zip", "reconstruct", _not_a_zip,
        r"in\.zip: not a readable zip archive \(File is not a zip file\)",
    ),
    BadInput(
        "output_not_empty", "reconstruct", _output_not_empty,
        r"out: output folder exists and is not empty \(use --overwrite\)$",
    ),
    BadInput(
        "output_under_regular_file", "reconstruct", _output_under_file,
        r"blocker/out: cannot create output folder \(.*blocker is a file\)",
    ),
    BadInput(
        "report_exists", "reconstruct", _report_exists,
        r"run\.json: report exists \(use --overwrite\)$",
    ),
    BadInput(
        "report_under_regular_file", "reconstruct", _report_under_file,
        r"run\.json: cannot write report: \S+blocker is not an existing folder$",
    ),
    BadInput(
        "preview_exists", "reconstruct", _preview_exists,
        r"preview\.png: preview exists \(use --overwrite\)$",
    ),
)


# --------------------------------------------------------------------- Interfile corpus


@dataclass(frozen=True)
class BadSinogram:
    """One broken Interfile sinogram: ``build(root)`` returns the ``.hs`` header to read."""

    name: str
    build: Callable[[Path], Path]
    pattern: str


def write_valid_sinogram(folder: Path) -> Path:
    """A valid STIR Interfile pair ``sino.hs``/``sino.s`` (2 planes, 6 views, 8 bins)."""
    folder.mkdir(parents=True, exist_ok=True)
    geometry = SinogramGeometry(
        n_views=6, n_bins=8, bin_mm=2.0, n_planes=2, plane_mm=4.0, view_offset_deg=0.0,
        arc_corrected=True,
    )
    data = np.arange(math.prod(geometry.shape), dtype=np.float32).reshape(geometry.shape)
    return write_sinogram(folder / "sino.hs", data, geometry)


def _edit_header(header: Path, key: str, value: str | None) -> Path:
    """Replace (or, with None, drop) the line of ``key`` in ``header``."""
    lines = header.read_text().splitlines()
    matching = [k for k, line in enumerate(lines) if line.split(":=")[0].strip() == key]
    if len(matching) != 1:
        raise ValueError(f"{header}: key {key!r} appears {len(matching)} times")
    if value is None:
        del lines[matching[0]]
    else:
        lines[matching[0]] = f"{key} := {value}"
    header.write_text("\n".join(lines) + "\n")
    return header


def _size_mismatch(root: Path) -> Path:
    header = write_valid_sinogram(root)
    with header.with_suffix(".s").open("ab") as fh:
        fh.write(b"\0" * 4)
    return header


def _data_file_missing(root: Path) -> Path:
    header = write_valid_sinogram(root)
    header.with_suffix(".s").unlink()
    return header


def _missing_key(root: Path) -> Path:
    return _edit_header(write_valid_sinogram(root), "!matrix size [3]", None)


def _unknown_number_format(root: Path) -> Path:
    return _edit_header(write_valid_sinogram(root), "!number format", "complex float")


BAD_SINOGRAMS: tuple[BadSinogram, ...] = (
    BadSinogram(
        "header_data_size_mismatch", _size_mismatch,
        r"sino\.hs: data size mismatch: sino\.s has 388 bytes, the header describes 384",
    ),
    BadSinogram(
        "data_file_missing", _data_file_missing, r"sino\.hs: data file missing: \S+sino\.s$"
    ),
    BadSinogram(
        "missing_key", _missing_key, r"sino\.hs: missing required Interfile key 'matrix size \[3\]'"
    ),
    BadSinogram(
        "unknown_number_format", _unknown_number_format,
        r"sino\.hs: .*unsupported number format 'complex float'",
    ),
)
