"""`petrecon bench` runs end to end with tiny models; its parts give known answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pet_recon.benchmark import (
    FWHM_GRID_MM,
    NOISE_FREE,
    BenchOptions,
    _make_case,
    matmul_rate,
    nl_means,
    run_benchmark,
    score,
)
from pet_recon.cascade import Cascade
from pet_recon.errors import PetReconError


@pytest.mark.slow
def test_run_benchmark_tiny_writes_table_json_and_figures(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    opts = BenchOptions(out=out, families=("body", "nema"), drfs=(20,), slices=4,
                        ablations=("shuffled prompt", "noise drawn per plane"),
                        weights=runs / "weights", compare_weights=runs / "weights")
    result = run_benchmark(opts)
    saved = json.loads((out / "benchmark.json").read_text())
    methods = saved["cases"]["body"]["20"]
    compared = "MiG-DM cascade (weights)"  # named for the folder
    assert set(methods) == {"low dose", NOISE_FREE, "Gaussian (tuned)", "non-local means (tuned)",
                            "U-Net regression", "SD1 alone, no sinogram",
                            "MiG-DM, projected sinogram", "MiG-DM cascade", compared}
    # same weights, same seed: the compared cascade reproduces the main one
    assert methods[compared][0]["psnr_db"] == methods["MiG-DM cascade"][0]["psnr_db"]
    # progressive output of the DRF-20 input at the one anchor below it, scored against the
    # simulated 1/4-dose image (simulated because of the anchor)
    (anchor,) = saved["progressive"]["body"]["20"]
    scores = anchor["anchors"]["4"]
    assert scores["timestep"] == Cascade.load(runs / "weights", torch.device("cpu")).anchors[4]
    assert all(np.isfinite(v) for v in scores.values())
    assert scores["input_psnr_vs_level_db"] != scores["psnr_vs_level_db"]
    assert "MAP-Diff progressive outputs" in result["table"]
    assert "| body | 20 | 1/4 |" in result["table"]
    low = methods["low dose"][0]
    assert low["seed"] == 9 and low["mean_suv_change"] == 0.0 and np.isfinite(low["psnr_db"])
    # the full-dose image without its noise is closer to the full-dose image than DRF 20 is
    assert methods[NOISE_FREE][0]["psnr_db"] > low["psnr_db"] + 3.0
    assert set(saved["ablations"]["body"]) == {"shuffled prompt", "noise drawn per plane"}
    assert saved["tuned"]["body"]["20"]["gaussian_fwhm_mm"] in FWHM_GRID_MM
    speed = saved["speed"]
    assert speed["flops_per_slice"]["sd2"] > 0 and speed["matmul_flops_per_s"] > 0
    assert speed["precision"] in ("bf16", "fp32")
    assert speed["ratio_to_floor"] > 0
    assert (out / "table.md").read_text() == result["table"]
    assert "| body | 20 | MiG-DM cascade |" in result["table"]
    assert "ablations" not in saved or "nema" not in saved["ablations"]
    nema = saved["cases"]["nema"]["20"]["MiG-DM cascade"][0]
    assert {d["label"] for d in nema["lesions"]} == set(range(100, 106))
    assert "NEMA IEC phantom" in result["table"]
    # the noise-free row scored against itself
    nema_free = saved["cases"]["nema"]["20"][NOISE_FREE][0]
    assert nema_free["lesion_suvmax_bias_noise_free"] == pytest.approx(0.0, abs=1e-6)
    assert "| lesion SUVmax bias vs noise-free |" in result["table"]
    for name in ("images_body.png", "drf_curves.png"):
        assert (out / name).stat().st_size > 1000
    with pytest.raises(PetReconError, match="exists"):
        run_benchmark(opts)


def test_bench_cli_keeps_per_run_warnings_off_stderr(runs: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pet_recon", "bench", "--smoke", "--weights",
                             str(runs / "weights"), "--out", str(tmp_path / "bench")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    assert "petrecon bench:" in result.stderr  # progress messages stay


def test_run_benchmark_unknown_family_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PetReconError, match="unknown family 'lung'"):
        run_benchmark(BenchOptions(out=tmp_path / "b", families=("lung",)))
    assert not (tmp_path / "b").exists()


def test_bench_cli_unknown_family_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pet_recon", "bench", "--out",
                           str(tmp_path / "b"), "--family", "lung"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown family" in proc.stderr


def test_nl_means_lowers_noise_of_a_uniform_cylinder() -> None:
    rng = np.random.default_rng(0)
    volume = np.zeros((3, 48, 48), np.float32)
    yy, xx = np.mgrid[:48, :48]
    volume[:, (yy - 24) ** 2 + (xx - 24) ** 2 < 18**2] = 4.0
    noisy = volume + rng.normal(0, 0.8, volume.shape).astype(np.float32) * (volume > 0)
    inside = volume > 0
    denoised = nl_means(noisy, 0.2, (2.0, 2.0, 2.0))
    assert denoised[inside].std() < 0.5 * noisy[inside].std()
    assert abs(denoised[inside].mean() - 4.0) < 0.1


def test_matmul_rate_counts_two_n_cubed_flops() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        rate = matmul_rate(torch.device("cpu"), dtype, size=128, repeats=3)
        assert 1e6 < rate < 1e15


def test_score_lesion_bias_against_noise_free_image_ties_both_references(tmp_path: Path) -> None:
    case = _make_case("nema", 9, (20,), 4, torch.device("cpu"), tmp_path)
    free, low = score(case.noise_free, case, 20), score(case.suv(20), case, 20)
    assert {d["label"] for d in free["lesions"]} == set(range(100, 106))
    assert all(d["suv_max_bias_noise_free"] == pytest.approx(0.0, abs=1e-6)
               for d in free["lesions"])
    # (1 + bias vs full dose) = (1 + bias vs noise-free) x (noise-free max / full-dose max)
    for d, f in zip(low["lesions"], free["lesions"], strict=True):
        assert 1 + d["suv_max_bias"] == pytest.approx(
            (1 + d["suv_max_bias_noise_free"]) * (1 + f["suv_max_bias"]), rel=1e-5)
    assert low["lesion_suvmax_bias_noise_free"] == pytest.approx(
        np.mean([d["suv_max_bias_noise_free"] for d in low["lesions"]]))
    assert low["lesion_suvmax_bias_noise_free"] != pytest.approx(low["lesion_suvmax_bias"])
