"""Standardized uptake value (SUV) scale factors of a PET series.

:func:`suv_scale` returns per-slice factors that turn the reader's rescaled values (the
volume of :func:`pet_recon.io.series.read_series`) into SUV:
``suv[k] = volume[k] * scale.factors[k]``.

The rules follow the QIBA/UW "Vendor-neutral pseudo-code for SUV calculation" (Kinahan et
al., QIBA FDG-PET/CT profile), DICOM PS3.3 C.8.9.1 (PET Series and PET Image modules) and
the IBSI-SUV manual with its digital reference objects (github.com/oncoray/suv_computation).
They are listed with their references in ``docs/dicom.md`` ("SUV rules"). In short:

- BQML: ``SUV = value * normaliser / decayed dose``; normaliser body weight in g (bw), lean
  body mass in g (lbm), ideal body weight in g (ibw) or body surface area in cm^2 (bsa).
  The dose is decayed according to Decay Correction (0054,1102): START to the scan start
  time, ADMIN not at all, NONE per slice to the slice's acquisition, averaged over its frame.
- CNTS (Philips): SUV scale factor (7053,1000) gives SUVbw; else the activity concentration
  scale factor (7053,1009) gives Bq/ml and the BQML rule applies.
- GML and CM2ML: values are already SUV of the type in SUV Type (0054,1006) (GML without
  it: bw; CM2ML: bsa) and are converted to the requested type.
- Anything else (PROPCPS, CPS, ...) raises :class:`SuvUnavailable`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import NoReturn

from pet_recon.errors import PetReconError
from pet_recon.io.metadata import PatientInfo, SeriesMeta

SUV_TYPES = ("bw", "lbm", "ibw", "bsa")
"""Body weight, lean body mass (James, LBMJAMES128), ideal body weight, body surface area."""

HALF_LIFE_S: dict[str, float] = {
    "F-18": 6586.2,
    "C-11": 1223.4,
    "O-15": 122.24,
    "N-13": 597.9,
    "Ga-68": 4057.74,
    "Cu-64": 45721.1,
    "Zr-89": 282240.0,
    "Rb-82": 76.38,
}
"""Half-lives in s (NNDC NuDat / DDEP), used when the header has no Radionuclide Half Life."""

_ELEMENTS = {
    "fluorine": "F",
    "carbon": "C",
    "oxygen": "O",
    "nitrogen": "N",
    "gallium": "Ga",
    "copper": "Cu",
    "zirconium": "Zr",
    "rubidium": "Rb",
}
_HEADER_SUV_TYPES = {"BW": "bw", "LBMJAMES128": "lbm", "IBW": "ibw", "BSA": "bsa"}


class SuvUnavailable(PetReconError):
    """SUV cannot be computed for this series; the message says what is missing."""


@dataclass(frozen=True)
class SuvScale:
    """Per-slice factors from rescaled stored values to SUV.

    Attributes
    ----------
    suv_type : str
        One of :data:`SUV_TYPES`.
    factors : tuple of float
        One factor per slice, in the reader's slice order; ``SUV = value * factor``.
    notes : tuple of str
        The rules applied, in order, for the run report.
    """

    suv_type: str
    factors: tuple[float, ...]
    notes: tuple[str, ...] = ()

    @property
    def factor(self) -> float | None:
        """The common factor when all slices agree to 1e-6 (relative), else None."""
        first = self.factors[0]
        if all(math.isclose(f, first, rel_tol=1e-6) for f in self.factors):
            return first
        return None

    @property
    def unit(self) -> str:
        """Unit of the SUV: ``"g/ml"``, or ``"cm2/ml"`` for bsa."""
        return "cm2/ml" if self.suv_type == "bsa" else "g/ml"


def suv_scale(
    meta: SeriesMeta,
    weight_kg: float | None = None,
    dose_mbq: float | None = None,
    suv_type: str | None = None,
) -> SuvScale:
    """SUV scale factors of a PET series.

    Parameters
    ----------
    meta : SeriesMeta
        Metadata from :func:`pet_recon.io.series.read_series`.
    weight_kg : float, optional
        Patient weight in kg, replacing Patient's Weight (0010,1030).
    dose_mbq : float, optional
        Injected activity in MBq, replacing Radionuclide Total Dose (0018,1074).
    suv_type : str, optional
        ``"bw"`` (default), ``"lbm"``, ``"ibw"`` or ``"bsa"``.

    Returns
    -------
    SuvScale

    Raises
    ------
    SuvUnavailable
        The units cannot be converted, or an input (weight, dose, times, half-life,
        height, sex) is missing; the message names it and the override to pass.
    PetReconError
        Unknown ``suv_type``.
    """
    target = (suv_type or "bw").lower()
    if target not in SUV_TYPES:
        raise PetReconError(f"unknown SUV type {suv_type!r}; choose one of {', '.join(SUV_TYPES)}")
    return _Calculation(meta, weight_kg, dose_mbq).scale(target)


def lean_body_mass_kg(weight_kg: float, height_m: float, sex: str) -> float:
    """Lean body mass by James (1976), DICOM SUV Type LBMJAMES128.

    Men ``1.10 W - 128 (W/H)^2``, women ``1.07 W - 148 (W/H)^2``, W in kg, H in cm; sex
    ``"O"``: the mean of both (IBSI-SUV convention).
    """
    ratio = weight_kg / (height_m * 100.0)
    return _by_sex(sex, 1.10 * weight_kg - 128.0 * ratio**2, 1.07 * weight_kg - 148.0 * ratio**2)


def ideal_body_weight_kg(height_m: float, sex: str) -> float:
    """Ideal body weight in kg, as in the IBSI-SUV manual and its reference software (MIRP).

    Men ``48.0 + 1.06 (H - 152)``, women ``45.5 + 0.91 (H - 152)``, H in cm (the metric
    forms of Hamwi 1964 for men and Devine 1974 for women); sex ``"O"``: the mean of both.
    """
    above = height_m * 100.0 - 152.0
    return _by_sex(sex, 48.0 + 1.06 * above, 45.5 + 0.91 * above)


def body_surface_area_m2(weight_kg: float, height_m: float) -> float:
    """Body surface area by Mosteller (1987): ``sqrt(W H / 3600)`` m^2, W in kg, H in cm.

    DICOM does not name a formula for SUV Type BSA. Mosteller is chosen because the IBSI-SUV
    reference object DRO_2_3 is consistent with it: its stored SUVbsa values 0.05/0.26/1.05
    (slope 0.01) are SUVbw 0.2/1/4 converted with Mosteller's 1.8447 m^2 and rounded to the
    nearest step, which Du Bois' 1.8482 m^2 does not reproduce (4 x 1.8482 / 7 = 1.056
    rounds to 1.06).
    """
    return math.sqrt(weight_kg * height_m * 100.0 / 3600.0)


def _by_sex(sex: str, male: float, female: float) -> float:
    if sex == "M":
        return male
    if sex == "F":
        return female
    return (male + female) / 2.0


def _nuclide(text: str | None) -> str | None:
    """``"F-18"`` from ``"^18^Fluorine"``, ``"18F"``, ``"Ga68 DOTATATE"``...; else None."""
    mass = re.search(r"\d+", text or "")
    if mass is None:
        return None
    for word in re.findall(r"[A-Za-z]+", text or ""):
        symbol = _ELEMENTS.get(word.lower()) or next(
            (s for s in _ELEMENTS.values() if s.lower() == word.lower()), None
        )
        if symbol is not None:
            return f"{symbol}-{int(mass.group())}"
    return None


class _Calculation:
    """One SUV computation: the series, the overrides and the notes collected on the way."""

    def __init__(self, meta: SeriesMeta, weight_kg: float | None, dose_mbq: float | None) -> None:
        self.meta = meta
        self.n_slices = meta.geometry.shape[0]
        self.notes: list[str] = []
        self.header_patient = meta.patient
        self.patient = meta.patient
        self.weight_override = weight_kg is not None
        if weight_kg is not None:
            self.patient = replace(meta.patient, weight_kg=float(weight_kg))
            self.notes.append(
                f"patient weight {weight_kg:g} kg from the override "
                f"(header: {_show(meta.patient.weight_kg, 'kg')})"
            )
        self.header_dose = meta.radiopharmaceutical.total_dose_bq
        self.dose = self.header_dose
        self.dose_override = dose_mbq is not None
        if dose_mbq is not None:
            self.dose = float(dose_mbq) * 1e6
            self.notes.append(
                f"injected dose {dose_mbq:g} MBq from the override "
                f"(header: {_show(_scaled(self.header_dose, 1e-6), 'MBq')})"
            )

    def scale(self, target: str) -> SuvScale:
        units = (self.meta.acquisition.units or "").upper()
        ones = (1.0,) * self.n_slices
        if units == "BQML":
            factors = self._from_activity(target, ones)
        elif units == "CNTS":
            factors = self._from_philips_counts(target)
        elif units in ("GML", "CM2ML"):
            factors = self._renormalised(self._stored_type(units), target, ones)
        else:
            self._fail(f"units {units or '(missing)'} (0054,1001) cannot be converted to SUV")
        return SuvScale(target, tuple(factors), tuple(dict.fromkeys(self.notes)))

    def _fail(self, problem: str) -> NoReturn:
        files = self.meta.files
        if len(files) == 1:
            where = files[0]
        elif files:
            where = str(Path(files[0]).parent)
        else:
            where = f"series {self.meta.source.series_instance_uid}"
        raise SuvUnavailable(f"{where}: {problem}")

    def _stored_type(self, units: str) -> str:
        """SUV type of GML / CM2ML values, from SUV Type (0054,1006)."""
        header = (self.meta.acquisition.suv_type or "").upper()
        if units == "CM2ML":
            if header not in ("", "BSA"):
                self._fail(f"Units CM2ML with SUV Type {header} (0054,1006) is inconsistent")
            self.notes.append("stored values are SUVbsa (Units CM2ML)")
            return "bsa"
        kind = _HEADER_SUV_TYPES.get(header or "BW")
        if kind is None or kind == "bsa":
            self._fail(f"Units GML with SUV Type {header} (0054,1006) is not supported")
        self.notes.append(f"stored values are SUV{kind} (Units GML, SUV Type {header or 'absent'})")
        return kind

    def _from_philips_counts(self, target: str) -> tuple[float, ...]:
        acq = self.meta.acquisition
        suv = acq.philips_suv_scale
        activity = acq.philips_activity_scale
        have_suv = len(suv) == self.n_slices and all(v and v > 0 for v in suv)
        have_activity = len(activity) == self.n_slices and all(v and v > 0 for v in activity)
        overridden = self.weight_override or self.dose_override
        if have_suv and not (overridden and have_activity):
            self.notes.append("Philips SUV scale factor (7053,1000) converts counts to SUVbw")
            return self._renormalised("bw", target, tuple(float(v) for v in suv))
        if have_activity:
            self.notes.append(
                "Philips activity concentration scale factor (7053,1009) converts counts to Bq/ml"
            )
            return self._from_activity(target, tuple(float(v) for v in activity))
        return self._fail(
            "units CNTS need the Philips SUV scale factor (7053,1000) or activity "
            "concentration scale factor (7053,1009) on every slice"
        )

    def _renormalised(
        self, source: str, target: str, stored: tuple[float, ...]
    ) -> tuple[float, ...]:
        """Factors for values that are already SUV of type ``source`` (times ``stored``).

        The scanner normalised with the header's patient data; when the header has no
        weight the scanner's weight is unknown and the override's is assumed.
        """
        ratio = 1.0
        if source != target or self.weight_override:
            scanner_patient = self.header_patient
            if scanner_patient.weight_kg is None:
                scanner_patient = self.patient
            ratio = self._normaliser(target, self.patient) / self._normaliser(
                source, scanner_patient
            )
            if source != target:
                self.notes.append(f"converted from SUV{source} to SUV{target}")
        if self.dose_override:
            if self.header_dose is None or self.dose is None:
                self._fail(
                    "a dose override cannot be applied to SUV-normalised values without the "
                    "header's Radionuclide Total Dose (0018,1074)"
                )
            ratio *= self.header_dose / self.dose
        return tuple(v * ratio for v in stored)

    def _from_activity(self, target: str, to_bqml: tuple[float, ...]) -> tuple[float, ...]:
        """Factors for values that are ``to_bqml`` times an activity concentration in Bq/ml."""
        corrected = self.meta.acquisition.corrected_image
        if corrected and "ATTN" not in corrected:
            self._fail(
                "image is not attenuation corrected (Corrected Image (0028,0051) lacks ATTN); "
                "its values are not activity concentrations"
            )
        normaliser = self._normaliser(target, self.patient)
        doses = self._decayed_doses()
        return tuple(c * normaliser / d for c, d in zip(to_bqml, doses, strict=True))

    def _normaliser(self, kind: str, patient: PatientInfo) -> float:
        """Body weight (g), lean or ideal body weight (g) or body surface area (cm^2)."""
        weight, height, sex = patient.weight_kg, patient.height_m, patient.sex
        if kind in ("bw", "lbm", "bsa") and not weight:
            self._fail("no patient weight (0010,1030); pass --weight KG")
        if kind == "bw":
            return weight * 1000.0
        if not height:
            self._fail(f"no patient height (0010,1020) for SUV{kind}")
        if kind == "bsa":
            return body_surface_area_m2(weight, height) * 1e4
        if sex is None:
            self._fail(f"no patient sex (0010,0040) for SUV{kind}")
        if sex == "O":
            self.notes.append(
                f"patient sex O: SUV{kind} uses the mean of the male and female formulas"
            )
        if kind == "lbm":
            mass = lean_body_mass_kg(weight, height, sex)
        else:
            mass = ideal_body_weight_kg(height, sex)
        if mass <= 0:
            self._fail(f"the SUV{kind} formula gives {mass:.1f} kg for this patient")
        return mass * 1000.0

    def _decayed_doses(self) -> tuple[float, ...]:
        """Injected dose (Bq) decayed to the time the image values refer to, per slice."""
        if self.dose is None:
            self._fail("no injected dose (0018,1074); pass --dose MBQ")
        acq = self.meta.acquisition
        correction = (acq.decay_correction or "").upper()
        if correction == "ADMIN":
            self.notes.append("Decay Correction ADMIN: values refer to injection, dose not decayed")
            return (self.dose,) * self.n_slices
        if correction not in ("START", "NONE"):
            self._fail(f"decay correction {correction or '(missing)'} (0054,1102) is not supported")
        start = self.meta.radiopharmaceutical.start
        if start is None:
            self._fail("no radiopharmaceutical start time (0018,1078)/(0018,1072)")
        decay = math.log(2.0) / self._half_life()
        if correction == "START":
            reference, what = self._start_reference()
            elapsed = self._elapsed(start, reference, what)
            self.notes.append(
                f"Decay Correction START: dose decayed from injection to {what} "
                f"({elapsed / 60.0:.1f} min)"
            )
            return (self.dose * math.exp(-decay * elapsed),) * self.n_slices
        doses = []
        for moment, duration in zip(acq.acquisition_datetimes, acq.frame_duration_s, strict=True):
            if moment is None:
                self._fail("Decay Correction NONE needs the acquisition time of every slice")
            elapsed = self._elapsed(start, moment, "the slice acquisition time")
            average = 1.0
            if duration:
                average = -math.expm1(-decay * duration) / (decay * duration)
            doses.append(self.dose * math.exp(-decay * elapsed) * average)
        averaged = "averaged over its frame duration"
        if not all(acq.frame_duration_s):
            averaged += " (slices without a frame duration: not averaged)"
        self.notes.append(
            f"Decay Correction NONE: dose decayed from injection to each slice's acquisition "
            f"start and {averaged}"
        )
        return tuple(doses)

    def _start_reference(self) -> tuple[datetime, str]:
        """The time START-corrected values refer to (QIBA pseudo-code).

        The series time, unless it is after the earliest acquisition time (a series
        re-created after the scan): then GE's private scan datetime (0009,100D) when
        present, else the earliest acquisition time.
        """
        acq = self.meta.acquisition
        earliest = min((t for t in acq.acquisition_datetimes if t is not None), default=None)
        series = acq.series_datetime
        if series is not None and (earliest is None or series <= earliest):
            return series, "the series time"
        why = " (series time is after the acquisition time)" if series is not None else ""
        if acq.ge_scan_datetime is not None:
            return acq.ge_scan_datetime, f"the GE private scan datetime (0009,100D){why}"
        if earliest is not None:
            return earliest, f"the earliest acquisition time{why}"
        return self._fail("no series or acquisition time to decay-correct the dose to")

    def _elapsed(self, start: datetime, moment: datetime, what: str) -> float:
        seconds = (moment - start).total_seconds()
        if seconds < 0:
            self._fail(
                f"radiopharmaceutical start {start:%Y-%m-%d %H:%M:%S} is after {what} "
                f"{moment:%Y-%m-%d %H:%M:%S}"
            )
        return seconds

    def _half_life(self) -> float:
        rp = self.meta.radiopharmaceutical
        if rp.half_life_s:
            return rp.half_life_s
        for text in (rp.radionuclide, rp.name):
            nuclide = _nuclide(text)
            if nuclide in HALF_LIFE_S:
                self.notes.append(
                    f"no half-life in the header: {nuclide} {HALF_LIFE_S[nuclide]:g} s "
                    "from the built-in table"
                )
                return HALF_LIFE_S[nuclide]
        return self._fail(
            f"no half-life (0018,1075), and radionuclide {rp.radionuclide or rp.name or '(none)'!r}"
            " is not in the built-in table"
        )


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _show(value: float | None, unit: str) -> str:
    return "none" if value is None else f"{value:g} {unit}"
