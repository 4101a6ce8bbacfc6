"""Tests of SUV scale factors: the IBSI-SUV DRO, real GE slices and synthetic header edits."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import SHARED_DATA
from pydicom.dataset import Dataset

from pet_recon.errors import PetReconError
from pet_recon.io.metadata import SeriesMeta
from pet_recon.io.series import read_series
from pet_recon.io.suv import (
    SuvScale,
    SuvUnavailable,
    body_surface_area_m2,
    ideal_body_weight_kg,
    lean_body_mass_kg,
    suv_scale,
)

Edit = Callable[[int, Dataset], None]

WEIGHT_G = 70_000.0
DOSE_BQ = 368.08e6
F18_HALF_LIFE_S = 6586.2
DRO_FACTOR = WEIGHT_G / (DOSE_BQ * 2.0 ** (-3600.0 / F18_HALF_LIFE_S))  # injection 1 h before


def _dro_ids() -> list[str]:
    table = SHARED_DATA / "suv_dro" / "DRO_list.csv"
    if not table.is_file():
        return []
    with table.open(newline="") as fh:
        return [row["ID"] for row in csv.DictReader(fh)]


def _series(shared_data: Path, tmp_path: Path, edit: Edit) -> tuple[np.ndarray, SeriesMeta]:
    """Read DRO_0_0 slices 3..7 (background 1 SUV and sphere 4 SUV) after ``edit``."""
    folder = tmp_path / "in"
    folder.mkdir()
    sources = sorted((shared_data / "suv_dro" / "DRO_0_0" / "PT").glob("*.dcm"))[3:8]
    for k, source in enumerate(sources):
        ds = pydicom.dcmread(source)
        edit(k, ds)
        ds.save_as(folder / source.name)
    return read_series(folder)


def _suv_max(volume: np.ndarray, scale: SuvScale) -> float:
    return float((volume * np.asarray(scale.factors)[:, None, None]).max())


@pytest.fixture(scope="module")
def dro_default(shared_data: Path) -> tuple[np.ndarray, SeriesMeta]:
    return read_series(shared_data / "suv_dro" / "DRO_0_0")


@pytest.mark.parametrize("dro_id", _dro_ids())
def test_suv_scale_dro_suvmax_is_4(shared_data: Path, dro_id: str) -> None:
    folder = shared_data / "suv_dro" / dro_id
    volume, meta = read_series(folder)
    scale = suv_scale(meta)
    assert scale.suv_type == "bw" and scale.factor is not None
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "mask" / "DRO_mask.nii.gz"))) > 0
    suv = volume * np.asarray(scale.factors, dtype=np.float32)[:, None, None]
    assert abs(float(suv[mask].max()) - 4.00) <= 0.02
    assert abs(float(np.median(suv[mask])) - 1.00) <= 0.02


def test_suv_scale_dro_list_has_11_series(shared_data: Path) -> None:
    assert len(_dro_ids()) == 11


def test_suv_scale_gh610_propcps_unavailable(shared_data: Path) -> None:
    _, meta = read_series(shared_data / "pet_slices" / "GH610.dcm")
    assert meta.patient.weight_kg is None
    with pytest.raises(SuvUnavailable, match=r"GH610\.dcm: units PROPCPS .*cannot be converted"):
        suv_scale(meta, weight_kg=80.0)


def test_suv_scale_gh184_ge_bqml(shared_data: Path) -> None:
    volume, meta = read_series(shared_data / "pet_slices" / "GH184.dcm")
    scale = suv_scale(meta)
    elapsed = (datetime(2014, 10, 23, 11, 0, 36) - datetime(2014, 10, 23, 9, 32)).total_seconds()
    expected = 90_000.0 / (474592928.0 * 2.0 ** (-elapsed / 6588.0))
    assert scale.factor == pytest.approx(expected, rel=1e-9)
    assert 0.5 < _suv_max(volume, scale) < 20.0


def test_suv_scale_decay_none_per_slice_times(shared_data: Path, tmp_path: Path) -> None:
    def no_decay_correction(k: int, ds: Dataset) -> None:
        ds.DecayCorrection = "NONE"
        ds.AcquisitionTime = f"11{5 * k:02d}00"  # one 5-min frame after the other
        ds.ActualFrameDuration = 300_000

    _, meta = _series(shared_data, tmp_path, no_decay_correction)
    scale = suv_scale(meta)
    decay = math.log(2.0) / F18_HALF_LIFE_S
    frame_average = (1.0 - math.exp(-decay * 300.0)) / (decay * 300.0)
    expected = [
        WEIGHT_G / (DOSE_BQ * math.exp(-decay * (3600.0 + 300.0 * k)) * frame_average)
        for k in range(5)
    ]
    assert scale.factors == pytest.approx(expected, rel=1e-9)
    assert scale.factor is None
    assert any("NONE" in note for note in scale.notes)


def test_suv_scale_decay_none_needs_acquisition_times(dro_default: tuple) -> None:
    _, meta = dro_default
    acquisition = replace(
        meta.acquisition,
        decay_correction="NONE",
        acquisition_datetimes=(None,) * 20,
    )
    with pytest.raises(SuvUnavailable, match="acquisition time of every slice"):
        suv_scale(replace(meta, acquisition=acquisition))


def test_suv_scale_injection_before_midnight(shared_data: Path, tmp_path: Path) -> None:
    def midnight(k: int, ds: Dataset) -> None:
        for keyword in ("SeriesDate", "AcquisitionDate", "StudyDate"):
            setattr(ds, keyword, "20250102")
        ds.SeriesTime = ds.AcquisitionTime = "003000"
        item = ds.RadiopharmaceuticalInformationSequence[0]
        del item.RadiopharmaceuticalStartDateTime
        item.RadiopharmaceuticalStartTime = "233000"

    volume, meta = _series(shared_data, tmp_path, midnight)
    assert meta.radiopharmaceutical.start == datetime(2025, 1, 1, 23, 30)
    assert any("midnight" in w for w in meta.warnings)
    scale = suv_scale(meta)
    assert scale.factor == pytest.approx(DRO_FACTOR, rel=1e-9)
    assert _suv_max(volume, scale) == pytest.approx(4.0, abs=1e-3)


def test_suv_scale_series_time_after_acquisition_time(shared_data: Path, tmp_path: Path) -> None:
    def rewritten_series_time(k: int, ds: Dataset) -> None:
        ds.SeriesTime = "130000"
        ds.AcquisitionTime = f"11{k:02d}00" if k else "110000"

    volume, meta = _series(shared_data, tmp_path, rewritten_series_time)
    scale = suv_scale(meta)
    assert scale.factor == pytest.approx(DRO_FACTOR, rel=1e-9)  # earliest acquisition: 11:00
    assert any("earliest acquisition time" in note for note in scale.notes)
    assert _suv_max(volume, scale) == pytest.approx(4.0, abs=1e-3)


def test_suv_scale_ge_private_scan_datetime(shared_data: Path, tmp_path: Path) -> None:
    def ge_private(k: int, ds: Dataset) -> None:
        ds.Manufacturer = "GE MEDICAL SYSTEMS"
        ds.SeriesTime = "130000"
        ds.AcquisitionTime = "113000"
        block = ds.private_block(0x0009, "GEMS_PETD_01", create=True)
        block.add_new(0x0D, "DT", "20250101110000.00")

    volume, meta = _series(shared_data, tmp_path, ge_private)
    assert meta.acquisition.ge_scan_datetime == datetime(2025, 1, 1, 11, 0)
    scale = suv_scale(meta)
    assert scale.factor == pytest.approx(DRO_FACTOR, rel=1e-9)
    assert any("(0009,100D)" in note for note in scale.notes)
    assert _suv_max(volume, scale) == pytest.approx(4.0, abs=1e-3)


def _philips(suv_factor: float | None, activity_factor: float | None, slope: float) -> Edit:
    def edit(k: int, ds: Dataset) -> None:
        ds.Manufacturer = "Philips Medical Systems"
        ds.Units = "CNTS"
        ds.RescaleSlope = slope
        block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
        if suv_factor is not None:
            block.add_new(0x00, "DS", f"{suv_factor:.10g}")
        if activity_factor is not None:
            block.add_new(0x09, "DS", f"{activity_factor:.10g}")

    return edit


def test_suv_scale_philips_suv_scale_factor(shared_data: Path, tmp_path: Path) -> None:
    # The rescaled values are the DRO's Bq/ml; the SUV scale factor gives SUVbw directly.
    volume, meta = _series(shared_data, tmp_path, _philips(DRO_FACTOR, None, 1.0))
    assert meta.acquisition.philips_suv_scale == pytest.approx((DRO_FACTOR,) * 5)
    scale = suv_scale(meta)
    assert scale.factor == pytest.approx(DRO_FACTOR, rel=1e-9)
    assert _suv_max(volume, scale) == pytest.approx(4.0, abs=1e-3)


def test_suv_scale_philips_activity_scale_factor(shared_data: Path, tmp_path: Path) -> None:
    # Slope 2 doubles the rescaled values; the activity concentration scale factor halves them.
    volume, meta = _series(shared_data, tmp_path, _philips(None, 0.5, 2.0))
    scale = suv_scale(meta)
    assert scale.factor == pytest.approx(0.5 * DRO_FACTOR, rel=1e-9)
    assert any("(7053,1009)" in note for note in scale.notes)
    assert _suv_max(volume, scale) == pytest.approx(4.0, abs=1e-3)


def test_suv_scale_philips_weight_override_uses_activity_factor(
    shared_data: Path, tmp_path: Path
) -> None:
    _, meta = _series(shared_data, tmp_path, _philips(123.0, 0.5, 2.0))
    assert suv_scale(meta).factor == pytest.approx(123.0)
    scale = suv_scale(meta, weight_kg=140.0)
    assert scale.factor == pytest.approx(0.5 * 2.0 * DRO_FACTOR, rel=1e-9)


def test_suv_scale_philips_counts_without_factors(shared_data: Path, tmp_path: Path) -> None:
    _, meta = _series(shared_data, tmp_path, _philips(None, None, 2.0))
    with pytest.raises(SuvUnavailable, match=r"CNTS need the Philips SUV scale factor"):
        suv_scale(meta)


def test_suv_scale_ga68_half_life_from_table(shared_data: Path, tmp_path: Path) -> None:
    def gallium(k: int, ds: Dataset) -> None:
        item = ds.RadiopharmaceuticalInformationSequence[0]
        del item.RadionuclideHalfLife
        item.Radiopharmaceutical = "Ga68 DOTATATE"
        item.RadionuclideCodeSequence[0].CodeMeaning = "^68^Gallium"

    _, meta = _series(shared_data, tmp_path, gallium)
    assert meta.radiopharmaceutical.half_life_s is None
    scale = suv_scale(meta)
    assert scale.factor == pytest.approx(WEIGHT_G / (DOSE_BQ * 2.0 ** (-3600.0 / 4057.74)))
    assert any("Ga-68" in note for note in scale.notes)


def test_suv_scale_unknown_radionuclide_without_half_life(dro_default: tuple) -> None:
    _, meta = dro_default
    rp = replace(meta.radiopharmaceutical, half_life_s=None, radionuclide="^90^Yttrium")
    with pytest.raises(SuvUnavailable, match=r"no half-life \(0018,1075\).*Yttrium"):
        suv_scale(replace(meta, radiopharmaceutical=rp))


def test_suv_scale_dose_override(shared_data: Path, tmp_path: Path) -> None:
    volume, meta = _series(shared_data, tmp_path, lambda k, ds: None)
    scale = suv_scale(meta, dose_mbq=2 * 368.08)
    assert scale.factor == pytest.approx(DRO_FACTOR / 2, rel=1e-9)
    assert _suv_max(volume, scale) == pytest.approx(2.0, abs=1e-3)
    assert any("736.16 MBq from the override" in note for note in scale.notes)


def test_suv_scale_weight_override(shared_data: Path, tmp_path: Path) -> None:
    def no_weight(k: int, ds: Dataset) -> None:
        del ds.PatientWeight

    volume, meta = _series(shared_data, tmp_path, no_weight)
    with pytest.raises(SuvUnavailable, match=r"no patient weight \(0010,1030\); pass --weight KG"):
        suv_scale(meta)
    scale = suv_scale(meta, weight_kg=70.0)
    assert _suv_max(volume, scale) == pytest.approx(4.0, abs=1e-3)
    assert suv_scale(meta, weight_kg=140.0).factor == pytest.approx(2 * DRO_FACTOR, rel=1e-9)


def test_suv_scale_overrides_rescale_gml(shared_data: Path) -> None:
    _, meta = read_series(shared_data / "suv_dro" / "DRO_2_0")
    assert suv_scale(meta).factor == 1.0
    assert suv_scale(meta, weight_kg=140.0).factor == pytest.approx(2.0)
    assert suv_scale(meta, dose_mbq=2 * 368.08).factor == pytest.approx(0.5)


def test_suv_scale_missing_dose(dro_default: tuple) -> None:
    _, meta = dro_default
    rp = replace(meta.radiopharmaceutical, total_dose_bq=None)
    with pytest.raises(SuvUnavailable, match=r"no injected dose .*; pass --dose MBQ"):
        suv_scale(replace(meta, radiopharmaceutical=rp))
    assert suv_scale(replace(meta, radiopharmaceutical=rp), dose_mbq=368.08).factor == (
        pytest.approx(DRO_FACTOR, rel=1e-9)
    )


def test_suv_scale_missing_start_time(dro_default: tuple) -> None:
    _, meta = dro_default
    rp = replace(meta.radiopharmaceutical, start=None)
    with pytest.raises(SuvUnavailable, match="no radiopharmaceutical start time"):
        suv_scale(replace(meta, radiopharmaceutical=rp))


def test_suv_scale_admin_needs_no_start_time(dro_default: tuple) -> None:
    _, meta = dro_default
    rp = replace(meta.radiopharmaceutical, start=None, half_life_s=None)
    acquisition = replace(meta.acquisition, decay_correction="ADMIN")
    scale = suv_scale(replace(meta, radiopharmaceutical=rp, acquisition=acquisition))
    assert scale.factor == pytest.approx(WEIGHT_G / DOSE_BQ)


def test_suv_scale_injection_after_scan(dro_default: tuple) -> None:
    _, meta = dro_default
    rp = replace(meta.radiopharmaceutical, start=datetime(2025, 1, 1, 12, 0))
    with pytest.raises(SuvUnavailable, match="start 2025-01-01 12:00:00 is after the series time"):
        suv_scale(replace(meta, radiopharmaceutical=rp))


def test_suv_scale_unsupported_decay_correction(dro_default: tuple) -> None:
    _, meta = dro_default
    acquisition = replace(meta.acquisition, decay_correction=None)
    with pytest.raises(SuvUnavailable, match=r"decay correction \(missing\) \(0054,1102\)"):
        suv_scale(replace(meta, acquisition=acquisition))


def test_suv_scale_not_attenuation_corrected(dro_default: tuple) -> None:
    _, meta = dro_default
    acquisition = replace(meta.acquisition, corrected_image=("DECY", "NORM"))
    with pytest.raises(SuvUnavailable, match="not attenuation corrected"):
        suv_scale(replace(meta, acquisition=acquisition))


@pytest.mark.parametrize(
    ("suv_type", "normaliser_g"),
    [
        ("lbm", 1000.0 * (1.10 * 70.0 - 128.0 * (70.0 / 175.0) ** 2)),
        ("ibw", 1000.0 * (48.0 + 1.06 * 23.0)),
        ("bsa", 1e4 * (70.0 * 175.0 / 3600.0) ** 0.5),
    ],
)
def test_suv_scale_types_from_bqml(dro_default: tuple, suv_type: str, normaliser_g: float) -> None:
    _, meta = dro_default
    male = replace(meta, patient=replace(meta.patient, sex="M"))
    scale = suv_scale(male, suv_type=suv_type)
    assert scale.suv_type == suv_type
    assert scale.factor == pytest.approx(DRO_FACTOR * normaliser_g / WEIGHT_G, rel=1e-9)
    assert scale.unit == ("cm2/ml" if suv_type == "bsa" else "g/ml")


def test_suv_scale_lbm_needs_sex_and_height(dro_default: tuple) -> None:
    _, meta = dro_default
    no_sex = replace(meta, patient=replace(meta.patient, sex=None))
    with pytest.raises(SuvUnavailable, match=r"no patient sex \(0010,0040\) for SUVlbm"):
        suv_scale(no_sex, suv_type="lbm")
    no_height = replace(meta, patient=replace(meta.patient, height_m=None))
    with pytest.raises(SuvUnavailable, match=r"no patient height \(0010,1020\) for SUVbsa"):
        suv_scale(no_height, suv_type="bsa")


def test_suv_scale_unknown_type(dro_default: tuple) -> None:
    _, meta = dro_default
    with pytest.raises(PetReconError, match="unknown SUV type 'sul'"):
        suv_scale(meta, suv_type="sul")


def test_suv_scale_stored_lbm_to_lbm_is_identity(shared_data: Path) -> None:
    _, meta = read_series(shared_data / "suv_dro" / "DRO_2_1")
    assert suv_scale(meta, suv_type="lbm").factor == 1.0


def test_body_size_formulas() -> None:
    assert lean_body_mass_kg(70.0, 1.75, "M") == pytest.approx(56.52)
    assert lean_body_mass_kg(70.0, 1.75, "F") == pytest.approx(1.07 * 70 - 148 * 0.16)
    assert ideal_body_weight_kg(1.75, "O") == pytest.approx(69.405)
    assert body_surface_area_m2(70.0, 1.75) == pytest.approx(1.8447, abs=1e-4)


def test_suv_scale_factor_property() -> None:
    assert SuvScale("bw", (2.0, 2.0 * (1 + 1e-8))).factor == 2.0
    assert SuvScale("bw", (2.0, 2.1)).factor is None


def test_suv_scale_decay_none_without_frame_duration(dro_default: tuple) -> None:
    _, meta = dro_default
    acquisition = replace(meta.acquisition, decay_correction="NONE", frame_duration_s=(None,) * 20)
    scale = suv_scale(replace(meta, acquisition=acquisition))
    assert scale.factor == pytest.approx(DRO_FACTOR, rel=1e-9)  # decayed to 11:00, no average
    assert any("not averaged" in note for note in scale.notes)
