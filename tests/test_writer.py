"""Tests of the derived- and new-series writer on the public DRO and GE slices."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage, generate_uid

from pet_recon import __version__
from pet_recon.errors import PetReconError
from pet_recon.io.metadata import (
    AcquisitionInfo,
    PatientInfo,
    Radiopharmaceutical,
    SeriesMeta,
    SourceReference,
    VolumeGeometry,
)
from pet_recon.io.series import read_series
from pet_recon.io.suv import SuvUnavailable, suv_scale
from pet_recon.io.writer import write_derived_series, write_new_series

needs_dciodvfy = pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed"
)
needs_dcm2niix = pytest.mark.skipif(
    shutil.which("dcm2niix") is None, reason="dcm2niix not installed"
)

DRO_CASES = ["DRO_0_0", "DRO_1_0", "DRO_2_0", "DRO_2_1", "DRO_2_3", "DRO_2_5", "DRO_3_1", "DRO_4_1"]


@dataclasses.dataclass
class Written:
    """A source series and the derived series written from it."""

    source: Path
    volume: np.ndarray
    meta: SeriesMeta
    out: Path
    files: list[Path]


def _write(source: Path, out: Path) -> Written:
    """Read ``source`` and write it back unfiltered as a derived series in ``out``."""
    volume, meta = read_series(source)
    files = write_derived_series(
        volume,
        meta,
        out,
        series_description="petrecon restored",
        derivation_description="petrecon test: unfiltered copy",
    )
    return Written(source, volume, meta, out, files)


@pytest.fixture(scope="module")
def dro(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Written:
    """DRO_0_0 (20 slices, BQML) written back unfiltered."""
    source = shared_data / "suv_dro" / "DRO_0_0" / "PT"
    return _write(source, tmp_path_factory.mktemp("dro") / "out")


@pytest.fixture(scope="module")
def gh184(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Written:
    """The real GE slice (JPEG Lossless, GE private block) written back unfiltered."""
    source = shared_data / "pet_slices" / "GH184.dcm"
    return _write(source, tmp_path_factory.mktemp("gh184") / "out")


def _simulated_meta(n_slices: int = 4) -> SeriesMeta:
    """Typed metadata of a simulated series, as the simulator builds it (no headers)."""
    start = datetime(2024, 5, 6, 10, 30)
    return SeriesMeta(
        geometry=VolumeGeometry(
            shape=(n_slices, 24, 32),
            origin=(-62.0, -46.0, -100.0),
            spacing=(4.0, 4.0, 3.0),
            direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        ),
        modality="PT",
        units="BQML",
        patient=PatientInfo(weight_kg=75.0, height_m=1.8, sex="M", age_years=60.0),
        radiopharmaceutical=Radiopharmaceutical(
            name="FDG",
            radionuclide="^18^Fluorine",
            half_life_s=6586.2,
            total_dose_bq=3.7e8,
            start=datetime(2024, 5, 6, 9, 30),
            positron_fraction=0.97,
        ),
        acquisition=AcquisitionInfo(
            manufacturer="petrecon",
            model="simulator",
            units="BQML",
            decay_correction="START",
            series_datetime=start,
            acquisition_datetimes=(start,) * n_slices,
            frame_duration_s=(180.0,) * n_slices,
            reconstruction_method="OSEM 3i8s",
            corrected_image=("DECY", "ATTN", "SCAT"),
            slice_thickness_mm=3.0,
        ),
        source=SourceReference(
            study_instance_uid=generate_uid(),
            series_instance_uid=generate_uid(),
            frame_of_reference_uid=generate_uid(),
            sop_class_uid=PositronEmissionTomographyImageStorage,
            sop_instance_uids=(),
        ),
    )


def _dciodvfy_errors(files: list[Path]) -> list[str]:
    errors = []
    for path in files:
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
        lines = (run.stdout + run.stderr).splitlines()
        errors += [f"{path.name}: {line}" for line in lines if line.startswith("Error")]
    return errors


def _suv_factors(meta: SeriesMeta) -> tuple[float, ...] | str:
    try:
        return suv_scale(meta).factors
    except SuvUnavailable as exc:
        return str(exc)


def test_write_derived_series_dro_round_trip_within_int16_quantisation(dro: Written) -> None:
    volume, meta = read_series(dro.out)
    assert volume.shape == dro.volume.shape
    for k in range(volume.shape[0]):
        slope = float(pydicom.dcmread(dro.files[k], stop_before_pixels=True).RescaleSlope)
        assert np.abs(volume[k] - dro.volume[k]).max() <= 0.5 * slope * (1 + 1e-6)
    assert float(volume.max()) == pytest.approx(float(dro.volume.max()), rel=1e-3)
    assert meta.units == dro.meta.units == "BQML"


def test_write_derived_series_dro_round_trip_same_geometry(dro: Written) -> None:
    _, meta = read_series(dro.out)
    geometry, expected = meta.geometry, dro.meta.geometry
    assert geometry.shape == expected.shape
    assert np.allclose(geometry.origin, expected.origin, atol=1e-6)
    assert np.allclose(geometry.spacing, expected.spacing, atol=1e-6)
    assert np.allclose(geometry.direction, expected.direction, atol=1e-9)


@pytest.mark.parametrize("case", DRO_CASES)
def test_write_derived_series_dro_cases_keep_suv_inputs(
    shared_data: Path, tmp_path: Path, case: str
) -> None:
    written = _write(shared_data / "suv_dro" / case / "PT", tmp_path / "out")
    _, meta = read_series(written.out)
    assert meta.patient == written.meta.patient
    assert meta.radiopharmaceutical == written.meta.radiopharmaceutical
    assert meta.acquisition == written.meta.acquisition
    assert meta.units == written.meta.units
    factors, expected = _suv_factors(meta), _suv_factors(written.meta)
    assert isinstance(expected, tuple), expected
    assert factors == pytest.approx(expected, rel=1e-12)


def test_write_derived_series_gh184_keeps_suv_inputs_and_ge_scan_datetime(gh184: Written) -> None:
    volume, meta = read_series(gh184.out)
    assert meta.acquisition == gh184.meta.acquisition
    assert meta.acquisition.ge_scan_datetime is not None
    assert meta.patient == gh184.meta.patient
    assert meta.radiopharmaceutical == gh184.meta.radiopharmaceutical
    assert _suv_factors(meta) == pytest.approx(_suv_factors(gh184.meta), rel=1e-12)
    assert float(volume.max()) == pytest.approx(float(gh184.volume.max()), rel=1e-3)


def test_write_derived_series_philips_factors_dropped_when_units_change(
    shared_data: Path, tmp_path: Path
) -> None:
    volume, meta = read_series(shared_data / "suv_dro" / "DRO_2_5" / "PT")
    assert meta.units == "CNTS" and meta.acquisition.philips_activity_scale[0] is not None
    activity = np.asarray(meta.acquisition.philips_activity_scale, dtype=np.float32)
    bqml = volume * activity[:, None, None]
    files = write_derived_series(
        bqml,
        meta,
        tmp_path / "out",
        series_description="petrecon",
        derivation_description="test",
        units="BQML",
    )
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.Units == "BQML"
    assert not [elem for elem in ds if elem.tag.group == 0x7053]


def test_write_derived_series_gh184_explicit_little_endian_without_other_private_tags(
    gh184: Written,
) -> None:
    ds = pydicom.dcmread(gh184.files[0])
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    private = [elem.tag for elem in ds if elem.tag.is_private]
    assert private == [pydicom.tag.Tag(0x0009, 0x0010), pydicom.tag.Tag(0x0009, 0x100D)]
    assert ds[0x0009, 0x100D].value == "20141023110036.000000"


def test_write_derived_series_non_ascii_description_written_as_utf8(
    gh184: Written, tmp_path: Path
) -> None:
    files = write_derived_series(
        gh184.volume,
        gh184.meta,
        tmp_path / "out",
        series_description="débruité 低剂量",
        derivation_description="restauration à faible dose",
    )
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.SeriesDescription == "débruité 低剂量"
    assert ds.StudyDescription == gh184.meta.headers[0].StudyDescription


def test_write_derived_series_new_uids_same_study_and_frame_of_reference(gh184: Written) -> None:
    ds = pydicom.dcmread(gh184.files[0], stop_before_pixels=True)
    source = gh184.meta.source
    assert ds.StudyInstanceUID == source.study_instance_uid
    assert ds.FrameOfReferenceUID == source.frame_of_reference_uid
    assert ds.SeriesInstanceUID != source.series_instance_uid
    assert ds.SOPInstanceUID not in source.sop_instance_uids
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.SeriesNumber == (source.series_number or 0) + 1000


def test_write_derived_series_invalid_frame_of_reference_replaced_stably(
    dro: Written, tmp_path: Path
) -> None:
    # The DRO reuses its Study Instance UID as Frame of Reference UID (invalid, PS3.5 9.1).
    source = dro.meta.source
    assert source.frame_of_reference_uid == source.study_instance_uid
    again = _write(dro.source, tmp_path / "again")
    first = [pydicom.dcmread(f, stop_before_pixels=True) for f in (dro.files[0], again.files[0])]
    assert first[0].FrameOfReferenceUID == first[1].FrameOfReferenceUID
    assert first[0].FrameOfReferenceUID != source.study_instance_uid
    assert first[0].SeriesInstanceUID != first[1].SeriesInstanceUID
    assert {ds.StudyInstanceUID for ds in first} == {source.study_instance_uid}


def test_write_derived_series_dro_identity_and_source_references(dro: Written) -> None:
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in dro.files]
    source = dro.meta.source
    assert [f.name for f in dro.files] == [f"IM_{k:04d}.dcm" for k in range(1, 21)]
    assert len({ds.SOPInstanceUID for ds in datasets}) == 20
    assert not {ds.SOPInstanceUID for ds in datasets} & set(source.sop_instance_uids)
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    for k, ds in enumerate(datasets):
        assert list(ds.ImageType) == ["DERIVED", "PRIMARY", "RESTORED"]
        assert ds.InstanceNumber == ds.ImageIndex == k + 1
        assert ds.NumberOfSlices == 20
        assert ds.SeriesDescription == "petrecon restored"
        assert ds.DerivationDescription == "petrecon test: unfiltered copy"
        assert f"petrecon {__version__}" in ds.SoftwareVersions
        reference = ds.SourceImageSequence[0]
        assert reference.ReferencedSOPClassUID == source.sop_class_uid
        assert reference.ReferencedSOPInstanceUID == source.sop_instance_uids[k]
        purpose = reference.PurposeOfReferenceCodeSequence[0]
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121322", "DCM")
        series = ds.ReferencedSeriesSequence[0]
        assert series.SeriesInstanceUID == source.series_instance_uid
        instance = series.ReferencedInstanceSequence[0]
        assert instance.ReferencedSOPInstanceUID == source.sop_instance_uids[k]
        assert ds.SeriesDate == "20250101" and ds.SeriesTime.startswith("110000")


def test_write_derived_series_slope_uses_full_int16_range(dro: Written, tmp_path: Path) -> None:
    volume = np.zeros(dro.meta.geometry.shape, dtype=np.float32)
    volume[0, 10, 10] = 123.456  # positive extreme
    volume[1, 5, 5], volume[1, 6, 6] = -1000.0, 300.0  # negative extreme
    volume[3] = np.linspace(-2.0, 7.5, volume[3].size).reshape(volume[3].shape)
    files = write_derived_series(
        volume, dro.meta, tmp_path / "out", series_description="x", derivation_description="y"
    )
    datasets = [pydicom.dcmread(f) for f in files[:4]]
    stored = [ds.pixel_array for ds in datasets]
    assert all(ds.PixelRepresentation == 1 and ds.BitsStored == 16 for ds in datasets)
    assert stored[0].max() == 32767 and float(datasets[0].RescaleSlope) == pytest.approx(
        float(np.float32(123.456)) / 32767, rel=1e-9
    )
    assert stored[1].min() == -32768
    assert float(datasets[2].RescaleSlope) == 1.0 and not stored[2].any()
    assert stored[3].max() == 32767
    assert all(float(ds.RescaleIntercept) == 0.0 for ds in datasets)
    restored, _ = read_series(tmp_path / "out")
    for k, ds in enumerate(datasets):
        assert np.abs(restored[k] - volume[k]).max() <= 0.5 * float(ds.RescaleSlope) * (1 + 1e-6)


def test_write_derived_series_nonempty_folder_raises(dro: Written, tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(PetReconError, match="not empty"):
        write_derived_series(
            dro.volume, dro.meta, tmp_path, series_description="x", derivation_description="y"
        )
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_write_derived_series_long_description_raises(dro: Written, tmp_path: Path) -> None:
    with pytest.raises(PetReconError, match="series description"):
        write_derived_series(
            dro.volume,
            dro.meta,
            tmp_path / "out",
            series_description="x" * 65,
            derivation_description="y",
        )


def test_write_derived_series_shape_mismatch_raises(dro: Written, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        write_derived_series(
            dro.volume[:-1],
            dro.meta,
            tmp_path / "out",
            series_description="x",
            derivation_description="y",
        )


@needs_dciodvfy
def test_write_derived_series_dro_dciodvfy_no_errors(dro: Written) -> None:
    assert _dciodvfy_errors(dro.files) == []


@needs_dciodvfy
def test_write_derived_series_gh184_dciodvfy_no_errors(gh184: Written) -> None:
    assert _dciodvfy_errors(gh184.files) == []


@needs_dciodvfy
def test_write_derived_series_gh610_dciodvfy_no_errors(shared_data: Path, tmp_path: Path) -> None:
    # GH610 has broken code items, a misplaced modifier sequence, gated-only attributes.
    written = _write(shared_data / "pet_slices" / "GH610.dcm", tmp_path / "out")
    assert _dciodvfy_errors(written.files) == []


@needs_dcm2niix
def test_write_derived_series_dro_dcm2niix_affine_matches_input(
    dro: Written, tmp_path: Path
) -> None:
    images = []
    for name, folder in (("in", dro.source), ("out", dro.out)):
        subprocess.run(
            ["dcm2niix", "-b", "n", "-z", "n", "-f", name, "-o", str(tmp_path), str(folder)],
            capture_output=True,
            check=True,
        )
        images.append(sitk.ReadImage(str(tmp_path / f"{name}.nii")))
    source, written = images
    assert written.GetSize() == source.GetSize()
    assert np.allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)
    assert np.allclose(written.GetSpacing(), source.GetSpacing(), atol=1e-6)
    assert np.allclose(written.GetDirection(), source.GetDirection(), atol=1e-6)


def test_write_derived_series_dro_simpleitk_reads_input_geometry(dro: Written) -> None:
    images = []
    for folder in (dro.source, dro.out):
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        reader.SetOutputPixelType(sitk.sitkFloat32)
        images.append(reader.Execute())
    source, written = images
    assert written.GetSize() == source.GetSize()
    assert np.allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-6)
    assert np.allclose(written.GetSpacing(), source.GetSpacing(), atol=1e-6)
    assert np.allclose(written.GetDirection(), source.GetDirection(), atol=1e-9)
    values = sitk.GetArrayFromImage(written)
    assert np.allclose(values, dro.volume, atol=float(dro.volume.max()) / 32767)


def test_write_new_series_round_trip_same_metadata(tmp_path: Path) -> None:
    meta = _simulated_meta()
    volume = np.random.default_rng(0).gamma(2.0, 2000.0, meta.geometry.shape).astype(np.float32)
    files = write_new_series(
        volume,
        meta,
        tmp_path / "out",
        series_description="simulated",
        patient_id="case007",
        patient_position="HFS",
    )
    read, back = read_series(tmp_path / "out")
    assert np.allclose(read, volume, atol=float(volume.max()) / 32767)
    assert back.geometry == meta.geometry
    assert back.patient == meta.patient
    assert back.radiopharmaceutical == meta.radiopharmaceutical
    assert back.source.series_instance_uid == meta.source.series_instance_uid
    assert back.source.study_instance_uid == meta.source.study_instance_uid
    assert back.source.frame_of_reference_uid == meta.source.frame_of_reference_uid
    expected = dataclasses.replace(
        meta.acquisition,
        decay_factors=back.acquisition.decay_factors,
        philips_suv_scale=(None,) * 4,
        philips_activity_scale=(None,) * 4,
    )
    assert back.acquisition == expected
    # Decay Factor from the half-life: average decay over the 180 s frame at series start.
    x = np.log(2) / 6586.2 * 180.0
    assert back.acquisition.decay_factors[0] == pytest.approx(x / -np.expm1(-x), rel=1e-9)
    assert _suv_factors(back) == pytest.approx(_suv_factors(meta), rel=1e-12)
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY"]
    assert (str(ds.PatientName), ds.PatientID) == ("PETRECON^SIM", "case007")
    assert "SourceImageSequence" not in ds and "PatientPosition" not in ds
    orientation = ds.PatientOrientationCodeSequence[0]
    assert orientation.CodeMeaning == "recumbent"
    assert orientation.PatientOrientationModifierCodeSequence[0].CodeMeaning == "supine"
    assert ds.PatientGantryRelationshipCodeSequence[0].CodeMeaning == "headfirst"


def _minimal_meta() -> SeriesMeta:
    """Simulated metadata that knows nothing but geometry, UIDs and units."""
    return dataclasses.replace(
        _simulated_meta(2),
        patient=PatientInfo(),
        radiopharmaceutical=Radiopharmaceutical(),
        acquisition=AcquisitionInfo(units="BQML"),
    )


@needs_dciodvfy
@pytest.mark.parametrize("make_meta", [_simulated_meta, _minimal_meta], ids=["full", "minimal"])
def test_write_new_series_dciodvfy_no_errors(
    tmp_path: Path, make_meta: Callable[[], SeriesMeta]
) -> None:
    meta = make_meta()
    volume = np.ones(meta.geometry.shape, dtype=np.float32)
    files = write_new_series(
        volume,
        meta,
        tmp_path / "out",
        series_description="simulated",
        patient_id="case007",
        patient_position="FFP",
    )
    assert _dciodvfy_errors(files) == []


def test_write_new_series_minimal_meta_writes_valid_defaults(tmp_path: Path) -> None:
    meta = _minimal_meta()
    files = write_new_series(
        np.zeros(meta.geometry.shape, dtype=np.float32),
        meta,
        tmp_path / "out",
        series_description="simulated",
        patient_id="case008",
    )
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.DecayCorrection == "NONE" and ds.CountsSource == "EMISSION"
    assert list(ds.SeriesType) == ["STATIC", "IMAGE"]
    assert ds.RadiopharmaceuticalInformationSequence == []
    assert ds.SliceThickness == 3.0  # from the slice spacing
