"""Tests of the DICOM series reader on the public DRO and GE slices and on synthetic edits."""

from __future__ import annotations

import logging
import math
import re
import zipfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from bad_inputs import make_pet_series
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from pet_recon.errors import PetReconError
from pet_recon.inspect import inspect_meta
from pet_recon.io.series import find_series, read_series

Edit = Callable[[int, Dataset], None]


def _write_series(
    shared_data: Path, folder: Path, edit: Edit | None = None, slices: range = range(3, 8)
) -> Path:
    """Copy DRO_0_0 slices (z = 12..28 mm: background and hot sphere) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((shared_data / "suv_dro" / "DRO_0_0" / "PT").glob("*.dcm"))
    for k, source in enumerate(sources[i] for i in slices):
        ds = pydicom.dcmread(source)
        if edit is not None:
            edit(k, ds)
        ds.save_as(folder / source.name)
    return folder


def _new_series(uid: str, description: str) -> Edit:
    def edit(_: int, ds: Dataset) -> None:
        ds.SeriesInstanceUID = uid
        ds.SeriesDescription = description
        ds.SOPInstanceUID = generate_uid()

    return edit


def test_read_series_dro_geometry_and_metadata(shared_data: Path) -> None:
    volume, meta = read_series(shared_data / "suv_dro" / "DRO_0_0")
    assert volume.shape == (20, 256, 256) and volume.dtype == np.float32
    assert float(volume.max()) == pytest.approx(14400.0)
    assert meta.geometry.shape == (20, 256, 256)
    assert meta.geometry.spacing == (4.0, 4.0, 4.0)
    assert meta.geometry.origin == (0.0, 0.0, 0.0)
    assert np.allclose(meta.geometry.direction, np.eye(3).ravel())
    assert meta.geometry.slice_position(19) == pytest.approx((0.0, 0.0, 76.0))
    assert meta.modality == "PT" and meta.units == "BQML"
    assert meta.patient.weight_kg == 70.0 and meta.patient.height_m == 1.75
    assert meta.patient.sex == "O"
    assert meta.patient.age_years == pytest.approx(35.0, abs=0.01)  # birth date vs study date
    rp = meta.radiopharmaceutical
    assert rp.start == datetime(2025, 1, 1, 10, 0)
    assert rp.total_dose_bq == pytest.approx(368.08e6)
    assert rp.half_life_s == 6586.2 and rp.radionuclide == "^18^Fluorine"
    acq = meta.acquisition
    assert acq.decay_correction == "START" and acq.series_datetime == datetime(2025, 1, 1, 11)
    assert len(acq.acquisition_datetimes) == 20 and acq.frame_duration_s[0] == 300.0
    assert "ATTN" in acq.corrected_image and acq.slice_thickness_mm == 4.0
    assert len(meta.source.sop_instance_uids) == 20 and meta.source.series_number == 1
    assert len(meta.headers) == 20 and all("PixelData" not in ds for ds in meta.headers)
    assert [float(ds.ImagePositionPatient[2]) for ds in meta.headers] == [
        4.0 * k for k in range(20)
    ]
    assert any("DRO_mask.nii.gz" in w for w in meta.warnings)


def test_read_series_dose_in_mbq_converted_with_warning(shared_data: Path) -> None:
    _, meta = read_series(shared_data / "suv_dro" / "DRO_3_0")
    assert meta.radiopharmaceutical.total_dose_bq == pytest.approx(368.08e6)
    assert any("MBq" in w for w in meta.warnings)


def test_read_series_per_slice_rescale_slopes(shared_data: Path) -> None:
    reference, _ = read_series(shared_data / "suv_dro" / "DRO_0_0")
    volume, meta = read_series(shared_data / "suv_dro" / "DRO_1_0")
    assert len({float(ds.RescaleSlope) for ds in meta.headers}) > 1
    np.testing.assert_allclose(volume, reference)


def test_read_series_gh184_jpeg_lossless(shared_data: Path) -> None:
    volume, meta = read_series(shared_data / "pet_slices" / "GH184.dcm")
    assert volume.shape == (1, 128, 128) and volume.dtype == np.float32
    assert float(volume.min()) >= 0.0
    assert float(volume.max()) == pytest.approx(32767 * 0.234542, rel=1e-6)  # ~7.7 kBq/ml
    assert meta.geometry.spacing == pytest.approx((5.46875, 5.46875, 3.27))
    assert meta.acquisition.ge_scan_datetime == datetime(2014, 10, 23, 11, 0, 36)
    assert meta.radiopharmaceutical.start == datetime(2014, 10, 23, 9, 32)
    assert meta.patient.weight_kg == 90.0 and meta.patient.age_years is None  # "000Y"


def test_read_series_shuffled_files_sorted_by_position(shared_data: Path, tmp_path: Path) -> None:
    def reverse_names(k: int, ds: Dataset) -> None:
        ds.InstanceNumber = 100 - k

    folder = _write_series(shared_data, tmp_path / "in", reverse_names)
    for k, path in enumerate(sorted(folder.iterdir())):  # names no longer follow z
        path.rename(folder / f"x{(7 * k) % 5}.dcm")
    volume, meta = read_series(folder)
    z = [float(ds.ImagePositionPatient[2]) for ds in meta.headers]
    assert z == [12.0, 16.0, 20.0, 24.0, 28.0]
    assert float(volume[0].max()) == 3600.0 and float(volume[-1].max()) == 14400.0


def test_read_series_flipped_orientation_sorts_along_normal(
    shared_data: Path, tmp_path: Path
) -> None:
    def flip(k: int, ds: Dataset) -> None:
        ds.ImageOrientationPatient = [1, 0, 0, 0, -1, 0]  # normal -z

    _, meta = read_series(_write_series(shared_data, tmp_path / "in", flip))
    assert meta.geometry.origin[2] == 28.0 and meta.geometry.spacing[2] == 4.0
    assert meta.geometry.slice_position(4) == pytest.approx((0.0, 0.0, 12.0))


def test_read_series_zip_input_read_in_memory(shared_data: Path, tmp_path: Path) -> None:
    folder = _write_series(shared_data, tmp_path / "in")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"study/pet/{path.name}")
        zf.writestr("study/readme.txt", "not DICOM")
    before = sorted(tmp_path.rglob("*"))
    volume, meta = read_series(archive)
    assert volume.shape == (5, 256, 256)
    assert all(f.startswith(f"{archive}:study/pet/") for f in meta.files)
    assert any("readme.txt" in w for w in meta.warnings)
    assert sorted(tmp_path.rglob("*")) == before  # nothing extracted


def test_read_series_recursive_folder(shared_data: Path, tmp_path: Path) -> None:
    folder = _write_series(shared_data, tmp_path / "in")
    for k, path in enumerate(sorted(folder.glob("*.dcm"))):
        target = folder / f"level{k % 2}" / "deeper" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
    volume, _ = read_series(folder)
    assert volume.shape == (5, 256, 256)


def test_read_series_non_dicom_file_skipped_with_warning(
    shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _write_series(shared_data, tmp_path / "in")
    (folder / "notes.txt").write_text("scanner notes")
    with caplog.at_level(logging.WARNING):
        volume, meta = read_series(folder)
    assert volume.shape[0] == 5
    assert any("notes.txt" in w for w in meta.warnings)
    assert "notes.txt" in caplog.text


def test_read_series_file_without_preamble(shared_data: Path, tmp_path: Path) -> None:
    folder = _write_series(shared_data, tmp_path / "in")
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.preamble = None
        ds.file_meta = FileMetaDataset()
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
    volume, _ = read_series(folder)
    assert float(volume.max()) == 14400.0


def test_read_series_other_series_named_in_warning(shared_data: Path) -> None:
    _, meta = read_series(shared_data / "suv_dro" / "DRO_0_0")
    others = [w for w in meta.warnings if "not read" in w]
    assert len(others) == 1
    assert re.search(r"not read: 1 other series: RTSTRUCT [0-9.]+ \(", others[0])


def test_read_series_other_series_listed_first_three_and_count(tmp_path: Path) -> None:
    uids = [str(pydicom.dcmread(make_pet_series(tmp_path / "in" / name)[0]).SeriesInstanceUID)
            for name in "abcde"]
    _, meta = read_series(tmp_path / "in", series_uid=uids[0])
    (other,) = [w for w in meta.warnings if "not read" in w]
    assert f"read series {uids[0]}; not read: 4 other series: PT " in other
    assert other.endswith(" and 1 more") and other.count("; PT ") == 2
    assert uids[0] not in other.split("not read")[1]


def test_read_series_also_read_series_left_out_of_warning(tmp_path: Path) -> None:
    uids = [str(pydicom.dcmread(make_pet_series(tmp_path / "in" / name)[0]).SeriesInstanceUID)
            for name in "abc"]
    _, meta = read_series(tmp_path / "in", series_uid=uids[0], also_read=uids[:2])
    (other,) = [w for w in meta.warnings if "not read" in w]
    assert f"not read: 1 other series: PT {uids[2]} " in other
    _, meta = read_series(tmp_path / "in", series_uid=uids[0], also_read=uids)
    assert not [w for w in meta.warnings if "not read" in w]


def test_inspect_meta_several_pet_series_no_not_read_warning(tmp_path: Path) -> None:
    for name in "ab":
        make_pet_series(tmp_path / "in" / name)
    reports = inspect_meta(tmp_path / "in")
    assert len(reports) == 2
    assert not [w for r in reports for w in r["warnings"] if "not read" in w]


def test_find_series_lists_pet_and_rtstruct(shared_data: Path) -> None:
    found = find_series(shared_data / "suv_dro" / "DRO_0_0")
    assert [(s.modality, s.n_slices) for s in found] == [("PT", 20), ("RTSTRUCT", 1)]
    assert "20 slices" in found[0].describe()


def test_read_series_several_pet_series_lists_them(shared_data: Path, tmp_path: Path) -> None:
    uid_a, uid_b = generate_uid(), generate_uid()
    _write_series(shared_data, tmp_path / "in" / "a", _new_series(uid_a, "first"))
    _write_series(shared_data, tmp_path / "in" / "b", _new_series(uid_b, "second"), range(3, 6))
    with pytest.raises(
        PetReconError, match=r"2 PET series found; choose one with --series-uid"
    ) as e:
        read_series(tmp_path / "in")
    message = str(e.value)
    assert "\n" not in message
    assert f"{uid_a} ('first', 5 slices)" in message and f"{uid_b} ('second', 3 slices)" in message
    volume, meta = read_series(tmp_path / "in", series_uid=uid_b)
    assert volume.shape[0] == 3 and meta.source.series_description == "second"


def test_read_series_unknown_series_uid(shared_data: Path, tmp_path: Path) -> None:
    folder = _write_series(shared_data, tmp_path / "in")
    with pytest.raises(PetReconError, match=r"series 1\.2\.3 not found; found PT "):
        read_series(folder, series_uid="1.2.3")


def test_read_series_ct_only_folder(shared_data: Path, tmp_path: Path) -> None:
    def to_ct(k: int, ds: Dataset) -> None:
        ds.Modality = "CT"
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"

    folder = _write_series(shared_data, tmp_path / "in", to_ct)
    with pytest.raises(
        PetReconError, match=r"no PET series \(Modality PT\) found; found CT \(1 series\)"
    ):
        read_series(folder)
    volume, meta = read_series(folder, modality=None)
    assert meta.modality == "CT" and volume.shape == (5, 256, 256)


def test_read_series_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(PetReconError, match="no DICOM image files found"):
        read_series(tmp_path)


def test_read_series_missing_path(tmp_path: Path) -> None:
    with pytest.raises(PetReconError, match="no such file or folder"):
        read_series(tmp_path / "absent")


def test_read_series_mixed_matrix_sizes(shared_data: Path, tmp_path: Path) -> None:
    def crop(k: int, ds: Dataset) -> None:
        if k == 2:
            ds.PixelData = np.ascontiguousarray(ds.pixel_array[:128, :128]).tobytes()
            ds.Rows, ds.Columns = 128, 128

    with pytest.raises(PetReconError, match=r"slice_005\.dcm: matrix 128x128 .*mixed matrix"):
        read_series(_write_series(shared_data, tmp_path / "in", crop))


def test_read_series_mixed_pixel_spacing(shared_data: Path, tmp_path: Path) -> None:
    def respace(k: int, ds: Dataset) -> None:
        if k == 4:
            ds.PixelSpacing = [2.0, 2.0]

    with pytest.raises(PetReconError, match=r"slice_007\.dcm: PixelSpacing .*mixed pixel"):
        read_series(_write_series(shared_data, tmp_path / "in", respace))


def test_read_series_missing_position(shared_data: Path, tmp_path: Path) -> None:
    def drop_position(k: int, ds: Dataset) -> None:
        if k == 1:
            del ds.ImagePositionPatient

    with pytest.raises(PetReconError, match=r"slice_004\.dcm: missing or invalid ImagePosition"):
        read_series(_write_series(shared_data, tmp_path / "in", drop_position))


def test_read_series_bad_zip(tmp_path: Path) -> None:
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"PK not really a zip")
    with pytest.raises(PetReconError, match=r"broken\.zip: not a readable zip archive"):
        read_series(archive)


def test_read_series_mixed_orientation(shared_data: Path, tmp_path: Path) -> None:
    def rotate(k: int, ds: Dataset) -> None:
        if k == 1:
            ds.ImageOrientationPatient = [0, 1, 0, -1, 0, 0]

    with pytest.raises(PetReconError, match="must share one orientation"):
        read_series(_write_series(shared_data, tmp_path / "in", rotate))


def test_read_series_duplicate_positions(shared_data: Path, tmp_path: Path) -> None:
    def duplicate(k: int, ds: Dataset) -> None:
        if k == 3:
            ds.ImagePositionPatient = [0.0, 0.0, 20.0]

    with pytest.raises(PetReconError, match=r"duplicate slice position \(20\.00 mm"):
        read_series(_write_series(shared_data, tmp_path / "in", duplicate))


def test_read_series_gantry_tilt(shared_data: Path, tmp_path: Path) -> None:
    def tilt(k: int, ds: Dataset) -> None:
        z = float(ds.ImagePositionPatient[2])
        ds.ImagePositionPatient = [0.0, z * math.tan(math.radians(15.0)), z]

    with pytest.raises(PetReconError, match="gantry tilt .*not supported"):
        read_series(_write_series(shared_data, tmp_path / "in", tilt))


def test_read_series_non_uniform_spacing(shared_data: Path, tmp_path: Path) -> None:
    folder = _write_series(shared_data, tmp_path / "in", slices=range(3, 9))
    (folder / "pet_dro_0_0_slice_005.dcm").unlink()
    with pytest.raises(PetReconError, match=r"non-uniform slice spacing: 8\.000 mm .*missing"):
        read_series(folder)


def test_read_series_small_spacing_jitter_accepted(shared_data: Path, tmp_path: Path) -> None:
    def jitter(k: int, ds: Dataset) -> None:
        ds.ImagePositionPatient = [0.0, 0.0, float(ds.ImagePositionPatient[2]) + 0.02 * (k % 2)]

    _, meta = read_series(_write_series(shared_data, tmp_path / "in", jitter))
    assert meta.geometry.spacing[2] == pytest.approx(4.0, abs=0.03)


def test_read_series_truncated_file(shared_data: Path, tmp_path: Path) -> None:
    folder = _write_series(shared_data, tmp_path / "in")
    path = folder / "pet_dro_0_0_slice_004.dcm"
    path.write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(PetReconError, match=r"slice_004\.dcm: pixel data has .*truncated"):
        read_series(folder)


def test_read_series_missing_pixel_data(shared_data: Path, tmp_path: Path) -> None:
    def drop_pixels(k: int, ds: Dataset) -> None:
        if k == 0:
            del ds.PixelData

    with pytest.raises(PetReconError, match=r"slice_003\.dcm: no pixel data"):
        read_series(_write_series(shared_data, tmp_path / "in", drop_pixels))


def test_read_series_multiframe_rejected(shared_data: Path, tmp_path: Path) -> None:
    def multiframe(k: int, ds: Dataset) -> None:
        ds.NumberOfFrames = 2

    with pytest.raises(PetReconError, match="multi-frame image .* not supported"):
        read_series(_write_series(shared_data, tmp_path / "in", multiframe))


def test_read_series_patient_age_and_height_in_cm(shared_data: Path, tmp_path: Path) -> None:
    def patient(k: int, ds: Dataset) -> None:
        ds.PatientAge = "045Y"
        ds.PatientSize = 175
        del ds.PatientWeight

    _, meta = read_series(_write_series(shared_data, tmp_path / "in", patient))
    assert meta.patient.age_years == 45.0
    assert meta.patient.height_m == pytest.approx(1.75)
    assert meta.patient.weight_kg is None
    assert any("in cm" in w for w in meta.warnings)


def test_read_series_anonymised_age_is_unknown(shared_data: Path, tmp_path: Path) -> None:
    def placeholder(k: int, ds: Dataset) -> None:
        ds.PatientAge = "000Y"
        ds.PatientBirthDate = "17000101"

    _, meta = read_series(_write_series(shared_data, tmp_path / "in", placeholder))
    assert meta.patient.age_years is None


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_read_series_compressed_transfer_syntaxes(shared_data: Path, tmp_path: Path,
                                                  syntax: str) -> None:
    def compress(_: int, ds: Dataset) -> None:
        ds.compress(syntax)

    plain, _ = read_series(_write_series(shared_data, tmp_path / "plain"))
    packed_dir = _write_series(shared_data, tmp_path / "packed", compress)
    first = sorted(packed_dir.glob("*.dcm"))[0]
    assert pydicom.dcmread(first).file_meta.TransferSyntaxUID == syntax
    packed, _ = read_series(packed_dir)
    np.testing.assert_array_equal(packed, plain)
