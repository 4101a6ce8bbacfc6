"""`petrecon inspect-meta`: what the model will be told about each PET series."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pet_recon.errors import PetReconError
from pet_recon.io.series import find_series, read_series
from pet_recon.io.suv import SuvUnavailable, suv_scale
from pet_recon.meta.prompt import build_record, render_prompt, uptake_warning


def inspect_meta(
    in_path: Path,
    *,
    drf: float | None = None,
    series_uid: str | None = None,
    weight_kg: float | None = None,
    dose_mbq: float | None = None,
) -> list[dict[str, object]]:
    """Describe every PET series under ``in_path`` (or the one with ``series_uid``).

    Parameters
    ----------
    in_path : Path
        Folder (searched recursively) or zip file.
    drf : float, optional
        Dose reduction factor to state in the prompt instead of the estimate.
    series_uid : str, optional
        Only this series.
    weight_kg, dose_mbq : float, optional
        Overrides for SUV.

    Returns
    -------
    list of dict
        One JSON-ready object per series with ``series_instance_uid``, ``n_slices``,
        ``matrix`` ([rows, columns]), ``pixel_spacing_mm`` ([row, column]),
        ``slice_spacing_mm``, ``units``, ``suv_type``, ``suv_factor`` (multiply rescaled
        stored values by it to get SUV; a list when it differs per slice; null when SUV is
        not available), ``suv_max``, ``suv_notes`` (the SUV rules applied), ``prompt``,
        ``meta`` and ``warnings``.
    """
    uids = [s.series_instance_uid for s in find_series(in_path) if s.modality == "PT"]
    if series_uid is not None:
        if series_uid not in uids:
            raise PetReconError(f"{in_path}: no PET series with SeriesInstanceUID {series_uid}")
        uids = [series_uid]
    if not uids:
        # read_series names the modalities that were found instead.
        read_series(in_path)
    reports = []
    for uid in uids:
        volume, meta = read_series(in_path, series_uid=uid, also_read=uids)
        warnings = list(meta.warnings)
        suv_type: str | None = None
        suv_factor: float | list[float] | None = None
        suv_max: float | None = None
        suv_notes: list[str] = []
        try:
            scale = suv_scale(meta, weight_kg=weight_kg, dose_mbq=dose_mbq)
            suv_type = scale.suv_type
            suv_factor = scale.factor if scale.factor is not None else list(scale.factors)
            factors = np.asarray(scale.factors, dtype=np.float64)[:, None, None]
            suv_max = float((volume * factors).max())
            suv_notes = list(scale.notes)
        except SuvUnavailable as exc:
            warnings.append(f"SUV not available: {exc}")
        record = build_record(meta, drf=drf)
        if (problem := uptake_warning(meta)) is not None:
            warnings.append(problem)
        geo = meta.geometry
        reports.append({
            "series_instance_uid": uid,
            "series_description": meta.source.series_description,
            "n_slices": geo.shape[0],
            "matrix": [geo.shape[1], geo.shape[2]],
            "pixel_spacing_mm": [geo.spacing[1], geo.spacing[0]],
            "slice_spacing_mm": geo.spacing[2],
            "units": meta.units,
            "suv_type": suv_type,
            "suv_factor": suv_factor,
            "suv_max": suv_max,
            "suv_notes": suv_notes,
            "prompt": render_prompt(record),
            "meta": record.to_dict(),
            "warnings": warnings,
        })
    return reports


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value[:4]) + (" ..." if len(value) > 4 else "")
    return str(value)


def format_table(reports: list[dict[str, object]]) -> str:
    """Readable text: a two-column table per series, then its prompt and warnings."""
    blocks = []
    for report in reports:
        rows = [(key, report[key]) for key in (
            "series_instance_uid", "series_description", "n_slices", "matrix",
            "pixel_spacing_mm", "slice_spacing_mm", "units", "suv_type", "suv_factor",
            "suv_max")]
        rows += list(report["meta"].items())  # type: ignore[union-attr]
        width = max(len(k) for k, _ in rows)
        lines = [f"{k.ljust(width)}  {_fmt(v)}" for k, v in rows]
        lines.append("")
        lines.append(f"prompt: {report['prompt']}")
        lines += [f"warning: {w}" for w in report["warnings"]]  # type: ignore[union-attr]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
