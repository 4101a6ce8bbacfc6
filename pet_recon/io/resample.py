"""A volume moved from one voxel grid onto another (SimpleITK), with anti-aliasing.

Used for the PET itself (to the model's grid and back, :mod:`pet_recon.pipeline`) and for an
anatomical image brought onto the PET grid (:mod:`pet_recon.io.anatomy`).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from pet_recon.io.metadata import VolumeGeometry

ANTIALIAS_SIGMA = 0.4
"""Standard deviation of the anti-aliasing Gaussian, in target voxels along each source axis."""
ANTIALIAS_RATIO = 1.2
"""The Gaussian is applied along a source axis whose target spacing exceeds this many voxels."""


def antialias_variance(source: VolumeGeometry, target: VolumeGeometry) -> list[float]:
    """Gaussian variance (mm^2) along each source axis (x, y, z) before resampling.

    The target spacing along source axis ``a`` is ``sqrt(sum_j ((a . t_j) s_j)^2)`` over the
    target axes ``t_j`` with spacings ``s_j`` (exact for aligned grids); where it exceeds
    :data:`ANTIALIAS_RATIO` source voxels, the variance is ``(ANTIALIAS_SIGMA x it)^2``,
    else 0 (no smoothing along that axis, e.g. along z for the same slices).
    """
    a = np.asarray(source.direction, dtype=float).reshape(3, 3)
    t = np.asarray(target.direction, dtype=float).reshape(3, 3)
    target_spacing = np.asarray(target.spacing, dtype=float)
    along = np.sqrt((((a.T @ t) * target_spacing[None, :]) ** 2).sum(axis=1))
    own = np.asarray(source.spacing, dtype=float)
    return [float((ANTIALIAS_SIGMA * s_t) ** 2) if s_t > ANTIALIAS_RATIO * s else 0.0
            for s_t, s in zip(along, own, strict=True)]


def resample_volume(volume: np.ndarray, source: VolumeGeometry, target: VolumeGeometry,
                    transform: sitk.Transform | None = None, default: float = 0.0
                    ) -> np.ndarray:
    """Trilinear resampling of ``volume`` (on ``source``) onto ``target``.

    Parameters
    ----------
    volume : np.ndarray
        ``source.shape`` ``(slices, rows, columns)``, any real dtype and unit.
    source, target : VolumeGeometry
        The grids, in LPS mm.
    transform : SimpleITK.Transform, optional
        Target physical point -> source physical point (SimpleITK's convention); identity
        (the headers' positions) when None.
    default : float
        Value of target voxels outside the source.

    Returns
    -------
    np.ndarray
        float32, ``target.shape``, same unit; smoothed first by :func:`antialias_variance`
        where the target is coarser.
    """
    image = source.to_sitk(np.asarray(volume, dtype=np.float32))
    variance = antialias_variance(source, target)
    if any(v > 0 for v in variance):
        image = sitk.DiscreteGaussian(image, variance, useImageSpacing=True)
    reference = target.to_sitk(np.zeros(target.shape, np.float32))
    out = sitk.Resample(image, reference, sitk.Transform() if transform is None else transform,
                        sitk.sitkLinear, float(default), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out).astype(np.float32, copy=False)
