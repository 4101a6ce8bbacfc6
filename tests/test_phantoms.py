"""Tests of the brain, body and NEMA phantoms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from pet_recon.physics.geometry import ImageGeometry
from pet_recon.physics.phantoms import (
    LESION_BASE,
    MR_SPHERE_INTENSITY,
    NEMA_SPHERE_DIAMETERS_MM,
    Label,
    Phantom,
    body,
    brain,
    ct_to_mu,
    make_phantom,
    mismatched_mr,
    nema,
)

SMALL = ImageGeometry(nx=64, ny=64, pixel_mm=4.0, n_planes=16, plane_mm=4.0)
WIDE = ImageGeometry(nx=64, ny=64, pixel_mm=8.0, n_planes=16, plane_mm=6.0)  # 512 mm field
NEMA_2MM = ImageGeometry(nx=160, ny=160, pixel_mm=2.0, n_planes=24, plane_mm=2.0)
BRAIN_2MM = ImageGeometry(nx=128, ny=128, pixel_mm=2.0, n_planes=64, plane_mm=2.0)
FAMILIES = ("brain", "body", "nema")


@pytest.fixture(scope="module")
def small() -> dict[str, Phantom]:
    return {family: make_phantom(family, SMALL, seed=3) for family in FAMILIES}


@pytest.fixture(scope="module")
def brains() -> dict[str, Phantom]:
    """The three tracers on the simulator's brain grid (2 mm, 128 mm slab)."""
    return {tracer: brain(BRAIN_2MM, 5, tracer) for tracer in ("FDG", "amyloid+", "amyloid-")}


@pytest.fixture(scope="module")
def brain_depth(brains: dict[str, Phantom]) -> np.ndarray:
    """Depth (mm) of each voxel below the surface of the FDG brain (its labelled tissue with
    the ventricles filled in); sulci narrower than half a voxel do not count as surface."""
    labels = brains["FDG"].labels
    tissue = np.isin(
        labels, [Label.GREY_MATTER, Label.WHITE_MATTER, Label.DEEP_GREY, Label.CEREBELLUM]
    )
    filled = ndimage.binary_fill_holes(tissue | (labels >= LESION_BASE))
    spacing = (BRAIN_2MM.plane_mm, BRAIN_2MM.pixel_mm, BRAIN_2MM.pixel_mm)
    return ndimage.distance_transform_edt(filled, sampling=spacing)


@pytest.fixture(scope="module")
def nema_2mm() -> Phantom:
    return nema(NEMA_2MM, seed=1)


def median_in(phantom: Phantom, volume: np.ndarray, label: int) -> float:
    return float(np.median(volume[phantom.labels == label]))


@pytest.mark.parametrize("family", FAMILIES)
def test_arrays_shapes_dtypes_and_labels(small: dict[str, Phantom], family: str) -> None:
    phantom = small[family]
    for name in ("activity", "mu", "ct", "mr"):
        array = getattr(phantom, name)
        assert array.shape == SMALL.shape and array.dtype == np.float32, name
        assert np.isfinite(array).all(), name
    assert phantom.labels.shape == SMALL.shape and phantom.labels.dtype == np.int16
    assert phantom.activity.min() >= 0.0 and phantom.mr.min() >= 0.0
    assert phantom.info["family"] == family and phantom.info["seed"] == 3
    assert phantom.info["weight_kg"] > 0 and phantom.info["activity_units"] == "SUVbw (g/ml)"
    ids = set(np.unique(phantom.labels).tolist())
    lesion_ids = {lesion["label"] for lesion in phantom.info["lesions"]}
    assert ids <= {int(label) for label in Label} | lesion_ids
    assert lesion_ids <= ids  # every lesion owns at least one voxel
    assert all(i >= LESION_BASE for i in lesion_ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_per_seed_and_different_across_seeds(
    small: dict[str, Phantom], family: str
) -> None:
    again = make_phantom(family, SMALL, seed=3)
    other = make_phantom(family, SMALL, seed=4)
    for name in ("activity", "mu", "ct", "mr", "labels"):
        np.testing.assert_array_equal(getattr(again, name), getattr(small[family], name))
    assert not np.array_equal(other.activity, small[family].activity)
    assert not np.array_equal(other.mr, small[family].mr)


@pytest.mark.parametrize("family", ("brain", "body"))
def test_anatomy_varies_smoothly_along_z(family: str) -> None:
    geometry = ImageGeometry(nx=64, ny=64, pixel_mm=4.0, n_planes=32, plane_mm=3.0)
    mu = make_phantom(family, geometry, seed=7).mu
    neighbours = np.abs(np.diff(mu, axis=0)).mean()
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 32, size=(2, 200))
    far = a[np.abs(a - b) > 8], b[np.abs(a - b) > 8]
    random_pairs = np.abs(mu[far[0]] - mu[far[1]]).mean()
    assert neighbours < 0.35 * random_pairs


def test_nema_sphere_label_volumes_match_the_spheres(nema_2mm: Phantom) -> None:
    for i, diameter in enumerate(NEMA_SPHERE_DIAMETERS_MM):
        volume_ml = np.count_nonzero(nema_2mm.labels == LESION_BASE + i) * NEMA_2MM.voxel_ml
        expected_ml = 4.0 / 3.0 * math.pi * (diameter / 20.0) ** 3
        assert volume_ml == pytest.approx(expected_ml, rel=0.10), diameter


def test_nema_partial_volume_preserves_sphere_activity(nema_2mm: Phantom) -> None:
    """Activity in a box around each sphere = background + sphere excess - cold glass wall."""
    x, y = NEMA_2MM.x_mm(), NEMA_2MM.y_mm()
    z = (np.arange(NEMA_2MM.n_planes) - (NEMA_2MM.n_planes - 1) / 2.0) * NEMA_2MM.plane_mm
    for lesion in nema_2mm.info["lesions"]:
        cx, cy, cz = lesion["centre_mm"]
        r = lesion["diameter_mm"] / 2.0
        reach = r + 6.0
        box = np.ix_(np.abs(z - cz) <= reach, np.abs(y - cy) <= reach, np.abs(x - cx) <= reach)
        box_mm3 = nema_2mm.activity[box].size * NEMA_2MM.voxel_ml * 1000.0
        wall_mm3 = 4.0 / 3.0 * math.pi * (r + 1.0) ** 3
        expected = box_mm3 - wall_mm3 + 4.0 * 4.0 / 3.0 * math.pi * r**3
        total = float(nema_2mm.activity[box].sum()) * NEMA_2MM.voxel_ml * 1000.0
        assert total == pytest.approx(expected, rel=0.01), lesion["diameter_mm"]


@pytest.mark.parametrize("ratio", [4.0, 8.0])
def test_nema_sphere_to_background_ratio(ratio: float) -> None:
    phantom = nema(NEMA_2MM, seed=2, ratio=ratio)
    background = median_in(phantom, phantom.activity, Label.PHANTOM_FILL)
    assert background == pytest.approx(1.0, abs=1e-4)
    largest = median_in(phantom, phantom.activity, LESION_BASE + 5)
    assert largest / background == pytest.approx(ratio, rel=1e-3)
    assert median_in(phantom, phantom.activity, Label.LUNG) == pytest.approx(0.0, abs=1e-4)
    assert [lesion["diameter_mm"] for lesion in phantom.info["lesions"]] == list(
        NEMA_SPHERE_DIAMETERS_MM
    )


def test_nema_seed_only_jitters_the_position() -> None:
    a, b = nema(NEMA_2MM, seed=0), nema(NEMA_2MM, seed=1)
    assert max(abs(v) for v in (*a.info["position_mm"], *b.info["position_mm"])) <= 3.0
    assert abs(a.info["rotation_deg"]) <= 1.0
    for lesion_a, lesion_b in zip(a.info["lesions"], b.info["lesions"], strict=True):
        assert math.dist(lesion_a["centre_mm"], lesion_b["centre_mm"]) <= 8.0
    counts_a = np.bincount(a.labels.ravel(), minlength=LESION_BASE + 6)
    counts_b = np.bincount(b.labels.ravel(), minlength=LESION_BASE + 6)
    for label in (Label.PHANTOM_FILL, Label.LUNG, *range(LESION_BASE, LESION_BASE + 6)):
        assert counts_a[label] == pytest.approx(counts_b[label], rel=0.05), label


def test_body_outline_grows_with_weight() -> None:
    areas = []
    for weight in (55.0, 80.0, 110.0):
        phantom = body(WIDE, seed=2, weight_kg=weight, height_m=1.75)
        assert phantom.info["weight_kg"] == weight and phantom.info["height_m"] == 1.75
        areas.append(np.count_nonzero(phantom.labels != Label.BACKGROUND))
    assert areas[0] < areas[1] < areas[2]
    assert areas[2] / areas[0] == pytest.approx(110.0 / 55.0, rel=0.25)


def test_body_patient_organs_and_tumours() -> None:
    geometry = ImageGeometry(nx=64, ny=64, pixel_mm=8.0, n_planes=40, plane_mm=5.0)
    for seed in range(4):
        phantom = body(geometry, seed)
        info = phantom.info
        assert 50.0 <= info["weight_kg"] <= 120.0 and 1.5 <= info["height_m"] <= 1.95
        assert info["sex"] in ("M", "F") and info["region"] in ("thorax", "abdomen", "pelvis")
        assert 1 <= len(info["lesions"]) <= 6
        for lesion in info["lesions"]:
            assert 5.0 <= lesion["diameter_mm"] <= 40.0
            assert lesion["suv"] <= 30.0 + 1e-9 and lesion["contrast"] <= 15.0
            assert lesion["host"] in ("lung", "liver", "soft tissue")
        present = set(np.unique(phantom.labels).tolist())
        if info["region"] == "thorax":
            assert {Label.LUNG, Label.HEART, Label.BONE} <= present
        if info["region"] == "pelvis":
            assert Label.BLADDER in present
        if Label.LIVER in present:
            assert 2.0 <= median_in(phantom, phantom.activity, Label.LIVER) <= 2.8


def test_brain_tracer_contrast(brains: dict[str, Phantom]) -> None:
    fdg = brains["FDG"]
    gm, wm, csf, deep, cerebellum = (
        median_in(fdg, fdg.activity, label)
        for label in (
            Label.GREY_MATTER,
            Label.WHITE_MATTER,
            Label.CSF,
            Label.DEEP_GREY,
            Label.CEREBELLUM,
        )
    )
    # The true grey/white ratio is 2.7-3.2; the 1.5-voxel thick cortex shares its voxels
    # with white matter and CSF, which lowers the ratio of the labelled voxels' medians to
    # about 0.75 of it, and that of their means to about 0.67.
    assert 2.0 <= gm / wm <= 3.5 and wm > 2.0 * csf
    grey_mean = fdg.activity[fdg.labels == Label.GREY_MATTER].mean()
    white_mean = fdg.activity[fdg.labels == Label.WHITE_MATTER].mean()
    assert 1.8 <= grey_mean / white_mean <= 3.5
    assert deep > 0.8 * gm and 0.6 * gm < cerebellum < gm
    assert 0.3 <= min(region["reduction"] for region in fdg.info["hypometabolic"]) <= 0.5
    negative = brains["amyloid-"]
    assert median_in(negative, negative.activity, Label.WHITE_MATTER) > 1.5 * median_in(
        negative, negative.activity, Label.GREY_MATTER
    )
    assert 0.95 <= negative.info["cortical_suvr"] <= 1.1
    positive = brains["amyloid+"]
    reference = median_in(positive, positive.activity, Label.CEREBELLUM)
    cortex = median_in(positive, positive.activity, Label.GREY_MATTER)
    assert cortex > 1.3 * reference and positive.info["cortical_suvr"] >= 1.5
    assert cortex > 0.85 * median_in(positive, positive.activity, Label.WHITE_MATTER)
    assert positive.info["amyloid_status"] == "positive"
    assert negative.info["amyloid_status"] == "negative" and fdg.info["amyloid_status"] is None


def test_brain_cortex_is_a_folded_ribbon(
    brains: dict[str, Phantom], brain_depth: np.ndarray
) -> None:
    centre = BRAIN_2MM.n_planes // 2
    labels = brains["FDG"].labels[centre]
    grey = labels == Label.GREY_MATTER
    assert np.mean(brain_depth[centre][grey] <= 20.0) > 0.8  # a ribbon along the surface ...
    # ... folded into sulci (which are CSF, not surface, here), not a line on the surface.
    intracranial = ndimage.binary_fill_holes(
        np.isin(labels, [Label.GREY_MATTER, Label.WHITE_MATTER, Label.DEEP_GREY, Label.CSF])
    )
    below_csf = ndimage.distance_transform_edt(intracranial) * BRAIN_2MM.pixel_mm
    assert np.mean(below_csf[grey] > 8.0) > 0.4


def test_brain_white_matter_fills_the_hemispheres_core(
    brains: dict[str, Phantom], brain_depth: np.ndarray
) -> None:
    centre = BRAIN_2MM.n_planes // 2
    labels, depth = brains["FDG"].labels[centre], brain_depth[centre]
    core = depth >= np.quantile(depth[depth > 0], 0.7)  # the innermost 30 % of the brain
    assert np.isin(labels[core], [Label.WHITE_MATTER, Label.CSF, Label.DEEP_GREY]).mean() > 0.8
    assert np.mean(labels[core] == Label.WHITE_MATTER) > 0.5


def test_brain_ventricles_beside_the_basal_ganglia(brains: dict[str, Phantom]) -> None:
    labels = brains["FDG"].labels
    deep = labels == Label.DEEP_GREY
    planes = np.flatnonzero(deep.sum(axis=(1, 2)) > 20)
    assert planes.size >= 5 and 0.2 < planes.mean() / BRAIN_2MM.n_planes < 0.7
    _, rows, columns = np.nonzero(deep)
    near_y = np.abs(np.arange(BRAIN_2MM.ny) - rows.mean()) * BRAIN_2MM.pixel_mm < 40.0
    near_x = np.abs(np.arange(BRAIN_2MM.nx) - columns.mean()) * BRAIN_2MM.pixel_mm < 25.0
    central = labels[planes][:, near_y][:, :, near_x] == Label.CSF
    assert np.count_nonzero(central) * BRAIN_2MM.voxel_ml > 5.0


def test_brain_csf_has_no_isolated_voxels(brains: dict[str, Phantom]) -> None:
    csf = brains["FDG"].labels == Label.CSF
    neighbours = ndimage.convolve(
        csf.astype(np.int8), ndimage.generate_binary_structure(3, 1).astype(np.int8)
    )
    isolated = csf & (neighbours == 1)  # the voxel itself only
    assert np.count_nonzero(isolated) < 0.01 * np.count_nonzero(csf)


def test_brain_slab_from_hindbrain_to_vertex(brains: dict[str, Phantom]) -> None:
    labels = brains["FDG"].labels
    present = {
        label: np.flatnonzero((labels == label).any(axis=(1, 2)))
        for label in (Label.CEREBELLUM, Label.GREY_MATTER, Label.FAT)
    }
    assert present[Label.CEREBELLUM][0] <= 4  # cerebellum and orbits at the bottom ...
    assert present[Label.CEREBELLUM][-1] < BRAIN_2MM.n_planes // 2
    assert present[Label.FAT][-1] < BRAIN_2MM.n_planes // 3
    assert present[Label.GREY_MATTER][-1] >= BRAIN_2MM.n_planes - 10  # ... vertex at the top


def test_mr_contrast(brains: dict[str, Phantom], small: dict[str, Phantom]) -> None:
    fdg = brains["FDG"]
    wm, gm, csf = (
        median_in(fdg, fdg.mr, label)
        for label in (Label.WHITE_MATTER, Label.GREY_MATTER, Label.CSF)
    )
    assert wm > gm > csf
    assert median_in(fdg, fdg.mr, Label.SKULL) < gm < median_in(fdg, fdg.mr, Label.FAT)
    torso = small["body"]
    assert median_in(torso, torso.mr, Label.FAT) > median_in(torso, torso.mr, Label.SOFT_TISSUE)


def test_mu_and_ct_in_physical_ranges(
    small: dict[str, Phantom], brains: dict[str, Phantom], nema_2mm: Phantom
) -> None:
    for phantom in (*small.values(), *brains.values()):
        assert phantom.mu.min() >= 0.0 and phantom.mu.max() <= 0.2
        assert median_in(phantom, phantom.mu, Label.BACKGROUND) == 0.0
        assert median_in(phantom, phantom.ct, Label.BACKGROUND) == pytest.approx(-1000, abs=5)
    assert median_in(nema_2mm, nema_2mm.mu, Label.PHANTOM_FILL) == pytest.approx(0.096, abs=1e-3)
    assert 0.02 <= median_in(nema_2mm, nema_2mm.mu, Label.LUNG) <= 0.035
    assert median_in(brains["FDG"], brains["FDG"].mu, Label.SKULL) >= 0.13
    torso = small["body"]
    assert 0.094 <= median_in(torso, torso.mu, Label.SOFT_TISSUE) <= 0.102
    assert median_in(torso, torso.mu, Label.FAT) < median_in(torso, torso.mu, Label.SOFT_TISSUE)
    assert median_in(torso, torso.ct, Label.FAT) == pytest.approx(-100, abs=15)


def test_ct_to_mu_bilinear() -> None:
    assert ct_to_mu(0.0) == pytest.approx(0.096)
    assert ct_to_mu(-1000.0) == pytest.approx(0.0)
    assert ct_to_mu(1000.0) == pytest.approx(5.10e-5 * 2000.0 + 4.71e-2)
    np.testing.assert_allclose(ct_to_mu(np.array([-500.0, 47.0])), [0.048, 0.1005], atol=2e-4)


def test_mr_misregistration_recorded_small_and_applied() -> None:
    geometry = ImageGeometry(nx=160, ny=160, pixel_mm=2.0, n_planes=16, plane_mm=2.0)
    phantom = nema(geometry, seed=0)
    record = phantom.info["mr_misregistration"]
    voxel = (geometry.pixel_mm, geometry.pixel_mm, geometry.plane_mm)
    assert all(
        abs(t) <= 1.2 * v + 1e-9 for t, v in zip(record["translation_mm"], voxel, strict=True)
    )
    assert all(abs(angle) <= 2.0 for angle in record["rotation_deg"])
    # The dark lung insert appears in the MR displaced by the recorded translation.
    x, y = geometry.x_mm()[None, :], geometry.y_mm()[:, None]
    cx, cy, _ = phantom.info["position_mm"]
    near = np.broadcast_to(np.hypot(x - cx, y - cy) < 35.0, phantom.mr.shape)
    middle = slice(4, 12)

    def centroid(mask: np.ndarray) -> np.ndarray:
        mask = mask[middle]
        return np.array([(mask * x).sum(), (mask * y).sum()]) / mask.sum()

    shift = centroid((phantom.mr < 0.1) & near) - centroid(phantom.labels == Label.LUNG)
    np.testing.assert_allclose(shift, record["translation_mm"][:2], atol=0.5)
    assert not np.allclose(record["translation_mm"], 0.0)


def test_single_plane_geometry() -> None:
    geometry = ImageGeometry(nx=64, ny=64, pixel_mm=4.0, n_planes=1, plane_mm=4.0)
    for family in FAMILIES:
        phantom = make_phantom(family, geometry, seed=0)
        assert phantom.activity.shape == (1, 64, 64) and phantom.activity.max() > 0.5


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown phantom family"):
        make_phantom("liver", SMALL, seed=0)
    with pytest.raises(ValueError, match="tracer"):
        brain(SMALL, 0, tracer="PSMA")
    with pytest.raises(ValueError, match="ratio"):
        nema(SMALL, 0, ratio=0.0)
    with pytest.raises(ValueError, match="weight_kg"):
        body(SMALL, 0, weight_kg=5.0)
    phantom = nema(SMALL, 0)
    with pytest.raises(ValueError, match="shape"):
        Phantom(SMALL, phantom.activity[:1], phantom.mu, phantom.ct, phantom.mr, phantom.labels)


def test_mismatched_mr_hides_lesions_and_adds_spheres(brains: dict[str, Phantom]) -> None:
    phantom = brains["FDG"]
    mr, spheres = mismatched_mr(phantom)
    again, same = mismatched_mr(phantom)
    assert spheres == same and np.array_equal(mr, again)  # reproducible from the seed
    assert 1 <= len(spheres) <= 3 and mr.shape == phantom.mr.shape and mr.dtype == np.float32
    g = phantom.geometry
    z, y, x = np.meshgrid(g.z_mm(), g.y_mm(), g.x_mm(), indexing="ij")
    near = np.zeros(g.shape, bool)
    for sphere in spheres:
        assert sphere.tissue in MR_SPHERE_INTENSITY
        cx, cy, cz = sphere.centre_mm
        distance = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2)
        inside = distance <= sphere.diameter_mm / 2 - 2.0
        if inside.any():  # the MR there is the sphere's tissue (times the bias field)
            level = MR_SPHERE_INTENSITY[sphere.tissue]
            assert abs(float(np.median(mr[inside])) - level) < 0.25 * max(level, 0.2)
        near |= distance <= sphere.diameter_mm / 2 + 8.0
    lesions = ndimage.binary_dilation(phantom.labels >= LESION_BASE, iterations=4)
    assert lesions.any()
    # Away from the spheres and the lesions, the MR is the phantom's (same noise and bias).
    assert np.allclose(mr[~near & ~lesions], phantom.mr[~near & ~lesions], rtol=0, atol=1e-5)
    # Where a lesion is, the MR shows the host tissue, not the lesion.
    assert np.abs(mr[lesions & ~near] - phantom.mr[lesions & ~near]).max() > 0.05


def test_mismatched_mr_needs_a_brain(small: dict[str, Phantom]) -> None:
    with pytest.raises(ValueError, match="needs a brain phantom"):
        mismatched_mr(small["body"])
