"""Metrics of ``pet_recon.metrics`` on volumes with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from pet_recon.metrics import (
    SUV_PEAK_RADIUS_MM,
    NemaSphere,
    body_mask,
    coefficient_of_variation,
    nema_contrast_recovery,
    noise_sigma,
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

FILL = int(Label.PHANTOM_FILL)


def _random_volume(seed: int, shape: tuple[int, int, int] = (12, 24, 20)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 5.0, size=shape)


def _centre_distance_mm(shape: tuple[int, int, int], spacing: tuple[float, float, float],
                        centre: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm) of every voxel centre ``(k, j, i)`` from ``centre`` = (x, y, z) index."""
    k, j, i = np.indices(shape, dtype=np.float64)
    return np.sqrt(((i - centre[0]) * spacing[0]) ** 2 + ((j - centre[1]) * spacing[1]) ** 2
                   + ((k - centre[2]) * spacing[2]) ** 2)


def _lattice_count(spacing: tuple[float, float, float], radius_mm: float,
                   nonnegative: bool = False) -> int:
    """Voxel offsets whose centres lie within ``radius_mm`` (brute force)."""
    reach = [int(radius_mm / s) + 1 for s in spacing]
    count = 0
    for a in range(-reach[0], reach[0] + 1):
        for b in range(-reach[1], reach[1] + 1):
            for c in range(-reach[2], reach[2] + 1):
                if nonnegative and min(a, b, c) < 0:
                    continue
                d2 = (a * spacing[0]) ** 2 + (b * spacing[1]) ** 2 + (c * spacing[2]) ** 2
                count += d2 <= radius_mm**2
    return count


# --------------------------------------------------------------------------- PSNR


def test_psnr_udpet_additive_constant_matches_closed_form() -> None:
    ref = _random_volume(0)
    ref[3, 4, 5] = 8.0
    # MSE = 0.5^2 everywhere, range = max(ref) = 8: PSNR = 20 log10(8 / 0.5).
    assert psnr_udpet(ref + 0.5, ref) == pytest.approx(20.0 * math.log10(16.0), abs=1e-9)


def test_psnr_udpet_equal_volumes_is_infinite() -> None:
    ref = _random_volume(1)
    assert psnr_udpet(ref.copy(), ref) == math.inf


def test_psnr_mask_range_is_reference_max_inside_mask() -> None:
    ref = np.full((4, 8, 8), 2.0)
    ref[0] = 100.0  # outside the mask: ignored for the range and the MSE
    mask = np.zeros(ref.shape, dtype=bool)
    mask[1:] = True
    pred = ref + 0.2
    pred[0] = 0.0
    assert psnr(pred, ref, mask) == pytest.approx(20.0 * math.log10(2.0 / 0.2), abs=1e-9)


# --------------------------------------------------------------------------- SSIM


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_ssim_constant_volumes_is_one(mode: str) -> None:
    volume = np.full((6, 16, 16), 3.0)
    assert ssim(volume, volume.copy(), mode=mode) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_ssim_matches_scikit_image_inside_cropped_border(mode: str) -> None:
    metrics = pytest.importorskip("skimage.metrics")
    ref = _random_volume(2)
    pred = ref + np.random.default_rng(3).normal(0.0, 0.4, size=ref.shape)
    peak = float(ref.max())
    options = {"data_range": peak, "gaussian_weights": True, "sigma": 1.5,
               "use_sample_covariance": False}
    # scikit-image averages its map with the 5-voxel border (half the 11-tap window) cropped.
    inner = np.zeros(ref.shape, dtype=bool)
    if mode == "3d":
        inner[5:-5, 5:-5, 5:-5] = True
        expected = metrics.structural_similarity(pred, ref, **options)
    else:
        inner[:, 5:-5, 5:-5] = True
        expected = np.mean([metrics.structural_similarity(pred[k], ref[k], **options)
                            for k in range(ref.shape[0])])
    assert ssim(pred, ref, inner, peak, mode) == pytest.approx(expected, abs=1e-10)


def test_ssim_2d_averages_slices_not_voxels() -> None:
    ref = _random_volume(4, (4, 16, 16))
    pred = ref + np.random.default_rng(5).normal(0.0, 1.0, size=ref.shape) * np.array(
        [0.1, 0.1, 1.0, 1.0])[:, None, None]
    mask = np.zeros(ref.shape, dtype=bool)
    mask[0, 2:14, 2:14] = True  # 144 voxels of a good slice
    mask[2, 7:9, 7:9] = True  # 4 voxels of a bad slice
    per_slice = []
    for k in (0, 2):
        only = np.zeros_like(mask)
        only[k] = mask[k]
        per_slice.append(ssim(pred, ref, only, 5.0, "2d"))
    assert per_slice[0] > per_slice[1]
    assert ssim(pred, ref, mask, 5.0, "2d") == pytest.approx(np.mean(per_slice), abs=1e-12)


def test_ssim_data_range_defaults_to_reference_max_in_mask() -> None:
    ref = _random_volume(6)
    pred = ref + np.random.default_rng(7).normal(0.0, 0.5, size=ref.shape)
    mask = ref < 4.0
    peak = float(ref[mask].max())
    assert ssim(pred, ref, mask) == pytest.approx(ssim(pred, ref, mask, peak), abs=1e-12)
    # C1 and C2 grow with the range, which raises the SSIM of imperfect images.
    assert ssim(pred, ref, mask, 2 * peak) > ssim(pred, ref, mask) + 1e-4


def test_ssim_falls_with_noise() -> None:
    ref = _random_volume(8)
    rng = np.random.default_rng(9)
    values = [ssim(ref + rng.normal(0.0, sd, ref.shape), ref) for sd in (0.1, 0.5, 2.0)]
    assert 1.0 > values[0] > values[1] > values[2]


def test_ssim_unknown_mode_or_empty_mask_raises() -> None:
    ref = _random_volume(10)
    with pytest.raises(ValueError, match="mode"):
        ssim(ref, ref, mode="4d")
    with pytest.raises(ValueError, match="empty"):
        ssim(ref, ref, np.zeros(ref.shape, dtype=bool))


# --------------------------------------------------------------------------- NRMSE and CV


def test_nrmse_constant_equal_volumes_is_zero() -> None:
    volume = np.full((3, 5, 5), 2.0)
    assert nrmse(volume.copy(), volume) == 0.0


def test_nrmse_additive_constant_is_offset_over_reference_mean() -> None:
    ref = _random_volume(11) + 1.0
    mask = ref > 2.0
    # RMSE = 0.3 inside the mask, normalised by the reference's mean there.
    expected = 0.3 / float(ref[mask].mean())
    assert nrmse(ref + 0.3, ref, mask) == pytest.approx(expected, rel=1e-12)


def test_nrmse_zero_reference_mean_raises() -> None:
    with pytest.raises(ValueError, match="positive reference mean"):
        nrmse(np.ones((3, 3, 3)), np.zeros((3, 3, 3)))


def test_noise_sigma_white_noise_on_structure_gives_its_sd() -> None:
    rng = np.random.default_rng(0)
    z, _, x = np.mgrid[:32, :48, :48]
    volume = 2.0 + 0.05 * x + 0.02 * z + rng.normal(0.0, 0.3, (32, 48, 48))
    volume[:, 10:20, 10:20] += 5.0  # an edge: a minority of voxels, ignored by the median
    assert noise_sigma(volume, np.ones(volume.shape, bool)) == pytest.approx(0.3, rel=0.03)
    # Twice the noise, twice the estimate; a linear volume has none.
    doubled = 2.0 * (volume - 2.0 - 0.05 * x - 0.02 * z) + 0.05 * x
    assert noise_sigma(doubled, np.ones(volume.shape, bool)) == pytest.approx(0.6, rel=0.03)
    assert noise_sigma(0.05 * x + 0.02 * z, np.ones(volume.shape, bool)) == pytest.approx(
        0.0, abs=1e-9)


def test_noise_sigma_empty_mask_raises() -> None:
    volume = np.ones((4, 4, 4))
    with pytest.raises(ValueError, match="mask is empty"):
        noise_sigma(volume, np.zeros(volume.shape, bool))
    with pytest.raises(ValueError, match="shape"):
        noise_sigma(volume, np.ones((4, 4, 3), bool))


def test_coefficient_of_variation_constant_region_is_zero() -> None:
    volume = np.full((4, 6, 6), 1.7)
    assert coefficient_of_variation(volume, volume > 0) == pytest.approx(0.0, abs=1e-12)


def test_coefficient_of_variation_two_values_is_half() -> None:
    volume = np.ones((2, 4, 4))
    volume[1] = 3.0  # mean 2, population SD 1
    assert coefficient_of_variation(volume, volume > 0) == pytest.approx(0.5, abs=1e-12)


# --------------------------------------------------------------------------- VOIs


def test_voi_stats_uniform_3cm_sphere_equals_activity() -> None:
    spacing = (2.0, 2.0, 2.0)
    shape = (24, 24, 24)
    inside = _centre_distance_mm(shape, spacing, (11.5, 11.5, 11.5)) <= 15.0
    volume = np.where(inside, 4.0, 0.0)
    labels = np.where(inside, LESION_BASE, 0)
    stats = voi_stats(volume, labels, spacing)[LESION_BASE]
    assert stats["suv_max"] == pytest.approx(4.0, abs=1e-12)
    assert stats["suv_mean"] == pytest.approx(4.0, abs=1e-12)
    assert stats["suv_peak"] == pytest.approx(4.0, abs=1e-9)
    assert stats["voxels"] == int(inside.sum())


@pytest.mark.parametrize(("spacing", "count"), [((2.0, 2.0, 2.0), 123), ((4.0, 4.0, 3.0), 21)])
def test_voi_stats_single_hot_voxel_peak_is_value_over_kernel_count(
    spacing: tuple[float, float, float], count: int
) -> None:
    assert _lattice_count(spacing, SUV_PEAK_RADIUS_MM) == count  # hand-checked counts
    volume = np.zeros((15, 16, 17))
    volume[7, 8, 8] = 10.0
    labels = np.zeros(volume.shape, dtype=np.int16)
    labels[7, 8, 8] = 100
    labels[0, 0, 0] = 1  # a tissue label too
    stats = voi_stats(volume, labels, spacing)
    assert sorted(stats) == [1, 100]
    assert stats[100]["suv_max"] == 10.0
    assert stats[100]["suv_peak"] == pytest.approx(10.0 / count, rel=1e-9)
    assert stats[1]["suv_peak"] == pytest.approx(0.0, abs=1e-9)


def test_voi_stats_peak_at_volume_corner_averages_voxels_inside_only() -> None:
    spacing = (2.0, 2.0, 2.0)
    volume = np.zeros((10, 10, 10))
    volume[0, 0, 0] = 6.0
    labels = np.zeros(volume.shape, dtype=np.int16)
    labels[0, 0, 0] = 100
    inside = _lattice_count(spacing, SUV_PEAK_RADIUS_MM, nonnegative=True)
    stats = voi_stats(volume, labels, spacing)
    assert stats[100]["suv_peak"] == pytest.approx(6.0 / inside, rel=1e-9)


def test_voi_stats_without_labels_is_empty() -> None:
    assert voi_stats(np.ones((3, 3, 3)), np.zeros((3, 3, 3), dtype=int), (1.0, 1.0, 1.0)) == {}


def test_voi_bias_scaled_prediction_is_ten_percent() -> None:
    spacing = (2.0, 2.0, 2.0)
    ref = _random_volume(12, (10, 12, 12))
    labels = np.zeros(ref.shape, dtype=np.int16)
    labels[2:5, 2:6, 2:6] = 1
    labels[6:9, 5:10, 5:10] = 100
    bias = voi_bias(voi_stats(1.1 * ref, labels, spacing), voi_stats(ref, labels, spacing))
    assert sorted(bias) == [1, 100]
    for values in bias.values():
        assert values == pytest.approx({"suv_max": 0.1, "suv_peak": 0.1, "suv_mean": 0.1})


def test_voi_bias_zero_reference_is_nan() -> None:
    ref = {1: {"suv_max": 0.0, "suv_peak": 1.0, "suv_mean": 2.0, "voxels": 3}}
    pred = {1: {"suv_max": 1.0, "suv_peak": 1.5, "suv_mean": 2.0, "voxels": 3}}
    bias = voi_bias(pred, ref)[1]
    assert math.isnan(bias["suv_max"])
    assert bias["suv_peak"] == pytest.approx(0.5)
    assert bias["suv_mean"] == 0.0


def test_tumour_to_background_uniform_lesion_is_activity_ratio() -> None:
    volume = np.ones((8, 8, 8))
    lesion = np.zeros(volume.shape, dtype=bool)
    lesion[3:5, 3:5, 3:5] = True
    volume[lesion] = 5.0
    volume[3, 3, 3] = 7.0  # lesion max 7, mean (7 + 7 * 5) / 8 = 5.25
    result = tumour_to_background(volume, lesion, ~lesion)
    assert result == pytest.approx({"tbr_max": 7.0, "tbr_mean": 5.25, "background_mean": 1.0})


def test_tumour_to_background_empty_background_raises() -> None:
    volume = np.ones((3, 3, 3))
    with pytest.raises(ValueError, match="empty"):
        tumour_to_background(volume, volume > 0, volume < 0)


# --------------------------------------------------------------------------- NEMA


NEMA_SPACING = (4.0, 4.0, 4.0)
NEMA_DIAMETERS = (12.0, 20.0, 28.0)


def _nema_phantom(sphere_value: float, noise_sd: float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray, list[NemaSphere]]:
    """A cylinder of background 1 (radius 130 mm) with three spheres on a 50 mm ring."""
    shape = (21, 72, 72)
    centre = (35.5, 35.5, 10.0)
    labels = np.zeros(shape, dtype=np.int16)
    radial = _centre_distance_mm((1, *shape[1:]), NEMA_SPACING, (centre[0], centre[1], 0.0))
    labels[np.repeat(radial, shape[0], axis=0) <= 130.0] = FILL
    volume = np.where(labels == FILL, 1.0, 0.0)
    spheres = []
    for n, diameter in enumerate(NEMA_DIAMETERS):
        angle = 2.0 * math.pi * n / len(NEMA_DIAMETERS)
        at = (35.0 + round(12.5 * math.cos(angle)), 35.0 + round(12.5 * math.sin(angle)), 10.0)
        distance = _centre_distance_mm(shape, NEMA_SPACING, at)
        labels[distance <= diameter / 2.0 + 4.0] = int(Label.PHANTOM_WALL)
        volume[distance <= diameter / 2.0 + 4.0] = 0.0
        labels[distance <= diameter / 2.0] = LESION_BASE + n
        volume[distance <= diameter / 2.0] = sphere_value
        spheres.append(NemaSphere(LESION_BASE + n, diameter, at))
    if noise_sd:
        volume += np.random.default_rng(13).normal(0.0, noise_sd, shape) * (labels == FILL)
    return volume, labels, spheres


def test_nema_contrast_recovery_perfect_recovery_is_100_percent_and_bv_zero() -> None:
    volume, labels, spheres = _nema_phantom(4.0)
    result = nema_contrast_recovery(volume, labels, spheres, labels == FILL, 4.0, NEMA_SPACING)
    assert sorted(result) == [100, 101, 102]
    for sphere in spheres:
        values = result[sphere.label]
        assert values["contrast_recovery_pct"] == pytest.approx(100.0, abs=1e-9)
        assert values["background_variability_pct"] == pytest.approx(0.0, abs=1e-9)
        assert values["background_rois"] == 60  # 12 ROIs on 5 slices
        assert values["central_slice"] == 10


def test_nema_contrast_recovery_half_contrast_is_50_percent() -> None:
    volume, labels, spheres = _nema_phantom(1.0 + (4.0 - 1.0) / 2.0)
    result = nema_contrast_recovery(volume, labels, spheres, labels == FILL, 4.0, NEMA_SPACING)
    for sphere in spheres:
        assert result[sphere.label]["contrast_recovery_pct"] == pytest.approx(50.0, abs=1e-9)


def test_nema_contrast_recovery_centres_and_diameters_from_labels() -> None:
    volume, labels, spheres = _nema_phantom(4.0)
    bare = [NemaSphere(s.label) for s in spheres]
    result = nema_contrast_recovery(volume, labels, bare, labels == FILL, 4.0, NEMA_SPACING)
    for sphere in spheres:
        values = result[sphere.label]
        assert values["contrast_recovery_pct"] == pytest.approx(100.0, abs=1e-9)
        # Equal-volume diameter of voxelised spheres: within a voxel of the true diameter.
        assert values["diameter_mm"] == pytest.approx(sphere.diameter_mm, abs=4.0)


def test_nema_contrast_recovery_white_noise_bv_matches_roi_noise() -> None:
    sd = 0.2
    volume, labels, spheres = _nema_phantom(4.0, noise_sd=sd)
    result = nema_contrast_recovery(volume, labels, spheres, labels == FILL, 4.0, NEMA_SPACING)
    for sphere in spheres:
        radius = sphere.diameter_mm / 2.0
        n = sum((a * 4.0) ** 2 + (b * 4.0) ** 2 <= radius**2
                for a in range(-4, 5) for b in range(-4, 5))
        expected = sd / math.sqrt(n) * 100.0  # SD of a mean of n voxels, background 1
        assert result[sphere.label]["background_variability_pct"] == pytest.approx(
            expected, rel=0.3)


def test_nema_contrast_recovery_no_room_for_background_rois_raises() -> None:
    volume, labels, spheres = _nema_phantom(4.0)
    with pytest.raises(ValueError, match="no position"):
        nema_contrast_recovery(volume, labels, spheres, labels == FILL, 4.0, NEMA_SPACING,
                               edge_margin_mm=80.0)


def test_nema_contrast_recovery_ratio_not_above_one_raises() -> None:
    volume, labels, spheres = _nema_phantom(4.0)
    with pytest.raises(ValueError, match="true_ratio"):
        nema_contrast_recovery(volume, labels, spheres, labels == FILL, 1.0, NEMA_SPACING)


# --------------------------------------------------------------------------- z-consistency


def _smooth(volume: np.ndarray, per_slice: bool) -> np.ndarray:
    """Gaussian smoothing (sigma 1.5 voxels) in 3D, or in plane slice by slice."""
    if not per_slice:
        image = sitk.GetImageFromArray(volume)
        return sitk.GetArrayFromImage(sitk.DiscreteGaussian(image, 2.25, 32))
    return np.stack([sitk.GetArrayFromImage(sitk.DiscreteGaussian(
        sitk.GetImageFromArray(plane), 2.25, 32)) for plane in volume])


def test_z_consistency_white_noise_is_about_one() -> None:
    noise = np.random.default_rng(14).standard_normal((32, 32, 32))
    assert z_consistency(noise) == pytest.approx(1.0, abs=0.05)


def test_z_consistency_independent_slices_higher_than_smooth_volume() -> None:
    noise = np.random.default_rng(15).standard_normal((32, 32, 32))
    smooth_3d = z_consistency(_smooth(noise, per_slice=False))
    independent = z_consistency(_smooth(noise, per_slice=True))
    assert smooth_3d == pytest.approx(1.0, abs=0.15)
    assert independent > 3.0 * smooth_3d


def test_z_consistency_identical_slices_is_zero() -> None:
    plane = np.random.default_rng(16).standard_normal((1, 16, 16))
    assert z_consistency(np.repeat(plane, 8, axis=0)) == 0.0


def test_z_consistency_mask_limits_stencils() -> None:
    volume = np.random.default_rng(17).standard_normal((10, 12, 12))
    mask = np.zeros(volume.shape, dtype=bool)
    mask[2:8, 3:9, 3:9] = True
    jumped = volume.copy()
    jumped[0] += 100.0  # outside every stencil of the mask
    assert z_consistency(jumped, mask) == z_consistency(volume, mask)
    with pytest.raises(ValueError, match="at least 3"):
        z_consistency(volume[:2])


def test_reference_value_given_mask_equals_computed_one() -> None:
    from pet_recon.models.intensity import reference_value

    volume = np.zeros((8, 32, 32))
    volume[2:6, 8:24, 8:24] = 2.0
    spacing = (2.0, 2.0, 3.0)
    mask = body_mask(volume, spacing)
    assert reference_value(volume, spacing, mask) == reference_value(volume, spacing)
    assert reference_value(volume, spacing, mask) == pytest.approx(3.0 * volume[mask].mean())
    # The caller's mask is used as given: a mask of the whole volume gives 3 x its mean.
    whole = np.ones(volume.shape, bool)
    assert reference_value(volume, spacing, whole) == pytest.approx(3.0 * volume.mean())
