"""`petrecon reconstruct`: read a low-dose PET series, restore it, write a derived series.

This module holds the one API function the CLI calls, :func:`reconstruct`. It reads the
input with the series reader, runs the chosen method, writes the derived series through the
writer into a temporary folder that is moved into place only when complete, and returns a
JSON-ready report.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

import pet_recon
from pet_recon.errors import PetReconError
from pet_recon.io.metadata import SeriesMeta
from pet_recon.io.series import read_series
from pet_recon.io.suv import SuvUnavailable, suv_scale
from pet_recon.io.writer import write_derived_series
from pet_recon.output import check_output_dir, staged_output

log = logging.getLogger(__name__)

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def gaussian_filter(volume: np.ndarray, meta: SeriesMeta, fwhm_mm: float) -> np.ndarray:
    """Isotropic 3D Gaussian post-filter in physical units.

    Parameters
    ----------
    volume : np.ndarray
        ``(slices, rows, columns)`` float32 volume.
    meta : SeriesMeta
        Gives the voxel spacing in mm.
    fwhm_mm : float
        Full width at half maximum in mm (0 returns a copy).

    Returns
    -------
    np.ndarray
        Filtered volume, same shape, float32. The kernel is normalised, so total activity
        is preserved away from the volume's edges.
    """
    if fwhm_mm < 0:
        raise PetReconError(f"--fwhm must be >= 0 mm, got {fwhm_mm}")
    if fwhm_mm == 0:
        return volume.astype(np.float32, copy=True)
    image = meta.geometry.to_sitk(volume.astype(np.float32))
    sigma = fwhm_mm * FWHM_TO_SIGMA
    smoothed = sitk.DiscreteGaussian(image, variance=sigma * sigma, maximumKernelWidth=128,
                                     useImageSpacing=True)
    return sitk.GetArrayFromImage(smoothed).astype(np.float32)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import pydicom

    try:  # from the installed metadata: importing torch takes longer than a gaussian run
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "not installed"
    return {
        "petrecon": pet_recon.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch_version,
        "pydicom": pydicom.__version__,
        "SimpleITK": sitk.Version_VersionString(),
    }


def _suv_stats(volume: np.ndarray, factors: np.ndarray | None) -> dict[str, float] | None:
    if factors is None:
        return None
    suv = volume * factors[:, None, None]
    return {"suv_max": float(suv.max()), "suv_mean": float(suv.mean())}


def _check_file_output(path: Path | None, overwrite: bool, what: str) -> None:
    """Fail before anything is written when ``path`` exists or cannot be written later."""
    if path is None:
        return
    if path.is_dir():
        raise PetReconError(f"{path}: {what} path is a folder")
    if path.exists() and not overwrite:
        raise PetReconError(f"{path}: {what} exists (use --overwrite)")
    if not path.parent.is_dir():
        raise PetReconError(f"{path}: cannot write {what}: {path.parent} is not an existing folder")


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".partial-{path.name}")  # keeps the suffix
    try:
        write(tmp)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PetReconError(f"{path}: cannot write ({exc.strerror})") from None


def reconstruct(
    in_path: Path,
    out_dir: Path,
    *,
    method: str = "gaussian",
    fwhm_mm: float = 6.0,
    series_uid: str | None = None,
    overwrite: bool = False,
    report_path: Path | None = None,
    preview_path: Path | None = None,
    weight_kg: float | None = None,
    dose_mbq: float | None = None,
    progress: bool = True,
) -> dict[str, object]:
    """Restore a low-dose PET series and write it as a derived DICOM series.

    Parameters
    ----------
    in_path : Path
        Folder (searched recursively) or zip file with the low-dose PET series.
    out_dir : Path
        Folder for the derived series; must not exist or be empty unless ``overwrite``.
    method : {"gaussian"}
        Restoration method. ``gaussian``: 3D Gaussian post-filter of ``fwhm_mm``.
    fwhm_mm : float
        FWHM of the Gaussian filter in mm.
    series_uid : str, optional
        SeriesInstanceUID to use when the input holds several PET series.
    overwrite : bool
        Replace existing outputs (only once the new ones are complete).
    report_path, preview_path : Path, optional
        Where to write the JSON run report and the PNG preview.
    weight_kg, dose_mbq : float, optional
        Override patient weight and injected activity for SUV.
    progress : bool
        Show a tqdm progress bar on stderr.

    Returns
    -------
    dict
        The run report (also written to ``report_path`` when given).
    """
    methods = {"gaussian": lambda vol, meta: gaussian_filter(vol, meta, fwhm_mm)}
    if method not in methods:
        raise PetReconError(f"unknown method {method!r}; choose one of {sorted(methods)}")
    check_output_dir(out_dir, overwrite)
    _check_file_output(report_path, overwrite, "report")
    _check_file_output(preview_path, overwrite, "preview")

    timings: dict[str, float] = {}
    # The input is read (and so checked) before the progress bar starts, so that a problem
    # with it is reported on one line of its own.
    t0 = time.perf_counter()
    volume, meta = read_series(in_path, series_uid=series_uid)
    timings["read_s"] = time.perf_counter() - t0

    warnings = list(meta.warnings)
    try:
        scale = suv_scale(meta, weight_kg=weight_kg, dose_mbq=dose_mbq)
        factors: np.ndarray | None = np.asarray(scale.factors, dtype=np.float64)
        suv_type: str | None = scale.suv_type
    except SuvUnavailable as exc:
        factors, suv_type = None, None
        warnings.append(f"SUV not available: {exc}")
        log.warning("SUV not available: %s", exc)

    with tqdm(total=3, initial=1, desc="petrecon", unit="stage", disable=not progress) as bar:
        t0 = time.perf_counter()
        bar.set_postfix_str(method)
        restored = methods[method](volume, meta)
        timings["restore_s"] = time.perf_counter() - t0
        bar.update()

        t0 = time.perf_counter()
        bar.set_postfix_str("writing")
        description = f"petrecon {method}" + (f" {fwhm_mm:g}mm" if method == "gaussian" else "")
        with staged_output(out_dir, overwrite) as staging:
            files = write_derived_series(
                restored,
                meta,
                staging,
                series_description=description[:64],
                derivation_description=(
                    f"petrecon {pet_recon.__version__}: low-dose PET restoration, method {method}"
                    + (f", 3D Gaussian FWHM {fwhm_mm:g} mm" if method == "gaussian" else "")
                ),
            )
        timings["write_s"] = time.perf_counter() - t0
        bar.update()

    if preview_path is not None:
        from pet_recon.preview import write_preview  # matplotlib: imported only when needed

        first = float(factors[0]) if factors is not None else None
        _write_atomic(preview_path, lambda p: write_preview(
            volume, restored, p, suv_factor=first, spacing=meta.geometry.spacing,
            units=meta.units))

    report: dict[str, object] = {
        "versions": _versions(),
        "method": method,
        "parameters": {"fwhm_mm": fwhm_mm} if method == "gaussian" else {},
        "input": {
            "path": str(in_path),
            "series_instance_uid": meta.source.series_instance_uid,
            "n_slices": meta.geometry.shape[0],
            "matrix": list(meta.geometry.shape[1:]),
            "units": meta.units,
            "suv_type": suv_type,
            **({"suv": _suv_stats(volume, factors)} if factors is not None else {}),
        },
        "output": {
            "path": str(out_dir),
            "n_files": len(files),
            **({"suv": _suv_stats(restored, factors)} if factors is not None else {}),
        },
        "timings": timings,
        "warnings": warnings,
    }
    if report_path is not None:
        _write_atomic(report_path, lambda p: p.write_text(json.dumps(report, indent=2) + "\n"))
    return report
