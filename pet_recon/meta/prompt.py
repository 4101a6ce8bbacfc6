"""Clinical meta-information record and its text prompt.

MiG-DM (Geng et al., arXiv:2512.22237, Sec. III.B) turns the clinical parameters of a
scan (tracer, dose, weight, uptake time, scanner, ...) into a text prompt that a CLIP-style
meta-information encoder reads. This module builds the structured record from a series'
metadata and renders it as a deterministic prompt.

Privacy: the record holds no names, IDs, dates or times of day. Age is given in whole years
and ages of 90 or more are reported as "90+" (HIPAA Safe Harbor, 45 CFR 164.514(b)(2)).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime

from pet_recon.io.metadata import SeriesMeta

#: Reference full-dose injected activity per kilogram (MBq/kg) used to estimate the dose
#: level when ``--drf`` is not given. FDG: EANM procedure guideline v2.0 (Boellaard et al.,
#: EJNMMI 2015) recommends about 3.5-7 MBq/kg depending on time per bed; 3.7 MBq/kg
#: (0.1 mCi/kg, SNMMI) is the common North-American value used here.
REFERENCE_MBQ_PER_KG: dict[str, float] = {"FDG": 3.7}
#: Reference full-dose activity (MBq) for tracers dosed per patient rather than per kg:
#: amyloid tracers (florbetapir 370 MBq, florbetaben 300 MBq, flutemetamol 185 MBq; their
#: prescribing information).
REFERENCE_MBQ: dict[str, float] = {"FLORBETAPIR": 370.0, "FLORBETABEN": 300.0,
                                   "FLUTEMETAMOL": 185.0, "AMYLOID": 370.0}


@dataclass(frozen=True)
class MetaRecord:
    """Structured meta-information of one PET series (no identifiers).

    Attributes use SI-like clinical units: activity in MBq, time in minutes or seconds,
    lengths in mm/cm, weight in kg. ``None`` means the header did not say.
    """

    radiopharmaceutical: str | None
    radionuclide: str | None
    half_life_min: float | None
    injected_activity_mbq: float | None
    weight_kg: float | None
    height_cm: float | None
    sex: str | None
    age: str | None
    uptake_time_min: float | None
    frame_duration_s: float | None
    decay_correction: str | None
    units: str | None
    manufacturer: str | None
    model: str | None
    reconstruction_method: str | None
    pixel_size_mm: float | None
    slice_thickness_mm: float | None
    dose_fraction: float | None
    dose_source: str

    def to_dict(self) -> dict[str, object]:
        """The record as a JSON-ready dictionary."""
        return asdict(self)


def _tracer_key(name: str | None) -> str | None:
    if not name:
        return None
    upper = name.upper()
    for key in (*REFERENCE_MBQ_PER_KG, *REFERENCE_MBQ):
        if key in upper:
            return key
    return None


def estimate_dose_fraction(
    radiopharmaceutical: str | None, injected_mbq: float | None, weight_kg: float | None
) -> float | None:
    """Dose level relative to a reference full dose for the tracer.

    Parameters
    ----------
    radiopharmaceutical : str or None
        Tracer name as in the header.
    injected_mbq : float or None
        Injected activity in MBq.
    weight_kg : float or None
        Patient weight in kg (needed for per-kg tracers such as FDG).

    Returns
    -------
    float or None
        Injected / reference activity (1.0 = full dose, 0.05 = DRF 20), or None when the
        tracer has no reference or an input is missing.
    """
    key = _tracer_key(radiopharmaceutical)
    if key is None or injected_mbq is None or injected_mbq <= 0:
        return None
    if key in REFERENCE_MBQ_PER_KG:
        if weight_kg is None or weight_kg <= 0:
            return None
        return injected_mbq / (REFERENCE_MBQ_PER_KG[key] * weight_kg)
    return injected_mbq / REFERENCE_MBQ[key]


def _age_text(age_years: float | None) -> str | None:
    if age_years is None or not math.isfinite(age_years) or age_years < 0:
        return None
    return "90+" if age_years >= 90 else str(int(age_years))


def _uptake_minutes(meta: SeriesMeta) -> float | None:
    start = meta.radiopharmaceutical.start
    if start is None:
        return None
    times: list[datetime] = [t for t in meta.acquisition.acquisition_datetimes if t is not None]
    scan = min(times) if times else meta.acquisition.series_datetime
    if scan is None:
        return None
    return (scan - start).total_seconds() / 60.0


def uptake_warning(meta: SeriesMeta) -> str | None:
    """Why the uptake time of ``meta`` is implausible, or None.

    An injection after the scan, or more than ten half-lives before it (activity decayed
    more than 1000x; F-18: 18 h, Zr-89: 33 days), points to inconsistent dates such as an
    anonymisation that shifted the study date but not the injection; the prompt then says
    the uptake time is unknown.
    """
    minutes = _uptake_minutes(meta)
    half_life = meta.radiopharmaceutical.half_life_s
    if minutes is None:
        return None
    if minutes < 0:
        return f"injection {-minutes:.0f} min after the scan start: uptake time ignored"
    if half_life and minutes * 60.0 > 10 * half_life:
        return (f"uptake time {minutes:.0f} min is more than ten half-lives: dates look "
                "inconsistent (anonymised?); uptake time ignored")
    return None


def _median(values: tuple[float | None, ...]) -> float | None:
    known = sorted(v for v in values if v is not None)
    return known[len(known) // 2] if known else None


def build_record(meta: SeriesMeta, drf: float | None = None) -> MetaRecord:
    """Meta-information record of a series.

    Parameters
    ----------
    meta : SeriesMeta
        Metadata returned by the series reader.
    drf : float, optional
        Dose reduction factor given by the user (20 means 1/20 of the full dose). Without
        it the dose level is estimated from the injected activity (see
        :func:`estimate_dose_fraction`).
    """
    rp, pt, acq = meta.radiopharmaceutical, meta.patient, meta.acquisition
    injected = rp.total_dose_bq / 1e6 if rp.total_dose_bq is not None else None
    if drf is not None:
        fraction, source = 1.0 / drf, "given"
    else:
        fraction = estimate_dose_fraction(rp.name, injected, pt.weight_kg)
        source = "estimated" if fraction is not None else "unknown"
    return MetaRecord(
        radiopharmaceutical=rp.name,
        radionuclide=rp.radionuclide,
        half_life_min=rp.half_life_s / 60.0 if rp.half_life_s else None,
        injected_activity_mbq=injected,
        weight_kg=pt.weight_kg,
        height_cm=pt.height_m * 100.0 if pt.height_m else None,
        sex=pt.sex,
        age=_age_text(pt.age_years),
        uptake_time_min=None if uptake_warning(meta) else _uptake_minutes(meta),
        frame_duration_s=_median(acq.frame_duration_s),
        decay_correction=acq.decay_correction,
        units=meta.units,
        manufacturer=acq.manufacturer,
        model=acq.model,
        reconstruction_method=acq.reconstruction_method,
        pixel_size_mm=meta.geometry.spacing[0],
        slice_thickness_mm=acq.slice_thickness_mm,
        dose_fraction=fraction,
        dose_source=source,
    )


def _num(value: float | None, fmt: str, unit: str = "") -> str:
    return "unknown" if value is None else f"{value:{fmt}}{unit}"


def _txt(value: str | None) -> str:
    return value.strip() if value and value.strip() else "unknown"


def _dose_text(record: MetaRecord) -> str:
    if record.dose_fraction is None:
        return "dose level unknown"
    drf = 1.0 / record.dose_fraction if record.dose_fraction > 0 else math.inf
    if drf <= 1.05:
        level = "full dose"
    else:
        level = f"1/{drf:.0f} of full dose"
    return f"dose level {level} ({record.dose_source})"


def render_prompt(record: MetaRecord) -> str:
    """Deterministic text prompt of a record (what the meta-information encoder reads).

    The same record always gives the same string; numbers use fixed precision and
    missing values read "unknown". Example::

        PET FDG, radionuclide ^18^Fluorine, half-life 109.8 min. Injected 370.0 MBq,
        dose level full dose (estimated). Patient weight 70.0 kg, height 175 cm, sex O,
        age unknown. Uptake 60 min, frame 300 s, decay correction START, units BQML.
        Scanner Synthetic unknown, reconstruction PSF+TOF 4i5s, pixel 4.00 mm, slice 4.00 mm.
    """
    r = record
    return (
        f"PET {_txt(r.radiopharmaceutical)}, radionuclide {_txt(r.radionuclide)}, "
        f"half-life {_num(r.half_life_min, '.1f', ' min')}. "
        f"Injected {_num(r.injected_activity_mbq, '.1f', ' MBq')}, {_dose_text(r)}. "
        f"Patient weight {_num(r.weight_kg, '.1f', ' kg')}, "
        f"height {_num(r.height_cm, '.0f', ' cm')}, sex {_txt(r.sex)}, age {_txt(r.age)}. "
        f"Uptake {_num(r.uptake_time_min, '.0f', ' min')}, "
        f"frame {_num(r.frame_duration_s, '.0f', ' s')}, "
        f"decay correction {_txt(r.decay_correction)}, units {_txt(r.units)}. "
        f"Scanner {_txt(r.manufacturer)} {_txt(r.model)}, "
        f"reconstruction {_txt(r.reconstruction_method)}, "
        f"pixel {_num(r.pixel_size_mm, '.2f', ' mm')}, "
        f"slice {_num(r.slice_thickness_mm, '.2f', ' mm')}."
    )
