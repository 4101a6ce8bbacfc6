"""End-to-end tests of the CLI on the public data (``python -m pet_recon`` in a subprocess).

``reconstruct --method gaussian`` runs once per input (DRO_0_0: 20 slices of 256x256, BQML;
GH184: a real GE slice, JPEG Lossless) with ``--report`` and ``--preview``; the tests check
the report, the preview, DICOM conformance (dciodvfy) and that the derived series has the
input's geometry as read by petrecon, SimpleITK and dcm2niix. ``inspect-meta --json`` runs on
the whole DRO tree (11 PET series beside RTSTRUCTs and NIfTI masks) and on GH184 and GH610.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from bad_inputs import run_petrecon, snapshot
from PIL import Image

from pet_recon.io.metadata import VolumeGeometry
from pet_recon.io.series import read_series
from pet_recon.io.suv import suv_scale

needs_dciodvfy = pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed"
)
needs_dcm2niix = pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix missing")

INPUTS: dict[str, tuple[str, ...]] = {
    "DRO_0_0": ("suv_dro", "DRO_0_0"),
    "GH184": ("pet_slices", "GH184.dcm"),
}
"""Inputs of ``reconstruct``, relative to the shared data folder."""

INSPECT_KEYS = (
    "series_instance_uid", "n_slices", "matrix", "pixel_spacing_mm", "slice_spacing_mm",
    "units", "suv_type", "suv_factor", "suv_max", "prompt", "meta", "warnings",
)
GEOMETRY_TOL = 1e-4


@dataclass(frozen=True)
class Run:
    """One ``reconstruct`` run with ``--report`` and ``--preview``."""

    source: Path
    out: Path
    report: Path
    preview: Path
    result: subprocess.CompletedProcess[str]
    seconds: float


def _source(shared_data: Path, name: str) -> Path:
    source = shared_data.joinpath(*INPUTS[name])
    if not source.exists():
        pytest.skip(f"{source} not found")
    return source


def _reconstruct(source: Path, root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_petrecon(
        "reconstruct", "--in", str(source), "--out", str(root / "out"), "--method", "gaussian",
        *extra, cwd=root,
    )


@pytest.fixture(scope="module", params=sorted(INPUTS))
def run(request: pytest.FixtureRequest, shared_data: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Run:
    source = _source(shared_data, request.param)
    root = tmp_path_factory.mktemp(request.param)
    report, preview = root / "run.json", root / "preview.png"
    start = time.perf_counter()
    result = _reconstruct(source, root, "--report", str(report), "--preview", str(preview))
    return Run(source, root / "out", report, preview, result, time.perf_counter() - start)


def _inspect(path: Path, *extra: str) -> list[dict[str, object]]:
    result = run_petrecon("inspect-meta", "--in", str(path), "--json", *extra, cwd=path.parent)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # --json: warnings go into the document, not onto stderr
    reports = json.loads(result.stdout)
    assert isinstance(reports, list)
    return reports


@pytest.fixture(scope="module")
def dro_tree(shared_data: Path) -> list[dict[str, object]]:
    """inspect-meta --json on the whole suv_dro folder."""
    return _inspect(shared_data / "suv_dro")


@pytest.fixture(scope="module")
def gh_slices(shared_data: Path) -> dict[str, dict[str, object]]:
    """inspect-meta --json on GH184.dcm and on GH610.dcm, by name."""
    reports = {}
    for name in ("GH184", "GH610"):
        (reports[name],) = _inspect(shared_data / "pet_slices" / f"{name}.dcm")
    return reports


def _assert_same_geometry(got: VolumeGeometry, expected: VolumeGeometry) -> None:
    assert got.shape == expected.shape
    for field in ("origin", "spacing", "direction"):
        a, b = getattr(got, field), getattr(expected, field)
        assert np.allclose(a, b, atol=GEOMETRY_TOL, rtol=0), (field, a, b)


def _sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    assert names, f"SimpleITK finds no series in {folder}"
    reader.SetFileNames(names)
    return reader.Execute()


def _nifti_affine(source: Path, name: str, work: Path) -> np.ndarray:
    """dcm2niix ``source`` (a folder, or one file copied into a folder); the sform affine."""
    if source.is_file():
        folder = work / f"{name}_dicom"
        folder.mkdir()
        shutil.copy2(source, folder)
        source = folder
    subprocess.run(
        ["dcm2niix", "-b", "n", "-z", "n", "-f", name, "-o", str(work), str(source)],
        capture_output=True, check=True, timeout=120,
    )
    header = (work / f"{name}.nii").read_bytes()[:348]
    assert int.from_bytes(header[:4], "little") == 348  # little-endian NIfTI-1
    srow = np.frombuffer(header[280:328], dtype="<f4").reshape(3, 4)
    return np.vstack([srow, [0.0, 0.0, 0.0, 1.0]])


def _suv_max(path: Path) -> float:
    volume, meta = read_series(path)
    factors = np.asarray(suv_scale(meta).factors, dtype=np.float64)
    return float((volume * factors[:, None, None]).max())


# ---------------------------------------------------------------------------- reconstruct


def test_reconstruct_real_data_exits_0_with_report(run: Run) -> None:
    assert run.result.returncode == 0, run.result.stderr
    assert "Traceback" not in run.result.stderr
    report = json.loads(run.report.read_text())
    assert {"versions", "input", "output", "timings", "warnings"} <= set(report)
    assert {"petrecon", "python", "numpy", "pydicom", "SimpleITK"} <= set(report["versions"])
    n_files = len(list(run.out.glob("*.dcm")))
    assert report["input"]["path"] == str(run.source)
    assert report["input"]["n_slices"] == n_files > 0
    assert report["output"]["path"] == str(run.out) and report["output"]["n_files"] == n_files
    assert set(report["timings"]) == {"read_s", "restore_s", "write_s"}
    assert all(seconds >= 0 for seconds in report["timings"].values())
    assert isinstance(report["warnings"], list)
    assert f"wrote {n_files} files to {run.out}" in run.result.stderr
    assert not [p for p in run.out.parent.iterdir() if ".partial" in p.name]


def test_reconstruct_real_data_writes_preview_png(run: Run) -> None:
    assert run.result.returncode == 0, run.result.stderr
    with Image.open(run.preview) as image:
        assert image.format == "PNG"
        assert image.width > 100 and image.height > 100


@needs_dciodvfy
def test_reconstruct_real_data_output_dciodvfy_no_errors(run: Run) -> None:
    assert run.result.returncode == 0, run.result.stderr
    files = sorted(run.out.glob("*.dcm"))
    for path in (files[0], files[-1]):
        check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True,
                               check=False, timeout=60)
        errors = [line for line in (check.stdout + check.stderr).splitlines() if "Error" in line]
        assert errors == [], f"{path.name}: {errors}"


def test_reconstruct_real_data_output_geometry_matches_input(run: Run) -> None:
    assert run.result.returncode == 0, run.result.stderr
    _, source = read_series(run.source)
    _, written = read_series(run.out)
    _assert_same_geometry(written.geometry, source.geometry)
    assert written.source.series_instance_uid != source.source.series_instance_uid


def test_reconstruct_real_data_simpleitk_reads_input_geometry(run: Run) -> None:
    assert run.result.returncode == 0, run.result.stderr
    written = _sitk_series(run.out)
    if run.source.is_file():
        source = sitk.ReadImage(str(run.source))
    else:
        source = _sitk_series(run.source / "PT")  # beside RS/ (RTSTRUCT) and mask/ (NIfTI)
    assert written.GetSize() == source.GetSize()
    for getter in ("GetOrigin", "GetSpacing", "GetDirection"):
        got, expected = getattr(written, getter)(), getattr(source, getter)()
        assert np.allclose(got, expected, atol=GEOMETRY_TOL, rtol=0), (getter, got, expected)
    _, meta = read_series(run.source)  # and SimpleITK agrees with petrecon's reader
    assert np.allclose(written.GetOrigin(), meta.geometry.origin, atol=GEOMETRY_TOL, rtol=0)


@needs_dcm2niix
def test_reconstruct_real_data_dcm2niix_affine_matches_input(run: Run, tmp_path: Path) -> None:
    assert run.result.returncode == 0, run.result.stderr
    source = run.source if run.source.is_file() else run.source / "PT"
    expected = _nifti_affine(source, "in", tmp_path)
    got = _nifti_affine(run.out, "out", tmp_path)
    assert np.allclose(got, expected, atol=GEOMETRY_TOL, rtol=0), (got, expected)


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_reconstruct_fwhm_zero_keeps_suv_max(shared_data: Path, tmp_path: Path, name: str) -> None:
    source = _source(shared_data, name)
    result = _reconstruct(source, tmp_path, "--fwhm", "0", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # --quiet
    expected = _suv_max(source)
    assert _suv_max(tmp_path / "out") == pytest.approx(expected, rel=1e-3)


def test_reconstruct_overwrite_replaces_and_rerun_without_it_fails(
    shared_data: Path, tmp_path: Path
) -> None:
    source = _source(shared_data, "GH184")
    report = tmp_path / "run.json"
    first = _reconstruct(source, tmp_path, "--report", str(report), "--quiet")
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    uid = pydicom.dcmread(next(out.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID

    again = _reconstruct(source, tmp_path, "--report", str(report))
    assert again.returncode == 2
    assert re.fullmatch(
        rf"petrecon: error: {re.escape(str(out))}: output folder exists and is not empty "
        r"\(use --overwrite\)\n", again.stderr
    )
    assert snapshot(tmp_path) == before

    (out / "stale.txt").write_text("left by an earlier run\n")
    report.write_text("{}\n")
    replaced = _reconstruct(source, tmp_path, "--report", str(report), "--overwrite", "--quiet")
    assert replaced.returncode == 0, replaced.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run.json"]  # no leftovers
    files = sorted(out.iterdir())
    assert [p.suffix for p in files] == [".dcm"]
    assert pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID != uid
    assert json.loads(report.read_text())["output"]["n_files"] == len(files)


# ---------------------------------------------------------------------------- inspect-meta


def test_inspect_meta_suv_dro_tree_reports_11_series_with_suv_max_4(
    shared_data: Path, dro_tree: list[dict[str, object]]
) -> None:
    assert len(dro_tree) == 11
    assert len({r["series_instance_uid"] for r in dro_tree}) == 11
    cases = sorted(str(r["series_description"]).rsplit(" ", 1)[-1] for r in dro_tree)
    assert cases == sorted(p.name for p in (shared_data / "suv_dro").iterdir() if p.is_dir())
    for report in dro_tree:
        assert report["n_slices"] == 20 and report["matrix"] == [256, 256]
        assert report["suv_max"] == pytest.approx(4.00, abs=0.02), report["series_description"]


def test_inspect_meta_suv_dro_tree_skips_masks_with_warning(
    dro_tree: list[dict[str, object]]
) -> None:
    for report in dro_tree:
        skipped = [w for w in report["warnings"] if "not DICOM images" in w]
        assert len(skipped) == 1 and "DRO_mask.nii.gz" in skipped[0]
        # 11 NIfTI masks, DRO_list.csv and LICENSE.txt; RTSTRUCTs are other series.
        assert re.search(r"skipped 13 file\(s\)", skipped[0])


def test_inspect_meta_json_has_documented_keys(
    dro_tree: list[dict[str, object]], gh_slices: dict[str, dict[str, object]]
) -> None:
    for report in (*dro_tree, *gh_slices.values()):
        assert set(INSPECT_KEYS) <= set(report), set(INSPECT_KEYS) - set(report)
        assert isinstance(report["prompt"], str) and report["prompt"]
        assert isinstance(report["meta"], dict) and isinstance(report["warnings"], list)


def test_inspect_meta_prompt_has_no_patient_identity(
    shared_data: Path, dro_tree: list[dict[str, object]]
) -> None:
    first = next((shared_data / "suv_dro" / "DRO_0_0" / "PT").glob("*.dcm"))
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    assert (str(ds.PatientName), ds.PatientID) == ("PETDRO PHANTOM", "DRO")
    birth = str(ds.PatientBirthDate)
    identity = ["PETDRO", "PHANTOM", "DRO", birth, f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"]
    for report in dro_tree:
        text = f"{report['prompt']} {json.dumps(report['meta'])}"
        found = [item for item in identity if item.lower() in text.lower()]
        assert found == [], f"{found} in {text!r}"


def test_inspect_meta_gh610_suv_unavailable_with_reason(
    gh_slices: dict[str, dict[str, object]]
) -> None:
    report = gh_slices["GH610"]
    assert report["units"] == "PROPCPS"
    assert report["suv_factor"] is None and report["suv_max"] is None
    assert report["suv_type"] is None
    reasons = [w for w in report["warnings"] if w.startswith("SUV not available")]
    assert len(reasons) == 1 and "GH610.dcm" in reasons[0] and "PROPCPS" in reasons[0]


def test_inspect_meta_gh184_decodes_jpeg_lossless(
    shared_data: Path, gh_slices: dict[str, dict[str, object]]
) -> None:
    report = gh_slices["GH184"]
    assert report["n_slices"] == 1 and report["matrix"] == [128, 128]
    assert report["units"] == "BQML" and report["suv_type"] == "bw"
    expected = _suv_max(shared_data / "pet_slices" / "GH184.dcm")
    assert expected > 0.5
    assert report["suv_max"] == pytest.approx(expected, rel=1e-9)


def test_reconstruct_cli_defaults_equal_cascade_options_defaults() -> None:
    import inspect

    from pet_recon.cli import reconstruct
    from pet_recon.pipeline import CascadeOptions

    defaults = {name: p.default for name, p in inspect.signature(reconstruct).parameters.items()}
    for field in ("steps", "sd2_steps", "resample_step", "seed", "batch_size",
                  "anatomy_detail"):
        option = "anatomy_detail_fwhm_mm" if field == "anatomy_detail" else field
        assert defaults[field] == getattr(CascadeOptions(), option), field


def test_sampler_defaults_equal_cascade_options_defaults() -> None:
    """``Cascade.restore`` and the publish validation spell the sampler defaults too."""
    import inspect

    from pet_recon.cascade import Cascade
    from pet_recon.pipeline import CascadeOptions
    from pet_recon.training import validate_cascade

    for func in (Cascade.restore, validate_cascade):
        defaults = {name: p.default for name, p in inspect.signature(func).parameters.items()}
        for field in ("steps", "sd2_steps", "resample_step"):
            assert defaults[field] == getattr(CascadeOptions(), field), (func.__name__, field)

