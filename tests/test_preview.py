"""Tests of the before/after MIP preview."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
import pytest

from pet_recon.preview import PREVIEW_DPI, write_preview


def _phantom(n_slices: int) -> np.ndarray:
    """A warm cylinder with a hot sphere, (slices, 48, 64)."""
    z, y, x = np.mgrid[0:n_slices, 0:48, 0:64].astype(np.float32)
    body = ((x - 32) ** 2 / 20**2 + (y - 24) ** 2 / 14**2 < 1).astype(np.float32)
    sphere = ((x - 40) ** 2 + (y - 24) ** 2 + (z - n_slices / 2) ** 2 < 5**2) * 4.0
    return (body + sphere).astype(np.float32) * 5000.0


def _dark_fraction(image: np.ndarray) -> float:
    """Fraction of clearly non-white pixels (gray_r: uptake is dark)."""
    return float((image[..., :3].mean(axis=-1) < 0.5).mean())


def test_write_preview_volume_png_size_and_both_panels(tmp_path: Path) -> None:
    before = _phantom(30)
    after = before * 0.9
    backend = matplotlib.get_backend()
    path = write_preview(
        before, after, tmp_path / "preview.png", suv_factor=1 / 5000.0, spacing=(4.0, 4.0, 3.0)
    )
    assert path == tmp_path / "preview.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (10 * PREVIEW_DPI, 11 * PREVIEW_DPI)
    width = image.shape[1]
    left, right = image[:, : int(0.45 * width)], image[:, int(0.45 * width) : int(0.85 * width)]
    assert _dark_fraction(left) > 0.01 and _dark_fraction(right) > 0.01
    assert matplotlib.get_backend() == backend


def test_write_preview_single_slice_shows_slice(tmp_path: Path) -> None:
    before = _phantom(1)
    path = write_preview(
        before,
        before,
        tmp_path / "slice.png",
        suv_factor=None,
        spacing=(2.0, 2.0, 3.27),
        units="BQML",
    )
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (int(5.5 * PREVIEW_DPI), 11 * PREVIEW_DPI)
    assert _dark_fraction(image) > 0.01


def test_write_preview_all_zero_volume_writes(tmp_path: Path) -> None:
    zeros = np.zeros((3, 8, 8), dtype=np.float32)
    path = write_preview(zeros, zeros, tmp_path / "z.png", suv_factor=None, spacing=(1, 1, 1))
    assert path.stat().st_size > 0


def test_write_preview_shape_mismatch_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        write_preview(
            _phantom(4), _phantom(5), tmp_path / "p.png", suv_factor=None, spacing=(1, 1, 1)
        )
