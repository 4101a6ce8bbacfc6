"""`petrecon evaluate`: the API and the CLI on synthetic volumes and on a simulated NEMA case."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from bad_inputs import run_petrecon
from typer.testing import CliRunner

from pet_recon.cli import app
from pet_recon.errors import PetReconError
from pet_recon.evaluate import evaluate
from pet_recon.metrics import body_mask
from pet_recon.physics.phantoms import LESION_BASE, Label
from pet_recon.physics.simulate import simulate_case, write_case

SPACING = (2.0, 2.0, 2.0)
SHAPE = (16, 32, 32)
LIVER = int(Label.LIVER)
FILL = int(Label.PHANTOM_FILL)


def _write(path: Path, volume: np.ndarray, spacing: tuple[float, float, float] = SPACING,
           origin: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Path:
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return path


def _distance_mm(shape: tuple[int, int, int], spacing: tuple[float, float, float],
                 centre: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm) of voxel centres from ``centre``, a continuous index (i, j, k)."""
    k, j, i = np.indices(shape, dtype=np.float64)
    return np.sqrt(((i - centre[0]) * spacing[0]) ** 2 + ((j - centre[1]) * spacing[1]) ** 2
                   + ((k - centre[2]) * spacing[2]) ** 2)


@pytest.fixture
def synthetic(tmp_path: Path) -> dict[str, Path]:
    """A liver cylinder (SUV 1, radius 28 mm) holding a 12 mm lesion (SUV 5), 16x32x32."""
    k, j, i = np.indices(SHAPE, dtype=np.float64)
    radial = np.hypot((i - 15.5) * SPACING[0], (j - 15.5) * SPACING[1])
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[radial <= 28.0] = LIVER
    labels[_distance_mm(SHAPE, SPACING, (15.5, 15.5, 7.5)) <= 6.0] = LESION_BASE
    ref = np.select([labels == LESION_BASE, labels == LIVER], [5.0, 1.0], 0.0)
    ref = ref.astype(np.float32)
    return {
        "ref": _write(tmp_path / "ref.mha", ref),
        "same": _write(tmp_path / "same.nii.gz", ref.copy()),
        "scaled": _write(tmp_path / "scaled.mha", (1.1 * ref.astype(np.float64))),
        "labels": _write(tmp_path / "labels.mha", labels),
    }


def _voi(report: dict, label: int) -> dict:
    return next(v for v in report["vois"] if v["label"] == label)


def test_evaluate_identical_volumes_psnr_null_ssim_one_biases_zero(
    synthetic: dict[str, Path]
) -> None:
    report = evaluate(synthetic["same"], synthetic["ref"], labels=synthetic["labels"])
    quality = report["image_quality"]
    assert quality["psnr_db"] is None and quality["psnr_udpet_db"] is None  # infinite
    assert any("PSNR is infinite" in note for note in report["notes"])
    assert quality["ssim_2d"] == pytest.approx(1.0, abs=1e-12)
    assert quality["ssim_3d"] == pytest.approx(1.0, abs=1e-12)
    assert quality["nrmse"] == 0.0
    assert quality["ssim_data_range"] == pytest.approx(5.0)
    assert report["z_consistency"]["ratio"] == pytest.approx(1.0)
    assert {v["label"] for v in report["vois"]} == {LIVER, LESION_BASE}
    for voi in report["vois"]:
        assert voi["bias"] == {"suv_max": 0.0, "suv_peak": 0.0, "suv_mean": 0.0}
    lesion = _voi(report, LESION_BASE)
    assert lesion["reference"]["suv_max"] == pytest.approx(5.0)
    assert lesion["reference"]["suv_mean"] == pytest.approx(5.0)
    assert report["lesion_suvmax_bias"] == 0.0
    assert report["uniform_region"]["name"] == "liver"
    assert report["uniform_region"]["cv_reference"] == pytest.approx(0.0, abs=1e-12)
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN or Infinity


def test_evaluate_scaled_prediction_suvmax_bias_plus_10_percent(
    synthetic: dict[str, Path]
) -> None:
    report = evaluate(synthetic["scaled"], synthetic["ref"], labels=synthetic["labels"])
    for voi in report["vois"]:
        assert voi["bias"] == pytest.approx({"suv_max": 0.1, "suv_peak": 0.1, "suv_mean": 0.1},
                                            abs=1e-6)
    assert report["lesion_suvmax_bias"] == pytest.approx(0.1, abs=1e-6)
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(synthetic["ref"]))).astype(np.float64)
    body = body_mask(ref, SPACING)
    # pred - ref = 0.1 ref: NRMSE = 0.1 RMS(ref) / mean(ref), PSNR = 10 log10(max^2 / MSE).
    rms = math.sqrt(float(np.mean(ref[body] ** 2)))
    quality = report["image_quality"]
    assert quality["nrmse"] == pytest.approx(0.1 * rms / float(ref[body].mean()), rel=1e-5)
    assert quality["psnr_db"] == pytest.approx(20 * math.log10(5.0 / (0.1 * rms)), abs=1e-4)
    means = quality["mean_suv_body"]
    assert means["prediction"] / means["reference"] == pytest.approx(1.1, rel=1e-6)
    # A uniform lesion in a uniform host: TBR is the activity ratio, whatever the scale.
    (lesion,) = report["lesions"]
    assert lesion["background"] == "host tissue liver"
    for who in ("prediction", "reference"):
        assert lesion[who]["tbr_max"] == pytest.approx(5.0, rel=1e-6)
        assert lesion[who]["tbr_mean"] == pytest.approx(5.0, rel=1e-6)


def test_evaluate_mismatched_spacing_raises(synthetic: dict[str, Path], tmp_path: Path) -> None:
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(synthetic["ref"])))
    other = _write(tmp_path / "other.mha", volume, spacing=(2.0, 2.0, 2.5))
    with pytest.raises(PetReconError, match=r"not on the same grid: spacing .* mm \(x, y, z\)"):
        evaluate(other, synthetic["ref"])


def test_evaluate_mismatched_shape_raises(synthetic: dict[str, Path], tmp_path: Path) -> None:
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(synthetic["ref"])))
    other = _write(tmp_path / "other.mha", volume[:, :, :30])
    with pytest.raises(PetReconError, match="shape 16x32x30 vs 16x32x32"):
        evaluate(other, synthetic["ref"])


def test_evaluate_origin_shift_over_half_voxel_raises(
    synthetic: dict[str, Path], tmp_path: Path
) -> None:
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(synthetic["ref"])))
    near = _write(tmp_path / "near.mha", volume, origin=(0.9, 0.0, 0.0))  # 0.45 voxel
    assert evaluate(near, synthetic["ref"])["image_quality"]["ssim_3d"] == pytest.approx(1.0)
    far = _write(tmp_path / "far.mha", volume, origin=(0.0, 0.0, 1.2))  # 0.6 voxel
    with pytest.raises(PetReconError, match="0.60 voxels apart"):
        evaluate(far, synthetic["ref"])


def test_evaluate_labels_on_other_grid_raises(synthetic: dict[str, Path], tmp_path: Path) -> None:
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(synthetic["labels"])))
    other = _write(tmp_path / "labels_small.mha", labels[:8])
    with pytest.raises(PetReconError, match=r"labels_small\.mha and .*ref\.mha are not on"):
        evaluate(synthetic["same"], synthetic["ref"], labels=other)


def test_evaluate_missing_input_raises(synthetic: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(PetReconError, match="no such file or folder"):
        evaluate(tmp_path / "absent.mha", synthetic["ref"])


def test_evaluate_truth_without_case_json_is_not_compared(
    synthetic: dict[str, Path]
) -> None:
    report = evaluate(synthetic["scaled"], synthetic["ref"], truth=synthetic["ref"])
    assert report["truth"] == {"path": str(synthetic["ref"]), "compared": False}
    assert any("cannot be put in SUV" in note for note in report["notes"])


def _nema_like(tmp_path: Path, sphere_suv: float) -> dict[str, Path]:
    """Fill (SUV 1, radius 130 mm) with a 28 mm sphere 50 mm off centre, 4 mm voxels."""
    shape, spacing = (21, 72, 72), (4.0, 4.0, 4.0)
    k, j, i = np.indices(shape, dtype=np.float64)
    labels = np.zeros(shape, dtype=np.int16)
    labels[np.hypot((i - 35.5) * 4.0, (j - 35.5) * 4.0) <= 130.0] = FILL
    distance = _distance_mm(shape, spacing, (47.0, 35.0, 10.0))
    labels[distance <= 18.0] = int(Label.PHANTOM_WALL)
    labels[distance <= 14.0] = LESION_BASE
    truth = np.select([labels == LESION_BASE, labels == FILL], [4000.0, 1000.0], 0.0)
    volume = np.select([labels == LESION_BASE, labels == FILL], [sphere_suv, 1.0], 0.0)
    return {
        "ref": _write(tmp_path / "nema_ref.mha", volume.astype(np.float32), spacing),
        "labels": _write(tmp_path / "nema_labels.mha", labels, spacing),
        "truth": _write(tmp_path / "nema_truth.mha", truth.astype(np.float32), spacing),
    }


def test_evaluate_nema_ratio_measured_in_truth_without_case_json(tmp_path: Path) -> None:
    files = _nema_like(tmp_path, sphere_suv=1.0 + 3.0 / 2.0)  # half the true contrast
    report = evaluate(files["ref"], files["ref"], truth=files["truth"], labels=files["labels"])
    nema = report["nema"]
    assert nema["true_ratio"] == pytest.approx(4.0)
    assert nema["ratio_source"].startswith("truth")
    assert nema["background_rois"] == 60 and nema["edge_margin_mm"] == 15.0
    (sphere,) = nema["spheres"]
    assert sphere["diameter_mm"] == pytest.approx(28.0, abs=4.0)  # from the labelled voxels
    assert sphere["reference"]["contrast_recovery_pct"] == pytest.approx(50.0, abs=1e-6)
    assert sphere["reference"]["background_variability_pct"] == pytest.approx(0.0, abs=1e-9)
    assert report["uniform_region"]["name"] == "phantom_fill"


def test_evaluate_nema_without_ratio_skips_cr_with_note(tmp_path: Path) -> None:
    files = _nema_like(tmp_path, sphere_suv=4.0)
    report = evaluate(files["ref"], files["ref"], labels=files["labels"])
    assert "skipped" in report["nema"]
    assert any("CR and BV skipped" in note for note in report["notes"])


# --------------------------------------------------------------------------- CLI


def test_cli_evaluate_json_matches_api_and_out_json(
    synthetic: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    result = run_petrecon("evaluate", "--pred", str(synthetic["scaled"]), "--ref",
                          str(synthetic["ref"]), "--labels", str(synthetic["labels"]), "--json",
                          "--out-json", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == json.loads(out.read_text())
    expected = evaluate(synthetic["scaled"], synthetic["ref"], labels=synthetic["labels"])
    for key in ("image_quality", "z_consistency", "vois", "lesions", "uniform_region"):
        assert printed[key] == json.loads(json.dumps(expected[key]))
    assert printed["lesion_suvmax_bias"] == pytest.approx(0.1, abs=1e-6)


def test_cli_evaluate_mismatched_grid_exits_2_with_one_line(
    synthetic: dict[str, Path], tmp_path: Path
) -> None:
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(synthetic["ref"])))
    other = _write(tmp_path / "other.mha", volume[:, :, :30])
    result = run_petrecon("evaluate", "--pred", str(other), "--ref", str(synthetic["ref"]),
                          cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("petrecon: error: ") and "other.mha" in lines[0]
    assert "ref.mha" in lines[0] and result.stdout == ""


def test_cli_evaluate_text_summary_names_metrics(synthetic: dict[str, Path]) -> None:
    result = CliRunner().invoke(app, ["evaluate", "--pred", str(synthetic["scaled"]), "--ref",
                                      str(synthetic["ref"]), "--labels",
                                      str(synthetic["labels"])])
    assert result.exit_code == 0, result.output
    for text in ("PSNR", "SSIM 2D / 3D", "NRMSE", "z-consistency", "lesion 0", "+10.0 %",
                 "TBR", "uniform region liver"):
        assert text in result.output


# --------------------------------------------------------------------------- simulated case


@pytest.fixture(scope="module")
def nema_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        case = simulate_case("nema", 7, matrix=64, slices=16, drfs=(20,),
                             device=torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    out = tmp_path_factory.mktemp("evaluate") / case.case_id
    write_case(case, out)
    return out


def test_evaluate_simulated_nema_dicom_series_in_suv(nema_case: Path) -> None:
    report = evaluate(nema_case / "ld_drf20", nema_case / "fd", truth=nema_case / "truth.mha",
                      labels=nema_case / "labels.mha")
    for who in ("prediction", "reference"):
        assert report[who]["source"] == "dicom" and report[who]["units"].startswith("SUVbw")
    # The NEMA background is SUV 1 by construction: read in Bq/ml it would be thousands.
    fill = _voi(report, FILL)
    assert fill["reference"]["suv_mean"] == pytest.approx(1.0, rel=0.05)
    assert fill["prediction"]["suv_mean"] == pytest.approx(1.0, rel=0.05)
    nema = report["nema"]
    assert nema["true_ratio"] == 4.0 and nema["ratio_source"] == "case.json"
    assert [s["diameter_mm"] for s in nema["spheres"]] == [10.0, 13.0, 17.0, 22.0, 28.0, 37.0]
    largest = nema["spheres"][-1]
    assert 50.0 < largest["reference"]["contrast_recovery_pct"] < 110.0
    assert largest["reference"]["contrast_recovery_pct"] > nema["spheres"][0]["reference"][
        "contrast_recovery_pct"]
    # 1/20 of the counts: noisier background, everywhere.
    for sphere in nema["spheres"]:
        assert (sphere["prediction"]["background_variability_pct"]
                > sphere["reference"]["background_variability_pct"])
    uniform = report["uniform_region"]
    assert uniform["cv_prediction"] > 2.0 * uniform["cv_reference"]
    truth = report["truth"]
    assert truth["compared"] is True
    assert truth["reference"]["psnr_db"] > truth["prediction"]["psnr_db"]
    assert truth["reference"]["ssim_3d"] > truth["prediction"]["ssim_3d"]
    assert truth["reference"]["mean_suv_body"]["reference"] == pytest.approx(1.0, rel=0.1)


def test_evaluate_simulated_dicom_and_volume_file_share_grid(
    nema_case: Path, tmp_path: Path
) -> None:
    record = json.loads((nema_case / "case.json").read_text())
    truth = sitk.ReadImage(str(nema_case / "truth.mha"))
    truth_suv = sitk.Cast(truth, sitk.sitkFloat64) * record["suv_factor"]["1"]
    sitk.WriteImage(truth_suv, str(tmp_path / "truth_suv.mha"))
    report = evaluate(nema_case / "fd", tmp_path / "truth_suv.mha")
    assert report["reference"]["units"].startswith("SUV, assumed")
    means = report["image_quality"]["mean_suv_body"]
    assert means["prediction"] == pytest.approx(means["reference"], rel=0.1)
    same = evaluate(nema_case / "fd", nema_case / "fd")
    assert same["image_quality"]["ssim_2d"] == pytest.approx(1.0)
