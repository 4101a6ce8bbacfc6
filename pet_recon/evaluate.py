"""`petrecon evaluate`: image quality and quantitation of a prediction against a reference.

The prediction (a restored or low-dose image) and the reference (the full-dose image) are
each a DICOM PET series (folder, zip or file; converted to SUVbw with the per-slice factors
of :func:`pet_recon.io.suv.suv_scale`, as ``inspect-meta`` and ``reconstruct`` do) or a
volume file SimpleITK reads (``.mha``, ``.mhd``, ``.nii``, ``.nii.gz``, ``.nrrd``), taken to
be in SUV already. Both must lie on one grid. Optional inputs are the simulator's
``truth.mha`` (Bq/ml at full dose, converted to SUV with ``suv_factor["1"]`` of the
``case.json`` beside it) and ``labels.mha`` (its ``case.json``, when present, gives lesion
hosts, NEMA sphere centres and diameters and the sphere-to-background ratio).

The report is a JSON-ready dict; undefined values (the PSNR of equal images, a ratio to a
zero reference) are ``None``. The metric definitions are in ``docs/metrics.md``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pet_recon.errors import PetReconError
from pet_recon.io.metadata import VolumeGeometry
from pet_recon.io.series import read_series
from pet_recon.io.suv import suv_scale
from pet_recon.metrics import (
    NEMA_EDGE_MARGIN_MM,
    NemaSphere,
    body_mask,
    coefficient_of_variation,
    nema_contrast_recovery,
    nrmse,
    psnr,
    psnr_udpet,
    ssim,
    tumour_to_background,
    voi_bias,
    voi_stats,
    z_consistency,
)
from pet_recon.physics.phantoms import LESION_BASE, Label

VOLUME_SUFFIXES = (".mha", ".mhd", ".nii", ".nii.gz", ".nrrd")
"""File names read with SimpleITK (values taken to be SUV); anything else is DICOM."""
SPACING_TOL_MM = 1e-3
"""Largest spacing difference between the grids of the inputs, mm."""
ORIGIN_TOL_VOXELS = 0.5
"""Largest origin difference between the grids of the inputs, in voxels along each axis."""
DIRECTION_TOL = 1e-4
"""Largest difference between the direction cosines of the inputs."""
TBR_SHELL_MM = (10.0, 20.0)
"""A lesion's background: host-tissue voxels more than 10 and at most 20 mm from it."""
UNIFORM_EROSION_MM = 10.0
"""The CV region keeps voxels more than this far from any voxel outside it."""
UNIFORM_LABELS = (Label.PHANTOM_FILL, Label.LIVER, Label.WHITE_MATTER)
"""Uniform regions for the CV, in order of preference (NEMA, body, brain)."""
HOST_LABELS = {
    "grey matter": Label.GREY_MATTER,
    "white matter": Label.WHITE_MATTER,
    "deep grey matter": Label.DEEP_GREY,
    "lung": Label.LUNG,
    "liver": Label.LIVER,
    "soft tissue": Label.SOFT_TISSUE,
    "background": Label.PHANTOM_FILL,
}
"""``host`` names of the simulator's lesions (``case.json``) and their tissue labels."""


def evaluate(
    pred: Path,
    ref: Path,
    *,
    truth: Path | None = None,
    labels: Path | None = None,
    pred_series_uid: str | None = None,
    ref_series_uid: str | None = None,
) -> dict[str, Any]:
    """Compare a prediction with a reference (and the truth), globally and per VOI.

    Parameters
    ----------
    pred, ref : Path
        DICOM PET series (folder, zip or file; read in SUVbw) or a volume file (SUV).
    truth : Path, optional
        The simulator's ``truth.mha`` (Bq/ml at full dose); metrics against it need the
        ``case.json`` beside it (its ``suv_factor["1"]``).
    labels : Path, optional
        Integer label map on the same grid (the simulator's ``labels.mha``).
    pred_series_uid, ref_series_uid : str, optional
        SeriesInstanceUID of the series to read where ``pred`` or ``ref`` holds several
        (e.g. a ``reconstruct --progressive`` output folder).

    Returns
    -------
    dict
        JSON-ready report: ``prediction`` and ``reference`` (path, source, units), ``grid``,
        ``body_mask_voxels``, ``image_quality`` (``psnr_db``, ``psnr_udpet_db``,
        ``ssim_2d``, ``ssim_3d``, ``ssim_data_range``, ``nrmse``, ``mean_suv_body``),
        ``z_consistency``; with ``truth``: ``truth``; with ``labels``: ``vois``,
        ``lesion_suvmax_bias``, ``lesions`` (TBR), ``uniform_region`` (CV) and ``nema``
        where they apply; ``notes``. Keys and definitions: ``docs/metrics.md``.

    Raises
    ------
    PetReconError
        An input is missing or unreadable, has no SUV, or lies on another grid.
    """
    pred, ref = Path(pred), Path(ref)
    pred_vol, pred_geo, pred_info = _load_suv(pred, pred_series_uid)
    ref_vol, ref_geo, ref_info = _load_suv(ref, ref_series_uid)
    _check_grid(pred, pred_geo, ref, ref_geo)
    spacing = ref_geo.spacing
    body = body_mask(ref_vol, spacing)
    if not body.any():
        raise PetReconError(f"{ref}: the reference is zero everywhere (empty body mask)")
    notes: list[str] = []
    quality = _image_quality(pred_vol, ref_vol, body)
    if quality["psnr_db"] == math.inf:
        notes.append("prediction equals reference in the body: PSNR is infinite (null)")
    if min(ref_vol.shape) >= 3:
        z_pred, z_ref = z_consistency(pred_vol, body), z_consistency(ref_vol, body)
    else:
        z_pred = z_ref = math.nan
        notes.append("fewer than 3 voxels along an axis: no z-consistency")
    report: dict[str, Any] = {
        "prediction": pred_info,
        "reference": ref_info,
        "grid": {"shape": list(ref_geo.shape), "spacing_mm": list(spacing),
                 "origin_mm": list(ref_geo.origin)},
        "body_mask_voxels": int(body.sum()),
        "image_quality": quality,
        "z_consistency": {"prediction": z_pred, "reference": z_ref,
                          "ratio": z_pred / z_ref if z_ref else math.nan},
    }
    truth_suv: np.ndarray | None = None
    if truth is not None:
        report["truth"], truth_suv = _truth_report(Path(truth), ref, ref_geo, pred_vol,
                                                   ref_vol, notes)
    if labels is not None:
        labels = Path(labels)
        label_map = _read_labels(labels, ref, ref_geo)
        record = _case_record(labels.parent)
        report.update(_label_reports(pred_vol, ref_vol, label_map, spacing, ref_geo, body,
                                     record, truth_suv, notes))
    report["notes"] = notes
    return _clean(report)


# --------------------------------------------------------------------------- inputs


def _load_suv(path: Path, series_uid: str | None = None
              ) -> tuple[np.ndarray, VolumeGeometry, dict[str, Any]]:
    """SUV volume (float64), its grid and a description of where it came from."""
    if not path.exists():
        raise PetReconError(f"{path}: no such file or folder")
    if path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES):
        volume, geometry = _read_image(path)
        return volume, geometry, {"path": str(path), "source": "image",
                                  "units": "SUV, assumed (volume file)"}
    volume, meta = read_series(path, series_uid=series_uid)
    scale = suv_scale(meta)  # SuvUnavailable is a PetReconError naming the series
    factors = np.asarray(scale.factors, dtype=np.float64)[:, None, None]
    info = {"path": str(path), "source": "dicom", "units": f"SUV{scale.suv_type}, from DICOM",
            "series_instance_uid": meta.source.series_instance_uid,
            "suv_factor": scale.factor if scale.factor is not None else list(scale.factors)}
    return volume.astype(np.float64) * factors, meta.geometry, info


def _read_image(path: Path) -> tuple[np.ndarray, VolumeGeometry]:
    """A 3D scalar volume file as float64 ``(slices, rows, columns)`` with its grid."""
    if not path.is_file():
        raise PetReconError(f"{path}: no such file")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise PetReconError(f"{path}: not an image file SimpleITK can read") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise PetReconError(
            f"{path}: expected a 3D scalar volume, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel")
    volume = sitk.GetArrayFromImage(image).astype(np.float64)
    if not np.isfinite(volume).all():
        raise PetReconError(f"{path}: contains NaN or infinite values")
    return volume, VolumeGeometry.from_sitk(image)


def _read_labels(path: Path, ref: Path, ref_geo: VolumeGeometry) -> np.ndarray:
    """Integer label map on the reference's grid."""
    values, geometry = _read_image(path)
    _check_grid(path, geometry, ref, ref_geo)
    if not np.array_equal(values, np.round(values)):
        raise PetReconError(f"{path}: not a label map (non-integer values)")
    return values.astype(np.int64)


def _check_grid(a: Path, geo_a: VolumeGeometry, b: Path, geo_b: VolumeGeometry) -> None:
    """One-line error naming both inputs when their grids differ."""
    problem = None
    if tuple(geo_a.shape) != tuple(geo_b.shape):
        problem = (f"shape {'x'.join(map(str, geo_a.shape))} vs "
                   f"{'x'.join(map(str, geo_b.shape))} (slices x rows x columns)")
    elif np.max(np.abs(np.subtract(geo_a.spacing, geo_b.spacing))) > SPACING_TOL_MM:
        problem = (f"spacing {_mm(geo_a.spacing)} vs {_mm(geo_b.spacing)} mm (x, y, z)")
    elif np.max(np.abs(np.subtract(geo_a.direction, geo_b.direction))) > DIRECTION_TOL:
        problem = "direction cosines differ"
    else:
        axes = np.asarray(geo_b.direction, dtype=np.float64).reshape(3, 3)
        shift = axes.T @ np.subtract(geo_a.origin, geo_b.origin) / np.asarray(geo_b.spacing)
        if np.max(np.abs(shift)) > ORIGIN_TOL_VOXELS:
            problem = (f"origin {_mm(geo_a.origin)} vs {_mm(geo_b.origin)} mm, "
                       f"{float(np.max(np.abs(shift))):.2f} voxels apart")
    if problem is not None:
        raise PetReconError(f"{a} and {b} are not on the same grid: {problem}")


def _mm(values: tuple[float, ...] | list[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _case_record(folder: Path) -> dict[str, Any] | None:
    """The simulator's ``case.json`` in ``folder``, or None when there is none."""
    path = folder / "case.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PetReconError(f"{path}: not a readable case record ({exc})") from None
    if not isinstance(record, dict):
        raise PetReconError(f"{path}: not a case record (expected a JSON object)")
    return record


# --------------------------------------------------------------------------- global metrics


def _image_quality(pred: np.ndarray, ref: np.ndarray, body: np.ndarray) -> dict[str, Any]:
    """PSNR, PSNR (UDPET), SSIM 2D and 3D, NRMSE and mean SUV, against ``ref`` in ``body``."""
    peak = float(ref[body].max())
    return {
        "psnr_db": psnr(pred, ref, body),
        "psnr_udpet_db": psnr_udpet(pred, ref),
        "ssim_2d": ssim(pred, ref, body, peak, "2d"),
        "ssim_3d": ssim(pred, ref, body, peak, "3d"),
        "ssim_data_range": peak,
        "nrmse": nrmse(pred, ref, body),
        "mean_suv_body": {"prediction": float(pred[body].mean()),
                          "reference": float(ref[body].mean())},
    }


def _truth_report(truth: Path, ref: Path, ref_geo: VolumeGeometry, pred_vol: np.ndarray,
                  ref_vol: np.ndarray, notes: list[str]
                  ) -> tuple[dict[str, Any], np.ndarray | None]:
    """Metrics of prediction and reference against the truth in SUV, when units allow."""
    volume, geometry = _read_image(truth)
    _check_grid(truth, geometry, ref, ref_geo)
    record = _case_record(truth.parent)
    factor = None
    if record is not None and isinstance(record.get("suv_factor"), dict):
        factor = record["suv_factor"].get("1")
    if not isinstance(factor, int | float) or not factor > 0:
        notes.append(f"{truth}: no case.json with suv_factor['1'] beside it, so the truth "
                     "(Bq/ml) cannot be put in SUV; metrics against it are omitted")
        return {"path": str(truth), "compared": False}, volume
    truth_suv = volume * float(factor)
    mask = body_mask(truth_suv, ref_geo.spacing)
    if not mask.any():
        notes.append(f"{truth}: zero everywhere; metrics against it are omitted")
        return {"path": str(truth), "compared": False}, truth_suv
    return {
        "path": str(truth),
        "compared": True,
        "suv_factor": float(factor),
        "prediction": _image_quality(pred_vol, truth_suv, mask),
        "reference": _image_quality(ref_vol, truth_suv, mask),
    }, truth_suv


# --------------------------------------------------------------------------- label metrics


def _label_reports(pred: np.ndarray, ref: np.ndarray, labels: np.ndarray,
                   spacing: tuple[float, float, float], geometry: VolumeGeometry,
                   body: np.ndarray, record: dict[str, Any] | None,
                   truth: np.ndarray | None, notes: list[str]) -> dict[str, Any]:
    """Per-VOI statistics and biases, lesion TBRs, the uniform-region CV and NEMA CR/BV."""
    out: dict[str, Any] = {}
    lesion_info = _lesion_info(record)
    pred_stats = voi_stats(pred, labels, spacing)
    ref_stats = voi_stats(ref, labels, spacing)
    biases = voi_bias(pred_stats, ref_stats)
    keys = ("suv_max", "suv_peak", "suv_mean")
    out["vois"] = [{
        "label": label,
        "name": _label_name(label, lesion_info),
        "voxels": ref_stats[label]["voxels"],
        "prediction": {k: pred_stats[label][k] for k in keys},
        "reference": {k: ref_stats[label][k] for k in keys},
        "bias": biases[label],
    } for label in ref_stats]
    lesions = [label for label in ref_stats if label >= LESION_BASE]
    if lesions:
        out["lesion_suvmax_bias"] = float(np.mean([biases[k]["suv_max"] for k in lesions]))
        out["lesions"] = [_tbr(pred, ref, labels, label, spacing, body, lesion_info, notes)
                          for label in lesions]
    uniform = _uniform_region(pred, ref, labels, spacing, notes)
    if uniform is not None:
        out["uniform_region"] = uniform
    if int(Label.PHANTOM_FILL) in ref_stats and lesions:
        out["nema"] = _nema(pred, ref, labels, lesions, spacing, geometry, record, truth,
                            notes)
    return out


def _lesion_info(record: dict[str, Any] | None) -> dict[int, dict[str, Any]]:
    """The simulator's lesion entries (``case.json`` phantom → lesions) by label."""
    phantom = record.get("phantom") if record else None
    entries = phantom.get("lesions") if isinstance(phantom, dict) else None
    if not isinstance(entries, list):
        return {}
    return {int(e["label"]): e for e in entries if isinstance(e, dict) and "label" in e}


def _label_name(label: int, lesion_info: dict[int, dict[str, Any]]) -> str:
    if label >= LESION_BASE:
        entry = lesion_info.get(label, {})
        diameter = entry.get("diameter_mm")
        text = f"lesion {label - LESION_BASE}"
        return f"{text} ({diameter:.0f} mm)" if isinstance(diameter, int | float) else text
    try:
        return Label(label).name.lower()
    except ValueError:
        return f"label {label}"


def _distance_from(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm) of every voxel centre to the nearest voxel centre of ``mask`` (0 in it)."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing))
    distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False,
                                            useImageSpacing=True)
    return np.maximum(sitk.GetArrayFromImage(distance).astype(np.float64), 0.0)


def _tbr(pred: np.ndarray, ref: np.ndarray, labels: np.ndarray, label: int,
         spacing: tuple[float, float, float], body: np.ndarray,
         lesion_info: dict[int, dict[str, Any]], notes: list[str]) -> dict[str, Any]:
    """TBR of one lesion against its host tissue 10-20 mm around it (else the body)."""
    lesion = labels == label
    distance = _distance_from(lesion, spacing)
    shell = (distance > TBR_SHELL_MM[0]) & (distance <= TBR_SHELL_MM[1])
    hosts = []
    host_name = lesion_info.get(label, {}).get("host")
    if isinstance(host_name, str) and host_name in HOST_LABELS:
        hosts.append(int(HOST_LABELS[host_name]))  # the simulator's host tissue
    tissue = labels[shell & (labels > 0) & (labels < LESION_BASE)]
    if tissue.size:
        hosts.append(int(np.bincount(tissue).argmax()))  # the commonest tissue around it
    for host in hosts:
        background = shell & (labels == host)
        if background.any():
            where = f"host tissue {_label_name(host, {})}"
            break
    else:
        background = body & (_distance_from(labels >= LESION_BASE, spacing) > TBR_SHELL_MM[0])
        where = "body away from all lesions"
        notes.append(f"lesion {label}: no tissue voxels 10-20 mm around it; TBR background "
                     "is the body more than 10 mm from any lesion")
    if not background.any():
        notes.append(f"lesion {label}: no background voxels at all; TBR omitted")
        return {"label": label, "background": "none", "background_voxels": 0,
                "prediction": None, "reference": None}
    return {
        "label": label,
        "background": where,
        "background_voxels": int(background.sum()),
        "prediction": tumour_to_background(pred, lesion, background),
        "reference": tumour_to_background(ref, lesion, background),
    }


def _uniform_region(pred: np.ndarray, ref: np.ndarray, labels: np.ndarray,
                    spacing: tuple[float, float, float], notes: list[str]
                    ) -> dict[str, Any] | None:
    """CV in the first uniform tissue present, away from its edges; None without one."""
    for label in UNIFORM_LABELS:
        tissue = labels == int(label)
        if not tissue.any():
            continue
        region = _distance_from(~tissue, spacing) > UNIFORM_EROSION_MM
        if not region.any():
            notes.append(f"{label.name.lower()}: no voxel {UNIFORM_EROSION_MM:g} mm inside "
                         "it; CV omitted")
            return None
        return {
            "label": int(label),
            "name": label.name.lower(),
            "voxels": int(region.sum()),
            "erosion_mm": UNIFORM_EROSION_MM,
            "cv_prediction": coefficient_of_variation(pred, region),
            "cv_reference": coefficient_of_variation(ref, region),
        }
    return None


def _nema(pred: np.ndarray, ref: np.ndarray, labels: np.ndarray, spheres: list[int],
          spacing: tuple[float, float, float], geometry: VolumeGeometry,
          record: dict[str, Any] | None, truth: np.ndarray | None,
          notes: list[str]) -> dict[str, Any]:
    """NEMA NU 2 contrast recovery and background variability per sphere."""
    info = _lesion_info(record)
    nema_spheres = []
    for label in spheres:
        entry = info.get(label, {})
        centre = entry.get("centre_mm")
        diameter = entry.get("diameter_mm")
        index = None
        if isinstance(centre, list) and len(centre) == 3:
            index = _continuous_index(geometry, centre)
        nema_spheres.append(NemaSphere(
            label, float(diameter) if isinstance(diameter, int | float) else None, index))
    phantom = record.get("phantom") if record else None
    ratio = phantom.get("ratio") if isinstance(phantom, dict) else None
    source = "case.json"
    if not isinstance(ratio, int | float):
        ratio, source = None, "truth (median in the largest sphere / median in the fill)"
        if truth is not None:
            largest = max(spheres, key=lambda k: int((labels == k).sum()))
            fill = float(np.median(truth[labels == int(Label.PHANTOM_FILL)]))
            if fill > 0:
                ratio = float(np.median(truth[labels == largest])) / fill
    if ratio is None:
        notes.append("NEMA: no case.json beside the labels and no --truth, so the true "
                     "sphere-to-background ratio is unknown; CR and BV skipped")
        return {"skipped": "true activity ratio unknown (no case.json, no --truth)"}
    if not ratio > 1:
        notes.append(f"NEMA: true ratio {ratio:.4g} (from {source}) is not above 1; CR and "
                     "BV skipped")
        return {"skipped": f"true activity ratio {ratio:.4g} is not above 1"}
    background = labels == int(Label.PHANTOM_FILL)
    margin = NEMA_EDGE_MARGIN_MM
    try:
        results = {name: nema_contrast_recovery(volume, labels, nema_spheres, background,
                                                float(ratio), spacing, edge_margin_mm=margin)
                   for name, volume in (("prediction", pred), ("reference", ref))}
    except ValueError:
        margin = 0.0
        notes.append(f"NEMA: no room for background ROIs {NEMA_EDGE_MARGIN_MM:g} mm from "
                     "the phantom edge and spheres; placed without that margin")
        try:
            results = {name: nema_contrast_recovery(volume, labels, nema_spheres, background,
                                                    float(ratio), spacing, edge_margin_mm=0.0)
                       for name, volume in (("prediction", pred), ("reference", ref))}
        except ValueError as exc:
            notes.append(f"NEMA: CR and BV skipped: {exc}")
            return {"skipped": str(exc)}
    first = results["reference"][spheres[0]]
    return {
        "true_ratio": float(ratio),
        "ratio_source": source,
        "central_slice": first["central_slice"],
        "background_rois": first["background_rois"],
        "edge_margin_mm": margin,
        "spheres": [{
            "label": label,
            "diameter_mm": results["reference"][label]["diameter_mm"],
            "prediction": {k: results["prediction"][label][k] for k in (
                "contrast_recovery_pct", "background_variability_pct")},
            "reference": {k: results["reference"][label][k] for k in (
                "contrast_recovery_pct", "background_variability_pct")},
        } for label in spheres],
    }


def _continuous_index(geometry: VolumeGeometry, point_mm: list[float]
                      ) -> tuple[float, float, float]:
    """Continuous index ``(i, j, k)`` of a patient-coordinate point (mm) on ``geometry``.

    The simulator's phantom coordinates (``centre_mm``) are the patient coordinates of its
    images: their grids are centred on the origin of both.
    """
    axes = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    offset = np.asarray(point_mm, dtype=np.float64) - np.asarray(geometry.origin)
    index = axes.T @ offset / np.asarray(geometry.spacing, dtype=np.float64)
    return (float(index[0]), float(index[1]), float(index[2]))


def _clean(value: Any) -> Any:
    """Numpy scalars to Python, non-finite floats to None, int keys kept (JSON-ready)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- text


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _pct(value: Any, sign: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100.0 * value:+.1f} %" if sign else f"{100.0 * value:.1f} %"


def format_report(report: dict[str, Any]) -> str:
    """Readable plain-text summary of an :func:`evaluate` report."""
    q = report["image_quality"]
    z = report["z_consistency"]
    grid = report["grid"]
    lines = [
        f"prediction  {report['prediction']['path']} ({report['prediction']['units']})",
        f"reference   {report['reference']['path']} ({report['reference']['units']})",
        f"grid        {'x'.join(map(str, grid['shape']))} (slices x rows x columns), spacing "
        f"{_mm(grid['spacing_mm'])} mm; body mask {report['body_mask_voxels']} voxels",
        "",
        "prediction vs reference (body mask of the reference)",
        *_quality_lines(q),
        f"  z-consistency    prediction {_num(z['prediction'])}, reference "
        f"{_num(z['reference'])} (ratio {_num(z['ratio'])})",
    ]
    truth = report.get("truth")
    if truth is not None and truth.get("compared"):
        for who in ("prediction", "reference"):
            lines += ["", f"{who} vs truth (body mask of the truth)",
                      *_quality_lines(truth[who])]
    uniform = report.get("uniform_region")
    if uniform is not None:
        lines += ["", f"uniform region {uniform['name']} ({uniform['voxels']} voxels): CV "
                  f"prediction {_pct(uniform['cv_prediction'], False)}, reference "
                  f"{_pct(uniform['cv_reference'], False)}"]
    if report.get("vois"):
        lines += ["", "VOIs: SUV prediction / reference (bias)"]
        width = max(len(v["name"]) for v in report["vois"])
        for voi in report["vois"]:
            cells = [f"{key[4:]} {_num(voi['prediction'][key])} / "
                     f"{_num(voi['reference'][key])} ({_pct(voi['bias'][key])})"
                     for key in ("suv_max", "suv_peak", "suv_mean")]
            lines.append(f"  {voi['label']:>4} {voi['name'].ljust(width)}  " + "; ".join(cells))
        if "lesion_suvmax_bias" in report:
            lines.append(f"  lesion SUVmax bias (mean over lesions): "
                         f"{_pct(report['lesion_suvmax_bias'])}")
    if report.get("lesions"):
        lines += ["", "TBR = SUVmax(lesion) / SUVmean(background 10-20 mm around it)"]
    for lesion in report.get("lesions", []):
        if lesion["prediction"] is None:
            continue
        lines.append(f"  {lesion['label']:>4} prediction {_num(lesion['prediction']['tbr_max'])}"
                     f", reference {_num(lesion['reference']['tbr_max'])} "
                     f"({lesion['background']}, {lesion['background_voxels']} voxels)")
    nema = report.get("nema")
    if nema is not None and "spheres" in nema:
        lines += ["", f"NEMA NU 2 (ratio {_num(nema['true_ratio'])} from {nema['ratio_source']}, "
                  f"{nema['background_rois']} background ROIs, central slice "
                  f"{nema['central_slice']}): CR % / BV % prediction | reference"]
        for sphere in nema["spheres"]:
            p, r = sphere["prediction"], sphere["reference"]
            lines.append(
                f"  {sphere['diameter_mm']:5.1f} mm  {_num(p['contrast_recovery_pct'], 3)} / "
                f"{_num(p['background_variability_pct'], 3)} | "
                f"{_num(r['contrast_recovery_pct'], 3)} / "
                f"{_num(r['background_variability_pct'], 3)}")
    if report["notes"]:
        lines.append("")
        lines += [f"note: {note}" for note in report["notes"]]
    return "\n".join(lines)


def _quality_lines(q: dict[str, Any]) -> list[str]:
    return [
        f"  PSNR             {_num(q['psnr_db'])} dB (range {_num(q['ssim_data_range'])}); "
        f"UDPET {_num(q['psnr_udpet_db'])} dB (whole volume)",
        f"  SSIM 2D / 3D     {_num(q['ssim_2d'])} / {_num(q['ssim_3d'])}",
        f"  NRMSE            {_num(q['nrmse'])}",
        f"  mean SUV (body)  {_num(q['mean_suv_body']['prediction'])} / "
        f"{_num(q['mean_suv_body']['reference'])}",
    ]
