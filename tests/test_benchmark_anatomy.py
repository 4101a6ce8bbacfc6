"""The anatomy study of ``petrecon bench`` (issue #7): a tiny run with the tiny anatomy-guided
weights, its leak-check MRs, and its refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from typer.testing import CliRunner

from pet_recon.benchmark import BenchOptions, run_benchmark
from pet_recon.benchmark_anatomy import (
    CT_RUNS,
    RUNS,
    STRUCTURE_TISSUES,
    TRACERS,
    _study,
    place_structures,
    structure_vois,
)
from pet_recon.cascade import ANATOMY_FILES
from pet_recon.errors import PetReconError
from pet_recon.io.anatomy import read_anatomy
from pet_recon.models.anatomy import AnatomyBranch
from pet_recon.physics.geometry import ImageGeometry
from pet_recon.physics.phantoms import LESION_BASE, MR_SPHERE_INTENSITY, make_phantom
from pet_recon.pipeline import CascadeOptions
from pet_recon.weights import load_model, save_model, update_manifest

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


def _finite(value: object) -> bool:
    return isinstance(value, float) and bool(np.isfinite(value))


@pytest.fixture
def mr_sensitive(guided: Path, tmp_path: Path) -> Path:
    """``guided``'s weights with the MR branch's fusion made non-zero (two training steps
    leave it at its initial zero), so that the MR changes the output."""
    folder = tmp_path / "weights"
    shutil.copytree(guided / "weights", folder)
    path = folder / ANATOMY_FILES["branch"]
    branch, extra = load_model(path, registry={"AnatomyBranch": AnatomyBranch}, device=CPU)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for conv in branch.fusion:
            conv.weight.normal_(0.0, 0.1, generator=generator)
    save_model(branch, path, extra=extra)
    update_manifest(path, name="anatomy", config={}, training={"steps": 2}, metrics={})
    return folder


@pytest.mark.slow
def test_run_benchmark_anatomy_only_tiny_writes_scores_and_leak_checks(mr_sensitive: Path,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "bench"
    opts = BenchOptions(out=out, families=(), drfs=(20,), slices=8, ablations=(),
                        weights=mr_sensitive, anatomy_study=True,
                        cascade=CascadeOptions(device="cpu", steps=2, sd2_steps=2))
    result = run_benchmark(opts)
    saved = json.loads((out / "benchmark.json").read_text())
    anatomy = saved["anatomy"]
    assert saved["cases"] == {} and "flops_per_slice" not in saved["speed"]
    assert anatomy["tracers"] == list(TRACERS) and anatomy["test_seeds"] == [9]
    for tracer in TRACERS:
        runs = anatomy["cases"][tracer]["20"]
        assert list(runs) == [*RUNS, *CT_RUNS]  # the tiny weights hold the CT branch
        for rows in runs.values():
            (row,) = rows
            assert all(_finite(row[k]) for k in ("psnr_db", "ssim", "lesion_suvmax_bias"))
        assert runs["PET only"][0].get("registration") is None
        assert set(runs["with MR"][0]["registration"]) >= {"translation_mm", "rotation_deg"}
        assert runs["with CT"][0]["registration"] is None  # the PET's frame of reference
        (lesions,) = anatomy["leak_lesions"][tracer]["20"]
        assert lesions["lesions"] and all(_finite(d["difference"]) for d in lesions["lesions"])
        assert _finite(lesions["mean_difference"])
        (structures,) = anatomy["leak_structures"][tracer]["20"]
        assert [s["tissue"] for s in structures["structures"]] == list(STRUCTURE_TISSUES)
        for s in structures["structures"]:
            assert s["mean_change_pct"]["full dose"] == 0.0
            assert s["contrast_change_pp"]["full dose"] == 0.0
            assert all(_finite(v) for v in (*s["mean_change_pct"].values(),
                                            *s["contrast_change_pp"].values()))
            assert s["voxels"] > 0 and s["shell_voxels"] > 0
    fdg, amyloid = (anatomy["cases"][t]["20"]["with MR"][0] for t in TRACERS)
    assert _finite(fdg["hypometabolic_mean_bias"]) and _finite(fdg["normal_cortex_mean_bias"])
    assert amyloid["hypometabolic_mean_bias"] is None and amyloid["hypometabolic"] == []
    # each run restores with its own MR (or seed): every output differs from the plain MR's
    runs = anatomy["cases"]["FDG"]["20"]
    plain = runs["with MR"][0]["psnr_db"]
    assert all(rows[0]["psnr_db"] != plain for name, rows in runs.items() if name != "with MR")
    (leak,) = anatomy["leak_structures"]["FDG"]["20"]
    assert any(s["mean_change_pct"]["MR structure"] != 0.0 for s in leak["structures"])
    table = result["table"]
    assert (out / "table.md").read_text() == table
    for text in ("Anatomy study", "| FDG | 20 | PET only |", "| amyloid+ | 20 | with MR |",
                 "| amyloid+ | 20 | with CT |",
                 "Leak check 1", "| FDG | 20 | 9 | mean |", "Leak check 2",
                 "| FDG | 20 | 9 | csf, "):
        assert text in table
    assert "| family | DRF | method |" not in table


def test_brain_phantom_leak_check_mrs_differ_only_at_lesions_and_structures() -> None:
    grid = ImageGeometry(nx=128, ny=128, pixel_mm=2.0, n_planes=16, plane_mm=2.0)
    plain = make_phantom("brain", grid, 9, tracer="FDG")
    structures = place_structures(plain, 9)
    assert [s.tissue for s in structures] == list(STRUCTURE_TISSUES)
    no_lesions = make_phantom("brain", grid, 9, tracer="FDG", mr_lesions=False)
    added = make_phantom("brain", grid, 9, tracer="FDG", mr_spheres=structures)
    for other in (no_lesions, added):
        for name in ("activity", "mu", "ct", "labels"):
            assert np.array_equal(getattr(plain, name), getattr(other, name))
        assert other.info == plain.info
    # MR voxels within a few mm of a lesion (partial volume, misregistration <= 1.2 voxels
    # and 2 degrees): the only ones that change, and the lesions do change
    spacing = (grid.plane_mm, grid.pixel_mm, grid.pixel_mm)
    near_lesion = ndimage.distance_transform_edt(plain.labels < LESION_BASE, sampling=spacing)
    changed = no_lesions.mr != plain.mr
    assert changed.any() and (near_lesion[changed] <= 8.0).all()
    labels = structure_vois(plain, structures)
    spheres = labels % 2 == 1
    near_sphere = ndimage.distance_transform_edt(~spheres, sampling=spacing)
    changed = added.mr != plain.mr
    assert (near_sphere[changed] <= 6.0).all()
    for i, structure in enumerate(structures):
        core = ndimage.binary_erosion(labels == 2 * i + 1, iterations=2)
        ratio = float(np.median(added.mr[core]) / np.median(plain.mr[core]))
        expected = MR_SPHERE_INTENSITY[structure.tissue] / MR_SPHERE_INTENSITY["white matter"]
        assert ratio == pytest.approx(expected, rel=0.25)


def test_study_writes_mr_series_that_differ_only_at_lesions_and_structures(
        tmp_path: Path) -> None:
    opts = BenchOptions(out=tmp_path / "unused", drfs=(20,), slices=8)
    study = _study("FDG", 9, opts, CPU, tmp_path / "study")
    assert set(study.series) == {"mr", "mr-without-lesions", "mr-with-structures", "ct"}
    plain, meta = read_anatomy(study.series["mr"])
    assert meta.modality == "MR" and plain.shape == (8, 128, 128)
    phantom = study.case.sim.phantom
    spacing = (2.0, 2.0, 2.0)
    near = {
        "mr-without-lesions": ndimage.distance_transform_edt(phantom.labels < LESION_BASE,
                                                             sampling=spacing),
        "mr-with-structures": ndimage.distance_transform_edt(
            study.structure_labels % 2 == 0, sampling=spacing),
    }
    tolerance = 2e-4 * float(plain.max())  # int16 storage, a slope per slice
    for name, distance in near.items():
        volume, _ = read_anatomy(study.series[name])
        difference = np.abs(volume - plain)
        assert (difference[distance > 8.0] <= tolerance).all()
        assert difference[distance == 0].max() > 0.05
    ct, ct_meta = read_anatomy(study.series["ct"])
    assert ct_meta.modality == "CT" and ct_meta.geometry == meta.geometry
    pet = study.case.metas[20].source
    assert ct_meta.source.frame_of_reference_uid == pet.frame_of_reference_uid
    np.testing.assert_allclose(ct, np.maximum(np.rint(phantom.ct), -1024.0), atol=1e-3)
    described = study.describe()
    assert described["tracer"] == "FDG" and len(described["structures"]) == 3
    assert described["hypometabolic"][0]["voi_voxels"] > 0


def test_run_benchmark_anatomy_study_without_anatomy_weights_is_refused(
        runs: Path, tmp_path: Path) -> None:
    weights = runs / "weights"
    with pytest.raises(PetReconError, match=f"^{weights}: --anatomy-study needs the "
                                            "anatomy-guided SD2 \\(sd2-anatomy"):
        run_benchmark(BenchOptions(out=tmp_path / "b", families=("brain",), anatomy_study=True,
                                   weights=weights))
    assert not (tmp_path / "b").exists()


def test_run_benchmark_no_family_without_anatomy_study_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PetReconError, match="nothing to run"):
        run_benchmark(BenchOptions(out=tmp_path / "b", families=()))


def test_bench_cli_anatomy_only_errors_are_one_line(runs: Path, tmp_path: Path) -> None:
    from pet_recon.cli import app

    weights = runs / "weights"
    result = CliRunner().invoke(app, ["bench", "--out", str(tmp_path / "b"), "--anatomy-only",
                                      "--weights", str(weights), "--drf", "20"])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"petrecon: error: {weights}: --anatomy-study needs the anatomy")
    result = CliRunner().invoke(app, ["bench", "--out", str(tmp_path / "b"), "--anatomy-only",
                                      "--family", "brain"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "petrecon: error: --anatomy-only runs no family; leave out --family"]
    assert not (tmp_path / "b").exists()
