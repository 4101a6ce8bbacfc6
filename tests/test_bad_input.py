"""The CLI on broken inputs: exit 2, one line naming the culprit, and nothing written.

The corpus is built by ``tests/bad_inputs.py``; the DICOM cases run the real CLI in a
subprocess (``python -m pet_recon``) without ``--quiet``, so that a progress bar or a logged
warning printed before the error fails the test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from bad_inputs import (
    BAD_INPUTS,
    BAD_SINOGRAMS,
    BadInput,
    BadSinogram,
    make_pet_series,
    run_petrecon,
    snapshot,
)

from pet_recon.errors import PetReconError
from pet_recon.io.sinogram import read_sinogram

PREFIX = "petrecon: error: "


def test_bad_inputs_corpus_has_at_least_15_cases() -> None:
    names = [case.name for case in (*BAD_INPUTS, *BAD_SINOGRAMS)]
    assert len(names) >= 15 and len(set(names)) == len(names)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case.name for case in BAD_INPUTS])
def test_cli_bad_input_one_line_error_and_nothing_written(case: BadInput, tmp_path: Path) -> None:
    root = tmp_path.resolve()  # --in is resolved by the CLI: compare resolved paths
    built = case.build(root)
    everything = snapshot(root)
    inputs = snapshot(built.input)
    outputs = None if built.output is None else snapshot(built.output)

    result = run_petrecon(case.command, *built.args, cwd=root)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""
    lines = result.stderr.splitlines()  # a progress bar's carriage returns split too
    assert len(lines) == 1 and lines[0].strip(), f"stderr is not one line: {result.stderr!r}"
    assert lines[0].startswith(PREFIX), lines[0]
    message = lines[0].removeprefix(PREFIX)
    assert re.search(case.pattern, message), f"{message!r} does not match {case.pattern!r}"
    for text in built.mentions:
        assert text in message, f"{text!r} not named in {message!r}"

    assert snapshot(built.input) == inputs
    if built.output is not None:
        assert snapshot(built.output) == outputs
        parent = built.output.parent
        leftovers = sorted(parent.glob(".*partial*")) if parent.is_dir() else []
        assert leftovers == []
    assert snapshot(root) == everything  # no report, preview, probe or staging file either


def test_cli_bad_input_creates_no_output_parent_folders(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    (root / "in").mkdir()  # empty: no DICOM image files
    result = run_petrecon(
        "reconstruct", "--in", str(root / "in"), "--out", str(root / "new" / "sub" / "out"),
        "--quiet", cwd=root,
    )
    assert result.returncode == 2
    assert not (root / "new").exists()


@pytest.mark.parametrize("case", BAD_SINOGRAMS, ids=[case.name for case in BAD_SINOGRAMS])
def test_read_sinogram_bad_interfile_one_line_error(case: BadSinogram, tmp_path: Path) -> None:
    header = case.build(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(PetReconError, match=case.pattern) as info:
        read_sinogram(header)
    message = str(info.value)
    assert "\n" not in message and str(header) in message
    assert snapshot(tmp_path) == before


def test_cli_missing_patient_weight_warns_and_succeeds(tmp_path: Path) -> None:
    # Like GH610 (no weight): SUV is unavailable, which is a warning, not an error.
    make_pet_series(tmp_path / "in", PatientWeight=None)
    report = tmp_path / "run.json"
    result = run_petrecon(
        "reconstruct", "--in", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
        "--method", "gaussian", "--report", str(report), cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower()
    assert re.search(r"warning: SUV not available: .*no patient weight .*--weight", result.stderr,
                     re.IGNORECASE)
    run = json.loads(report.read_text())
    assert run["input"]["suv_type"] is None and "suv" not in run["input"]
    assert any("no patient weight" in w for w in run["warnings"])
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 8


def test_inspect_meta_missing_patient_weight_suv_only_with_weight_option(tmp_path: Path) -> None:
    make_pet_series(tmp_path / "in", PatientWeight=None)
    without = run_petrecon("inspect-meta", "--in", str(tmp_path / "in"), "--json", cwd=tmp_path)
    assert without.returncode == 0, without.stderr
    (series,) = json.loads(without.stdout)
    assert series["suv_factor"] is None and series["suv_max"] is None
    assert any("no patient weight" in w and "--weight" in w for w in series["warnings"])

    given = run_petrecon(
        "inspect-meta", "--in", str(tmp_path / "in"), "--json", "--weight", "70", cwd=tmp_path
    )
    assert given.returncode == 0, given.stderr
    (series,) = json.loads(given.stdout)
    assert series["suv_max"] == pytest.approx(4.0, abs=1e-3)  # the synthetic hot sphere
    assert series["warnings"] == []
