"""Meta-information record and prompt."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest

from pet_recon.io.metadata import (
    AcquisitionInfo,
    PatientInfo,
    Radiopharmaceutical,
    SeriesMeta,
    SourceReference,
    VolumeGeometry,
)
from pet_recon.meta.prompt import (
    build_record,
    estimate_dose_fraction,
    render_prompt,
    uptake_warning,
)


def _meta(**patient: object) -> SeriesMeta:
    scan = datetime(2025, 1, 1, 11, 0, 0)
    return SeriesMeta(
        geometry=VolumeGeometry((2, 4, 4), (0.0, 0.0, 0.0), (4.0, 4.0, 3.0),
                                (1, 0, 0, 0, 1, 0, 0, 0, 1)),
        modality="PT",
        units="BQML",
        patient=PatientInfo(**{"weight_kg": 70.0, "height_m": 1.75, "sex": "F",
                               "age_years": 45.0, **patient}),
        radiopharmaceutical=Radiopharmaceutical(
            name="FDG", radionuclide="^18^Fluorine", half_life_s=6586.2,
            total_dose_bq=259e6, start=datetime(2025, 1, 1, 10, 0, 0)),
        acquisition=AcquisitionInfo(
            manufacturer="GE MEDICAL SYSTEMS", model="Discovery ST", units="BQML",
            decay_correction="START", series_datetime=scan,
            acquisition_datetimes=(scan, scan), frame_duration_s=(180.0, 180.0),
            reconstruction_method="OSEM 3i21s", slice_thickness_mm=3.27),
        source=SourceReference("1.2", "1.2.3", "1.2.4", "1.2.840.10008.5.1.4.1.1.128",
                               ("1.2.3.1", "1.2.3.2")),
    )


def test_render_prompt_contains_clinical_fields() -> None:
    prompt = render_prompt(build_record(_meta(), drf=20))
    assert "PET FDG" in prompt
    assert "Injected 259.0 MBq" in prompt
    assert "1/20 of full dose (given)" in prompt
    assert "weight 70.0 kg" in prompt and "height 175 cm" in prompt
    assert "Uptake 60 min" in prompt and "frame 180 s" in prompt
    assert "Discovery ST" in prompt and "pixel 4.00 mm" in prompt


def test_render_prompt_is_deterministic() -> None:
    assert render_prompt(build_record(_meta())) == render_prompt(build_record(_meta()))


def test_build_record_estimates_dose_from_activity_per_kg() -> None:
    record = build_record(_meta())
    assert record.dose_source == "estimated"
    assert record.dose_fraction == pytest.approx(259.0 / (3.7 * 70.0))


def test_render_prompt_reports_unknowns() -> None:
    record = build_record(_meta(weight_kg=None, height_m=None, sex=None, age_years=None))
    prompt = render_prompt(record)
    assert "weight unknown" in prompt and "dose level unknown" in prompt


def test_build_record_caps_age_at_90() -> None:
    assert build_record(_meta(age_years=93.0)).age == "90+"
    assert build_record(_meta(age_years=45.9)).age == "45"


def test_estimate_dose_fraction_unknown_tracer_is_none() -> None:
    assert estimate_dose_fraction("Choline", 300.0, 70.0) is None
    assert estimate_dose_fraction("Florbetapir", 185.0, None) == pytest.approx(0.5)


def test_build_record_ignores_implausible_uptake() -> None:
    meta = _meta()
    late = dataclasses.replace(meta.radiopharmaceutical, start=datetime(2024, 1, 1, 10, 0))
    meta.radiopharmaceutical = late
    assert "more than ten half-lives" in (uptake_warning(meta) or "")
    assert build_record(meta).uptake_time_min is None
    meta.radiopharmaceutical = dataclasses.replace(late, start=datetime(2025, 1, 1, 12, 0))
    assert "after the scan start" in (uptake_warning(meta) or "")
    assert uptake_warning(_meta()) is None
