"""Image-quality and quantitation metrics on SUV volumes.

Definitions are in ``docs/metrics.md`` (the evaluation issue extends this module).
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk


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
