"""Image-quality and quantitation metrics on SUV volumes.

Definitions are in ``docs/metrics.md`` and in each function's docstring; ``petrecon
evaluate`` (:mod:`pet_recon.evaluate`) reports them. Volumes are numpy arrays of shape
``(slices, rows, columns)`` (SUV, any float dtype, computed in float64), masks boolean arrays
of the same shape, and spacings ``(x, y, z)`` in mm (SimpleITK order), as in
:mod:`pet_recon.io.metadata`. Only numpy and SimpleITK are used (no scipy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

SUV_PEAK_RADIUS_MM = 10.0 * (3.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
"""Radius of the 1 cm^3 sphere of SUVpeak, mm (6.2035)."""
SSIM_SIGMA = 1.5
"""Standard deviation of SSIM's Gaussian window, voxels (Wang et al. 2004)."""
SSIM_TRUNCATE = 3.5
"""SSIM's window is cut at this many standard deviations (11 taps for sigma 1.5)."""
SSIM_K1 = 0.01
SSIM_K2 = 0.03
NEMA_ROIS_PER_SLICE = 12
"""Background ROIs per slice (NEMA NU 2-2018 section 7.4.2)."""
NEMA_SLICE_OFFSETS_MM = (0.0, -10.0, 10.0, -20.0, 20.0)
"""Background slices relative to the spheres' central slice, mm."""
NEMA_EDGE_MARGIN_MM = 15.0
"""Distance of background ROIs from the phantom edge and the spheres, mm."""


def body_mask(volume: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
              fraction: float = 0.1, smooth_mm: float = 8.0) -> np.ndarray:
    """Voxels inside the body: above ``fraction`` of the smoothed volume's 99th percentile.

    Parameters
    ----------
    volume : np.ndarray
        ``(slices, rows, columns)`` activity or SUV, float.
    spacing : tuple of float
        ``(x, y, z)`` voxel spacing in mm (SimpleITK order).
    fraction : float
        Threshold as a fraction of the 99th percentile of the smoothed volume.
    smooth_mm : float
        FWHM in mm of the Gaussian applied first, so that noise does not punch holes.

    Returns
    -------
    np.ndarray
        Boolean mask, same shape. Empty only for an all-zero volume.
    """
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume, dtype=np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing))
    sigma = smooth_mm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    smoothed = sitk.GetArrayFromImage(
        sitk.DiscreteGaussian(image, variance=sigma * sigma, useImageSpacing=True))
    level = float(np.percentile(smoothed, 99.0))
    if level <= 0:
        return np.zeros(volume.shape, dtype=bool)
    return smoothed > fraction * level


def psnr(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None,
         data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(range^2 / MSE)``.

    ``data_range`` defaults to the reference's maximum inside ``mask`` (the whole volume
    without a mask); the MSE is taken inside ``mask``.
    """
    if mask is None:
        mask = np.ones(reference.shape, dtype=bool)
    diff = prediction[mask].astype(np.float64) - reference[mask].astype(np.float64)
    mse = float(np.mean(diff * diff))
    peak = float(reference[mask].max()) if data_range is None else float(data_range)
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse)


def psnr_udpet(prediction: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB by the UDPET challenge convention, over the whole volume.

    ``10 log10(R^2 / MSE)`` with ``R = max(reference)`` over the whole volume and the MSE
    over every voxel, background air included (so it is higher than :func:`psnr` inside the
    body mask for the same images).

    Parameters
    ----------
    prediction, reference : np.ndarray
        ``(slices, rows, columns)`` SUV, float, same shape.

    Returns
    -------
    float
        dB; ``math.inf`` when the volumes are equal.
    """
    _same_shape(prediction, reference)
    return psnr(prediction, reference, None, float(np.max(reference)))


def ssim(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None,
         data_range: float | None = None, mode: str = "2d") -> float:
    """Structural similarity (Wang et al., IEEE TIP 13 (2004) 600), averaged inside a mask.

    The local means, variances and covariance are Gaussian-weighted (sigma 1.5 voxels,
    truncated at 3.5 sigma: an 11-tap window, weights summing to 1, population moments) and
    ``SSIM = (2 mu_p mu_r + C1)(2 s_pr + C2) / ((mu_p^2 + mu_r^2 + C1)(s_p^2 + s_r^2 + C2))``
    with ``C1 = (0.01 L)^2`` and ``C2 = (0.03 L)^2``. Borders are mirrored (edge voxel
    repeated), as ``scipy.ndimage`` mode ``"reflect"`` does, so the map equals the one of
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``; only the averaging differs (inside ``mask`` here,
    over the border-cropped image there).

    Parameters
    ----------
    prediction, reference : np.ndarray
        ``(slices, rows, columns)`` SUV, float, same shape.
    mask : np.ndarray, optional
        Boolean, same shape: where the SSIM map is averaged (default: everywhere). The
        window still sees the voxels around the mask.
    data_range : float, optional
        ``L``; default the reference's maximum inside ``mask`` (SUV, minimum taken as 0).
    mode : {"2d", "3d"}
        ``"2d"``: 2D window in each slice, the map averaged inside the mask per slice, then
        the mean over the slices that hold mask voxels. ``"3d"``: 3D window (sigma 1.5
        voxels along every axis, whatever the spacing), the map averaged inside the mask.

    Returns
    -------
    float
        At most 1; 1 for equal volumes.

    Raises
    ------
    ValueError
        Shapes differ, the mask is empty, ``data_range`` is not positive or ``mode`` is
        unknown.
    """
    if mode not in ("2d", "3d"):
        raise ValueError(f"mode must be '2d' or '3d', got {mode!r}")
    _same_shape(prediction, reference)
    mask = _mask_or_all(mask, reference)
    peak = float(reference[mask].max()) if data_range is None else float(data_range)
    if not peak > 0:
        raise ValueError(f"SSIM needs a positive data range, got {peak}")
    axes = (1, 2) if mode == "2d" else (0, 1, 2)
    x = np.asarray(prediction, dtype=np.float64)
    y = np.asarray(reference, dtype=np.float64)
    c1, c2 = (SSIM_K1 * peak) ** 2, (SSIM_K2 * peak) ** 2
    mu_x, mu_y = _gaussian_window(x, axes), _gaussian_window(y, axes)
    var_x = _gaussian_window(x * x, axes) - mu_x * mu_x
    var_y = _gaussian_window(y * y, axes) - mu_y * mu_y
    cov = _gaussian_window(x * y, axes) - mu_x * mu_y
    ssim_map = ((2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    if mode == "3d":
        return float(ssim_map[mask].mean())
    per_slice = [float(ssim_map[k][mask[k]].mean()) for k in range(mask.shape[0])
                 if mask[k].any()]
    return float(np.mean(per_slice))


def nrmse(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised root-mean-square error: ``RMSE / mean(reference)``, both inside ``mask``.

    ``sqrt(mean((p - r)^2)) / mean(r)`` over the voxels of ``mask`` (the whole volume
    without one): normalised by the reference's mean, not by its range or its RMS.

    Parameters
    ----------
    prediction, reference : np.ndarray
        ``(slices, rows, columns)`` SUV, float, same shape.
    mask : np.ndarray, optional
        Boolean, same shape.

    Returns
    -------
    float
        Dimensionless (0.1 = 10 % of the mean); 0 for equal volumes.

    Raises
    ------
    ValueError
        Shapes differ, the mask is empty or the reference's mean in it is not positive.
    """
    _same_shape(prediction, reference)
    mask = _mask_or_all(mask, reference)
    ref = reference[mask].astype(np.float64)
    diff = prediction[mask].astype(np.float64) - ref
    mean = float(ref.mean())
    if not mean > 0:
        raise ValueError(f"NRMSE needs a positive reference mean, got {mean}")
    return math.sqrt(float(np.mean(diff * diff))) / mean


def voi_stats(volume: np.ndarray, labels: np.ndarray,
              spacing: tuple[float, float, float]) -> dict[int, dict[str, float]]:
    """SUVmax, SUVmean, SUVpeak and size of every labelled volume of interest.

    SUVpeak is the largest mean of the volume inside a 1 cm^3 sphere (radius
    ``(3 / (4 pi))^(1/3)`` cm = 6.20 mm) centred on a voxel centre of the VOI. The sphere
    is the set of voxels whose centres lie within the radius of the centre (built in mm from
    ``spacing``, so it is an ellipsoid in voxels for anisotropic grids); near the volume's
    edge only its voxels inside the volume are averaged. The sphere may reach outside the
    VOI (as in PERCIST). Computed for all voxels at once by FFT convolution (float64).

    Parameters
    ----------
    volume : np.ndarray
        ``(slices, rows, columns)`` SUV, float.
    labels : np.ndarray
        Integer label map, same shape; every value > 0 is a VOI.
    spacing : tuple of float
        ``(x, y, z)`` voxel spacing in mm (SimpleITK order).

    Returns
    -------
    dict
        ``{label: {"suv_max", "suv_mean", "suv_peak", "voxels"}}`` (SUV in the units of
        ``volume``, ``voxels`` an int), labels ascending; empty without labels > 0.
    """
    _same_shape(volume, labels)
    ids = [int(v) for v in np.unique(labels) if v > 0]
    if not ids:
        return {}
    values = np.asarray(volume, dtype=np.float64)
    peak = _local_mean(values, _ball(spacing, SUV_PEAK_RADIUS_MM))
    stats: dict[int, dict[str, float]] = {}
    for label in ids:
        inside = labels == label
        stats[label] = {
            "suv_max": float(values[inside].max()),
            "suv_mean": float(values[inside].mean()),
            "suv_peak": float(peak[inside].max()),
            "voxels": int(inside.sum()),
        }
    return stats


def voi_bias(prediction_stats: dict[int, dict[str, float]],
             reference_stats: dict[int, dict[str, float]]) -> dict[int, dict[str, float]]:
    """Relative bias of SUVmax, SUVpeak and SUVmean per VOI: ``(pred - ref) / ref``.

    Parameters
    ----------
    prediction_stats, reference_stats : dict
        :func:`voi_stats` of the prediction and of the reference on the same label map.

    Returns
    -------
    dict
        ``{label: {"suv_max", "suv_peak", "suv_mean"}}`` as fractions (0.1 = +10 %) for the
        labels in both; ``math.nan`` where the reference value is 0.
    """
    biases: dict[int, dict[str, float]] = {}
    for label, ref in reference_stats.items():
        pred = prediction_stats.get(label)
        if pred is None:
            continue
        biases[label] = {
            key: (pred[key] - ref[key]) / ref[key] if ref[key] != 0 else math.nan
            for key in ("suv_max", "suv_peak", "suv_mean")
        }
    return biases


def tumour_to_background(volume: np.ndarray, lesion_mask: np.ndarray,
                         background_mask: np.ndarray) -> dict[str, float]:
    """Tumour-to-background ratios of one lesion.

    ``tbr_max = SUVmax(lesion) / SUVmean(background)`` (the usual clinical TBR) and
    ``tbr_mean = SUVmean(lesion) / SUVmean(background)``. Which voxels are the background is
    the caller's choice (``petrecon evaluate``: the lesion's host tissue 10-20 mm around it).

    Parameters
    ----------
    volume : np.ndarray
        ``(slices, rows, columns)`` SUV, float.
    lesion_mask, background_mask : np.ndarray
        Boolean, same shape, not empty.

    Returns
    -------
    dict
        ``tbr_max``, ``tbr_mean`` (``math.nan`` when the background mean is 0) and
        ``background_mean`` (SUV).

    Raises
    ------
    ValueError
        Shapes differ or a mask is empty.
    """
    _same_shape(volume, lesion_mask)
    _same_shape(volume, background_mask)
    if not lesion_mask.any() or not background_mask.any():
        raise ValueError("lesion and background masks must not be empty")
    lesion = volume[lesion_mask].astype(np.float64)
    background = float(volume[background_mask].astype(np.float64).mean())
    if background == 0:
        return {"tbr_max": math.nan, "tbr_mean": math.nan, "background_mean": background}
    return {
        "tbr_max": float(lesion.max()) / background,
        "tbr_mean": float(lesion.mean()) / background,
        "background_mean": background,
    }


@dataclass(frozen=True)
class NemaSphere:
    """A hot sphere of a NEMA NU 2 (IEC body) phantom, for :func:`nema_contrast_recovery`.

    Attributes
    ----------
    label : int
        The sphere's id in the label map.
    diameter_mm : float or None
        Inner diameter in mm; None: the equal-volume diameter of its labelled voxels.
    centre_index : tuple of float or None
        Centre as a continuous voxel index ``(i, j, k)`` = (column, row, slice), SimpleITK
        order; None: the centroid of its labelled voxels.
    """

    label: int
    diameter_mm: float | None = None
    centre_index: tuple[float, float, float] | None = None


def nema_contrast_recovery(
    volume: np.ndarray,
    labels: np.ndarray,
    spheres: Sequence[NemaSphere],
    background_mask: np.ndarray,
    true_ratio: float,
    spacing: tuple[float, float, float],
    *,
    rois_per_slice: int = NEMA_ROIS_PER_SLICE,
    slice_offsets_mm: Sequence[float] = NEMA_SLICE_OFFSETS_MM,
    edge_margin_mm: float = NEMA_EDGE_MARGIN_MM,
) -> dict[int, dict[str, float]]:
    """Hot-sphere contrast recovery and background variability, NEMA NU 2-2018 section 7.

    For sphere ``j`` of inner diameter ``d_j``:

    - ``C_H,j``: mean of a circular ROI of diameter ``d_j`` centred on the sphere, on the
      slice nearest its centre;
    - background ROIs: ``rois_per_slice`` positions on the central slice (the slice nearest
      the spheres' mean centre) where a disc of the largest sphere diameter plus
      ``edge_margin_mm`` all round lies inside ``background_mask`` (NEMA: 37 mm ROIs 15 mm
      from the phantom edge and from any sphere), spread by farthest-point sampling; the
      same positions on the slices nearest ``slice_offsets_mm`` (0, +-10, +-20 mm; a slice
      is skipped when it is outside the volume or no position fits on it and on the slices
      already used). Each position holds concentric ROIs of every sphere diameter;
    - ``C_B,j`` and ``SD_j``: mean and standard deviation (``ddof=1``) of the ``K`` ROI
      means of diameter ``d_j`` (NEMA: ``K = 60``);
    - contrast recovery ``CR_j = (C_H,j / C_B,j - 1) / (a_H / a_B - 1) * 100 %`` with
      ``a_H / a_B = true_ratio``; background variability ``BV_j = SD_j / C_B,j * 100 %``.

    Simplifications: an ROI is the set of voxels whose centres lie inside its circle (no
    partial-voxel weights); background ROI centres are voxel centres; the ROI positions are
    chosen automatically from the mask instead of by an operator.

    Parameters
    ----------
    volume : np.ndarray
        ``(slices, rows, columns)`` SUV (or any linear unit), float.
    labels : np.ndarray
        Integer label map, same shape (for centres and diameters not given).
    spheres : sequence of NemaSphere
        The hot spheres.
    background_mask : np.ndarray
        Boolean, same shape: the uniform background compartment (without spheres, walls
        and lung insert).
    true_ratio : float
        Sphere-to-background activity concentration ratio ``a_H / a_B`` (> 1).
    spacing : tuple of float
        ``(x, y, z)`` voxel spacing in mm.
    rois_per_slice : int
        Background ROI positions per slice (NEMA: 12).
    slice_offsets_mm : sequence of float
        Background slices relative to the central slice, mm.
    edge_margin_mm : float
        Smallest distance of a background ROI of the largest diameter from anything that is
        not background, mm.

    Returns
    -------
    dict
        ``{label: {"diameter_mm", "contrast_recovery_pct", "background_variability_pct",
        "hot_mean", "background_mean", "background_sd", "background_rois",
        "central_slice"}}``; ``background_variability_pct`` is ``math.nan`` with fewer than
        two ROIs.

    Raises
    ------
    ValueError
        ``true_ratio <= 1``, a sphere without voxels and without centre or diameter, no
        spheres, or no position on the central slice where a background ROI fits.
    """
    _same_shape(volume, labels)
    _same_shape(volume, background_mask)
    if not true_ratio > 1:
        raise ValueError(f"true_ratio must be > 1 for a contrast recovery, got {true_ratio}")
    if not spheres:
        raise ValueError("no spheres given")
    values = np.asarray(volume, dtype=np.float64)
    sx, sy, sz = (float(s) for s in spacing)
    resolved = [_resolve_sphere(sphere, labels, spacing) for sphere in spheres]
    n_slices = values.shape[0]
    central = int(np.clip(round(float(np.mean([c[2] for _, c in resolved]))), 0, n_slices - 1))

    largest = max(d for d, _ in resolved)
    fit_disc = _disc((sx, sy), largest / 2.0 + edge_margin_mm)
    used: list[int] = []
    candidates: np.ndarray | None = None
    for offset in slice_offsets_mm:
        k = central + round(offset / sz)
        if not 0 <= k < n_slices or k in used:
            continue
        fits = _disc_fits(background_mask[k], fit_disc)
        joint = fits if candidates is None else candidates & fits
        if k == central and not joint.any():
            raise ValueError(
                f"no position on slice {k} where a {largest:g} mm ROI keeps "
                f"{edge_margin_mm:g} mm inside the background")
        if joint.any():
            candidates = joint
            used.append(k)
    if candidates is None:
        raise ValueError(f"central slice {central} is not among the background slices")
    positions = _spread(np.argwhere(candidates), (sy, sx), rois_per_slice)

    results: dict[int, dict[str, float]] = {}
    for sphere, (diameter, centre) in zip(spheres, resolved, strict=True):
        k_hot = int(np.clip(round(centre[2]), 0, n_slices - 1))
        hot = _circle_mean(values[k_hot], (centre[1], centre[0]), diameter / 2.0, (sy, sx))
        disc = _disc((sx, sy), diameter / 2.0)
        offsets = np.argwhere(disc) - np.array(disc.shape) // 2
        rows = positions[:, 0:1] + offsets[None, :, 0]
        cols = positions[:, 1:2] + offsets[None, :, 1]
        means = np.concatenate([values[k][rows, cols].mean(axis=1) for k in used])
        background = float(means.mean())
        sd = float(means.std(ddof=1)) if means.size > 1 else math.nan
        results[sphere.label] = {
            "diameter_mm": diameter,
            "contrast_recovery_pct": (hot / background - 1.0) / (true_ratio - 1.0) * 100.0,
            "background_variability_pct": sd / background * 100.0,
            "hot_mean": hot,
            "background_mean": background,
            "background_sd": sd,
            "background_rois": int(means.size),
            "central_slice": central,
        }
    return results


def coefficient_of_variation(volume: np.ndarray, mask: np.ndarray) -> float:
    """Noise in a uniform region: ``SD / mean`` of the voxels in ``mask``.

    The population standard deviation (``ddof=0``) of the voxel values divided by their
    mean; dimensionless (0.1 = 10 %). It includes any true non-uniformity of the region,
    so the region should be uniform in the truth (phantom fill, liver, white matter).

    Parameters
    ----------
    volume : np.ndarray
        ``(slices, rows, columns)`` SUV, float.
    mask : np.ndarray
        Boolean, same shape, not empty.

    Returns
    -------
    float
        0 for a constant region; ``math.nan`` when the mean is 0.

    Raises
    ------
    ValueError
        Shapes differ or the mask is empty.
    """
    values = volume[_mask_or_all(mask, volume)].astype(np.float64)
    mean = float(values.mean())
    return float(values.std()) / mean if mean != 0 else math.nan


def noise_sigma(volume: np.ndarray, mask: np.ndarray) -> float:
    """Robust noise standard deviation of a volume, from its 3D high-pass residual.

    Each voxel minus the mean of its six face neighbours (edges replicated), a residual that
    smooth structure hardly enters; the median absolute deviation of the residuals in
    ``mask`` times 1.4826 (the normal distribution's SD per MAD) and divided by
    ``sqrt(7/6)``, so that white noise of SD ``sigma`` gives ``sigma`` (the residual of white
    noise has variance ``sigma**2 * (1 + 6/36)``). Edges and lesions are a minority of the
    body's voxels, so the median ignores them. Noise correlated between neighbours (an OSEM
    image's) gives less than its SD, by a factor set by the reconstruction: compare values
    of one reconstruction only.

    Parameters
    ----------
    volume : np.ndarray
        ``(slices, rows, columns)`` float, any linear unit (SUV, Bq/ml).
    mask : np.ndarray
        Boolean, same shape, not empty.

    Returns
    -------
    float
        The SD in the volume's unit; 0 for a smooth (linear) volume.

    Raises
    ------
    ValueError
        Shapes differ or the mask is empty.
    """
    mask = _mask_or_all(mask, volume)
    v = volume.astype(np.float64)
    p = np.pad(v, 1, mode="edge")
    neighbours = (p[:-2, 1:-1, 1:-1] + p[2:, 1:-1, 1:-1] + p[1:-1, :-2, 1:-1]
                  + p[1:-1, 2:, 1:-1] + p[1:-1, 1:-1, :-2] + p[1:-1, 1:-1, 2:]) / 6.0
    residual = (v - neighbours)[mask]
    mad = float(np.median(np.abs(residual - np.median(residual))))
    return 1.4826 * mad / math.sqrt(7.0 / 6.0)


def z_consistency(volume: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Slice-to-slice consistency: RMS second difference across slices over that in-plane.

    ``Z = RMS(v[k-1] - 2 v[k] + v[k+1]) / RMS(second differences along rows and columns)``
    in voxel units (no division by the spacing), each RMS over the voxels whose three-voxel
    stencil lies inside ``mask``; the in-plane RMS pools the row and column differences.

    For white noise, or any image whose correlations are the same along every voxel axis,
    ``Z`` is about 1. Slices processed independently (independent noise or errors per slice
    on top of in-plane smoothing) give ``Z > 1``; images smoother across slices than in plane
    give ``Z < 1``. Anatomy contributes too, so compare a prediction's ``Z`` with its
    reference's (``petrecon evaluate`` reports both and their ratio).

    Parameters
    ----------
    volume : np.ndarray
        ``(slices, rows, columns)`` SUV, float, at least 3 voxels along every axis.
    mask : np.ndarray, optional
        Boolean, same shape (default: everywhere).

    Returns
    -------
    float
        Dimensionless; ``math.nan`` when the volume has no in-plane second difference
        (constant inside the mask).

    Raises
    ------
    ValueError
        Fewer than 3 voxels along an axis, or no stencil inside the mask along z or in plane.
    """
    if volume.ndim != 3 or min(volume.shape) < 3:
        raise ValueError(f"z_consistency needs a 3D volume of at least 3^3, got {volume.shape}")
    mask = _mask_or_all(mask, volume)
    values = np.asarray(volume, dtype=np.float64)
    across = _second_differences(values, mask, 0)
    in_plane = np.concatenate([_second_differences(values, mask, 1),
                               _second_differences(values, mask, 2)])
    if across.size == 0 or in_plane.size == 0:
        raise ValueError("the mask holds no three-voxel stencil along z or in plane")
    rms_plane = math.sqrt(float(np.mean(in_plane * in_plane)))
    if rms_plane == 0:
        return math.nan
    return math.sqrt(float(np.mean(across * across))) / rms_plane


# --------------------------------------------------------------------------- helpers


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")


def _mask_or_all(mask: np.ndarray | None, volume: np.ndarray) -> np.ndarray:
    """``mask`` as bool after checking its shape, or all True; never empty."""
    if mask is None:
        return np.ones(volume.shape, dtype=bool)
    _same_shape(mask, volume)
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("the mask is empty")
    return mask


def _gaussian_window(volume: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """SSIM's Gaussian-weighted local mean along ``axes``, mirrored borders, float64."""
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / SSIM_SIGMA) ** 2)
    taps /= taps.sum()
    out = volume
    for axis in axes:
        n = out.shape[axis]
        widths = [(0, 0)] * out.ndim
        widths[axis] = (radius, radius)
        padded = np.pad(out, widths, mode="symmetric")
        acc = np.zeros(out.shape, dtype=np.float64)
        index = [slice(None)] * out.ndim
        for t, weight in enumerate(taps):
            index[axis] = slice(t, t + n)
            acc += weight * padded[tuple(index)]
        out = acc
    return out


def _ball(spacing: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    """Voxels whose centres lie within ``radius_mm`` of the centre voxel's, bool ``(z, y, x)``."""
    sx, sy, sz = (float(s) for s in spacing)
    axes = [np.arange(-int(radius_mm // s), int(radius_mm // s) + 1) * s for s in (sz, sy, sx)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return z * z + y * y + x * x <= radius_mm * radius_mm


def _local_mean(volume: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Mean of ``volume`` over ``kernel`` (odd-sized, symmetric) centred on each voxel.

    Only kernel voxels inside the volume count.
    """
    count = np.rint(_convolve(np.ones(volume.shape), kernel))
    return _convolve(volume, kernel) / count


def _convolve(array: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``array`` convolved with an odd-sized ``kernel``, same shape (zeros outside), float64.

    FFT of the zero-padded arrays, so the result is the linear (not circular) convolution.
    """
    axes = tuple(range(array.ndim))
    shape = [n + k - 1 for n, k in zip(array.shape, kernel.shape, strict=True)]
    product = (np.fft.rfftn(np.asarray(array, dtype=np.float64), shape, axes)
               * np.fft.rfftn(kernel.astype(np.float64), shape, axes))
    full = np.fft.irfftn(product, shape, axes)
    crop = tuple(slice(k // 2, k // 2 + n) for n, k in zip(array.shape, kernel.shape, strict=True))
    return full[crop]


def _second_differences(values: np.ndarray, mask: np.ndarray, axis: int) -> np.ndarray:
    """``v[i-1] - 2 v[i] + v[i+1]`` along ``axis`` where all three voxels are in ``mask``."""
    n = values.shape[axis]

    def part(array: np.ndarray, start: int) -> np.ndarray:
        index = [slice(None)] * 3
        index[axis] = slice(start, start + n - 2)
        return array[tuple(index)]

    diff = part(values, 0) - 2.0 * part(values, 1) + part(values, 2)
    inside = part(mask, 0) & part(mask, 1) & part(mask, 2)
    return diff[inside]


def _disc(spacing_xy: tuple[float, float], radius_mm: float) -> np.ndarray:
    """Pixels whose centres lie within ``radius_mm`` of the centre pixel's, bool ``(y, x)``."""
    sx, sy = spacing_xy
    y = np.arange(-int(radius_mm // sy), int(radius_mm // sy) + 1)[:, None] * sy
    x = np.arange(-int(radius_mm // sx), int(radius_mm // sx) + 1)[None, :] * sx
    return x * x + y * y <= radius_mm * radius_mm


def _disc_fits(region: np.ndarray, disc: np.ndarray) -> np.ndarray:
    """Pixels of a 2D ``region`` where ``disc`` centred there lies inside it (and the image)."""
    return np.rint(_convolve(region, disc)) >= int(disc.sum())


def _spread(candidates: np.ndarray, spacing_yx: tuple[float, float], count: int) -> np.ndarray:
    """Up to ``count`` of the ``(n, 2)`` pixel ``candidates``, by farthest-point sampling.

    Starts at the candidate nearest their centroid, then adds the candidate farthest (mm)
    from those chosen, so the positions spread over the whole region; deterministic.
    """
    points = candidates * np.asarray(spacing_yx, dtype=np.float64)
    first = int(np.argmin(((points - points.mean(axis=0)) ** 2).sum(axis=1)))
    chosen = [first]
    nearest = ((points - points[first]) ** 2).sum(axis=1)
    while len(chosen) < min(count, len(points)):
        best = int(np.argmax(nearest))
        if nearest[best] == 0:
            break
        chosen.append(best)
        nearest = np.minimum(nearest, ((points - points[best]) ** 2).sum(axis=1))
    return candidates[chosen]


def _circle_mean(plane: np.ndarray, centre_yx: tuple[float, float], radius_mm: float,
                 spacing_yx: tuple[float, float]) -> float:
    """Mean of the pixels of ``plane`` whose centres lie within a circle (the nearest if none)."""
    sy, sx = spacing_yx
    rows = (np.arange(plane.shape[0]) - centre_yx[0])[:, None] * sy
    cols = (np.arange(plane.shape[1]) - centre_yx[1])[None, :] * sx
    distance = rows * rows + cols * cols
    inside = distance <= radius_mm * radius_mm
    if not inside.any():
        inside = distance == distance.min()
    return float(plane[inside].mean())


def _resolve_sphere(sphere: NemaSphere, labels: np.ndarray,
                    spacing: tuple[float, float, float]) -> tuple[float, tuple[float, ...]]:
    """Diameter (mm) and centre index ``(i, j, k)``, from the labels where not given."""
    diameter, centre = sphere.diameter_mm, sphere.centre_index
    if diameter is None or centre is None:
        voxels = np.argwhere(labels == sphere.label)
        if voxels.size == 0:
            raise ValueError(f"sphere {sphere.label} has no voxels and no centre or diameter")
        if centre is None:
            k, j, i = voxels.mean(axis=0)
            centre = (float(i), float(j), float(k))
        if diameter is None:
            volume_mm3 = len(voxels) * float(np.prod(spacing))
            diameter = (6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0)
    return float(diameter), tuple(float(c) for c in centre)
