"""The simulator: counts, Poisson thinning, OSEM calibration, noise and SUV of its DICOM."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pet_recon.inspect import inspect_meta
from pet_recon.io.series import read_series
from pet_recon.physics.geometry import ImageGeometry, SinogramGeometry
from pet_recon.physics.phantoms import Label
from pet_recon.physics.projector import SystemModel, attenuation_factors
from pet_recon.physics.simulate import (
    FAMILY_RECON,
    SCANNERS,
    calibration_scale,
    dose_levels,
    frame_decay_average,
    noise_free_image,
    reconstruct_levels,
    simulate_case,
    write_case,
)

CPU = torch.device("cpu")
SCANNER = SCANNERS[0]


def _cylinder(image: ImageGeometry, radius_mm: float) -> np.ndarray:
    x, y = np.meshgrid(image.x_mm(), image.y_mm())
    disc = (x**2 + y**2 <= radius_mm**2).astype(np.float32)
    return np.broadcast_to(disc, image.shape).copy()


def _cylinder_model(
    image: ImageGeometry, frame_s: float
) -> tuple[SystemModel, torch.Tensor, np.ndarray]:
    sino = SinogramGeometry.for_image(image)
    disc = _cylinder(image, 80.0)
    att = attenuation_factors(torch.from_numpy(0.096 * disc), image, sino)
    model = SystemModel(image, sino, device=CPU, fwhm_mm=SCANNER.fwhm_mm, attenuation=att,
                        scale=calibration_scale(sino, SCANNER, frame_s))
    return model, att, disc


def test_dose_levels_have_poisson_mean_and_variance() -> None:
    expected = torch.full((400, 500), 40.0)
    levels = dose_levels(expected, (4, 20), torch.Generator().manual_seed(0))
    for k in (1, 4, 20):
        y = levels[k].double()
        assert float(y.mean()) == pytest.approx(40.0 / k, rel=0.01)
        assert float(y.var()) == pytest.approx(40.0 / k, rel=0.03)
    assert bool((levels[20] <= levels[1]).all()) and bool((levels[4] <= levels[1]).all())


def test_dose_levels_nested_subsets_share_counts() -> None:
    expected = torch.full((400, 500), 40.0)
    levels = dose_levels(expected, (20, 4, 10), torch.Generator().manual_seed(3))
    assert bool((levels[20] <= levels[10]).all()) and bool((levels[10] <= levels[4]).all())
    y4, y20 = levels[4].double(), levels[20].double()
    # Nested: y_4 = y_20 + an independent Poisson remainder, so Cov(y_4, y_20) = Var(y_20)
    # = 40/20; thinning both from y_1 independently would give 40/(4*20) = 0.5.
    cov = float(((y4 - y4.mean()) * (y20 - y20.mean())).mean())
    assert cov == pytest.approx(40.0 / 20, rel=0.05)


def test_expected_counts_scale_linearly_with_activity_and_frame_time() -> None:
    image = ImageGeometry(nx=32, ny=32, pixel_mm=4.0, n_planes=2, plane_mm=3.0)
    x = torch.from_numpy(5000.0 * _cylinder(image, 40.0))
    short, _, _ = _cylinder_model(image, 60.0)
    long, _, _ = _cylinder_model(image, 120.0)
    total = float(short.forward(x).double().sum())
    assert float(short.forward(2 * x).double().sum()) == pytest.approx(2 * total, rel=1e-4)
    ratio = 2 * frame_decay_average(120.0) / frame_decay_average(60.0)
    assert float(long.forward(x).double().sum()) == pytest.approx(ratio * total, rel=1e-4)


def test_calibration_point_source_counts_match_sensitivity() -> None:
    image = ImageGeometry(nx=33, ny=33, pixel_mm=4.0, n_planes=1, plane_mm=3.0)
    sino = SinogramGeometry.for_image(image)
    model = SystemModel(image, sino, device=CPU, scale=calibration_scale(sino, SCANNER, 100.0))
    q_bq = 1e6
    x = torch.zeros(image.shape)
    x[0, 16, 16] = q_bq / (image.voxel_ml)  # Bq/ml in one voxel holding q Bq
    expected = SCANNER.sensitivity_cps_per_kbq / 1000 * q_bq * 100.0 * frame_decay_average(100.0)
    assert float(model.forward(x).sum()) == pytest.approx(expected, rel=1e-4)


def test_osem_uniform_cylinder_recovers_concentration_at_high_counts() -> None:
    image = ImageGeometry(nx=64, ny=64, pixel_mm=4.0, n_planes=4, plane_mm=3.0)
    model, att, disc = _cylinder_model(image, 3000.0)
    truth = torch.from_numpy(5000.0 * disc)
    trues = model.forward(truth)
    background = 0.2 * trues.mean() * (att < 0.999).float()
    prompts = dose_levels(trues + background, (), torch.Generator().manual_seed(1))
    image_fd = reconstruct_levels(prompts, model, background, FAMILY_RECON["body"])[1]
    x, y = np.meshgrid(image.x_mm(), image.y_mm())
    roi = x**2 + y**2 <= 50.0**2
    assert float(image_fd[:, roi].mean()) == pytest.approx(5000.0, rel=0.03)


def test_image_noise_grows_with_drf_as_counts_predict() -> None:
    image = ImageGeometry(nx=64, ny=64, pixel_mm=4.0, n_planes=4, plane_mm=3.0)
    model, att, disc = _cylinder_model(image, 120.0)
    trues = model.forward(torch.from_numpy(5000.0 * disc))
    background = 0.2 * trues.mean() * (att < 0.999).float()
    prompts = dose_levels(trues + background, (4, 20), torch.Generator().manual_seed(2))
    images = reconstruct_levels(prompts, model, background, FAMILY_RECON["body"])
    x, y = np.meshgrid(image.x_mm(), image.y_mm())
    roi = x**2 + y**2 <= 50.0**2
    cv = {k: float(images[k][:, roi].std() / images[k][:, roi].mean()) for k in (4, 20)}
    # Counts fall 5x from DRF 4 to DRF 20: the noise should grow about sqrt(5) = 2.24x.
    assert cv[20] / cv[4] == pytest.approx(math.sqrt(5.0), rel=0.25)


@pytest.fixture(scope="module")
def nema_case_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    case = simulate_case("nema", 7, matrix=64, slices=16, drfs=(20,), device=CPU)
    out = tmp_path_factory.mktemp("sim") / case.case_id
    write_case(case, out)
    return out


def test_simulate_dicom_gives_true_suv_of_uniform_region(nema_case_dir: Path) -> None:
    labels = sitk.ReadImage(str(nema_case_dir / "labels.mha"))
    fill = sitk.Cast(labels == int(Label.PHANTOM_FILL), sitk.sitkUInt8)
    # Uniform background: the fill region away from its edges and from the spheres.
    region = sitk.GetArrayFromImage(sitk.BinaryErode(fill, (3, 3, 1))) > 0
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(nema_case_dir / "truth.mha")))
    record = json.loads((nema_case_dir / "case.json").read_text())
    true_suv = float(truth[region].mean()) * record["suv_factor"]["1"]
    for name in ("fd", "ld_drf20"):
        report = inspect_meta(nema_case_dir / name)[0]
        volume, _ = read_series(nema_case_dir / name)
        measured = float(volume[region].mean()) * report["suv_factor"]
        assert measured == pytest.approx(true_suv, rel=0.05)


def test_write_case_layout(nema_case_dir: Path) -> None:
    names = {p.name for p in nema_case_dir.iterdir()}
    assert {"fd", "ld_drf20", "mr", "ct", "sino", "truth.mha", "mu.mha", "ct.mha", "mr.mha",
            "labels.mha", "case.json"} <= names
    sino = {p.name for p in (nema_case_dir / "sino").iterdir()}
    assert {"fd.hs", "fd.s", "ld_drf20.hs", "attenuation.hs", "background_fd.hs"} <= sino


def test_noise_free_image_keeps_the_mean_and_removes_the_noise() -> None:
    case = simulate_case("nema", 3, matrix=32, slices=3, drfs=(20,), device=CPU)
    clean, noisy = noise_free_image(case, CPU), case.images[1]
    assert clean.shape == noisy.shape and clean.dtype == np.float32
    fill = sitk.GetImageFromArray((case.phantom.labels == int(Label.PHANTOM_FILL))
                                  .astype(np.uint8))
    region = sitk.GetArrayFromImage(sitk.BinaryErode(fill, (2, 2, 0))) > 0  # off the edges
    assert float(clean[region].mean()) == pytest.approx(float(noisy[region].mean()), rel=0.03)
    # Without noise the fill is smooth: its spread is that of the expected image only.
    spread = {name: float(v[region].std() / v[region].mean())
              for name, v in (("clean", clean), ("noisy", noisy))}
    assert spread["clean"] < 0.5 * spread["noisy"]
