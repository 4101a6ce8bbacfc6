"""Tests of the strip-area projector, the system model and the attenuation factors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pet_recon.physics.geometry import ImageGeometry, SinogramGeometry
from pet_recon.physics.projector import (
    ParallelProjector,
    SystemModel,
    attenuation_factors,
    count_scale,
    gaussian_blur,
    system_matrix,
)

CPU = torch.device("cpu")
F64 = torch.float64


def disc(image: ImageGeometry, radius_mm: float, supersample: int = 8) -> torch.Tensor:
    """Centred disc of value 1 with pixel-area fractions at the edge, shape (planes, ny, nx)."""
    offsets = ((np.arange(supersample) + 0.5) / supersample - 0.5) * image.pixel_mm
    x = image.x_mm()[None, :, None, None] + offsets[None, None, None, :]
    y = image.y_mm()[:, None, None, None] + offsets[None, None, :, None]
    inside = (x**2 + y**2 <= radius_mm**2).mean(axis=(2, 3))
    return torch.from_numpy(inside).expand(image.n_planes, -1, -1).clone()


@pytest.fixture(scope="module")
def geometries() -> tuple[ImageGeometry, SinogramGeometry]:
    image = ImageGeometry(nx=64, ny=64, pixel_mm=2.0, n_planes=1)
    return image, SinogramGeometry.for_image(image, n_views=48)


def test_projector_adjoint_identity_random_inputs() -> None:
    image = ImageGeometry(nx=33, ny=29, pixel_mm=2.5, n_planes=3)
    sino = SinogramGeometry(n_views=24, n_bins=41, bin_mm=2.0, n_planes=3, view_offset_deg=3.0)
    projector = ParallelProjector(image, sino, device=CPU, dtype=F64)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((2, *image.shape), generator=gen, dtype=F64)
    for views in (None, slice(1, None, 5)):
        y = torch.rand((2, 3, projector.n_views(views), 41), generator=gen, dtype=F64)
        lhs = torch.sum(projector.forward(x, views) * y)
        rhs = torch.sum(x * projector.adjoint(y, views))
        assert abs(lhs - rhs) <= 1e-10 * abs(lhs)


def test_system_model_adjoint_identity_with_resolution_attenuation_normalisation() -> None:
    image = ImageGeometry(nx=32, ny=32, pixel_mm=3.0, n_planes=4, plane_mm=2.5)
    sino = SinogramGeometry.for_image(image, n_views=20)
    gen = torch.Generator().manual_seed(1)
    mu = 0.096 * torch.rand(image.shape, generator=gen, dtype=F64)
    model = SystemModel(
        image,
        sino,
        device=CPU,
        dtype=F64,
        fwhm_mm=6.0,
        axial_fwhm_mm=5.0,
        attenuation=attenuation_factors(mu, image, sino),
        normalisation=0.8 + 0.4 * torch.rand(sino.shape[1:], generator=gen, dtype=F64),
        background=torch.full(sino.shape, 3.0, dtype=F64),
        scale=0.37,
    )
    x = torch.rand((2, *image.shape), generator=gen, dtype=F64)
    for views in (None, slice(2, None, 4)):
        y = torch.rand((2, 4, model.projector.n_views(views), sino.n_bins), generator=gen)
        lhs = torch.sum(model.forward(x, views) * y.double())
        rhs = torch.sum(x * model.adjoint(y, views))
        assert abs(lhs - rhs) <= 1e-10 * abs(lhs)
        background = model.expected(x, views) - model.forward(x, views)
        assert torch.allclose(background, torch.full_like(background, 3.0))


def test_projector_uniform_disc_matches_chord_length(geometries) -> None:
    image, sino = geometries
    radius = 50.0
    proj = ParallelProjector(image, sino, device=CPU, dtype=F64).forward(disc(image, radius))[0]
    s = torch.from_numpy(sino.bins_mm())
    chord = 2.0 * torch.sqrt((radius**2 - s**2).clamp_min(0.0))
    inner = s.abs() <= 0.8 * radius
    assert torch.allclose(proj[:, inner], chord[inner].expand_as(proj[:, inner]), rtol=0.01)
    assert torch.all(proj[:, s.abs() > radius + 2 * image.pixel_mm] == 0)


def test_projector_point_source_is_sinusoid(geometries) -> None:
    image, sino = geometries
    point = torch.zeros(image.shape, dtype=F64)
    j, i = 40, 17
    point[0, j, i] = 1.0
    proj = ParallelProjector(image, sino, device=CPU, dtype=F64).forward(point)[0]
    s = torch.from_numpy(sino.bins_mm())
    phi = torch.from_numpy(sino.angles_rad())
    expected = image.x_mm()[i] * torch.cos(phi) + image.y_mm()[j] * torch.sin(phi)
    centroid = (proj * s).sum(dim=1) / proj.sum(dim=1)
    assert torch.allclose(centroid, expected, atol=0.1 * sino.bin_mm)
    # Each view holds the pixel's area over the bin width (area-conserving strips).
    view_sums = proj.sum(dim=1)
    assert torch.allclose(view_sums, torch.full_like(view_sums, image.pixel_mm**2 / sino.bin_mm))


def test_attenuation_factors_water_cylinder_match_exp_mu_chord(geometries) -> None:
    image, sino = geometries
    radius = 55.0
    factors = attenuation_factors(0.096 * disc(image, radius), image, sino)[0]
    s = torch.from_numpy(sino.bins_mm())
    chord_cm = 0.2 * torch.sqrt((radius**2 - s**2).clamp_min(0.0))
    expected = torch.exp(-0.096 * chord_cm).expand_as(factors)
    inner = s.abs() <= 0.9 * radius
    assert torch.allclose(factors[:, inner], expected[:, inner], rtol=0.01)
    assert factors.shape == sino.shape[1:] and factors.dtype == F64


def test_count_scale_point_source_total_counts(geometries) -> None:
    image, sino = geometries
    sensitivity, duration, activity_bq = 0.01, 300.0, 1.0e6
    model = SystemModel(
        image, sino, device=CPU, dtype=F64, scale=count_scale(sino, sensitivity, duration)
    )
    point = torch.zeros(image.shape, dtype=F64)
    point[0, 30, 35] = activity_bq / image.voxel_ml  # Bq/ml
    total = model.forward(point).sum().item()
    assert total == pytest.approx(sensitivity * duration * activity_bq, rel=1e-9)


def test_gaussian_blur_has_requested_fwhm_and_keeps_counts() -> None:
    image = ImageGeometry(nx=41, ny=41, pixel_mm=1.0, n_planes=21, plane_mm=2.0)
    point = torch.zeros(image.shape, dtype=F64)
    point[10, 20, 20] = 1.0
    blurred = gaussian_blur(point, image, fwhm_mm=6.0, axial_fwhm_mm=8.0)
    assert blurred.sum().item() == pytest.approx(1.0, rel=1e-12)
    coords = torch.from_numpy(image.x_mm())
    var_x = (blurred.sum(dim=(0, 1)) * coords**2).sum().item()
    var_z = (blurred.sum(dim=(1, 2)) * (torch.arange(21.0, dtype=F64) - 10) ** 2).sum().item()
    # Pixel-integrated kernel: variance of the Gaussian plus that of a box of one sample.
    sigma_per_fwhm = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    assert var_x == pytest.approx((6.0 * sigma_per_fwhm) ** 2 + 1.0 / 12.0, rel=0.01)
    assert var_z * 4.0 == pytest.approx((8.0 * sigma_per_fwhm) ** 2 + 4.0 / 12.0, rel=0.01)


def test_system_matrix_cached_per_geometry_and_device(geometries) -> None:
    image, sino = geometries
    first = system_matrix(image, sino, device=CPU, views=slice(0, None, 4))
    again = system_matrix(image, sino, device=torch.device("cpu"), views=slice(0, 48, 4))
    assert first is again
    assert first.layout == torch.sparse_csr and first.dtype == torch.float32
    assert first.shape == (12 * sino.n_bins, image.ny * image.nx)


def test_projector_mismatched_shapes_raise_value_error(geometries) -> None:
    image, sino = geometries
    projector = ParallelProjector(image, sino, device=CPU)
    with pytest.raises(ValueError, match=r"image tensor must have shape \(planes, ny, nx\)"):
        projector.forward(torch.zeros(1, 64, 63))
    with pytest.raises(ValueError, match="sinogram tensor must have shape"):
        projector.adjoint(torch.zeros(sino.shape), views=slice(0, None, 2))
    with pytest.raises(ValueError, match="image has 2 planes but sinogram has 1"):
        ParallelProjector(ImageGeometry(64, 64, 2.0, n_planes=2), sino, device=CPU)
    with pytest.raises(ValueError, match="attenuation must have shape"):
        SystemModel(image, sino, device=CPU, attenuation=torch.ones(sino.n_views, 7))
    with pytest.raises(ValueError, match="background must be >= 0"):
        SystemModel(image, sino, device=CPU, background=-torch.ones(sino.shape))
    with pytest.raises(ValueError, match="at least one view with a positive step"):
        projector.forward(torch.zeros(image.shape), views=slice(None, None, -1))
    model = SystemModel(image, sino, device=CPU, background=torch.ones((3, *sino.shape)))
    with pytest.raises(ValueError, match="background of shape .* does not broadcast"):
        model.expected(torch.ones((2, *image.shape)))
