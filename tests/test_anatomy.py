"""Tests of the anatomy input path: reading MR/CT, resampling onto the PET grid, registration.

Every image is an analytic object evaluated at the voxel centres of its grid, so the
expected result on the PET grid is known exactly, independent of any resampling code.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

from pet_recon.errors import PetReconError
from pet_recon.io.anatomy import (
    MIN_COVERAGE,
    coverage,
    frames_of_reference_differ,
    prepare_anatomy,
    read_anatomy,
    register_rigid,
    to_pet_grid,
)
from pet_recon.io.metadata import VolumeGeometry
from pet_recon.io.series import read_series

Field = Callable[[np.ndarray], np.ndarray]

# Ellipsoids of the head phantom: centre (mm, about the grid centre), semi-axes (mm),
# PET value, MR value. The first is the head; the MR contrast is inverted inside it.
_HEAD = [
    ((0.0, 0.0, 0.0), (80.0, 95.0, 60.0), 1.0, 0.8),
    ((30.0, -20.0, 10.0), (15.0, 12.0, 10.0), 4.0, 0.1),
    ((-35.0, 25.0, -15.0), (10.0, 18.0, 12.0), 2.5, 0.5),
    ((10.0, 45.0, 25.0), (9.0, 9.0, 9.0), 6.0, 0.05),
    ((-20.0, -45.0, 20.0), (12.0, 8.0, 15.0), 0.2, 1.2),
    ((45.0, 30.0, -25.0), (8.0, 14.0, 8.0), 3.0, 0.3),
]
# Gaussian blobs for the resampling test: centre (mm), standard deviation (mm), amplitude.
_BLOBS = [
    ((40.0, -30.0, 12.0), 5.0, 1.0),
    ((-45.0, 35.0, -20.0), 6.0, 2.0),
    ((15.0, 50.0, 30.0), 5.0, 3.0),
    ((-30.0, -40.0, 0.0), 7.0, 1.5),
]


def _rotation(degrees_xyz: tuple[float, float, float]) -> np.ndarray:
    """Rotation matrix of ITK's Euler3DTransform, ``Rz Rx Ry``, float64 ``(3, 3)``."""
    transform = sitk.Euler3DTransform((0.0, 0.0, 0.0), *np.radians(degrees_xyz))
    return np.asarray(transform.GetMatrix(), dtype=float).reshape(3, 3)


def _geometry(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0),
    degrees_about_z: float = 0.0,
) -> VolumeGeometry:
    """A grid of ``shape`` centred on ``centre`` (LPS mm), axes rotated about z."""
    d = _rotation((0.0, 0.0, degrees_about_z))
    half = (np.array(shape[::-1], dtype=float) - 1.0) / 2.0
    origin = np.array(centre) - d @ (np.array(spacing) * half)
    return VolumeGeometry(
        shape=shape,
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        spacing=spacing,
        direction=tuple(float(v) for v in d.ravel()),
    )


def _points(geometry: VolumeGeometry) -> np.ndarray:
    """LPS mm of every voxel centre, float64 ``(slices, rows, columns, 3)``."""
    k, j, i = np.indices(geometry.shape, dtype=float)
    index = np.stack([i, j, k], axis=-1) * np.array(geometry.spacing)
    d = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    return np.asarray(geometry.origin) + index @ d.T


def _blobs(points: np.ndarray) -> np.ndarray:
    """Sum of the Gaussian blobs at ``points`` (..., 3), float64 (...)."""
    value = np.zeros(points.shape[:-1])
    for centre, sigma, amplitude in _BLOBS:
        r2 = ((points - np.array(centre)) ** 2).sum(axis=-1)
        value += amplitude * np.exp(-r2 / (2.0 * sigma**2))
    return value


def _inside(points: np.ndarray, centre: tuple[float, ...], axes: tuple[float, ...]) -> np.ndarray:
    """Smooth indicator (edge 1.5 mm wide) of an ellipsoid at ``points`` (..., 3)."""
    radius = np.sqrt((((points - np.array(centre)) / np.array(axes)) ** 2).sum(axis=-1))
    return 1.0 / (1.0 + np.exp(np.clip((radius - 1.0) * min(axes) / 1.5, -50.0, 50.0)))


def _head(points: np.ndarray, modality: str) -> np.ndarray:
    """PET (``"PT"``) or MR (``"MR"``) values of the head phantom at ``points`` (..., 3)."""
    column = 2 if modality == "PT" else 3
    head = _HEAD[0]
    value = _inside(points, head[0], head[1]) * head[column]
    for item in _HEAD[1:]:
        value += _inside(points, item[0], item[1]) * (item[column] - head[column])
    return value


def _moved(field: Field, transform: sitk.Euler3DTransform) -> Field:
    """``field`` as seen in an image whose point ``T(p)`` shows the object's point ``p``."""
    m = np.asarray(transform.GetMatrix(), dtype=float).reshape(3, 3)
    c = np.asarray(transform.GetCenter(), dtype=float)
    t = np.asarray(transform.GetTranslation(), dtype=float)

    def moved(points: np.ndarray) -> np.ndarray:
        return field((points - c - t) @ m + c)  # R^T (q - c - t) + c, row vectors

    return moved


def _weighted_centroid(volume: np.ndarray, points: np.ndarray, centre: np.ndarray,
                       radius: float) -> np.ndarray:
    """Intensity-weighted centroid (mm) of ``volume`` within ``radius`` mm of ``centre``."""
    window = ((points - centre) ** 2).sum(axis=-1) <= radius**2
    weights = volume[window].astype(float)
    return (points[window] * weights[:, None]).sum(axis=0) / weights.sum()


def _inside_fraction(pet_grid: VolumeGeometry, anatomy_grid: VolumeGeometry,
                     transform: sitk.Euler3DTransform | None = None) -> float:
    """Fraction of PET voxel centres whose (transformed) position lies within half a voxel of
    the anatomy's voxel centres along each of its axes."""
    points = _points(pet_grid).reshape(-1, 3)
    if transform is not None:
        m = np.asarray(transform.GetMatrix(), dtype=float).reshape(3, 3)
        c = np.asarray(transform.GetCenter(), dtype=float)
        points = (points - c) @ m.T + c + np.asarray(transform.GetTranslation())
    d = np.asarray(anatomy_grid.direction, dtype=float).reshape(3, 3)
    index = (points - np.asarray(anatomy_grid.origin)) @ d / np.asarray(anatomy_grid.spacing)
    size = np.asarray(anatomy_grid.shape[::-1], dtype=float)
    return float(np.all((index >= -0.5) & (index <= size - 0.5), axis=1).mean())


def _noisy(volume: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (volume + rng.normal(0.0, sigma, volume.shape)).astype(np.float32)


def _write_dicom(
    folder: Path,
    volume: np.ndarray,
    geometry: VolumeGeometry,
    modality: str,
    *,
    frame_of_reference_uid: str,
    study_uid: str,
) -> Path:
    """Write ``volume`` as a minimal single-frame MR or PET series (int16, rescaled)."""
    folder.mkdir(parents=True, exist_ok=True)
    sop_class = MRImageStorage if modality == "MR" else PositronEmissionTomographyImageStorage
    series_uid = generate_uid()
    d = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    slope = max(float(np.abs(volume).max()), 1e-6) / 30000.0
    for k in range(geometry.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.SeriesDescription = f"synthetic {modality}"
        ds.SeriesNumber = 2 if modality == "MR" else 1
        ds.InstanceNumber = k + 1
        ds.PatientID = "ANATOMY"
        ds.ImagePositionPatient = [f"{v:.6f}" for v in geometry.slice_position(k)]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*d[:, 0], *d[:, 1])]
        ds.PixelSpacing = [f"{geometry.spacing[1]:.6f}", f"{geometry.spacing[0]:.6f}"]
        ds.SliceThickness = f"{geometry.spacing[2]:.6f}"
        ds.Rows, ds.Columns = geometry.shape[1], geometry.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
        if modality == "PT":
            ds.Units = "BQML"
        ds.PixelData = np.round(volume[k] / slope).astype("<i2").tobytes()
        ds.save_as(folder / f"IM_{k + 1:04d}.dcm", enforce_file_format=True)
    return folder


@pytest.fixture
def one_sitk_thread() -> Iterator[None]:
    """SimpleITK on one thread: the registration time budget is for one core."""
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    yield
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


# A PET grid and a finer MR grid with another spacing, a 7 mm offset and axes turned by 10
# degrees about z.
_PET_GRID = _geometry((48, 64, 64), (3.0, 3.0, 3.5), centre=(1.0, -2.0, 3.0))
_MR_GRID = _geometry((70, 170, 150), (1.2, 1.0, 2.0), centre=(8.0, 5.0, -4.0),
                     degrees_about_z=10.0)


def test_to_pet_grid_rotated_mr_blob_centroids_within_half_voxel() -> None:
    mr = _blobs(_points(_MR_GRID)).astype(np.float32)
    out = to_pet_grid(mr, _MR_GRID, _PET_GRID)
    assert out.shape == _PET_GRID.shape and out.dtype == np.float32
    points = _points(_PET_GRID)
    expected = _blobs(points)
    spacing = np.array(_PET_GRID.spacing)
    for centre, sigma, _ in _BLOBS:
        c = np.array(centre)
        found = _weighted_centroid(out, points, c, 3.0 * sigma)
        analytic = _weighted_centroid(expected, points, c, 3.0 * sigma)
        assert np.all(np.abs(found - analytic) / spacing < 0.5), (centre, found, analytic)
        assert np.all(np.abs(found - c) / spacing < 0.5), (centre, found)
    # values too: the anti-aliasing Gaussian (1.2 mm) lowers the 5 mm blobs' peaks by ~8 %
    assert float(np.abs(out - expected).max()) < 0.12 * max(a for _, _, a in _BLOBS)
    assert float(np.corrcoef(out.ravel(), expected.ravel())[0, 1]) > 0.99


def test_to_pet_grid_transform_maps_pet_point_to_anatomy_point() -> None:
    mr = _blobs(_points(_MR_GRID)).astype(np.float32)
    shift = np.array([6.0, -4.0, 3.0])
    out = to_pet_grid(mr, _MR_GRID, _PET_GRID, sitk.TranslationTransform(3, tuple(shift)))
    points = _points(_PET_GRID)
    spacing = np.array(_PET_GRID.spacing)
    for centre, sigma, _ in _BLOBS:
        expected = np.array(centre) - shift  # PET point p shows anatomy point p + shift
        found = _weighted_centroid(out, points, expected, 3.0 * sigma)
        assert np.all(np.abs(found - expected) / spacing < 0.5), (centre, found)


def test_to_pet_grid_outside_filled_with_anatomy_minimum() -> None:
    ct = np.full((38, 43, 43), 40.0, np.float32)
    ct[0, 0, 0] = -1000.0  # air
    smaller = _geometry(ct.shape, (4.0, 4.0, 4.0))  # 172x172x152 mm, PET 192x192x168 mm
    assert MIN_COVERAGE < coverage(smaller, _PET_GRID) < 0.8
    out = to_pet_grid(ct, smaller, _PET_GRID)
    assert float(out.min()) == pytest.approx(-1000.0)
    corner = out[0, 0, 0]  # (-94, -97, -79) mm: outside the CT (+-86, +-86, +-76 mm)
    assert float(corner) == pytest.approx(-1000.0)
    assert float(out[24, 32, 32]) == pytest.approx(40.0)


def test_to_pet_grid_far_away_anatomy_raises_naming_series() -> None:
    far = _geometry(_MR_GRID.shape, _MR_GRID.spacing, centre=(1000.0, 0.0, 0.0))
    mr = np.zeros(far.shape, np.float32)
    assert coverage(far, _PET_GRID) == 0.0
    message = r"^mr_dir \(MR series 1\.2\.3\): does not overlap the PET volume at all \("
    with pytest.raises(PetReconError, match=message):
        to_pet_grid(mr, far, _PET_GRID, label="mr_dir (MR series 1.2.3)")


def test_to_pet_grid_partial_overlap_below_threshold_raises() -> None:
    # shifted along x by 70 % of the PET width: about 30 % of PET voxels covered
    shift = 0.7 * _PET_GRID.shape[2] * _PET_GRID.spacing[0]
    moved = _geometry(_PET_GRID.shape, _PET_GRID.spacing, centre=(1.0 + shift, -2.0, 3.0))
    covered = coverage(moved, _PET_GRID)
    assert covered == pytest.approx(_inside_fraction(_PET_GRID, moved), abs=1e-3)
    assert 0.25 < covered < MIN_COVERAGE
    with pytest.raises(PetReconError, match=r"covers 3\d% of the PET voxels, at least 50%"):
        to_pet_grid(np.ones(moved.shape, np.float32), moved, _PET_GRID)


# Registration: a 128x128x64 PET grid (2 mm, 2.5 mm slices) and an MR on its own grid,
# showing the head moved by a known rigid transform.
_REG_PET_GRID = _geometry((64, 128, 128), (2.0, 2.0, 2.5))
_REG_MR_GRID = _geometry((56, 120, 110), (1.8, 1.7, 2.8), centre=(3.0, -2.0, 1.0),
                         degrees_about_z=5.0)
_TRUE_ROTATION_DEG = (1.0, -2.0, 3.0)
_TRUE_TRANSLATION_MM = (4.0, -3.0, 2.0)


def _truth(pet_grid: VolumeGeometry) -> sitk.Euler3DTransform:
    centre = np.asarray(pet_grid.origin) + np.asarray(pet_grid.direction).reshape(3, 3) @ (
        np.array(pet_grid.spacing) * (np.array(pet_grid.shape[::-1]) - 1.0) / 2.0
    )
    return sitk.Euler3DTransform(
        tuple(centre), *np.radians(_TRUE_ROTATION_DEG), _TRUE_TRANSLATION_MM
    )


def _pet_and_moved_mr(
    pet_grid: VolumeGeometry, mr_grid: VolumeGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """Noisy PET of the head and the MR (inverted contrast) moved by :func:`_truth`."""
    pet = _noisy(_head(_points(pet_grid), "PT"), 0.15, seed=1)
    moved = _moved(lambda p: _head(p, "MR"), _truth(pet_grid))
    mr = _noisy(moved(_points(mr_grid)), 0.03, seed=2)
    return pet, mr


def test_register_rigid_recovers_known_shift_multimodal(one_sitk_thread: None) -> None:
    pet, mr = _pet_and_moved_mr(_REG_PET_GRID, _REG_MR_GRID)
    result = register_rigid(pet, _REG_PET_GRID, mr, _REG_MR_GRID, seed=0)
    np.testing.assert_allclose(result.translation_mm, _TRUE_TRANSLATION_MM, atol=1.0)
    np.testing.assert_allclose(result.rotation_deg, _TRUE_ROTATION_DEG, atol=1.0)
    assert result.converged and result.iterations > 0 and result.metric < 0
    assert result.seconds > 0  # speed is the benchmark's business, not a unit test's
    # the transform itself, not only its parameters: the PET centre and a point 80 mm off it
    truth = _truth(_REG_PET_GRID)
    for offset in ((0.0, 0.0, 0.0), (80.0, 0.0, 0.0), (0.0, 80.0, 0.0), (0.0, 0.0, 60.0)):
        p = tuple(np.add(truth.GetCenter(), offset))
        error = np.subtract(result.transform.TransformPoint(p), truth.TransformPoint(p))
        assert float(np.linalg.norm(error)) < 2.0, (offset, error)
    json.dumps(result.to_dict())


def test_register_rigid_same_seed_reproducible(one_sitk_thread: None) -> None:
    pet_grid = _geometry((40, 64, 64), (4.0, 4.0, 4.0))
    pet, mr = _pet_and_moved_mr(pet_grid, pet_grid)
    first = register_rigid(pet, pet_grid, mr, pet_grid)  # seed 0: not SimpleITK's wall clock
    second = register_rigid(pet, pet_grid, mr, pet_grid)
    assert first.transform.GetParameters() == second.transform.GetParameters()
    assert first.metric == second.metric and first.iterations == second.iterations
    other = register_rigid(pet, pet_grid, mr, pet_grid, seed=1)
    assert other.transform.GetParameters() != first.transform.GetParameters()
    np.testing.assert_allclose(other.translation_mm, first.translation_mm, atol=0.5)


def test_register_rigid_negative_seed_refused() -> None:
    pet_grid = _geometry((8, 16, 16), (4.0, 4.0, 4.0))
    volume = np.zeros(pet_grid.shape, np.float32)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        register_rigid(volume, pet_grid, volume, pet_grid, seed=-1)


# DICOM round trip: a PET series and an MR series in another frame of reference.
_DCM_PET_GRID = _geometry((40, 80, 80), (3.0, 3.0, 3.5))
_DCM_MR_GRID = _geometry((48, 110, 100), (2.0, 1.8, 3.0), centre=(2.0, 3.0, -1.0),
                         degrees_about_z=-6.0)


def _write_pet_and_mr(tmp_path: Path, *, same_frame: bool,
                      mr_offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
                      ) -> tuple[Path, Path]:
    """PET in ``pet/`` and MR in ``mr/`` of one study; the MR shows the head moved by
    :func:`_truth` and, with ``mr_offset_mm``, its header positions are all shifted by that
    much (another scanner's coordinates)."""
    study = generate_uid()
    pet_for = generate_uid()
    pet, mr = _pet_and_moved_mr(_DCM_PET_GRID, _DCM_MR_GRID)
    origin = tuple(float(v) for v in np.add(_DCM_MR_GRID.origin, mr_offset_mm))
    mr_grid = dataclasses.replace(_DCM_MR_GRID, origin=origin)
    pet_dir = _write_dicom(tmp_path / "pet", pet * 5000.0, _DCM_PET_GRID, "PT",
                           frame_of_reference_uid=pet_for, study_uid=study)
    mr_dir = _write_dicom(tmp_path / "mr", mr * 1000.0, mr_grid, "MR",
                          frame_of_reference_uid=pet_for if same_frame else generate_uid(),
                          study_uid=study)
    return pet_dir, mr_dir


def test_read_anatomy_mr_dicom_geometry(tmp_path: Path) -> None:
    pet_dir, mr_dir = _write_pet_and_mr(tmp_path, same_frame=False)
    volume, meta = read_anatomy(mr_dir)
    assert meta.modality == "MR" and volume.dtype == np.float32
    assert volume.shape == _DCM_MR_GRID.shape == meta.geometry.shape
    np.testing.assert_allclose(meta.geometry.origin, _DCM_MR_GRID.origin, atol=1e-4)
    np.testing.assert_allclose(meta.geometry.spacing, _DCM_MR_GRID.spacing, atol=1e-4)
    np.testing.assert_allclose(meta.geometry.direction, _DCM_MR_GRID.direction, atol=1e-6)
    _, pet_meta = read_series(pet_dir)
    assert frames_of_reference_differ(pet_meta, meta)
    assert not frames_of_reference_differ(pet_meta, pet_meta)


def test_read_anatomy_pet_series_refused(tmp_path: Path) -> None:
    pet_dir, _ = _write_pet_and_mr(tmp_path, same_frame=True)
    with pytest.raises(PetReconError, match=r"/pet is a PET series; --anatomy needs MR or CT"):
        read_anatomy(pet_dir)
    uid = read_series(pet_dir)[1].source.series_instance_uid
    with pytest.raises(PetReconError, match=r"/pet is a PET series"):
        read_anatomy(pet_dir, series_uid=uid)


def test_read_anatomy_folder_with_pet_and_mr_picks_mr(tmp_path: Path) -> None:
    _write_pet_and_mr(tmp_path, same_frame=True)
    _, meta = read_anatomy(tmp_path)
    assert meta.modality == "MR" and meta.geometry.shape == _DCM_MR_GRID.shape


def test_read_anatomy_two_mr_series_needs_series_uid(tmp_path: Path) -> None:
    _, mr_dir = _write_pet_and_mr(tmp_path, same_frame=True)
    volume = np.ones(_PET_GRID.shape, np.float32)
    _write_dicom(tmp_path / "mr2", volume, _PET_GRID, "MR", frame_of_reference_uid=generate_uid(),
                 study_uid=generate_uid())
    with pytest.raises(PetReconError, match=r"2 MR/CT series found; choose one by its "):
        read_anatomy(tmp_path)
    uid = read_anatomy(tmp_path / "mr2")[1].source.series_instance_uid
    _, meta = read_anatomy(tmp_path, series_uid=uid)
    assert meta.geometry.shape == _PET_GRID.shape


def test_frames_of_reference_differ_missing_uid_counts_as_different(tmp_path: Path) -> None:
    pet_dir, mr_dir = _write_pet_and_mr(tmp_path, same_frame=True)
    _, pet_meta = read_series(pet_dir)
    _, mr_meta = read_anatomy(mr_dir)
    assert not frames_of_reference_differ(pet_meta, mr_meta)
    source = mr_meta.source
    mr_meta.source = type(source)(**{**source.__dict__, "frame_of_reference_uid": None})
    assert frames_of_reference_differ(pet_meta, mr_meta)


def test_prepare_anatomy_frames_differ_registers_and_reports(tmp_path: Path) -> None:
    pet_dir, mr_dir = _write_pet_and_mr(tmp_path, same_frame=False)
    pet, pet_meta = read_series(pet_dir)
    out, report = prepare_anatomy(mr_dir, pet, pet_meta)
    assert out.shape == pet.shape and out.dtype == np.float32
    assert report["registered"] and report["frames_of_reference_differ"]
    assert report["registration_reason"] == "frames of reference differ"
    assert report["modality"] == "MR" and report["folder"] == str(mr_dir)
    registration = report["registration"]
    np.testing.assert_allclose(registration["translation_mm"], _TRUE_TRANSLATION_MM, atol=1.0)
    np.testing.assert_allclose(registration["rotation_deg"], _TRUE_ROTATION_DEG, atol=1.0)
    # the MR (200x198x144 mm) covers part of the PET (240x240x140 mm)
    expected_coverage = _inside_fraction(_DCM_PET_GRID, _DCM_MR_GRID, _truth(_DCM_PET_GRID))
    assert report["coverage"] == pytest.approx(expected_coverage, abs=0.01)
    assert MIN_COVERAGE < report["coverage"] < 0.8
    json.loads(json.dumps(report))
    # registered, the MR on the PET grid matches the unmoved MR object; unregistered it does not
    expected = 1000.0 * _head(_points(_DCM_PET_GRID), "MR")
    body = expected > 100.0
    unregistered, plain = prepare_anatomy(mr_dir, pet, pet_meta, register=False)
    assert not plain["registered"] and plain["registration"] is None
    assert any("registration is disabled" in w for w in plain["warnings"])
    error = float(np.abs(out - expected)[body].mean())
    error_unregistered = float(np.abs(unregistered - expected)[body].mean())
    assert error < 0.5 * error_unregistered, (error, error_unregistered)


def test_prepare_anatomy_same_frame_not_registered(tmp_path: Path) -> None:
    pet_dir, mr_dir = _write_pet_and_mr(tmp_path, same_frame=True)
    pet, pet_meta = read_series(pet_dir)
    out, report = prepare_anatomy(mr_dir, pet, pet_meta)
    assert not report["registered"] and report["registration"] is None
    assert report["registration_reason"] == "same frame of reference"
    assert out.shape == pet.shape
    _, forced = prepare_anatomy(mr_dir, pet, pet_meta, register=True)
    assert forced["registered"] and forced["registration_reason"] == "registration requested"


def test_prepare_anatomy_mr_1m_away_raises_unless_registered(tmp_path: Path) -> None:
    pet_dir, mr_dir = _write_pet_and_mr(tmp_path, same_frame=True,
                                        mr_offset_mm=(0.0, 0.0, 1000.0))
    pet, pet_meta = read_series(pet_dir)
    with pytest.raises(PetReconError, match=r"/mr \(MR series [0-9.]+\): does not overlap"):
        prepare_anatomy(mr_dir, pet, pet_meta)
    # forced registration brings the grid centres together first and finds the head
    _, report = prepare_anatomy(mr_dir, pet, pet_meta, register=True)
    registration = report["registration"]
    assert registration["initialization"] == "geometry centres"
    np.testing.assert_allclose(registration["translation_mm"],
                               np.add(_TRUE_TRANSLATION_MM, (0.0, 0.0, 1000.0)), atol=1.0)


def test_register_rigid_anatomy_too_small_raises() -> None:
    pet_grid = _geometry((16, 32, 32), (4.0, 4.0, 4.0))
    tiny = _geometry((10, 10, 10), (2.0, 2.0, 2.0))  # 20 mm: < 50 % of the PET even centred
    with pytest.raises(PetReconError, match=r"does not overlap the PET volume, neither at"):
        register_rigid(np.ones(pet_grid.shape, np.float32), pet_grid,
                       np.ones(tiny.shape, np.float32), tiny)
