"""Tests of OSEM / MLEM reconstruction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pet_recon.physics.geometry import ImageGeometry, SinogramGeometry
from pet_recon.physics.osem import osem, poisson_log_likelihood
from pet_recon.physics.projector import (
    SystemModel,
    attenuation_factors,
    count_scale,
    gaussian_blur,
)

CPU = torch.device("cpu")
F64 = torch.float64
IMAGE = ImageGeometry(nx=48, ny=48, pixel_mm=4.0, n_planes=2, plane_mm=3.0)
SINO = SinogramGeometry.for_image(IMAGE, n_views=48)
CONCENTRATION = 5000.0  # Bq/ml
RADIUS_MM = 80.0


def cylinder(radius_mm: float, supersample: int = 4) -> torch.Tensor:
    """Uniform cylinder of value 1 along the planes, float64, shape IMAGE.shape."""
    offsets = ((np.arange(supersample) + 0.5) / supersample - 0.5) * IMAGE.pixel_mm
    x = IMAGE.x_mm()[None, :, None, None] + offsets[None, None, None, :]
    y = IMAGE.y_mm()[:, None, None, None] + offsets[None, None, :, None]
    inside = torch.from_numpy((x**2 + y**2 <= radius_mm**2).mean(axis=(2, 3)))
    return inside.expand(IMAGE.n_planes, -1, -1).clone()


def central_roi_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the pixels within 40 mm of the axis, per plane."""
    r2 = IMAGE.x_mm()[None, :] ** 2 + IMAGE.y_mm()[:, None] ** 2
    roi = torch.from_numpy(r2 <= 40.0**2)
    return x[..., roi].mean(dim=-1)


@pytest.fixture(scope="module")
def model() -> SystemModel:
    """Water cylinder with attenuation, PSF, normalisation and a 1 min, 1 % sensitivity scan."""
    gen = torch.Generator().manual_seed(3)
    return SystemModel(
        IMAGE,
        SINO,
        device=CPU,
        dtype=F64,
        fwhm_mm=6.0,
        axial_fwhm_mm=6.0,
        attenuation=attenuation_factors(0.096 * cylinder(RADIUS_MM), IMAGE, SINO),
        normalisation=0.9 + 0.2 * torch.rand(SINO.shape, generator=gen, dtype=F64),
        scale=count_scale(SINO, sensitivity_cps_per_bq=0.01, duration_s=60.0),
    )


def with_background(model: SystemModel, background: torch.Tensor) -> SystemModel:
    """The same model plus an additive background."""
    return SystemModel(
        IMAGE,
        SINO,
        device=CPU,
        dtype=F64,
        fwhm_mm=model.fwhm_mm,
        axial_fwhm_mm=model.axial_fwhm_mm,
        attenuation=model.attenuation,
        normalisation=model.normalisation,
        background=background,
        scale=model.scale,
    )


def test_osem_uniform_cylinder_with_attenuation_recovers_concentration(model) -> None:
    counts = model.forward(CONCENTRATION * cylinder(RADIUS_MM))
    x = osem(counts, model, iterations=4, subsets=8)
    assert x.shape == IMAGE.shape and x.dtype == F64
    assert torch.allclose(
        central_roi_mean(x), torch.full((2,), CONCENTRATION, dtype=F64), rtol=0.03
    )


def test_osem_with_background_recovers_concentration(model) -> None:
    background = (
        torch.full(SINO.shape, 0.3, dtype=F64)
        * model.forward(CONCENTRATION * cylinder(RADIUS_MM)).mean()
    )
    bg_model = with_background(model, background)
    counts = bg_model.expected(CONCENTRATION * cylinder(RADIUS_MM))
    x = osem(counts, bg_model, iterations=4, subsets=8)
    assert torch.allclose(
        central_roi_mean(x), torch.full((2,), CONCENTRATION, dtype=F64), rtol=0.03
    )


def test_mlem_log_likelihood_increases_monotonically(model) -> None:
    truth = CONCENTRATION * cylinder(RADIUS_MM)
    truth[:, 20:26, 14:20] *= 3.0
    bg_model = with_background(model, torch.full(SINO.shape[1:], 2.0, dtype=F64))
    counts = torch.poisson(bg_model.expected(truth), generator=torch.Generator().manual_seed(5))
    x = osem(counts, bg_model, iterations=1, subsets=1)
    previous = poisson_log_likelihood(counts, bg_model.expected(x))
    for _ in range(8):
        x = osem(counts, bg_model, iterations=1, subsets=1, x0=x)
        current = poisson_log_likelihood(counts, bg_model.expected(x))
        assert torch.all(current >= previous - 1e-9 * previous.abs())
        previous = current
    assert bool((x >= 0).all())


def test_osem_one_subset_equals_mlem(model) -> None:
    counts = model.forward(CONCENTRATION * cylinder(RADIUS_MM))
    x0 = torch.full(IMAGE.shape, 1000.0, dtype=F64)
    sensitivity = model.adjoint(torch.ones_like(counts))
    x = x0
    for _ in range(3):  # Shepp & Vardi (1982)
        ratio = counts / model.expected(x)
        x = torch.where(sensitivity > 0, x * model.adjoint(ratio) / sensitivity, x)
    assert torch.allclose(osem(counts, model, iterations=3, subsets=1, x0=x0), x, rtol=1e-10)


def test_osem_batch_equals_separate_reconstructions(model) -> None:
    counts = model.forward(CONCENTRATION * cylinder(RADIUS_MM))
    batch = torch.stack([counts, 0.5 * counts])
    together = osem(batch, model, iterations=1, subsets=4, postfilter_fwhm_mm=5.0)
    single = osem(0.5 * counts, model, iterations=1, subsets=4)
    filtered = gaussian_blur(single, IMAGE, 5.0, 5.0) / gaussian_blur(
        torch.ones(IMAGE.shape, dtype=F64), IMAGE, 5.0, 5.0
    )
    assert together.shape == (2, *IMAGE.shape)
    assert torch.allclose(together[1], filtered, rtol=1e-10)


def test_osem_float32_is_calibrated_without_psf() -> None:
    plain = SystemModel(IMAGE, SINO, device=CPU, scale=count_scale(SINO, 0.02, 120.0))
    counts = plain.forward((CONCENTRATION * cylinder(RADIUS_MM)).float())
    x = osem(counts, plain, iterations=3, subsets=8)
    assert x.dtype == torch.float32
    expected = torch.full((2,), CONCENTRATION)
    assert torch.allclose(central_roi_mean(x), expected, rtol=0.03)


def test_osem_postfilter_keeps_uniform_concentration(model) -> None:
    counts = model.forward(CONCENTRATION * cylinder(RADIUS_MM))
    x = osem(counts, model, iterations=4, subsets=8, postfilter_fwhm_mm=8.0)
    expected = torch.full((2,), CONCENTRATION, dtype=F64)
    assert torch.allclose(central_roi_mean(x), expected, rtol=0.03)


def test_osem_mismatched_shapes_raise_value_error(model) -> None:
    counts = torch.ones(SINO.shape, dtype=F64)
    with pytest.raises(ValueError, match="sinogram tensor must have shape"):
        osem(torch.ones(2, 48, 7), model)
    with pytest.raises(ValueError, match=r"x0 must have shape \(2, 48, 48\)"):
        osem(counts, model, x0=torch.ones(1, 48, 48))
    with pytest.raises(ValueError, match="subsets"):
        osem(counts, model, subsets=49)
    with pytest.raises(ValueError, match="negative counts"):
        osem(-counts, model)
    batched = with_background(model, torch.ones((3, *SINO.shape), dtype=F64))
    with pytest.raises(ValueError, match="background of shape .* does not broadcast"):
        osem(torch.ones((2, *SINO.shape), dtype=F64), batched)
    with pytest.raises(ValueError, match="differ in shape"):
        poisson_log_likelihood(counts, counts[0])
