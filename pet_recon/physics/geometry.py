"""Image and sinogram geometry for the 2D parallel-beam PET model.

petrecon models each direct plane of a PET scanner as a 2D parallel-beam Radon transform
(the geometry of a 2D-rebinned, arc-corrected sinogram). The sinogram of one plane has
``n_views`` projection angles uniformly covering [0, 180) degrees plus ``view_offset_deg``,
and ``n_bins`` tangential bins of width ``bin_mm`` centred on the scanner axis.

Array conventions
-----------------
- Image: ``(planes, ny, nx)``, pixel ``[p, j, i]`` centred at
  ``x = (i - (nx - 1) / 2) * pixel_mm``, ``y = (j - (ny - 1) / 2) * pixel_mm``.
- Sinogram: ``(planes, views, bins)``; bin ``b`` is centred at
  ``s = (b - (n_bins - 1) / 2) * bin_mm`` and view ``v`` at angle
  ``phi_v = view_offset + v * pi / n_views``; a line of response is the set of points with
  ``x cos(phi) + y sin(phi) = s`` (STIR's tangential coordinate convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageGeometry:
    """Image grid of the projector.

    Attributes
    ----------
    nx, ny : int
        Matrix size (columns, rows).
    pixel_mm : float
        Square pixel size in mm.
    n_planes : int
        Number of transaxial planes (slices).
    plane_mm : float
        Plane (slice) spacing in mm.
    """

    nx: int
    ny: int
    pixel_mm: float
    n_planes: int = 1
    plane_mm: float = 2.0

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(planes, ny, nx)``."""
        return (self.n_planes, self.ny, self.nx)

    @property
    def voxel_ml(self) -> float:
        """Voxel volume in millilitres (cm^3)."""
        return self.pixel_mm * self.pixel_mm * self.plane_mm / 1000.0

    def x_mm(self) -> np.ndarray:
        """Pixel-centre x coordinates, shape ``(nx,)``, float64, mm."""
        return (np.arange(self.nx) - (self.nx - 1) / 2.0) * self.pixel_mm

    def y_mm(self) -> np.ndarray:
        """Pixel-centre y coordinates, shape ``(ny,)``, float64, mm."""
        return (np.arange(self.ny) - (self.ny - 1) / 2.0) * self.pixel_mm

    def z_mm(self) -> np.ndarray:
        """Plane-centre z coordinates, shape ``(n_planes,)``, float64, mm."""
        return (np.arange(self.n_planes) - (self.n_planes - 1) / 2.0) * self.plane_mm


@dataclass(frozen=True)
class SinogramGeometry:
    """Sinogram of a set of direct planes.

    Attributes
    ----------
    n_views : int
        Projection angles over 180 degrees.
    n_bins : int
        Tangential bins.
    bin_mm : float
        Tangential bin size in mm (STIR's "effective central bin size").
    n_planes : int
        Direct (segment 0) planes.
    plane_mm : float
        Plane spacing in mm (half the ring spacing for a scanner with oblique planes).
    view_offset_deg : float
        Angle of view 0 in degrees.
    arc_corrected : bool
        Whether the tangential bins are uniformly spaced (petrecon's projector assumes so).
    """

    n_views: int
    n_bins: int
    bin_mm: float
    n_planes: int = 1
    plane_mm: float = 2.0
    view_offset_deg: float = 0.0
    arc_corrected: bool = True

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(planes, views, bins)``."""
        return (self.n_planes, self.n_views, self.n_bins)

    def angles_rad(self) -> np.ndarray:
        """View angles, shape ``(n_views,)``, float64, radians in [offset, offset + pi)."""
        return math.radians(self.view_offset_deg) + np.arange(self.n_views) * math.pi / self.n_views

    def bins_mm(self) -> np.ndarray:
        """Tangential bin centres, shape ``(n_bins,)``, float64, mm."""
        return (np.arange(self.n_bins) - (self.n_bins - 1) / 2.0) * self.bin_mm

    @classmethod
    def for_image(cls, image: ImageGeometry, n_views: int | None = None) -> SinogramGeometry:
        """A sinogram that covers ``image``: bins of one pixel spanning its diagonal."""
        n_bins = int(math.ceil(math.hypot(image.nx, image.ny))) | 1  # odd: a bin on the axis
        if n_views is None:
            n_views = int(math.ceil(max(image.nx, image.ny) * math.pi / 2))
        return cls(
            n_views=n_views,
            n_bins=n_bins,
            bin_mm=image.pixel_mm,
            n_planes=image.n_planes,
            plane_mm=image.plane_mm,
        )
