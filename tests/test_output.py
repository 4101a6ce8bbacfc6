"""Staged outputs: nothing is lost or overwritten by accident."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pet_recon.errors import PetReconError
from pet_recon.output import check_output_dir, staged_output


def test_staged_output_moves_complete_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with staged_output(out, overwrite=False) as staging:
        (staging / "a.dcm").write_bytes(b"x")
        assert not out.exists()
    assert (out / "a.dcm").read_bytes() == b"x"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_staged_output_failure_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_output(out, overwrite=False) as staging:
        (staging / "a.dcm").write_bytes(b"x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_staged_output_failure_keeps_old_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.dcm").write_bytes(b"old")
    with pytest.raises(RuntimeError), staged_output(out, overwrite=True):
        raise RuntimeError("boom")
    assert (out / "old.dcm").read_bytes() == b"old"


def test_staged_output_overwrite_replaces(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.dcm").write_bytes(b"old")
    with staged_output(out, overwrite=True) as staging:
        (staging / "new.dcm").write_bytes(b"new")
    assert sorted(p.name for p in out.iterdir()) == ["new.dcm"]


def test_check_output_dir_existing_without_overwrite(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f").write_text("x")
    with pytest.raises(PetReconError, match="not empty.*--overwrite"):
        check_output_dir(tmp_path / "out", overwrite=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_check_output_dir_unwritable(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(PetReconError, match="not writable"):
        check_output_dir(locked / "out", overwrite=False)
